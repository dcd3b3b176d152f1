"""``${VAR}`` in featurestore.yaml expands in values, never in comments; an expanded value is
typed as if written there, and an environment value is taken whole (a '#' in it is no comment)."""

from __future__ import annotations

from pathlib import Path

import pytest

from featurestore.config import load_config
from featurestore.errors import ConfigError
from featurestore.online.serving.config import models_config, serving_config

CONFIG = """\
project: test
# old: url: ${FS_T_OLD_REDIS_URL}   (unset: a comment is not expanded)
online_store:
  type: redis   # ${FS_T_ALSO_UNSET} after a value
  url: "redis://${FS_T_HOST:-h}:1/0 #not-a-comment"
stream:
  url: redis://${FS_T_HOST:-h}:2/0#fragment
serving:
  rest_port: ${FS_T_PORT:-8123}
  host: "${FS_T_ADDR:-127.0.0.1}"
models:
  path: "${FS_T_MODELS:-5}"
  shadow_log: ${FS_T_EMPTY:-}
"""


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("OLD_REDIS_URL", "ALSO_UNSET", "HOST", "PORT", "ADDR", "MODELS", "EMPTY"):
        monkeypatch.delenv(f"FS_T_{name}", raising=False)
    (tmp_path / "featurestore.yaml").write_text(CONFIG)
    return tmp_path


def test_values_expand_and_comments_do_not(repo: Path) -> None:
    cfg = load_config(repo)
    assert cfg.online_store.url == "redis://h:1/0 #not-a-comment"  # quoted: '#' is text
    assert cfg.stream.url == "redis://h:2/0#fragment"
    serving = serving_config(cfg)
    assert serving.rest_port == 8123  # a plain value is typed as written: a number
    assert serving.host == "127.0.0.1"
    models = models_config(cfg)
    assert models.path == "5"  # quoted: stays a string
    assert models.shadow_log is None  # plain and empty: null, as `shadow_log:` would be


def test_an_environment_value_is_taken_whole(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FS_T_HOST", "db # x: [y")  # YAML syntax in it stays text
    monkeypatch.setenv("FS_T_PORT", "9001")
    cfg = load_config(repo)
    assert cfg.stream.url == "redis://db # x: [y:2/0#fragment"
    assert cfg.online_store.url == "redis://db # x: [y:1/0 #not-a-comment"
    assert serving_config(cfg).rest_port == 9001


def test_an_unset_variable_in_a_value_still_names_it(repo: Path) -> None:
    (repo / "featurestore.yaml").write_text(CONFIG + "registry: ${FS_T_ALSO_UNSET}\n")
    with pytest.raises(ConfigError, match=r"\$\{FS_T_ALSO_UNSET\} is not set and has no default"):
        load_config(repo)
