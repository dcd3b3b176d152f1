"""docker-compose.yml (no Docker engine here): it parses, uses real CLI commands and config keys."""

from __future__ import annotations

from pathlib import Path

import yaml

from featurestore.cli import cli
from featurestore.config import OnlineStoreConfig

ROOT = Path(__file__).resolve().parents[1]


def test_compose_services_use_real_commands_and_redis() -> None:
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = doc["services"]
    assert "redis" in services
    assert services["redis"]["image"].startswith("redis:7")
    commands = set(cli.commands)
    for name, svc in services.items():
        if name == "redis":
            continue
        assert svc.get("build") == "." or svc["image"] == services["materialize"]["image"]
        assert svc["command"][0] in commands, f"{name} runs unknown command {svc['command'][0]}"
        url = svc["environment"]["REDIS_URL"]
        assert url.startswith("redis://redis:6379"), url
        assert "redis" in svc["depends_on"]
    # the server's flags are real options of `featurestore serve`
    serve_opts = {o for p in cli.commands["serve"].params for o in getattr(p, "opts", [])}
    flags = [a for a in services["server"]["command"][1:] if a.startswith("--")]
    assert flags and set(flags) <= serve_opts, (flags, serve_opts)
    ports = {p.split(":")[1] for p in services["server"]["ports"]}
    args = services["server"]["command"]
    assert {args[args.index("--port") + 1], args[args.index("--grpc-port") + 1]} == ports
    assert "/health/ready" in str(services["server"]["healthcheck"]["test"])
    # the config key the compose file documents exists and reads the same env var
    assert "url" in OnlineStoreConfig.__dataclass_fields__
    assert "REDIS_URL" in (ROOT / "featurestore" / "_scaffold.py").read_text()


def test_dockerfile_installs_the_package_and_runs_the_cli() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "pip install" in text
    assert 'ENTRYPOINT ["featurestore"' in text
    assert "libgomp1" in text  # the OpenMP runtime LightGBM's wheel needs (not in slim images)
    for folder in ("featurestore", "online", "offline", "transforms", "ext"):
        assert f"COPY {folder} ./{folder}" in text


def test_the_compose_environment_moves_a_default_repo_onto_redis(tmp_path, redis_url) -> None:
    """What the compose services do, without Docker: a repo made by `featurestore init` (as
    the quickstart's), already materialized into its embedded store, run with the compose
    environment, materializes into Redis from scratch and serves from it."""
    import json
    import os
    import subprocess
    import sys

    import redis

    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for name, svc in doc["services"].items():
        if name != "redis":
            assert svc["environment"]["FEATURESTORE_ONLINE_STORE"] == "redis", name

    def fs(*args: str, env: dict[str, str] | None = None) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "featurestore.cli", "-r", str(tmp_path / "demo"), *args],
            capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})},
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        return out.stdout

    subprocess.run(
        [sys.executable, "-m", "featurestore.cli", "init", str(tmp_path / "demo")],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    fs("apply")
    fs("materialize-incremental", "now")  # the embedded store, as the quickstart leaves it
    compose = {"FEATURESTORE_ONLINE_STORE": "redis", "REDIS_URL": redis_url}
    fs("materialize-incremental", "now", env=compose)
    client = redis.Redis.from_url(redis_url)
    assert client.dbsize() > 0  # every row again: the embedded store's watermark is not Redis's
    query = ("get", "--features", "user_stats:tx_count_7d", "--entity", "user_id=1")

    def lookup(env: dict[str, str] | None = None) -> dict:
        got = json.loads(fs(*query, env=env))
        return {k: v for k, v in got.items() if k != "latency_ms"}

    from_redis = lookup(compose)
    assert from_redis == lookup()  # the same values as the embedded store
    assert "PRESENT" in json.dumps(from_redis)
    client.flushall()
    assert "PRESENT" not in json.dumps(lookup(compose))  # read from Redis: gone with its data
