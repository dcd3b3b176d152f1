"""Concurrent writers of one entity (pushes, stream ingest) leave its newest row online.

The check that a row is not older than the stored one is made by the store in the same atomic
step as the write (a Lua script in Redis, one write transaction in LMDB). A read-then-write
check loses updates when two writers both read before either writes: ``_Gate`` forces exactly
that interleaving, so the race is shown every run instead of by luck; the process tests add
real contention through the real push path.
"""

from __future__ import annotations

import itertools
import multiprocessing
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featurestore import types as T
from featurestore.feature_view import FeatureView
from featurestore.field import Field
from featurestore.online.base import OnlineStore, open_online_store
from featurestore.online.codec import NULL_TS, ROW_HEAD, RowCodec
from featurestore.online.keys import build_keys
from featurestore.online.stream.apply import write_plain
from featurestore.online.stream.events import Event
from featurestore.online.writer import write_table
from featurestore.store import FeatureStore
from tests.conftest import online_config
from tests.online._online_views import make_view

PROJECT = "race"
VIEW = make_view("race", [Field("seq", T.Int64)])
OTHER = make_view("race", [Field("seq", T.Int64), Field("extra", T.Float64)])  # new schema
CODECS = {v.schema_version: RowCodec(v) for v in (VIEW, OTHER)}
I64 = (-(2**63), 2**63 - 1)
EDGES = [NULL_TS, I64[0] + 1, -(2**32), -1, 0, 1, 2**31, 2**32 - 1, 2**32, 2**53 + 1, I64[1]]
_STORES = ("embedded", "redis", "redis_cluster")


def _open(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> OnlineStore:
    url = {"redis": "redis_url", "redis_cluster": "redis_cluster_url"}.get(kind)
    cfg = online_config(kind, tmp_path, url=request.getfixturevalue(url) if url else "")
    return open_online_store(cfg)


@pytest.fixture(params=_STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OnlineStore]:
    s = _open(request.param, request, tmp_path)
    yield s
    s.close()


def _table(ids: list[int], ev: list[int], cr: list[int], seq: list[int]) -> pa.Table:
    """Rows of ``VIEW``; a created time of NULL_TS is a null one."""
    return pa.table(
        {
            "user_id": pa.array(ids, pa.int64()),
            "seq": pa.array(seq, pa.int64()),
            "__event_ts": pa.array(ev, pa.int64()),
            "__created_ts": pa.array([None if c == NULL_TS else c for c in cr], pa.int64()),
        }
    )


def _write(
    store: OnlineStore, rows: list[tuple[int, int, int, int]], view: FeatureView = VIEW
) -> int:
    """write_table(only_newer=True), the path of pushes, of rows (id, ev, cr, seq)."""
    ids, ev, cr, seq = (list(c) for c in zip(*rows, strict=True))
    table = _table(ids, ev, cr, seq)
    if view is OTHER:
        table = table.append_column("extra", pa.array([1.5] * len(ids)))
    return write_table(
        store, PROJECT, view, table, now_us=0, key_ttl_grace_us=0, batch_size=7, only_newer=True
    )


def _stored(store: OnlineStore, ids: list[int]) -> list[tuple[int, int, int, int] | None]:
    """(event time, created time, schema version, seq) of each entity's stored row."""
    out: list[tuple[int, int, int, int] | None] = []
    for value in store.read(build_keys(PROJECT, "race", ("user_id",), [ids])):
        if value is None:
            out.append(None)
            continue
        ev, cr, ver = ROW_HEAD.unpack_from(value)
        out.append((ev, cr, ver, int(CODECS[ver].decode([value]).column("seq")[0])))
    return out


Kept = dict[int, tuple[int, int, int, int]]  # entity -> (ev, cr, version, seq) of its row


def _land(kept: Kept, uid: int, ev: int, cr: int, ver: int, seq: int) -> bool:
    """Apply one write to ``kept`` as the rule says; whether it was written. A row replaces
    the stored one unless that one has the same version and a later (ev, cr)."""
    old = kept.get(uid)
    if old is None or old[2] != ver or (ev, cr) >= (old[0], old[1]):
        kept[uid] = (ev, cr, ver, seq)
        return True
    return False


_times = st.one_of(st.sampled_from(EDGES), st.integers(*I64))
_row = st.tuples(st.integers(0, 3), _times, _times, st.booleans())


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batches=st.lists(st.lists(_row, min_size=1, max_size=6), min_size=1, max_size=5))
def test_the_stored_row_is_the_newest_by_event_then_created_time(
    store: OnlineStore, batches: list[list[tuple[int, int, int, bool]]]
) -> None:
    """Ties in both keep the last written; a null created time loses; a stored row of another
    schema version is replaced; int64 extremes compare exactly (Lua has only doubles)."""
    store.delete_view(PROJECT, "race")
    seq = itertools.count()
    kept: Kept = {}
    for batch in batches:
        for other in (False, True):  # a view's two schema versions are written in two calls
            rows = [(u, ev, cr, next(seq)) for u, ev, cr, o in batch if o == other]
            if not rows:
                continue
            view = OTHER if other else VIEW
            # rows of one key in one call are checked one after the other, as if written alone
            landed = [_land(kept, u, ev, cr, view.schema_version, s) for u, ev, cr, s in rows]
            assert _write(store, rows, view) == sum(landed)
    ids = [0, 1, 2, 3]
    assert _stored(store, ids) == [kept.get(u) for u in ids]


