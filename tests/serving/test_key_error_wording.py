"""The same bad join keys get the same message over REST, gRPC and in process.

A missing key, a value that is no int or string, a string for an integer key, columns of
different lengths, a wrong value beside a missing key: one line, word for word the same on
every transport (400 / INVALID_ARGUMENT), whichever problem the checks meet first. An entity
column no view needs is ignored on all of them, whatever it holds.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featurestore.online.serving._proto import featurestore_pb2 as pb
from featurestore.online.serving._proto import featurestore_pb2_grpc as pb_grpc
from featurestore.online.serving._wire import to_value
from featurestore.online.serving.errors import BadRequestError
from tests.serving.conftest import ServerThread

GF, PR = "/get-online-features", "/predict"
FIXTURES = [HealthCheck.function_scoped_fixture]


@pytest.fixture(scope="module")
def stub(shared_server: ServerThread) -> Iterator[pb_grpc.FeatureServingStub]:
    with grpc.insecure_channel(shared_server.grpc_target) as channel:
        yield pb_grpc.FeatureServingStub(channel)


def _rest(client: httpx.Client, path: str, entities: dict[str, list[Any]]) -> tuple[int, str]:
    body = {"entities": entities}
    body.update({"feature_service": "scoring"} if path == GF else {"model": "fraud"})
    r = client.post(path, json=body)
    return r.status_code, r.json().get("error", "")


def _grpc(
    stub: pb_grpc.FeatureServingStub, path: str, entities: dict[str, list[Any]]
) -> tuple[grpc.StatusCode, str]:
    ents = {k: pb.ValueList(values=[to_value(v) for v in col]) for k, col in entities.items()}
    try:
        if path == GF:
            req = pb.GetOnlineFeaturesRequest(feature_service="scoring", entities=ents)
            stub.GetOnlineFeatures(req, timeout=30)
        else:
            stub.Predict(pb.PredictRequest(model="fraud", entities=ents), timeout=30)
    except grpc.RpcError as err:
        return err.code(), err.details() or ""
    return grpc.StatusCode.OK, ""


def _in_process(server: ServerThread, path: str, entities: dict[str, list[Any]]) -> str:
    engine = server.app.state.engine
    with pytest.raises(BadRequestError) as err:
        if path == GF:
            engine.get_features(feature_service="scoring", entities=entities)
        else:
            engine.predict("fraud", entities=entities)
    return str(err.value)


CASES = [
    pytest.param(
        {"user_id": [1]},
        "entities lack join key 'merchant_id' (needed by feature view 'merchant_stats'); "
        "given: ['user_id']",
        id="missing key",
    ),
    pytest.param(
        {"user_id": [1, 1.5], "merchant_id": [1, 2]},
        "entities.user_id[1] is 1.5 (float); join keys are ints or strings",
        id="float",
    ),
    pytest.param(
        {"user_id": [True], "merchant_id": [1]},
        "entities.user_id[0] is true (boolean); join keys are ints or strings",
        id="bool",
    ),
    pytest.param(
        {"user_id": [1], "merchant_id": [None]},
        "entities.merchant_id[0] is null; join keys are ints or strings",
        id="null",
    ),
    pytest.param(
        {"user_id": [[1, 2]], "merchant_id": [1]},
        "entities.user_id[0] is [1,2] (array); join keys are ints or strings",
        id="list",
    ),
    pytest.param(
        {"user_id": [3, "3"], "merchant_id": [1, 1]},
        "entities.user_id[1] is \"3\" (string), but join key 'user_id' holds integers (its "
        "column in the feature views' sources); send integers",
        id="string for an int key",
    ),
    pytest.param(  # two problems: the missing key is met first, on every transport
        {"user_id": [1.5]},
        "entities lack join key 'merchant_id' (needed by feature view 'merchant_stats'); "
        "given: ['user_id']",
        id="wrong value and a missing key",
    ),
    pytest.param(
        {"user_id": [1, 2], "merchant_id": [1]},
        "entities: columns have different lengths {'merchant_id': 1, 'user_id': 2}",
        id="lengths",
    ),
    pytest.param(
        {"user_id": [1.5], "merchant_id": [1, 2]},
        "entities: columns have different lengths {'merchant_id': 2, 'user_id': 1}",
        id="lengths and a wrong value",
    ),
]


@pytest.mark.parametrize("path", [GF, PR])
@pytest.mark.parametrize(("entities", "message"), CASES)
def test_the_same_bad_keys_read_the_same_everywhere(
    client: httpx.Client,
    stub: pb_grpc.FeatureServingStub,
    shared_server: ServerThread,
    path: str,
    entities: dict[str, list[Any]],
    message: str,
) -> None:
    assert _rest(client, path, entities) == (400, message)
    assert _grpc(stub, path, entities) == (grpc.StatusCode.INVALID_ARGUMENT, message)
    assert _in_process(shared_server, path, entities) == message


@pytest.mark.parametrize("path", [GF, PR])
@pytest.mark.parametrize("extra", [[1.5], [None], ["x"], [[1, 2]], [True]], ids=str)
def test_an_entity_column_no_view_needs_is_ignored_everywhere(
    client: httpx.Client, stub: pb_grpc.FeatureServingStub, path: str, extra: list[Any]
) -> None:
    entities = {"user_id": [1], "merchant_id": [1], "not_a_key": extra}
    assert _rest(client, path, entities) == (200, "")
    assert _grpc(stub, path, entities) == (grpc.StatusCode.OK, "")


WRONG = (
    st.floats(allow_nan=False, allow_infinity=False)
    | st.booleans()
    | st.none()
    | st.text(max_size=8)
    | st.lists(st.integers(-9, 9), max_size=2)
)


@settings(max_examples=40, deadline=None, suppress_health_check=FIXTURES)
@given(
    path=st.sampled_from([GF, PR]),
    users=st.lists(st.integers(1, 50) | WRONG, min_size=1, max_size=3),
    merchants=st.none() | st.lists(st.integers(1, 10) | WRONG, min_size=1, max_size=3),
)
def test_any_key_columns_get_one_answer_over_rest_and_grpc(
    client: httpx.Client,
    stub: pb_grpc.FeatureServingStub,
    path: str,
    users: list[Any],
    merchants: list[Any] | None,
) -> None:
    entities = (
        {"user_id": users} if merchants is None else {"user_id": users, "merchant_id": merchants}
    )
    code, rest = _rest(client, path, entities)
    status, details = _grpc(stub, path, entities)
    assert rest == details
    assert (code, status) in ((200, grpc.StatusCode.OK), (400, grpc.StatusCode.INVALID_ARGUMENT))
