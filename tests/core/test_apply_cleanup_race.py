"""Two applies at once: a view that one apply removes and another defines again keeps the rows
its new definition was materialized with, whatever the interleaving of the first apply's
cleanup (which read its list of views before) with the second apply and its materialize."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from featurestore import FeatureStore
from featurestore._cleanup import delete_redefined
from featurestore.errors import FeatureStoreError, OnlineStoreUnavailableError
from featurestore.online.base import Status

from .test_apply_cleanup import HEAD, NOW, USERS, count_keys, write_data

VIEW = """{name} = FeatureView(name="{name}", entities=[user], source=src, ttl="30d",
    schema=[Field("clicks", Int64)])"""
REFS = ["big:clicks"]

# the other apply, in its own process (as a second CI job): apply, then materialize unless told
OTHER = """
import sys
from featurestore import FeatureStore
from featurestore.errors import FeatureStoreError
with FeatureStore(sys.argv[1]) as fs:
    if sys.argv[2] in ("apply", "both"):
        fs.apply()
    if sys.argv[2] in ("materialize", "both"):
        try:
            print("rows", fs.materialize_incremental(int(sys.argv[3])).rows.get("big"))
        except FeatureStoreError as exc:
            print("refused", exc)
"""


def write_views(repo: Path, *names: str) -> None:
    body = "\n".join(VIEW.format(name=n) for n in names)
    (repo / "definitions.py").write_text(HEAD + textwrap.dedent(body) + "\n")


def make_repo(kind: str, repo: Path, request: pytest.FixtureRequest) -> None:
    """A repo on ``kind`` with views aaa, big and kept, applied and materialized."""
    online = f"  type: embedded\n  path: {repo / 'online'}\n  map_size: 1GB\n"
    if kind == "redis":
        online = f"  type: redis\n  url: {request.getfixturevalue('redis_url')}\n"
    (repo / "featurestore.yaml").write_text("project: test\nonline_store:\n" + online)
    write_data(repo)
    write_views(repo, "aaa", "big", "kept")
    with FeatureStore(repo) as store:
        store.apply()
        assert store.materialize_incremental(NOW).rows["big"] == USERS


def other(repo: Path, what: str) -> subprocess.Popen[str]:
    """The other apply's process (``what``: apply, materialize or both)."""
    return subprocess.Popen(
        [sys.executable, "-c", OTHER, str(repo), what, str(NOW)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finished(proc: subprocess.Popen[str]) -> str:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return out


def big_served(store: FeatureStore) -> list[Any]:
    resp = store.get_online_features(REFS, {"user_id": list(range(USERS))}, now=NOW)
    return list(resp.statuses["clicks"])


def assert_big_intact(store: FeatureStore, request: pytest.FixtureRequest) -> None:
    """Every row of 'big' as materialized is there, served, and its watermark says so."""
    state = store.registry
    assert state.pending_cleanup == {}
    assert state.materialization["big"]["watermark_us"] == NOW
    assert count_keys(store, "aaa", request) == 0
    assert count_keys(store, "big", request) == USERS
    assert big_served(store) == [Status.PRESENT] * USERS
    assert store.materialize_incremental(NOW).rows["big"] == 0  # nothing left to fill


@pytest.mark.parametrize("kind", ["embedded", "redis"])
def test_defined_again_while_the_cleanup_deletes_another_view(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hunt's race: apply A removes aaa and big; while its cleanup deletes aaa, apply B
    defines big again and materializes it; A then reaches big with the list it read first."""
    make_repo(kind, tmp_path, request)
    with FeatureStore(tmp_path) as a:
        write_views(tmp_path, "kept")
        real = a.online.delete_view
        seen: list[str] = []
        outputs: list[str] = []

        def delete_view(project: str, name: str) -> int:
            seen.append(name)
            if len(seen) == 1:  # A read its list and starts on aaa: B applies and materializes
                write_views(tmp_path, "big", "kept")
                outputs.append(finished(other(tmp_path, "both")))
            return real(project, name)

        monkeypatch.setattr(a.online, "delete_view", delete_view)
        reports: list[Any] = []
        a.apply(report=reports.append)
        assert seen[0] == "aaa"
        assert outputs == [f"rows {USERS}\n"]
        assert_big_intact(a, request)
        # B deleted big's old rows itself; A left big alone
        assert [(r.view, r.deleted) for r in reports] == [("aaa", USERS)]


@pytest.mark.parametrize("kind", ["embedded", "redis"])
def test_defined_again_while_the_cleanup_deletes_that_view(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Apply A is deleting big when apply B defines it again: B waits for A's delete of big
    (it holds big's cleanup lock) before its registry says big exists, so nothing of the new
    big is written before the old rows are gone; then a materialize fills it whole."""
    make_repo(kind, tmp_path, request)
    with FeatureStore(tmp_path) as a:
        write_views(tmp_path, "kept")
        real = a.online.delete_view
        registry = tmp_path / "data" / "registry.json"
        procs: list[subprocess.Popen[str]] = []
        unchanged: list[bool] = []

        def delete_view(project: str, name: str) -> int:
            if name == "big" and not procs:
                version = registry.stat().st_mtime_ns
                write_views(tmp_path, "big", "kept")
                procs.append(other(tmp_path, "apply"))
                for _ in range(40):  # B has time to start and reach the lock
                    time.sleep(0.05)
                unchanged.append(registry.stat().st_mtime_ns == version)
                unchanged.append(procs[0].poll() is None)
            return real(project, name)

        monkeypatch.setattr(a.online, "delete_view", delete_view)
        a.apply()
        finished(procs[0])
        assert unchanged == [True, True]  # B neither wrote the registry nor returned meanwhile
        assert "big" in a.registry.feature_views and "big" not in a.registry.materialization
        assert a.materialize_incremental(NOW).rows["big"] == USERS
        assert_big_intact(a, request)


def test_a_view_whose_old_rows_are_not_deleted_yet_is_not_materialized(tmp_path: Path) -> None:
    """A view defined again while the record of its removal stands (its old rows not deleted
    yet: a cleanup that failed, or one still running) is refused by materialize, naming why,
    until the cleanup drops the record."""
    make_repo("embedded", tmp_path, None)  # type: ignore[arg-type]
    with FeatureStore(tmp_path) as store:
        state = store.registry
        ents, services = list(state.entities.values()), list(state.feature_services.values())
        views = list(state.feature_views.values())
        store._registry.apply(ents, [v for v in views if v.name != "big"], services)
        store._registry.apply(ents, views, services)  # defined again; the record stays
        assert list(store.registry.pending_cleanup) == ["big"]
        with pytest.raises(FeatureStoreError, match="still being deleted by featurestore apply"):
            store.materialize_incremental(NOW, views=["big"])
        store._registry.update_cleanup(["big"])
        assert store.materialize_incremental(NOW).rows["big"] == USERS


def test_a_stale_record_deletes_nothing_of_the_view_defined_since(tmp_path: Path) -> None:
    """An apply that read big's cleanup record before another apply finished it, defined big
    again and materialized it, must not delete those rows by the record it read."""
    make_repo("embedded", tmp_path, None)  # type: ignore[arg-type]
    with FeatureStore(tmp_path) as store:
        write_views(tmp_path, "aaa", "kept")
        store.apply()
        stale = {"big": {"removed_in": store.registry.version, "stream": None}}  # as read then
        assert store.registry.pending_cleanup == {}  # finished since
        write_views(tmp_path, "aaa", "big", "kept")
        store.apply()
        assert store.materialize_incremental(NOW).rows["big"] == USERS
        delete_redefined(store.online, store.project, stale, store._registry)
        assert count_keys(store, "big", None) == USERS  # type: ignore[arg-type]
        assert big_served(store) == [Status.PRESENT] * USERS


def test_a_record_still_standing_is_deleted_and_dropped(tmp_path: Path) -> None:
    """With the registry given, the early delete of a view defined again drops its record, so
    the apply's registry write finds nothing left to delete."""
    make_repo("embedded", tmp_path, None)  # type: ignore[arg-type]
    with FeatureStore(tmp_path) as store:
        write_views(tmp_path, "aaa", "kept")
        registry = store._registry
        calls: list[str] = []
        real = store.online.delete_view

        def down(project: str, name: str) -> int:
            calls.append(name)
            raise OnlineStoreUnavailableError("the store does not answer")

        store.online.delete_view = down  # type: ignore[method-assign]
        store.apply(report=lambda r: None)  # big's rows stay: its cleanup could not delete them
        store.online.delete_view = real  # type: ignore[method-assign]
        assert calls == ["big"] and list(registry.load().pending_cleanup) == ["big"]
        delete_redefined(store.online, store.project, registry.load().pending_cleanup, registry)
        assert registry.load().pending_cleanup == {}
        assert count_keys(store, "big", None) == 0  # type: ignore[arg-type]
