"""The gRPC server over loopback: the same calls and error mapping as REST."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from featurestore.online.serving._proto import featurestore_pb2 as pb
from featurestore.online.serving._proto import featurestore_pb2_grpc as pb_grpc
from featurestore.online.serving.grpc_server import column_values, from_value, to_column, to_value
from tests.serving.conftest import ServerThread, expected_user


@pytest.fixture(scope="module")
def stub(shared_server: ServerThread) -> Iterator[pb_grpc.FeatureServingStub]:
    with grpc.insecure_channel(shared_server.grpc_target) as ch:
        yield pb_grpc.FeatureServingStub(ch)


def _col(values: list) -> pb.ValueList:
    return pb.ValueList(values=[to_value(v) for v in values])


def _by_name(columns) -> dict:
    return {
        c.name: (column_values(c), [pb.FieldStatus.Name(s) for s in c.statuses]) for c in columns
    }


def test_value_round_trip() -> None:
    for v in (None, True, 0, -5, 2**62, 1.5, "x", b"\x00b", [1, 2], [1.5, 2.0]):
        assert from_value(to_value(v)) == v


@pytest.mark.parametrize(
    ("values", "packed"),
    [
        ([1.5, None, -2.0], "doubles"),
        ([1, 2**62, -3], "ints"),
        ([None, 7], "ints"),
        ([True, None, False], "bools"),
        (["a", "", None], "strings"),
        ([None, None], None),
        ([1, 2.5], None),  # mixed types keep their own kinds
        ([b"x", None], None),
        ([[1, 2], None], None),
    ],
)
def test_column_round_trip(values: list, packed: str | None) -> None:
    col = pb.FeatureColumn.FromString(to_column("c", values, [0] * len(values)).SerializeToString())
    assert col.WhichOneof("packed") == packed
    assert len(col.values) == (0 if packed else len(values))
    got = column_values(col)
    assert got == values and [type(v) for v in got] == [type(v) for v in values]


def test_feature_columns_are_packed(stub) -> None:
    resp = stub.GetOnlineFeatures(
        pb.GetOnlineFeaturesRequest(
            feature_service="everything",
            entities={"user_id": _col([4, 5]), "merchant_id": _col([1, 2])},
        )
    )
    kinds = {c.name: c.WhichOneof("packed") for c in resp.columns}
    assert kinds["user_id"] == "ints" and kinds["tx_count"] == "ints"
    assert kinds["country"] == "strings" and kinds["risk"] == "doubles"
    assert all(not c.values for c in resp.columns)


def test_get_online_features(stub) -> None:
    resp = stub.GetOnlineFeatures(
        pb.GetOnlineFeaturesRequest(
            feature_service="everything",
            entities={"user_id": _col([4, 99_999]), "merchant_id": _col([1, 1])},
        )
    )
    cols = _by_name(resp.columns)
    assert resp.degraded is False
    assert cols["tx_count"] == ([expected_user(4)["tx_count"], 0], ["PRESENT", "NOT_FOUND"])
    assert cols["country"][0] == [expected_user(4)["country"], "??"]
    assert cols["user_id"] == ([4, 99_999], [])


def test_predict_and_return_features(stub) -> None:
    resp = stub.Predict(
        pb.PredictRequest(
            model="fraud",
            entities={"user_id": _col([1, 2]), "merchant_id": _col([3, 4])},
            return_features=True,
        )
    )
    assert resp.version == 1 and len(resp.scores) == 2
    assert _by_name(resp.features)["risk"][0] == [0.3, 0.4]


def test_predict_scores_equal_rest_scores(stub, shared_server: ServerThread) -> None:
    import httpx

    ents = {"user_id": [5, 6], "merchant_id": [7, 8]}
    rest = httpx.post(f"{shared_server.url}/predict", json={"model": "fraud", "entities": ents})
    g = stub.Predict(
        pb.PredictRequest(model="fraud", entities={k: _col(v) for k, v in ents.items()})
    )
    assert list(g.scores) == rest.json()["scores"]


def test_push(fresh_repo: Path, serve) -> None:
    s = serve(fresh_repo)
    with grpc.insecure_channel(s.grpc_target) as ch:
        st = pb_grpc.FeatureServingStub(ch)
        resp = st.Push(
            pb.PushRequest(
                feature_view="user_stats",
                rows={
                    "user_id": _col([3]),
                    "tx_count": _col([42]),
                    "amount_mean": _col([None]),
                    "country": _col(["nl"]),
                },
            )
        )
        assert resp.rows_written == 1
        got = _by_name(
            st.GetOnlineFeatures(
                pb.GetOnlineFeaturesRequest(
                    features=[
                        "user_stats:tx_count",
                        "user_stats:amount_mean",
                        "user_stats:country",
                    ],
                    entities={"user_id": _col([3])},
                )
            ).columns
        )
        assert got["tx_count"][0] == [42]
        assert got["amount_mean"][0] == [None]
        assert got["country"][0] == ["nl"]


def test_health_and_listings(stub) -> None:
    assert stub.Live(pb.HealthRequest()).live is True
    ready = stub.Ready(pb.HealthRequest())
    assert ready.ready is True and json.loads(ready.detail)["models"] == {"fraud": 1}
    services = stub.ListFeatureServices(pb.ListFeatureServicesRequest()).feature_services
    assert {s.name for s in services} == {"scoring", "everything"}
    models = stub.ListModels(pb.ListModelsRequest()).models
    assert models[0].name == "fraud" and list(models[0].versions) == [1, 2]
    assert models[0].aliases["production"] == 1 and models[0].loaded_version == 1
    assert models[0].feature_service == "scoring"


@pytest.mark.parametrize(
    ("call", "code", "needle"),
    [
        (
            lambda s: s.GetOnlineFeatures(
                pb.GetOnlineFeaturesRequest(feature_service="nope", entities={"user_id": _col([1])})
            ),
            grpc.StatusCode.NOT_FOUND,
            "nope",
        ),
        (
            lambda s: s.GetOnlineFeatures(
                pb.GetOnlineFeaturesRequest(
                    feature_service="everything", entities={"user_id": _col([1])}
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "merchant_id",
        ),
        (
            lambda s: s.GetOnlineFeatures(
                pb.GetOnlineFeaturesRequest(
                    features=["user_stats:tx_count"], entities={"user_id": _col([1.5])}
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "entities.user_id",
        ),
        (
            lambda s: s.GetOnlineFeatures(
                pb.GetOnlineFeaturesRequest(
                    features=["user_stats:tx_count"], entities={"user_id": _col(list(range(1001)))}
                )
            ),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "limit",
        ),
        (
            lambda s: s.Predict(pb.PredictRequest(model="ghost", entities={"user_id": _col([1])})),
            grpc.StatusCode.NOT_FOUND,
            "ghost",
        ),
        (
            lambda s: s.Predict(pb.PredictRequest(entities={"user_id": _col([1])})),
            grpc.StatusCode.INVALID_ARGUMENT,
            "model",
        ),
        (
            lambda s: s.Push(
                pb.PushRequest(
                    feature_view="user_stats",
                    rows={
                        "user_id": _col([1]),
                        "tx_count": _col(["x"]),
                        "amount_mean": _col([1.0]),
                        "country": _col(["a"]),
                    },
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "rows.tx_count",
        ),
        (  # a string for an integer join key: it could only read as not found
            lambda s: s.GetOnlineFeatures(
                pb.GetOnlineFeaturesRequest(
                    feature_service="scoring",
                    entities={"user_id": _col(["3"]), "merchant_id": _col([1])},
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "entities.user_id[0] is \"3\" (string), but join key 'user_id' holds integers",
        ),
        (  # one entity: the predict shortcut hands it to the same checks
            lambda s: s.Predict(
                pb.PredictRequest(
                    model="fraud", entities={"user_id": _col(["3"]), "merchant_id": _col([1])}
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            'entities.user_id[0] is "3"',
        ),
        (  # a NaN budget would never expire
            lambda s: s.GetOnlineFeatures(
                pb.GetOnlineFeaturesRequest(
                    features=["user_stats:tx_count"],
                    entities={"user_id": _col([1])},
                    deadline_ms=float("nan"),
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "deadline_ms must be a number of milliseconds above 0 and up to 60000, got nan",
        ),
        (
            lambda s: s.Push(pb.PushRequest(rows={"user_id": _col([1])})),
            grpc.StatusCode.INVALID_ARGUMENT,
            "feature_view must be a view's name",
        ),
    ],
)
def test_errors_map_to_status_codes(stub, call, code: grpc.StatusCode, needle: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        call(stub)
    assert info.value.code() == code
    assert needle in info.value.details()


def test_malformed_protobuf_is_rejected(shared_server: ServerThread) -> None:
    with grpc.insecure_channel(shared_server.grpc_target) as ch:
        raw = ch.unary_unary(
            "/featurestore.serving.v1.FeatureServing/Predict",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        with pytest.raises(grpc.RpcError) as info:
            raw(b"\xff\xff\xff\xff garbage")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "PredictRequest" in info.value.details()


def test_packed_entities_answer_like_generic_ones(stub) -> None:
    users, merchants = [4, 99_999, 7], [1, 1, 2]
    generic = {"user_id": _col(users), "merchant_id": _col(merchants)}
    packed = {"user_id": pb.ValueList(ints=users), "merchant_id": pb.ValueList(ints=merchants)}
    mixed = {"user_id": pb.ValueList(ints=users), "merchant_id": _col(merchants)}
    answers = [
        stub.GetOnlineFeatures(
            pb.GetOnlineFeaturesRequest(feature_service="everything", entities=ents)
        )
        for ents in (generic, packed, mixed)
    ]
    assert answers[0] == answers[1] == answers[2]
    assert _by_name(answers[1].columns)["user_id"] == (users, [])
    assert _by_name(answers[1].columns)["tx_count"][0][0] == expected_user(4)["tx_count"]
    preds = [
        stub.Predict(pb.PredictRequest(model="fraud", entities=e, return_features=True))
        for e in (generic, packed)
    ]
    assert preds[0] == preds[1] and len(preds[1].scores) == 3


def test_packed_and_generic_in_one_column_is_invalid(stub) -> None:
    both = pb.ValueList(values=[to_value(1)], ints=[1])
    with pytest.raises(grpc.RpcError) as info:
        stub.GetOnlineFeatures(
            pb.GetOnlineFeaturesRequest(feature_service="everything", entities={"user_id": both})
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "entities.user_id" in info.value.details()


def test_wire_response_equals_protobuf_api_build_of_rest_answer(
    shared_server: ServerThread,
) -> None:
    """The server's hand-written bytes parse to what the protobuf API builds from the same
    result (taken from the REST server over the same engine)."""
    import httpx

    from featurestore.online.serving._wire import build_features_response, build_predict_response
    from featurestore.online.serving.results import FeatureResult, PredictResult

    ents = {"user_id": [4, 99_999, 12], "merchant_id": [1, 2, 3]}
    body = httpx.post(
        f"{shared_server.url}/get-online-features",
        json={"feature_service": "everything", "entities": ents},
    ).json()

    def result(body: dict) -> FeatureResult:
        names, cols = body["feature_names"], body["results"]
        return FeatureResult(
            {n: r["values"] for n, r in zip(names, cols, strict=True)},
            {n: r["statuses"] for n, r in zip(names, cols, strict=True) if r["statuses"]},
            names,
            body["degraded"],
        )

    pred = httpx.post(
        f"{shared_server.url}/predict",
        json={"model": "fraud", "entities": ents, "return_features": True},
    ).json()
    with grpc.insecure_channel(shared_server.grpc_target) as ch:
        raw = {
            m: ch.unary_unary(
                f"/featurestore.serving.v1.FeatureServing/{m}",
                request_serializer=lambda b: b,
                response_deserializer=lambda b: b,
            )
            for m in ("GetOnlineFeatures", "Predict")
        }
        packed = {k: pb.ValueList(ints=v) for k, v in ents.items()}
        got = raw["GetOnlineFeatures"](
            pb.GetOnlineFeaturesRequest(
                feature_service="everything", entities=packed
            ).SerializeToString()
        )
        got_pred = raw["Predict"](
            pb.PredictRequest(
                model="fraud", entities=packed, return_features=True
            ).SerializeToString()
        )
    assert got == build_features_response(result(body)).SerializeToString()
    want = PredictResult(
        pred["model"], pred["version"], pred["scores"], pred["degraded"], result(pred["features"])
    )
    assert pb.PredictResponse.FromString(got_pred) == build_predict_response(want)
