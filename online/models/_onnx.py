"""The ONNX flavor: an onnxruntime session fed one [batch, n] tensor or one tensor per feature.

Input names: a model with one input per feature (each [batch] or [batch, 1]) is named by its
inputs; a model with one [batch, n] tensor by its ``feature_names`` metadata (a JSON list or
comma-separated), else it is unnamed and takes the service's order. Classifiers converted by
skl2onnx emit (label, probabilities): the probabilities are scored.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from featurestore.online.models.errors import ModelLoadError
from featurestore.online.models.flavors import Predictor, _require

_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64}
_OPAQUE = "an ONNX graph has no per-feature contributions the service can compute"


def load_onnx(path: str) -> Predictor:
    """An InferenceSession on one thread, wrapped to take the service's float matrix."""
    ort = _require("onnxruntime", "onnxruntime", "onnx")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
    inputs = sess.get_inputs()
    for inp in inputs:
        if inp.type not in _DTYPES:
            raise ModelLoadError(
                f"onnx model {path}: input '{inp.name}' is a {inp.type}; the service feeds "
                "numbers, so every input must be a float or double tensor"
            )
    outputs = sess.get_outputs()
    out = [outputs[1].name if len(outputs) > 1 else outputs[0].name]
    run = sess.run
    if len(inputs) > 1:
        return _per_feature(path, sess, inputs, out)
    inp = inputs[0]
    if len(inp.shape) not in (1, 2):
        raise ModelLoadError(
            f"onnx model {path}: input '{inp.name}' has shape {inp.shape}; expected "
            "[batch, n_features] (or [batch] for one feature)"
        )
    width = 1 if len(inp.shape) == 1 else inp.shape[1]
    width = width if isinstance(width, int) else None
    names = _metadata_names(path, sess, inp.name, width)
    name, dtype = inp.name, _DTYPES[inp.type]

    if len(inp.shape) == 1:

        def predict(x: np.ndarray) -> np.ndarray:
            return _score(run(out, {name: np.ascontiguousarray(x[:, 0], dtype=dtype)})[0])
    else:

        def predict(x: np.ndarray) -> np.ndarray:
            return _score(run(out, {name: x.astype(dtype, copy=False)})[0])

    n = len(names) if names is not None else width
    return Predictor("onnx", sess, names, n, predict, unexplainable=_OPAQUE)


def _per_feature(path: str, sess: Any, inputs: list[Any], out: list[str]) -> Predictor:
    """One input per feature: the input names are the feature names, column j feeds input j."""
    bad = [i for i in inputs if not (len(i.shape) == 1 or (len(i.shape) == 2 and i.shape[1] == 1))]
    if bad:
        raise ModelLoadError(
            f"onnx model {path} has {len(inputs)} inputs and '{bad[0].name}' has shape "
            f"{bad[0].shape}; the registry feeds either one [batch, n_features] tensor or one "
            "[batch] / [batch, 1] tensor per feature"
        )
    feeds = [(i.name, _DTYPES[i.type], len(i.shape) == 1) for i in inputs]
    run = sess.run

    def predict(x: np.ndarray) -> np.ndarray:
        feed = {
            name: np.ascontiguousarray(x[:, j] if flat else x[:, j : j + 1], dtype=dtype)
            for j, (name, dtype, flat) in enumerate(feeds)
        }
        return _score(run(out, feed)[0])

    names = [i.name for i in inputs]
    return Predictor("onnx", sess, names, len(names), predict, unexplainable=_OPAQUE)


def _metadata_names(path: str, sess: Any, input_name: str, width: int | None) -> list[str] | None:
    """The ``feature_names`` metadata entry (JSON list or comma-separated), if the model has one."""
    raw = sess.get_modelmeta().custom_metadata_map.get("feature_names")
    if raw is None:
        return None
    text = raw.strip()
    try:
        names = json.loads(text) if text.startswith("[") else [s.strip() for s in text.split(",")]
    except ValueError as exc:
        raise ModelLoadError(
            f"onnx model {path}: metadata feature_names is not a JSON list ({exc}); "
            'write it as ["a", "b"] or a,b'
        ) from None
    if not names or not all(isinstance(s, str) and s for s in names):
        raise ModelLoadError(
            f"onnx model {path}: metadata feature_names {raw!r} must list non-empty names"
        )
    if width is not None and len(names) != width:
        raise ModelLoadError(
            f"onnx model {path}: metadata feature_names lists {len(names)} names but input "
            f"'{input_name}' is {width} wide; fix the metadata"
        )
    return names


def _score(out: Any) -> np.ndarray:
    """One number per row where the output allows it: P(positive class) of a binary classifier."""
    if isinstance(out, list):  # ZipMap output: list of {class: p}
        return _zipmap(out)
    out = np.asarray(out)
    if out.ndim == 2 and out.shape[1] == 2:
        return out[:, 1]
    return out


def _zipmap(rows: list[dict[Any, float]]) -> np.ndarray:
    """ZipMap rows as numbers: P(the larger label) for two classes, else one column per class.

    With two classes that is sklearn's ``classes_[1]`` (skl2onnx keeps the order) for int and
    string labels alike, matching the ``[:, 1]`` of a plain probability tensor. More classes
    stay a matrix (sorted labels), which the registry refuses as not one score per row.
    """
    if not rows:
        return np.zeros(0)
    labels = sorted(rows[0])
    if len(labels) == 2:
        positive = labels[1]
        return np.array([row[positive] for row in rows], dtype=np.float64)
    return np.array([[row[k] for k in labels] for row in rows], dtype=np.float64)
