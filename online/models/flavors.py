"""Model flavors: load an artifact into a ``Predictor`` (2-D float array in, 1-D scores out).

Each loader imports its library lazily, so only the flavors in use cost anything; a missing
library is a clear "install X" error, not an ImportError from deep inside.
"""

from __future__ import annotations

import importlib
import importlib.util
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from featurestore.online.models.errors import ModelLoadError, ModelRegistryError

Flavor = Literal["lightgbm", "sklearn", "xgboost", "onnx", "python"]
FLAVORS: tuple[str, ...] = get_args(Flavor)


@dataclass
class Predictor:
    """A loaded model: ``predict(X)`` with X of shape (rows, n_inputs), float64."""

    flavor: str
    model: Any
    input_names: list[str] | None  # None: the artifact does not name its inputs
    n_inputs: int | None
    _predict: Any

    def predict(self, x: np.ndarray) -> np.ndarray:
        out = np.asarray(self._predict(x))
        if out.ndim == 2 and out.shape[1] == 1:
            out = out[:, 0]
        return out


def check_flavor(flavor: str) -> str:
    if flavor not in FLAVORS:
        raise ModelRegistryError(
            f"unknown model flavor {flavor!r}; expected one of {list(FLAVORS)}"
        )
    return flavor


def load_predictor(flavor: str, path: str | Path) -> Predictor:
    """Load the artifact at ``path`` (a file, or for ``python`` a .py file or a module name)."""
    loader = _LOADERS[check_flavor(flavor)]
    try:
        return loader(str(path))
    except (ModelRegistryError, ImportError):
        raise
    except Exception as exc:  # library-specific parse errors: name the artifact
        raise ModelLoadError(f"cannot load {flavor} model from {path}: {exc}") from exc


def _require(module: str, package: str, flavor: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ModelLoadError(
            f"the {flavor} flavor needs {package}, which is not installed; "
            f"install it with `pip install {package}`"
        ) from None


def _lightgbm(path: str) -> Predictor:
    lgb = _require("lightgbm", "lightgbm", "lightgbm")
    booster = lgb.Booster(model_file=path)
    names = list(booster.feature_name())
    if all(n.startswith("Column_") for n in names):
        names_or_none = None
    else:
        names_or_none = names

    # one thread: OpenMP's thread pool costs a ~8 ms p99 on single rows for no gain
    def predict(x: np.ndarray) -> np.ndarray:
        return booster.predict(x, num_threads=1)

    try:  # Booster.predict rebuilds this per call (~15 us); keep one (private API: fall back)
        from lightgbm.basic import _InnerPredictor

        inner = _InnerPredictor.from_booster(booster, {"num_threads": 1})
        check = np.zeros((1, booster.num_feature()))
        if np.array_equal(inner.predict(check), booster.predict(check, num_threads=1)):
            predict = inner.predict
    except Exception:
        pass
    from featurestore.online.models._lgb_fast import fast_row_predict

    predict = fast_row_predict(booster, predict)  # one row: the C API's prepared path
    return Predictor("lightgbm", booster, names_or_none, booster.num_feature(), predict)


def _sklearn(path: str) -> Predictor:
    if path.endswith(".joblib"):
        joblib = _require("joblib", "joblib", "sklearn")
        model = joblib.load(path)
    else:
        with open(path, "rb") as fh:
            model = pickle.load(fh)
    names = getattr(model, "feature_names_in_", None)
    n = getattr(model, "n_features_in_", None)
    _forget_fitted_names(model)
    proba = getattr(model, "predict_proba", None)
    classes = getattr(model, "classes_", None)
    if proba is not None and classes is not None and len(classes) == 2:

        def predict(x: np.ndarray) -> np.ndarray:
            return proba(x)[:, 1]
    else:
        predict = model.predict
    return Predictor(
        "sklearn",
        model,
        None if names is None else [str(s) for s in names],
        None if n is None else int(n),
        predict,
    )


def _forget_fitted_names(est: Any) -> None:
    """Drop the column names a model was fitted with, so numpy rows pass sklearn's name check.

    The registry already put the columns in the fitted order by those names; left in place,
    sklearn warns "X does not have valid feature names" on every prediction (~30 us and a log
    line per request). Pipelines: only the first step saw the names. A ColumnTransformer that
    selects columns by name keeps them (it needs a DataFrame, not a float matrix, anyway).
    """
    steps = getattr(est, "steps", None)
    if isinstance(steps, list) and steps:
        _forget_fitted_names(steps[0][1])
    elif "feature_names_in_" in getattr(est, "__dict__", {}) and not hasattr(est, "transformers_"):
        del est.feature_names_in_


def _xgboost(path: str) -> Predictor:
    xgb = _require("xgboost", "xgboost", "xgboost")
    booster = xgb.Booster()
    booster.load_model(path)
    booster.set_param({"nthread": 1})
    names = booster.feature_names
    n = booster.num_features()

    def predict(x: np.ndarray) -> np.ndarray:
        return booster.inplace_predict(x, validate_features=False)

    return Predictor("xgboost", booster, None if names is None else list(names), n, predict)


def _onnx(path: str) -> Predictor:
    ort = _require("onnxruntime", "onnxruntime", "onnx")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    width = inp.shape[1] if len(inp.shape) == 2 and isinstance(inp.shape[1], int) else None
    outputs = sess.get_outputs()
    # classifiers converted by skl2onnx emit (label, probabilities): score with the probabilities
    out_name = outputs[1].name if len(outputs) > 1 else outputs[0].name
    dtype = np.float64 if inp.type == "tensor(double)" else np.float32  # feed what it declares

    def predict(x: np.ndarray) -> np.ndarray:
        out = sess.run([out_name], {inp.name: x.astype(dtype, copy=False)})[0]
        if isinstance(out, list):  # ZipMap output: list of {class: p}
            return _zipmap_positive(out)
        out = np.asarray(out)
        if out.ndim == 2 and out.shape[1] == 2:
            return out[:, 1]
        return out

    return Predictor("onnx", sess, None, width, predict)


def _zipmap_positive(rows: list[dict[Any, float]]) -> np.ndarray:
    """P(positive class) from ZipMap rows: the larger of the two labels (column 1 when sorted).

    That is sklearn's ``classes_[1]`` (skl2onnx keeps the order) for int and string labels
    alike, matching the ``[:, 1]`` of a plain probability tensor.
    """
    if not rows:
        return np.zeros(0)
    if len(rows[0]) != 2:
        raise ModelLoadError(
            f"onnx classifier has {len(rows[0])} classes {sorted(rows[0])}; only a binary "
            "classifier gives one score per row"
        )
    positive = max(rows[0])
    return np.array([row[positive] for row in rows], dtype=np.float64)


def _python(path: str) -> Predictor:
    if path.endswith(".py"):
        name = f"_featurestore_model_{abs(hash(path))}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ModelLoadError(f"cannot import python model file {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(path)
    fn = getattr(module, "predict", None)
    if not callable(fn):
        raise ModelLoadError(
            f"python model {path} has no predict(X: np.ndarray) -> np.ndarray function; define one"
        )
    names = getattr(module, "FEATURE_NAMES", None)
    names = None if names is None else [str(n) for n in names]
    return Predictor("python", module, names, None if names is None else len(names), fn)


_LOADERS = {
    "lightgbm": _lightgbm,
    "sklearn": _sklearn,
    "xgboost": _xgboost,
    "onnx": _onnx,
    "python": _python,
}
