"""Tiled online reads: merging per-tile exact aggregates gives the offline kernel's bits."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featurestore.errors import DefinitionError
from featurestore.transforms import (
    Aggregation,
    OnlineWindows,
    compile_plan,
    compute_window_features,
    transform,
)
from featurestore.transforms.aggregation import FUNCTIONS
from tests.transforms._wf_helpers import same

S = 1_000_000


@transform
def positive(x: float) -> bool:
    return x > 0.0


positive.compile()

PLAN = compile_plan(
    [Aggregation("x", f, ["3s", "10s", "30s"]) for f in FUNCTIONS if f != "distinct_count"]
    + [
        Aggregation("k", "distinct_count", ["3s", "30s"]),
        Aggregation("x", "sum", ["30s"], name="pos_sum", where=positive),
        Aggregation("x", "max", ["30s"], name="pos_max", where=positive),
    ]
)

values = st.one_of(
    st.integers(-40, 40).map(lambda i: i / 8),
    st.floats(-1e6, 1e6, allow_nan=False, allow_subnormal=False),
    st.just(math.nan),
    st.sampled_from([math.inf, -math.inf, 1e300, -1e300, 1e-300, 5e-324, 0.1, -0.0]),
)
events_st = st.lists(st.tuples(st.integers(0, 40), values, st.integers(0, 4)), max_size=80)
tile_st = st.sampled_from([7, S // 2, S, 2 * S, 3 * S, 5 * S, 8 * S])


def _columns(events):
    return {
        "x": np.array([e[1] for e in events], dtype=np.float64),
        "k": np.array([e[2] for e in events], dtype=np.int64),
    }


def _tiled_online(tile_us: int) -> OnlineWindows:
    online = OnlineWindows(PLAN, allowed_lateness_us=100 * S)
    online.tile_us = tile_us
    online.tile_min_events = 0
    return online


def _offline(events, times):
    ts = np.array([e[0] * S for e in events], dtype=np.int64)
    return compute_window_features(
        PLAN,
        np.zeros(ts.size, dtype=np.int64),
        ts,
        _columns(events),
        np.zeros(len(times), dtype=np.int64),
        np.array(times, dtype=np.int64),
    )


def _assert_equal(online, state, events, times):
    off = _offline(events, times)
    for qi, t in enumerate(times):
        got = online.read_array(state, t)
        for o, out in enumerate(PLAN.outputs):
            assert same(float(got[o]), float(off[out.name][qi])), (out.name, t, got[o])


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=events_st, tile_us=tile_st)
def test_tiled_read_equals_offline_bit_for_bit(events, tile_us):
    online = _tiled_online(tile_us)
    state = online.new_state()
    ts = np.array([e[0] * S for e in events], dtype=np.int64)
    online.ingest(state, ts, _columns(events))  # arrival order: some events are late
    back = online.decode(online.encode(state))
    assert (back.tiles is not None) == (len(events) > 0)
    # every read time on the grid, tile boundaries and window edges included, and off-grid
    times = [t * S for t in range(-2, 75)] + [t * S + 1 for t in range(0, 45, 3)]
    _assert_equal(online, back, events, times)
    raw = online.decode(online.encode(state))
    raw.tiles = None  # the raw scan agrees too
    for t in times[::5]:
        a, b = online.read_array(back, t), online.read_array(raw, t)
        assert a.view(np.int64).tolist() == b.view(np.int64).tolist()


def test_full_tiles_are_merged_at_exact_tile_boundaries():
    online = _tiled_online(S)
    state = online.new_state()
    # events exactly on tile edges (b * S ends tile b - 1) and just after them
    ts = np.array([k * S + d for k in range(40) for d in (0, 1)], dtype=np.int64)
    vals = np.array([(k % 7) * 0.1 - 0.2 for k in range(ts.size)])
    cols = {"x": vals, "k": np.arange(ts.size, dtype=np.int64) % 5}
    online.ingest(state, ts, cols)
    back = online.decode(online.encode(state))
    tids = back.tiles[1]
    assert tids.size == 41  # (b S, (b + 1) S]: each tile holds b S + 1 and (b + 1) S
    times = [k * S + d for k in range(35, 80) for d in (-1, 0, 1)]
    off = compute_window_features(
        PLAN,
        np.zeros(ts.size, np.int64),
        ts,
        cols,
        np.zeros(len(times), np.int64),
        np.array(times, dtype=np.int64),
    )
    for qi, t in enumerate(times):
        got = online.read_array(back, t)
        for o, out in enumerate(PLAN.outputs):
            assert same(float(got[o]), float(off[out.name][qi])), (out.name, t)


def test_sums_over_merged_tiles_stay_exact_under_cancellation():
    online = _tiled_online(S)
    state = online.new_state()
    big = [1e16, 1.0, -1e16, 3.0, 1e-300, 2.5, -2.5] * 20
    ts = np.arange(1, len(big) + 1, dtype=np.int64) * (S // 4)
    online.ingest(state, ts, {"x": np.array(big), "k": np.zeros(len(big), dtype=np.int64)})
    back = online.decode(online.encode(state))
    t = int(ts[-1])
    got = online.read(back, t)
    window = [v for v, e in zip(big, ts, strict=True) if t - 30 * S < e <= t]
    assert got["x_sum_30s"] == math.fsum(window)
    assert got["x_count_30s"] == len(window)


def test_updates_drop_tiles_and_reads_stay_exact():
    online = _tiled_online(2 * S)
    state = online.new_state()
    events = [(i, float(i % 5) - 1.5, i % 3) for i in range(30)]
    online.ingest(state, np.array([e[0] * S for e in events]), _columns(events))
    back = online.decode(online.encode(state))
    assert back.tiles is not None
    online.update(back, 31 * S, {"x": 9.0, "k": 7})
    assert back.tiles is None
    events.append((31, 9.0, 7))
    _assert_equal(online, back, events, [t * S for t in range(31, 70)])
    again = online.decode(online.encode(back))
    assert again.tiles is not None
    _assert_equal(online, again, events, [t * S for t in range(31, 70)])


def test_small_states_keep_no_tiles_and_version_1_still_decodes():
    online = OnlineWindows(PLAN)
    state = online.new_state()
    events = [(i, float(i), i % 4) for i in range(20)]
    online.ingest(state, np.array([e[0] * S for e in events]), _columns(events))
    blob = online.encode(state)
    assert online.decode(blob).tiles is None  # under TILE_MIN_EVENTS
    n, n_in, n_keys = state.n_events, len(PLAN.inputs), len(PLAN.distinct_inputs)
    head = np.frombuffer(blob, "<i8", 12)
    v1 = np.array([1, *head[1:8]], dtype="<i8").tobytes() + blob[96:]
    assert len(v1) == 64 + n * (8 + 9 * n_in + 8 * n_keys)
    old = online.decode(v1)
    _assert_equal(online, old, events, [t * S for t in range(19, 60)])
    bad = np.array([3, *head[1:]], dtype="<i8").tobytes() + blob[96:]
    with pytest.raises(DefinitionError, match="version 3"):
        online.decode(bad)


def test_long_window_state_keeps_at_most_64_tiles_and_reads_the_same():
    online = OnlineWindows(compile_plan([Aggregation("x", "stddev", ["30d"])]))
    day = 86_400 * S
    ts = np.arange(1, 200_001, dtype=np.int64) * (30 * day // 200_000)
    rng = np.random.default_rng(3)
    state = online.new_state()
    online.ingest(state, ts, {"x": rng.normal(50.0, 20.0, ts.size)})
    back = online.decode(online.encode(state))
    assert back.tiles is not None and back.tiles[1].size <= 65
    raw = online.decode(online.encode(state))
    raw.tiles = None
    t = int(ts[-1]) + 3 * day // 7
    assert same(online.read_array(back, t)[0], online.read_array(raw, t)[0])
