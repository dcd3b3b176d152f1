"""Real scikit-learn, XGBoost and ONNX models: registry checks, loaded scores, served scores.

Every score is compared with what the library itself predicts on the same rows (the positive
class probability for classifiers). Models are trained on the service's features in ANOTHER
order where the artifact names its inputs, so a wrong column mapping changes the scores.
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from featurestore.online.models import ModelRegistry, ModelRegistryError, load_predictor
from tests.serving import test_models
from tests.serving.conftest import expected_user, make_repo

SERVICE = test_models.SERVICE  # ["tx_count", "amount_mean", "risk"], feature service "svc"
reg = test_models.reg  # the registry fixture of the model tests
ORDER = ["risk", "tx_count", "amount_mean"]  # the order the named models are trained in
SCALE = {"tx_count": 500.0, "amount_mean": 75.0, "risk": 1.0}  # the served repo's value ranges


def _data(names: list[str], seed: int, n: int = 300) -> tuple[pd.DataFrame, np.ndarray]:
    """Random rows over ``names`` and a binary label that depends on risk and tx_count."""
    rng = np.random.default_rng(seed)
    x = pd.DataFrame({c: rng.random(n) * SCALE.get(c, 1.0) for c in names})
    signal = x.get("risk", 0.5) + x.get("tx_count", 250.0) / 1000
    y = (signal + rng.normal(0, 0.2, n) > 0.75).astype(int).to_numpy()
    return x, y


def _rows(names: list[str], n: int, seed: int = 99) -> np.ndarray:
    return _data(names, seed, n)[0].to_numpy()


# ---- scikit-learn ----------------------------------------------------------------------------


def _sklearn_model(kind: str, names: list[str], seed: int = 0) -> Any:
    from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = _data(names, seed)
    if kind == "logreg":
        return LogisticRegression().fit(x, y)
    if kind == "gbc":
        return GradientBoostingClassifier(n_estimators=20, max_depth=2, random_state=0).fit(x, y)
    if kind == "pipeline":
        return make_pipeline(StandardScaler(), LogisticRegression()).fit(x, y)
    if kind == "regressor":
        return GradientBoostingRegressor(n_estimators=20, random_state=0).fit(x, x.iloc[:, 0])
    if kind == "unnamed":
        return LogisticRegression().fit(x.to_numpy(), y)
    if kind in ("columns", "selector"):  # a ColumnTransformer picking columns by name
        from sklearn.compose import ColumnTransformer, make_column_selector

        if kind == "selector":
            pick = make_column_selector(pattern="^(?:tx_count|amount_mean)$")
            ct = ColumnTransformer([("scale", StandardScaler(), pick)], remainder="passthrough")
        else:
            ct = ColumnTransformer(
                [
                    ("scale", StandardScaler(), ["tx_count", "amount_mean"]),
                    ("keep", "passthrough", ["risk"]),
                ]
            )
        return make_pipeline(ct, LogisticRegression()).fit(x, y)
    raise AssertionError(kind)


def _save_sklearn(model: Any, path: Path) -> Path:
    """The two formats ``_sklearn`` reads: ``.joblib`` via joblib, anything else via pickle."""
    if path.suffix == ".joblib":
        import joblib

        joblib.dump(model, path)
    else:
        path.write_bytes(pickle.dumps(model))
    return path


def _sklearn_scores(model: Any, x: np.ndarray, names: list[str]) -> np.ndarray:
    """What scikit-learn itself says, asked the way it was fitted (a named DataFrame)."""
    df = pd.DataFrame(x, columns=names)
    return model.predict_proba(df)[:, 1] if hasattr(model, "predict_proba") else model.predict(df)


def _registered(reg: ModelRegistry, name: str, flavor: str, artifact: Any) -> tuple[Any, Any]:
    """Register ``artifact`` over the test service and load it as serving would."""
    mv = reg.register(
        name, flavor=flavor, artifact=artifact, feature_service="svc", service_features=SERVICE
    )
    return mv, load_predictor(flavor, reg.artifact_path(mv))


@pytest.mark.parametrize(
    ("kind", "suffix"),
    [
        ("logreg", ".joblib"),
        ("gbc", ".pkl"),
        ("pipeline", ".joblib"),
        ("regressor", ".pkl"),
        ("columns", ".joblib"),
        ("selector", ".pkl"),
    ],
)
def test_sklearn_scores_are_the_models_own(reg: ModelRegistry, tmp_path, kind, suffix) -> None:
    model = _sklearn_model(kind, ORDER)
    art = _save_sklearn(model, tmp_path / f"model{suffix}")
    mv, pred = _registered(reg, "sk", "sklearn", art)
    assert mv.feature_names == tuple(ORDER)  # the fitted names decide the input order
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "X does not have valid feature names" per call
        for x in (_rows(ORDER, 1), _rows(ORDER, 64)):
            got = pred.predict(x)
            assert got.shape == (len(x),)
            np.testing.assert_array_equal(got, _sklearn_scores(model, x, ORDER))
            if kind in ("columns", "selector"):  # fed a DataFrame: any matrix layout, same score
                for layout in (np.ascontiguousarray(x), np.asfortranarray(x)):
                    np.testing.assert_array_equal(pred.predict(layout), got)
    if kind != "regressor":  # a probability, and not the same number for every row
        scores = pred.predict(_rows(ORDER, 64))
        assert ((scores >= 0) & (scores <= 1)).all() and np.ptp(scores) > 0.1


# ---- XGBoost -------------------------------------------------------------------------------


def _xgb_classifier(names: list[str], seed: int = 0) -> Any:
    import xgboost as xgb

    x, y = _data(names, seed)
    return xgb.XGBClassifier(n_estimators=15, max_depth=3, n_jobs=1, random_state=seed).fit(x, y)


def _xgb_regressor_booster(names: list[str] | None, seed: int = 0) -> Any:
    import xgboost as xgb

    x, _ = _data(names or SERVICE, seed)
    d = xgb.DMatrix(x.to_numpy(), label=x.iloc[:, 0].to_numpy() * 2 + 1, feature_names=names)
    return xgb.train({"objective": "reg:squarederror", "nthread": 1, "max_depth": 3}, d, 10)


def test_xgboost_classifier_scores_are_its_predict_proba(reg: ModelRegistry, tmp_path) -> None:
    clf = _xgb_classifier(ORDER)
    clf.save_model(tmp_path / "clf.json")
    mv, pred = _registered(reg, "xg", "xgboost", tmp_path / "clf.json")
    assert mv.feature_names == tuple(ORDER)
    for x in (_rows(ORDER, 1), _rows(ORDER, 64)):
        np.testing.assert_array_equal(
            pred.predict(x), clf.predict_proba(pd.DataFrame(x, columns=ORDER))[:, 1]
        )
    assert np.ptp(pred.predict(_rows(ORDER, 64))) > 0.1


def test_xgboost_booster_in_ubjson_scores_are_its_predict(reg: ModelRegistry, tmp_path) -> None:
    import xgboost as xgb

    booster = _xgb_regressor_booster(ORDER)
    booster.save_model(tmp_path / "reg.ubj")
    _, pred = _registered(reg, "xg", "xgboost", tmp_path / "reg.ubj")
    assert (pred.input_names, pred.n_inputs) == (ORDER, 3)
    for x in (_rows(ORDER, 1), _rows(ORDER, 64)):
        want = booster.predict(xgb.DMatrix(x, feature_names=ORDER))
        np.testing.assert_array_equal(pred.predict(x), want)


# ---- ONNX ----------------------------------------------------------------------------------


def onnx_save(graph: Any, path: Path, meta: dict[str, str] | None = None) -> Path:
    """Save ``graph`` as a checked model (default and ai.onnx.ml opsets), metadata ``meta``."""
    import onnx
    from onnx import helper

    proto = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)]
    )
    if meta:
        helper.set_model_props(proto, meta)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return path


def onnx_linear_classifier(
    path: Path,
    coefficients: list[float],
    intercepts: list[float],
    labels: list[Any],
    *,
    post_transform: str,
    zipmap: bool,
) -> Path:
    """An ai.onnx.ml LinearClassifier over one float [batch, n] input, one class per label.

    Outputs (label, probabilities) like a skl2onnx classifier; with ``zipmap`` the
    probabilities are a list of {label: p} maps, as skl2onnx emits by default.
    """
    from onnx import TensorProto, helper

    by_str = isinstance(labels[0], str)
    label_attr = {"classlabels_strings" if by_str else "classlabels_ints": labels}
    label_type = TensorProto.STRING if by_str else TensorProto.INT64
    nodes = [
        helper.make_node(
            "LinearClassifier",
            ["X"],
            ["label", "probabilities"],
            domain="ai.onnx.ml",
            coefficients=coefficients,
            intercepts=intercepts,
            post_transform=post_transform,
            **label_attr,
        )
    ]
    outputs = [helper.make_tensor_value_info("label", label_type, [None])]
    if zipmap:
        keys = {"classlabels_strings" if by_str else "classlabels_int64s": labels}
        nodes.append(
            helper.make_node(
                "ZipMap", ["probabilities"], ["output_probability"], domain="ai.onnx.ml", **keys
            )
        )
        value = helper.make_tensor_type_proto(TensorProto.FLOAT, [])
        outputs.append(
            helper.make_value_info(
                "output_probability",
                helper.make_sequence_type_proto(helper.make_map_type_proto(label_type, value)),
            )
        )
    else:
        outputs.append(
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, len(labels)])
        )
    n = len(coefficients) // len(labels)
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, n])
    return onnx_save(helper.make_graph(nodes, "clf", [x], outputs), path)


def _onnx_logreg(path: Path, model: Any, *, zipmap: bool, labels: list[Any]) -> Path:
    """A fitted binary LogisticRegression as a LinearClassifier graph (see above)."""
    coef, b = model.coef_[0].astype(float), float(model.intercept_[0])
    return onnx_linear_classifier(
        path, [*(-coef), *coef], [-b, b], labels, post_transform="LOGISTIC", zipmap=zipmap
    )


def onnx_linear(
    path: Path,
    w: np.ndarray,
    *,
    b: float = 0.5,
    double: bool = False,
    inputs: list[tuple[str, list[Any]]] | None = None,
    meta: dict[str, str] | None = None,
) -> Path:
    """y = X @ w + b, output [batch, 1], over float32 (or float64) ``inputs`` (name, shape):
    by default one X of [batch, len(w)]; several are concatenated in their order."""
    from onnx import TensorProto, helper

    t = TensorProto.DOUBLE if double else TensorProto.FLOAT
    inputs = inputs or [("X", [None, len(w)])]
    nodes, cols = [], []
    for name, shape in inputs:
        if len(shape) == 1:  # [batch] -> [batch, 1]
            nodes.append(helper.make_node("Unsqueeze", [name, "axis1"], [f"{name}_2d"]))
            cols.append(f"{name}_2d")
        else:
            cols.append(name)
    if len(inputs) > 1:
        nodes.append(helper.make_node("Concat", cols, ["X"], axis=1))
    x = "X" if len(inputs) > 1 else cols[0]
    nodes += [
        helper.make_node("MatMul", [x, "W"], ["XW"]),
        helper.make_node("Add", ["XW", "B"], ["Y"]),
    ]
    init = [
        helper.make_tensor("W", t, [len(w), 1], list(w)),
        helper.make_tensor("B", t, [1], [b]),
        helper.make_tensor("axis1", TensorProto.INT64, [1], [1]),
    ]
    graph = helper.make_graph(
        nodes,
        "linear",
        [helper.make_tensor_value_info(n, t, s) for n, s in inputs],
        [helper.make_tensor_value_info("Y", t, [None, 1])],
        init,
    )
    return onnx_save(graph, path, meta)


def _onnx_positive(path: Path, x: np.ndarray) -> np.ndarray:
    """onnxruntime's own answer: column 1 of the probabilities, or the larger label's map entry."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"X": x.astype(np.float32)})[1]
    if isinstance(out, list):
        return np.array([row[max(row)] for row in out])
    return np.asarray(out)[:, 1]


