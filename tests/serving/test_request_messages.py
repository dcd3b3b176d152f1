"""Request errors read as one plain line with one status, the same over REST and gRPC: a body
that is not JSON, a join-key value of the wrong type or kind (all 400 / INVALID_ARGUMENT), an
empty feature list (400 naming ``features``), a gRPC timestamp given as a join key."""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import partial
from typing import Any

import grpc
import httpx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from featurestore.online.serving._proto import featurestore_pb2 as pb
from featurestore.online.serving._proto import featurestore_pb2_grpc as pb_grpc
from featurestore.online.serving.errors import BadRequestError
from tests.serving.conftest import ServerThread

GF, PR, PUSH = "/get-online-features", "/predict", "/push"
BODIES = {
    GF: {"feature_service": "scoring", "entities": {"user_id": [1], "merchant_id": [1]}},
    PR: {"model": "fraud", "entities": {"user_id": [1], "merchant_id": [1]}},
    PUSH: {"feature_view": "merchant_stats", "rows": {"merchant_id": [1], "risk": [0.1]}},
}
JSON = {"content-type": "application/json"}
FIXTURES = [HealthCheck.function_scoped_fixture]


@pytest.fixture(scope="module")
def stub(shared_server: ServerThread) -> Iterator[pb_grpc.FeatureServingStub]:
    with grpc.insecure_channel(shared_server.grpc_target) as channel:
        yield pb_grpc.FeatureServingStub(channel)


def _grpc_error(call: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value


# ------------------------------------------------------------------ a body that is not JSON


@settings(max_examples=40, deadline=None, suppress_health_check=FIXTURES)
@given(path=st.sampled_from([GF, PR, PUSH]), cut=st.floats(0.05, 0.95), junk=st.sampled_from(
    ["", "}", ",", "x", "]]", "'"]
))  # fmt: skip
def test_a_body_that_is_not_json_is_one_plain_400(
    client: httpx.Client, path: str, cut: float, junk: str
) -> None:
    whole = json.dumps(BODIES[path])
    text = whole[: max(1, int(len(whole) * cut))] + junk
    try:
        json.loads(text)
    except ValueError:
        pass
    else:
        assume(False)  # the cut happened to leave valid JSON
    r = client.post(path, content=text.encode(), headers=JSON)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error.startswith("the request body is not valid JSON: "), error
    assert " at character " in error
    assert "\n" not in error and "{}" not in error and "decode error" not in error


def test_the_json_message_says_what_and_where(client: httpx.Client) -> None:
    r = client.post(GF, content=b'{"feature_service": "scoring" "entities": {}}', headers=JSON)
    assert (r.status_code, r.json()) == (
        400,
        {"error": "the request body is not valid JSON: Expecting ',' delimiter at character 30"},
    )


def test_valid_json_of_the_wrong_shape_stays_a_422(client: httpx.Client) -> None:
    for content in (b"[1, 2]", b"null", b'{"feature_service": 3, "entities": {}}'):
        r = client.post(GF, content=content, headers=JSON)
        assert r.status_code == 422, r.text
        assert not r.json()["error"].startswith("the request body is not valid JSON")


# ------------------------------------------------------------------ join-key values

WRONG_KEYS = (
    st.floats(allow_nan=False, allow_infinity=False)
    | st.booleans()
    | st.none()
    | st.text(max_size=8)  # any string: user_id holds integers
    | st.lists(st.integers(0, 9), max_size=2)
    | st.sampled_from([2**63, -(2**63) - 1])
)


@settings(max_examples=60, deadline=None, suppress_health_check=FIXTURES)
@given(path=st.sampled_from([GF, PR]), bad=WRONG_KEYS, at=st.integers(0, 2))
def test_every_wrong_join_key_value_is_the_same_400(
    client: httpx.Client, path: str, bad: Any, at: int
) -> None:
    uids: list[Any] = [1, 2, 3]
    uids[at] = bad
    body = {**BODIES[path], "entities": {"user_id": uids, "merchant_id": [1, 2, 3]}}
    r = client.post(path, content=json.dumps(body).encode(), headers=JSON)
    assert r.status_code == 400, r.text
    assert r.json()["error"].startswith(f"entities.user_id[{at}] is "), r.text


def test_the_openapi_spec_lists_the_400_of_those_routes(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    for path in (GF, PR, PUSH):
        responses = spec["paths"][path]["post"]["responses"]
        assert {"400", "422"} <= set(responses), (path, sorted(responses))


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        (pb.Value(double_val=1.5), "entities.user_id[1] is 1.5 (float)"),
        (pb.Value(bool_val=True), "entities.user_id[1] is true (boolean)"),
        (pb.Value(string_val="3"), 'entities.user_id[1] is "3" (string)'),
        (pb.Value(timestamp_us_val=1_700_000_000_000_000), "entities.user_id[1] is a timestamp"),
    ],
)
def test_grpc_refuses_the_same_key_values_naming_the_key(
    stub: pb_grpc.FeatureServingStub, value: Any, needle: str
) -> None:
    for n in (2, 4):  # short columns and the long ones _generic reads by kind
        values = [pb.Value(int64_val=1), value] + [pb.Value(int64_val=2)] * (n - 2)
        merchants = pb.ValueList(ints=[1] * n)
        ents = {"user_id": pb.ValueList(values=values), "merchant_id": merchants}
        features = pb.GetOnlineFeaturesRequest(feature_service="scoring", entities=ents)
        predict = pb.PredictRequest(model="fraud", entities=ents)
        for call in (
            partial(stub.GetOnlineFeatures, features, timeout=30),
            partial(stub.Predict, predict, timeout=30),
        ):
            err = _grpc_error(call)
            assert err.code() is grpc.StatusCode.INVALID_ARGUMENT, err.details()
            assert needle in err.details()


