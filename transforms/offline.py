"""Offline window features: every aggregation of a plan at every (entity, t) query point.

Events and queries are sorted once (``_sort.group_sort``: counting sort by entity, then a
stable per-entity time sort, so equal timestamps keep arrival order), then ``window_core`` makes one numba pass per entity. Entity keys come in as int64
codes from the same factorisation for events and queries (the caller joins keys to codes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from featurestore.errors import EntityDataError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from featurestore.transforms.aggregation import WindowPlan


def compute_window_features(
    plan: WindowPlan,
    event_entities: np.ndarray,
    event_ts: np.ndarray,
    events: Mapping[str, Any],
    query_entities: np.ndarray,
    query_ts: np.ndarray,
    *,
    parallel: int | None = None,
) -> dict[str, np.ndarray]:
    """Window features as of each query point, in query order.

    Returns ``{output name: array}``: int64 for count/distinct_count, float64 (NaN = null)
    otherwise. Events are in arrival order (it breaks timestamp ties for ``last``).
    ``parallel``: threads for the kernel (default: numba's thread count; 1 = serial); the
    result does not depend on it.
    """
    from featurestore.transforms.aggregation import prepare_inputs

    ev_e = np.ascontiguousarray(event_entities, dtype=np.int64)
    ev_t = np.ascontiguousarray(event_ts, dtype=np.int64)
    q_e = np.ascontiguousarray(query_entities, dtype=np.int64)
    q_t = np.ascontiguousarray(query_ts, dtype=np.int64)
    if ev_e.shape != ev_t.shape or q_e.shape != q_t.shape:
        raise EntityDataError("entity codes and timestamps must have the same length")
    vals, valid, keys = prepare_inputs(plan, events)
    return compute_prepared(plan, ev_e, ev_t, vals, valid, keys, q_e, q_t, parallel=parallel)


def compute_prepared(
    plan: WindowPlan,
    ev_e: np.ndarray,
    ev_t: np.ndarray,
    vals: np.ndarray,
    valid: np.ndarray,
    keys: list[np.ndarray],
    q_e: np.ndarray,
    q_t: np.ndarray,
    *,
    parallel: int | None = None,
) -> dict[str, np.ndarray]:
    """``compute_window_features`` after ``prepare_inputs`` (for callers that reuse inputs)."""
    from featurestore.transforms._kernel import window_core, window_core_parallel
    from featurestore.transforms._sort import group_sort, take2d

    if vals.shape[1] != ev_t.size:
        raise EntityDataError(f"event columns have {vals.shape[1]} rows, timestamps {ev_t.size}")
    ev_e, q_e, n_codes_e = _dense_entities(ev_e, q_e)
    ev_order, ev_starts, s_t = group_sort(ev_e, ev_t, n_codes_e)
    q_order, q_starts, sq_t = group_sort(q_e, q_t, n_codes_e)
    s_vals = _take_values(plan, np.ascontiguousarray(vals, dtype=np.float64), ev_order)
    s_valid = take2d(np.ascontiguousarray(valid).view(np.uint8), ev_order)
    codes, n_codes = _codes(keys, ev_order, s_t.size)
    # one group per entity that has queries
    groups = np.flatnonzero(q_starts[1:] > q_starts[:-1])
    q_lo = q_starts[groups]
    q_hi = q_starts[groups + 1]
    ev_lo = ev_starts[groups]
    ev_hi = ev_starts[groups + 1]
    out = np.empty((len(plan.outputs), sq_t.size), dtype=np.float64)
    args = (s_t, s_vals, s_valid, codes, n_codes, sq_t, ev_lo, ev_hi, q_lo, q_hi,
            plan.fns, plan.inps, plan.wins, plan.dins, out)  # fmt: skip
    threads = _threads() if parallel is None else parallel
    if threads > 1 and s_t.size + sq_t.size >= 200_000:
        window_core_parallel(*args, 8 * threads)
    else:
        window_core(*args)
    result: dict[str, np.ndarray] = {}
    for i, o in enumerate(plan.outputs):
        col = np.empty(sq_t.size, dtype=np.int64 if o.is_int else np.float64)
        col[q_order] = out[i]
        result[o.name] = col
    return result


def _threads() -> int:
    import numba

    return int(numba.get_num_threads())


def _dense_entities(ev_e: np.ndarray, q_e: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Entity codes as 0..k-1; codes already small and non-negative are kept as they are."""
    n = ev_e.size + q_e.size
    if n == 0:
        return ev_e, q_e, 0
    lo = min(ev_e.min(initial=0), q_e.min(initial=0))
    hi = max(ev_e.max(initial=0), q_e.max(initial=0))
    if lo >= 0 and hi < 4 * n + 1024:
        return ev_e, q_e, int(hi) + 1
    uniq, inv = np.unique(np.concatenate([ev_e, q_e]), return_inverse=True)
    inv = inv.astype(np.int64)
    return inv[: ev_e.size], inv[ev_e.size :], int(uniq.size)


def _take_values(plan: WindowPlan, vals: np.ndarray, order: np.ndarray) -> np.ndarray:
    """``vals[:, order]`` for the inputs whose values the kernel reads; other rows stay 0.

    count and distinct_count read only validity (and key codes), so a value row used by
    nothing else is not gathered (one 8-byte random read per event saved).
    """
    from featurestore.transforms._kernel import COUNT, DISTINCT
    from featurestore.transforms._sort import take_into

    out = np.zeros((vals.shape[0], order.size), dtype=np.float64)
    pairs = zip(plan.fns, plan.inps, strict=True)
    read = {int(i) for f, i in pairs if int(f) not in (COUNT, DISTINCT)}
    for i in sorted(read):
        take_into(vals[i], order, out[i])
    return out


def _codes(keys: list[np.ndarray], order: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    if not keys:
        return np.zeros((1, 0), dtype=np.int64), np.zeros(0, dtype=np.int64)
    codes = np.empty((len(keys), n), dtype=np.int64)
    n_codes = np.empty(len(keys), dtype=np.int64)
    from featurestore.transforms._sort import take_into

    for j, k in enumerate(keys):
        ks = codes[j]
        take_into(np.ascontiguousarray(k, dtype=np.int64), order, ks)  # gathered in place
        if ks.size and ks.min() >= 0 and ks.max() < 4 * ks.size + 1024:
            n_codes[j] = int(ks.max()) + 1  # small non-negative ids are their own codes
        else:
            uniq, inv = np.unique(ks, return_inverse=True)
            codes[j] = inv
            n_codes[j] = uniq.size
    return codes, n_codes
