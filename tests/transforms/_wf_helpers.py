"""Test helpers: a slow plain-Python oracle for windows over (t - w, t], and float comparisons."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np


def oracle(
    function: str, events: list[tuple[int, int, float, int]], entity: int, t: int, window: int
) -> float | int:
    """Aggregate (entity, ts, value, key) events in arrival order; NaN values are null.

    distinct_count counts the int keys of every event in the window; the rest use the values.
    """
    rows = [
        (i, ts, v + 0.0, k)
        for i, (e, ts, v, k) in enumerate(events)
        if e == entity and t - window < ts <= t
    ]
    if function == "distinct_count":
        return len({k for *_, k in rows})
    win = [r for r in rows if not math.isnan(r[2])]
    vals = [v for _, _, v, _ in win]
    if function == "count":
        return len(vals)
    if function == "sum":
        return _sum(vals)
    if not vals:
        return math.nan
    if function == "mean":
        return _sum(vals) / len(vals)
    if function == "min":
        return min(vals)
    if function == "max":
        return max(vals)
    if function == "last":
        return max(win, key=lambda r: (r[1], r[0]))[2]
    if any(math.isinf(v) for v in vals):
        return math.nan
    fr = [Fraction(v) for v in vals]
    mean = sum(fr) / len(fr)
    var = sum((x - mean) ** 2 for x in fr) / len(fr)
    try:
        fvar = float(var)
    except OverflowError:
        fvar = math.inf
    return fvar if function == "var" else math.sqrt(fvar)


def _sum(vals: list[float]) -> float:
    pos = any(v == math.inf for v in vals)
    neg = any(v == -math.inf for v in vals)
    if pos and neg:
        return math.nan
    if pos or neg:
        return math.inf if pos else -math.inf
    return math.fsum(vals) + 0.0


def same(a: float, b: float) -> bool:
    """Bit-for-bit equality, with every NaN equal to every NaN."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return np.float64(a).view(np.int64) == np.float64(b).view(np.int64)


def close(got: float, want: float, rel: float = 1e-9) -> bool:
    """Equal within ``rel`` relative (NaN matches NaN, inf matches inf)."""
    if math.isnan(want) or math.isnan(got):
        return math.isnan(want) and math.isnan(got)
    if math.isinf(want) or math.isinf(got):
        return got == want
    return abs(got - want) <= rel * max(abs(want), 1e-300)