@pytest.mark.parametrize(
    ("zipmap", "labels"),
    [(False, [0, 1]), (True, [0, 1]), (True, ["no", "yes"]), (True, [1, 2])],
    ids=["tensor", "zipmap-int", "zipmap-str", "zipmap-1-2"],
)
def test_onnx_classifier_scores_the_positive_class(
    reg: ModelRegistry, tmp_path, zipmap, labels
) -> None:
    lr = _sklearn_model("unnamed", SERVICE)
    art = _onnx_logreg(tmp_path / "clf.onnx", lr, zipmap=zipmap, labels=labels)
    mv, pred = _registered(reg, "ox", "onnx", art)
    assert mv.feature_names == tuple(SERVICE)  # ONNX inputs are unnamed: the service's order
    for x in (_rows(SERVICE, 1), _rows(SERVICE, 64)):
        got = pred.predict(x)
        assert got.shape == (len(x),)
        np.testing.assert_array_equal(got, _onnx_positive(art, x))
        # float32 inside onnxruntime: equal to scikit-learn's float64 to ~1e-6
        np.testing.assert_allclose(got, lr.predict_proba(x)[:, 1], rtol=1e-5, atol=1e-6)
    assert np.ptp(pred.predict(_rows(SERVICE, 64))) > 0.1


