"""Division by zero in a row transform: one row online gives what the column kernel gives.

numba's njit raises ZeroDivisionError (Python's rule) where the vectorized kernel used for
training sets follows numpy (inf, nan, 0); a request must get the training set's value, not an
error.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from featurestore.transforms import transform


@transform
def ratio(amount: float, mean: float) -> float:
    return amount / mean


@transform
def per_item(total: int, items: int) -> int:
    return total // items


@transform
def rem(total: int, items: int) -> int:
    return total % items


@transform
def over_limit(amount: float, limit: float) -> bool:
    return amount / limit > 1.0


for _t in (ratio, per_item, rem, over_limit):
    _t.compile()


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    return a == b and type(a) is type(b)


def test_float_division_by_zero_is_the_column_value() -> None:
    cols, _ = ratio.apply_columns({"amount": [1.0, -1.0, 0.0], "mean": [0.0, 0.0, 0.0]})
    assert cols[0] == math.inf and cols[1] == -math.inf and math.isnan(cols[2])
    for a in (1.0, -1.0, 0.0):
        got = ratio(a, 0.0)
        want = cols[[1.0, -1.0, 0.0].index(a)].item()
        assert _same(got, want), (a, got, want)


def test_integer_division_by_zero_is_the_column_value() -> None:
    for t in (per_item, rem):
        cols, _ = t.apply_columns({"total": [7, -7, 0], "items": [0, 0, 0]})
        for i, total in enumerate((7, -7, 0)):
            got = t(total, 0)
            assert type(got) is int and got == cols[i].item(), (t.name, total, got, cols[i])


def test_a_bool_result_over_a_zero_division() -> None:
    cols, _ = over_limit.apply_columns({"amount": [5.0, -5.0], "limit": [0.0, 0.0]})
    assert over_limit(5.0, 0.0) is bool(cols[0]) is True
    assert over_limit(-5.0, 0.0) is bool(cols[1]) is False


@settings(max_examples=200, deadline=None)
@given(
    st.floats(-1e9, 1e9, allow_nan=False),
    st.sampled_from([0.0, -0.0, 1e-300, 2.5, -3.0]),
)
def test_rows_agree_with_columns(amount: float, mean: float) -> None:
    cols, valid = ratio.apply_columns({"amount": np.array([amount]), "mean": np.array([mean])})
    assert valid[0]
    assert _same(ratio(amount, mean), cols[0].item())


def test_column_kernels_divide_by_zero_without_warnings() -> None:
    """A zero divisor is a value (inf, nan, 0), as in the online rows, not a RuntimeWarning per
    training set; with nulls too (the compressed path)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        cols, _ = ratio.apply_columns({"amount": [1.0, -1.0, 0.0], "mean": [0.0, 0.0, 0.0]})
        with_null, valid = ratio.apply_columns({"amount": [1.0, None], "mean": [0.0, 0.0]})
        over_limit.apply_columns({"amount": [5.0], "limit": [0.0]})
    assert cols[0] == math.inf and with_null[0] == math.inf and valid.tolist() == [True, False]
