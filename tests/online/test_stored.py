"""Batch lookups served as stored (online/_stored.py's kernel) answer exactly as the general
decode path: the same columns, statuses, wire blocks and event timestamps, on random rows with
nulls, NaN payloads, TTL edges, negative event times, missing rows and rows of another schema
version or size. The kernel must serve every clean batch, and decline every other one."""

from __future__ import annotations

import math
import struct
from typing import Any
from unittest import mock

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from featurestore import types as T
from featurestore.field import Field
from featurestore.online import lookup as lk
from featurestore.online._stored import StoredRows
from featurestore.online.codec import RowCodec
from featurestore.online.keys import build_keys
from featurestore.online.lookup import get_online_features
from tests.online._online_views import make_view

NOW = 1_700_000_000_000_000
_NAN_PAYLOAD = struct.unpack("<d", b"\x01\x00\x00\x00\x00\x00\xf8\x7f")[0]
DAMAGES = ["missing", "version", "size", "expired"]


class _Dict:
    """An online store over a dict of stored values."""

    def __init__(self, stored: dict[bytes, bytes]) -> None:
        self.stored = stored

    def read(self, keys: Any) -> list[Any]:
        return [self.stored.get(k) for k in keys]


def _rows(
    view: Any, n: int, rng: np.random.Generator, ages: np.ndarray, null_rate: float
) -> dict[bytes, bytes]:
    """``n`` stored rows of ``view`` (ids 0..n-1), event time NOW - ages."""
    cols: dict[str, Any] = {"user_id": np.arange(n)}
    for f in view.features:
        x = rng.standard_normal(n) * 10.0 ** rng.integers(-30, 30, n)
        odd = rng.random(n) < 0.1
        x[odd] = rng.choice([math.nan, _NAN_PAYLOAD, math.inf, -math.inf, -0.0], odd.sum())
        cols[f.name] = pa.array(x, mask=rng.random(n) < null_rate)
    cols["__event_ts"] = NOW - ages
    codec = RowCodec(view)
    values = codec.encode_table(pa.table(cols))
    for i, f in enumerate(view.features):  # a writer may leave bytes under a null
        at = codec.record_dtype.fields[f"c{i}"][1]
        for r in np.flatnonzero(~pa.array(cols[f.name]).is_valid().to_numpy(zero_copy_only=False)):
            v = values[r]
            values[r] = v[:at] + rng.bytes(8) + v[at + 8 :]
    return dict(
        zip(build_keys("t", view.name, ("user_id",), [list(range(n))]), values, strict=True)
    )


def _damage(stored: dict[bytes, bytes], view: Any, how: str, row: int) -> None:
    key = build_keys("t", view.name, ("user_id",), [[row]])[0]
    if how == "missing":
        del stored[key]
    elif how == "version":
        v = stored[key]
        stored[key] = v[:16] + struct.pack("<I", view.schema_version + 1) + v[20:]
    elif how == "size":
        stored[key] += bytes(8)