class _Gate(OnlineStore):
    """A real store whose two writers are made to interleave as a lost update needs: the early
    writer (newer rows) writes only once the late one has read the stored rows (or, if it
    never reads, has started its write), and the late writer (older rows) writes only after the
    early one has. A read-then-write check then writes the older rows last; a store that checks
    in the write itself still refuses them."""

    def __init__(self, inner: OnlineStore, late_read: Any, first_done: Any, late: bool) -> None:
        self.inner, self.late_read, self.first_done, self.late = inner, late_read, first_done, late

    def read(self, keys: Any) -> list[bytes | None]:
        got = self.inner.read(keys)
        if self.late:
            self.late_read.set()
        return got

    def _in_turn(self, write: Callable[[], Any]) -> Any:
        if self.late:
            self.late_read.set()
            assert self.first_done.wait(timeout=20), "the early writer never wrote"
            return write()
        assert self.late_read.wait(timeout=20), "the late writer never started"
        try:
            return write()
        finally:
            self.first_done.set()

    def write_batch(self, keys: Any, values: Any, expire_at_ms: Any = None) -> None:
        self._in_turn(lambda: self.inner.write_batch(keys, values, expire_at_ms))

    def write_newer(self, keys: Any, values: Any, expire_at_ms: Any = None) -> int:
        return self._in_turn(lambda: self.inner.write_newer(keys, values, expire_at_ms))  # type: ignore[no-any-return]

    def delete_view(self, project: str, view_name: str) -> int:
        return self.inner.delete_view(project, view_name)

    def ping(self) -> None:
        self.inner.ping()

    def close(self) -> None:
        pass


def _ingest(store: OnlineStore, rows: list[tuple[int, int, int, int]]) -> int:
    """Stream ingest's write of plain-view events (id, ev, cr, seq), as the ingester makes it."""
    events = [
        Event(id=(s, 0), raw_id=f"{s}-0", ts=ev, created=cr, values={"user_id": u, "seq": s})
        for u, ev, cr, s in rows
    ]
    return write_plain(
        store, PROJECT, VIEW, events, {"user_id": pa.int64()}, grace_us=0, now_us=0,
        batch_size=100,
    )  # fmt: skip


