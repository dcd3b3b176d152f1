"""Values at the edges of the wire formats: an empty float array goes over gRPC as a double
list; NaN and infinities go over REST as protobuf's JSON mapping writes them (a NaN score, a row
the model could not score, stays null); a wrongly typed join key reads plainly in a 400 (as a
key of the wrong kind, and as gRPC's INVALID_ARGUMENT)."""

from __future__ import annotations

import math
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
from featurestore.online.serving._wire import to_value
from featurestore.online.serving.grpc_server import column_values
from featurestore.online.serving.rest import _dumps, _finite_column
from featurestore.store import FeatureStore

from .conftest import ServerThread

UTC = timezone.utc
NAN, INF = float("nan"), float("inf")
X = [NAN, INF, -INF, None, 2.5]  # user u's x is X[u - 1]

DEFS = """
from featurestore import (Array, Entity, FeatureService, FeatureView, Field, Float32, Float64,
                          ParquetSource)

user = Entity("user", join_keys=["user_id"])
vals = FeatureView(name="vals", entities=[user], source=ParquetSource("data/vals"),
                   schema=[Field("x", Float64), Field("emb", Array(Float32)),
                           Field("emb64", Array(Float64))])
svc = FeatureService(name="svc", features=["vals:x"])
"""

MODEL = "def predict(X):\n    return X[:, 0]\n"  # the score is the feature: NaN and inf too


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Users 1-5 with x = X; user 1's arrays empty, user 2's emb holding a NaN."""
    from featurestore.online.models.repo import register_model

    repo = tmp_path_factory.mktemp("wire_edges") / "repo"
    (repo / "data" / "vals").mkdir(parents=True)
    (repo / "featurestore.yaml").write_text(
        "project: wireedge\nonline_store:\n  type: embedded\n  path: data/online\n"
        "  map_size: 64MB\nmodels:\n  poll_interval_s: 0.05\n"
    )
    (repo / "definitions.py").write_text(DEFS)
    t = datetime.now(UTC) - timedelta(hours=1)
    embs = [[], [1.0, NAN], [0.5], [0.5], [0.5]]
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array(range(1, 6), pa.int64()),
                "event_timestamp": pa.array([t] * 5, pa.timestamp("us", tz="UTC")),
                "x": pa.array(X, pa.float64()),
                "emb": pa.array(embs, pa.list_(pa.float32())),
                "emb64": pa.array(embs, pa.list_(pa.float64())),
            }
        ),
        repo / "data" / "vals" / "part-0.parquet",
    )
    (repo / "model.py").write_text(MODEL)
    with FeatureStore(repo) as store:
        store.apply()
        store.materialize(t - timedelta(days=1), datetime.now(UTC))
        register_model(
            store, "m", flavor="python", artifact=repo / "model.py", service="svc",
            alias="production",
        )  # fmt: skip
    return repo


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[ServerThread]:

    s = ServerThread.of_repo(repo)
    yield s.start()
    s.stop()


@pytest.fixture(scope="module")
def stub(server: ServerThread) -> Iterator[pb_grpc.FeatureServingStub]:
    with grpc.insecure_channel(server.grpc_target) as ch:
        yield pb_grpc.FeatureServingStub(ch)


def _rest(server: ServerThread, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    r = httpx.post(f"{server.url}{path}", json=body, timeout=30)
    return r.status_code, r.json()


def _same(a: Any, b: Any) -> bool:
    """Equal, NaN equal to NaN."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


# ------------------------------------------------------------------ empty float arrays


