"""write_table: batches, key expiry from ttl + grace, skipping dead rows, determinism."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from featurestore import types as T
from featurestore.errors import EntityDataError
from featurestore.field import Field
from featurestore.online.codec import RowCodec
from featurestore.online.keys import build_keys
from featurestore.online.writer import write_table
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
