"""Materialize keeps a newer online row: a plain view's offline row is written only where the
stored row is older (``codec.row_replaces``), on each online store; ``overwrite`` (and the
CLI's ``--overwrite``) writes it anyway.

Online rows are seeded with chosen event and created times through an unguarded
``write_table`` (what a push to the online store leaves, with any times we like), or through a
real ``push(to="online")``; the expected outcome is worked out per key by a plain comparison.
"""

from __future__ import annotations

import textwrap
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featurestore import types as T
from featurestore.cli import cli
from featurestore.field import Field
from featurestore.online.codec import NULL_TS, ROW_HEAD, RowCodec
from featurestore.online.keys import build_keys
from featurestore.online.writer import write_table
from featurestore.store import FeatureStore
from tests.conftest import online_config
from tests.online._online_views import make_view

PROJECT = "newer"
DEFS = """
from featurestore import Entity, FeatureView, Field, Float64, Int64, ParquetSource

user = Entity("user", join_keys=["user_id"])
stats = FeatureView(
    name="stats", entities=[user],
    source=ParquetSource("data/stats.parquet", created_timestamp_field="created"),
    schema=[{fields}],
)
"""
V1 = [("seq", "Int64"), ("w", "Float64")]  # the view's features: (name, type)
# breaking redefinitions (a new schema version): rows of another size, and of the same size
V2 = {
    "added": [("seq", "Int64"), ("w", "Float64"), ("x", "Float64")],
    "renamed": [("seq", "Int64"), ("x", "Float64")],
}
T0 = 1_700_000_000_000_000  # us; every event time here is T0 + a few seconds
START, END = T0 - 86_400_000_000, T0 + 86_400_000_000
SEC = 1_000_000
_STORES = ("embedded", "redis", "redis_cluster")

Row = tuple[int, int, int | None, int]  # (user_id, event time us, created time us or None, seq)
Stored = tuple[int, int | None, int, int]  # (event time, created time or None, version, seq)


def _write_defs(repo: Path, fields: list[tuple[str, str]]) -> None:
    listed = ", ".join(f'Field("{name}", {kind})' for name, kind in fields)
    (repo / "definitions.py").write_text(textwrap.dedent(DEFS.format(fields=listed)))


def _write_offline(repo: Path, rows: list[Row]) -> None:
    """The view's whole source: ``rows`` (with every feature any definition here has)."""
    ts = pa.timestamp("us", tz="UTC")
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array([r[0] for r in rows], pa.int64()),
                "event_timestamp": pa.array([r[1] for r in rows], pa.int64()).cast(ts),
                "created": pa.array([r[2] for r in rows], pa.int64()).cast(ts),
                "seq": pa.array([r[3] for r in rows], pa.int64()),
                "w": pa.array([float(r[3]) for r in rows], pa.float64()),
                "x": pa.array([float(r[3]) for r in rows], pa.float64()),
            }
        ),
        repo / "data" / "stats.parquet",
    )


def _url(kind: str, request: pytest.FixtureRequest) -> str:
    name = {"redis": "redis_url", "redis_cluster": "redis_cluster_url"}.get(kind)
    return request.getfixturevalue(name) if name else ""


def _repo(tmp_path: Path, kind: str, request: pytest.FixtureRequest) -> tuple[Path, Any]:
    """A repo (definitions V1, an empty source) and its config for the ``kind`` store."""
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    _write_defs(repo, V1)
    _write_offline(repo, [])
    return repo, online_config(kind, repo, url=_url(kind, request), project=PROJECT)


@pytest.fixture(params=_STORES)
def fs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FeatureStore]:
    """An applied store over each online backend, its online store empty."""
    _, config = _repo(tmp_path, request.param, request)
    with FeatureStore(config=config) as store:
        store.apply()
        yield store


