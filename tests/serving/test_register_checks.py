"""What registering checks beyond input names: one score per row, and ONNX input naming.

Every refusal happens at ``register``, names the model and the cause on one line, and leaves
nothing in the registry. Models are real (scikit-learn, XGBoost, LightGBM, ONNX graphs built
with the onnx helper API, python files), small and fast to train.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from featurestore.online.models import (
    ModelLoadError,
    ModelRegistry,
    ModelRegistryError,
    load_predictor,
)
from tests.serving import test_models
from tests.serving.test_flavors_real import onnx_linear, onnx_linear_classifier, onnx_save

SERVICE = test_models.SERVICE  # ["tx_count", "amount_mean", "risk"], feature service "svc"
reg = test_models.reg  # the registry fixture of the model tests
ORDER = ["risk", "tx_count", "amount_mean"]  # another order than the service's
WHY = r"the service returns one score per entity: binary classifiers score P\(positive class\)"


def _data(n_classes: int, seed: int = 0, n: int = 240) -> tuple[np.ndarray, np.ndarray]:
    """Rows over three features and a label with ``n_classes`` values, all present."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, 3)) * [1.0, 500.0, 75.0]
    y = np.minimum((x[:, 0] * n_classes).astype(int), n_classes - 1)
    return x, y


def _register(reg: ModelRegistry, flavor: str, art: Any, name: str = "m") -> Any:
    return reg.register(
        name, flavor=flavor, artifact=art, feature_service="svc", service_features=SERVICE
    )


def _refused(reg: ModelRegistry, flavor: str, art: Any, match: str, name: str = "m") -> str:
    """Register, expect a one-line refusal matching ``match``, and nothing registered."""
    with pytest.raises(ModelRegistryError, match=match) as info:
        _register(reg, flavor, art, name)
    msg = str(info.value)
    assert "\n" not in msg and f"model '{name}'" in msg
    assert name not in reg.names() and not (reg.root / name).exists()  # nothing copied in
    return msg


# ---- multiclass and multi-output models are refused at register ----------------------------


def _sklearn_art(tmp_path: Path, kind: str) -> Path:
    import joblib
    import pandas as pd
    from sklearn.linear_model import LinearRegression, LogisticRegression

    x, y = _data(3)
    df = pd.DataFrame(x, columns=ORDER)
    if kind == "multiclass":
        model = LogisticRegression(max_iter=500).fit(df, y)
    else:  # two targets
        model = LinearRegression().fit(df, np.c_[x[:, 0], x[:, 1]])
    joblib.dump(model, tmp_path / "m.joblib")
    return tmp_path / "m.joblib"


def _xgb_art(tmp_path: Path, kind: str, n_classes: int = 3) -> Path:
    import xgboost as xgb

    x, y = _data(n_classes)
    common = {"n_estimators": 4, "max_depth": 2, "n_jobs": 1}
    if kind == "multi-target":
        model = xgb.XGBRegressor(tree_method="hist", **common).fit(x, np.c_[x[:, 0], x[:, 1]])
    else:  # num_class set here too: the wrapper leaves it out for two classes
        params = {"objective": kind, "num_class": n_classes, "max_depth": 2, "nthread": 1}
        model = xgb.train(params, xgb.DMatrix(x, label=y), 4)
    model.save_model(tmp_path / "m.json")
    return tmp_path / "m.json"


def _lgb_art(tmp_path: Path, n_classes: int) -> Path:
    import lightgbm as lgb

    x, y = _data(n_classes)
    params = {"objective": "multiclass", "num_class": n_classes, "verbose": -1, "num_threads": 1}
    booster = lgb.train(params, lgb.Dataset(x, y, feature_name=SERVICE), 4)
    booster.save_model(str(tmp_path / "m.txt"))
    return tmp_path / "m.txt"


def _onnx_classifier(path: Path, n_classes: int, *, zipmap: bool) -> Path:
    """A softmax LinearClassifier over 3 inputs with ``n_classes`` int labels."""
    rng = np.random.default_rng(n_classes)
    return onnx_linear_classifier(
        path,
        rng.normal(size=3 * n_classes).tolist(),
        rng.normal(size=n_classes).tolist(),
        list(range(n_classes)),
        post_transform="SOFTMAX",
        zipmap=zipmap,
    )


