"""The top-level keys `registry` and `definitions`, every Literal field and offline_store.threads
are checked at load: a bad value is a one-line ConfigError naming the key, in the CLI too."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from featurestore.config import check_types, load_config
from featurestore.errors import ConfigError

Colour = Literal["red", "green"]


@dataclass(frozen=True)
class _Section:
    colour: Colour = "red"
    mode: Literal["a", "b", "c"] | None = None
    count: int = 1


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
        ("registry: 5\n", "registry is 5; expected the registry file's path"),
        ("registry: [a, b]\n", "registry is ['a', 'b']; expected the registry file's path"),
        ("registry: ''\n", "registry is ''; expected the registry file's path"),
        ("registry: {path: x}\n", "registry is {'path': 'x'}"),
        ("definitions: 5\n", "definitions is 5; expected a file name or a list of file names"),
        ("definitions: [definitions.py, 3]\n", "definitions is ['definitions.py', 3]; expected"),
        ("definitions: true\n", "definitions is True; expected a file name"),
        ("definitions: ''\n", "definitions is ''; expected a file name"),
        ("offline_store:\n  type: bigquery\n", "offline_store.type is 'bigquery'; expected duckdb"),
        ("offline_store: bigquery\n", "offline_store.type is 'bigquery'; expected duckdb"),
        ("offline_store:\n  type: 5\n", "offline_store.type is 5; expected duckdb"),
        (
            "online_store:\n  type: mongo\n",
            "online_store.type is 'mongo'; expected embedded, redis or redis_cluster",
        ),
        ("offline_store:\n  threads: 0\n", "offline_store.threads is 0; give 1 or more"),
        ("offline_store:\n  threads: -4\n", "offline_store.threads is -4; give 1 or more"),
    ],
)
def test_a_bad_top_level_or_literal_value_is_one_line_naming_the_key(
    make_repo: Callable[..., Path], config: str, needle: str
) -> None:
    repo = make_repo(config=config)
    with pytest.raises(ConfigError) as err:
        load_config(repo)
    assert needle in str(err.value)
    assert str(err.value).startswith("featurestore.yaml: ")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ("registry: 5\n", "registry is 5"),
        ("definitions: 5\n", "definitions is 5"),
        ("offline_store:\n  type: bigquery\n", "offline_store.type is 'bigquery'"),
        ("offline_store:\n  threads: 0\n", "offline_store.threads is 0"),
    ],
)
def test_the_cli_says_it_in_one_line_without_a_traceback(
    make_repo: Callable[..., Path], config: str, needle: str
) -> None:
    out = _cli(make_repo(config=config), "list")
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: featurestore.yaml: ")
    assert needle in lines[0]


def test_good_values_still_load(make_repo: Callable[..., Path]) -> None:
    repo = make_repo(
        config="registry: data/reg.json\ndefinitions: [definitions.py]\n"
        "offline_store:\n  type: duckdb\n  threads: 1\n"
    )
    cfg = load_config(repo)
    assert cfg.registry_path == repo / "data" / "reg.json"
    assert cfg.definitions == ("definitions.py",)
    assert cfg.offline_store.threads == 1
    (repo / "featurestore.yaml").write_text(
        "project: test\ndefinitions: definitions.py\noffline_store:\n  threads: null\n"
    )
    cfg = load_config(repo)
    assert cfg.definitions == ("definitions.py",) and cfg.offline_store.threads is None
    (repo / "featurestore.yaml").write_text("project: test\ndefinitions: []\nregistry: r.json\n")
    assert load_config(repo).definitions == ()


def test_the_repo_applies_with_a_single_definitions_file(make_repo: Callable[..., Path]) -> None:
    repo = make_repo(config="definitions: definitions.py\noffline_store:\n  threads: 1\n")
    out = _cli(repo, "apply")
    assert out.returncode == 0, out.stderr
    assert (repo / "data" / "registry.json").is_file()


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        (_Section(colour="blue"), "s.colour is 'blue'; expected red or green"),  # type: ignore[arg-type]
        (_Section(mode="d"), "s.mode is 'd'; expected a, b, c or null"),  # type: ignore[arg-type]
        (_Section(mode=True), "s.mode is True; expected a, b, c or null"),  # type: ignore[arg-type]
        (_Section(count="x"), "s.count is 'x'; expected a whole number"),  # type: ignore[arg-type]
    ],
)
def test_literal_fields_are_checked_in_any_config_section(value: _Section, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        check_types(value, "s")
    assert str(err.value) == f"featurestore.yaml: {needle}"


@pytest.mark.parametrize("value", [_Section(), _Section("green", "c"), _Section(mode=None)])
def test_allowed_literal_values_pass(value: _Section) -> None:
    check_types(value, "s")
