"""Model flavors: load an artifact into a ``Predictor`` (2-D float array in, 1-D scores out).

Each loader imports its library lazily, so only the flavors in use cost anything; a missing
library is a clear "install X" error, not an ImportError from deep inside. The scikit-learn
and ONNX loaders live in ``_sklearn.py`` and ``_onnx.py``.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from featurestore.online.models.errors import (
    ModelLoadError,
    ModelRegistryError,
    one_line,
    without_paths,
)
from featurestore.online.models.explain import (
    Explainer,
    lightgbm_explainer,
    python_explainer,
    xgboost_explainer,
)

log = logging.getLogger("featurestore.models")

Flavor = Literal["lightgbm", "sklearn", "xgboost", "onnx", "python"]
FLAVORS: tuple[str, ...] = get_args(Flavor)


@dataclass
class Predictor:
    """A loaded model: ``predict(X)`` with X of shape (rows, n_inputs), float64.

    ``predict`` returns one score per row for the models the registry accepts; a multiclass
    or multi-output model returns its (rows, k) matrix, which the registry refuses.
    """

    flavor: str
    model: Any
    input_names: list[str] | None  # None: the artifact does not name its inputs
    n_inputs: int | None
    _predict: Any
    n_classes: int | None = None  # a classifier's class count, when the artifact says
    explainer: Explainer | None = None  # per-row feature contributions, when the flavor has them
    unexplainable: str = ""  # why ``explainer`` is None, for the error a request gets
    _predict_many: Any = None  # batch scoring: every core (serving keeps one thread a call)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return _one_column(self._predict(x))

    def predict_many(self, x: np.ndarray) -> np.ndarray:
        """``predict`` for large offline batches: the same scores, on every core where the
        flavor can (LightGBM); other flavors are already vectorised and use ``predict``."""
        return _one_column((self._predict_many or self._predict)(x))


def _one_column(out: Any) -> np.ndarray:
    """A model's output with a (rows, 1) matrix flattened to (rows,)."""
    out = np.asarray(out)
    return out[:, 0] if out.ndim == 2 and out.shape[1] == 1 else out


def check_flavor(flavor: str) -> str:
    if flavor not in FLAVORS:
        raise ModelRegistryError(
            f"unknown model flavor {flavor!r}; expected one of {list(FLAVORS)}"
        )
    return flavor


def load_predictor(flavor: str, path: str | Path, *, model: str | None = None) -> Predictor:
    """Load the artifact at ``path`` (a file, or for ``python`` a .py file or a module name).

    ``model`` (e.g. "fraud v3") is given by servers, whose load errors reach clients: those
    then name the model and the reason without the artifact's folder, which only the log
    gets. Without it (registering a file of one's own) the error names the path.
    """
    loader = _LOADERS[check_flavor(flavor)]
    try:
        return loader(str(path))
    except ImportError:
        raise
    except ModelRegistryError as exc:
        if model is None:
            raise
        failure: Exception = exc
    except Exception as exc:  # library-specific parse errors: name the artifact
        if model is None:
            why = one_line(_reason(exc))
            raise ModelLoadError(f"cannot load {flavor} model from {path}: {why}") from exc
        failure = exc
    log.error("cannot load %s model %s from %s: %s", flavor, model, path, failure)
    folder = os.path.dirname(os.path.abspath(path)) if os.sep in str(path) else ""
    reason = one_line(without_paths(_reason(failure), folder))
    raise ModelLoadError(f"cannot load {flavor} model {model}: {reason}") from failure


# a native library's log prefix, as XGBoost's errors start: "[12:34:56] src/learner.cc:123: "
_NATIVE_PREFIX = re.compile(r"^\s*\[\d\d:\d\d:\d\d\] \S+:\d+: ")


