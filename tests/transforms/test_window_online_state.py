"""Online window state: late events (exact within the horizon, rejected beyond), codec, memory."""

from __future__ import annotations

import numpy as np
import pytest

from featurestore.errors import DefinitionError, FeatureStoreError
from featurestore.transforms import (
    Aggregation,
    LateEventError,
    OnlineWindows,
    compile_plan,
    compute_window_features,
)
from tests.transforms._wf_helpers import same

S = 1_000_000
PLAN = compile_plan(
    [
        Aggregation("amount", "sum", ["10s", "1m"]),
        Aggregation("amount", "last", ["1m"]),
        Aggregation("amount", "mean", ["1m"]),
        Aggregation("merchant", "distinct_count", ["1m"]),
    ]
)


def _offline_at(events, t):
    ts = np.array([e[0] for e in events], dtype=np.int64)
    cols = {
        "amount": np.array([e[1] for e in events], dtype=np.float64),
        "merchant": np.array([e[2] for e in events], dtype=np.int64),
    }
    out = compute_window_features(
        PLAN, np.zeros(ts.size, np.int64), ts, cols, np.zeros(1, np.int64), np.array([t])
    )
    return {k: v[0] for k, v in out.items()}


def test_late_event_within_horizon_is_inserted_exactly():
    online = OnlineWindows(PLAN)
    st = online.new_state()
    events = [(50 * S, 1.0, 1), (55 * S, 2.0, 2), (52 * S, 4.0, 3), (55 * S, 8.0, 1)]
    for ts, amount, merchant in events:
        assert online.update(st, ts, {"amount": amount, "merchant": merchant})
    assert st.live("ts").tolist() == [50 * S, 52 * S, 55 * S, 55 * S]
    got = online.read(st, 60 * S)
    want = _offline_at(events, 60 * S)
    assert got["amount_sum_10s"] == 14.0  # (50s, 60s]: the late 4.0 counts
    assert got["amount_last_1m"] == 8.0  # tie at 55 s: the later arrival wins
    assert got["merchant_distinct_count_1m"] == 3
    for name, v in got.items():
        assert same(float(v), float(want[name])), name
    assert st.rejected == 0


def test_event_older_than_horizon_is_rejected_and_raised():
    online = OnlineWindows(PLAN)  # horizon = largest window = 1m
    st = online.new_state()
    online.update(st, 100 * S, {"amount": 1.0, "merchant": 1})
    with pytest.raises(LateEventError, match=r"older than watermark 100000000 minus the horizon"):
        online.update(st, 40 * S, {"amount": 5.0, "merchant": 2})  # 40 s <= 100 s - 60 s
    assert issubclass(LateEventError, FeatureStoreError)
    assert st.rejected == 1 and st.n_events == 1
    assert online.read(st, 100 * S)["amount_sum_1m"] == 1.0


def test_rejected_events_are_counted_when_not_raising():
    online = OnlineWindows(PLAN, on_late="count")
    st = online.new_state()
    ts = np.array([100, 40, 41, 99, 30], dtype=np.int64) * S
    rejected = online.ingest(
        st, ts, {"amount": np.arange(5.0), "merchant": np.arange(5, dtype=np.int64)}
    )
    assert rejected == 2 and st.rejected == 2  # 40 s is on the edge (100 s - 1m): out
    assert st.live("ts").tolist() == [41 * S, 99 * S, 100 * S]


def test_allowed_lateness_widens_the_exact_horizon():
    online = OnlineWindows(PLAN, allowed_lateness_us=60 * S)
    st = online.new_state()
    online.update(st, 100 * S, {"amount": 1.0, "merchant": 1})
    assert online.update(st, 41 * S, {"amount": 5.0, "merchant": 2})  # 41 > 100 - 120
    got = online.read(st, 60 * S)  # a read 40 s behind the watermark is still exact
    assert got["amount_sum_1m"] == 5.0
    with pytest.raises(LateEventError, match="read at"):
        online.read(st, 39 * S)


def test_eviction_keeps_only_the_horizon():
    online = OnlineWindows(PLAN)
    st = online.new_state()
    for i in range(1000):
        online.update(st, i * S, {"amount": float(i), "merchant": i % 7})
    assert st.live("ts")[0] == 940 * S  # (999 s - 60 s, 999 s]
    assert st.n_events == 60
    assert online.read(st, 999 * S)["amount_sum_1m"] == float(sum(range(940, 1000)))


def test_encode_decode_roundtrip_and_documented_size():
    online = OnlineWindows(PLAN)
    st = online.new_state()
    for i in range(100):
        online.update(st, i * S // 2, {"amount": i * 0.1, "merchant": i % 9})
    blob = online.encode(st)
    n_in, n_keys = len(PLAN.inputs), len(PLAN.distinct_inputs)
    assert len(blob) == 96 + st.n_events * (8 + 9 * n_in + 8 * n_keys)  # no tiles under 256
    back = online.decode(blob)
    assert back.n_events == st.n_events and back.watermark == st.watermark
    assert online.read(back, 60 * S) == online.read(st, 60 * S)
    online.update(back, 61 * S, {"amount": 3.0, "merchant": 1})  # decoded state is writable
    assert back.n_events >= 1


def test_decode_rejects_a_state_of_another_plan():
    other = OnlineWindows(compile_plan([Aggregation("a", "sum", ["1h"])]))
    blob = other.encode(other.new_state())
    with pytest.raises(DefinitionError, match="does not match the plan"):
        OnlineWindows(PLAN).decode(blob)