def _bits(v: Any) -> Any:
    """A value compared by its bits (NaN payloads, -0.0), lists and arrays alike."""
    if isinstance(v, np.ndarray):
        return ("array", v.tobytes())
    if isinstance(v, dict):
        return {k: _bits(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_bits(x) for x in v]
    if isinstance(v, float):
        return struct.pack("<d", v)
    return v


def _lookup(view: Any, feats: list[str], n: int, stored: dict, *, kernel: bool, ts: bool = False):
    def run() -> Any:
        return get_online_features(
            _Dict(stored), "t", [(view, feats)], {"user_id": list(range(n))}, now_us=NOW,
            include_event_timestamps=ts,
        )  # fmt: skip

    if kernel:
        return run()
    with mock.patch.object(lk._ViewPlan, "stored_rows", lambda self, values, now_us: None):
        return run()


def _same_answers(view: Any, feats: list[str], n: int, stored: dict) -> bool:
    """Compare every shape of the answer with and without the kernel; True when the kernel
    served the batch."""
    ref = _lookup(view, feats, n, stored, kernel=False)
    ours = _lookup(view, feats, n, stored, kernel=True)
    served = type(ours._results[0]) is StoredRows
    assert type(ref._results[0]) is lk._ViewResult
    assert len(ours) == len(ref) == n
    # wire blocks first: the kernel's result has not decoded its rows yet
    a, b = ours.wire_blocks(), ref.wire_blocks()
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        if type(x) is tuple:
            assert type(y) is tuple and x[:2] == y[:2]
            assert (x[2] is None and y[2] is None) or (x[2] == y[2]).all()
        else:
            assert _bits(x) == _bits(y)
    assert _bits(ours.wire_columns()) == _bits(ref.wire_columns())
    assert ours.statuses == ref.statuses
    assert ours.status_codes(view.name) == ref.status_codes(view.name)
    assert ours.status_array(view.name).tolist() == ref.status_array(view.name).tolist()
    assert _bits(ours.to_dict()) == _bits(ref.to_dict())
    # lists first, then the wire shapes, and event timestamps
    ours = _lookup(view, feats, n, stored, kernel=True, ts=True)
    ref = _lookup(view, feats, n, stored, kernel=False, ts=True)
    assert _bits(ours.to_dict()) == _bits(ref.to_dict())
    assert _bits(ours.wire_columns()) == _bits(ref.wire_columns())
    assert _bits(ours.to_arrow().to_pydict()) == _bits(ref.to_arrow().to_pydict())
    return served


@settings(max_examples=120, deadline=None)
@given(
    k=st.integers(1, 20),
    n=st.sampled_from([17, 18, 40, 65, 130]),  # both sides of the ttl check's numpy path (64)
    ttl_s=st.one_of(st.none(), st.integers(1, 100)),
    null_rate=st.sampled_from([0.0, 0.0, 0.05, 0.5, 1.0]),
    damage=st.sampled_from([None, None, *DAMAGES]),
    edge=st.booleans(),  # rows aged exactly the ttl (fresh) and older than the epoch
    order=st.sampled_from(["stored", "stored", "reversed", "subset"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_kernel_answers_like_the_decode_path(
    k: int,
    n: int,
    ttl_s: int | None,
    null_rate: float,
    damage: str | None,
    edge: bool,
    order: str,
    seed: int,
) -> None:
    rng = np.random.default_rng(seed)
    view = make_view("v", [Field(f"f{i}", T.Float64, default=i) for i in range(k)], ttl=ttl_s)
    ttl_us = None if ttl_s is None else ttl_s * 1_000_000
    span = 10**9 if ttl_us is None else ttl_us
    ages = rng.integers(0, span + 1, n)
    if edge:
        ages[rng.integers(0, n, 3)] = span  # exactly the ttl: still fresh
        ages[rng.integers(0, n)] = NOW + 10**12  # before 1970: a negative event time
        if ttl_us is not None:
            ages[ages > ttl_us] = ttl_us
    stored = _rows(view, n, rng, ages, null_rate)
    row = int(rng.integers(0, n))
    if damage == "expired" and ttl_us is not None:
        ages[row] = ttl_us + 1
        stored = _rows(view, n, np.random.default_rng(seed), ages, null_rate)
    elif damage in ("missing", "version", "size"):
        _damage(stored, view, damage, row)
    names = [f"f{i}" for i in range(k)]
    feats = {"stored": names, "reversed": names[::-1], "subset": names[: max(1, k - 1)]}[order]
    in_order = feats == names
    clean = damage is None or (damage == "expired" and ttl_us is None)
    assert _same_answers(view, feats, n, stored) is (in_order and clean)


@pytest.mark.parametrize("damage", [None, *DAMAGES])
def test_one_bad_row_declines_the_batch(damage: str | None) -> None:
    """Each reason to decline, alone, on one row of 40; a clean batch is served."""
    view = make_view("w", [Field(f"f{i}", T.Float64) for i in range(10)], ttl=60)
    rng = np.random.default_rng(3)
    ages = np.full(40, 1_000_000)
    if damage == "expired":
        ages[7] = 60_000_001
    stored = _rows(view, 40, rng, ages, 0.1)
    if damage in ("missing", "version", "size"):
        _damage(stored, view, damage, 7)
    feats = [f"f{i}" for i in range(10)]
    assert _same_answers(view, feats, 40, stored) is (damage is None)
    resp = _lookup(view, feats, 40, stored, kernel=True)
    want = "PRESENT" if damage in (None, "version", "size") else None
    if want:  # a row of another version or size reads as not found, as the decode path says
        got = resp.statuses["f0"][7].name
        assert got == ("PRESENT" if damage is None else "NOT_FOUND")


def test_few_rows_and_other_shapes_keep_the_decode_path() -> None:
    """16 rows (read by struct), a view with a non-float feature, and a view with a
    variable-width feature are not the kernel's."""
    fields = [Field("a", T.Float64), Field("b", T.Float64)]
    for extra, n in (([], 16), ([Field("c", T.Int64)], 40), ([Field("s", T.String)], 40)):
        view = make_view(f"x{len(extra)}{n}", fields + extra)
        cols: dict[str, Any] = {"user_id": np.arange(n), "a": np.ones(n), "b": np.zeros(n)}
        for f in extra:
            cols[f.name] = np.arange(n) if f.name == "c" else [str(i) for i in range(n)]
        cols["__event_ts"] = np.full(n, NOW)
        values = RowCodec(view).encode_table(pa.table(cols))
        keys = build_keys("t", view.name, ("user_id",), [list(range(n))])
        stored = dict(zip(keys, values, strict=True))
        resp = _lookup(view, ["a", "b"], n, stored, kernel=True)
        assert type(resp._results[0]) is lk._ViewResult
        assert resp.to_dict()["a"] == [1.0] * n
