"""Hand-written response bytes equal the protobuf API's; packed request columns equal generic."""

from __future__ import annotations

import math
import struct
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from featurestore.online.models import Explanation
from featurestore.online.serving._proto import featurestore_pb2 as pb
from featurestore.online.serving._wire import (
    build_features_response,
    build_predict_response,
    column_values,
    encode_features_response,
    encode_predict_response,
    from_value,
    read_column,
    read_columns,
    to_value,
)
from featurestore.online.serving.errors import BadRequestError
from featurestore.online.serving.results import FeatureResult, PredictResult

INT64 = st.integers(-(2**63), 2**63 - 1)
EDGE_INTS = st.sampled_from([0, 1, 127, 128, 255, 256, 2**31, -1, -128, -(2**63), 2**63 - 1])
FLOATS = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, -0.0, math.nan])
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=140)  # no lone surrogates
STATUSES = st.sampled_from(["PRESENT", "NOT_FOUND", "EXPIRED", "UNAVAILABLE"])
SCALARS = {
    "float": FLOATS,
    "int": INT64 | EDGE_INTS,
    "bool": st.booleans(),
    "str": TEXT,
    "bytes": st.binary(max_size=5),
    "ts": st.datetimes(timezones=st.just(timezone.utc)),
    "list": st.lists(st.integers(-5, 5), max_size=3) | st.lists(st.floats(-9, 9), max_size=3),
}


def _values(draw: Any, n: int) -> list[Any]:
    """One column: one kind (maybe with Nones), or mixed kinds."""
    kind = draw(st.sampled_from([*SCALARS, "mixed", "none"]))
    if kind == "none":
        return [None] * n
    elem = st.one_of(*SCALARS.values()) if kind == "mixed" else SCALARS[kind]
    if draw(st.booleans()):
        elem = elem | st.none()
    return draw(st.lists(elem, min_size=n, max_size=n))


@st.composite
def feature_results(draw: Any) -> FeatureResult:
    """A FeatureResult: join keys without statuses, features sharing per-view status lists."""
    n = draw(st.sampled_from([0, 1, 1, 2, 3, 5, 9, 20]))
    names = draw(st.lists(TEXT | st.just(""), min_size=1, max_size=6, unique=True))
    views = draw(st.lists(st.lists(STATUSES, min_size=n, max_size=n), min_size=1, max_size=3))
    cols: dict[str, list[Any]] = {}
    sts: dict[str, list[str]] = {}
    for name in names:
        cols[name] = _values(draw, n)
        which = draw(st.integers(-1, len(views) - 1))
        if which >= 0:
            sts[name] = views[which]  # shared list objects, as the engine makes them
    return FeatureResult(cols, sts, names[1:], degraded=draw(st.booleans()))


def _same(ours: bytes, ref: Any) -> None:
    parsed = type(ref).FromString(ours)
    assert parsed == ref
    assert ours == ref.SerializeToString()  # even byte-identical (field order, packing)


@settings(max_examples=150, deadline=None)
@given(feature_results())
def test_features_response_equals_protobuf_api(res: FeatureResult) -> None:
    _same(encode_features_response(res), build_features_response(res))


@st.composite
def explanations(draw: Any) -> Explanation:
    """An Explanation of n rows x k features (NaN and infinities included)."""
    n, k = draw(st.integers(0, 4)), draw(st.integers(0, 5))
    names = draw(st.lists(TEXT, min_size=k, max_size=k))
    contributions = np.array(draw(st.lists(FLOATS, min_size=n * k, max_size=n * k)))
    base = np.array(draw(st.lists(FLOATS, min_size=n, max_size=n)))
    output = draw(st.sampled_from(["raw", "value", ""]))
    return Explanation(tuple(names), contributions.reshape(n, k), base, output)


