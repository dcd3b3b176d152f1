"""featurestore.yaml parsing: defaults, env expansion, and one-line errors for bad keys."""

from __future__ import annotations

import pytest

from featurestore import ConfigError, load_config


def write(tmp_path, text: str):
    (tmp_path / "featurestore.yaml").write_text(text)
    return tmp_path


def test_defaults_are_embedded_and_duckdb(tmp_path) -> None:
    cfg = load_config(write(tmp_path, "project: demo\n"))
    assert cfg.online_store.type == "embedded"
    assert cfg.offline_store.type == "duckdb"
    assert cfg.registry_path == tmp_path / "data" / "registry.json"


def test_env_expansion_with_default(tmp_path, monkeypatch) -> None:
    text = "project: demo\nonline_store:\n  type: redis\n  url: ${FS_TEST_URL:-redis://h:1/0}\n"
    assert load_config(write(tmp_path, text)).online_store.url == "redis://h:1/0"
    monkeypatch.setenv("FS_TEST_URL", "redis://other:2/0")
    assert load_config(tmp_path).online_store.url == "redis://other:2/0"


def test_missing_file_says_how_to_create_one(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"no featurestore\.yaml in .*featurestore init"):
        load_config(tmp_path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("project: demo\nonline_store:\n  type: cassandra\n", "online_store.type is 'cassandra'"),
        (
            "project: demo\nonline_store:\n  hots: x\n",
            r"unknown key\(s\) \['hots'\] in 'online_store'",
        ),
        ("project: demo\nfoo: 1\n", r"unknown key\(s\) \['foo'\]"),
        ("project: 'a b'\n", "'project' must be a name"),
        ("project: [unclosed\n", "not valid YAML"),
        ("project: demo\nstream:\n  max_past: 2 days\n", "stream.max_past: bad duration"),
        ("project: demo\nstream:\n  max_future: soon\n", "stream.max_future: bad duration"),
    ],
)
def test_bad_config_names_the_key(tmp_path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))
