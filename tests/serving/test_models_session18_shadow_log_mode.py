"""The shadow log (``models.shadow_log``) holds scores of real entities: a server creates it
owner-only (0600), as the audit log's files are, and leaves the mode of a file that is already
there alone (appending to it)."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from featurestore.store import FeatureStore
from tests.serving.conftest import make_repo

ENTITIES = {"user_id": [1, 2, 3], "merchant_id": [1, 2, 3]}


@pytest.fixture
def shadowed(tmp_path: Path) -> Iterator[Path]:
    """``make_repo``'s 'fraud' (v1 production) with v2 as its shadow, the shadow log at
    data/shadow/log.jsonl, and a umask of 022 (under which a plain ``open`` makes 0644)."""
    from featurestore.online.models.repo import model_registry

    repo = make_repo(tmp_path / "repo")
    cfg = repo / "featurestore.yaml"
    text = cfg.read_text()
    assert "models:\n  poll_interval_s: 0.05\n" in text
    cfg.write_text(text.replace("models:\n", "models:\n  shadow_log: data/shadow/log.jsonl\n", 1))
    (repo / "data" / "shadow").mkdir()
    with FeatureStore(repo) as store:
        model_registry(store).set_alias("fraud", 2, "shadow")
    old = os.umask(0o022)
    try:
        yield repo
    finally:
        os.umask(old)


def _predict_with_shadow(repo: Path) -> list[dict[str, object]]:
    """One predict of 'fraud' in process, its shadow scored and logged; the log's records."""
    with FeatureStore(repo) as store:
        res = store.predict("fraud", ENTITIES)
        assert res.version == 1 and len(res.scores) == 3
        store._engine.models.shadow.flush()  # type: ignore[union-attr]
    log = repo / "data" / "shadow" / "log.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()]


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_new_shadow_log_is_created_owner_only(shadowed: Path) -> None:
    records = _predict_with_shadow(shadowed)
    assert [(r["shadow_version"], r["primary_version"]) for r in records] == [(2, 1)]
    assert len(records[0]["scores"]) == 3  # type: ignore[arg-type]
    assert _mode(shadowed / "data" / "shadow" / "log.jsonl") == 0o600


def test_an_existing_shadow_log_keeps_its_mode_and_its_lines(shadowed: Path) -> None:
    log = shadowed / "data" / "shadow" / "log.jsonl"
    log.write_text('{"earlier": true}\n')
    os.chmod(log, 0o640)  # the operator's choice: not ours to change
    records = _predict_with_shadow(shadowed)
    assert records[0] == {"earlier": True}
    assert [r["shadow_version"] for r in records[1:]] == [2]
    assert _mode(log) == 0o640
