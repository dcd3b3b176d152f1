"""Null array elements in the codec and in ``types.served_lists``: a float array's null element
is NaN, an int or bool array holding one is null as a whole; whatever the Arrow layout."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from featurestore import types as T
from featurestore.field import Field
from featurestore.online.codec import CREATED_TS, EVENT_TS, RowCodec
from tests.online._online_views import make_view
from tests.online.test_types_edge_values import _same

INNER = {
    "i64": (T.Int64, pa.int64(), st.integers(-(2**63), 2**63 - 1)),
    "i32": (T.Int32, pa.int32(), st.integers(-(2**31), 2**31 - 1)),
    "flags": (T.Bool, pa.bool_(), st.booleans()),
    "f64": (T.Float64, pa.float64(), st.floats(allow_nan=False)),
    "f32": (T.Float32, pa.float32(), st.floats(width=32, allow_nan=False)),
}


def _oracle(name: str, v: list[Any] | None) -> list[Any] | None:
    if v is None:
        return None
    if name in ("f64", "f32"):
        return [math.nan if x is None else x for x in v]
    return None if None in v else v


@st.composite
def _column(draw: Any) -> tuple[str, list[Any], Any]:
    """(inner name, Python values, an Arrow column holding them: list or large list, sliced,
    chunked, with the child values of null rows left in place)."""
    name = draw(st.sampled_from(sorted(INNER)))
    _, arrow, el = INNER[name]
    values = draw(
        st.lists(st.one_of(st.none(), st.lists(st.one_of(st.none(), el), max_size=4)), max_size=8)
    )
    kind = pa.large_list(arrow) if draw(st.booleans()) else pa.list_(arrow)
    pad = draw(st.lists(st.one_of(st.none(), st.lists(st.one_of(st.none(), el), max_size=3))))
    rows = pad + values
    full = pa.array(rows, kind)
    if draw(st.booleans()):  # each null row over a child range holding a null element
        children = [x for v in rows for x in (v if v is not None else [None])]
        sizes = [len(v) if v is not None else 1 for v in rows]
        offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        cls = pa.LargeListArray if pa.types.is_large_list(kind) else pa.ListArray
        otype = pa.int64() if pa.types.is_large_list(kind) else pa.int32()
        full = cls.from_arrays(
            pa.array(offsets, otype),
            pa.array(children, arrow),
            mask=pa.array([v is None for v in rows], pa.bool_()),
        )
        assert full.to_pylist() == rows
    arr = full.slice(len(pad))
    col = pa.chunked_array([arr.slice(0, 3), arr.slice(3)], kind) if draw(st.booleans()) else arr
    return name, values, col


@settings(max_examples=300, deadline=None)
@given(case=_column())
def test_served_lists_follows_the_rule_on_every_layout(case: tuple[str, list[Any], Any]) -> None:
    name, values, col = case
    dtype = T.Array(INNER[name][0])
    out = T.served_lists(col, dtype)
    assert out.type == col.type
    assert _same(out.to_pylist(), [_oracle(name, v) for v in values])


def test_the_codec_stores_null_elements_as_the_training_set_serves_them() -> None:
    fields = [Field(n, T.Array(INNER[n][0])) for n in INNER]
    view = make_view("lists", fields)
    codec = RowCodec(view)
    rows = {
        "i64": [[None, 3], [1, 2], None],
        "i32": [[1], [None], []],
        "flags": [[True, None], [False], [None]],
        "f64": [[None, 1.5], [2.0], None],
        "f32": [[0.5, None], [], [None]],
    }
    cols = {n: pa.array(v, pa.list_(INNER[n][1])) for n, v in rows.items()}
    table = pa.table(
        {
            "user_id": pa.array([1, 2, 3], pa.int64()),
            **cols,
            EVENT_TS: pa.array([10, 10, 10], pa.int64()),
            CREATED_TS: pa.array([10, 10, 10], pa.int64()),
        }
    )
    decoded = codec.decode(codec.encode_table(table))
    valid = decoded.valid
    for j, n in enumerate(codec.names):
        got = [decoded.column(n)[i].tolist() if valid[i, j] else None for i in range(3)]
        assert _same(got, [_oracle(n, v) for v in rows[n]]), n
    assert np.isnan(decoded.column("f64")[0][0])
