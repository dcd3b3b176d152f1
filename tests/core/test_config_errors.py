"""Config values of the wrong type or out of range are one-line ConfigErrors naming the key, at
load time and from the CLI (no traceback); the CLI's `get` names an out-of-range key."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from featurestore.config import load_config
from featurestore.errors import ConfigError
from featurestore.online.serving.config import LOG_LEVELS, models_config, serving_config


def _load(repo: Path) -> None:
    """Load the config and every section a server reads."""
    cfg = load_config(repo)
    serving_config(cfg)
    models_config(cfg)


def _cli(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "featurestore.cli", "-r", str(repo), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ("serving:\n  deadline_ms: abc\n", "serving.deadline_ms is 'abc'; expected a whole number"),
        ("serving:\n  deadline_ms: 2.5\n", "serving.deadline_ms is 2.5; expected a whole number"),
        ("serving:\n  workers: two\n", "serving.workers is 'two'"),
        ("serving:\n  host: 8080\n", "serving.host is 8080; expected a string"),
        ("serving:\n  max_entities: true\n", "serving.max_entities is True"),
        ("serving:\n  breaker:\n    reset_ms: soon\n", "serving.breaker.reset_ms is 'soon'"),
        ("serving:\n  auth:\n    reload_interval_s: x\n", "serving.auth.reload_interval_s is 'x'"),
        ("serving:\n  audit:\n    include_features: 3\n", "expected true or false"),
        (
            "models:\n  poll_interval_s: fast\n",
            "models.poll_interval_s is 'fast'; expected a number",
        ),
        ("models:\n  shadow_log: 5\n", "models.shadow_log is 5; expected a string or null"),
        ("online_store:\n  write_batch_size: abc\n", "online_store.write_batch_size is 'abc'"),
        ("online_store:\n  socket_timeout: 1s\n", "online_store.socket_timeout is '1s'"),
        ("offline_store:\n  threads: many\n", "offline_store.threads is 'many'"),
        ("stream:\n  batch_size: lots\n", "stream.batch_size is 'lots'"),
    ],
)
def test_a_value_of_the_wrong_type_is_one_line_naming_the_key(
    make_repo: Callable[..., Path], config: str, needle: str
) -> None:
    repo = make_repo(config=config)
    with pytest.raises(ConfigError) as err:
        _load(repo)
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("level", ["loud", "WARNING", ""])
def test_an_unknown_log_level_is_refused_listing_the_levels(
    make_repo: Callable[..., Path], level: str
) -> None:
    repo = make_repo(config=f"serving:\n  log_level: '{level}'\n")
    with pytest.raises(ConfigError, match=f"serving.log_level is '{level}'; expected one of"):
        _load(repo)


@pytest.mark.parametrize("level", LOG_LEVELS)
def test_every_uvicorn_level_is_accepted(make_repo: Callable[..., Path], level: str) -> None:
    import uvicorn.config

    assert level in uvicorn.config.LOG_LEVELS
    repo = make_repo(config=f"serving:\n  log_level: {level}\n")
    assert serving_config(load_config(repo)).log_level == level


@pytest.mark.parametrize("value", [0, -3])
def test_max_entities_below_one_is_refused(make_repo: Callable[..., Path], value: int) -> None:
    repo = make_repo(config=f"serving:\n  max_entities: {value}\n")
    with pytest.raises(ConfigError, match=r"serving\.max_entities is -?\d+"):
        _load(repo)


def test_values_of_the_right_type_still_load(make_repo: Callable[..., Path]) -> None:
    repo = make_repo(
        config="online_store:\n  map_size: 67108864\n  socket_timeout: 2\n"
        "serving:\n  max_entities: 1\n  deadline_ms: 80\n"
        "models:\n  poll_interval_s: 1\n  shadow_log: null\n"
    )
    cfg = load_config(repo)
    assert cfg.online_store.map_size == 67108864  # a size may be a bare number of bytes
    assert serving_config(cfg).max_entities == 1
    assert models_config(cfg).poll_interval_s == 1


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ("serving:\n  deadline_ms: abc\n", "serving.deadline_ms is 'abc'"),
        ("serving:\n  log_level: loud\n", "serving.log_level is 'loud'"),
        ("serving:\n  max_entities: 0\n", "serving.max_entities is 0; give 1 or more"),
    ],
)
def test_serve_with_a_bad_config_value_exits_with_one_line(
    make_repo: Callable[..., Path], config: str, needle: str
) -> None:
    repo = make_repo(config=config)
    out = _cli(repo, "serve", "--port", "0", "--grpc-port", "0")
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0]


def test_get_with_an_integer_key_outside_64_bits_is_one_line(
    make_repo: Callable[..., Path],
) -> None:
    repo = make_repo()
    assert _cli(repo, "apply").returncode == 0
    huge = "99999999999999999999"
    out = _cli(repo, "get", "--features", "user_stats:clicks", "--entity", f"user_id=1,{huge}")
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert out.stderr.strip() == (
        f"error: --entity user_id={huge}: outside the 64-bit range of integer join keys"
    )


def test_serve_with_an_unknown_log_level_names_the_option(
    make_repo: Callable[..., Path],
) -> None:
    out = _cli(make_repo(), "serve", "--log-level", "loud")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "Invalid value for '--log-level': 'loud' is not one of critical" in out.stderr


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ("online_store:\n  connect_timeout: -1\n", "online_store.connect_timeout is -1; give a"),
        ("online_store:\n  socket_timeout: 0\n", "online_store.socket_timeout is 0; give a"),
        ("online_store:\n  max_connections: -3\n", "online_store.max_connections is -3; give 1"),
        ("online_store:\n  write_batch_size: 0\n", "online_store.write_batch_size is 0; give 1"),
        ("online_store:\n  key_ttl_grace: 5 parsecs\n", "online_store.key_ttl_grace: bad duration"),
        ("online_store:\n  type: redis\n  url: ''\n", "online_store.url is ''; give a redis://"),
        ("stream:\n  offline_flush_s: 0\n", "stream.offline_flush_s is 0; give a number above 0"),
        ("stream:\n  offline_flush_s: -1\n", "stream.offline_flush_s is -1"),
        ("stream:\n  offline_flush_events: -1\n", "stream.offline_flush_events is -1; give 1"),
        ("stream:\n  write_offline: maybe\n", "stream.write_offline is 'maybe'; expected true"),
    ],
)
def test_a_value_out_of_range_is_one_line_naming_the_key(
    make_repo: Callable[..., Path], config: str, needle: str
) -> None:
    repo = make_repo(config=config)
    with pytest.raises(ConfigError) as err:
        load_config(repo)
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_an_unset_variable_without_a_default_is_named(
    make_repo: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FS_TEST_UNSET", raising=False)
    repo = make_repo(config="online_store:\n  type: redis\n  url: ${FS_TEST_UNSET}\n")
    with pytest.raises(ConfigError, match=r"\$\{FS_TEST_UNSET\} is not set and has no default"):
        load_config(repo)
    out = _cli(repo, "list")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "${FS_TEST_UNSET} is not set" in out.stderr
    monkeypatch.setenv("FS_TEST_UNSET", "redis://127.0.0.1:1/0")  # set: it is used
    assert load_config(repo).online_store.url == "redis://127.0.0.1:1/0"
    monkeypatch.delenv("FS_TEST_UNSET")
    (repo / "featurestore.yaml").write_text(
        (repo / "featurestore.yaml")
        .read_text()
        .replace("${FS_TEST_UNSET}", "${FS_TEST_UNSET:-redis://127.0.0.1:2/0}")
    )
    assert load_config(repo).online_store.url == "redis://127.0.0.1:2/0"  # the default
