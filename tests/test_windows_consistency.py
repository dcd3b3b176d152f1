"""Window views end to end: the training value at t == the online value after materializing up to
t (embedded, Redis, Redis Cluster) == a slow plain-Python oracle; on-demand offline == online.

Events carry ties, events exactly on window edges (``(t - w, t]``: at t in, at t - w out),
empty windows, nulls, a ``where`` predicate, a derived column and several entities. The
transform functions live in one shared file so numba compiles them once per session.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore import FeatureStore
from featurestore.online.base import Status

from .conftest import online_config

H = 3_600_000_000
USERS = 12

FUNCS = """
from featurestore import (Aggregation, Entity, FeatureView, Field, Float64, Int64,
                          OnDemandFeatureView, ParquetSource, RequestSource, on_demand_feature,
                          transform)


@transform
def to_usd(amount: float, fx: float) -> float:
    return amount * fx


@transform
def is_big(amount: float) -> bool:
    return amount > 50.0


request = RequestSource("tx_request", schema=[Field("amount", Float64)])


@on_demand_feature(inputs=["amount", "tx:amount_mean_2h"], output=Field("vs_mean", Float64),
                   sources=[request])
def vs_mean(amount: float, mean: float) -> float:
    if mean == 0.0:
        return 0.0
    return amount / mean


def aggregations():
    return [
        Aggregation("amount", "count", ["1h", "24h"]),
        Aggregation("amount", "sum", ["24h"]),
        Aggregation("amount", "mean", ["2h"]),
        Aggregation("amount", "min", ["1h"]),
        Aggregation("amount", "max", ["1h"]),
        Aggregation("amount", "last", ["24h"]),
        Aggregation("amount", "var", ["24h"]),
        Aggregation("amount", "stddev", ["24h"]),
        Aggregation("merchant_id", "distinct_count", ["24h"]),
        Aggregation("amount_usd", "sum", ["24h"]),
        Aggregation("amount", "count", ["24h"], name="big_count", where=is_big),
    ]


user = Entity("user", join_keys=["user_id"])
tx = FeatureView(
    name="tx", entities=[user], source=ParquetSource("data/events.parquet"),
    derived={"amount_usd": (to_usd, ["amount", "fx"])}, aggregations=aggregations(),
)
# the same events read with their created time: as_known=True counts only events known at t
tx_known = FeatureView(
    name="tx_known", entities=[user],
    source=ParquetSource("data/events.parquet", created_timestamp_field="created"),
    derived={"amount_usd": (to_usd, ["amount", "fx"])}, aggregations=aggregations(),
)
profile = FeatureView(
    name="profile", entities=[user], source=ParquetSource("data/profile.parquet"),
    schema=[Field("tier", Int64)],
)
scores = OnDemandFeatureView(name="scores", sources=[request, tx], features=[vs_mean])
"""

# (feature, column, function, window_us, predicate)
SPEC = [
    ("amount_count_1h", "amount", "count", H, None),
    ("amount_count_24h", "amount", "count", 24 * H, None),
    ("amount_sum_24h", "amount", "sum", 24 * H, None),
    ("amount_mean_2h", "amount", "mean", 2 * H, None),
    ("amount_min_1h", "amount", "min", H, None),
    ("amount_max_1h", "amount", "max", H, None),
    ("amount_last_24h", "amount", "last", 24 * H, None),
    ("amount_var_24h", "amount", "var", 24 * H, None),
    ("amount_stddev_24h", "amount", "stddev", 24 * H, None),
    ("merchant_id_distinct_count_24h", "merchant_id", "distinct_count", 24 * H, None),
    ("amount_usd_sum_24h", "amount_usd", "sum", 24 * H, None),
    ("big_count_24h", "amount", "count", 24 * H, "big"),
]
FEATURES = [s[0] for s in SPEC]
REFS = [f"tx:{f}" for f in FEATURES]


@pytest.fixture(scope="session")
def defs_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One definitions file for every test, so numba's disk cache is shared."""
    path = tmp_path_factory.mktemp("window_defs") / "window_definitions.py"
    path.write_text(textwrap.dedent(FUNCS))
    return path


