"""Exact float64 accumulators (numba): order-free sums so sliding and replayed windows agree.

A float64 is ``m * 2**e`` with an integer ``m < 2**53``. An accumulator holds the exact sum of
such values as a fixed-point integer in 24-bit limbs (int64 each, lazily carried), so adding and
removing values is exact and the result depends only on the multiset of values in the window,
never on the order or history of updates. That is what makes the offline sliding pass (add and
remove) and the online replay over a buffer (add only) equal to the last bit.

Layout of one accumulator (int64 array): ``[lo, hi, n_pos_inf, n_neg_inf, limb_0 ... limb_L-1]``
where ``lo..hi`` is the range of limbs ever touched (a speed hint only) and limb ``k`` weighs
``2**(24*k + base)``. Sums of values use ``BASE1``; sums of exact squares use ``BASE2``.
Rounding to float64 is round-to-nearest-even of the exact value, except for subnormal results.
Limits: a limb absorbs < 2**24 per update, so 2**39 updates fit before int64 overflow; the
variance numerator needs windows under 2**31 events.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

W = 24
MASK = (1 << W) - 1
HDR = 4
BASE1 = -1130  # below the smallest subnormal's lowest bit (2**-1074 = 2**52 * 2**-1126)
BASE2 = 2 * BASE1
L1 = 96  # (1024 - BASE1 + 64 bits of growth) / 24 + margin
L2 = 194  # squares: (2048 - BASE2 + 64) / 24 + margin; also fits S1**2 (2 * L1 limbs)


@njit(cache=True)
def _new(n_limbs):
    a = np.zeros(HDR + n_limbs, dtype=np.int64)
    a[0] = n_limbs
    a[1] = -1
    return a


@njit(cache=True)
def _reset(a):
    n = a.size - HDR
    lo = a[0]
    hi = a[1]
    for k in range(lo, hi + 1):
        a[HDR + k] = 0
    a[0] = n
    a[1] = -1
    a[2] = 0
    a[3] = 0


@njit(cache=True)
def _add_bits(a, v, pos, sign):
    """Add ``sign * v * 2**pos`` (0 <= v < 2**54, pos >= 0 bits above the base)."""
    k = pos // W
    s = pos - k * W
    if k < a[0]:
        a[0] = k
    while v != 0:
        t = (v & MASK) << s
        a[HDR + k] += sign * (t & MASK)
        a[HDR + k + 1] += sign * (t >> W)
        v >>= W
        k += 1
    if k > a[1]:
        a[1] = k


@njit(cache=True)
def _decode(bits):
    """float64 bits -> (m, e, negative) with |x| = m * 2**e; e >= -1074 (finite, non-zero x)."""
    ex = (bits >> 52) & 0x7FF
    m = bits & 0xFFFFFFFFFFFFF
    if ex == 0:
        return m, -1074, bits < 0
    return m | 0x10000000000000, ex - 1075, bits < 0


@njit(cache=True)
def acc_add(a, x, bits, sign):
    """Add (sign=1) or remove (sign=-1) the value ``x`` (float64 bits ``bits``) exactly."""
    if x == 0.0:
        return
    if math.isinf(x):
        if x > 0:
            a[2] += sign
        else:
            a[3] += sign
        return
    m, e, neg = _decode(bits)
    _add_bits(a, m, e - BASE1, -sign if neg else sign)


@njit(cache=True)
def acc_add2(a1, a2, x, bits, sign):
    """Add or remove ``x`` in ``a1`` and its exact 106-bit square ``x * x`` in ``a2``."""
    if x == 0.0:
        return
    if math.isinf(x):
        if x > 0:
            a1[2] += sign
        else:
            a1[3] += sign
        a2[2] += sign
        return
    m, e, neg = _decode(bits)
    _add_bits(a1, m, e - BASE1, -sign if neg else sign)
    hi = m >> 26
    lo = m & ((1 << 26) - 1)
    pos = 2 * e - BASE2
    _add_bits(a2, hi * hi, pos + 52, sign)
    _add_bits(a2, 2 * hi * lo, pos + 26, sign)
    _add_bits(a2, lo * lo, pos, sign)


@njit(cache=True)
def _normalize(raw, lo, hi, d, mult):
    """Carry ``mult * raw[lo..hi]`` into 24-bit digits ``d``; returns (sign, top digit or -1).

    Writes ``d`` from ``lo`` up to where the carry settles; readers stay within ``lo..top``.
    """
    if hi < lo:
        return 0, -1
    n = d.size
    carry = np.int64(0)
    k = lo
    top = -1
    while k < n:
        v = (mult * raw[k] if k <= hi else 0) + carry
        d[k] = v & MASK
        carry = v >> W
        if d[k] != 0:
            top = k
        if k >= hi and (carry == 0 or carry == -1):
            break
        k += 1
    if carry == -1:
        return -1, top
    return (1 if top >= 0 else 0), top


@njit(cache=True)
def _digits_to_double(d, top, lo, base):
    """Round the non-negative integer in digits ``d`` (top index ``top``) to float64."""
    if top < 0:
        return 0.0
    lead = d[top]
    nb = 0
    while (lead >> nb) != 0:
        nb += 1
    w = lead
    bits = nb
    i = top - 1
    while bits + W <= 62 and i >= lo:
        w = (w << W) | d[i]
        bits += W
        i -= 1
    sticky = False
    r = 62 - bits
    if r > 0:
        if i >= lo:
            w = (w << r) | (d[i] >> (W - r))
            sticky = (d[i] & ((1 << (W - r)) - 1)) != 0
            i -= 1
        else:
            w <<= r
    while not sticky and i >= lo:
        if d[i] != 0:
            sticky = True
        i -= 1
    q = w >> 9
    rem = w & 511
    if rem > 256 or (rem == 256 and (sticky or (q & 1) == 1)):
        q += 1
    leadpos = W * top + nb - 1
    return math.ldexp(float(q), leadpos - 52 + base)


@njit(cache=True)
def acc_value(a, base, scratch):
    """The accumulated sum rounded to float64 (+-inf and nan follow IEEE rules)."""
    if a[2] > 0 and a[3] > 0:
        return np.nan
    if a[2] > 0:
        return np.inf
    if a[3] > 0:
        return -np.inf
    raw = a[HDR:]
    lo = a[0]
    hi = a[1]
    sign, top = _normalize(raw, lo, hi, scratch, 1)
    if sign == 0:
        return 0.0
    if sign < 0:
        _, top = _normalize(raw, lo, hi, scratch, -1)
        return -_digits_to_double(scratch, top, lo, base)
    return _digits_to_double(scratch, top, lo, base)


@njit(cache=True)
def acc_variance(a1, a2, n, s1, s2, s3):
    """Population variance from exact sums: ``(n * sum(x*x) - sum(x)**2) / n**2``.

    The numerator is computed exactly in big-integer limbs, then rounded once; the division
    by ``n**2`` rounds once more, so the result is within 2 ulp of the true variance.
    ``s1`` (L1 limbs), ``s2`` and ``s3`` (L2 limbs) are scratch space.
    """
    if a1[2] > 0 or a1[3] > 0:
        return np.nan
    raw1 = a1[HDR:]
    lo1 = a1[0]
    sg1, top1 = _normalize(raw1, lo1, a1[1], s1, 1)
    if sg1 < 0:
        sg1, top1 = _normalize(raw1, lo1, a1[1], s1, -1)
    lo2 = a2[0]
    hi2 = a2[1]
    if hi2 < lo2:
        return 0.0
    lo = min(lo2, 2 * lo1)
    hi = min(max(hi2 + 4, 2 * top1 + 2), s2.size - 1)
    for k in range(lo, hi + 1):
        s2[k] = 0
    _, top2 = _normalize(a2[HDR:], lo2, hi2, s2, 1)
    # s2 <- n * S2 - S1**2, in place, as signed limbs (|limb| < 2**57)
    for k in range(lo2, top2 + 1):
        s2[k] *= n
    for i in range(lo1, top1 + 1):
        di = s1[i]
        if di == 0:
            continue
        for j in range(lo1, top1 + 1):
            s2[i + j] -= di * s1[j]
    sign, top = _normalize(s2, lo, hi, s3, 1)
    if sign <= 0:
        return 0.0
    return _digits_to_double(s3, top, lo, BASE2) / (float(n) * float(n))
