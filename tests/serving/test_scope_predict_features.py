"""Predict that returns feature values (return_features) or explanations needs the ``features``
scope as well as ``predict``, on REST and gRPC: a predict-only key must not read what
/get-online-features refuses it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from featurestore.online.serving._proto import featurestore_pb2 as pb
from featurestore.online.serving._proto import featurestore_pb2_grpc as pb_grpc
from featurestore.online.serving.auth import make_entry, new_key, write_keys
from tests.serving.conftest import ServerThread, make_repo

ENTITIES = {"user_id": [3], "merchant_id": [1]}
KEYS = {  # key name -> scopes
    "scorer": ("predict",),
    "analyst": ("predict", "features"),
    "reader": ("features",),
}
# what each request asks beyond a plain predict
ASKS = [
    ({"return_features": True}, "predict with return_features"),
    ({"explain": True}, "explain"),
    ({"return_features": True, "explain": True}, "predict with return_features"),
]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerThread, dict[str, str]]]:
    from featurestore.online.serving.engine import Engine
    from featurestore.online.serving.rest import create_app

    repo = make_repo(tmp_path_factory.mktemp("scope") / "repo", serving="serving:\n  auth: {}\n")
    raw = {name: new_key() for name in KEYS}
    write_keys(
        Path(repo) / "secrets" / "api_keys.json",
        [make_entry(name, raw[name], scopes) for name, scopes in KEYS.items()],
    )
    server = ServerThread(create_app(Engine.from_repo(str(repo)), grpc_port=0, own_engine=True))
    server.start()
    yield server, raw
    server.stop()


def _rest(server: ServerThread, key: str, **extra: Any) -> httpx.Response:
    body = {"model": "fraud", "entities": ENTITIES, **extra}
    return httpx.post(f"{server.url}/predict", json=body, headers={"x-api-key": key}, timeout=10)


def _grpc(server: ServerThread, key: str, **extra: Any) -> tuple[grpc.StatusCode, str, Any]:
    request = pb.PredictRequest(
        model="fraud",
        entities={k: pb.ValueList(ints=v) for k, v in ENTITIES.items()},
        **extra,
    )
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.FeatureServingStub(channel)
        try:
            reply = stub.Predict(request, metadata=(("x-api-key", key),), timeout=10)
        except grpc.RpcError as exc:
            return exc.code(), exc.details(), None
    return grpc.StatusCode.OK, "", reply


@pytest.mark.parametrize(("extra", "why"), ASKS)
def test_a_predict_only_key_cannot_read_features_through_predict(
    keys: tuple[ServerThread, dict[str, str]], extra: dict[str, bool], why: str
) -> None:
    server, raw = keys
    r = _rest(server, raw["scorer"], **extra)
    assert r.status_code == 403, r.text
    error = r.json()["error"]
    assert error.startswith(f"{why} needs scope 'features': ")
    assert "API key 'scorer' lacks scope 'features' (it has: predict)" in error
    assert "features" not in r.json() and "scores" not in r.json()

    code, details, reply = _grpc(server, raw["scorer"], **extra)
    assert code == grpc.StatusCode.PERMISSION_DENIED and reply is None
    assert details == error  # the same words on both servers


def test_the_refusal_matches_get_online_features(keys: tuple[ServerThread, dict[str, str]]) -> None:
    """The route a predict-only key cannot use is refused it through predict, too."""
    server, raw = keys
    body = {"feature_service": "scoring", "entities": ENTITIES}
    r = httpx.post(
        f"{server.url}/get-online-features",
        json=body,
        headers={"x-api-key": raw["scorer"]},
        timeout=10,
    )
    assert r.status_code == 403
    assert _rest(server, raw["scorer"], return_features=True).status_code == 403


def test_a_predict_only_key_still_scores(keys: tuple[ServerThread, dict[str, str]]) -> None:
    server, raw = keys
    r = _rest(server, raw["scorer"])
    assert r.status_code == 200, r.text
    assert len(r.json()["scores"]) == 1 and r.json().get("features") is None
    code, _, reply = _grpc(server, raw["scorer"])
    assert code == grpc.StatusCode.OK and len(reply.scores) == 1


@pytest.mark.parametrize(("extra", "why"), ASKS)
def test_a_key_with_both_scopes_gets_features_and_explanations(
    keys: tuple[ServerThread, dict[str, str]], extra: dict[str, bool], why: str
) -> None:
    server, raw = keys
    r = _rest(server, raw["analyst"], **extra)
    assert r.status_code == 200, r.text
    out = r.json()
    if extra.get("return_features"):
        assert out["features"]["feature_names"]
    if extra.get("explain"):
        assert len(out["explanation"]["contributions"]) == 1
    code, details, reply = _grpc(server, raw["analyst"], **extra)
    assert code == grpc.StatusCode.OK, details
    assert len(reply.scores) == 1


def test_features_alone_does_not_grant_predict(keys: tuple[ServerThread, dict[str, str]]) -> None:
    server, raw = keys
    r = _rest(server, raw["reader"], return_features=True)
    assert r.status_code == 403
    assert "API key 'reader' lacks scope 'predict'" in r.json()["error"]
