"""Numba kernels of the online window state: sorted insert with eviction, tiles, exact reads."""

from __future__ import annotations

import numpy as np
from numba import njit

from featurestore.transforms._exact import (
    BASE1,
    HDR,
    L1,
    L2,
    _new,
    _reset,
    acc_add,
    acc_add2,
    acc_value,
    acc_variance,
)
from featurestore.transforms._kernel import (
    COUNT,
    DISTINCT,
    LAST,
    MAX,
    MEAN,
    MIN,
    STDDEV,
    SUM,
    VAR,
)

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


# tile record fields: rec[row, tile] = (count, min bits, max bits, sum offset, squares offset)
T_CNT, T_MIN, T_MAX, T_S1, T_S2 = range(5)


@njit(cache=True)
def _tile_of(ts, tile_us):
    """Index b of the tile ``(b * tile_us, (b + 1) * tile_us]`` holding time ``ts``."""
    return (ts - 1) // tile_us


@njit(cache=True)
def _put_acc(pool, off, a):
    """Append accumulator ``a`` as ``[lo, hi, n_pos_inf, n_neg_inf, limbs lo..hi]``."""
    lo = a[0]
    hi = a[1]
    pool[off] = lo
    pool[off + 1] = hi
    pool[off + 2] = a[2]
    pool[off + 3] = a[3]
    off += 4
    for k in range(lo, hi + 1):
        pool[off] = a[HDR + k]
        off += 1
    return off


@njit(cache=True)
def _merge_acc(a, pool, off):
    """Add the stored accumulator at ``pool[off]`` into ``a`` (exact: integer limb sums)."""
    lo = pool[off]
    hi = pool[off + 1]
    a[2] += pool[off + 2]
    a[3] += pool[off + 3]
    if hi < lo:
        return
    if lo < a[0]:
        a[0] = lo
    if hi > a[1]:
        a[1] = hi
    for k in range(lo, hi + 1):
        a[HDR + k] += pool[off + 4 + k - lo]


@njit(cache=True)
def build_tiles(meta, ts, vals, valid, tin, need2, tile_us):
    """Partial aggregates per ``tile_us``-aligned tile of the buffer, for inputs ``tin``.

    Returns (tile ids, rec[len(tin), n_tiles, 5], pool): per non-empty tile and input the
    count of valid events, min and max (float64 bits; among equal values the newest, as the
    kernel's deques keep), and offsets into ``pool`` of the exact sum (and, if ``need2``, of
    the exact sum of squares; else -1).
    """
    n = meta[N]
    s = meta[START]
    nt = 0
    prev = np.int64(0)
    for j in range(s, s + n):
        b = _tile_of(ts[j], tile_us)
        if nt == 0 or b != prev:
            nt += 1
            prev = b
    ids = np.empty(nt, dtype=np.int64)
    starts = np.empty(nt + 1, dtype=np.int64)
    nt = 0
    for j in range(s, s + n):
        b = _tile_of(ts[j], tile_us)
        if nt == 0 or b != ids[nt - 1]:
            ids[nt] = b
            starts[nt] = j
            nt += 1
    starts[nt] = s + n
    rec = np.zeros((tin.size, nt, 5), dtype=np.int64)
    pool = np.empty(tin.size * nt * (2 * HDR + L1 + L2), dtype=np.int64)
    off = 0
    a1 = _new(L1)
    a2 = _new(L2)
    for r in range(tin.size):
        x = vals[tin[r]]
        xb = x.view(np.int64)
        ok = valid[tin[r]]
        for b in range(nt):
            _reset(a1)
            _reset(a2)
            cnt = 0
            mn = np.inf
            mx = -np.inf
            for j in range(starts[b], starts[b + 1]):
                if ok[j]:
                    v = x[j]
                    if cnt == 0 or v <= mn:
                        mn = v
                    if cnt == 0 or v >= mx:
                        mx = v
                    cnt += 1
                    if need2[r]:
                        acc_add2(a1, a2, v, xb[j], 1)
                    else:
                        acc_add(a1, v, xb[j], 1)
            rec[r, b, T_CNT] = cnt
            rec[r, b, T_MIN] = np.float64(mn).view(np.int64)
            rec[r, b, T_MAX] = np.float64(mx).view(np.int64)
            rec[r, b, T_S1] = off
            off = _put_acc(pool, off, a1)
            if need2[r]:
                rec[r, b, T_S2] = off
                off = _put_acc(pool, off, a2)
            else:
                rec[r, b, T_S2] = -1
    return ids, rec, pool[:off].copy()