@pytest.mark.parametrize("double", [False, True], ids=["float32", "float64"])
def test_onnx_regressor_is_fed_the_dtype_it_declares(reg: ModelRegistry, tmp_path, double) -> None:
    w, b = np.array([0.002, -0.01, 3.0]), 0.25
    art = onnx_linear(tmp_path / "lin.onnx", w, b=b, double=double)
    _, pred = _registered(reg, "ox", "onnx", art)
    for x in (_rows(SERVICE, 1), _rows(SERVICE, 64)):
        got = pred.predict(x)
        assert got.shape == (len(x),) and got.dtype == (np.float64 if double else np.float32)
        tol = 1e-12 if double else 1e-5
        np.testing.assert_allclose(got, x @ w + b, rtol=tol, atol=tol)


# ---- the registry refuses artifacts that do not fit the service -----------------------------


def _wrong_artifact(case: str, tmp_path: Path) -> tuple[str, Path]:
    """An artifact whose inputs do not fit SERVICE: named wrongly, or one input short."""
    wrong = ["tx_count", "amount_mean", "colour"]
    short = ["tx_count", "amount_mean"]
    if case == "sklearn-names":
        return "sklearn", _save_sklearn(_sklearn_model("logreg", wrong), tmp_path / "m.joblib")
    if case == "sklearn-count":
        return "sklearn", _save_sklearn(_sklearn_model("unnamed", short), tmp_path / "m.pkl")
    if case == "xgboost-names":
        _xgb_regressor_booster(wrong).save_model(tmp_path / "m.json")
        return "xgboost", tmp_path / "m.json"
    if case == "xgboost-count":  # trained on a bare matrix: no names, only a width
        import xgboost as xgb

        x, _ = _data(short, 0)
        booster = xgb.train({"nthread": 1}, xgb.DMatrix(x.to_numpy(), label=x.iloc[:, 0]), 3)
        booster.save_model(tmp_path / "m.json")
        return "xgboost", tmp_path / "m.json"
    if case == "onnx-count":
        return "onnx", onnx_linear(tmp_path / "m.onnx", np.ones(2), b=0.0)
    if case == "onnx-classifier-count":
        lr = _sklearn_model("unnamed", [*SERVICE, "extra"])
        return "onnx", _onnx_logreg(tmp_path / "m.onnx", lr, zipmap=True, labels=[0, 1])
    raise AssertionError(case)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("sklearn-names", r"not in the service: \['colour'\]; not used by the model: \['risk'\]"),
        ("sklearn-count", "takes 2 inputs but feature service 'svc' has 3 features; register"),
        ("xgboost-names", r"not in the service: \['colour'\]; not used by the model: \['risk'\]"),
        ("xgboost-count", "takes 2 inputs but feature service 'svc' has 3 features; register"),
        ("onnx-count", "takes 2 inputs but feature service 'svc' has 3 features; register"),
        ("onnx-classifier-count", "takes 4 inputs but feature service 'svc' has 3 features"),
    ],
)
def test_inputs_that_do_not_fit_the_service_are_refused(
    reg: ModelRegistry, tmp_path, case, message
) -> None:
    flavor, art = _wrong_artifact(case, tmp_path)
    with pytest.raises(ModelRegistryError, match=message):
        reg.register(
            "m", flavor=flavor, artifact=art, feature_service="svc", service_features=SERVICE
        )
    assert reg.names() == []  # nothing half-registered