@settings(max_examples=80, deadline=None)
@given(
    feature_results() | st.none(),
    TEXT,
    INT64,
    st.lists(FLOATS, max_size=20),
    st.booleans(),
    TEXT | st.none(),
    explanations() | st.none(),
)
def test_predict_response_equals_protobuf_api(
    feats: FeatureResult | None,
    model: str,
    version: int,
    scores: list[float],
    degraded: bool,
    request_id: str | None,
    explanation: Explanation | None,
) -> None:
    res = PredictResult(
        model, version, scores, degraded, feats, request_id=request_id, explanation=explanation
    )
    _same(encode_predict_response(res), build_predict_response(res))


@pytest.mark.parametrize(
    "values",
    [
        [],
        [None],
        [1.5],
        [math.nan, math.inf, -math.inf, -0.0],
        [0],
        [127],
        [128],
        [-1],
        [2**40],
        [-(2**63)],
        [2**63 - 1, -(2**63)],
        list(range(-3, 200)),
        list(range(100)),
        [True],
        [False, None, True],
        ["é"],
        ["x" * 130],
        ["x" * 125],
        ["y" * 20_000, "z"],  # lengths past two varint bytes
        [0.5] * 3000,
        ["a", "ü", "日本", "🙂", ""] * 3,
        [1, True],
        [1, 1.5],
        ["a", b"a"],
        [None, 3, None],
        [datetime(2024, 1, 2, tzinfo=timezone.utc)],
    ],
)
def test_corner_columns(values: list[Any]) -> None:
    res = FeatureResult({"c": values}, {"c": ["EXPIRED"] * len(values)}, ["c"], degraded=True)
    ours = encode_features_response(res)
    _same(ours, build_features_response(res))
    back = column_values(pb.GetOnlineFeaturesResponse.FromString(ours).columns[0])
    expect = [from_value(to_value(v)) for v in values]  # datetimes come back as microseconds
    if values and all(type(v) is float for v in values):  # NaN-aware: compare the bits
        assert struct.pack(f"<{len(back)}d", *back) == struct.pack(f"<{len(values)}d", *values)
    else:
        assert back == expect


def test_zero_rows_set_no_packed_kind_like_protobuf_api() -> None:
    res = FeatureResult({"k": [], "f": []}, {"f": []}, ["f"])
    msg = pb.GetOnlineFeaturesResponse.FromString(encode_features_response(res))
    assert [c.WhichOneof("packed") for c in msg.columns] == [None, None]
    assert msg == build_features_response(res)


@pytest.mark.parametrize(
    "values", [[2**63], [-(2**63) - 1], [1, 2**64], [*range(10), 2**70], [5, -(2**80)]]
)
def test_ints_outside_int64_raise_like_protobuf(values: list[int]) -> None:
    _raises_like_protobuf(values, ValueError)
    with pytest.raises(ValueError):
        encode_predict_response(PredictResult("m", 2**63, [], False))


@pytest.mark.parametrize("values", [["\ud800"], ["ok"] * 12 + ["a\udcff"]])
def test_lone_surrogates_raise_like_protobuf(values: list[str]) -> None:
    _raises_like_protobuf(values, UnicodeEncodeError)


def _raises_like_protobuf(values: list[Any], error: type[Exception]) -> None:
    """A column of ``values`` fails to encode with the protobuf API's own error and message."""
    res = FeatureResult({"c": values}, {}, ["c"])
    with pytest.raises(error) as ref:
        build_features_response(res)
    with pytest.raises(error) as ours:
        encode_features_response(res)
    assert str(ours.value) == str(ref.value)


def test_shared_status_list_encoded_per_column() -> None:
    st1 = ["PRESENT", "NOT_FOUND", "EXPIRED"]
    res = FeatureResult({"k": [1, 2, 3], "a": [1.0, 2.0, 3.0], "b": ["x", "y", "z"]}, {}, [])
    res.statuses = {"a": st1, "b": st1}
    msg = pb.GetOnlineFeaturesResponse.FromString(encode_features_response(res))
    assert [list(c.statuses) for c in msg.columns] == [[], [0, 1, 2], [0, 1, 2]]


# ------------------------------------------------------------------------------- requests

