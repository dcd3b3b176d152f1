"""Training-serving consistency: after materializing up to T, every online value on every backend
equals the point-in-time training value at T (same defaults, TTL edges, ties and nulls)."""

from __future__ import annotations

import textwrap
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore import FeatureStore
from featurestore.online.base import Status

from .conftest import online_config

DEFS = """
from featurestore import (Bool, Entity, FeatureView, Field, Float32, Float64, Int64, ParquetSource,
                          String)

user = Entity("user", join_keys=["user_id"])
pair = Entity("user_merchant", join_keys=["user_id", "merchant"])
user_stats = FeatureView(
    name="user_stats", entities=[user], ttl="2d",
    source=ParquetSource("data/user_stats.parquet", created_timestamp_field="created"),
    schema=[Field("clicks", Int64, default=-1), Field("spend", Float64), Field("tier", String)],
)
pair_stats = FeatureView(
    name="pair_stats", entities=[pair],
    source=ParquetSource("data/pair_stats.parquet"),
    schema=[Field("ratio", Float32), Field("flag", Bool, default=False)],
)
"""
DAY = 86_400_000_000
USERS = 60


def _ts(us: np.ndarray) -> pa.Array:
    return pa.array(us, pa.timestamp("us", tz="UTC"))


def write_data(repo, rng: np.random.Generator, t_us: int) -> None:
    n = 600
    user = rng.integers(0, USERS, n)
    # events from 6 days before T to 1 day after it; a few exactly on the TTL edge and at T
    ts = t_us + rng.integers(-6 * DAY, DAY, n)
    ts[:20] = t_us - 2 * DAY
    ts[20:30] = t_us
    ts[30:40] = t_us - 2 * DAY - 1
    # ties on event time, broken by created time
    ts[40:80] = ts[80:120]
    user[40:80] = user[80:120]
    created = ts + rng.integers(0, 10_000, n)
    spend = rng.normal(100, 30, n)
    spend[rng.random(n) < 0.1] = np.nan
    (repo / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array(user, pa.int64()),
                "event_timestamp": _ts(ts),
                "created": _ts(created),
                "clicks": pa.array(rng.integers(0, 1000, n), pa.int64()),
                "spend": pa.array(spend, pa.float64(), from_pandas=True),
                "tier": pa.array(rng.choice(["gold", "silver", None], n).tolist(), pa.string()),
            }
        ),
        repo / "data" / "user_stats.parquet",
    )
    m = 300
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array(rng.integers(0, USERS, m), pa.int64()),
                "merchant": pa.array(
                    rng.choice(["acme", "b,c", "d=e", "{f}"], m).tolist(), pa.string()
                ),
                "event_timestamp": _ts(t_us + rng.integers(-30 * DAY, DAY // 2, m)),
                "ratio": pa.array(rng.random(m).astype(np.float32), pa.float32()),
                "flag": pa.array(rng.random(m) < 0.5, pa.bool_()),
            }
        ),
        repo / "data" / "pair_stats.parquet",
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("backend", ["embedded", "redis", "redis_cluster"])
def test_online_equals_training_set_at_T(backend: str, seed: int, tmp_path, request) -> None:
    url = ""
    if backend == "redis":
        url = request.getfixturevalue("redis_url")
    elif backend == "redis_cluster":
        url = request.getfixturevalue("redis_cluster_url")
    config = online_config(backend, tmp_path, url=url, project="consistency")
    (tmp_path / "definitions.py").write_text(textwrap.dedent(DEFS))
    rng = np.random.default_rng(seed)
    t = datetime.now(timezone.utc).replace(microsecond=0)
    t_us = int(t.timestamp()) * 1_000_000
    write_data(tmp_path, rng, t_us)

    with FeatureStore(config=config) as store:
        store.apply()
        # two incremental runs: the watermark carries the second on from the first
        store.materialize_incremental(t - timedelta(days=2))
        store.materialize_incremental(t)

        users = list(range(USERS + 5))  # the last five have no rows at all
        merchants = ["acme", "b,c", "d=e", "{f}", "nobody"]
        rows = [{"user_id": u, "merchant": merchants[u % 5]} for u in users]
        refs = [
            "user_stats:clicks",
            "user_stats:spend",
            "user_stats:tier",
            "pair_stats:ratio",
            "pair_stats:flag",
        ]
        online = store.get_online_features(refs, rows, now=t)
        spine = pa.table(
            {
                "user_id": pa.array(users, pa.int64()),
                "merchant": [r["merchant"] for r in rows],
                "event_timestamp": pa.array([t] * len(users), pa.timestamp("us", tz="UTC")),
            }
        )
        offline = store.get_historical_features(spine, refs)

    got = online.to_dict()
    statuses = online.statuses
    for name in ("clicks", "spend", "tier", "ratio", "flag"):
        expected = offline[name].to_list()
        diff = [
            (i, x, y)
            for i, (x, y) in enumerate(zip(got[name], expected, strict=True))
            if not _same([x], [y])
        ]
        assert not diff, (name, backend, diff[:5])
    # the data covers every status, so the comparison above is not vacuous
    clicks_status = set(statuses["clicks"])
    assert Status.PRESENT in clicks_status and Status.NOT_FOUND in clicks_status
    assert sum(v != -1 for v in got["clicks"]) >= 10


def _same(a: list, b: list) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if isinstance(x, float) and isinstance(y, float) and np.isnan(x) and np.isnan(y):
            continue
        if x != y:
            return False
    return True