def _python_art(tmp_path: Path, body: str) -> Path:
    src = f"import numpy as np\nFEATURE_NAMES = {SERVICE!r}\ndef predict(x):\n    {body}\n"
    (tmp_path / "pm.py").write_text(src)
    return tmp_path / "pm.py"


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("sklearn-multiclass", f"'m' is a 3-class sklearn classifier; {WHY}"),
        (
            "sklearn-two-targets",
            f"'m' returns 2 numbers per row .a 2-class or 2-output model.; {WHY}",
        ),
        ("xgboost-softprob", f"'m' is a 3-class xgboost classifier; {WHY}"),
        ("xgboost-softmax", f"'m' is a 3-class xgboost classifier; {WHY}"),
        (
            "xgboost-two-targets",
            f"'m' returns 2 numbers per row .a 2-class or 2-output model.; {WHY}",
        ),
        ("lightgbm-multiclass", f"'m' is a 3-class lightgbm classifier; {WHY}"),
        (
            "onnx-probabilities",
            f"'m' returns 3 numbers per row .a 3-class or 3-output model.; {WHY}",
        ),
        ("onnx-zipmap", f"'m' returns 4 numbers per row .a 4-class or 4-output model.; {WHY}"),
        ("python-2d", f"'m' returns 2 numbers per row .a 2-class or 2-output model.; {WHY}"),
    ],
)
def test_models_with_more_than_one_score_per_row_are_refused(
    reg: ModelRegistry, tmp_path: Path, case: str, match: str
) -> None:
    flavor, _, kind = case.partition("-")
    if flavor == "sklearn":
        art = _sklearn_art(tmp_path, kind)
    elif flavor == "xgboost":
        art = _xgb_art(tmp_path, {"two-targets": "multi-target"}.get(kind, f"multi:{kind}"))
    elif flavor == "lightgbm":
        art = _lgb_art(tmp_path, 3)
    elif flavor == "onnx":
        zipmap = kind == "zipmap"
        art = _onnx_classifier(tmp_path / "m.onnx", 4 if zipmap else 3, zipmap=zipmap)
    else:
        art = _python_art(tmp_path, "return np.c_[x[:, 0], x[:, 1]]")
    _refused(reg, flavor, art, match)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (
            "raise ValueError('needs a warm cache')",
            "failed a trial prediction on 2 rows of the "
            "service's 3 features: ValueError: needs a warm cache",
        ),
        ("return x[:1, 0]", r"returns shape \(1,\) for 2 rows; the service returns one score"),
        ("return 0.5", r"returns shape \(\) for 2 rows"),
        (
            "return np.array(['yes', 'no'])",
            r"returns <U3 values \['yes', 'no'\] for 2 rows, not "
            "numbers",
        ),
        (
            "return np.full(len(x), -np.inf)",
            r"returns \[-inf, -inf\] for 2 rows of zeros; scores must be "
            "finite",
        ),
    ],
    ids=["raises", "short", "scalar", "labels", "inf"],
)
def test_python_models_that_cannot_score_rows_are_refused(
    reg: ModelRegistry, tmp_path: Path, body: str, match: str
) -> None:
    _refused(reg, "python", _python_art(tmp_path, body), match)


def test_nan_scores_and_one_column_outputs_are_accepted(reg: ModelRegistry, tmp_path) -> None:
    body = "return np.where(x[:, :1] > 0, x[:, :1] * 2.0, np.nan)"  # (rows, 1), NaN at zero
    mv = _register(reg, "python", _python_art(tmp_path, body))
    pred = load_predictor("python", reg.artifact_path(mv))
    np.testing.assert_array_equal(pred.predict(np.array([[0.0, 1, 1], [3.0, 1, 1]])), [np.nan, 6])


