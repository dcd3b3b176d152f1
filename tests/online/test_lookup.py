"""Online lookups on every backend: statuses, defaults, ttl edges, names, errors, outputs."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from featurestore import types as T
from featurestore._time import to_utc
from featurestore.errors import EntityDataError, FeatureNotFoundError, FeatureStoreError
from featurestore.field import Field
from featurestore.online.base import Status
from featurestore.online.lookup import get_online_features
from featurestore.online.writer import write_table
from tests.online._online_views import MERCHANT, USER, float_table, make_view

T0 = 1_700_000_000_000_000  # an event time in us
HOUR = 3_600_000_000


def _write(store: Any, view: Any, table: pa.Table, now_us: int = T0) -> int:
    return write_table(
        store, "test", view, table, now_us=now_us, key_ttl_grace_us=10**15, batch_size=1000
    )


class _Recorder:
    """Wraps a store and records read() calls."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.reads: list[int] = []

    def read(self, keys: Any) -> Any:
        self.reads.append(len(keys))
        return self.store.read(keys)


def test_values_statuses_and_defaults(online_backend: tuple) -> None:
    _, store = online_backend
    view = make_view(
        "user_stats",
        [Field("clicks", T.Int64, default=-1), Field("score", T.Float64), Field("tag", T.String)],
        ttl="1h",
    )
    table = pa.table(
        {
            "user_id": [1, 2, 3],
            "clicks": pa.array([10, None, 30], pa.int64()),
            "score": [0.5, 1.5, 2.5],
            "tag": pa.array(["a", "b", None], pa.large_string()),
            "__event_ts": [T0, T0, T0 - 2 * HOUR],
            "__created_ts": pa.nulls(3, pa.int64()),
        }
    )
    assert _write(store, view, table) == 3
    resp = get_online_features(
        store,
        "test",
        [(view, ["clicks", "score", "tag"])],
        [{"user_id": 1}, {"user_id": 2}, {"user_id": 3}, {"user_id": 4}],
        now_us=T0 + 10,
    )
    d = resp.to_dict()
    assert list(d) == ["user_id", "clicks", "score", "tag"]
    assert d["user_id"] == [1, 2, 3, 4]
    assert d["clicks"] == [10, None, -1, -1]  # null in a present row stays None
    assert d["score"] == [0.5, 1.5, None, None]
    assert d["tag"] == ["a", "b", None, None]
    P, N, E = Status.PRESENT, Status.NOT_FOUND, Status.EXPIRED
    assert resp.statuses["clicks"] == [P, P, E, N]
    assert resp.statuses["tag"] == [P, P, E, N]


def test_ttl_edge_equal_is_present_one_us_past_is_expired(online_backend: tuple) -> None:
    _, store = online_backend
    view = make_view("edge", [Field("x", T.Float64, default=0.0)], ttl="1h")
    _write(store, view, pa.table({"user_id": [1], "x": [7.0], "__event_ts": [T0]}))
    at = get_online_features(store, "test", [(view, ["x"])], {"user_id": [1]}, now_us=T0 + HOUR)
    past = get_online_features(
        store, "test", [(view, ["x"])], {"user_id": [1]}, now_us=T0 + HOUR + 1
    )
    assert at.statuses["x"] == [Status.PRESENT] and at.to_dict()["x"] == [7.0]
    assert past.statuses["x"] == [Status.EXPIRED] and past.to_dict()["x"] == [0.0]


@settings(max_examples=50, deadline=None)
@given(
    ttl_s=st.integers(1, 10_000),
    age_us=st.integers(-(10**9), 2 * 10**10),
    n=st.integers(1, 70),  # both sides of the small-batch fast path
)
def test_status_matches_the_ttl_rule(ttl_s: int, age_us: int, n: int) -> None:
    from featurestore.online.codec import RowCodec

    view = make_view("prop", [Field("x", T.Float64)], ttl=ttl_s)
    table = float_table(view, list(range(n)), T0)
    values = RowCodec(view).encode_table(table)
    keys = __import__("featurestore.online.keys", fromlist=["build_keys"]).build_keys(
        "test", "prop", ("user_id",), [list(range(n))]
    )
    table_store = dict(zip(keys, values, strict=True))

    class _Dict:
        def read(self, ks: Any) -> list[Any]:
            return [table_store.get(k) for k in ks]

    resp = get_online_features(
        _Dict(), "test", [(view, ["x"])], {"user_id": list(range(n))}, now_us=T0 + age_us
    )
    want = Status.EXPIRED if age_us > ttl_s * 1_000_000 else Status.PRESENT
    assert resp.statuses["x"] == [want] * n
    xs = resp.to_dict()["x"]
    if want is Status.PRESENT:
        assert xs == table.column("x").to_pylist()
    else:
        assert xs == [None] * n


