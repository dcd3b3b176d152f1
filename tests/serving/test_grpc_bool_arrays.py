"""Array features over gRPC keep their element type: Array(Bool) as a bool list (not 1.0 / 0.0),
Array(Int64) as an int64 list, Array(Float32) as a double list, an empty array as an empty list
of its kind (not a null). gRPC, REST and in process agree with each other and the source data,
on the embedded and the Redis online store; a pushed Array(Bool) value is stored as bools."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from featurestore.online.serving._proto import featurestore_pb2 as pb
from featurestore.online.serving._proto import featurestore_pb2_grpc as pb_grpc
from featurestore.online.serving._wire import (
    build_features_response,
    encode_features_response,
    read_columns,
)
from featurestore.online.serving.grpc_server import column_values, from_value, to_column, to_value
from featurestore.store import FeatureStore

from .conftest import ServerThread

UTC = timezone.utc
# (`onlyarr`: the same rows with no fixed-width feature at all, a case the one-entity shortcut
# must leave to the general path)
DEFS = """
from featurestore import (Array, Bool, Entity, FeatureView, Field, Float32, Float64, Int64,
                          ParquetSource)

user = Entity("user", join_keys=["user_id"])
arrs = FeatureView(name="arrs", entities=[user], source=ParquetSource("data/arrs"),
                   schema=[Field("flags", Array(Bool)), Field("ns", Array(Int64)),
                           Field("xs", Array(Float32)), Field("score", Float64)])
onlyarr = FeatureView(name="onlyarr", entities=[user], source=ParquetSource("data/arrs"),
                      schema=[Field("flags", Array(Bool)), Field("ns", Array(Int64)),
                              Field("xs", Array(Float32))])
# defaults as a definition may write them: a float array's as ints
dflt = FeatureView(name="dflt", entities=[user], source=ParquetSource("data/dflt.parquet"),
                   schema=[Field("flags", Array(Bool), default=[True]),
                           Field("ns", Array(Int64), default=[]),
                           Field("xs", Array(Float32), default=[0, 1]),
                           Field("score", Float64)])
"""
FEATURES = ["flags", "ns", "xs"]
REFS = [f"arrs:{f}" for f in FEATURES]
# the source rows, user id -> feature -> value (None: a null value in a present row); user 99
# has no row. Floats exact in float32, ints past 2**53, so no kind can pass for another.
SOURCE: dict[int, dict[str, Any]] = {
    1: {"flags": [True, False, True], "ns": [1, -2, 2**60 + 1], "xs": [0.5, -1.25, 3.0]},
    2: {"flags": [], "ns": [], "xs": []},
    3: {"flags": None, "ns": None, "xs": None},
    4: {"flags": [False], "ns": [0], "xs": [0.0]},
}
ARROW = {"flags": pa.list_(pa.bool_()), "ns": pa.list_(pa.int64()), "xs": pa.list_(pa.float32())}
KIND = {"flags": "bool_list_val", "ns": "int64_list_val", "xs": "double_list_val"}
ELEMENT = {"flags": bool, "ns": int, "xs": float}
_pushed_ids = itertools.count(1000, 10)  # each push test's own users


def expected(ids: list[int], feature: str) -> list[Any]:
    """The source data's values of ``feature`` for ``ids`` (null where a user has no row)."""
    return [SOURCE[i][feature] if i in SOURCE else None for i in ids]


def typed(values: list[Any]) -> list[Any]:
    """Values with each list element's type beside it: True == 1.0 in Python, so a plain
    comparison cannot tell a bool list from a double list."""
    return [v if v is None else [(type(x).__name__, x) for x in v] for v in values]


