"""Per-row feature contributions of real LightGBM, XGBoost, scikit-learn, ONNX and python models.

Every model is registered over a feature service and loaded by the runtime as the server loads
it. The contributions are checked against the library's own raw output (LightGBM
``raw_score``, XGBoost ``output_margin``, scikit-learn ``decision_function``) on random rows
with missing values, and against the score the service returns through the model's link.
Tree models are trained in ANOTHER order than the service's and with a constant column, so a
wrong column mapping or a contribution on an unused feature shows.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from featurestore.online.models import (
    Explanation,
    LoadedModel,
    ModelExplainError,
    ModelPredictError,
    ModelRegistry,
    ModelRegistryError,
    ModelRuntime,
)

SERVICE = ["tx_count", "amount_mean", "risk", "idle"]  # the service's order
ORDER = ["risk", "idle", "tx_count", "amount_mean"]  # the order the models are trained in
SCALE = np.array([1.0, 1.0, 500.0, 75.0])  # per column of ORDER
IDLE = ORDER.index("idle")  # constant in training: no tree ever splits on it


@pytest.fixture
def reg(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "models")


def _train_data(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rows in ORDER with a constant ``idle`` column, a label from risk and tx_count."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, len(ORDER))) * SCALE
    x[:, IDLE] = 0.5
    y = (x[:, 0] + x[:, 2] / 1000 + rng.normal(0, 0.2, n) > 0.75).astype(int)
    return x, y


def _rows(n: int = 40, seed: int = 7) -> np.ndarray:
    """Rows in ORDER, ``idle`` varying, about 15% of cells missing and one row all missing."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, len(ORDER))) * SCALE * 1.2 - 0.1 * SCALE
    x[rng.random(x.shape) < 0.15] = np.nan
    x[3] = np.nan
    return x


def _served(reg: ModelRegistry, name: str, flavor: str, artifact: Any) -> LoadedModel:
    """Register ``artifact`` over SERVICE, promote it and load it through the runtime."""
    mv = reg.register(
        name, flavor=flavor, artifact=artifact, feature_service="svc", service_features=SERVICE
    )
    reg.set_alias(name, mv.version, "production")
    rt = ModelRuntime(reg)
    rt.refresh()
    assert not rt.errors, rt.errors
    return rt.select(name)[0]


def _adds_up(e: Explanation, want: np.ndarray, rtol: float = 1e-9) -> None:
    got = e.base_values + e.contributions.sum(axis=1)
    scale = np.abs(e.base_values) + np.abs(e.contributions).sum(axis=1) + 1e-12
    assert np.all(np.abs(got - want) <= rtol * scale), np.abs(got - want).max()


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _cannot(m: LoadedModel, why: str) -> None:
    assert not m.explainable
    v = m.version
    with pytest.raises(ModelExplainError, match=f"^model '{v.name}' v{v.version} ") as info:
        m.explain(np.zeros((1, len(SERVICE))))
    msg = str(info.value)
    assert f"({v.flavor} flavor) cannot explain its scores: " in msg
    assert why in msg
    assert "explanations are available for lightgbm and xgboost tree models" in msg


# ---- lightgbm ---------------------------------------------------------------------------------


def _lgb(path: Path, objective: str = "binary", **params: Any) -> Path:
    import lightgbm as lgb

    x, y = _train_data()
    label = x[:, 2] / 100 + x[:, 0] if objective == "regression" else y
    p = {"objective": objective, "verbose": -1, "num_threads": 1, "seed": 0, **params}
    booster = lgb.train(p, lgb.Dataset(x, label, feature_name=ORDER), 30)
    booster.save_model(str(path))
    return path


def test_lightgbm_contributions_add_up_to_the_log_odds_the_score_comes_from(reg, tmp_path) -> None:
    import lightgbm as lgb

    art = _lgb(tmp_path / "m.txt")
    m = _served(reg, "fraud", "lightgbm", art)
    assert m.explainable and m.feature_names == tuple(ORDER) == m.version.feature_names
    x = _rows()
    e = m.explain(x)
    assert e.feature_names == tuple(ORDER) and e.output == "raw"
    assert e.contributions.shape == x.shape and e.contributions.dtype == np.float64
    assert e.base_values.shape == (len(x),) and np.isfinite(e.contributions).all()
    raw = lgb.Booster(model_file=str(art)).predict(x, raw_score=True)
    _adds_up(e, raw)
    scores, unscored = m.score(x)
    assert unscored == 0
    np.testing.assert_allclose(_sigmoid(e.base_values + e.contributions.sum(axis=1)), scores)
    assert (e.contributions[:, IDLE] == 0).all()  # never split on
    assert np.abs(e.contributions[:, ORDER.index("risk")]).max() > 0.1  # the signal
    assert np.ptp(e.base_values) == 0  # the expected value: one per model


