"""Row codec: round trips (nulls, NaN, strings, bytes, arrays, empty), layout, versioning."""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from featurestore import types as T
from featurestore.field import Field
from featurestore.online.codec import NULL_TS, RowCodec
from tests.online._online_views import float_table, make_view

ALL_TYPES = [
    Field("i32", T.Int32),
    Field("i64", T.Int64),
    Field("f32", T.Float32),
    Field("f64", T.Float64),
    Field("flag", T.Bool),
    Field("ts", T.UnixTimestamp),
    Field("name", T.String),
    Field("blob", T.Bytes),
    Field("emb", T.Array(T.Float32)),
    Field("ids", T.Array(T.Int64)),
]

_NUM = {
    "i32": st.integers(-(2**31), 2**31 - 1),
    "i64": st.integers(-(2**63), 2**63 - 1),
    "f32": st.floats(width=32, allow_nan=True, allow_infinity=True),
    "f64": st.floats(allow_nan=True, allow_infinity=True),
    "flag": st.booleans(),
    "ts": st.integers(-(2**62), 2**62),
    "name": st.text(max_size=20),
    "blob": st.binary(max_size=20),
    "emb": st.lists(st.floats(width=32), max_size=6),
    "ids": st.lists(st.integers(-(2**63), 2**63 - 1), max_size=6),
}
_ARROW = {
    "i32": pa.int32(),
    "i64": pa.int64(),
    "f32": pa.float32(),
    "f64": pa.float64(),
    "flag": pa.bool_(),
    "ts": pa.int64(),
    "name": pa.large_string(),
    "blob": pa.large_binary(),
    "emb": pa.list_(pa.float32()),
    "ids": pa.list_(pa.int64()),
}

_row = st.fixed_dictionaries({k: st.one_of(st.none(), v) for k, v in _NUM.items()})


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    return a == b


def _table(rows: list[dict[str, Any]], ev: list[int], cr: list[int | None]) -> pa.Table:
    cols = {k: pa.array([r[k] for r in rows], type=t) for k, t in _ARROW.items()}
    cols["__event_ts"] = pa.array(ev, pa.int64())
    cols["__created_ts"] = pa.array(cr, pa.int64())
    return pa.table(cols)


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(_row, max_size=8),
    data=st.data(),
)
def test_round_trip_every_type_with_nulls(rows: list[dict[str, Any]], data: Any) -> None:
    view = make_view(fields=ALL_TYPES)
    codec = RowCodec(view)
    n = len(rows)
    ev = data.draw(st.lists(st.integers(0, 2**62), min_size=n, max_size=n))
    cr = data.draw(st.lists(st.one_of(st.none(), st.integers(0, 2**62)), min_size=n, max_size=n))
    values = codec.encode_table(_table(rows, ev, cr))
    assert len(values) == n
    # interleave absent rows to check the present mask and positions
    stored: list[bytes | None] = []
    for v in values:
        stored += [v, None]
    dec = codec.decode(stored)
    assert dec.n == 2 * n
    assert dec.present.tolist() == [True, False] * n
    assert dec.event_ts[::2].tolist() == ev
    assert dec.created_ts[::2].tolist() == [NULL_TS if c is None else c for c in cr]
    for j, f in enumerate(view.features):
        col = dec.column(f.name)
        for i, r in enumerate(rows):
            got_valid = bool(dec.valid[2 * i, j])
            assert got_valid == (r[f.name] is not None), (f.name, r)
            assert not dec.valid[2 * i + 1, j]
            if r[f.name] is None:
                continue
            got = col[2 * i]
            want = r[f.name]
            if f.name == "f32":
                assert _same(float(got), float(np.float32(want)))
            elif f.dtype.is_list:
                np.testing.assert_array_equal(got, np.asarray(want, dtype=f.dtype.inner.numpy))
            elif isinstance(want, float):
                assert _same(float(got), want)
            else:
                assert got == want


def test_fixed_only_rows_decode_with_one_frombuffer(monkeypatch: pytest.MonkeyPatch) -> None:
    view = make_view()
    codec = RowCodec(view)
    values = codec.encode_table(float_table(view, [1, 2, 3], 1_000))
    assert codec.fixed_only and len({len(v) for v in values}) == 1
    calls = []
    real = np.frombuffer

    def counting(*a: Any, **k: Any) -> Any:
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(np, "frombuffer", counting)
    dec = codec.decode([values[0], None, values[2], values[1]])
    assert len(calls) == 1
    assert dec.present.tolist() == [True, False, True, True]