def test_grpc_timestamps_leave_int_keys_alone(stub: pb_grpc.FeatureServingStub) -> None:
    for n in (1, 3):  # the generic int Values of a key still read, short or long
        ents = {
            "user_id": pb.ValueList(values=[pb.Value(int64_val=3)] * n),
            "merchant_id": pb.ValueList(values=[pb.Value(int64_val=1)] * n),
        }
        res = stub.GetOnlineFeatures(
            pb.GetOnlineFeaturesRequest(feature_service="scoring", entities=ents), timeout=30
        )
        assert not res.degraded and len(res.columns) == 5


# ------------------------------------------------------------------ an empty feature list


def test_an_empty_feature_list_is_a_400_naming_features(
    client: httpx.Client, stub: pb_grpc.FeatureServingStub, shared_server: ServerThread
) -> None:
    r = client.post(GF, json={"features": [], "entities": {"user_id": [1]}})
    assert r.status_code == 400, r.text
    assert r.json()["error"].startswith("features is empty; "), r.text
    err = _grpc_error(
        lambda: stub.GetOnlineFeatures(
            pb.GetOnlineFeaturesRequest(features=[], entities={"user_id": pb.ValueList(ints=[1])}),
            timeout=30,
        )
    )
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT and "'features'" in err.details()
    engine = shared_server.app.state.engine
    with pytest.raises(BadRequestError, match=r"^features is empty") as exc:
        engine.get_features(features=[], entities={"user_id": [1]})
    assert exc.value.field == "features"


def test_grpc_push_refuses_a_timestamp_in_a_join_key_column(
    stub: pb_grpc.FeatureServingStub,
) -> None:
    """As get-features and predict do (the rows decoder now knows the view's join keys)."""
    rows = {
        "user_id": pb.ValueList(values=[pb.Value(timestamp_us_val=1_700_000_000_000_000)]),
        "tx_count": pb.ValueList(ints=[1]),
    }
    req = pb.PushRequest(feature_view="user_stats", rows=rows)
    err = _grpc_error(partial(stub.Push, req, timeout=30))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert "rows.user_id[0] is a timestamp" in err.details()
