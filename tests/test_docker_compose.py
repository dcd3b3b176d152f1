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
        assert svc["build"] == "."
        assert svc["command"][0] in commands, f"{name} runs unknown command {svc['command'][0]}"
        url = svc["environment"]["REDIS_URL"]
        assert url.startswith("redis://redis:6379"), url
        assert "redis" in svc["depends_on"]
    # the config key the compose file documents exists and reads the same env var
    assert "url" in OnlineStoreConfig.__dataclass_fields__
    assert "REDIS_URL" in (ROOT / "featurestore" / "_scaffold.py").read_text()


def test_dockerfile_installs_the_package_and_runs_the_cli() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "pip install" in text
    assert 'ENTRYPOINT ["featurestore"' in text
    for folder in ("featurestore", "online", "offline", "transforms", "ext"):
        assert f"COPY {folder} ./{folder}" in text