def _seed_online(store: FeatureStore, rows: list[Row]) -> None:
    """Write ``rows`` online without any check, as a push to the online store leaves them."""
    view = store.registry.feature_view("stats")
    table = pa.table(
        {
            "user_id": pa.array([r[0] for r in rows], pa.int64()),
            "seq": pa.array([r[3] for r in rows], pa.int64()),
            "w": pa.array([float(r[3]) for r in rows], pa.float64()),
            "x": pa.array([float(r[3]) for r in rows], pa.float64()),
            "__event_ts": pa.array([r[1] for r in rows], pa.int64()),
            "__created_ts": pa.array([r[2] for r in rows], pa.int64()),
        }
    ).select(["user_id", *view.feature_names, "__event_ts", "__created_ts"])
    write_table(store.online, PROJECT, view, table, now_us=0, key_ttl_grace_us=0, batch_size=3)


def _stored(store: FeatureStore, ids: list[int]) -> list[Stored | None]:
    """Each entity's online row as (event time, created time or None, version, seq)."""
    views = {v.schema_version: v for v in _known_views(store)}
    out: list[Stored | None] = []
    for value in store.online.read(build_keys(PROJECT, "stats", ("user_id",), [ids])):
        if value is None:
            out.append(None)
            continue
        ev, cr, ver = ROW_HEAD.unpack_from(value)
        seq = int(RowCodec(views[ver]).decode([value]).column("seq")[0])
        out.append((ev, None if cr == NULL_TS else cr, ver, seq))
    return out


def _known_views(store: FeatureStore) -> list[Any]:
    """The view as the registry holds it, and as V1 and V2 define it (to decode old rows)."""
    import featurestore as fst

    user = fst.Entity("user", join_keys=["user_id"])
    src = fst.ParquetSource("data/stats.parquet", created_timestamp_field="created")
    out = [store.registry.feature_view("stats")]
    for fields in (V1, *V2.values()):
        schema = [fst.Field(name, getattr(fst, kind)) for name, kind in fields]
        out.append(fst.FeatureView(name="stats", entities=[user], source=src, schema=schema))
    return out


def _newer(a: tuple[int, int | None], b: tuple[int, int | None]) -> bool:
    """Whether (event, created) ``a`` is strictly later than ``b``; no created time is earliest."""
    low = -(2**64)
    return (a[0], low if a[1] is None else a[1]) > (b[0], low if b[1] is None else b[1])


def _expected(online: list[Row], offline: list[Row], version: int) -> dict[int, Stored]:
    """Per entity: its online row if strictly newer than its offline one, else the offline one
    (the oracle, written apart from the store's rule)."""
    want = {u: (ev, cr, version, s) for u, ev, cr, s in online}
    for u, ev, cr, s in offline:
        held = want.get(u)
        if held is None or not _newer((held[0], held[1]), (ev, cr)):
            want[u] = (ev, cr, version, s)
    return want


def _written(online: list[Row], offline: list[Row]) -> int:
    held = {u: (ev, cr) for u, ev, cr, _ in online}
    return sum(1 for u, ev, cr, _ in offline if u not in held or not _newer(held[u], (ev, cr)))


# ------------------------------------------------------------------------------------ rules


def test_a_row_pushed_online_only_survives_a_materialize_of_older_rows(fs: FeatureStore) -> None:
    """A real push (created time: the push's) at a later event time stays; other keys and an
    older pushed row get the offline row."""
    repo = fs.repo_path
    _write_offline(repo, [(1, T0, None, 10), (2, T0, None, 20), (3, T0 + 5 * SEC, T0, 30)])
    later = datetime.fromtimestamp((T0 + 60 * SEC) / 1e6, timezone.utc)
    earlier = datetime.fromtimestamp((T0 - 60 * SEC) / 1e6, timezone.utc)
    assert fs.push("stats", [{"user_id": 1, "seq": 11, "w": 0.5, "event_timestamp": later}]) == 1
    assert fs.push("stats", [{"user_id": 3, "seq": 31, "w": 0.5, "event_timestamp": earlier}]) == 1
    res = fs.materialize(START, END)
    assert res.rows == {"stats": 2}
    got = _stored(fs, [1, 2, 3])
    assert [g[3] if g else None for g in got] == [11, 20, 30]
    assert got[0] is not None and got[0][0] == T0 + 60 * SEC