# ---- any rows: one at a time or batched, the library's answer -------------------------------


@dataclass
class _Case:
    """A registered model, its predictor, and the library's own scoring of model-order rows."""

    names: list[str]
    predictor: Any
    library: Callable[[np.ndarray], np.ndarray]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, _Case]:
    tmp = tmp_path_factory.mktemp("flavors_loaded")
    sk = _sklearn_model("gbc", ORDER)
    xg = _xgb_classifier(ORDER)
    xg.save_model(tmp / "xg.json")
    lr = _sklearn_model("unnamed", SERVICE)
    ox = _onnx_logreg(tmp / "ox.onnx", lr, zipmap=True, labels=[0, 1])
    ct = _sklearn_model("columns", ORDER)
    return {
        "sklearn": _Case(
            ORDER,
            load_predictor("sklearn", _save_sklearn(sk, tmp / "sk.joblib")),
            lambda x: _sklearn_scores(sk, x, ORDER),
        ),
        "sklearn-columns": _Case(
            ORDER,
            load_predictor("sklearn", _save_sklearn(ct, tmp / "ct.joblib")),
            lambda x: _sklearn_scores(ct, x, ORDER),
        ),
        "xgboost": _Case(
            ORDER,
            load_predictor("xgboost", tmp / "xg.json"),
            lambda x: xg.predict_proba(pd.DataFrame(x, columns=ORDER))[:, 1],
        ),
        "onnx": _Case(SERVICE, load_predictor("onnx", ox), lambda x: _onnx_positive(ox, x)),
    }


