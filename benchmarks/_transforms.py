"""Data and hand-written floors for the transform benchmarks (benchmarks/test_transforms.py).

The window workload is one event table (entity, ts, amount, merchant) and a spine of
(entity, t) query points; six features: amount count 1h and 24h, sum 24h, mean 7d, stddev 30d
(population) and distinct merchants 24h, every window ``(t - w, t]``. The floors compute the same
six columns by hand: DuckDB window functions over events and queries in one table (at 10M
events this beat a range join, 27 s vs 53 s, on the 2-core machine), and polars ``rolling``
(``closed="right"``) grouped by entity over the same union.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from featurestore.transforms import Aggregation, transform

if TYPE_CHECKING:
    import polars as pl

S_US = 1_000_000
H_US = 3600 * S_US
DAY_US = 24 * H_US
SPAN_DAYS = 60  # events are spread over this many days; queries over one more


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


WINDOW_SCALE = {
    "events": env_int("FS_BENCH_WINDOW_EVENTS", 10_000_000),
    "entities": env_int("FS_BENCH_WINDOW_ENTITIES", 100_000),
    "queries": env_int("FS_BENCH_WINDOW_QUERIES", 1_000_000),
}

AGGREGATIONS = [
    Aggregation("amount", "count", ["1h", "24h"]),
    Aggregation("amount", "sum", ["24h"]),
    Aggregation("amount", "mean", ["7d"]),
    Aggregation("amount", "stddev", ["30d"]),
    Aggregation("merchant", "distinct_count", ["24h"]),
]
# output name -> (window in us, SQL aggregate, polars aggregate); the floors build from this
FEATURES: dict[str, tuple[int, str, str]] = {
    "amount_count_1h": (H_US, "count(amount)", "count"),
    "amount_count_24h": (DAY_US, "count(amount)", "count"),
    "amount_sum_24h": (DAY_US, "sum(amount)", "sum"),
    "amount_mean_7d": (7 * DAY_US, "avg(amount)", "mean"),
    "amount_stddev_30d": (30 * DAY_US, "stddev_pop(amount)", "std"),
    "merchant_distinct_count_24h": (DAY_US, "count(DISTINCT merchant)", "n_unique"),
}


@dataclass
class WindowData:
    """Events (arrival order) and query points, as numpy columns."""

    ent: np.ndarray
    ts: np.ndarray
    amount: np.ndarray
    merchant: np.ndarray
    q_ent: np.ndarray
    q_ts: np.ndarray

    @property
    def columns(self) -> dict[str, np.ndarray]:
        return {"amount": self.amount, "merchant": self.merchant}


def window_data(n_events: int, n_entities: int, n_queries: int, seed: int = 0) -> WindowData:
    """Uniform random events; 10% of queries sit exactly on an event or on a window edge."""
    rng = np.random.default_rng(seed)
    ent = rng.integers(0, n_entities, n_events)
    ts = rng.integers(0, SPAN_DAYS * DAY_US, n_events)
    amount = np.round(rng.lognormal(3, 1, n_events), 2)
    amount[rng.random(n_events) < 0.01] = np.nan  # nulls: skipped by every aggregate
    merchant = rng.integers(0, 5_000, n_events)
    q_ent = rng.integers(0, n_entities, n_queries)
    q_ts = rng.integers(0, (SPAN_DAYS + 1) * DAY_US, n_queries)
    k = n_queries // 20
    pick = rng.integers(0, n_events, 2 * k)
    q_ent[:k], q_ts[:k] = ent[pick[:k]], ts[pick[:k]]  # an event exactly at t: in
    edge = rng.choice(np.array([H_US, DAY_US, 7 * DAY_US]), k)
    q_ent[k : 2 * k], q_ts[k : 2 * k] = ent[pick[k:]], ts[pick[k:]] + edge  # at t - w: out
    return WindowData(ent, ts, amount, merchant, q_ent, q_ts)


def _arrow_tables(d: WindowData) -> tuple[Any, Any]:
    import pyarrow as pa

    events = pa.table(
        {
            "ent": d.ent,
            "ts": d.ts,
            "amount": pa.array(d.amount, mask=np.isnan(d.amount)),
            "merchant": d.merchant,
        }
    )
    queries = pa.table({"qid": np.arange(d.q_ent.size), "ent": d.q_ent, "ts": d.q_ts})
    return events, queries


def duckdb_sql() -> str:
    """One statement: events and queries in one table, RANGE frames over ts per entity.

    ``RANGE BETWEEN w - 1 PRECEDING AND CURRENT ROW`` over integer microseconds is exactly
    ``(t - w, t]``, and CURRENT ROW takes every peer, so events at exactly t are in.
    """
    windows = sorted({w for w, _, _ in FEATURES.values()})
    name = {w: f"w{i}" for i, w in enumerate(windows)}
    cols = []
    for out, (w, agg, _) in FEATURES.items():
        expr = f"{agg} OVER {name[w]}"
        cols.append(
            f"coalesce({expr}, 0) AS {out}" if agg.startswith("sum") else f"{expr} AS {out}"
        )
    frames = ", ".join(
        f"{name[w]} AS (PARTITION BY ent ORDER BY ts RANGE BETWEEN {w - 1} PRECEDING "
        "AND CURRENT ROW)"
        for w in windows
    )
    return (
        "WITH u AS (SELECT ent, ts, amount, merchant, NULL::BIGINT AS qid FROM e "
        "UNION ALL SELECT ent, ts, NULL::DOUBLE, NULL::BIGINT, qid FROM q) "
        f"SELECT qid, {', '.join(cols)} FROM u WINDOW {frames} "
        "QUALIFY qid IS NOT NULL ORDER BY qid"
    )


class DuckDBFloor:
    """The six features in DuckDB (window functions), in query order, as float64 arrays."""

    def __init__(self, d: WindowData) -> None:
        import duckdb

        self.con = duckdb.connect()
        events, queries = _arrow_tables(d)
        self.con.register("e", events)
        self.con.register("q", queries)
        self.sql = duckdb_sql()

    def __call__(self) -> dict[str, np.ndarray]:
        res = self.con.execute(self.sql).fetchnumpy()
        return {k: _filled(res[k]) for k in FEATURES}

    def close(self) -> None:
        self.con.close()


class PolarsFloor:
    """The six features with polars ``rolling(closed="right", group_by=entity)``, query order.

    Events and queries go in one frame sorted by (entity, ts, events first); one rolling pass
    per distinct window length; the query rows are kept.
    """

    def __init__(self, d: WindowData) -> None:
        import polars as pl

        events, queries = _arrow_tables(d)
        self.events = pl.from_arrow(events)
        self.queries = pl.from_arrow(queries)

    def __call__(self) -> dict[str, np.ndarray]:
        import polars as pl

        ev = self.events.with_columns(qid=pl.lit(None, pl.Int64))
        q = self.queries.select(
            "ent",
            "ts",
            amount=pl.lit(None, pl.Float64),
            merchant=pl.lit(None, pl.Int64),
            qid="qid",
        )
        u = pl.concat([ev, q]).sort("ent", "ts", "qid", nulls_last=False)
        by_window: dict[int, list[pl.Expr]] = {}
        for out, (w, _, fn) in FEATURES.items():
            by_window.setdefault(w, []).append(_polars_agg(fn).alias(out))
        parts = [u.select("qid")]
        for w, aggs in by_window.items():
            rolled = u.rolling("ts", period=f"{w}i", closed="right", group_by="ent").agg(aggs)
            parts.append(rolled.drop("ent", "ts"))
        res = pl.concat(parts, how="horizontal").filter(pl.col("qid").is_not_null()).sort("qid")
        return {k: res[k].cast(pl.Float64).fill_null(np.nan).to_numpy() for k in FEATURES}


def _polars_agg(fn: str) -> pl.Expr:
    import polars as pl

    if fn == "std":
        return pl.col("amount").std(ddof=0)
    if fn == "n_unique":
        return pl.col("merchant").drop_nulls().n_unique()
    return getattr(pl.col("amount"), fn)()


def _filled(col: Any) -> np.ndarray:
    return np.ma.filled(np.ma.asarray(col).astype(np.float64), np.nan)


def mismatches(
    ours: dict[str, np.ndarray], other: dict[str, np.ndarray], *, rtol: float = 1e-9
) -> dict[str, str]:
    """Output name -> first disagreement (NaN = null on both sides; atol 1e-6 for stddev ~0)."""
    bad = {}
    for name in FEATURES:
        a = ours[name].astype(np.float64)
        b = other[name]
        close = np.isclose(a, b, rtol=rtol, atol=1e-6, equal_nan=True)
        if not close.all():
            i = int(np.flatnonzero(~close)[0])
            bad[name] = (
                f"{int((~close).sum())} rows differ, e.g. row {i}: ours {a[i]!r} vs {b[i]!r}"
            )
    return bad


# ---------------------------------------------------------------------------- row transform


@transform
def risk(amount: float, mean: float) -> float:
    """A typical derived feature: how far above its mean an amount is, damped, 0 below."""
    z = (amount - mean) / (abs(mean) + 1.0)
    if z > 0:
        return math.tanh(z) * math.log1p(abs(amount))
    return 0.0


def risk_numpy(amount: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """``risk`` written the usual numpy way (both branches over whole columns, then where)."""
    z = (amount - mean) / (np.abs(mean) + 1.0)
    return np.where(z > 0, np.tanh(z) * np.log1p(np.abs(amount)), 0.0)


# ---------------------------------------------------------------------------- kernel start

START_CHILD = """
import json, sys, time
t0 = time.perf_counter()
import numpy as np
from featurestore.field import Field
from featurestore.types import Float64
from featurestore.transforms import (Aggregation, OnDemandFeature, OnlineWindows,
    compile_plan, compute_window_features, load_module_from_path, transform)
