"""No training-serving skew: after materializing up to T, the online predict of every entity (at
"now", a few seconds after T) equals the batch score of a spine at T, bit for bit, through a
plain view with ttl / ties / nulls, a window view and an on-demand feature fed request data.

Every event sits at T - 30 s - k minutes and every ttl and window is whole minutes, so no ttl
or window boundary falls in the 30 s after T in which the online predict runs.
"""

from __future__ import annotations

import textwrap
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore import FeatureStore

from ._batch_repo import train_lgb

SEC = 1_000_000
MIN = 60 * SEC

DEFS = """
from featurestore import (Aggregation, Bool, Entity, FeatureService, FeatureView, Field, Float64,
                          Int64, OnDemandFeatureView, ParquetSource, RequestSource,
                          on_demand_feature)

user = Entity("user", join_keys=["user_id"])
merchant = Entity("merchant", join_keys=["merchant_id"])
acct = FeatureView(
    name="acct", entities=[user], ttl="10m",
    source=ParquetSource("data/acct.parquet", created_timestamp_field="created"),
    schema=[Field("x", Float64), Field("n", Int64, default=7), Field("flag", Bool, default=False)],
)
merch = FeatureView(
    name="merch", entities=[merchant], source=ParquetSource("data/merch.parquet"),
    schema=[Field("risk", Float64, default=0.25)],
)
tx = FeatureView(
    name="tx", entities=[user], source=ParquetSource("data/tx.parquet"),
    aggregations=[Aggregation("amount", "sum", ["1h"]), Aggregation("amount", "count", ["1h"])],
)
req = RequestSource("req", schema=[Field("price", Float64)])


@on_demand_feature(inputs=["price", "acct:x"], output=Field("headroom", Float64), sources=[req])
def headroom(price: float, x: float) -> float:
    return x - price


checks = OnDemandFeatureView(name="checks", sources=[req, acct], features=[headroom])
svc = FeatureService(name="svc", features=[
    "acct:x", "acct:n", "acct:flag", "merch:risk", "tx:amount_sum_1h", "tx:amount_count_1h",
    "checks:headroom"])
"""
MODEL_ORDER = [
    "amount_sum_1h",
    "x",
    "headroom",
    "n",
    "flag",
    "risk",
    "amount_count_1h",
]
CENTERS = [150.0, 0.0, 0.0, 25.0, 0.5, 0.4, 5.0]
SCALES = [100.0, 10.0, 15.0, 15.0, 0.5, 0.3, 3.0]
USERS = 30  # users 30..33 have no rows at all
MERCHANTS = 4  # merchant 3 has no rows