@pytest.mark.parametrize("late_writer", ["push", "ingest"])
def test_an_older_row_racing_a_newer_one_never_wins(store: OnlineStore, late_writer: str) -> None:
    """Both writers see the same stored rows and the one holding older rows writes last: with
    a read-then-write check the older rows land; here each entity keeps its newest."""
    ids = list(range(6))
    _write(store, [(u, 100, 0, -1) for u in ids])
    # the early writer holds rows newer than the late one's for 0-2, older for 3-5
    early = [(u, 300 if u < 3 else 200, 0, u) for u in ids]
    late = [(u, 200 if u < 3 else 300, 0, 10 + u) for u in ids]
    late_read, first_done = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def run(fn: Callable[[], Any]) -> None:
        try:
            fn()
        except BaseException as exc:
            errors.append(exc)
        finally:
            late_read.set()
            first_done.set()

    late_write = _ingest if late_writer == "ingest" else _write
    gates = [_Gate(store, late_read, first_done, late) for late in (False, True)]
    threads = [
        threading.Thread(target=run, args=(lambda: _write(gates[0], early),)),
        threading.Thread(target=run, args=(lambda: late_write(gates[1], late),)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    want = [(300, 0, VIEW.schema_version, u if u < 3 else 10 + u) for u in ids]
    assert _stored(store, ids) == want


# ----------------------------------------------------------------- processes, real contention

N_PROCS, ROUNDS, ENTITIES = 3, 25, 8


def _rows_of(proc: int, round_: int) -> list[tuple[int, int, int, int]]:
    """Process ``proc``'s rows of one round: every entity, random times from a narrow range
    (so ties in event time, and in both times, are common); seq is a function of the times,
    so rows tied in both are the same row and the oracle is exact whoever wrote last."""
    rng = np.random.default_rng(1000 * proc + round_)
    ev = rng.integers(0, 40, ENTITIES)
    cr = rng.integers(0, 4, ENTITIES)
    cr = np.where(cr == 0, NULL_TS, cr)
    return [
        (u, int(e), int(c), int(e) * 10 + int(c % 10))
        for u, e, c in zip(range(ENTITIES), ev, cr, strict=True)
    ]


def _writer_proc(kind: str, path: str, url: str, proc: int, go: Any) -> None:
    store = open_online_store(online_config(kind, Path(path), url=url))
    go.wait(30)
    for r in range(ROUNDS):
        _write(store, _rows_of(proc, r))
    store.close()


def _start(target: Callable[..., None], args: Callable[[int], tuple[Any, ...]]) -> None:
    """Run ``N_PROCS`` forked processes released together; each must exit cleanly."""
    ctx = multiprocessing.get_context("fork")
    go = ctx.Event()
    procs = [ctx.Process(target=target, args=(*args(p), go)) for p in range(N_PROCS)]
    for p in procs:
        p.start()
    go.set()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * N_PROCS


@pytest.mark.parametrize("kind", _STORES)
def test_processes_writing_the_same_entities_leave_the_newest_rows(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    store = _open(kind, request, tmp_path)
    url = getattr(store, "url", "")
    store.close()
    _start(_writer_proc, lambda p: (kind, str(tmp_path), url, p))
    best: dict[int, tuple[int, int]] = {}
    for p, r in itertools.product(range(N_PROCS), range(ROUNDS)):
        for u, ev, cr, _ in _rows_of(p, r):
            best[u] = max(best.get(u, (I64[0], I64[0])), (ev, cr))
    store = _open(kind, request, tmp_path)
    ids = list(range(ENTITIES))
    want = [(*best[u], VIEW.schema_version, best[u][0] * 10 + best[u][1] % 10) for u in ids]
    assert _stored(store, ids) == want
    store.close()


# ---------------------------------------------------------------- through FeatureStore.push

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
DEFS = """
from featurestore import Entity, FeatureView, Field, Int64, ParquetSource
user = Entity("user", join_keys=["user_id"])
scores = FeatureView(name="scores", entities=[user], source=ParquetSource("data/scores"),
                     schema=[Field("second", Int64)])
"""


def _push_repo(root: Path, online: str) -> Path:
    repo = root / "repo"
    (repo / "data" / "scores").mkdir(parents=True)
    (repo / "featurestore.yaml").write_text(f"project: pushrace\nonline_store:\n{online}")
    (repo / "definitions.py").write_text(DEFS)
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array([0], pa.int64()),
                "event_timestamp": pa.array([T0], pa.timestamp("us", tz="UTC")),
                "second": pa.array([0], pa.int64()),
            }
        ),
        repo / "data" / "scores" / "part-0.parquet",
    )
    with FeatureStore(repo) as s:
        s.apply()
    return repo


