"""Window engine benchmark, not collected by pytest: python tests/transforms/bench_windows.py

Offline: 10M events x 100k entities x 6 aggregations at 1M query points (timed by phase).
Online: one-event update and one-entity read of the 6 features, in microseconds (p50/p99).
Row transform: numba vectorized vs the same function in plain numpy, rows/s.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from featurestore.transforms import (
    Aggregation,
    OnlineWindows,
    compile_plan,
    compute_window_features,
    prepare_inputs,
    transform,
)
from featurestore.transforms.offline import compute_prepared

S = 1_000_000
DAY = 86_400 * S

AGGS = [
    Aggregation("amount", "count", ["1h", "24h"]),
    Aggregation("amount", "mean", ["7d"]),
    Aggregation("amount", "stddev", ["30d"]),
    Aggregation("amount", "sum", ["24h"]),
    Aggregation("merchant", "distinct_count", ["24h"]),
]


def data(n_events: int, n_entities: int, n_queries: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    ent = rng.integers(0, n_entities, n_events)
    ts = rng.integers(0, 60 * DAY, n_events)
    amount = np.round(rng.lognormal(3, 1, n_events), 2)
    merchant = rng.integers(0, 5_000, n_events)
    q_ent = rng.integers(0, n_entities, n_queries)
    q_ts = rng.integers(0, 61 * DAY, n_queries)
    return ent, ts, {"amount": amount, "merchant": merchant}, q_ent, q_ts


def bench_offline(n_events: int, n_entities: int, n_queries: int) -> None:
    plan = compile_plan(AGGS)
    small = data(10_000, 100, 1_000)
    compute_window_features(plan, *small)  # load kernels
    ent, ts, cols, q_ent, q_ts = data(n_events, n_entities, n_queries)
    for parallel in (1, None):
        c0, t0 = time.process_time(), time.perf_counter()
        vals, valid, keys = prepare_inputs(plan, cols)
        t1 = time.perf_counter()
        compute_prepared(plan, ent, ts, vals, valid, keys, q_ent, q_ts, parallel=parallel)
        t2, c2 = time.perf_counter(), time.process_time()
        total = t2 - t0
        print(
            f"offline ({'serial' if parallel == 1 else 'parallel'}): {n_events:,} events x "
            f"{n_entities:,} entities x {len(plan.outputs)} outputs at {n_queries:,} queries: "
            f"wall {total:.2f} s (inputs {t1 - t0:.2f} s, sort+kernel {t2 - t1:.2f} s), "
            f"cpu {c2 - c0:.2f} s = {n_events / total / 1e6:.2f} M events/s, "
            f"{n_queries / total / 1e6:.2f} M queries/s"
        )


def _pct(xs: list[float]) -> str:
    a = np.array(xs) * 1e6
    return f"p50 {np.percentile(a, 50):.1f} us, p99 {np.percentile(a, 99):.1f} us"


def bench_online(events_per_entity: int = 100, reps: int = 20_000) -> None:
    plan = compile_plan(AGGS)
    online = OnlineWindows(plan)
    rng = np.random.default_rng(1)
    span = 30 * DAY
    st = online.new_state()
    ts = np.sort(rng.integers(0, span, events_per_entity))
    online.ingest(st, ts, {"amount": rng.random(ts.size), "merchant": rng.integers(0, 50, ts.size)})
    t = int(ts[-1])
    upd, rd, enc = [], [], []
    for i in range(reps):
        t += span // events_per_entity
        row = {"amount": float(i % 97), "merchant": i % 13}
        a = time.perf_counter()
        online.update(st, t, row)
        b = time.perf_counter()
        online.read_array(st, t)
        c = time.perf_counter()
        online.decode(online.encode(st))
        d = time.perf_counter()
        upd.append(b - a)
        rd.append(c - b)
        enc.append(d - c)
    blob = online.encode(st)
    print(f"online ({st.n_events} buffered events, {len(plan.outputs)} features, "
          f"{len(blob)} bytes/entity):")  # fmt: skip
    print(f"  update one event: {_pct(upd)}")
    print(f"  read 6 features:  {_pct(rd)}")
    print(f"  encode+decode:    {_pct(enc)}")


@transform
def risk(amount: float, mean: float) -> float:
    z = (amount - mean) / (abs(mean) + 1.0)
    return math.tanh(z) * math.log1p(abs(amount)) if z > 0 else 0.0


def risk_numpy(amount: np.ndarray, mean: np.ndarray) -> np.ndarray:
    z = (amount - mean) / (np.abs(mean) + 1.0)
    return np.where(z > 0, np.tanh(z) * np.log1p(np.abs(amount)), 0.0)


def bench_row(n: int = 5_000_000) -> None:
    risk.compile()
    rng = np.random.default_rng(2)
    a = rng.lognormal(3, 1, n)
    m = rng.lognormal(3, 1, n)
    risk.apply_columns({"amount": a[:10], "mean": m[:10]})
    t0 = time.perf_counter()
    out, _ = risk.apply_columns({"amount": a, "mean": m})
    t1 = time.perf_counter()
    ref = risk_numpy(a, m)
    t2 = time.perf_counter()
    assert np.allclose(out, ref, rtol=1e-12)
    a1 = time.perf_counter()
    for i in range(100_000):
        risk(float(a[i]), float(m[i]))
    a2 = time.perf_counter()
    print(f"row transform over {n:,} rows: numba {n / (t1 - t0) / 1e6:.1f} M rows/s, "
          f"numpy {n / (t2 - t1) / 1e6:.1f} M rows/s ({(t2 - t1) / (t1 - t0):.1f}x); "
          f"per-row call {(a2 - a1) / 100_000 * 1e6:.2f} us")  # fmt: skip


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--events", type=int, default=10_000_000)
    p.add_argument("--entities", type=int, default=100_000)
    p.add_argument("--queries", type=int, default=1_000_000)
    args = p.parse_args()
    bench_offline(args.events, args.entities, args.queries)
    bench_online()
    bench_row()
