"""Numba kernels of the online window state: sorted insert with eviction, read via window_core."""

from __future__ import annotations

import numpy as np
from numba import njit

from featurestore.transforms._kernel import dense_codes, window_core

# meta slots: live events are ts[START : START + N] (a sliding prefix is dropped lazily)
N, WATERMARK, HAS_WM, REJECTED, START = range(5)
OK, LATE, FULL = range(3)


@njit(cache=True)
def _compact(meta, ts, vals, valid, keys):
    s = meta[START]
    n = meta[N]
    ts[:n] = ts[s : s + n]
    for i in range(vals.shape[0]):
        vals[i, :n] = vals[i, s : s + n]
        valid[i, :n] = valid[i, s : s + n]
    for i in range(keys.shape[0]):
        keys[i, :n] = keys[i, s : s + n]
    meta[START] = 0


@njit(cache=True)
def insert(meta, ts, vals, valid, keys, e_ts, e_vals, e_valid, e_keys, horizon):
    """Insert one event keeping (ts, arrival) order; evict what left the horizon.

    Returns OK, LATE (event older than watermark - horizon: state unchanged but the counter)
    or FULL (caller grows the arrays and calls again). Amortised O(1) for in-order events.
    """
    if meta[HAS_WM] == 1 and e_ts <= meta[WATERMARK] - horizon:
        meta[REJECTED] += 1
        return LATE
    wm = e_ts if meta[HAS_WM] == 0 else max(meta[WATERMARK], e_ts)
    cut = wm - horizon
    s = meta[START]
    n = meta[N]
    while n > 0 and ts[s] <= cut:
        s += 1
        n -= 1
    if n == 0:
        s = 0
    meta[START] = s
    meta[N] = n
    if s + n == ts.size:
        if s == 0:
            return FULL
        _compact(meta, ts, vals, valid, keys)
        s = 0
    end = s + n
    pos = end
    while pos > s and ts[pos - 1] > e_ts:
        pos -= 1
    for j in range(end, pos, -1):
        ts[j] = ts[j - 1]
    ts[pos] = e_ts
    for i in range(vals.shape[0]):
        for j in range(end, pos, -1):
            vals[i, j] = vals[i, j - 1]
            valid[i, j] = valid[i, j - 1]
        vals[i, pos] = e_vals[i]
        valid[i, pos] = e_valid[i]
    for i in range(keys.shape[0]):
        for j in range(end, pos, -1):
            keys[i, j] = keys[i, j - 1]
        keys[i, pos] = e_keys[i]
    meta[N] = n + 1
    meta[WATERMARK] = wm
    meta[HAS_WM] = 1
    return OK


@njit(cache=True)
def insert_many(meta, ts, vals, valid, keys, b_ts, b_vals, b_valid, b_keys, horizon, i0, stop_late):
    """Insert events i0.. of a batch in arrival order; returns (next index, last status).

    Stops at FULL (grow, then resume at the returned index) and, if ``stop_late``, at LATE.
    """
    for j in range(i0, b_ts.size):
        code = insert(
            meta, ts, vals, valid, keys, b_ts[j], b_vals[:, j], b_valid[:, j], b_keys[:, j],
            horizon,
        )  # fmt: skip
        if code == FULL or (code == LATE and stop_late):
            return j, code
    return b_ts.size, OK


@njit(cache=True)
def read(meta, ts, vals, valid, keys, t, fns, inps, wins, dins):
    """Every output at time ``t`` over the buffered events, by the offline ``window_core``."""
    n = meta[N]
    s = meta[START]
    ev_ts = np.ascontiguousarray(ts[s : s + n])
    v = np.ascontiguousarray(vals[:, s : s + n])
    ok = np.ascontiguousarray(valid[:, s : s + n])
    nk = keys.shape[0]
    if nk == 0:
        codes = np.zeros((1, 0), dtype=np.int64)
        n_codes = np.zeros(0, dtype=np.int64)
    else:
        codes = np.empty((nk, n), dtype=np.int64)
        n_codes = np.empty(nk, dtype=np.int64)
        for i in range(nk):
            c, k = dense_codes(keys[i, s : s + n])
            codes[i] = c
            n_codes[i] = k
    q_ts = np.empty(1, dtype=np.int64)
    q_ts[0] = t
    lo = np.zeros(1, dtype=np.int64)
    ev_hi = np.empty(1, dtype=np.int64)
    ev_hi[0] = n
    q_hi = np.ones(1, dtype=np.int64)
    out = np.empty((fns.size, 1), dtype=np.float64)
    window_core(ev_ts, v, ok, codes, n_codes, q_ts, lo, ev_hi, lo, q_hi, fns, inps, wins, dins, out)
    return out[:, 0]