def test_lightgbm_regressor_contributions_add_up_to_the_value(reg, tmp_path) -> None:
    import lightgbm as lgb

    art = _lgb(tmp_path / "r.txt", "regression")
    m = _served(reg, "amount", "lightgbm", art)
    x = _rows(seed=3)
    e = m.explain(x)
    _adds_up(e, lgb.Booster(model_file=str(art)).predict(x, raw_score=True))
    _adds_up(e, m.score(x)[0])  # identity link: raw is the value served


@pytest.mark.parametrize("objective", ["multiclass", "multiclassova"])
def test_lightgbm_two_class_model_explains_class_one(reg, tmp_path, objective) -> None:
    import lightgbm as lgb

    art = _lgb(tmp_path / "two.txt", objective, num_class=2)
    m = _served(reg, "two", "lightgbm", art)
    x = _rows(seed=5)
    e = m.explain(x)
    raw = lgb.Booster(model_file=str(art)).predict(x, raw_score=True)
    # softmax: P(class 1) = sigmoid(raw1 - raw0); one-vs-rest: sigmoid(raw1)
    want = raw[:, 1] - raw[:, 0] if objective == "multiclass" else raw[:, 1]
    _adds_up(e, want)
    np.testing.assert_allclose(
        _sigmoid(e.base_values + e.contributions.sum(axis=1)), m.score(x)[0], rtol=1e-12
    )
    assert (e.contributions[:, IDLE] == 0).all()


def test_lightgbm_linear_trees_are_not_explainable(reg, tmp_path) -> None:
    m = _served(reg, "lin", "lightgbm", _lgb(tmp_path / "l.txt", "regression", linear_tree=True))
    _cannot(m, "LightGBM cannot compute SHAP values of linear trees")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    x=hnp.arrays(
        np.float64,
        st.tuples(st.integers(1, 6), st.just(len(ORDER))),
        elements=st.one_of(st.floats(-1e6, 1e6), st.just(np.nan)),
    )
)
def test_lightgbm_contributions_add_up_on_any_rows(lgb_model, x) -> None:
    m, booster = lgb_model
    e = m.explain(x)
    _adds_up(e, booster.predict(x, raw_score=True))
    assert (e.contributions[:, IDLE] == 0).all()


@pytest.fixture(scope="module")
def lgb_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[LoadedModel, Any]:
    import lightgbm as lgb

    tmp = tmp_path_factory.mktemp("lgb")
    art = _lgb(tmp / "m.txt")
    return _served(ModelRegistry(tmp / "models"), "m", "lightgbm", art), lgb.Booster(
        model_file=str(art)
    )


# ---- xgboost ----------------------------------------------------------------------------------


def test_xgboost_classifier_contributions_add_up_to_the_margin(reg, tmp_path) -> None:
    import pandas as pd
    import xgboost as xgb

    x, y = _train_data()
    clf = xgb.XGBClassifier(n_estimators=20, max_depth=3, n_jobs=1, random_state=0)
    clf.fit(pd.DataFrame(x, columns=ORDER), y)
    clf.save_model(tmp_path / "clf.json")
    m = _served(reg, "xg", "xgboost", tmp_path / "clf.json")
    assert m.explainable and m.feature_names == tuple(ORDER)
    rows = _rows(seed=11)
    e = m.explain(rows)
    assert e.output == "raw" and e.feature_names == tuple(ORDER)
    margin = clf.get_booster().predict(
        xgb.DMatrix(rows, feature_names=ORDER, missing=np.nan), output_margin=True
    )
    _adds_up(e, margin, rtol=1e-5)  # XGBoost works in float32
    np.testing.assert_allclose(
        _sigmoid(e.base_values + e.contributions.sum(axis=1)), m.score(rows)[0], rtol=1e-5
    )
    assert (e.contributions[:, IDLE] == 0).all()


def test_xgboost_regressor_and_two_class_softprob(reg, tmp_path) -> None:
    import xgboost as xgb

    x, y = _train_data()
    rows = _rows(seed=13)
    d = xgb.DMatrix(x, label=x[:, 2] / 100, feature_names=ORDER)
    booster = xgb.train({"objective": "reg:squarederror", "nthread": 1, "max_depth": 3}, d, 15)
    booster.save_model(tmp_path / "reg.ubj")
    m = _served(reg, "xr", "xgboost", tmp_path / "reg.ubj")
    e = m.explain(rows)
    want = booster.predict(xgb.DMatrix(rows, feature_names=ORDER), output_margin=True)
    _adds_up(e, want, rtol=1e-5)
    _adds_up(e, m.score(rows)[0], rtol=1e-5)

    d = xgb.DMatrix(x, label=y, feature_names=ORDER)
    params = {"objective": "multi:softprob", "num_class": 2, "nthread": 1, "max_depth": 3}
    soft = xgb.train(params, d, 10)
    soft.save_model(tmp_path / "soft.json")
    m = _served(reg, "xs", "xgboost", tmp_path / "soft.json")
    e = m.explain(rows)
    margin = soft.predict(xgb.DMatrix(rows, feature_names=ORDER), output_margin=True)
    _adds_up(e, margin[:, 1] - margin[:, 0], rtol=1e-5)
    np.testing.assert_allclose(
        _sigmoid(e.base_values + e.contributions.sum(axis=1)), m.score(rows)[0], rtol=1e-5
    )
    assert (e.contributions[:, IDLE] == 0).all()