def test_an_empty_float_array_goes_over_grpc_as_a_double_list(
    stub: pb_grpc.FeatureServingStub, server: ServerThread
) -> None:
    req = pb.GetOnlineFeaturesRequest(
        features=["vals:emb", "vals:emb64"], entities={"user_id": pb.ValueList(ints=[1, 3])}
    )
    resp = stub.GetOnlineFeatures(req, timeout=30)
    for col in resp.columns[1:]:
        kinds = [v.WhichOneof("kind") for v in col.values]
        assert kinds == ["double_list_val", "double_list_val"], col.name
        assert column_values(col) == [[], [0.5]]
    code, got = _rest(
        server,
        "/get-online-features",
        {"features": ["vals:emb", "vals:emb64"], "entities": {"user_id": [1]}},
    )
    assert code == 200 and [r["values"] for r in got["results"][1:]] == [[[]], [[]]]
    store = server.app.state.engine.store  # (one LMDB environment per process)
    ip = store.get_online_features(["vals:emb", "vals:emb64"], {"user_id": [1]}).to_dict()
    assert [len(ip["emb"][0]), len(ip["emb64"][0])] == [0, 0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_to_value_of_a_float_array_is_a_double_list_at_any_length(dtype: Any) -> None:
    for values in ([], [1.5], [1.0, 2.0]):
        v = to_value(np.array(values, dtype=dtype))
        assert v.WhichOneof("kind") == "double_list_val"
        assert list(v.double_list_val.values) == values
    ints = to_value(np.array([], dtype=np.int64))
    assert ints.WhichOneof("kind") == "int64_list_val"


# ------------------------------------------------------------------ NaN and infinities


def test_rest_sends_nan_and_infinities_as_protobuf_json_strings(
    stub: pb_grpc.FeatureServingStub, server: ServerThread
) -> None:
    ids = [1, 2, 3, 4, 5]
    code, got = _rest(
        server,
        "/get-online-features",
        {"features": ["vals:x", "vals:emb"], "entities": {"user_id": ids}},
    )
    assert code == 200
    x, emb = got["results"][1], got["results"][2]
    assert x["values"] == ["NaN", "Infinity", "-Infinity", None, 2.5]
    assert x["statuses"] == ["PRESENT"] * 5
    assert emb["values"][1] == [1.0, "NaN"]
    # gRPC and in process hand the numbers themselves
    resp = stub.GetOnlineFeatures(
        pb.GetOnlineFeaturesRequest(
            features=["vals:x"], entities={"user_id": pb.ValueList(ints=ids)}
        ),
        timeout=30,
    )
    assert all(_same(a, b) for a, b in zip(column_values(resp.columns[1]), X, strict=True))
    store = server.app.state.engine.store
    ip = store.get_online_features(["vals:x"], {"user_id": ids}).to_dict()["x"]
    assert all(_same(a, b) for a, b in zip(ip, X, strict=True))


def test_rest_scores_infinite_as_strings_and_unscored_as_null(
    stub: pb_grpc.FeatureServingStub, server: ServerThread
) -> None:
    ids = [1, 2, 3, 5]
    body = {"model": "m", "entities": {"user_id": ids}, "return_features": True}
    code, got = _rest(server, "/predict", body)
    assert code == 200, got
    assert got["scores"] == [None, "Infinity", "-Infinity", 2.5]
    assert got["features"]["results"][1]["values"] == ["NaN", "Infinity", "-Infinity", 2.5]
    resp = stub.Predict(
        pb.PredictRequest(model="m", entities={"user_id": pb.ValueList(ints=ids)}), timeout=30
    )
    assert math.isnan(resp.scores[0]) and list(resp.scores[1:]) == [INF, -INF, 2.5]


FLOATS = st.floats(allow_nan=True, allow_infinity=True)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), FLOATS, st.lists(FLOATS, max_size=3)), max_size=6))
def test_columns_round_trip_every_float_through_the_protobuf_json_strings(
    values: list[Any],
) -> None:
    """Parsing the strings back gives the numbers, NaN included, and null stays null."""
    import orjson

    back = {"NaN": NAN, "Infinity": INF, "-Infinity": -INF}

    def parse(v: Any) -> Any:
        if isinstance(v, list):
            return [parse(x) for x in v]
        return back.get(v, v) if isinstance(v, str) else v

    def same(a: Any, b: Any) -> bool:
        if isinstance(a, list):
            return isinstance(b, list) and len(a) == len(b) and all(map(same, a, b))
        return _same(a, b)

    got = parse(orjson.loads(_dumps({"v": _finite_column(values)}))["v"])
    assert same(got, values)
    arr = [v for v in values if isinstance(v, float)]
    column = _finite_column(np.array(arr, dtype=np.float64))
    assert same(parse(orjson.loads(_dumps(column))), arr)