_finite = st.floats(-1e6, 1e6, allow_nan=False, width=32)


@settings(max_examples=40, deadline=None)
@given(
    flavor=st.sampled_from(["sklearn", "sklearn-columns", "xgboost", "onnx"]),
    x=hnp.arrays(np.float64, st.tuples(st.integers(1, 12), st.just(3)), elements=_finite),
)
def test_any_rows_score_alike_alone_batched_and_by_the_library(
    loaded: dict[str, _Case], flavor: str, x: np.ndarray
) -> None:
    case = loaded[flavor]
    batch = case.predictor.predict(x)
    np.testing.assert_array_equal(batch, case.library(x))
    alone = np.concatenate([case.predictor.predict(x[i : i + 1]) for i in range(len(x))])
    # a 1-row call may take another code path (xgboost, onnxruntime): allow float32 rounding
    np.testing.assert_allclose(alone, batch, rtol=1e-6, atol=1e-7)


# ---- served: the engine feeds the looked-up features to each flavor --------------------------


@dataclass
class _Served:
    """A model registered in the served repo and the library's scoring of model-order rows."""

    library: Callable[[np.ndarray], np.ndarray]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, dict[str, _Served]]]:
    """The serving tests' repo plus one production model per flavor, and a started engine."""
    from featurestore.online.models.repo import model_registry, service_feature_names
    from featurestore.online.serving.engine import Engine
    from featurestore.store import FeatureStore

    root = tmp_path_factory.mktemp("flavors_served")
    repo = make_repo(root / "repo")
    sk = _sklearn_model("logreg", ORDER, seed=5)
    xg = _xgb_classifier(ORDER, seed=6)
    xg.save_model(root / "xg.json")
    lr = _sklearn_model("unnamed", SERVICE, seed=7)
    ox = _onnx_logreg(root / "ox.onnx", lr, zipmap=True, labels=[0, 1])
    ct = _sklearn_model("selector", ORDER, seed=8)
    arts = {
        "sk": ("sklearn", _save_sklearn(sk, root / "sk.joblib")),
        "ct": ("sklearn", _save_sklearn(ct, root / "ct.pkl")),
        "xg": ("xgboost", root / "xg.json"),
        "ox": ("onnx", ox),
    }
    store = FeatureStore(repo)
    try:
        registry = model_registry(store)
        names = service_feature_names(store, "scoring")
        assert names == SERVICE
        for name, (flavor, art) in arts.items():
            mv = registry.register(
                name, flavor=flavor, artifact=art, feature_service="scoring", service_features=names
            )
            registry.set_alias(name, mv.version, "production")
    finally:
        store.close()
    models = {
        "sk": _Served(lambda x: _sklearn_scores(sk, x, ORDER)),
        "ct": _Served(lambda x: _sklearn_scores(ct, x, ORDER)),
        "xg": _Served(lambda x: xg.predict_proba(pd.DataFrame(x, columns=ORDER))[:, 1]),
        "ox": _Served(lambda x: _onnx_positive(ox, x)),
    }
    engine = Engine.from_repo(str(repo)).start(poll=False)
    yield engine, models
    engine.close()


@pytest.mark.parametrize("model", ["sk", "ct", "xg", "ox"])
@pytest.mark.parametrize(
    "entities",
    [{"user_id": [9], "merchant_id": [4]}, {"user_id": [9, 3, 77], "merchant_id": [4, 10, 2]}],
    ids=["one", "batch"],
)
def test_served_score_is_the_library_on_the_served_features(served, model, entities) -> None:
    engine, models = served
    res = engine.predict(model, entities=entities, return_features=True)
    assert not res.degraded and res.features is not None
    cols = res.features.columns
    for i, uid in enumerate(entities["user_id"]):  # the vector is the looked-up one (77: defaults)
        want = expected_user(uid) if uid <= 50 else {"tx_count": 0, "amount_mean": -1.0}
        assert (cols["tx_count"][i], cols["amount_mean"][i]) == (
            want["tx_count"],
            want["amount_mean"],
        )
        assert cols["risk"][i] == pytest.approx(entities["merchant_id"][i] / 10)
    chosen, _ = engine.models.select(model)
    order = list(chosen.feature_names)
    assert order == (SERVICE if model == "ox" else ORDER)
    x = np.array([[cols[n][i] for n in order] for i in range(len(res.scores))], dtype=np.float64)
    want_scores = np.asarray(models[model].library(x), dtype=np.float64)
    assert res.scores == want_scores.tolist()
    assert len(set(res.scores)) == len(res.scores)  # distinct rows, distinct scores