def _seconds(proc: int, round_: int) -> list[int]:
    return np.random.default_rng(7000 + 100 * proc + round_).integers(0, 30, ENTITIES).tolist()


def _pusher_proc(repo: str, proc: int, go: Any) -> None:
    with FeatureStore(repo) as s:
        go.wait(30)
        for r in range(ROUNDS):
            secs = _seconds(proc, r)
            times = [(T0 + timedelta(seconds=x)).isoformat() for x in secs]
            s.push("scores", {"user_id": list(range(ENTITIES)), "event_timestamp": times,
                              "second": secs})  # fmt: skip


@pytest.mark.parametrize("kind", ["embedded", "redis"])
def test_concurrent_pushes_leave_each_entitys_latest_row_online(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Rows tied in event time hold the same value, so which of them stays does not matter."""
    online = "  type: embedded\n  path: data/online\n  map_size: 64MB\n"
    if kind == "redis":
        online = f"  type: redis\n  url: {request.getfixturevalue('redis_url')}\n"
    repo = _push_repo(tmp_path, online)
    _start(_pusher_proc, lambda p: (str(repo), p))
    latest = [
        max(_seconds(p, r)[u] for p in range(N_PROCS) for r in range(ROUNDS))
        for u in range(ENTITIES)
    ]
    with FeatureStore(repo) as s:
        got = s.get_online_features(["scores:second"], {"user_id": list(range(ENTITIES))})
        assert got.to_dict()["second"] == latest


# ----------------------------------------------------------------- details of the stores


def test_an_older_row_leaves_the_key_expiry_and_a_newer_one_sets_its_own(
    redis_url: str, redis_server: Any, tmp_path: Path
) -> None:
    """As write_batch: SET ... PXAT, and a row without an expiry clears the key's."""
    store = open_online_store(online_config("redis", tmp_path, url=redis_url))
    key = build_keys(PROJECT, "race", ("user_id",), [[1]])[0]
    rows = RowCodec(VIEW).encode_table(_table([1, 1, 1], [5, 4, 6], [0, 0, 0], [1, 2, 3]))
    now_ms = int(time.time() * 1000)
    client = redis_server.client()
    assert store.write_newer([key], rows[:1], [now_ms + 60_000]) == 1
    ttl = client.pttl(key)
    assert 0 < ttl <= 60_000
    assert store.write_newer([key], rows[1:2], [now_ms + 600_000]) == 0  # older: untouched
    assert client.get(key) == rows[0] and client.pttl(key) <= ttl
    assert store.write_newer([key], rows[2:3], None) == 1
    assert client.get(key) == rows[2] and client.pttl(key) == -1
    store.close()


@pytest.mark.parametrize("kind", ["redis", "redis_cluster"])
def test_a_flushed_script_cache_is_loaded_again(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A restart or failover empties the server's scripts: the next write loads it again."""
    store = _open(kind, request, tmp_path)
    ids = list(range(20))
    assert _write(store, [(u, 10, 0, u) for u in ids]) == 20
    client = store._client()  # type: ignore[attr-defined]
    client.script_flush()  # on a cluster: every primary
    assert _write(store, [(u, 5 if u % 2 else 20, 0, 100 + u) for u in ids]) == 10
    assert [s[3] for s in _stored(store, ids)] == [u if u % 2 else 100 + u for u in ids]  # type: ignore[index]
    store.close()


def test_an_expired_embedded_row_does_not_block_an_older_one(tmp_path: Path) -> None:
    """Reads treat an expired value as none, and so does the check (until a purge frees it)."""
    store = open_online_store(online_config("embedded", tmp_path))
    key = build_keys(PROJECT, "race", ("user_id",), [[1]])[0]
    newer, older = RowCodec(VIEW).encode_table(_table([1, 1], [9, 3], [0, 0], [1, 2]))
    soon = int(time.time() * 1000) + 30
    assert store.write_newer([key], [newer], [soon]) == 1
    assert store.write_newer([key], [older]) == 0
    while int(time.time() * 1000) <= soon:
        time.sleep(0.01)
    assert store.read([key]) == [None]
    assert store.write_newer([key], [older]) == 1
    assert store.read([key]) == [older]
    store.close()


def test_a_cluster_write_with_a_stale_slot_map_follows_the_redirects(
    redis_cluster_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Script calls sent to the wrong node are answered MOVED, not run: they run again
    through redis-py, and each counts once."""
    from featurestore.online import _redis_wire as wire

    store = open_online_store(online_config("redis_cluster", tmp_path, url=redis_cluster_url))
    ids = list(range(60))
    assert _write(store, [(u, 10, 0, u) for u in ids]) == 60
    one_node = store._client().get_primaries()[0]  # type: ignore[attr-defined]
    real = wire.group_by_slot

    def stale(c: Any, ks: Any) -> Any:
        merged: dict[int, list[int]] = {}
        for slots in real(c, ks).values():
            merged.update(slots)
        return {one_node: merged}  # every slot sent to one node: the others answer MOVED

    monkeypatch.setattr(wire, "group_by_slot", stale)
    assert _write(store, [(u, 5 if u % 3 else 20, 0, 100 + u) for u in ids]) == 20
    assert [s[3] for s in _stored(store, ids)] == [u if u % 3 else 100 + u for u in ids]  # type: ignore[index]
    store.close()


@settings(max_examples=100, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.binary(max_size=300), st.binary(max_size=5000), st.none() | st.integers(0, 2**45)
        ),
        max_size=20,
    )
)
def test_packed_script_call_is_the_resp_a_client_library_sends(
    rows: list[tuple[bytes, bytes, int | None]],
) -> None:
    import hiredis

    from featurestore.online._redis_wire import cas_args, pack_cas

    keys, values, expires = ([r[i] for r in rows] for i in range(3))
    sha = b"f" * 40
    want = hiredis.pack_command(("EVALSHA", sha, len(keys), *keys, *cas_args(values, expires)))
    assert pack_cas(sha, keys, values, expires) == want
    assert cas_args(values, expires) == [
        x for v, e in zip(values, expires, strict=True) for x in (v, b"%d" % (e or 0))
    ]


def test_an_ingested_older_event_racing_a_newer_push_never_wins(
    tmp_path: Path, redis_url: str
) -> None:
    """The ingester itself (plain view ``profile``): it reads the stored row, a push of a
    newer row lands, then the ingester writes its older event. The push's row stays."""
    from featurestore.online.stream import Ingester
    from tests.stream.conftest import H, client_of, now_floor_us, small_repo, xadd_json

    repo = small_repo(tmp_path / "repo", redis_url)
    now = now_floor_us()
    with FeatureStore(repo) as store:
        store.apply()
        view = store.registry.feature_view("profile")
        ev = {"user_id": 77, "event_timestamp": now - 2 * H, "created": now - 2 * H, "tier": 1}
        xadd_json(client_of(store), "profile_events", [ev])
        late_read, first_done = threading.Event(), threading.Event()
        ing = Ingester(store)
        ing.online = _Gate(store.online, late_read, first_done, True)
        newer = pa.table(
            {
                "user_id": pa.array([77], pa.int64()),
                "tier": pa.array([2], pa.int64()),
                "score": pa.array([0.5]),
                "__event_ts": pa.array([now - H], pa.int64()),
                "__created_ts": pa.array([now], pa.int64()),
            }
        )
        early = _Gate(store.online, late_read, first_done, False)
        pushed: list[int] = []
        kw = {"now_us": now, "key_ttl_grace_us": 0, "batch_size": 10, "only_newer": True}

        def push_newer() -> None:
            pushed.append(write_table(early, store.project, view, newer, **kw))  # type: ignore[arg-type]

        push = threading.Thread(target=push_newer)
        push.start()
        try:
            assert ing.run(once=True).applied == 1
        finally:
            late_read.set()
            push.join(30)
            ing.close()
        assert pushed == [1]
        got = store.get_online_features(["profile:tier"], [{"user_id": 77}], now=now).to_dict()
        assert got["tier"] == [2]
