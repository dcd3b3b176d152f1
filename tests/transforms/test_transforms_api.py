"""Package surface: sorted exports, no numba at import, Arrow/polars inputs, the feature names."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import polars as pl
import pyarrow as pa

import featurestore.transforms as tf


def test_all_is_sorted_and_resolves():
    assert tf.__all__ == sorted(tf.__all__)
    for name in tf.__all__:
        assert getattr(tf, name) is not None


def test_import_does_not_load_numba():
    code = (
        "import sys, featurestore.transforms as t; "
        "t.compile_plan([t.Aggregation('a', 'sum', ['1h'])]); "
        "print('numba' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_arrow_and_polars_event_columns_with_nulls():
    plan = tf.compile_plan(
        [tf.Aggregation("a", "count", ["1h"]), tf.Aggregation("a", "sum", ["1h"]),
         tf.Aggregation("k", "distinct_count", ["1h"])]
    )  # fmt: skip
    events = {
        "a": pa.chunked_array([[1.5, None], [2.0]]),
        "k": pl.Series([7, None, 8], dtype=pl.Int64),
    }
    out = tf.compute_window_features(
        plan, np.zeros(3, np.int64), np.array([1, 2, 3]), events,
        np.zeros(1, np.int64), np.array([3]),
    )  # fmt: skip
    assert out["a_count_1h"].tolist() == [2]
    assert out["a_sum_1h"].tolist() == [3.5]
    assert out["k_distinct_count_1h"].tolist() == [2]  # the null key is skipped


def test_aggregation_dict_roundtrip_resolves_the_predicate_by_name():
    @tf.transform
    def big(a: float) -> bool:
        return a > 10.0

    agg = tf.Aggregation("a", "mean", ["24h", "7d"], name="big_mean", where=big)
    d = agg.to_dict()
    assert d == {"column": "a", "function": "mean", "windows": ["24h", "7d"],
                 "name": "big_mean", "where": "big"}  # fmt: skip
    back = tf.Aggregation.from_dict(d, {"big": big})
    assert back == agg and back.feature_names() == ["big_mean_24h", "big_mean_7d"]