def test_layout_header_then_bitmap_then_fixed_fields() -> None:
    view = make_view(fields=[Field("a", T.Float64), Field("b", T.Int32), Field("s", T.String)])
    codec = RowCodec(view)
    table = pa.table(
        {
            "a": pa.array([1.5], pa.float64()),
            "b": pa.array([None], pa.int32()),
            "s": pa.array(["hé"], pa.large_string()),
            "__event_ts": pa.array([123], pa.int64()),
            "__created_ts": pa.array([None], pa.int64()),
        }
    )
    (value,) = codec.encode_table(table)
    ev, cr, ver, bitmap = struct.unpack_from("<qqIB", value)
    assert (ev, cr, ver) == (123, NULL_TS, view.schema_version)
    assert bitmap == 0b010  # b is null
    a, b = struct.unpack_from("<di", value, 21)
    assert a == 1.5 and b == 0
    (length,) = struct.unpack_from("<I", value, 33)
    assert value[37:] == "hé".encode() and length == len("hé".encode())


def test_other_schema_version_reads_as_absent() -> None:
    old = make_view(fields=[Field("a", T.Float64)])
    new = make_view(fields=[Field("a", T.Float64), Field("b", T.Float64)])
    stale = RowCodec(old).encode_table(
        pa.table({"a": [1.0], "__event_ts": [5], "__created_ts": pa.nulls(1, pa.int64())})
    )
    dec = RowCodec(new).decode(stale)
    assert dec.present.tolist() == [False]
    # same width, different version: still absent
    same_width = make_view(fields=[Field("z", T.Float64)])
    assert RowCodec(same_width).decode(stale).present.tolist() == [False]


def test_truncated_variable_value_reads_as_absent() -> None:
    view = make_view(fields=[Field("s", T.String)])
    codec = RowCodec(view)
    (v,) = codec.encode_table(
        pa.table({"s": ["hello"], "__event_ts": [1], "__created_ts": pa.nulls(1, pa.int64())})
    )
    dec = codec.decode([v[:-2], v])
    assert dec.present.tolist() == [False, True]
    assert dec.column("s") == [None, "hello"]


def test_empty_inputs() -> None:
    view = make_view()
    codec = RowCodec(view)
    assert codec.encode_table(float_table(view, [], 0)) == []
    dec = codec.decode([])
    assert dec.n == 0 and dec.present.shape == (0,) and dec.column("f0").shape == (0,)
    dec = codec.decode([None, None])
    assert dec.present.tolist() == [False, False] and dec.event_ts.tolist() == [0, 0]


def test_encoding_is_deterministic_and_timestamp_columns_accepted() -> None:
    view = make_view(fields=[Field("t", T.UnixTimestamp), Field("x", T.Float64)])
    codec = RowCodec(view)
    ts = pa.array([1_700_000_000_000_000, None], pa.timestamp("us", tz="UTC"))
    t = pa.table(
        {
            "t": ts.cast(pa.timestamp("ms", tz="UTC")),
            "x": [float("nan"), 2.0],
            "__event_ts": pa.array([10, 20], pa.timestamp("us", tz="UTC")),
            "__created_ts": pa.array([None, 3], pa.int64()),
        }
    )
    assert codec.encode_table(t) == codec.encode_table(t)
    dec = codec.decode(codec.encode_table(t))
    assert dec.column("t")[0] == 1_700_000_000_000_000
    assert dec.valid[:, 0].tolist() == [True, False]
    assert math.isnan(dec.column("x")[0]) and dec.valid[0, 1]  # NaN is a value, not a null
    assert dec.event_ts.tolist() == [10, 20] and dec.created_ts.tolist() == [NULL_TS, 3]


def test_null_event_timestamp_is_rejected() -> None:
    view = make_view(fields=[Field("x", T.Float64)])
    t = pa.table({"x": [1.0], "__event_ts": pa.array([None], pa.int64())})
    with pytest.raises(Exception, match="null event timestamp"):
        RowCodec(view).encode_table(t)