def test_many_views_and_entities_are_one_read(online_backend: tuple) -> None:
    _, store = online_backend
    a = make_view("a", [Field("a1", T.Float64), Field("a2", T.Int32)])
    b = make_view("b", [Field("b1", T.Float64)], entities=[USER, MERCHANT])
    _write(
        store,
        a,
        pa.table(
            {
                "user_id": [1, 2],
                "a1": [1.0, 2.0],
                "a2": pa.array([10, 20], pa.int32()),
                "__event_ts": [T0, T0],
            }
        ),
    )
    _write(
        store,
        b,
        pa.table({"user_id": [1], "merchant_id": ["m1"], "b1": [5.0], "__event_ts": [T0]}),
    )
    rec = _Recorder(store)
    resp = get_online_features(
        rec,
        "test",
        [(a, ["a2", "a1"]), (b, ["b1"])],
        [{"user_id": 1, "merchant_id": "m1"}, {"user_id": 2, "merchant_id": "m1"}],
        now_us=T0,
        full_feature_names=True,
        include_event_timestamps=True,
    )
    assert rec.reads == [4]
    d = resp.to_dict()
    assert list(d) == [
        "user_id",
        "merchant_id",
        "a__a2",
        "a__a1",
        "b__b1",
        "a__event_timestamp",
        "b__event_timestamp",
    ]
    assert d["a__a2"] == [10, 20] and d["a__a1"] == [1.0, 2.0] and d["b__b1"] == [5.0, None]
    ts = to_utc(T0)
    assert d["a__event_timestamp"] == [ts, ts]
    assert d["b__event_timestamp"] == [ts, None]
    table = resp.to_arrow()
    assert table.schema.field("a__a2").type == pa.int32()
    assert table.column("b__b1").to_pylist() == [5.0, None]
    assert resp.to_polars().shape == (2, 7)


def test_bare_name_clash_asks_for_full_feature_names() -> None:
    a = make_view("a", [Field("score", T.Float64)])
    b = make_view("b", [Field("score", T.Float64)])
    with pytest.raises(FeatureStoreError, match="full_feature_names=True"):
        get_online_features(
            _NoStore(), "test", [(a, ["score"]), (b, ["score"])], {"user_id": [1]}, now_us=0
        )


class _NoStore:
    def read(self, keys: Any) -> list[None]:
        return [None] * len(keys)


def test_missing_join_key_names_key_and_view() -> None:
    view = make_view("user_stats", [Field("x", T.Float64)], entities=[USER, MERCHANT])
    with pytest.raises(EntityDataError, match=r"'merchant_id'.*'user_stats'"):
        get_online_features(_NoStore(), "p", [(view, ["x"])], [{"user_id": 1}], now_us=0)
    with pytest.raises(EntityDataError, match=r"'merchant_id'.*'user_stats'"):
        get_online_features(_NoStore(), "p", [(view, ["x"])], {"user_id": [1]}, now_us=0)


def test_unknown_feature_names_the_view() -> None:
    view = make_view("user_stats", [Field("x", T.Float64)])
    with pytest.raises(FeatureNotFoundError, match="'user_stats' has no feature 'y'"):
        get_online_features(_NoStore(), "p", [(view, ["y"])], {"user_id": [1]}, now_us=0)


def test_all_types_and_timestamp_defaults_through_lookup(online_backend: tuple) -> None:
    _, store = online_backend
    view = make_view(
        "typed",
        [
            Field("flag", T.Bool),
            Field("at", T.UnixTimestamp, default=0),
            Field("emb", T.Array(T.Float32), default=[0.0]),
            Field("blob", T.Bytes),
            Field("n32", T.Int32),
        ],
    )
    _write(
        store,
        view,
        pa.table(
            {
                "user_id": ["u1"],
                "flag": [True],
                "at": pa.array([T0], pa.timestamp("us", tz="UTC")),
                "emb": pa.array([[0.5, 1.5]], pa.list_(pa.float32())),
                "blob": [b"\x00\x01"],
                "n32": pa.array([None], pa.int32()),
                "__event_ts": [T0],
            }
        ),
    )
    resp = get_online_features(
        store,
        "test",
        [(view, ["flag", "at", "emb", "blob", "n32"])],
        {"user_id": np.array(["u1", "u2"])},
        now_us=T0,
    )
    d = resp.to_dict()
    assert d["user_id"] == ["u1", "u2"]
    assert d["flag"] == [True, None]
    assert d["at"] == [to_utc(T0), datetime(1970, 1, 1, tzinfo=timezone.utc)]
    assert d["emb"] == [[0.5, 1.5], [0.0]]
    assert d["blob"] == [b"\x00\x01", None]
    assert d["n32"] == [None, None]
    assert resp.to_arrow().schema.field("at").type == pa.timestamp("us", tz="UTC")


