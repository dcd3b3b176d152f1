"""A join-key value of the wrong kind (a string for an integer key, or the reverse) is a 4xx
naming the field on every endpoint, never a silent all-defaults answer: keys written from
integer columns can never match a string."""

from __future__ import annotations

import grpc
import httpx
import pytest

from featurestore.online.serving._proto import featurestore_pb2 as pb
from featurestore.online.serving.grpc_server import to_value
from tests.serving.conftest import ServerThread


@pytest.fixture(scope="module")
def client(shared_server: ServerThread):
    with httpx.Client(base_url=shared_server.url, timeout=10) as c:
        yield c


@pytest.mark.parametrize(
    ("path", "body", "needle"),
    [
        (
            "/get-online-features",
            {"feature_service": "scoring", "entities": {"user_id": ["3"], "merchant_id": [1]}},
            "entities.user_id[0] is '3' (str), but join key 'user_id' holds integers",
        ),
        (
            "/get-online-features",
            {"features": ["merchant_stats:risk"], "entities": {"merchant_id": [1, 2, "7"]}},
            "entities.merchant_id[2] is '7' (str)",
        ),
        (  # one entity: the predict shortcut must hand it to the checks, not score defaults
            "/predict",
            {"model": "fraud", "entities": {"user_id": ["3"], "merchant_id": [1]}},
            "entities.user_id[0] is '3'",
        ),
        (
            "/predict",
            {"model": "fraud", "entities": {"user_id": [3, 4], "merchant_id": ["1", "2"]}},
            "entities.merchant_id[0] is '1'",
        ),
        (
            "/push",
            {
                "feature_view": "merchant_stats",
                "rows": {"merchant_id": ["1"], "risk": [0.1]},
            },
            "rows.merchant_id[0] is '1' (str), but join key 'merchant_id' holds integers",
        ),
    ],
)
def test_rest_wrong_key_kind_is_a_400(client: httpx.Client, path: str, body: dict, needle: str):
    r = client.post(path, json=body)
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]


def test_rest_right_kinds_still_answer(client: httpx.Client) -> None:
    r = client.post(
        "/predict", json={"model": "fraud", "entities": {"user_id": [3], "merchant_id": [1]}}
    )
    assert r.status_code == 200, r.text
    r = client.post(
        "/get-online-features",
        json={"feature_service": "scoring", "entities": {"user_id": [3], "merchant_id": [1]}},
    )
    assert r.status_code == 200, r.text
    statuses = [s for col in r.json()["results"] for s in col["statuses"] or []]
    assert statuses and set(statuses) == {"PRESENT"}


def test_grpc_wrong_key_kind_is_invalid_argument(shared_server: ServerThread) -> None:
    from featurestore.online.serving._proto import featurestore_pb2_grpc as pb_grpc

    def col(values: list) -> pb.ValueList:
        return pb.ValueList(values=[to_value(v) for v in values])

    with grpc.insecure_channel(shared_server.grpc_target) as ch:
        stub = pb_grpc.FeatureServingStub(ch)
        entities = {"user_id": col(["3"]), "merchant_id": col([1])}
        for call, req in (
            (
                stub.GetOnlineFeatures,
                pb.GetOnlineFeaturesRequest(feature_service="scoring", entities=entities),
            ),
            (stub.Predict, pb.PredictRequest(model="fraud", entities=entities)),
        ):
            with pytest.raises(grpc.RpcError) as err:
                call(req)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "entities.user_id[0] is '3'" in err.value.details()