PACKABLE = {
    "ints": INT64,
    "doubles": st.floats(allow_nan=False),
    "strings": TEXT,
    "bools": st.booleans(),
}


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_packed_and_generic_columns_read_alike(data: Any) -> None:
    field = data.draw(st.sampled_from(sorted(PACKABLE)))
    nullable = data.draw(st.booleans())
    elem = PACKABLE[field] | st.none() if nullable else PACKABLE[field]
    values = data.draw(st.lists(elem, max_size=30))
    zero = {"ints": 0, "doubles": 0.0, "strings": "", "bools": False}[field]
    packed = pb.ValueList(**{field: [zero if v is None else v for v in values]})
    if any(v is None for v in values):
        packed.nulls.extend([v is None for v in values])
    generic = pb.ValueList(values=[to_value(v) for v in values])
    packed = pb.ValueList.FromString(packed.SerializeToString())
    generic = pb.ValueList.FromString(generic.SerializeToString())
    got_packed = read_column(packed, "entities.k")
    got_generic = read_column(generic, "entities.k")
    assert got_packed == got_generic == values
    assert [type(v) for v in got_packed] == [type(v) for v in values]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(*SCALARS.values(), st.none()), max_size=12))
def test_generic_column_reads_like_from_value(values: list[Any]) -> None:
    col = pb.ValueList.FromString(
        pb.ValueList(values=[to_value(v) for v in values]).SerializeToString()
    )
    got, want = read_column(col, "x"), [from_value(v) for v in col.values]
    assert repr(got) == repr(want)  # repr: NaN-aware, and tells 1 from 1.0 and True


def test_request_map_reads_both_forms() -> None:
    req = pb.GetOnlineFeaturesRequest(
        entities={
            "user_id": pb.ValueList(ints=[4, 5, -6]),
            "merchant_id": pb.ValueList(values=[to_value(v) for v in (1, 2, 3)]),
            "country": pb.ValueList(strings=["nl", "", "de"], nulls=[False, True, False]),
            "empty": pb.ValueList(),
        }
    )
    req = pb.GetOnlineFeaturesRequest.FromString(req.SerializeToString())
    assert read_columns(req.entities, "entities") == {
        "user_id": [4, 5, -6],
        "merchant_id": [1, 2, 3],
        "country": ["nl", None, "de"],
        "empty": [],
    }


@pytest.mark.parametrize(
    ("col", "needle"),
    [
        (pb.ValueList(values=[pb.Value(int64_val=1)], ints=[1]), "values and ints"),
        (pb.ValueList(ints=[1], strings=["a"]), "ints and strings"),
        (pb.ValueList(ints=[1, 2], nulls=[True]), "1 `nulls` for 2 values"),
        (pb.ValueList(values=[pb.Value(int64_val=1)], nulls=[True]), "without a packed field"),
    ],
)
def test_bad_request_columns_name_the_key(col: pb.ValueList, needle: str) -> None:
    req = pb.PredictRequest(entities={"user_id": col})
    with pytest.raises(BadRequestError) as info:
        read_columns(req.entities, "entities")
    assert "entities.user_id" in str(info.value) and needle in str(info.value)
    assert info.value.field == "entities.user_id"


