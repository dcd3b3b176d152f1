"""On-demand features over a plain view: the training-set value equals the online value (same
compiled function, vectorized offline and per request online), with nulls, defaults, TTL
expiry, int request fields, bool outputs and full feature names."""

from __future__ import annotations

import textwrap
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore import FeatureStore
from featurestore.errors import EntityDataError

from .conftest import online_config

DEFS = """
from featurestore import (Bool, Entity, FeatureView, Field, Float64, Int64, OnDemandFeatureView,
                          ParquetSource, RequestSource, on_demand_feature)

user = Entity("user", join_keys=["user_id"])
acct = FeatureView(
    name="acct", entities=[user], ttl="1d", source=ParquetSource("data/acct.parquet"),
    schema=[Field("limit", Float64), Field("age", Int64, default=-1)],
)
req = RequestSource("req", schema=[Field("amount", Float64), Field("n_items", Int64)])


@on_demand_feature(inputs=["amount", "acct:limit"], output=Field("headroom", Float64),
                   sources=[req])
def headroom(amount: float, limit: float) -> float:
    return limit - amount


@on_demand_feature(inputs=["n_items", "acct:age"], output=Field("risky", Bool), sources=[req])
def risky(n_items: float, age: int) -> bool:
    return n_items > 3 and age < 100


checks = OnDemandFeatureView(name="checks", sources=[req, acct], features=[headroom, risky])
"""
H = 3_600_000_000
N = 40


def test_on_demand_offline_equals_online(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    t_us = int(datetime.now(timezone.utc).timestamp()) * 1_000_000
    (tmp_path / "data").mkdir()
    limit = rng.uniform(100, 1000, N).round(2)
    limit_arr = pa.array(limit, pa.float64(), mask=rng.random(N) < 0.2)  # null limits
    ts = t_us - rng.integers(0, 40 * H, N)  # some older than the 1d ttl: expired -> default
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array(range(N), pa.int64()),
                "event_timestamp": pa.array(ts, pa.timestamp("us", tz="UTC")),
                "limit": limit_arr,
                "age": pa.array(rng.integers(0, 300, N), pa.int64()),
            }
        ),
        tmp_path / "data" / "acct.parquet",
    )
    (tmp_path / "definitions.py").write_text(textwrap.dedent(DEFS))
    users = list(range(N + 5))  # five unknown users: defaults / nulls
    amount = rng.uniform(0, 500, len(users)).round(2).tolist()
    n_items = rng.integers(0, 8, len(users)).tolist()
    refs = ["checks:headroom", "checks:risky", "acct:age"]
    with FeatureStore(config=online_config("embedded", tmp_path, project="odfv")) as store:
        store.apply()
        store.materialize(t_us - 50 * H, t_us)
        online = store.get_online_features(
            refs,
            [{"user_id": u} for u in users],
            now=t_us,
            full_feature_names=True,
            request_data={"amount": amount, "n_items": n_items},
        ).to_dict()
        spine = pa.table(
            {
                "user_id": pa.array(users, pa.int64()),
                "event_timestamp": pa.array([t_us] * len(users), pa.timestamp("us", tz="UTC")),
                "amount": amount,
                "n_items": pa.array(n_items, pa.int64()),
            }
        )
        offline = store.get_historical_features(spine, refs, full_feature_names=True)
        # request data of another type than its field: one error naming the field and the row
        bad = {"amount": [1.0, "2"], "n_items": [1, 2]}
        with pytest.raises(
            EntityDataError, match=r"request field 'amount' is '2' \(str\) at entity row 1"
        ):
            store.get_online_features(refs, {"user_id": [1, 2]}, now=t_us, request_data=bad)
        with pytest.raises(EntityDataError, match=r"'n_items' is 1.5 .*declares it int64"):
            store.get_online_features(
                refs, {"user_id": [1]}, now=t_us, request_data={"amount": [1.0], "n_items": [1.5]}
            )
        as_arrays = store.get_online_features(  # numpy columns are fine
            refs,
            [{"user_id": u} for u in users],
            now=t_us,
            full_feature_names=True,
            request_data={"amount": np.array(amount), "n_items": np.array(n_items)},
        ).to_dict()
        assert as_arrays == online
    assert offline.columns == [
        "user_id", "event_timestamp", "amount", "n_items",
        "checks__headroom", "checks__risky", "acct__age",
    ]  # fmt: skip
    for col in ("checks__headroom", "checks__risky", "acct__age"):
        assert online[col] == offline[col].to_list(), col
    head = online["checks__headroom"]
    assert any(h is None for h in head) and sum(h is not None for h in head) >= 5
    assert set(online["checks__risky"]) == {True, False}
    assert online["acct__age"][-1] == -1  # default for an unknown user feeds the function too
