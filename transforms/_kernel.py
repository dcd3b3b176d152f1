"""The window kernel (numba): one sliding pass per entity over its time-sorted events and queries.

``window_core`` is the single reduction used by both paths: offline it runs over all events of
all entities (sorted once), online ``read`` runs it over one entity's buffered events with one
query. Windows are ``(t - w, t]``. Per output the pass keeps two pointers into the entity's
events: ``hi`` (first event with ts > t) and ``lo`` (first event with ts > t - w); events are
added when ``hi`` passes them and removed when ``lo`` passes them (events that enter and leave
between two queries are skipped), so the cost is O(events + queries) per output. Each result
depends only on the set of events in the window, never on the path that led there: that is
why the online read (one query over a buffer) equals the offline pass bit for bit. Sums are
exact (see ``_exact``), min/max use monotonic deques, distinct counts use per-code
multiplicities, ``last`` tracks the newest valid event.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from featurestore.transforms._exact import (
    BASE1,
    L1,
    L2,
    _new,
    _reset,
    acc_add,
    acc_add2,
    acc_value,
    acc_variance,
)

COUNT, SUM, MEAN, MIN, MAX, LAST, VAR, STDDEV, DISTINCT = range(9)


@njit(cache=True)
def window_core(
    ev_ts, vals, valid, codes, n_codes, q_ts, ev_lo, ev_hi, q_lo, q_hi, fns, inps, wins, dins, out
):
    """Fill ``out[o, q]`` for every output ``o`` and (entity-grouped, time-sorted) query ``q``.

    ev_ts: event times, sorted by (entity, ts, arrival); vals/valid: [n_inputs, n_events];
    codes: [n_distinct_inputs, n_events] dense codes < n_codes[j]; group g owns events
    ev_lo[g]:ev_hi[g] and queries q_lo[g]:q_hi[g]; output o applies fns[o] to input inps[o]
    (distinct input dins[o]) over window wins[o] microseconds.
    """
    n_out = fns.size
    n_groups = ev_lo.size
    max_ev = 0
    for g in range(n_groups):
        max_ev = max(max_ev, ev_hi[g] - ev_lo[g])
    max_q = 0
    for g in range(n_groups):
        max_q = max(max_q, q_hi[g] - q_lo[g])
    dq = np.empty(max_ev + 1, dtype=np.int64)
    his = np.empty(max_q + 1, dtype=np.int64)
    a1 = _new(L1)
    a2 = _new(L2)
    sc1 = np.zeros(L1, dtype=np.int64)
    sc2 = np.zeros(L2, dtype=np.int64)
    sc3 = np.zeros(L2, dtype=np.int64)
    mult = []
    for j in range(n_codes.size):
        mult.append(np.zeros(n_codes[j], dtype=np.int64))
    if n_codes.size == 0:
        mult.append(np.zeros(0, dtype=np.int64))
    for g in range(n_groups):
        e0 = ev_lo[g]
        e1 = ev_hi[g]
        q0 = q_lo[g]
        q1 = q_hi[g]
        p = e0
        for q in range(q0, q1):
            while p < e1 and ev_ts[p] <= q_ts[q]:
                p += 1
            his[q - q0] = p
        for o in range(n_out):
            fn = fns[o]
            inp = inps[o]
            w = wins[o]
            x = vals[inp]
            xb = x.view(np.int64)
            ok = valid[inp]
            cd = codes[dins[o]] if fn == DISTINCT else codes[0]
            m = mult[dins[o]] if fn == DISTINCT else mult[0]
            _reset(a1)
            _reset(a2)
            cnt = 0
            distinct = 0
            last_i = -1
            dq_head = 0
            dq_tail = 0
            lo = e0
            cur = e0
            dirty = True  # the window changed since the last value was computed
            value = np.nan
            for q in range(q0, q1):
                h = his[q - q0]
                bound = q_ts[q] - w
                # events leaving the window: remove those in the state ...
                while lo < cur and ev_ts[lo] <= bound:
                    dirty = True
                    if ok[lo]:
                        cnt -= 1
                        if fn == SUM or fn == MEAN:
                            acc_add(a1, x[lo], xb[lo], -1)
                        elif fn == VAR or fn == STDDEV:
                            acc_add2(a1, a2, x[lo], xb[lo], -1)
                        elif fn == DISTINCT:
                            c = cd[lo]
                            m[c] -= 1
                            if m[c] == 0:
                                distinct -= 1
                    lo += 1
                # ... and skip those never added (add-then-remove would give the same exact state)
                while lo < h and ev_ts[lo] <= bound:
                    dirty = True
                    lo += 1
                if cur < lo:
                    cur = lo
                if cur < h:
                    dirty = True
                while cur < h:
                    if ok[cur]:
                        cnt += 1
                        if fn == SUM or fn == MEAN:
                            acc_add(a1, x[cur], xb[cur], 1)
                        elif fn == VAR or fn == STDDEV:
                            acc_add2(a1, a2, x[cur], xb[cur], 1)
                        elif fn == MIN:
                            while dq_tail > dq_head and x[dq[dq_tail - 1]] >= x[cur]:
                                dq_tail -= 1
                            dq[dq_tail] = cur
                            dq_tail += 1
                        elif fn == MAX:
                            while dq_tail > dq_head and x[dq[dq_tail - 1]] <= x[cur]:
                                dq_tail -= 1
                            dq[dq_tail] = cur
                            dq_tail += 1
                        elif fn == LAST:
                            last_i = cur
                        elif fn == DISTINCT:
                            c = cd[cur]
                            if m[c] == 0:
                                distinct += 1
                            m[c] += 1
                    cur += 1
                if not dirty:
                    out[o, q] = value
                    continue
                dirty = False
                if fn == COUNT:
                    value = float(cnt)
                elif fn == DISTINCT:
                    value = float(distinct)
                elif fn == SUM:
                    value = acc_value(a1, BASE1, sc1)
                elif cnt == 0:
                    value = np.nan
                elif fn == MEAN:
                    value = acc_value(a1, BASE1, sc1) / cnt
                elif fn == VAR:
                    value = acc_variance(a1, a2, cnt, sc1, sc2, sc3)
                elif fn == STDDEV:
                    value = np.sqrt(acc_variance(a1, a2, cnt, sc1, sc2, sc3))
                elif fn == LAST:
                    value = x[last_i] if last_i >= lo else np.nan
                else:  # MIN / MAX: the deque front, once entries that left are dropped
                    while dq_head < dq_tail and dq[dq_head] < lo:
                        dq_head += 1
                    value = x[dq[dq_head]] if dq_head < dq_tail else np.nan
                out[o, q] = value
            if fn == DISTINCT:
                for i in range(lo, cur):
                    if ok[i]:
                        m[cd[i]] -= 1


@njit(cache=True, parallel=True)
def window_core_parallel(
    ev_ts, vals, valid, codes, n_codes, q_ts, ev_lo, ev_hi, q_lo, q_hi, fns, inps, wins, dins, out,
    n_chunks,
):  # fmt: skip
    """``window_core`` over ``n_chunks`` disjoint slices of the entity groups, in parallel.

    Each chunk runs the very same serial ``window_core`` the online read runs.
    """
    n_groups = ev_lo.size
    for c in prange(n_chunks):
        g0 = c * n_groups // n_chunks
        g1 = (c + 1) * n_groups // n_chunks
        if g1 > g0:
            window_core(
                ev_ts, vals, valid, codes, n_codes, q_ts, ev_lo[g0:g1], ev_hi[g0:g1],
                q_lo[g0:g1], q_hi[g0:g1], fns, inps, wins, dins, out,
            )  # fmt: skip


@njit(cache=True)
def dense_codes(keys):
    """Map int64 keys to dense codes 0..k-1 by sorting; returns (codes, k)."""
    n = keys.size
    codes = np.zeros(n, dtype=np.int64)
    if n == 0:
        return codes, 0
    order = np.argsort(keys, kind="mergesort")
    k = 0
    prev = keys[order[0]]
    for r in range(n):
        v = keys[order[r]]
        if r > 0 and v != prev:
            k += 1
            prev = v
        codes[order[r]] = k
    return codes, k + 1
