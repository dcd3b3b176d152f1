"""Numba kernel of batched stream ingestion: many encoded window states updated in one call.

``ingest_batch`` parses each entity's encoded state (layout in transforms/online.py), inserts
its new events with ``insert`` and writes the state back exactly as ``OnlineWindows.encode``
does, so one call per round replaces per-entity decode, thaw, kernel dispatch and encode.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from featurestore.transforms._online_kernel import (
    FULL,
    HAS_WM,
    LATE,
    REJECTED,
    START,
    WATERMARK,
    N,
    build_tiles,
    insert,
)

# per-entity codes: written, or a header the caller must decode itself (it raises or differs)
I_OK, I_BAD = 0, 1
_VERSION = 2
_HEADER = 12


@njit(cache=True)
def _parse(buf, start, size, skip, prefix, n_in, n_keys, n_tin):
    """(word offset of the arrays, n, header words index) of value bytes ``start..+size``.

    Returns (-1, 0, 0) for an absent value (short, or another prefix: an empty state) and
    (-2, 0, 0) for a header ``decode`` must judge (it raises for these, as read_batch's R_BAD).
    """
    if size < skip:
        return -1, 0, 0
    b8 = buf.view(np.uint8)
    for k in range(skip):
        if b8[start + k] != prefix[k]:
            return -1, 0, 0
    p = start + skip
    size -= skip
    w = p // 8
    if size < 8 or p % 8 != 0:
        return -2, 0, 0
    version = buf[w]
    if version != 1 and version != _VERSION:
        return -2, 0, 0
    hs = _HEADER if version == _VERSION else 8
    if size < 8 * hs:
        return -2, 0, 0
    n = buf[w + 1]
    n_tiles = buf[w + 9] if version == _VERSION else 0
    n_pool = buf[w + 11] if version == _VERSION else 0
    if buf[w + 2] != n_in or buf[w + 3] != n_keys or (n_tiles != 0 and buf[w + 10] != n_tin):
        return -2, 0, 0
    if n < 0 or n > size or n_tiles < 0 or n_tiles > size or n_pool < 0 or n_pool > size:
        return -2, 0, 0
    a_end = 8 * hs + 8 * n * (1 + n_in + n_keys) + n * n_in
    need = a_end + (8 * (n_tiles * (1 + 5 * n_tin) + n_pool) if n_tiles != 0 else 0)
    if need > size:
        return -2, 0, 0
    return w + hs, n, w


@njit(cache=True)
def _room(out, used, size):
    """``out`` with room for ``size`` more bytes after ``used`` (doubled when it grows)."""
    if used + size <= out.size:
        return out
    new = np.empty(max(2 * out.size, used + size), dtype=np.uint8)
    new[:used] = out[:used]
    return new


@njit(cache=True)
def ingest_batch(
    buf, lens, prefix, bounds, b_ts, b_vals, b_valid, b_keys, dims, tin, need2, tile_us,
    tile_min, horizon,
):  # fmt: skip
    """Insert events ``bounds[i]..bounds[i + 1]`` of the batch into encoded state i; encode.

    ``buf``: int64 words, value i of ``lens[i]`` bytes starting at the next multiple of 8
    (absent if ``lens[i] < 0``), each ``prefix`` (a multiple of 8 bytes) + an encoded state.
    A value that is absent, shorter than ``prefix`` or starts otherwise is an empty state;
    the rest is parsed as ``decode`` does (version 1 or 2; stored tiles are dropped, as
    ``ingest`` drops them). Each new state is written to ``out`` as ``encode`` writes it:
    the 12-field header (watermark, has_watermark and rejected from the state, this plan's
    horizon), the live arrays, and tiles of ``tile_us`` when it holds ``tile_min`` events or
    more and ``tin`` (the tiled inputs, ``need2`` those with squares) is not empty.
    ``dims`` = (inputs, keys). Returns (out, offs, code, stop): state i is
    ``out[offs[i]:offs[i + 1]]`` when ``code[i]`` is I_OK; I_BAD leaves it empty (the caller
    decodes it, which raises as before). ``stop`` = (entity, event time, watermark) of the
    first event older than the watermark minus the horizon, after which nothing more is
    done (callers filter late events first), else (-1, 0, 0).
    """
    n_in = dims[0]
    n_keys = dims[1]
    n_ent = lens.size
    skip = prefix.size
    offs = np.zeros(n_ent + 1, dtype=np.int64)
    code = np.zeros(n_ent, dtype=np.int8)
    stop = np.array([-1, 0, 0], dtype=np.int64)
    fbuf = buf.view(np.float64)
    b8 = buf.view(np.uint8)
    cap = 16
    ts = np.empty(cap, dtype=np.int64)
    vflat = np.empty(n_in * cap, dtype=np.float64)
    okflat = np.empty(n_in * cap, dtype=np.uint8)
    kflat = np.empty(n_keys * cap, dtype=np.int64)
    meta = np.zeros(5, dtype=np.int64)
    head = np.zeros(_HEADER, dtype=np.int64)
    out = np.empty(1024, dtype=np.uint8)
    used = 0
    end = 0
    for i in range(n_ent):
        size = lens[i]
        start = end
        end += (max(size, 0) + 7) // 8 * 8
        offs[i] = used
        o, n, w = _parse(buf, start, size, skip, prefix, n_in, n_keys, tin.size)
        if o == -2:
            code[i] = I_BAD
            offs[i + 1] = used
            continue
        a = bounds[i]
        b = bounds[i + 1]
        if n + (b - a) > cap:
            cap = max(2 * cap, n + (b - a))
            ts = np.empty(cap, dtype=np.int64)
            vflat = np.empty(n_in * cap, dtype=np.float64)
            okflat = np.empty(n_in * cap, dtype=np.uint8)
            kflat = np.empty(n_keys * cap, dtype=np.int64)
        vals = vflat.reshape((n_in, cap))
        valid = okflat.reshape((n_in, cap))
        keys = kflat.reshape((n_keys, cap))
        meta[:] = 0
        if o >= 0:  # decode's meta, then thaw's copy of the arrays (start 0)
            meta[N] = n
            meta[WATERMARK] = buf[w + 4]
            meta[HAS_WM] = buf[w + 5]
            meta[REJECTED] = buf[w + 6]
            ts[:n] = buf[o : o + n]
            o += n
            for r in range(n_in):
                vals[r, :n] = fbuf[o + r * n : o + (r + 1) * n]
            o += n_in * n
            for r in range(n_keys):
                keys[r, :n] = buf[o + r * n : o + (r + 1) * n]
            o += n_keys * n
            for r in range(n_in):
                valid[r, :n] = b8[8 * o + r * n : 8 * o + (r + 1) * n]
        for j in range(a, b):
            st = insert(
                meta, ts, vals, valid, keys, b_ts[j], b_vals[:, j], b_valid[:, j], b_keys[:, j],
                horizon,
            )  # fmt: skip
            if st == LATE or st == FULL:  # FULL cannot happen: room for every event was made
                stop[0] = i
                stop[1] = b_ts[j]
                stop[2] = meta[WATERMARK]
                return out[:used], offs, code, stop
        n = meta[N]
        s = meta[START]
        tiled = n >= tile_min and tin.size > 0
        if tiled:
            tids, rec, pool = build_tiles(meta, ts, vals, valid, tin, need2, tile_us)
        else:
            tids = np.zeros(0, dtype=np.int64)
            rec = np.zeros((1, 0, 5), dtype=np.int64)
            pool = tids
        head[0] = _VERSION
        head[1] = n
        head[2] = n_in
        head[3] = n_keys
        head[4] = meta[WATERMARK]
        head[5] = meta[HAS_WM]
        head[6] = meta[REJECTED]
        head[7] = horizon
        head[8] = tile_us if tiled else 0
        head[9] = tids.size
        head[10] = tin.size
        head[11] = pool.size
        total = 8 * _HEADER + 8 * n * (1 + n_in + n_keys) + n * n_in
        if tids.size > 0:
            total += 8 * (tids.size + rec.size + pool.size)
        out = _room(out, used, total)
        q = used
        out[q : q + 8 * _HEADER] = head.view(np.uint8)
        q += 8 * _HEADER
        out[q : q + 8 * n] = ts.view(np.uint8)[8 * s : 8 * (s + n)]
        q += 8 * n
        v8 = vflat.view(np.uint8)
        for r in range(n_in):
            out[q : q + 8 * n] = v8[8 * (r * cap + s) : 8 * (r * cap + s + n)]
            q += 8 * n
        k8 = kflat.view(np.uint8)
        for r in range(n_keys):
            out[q : q + 8 * n] = k8[8 * (r * cap + s) : 8 * (r * cap + s + n)]
            q += 8 * n
        for r in range(n_in):
            out[q : q + n] = okflat[r * cap + s : r * cap + s + n]
            q += n
        if tids.size > 0:
            out[q : q + 8 * tids.size] = tids.view(np.uint8)
            q += 8 * tids.size
            out[q : q + 8 * rec.size] = rec.reshape(rec.size).view(np.uint8)
            q += 8 * rec.size
            out[q : q + 8 * pool.size] = pool.view(np.uint8)
            q += 8 * pool.size
        used = q
        offs[i + 1] = used
    return out[:used], offs, code, stop