def test_materialize_incremental_keeps_a_newer_online_row_too(fs: FeatureStore) -> None:
    _write_offline(fs.repo_path, [(1, T0, T0, 10), (2, T0, T0, 20)])
    _seed_online(fs, [(1, T0 + SEC, None, 11), (2, T0 - SEC, T0 + 9 * SEC, 21)])
    assert fs.materialize_incremental(END).rows == {"stats": 1}
    assert [g[3] if g else None for g in _stored(fs, [1, 2])] == [11, 20]


@pytest.mark.parametrize("others", [0, 8])  # 5 keys compared row by row, 13 in numpy
def test_equal_times_let_materialize_write_and_a_later_created_time_keeps_the_row(
    fs: FeatureStore, others: int
) -> None:
    """Equal (event, created): the offline row is written (the last written stays); equal
    event times are decided by the created time, a null one losing. ``others``: keys held
    online with the same times as offline (replaced)."""
    more = list(range(10, 10 + others))
    _write_offline(
        fs.repo_path,
        [(1, T0, T0, 10), (2, T0, T0, 20), (3, T0, None, 30), (4, T0, T0, 40), (5, T0, None, 50)]
        + [(u, T0, T0, u) for u in more],
    )
    _seed_online(
        fs,
        [
            (1, T0, T0, 11),  # the same times: replaced
            (2, T0, T0 + 1, 21),  # created later: kept
            (3, T0, T0 - SEC, 31),  # offline has no created time: kept
            (4, T0, None, 41),  # online has none, offline has one: replaced
            (5, T0, None, 51),  # neither has one: replaced
        ]
        + [(u, T0, T0, 100 + u) for u in more],
    )
    assert fs.materialize(START, END).rows == {"stats": 3 + others}
    got = [g[3] if g else None for g in _stored(fs, [1, 2, 3, 4, 5, *more])]
    assert got == [10, 21, 31, 40, 50, *more]


@pytest.mark.parametrize("change", sorted(V2))
def test_a_breaking_redefinition_lets_materialize_write_over_newer_rows(
    fs: FeatureStore, change: str
) -> None:
    """Online rows of the old schema version are not served, so older offline rows of the new
    version replace them whatever their times (12 rows: a batch compared in numpy)."""
    repo = fs.repo_path
    ids = list(range(12))
    old_version = fs.registry.feature_view("stats").schema_version
    _write_offline(repo, [(u, T0, None, 10 + u) for u in ids])
    later = datetime.fromtimestamp((T0 + 3600 * SEC) / 1e6, timezone.utc)
    pushed = [{"user_id": u, "seq": 50 + u, "w": 1.0, "event_timestamp": later} for u in ids[:6]]
    assert fs.push("stats", pushed) == 6
    _seed_online(fs, [(u, T0 + SEC, T0 + SEC, 50 + u) for u in ids[6:]])
    _write_defs(repo, V2[change])
    fs.apply()
    new_version = fs.registry.feature_view("stats").schema_version
    assert new_version != old_version
    assert fs.materialize(START, END).rows == {"stats": 12}
    assert _stored(fs, ids) == [(T0, None, new_version, 10 + u) for u in ids]


def test_overwrite_writes_the_offline_rows_over_newer_ones(fs: FeatureStore) -> None:
    _write_offline(fs.repo_path, [(1, T0, T0, 10), (2, T0, T0, 20)])
    _seed_online(fs, [(1, T0 + SEC, T0, 11), (2, T0, T0 + SEC, 21)])
    assert fs.materialize_incremental(END, overwrite=True).rows == {"stats": 2}
    assert [g[3] if g else None for g in _stored(fs, [1, 2])] == [10, 20]
    _seed_online(fs, [(1, T0 + SEC, T0, 12), (2, T0, T0 + SEC, 22)])
    assert fs.materialize(START, END, overwrite=True).rows == {"stats": 2}
    assert [g[3] if g else None for g in _stored(fs, [1, 2])] == [10, 20]


# ------------------------------------------------------------------------------------ random

