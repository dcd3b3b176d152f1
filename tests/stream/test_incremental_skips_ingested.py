"""``featurestore materialize-incremental`` without ``--views`` writes every view it can and
skips, one line each, the views whose stream's lock another holds (an ingest reading it, or a
materialize writing it); it exits 0 if it wrote any, 3 if it skipped them all, and a view
listed in ``--views`` is still refused as a whole."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from featurestore import FeatureStore
from featurestore.cli import ALL_SKIPPED, cli

from .conftest import now_floor_us, small_repo

TX_LOCK = "tx_events:ingest-lock"
PROFILE_LOCK = "profile_events:ingest-lock"
INGEST = "otherhost:41:feedbeef"  # an ingest on another host: never taken over from here
MATERIALIZE = "otherhost:42:cafef00d:materialize profile"


@pytest.fixture
def client(redis_url: str) -> Any:
    import redis

    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


def _run(repo: Path, *args: str) -> Any:
    return CliRunner().invoke(cli, ["-r", str(repo), "materialize-incremental", "now", *args])


def _marks(repo: Path) -> dict[str, Any]:
    with FeatureStore(repo) as store:
        return {v: m.get("watermark_us") for v, m in store.registry.materialization.items()}


def _applied(tmp_path: Path, redis_url: str, project: str) -> Path:
    repo = small_repo(tmp_path / "repo", redis_url, project=project)
    with FeatureStore(repo) as store:
        store.apply()
    return repo


def test_a_view_being_ingested_is_skipped_and_the_others_written(
    tmp_path: Path, redis_url: str, client: Any
) -> None:
    repo = _applied(tmp_path, redis_url, "skip1")
    client.set(TX_LOCK, INGEST, px=120_000)
    before = now_floor_us()
    res = _run(repo)
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    skipped = [line for line in lines if "skipped" in line]
    assert skipped == [
        "tx: skipped, stream source 'tx_stream' is being read by featurestore ingest "
        f"({INGEST}), which keeps the view fresh itself"
    ], res.output
    assert any(line.startswith("profile: ") and "rows" in line for line in lines), res.output
    marks = _marks(repo)
    assert marks.get("tx") is None  # not written: no watermark
    assert marks["profile"] >= before
    assert client.get(TX_LOCK) == INGEST.encode()  # the ingest's lock is left as it was
    assert client.get(PROFILE_LOCK) is None  # the one materialize held is released


def test_a_view_listed_with_views_is_still_refused(
    tmp_path: Path, redis_url: str, client: Any
) -> None:
    repo = _applied(tmp_path, redis_url, "skip2")
    client.set(TX_LOCK, INGEST, px=120_000)
    for views in ("tx", "profile,tx"):
        res = _run(repo, "--views", views)
        assert res.exit_code == 1, res.output
        err = res.stderr.strip()
        assert "\n" not in err and err.startswith("error: feature view 'tx'"), err
        assert "stream source 'tx_stream'" in err and "ingest is reading" in err, err
        assert "skipped" not in res.stdout
    assert _marks(repo) == {}  # refused as a whole: profile was not written either
    assert client.get(PROFILE_LOCK) is None


def test_every_view_skipped_exits_non_zero(tmp_path: Path, redis_url: str, client: Any) -> None:
    repo = _applied(tmp_path, redis_url, "skip3")
    client.set(TX_LOCK, INGEST, px=120_000)
    client.set(PROFILE_LOCK, MATERIALIZE, px=120_000)
    res = _run(repo)
    assert res.exit_code == ALL_SKIPPED == 3, res.output
    skipped = sorted(line for line in res.stdout.splitlines() if "skipped" in line)
    assert skipped == [
        "profile: skipped, stream source 'profile_stream' is being written by featurestore "
        "materialize of view(s) 'profile' (otherhost:42:cafef00d)",
        f"tx: skipped, stream source 'tx_stream' is being read by featurestore ingest ({INGEST}), "
        "which keeps the view fresh itself",
    ], res.output
    assert res.stderr.strip() == "error: every view was skipped: nothing materialized"
    assert _marks(repo) == {}
    assert client.get(TX_LOCK) == INGEST.encode()
    assert client.get(PROFILE_LOCK) == MATERIALIZE.encode()


def test_with_no_lock_held_every_view_is_written(
    tmp_path: Path, redis_url: str, client: Any
) -> None:
    repo = _applied(tmp_path, redis_url, "skip4")
    res = _run(repo)
    assert res.exit_code == 0, res.output
    assert "skipped" not in res.output
    assert set(_marks(repo)) == {"tx", "profile"}
    assert client.get(TX_LOCK) is None and client.get(PROFILE_LOCK) is None