t1 = time.perf_counter()
mod = load_module_from_path(sys.argv[1])
risk = transform(mod.risk).compile()
odf = OnDemandFeature(mod.ratio, inputs=["amount", "mean"], output=Field("r", Float64))
odf.compile()
t2 = time.perf_counter()
plan = compile_plan([Aggregation("a", f, ["1h", "1d"]) for f in
                     ("count", "sum", "mean", "min", "max", "last", "stddev")]
                    + [Aggregation("k", "distinct_count", ["1d"])])
n = 1000
e = np.arange(n) % 10; ts = np.arange(n) * 10**6
cols = {"a": np.random.rand(n), "k": np.arange(n) % 7}
compute_window_features(plan, e, ts, cols, e[:100], ts[:100], parallel=1)
t3 = time.perf_counter()
on = OnlineWindows(plan); st = on.new_state()
on.update(st, 5, {"a": 1.0, "k": 3}); on.read(on.decode(on.encode(st)), 10)
on.ingest(st, ts[:10], {"a": cols["a"][:10], "k": cols["k"][:10]})
t4 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "row+on_demand": t2 - t1, "offline": t3 - t2,
                  "online": t4 - t3, "total": t4 - t0}))
"""

START_USER_DEFS = """
import math

def risk(amount: float, mean: float) -> float:
    z = (amount - mean) / (abs(mean) + 1.0)
    return math.tanh(z) * math.log1p(abs(amount)) if z > 0 else 0.0

def ratio(amount: float, mean: float) -> float:
    return amount / (mean + 1.0)
"""


def start_times(workdir: Any, runs: int = 3) -> list[dict[str, float]]:
    """Seconds per phase of fresh processes sharing one empty NUMBA_CACHE_DIR: the first
    compiles every kernel (row, on-demand, offline window, online), the next load the cache."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    defs = Path(workdir) / "user_defs.py"
    defs.write_text(START_USER_DEFS)
    env = dict(os.environ, NUMBA_CACHE_DIR=str(Path(workdir) / "numba_cache"))
    out = []
    for _ in range(runs):
        proc = subprocess.run(
            [sys.executable, "-c", START_CHILD, str(defs)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        )
        out.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return out
