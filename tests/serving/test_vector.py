"""The one-entity predict shortcut builds the same model input row as the general lookup path."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from featurestore import types as T
from featurestore.field import Field
from featurestore.online.codec import RowCodec
from featurestore.online.keys import build_keys
from featurestore.online.lookup import get_online_features
from featurestore.online.serving._vector import vector_plan
from tests.online._online_views import MERCHANT, make_view

T0 = 1_700_000_000_000_000
USER_FIELDS = [
    Field("u_f64", T.Float64),
    Field("u_i64", T.Int64, default=7),
    Field("u_f32", T.Float32, default=0.5),
    Field("u_bool", T.Bool),
    Field("u_i32", T.Int32, default=-3),
    Field("u_str", T.String),  # a variable-width view: not a model input, read past
]
MERCHANT_FIELDS = [Field(f"m{i}", T.Float64, default=float(i) if i % 2 else None) for i in range(9)]


def _column(f: Field, rng: np.random.Generator, n: int, null_rate: float) -> pa.Array:
    nulls = rng.random(n) < null_rate
    kind = f.dtype.name
    if kind == "string":
        vals: list[Any] = [f"s{i}" * (i % 4) for i in range(n)]
    elif kind == "bool":
        vals = rng.random(n).round().astype(bool).tolist()
    elif kind.startswith("int"):
        vals = rng.integers(-(10**6), 10**6, n).tolist()
    else:
        vals = (rng.standard_normal(n) * 100).tolist()
    return pa.array([None if z else v for v, z in zip(vals, nulls, strict=True)])


def _stored(view: Any, ids: list[int], ages: list[int], rng: Any, null_rate: float) -> dict:
    cols: dict[str, Any] = {view.join_keys[0]: ids}
    for f in view.features:
        cols[f.name] = _column(f, rng, len(ids), null_rate).cast(f.dtype.to_arrow())
    cols["__event_ts"] = [T0 - a for a in ages]
    cols["__created_ts"] = pa.nulls(len(ids), pa.int64())
    values = RowCodec(view).encode_table(pa.table(cols))
    keys = build_keys("test", view.name, view.join_keys, [ids])
    return dict(zip(keys, values, strict=True))


def random_pair(
    user_fields: list[Field], seed: int, ttl_s: int | None, age_us: int, null_rate: float
) -> tuple[Any, Any, dict]:
    """A users view (``user_fields``, TTL ``ttl_s``) and the merchants view, with stored rows
    for ids 0-3 of each: users all ``age_us`` old; merchants 0, 5 us, ``age_us`` and far past
    their 1 h TTL old."""
    rng = np.random.default_rng(seed)
    users = make_view("users", user_fields, ttl=ttl_s)
    merchants = make_view("merchants", MERCHANT_FIELDS, entities=[MERCHANT], ttl=3600)
    stored = _stored(users, [0, 1, 2, 3], [age_us] * 4, rng, null_rate)
    stored |= _stored(merchants, [0, 1, 2, 3], [0, 5, age_us, 10**12], rng, null_rate)
    return users, merchants, stored


class _Dict:
    def __init__(self, stored: dict) -> None:
        self.stored = stored

    def read(self, keys: Any) -> list[Any]:
        return [self.stored.get(k) for k in keys]


@settings(max_examples=300, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    null_rate=st.sampled_from([0.0, 0.3, 1.0]),
    ttl_s=st.sampled_from([None, 1, 3600]),
    age_us=st.sampled_from([0, 1_000_000, 1_000_001, 3_600_000_000, 3_600_000_001]),
    user=st.integers(0, 5),  # 4 and 5 are never stored: not found
    merchant=st.integers(0, 5),
    order=st.permutations(list(range(14))),
    damage=st.sampled_from([None, "version", "truncate"]),
    in_order=st.booleans(),  # inputs in the views' own order: the row's concatenating path
)
def test_vector_row_equals_the_lookup_row(
    seed: int,
    null_rate: float,
    ttl_s: int | None,
    age_us: int,
    user: int,
    merchant: int,
    order: list[int],
    damage: str | None,
    in_order: bool,
) -> None:
    users, merchants, stored = random_pair(USER_FIELDS, seed, ttl_s, age_us, null_rate)
    key = build_keys("test", "users", ("user_id",), [[user]])[0]
    if damage and key in stored:
        v = bytearray(stored[key])
        if damage == "version":  # written under another schema version: reads as absent
            v[16] ^= 0xFF
        else:  # a cut string payload: the codec drops the row
            del v[-1:]
        stored[key] = bytes(v)
    names = [f.name for f in USER_FIELDS if f.name != "u_str"] + [f.name for f in MERCHANT_FIELDS]
    picked = order[: 1 + seed % len(order)]
    inputs = [names[i] for i in (sorted(picked) if in_order else picked)]  # a subset
    keys = _assert_rows_agree(stored, users, merchants, (user, merchant), inputs)
    assert set(keys) <= {key, build_keys("test", "merchants", ("merchant_id",), [[merchant]])[0]}


def _assert_rows_agree(
    stored: dict, users: Any, merchants: Any, ids: tuple[int, int], inputs: list[str]
) -> list[bytes]:
    """The shortcut's row of (user, merchant) ``ids`` equals the lookup's, bit for bit (NaN
    == NaN here); returns the keys it read."""
    requests = [
        (users, [f.name for f in users.features]),
        (merchants, [f.name for f in merchants.features]),
    ]
    entities = {"user_id": [ids[0]], "merchant_id": [ids[1]]}
    general = get_online_features(_Dict(stored), "test", requests, entities, now_us=T0).to_dict()
    want = np.array([[general[n][0] for n in inputs]], dtype=np.float64)
    plan = vector_plan("test", requests, inputs)
    assert plan is not None
    keys = plan.keys(entities)
    assert keys is not None
    np.testing.assert_array_equal(plan.row(_Dict(stored).read(keys), T0), want)
    return keys


def test_requests_outside_the_shortcut_are_left_to_the_general_path() -> None:
    users = make_view("users", USER_FIELDS)
    requests = [(users, [f.name for f in USER_FIELDS])]
    plan = vector_plan("test", requests, ["u_f64", "u_i64"])
    assert plan is not None
    assert plan.keys({"user_id": [3]}) is not None
    assert plan.keys({"user_id": ["a|b"]}) is not None
    for entities in (
        {"user_id": [1, 2]},  # several entities
        {"user_id": [True]},  # a bool is not a join key
        {"user_id": [2**63]},  # beyond int64
        {"user_id": [1.5]},
        {"user_id": (1,)},
        {"user_id": [1], "other": [2]},  # unknown keys: the general path decides
        {},
        [{"user_id": 1}],
    ):
        assert plan.keys(entities) is None, entities
    assert vector_plan("test", requests, ["u_f64", "nope"]) is None  # not served: general error


@pytest.mark.parametrize("dtype", [T.String, T.UnixTimestamp])
def test_non_numeric_inputs_take_the_general_path(dtype: Any) -> None:
    view = make_view("v", [Field("a", T.Float64), Field("b", dtype)])
    assert vector_plan("test", [(view, ["a", "b"])], ["a", "b"]) is None
    assert vector_plan("test", [(view, ["a", "b"])], ["a"]) is not None  # read past: fine


@pytest.mark.parametrize(
    ("user", "merchant", "user_age", "null_rate"),
    [
        (0, 0, 0, 0.0),  # both views found, fresh, no null: the concatenating path
        (0, 3, 0, 0.0),  # the merchant row is past its TTL: its defaults
        (0, 0, 3_600_000_001, 0.0),  # the user row is past its TTL
        (0, 4, 0, 0.0),  # no merchant row
        (1, 1, 0, 0.5),  # nulls: NaN
        (2, 0, 0, 0.0),  # the user row was written under another schema version: defaults
    ],
)
@pytest.mark.parametrize(
    "shape",
    [
        "fixed",  # both views fixed-width: their picked struct items
        "string",  # the user view also stores a string
        "floats",  # only the float64 merchant view's features: slices of the stored bytes
    ],
)
def test_inputs_in_view_order_read_like_the_lookup(
    user: int, merchant: int, user_age: int, null_rate: float, shape: str
) -> None:
    rng = np.random.default_rng(7)
    fields = USER_FIELDS if shape == "string" else [f for f in USER_FIELDS if f.name != "u_str"]
    users = make_view("users", fields, ttl=3600)
    merchants = make_view("merchants", MERCHANT_FIELDS, entities=[MERCHANT], ttl=3600)
    stored = _stored(users, [0, 1, 2], [user_age] * 3, rng, null_rate)
    stored |= _stored(merchants, [0, 1, 3], [0, 0, 10**12], rng, null_rate)
    other = build_keys("test", "users", ("user_id",), [[2]])[0]
    stored[other] = (
        stored[other][:16] + bytes(b ^ 0xFF for b in stored[other][16:20]) + stored[other][20:]
    )
    inputs = [f.name for f in USER_FIELDS if f.name != "u_str" and shape != "floats"]
    inputs += [f.name for f in MERCHANT_FIELDS]
    _assert_rows_agree(stored, users, merchants, (user, merchant), inputs)
