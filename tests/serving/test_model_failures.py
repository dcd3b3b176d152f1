"""A model that raises while scoring: rows with missing inputs answer null, the rest a clear error."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

from featurestore.online.models.errors import ModelPredictError
from featurestore.online.models.flavors import Predictor
from featurestore.online.models.registry import ModelVersion
from featurestore.online.models.runtime import LoadedModel
from tests.serving.conftest import DEFS, MODEL_FEATURES, ServerThread, expected_user, make_repo

# merchant risk without a default: a merchant that is not stored reaches the model as NaN
NO_DEFAULT = DEFS.replace('Field("risk", Float64, default=0.5)', 'Field("risk", Float64)')
PICKY = (
    "FEATURE_NAMES = ['tx_count', 'amount_mean', 'risk']\n"
    "def predict(x):\n"
    "    if (x[:, 1] > 60).any():\n"
    "        raise ValueError('amount too large')\n"
    "    return x[:, 2]\n"
)


def _logreg() -> Any:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(4)
    x = rng.random((300, 3)) * [500, 75, 1]
    y = (x[:, 2] + rng.normal(0, 0.2, 300) > 0.5).astype(int)
    return LogisticRegression(max_iter=500).fit(x, y)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerThread, Any]]:
    """A server whose repo has a nullable feature, an sklearn model refusing NaN and a python
    model that raises on large amounts."""
    from featurestore.online.models.repo import model_registry, service_feature_names
    from featurestore.store import FeatureStore

    root = tmp_path_factory.mktemp("model_failures")
    assert NO_DEFAULT != DEFS
    repo = make_repo(root / "repo", defs=NO_DEFAULT)
    lr = _logreg()
    (root / "lr.pkl").write_bytes(pickle.dumps(lr))
    (root / "picky.py").write_text(PICKY)
    with FeatureStore(repo) as store:
        reg = model_registry(store)
        names = service_feature_names(store, "scoring")
        for name, flavor, art in (("lr", "sklearn", "lr.pkl"), ("picky", "python", "picky.py")):
            mv = reg.register(
                name, flavor=flavor, artifact=root / art, feature_service="scoring",
                service_features=names,
            )  # fmt: skip
            reg.set_alias(name, mv.version, "production")
    s = ServerThread.of_repo(repo)
    s.start()
    yield s, lr
    s.stop()


def _row(uid: int, mid: int) -> list[float]:
    u = expected_user(uid)
    return [u["tx_count"], u["amount_mean"], mid / 10]


@pytest.mark.parametrize(
    ("users", "merchants"),
    [([3], [999]), ([3, 7], [2, 999]), ([3, 7, 9], [999, 5, 998]), ([3, 7], [2, 4])],
    ids=["one-missing", "batch-one-missing", "batch-two-missing", "none-missing"],
)
def test_rows_with_a_missing_input_score_null_and_the_rest_as_the_model_does(
    server, users: list[int], merchants: list[int]
) -> None:
    s, lr = server
    body = {"model": "lr", "entities": {"user_id": users, "merchant_id": merchants}}
    with httpx.Client(base_url=s.url, timeout=10) as c:
        before = _unscored(c.get("/metrics").text)
        r = c.post("/predict", json=body)
        assert r.status_code == 200, r.text
        scores = r.json()["scores"]
        after = _unscored(c.get("/metrics").text)
    stored = [m <= 10 for m in merchants]
    assert [v is not None for v in scores] == stored
    rows = np.array([_row(u, m) for u, m, ok in zip(users, merchants, stored, strict=True) if ok])
    if len(rows):
        want = lr.predict_proba(rows)[:, 1]
        np.testing.assert_allclose([v for v in scores if v is not None], want, rtol=1e-12)
    assert after - before == stored.count(False)


def _unscored(metrics: str) -> float:
    for line in metrics.splitlines():
        if line.startswith('featurestore_unscored_rows_total{model="lr",version="1"}'):
            return float(line.split()[-1])
    return 0.0


def test_a_model_that_raises_is_a_500_naming_the_model_and_the_cause(server) -> None:
    s, _ = server
    fine = {"model": "picky", "entities": {"user_id": [3, 7], "merchant_id": [2, 4]}}
    bad = {"model": "picky", "entities": {"user_id": [3, 45], "merchant_id": [2, 4]}}
    with httpx.Client(base_url=s.url, timeout=10) as c:
        ok = c.post("/predict", json=fine)
        assert ok.status_code == 200 and ok.json()["scores"] == [0.2, 0.4]
        r = c.post("/predict", json=bad)
    assert r.status_code == 500
    assert r.json() == {
        "error": "model 'picky' v1 failed to score 2 row(s): ValueError: amount too large"
    }


def test_grpc_answers_internal_with_the_same_message(server) -> None:
    from featurestore.online.serving._proto import featurestore_pb2 as pb
    from featurestore.online.serving._proto import featurestore_pb2_grpc as pb_grpc

    s, _ = server
    req = pb.PredictRequest(
        model="picky",
        entities={"user_id": pb.ValueList(ints=[45]), "merchant_id": pb.ValueList(ints=[2])},
    )
    with grpc.insecure_channel(s.grpc_target) as ch:
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.FeatureServingStub(ch).Predict(req, timeout=10)
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert info.value.details() == (
        "model 'picky' v1 failed to score 1 row(s): ValueError: amount too large"
    )


def _loaded(fn: Any) -> LoadedModel:
    mv = ModelVersion(
        name="m", version=3, flavor="python", artifact="m.py", feature_service="svc",
        feature_names=tuple(MODEL_FEATURES), created_at="", description="",
    )  # fmt: skip
    return LoadedModel(mv, Predictor("python", None, None, 3, fn))


def test_score_retries_only_the_complete_rows_and_reports_the_rest() -> None:
    """The batch, then its complete rows, then the rows with NaN as zeros (which score: so the
    model refused the NaNs, and those rows are reported unscored)."""
    calls: list[int] = []

    def no_nan(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        if np.isnan(x).any():
            raise ValueError("Input X contains NaN")
        return x.sum(axis=1)

    x = np.array([[1.0, 2, 3], [np.nan, 1, 1], [4, 5, 6]])
    scores, unscored = _loaded(no_nan).score(x)
    assert calls == [3, 2, 1] and unscored == 1
    assert scores[0] == 6 and np.isnan(scores[1]) and scores[2] == 15
    everything_missing = np.full((2, 3), np.nan)
    scores, unscored = _loaded(no_nan).score(everything_missing)
    assert np.isnan(scores).all() and unscored == 2


def test_score_failures_without_missing_inputs_are_model_predict_errors() -> None:
    def broken(x: np.ndarray) -> np.ndarray:
        raise RuntimeError("out of\nmemory")

    with pytest.raises(ModelPredictError, match=r"^model 'm' v3 failed to score 2 row\(s\): "
                       r"RuntimeError: out of memory$"):  # fmt: skip
        _loaded(broken).score(np.ones((2, 3)))
    # the complete rows fail too: still an error, naming how many rows were tried
    with pytest.raises(ModelPredictError, match=r"failed to score 1 row\(s\)"):
        _loaded(broken).score(np.array([[1.0, 2, 3], [np.nan, 1, 1]]))