@njit(cache=True)
def _scan_min_max(fn, x, ok, j0, j1, have, cur):
    """Fold raw events j0..j1 into (have, cur): a value equal to ``cur`` replaces it (newest)."""
    for j in range(j0, j1):
        if ok[j]:
            v = x[j]
            if not have or (v <= cur if fn == MIN else v >= cur):
                cur = v
                have = True
    return have, cur


@njit(cache=True)
def _scan_sums(fn, x, xb, ok, j0, j1, a1, a2):
    """Add raw events j0..j1 to the exact sums (as ``fn`` needs); returns their valid count."""
    cnt = 0
    for j in range(j0, j1):
        if ok[j]:
            cnt += 1
            if fn == SUM or fn == MEAN:
                acc_add(a1, x[j], xb[j], 1)
            elif fn == VAR or fn == STDDEV:
                acc_add2(a1, a2, x[j], xb[j], 1)
    return cnt


@njit(cache=True)
def _tiled_value(
    fn, x, xb, ok, ts, lo, hi, t, w, tile_us, tids, rec_r, pool, a1, a2, sc1, sc2, sc3
):
    """One output over events ``lo..hi`` (its window), merging the full tiles inside it.

    Events in tiles only partly inside the window are scanned raw; the merged exact sums and
    counts equal the raw ones, so the final rounding below (window_core's) gives its bits.
    """
    if fn == LAST:
        for j in range(hi - 1, lo - 1, -1):
            if ok[j]:
                return x[j]
        return np.nan
    b0 = -((w - t) // tile_us)  # first tile starting at or after t - w
    b1 = t // tile_us - 1  # last tile ending at or before t
    e0 = hi
    e1 = hi
    k0 = 0
    k1 = 0
    if tids.size > 0 and b0 <= b1:
        e0 = lo + np.searchsorted(ts[lo:hi], b0 * tile_us, side="right")
        e1 = e0 + np.searchsorted(ts[e0:hi], (b1 + 1) * tile_us, side="right")
        k0 = np.searchsorted(tids, b0, side="left")
        k1 = np.searchsorted(tids, b1, side="right")
    if fn == MIN or fn == MAX:
        have, cur = _scan_min_max(fn, x, ok, lo, e0, False, 0.0)
        f = T_MIN if fn == MIN else T_MAX
        for k in range(k0, k1):
            if rec_r[k, T_CNT] > 0:
                v = np.int64(rec_r[k, f]).view(np.float64)
                if not have or (v <= cur if fn == MIN else v >= cur):
                    cur = v
                    have = True
        have, cur = _scan_min_max(fn, x, ok, e1, hi, have, cur)
        return cur if have else np.nan
    _reset(a1)
    _reset(a2)
    sq = fn == VAR or fn == STDDEV
    cnt = 0
    for k in range(k0, k1):
        cnt += rec_r[k, T_CNT]
        if fn != COUNT:
            _merge_acc(a1, pool, rec_r[k, T_S1])
            if sq:
                _merge_acc(a2, pool, rec_r[k, T_S2])
    cnt += _scan_sums(fn, x, xb, ok, lo, e0, a1, a2)
    cnt += _scan_sums(fn, x, xb, ok, e1, hi, a1, a2)
    if fn == COUNT:
        return float(cnt)
    if fn == SUM:
        return acc_value(a1, BASE1, sc1)
    if cnt == 0:
        return np.nan
    if fn == MEAN:
        return acc_value(a1, BASE1, sc1) / cnt
    var = acc_variance(a1, a2, cnt, sc1, sc2, sc3)
    return var if fn == VAR else np.sqrt(var)


@njit(cache=True)
def _work():
    """Scratch reused by ``_read_into``: exact sums and their rounding space."""
    return (
        _new(L1), _new(L2), np.zeros(L1, dtype=np.int64), np.zeros(L2, dtype=np.int64),
        np.zeros(L2, dtype=np.int64),
    )  # fmt: skip


@njit(cache=True)
def read(
    meta, ts, vals, valid, keys, t, fns, inps, wins, dins, tile_us, tids, tmap, rec, pool,
):  # fmt: skip
    """Every output at time ``t`` over the buffered events, bit-identical to ``window_core``.

    Each output scans only its own events ``(t - w, t]`` (binary search on the sorted
    buffer); with tiles (``tids`` non-empty, input row ``tmap[input]``) the tiles wholly
    inside the window are merged instead of scanned. distinct_count counts the distinct keys
    of its window's counted events, as ``window_core``'s multiset does. A value depends only
    on the set of events in its window, hence equals the offline pass bit for bit.
    """
    out = np.empty(fns.size, dtype=np.float64)
    _read_into(
        meta, ts, vals, valid, keys, t, fns, inps, wins, dins, tile_us, tids, tmap, rec, pool,
        out, _work(),
    )  # fmt: skip
    return out


@njit(cache=True)
def _read_into(
    meta, ts, vals, valid, keys, t, fns, inps, wins, dins, tile_us, tids, tmap, rec, pool, out,
    work,
):  # fmt: skip
    """``read`` into ``out`` with the scratch ``work`` of ``_work()`` (left as ``_reset`` does)."""
    a1, a2, sc1, sc2, sc3 = work
    n = meta[N]
    s = meta[START]
    live = ts[s : s + n]
    hi = s + np.searchsorted(live, t, side="right")
    n_out = fns.size
    for o in range(n_out):
        w = wins[o]
        lo = min(s + np.searchsorted(live, t - w, side="right"), hi)
        fn = fns[o]
        if fn != DISTINCT:
            x = vals[inps[o]]
            r = tmap[inps[o]] if tids.size > 0 else -1
            ids = tids if r >= 0 else tids[:0]
            out[o] = _tiled_value(
                fn, x, x.view(np.int64), valid[inps[o]], ts, lo, hi, t, w, tile_us, ids,
                rec[max(r, 0)], pool, a1, a2, sc1, sc2, sc3,
            )  # fmt: skip
            continue
        # distinct_count: how many distinct keys the window's counted events hold, by sorting
        ok = valid[inps[o]]
        kd = keys[dins[o]]
        ks = np.empty(hi - lo, dtype=np.int64)
        m = 0
        for j in range(lo, hi):
            if ok[j]:
                ks[m] = kd[j]
                m += 1
        ks = np.sort(ks[:m])
        c = 1 if m > 0 else 0
        for j in range(1, m):
            if ks[j] != ks[j - 1]:
                c += 1
        out[o] = float(c)


# read_batch codes per value: read, absent (None / short / other prefix), read before the
# watermark minus the allowed lateness, or a header the caller must decode itself (it raises)
R_OK, R_ABSENT, R_LATE, R_BAD = range(4)


@njit(cache=True)
def read_batch(buf, lens, prefix, t, lateness, plan, dims, out, code, wm):
    """``read`` at ``t`` of each encoded state in ``buf``: int64 words, value i of ``lens[i]``
    bytes starting at the next multiple of 8 (absent if ``lens[i] < 0``).

    A value that does not start with ``prefix`` (a multiple of 8 bytes) is absent; the rest is
    parsed as ``OnlineWindows.decode`` does (layout in transforms/online.py) into read-only
    views of ``buf`` (the tile arrays after the uint8 validity block are copied to aligned
    scratch, as decode copies them) and read by ``read``'s code: the bits of decode +
    read_array. Read-only views have the types decode gives, so ``read``'s compiled callees
    serve both (a cold start compiles only this function more). ``plan`` stacks ``read``'s
    fns, inps, wins and dins; ``dims`` = (inputs, keys, tiled inputs, then ``read``'s tmap).
    A header that does not match them or overruns its value gets R_BAD, its row left to the
    caller. Fills ``out[i]`` (NaN unless R_OK), ``code[i]`` and ``wm[i]`` (the watermark, 0
    without one); returns how many got R_BAD.
    """
    fns = plan[0]
    inps = plan[1]
    wins = plan[2]
    dins = plan[3]
    n_in = dims[0]
    n_keys = dims[1]
    n_tin = dims[2]
    tmap = dims[3:]
    n_bad = 0
    skip = prefix.size
    b8 = buf.view(np.uint8)
    big = 0
    for i in range(lens.size):
        big = max(big, lens[i])
    tiles = np.zeros(big // 8 + 2, dtype=np.int64)
    meta = np.zeros(5, dtype=np.int64)
    no_tids = np.zeros(0, dtype=np.int64)
    no_rec = np.zeros((1, 0, 5), dtype=np.int64)
    work = _work()
    end = 0
    for i in range(lens.size):
        size = lens[i]
        start = end
        end += (max(size, 0) + 7) // 8 * 8
        out[i, :] = np.nan
        wm[i] = 0
        code[i] = R_ABSENT
        if size < skip:
            continue
        same = True
        for k in range(skip):
            if b8[start + k] != prefix[k]:
                same = False
                break
        if not same:
            continue
        code[i] = R_BAD
        n_bad += 1
        p = start + skip
        size -= skip
        src = buf
        w = p // 8
        if size < 8 or p % 8 != 0:
            continue
        version = src[w]
        if version != 1 and version != 2:
            continue
        hs = 12 if version == 2 else 8
        if size < 8 * hs:
            continue
        n = src[w + 1]
        n_tiles = src[w + 9] if version == 2 else 0
        n_pool = src[w + 11] if version == 2 else 0
        if src[w + 2] != n_in or src[w + 3] != n_keys or (n_tiles != 0 and src[w + 10] != n_tin):
            continue
        if n < 0 or n > size or n_tiles < 0 or n_tiles > size or n_pool < 0 or n_pool > size:
            continue
        a_end = 8 * hs + 8 * n * (1 + n_in + n_keys) + n * n_in
        need = a_end + (8 * (n_tiles * (1 + 5 * n_tin) + n_pool) if n_tiles != 0 else 0)
        if need > size:
            continue
        if src[w + 5] != 0:
            wm[i] = src[w + 4]
            if t < src[w + 4] - lateness:
                code[i] = R_LATE
                continue
        o = w + hs
        ts = src[o : o + n]
        o += n
        vals = src.view(np.float64)[o : o + n_in * n].reshape((n_in, n))
        o += n_in * n
        keys = src[o : o + n_keys * n].reshape((n_keys, n))
        o += n_keys * n
        valid = src.view(np.uint8)[8 * o : 8 * o + n_in * n].reshape((n_in, n))
        tile_us = np.int64(1)
        tids = no_tids
        rec = no_rec
        pool = no_tids
        if n_tiles != 0:
            tiles.view(np.uint8)[: need - a_end] = src.view(np.uint8)[8 * w + a_end : 8 * w + need]
            tile_us = src[w + 8]
            tids = tiles[:n_tiles]
            rec = tiles[n_tiles : n_tiles * (1 + 5 * n_tin)].reshape((n_tin, n_tiles, 5))
            pool = tiles[n_tiles * (1 + 5 * n_tin) : n_tiles * (1 + 5 * n_tin) + n_pool]
        meta[N] = n
        _read_into(
            meta, ts, vals, valid, keys, t, fns, inps, wins, dins, tile_us, tids, tmap, rec,
            pool, out[i], work,
        )  # fmt: skip
        code[i] = R_OK
        n_bad -= 1
    return n_bad
