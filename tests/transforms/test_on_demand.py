"""On-demand features: request fields + fetched features, same kernel offline and online."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from featurestore.errors import DefinitionError
from featurestore.field import Field
from featurestore.transforms import OnDemandFeature, RequestSource, on_demand_feature
from featurestore.types import Float64, Int64, String

txn = RequestSource("txn", schema=[Field("amount", Float64), Field("hour", Int64)])


@on_demand_feature(
    inputs=["amount", "hour", "user:amount_mean_7d"],
    output=Field("amount_vs_mean", Float64),
    sources=[txn],
)
def amount_vs_mean(amount: float, hour: int, mean_7d: float) -> float:
    night = 1.5 if hour < 6 else 1.0
    return night * amount / (mean_7d + 1.0)


amount_vs_mean.compile(feature_types={"user:amount_mean_7d": Float64})


def test_declares_request_fields_and_output():
    assert isinstance(amount_vs_mean, OnDemandFeature)
    assert amount_vs_mean.name == "amount_vs_mean"
    assert amount_vs_mean.request_fields == ("amount", "hour")


@settings(max_examples=50, deadline=None)
@given(rows=st.lists(st.tuples(st.one_of(st.floats(-1e4, 1e4), st.none()),
                               st.integers(0, 23),
                               st.floats(0, 1e4)), min_size=1, max_size=30))  # fmt: skip
def test_offline_columns_equal_online_rows(rows):
    amount = np.array([math.nan if r[0] is None else r[0] for r in rows])
    cols = {
        "amount": amount,
        "hour": np.array([r[1] for r in rows], dtype=np.int64),
        "user:amount_mean_7d": np.array([r[2] for r in rows]),
    }
    out, valid = amount_vs_mean.compute_columns(cols)
    for i, (a, h, m) in enumerate(rows):
        online = amount_vs_mean.compute_row({"amount": a, "hour": h, "user:amount_mean_7d": m})
        if a is None:
            assert online is None and not valid[i] and math.isnan(out[i])
        else:
            assert valid[i]
            assert np.float64(online).view(np.int64) == np.float64(out[i]).view(np.int64)


def test_missing_offline_column_is_named():
    with pytest.raises(DefinitionError, match=r"needs columns \['hour'\]"):
        amount_vs_mean.compute_columns({"amount": [1.0], "user:amount_mean_7d": [2.0]})


def test_request_source_needs_fields():
    with pytest.raises(DefinitionError, match="needs schema"):
        RequestSource("r", schema=[])
    assert RequestSource("r", schema=[Field("s", String)]).field("s").dtype == String