@pytest.fixture(scope="session")
def skew_defs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One definitions file for every repo here, so numba compiles its functions once."""
    path = tmp_path_factory.mktemp("skew_defs") / "skew_definitions.py"
    path.write_text(textwrap.dedent(DEFS))
    return path


def _ts(us: list[int]) -> pa.Array:
    return pa.array(us, pa.int64()).cast(pa.timestamp("us", tz="UTC"))


def _at(t_us: int, minutes: np.ndarray | int) -> np.ndarray:
    """Events 30 s off the minute grid of T: T - 30 s - k min."""
    return t_us - 30 * SEC - np.asarray(minutes, dtype=np.int64) * MIN


def write_data(repo: Path, rng: np.random.Generator, t_us: int) -> None:
    (repo / "data").mkdir(parents=True, exist_ok=True)
    n = 120
    user = rng.integers(0, USERS, n)
    ev = _at(t_us, rng.integers(0, 20, n))  # 10 min ttl: rows of k >= 10 are expired at T
    ev[:6] = t_us + 90 * SEC + np.arange(6) * MIN  # in the future of T: never seen
    ev[10:20] = ev[20:30]  # ties on event time, broken by created time
    user[10:20] = user[20:30]
    # distinct created offsets under 30 s: ties never equal in both timestamps, all known by T
    created = ev + (rng.permutation(n) + 1) * (SEC // 5)
    x = rng.normal(0, 10, n).round(3)
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array(user, pa.int64()),
                "event_timestamp": _ts(ev.tolist()),
                "created": _ts(created.tolist()),
                "x": pa.array(x, pa.float64(), mask=rng.random(n) < 0.2),
                "n": pa.array(rng.integers(0, 50, n), pa.int64(), mask=rng.random(n) < 0.1),
                "flag": pa.array(rng.random(n) < 0.5, pa.bool_()),
            }
        ),
        repo / "data" / "acct.parquet",
    )
    mids = [0, 0, 1, 1, 2]
    pq.write_table(
        pa.table(
            {
                "merchant_id": pa.array(mids, pa.int64()),
                "event_timestamp": _ts(_at(t_us, [100, 3, 50, 2000, 7]).tolist()),
                "risk": pa.array([0.1, 0.9, 0.3, 0.6, 0.05], pa.float64()),
            }
        ),
        repo / "data" / "merch.parquet",
    )
    m = 400
    tev = _at(t_us, rng.integers(0, 90, m))  # the 1h window holds k < 60 (k = 59 is 59.5 min)
    tev[:5] = t_us + 2 * MIN  # future events
    amount = rng.lognormal(3, 1, m).round(2)
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array(rng.integers(0, USERS - 3, m), pa.int64()),
                "event_timestamp": _ts(tev.tolist()),
                "amount": pa.array(amount, pa.float64(), mask=rng.random(m) < 0.05),
            }
        ),
        repo / "data" / "tx.parquet",
    )


def make_repo(repo: Path, defs: Path, online: str, url: str, t_us: int) -> Path:
    repo.mkdir(parents=True)
    store_cfg = (
        "online_store:\n  type: embedded\n  path: data/online\n  map_size: 64MB\n"
        if online == "embedded"
        else f"online_store:\n  type: redis\n  url: {url}\n"
    )
    (repo / "featurestore.yaml").write_text(
        f"project: skew_{online}\ndefinitions: {defs}\n{store_cfg}"
    )
    write_data(repo, np.random.default_rng(17), t_us)
    return repo


@pytest.mark.parametrize("online", ["embedded", "redis"])
def test_online_predict_equals_batch_score_at_T(
    online: str, tmp_path: Path, skew_defs: Path, request: pytest.FixtureRequest
) -> None:
    from .._models import publish

    url = request.getfixturevalue("redis_url") if online == "redis" else ""
    t = datetime.now(timezone.utc).replace(microsecond=0)
    t_us = int(t.timestamp()) * SEC
    repo = make_repo(tmp_path / "repo", skew_defs, online, url, t_us)
    model = train_lgb(tmp_path / "m.txt", MODEL_ORDER, seed=5, centers=CENTERS, scales=SCALES)
    users = list(range(USERS + 4))
    merchants = [u % MERCHANTS for u in users]
    price = np.random.default_rng(3).uniform(0, 20, len(users)).round(2).tolist()
    with FeatureStore(repo) as store:
        store.apply()
        version = publish(store, "fraud", flavor="lightgbm", artifact=model, service="svc")
        # two runs: the first reaches back to rows that have expired by T (online: EXPIRED)
        store.materialize_incremental(t - timedelta(minutes=15))
        store.materialize_incremental(t)
        online_res = store.predict(
            "fraud",
            {"user_id": users, "merchant_id": merchants},
            request_data={"price": price},
            return_features=True,
        )
        # one entity per call too: the single-row path online serving takes
        singles = [
            store.predict(
                "fraud", {"user_id": [u], "merchant_id": [m]}, request_data={"price": [p]}
            ).scores[0]
            for u, m, p in zip(users, merchants, price, strict=True)
        ]
        elapsed = time.time() - t.timestamp()
        spine = pa.table(
            {
                "user_id": pa.array(users, pa.int64()),
                "merchant_id": pa.array(merchants, pa.int64()),
                "event_timestamp": _ts([t_us] * len(users)),
                "price": pa.array(price, pa.float64()),
            }
        )
        batch = store.batch_score("fraud", spine, include_features=True)
    assert elapsed < 30, "predict ran too late after T for the boundaries chosen"
    assert online_res.version == version and batch.models[0].version == version
    df = batch.frame
    assert df is not None
    assert df.columns == [
        "user_id",
        "merchant_id",
        "event_timestamp",
        "price",
        *MODEL_ORDER,
        "score",
    ]
    assert online_res.features is not None
    online_feats = online_res.features.columns
    for f in MODEL_ORDER:  # the inputs first, for a readable failure
        assert _nan_eq(online_feats[f], df[f].to_list()), f
    got = df["score"].to_list()
    diff = [(u, a, b) for u, a, b in zip(users, online_res.scores, got, strict=True) if a != b]
    assert not diff, diff[:5]
    diff1 = [(u, a, b) for u, a, b in zip(users, singles, got, strict=True) if a != b]
    assert not diff1, diff1[:5]
    # the data reaches defaults, ttl expiry, nulls, windows and the on-demand feature
    assert None in df["x"].to_list() and 7 in df["n"].to_list()
    assert 0.25 in df["risk"].to_list() and df["amount_count_1h"].max() >= 3
    assert df["amount_count_1h"].min() == 0 and df["headroom"].drop_nulls().len() >= 5
    assert len(set(got)) >= 5
    statuses = {str(s).rsplit(".", 1)[-1] for s in online_res.features.statuses["x"]}
    assert {"PRESENT", "NOT_FOUND", "EXPIRED"} <= statuses, statuses


def _nan_eq(a: list, b: list) -> bool:
    def norm(v: object) -> object:
        return None if v is None or (isinstance(v, float) and v != v) else v

    return [norm(v) for v in a] == [norm(v) for v in b]