# ---- scikit-learn -----------------------------------------------------------------------------


def _sk(kind: str) -> Any:
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.linear_model import (
        LinearRegression,
        LogisticRegression,
        PoissonRegressor,
        Ridge,
        SGDRegressor,
    )
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MinMaxScaler, PolynomialFeatures, StandardScaler

    x, y = _train_data()
    df = pd.DataFrame(x, columns=ORDER)
    value = x[:, 0] * 3 + x[:, 2] / 100
    return {
        "logreg": lambda: LogisticRegression(max_iter=1000).fit(df, y),
        "linreg": lambda: LinearRegression().fit(df, value),
        "ridge": lambda: Ridge().fit(x, value),
        "sgd": lambda: make_pipeline(StandardScaler(), SGDRegressor(random_state=0)).fit(df, value),
        "scaled": lambda: make_pipeline(StandardScaler(), MinMaxScaler(), LogisticRegression()).fit(
            df, y
        ),
        "gbc": lambda: GradientBoostingClassifier(n_estimators=5).fit(df, y),
        "poisson": lambda: PoissonRegressor().fit(df, value),
        "poly": lambda: make_pipeline(PolynomialFeatures(), Ridge()).fit(df, value),
        "columns": lambda: make_pipeline(
            ColumnTransformer([("s", StandardScaler(), ["risk"])], remainder="passthrough"),
            LogisticRegression(),
        ).fit(df, y),
    }[kind]()


@pytest.mark.parametrize("kind", ["logreg", "linreg", "ridge", "sgd", "scaled", "poisson"])
def test_sklearn_linear_contributions_add_up_to_the_decision_function(reg, tmp_path, kind) -> None:
    import pandas as pd

    model = _sk(kind)
    art = tmp_path / "m.pkl"
    art.write_bytes(pickle.dumps(model))
    m = _served(reg, "lin", "sklearn", art)
    assert m.explainable
    named = kind != "ridge"  # fitted on a bare matrix: the service's order
    assert m.feature_names == (tuple(ORDER) if named else tuple(SERVICE))
    x = _rows(seed=17)
    e = m.explain(x)
    assert e.output == "raw" and e.feature_names == m.feature_names
    missing = np.isnan(x).any(axis=1)
    assert missing.any() and (~missing).any()
    assert np.isnan(e.contributions[missing]).all()  # the model cannot score those rows
    assert np.isfinite(e.contributions[~missing]).all() and np.isfinite(e.base_values).all()
    ok = x[~missing]
    fed = pd.DataFrame(ok, columns=ORDER) if named else ok  # as it was fitted
    if kind in ("logreg", "scaled"):
        raw = model.decision_function(fed)
    elif kind == "poisson":  # raw is the linear predictor: log of the predicted mean
        raw = np.log(model.predict(fed))
    else:
        raw = model.predict(fed)
    ex = Explanation(e.feature_names, e.contributions[~missing], e.base_values[~missing], "raw")
    _adds_up(ex, raw)
    scores, unscored = m.score(x)
    assert unscored == missing.sum()
    link = {"logreg": _sigmoid, "scaled": _sigmoid, "poisson": np.exp}.get(kind, lambda z: z)
    np.testing.assert_allclose(
        link(ex.base_values + ex.contributions.sum(axis=1)), scores[~missing]
    )
    if kind in ("logreg", "linreg", "poisson"):  # bare: coef_j * x_j, intercept as base
        coef = np.ravel(model.coef_)
        np.testing.assert_array_equal(ex.contributions, ok * coef)
        assert (ex.base_values == np.ravel(model.intercept_)[0]).all()


@pytest.mark.parametrize(
    ("kind", "why"),
    [
        ("gbc", "a GradientBoostingClassifier is not a linear model"),
        ("poly", "a pipeline with a PolynomialFeatures step"),
        ("columns", "a pipeline with a ColumnTransformer step"),
    ],
)
def test_sklearn_models_that_are_not_linear_are_refused(reg, tmp_path, kind, why) -> None:
    art = tmp_path / "m.pkl"
    art.write_bytes(pickle.dumps(_sk(kind)))
    _cannot(_served(reg, f"sk-{kind}", "sklearn", art), why)