def test_empty_entity_list_gives_empty_columns(online_backend: tuple) -> None:
    _, store = online_backend
    view = make_view("v", [Field("x", T.Float64)])
    resp = get_online_features(store, "test", [(view, ["x"])], [], now_us=0)
    assert resp.to_dict() == {"user_id": [], "x": []}
    assert resp.statuses == {"x": []}


@pytest.mark.parametrize(
    "fields",
    [
        [Field(f"f{i}", T.Float64) for i in range(6)],  # one dtype: strided-matrix path
        [Field("a", T.Int64), Field("t", T.UnixTimestamp), Field("b", T.Int64)],  # same '<i8'
        [Field("a", T.Float32), Field("b", T.Int64), Field("c", T.String)],  # mixed
    ],
)
def test_any_subset_and_order_of_features_matches_the_table(fields: list[Field]) -> None:
    from featurestore.online.codec import RowCodec
    from featurestore.online.keys import build_keys

    view = make_view("sub", fields)
    rng = np.random.default_rng(1)
    n = 5
    cols: dict[str, Any] = {"user_id": list(range(n))}
    for f in fields:
        if f.dtype.name == "string":
            cols[f.name] = pa.array([f"s{i}" for i in range(n)], pa.large_string())
        elif f.dtype.name == "float32":
            cols[f.name] = pa.array(rng.random(n).astype(np.float32))
        elif f.dtype.name in ("int64", "timestamp"):
            cols[f.name] = pa.array(rng.integers(0, 10**15, n))
        else:
            cols[f.name] = pa.array(rng.random(n))
    cols["__event_ts"] = [T0] * n
    table = pa.table(cols)
    values = RowCodec(view).encode_table(table)
    stored = dict(
        zip(build_keys("test", "sub", ("user_id",), [cols["user_id"]]), values, strict=True)
    )

    class _Dict:
        def read(self, ks: Any) -> list[Any]:
            return [stored.get(k) for k in ks]

    names = [f.name for f in fields]
    for chosen in (names, names[::-1], names[1:2], [names[-1], names[0]]):
        d = get_online_features(
            _Dict(), "test", [(view, chosen)], {"user_id": [4, 99, 0]}, now_us=T0
        ).to_dict()
        for name in chosen:
            want = table.column(name).to_pylist()
            if view.field(name).dtype.name == "timestamp":
                want = [to_utc(w) for w in want]
            assert d[name] == [want[4], None, want[0]], name


@pytest.mark.parametrize("big", [2**63, -(2**63) - 1, 10**20])
@pytest.mark.parametrize(
    "rows",
    [
        lambda b: [{"user_id": b}],  # one entity: the one-row key path
        lambda b: {"user_id": [1, b, 3]},  # a batch of plain ints
        lambda b: {"user_id": [np.int64(1), b]},  # a mixed column
    ],
    ids=["one", "batch", "mixed"],
)
@pytest.mark.parametrize("views", [1, 2], ids=["one-view", "two-views"])
def test_an_int_key_outside_64_bits_is_refused_naming_it(big: int, rows: Any, views: int) -> None:
    """As the servers refuse it (a 400): no stored key can hold it, and reading it as not found
    would hide a caller's bug."""
    requests = [(make_view(f"v{i}", [Field("x", T.Float64)]), ["x"]) for i in range(views)]
    with pytest.raises(EntityDataError, match=rf"'user_id'.*value {big}, outside the 64-bit"):
        get_online_features(_NoStore(), "p", requests, rows(big), now_us=0, full_feature_names=True)


def test_int_keys_at_the_64_bit_edges_are_keys() -> None:
    from featurestore.online.keys import build_keys

    keys = build_keys("p", "v", ("user_id",), [[2**63 - 1, -(2**63)]])
    assert keys == [
        b"p:{p|user_id=9223372036854775807}:v",
        b"p:{p|user_id=-9223372036854775808}:v",
    ]
