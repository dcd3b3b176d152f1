"""``explain``: predict answers each feature's contribution to each score, in process, over
REST and over gRPC; they add up to the model's own raw score, and agree across the three."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import grpc
import httpx
import lightgbm as lgb
import numpy as np
import pytest

from featurestore.online.serving._proto import featurestore_pb2 as pb
from featurestore.online.serving._proto import featurestore_pb2_grpc as pb_grpc
from featurestore.online.serving._wire import to_value
from featurestore.store import FeatureStore
from tests.serving.conftest import MODEL_FEATURES, ServerThread, make_repo

ONE = {"user_id": [7], "merchant_id": [3]}  # one entity: the engine's one-row shortcut
MANY = {"user_id": [1, 2, 999, 40], "merchant_id": [3, 999, 4, 5]}  # missing keys: defaults


def _booster(repo: Path, version: int = 1) -> lgb.Booster:
    from featurestore.online.models.repo import model_registry

    with FeatureStore(repo) as store:
        reg = model_registry(store)
        return lgb.Booster(model_file=reg.artifact_path(reg.get("fraud").versions[version]))


def _check_adds_up(ex: dict[str, Any], scores: list[float], booster: lgb.Booster, x: Any) -> None:
    """base + sum(contributions) is LightGBM's raw score of the inputs; its sigmoid the score."""
    assert ex["output"] == "raw"
    assert ex["feature_names"] == MODEL_FEATURES
    contributions = np.array(ex["contributions"], dtype=float)
    assert contributions.shape == (len(scores), len(MODEL_FEATURES))
    raw = np.array(ex["base_values"]) + contributions.sum(axis=1)
    np.testing.assert_allclose(raw, booster.predict(np.asarray(x), raw_score=True), rtol=1e-9)
    np.testing.assert_allclose(1 / (1 + np.exp(-raw)), scores, rtol=1e-9)


@pytest.fixture(scope="module")
def own_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repo no server in this process holds open (LMDB opens once per process)."""
    return make_repo(tmp_path_factory.mktemp("explain") / "repo")


@pytest.mark.parametrize("entities", [ONE, MANY], ids=["one", "many"])
def test_in_process_explanations_add_up_to_the_raw_score(
    own_repo: Path, entities: dict[str, list[int]]
) -> None:
    with FeatureStore(own_repo) as store:
        res = store.predict("fraud", entities, explain=True, return_features=len(entities) > 1)
        feats = store.get_online_features("scoring", entities).to_dict()
        plain = store.predict("fraud", entities)
    assert not res.degraded and res.explanation is not None and plain.explanation is None
    assert res.scores == plain.scores
    x = np.array([feats[n] for n in MODEL_FEATURES], dtype=float).T  # what the model was fed
    _check_adds_up(res.to_dict()["explanation"], res.scores, _booster(own_repo), x)


def test_rest_and_grpc_explain_as_in_process(shared_server: ServerThread) -> None:
    engine = shared_server.app.state.engine  # the server's own engine, called in process
    res = engine.predict("fraud", entities=MANY, explain=True)
    assert not res.degraded
    want = res.to_dict()["explanation"]
    got = httpx.post(
        f"{shared_server.url}/predict",
        json={"model": "fraud", "entities": MANY, "explain": True},
        timeout=10,
    )
    assert got.status_code == 200, got.text
    assert got.json()["explanation"] == want
    request = pb.PredictRequest(
        model="fraud",
        entities={k: pb.ValueList(values=[to_value(v) for v in vs]) for k, vs in MANY.items()},
        explain=True,
    )
    with grpc.insecure_channel(shared_server.grpc_target) as ch:
        reply = pb_grpc.FeatureServingStub(ch).Predict(request, timeout=10)
    ex = reply.explanation
    assert (ex.output, list(ex.feature_names)) == (want["output"], want["feature_names"])
    assert list(ex.base_values) == want["base_values"]
    k = len(want["feature_names"])
    rows = [list(ex.contributions[i : i + k]) for i in range(0, len(ex.contributions), k)]
    assert rows == want["contributions"]
    # without explain, no explanation is sent
    plain = httpx.post(
        f"{shared_server.url}/predict", json={"model": "fraud", "entities": ONE}, timeout=10
    )
    assert "explanation" not in plain.json()


def test_listings_say_whether_a_model_explains(shared_server: ServerThread) -> None:
    models = httpx.get(f"{shared_server.url}/models", timeout=10).json()["models"]
    assert next(m for m in models if m["name"] == "fraud")["loaded"]["explainable"] is True
    with grpc.insecure_channel(shared_server.grpc_target) as ch:
        listed = pb_grpc.FeatureServingStub(ch).ListModels(pb.ListModelsRequest(), timeout=10)
    assert next(m for m in listed.models if m.name == "fraud").explainable


def _python_model(repo: Path, tmp_path: Path, source: str) -> int:
    """Register ``source`` as a python-flavor version of 'fraud' and make it production."""
    from tests._models import publish

    path = tmp_path / f"m{abs(hash(source))}.py"
    path.write_text(source)
    with FeatureStore(repo) as store:
        return publish(store, "fraud", flavor="python", artifact=path, service="scoring")


NAMES = f"FEATURE_NAMES = {MODEL_FEATURES!r}\n"
LINEAR = NAMES + "def predict(x):\n    return 0.5 * x[:, 2] + 0.001 * x[:, 0]\n"


def test_a_model_that_cannot_explain_is_a_client_error(
    fresh_repo: Path, tmp_path: Path, serve: Any
) -> None:
    version = _python_model(fresh_repo, tmp_path, LINEAR)
    s = serve(fresh_repo)
    body = {"model": f"fraud@{version}", "entities": ONE, "explain": True}
    got = httpx.post(f"{s.url}/predict", json=body, timeout=10)
    assert got.status_code == 400
    assert f"model 'fraud' v{version} (python flavor) cannot explain" in got.json()["error"]
    body["explain"] = False
    assert httpx.post(f"{s.url}/predict", json=body, timeout=10).status_code == 200
    request = pb.PredictRequest(
        model=f"fraud@{version}",
        entities={k: pb.ValueList(values=[to_value(v) for v in vs]) for k, vs in ONE.items()},
        explain=True,
    )
    with grpc.insecure_channel(s.grpc_target) as ch:
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.FeatureServingStub(ch).Predict(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "cannot explain" in err.value.details()


def test_a_python_model_explains_with_its_own_function(fresh_repo: Path, tmp_path: Path) -> None:
    source = LINEAR + (
        "import numpy as np\n"
        "def explain(x):\n"
        "    return np.stack([0.001 * x[:, 0], 0 * x[:, 1], 0.5 * x[:, 2]], axis=1)\n"
    )
    version = _python_model(fresh_repo, tmp_path, source)
    with FeatureStore(fresh_repo) as store:
        res = store.predict(f"fraud@{version}", MANY, explain=True)
    ex = res.explanation
    assert ex is not None and ex.feature_names == tuple(MODEL_FEATURES)
    sums = ex.base_values + ex.contributions.sum(axis=1)
    assert all(math.isclose(a, b, rel_tol=1e-12) for a, b in zip(sums, res.scores, strict=True))


def test_explained_requests_have_their_own_entity_cap(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", serving="serving:\n  max_explained_entities: 3\n")
    with FeatureStore(repo) as store:
        assert len(store.predict("fraud", MANY).scores) == 4  # unexplained: the usual cap
        with pytest.raises(Exception, match=r"at most 3 \(serving.max_explained_entities\)"):
            store.predict("fraud", MANY, explain=True)
        assert store.predict("fraud", ONE, explain=True).explanation is not None