class Squashed:
    """Linear-looking (coef_, intercept_) but not linear: tanh of the linear predictor."""

    def __init__(self) -> None:
        self.coef_ = np.array([1.0, 0.5, 0.01, 0.02])
        self.intercept_ = np.array([0.1])

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.tanh(x @ self.coef_ + self.intercept_[0])


def test_a_model_with_coefficients_but_another_output_is_refused_at_first_use(
    reg, tmp_path
) -> None:
    art = tmp_path / "sq.pkl"
    art.write_bytes(pickle.dumps(Squashed()))
    m = _served(reg, "squashed", "sklearn", art)
    assert m.explainable  # decided from its structure at load: no prediction runs there
    for _ in range(2):  # checked once, refused every time
        with pytest.raises(
            ModelExplainError,
            match=r"^model 'squashed' v1 \(sklearn flavor\) cannot explain its scores: its "
            r"output is not coef_ @ x \+ intercept_ \(not a linear function of its inputs\)",
        ):
            m.explain(np.zeros((1, 4)))


# ---- onnx and python --------------------------------------------------------------------------


def test_onnx_models_are_not_explainable(reg, tmp_path) -> None:
    from tests.serving.test_flavors_real import onnx_linear

    art = onnx_linear(tmp_path / "m.onnx", np.array([1.0, 2.0, 3.0, 4.0]), b=0.5)
    m = _served(reg, "ox", "onnx", art)
    assert m.score(np.ones((1, 4)))[0].tolist() == [10.5]
    _cannot(m, "an ONNX graph has no per-feature contributions")


PY_MODEL = """
import numpy as np
FEATURE_NAMES = ["risk", "idle", "tx_count", "amount_mean"]
W = np.array([2.0, 0.0, 0.01, -0.5])
def predict(x):
    return 1.0 + x @ W
"""


@pytest.mark.parametrize(
    ("extra", "base", "output"),
    [
        ("def explain(x):\n    return np.hstack([x * W, np.ones((len(x), 1))])\n", 1.0, "value"),
        ("EXPLAIN_OUTPUT = 'margin'\ndef explain(x):\n    return x * W\n", 0.0, "margin"),
    ],
)
def test_python_model_with_explain(reg, tmp_path, extra, base, output) -> None:
    (tmp_path / "pm.py").write_text(PY_MODEL + extra)
    m = _served(reg, "py", "python", tmp_path / "pm.py")
    assert m.explainable and m.feature_names == tuple(ORDER)
    x = np.array([[0.5, 3.0, 100.0, 2.0], [0.0, 0.0, 0.0, 0.0]])
    e = m.explain(x)
    assert e.output == output and e.feature_names == tuple(ORDER)
    np.testing.assert_array_equal(e.contributions, x * [2.0, 0.0, 0.01, -0.5])
    assert e.base_values.tolist() == [base, base]


def test_python_model_without_explain_or_with_a_bad_one(reg, tmp_path) -> None:
    (tmp_path / "plain.py").write_text(PY_MODEL)
    _cannot(_served(reg, "plain", "python", tmp_path / "plain.py"), "defines no explain(x)")
    (tmp_path / "bad.py").write_text(PY_MODEL + "def explain(x):\n    return x[:, :2]\n")
    m = _served(reg, "bad", "python", tmp_path / "bad.py")
    with pytest.raises(
        ModelPredictError,
        match=r"^model 'bad' v1 failed to explain 2 row\(s\): ValueError: explain\(x\) returned "
        r"shape \(2, 2\) for 2 row\(s\) of 4 inputs; expected \(2, 4\) or \(2, 5\)",
    ):
        m.explain(np.zeros((2, 4)))


# ---- shapes, errors ---------------------------------------------------------------------------


def test_wrong_shapes_are_value_errors_and_no_rows_explain_to_nothing(lgb_model) -> None:
    m, _ = lgb_model
    for bad in (np.zeros(4), np.zeros((2, 3)), np.zeros((1, 5)), np.zeros((1, 2, 4))):
        with pytest.raises(ValueError, match=r"^model 'm' v1 explains rows of its 4 inputs"):
            m.explain(bad)
    e = m.explain(np.zeros((0, 4)))
    assert e.contributions.shape == (0, 4) and e.base_values.shape == (0,)
    e = m.explain(np.zeros((1, 4), dtype=np.float32))  # any float rows, as score takes them
    assert e.contributions.dtype == np.float64


def test_explain_error_is_a_client_error_of_the_model_family() -> None:
    from featurestore.online.serving.rest import _status_of

    assert issubclass(ModelExplainError, ModelRegistryError)
    assert _status_of(ModelExplainError("model 'm' cannot explain")) == 400
