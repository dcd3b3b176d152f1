"""The defining test: offline kernel == online state (bit for bit) == plain-Python oracle."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featurestore.transforms import (
    Aggregation,
    OnlineWindows,
    compile_plan,
    compute_window_features,
    transform,
)
from featurestore.transforms.aggregation import FUNCTIONS
from tests.transforms._wf_helpers import close, oracle, same

S = 1_000_000  # one second in microseconds; timestamps sit on a 1 s grid so edges are hit often


@transform
def positive(x: float) -> bool:
    return x > 0.0


positive.compile()

PLAN = compile_plan(
    [Aggregation("x", f, ["3s", "10s"]) for f in FUNCTIONS if f != "distinct_count"]
    + [
        Aggregation("k", "distinct_count", ["3s", "10s"]),
        Aggregation("x", "sum", ["10s"], name="pos_sum", where=positive),
        Aggregation("x", "count", ["10s"], name="pos_count", where=positive),
    ]
)

values = st.one_of(
    st.integers(-40, 40).map(lambda i: i / 8),  # ties and exact cancellation
    st.floats(-1e6, 1e6, allow_nan=False, allow_subnormal=False),
    st.just(math.nan),  # null
    st.sampled_from([math.inf, -math.inf, 1e300, -1e300, 1e-300, 0.1, -0.0]),
)
events_st = st.lists(
    st.tuples(st.integers(0, 2), st.integers(0, 30), values, st.integers(0, 4)),
    max_size=60,
)
queries_st = st.lists(st.tuples(st.integers(0, 3), st.integers(-2, 35)), min_size=1, max_size=25)


def _offline(events, queries):
    e = np.array([r[0] for r in events], dtype=np.int64)
    ts = np.array([r[1] * S for r in events], dtype=np.int64)
    x = np.array([r[2] for r in events], dtype=np.float64)
    k = np.array([r[3] for r in events], dtype=np.int64)
    qe = np.array([q[0] for q in queries], dtype=np.int64)
    qt = np.array([q[1] * S for q in queries], dtype=np.int64)
    return compute_window_features(PLAN, e, ts, {"x": x, "k": k}, qe, qt)


def _online(events, queries, roundtrip):
    """Per query (in time order) ingest, in arrival order, the events with ts <= t, then read."""
    online = OnlineWindows(PLAN, on_late="count")
    states = {}
    done = [False] * len(events)
    results = [None] * len(queries)
    for qi in sorted(range(len(queries)), key=lambda i: queries[i][1]):
        qe, qt = queries[qi]
        for i, (e, ts, v, k) in enumerate(events):
            if not done[i] and ts <= qt:
                st_ = states.setdefault(e, online.new_state())
                online.update(st_, ts * S, {"x": v, "k": k})
                done[i] = True
        state = states.get(qe) or online.new_state()
        if roundtrip:
            state = online.decode(online.encode(state))
            if qe in states:
                states[qe] = state
        results[qi] = online.read(state, qt * S)
    return results


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=events_st, queries=queries_st, roundtrip=st.booleans())
def test_offline_online_and_oracle_agree(events, queries, roundtrip):
    off = _offline(events, queries)
    on = _online(events, queries, roundtrip)
    rows = [(e, ts * S, v, k) for e, ts, v, k in events]
    pos_rows = [(e, ts, v if v > 0 else math.nan, k) for e, ts, v, k in rows]
    for qi, (qe, qt) in enumerate(queries):
        for o in PLAN.outputs:
            got_off = off[o.name][qi]
            got_on = on[qi][o.name]
            assert same(float(got_off), float(got_on)), (o.name, qi, got_off, got_on)
            src = pos_rows if o.name.startswith("pos_") else rows
            want = oracle(o.function, src, qe, qt * S, o.window_us)
            if o.is_int:
                assert got_off == want, (o.name, qi, got_off, want)
                assert off[o.name].dtype == np.int64
            elif o.function in ("sum", "mean", "min", "max", "last"):
                # sums are exact then rounded once, like math.fsum: equal to the last bit
                assert same(float(got_off), float(want)), (o.name, qi, got_off, want)
            else:
                assert close(float(got_off), float(want)), (o.name, qi, got_off, want)


def test_window_edges_are_open_on_the_left_and_closed_on_the_right():
    plan = compile_plan([Aggregation("x", "count", ["10s"]), Aggregation("x", "sum", ["10s"])])
    ts = np.array([0, 10 * S], dtype=np.int64)
    out = compute_window_features(
        plan, np.zeros(2, np.int64), ts, {"x": np.array([1.0, 2.0])},
        np.zeros(4, np.int64), np.array([-1, 0, 10 * S - 1, 10 * S], dtype=np.int64),
    )  # fmt: skip
    # t=10s: the event at 0 = t - w is out, the event at t is in
    assert out["x_count_10s"].tolist() == [0, 1, 1, 1]
    assert out["x_sum_10s"].tolist() == [0.0, 1.0, 1.0, 2.0]


def test_empty_window_gives_zero_counts_and_null_others():
    plan = compile_plan([Aggregation("x", f, ["1h"]) for f in FUNCTIONS])
    out = compute_window_features(
        plan, np.array([1], np.int64), np.array([0], np.int64), {"x": np.array([5.0])},
        np.array([2, 1], np.int64), np.array([0, 7_200 * S], dtype=np.int64),
    )  # fmt: skip
    for name, col in out.items():
        if name.split("_")[1] in ("count", "distinct"):
            assert col.tolist() == [0, 0]
        elif "_sum_" in name:
            assert col.tolist() == [0.0, 0.0]
        else:
            assert np.isnan(col).all(), name


def test_sum_is_exact_where_naive_summation_loses_everything():
    plan = compile_plan([Aggregation("x", "sum", ["1h"]), Aggregation("x", "var", ["1h"])])
    x = np.array([1e16, 1.0, -1e16, 1.0, 3.0])
    ts = np.arange(5, dtype=np.int64)
    out = compute_window_features(
        plan, np.zeros(5, np.int64), ts, {"x": x}, np.zeros(2, np.int64),
        np.array([4, 3_600 * S + 2], dtype=np.int64),
    )  # fmt: skip
    assert out["x_sum_1h"].tolist() == [5.0, 4.0]  # second: the first three evicted exactly
    assert out["x_var_1h"][1] == 1.0  # var([1.0, 3.0]), no residue of the evicted 1e16s
    rows = [(0, int(t), float(v), 0) for t, v in zip(ts, x, strict=True)]
    assert close(out["x_var_1h"][0], oracle("var", rows, 0, 4, 3_600 * S), 1e-12)


def test_single_entity_with_1e5_events_matches_online_and_reference():
    rng = np.random.default_rng(7)
    n = 100_000
    ts = np.sort(rng.integers(0, 5_000_000, n)) * 1_000  # ~ 50 events per second of 1.4 h
    x = np.round(rng.normal(50, 20, n), 2)
    x[rng.random(n) < 0.05] = np.nan
    k = rng.integers(0, 1_000, n)
    plan = compile_plan(
        [Aggregation("x", f, ["1m", "30m"]) for f in ("count", "sum", "mean", "min", "max",
                                                      "last", "stddev")]
        + [Aggregation("k", "distinct_count", ["1m", "30m"])]
    )  # fmt: skip
    q = np.sort(rng.integers(0, 5_100_000, 60)) * 1_000
    off = compute_window_features(
        plan, np.zeros(n, np.int64), ts, {"x": x, "k": k}, np.zeros(q.size, np.int64), q
    )
    online = OnlineWindows(plan)
    state = online.new_state()
    cols = {"x": x, "k": k}
    j = 0
    for qi, t in enumerate(q):
        hi = np.searchsorted(ts, t, side="right")
        if hi > j:
            online.ingest(state, ts[j:hi], {c: v[j:hi] for c, v in cols.items()})
            j = hi
        got = online.read(state, int(t))
        for o in plan.outputs:
            assert same(float(off[o.name][qi]), float(got[o.name])), (o.name, qi)
        lo = np.searchsorted(ts, t - 30 * 60 * S, side="right")
        win = x[lo:hi][~np.isnan(x[lo:hi])]
        assert off["x_count_30m"][qi] == win.size
        assert off["x_sum_30m"][qi] == math.fsum(win)
        assert off["k_distinct_count_30m"][qi] == np.unique(k[lo:hi]).size
        if win.size:
            assert off["x_min_30m"][qi] == win.min() and off["x_max_30m"][qi] == win.max()
            assert close(off["x_stddev_30m"][qi], float(np.std(win)), 1e-9)
            assert off["x_last_30m"][qi] == win[-1]


def test_parallel_kernel_equals_serial_kernel_bit_for_bit():
    rng = np.random.default_rng(3)
    n, m = 200_000, 50_000
    ent = rng.integers(0, 20_000, n)
    ts = rng.integers(0, 1_000, n) * S
    x = rng.normal(0, 1e3, n)
    x[rng.random(n) < 0.1] = np.nan
    cols = {"x": x, "k": rng.integers(0, 50, n)}
    qe, qt = rng.integers(0, 20_001, m), rng.integers(0, 1_100, m) * S
    serial = compute_window_features(PLAN, ent, ts, cols, qe, qt, parallel=1)
    par = compute_window_features(PLAN, ent, ts, cols, qe, qt, parallel=2)
    for name in PLAN.names:
        a, b = serial[name], par[name]
        assert a.dtype == b.dtype
        assert np.array_equal(a.view(np.int64), b.view(np.int64)), name