def make_events(rng: np.random.Generator, t_us: int) -> list[dict]:
    """Random events around t_us with ties, window-edge events, nulls and a silent user."""
    n = 500
    user = rng.integers(0, USERS - 2, n)  # the last two users never have events
    ts = t_us + rng.integers(-30 * H, 2 * H, n)  # some are in the future of t
    edges = [t_us, t_us - H, t_us - 2 * H, t_us - 24 * H, t_us - H + 1, t_us - 24 * H + 1]
    ts[: len(edges) * 4] = np.repeat(edges, 4)  # four events on each edge: ties too
    ts[40:80] = ts[80:120]  # more ties
    amount = np.round(rng.lognormal(3.5, 1.0, n), 2)
    amount[rng.random(n) < 0.1] = np.nan
    amount[120:130] = 60.0  # duplicate values under ties
    ts[120:130] = t_us - 3 * H
    return [
        {
            "user_id": int(user[i]),
            "event_timestamp": int(ts[i]),
            "amount": None if math.isnan(amount[i]) else float(amount[i]),
            "fx": float(rng.choice([0.5, 1.1, 1.25])),
            "merchant_id": int(rng.integers(0, 15)),
        }
        for i in range(n)
    ]


def write_repo(repo: Path, events: list[dict], t_us: int) -> None:
    (repo / "data").mkdir(parents=True, exist_ok=True)
    cols = {k: [e[k] for e in events] for k in events[0]}
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array(cols["user_id"], pa.int64()),
                "event_timestamp": pa.array(cols["event_timestamp"], pa.timestamp("us", tz="UTC")),
                "amount": pa.array(cols["amount"], pa.float64()),
                "fx": pa.array(cols["fx"], pa.float64()),
                "merchant_id": pa.array(cols["merchant_id"], pa.int64()),
                "created": pa.array([e.get("created") for e in events], pa.int64()).cast(
                    pa.timestamp("us", tz="UTC")
                ),
            }
        ),
        repo / "data" / "events.parquet",
    )
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array(range(USERS), pa.int64()),
                "event_timestamp": pa.array([t_us - 48 * H] * USERS, pa.timestamp("us", tz="UTC")),
                "tier": pa.array([u % 3 for u in range(USERS)], pa.int64()),
            }
        ),
        repo / "data" / "profile.parquet",
    )


def oracle(
    events: list[dict],
    user: int,
    t: int,
    feature: str,
    *,
    created: bool = False,
    as_known: bool = False,
) -> float | int | None:
    """Plain Python over the raw events; None is null. ``created``: the view reads the created
    time (it breaks ``last`` ties); ``as_known``: only events with coalesce(created, event
    time) <= t count."""
    _, column, fn, w, pred = next(s for s in SPEC if s[0] == feature)
    rows = [e for e in events if e["user_id"] == user and t - w < e["event_timestamp"] <= t]
    if as_known:
        rows = [e for e in rows if (e.get("created") or e["event_timestamp"]) <= t]
    if column == "merchant_id":
        return len({e["merchant_id"] for e in rows})
    if column == "amount_usd":
        vals = [e["amount"] * e["fx"] for e in rows if e["amount"] is not None]
    else:
        vals = [e["amount"] for e in rows if e["amount"] is not None]
        if pred == "big":
            vals = [v for v in vals if v > 50.0]
    if fn == "count":
        return len(vals)
    if fn == "sum":
        return math.fsum(vals)
    if not vals:
        return None
    if fn == "mean":
        return math.fsum(vals) / len(vals)
    if fn == "min":
        return min(vals)
    if fn == "max":
        return max(vals)
    if fn == "last":  # newest event; ties: the read order (event time, then values ascending)
        valid = [e for e in rows if e["amount"] is not None]
        if created:  # then the created time, nulls first
            return max(
                valid,
                key=lambda e: (
                    e["event_timestamp"],
                    e.get("created") is not None,
                    e.get("created") or 0,
                    e["amount"],
                    e["fx"],
                ),
            )["amount"]
        return max(valid, key=lambda e: (e["event_timestamp"], e["amount"], e["fx"]))["amount"]
    mean = math.fsum(vals) / len(vals)
    var = math.fsum((v - mean) ** 2 for v in vals) / len(vals)
    return var if fn == "var" else math.sqrt(var)


def close(a: float | int | None, b: float | int | None, exact: bool) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if exact:
        return a == b
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def now_t() -> int:
    t = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    return int(t.timestamp()) * 1_000_000


def make_store(tmp_path: Path, defs_file: Path, backend: str, url: str = "") -> FeatureStore:
    config = online_config(backend, tmp_path, url=url, project=f"win_{tmp_path.name[-12:]}")
    return FeatureStore(config=replace(config, definitions=(str(defs_file),)))


