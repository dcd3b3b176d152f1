"""Row transforms: the per-row njit kernel and the vectorized kernel agree on every row."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from featurestore.transforms import RowTransform, transform


@transform
def risk(amount: float, mean: float, n: int) -> float:
    """Branches, a loop and math calls: the kind of function users write."""
    if n <= 0:
        return 0.0
    z = (amount - mean) / (abs(mean) + 1.0)
    acc = 0.0
    for i in range(1, 4):
        acc += math.tanh(z / i) * math.log1p(abs(amount))
    return acc / n


@transform(name="is_big")
def big(amount: float) -> bool:
    return amount > 100.0


risk.compile()
big.compile()

floats = hnp.arrays(np.float64, st.integers(1, 40),
                    elements=st.floats(-1e6, 1e6, allow_nan=False))  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(a=floats, data=st.data())
def test_vectorized_equals_per_row_bit_for_bit(a, data):
    n = a.size
    m = data.draw(hnp.arrays(np.float64, n, elements=st.floats(-1e3, 1e3)))
    k = data.draw(hnp.arrays(np.int64, n, elements=st.integers(-2, 5)))
    out, valid = risk.apply_columns({"amount": a, "mean": m, "n": k})
    assert valid.all()
    for i in range(n):
        want = risk(float(a[i]), float(m[i]), int(k[i]))
        assert np.float64(out[i]).view(np.int64) == np.float64(want).view(np.int64)


def test_arrow_and_polars_columns_with_nulls_give_null_rows():
    amount = pa.array([1.0, None, 250.0, 3.5])
    mean = pl.Series([2.0, 2.0, None, 1.0])
    n = pa.chunked_array([[1, 2], [None, 4]], type=pa.int64())
    out, valid = risk.apply_columns({"amount": amount, "mean": mean, "n": n})
    assert valid.tolist() == [True, False, False, True]
    assert math.isnan(out[1]) and math.isnan(out[2])
    assert out[0] == risk(1.0, 2.0, 1) and out[3] == risk(3.5, 1.0, 4)
    assert risk(None, 2.0, 1) is None and risk(math.nan, 2.0, 1) is None


def test_bool_transform_and_decorator_name():
    assert isinstance(big, RowTransform) and big.name == "is_big"
    out, valid = big.apply_columns({"amount": np.array([50.0, 150.0])})
    assert out.dtype == np.bool_ and out.tolist() == [False, True] and valid.all()
    assert big(150.0) is True or big(150.0) == True  # noqa: E712 - numba returns a bool


def test_columns_match_the_plain_python_function():
    a = np.random.default_rng(1).normal(100, 30, 200_000)
    m = np.full(a.size, 90.0)
    k = np.full(a.size, 3, dtype=np.int64)
    out, valid = risk.apply_columns({"amount": a, "mean": m, "n": k})
    slow = [risk.func(x, 90.0, 3) for x in a[:20_000]]
    assert valid.all() and valid.size == a.size
    assert np.allclose(out[:20_000], slow, rtol=1e-12, atol=0)
