"""A python model whose ``explain(x)`` gives contributions without a base column gets the score
less their sum as its base: every explanation adds up to its score, in process and over REST
(a base of 0 would leave the model's intercept out)."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from featurestore.store import FeatureStore
from tests.serving.conftest import MODEL_FEATURES, ServerThread, make_repo

# a score with an intercept (and, for 'curved', not linear at all): contributions alone never
# add up to it
LINEAR = """
import numpy as np
FEATURE_NAMES = ["tx_count", "amount_mean", "risk"]
W = np.array([0.01, -0.5, 2.0])
def predict(x):
    return 3.25 + x @ W
def explain(x):
    return x * W
"""
CURVED = """
import numpy as np
FEATURE_NAMES = ["tx_count", "amount_mean", "risk"]
def predict(x):
    return 1.0 / (1.0 + np.exp(-(x[:, 0] / 100 - x[:, 2])))
def explain(x):
    return np.column_stack([x[:, 0] / 100, np.zeros(len(x)), -x[:, 2]])
"""
ENTITIES = {"user_id": [1, 7, 999, 40], "merchant_id": [3, 999, 4, 5]}  # 999: defaults


def _adds_up(ex: dict[str, object], scores: list[float]) -> None:
    assert ex["output"] == "value" and ex["feature_names"] == MODEL_FEATURES
    contributions = np.array(ex["contributions"], dtype=float)
    assert contributions.shape == (len(scores), len(MODEL_FEATURES))
    total = np.array(ex["base_values"], dtype=float) + contributions.sum(axis=1)
    np.testing.assert_allclose(total, scores, rtol=1e-12, atol=1e-12)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``make_repo``'s repo with python models 'lin' and 'curved' (production) on 'scoring'."""
    from tests._models import publish

    root = tmp_path_factory.mktemp("explain_base")
    repo = make_repo(root / "repo")
    with FeatureStore(repo) as store:
        for name, code in (("lin", LINEAR), ("curved", CURVED)):
            (root / f"{name}.py").write_text(code)
            publish(store, name, flavor="python", artifact=root / f"{name}.py", service="scoring")
    return repo


@pytest.mark.parametrize("model", ["lin", "curved"])
def test_in_process_explanation_adds_up_to_the_score(repo: Path, model: str) -> None:
    with FeatureStore(repo) as store:
        res = store.predict(model, ENTITIES, explain=True)
    assert not res.degraded and res.explanation is not None
    _adds_up(res.to_dict()["explanation"], res.scores)
    if model == "lin":  # the base is the model's intercept, not 0
        np.testing.assert_allclose(res.explanation.base_values, 3.25, rtol=1e-12)


@pytest.mark.parametrize("model", ["lin", "curved"])
def test_rest_explanation_adds_up_to_the_score(repo: Path, model: str) -> None:
    server = ServerThread.of_repo(repo).start()
    try:
        got = httpx.post(
            f"{server.url}/predict",
            json={"model": model, "entities": ENTITIES, "explain": True},
            timeout=10,
        )
    finally:
        server.stop()
    assert got.status_code == 200, got.text
    body = got.json()
    _adds_up(body["explanation"], body["scores"])


def _loaded(tmp_path: Path, code: str) -> object:
    from featurestore.online.models.flavors import load_predictor
    from featurestore.online.models.registry import ModelVersion
    from featurestore.online.models.runtime import LoadedModel

    path = tmp_path / "model.py"
    path.write_text(code)
    mv = ModelVersion("m", 1, "python", str(path), "scoring", tuple(MODEL_FEATURES), "now")
    return LoadedModel(mv, load_predictor("python", path))


rows = arrays(
    np.float64,
    st.tuples(st.integers(1, 20), st.just(3)),
    elements=st.floats(-1e6, 1e6, allow_nan=False),
)


@settings(max_examples=50, deadline=None)
@given(x=rows)
def test_any_rows_explain_to_their_scores(tmp_path_factory: pytest.TempPathFactory, x) -> None:
    m = _loaded(tmp_path_factory.mktemp("rows"), LINEAR)
    scores, unscored = m.score(x)  # type: ignore[attr-defined]
    ex = m.explain(x)  # type: ignore[attr-defined]
    assert unscored == 0
    np.testing.assert_allclose(ex.base_values + ex.contributions.sum(axis=1), scores, rtol=1e-9)
    # the caller's own scores give the same base without scoring again
    again = m.explain(x, scores=scores)  # type: ignore[attr-defined]
    np.testing.assert_array_equal(again.base_values, ex.base_values)