def _offline(
    store: FeatureStore,
    users: list[int],
    times: list[int],
    refs: list[str],
    *,
    as_known: bool = False,
    full_feature_names: bool = False,
) -> dict:
    spine = pa.table(
        {
            "user_id": pa.array(users, pa.int64()),
            "event_timestamp": pa.array(times, pa.timestamp("us", tz="UTC")),
            "amount": pa.array([10.0 + u for u in users], pa.float64()),
        }
    )
    return store.get_historical_features(
        spine, refs, as_known=as_known, full_feature_names=full_feature_names
    ).to_dict(as_series=False)


@pytest.mark.parametrize("seed", [0, 1])
def test_offline_equals_oracle_at_many_times(tmp_path: Path, defs_file: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    t_us = now_t()
    events = make_events(rng, t_us)
    write_repo(tmp_path, events, t_us)
    ev_ts = [e["event_timestamp"] for e in events]
    # spine times on edges: at events, one window after events, and random ones
    times = [*ev_ts[:60], *(t + H for t in ev_ts[:30]), *(t + 24 * H for t in ev_ts[:30])]
    times += (t_us + rng.integers(-30 * H, 3 * H, 120)).tolist()
    users = rng.integers(0, USERS, len(times)).tolist()
    users[:60] = [e["user_id"] for e in events[:60]]
    with make_store(tmp_path, defs_file, "embedded") as store:
        store.apply()
        got = _offline(store, users, times, [*REFS, "profile:tier"])
    assert got["user_id"] == users  # spine order kept
    assert got["tier"] == [u % 3 for u in users]  # the plain view joins in the same call
    for f, _, fn, _, _ in SPEC:
        exact = fn in ("count", "distinct_count", "min", "max", "last", "sum")
        bad = [
            (u, t, g, oracle(events, u, t, f))
            for u, t, g in zip(users, times, got[f], strict=True)
            if not close(g, oracle(events, u, t, f), exact)
        ]
        assert not bad, (f, bad[:3])
    assert any(c == 0 for c in got["amount_count_1h"]) and max(got["amount_count_24h"]) >= 5


@pytest.mark.parametrize("seed", [0, 1])
def test_offline_as_known_equals_oracle(tmp_path: Path, defs_file: Path, seed: int) -> None:
    """as_known=True: an event counts at t only once created (a null created time: at its event
    time), as for plain views; without as_known, or for a source without a created time, the
    created time only breaks ``last`` ties."""
    rng = np.random.default_rng(100 + seed)
    t_us = now_t()
    events = make_events(rng, t_us)
    for e in events:  # created: none, before, at, or after the event time (up to 30h late)
        pick = rng.integers(0, 4)
        offset = [0, -int(rng.integers(1, 2 * H)), 0, int(rng.integers(1, 30 * H))][pick]
        e["created"] = None if pick == 0 else e["event_timestamp"] + offset
    for e in events[130:140]:  # ties in event time and created time: the value decides
        e["event_timestamp"], e["created"] = t_us - 5 * H, t_us - 4 * H
    write_repo(tmp_path, events, t_us)
    late = [e for e in events if e["created"] is not None and e["created"] > e["event_timestamp"]]
    times = [e["created"] for e in late[:40]] + [e["created"] - 1 for e in late[:40]]
    times += [e["event_timestamp"] for e in late[:40]] + [t_us - 4 * H, t_us - 4 * H - 1]
    times += (t_us + rng.integers(-30 * H, 3 * H, 60)).tolist()
    users = [e["user_id"] for e in late[:40]] * 3 + [events[130]["user_id"]] * 2
    users += rng.integers(0, USERS, 60).tolist()
    refs = [*REFS, *(f"tx_known:{f}" for f in FEATURES)]
    differs = 0
    with make_store(tmp_path, defs_file, "embedded") as store:
        store.apply()
        for as_known in (False, True):
            got = _offline(store, users, times, refs, as_known=as_known, full_feature_names=True)
            for f, _, fn, _, _ in SPEC:
                exact = fn in ("count", "distinct_count", "min", "max", "last", "sum")
                for view, created in (("tx", False), ("tx_known", True)):
                    want = [
                        oracle(events, u, t, f, created=created, as_known=as_known and created)
                        for u, t in zip(users, times, strict=True)
                    ]
                    bad = [
                        (u, t, g, w)
                        for u, t, g, w in zip(users, times, got[f"{view}__{f}"], want, strict=True)
                        if not close(g, w, exact)
                    ]
                    assert not bad, (view, f, as_known, bad[:3])
                    if as_known and created:
                        differs += sum(a != b for a, b in zip(got[f"tx__{f}"], want, strict=True))
    assert differs > 50  # the as_known case is not vacuous: many values change


@pytest.mark.parametrize("backend", ["embedded", "redis", "redis_cluster"])
def test_online_equals_offline_equals_oracle(
    backend: str, tmp_path: Path, defs_file: Path, request: pytest.FixtureRequest
) -> None:
    url = ""
    if backend != "embedded":
        url = request.getfixturevalue(f"{backend}_url")
    rng = np.random.default_rng(7)
    t_us = now_t()
    events = make_events(rng, t_us)
    write_repo(tmp_path, events, t_us)
    users = list(range(USERS))
    with make_store(tmp_path, defs_file, backend, url) as store:
        store.apply()
        for t in (t_us - 3 * H, t_us):  # the second run overwrites the first one's states
            res = store.materialize(t - 72 * H, t, views=["tx", "profile"])
            assert res.rows["tx"] > 0
            reads: list[int] = []
            real_read = store.online.read

            def counting(keys, reads=reads, real_read=real_read):  # type: ignore[no-untyped-def]
                reads.append(len(keys))
                return real_read(keys)

            store.online.read = counting  # type: ignore[method-assign]
            online = store.get_online_features(
                [*REFS, "profile:tier", "scores:vs_mean"],
                [{"user_id": u} for u in users],
                now=t,
                request_data={"amount": [10.0 + u for u in users]},
            )
            store.online.read = real_read  # type: ignore[method-assign]
            assert reads == [2 * USERS]  # one round trip for the window and the plain view
            got = online.to_dict()
            offline = _offline(store, users, [t] * USERS, [*REFS, "profile:tier", "scores:vs_mean"])
            for f in [*FEATURES, "tier", "vs_mean"]:
                assert got[f] == offline[f], (backend, t, f, got[f], offline[f])
            for f, _, fn, _, _ in SPEC:
                exact = fn in ("count", "distinct_count", "min", "max", "last", "sum")
                want = [oracle(events, u, t, f) for u in users]
                assert all(close(g, w, exact) for g, w in zip(got[f], want, strict=True)), (
                    f,
                    got[f],
                    want,
                )
            st = online.statuses["amount_count_24h"]
            assert st[-1] == Status.NOT_FOUND and st[0] == Status.PRESENT
            assert got["amount_count_24h"][-1] == 0 and got["amount_mean_2h"][-1] is None
            assert online.feature_names[-1] == "vs_mean"


def test_on_demand_needs_its_request_field(tmp_path: Path, defs_file: Path) -> None:
    from featurestore.errors import EntityDataError

    t_us = now_t()
    write_repo(tmp_path, make_events(np.random.default_rng(3), t_us), t_us)
    with make_store(tmp_path, defs_file, "embedded") as store:
        store.apply()
        store.materialize(t_us - 24 * H, t_us)
        with pytest.raises(EntityDataError, match="request field 'amount'"):
            store.get_online_features(["scores:vs_mean"], [{"user_id": 1}], now=t_us)
        # the fetched input is not in the response unless asked for
        resp = store.get_online_features(
            ["scores:vs_mean"], [{"user_id": 1}], now=t_us, request_data={"amount": [5.0]}
        )
        assert resp.feature_names == ["vs_mean"]
        assert list(resp.to_dict()) == ["user_id", "vs_mean"]
        spine = pa.table(
            {"user_id": [1], "event_timestamp": pa.array([t_us], pa.timestamp("us", tz="UTC"))}
        )
        with pytest.raises(EntityDataError, match="request field 'amount'"):
            store.get_historical_features(spine, ["scores:vs_mean"])
        # a read before the newest stored event cannot be exact (allowed_lateness 0): nulls
        early = store.get_online_features(REFS, [{"user_id": 1}], now=t_us - 3 * H)
        assert early.statuses["amount_sum_24h"] == [Status.EXPIRED]
        assert early.to_dict()["amount_sum_24h"] == [None]
        # include_event_timestamps gives the newest event of the state
        ts = store.get_online_features(
            ["tx:amount_count_24h"], [{"user_id": 1}], now=t_us, include_event_timestamps=True
        ).to_dict()["tx__event_timestamp"][0]
        assert ts is not None and ts <= datetime.fromtimestamp(t_us / 1e6, timezone.utc)