@pytest.fixture(scope="module", params=["embedded", "redis"])
def repo(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``arrs`` view over SOURCE, applied and materialized on the online store named by
    the parameter (a private redis-server for "redis")."""
    root = tmp_path_factory.mktemp(f"bool_arrays_{request.param}") / "repo"
    (root / "data" / "arrs").mkdir(parents=True)
    if request.param == "embedded":
        online = "  type: embedded\n  path: data/online\n  map_size: 64MB\n"
    else:
        url = request.getfixturevalue("redis_server").url
        online = f"  type: redis\n  url: {url}\n"
    project = f"boolarr{request.param}"  # its own keys in the session's shared redis-server
    (root / "featurestore.yaml").write_text(f"project: {project}\nonline_store:\n{online}")
    (root / "definitions.py").write_text(DEFS)
    t = datetime.now(UTC) - timedelta(hours=1)
    ids = sorted(SOURCE)
    cols: dict[str, Any] = {
        "user_id": pa.array(ids, pa.int64()),
        "event_timestamp": pa.array([t] * len(ids), pa.timestamp("us", tz="UTC")),
    }
    cols |= {f: pa.array(expected(ids, f), ARROW[f]) for f in FEATURES}
    cols["score"] = pa.array([0.5] * len(ids), pa.float64())
    pq.write_table(pa.table(cols), root / "data" / "arrs" / "part-0.parquet")
    pq.write_table(pa.table(cols), root / "data" / "dflt.parquet")
    with FeatureStore(root) as store:
        store.apply()
        store.materialize(t - timedelta(days=1), datetime.now(UTC))
    return root


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[ServerThread]:

    s = ServerThread.of_repo(repo)
    yield s.start()
    s.stop()


@pytest.fixture(scope="module")
def stub(server: ServerThread) -> Iterator[pb_grpc.FeatureServingStub]:
    with grpc.insecure_channel(server.grpc_target) as ch:
        yield pb_grpc.FeatureServingStub(ch)


def _grpc(stub: pb_grpc.FeatureServingStub, ids: list[int], *, full: bool = False) -> dict:
    resp = stub.GetOnlineFeatures(
        pb.GetOnlineFeaturesRequest(
            features=REFS, entities={"user_id": pb.ValueList(ints=ids)}, full_feature_names=full
        ),
        timeout=30,
    )
    return {c.name: c for c in resp.columns}


def _rest(server: ServerThread, ids: list[int]) -> dict[str, list[Any]]:
    r = httpx.post(
        f"{server.url}/get-online-features",
        json={"features": REFS, "entities": {"user_id": ids}},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    return {n: res["values"] for n, res in zip(body["feature_names"], body["results"], strict=True)}


def _in_process(server: ServerThread, ids: list[int]) -> dict[str, list[Any]]:
    store = server.app.state.engine.store  # (one LMDB environment per process)
    return store.get_online_features(REFS, {"user_id": ids}).to_dict()


def _three_ways(server: ServerThread, stub: pb_grpc.FeatureServingStub, ids: list[int]) -> None:
    """gRPC, REST and in process give the same typed values of every feature for ``ids``."""
    g = _grpc(stub, ids)
    rest = _rest(server, ids)
    ip = _in_process(server, ids)
    for f in FEATURES:
        assert typed(column_values(g[f])) == typed(rest[f]) == typed(ip[f]), f


# ------------------------------------------------------------------ reads


@pytest.mark.parametrize("ids", [[1, 2, 3, 4, 99], [1], [2], [3], [4, 2]])
def test_array_features_agree_over_grpc_rest_and_in_process_with_the_source(
    server: ServerThread, stub: pb_grpc.FeatureServingStub, ids: list[int]
) -> None:
    ip = _in_process(server, ids)
    for f in FEATURES:  # the oracle: in process equals the source data
        assert typed(ip[f]) == typed(expected(ids, f)), f
    _three_ways(server, stub, ids)


@pytest.mark.parametrize("full", [False, True])
def test_each_array_kind_goes_over_grpc_as_its_own_list_kind(
    stub: pb_grpc.FeatureServingStub, full: bool
) -> None:
    ids = [1, 2, 3, 4, 99]
    cols = _grpc(stub, ids, full=full)
    for f in FEATURES:
        col = cols[f"arrs__{f}" if full else f]
        assert col.WhichOneof("packed") is None  # lists go as generic Values
        kinds = [v.WhichOneof("kind") for v in col.values]
        want = [None if v is None else KIND[f] for v in expected(ids, f)]
        assert kinds == want, f  # an empty array too; a null is no kind at all
        assert [pb.FieldStatus.Name(s) for s in col.statuses] == ["PRESENT"] * 4 + ["NOT_FOUND"]
        for v in column_values(col):
            assert v is None or all(type(x) is ELEMENT[f] for x in v), (f, v)


@pytest.mark.parametrize("ids", [[2], [1, 2, 3]])
def test_the_wire_encoder_writes_what_the_protobuf_api_builds_for_arrays(
    server: ServerThread, ids: list[int]
) -> None:
    res = server.app.state.engine.get_features(features=REFS, entities={"user_id": ids})
    ref = build_features_response(res)
    assert encode_features_response(res) == ref.SerializeToString()
    got = {c.name: column_values(c) for c in ref.columns}
    for f in FEATURES:
        assert typed(got[f]) == typed(expected(ids, f)), f


def test_array_defaults_go_over_grpc_as_their_features_list_kind(
    server: ServerThread, stub: pb_grpc.FeatureServingStub
) -> None:
    refs = [f"dflt:{f}" for f in FEATURES]
    resp = stub.GetOnlineFeatures(
        pb.GetOnlineFeaturesRequest(features=refs, entities={"user_id": pb.ValueList(ints=[99])}),
        timeout=30,
    )
    cols = {c.name: c for c in resp.columns}
    want = {"flags": [[True]], "ns": [[]], "xs": [[0.0, 1.0]]}
    for f in FEATURES:
        assert [v.WhichOneof("kind") for v in cols[f].values] == [KIND[f]], f
        assert typed(column_values(cols[f])) == typed(want[f]), f
    ip = server.app.state.engine.store.get_online_features(refs, {"user_id": [99]}).to_dict()
    assert {f: ip[f] for f in FEATURES} == want  # (numbers equal: the default as written)


# ------------------------------------------------------------------ pushes


def test_a_grpc_push_of_bool_arrays_is_stored_as_bools_online_and_offline(
    server: ServerThread, stub: pb_grpc.FeatureServingStub, repo: Path
) -> None:
    base = next(_pushed_ids)
    ids = [base, base + 1, base + 2]
    rows = {
        "flags": [[True, False, False], [], None],
        "ns": [[7, -7], [], None],
        "xs": [[1.5], [], None],
    }
    before = set((repo / "data" / "arrs").iterdir())
    req = pb.PushRequest(
        feature_view="arrs",
        rows={
            "user_id": pb.ValueList(ints=ids),
            "flags": pb.ValueList(
                values=[
                    pb.Value(bool_list_val=pb.BoolList(values=[True, False, False])),
                    pb.Value(bool_list_val=pb.BoolList()),
                    pb.Value(),
                ]
            ),
            **{f: pb.ValueList(values=[to_value(v) for v in rows[f]]) for f in ("ns", "xs")},
            "score": pb.ValueList(doubles=[1.0] * 3),
        },
        to="online_and_offline",
    )
    assert stub.Push(req, timeout=30).rows_written == 3
    ip = _in_process(server, ids)
    for f in FEATURES:
        assert typed(ip[f]) == typed(rows[f]), f
    _three_ways(server, stub, ids)
    (written,) = set((repo / "data" / "arrs").iterdir()) - before  # the offline push's file
    table = pq.read_table(written)
    assert table.schema.field("flags").type == pa.list_(pa.bool_())
    assert table.column("flags").to_pylist() == rows["flags"]


def test_a_grpc_push_of_a_to_value_bool_list_is_stored_as_bools(
    server: ServerThread, stub: pb_grpc.FeatureServingStub
) -> None:
    ids = [next(_pushed_ids)]
    req = pb.PushRequest(
        feature_view="arrs",
        rows={
            "user_id": pb.ValueList(ints=ids),
            "flags": pb.ValueList(values=[to_value([False, True])]),
            "ns": pb.ValueList(values=[to_value([])]),
            "xs": pb.ValueList(values=[to_value(np.array([], dtype=np.float32))]),
            "score": pb.ValueList(doubles=[1.0]),
        },
    )
    assert stub.Push(req, timeout=30).rows_written == 1
    ip = _in_process(server, ids)
    assert typed(ip["flags"]) == typed([[False, True]]) and ip["ns"] == ip["xs"] == [[]]
    _three_ways(server, stub, ids)


def test_a_double_list_pushed_to_a_bool_array_is_refused_naming_the_feature(
    stub: pb_grpc.FeatureServingStub,
) -> None:
    req = pb.PushRequest(
        feature_view="arrs",
        rows={
            "user_id": pb.ValueList(ints=[next(_pushed_ids)]),
            "flags": pb.ValueList(
                values=[pb.Value(double_list_val=pb.DoubleList(values=[1.0, 0.0]))]
            ),
            "ns": pb.ValueList(values=[pb.Value()]),
            "xs": pb.ValueList(values=[pb.Value()]),
            "score": pb.ValueList(doubles=[1.0]),
        },
    )
    with pytest.raises(grpc.RpcError) as err:
        stub.Push(req, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "rows.flags" in err.value.details() and "array<bool>" in err.value.details()


# ------------------------------------------------------------------ codec, no server

BOOL_ARRAYS = st.lists(st.none() | st.lists(st.booleans(), max_size=5), max_size=6)


@settings(max_examples=200, deadline=None)
@given(BOOL_ARRAYS)
def test_bool_array_columns_round_trip_as_bools(values: list[Any]) -> None:
    col = pb.FeatureColumn.FromString(
        to_column("flags", values, list_kind="bool").SerializeToString()
    )
    got = column_values(col)
    assert typed(got) == typed(values)
    kinds = [v.WhichOneof("kind") for v in col.values]
    assert kinds == [None if v is None else "bool_list_val" for v in values]


@settings(max_examples=200, deadline=None)
@given(BOOL_ARRAYS)
def test_bool_lists_in_a_request_read_as_bools(values: list[Any]) -> None:
    req = pb.PushRequest(rows={"flags": pb.ValueList(values=[to_value(v) for v in values])})
    got = read_columns(pb.PushRequest.FromString(req.SerializeToString()).rows, "rows")
    # an empty list sent without its feature's type has no element kind: any list kind reads
    # back as the same empty list
    assert typed(got["flags"]) == typed(values)
    for v in values:
        if v:
            assert to_value(v).WhichOneof("kind") == "bool_list_val"
            assert typed([from_value(to_value(v))]) == typed([v])


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (np.array([], dtype=bool), "bool_list_val"),
        (np.array([True, False]), "bool_list_val"),
        (np.array([], dtype=np.float32), "double_list_val"),
        (np.array([1, 2], dtype=np.int32), "int64_list_val"),
        ([1, 2**62], "int64_list_val"),
        ([1.0, 2.5], "double_list_val"),
        ([True, 2], "double_list_val"),  # a mix is no bool list: as before, doubles
    ],
)
def test_to_value_sends_each_list_as_its_own_kind(value: Any, kind: str) -> None:
    v = to_value(value)
    assert v.WhichOneof("kind") == kind
    assert from_value(v) == list(value)


@pytest.mark.parametrize("full", [False, True])
def test_degraded_array_defaults_go_as_their_features_list_kind(
    server: ServerThread, full: bool
) -> None:
    """The answer without the store (every value its default) keeps the array kinds too: an
    empty Array(Int64) default is an int64 list, an int-written Array(Float32) one doubles."""
    import time

    from featurestore.online.serving.results import Prepared, degraded_result

    view = server.app.state.engine.store.get_feature_view("dflt")
    p = Prepared([(view, FEATURES)], {"user_id": [5, 6]}, 2, full, False, time.monotonic())
    ref = build_features_response(degraded_result(p, "test"))
    cols = {c.name: c for c in ref.columns}
    want = {"flags": [True], "ns": [], "xs": [0.0, 1.0]}
    for f in FEATURES:
        col = cols[f"dflt__{f}" if full else f]
        assert [v.WhichOneof("kind") for v in col.values] == [KIND[f]] * 2, f
        assert typed(column_values(col)) == typed([want[f]] * 2), f
    assert ref.degraded


@pytest.mark.parametrize("ids", [[1], [2], [3], [99], [1, 4]])
def test_a_view_of_arrays_only_answers_one_entity_as_the_source_holds(
    server: ServerThread, stub: pb_grpc.FeatureServingStub, ids: list[int]
) -> None:
    refs = [f"onlyarr:{f}" for f in FEATURES]
    res = server.app.state.engine.get_features(features=refs, entities={"user_id": ids})
    resp = stub.GetOnlineFeatures(
        pb.GetOnlineFeaturesRequest(features=refs, entities={"user_id": pb.ValueList(ints=ids)}),
        timeout=30,
    )
    cols = {c.name: column_values(c) for c in resp.columns}
    for f in FEATURES:
        assert typed(res.columns[f]) == typed(expected(ids, f)), f
        assert typed(cols[f]) == typed(expected(ids, f)), f