@pytest.mark.parametrize("flavor", ["xgboost", "lightgbm"])
def test_two_class_softmax_models_score_the_second_class(
    reg: ModelRegistry, tmp_path: Path, flavor: str
) -> None:
    """multi:softprob / multiclass with two classes: P(class 1), like a binary model."""
    import lightgbm as lgb
    import xgboost as xgb

    if flavor == "xgboost":
        art = _xgb_art(tmp_path, "multi:softprob", n_classes=2)
        booster = xgb.Booster(model_file=str(art))
        library = lambda x: booster.predict(xgb.DMatrix(x))[:, 1]  # noqa: E731
    else:
        art = _lgb_art(tmp_path, 2)
        lgb_booster = lgb.Booster(model_file=str(art))
        library = lambda x: lgb_booster.predict(x)[:, 1]  # noqa: E731
    mv = _register(reg, flavor, art)
    pred = load_predictor(flavor, reg.artifact_path(mv))
    x = _data(2, seed=9, n=64)[0]
    for rows in (x[:1], x):
        got = pred.predict(rows)
        assert got.shape == (len(rows),)
        np.testing.assert_array_equal(got, library(rows))
    assert np.ptp(pred.predict(x)) > 0.05


# ---- ONNX: input names from one input per feature, or from metadata --------------------------


W = np.array([3.0, 0.002, -0.01])  # weights of ORDER = risk, tx_count, amount_mean


def _model_rows(n: int) -> np.ndarray:
    """Rows in the model order (ORDER), in the served value ranges."""
    return np.random.default_rng(n).random((n, 3)) * [1.0, 500.0, 75.0]


def _check_linear(reg: ModelRegistry, art: Path, names: list[str]) -> None:
    mv = _register(reg, "onnx", art)
    assert mv.feature_names == tuple(names)  # the model's names decide the column order
    pred = load_predictor("onnx", reg.artifact_path(mv))
    assert (pred.input_names, pred.n_inputs) == (names, 3)
    for x in (_model_rows(1), _model_rows(64)):
        got = pred.predict(x)
        assert got.shape == (len(x),)
        np.testing.assert_allclose(got, x @ W + 0.5, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    "shapes",
    [[[None, 1]] * 3, [[None]] * 3, [["N", 1], [None], ["N", 1]]],
    ids=["2d", "1d", "mixed"],
)
def test_onnx_inputs_per_feature_are_named_and_fed_by_name(
    reg: ModelRegistry, tmp_path: Path, shapes: list[list[Any]]
) -> None:
    inputs = list(zip(ORDER, shapes, strict=True))
    _check_linear(reg, onnx_linear(tmp_path / "m.onnx", W, inputs=inputs), ORDER)


def test_onnx_single_vector_input_is_one_feature(reg, tmp_path) -> None:
    art = onnx_linear(tmp_path / "m.onnx", W[:1], inputs=[("v", [None])])
    mv = reg.register(
        "m", flavor="onnx", artifact=art, feature_service="one", service_features=["risk"]
    )
    assert mv.feature_names == ("risk",)  # unnamed (one vector input): the service's name
    x = _model_rows(16)[:, :1]
    got = load_predictor("onnx", reg.artifact_path(mv)).predict(x)
    np.testing.assert_allclose(got, x[:, 0] * W[0] + 0.5, rtol=1e-5, atol=1e-5)
    _refused(reg, "onnx", art, "'m2' takes 1 inputs but feature service 'svc' has 3", name="m2")


@pytest.mark.parametrize(
    "meta",
    [
        '["risk", "tx_count", "amount_mean"]',
        "risk, tx_count,amount_mean",
    ],
    ids=["json", "comma"],
)
def test_onnx_feature_names_metadata_names_a_matrix_input(
    reg: ModelRegistry, tmp_path: Path, meta: str
) -> None:
    art = onnx_linear(
        tmp_path / "m.onnx", W, inputs=[("X", [None, 3])], meta={"feature_names": meta}
    )
    _check_linear(reg, art, ORDER)


