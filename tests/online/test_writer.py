"""write_table: batches, key expiry from ttl + grace, skipping dead rows, determinism."""

from __future__ import annotations

import struct
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from featurestore import types as T
from featurestore.errors import EntityDataError
from featurestore.field import Field
from featurestore.online.codec import RowCodec
from featurestore.online.keys import build_keys
from featurestore.online.writer import key_order, write_table
from tests.online._online_views import float_table, make_view


class _Capture:
    """An OnlineStore stand-in that records write_batch calls (unit test of the batching)."""

    def __init__(self) -> None:
        self.batches: list[tuple[list[bytes], list[bytes], Any]] = []

    def write_batch(self, keys: list[bytes], values: list[bytes], expire: Any = None) -> None:
        self.batches.append((keys, values, expire))


def test_batches_keys_values_and_expiry() -> None:
    view = make_view("v", [Field("x", T.Float64)], ttl="1h")
    ev = np.array([1_000_000_000, 2_000_000_000, 3_000_000_000], dtype=np.int64)
    table = float_table(view, [1, 2, 3], ev)
    cap = _Capture()
    n = write_table(cap, "p", view, table, now_us=0, key_ttl_grace_us=5_000_000, batch_size=2)
    assert n == 3 and [len(b[0]) for b in cap.batches] == [2, 1]
    keys = [k for b in cap.batches for k in b[0]]
    assert keys == build_keys("p", "v", ("user_id",), [[1, 2, 3]])
    values = [v for b in cap.batches for v in b[1]]
    assert values == RowCodec(view).encode_table(table)
    expire = [e for b in cap.batches for e in b[2]]
    assert expire == [(int(t) + 3_600_000_000 + 5_000_000) // 1000 for t in ev]


def test_rows_already_past_ttl_and_grace_are_skipped() -> None:
    view = make_view("v", [Field("x", T.Float64)], ttl="10s")
    table = float_table(view, [1, 2], np.array([0, 100_000_000], dtype=np.int64))
    cap = _Capture()
    n = write_table(cap, "p", view, table, now_us=50_000_000, key_ttl_grace_us=0, batch_size=10)
    assert n == 1
    assert cap.batches[0][0] == build_keys("p", "v", ("user_id",), [[2]])


def test_no_ttl_means_no_expiry() -> None:
    view = make_view("v", [Field("x", T.Float64)])
    cap = _Capture()
    write_table(cap, "p", view, float_table(view, [1], 5), now_us=0, key_ttl_grace_us=0,
                batch_size=10)  # fmt: skip
    assert cap.batches[0][2] is None


def test_same_table_writes_same_bytes() -> None:
    view = make_view()
    table = float_table(view, list(range(100)), 7, seed=3)
    a, b = _Capture(), _Capture()
    for cap in (a, b):
        write_table(cap, "p", view, table, now_us=0, key_ttl_grace_us=0, batch_size=33)
    assert a.batches == b.batches


def test_missing_join_key_column_is_an_entity_error() -> None:
    view = make_view("v", [Field("x", T.Float64)])
    table = pa.table({"x": [1.0], "__event_ts": [1]})
    with pytest.raises(EntityDataError, match="user_id"):
        write_table(_Capture(), "p", view, table, now_us=0, key_ttl_grace_us=0, batch_size=10)


def test_written_rows_read_back_on_every_backend(online_backend: tuple) -> None:
    _, store = online_backend
    view = make_view(ttl="1d")
    now = int(time.time() * 1_000_000)
    table = float_table(view, list(range(5000)), now)
    n = write_table(store, "test", view, table, now_us=now, key_ttl_grace_us=0, batch_size=1000)
    assert n == 5000
    got = store.read(build_keys("test", view.name, ("user_id",), [list(range(5000))]))
    assert got == RowCodec(view).encode_table(table)


_INT64 = st.integers(-(2**63), 2**63 - 1)


@settings(max_examples=80, deadline=None)
@given(ids=st.lists(st.one_of(_INT64, st.integers(-1200, 1200)), max_size=60))
def test_key_order_sorts_rows_as_their_keys_sort_and_keeps_repeats_in_order(
    ids: list[int],
) -> None:
    table = pa.table({"user_id": pa.array(ids, pa.int64()), "i": list(range(len(ids)))})
    keys = build_keys("p", "v", ("user_id",), [ids])
    order = key_order(table, ("user_id",))
    got = list(range(len(ids))) if order is None else order.tolist()
    assert got == sorted(range(len(ids)), key=keys.__getitem__)  # stable, by key bytes


def test_key_order_of_other_keys_is_a_stable_permutation() -> None:
    table = pa.table({"a": ["b", "a", "b", "c", "a"], "n": [2, 1, 1, 0, 1]})
    order = key_order(table, ("a", "n"))
    assert order is not None and order.tolist() == [1, 4, 2, 0, 3]  # repeats keep their order
    assert key_order(table.take([1, 4, 2, 0, 3]), ("a", "n")) is None
    unsigned = pa.table({"u": pa.array([2**64 - 1, 3, 3, 10], pa.uint64())})
    assert key_order(unsigned, ("u",)).tolist() == [1, 2, 3, 0]  # type: ignore[union-attr]


@settings(max_examples=60, deadline=None)
@given(ids=st.lists(st.one_of(_INT64, st.integers(-50, 50)), max_size=50))
def test_int_key_columns_of_every_kind_render_the_same_keys(ids: list[int]) -> None:
    want = [b"p:{p|k=%d}:v" % i for i in ids]
    arr = np.array(ids, dtype=np.int64)
    for col in (ids, arr, pa.array(arr), pa.chunked_array([pa.array(arr)], pa.int64())):
        assert build_keys("p", "v", ("k",), [col]) == want
    small = [i for i in ids if -(2**31) <= i < 2**31]
    assert build_keys("p", "v", ("k",), [pa.array(small, pa.int32())]) == [
        b"p:{p|k=%d}:v" % i for i in small
    ]


def test_encode_with_a_lead_puts_it_in_front_of_the_same_value() -> None:
    view = make_view("v", [Field("x", T.Float64), Field("s", T.String), Field("n", T.Int64)])
    table = pa.table(
        {
            "user_id": [1, 2, 3],
            "x": [1.5, None, 2.5],
            "s": ["a", None, "ccc"],
            "n": [None, 7, 8],
            "__event_ts": [1, 2, 3],
        }
    )
    codec = RowCodec(view)
    lead = np.array([0, -5, 2**62], dtype=np.int64)
    plain = codec.encode_table(table)
    assert codec.encode_table(table, lead=lead) == [
        struct.pack("<q", int(e)) + v for e, v in zip(lead, plain, strict=True)
    ]


@pytest.mark.parametrize("ttl", [None, "1h"])
def test_embedded_writes_the_bytes_of_the_generic_path(tmp_path: Any, ttl: str | None) -> None:
    """The embedded store's own path (key order, expiry encoded in front) stores exactly what
    write_batch of the generic batches would: same keys, values and expiries, dead rows out."""
    from featurestore.online.embedded import EmbeddedOnlineStore

    view = make_view("v", [Field("x", T.Float64), Field("s", T.String)], ttl=ttl)
    rng = np.random.default_rng(4)
    n = 3000
    ids = rng.integers(-2000, 2000, n)  # repeats: the later row wins
    now = int(time.time() * 1_000_000)
    ev = now - rng.integers(-(10**9), 2 * 3_600_000_000, n)  # some past ttl + grace
    table = pa.table(
        {
            "user_id": ids,
            "x": pa.array(rng.random(n), mask=rng.random(n) < 0.1),
            "s": [None if i % 7 == 0 else f"s{i}" for i in range(n)],
            "__event_ts": ev,
        }
    )
    cap = _Capture()
    kw: dict[str, Any] = {"now_us": now, "key_ttl_grace_us": 60_000_000, "batch_size": 256}
    write_table(cap, "p", view, table, **kw)
    want: dict[bytes, bytes] = {}
    for keys, values, expire in cap.batches:
        for i, (key, v) in enumerate(zip(keys, values, strict=True)):
            want[key] = struct.pack("<q", 0 if expire is None else expire[i]) + v
    store = EmbeddedOnlineStore(str(tmp_path / "db"), map_size="64MB")
    store.write_batch([b"p:{p|user_id=5}:v", b"p:{p|z}:v"], [b"old", b"other"])  # overwritten/kept
    want.setdefault(b"p:{p|user_id=5}:v", struct.pack("<q", 0) + b"old")
    want[b"p:{p|z}:v"] = struct.pack("<q", 0) + b"other"
    assert write_table(store, "p", view, table, **kw) == sum(len(b[0]) for b in cap.batches)
    store.close()
    import lmdb

    env = lmdb.open(str(tmp_path / "db"), readonly=True, lock=False)
    with env.begin() as txn:
        got = dict(txn.cursor().iternext())
    env.close()
    assert got == want


@settings(max_examples=40, deadline=None)
@given(ids=st.lists(st.one_of(_INT64, st.integers(-1200, 1200)), unique=True, max_size=40))
def test_latest_rows_in_online_key_order_come_in_key_byte_order(ids: list[int]) -> None:
    """What materialize asks DuckDB for when it writes the embedded store (offline/latest.py)."""
    from types import SimpleNamespace

    import duckdb

    from featurestore.offline.latest import _order_by

    plan = SimpleNamespace(keys=("user_id",), source_types={"user_id": pa.int64()})
    con = duckdb.connect()
    con.register("t", pa.table({"user_id": pa.array(ids, pa.int64())}))
    sql = f"SELECT b.user_id FROM t AS b ORDER BY {_order_by(plan, 'online')}"  # type: ignore[arg-type]
    got = [r[0] for r in con.execute(sql).fetchall()]
    con.close()
    assert got == sorted(ids, key=lambda i: build_keys("p", "v", ("user_id",), [[i]])[0])