def _reason(exc: BaseException) -> str:
    """A library's load error as one line: its native stack trace and log prefix left out."""
    text = " ".join(_NATIVE_PREFIX.sub("", str(exc).split("Stack trace:", 1)[0]).split())
    return text or type(exc).__name__


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
    k = booster.num_model_per_iteration()  # num_class of a multiclass objective, else 1
    n_classes = k if k > 1 else None
    if k == 2:  # a two-class softmax: P(class 1), like a binary model
        predict = _positive_column(predict)

    def many(x: np.ndarray) -> np.ndarray:  # each row on one thread: the same sums, in order
        return booster.predict(x, num_threads=0)

    if k == 2:
        many = _positive_column(many)
    n = booster.num_feature()
    explainer, why = lightgbm_explainer(booster, path)
    return Predictor(
        "lightgbm", booster, names_or_none, n, predict, n_classes, explainer, why, many
    )


def _positive_column(predict: Any) -> Any:
    """``predict`` of a two-class model that returns (rows, 2) probabilities, as P(class 1)."""

    def positive(x: np.ndarray) -> np.ndarray:
        return np.asarray(predict(x))[:, 1]

    return positive


def _sklearn(path: str) -> Predictor:
    from featurestore.online.models._sklearn import load_sklearn

    return load_sklearn(path)


def _xgboost(path: str) -> Predictor:
    xgb = _require("xgboost", "xgboost", "xgboost")
    booster = xgb.Booster()
    booster.load_model(path)
    booster.set_param({"nthread": 1})
    names = booster.feature_names
    n = booster.num_features()
    n_classes = _xgb_class_count(booster)

    def predict(x: np.ndarray) -> np.ndarray:
        return booster.inplace_predict(x, validate_features=False)

    if n_classes == 2 and predict(np.zeros((1, n))).ndim == 2:  # multi:softprob, two classes
        predict = _positive_column(predict)
    names = None if names is None else list(names)
    explainer, why = xgboost_explainer(booster, n_classes)
    return Predictor("xgboost", booster, names, n, predict, n_classes, explainer, why)


def _xgb_class_count(booster: Any) -> int | None:
    """``num_class`` of a multi:softmax / multi:softprob booster; None for other objectives."""
    try:
        params = json.loads(booster.save_config())["learner"]["learner_model_param"]
        k = int(params.get("num_class", 0))
    except (ValueError, KeyError, TypeError):
        return None
    return k if k > 1 else None


def _onnx(path: str) -> Predictor:
    from featurestore.online.models._onnx import load_onnx

    return load_onnx(path)


def _python(path: str) -> Predictor:
    if path.endswith(".py"):
        name = f"_featurestore_model_{abs(hash(path))}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ModelLoadError(f"cannot import python model file {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(name, None)
            raise _not_imported(f"python model file {path}", exc) from exc
    else:
        try:
            module = importlib.import_module(path)
        except Exception as exc:  # not on the path, or it raises while importing
            raise _not_imported(f"python model module {path!r}", exc) from exc
    fn = getattr(module, "predict", None)
    if not callable(fn):
        raise ModelLoadError(
            f"python model {path} has no predict(X: np.ndarray) -> np.ndarray function; define one"
        )
    names = getattr(module, "FEATURE_NAMES", None)
    names = None if names is None else [str(n) for n in names]
    explainer, why = python_explainer(module)
    n = None if names is None else len(names)
    return Predictor("python", module, names, n, fn, None, explainer, why)


def _not_imported(what: str, exc: Exception) -> ModelLoadError:
    from featurestore.online.models.errors import one_line

    hint = ""
    if isinstance(exc, ModuleNotFoundError) and not what.startswith("python model file"):
        hint = "; give a .py file, or a module name importable where the server runs"
    return ModelLoadError(f"cannot import {what}: {type(exc).__name__}: {one_line(exc)}{hint}")


_LOADERS = {
    "lightgbm": _lightgbm,
    "sklearn": _sklearn,
    "xgboost": _xgboost,
    "onnx": _onnx,
    "python": _python,
}
