"""Every section of featurestore.yaml is checked when it is loaded, each error one line naming
its key: string keys of another type, intervals that would spin or wait for ever, REST and gRPC
on one port, and the models section (so `serve` fails before it says where it listens)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from featurestore.config import (
    OfflineStoreConfig,
    OnlineStoreConfig,
    StreamConfig,
    load_config,
)
from featurestore.errors import ConfigError
from featurestore.online.serving.config import (
    MIN_POLL_INTERVAL_S,
    AuditConfig,
    AuthConfig,
    ModelsConfig,
    ServingConfig,
    TLSConfig,
    models_config,
    serving_config,
)

# str keys that also take a bare number (a size in bytes, a duration in seconds)
NUMBER_OK = {"map_size", "memory_limit", "key_ttl_grace", "max_future", "max_past"}
SECTIONS = [
    ("offline_store", OfflineStoreConfig),
    ("online_store", OnlineStoreConfig),
    ("stream", StreamConfig),
    ("serving", ServingConfig),
    ("serving.tls", TLSConfig),
    ("serving.auth", AuthConfig),
    ("serving.audit", AuditConfig),
    ("models", ModelsConfig),
]
STRING_KEYS = [
    (where, f.name)
    for where, cls in SECTIONS
    for f in fields(cls)
    if "str" in str(f.type).split(" | ") and f.name not in NUMBER_OK
]


def _yaml(where: str, key: str, value: str) -> str:
    """A featurestore.yaml setting ``where.key`` (a dotted section) to ``value``."""
    text, indent = "project: test\n", ""
    for part in where.split("."):
        text += f"{indent}{part}:\n"
        indent += "  "
    if where == "serving.tls":  # the section needs both files named
        text += f"{indent}cert_file: c.pem\n{indent}key_file: k.pem\n"
        text = text.replace(f"{indent}{key}: c.pem\n", "").replace(f"{indent}{key}: k.pem\n", "")
    return text + f"{indent}{key}: {value}\n"


def _repo(tmp_path: Path, text: str) -> Path:
    (tmp_path / "featurestore.yaml").write_text(text)
    return tmp_path


def _load_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(_repo(tmp_path, text))
    msg = str(err.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize(("where", "key"), STRING_KEYS, ids=[f"{w}.{k}" for w, k in STRING_KEYS])
@pytest.mark.parametrize("value", ["5", "[a, b]", "{x: 1}", "true"])
def test_a_string_key_of_another_type_is_one_line_naming_it(
    tmp_path: Path, where: str, key: str, value: str
) -> None:
    msg = _load_error(tmp_path, _yaml(where, key, value))
    want = "expected auto, always or never" if key == "isolate_reads" else "expected a string"
    assert f"{where}.{key} is " in msg and want in msg, msg


def test_only_sizes_and_durations_take_a_bare_number(tmp_path: Path) -> None:
    for key in sorted(NUMBER_OK):
        where = next(w for w, cls in SECTIONS[:3] if key in {f.name for f in fields(cls)})
        cfg = load_config(_repo(tmp_path, _yaml(where, key, "3600")))
        assert getattr(getattr(cfg, where), key) == 3600
    msg = _load_error(tmp_path, _yaml("online_store", "path", "3600"))
    assert "online_store.path is 3600; expected a string" in msg


def test_a_poll_interval_that_would_spin_is_refused(tmp_path: Path) -> None:
    for value in ("0", "0.0", "0.01", "-1", ".nan", ".inf"):
        msg = _load_error(tmp_path, f"project: test\nmodels:\n  poll_interval_s: {value}\n")
        assert "models.poll_interval_s is " in msg, msg
    text = f"project: test\nmodels:\n  poll_interval_s: {MIN_POLL_INTERVAL_S}\n"
    assert models_config(load_config(_repo(tmp_path, text))).poll_interval_s == 0.05


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("stream:\n  block_ms: 0\n", "stream.block_ms is 0; give 1 or more"),  # BLOCK 0: for ever
        ("online_store:\n  connect_timeout: .inf\n", "online_store.connect_timeout is inf"),
        ("online_store:\n  socket_timeout: .nan\n", "online_store.socket_timeout is nan"),
        ("stream:\n  offline_flush_s: .inf\n", "stream.offline_flush_s is inf"),
        ("serving:\n  auth:\n    reload_interval_s: .inf\n", "reload_interval_s is inf"),
    ],
)
def test_a_wait_without_end_is_refused(tmp_path: Path, text: str, needle: str) -> None:
    assert needle in _load_error(tmp_path, "project: test\n" + text)


def test_rest_and_grpc_on_one_port_is_refused_naming_both(tmp_path: Path) -> None:
    text = "project: test\nserving:\n  rest_port: 18491\n  grpc_port: 18491\n"
    msg = _load_error(tmp_path, text)
    assert "serving.rest_port and serving.grpc_port are both 18491" in msg
    text = "project: test\nserving:\n  rest_port: 0\n  grpc_port: 0\n"  # any port; no gRPC
    assert serving_config(load_config(_repo(tmp_path, text))).grpc_port == 0


def test_a_bad_models_or_serving_value_fails_at_load(tmp_path: Path) -> None:
    assert "models.path is 5" in _load_error(tmp_path, "project: test\nmodels:\n  path: 5\n")
    msg = _load_error(tmp_path, "project: test\nserving:\n  deadline_ms: 0\n")
    assert "serving.deadline_ms is 0" in msg


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ("models:\n  path: 5\n", "models.path is 5; expected a string"),
        ("models:\n  poll_interval_s: 0\n", "models.poll_interval_s is 0"),
        (
            "serving:\n  rest_port: 18491\n  grpc_port: 18491\n",
            "serving.rest_port and serving.grpc_port are both 18491",
        ),
        ("online_store:\n  path: 5\n", "online_store.path is 5; expected a string"),
    ],
)
def test_serve_stops_before_its_banner(tmp_path: Path, config: str, needle: str) -> None:
    repo = _repo(tmp_path, "project: test\n" + config)
    out = subprocess.run(
        [sys.executable, "-m", "featurestore.cli", "-r", str(repo), "serve"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert out.returncode == 1
    assert "serving" not in out.stdout, out.stdout
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], out.stderr


def test_the_shutdown_grace_is_read_and_bounded(tmp_path: Path) -> None:
    text = "project: test\nserving:\n  shutdown_grace_s: 5\n"
    assert serving_config(load_config(_repo(tmp_path, text))).shutdown_grace_s == 5
    msg = _load_error(tmp_path, "project: test\nserving:\n  shutdown_grace_s: 601\n")
    assert "serving.shutdown_grace_s is 601" in msg


def test_serve_refuses_one_port_given_twice_by_flags(tmp_path: Path) -> None:
    repo = _repo(tmp_path, "project: test\n")
    out = subprocess.run(
        [sys.executable, "-m", "featurestore.cli", "-r", str(repo), "serve", "--port", "18493",
         "--grpc-port", "18493"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip
    assert out.returncode == 1
    assert "serving" not in out.stdout, out.stdout
    assert "--port and --grpc-port" in out.stderr and "both 18493" in out.stderr, out.stderr