# few values, so ties are common; 2**32 apart too (Redis compares each int64 as two halves)
_ev = st.sampled_from([T0, T0 + SEC, T0 + 2 * SEC, T0 - 2**32, T0 + 2**32])
_cr = st.none() | st.sampled_from([T0, T0 + 1, T0 + 2, T0 - 2**32, T0 + 2**32])
_times = st.tuples(_ev, _cr)
# per entity: its online row's and its offline row's (event, created) times, or no row; past
# 8 keys a batch is compared in numpy, so there are 30
_entities = st.lists(st.tuples(st.none() | _times, st.none() | _times), min_size=30, max_size=30)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(entities=_entities)
def test_each_key_ends_with_the_newer_of_its_online_and_offline_rows(
    fs: FeatureStore, entities: list[tuple[Any, Any]]
) -> None:
    """Random event and created times per key, online and offline, ties included; some keys
    only online, some only offline."""
    fs.online.delete_view(PROJECT, "stats")
    online = [(u, *on, 100 + u) for u, (on, _) in enumerate(entities) if on is not None]
    offline = [(u, *off, 200 + u) for u, (_, off) in enumerate(entities) if off is not None]
    _write_offline(fs.repo_path, offline)
    if online:
        _seed_online(fs, online)
    version = fs.registry.feature_view("stats").schema_version
    res = fs.materialize(START, END)
    assert res.rows == {"stats": _written(online, offline)}
    want = _expected(online, offline, version)
    ids = list(range(30))
    assert _stored(fs, ids) == [want.get(u) for u in ids]


def _sharing_slots(n: int) -> list[int]:
    """About ``n`` entity ids whose keys share Redis Cluster slots 1 to 5 at a time (ids in a
    row hash to distinct slots)."""
    from redis.crc import key_slot

    pool = list(range(60_000))
    by_slot: dict[int, list[int]] = {}
    for u, key in zip(pool, build_keys(PROJECT, "stats", ("user_id",), [pool]), strict=True):
        by_slot.setdefault(key_slot(key), []).append(u)
    ids: list[int] = []
    for i, us in enumerate(by_slot.values()):
        ids += us[: 1 + i % 5]
        if len(ids) >= n:
            return sorted(ids)
    raise AssertionError("too few slots")


def test_a_large_materialize_keeps_every_newer_row(fs: FeatureStore) -> None:
    """2,000 entities in one batch, many sharing a cluster slot (one script call per slot);
    every third holds a newer row online, every third an older one."""
    ids = _sharing_slots(2000)
    _write_offline(fs.repo_path, [(u, T0, T0, u) for u in ids])
    newer = ids[0::3]
    _seed_online(fs, [(u, T0 + SEC, T0, -u) for u in newer])
    _seed_online(fs, [(u, T0 - SEC, T0, -u) for u in ids[1::3]])
    assert fs.materialize(START, END).rows == {"stats": len(ids) - len(newer)}
    kept = set(newer)
    got = [g[3] if g else None for g in _stored(fs, ids)]
    assert got == [-u if u in kept else u for u in ids]


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(1, 12),
    groups=st.integers(0, 4),
    data=st.data(),
)
def test_cas_calls_packed_by_size_are_the_calls_packed_one_by_one(
    size: int, groups: int, data: st.DataObject
) -> None:
    """``pack_cas_groups`` (a cluster's slot groups of one size in one pass) sends the same
    bytes as ``pack_cas`` per group, whatever the keys and values hold (``%`` included)."""
    from featurestore.online._redis_wire import pack_cas, pack_cas_groups

    n = size * groups
    raw = st.binary(max_size=20) | st.just(b"%s%d%%")
    keys = data.draw(st.lists(raw, min_size=n, max_size=n))
    values = data.draw(st.lists(raw, min_size=n, max_size=n))
    expires = data.draw(
        st.none() | st.lists(st.none() | st.integers(0, 10**14), min_size=n, max_size=n)
    )
    sha = b"0123456789abcdef0123456789abcdef01234567"
    one_by_one = b"".join(
        pack_cas(
            sha,
            keys[lo : lo + size],
            values[lo : lo + size],
            None if expires is None else expires[lo : lo + size],
        )
        for lo in range(0, n, size)
    )
    assert pack_cas_groups(sha, size, keys, values, expires) == one_by_one


