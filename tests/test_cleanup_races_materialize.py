"""A materialize that started before an apply removed (or redefined) its view leaves no row of
it after that apply's cleanup: a batch lands before the delete or not at all, the watermark
does not move, and a view changed before materialize got to it is refused. Every race is made
by pausing one side at a point and letting the other run (threads and events, no sleeps)."""

from __future__ import annotations

import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore import FeatureStore
from featurestore.errors import FeatureStoreError
from featurestore.online.base import Status

from .core.test_apply_cleanup import count_keys

H = 3_600_000_000
USERS = 5
NOW = (int(time.time()) // 3600) * H  # recent: window states expire a window after events
WAIT_S = 120  # a guard against a hung test only: every wait here is for an event to happen

HEAD = """
from featurestore import Aggregation, Entity, FeatureView, Field, Int64, ParquetSource

user = Entity("user", join_keys=["user_id"])
account = Entity("account", join_keys=["account_id"])
src = ParquetSource("data/users.parquet", created_timestamp_field="created")
"""
VIEWS = {
    "stats": """stats = FeatureView(name="stats", entities=[{entity}], source=src, ttl="30d",
        schema=[Field("clicks", Int64)])""",
    "win": """win = FeatureView(name="win", entities=[{entity}], source=src,
        aggregations=[Aggregation("clicks", "sum", ["24h"])])""",
    "kept": """kept = FeatureView(name="kept", entities=[user], source=src, ttl="30d",
        schema=[Field("clicks", Int64)])""",
}


def write_defs(repo: Path, *views: str, entity: str = "user") -> None:
    """definitions.py with ``views``; ``entity``: the one 'stats' and 'win' are keyed by."""
    body = "\n".join(textwrap.dedent(VIEWS[v]).replace("{entity}", entity) for v in views)
    (repo / "definitions.py").write_text(HEAD + body + "\n")


def make_repo(repo: Path, kind: str, request: pytest.FixtureRequest, serving: str = "") -> None:
    """A repo on ``kind`` (embedded or redis) with 'stats', 'win' and 'kept' applied and
    materialized 10 hours back; ``serving``: a serving section for featurestore.yaml."""
    online = f"  type: embedded\n  path: {repo / 'online'}\n  map_size: 1GB\n"
    if kind == "redis":
        online = f"  type: redis\n  url: {request.getfixturevalue('redis_url')}\n"
    repo.mkdir(parents=True, exist_ok=True)
    (repo / "featurestore.yaml").write_text("project: test\nonline_store:\n" + online + serving)
    ts = pa.array([NOW - (20 - i) * H for i in range(20)], pa.timestamp("us", tz="UTC"))
    table = pa.table(
        {
            "user_id": pa.array([i % USERS for i in range(20)], pa.int64()),
            "account_id": pa.array([100 + i % USERS for i in range(20)], pa.int64()),
            "event_timestamp": ts,
            "created": ts,
            "clicks": pa.array(range(20), pa.int64()),
        }
    )
    (repo / "data").mkdir(exist_ok=True)
    pq.write_table(table, repo / "data" / "users.parquet")
    write_defs(repo, "stats", "win", "kept")
    with FeatureStore(repo) as store:
        store.apply()
        # up to 10 hours ago: a later run has a row of each user to write again
        rows = store.materialize_incremental(NOW - 10 * H).rows
        assert rows == {"stats": USERS, "win": USERS, "kept": USERS}


@contextmanager
def two_stores(repo: Path) -> Iterator[tuple[FeatureStore, FeatureStore]]:
    """Two stores of ``repo``, as two processes would open it (one LMDB environment per
    process, though: the embedded store's is shared)."""
    with FeatureStore(repo) as m, FeatureStore(repo) as a:
        if m.config.online_store.type == "embedded":
            a._online = m.online
        try:
            yield m, a
        finally:
            if a._online is m._online:
                a._online = None


class Pause:
    """Stops a thread at one point (``hit``) until ``go``; ``inside`` says it got there."""

    def __init__(self) -> None:
        self.inside, self.go = threading.Event(), threading.Event()

    def hit(self) -> None:
        self.inside.set()
        assert self.go.wait(WAIT_S)


class Run(threading.Thread):
    """``fn()`` in a thread; ``result`` or ``error`` once joined."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.fn, self.result, self.error = fn, None, None

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:  # reported by the test
            self.error = exc

    def finish(self) -> Any:
        self.join(WAIT_S)
        assert not self.is_alive()
        return self


def until(done: Callable[[], bool], thread: threading.Thread) -> None:
    """Wait until ``done()`` or ``thread`` ended (whichever first: old code may never pause)."""
    while not done() and thread.is_alive():
        thread.join(0.01)


def pause_offline_reads(monkeypatch: pytest.MonkeyPatch, store: FeatureStore, pause: Pause) -> None:
    """``store``'s materialize pauses where it reads a view's rows offline (plain views) or
    its events (window views): after every registry check, before its first write."""
    import featurestore.offline.windows as windows

    real_rows, real_events = store.offline.iter_latest_rows, windows.read_events

    def rows(*a: Any, **kw: Any) -> Any:
        pause.hit()
        return real_rows(*a, **kw)

    def events(*a: Any, **kw: Any) -> Any:
        pause.hit()
        return real_events(*a, **kw)

    monkeypatch.setattr(store.offline, "iter_latest_rows", rows)
    monkeypatch.setattr(windows, "read_events", events)


@pytest.mark.parametrize("kind", ["embedded", "redis"])
@pytest.mark.parametrize("view", ["stats", "win"])
@pytest.mark.parametrize("change", ["removed", "rekeyed"])
def test_a_materialize_started_before_the_apply_writes_nothing_after_its_cleanup(
    kind: str,
    view: str,
    change: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Materialize reads the registry and pauses before writing ``view``; an apply removes the
    view (or changes its join key) and deletes its rows; materialize goes on: it writes none
    (the view is named in ``skipped``), so the view holds no row, and records no watermark."""
    make_repo(tmp_path, kind, request)
    with two_stores(tmp_path) as (m, a):
        pause = Pause()
        pause_offline_reads(monkeypatch, m, pause)
        run = Run(lambda: m.materialize_incremental(NOW, skip_busy=True))
        run.start()
        assert pause.inside.wait(WAIT_S)
        assert count_keys(a, view, request) == USERS
        other = "win" if view == "stats" else "stats"
        if change == "removed":
            write_defs(tmp_path, other, "kept")
        else:
            write_defs(tmp_path, "stats", "win", "kept", entity="account")
        reports: list[Any] = []
        a.apply(report=reports.append)
        assert view in {r.view for r in reports if r.deleted == USERS}
        assert count_keys(a, view, request) == 0
        pause.go.set()
        run.finish()
        assert run.error is None, run.error
        assert view in run.result.skipped and view not in run.result.rows
        assert "removed or redefined" in run.result.skipped[view]
        assert count_keys(a, view, request) == 0  # nothing written after the cleanup
        state = a.registry
        assert state.pending_cleanup == {} and view not in state.materialization
        assert run.result.rows["kept"] == USERS  # the other views were written
        if change == "rekeyed":  # the view under its new keys fills whole
            assert a.materialize_incremental(NOW).rows[view] == USERS
            assert count_keys(a, view, request) == USERS


@pytest.mark.parametrize("kind", ["embedded", "redis"])
def test_a_materialize_of_named_views_stops_with_an_error(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``materialize`` (no skipping) stops with one line naming the view when an apply removed
    it after materialize began; the rows are gone with the cleanup."""
    make_repo(tmp_path, kind, request)
    with two_stores(tmp_path) as (m, a):
        pause = Pause()
        pause_offline_reads(monkeypatch, m, pause)
        run = Run(lambda: m.materialize(NOW - 30 * 24 * H, NOW, views=["stats"]))
        run.start()
        assert pause.inside.wait(WAIT_S)
        write_defs(tmp_path, "win", "kept")
        a.apply()
        pause.go.set()
        run.finish()
        assert isinstance(run.error, FeatureStoreError)
        assert "'stats'" in str(run.error) and "removed or redefined" in str(run.error)
        assert "\n" not in str(run.error)
        assert count_keys(a, "stats", request) == 0
        assert a.registry.pending_cleanup == {}


@pytest.mark.parametrize("kind", ["embedded", "redis"])
def test_the_cleanup_waits_for_the_batch_being_written(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Materialize is inside its write of a batch when an apply removes the view: the cleanup
    deletes only once that batch landed (so it deletes it too), and materialize stops there."""
    import featurestore.online.writer as writer

    make_repo(tmp_path, kind, request)
    with two_stores(tmp_path) as (m, a):
        m.online.delete_view(m.project, "stats")  # materialize writes them all again
        pause = Pause()
        real_write = writer.write_table

        def write_table(*args: Any, **kw: Any) -> int:
            pause.hit()  # the batch is on its way
            return real_write(*args, **kw)

        monkeypatch.setattr(writer, "write_table", write_table)
        deleting = threading.Event()
        real_delete = a.online.delete_view

        def delete_view(project: str, name: str) -> int:
            deleting.set()
            return real_delete(project, name)

        monkeypatch.setattr(a.online, "delete_view", delete_view)
        waiting = threading.Event()
        real_lock = a._registry.write_lock if hasattr(a._registry, "write_lock") else None
        if real_lock is not None:  # (the code before the fix had no write lock)

            def write_lock(view: str) -> Any:
                return _Signalled(real_lock(view), waiting)

            monkeypatch.setattr(a._registry, "write_lock", write_lock)

        run = Run(lambda: m.materialize(NOW - 30 * 24 * H, NOW, views=["stats"]))
        run.start()
        assert pause.inside.wait(WAIT_S)
        write_defs(tmp_path, "win", "kept")
        apply = Run(a.apply)
        apply.start()
        until(waiting.is_set, apply)  # the cleanup waits for the batch (or, unfixed, deletes)
        assert not deleting.is_set()
        pause.go.set()
        run.finish()
        apply.finish()
        assert apply.error is None, apply.error
        assert deleting.is_set()
        assert isinstance(run.error, FeatureStoreError), run.error  # stopped at the watermark
        assert count_keys(a, "stats", request) == 0
        assert a.registry.pending_cleanup == {}
        assert "stats" not in a.registry.materialization


class _Signalled:
    """A lock that sets ``event`` when someone starts to take it."""

    def __init__(self, lock: Any, event: threading.Event) -> None:
        self._lock, self._event = lock, event

    def acquire(self, *a: Any, **kw: Any) -> Any:
        self._event.set()
        return self._lock.acquire(*a, **kw)

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> Any:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@pytest.mark.parametrize("kind", ["embedded", "redis"])
def test_no_watermark_for_rows_a_cleanup_deleted_before_the_view_came_back(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Materialize wrote every batch of 'stats' and pauses before its watermark; meanwhile an
    apply removes the view (deleting the rows) and another defines it again, the same. The
    watermark must not say the rows are there: the next incremental run writes them all."""
    import featurestore.online.writer as writer
    from featurestore.online.stream.locks import MaterializeLocks

    make_repo(tmp_path, kind, request)
    with two_stores(tmp_path) as (m, a):
        m.online.delete_view(m.project, "stats")
        pause = Pause()
        wrote: list[int] = []
        real_write, real_held = writer.write_table, MaterializeLocks.ensure_held

        def write_table(*args: Any, **kw: Any) -> int:
            wrote.append(1)
            return real_write(*args, **kw)

        def ensure_held(self: Any) -> None:
            if wrote:  # every batch written: the check before the watermark
                pause.hit()
            real_held(self)

        monkeypatch.setattr(writer, "write_table", write_table)
        monkeypatch.setattr(MaterializeLocks, "ensure_held", ensure_held)
        run = Run(lambda: m.materialize(NOW - 30 * 24 * H, NOW, views=["stats"]))
        run.start()
        assert pause.inside.wait(WAIT_S)
        assert count_keys(a, "stats", request) == USERS
        write_defs(tmp_path, "win", "kept")
        a.apply()
        write_defs(tmp_path, "stats", "win", "kept")
        a.apply()
        assert count_keys(a, "stats", request) == 0
        pause.go.set()
        run.finish()
        assert isinstance(run.error, FeatureStoreError), run.error
        assert "stats" not in a.registry.materialization
        assert a.materialize_incremental(NOW).rows["stats"] == USERS
        got = a.get_online_features(["stats:clicks"], {"user_id": list(range(USERS))}, now=NOW)
        assert list(got.statuses["clicks"]) == [Status.PRESENT] * USERS


@pytest.mark.parametrize("kind", ["embedded", "redis"])
def test_a_view_changed_before_materialize_checked_it_is_refused(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Materialize read the registry, then an apply redefined 'stats' (new join key) and
    finished its cleanup before materialize began to write: it is refused, writing nothing."""
    import featurestore.online.stream.locks as locks

    make_repo(tmp_path, kind, request)
    with two_stores(tmp_path) as (m, a):
        pause = Pause()
        real_lock = locks.materialize_lock

        @contextmanager
        def materialize_lock(*args: Any, **kw: Any) -> Iterator[Any]:
            pause.hit()  # the views to write are read from the registry by now
            with real_lock(*args, **kw) as held:
                yield held

        monkeypatch.setattr(locks, "materialize_lock", materialize_lock)
        run = Run(lambda: m.materialize(NOW - 30 * 24 * H, NOW, views=["stats"]))
        run.start()
        assert pause.inside.wait(WAIT_S)
        write_defs(tmp_path, "stats", "win", "kept", entity="account")
        a.apply()
        assert count_keys(a, "stats", request) == 0
        pause.go.set()
        run.finish()
        assert isinstance(run.error, FeatureStoreError), run.error
        assert "'stats'" in str(run.error)
        assert count_keys(a, "stats", request) == 0  # no row under the old join key
        assert a.materialize_incremental(NOW).rows["stats"] == USERS
