"""Per-row feature contributions: how much each input pushed a model's output, per flavor.

An ``Explainer`` is built when a model loads (cheap: no prediction runs for the tree flavors)
and only runs when a request asks why. Contributions are additive in the space ``output``
names: ``base_values + contributions.sum(axis=1)`` is the model's output there, row by row.

- lightgbm / xgboost: exact TreeSHAP from the library (``pred_contrib`` / ``pred_contribs``),
  in the raw score space (log-odds for binary classifiers, the value for identity-link
  regressors). A two-class softmax model is explained as class 1's log-odds, raw1 - raw0
  (P(class 1) is its sigmoid); a two-class one-vs-rest LightGBM model as class 1's raw score.
- sklearn: a linear final estimator (``coef_``, ``intercept_``, one output), alone or after
  per-feature scalers: ``coef_j * x_j`` with the intercept as base (behind scalers, the
  pipeline's effective weights and bias), in the decision-function space (log-odds of a
  binary classifier; a GLM's linear predictor, e.g. log of a Poisson mean; the value of other
  regressors). Rows with a missing input get NaN contributions: the model cannot score them.
- python: the module's own ``explain(x)``, returning (n, k) or (n, k + 1) with the base last.
  Without a base column, in the default ``"value"`` space the base is the score less the
  contributions' sum (see ``LoadedModel.explain``), so the row adds up to its score.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from featurestore.online.models.errors import ModelExplainError, one_line

EXPLAINABLE = (
    "lightgbm and xgboost tree models, scikit-learn linear models (coef_ and intercept_, one "
    "output, alone or after StandardScaler/MinMaxScaler/MaxAbsScaler/RobustScaler steps) and "
    "python models whose module defines explain(x)"
)

# (contributions, base values); base None: the model gave none (a python model's (n, k) answer)
ContribFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]


@dataclass(frozen=True, eq=False)
class Explanation:
    """Feature contributions of scored rows: ``base_values + contributions.sum(axis=1)`` is the
    model's output in the ``output`` space, row by row.

    ``contributions`` is (rows, features) float64 in ``feature_names`` order (the model's
    input order); ``base_values`` is (rows,). ``output`` names the space: ``"raw"`` is the
    score before the model's link (log-odds for binary classifiers, the value for
    identity-link regressors), ``"value"`` the score itself, or what a python model declares.
    """

    feature_names: tuple[str, ...]
    contributions: np.ndarray
    base_values: np.ndarray
    output: str


@dataclass(frozen=True)
class Explainer:
    """A flavor's contribution function ``fn(x) -> (contributions, base_values)`` and its space."""

    output: str
    fn: ContribFn


# ---- lightgbm --------------------------------------------------------------------------------

_SOFTMAX = {"multiclass", "softmax"}
_ONE_VS_REST = {"multiclassova", "multiclass_ova", "ova", "ovr"}


def lightgbm_explainer(booster: Any, path: str) -> tuple[Explainer | None, str]:
    """TreeSHAP of a LightGBM booster on one thread, or None and why not."""
    params = getattr(booster, "params", None) or {}
    if params.get("linear_tree") in (True, "true", "1", 1):
        return None, "LightGBM cannot compute SHAP values of linear trees (linear_tree=true)"
    k = booster.num_model_per_iteration()
    n = booster.num_feature()

    def contrib(x: np.ndarray) -> np.ndarray:
        return np.asarray(booster.predict(x, pred_contrib=True, num_threads=1), dtype=np.float64)

    if k == 1:
        fn = _split_bias(contrib)
    elif k == 2:
        words = str(params.get("objective") or _lgb_file_objective(path)).split()
        name = words[0] if words else ""
        if name in _SOFTMAX:  # P(class 1) = sigmoid(raw1 - raw0)
            fn = _split_bias(lambda x: _class_blocks(contrib(x), n)[1])
        elif name in _ONE_VS_REST:  # P(class 1) = sigmoid(raw1): class 1's own trees
            fn = _split_bias(lambda x: _class_blocks(contrib(x), n)[0])
        else:
            return None, f"a two-class LightGBM model with objective {name or 'unknown'!r}"
    else:
        return None, f"a {k}-class LightGBM model"
    return Explainer("raw", fn), ""