@pytest.mark.parametrize("n", [3, 20])  # compared row by row, and in numpy
def test_an_expired_stored_row_counts_as_none(online_backend: tuple[Any, Any], n: int) -> None:
    """A stored row past its expiry (written under a shorter ttl + grace) is replaced by an
    older live row; a live newer one is kept."""
    _, store = online_backend
    view = make_view("stats", [Field("seq", T.Int64)], ttl="1h")
    now = time.time_ns() // 1000
    hour = 3600 * SEC
    ids = list(range(n))

    def rows(ev: int, seq: int) -> pa.Table:
        return pa.table(
            {
                "user_id": pa.array(ids, pa.int64()),
                "seq": pa.array([seq] * n, pa.int64()),
                "__event_ts": pa.array([ev] * n, pa.int64()),
                "__created_ts": pa.nulls(n, pa.int64()),
            }
        )

    def write(table: pa.Table, grace_us: int, only_newer: bool) -> int:
        return write_table(
            store, PROJECT, view, table, now_us=now, key_ttl_grace_us=grace_us,
            batch_size=1000, only_newer=only_newer,
        )  # fmt: skip

    seeded = now - hour + 300_000  # expires 0.3 s from now (no grace)
    assert write(rows(seeded, 1), 0, False) == n
    time.sleep(0.6)
    assert write(rows(seeded - 5 * SEC, 2), hour, True) == n  # older, but live for an hour
    assert {v for v in _seqs(store, view, ids)} == {2}
    assert write(rows(seeded - 10 * SEC, 3), hour, True) == 0  # older than a live row
    assert {v for v in _seqs(store, view, ids)} == {2}


def _seqs(store: Any, view: Any, ids: list[int]) -> list[int | None]:
    codec = RowCodec(view)
    got = store.read(build_keys(PROJECT, view.name, view.join_keys, [ids]))
    return [None if v is None else int(codec.decode([v]).column("seq")[0]) for v in got]


# ------------------------------------------------------------------------------------ CLI


@pytest.mark.parametrize("kind", _STORES)
def test_cli_overwrite_flag(tmp_path: Path, kind: str, request: pytest.FixtureRequest) -> None:
    """``materialize`` keeps the newer online row; ``--overwrite`` (both commands) replaces it."""
    repo, config = _repo(tmp_path, kind, request)
    store = config.online_store
    yaml = f"project: {PROJECT}\nonline_store:\n  type: {kind}\n"
    yaml += f"  url: {store.url}\n" if store.url else "  map_size: 64MB\n"
    (repo / "featurestore.yaml").write_text(yaml)
    _write_offline(repo, [(1, T0, T0, 10)])
    runner = CliRunner()
    base = ["--repo", str(repo)]
    assert runner.invoke(cli, [*base, "apply"]).exit_code == 0
    window = [datetime.fromtimestamp(t / 1e6, timezone.utc).isoformat() for t in (START, END)]
    with FeatureStore(repo) as fs:
        _seed_online(fs, [(1, T0 + SEC, T0, 11)])
    for extra, seq in (([], 11), (["--overwrite"], 10)):
        out = runner.invoke(cli, [*base, "materialize", *window, *extra])
        assert out.exit_code == 0, out.output
        with FeatureStore(repo) as fs:
            assert [g[3] if g else None for g in _stored(fs, [1])] == [seq]
    # each incremental run reads the rows after the last one's end: one offline row each
    for n, (extra, seq) in enumerate((([], 12), (["--overwrite"], 30))):
        at = END + (n + 1) * 100 * SEC
        _write_offline(repo, [(1, T0, T0, 10), (1, at - 10 * SEC, at, 20 + 10 * n)])
        with FeatureStore(repo) as fs:
            _seed_online(fs, [(1, at - SEC, None, 12)])
        when = datetime.fromtimestamp(at / 1e6, timezone.utc).isoformat()
        out = runner.invoke(cli, [*base, "materialize-incremental", when, *extra])
        assert out.exit_code == 0, out.output
        with FeatureStore(repo) as fs:
            assert [g[3] if g else None for g in _stored(fs, [1])] == [seq]
    help_text = runner.invoke(cli, ["materialize", "--help"]).output
    assert "--overwrite" in help_text and "newer online rows" in help_text
