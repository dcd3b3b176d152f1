"""LightGBM single-row scoring through the C API's prepared "fast" predictor.

``Booster.predict`` on one row costs ~50 us of Python and config parsing around ~5 us of tree
walking; ``LGBM_BoosterPredictForMatSingleRowFast`` reuses a config prepared once per model,
so one row costs ~7 us. Batches keep the regular predictor.
"""

from __future__ import annotations

import ctypes
import threading
import weakref
from typing import Any

import numpy as np

_C_API_DTYPE_FLOAT64 = 1  # C_API_DTYPE_FLOAT64 in LightGBM's c_api.h
_C_API_PREDICT_NORMAL = 0  # C_API_PREDICT_NORMAL: transformed scores, like Booster.predict


class FastRowPredictor:
    """``predict(x)`` of one booster: the prepared C path for one row, ``batch`` for more."""

    def __init__(self, booster: Any, batch: Any) -> None:
        from lightgbm.basic import _LIB, _safe_call

        self._batch = batch
        self._n = booster.num_feature()
        handle = ctypes.c_void_p()
        _safe_call(
            _LIB.LGBM_BoosterPredictForMatSingleRowFastInit(
                booster._handle,
                ctypes.c_int(_C_API_PREDICT_NORMAL),
                ctypes.c_int(0),  # start_iteration
                ctypes.c_int(-1),  # num_iteration: all (the best iteration if saved)
                ctypes.c_int(_C_API_DTYPE_FLOAT64),
                ctypes.c_int32(self._n),
                b"num_threads=1",
                ctypes.byref(handle),
            )
        )
        self._handle = handle
        self._fn = _LIB.LGBM_BoosterPredictForMatSingleRowFast
        self._check = _safe_call
        self._lock = threading.Lock()  # one input and one output buffer, used under the lock
        self._in = np.zeros((1, self._n), dtype=np.float64)
        self._in_ptr = ctypes.c_void_p(self._in.ctypes.data)
        self._out = np.zeros(max(1, booster.num_model_per_iteration()), dtype=np.float64)
        self._out_ptr = ctypes.c_void_p(self._out.ctypes.data)
        self._out_len = ctypes.c_int64()
        self._out_len_ref = ctypes.byref(self._out_len)
        # the booster outlives the prepared config: both freed with this object
        weakref.finalize(self, _free, _LIB, handle, booster)

    def predict(self, x: np.ndarray) -> np.ndarray:
        if x.shape != (1, self._n) or self._out.shape[0] != 1:
            return self._batch(x)
        with self._lock:
            self._in[...] = x  # any float dtype or layout; avoids a per-call pointer lookup
            self._check(self._fn(self._handle, self._in_ptr, self._out_len_ref, self._out_ptr))
            return self._out.copy()


def _free(lib: Any, handle: ctypes.c_void_p, booster: Any) -> None:
    lib.LGBM_FastConfigFree(handle)


def fast_row_predict(booster: Any, batch: Any) -> Any:
    """``batch`` with a fast single-row path when it scores exactly like ``batch``, else ``batch``."""
    try:
        fast = FastRowPredictor(booster, batch)
        rng = np.random.default_rng(0)
        n = booster.num_feature()
        rows = [np.zeros((1, n)), rng.standard_normal((1, n)) * 100, np.full((1, n), np.nan)]
        for row in rows:
            if not np.array_equal(fast.predict(row), np.asarray(batch(row))):
                return batch
    except Exception:  # an older LightGBM without the fast API: the regular path
        return batch
    return fast.predict