def test_onnx_input_names_are_checked_against_the_service(reg, tmp_path) -> None:
    per_feature = [("risk", [None, 1]), ("tx_count", [None, 1]), ("colour", [None, 1])]
    art = onnx_linear(tmp_path / "a.onnx", W, inputs=per_feature)
    _refused(
        reg,
        "onnx",
        art,
        r"not in the service: \['colour'\]; not used by the model: "
        r"\['amount_mean'\]",
    )
    meta = {"feature_names": "risk,tx_count,colour"}
    art = onnx_linear(tmp_path / "b.onnx", W, inputs=[("X", [None, 3])], meta=meta)
    _refused(reg, "onnx", art, r"not in the service: \['colour'\]")


def test_onnx_free_width_is_checked_by_the_trial_prediction(reg, tmp_path) -> None:
    free = [("X", [None, None])]
    wide = onnx_linear(tmp_path / "wide.onnx", np.ones(4), inputs=free)
    msg = _refused(
        reg,
        "onnx",
        wide,
        r"^model 'm' failed a trial prediction on 2 rows of the service's 3 features \(the "
        r"model does not declare its input count: does it take 3\?\): \w+: ",
    )
    assert "MatMul" in msg  # onnxruntime's own reason follows, on the same line
    fits = onnx_linear(tmp_path / "fits.onnx", W, inputs=free)
    mv = _register(reg, "onnx", fits)
    assert mv.feature_names == tuple(SERVICE)  # unnamed: the service's order
    x = _model_rows(8)
    np.testing.assert_allclose(
        load_predictor("onnx", reg.artifact_path(mv)).predict(x), x @ W + 0.5, rtol=1e-5, atol=1e-4
    )


def test_onnx_free_width_takes_its_count_from_the_metadata(reg, tmp_path) -> None:
    meta = {"feature_names": '["risk", "tx_count"]'}
    art = onnx_linear(tmp_path / "m.onnx", np.ones(2), inputs=[("X", [None, None])], meta=meta)
    _refused(reg, "onnx", art, "'m' takes 2 inputs but feature service 'svc' has 3 features")


@pytest.mark.parametrize(
    ("inputs", "meta", "match"),
    [
        (
            [("X", [None, 3])],
            "risk,tx_count",
            "metadata feature_names lists 2 names but input 'X' is 3 wide; fix the metadata",
        ),
        ([("X", [None, 3])], '["risk", ', "metadata feature_names is not a JSON list"),
        ([("X", [None, 3])], "risk,,amount_mean", "must list non-empty names"),
        (
            [("a", [None, 2]), ("b", [None, 1])],
            None,
            r"has 2 inputs and 'a' has shape \[None, 2\]; "
            "the registry feeds either one",
        ),
        ([("X", [None, 3, 1])], None, r"input 'X' has shape \[None, 3, 1\]; expected"),
    ],
    ids=["count", "bad-json", "empty-name", "wide-input", "rank-3"],
)
def test_onnx_inputs_the_registry_cannot_feed_are_load_errors(
    reg: ModelRegistry, tmp_path: Path, inputs: list[Any], meta: str | None, match: str
) -> None:
    from onnx import TensorProto, helper

    if len(inputs[0][1]) == 3:  # a rank-3 input: an identity graph is enough to refuse it
        x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 3, 1])
        y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, 3, 1])
        graph = helper.make_graph([helper.make_node("Identity", ["X"], ["Y"])], "g", [x], [y])
        art = onnx_save(graph, tmp_path / "m.onnx")
    else:
        art = onnx_linear(
            tmp_path / "m.onnx",
            W,
            inputs=inputs,
            meta=None if meta is None else {"feature_names": meta},
        )
    with pytest.raises(ModelLoadError, match=match):
        _register(reg, "onnx", art)
    assert reg.names() == []


def test_onnx_integer_inputs_are_a_load_error(reg, tmp_path) -> None:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("X", TensorProto.INT64, [None, 3])
    y = helper.make_tensor_value_info("Y", TensorProto.INT64, [None, 3])
    graph = helper.make_graph([helper.make_node("Identity", ["X"], ["Y"])], "g", [x], [y])
    art = onnx_save(graph, tmp_path / "m.onnx")
    with pytest.raises(ModelLoadError, match=r"input 'X' is a tensor\(int64\); the service feeds"):
        _register(reg, "onnx", art)
