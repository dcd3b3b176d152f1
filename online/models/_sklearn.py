"""The scikit-learn flavor: a pickled or joblib estimator scored on float matrices.

Binary classifiers score ``predict_proba(x)[:, 1]``, anything else ``predict(x)``. A model
with a ColumnTransformer fitted on a DataFrame (columns picked by name) is fed a DataFrame
with the fitted column names; every other model gets the bare float matrix.
"""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np

from featurestore.online.models.explain import sklearn_explainer
from featurestore.online.models.flavors import Predictor, _require


def load_sklearn(path: str) -> Predictor:
    """Load a fitted estimator (``.joblib`` via joblib, anything else via pickle)."""
    if path.endswith(".joblib"):
        joblib = _require("joblib", "joblib", "sklearn")
        model = joblib.load(path)
    else:
        with open(path, "rb") as fh:
            model = pickle.load(fh)
    names = getattr(model, "feature_names_in_", None)
    n = getattr(model, "n_features_in_", None)
    frame = names is not None and _picks_columns_by_name(model)
    if not frame:
        _forget_fitted_names(model)
    n_classes = _class_count(getattr(model, "classes_", None))
    proba = getattr(model, "predict_proba", None)
    if proba is not None and n_classes == 2:

        def score(x: Any) -> np.ndarray:
            return proba(x)[:, 1]
    elif proba is not None and n_classes is not None and n_classes > 2:
        score = proba  # all the probabilities: the registry refuses more than one per row
    else:
        score = model.predict
    predict = _framed(score, [str(s) for s in names]) if frame else score
    n = None if n is None else int(n)
    explainer, why = sklearn_explainer(model, n)
    return Predictor(
        "sklearn",
        model,
        None if names is None else [str(s) for s in names],
        n,
        predict,
        n_classes,
        explainer,
        why,
    )


def _framed(score: Any, names: list[str]) -> Any:
    """``score`` fed a DataFrame with the fitted column names (the registry ordered them)."""
    pd = _require("pandas", "pandas", "sklearn")
    columns = pd.Index(names)

    def predict(x: np.ndarray) -> np.ndarray:
        return score(pd.DataFrame(x, columns=columns))

    return predict


def _class_count(classes: Any) -> int | None:
    """How many classes ``classes_`` lists; None for a regressor or a multi-output classifier."""
    if classes is None:
        return None
    try:
        arr = np.asarray(classes)
    except ValueError:  # ragged: one label array per output
        return None
    return len(arr) if arr.ndim == 1 else None


def _picks_columns_by_name(est: Any) -> bool:
    """Whether a ColumnTransformer fitted on a DataFrame sits anywhere in ``est``.

    Such a transformer selects its columns by name (or needs the names to check them), so the
    model must be fed a DataFrame; a float matrix fails or warns on every call.
    """
    if hasattr(est, "transformers_") and hasattr(est, "feature_names_in_"):
        return True
    children: list[Any] = []
    for attr, at in (("steps", 1), ("transformer_list", 1), ("transformers_", 1)):
        parts = getattr(est, attr, None)
        if isinstance(parts, list):
            children += [p[at] for p in parts if isinstance(p, tuple) and len(p) > at]
    for attr in ("estimator_", "estimator", "base_estimator"):
        child = getattr(est, attr, None)
        if child is not None:
            children.append(child)
    return any(hasattr(c, "get_params") and _picks_columns_by_name(c) for c in children)


def _forget_fitted_names(est: Any) -> None:
    """Drop the column names a model was fitted with, so numpy rows pass sklearn's name check.

    The registry already put the columns in the fitted order by those names; left in place,
    sklearn warns "X does not have valid feature names" on every prediction (~30 us and a log
    line per request). Pipelines: only the first step saw the names.
    """
    steps = getattr(est, "steps", None)
    if isinstance(steps, list) and steps:
        _forget_fitted_names(steps[0][1])
    elif "feature_names_in_" in getattr(est, "__dict__", {}):
        del est.feature_names_in_
