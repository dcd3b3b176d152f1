"""The offline window benchmark's computation in DuckDB (a range join), for a same-run ratio.

python -m tests.transforms.bench_duckdb --events 1000000 --entities 10000 --queries 100000
"""

from __future__ import annotations

import argparse
import time

import duckdb
import numpy as np
import pyarrow as pa

from featurestore.transforms import compile_plan, compute_window_features
from tests.transforms.bench_windows import AGGS, DAY, data

H = 3_600_000_000

SQL = f"""
SELECT q.qid,
  count(e.amount) FILTER (WHERE e.ts > q.ts - {H}) AS amount_count_1h,
  count(e.amount) FILTER (WHERE e.ts > q.ts - {24 * H}) AS amount_count_24h,
  avg(e.amount) FILTER (WHERE e.ts > q.ts - {7 * DAY}) AS amount_mean_7d,
  stddev_pop(e.amount) AS amount_stddev_30d,
  coalesce(sum(e.amount) FILTER (WHERE e.ts > q.ts - {24 * H}), 0) AS amount_sum_24h,
  count(DISTINCT e.merchant) FILTER (WHERE e.ts > q.ts - {24 * H}) AS merchant_distinct_count_24h
FROM q LEFT JOIN e ON e.ent = q.ent AND e.ts > q.ts - {30 * DAY} AND e.ts <= q.ts
GROUP BY q.qid ORDER BY q.qid
"""


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--entities", type=int, default=10_000)
    p.add_argument("--queries", type=int, default=100_000)
    a = p.parse_args()
    ent, ts, cols, q_ent, q_ts = data(a.events, a.entities, a.queries)
    plan = compile_plan(AGGS)
    compute_window_features(plan, ent[:1000], ts[:1000], {k: v[:1000] for k, v in cols.items()},
                            q_ent[:10], q_ts[:10])  # fmt: skip
    t0 = time.perf_counter()
    ours = compute_window_features(plan, ent, ts, cols, q_ent, q_ts)
    t1 = time.perf_counter()
    con = duckdb.connect()
    e = pa.table({"ent": ent, "ts": ts, "amount": cols["amount"], "merchant": cols["merchant"]})
    q = pa.table({"qid": np.arange(q_ent.size), "ent": q_ent, "ts": q_ts})
    con.register("e", e)
    con.register("q", q)
    t2 = time.perf_counter()
    res = con.execute(SQL).fetchnumpy()
    t3 = time.perf_counter()
    for name in plan.names:
        want = np.ma.filled(np.ma.asarray(res[name]).astype(np.float64), np.nan)
        got = ours[name].astype(np.float64)
        ok = np.allclose(got, want, rtol=1e-9, atol=1e-6, equal_nan=True)
        assert ok, name
    print(f"{a.events:,} events, {a.queries:,} queries, 6 features: featurestore {t1 - t0:.2f} s, "
          f"duckdb range join {t3 - t2:.2f} s ({(t3 - t2) / (t1 - t0):.1f}x); values agree")  # fmt: skip


if __name__ == "__main__":
    main()