# ------------------------------------------------------------------ 400/422 messages


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ([1.5], "entities.user_id[0] is 1.5 (float); join keys are ints or strings"),
        ([1, None], "entities.user_id[1] is null; join keys are ints or strings"),
        ([True], "entities.user_id[0] is true (boolean); join keys are ints or strings"),
    ],
)
def test_a_400_for_a_wrongly_typed_key_names_the_field_and_value(
    server: ServerThread, keys: list[Any], message: str
) -> None:
    code, got = _rest(
        server, "/get-online-features", {"features": ["vals:x"], "entities": {"user_id": keys}}
    )
    assert code == 400
    assert got["error"] == message


def test_the_rest_400_for_a_float_key_reads_as_grpcs_error(
    stub: pb_grpc.FeatureServingStub, server: ServerThread
) -> None:
    _, got = _rest(
        server, "/predict", {"model": "m", "entities": {"user_id": [2.5]}, "deadline_ms": 100}
    )
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(
            pb.PredictRequest(model="m", entities={"user_id": pb.ValueList(doubles=[2.5])}),
            timeout=30,
        )
    assert got["error"] == err.value.details()


def test_a_422_counts_each_wrong_value_once(server: ServerThread) -> None:
    body = {
        "features": ["vals:x"],
        "entities": {"user_id": [1.5, None]},  # key values are the engine's to judge (a 400)
        "request_data": {"q": [[1, "x"], {"a": 1}, 2, [None]]},
    }
    code, got = _rest(server, "/get-online-features", body)
    assert code == 422
    assert got["error"].startswith('request_data.q[0][1] is "x" (string)')
    assert got["error"].endswith("(and 2 more problem(s))")
    body = {"features": ["vals:x"], "entities": {"user_id": [1]}, "request_data": {"q": [[1, "x"]]}}
    _, got = _rest(server, "/get-online-features", body)
    assert (
        got["error"]
        == 'request_data.q[0][1] is "x" (string); list elements are numbers or booleans'
    )


class _Result:
    """What features_dict reads of a FeatureResult."""

    def __init__(self, columns: dict[str, Any], statuses: dict[str, list[str]]) -> None:
        self._columns, self.statuses, self.degraded = columns, statuses, False

    def wire_columns(self) -> dict[str, Any]:
        return self._columns


@pytest.mark.parametrize("n", [1, 3])
def test_features_dict_writes_non_finite_values_as_strings_in_every_column_form(n: int) -> None:
    """Float arrays (a batch served as stored), one-value lists (one entity) and longer lists;
    strings, nulls and join keys are left alone."""
    import orjson

    from featurestore.online.serving.rest import features_dict

    ok = ["PRESENT"] * n
    pick = [NAN, INF, -INF][:n]
    columns = {
        "user_id": list(range(n)),
        "clean": np.arange(n, dtype=np.float64),
        "bad_array": np.array(pick),
        "bad_list": list(pick),
        "text": ["NaN?"] * n,
        "missing": [None] * n,
    }
    body = orjson.loads(
        _dumps(features_dict(_Result(columns, dict.fromkeys(list(columns)[1:], ok))))
    )
    got = {
        name: r["values"] for name, r in zip(body["feature_names"], body["results"], strict=True)
    }
    strings = ["NaN", "Infinity", "-Infinity"][:n]
    assert got == {
        "user_id": list(range(n)),
        "clean": [float(i) for i in range(n)],
        "bad_array": strings,
        "bad_list": strings,
        "text": ["NaN?"] * n,
        "missing": [None] * n,
    }
    assert body["results"][0]["statuses"] is None