def _class_blocks(out: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Class 1's (n + 1)-wide block of a two-class contribution matrix, and class 1 - class 0."""
    c0, c1 = out[:, : n + 1], out[:, n + 1 : 2 * (n + 1)]
    return c1, c1 - c0


def _lgb_file_objective(path: str) -> str:
    """The ``objective=`` line of a model file's header (files without a parameters section)."""
    try:
        with open(path, errors="replace") as fh:
            for line in fh:
                if line.startswith("objective="):
                    return line.partition("=")[2].strip()
                if line.startswith("Tree="):
                    break
    except OSError:
        pass
    return ""


def _split_bias(contrib: Callable[[np.ndarray], np.ndarray]) -> ContribFn:
    """A (rows, k + 1) contribution function with the bias last, as (contributions, base)."""

    def fn(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = contrib(x)
        return out[:, :-1], out[:, -1]

    return fn


# ---- xgboost ---------------------------------------------------------------------------------


def xgboost_explainer(booster: Any, n_classes: int | None) -> tuple[Explainer | None, str]:
    """Exact TreeSHAP of an XGBoost booster in the margin space, or None and why not."""
    if n_classes is not None and n_classes > 2:
        return None, f"a {n_classes}-class XGBoost model"
    import xgboost as xgb

    def contrib(x: np.ndarray) -> np.ndarray:
        d = xgb.DMatrix(x, missing=np.nan, nthread=1)
        out = booster.predict(d, pred_contribs=True, validate_features=False)
        out = np.asarray(out, dtype=np.float64)
        if out.ndim == 3:  # one (k + 1) block per class: two classes here
            return out[:, 1, :] - out[:, 0, :]  # class 1's log-odds: margin1 - margin0
        return out

    return Explainer("raw", _split_bias(contrib)), ""


# ---- scikit-learn ----------------------------------------------------------------------------

_SCALERS = ("StandardScaler", "MinMaxScaler", "MaxAbsScaler", "RobustScaler")


def sklearn_explainer(model: Any, n_inputs: int | None) -> tuple[Explainer | None, str]:
    """``coef_j * x_j`` of a linear model (after per-feature scalers), or None and why not.

    Decided from the model's structure at load (no prediction runs). The first explanation
    checks the decomposition on a few probe rows against the model's own raw output (the
    decision function; a GLM's linear predictor; ``predict`` for other regressors), so a
    model whose output is not that affine function is refused then, not misexplained.
    """
    steps = getattr(model, "steps", None)
    final = steps[-1][1] if isinstance(steps, list) and steps else model
    before = [s[1] for s in steps[:-1] if s[1] not in (None, "passthrough")] if steps else []
    coef = getattr(final, "coef_", None)
    intercept = getattr(final, "intercept_", None)
    if coef is None or intercept is None:
        return None, f"a {type(final).__name__} is not a linear model (no coef_ / intercept_)"
    coef = np.asarray(coef, dtype=np.float64)
    intercept = np.asarray(intercept, dtype=np.float64).reshape(-1)
    if coef.ndim == 2 and coef.shape[0] == 1:
        coef = coef[0]
    if coef.ndim != 1 or intercept.shape != (1,):
        return None, f"a {type(final).__name__} with more than one output"
    for step in before:
        if type(step).__name__ not in _SCALERS or getattr(step, "clip", False):
            return None, (
                f"a pipeline with a {type(step).__name__} step (only per-feature scalers "
                "before the linear model can be explained)"
            )
    final_raw = (
        getattr(final, "_linear_predictor", None)  # a GLM: before its link (log for Poisson)
        or getattr(final, "decision_function", None)
        or final.predict
    )

    def raw(x: np.ndarray) -> Any:
        for step in before:
            x = step.transform(x)
        return final_raw(x)

    k = coef.shape[0] if n_inputs is None else n_inputs
    fitted: list[Any] = []  # (weights, bias) or the refusal, from the first explanation

    def fn(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not fitted:
            try:
                fitted.append(_affine(raw, coef, float(intercept[0]), k, plain=not before))
            except ModelExplainError as exc:
                fitted.append(exc)
        if isinstance(fitted[0], ModelExplainError):
            raise ModelExplainError(str(fitted[0]))
        w, b = fitted[0]
        out = x * w
        out[np.isnan(x).any(axis=1)] = np.nan  # the model cannot score the row
        return out, np.full(len(x), b)

    return Explainer("raw", fn), ""


def _affine(
    raw: Any, coef: np.ndarray, intercept: float, k: int, *, plain: bool
) -> tuple[np.ndarray, float]:
    """Weights and bias with ``raw(x) == bias + x @ w``, checked on probe rows.

    A bare linear model has its own ``coef_``; behind scalers the weights are read off the
    whole pipeline at the origin and the unit rows (exact for an affine map). Raises
    ModelExplainError when the model's output is not that function.
    """
    probes = np.array([[0.5, -1.25, 2.0, 3.5, -0.75][j % 5] * (1 + j % 3) for j in range(k)])
    probes = np.vstack([probes, -2.0 * probes[::-1], np.ones(k)])
    units = np.vstack([np.zeros((1, k)), np.eye(k)]) if not plain else np.zeros((0, k))
    try:
        out = np.asarray(raw(np.vstack([units, probes])), dtype=np.float64).reshape(-1)
    except Exception as exc:
        raise ModelExplainError(
            f"its raw output failed on probe rows ({type(exc).__name__}: {one_line(exc)})"
        ) from exc
    if plain:
        w, b = coef, intercept
    else:
        b = float(out[0])
        w = out[1 : k + 1] - b
    got = out[len(units) :]
    want = b + probes @ w
    scale = abs(b) + np.abs(probes * w).sum(axis=1) + 1e-12
    if w.shape != (k,) or got.shape != want.shape or not np.all(np.abs(got - want) <= 1e-8 * scale):
        raise ModelExplainError(
            "its output is not coef_ @ x + intercept_ (not a linear function of its inputs)"
        )
    return w, b


# ---- python ----------------------------------------------------------------------------------


def python_explainer(module: Any) -> tuple[Explainer | None, str]:
    """The module's ``explain(x)``; ``EXPLAIN_OUTPUT`` names its space (default ``"value"``)."""
    explain = getattr(module, "explain", None)
    if not callable(explain):
        return None, "its python module defines no explain(x) function"
    output = str(getattr(module, "EXPLAIN_OUTPUT", "value"))

    def fn(x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        n, k = x.shape
        got = explain(x)
        try:  # a tuple, a ragged list, strings...: say what came back, not numpy's complaint
            out = np.asarray(got, dtype=np.float64)
        except (TypeError, ValueError):
            what = f"a {type(got).__name__} that is not a numeric array"
        else:
            if out.shape == (n, k):
                # no base: in the score's own space the runtime takes the score less the sum;
                # in a space the module declares the score is not in, it cannot be known
                return out, None if output == "value" else np.zeros(n)
            if out.shape == (n, k + 1):
                return out[:, :-1], out[:, -1]
            what = f"shape {out.shape}"
            if out.ndim == 0:
                what = f"a {type(got).__name__}"
            elif not isinstance(got, np.ndarray):
                what = f"a {type(got).__name__} of {what}"
        raise ValueError(
            f"explain(x) returned {what} for {n} row(s) of {k} inputs; expected ({n}, {k}) or "
            f"({n}, {k + 1}) with the base value last, as a 2-D numeric array"
        )

    return Explainer(output, fn), ""