@settings(max_examples=80, deadline=None)
@given(
    # up to 16 rows a fixed-only view is read by struct (one row: a slice of its value), past
    # that by the numpy matrix
    n=st.sampled_from([1, 1, 2, 16, 17, 18, 90]),
    seed=st.integers(0, 2**32 - 1),
    damage=st.sampled_from([None, None, "null", "missing"]),
    subset=st.permutations(["f0", "f1", "f2", "f3", "f4"]),
    whole=st.booleans(),  # every feature in stored order: columns as slices of stored bytes
)
def test_dense_float_columns_encode_like_their_lists(
    n: int, seed: int, damage: str | None, subset: list[str], whole: bool
) -> None:
    import numpy as np
    import pyarrow as pa

    from featurestore import types as T
    from featurestore.field import Field
    from featurestore.online.codec import RowCodec
    from featurestore.online.keys import build_keys
    from featurestore.online.lookup import get_online_features
    from featurestore.online.serving.rest import _dumps, _finite, features_dict
    from featurestore.online.serving.results import Prepared, from_response
    from tests.online._online_views import make_view

    rng = np.random.default_rng(seed)
    view = make_view("v", [Field(f"f{i}", T.Float64, default=i) for i in range(5)])
    ids = list(range(n))
    cols: dict[str, Any] = {"user_id": ids}
    for i in range(5):
        x = rng.standard_normal(n) * 10.0 ** rng.integers(-30, 30, n)
        x[rng.random(n) < 0.1] = rng.choice([math.nan, math.inf, -math.inf, -0.0])
        nulls = rng.random(n) < (0.2 if damage == "null" else 0.0)
        cols[f"f{i}"] = pa.array(x, mask=nulls)
    cols["__event_ts"] = [1] * n
    stored = dict(
        zip(
            build_keys("t", "v", ("user_id",), [ids]),
            RowCodec(view).encode_table(pa.table(cols)),
            strict=True,
        )
    )

    class _Dict:
        def read(self, keys: Any) -> list[Any]:
            return [stored.get(k) for k in keys]

    asked = [*ids, n + 5] if damage == "missing" else ids  # a never-stored entity
    feats = sorted(subset) if whole else subset[: 1 + seed % 5]
    resp = get_online_features(_Dict(), "t", [(view, feats)], {"user_id": asked}, now_us=2)
    res = from_response(
        Prepared([(view, feats)], {"user_id": asked}, len(asked), False, False, 0.0), resp
    )
    # encode first: once ``columns`` is built, encoders use the lists
    blocks = res.wire_blocks()
    ours, body, wire = encode_features_response(res), _dumps(features_dict(res)), res.wire_columns()
    stored = [b for b in blocks if type(b) is tuple]
    as_stored = feats == ["f0", "f1", "f2", "f3", "f4"] and damage != "missing"
    nulls = np.array([[v is None for v in res.columns[f]] for f in feats])
    if as_stored and (len(asked) > 1 or not nulls.any()):  # one block of the stored bytes
        assert len(stored) == 1
        names, raw, marks = stored[0]
        values = [[0.0 if v is None else v for v in res.columns[f]] for f in feats]
        assert (names, raw) == (feats, np.array(values).tobytes())
        assert (marks is None and not nulls.any()) or (marks == nulls).all()
    else:  # one entity with a null: its lists
        assert not stored
    dense = {k for k, v in wire.items() if type(v) is np.ndarray}
    if damage == "missing" or len(asked) <= 16:
        assert not dense  # a default in a view, or read by struct: its lists only
    else:  # every column without a null is an array, the others lists
        assert dense == {f for f in feats if None not in res.columns[f]}
    assert list(wire) == list(res.columns)
    for name in dense:
        assert wire[name].tobytes() == struct.pack(f"<{n}d", *res.columns[name])
    _same(ours, build_features_response(res))  # the protobuf API builds from the lists
    as_lists = FeatureResult(res.columns, res.statuses, res.feature_names)
    assert ours == encode_features_response(as_lists)
    assert body == _dumps(_finite(as_lists.to_dict()))  # REST JSON alike (NaN as "NaN")


@settings(max_examples=40, deadline=None)
@given(
    n=st.sampled_from([1, 2, 16, 17, 40]),
    seed=st.integers(0, 2**32 - 1),
    full=st.booleans(),
    dense_first=st.booleans(),
    missing=st.booleans(),  # one asked merchant has no row: that view's defaults
)
def test_stored_blocks_among_other_views_encode_like_lists(
    n: int, seed: int, full: bool, dense_first: bool, missing: bool
) -> None:
    """A view served as stored (bytes) between entity columns and a mixed-type view, of a
    different entity: the same bytes as the lists, and as the protobuf API."""
    import numpy as np
    import pyarrow as pa

    from featurestore import types as T
    from featurestore.field import Field
    from featurestore.online.codec import RowCodec
    from featurestore.online.keys import build_keys
    from featurestore.online.lookup import get_online_features
    from featurestore.online.serving.results import Prepared, from_response
    from tests.online._online_views import MERCHANT, make_view

    rng = np.random.default_rng(seed)
    floats = make_view("fl", [Field(f"x{i}", T.Float64) for i in range(4)])
    mixed = make_view(
        "mx",
        [Field("a", T.Float64), Field("b", T.String), Field("c", T.Int64, default=3)],
        entities=[MERCHANT],
    )
    users, merchants = list(range(n)), list(range(100, 100 + n))
    stored: dict[bytes, bytes] = {}
    for view, key, ids, cols in (
        (floats, "user_id", users, {f"x{i}": rng.standard_normal(n) for i in range(4)}),
        (
            mixed,
            "merchant_id",
            merchants,
            {"a": rng.standard_normal(n), "b": [f"s{i}" for i in range(n)], "c": list(range(n))},
        ),
    ):
        table = pa.table({key: ids, **cols, "__event_ts": [1] * n})
        keys = build_keys("t", view.name, (key,), [ids])
        stored |= dict(zip(keys, RowCodec(view).encode_table(table), strict=True))

    class _Dict:
        def read(self, keys: Any) -> list[Any]:
            return [stored.get(k) for k in keys]

    asked = {"user_id": users, "merchant_id": [*merchants[:-1], 999] if missing else merchants}
    requests = [(floats, ["x0", "x1", "x2", "x3"]), (mixed, ["b", "a", "c"])]
    if not dense_first:
        requests.reverse()
    resp = get_online_features(_Dict(), "t", requests, asked, now_us=2, full_feature_names=full)
    res = from_response(Prepared(requests, asked, n, full, False, 0.0), resp)
    blocks = res.wire_blocks()
    ours = encode_features_response(res)
    assert sum(type(b) is tuple for b in blocks) == 1  # the float view, and only it
    assert [n for b in blocks for n in (b if type(b) is dict else b[0])] == list(res.columns)
    as_lists = FeatureResult(res.columns, res.statuses, res.feature_names)
    assert ours == encode_features_response(as_lists)
    _same(ours, build_features_response(res))


@pytest.mark.parametrize("n", [2, 17])  # read by struct, and by the numpy matrix
def test_stored_block_with_null_columns_encodes_like_lists(n: int) -> None:
    """Columns of a view served as stored: none null, some null, every value null (which
    protobuf's API writes as generic empty Values, not a packed list)."""
    import numpy as np
    import pyarrow as pa

    from featurestore import types as T
    from featurestore.field import Field
    from featurestore.online.codec import RowCodec
    from featurestore.online.keys import build_keys
    from featurestore.online.lookup import get_online_features
    from featurestore.online.serving.results import Prepared, from_response
    from tests.online._online_views import make_view

    view = make_view("v", [Field(f"f{i}", T.Float64) for i in range(3)])
    ids = list(range(n))
    table = pa.table(
        {
            "user_id": ids,
            "f0": np.arange(n, dtype=np.float64) - 0.5,
            "f1": pa.array(np.full(n, 1.5), mask=np.arange(n) % 2 == 1),
            "f2": pa.array(np.full(n, 2.5), mask=np.ones(n, dtype=bool)),
            "__event_ts": [1] * n,
        }
    )
    keys = build_keys("t", "v", ("user_id",), [ids])
    codec = RowCodec(view)
    stored = dict(zip(keys, codec.encode_table(table), strict=True))
    at = codec.record_dtype.fields["c1"][1]  # a writer may leave any bytes under a null
    stored[keys[1]] = stored[keys[1]][:at] + struct.pack("<d", 7.0) + stored[keys[1]][at + 8 :]

    class _Dict:
        def read(self, keys: Any) -> list[Any]:
            return [stored.get(k) for k in keys]

    feats = ["f0", "f1", "f2"]
    resp = get_online_features(_Dict(), "t", [(view, feats)], {"user_id": ids}, now_us=2)
    res = from_response(Prepared([(view, feats)], {"user_id": ids}, n, False, False, 0.0), resp)
    assert any(type(b) is tuple for b in res.wire_blocks())
    ours = encode_features_response(res)
    assert res.columns["f2"] == [None] * n and None in res.columns["f1"]
    assert ours == encode_features_response(FeatureResult(res.columns, res.statuses, feats))
    _same(ours, build_features_response(res))
