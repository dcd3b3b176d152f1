"""Batched stream ingestion: one kernel call over many encoded states writes, per entity, the
bytes of decode + ingest_prepared + encode (absent, version 1, tiles, evictions included)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from featurestore.errors import DefinitionError
from featurestore.transforms import Aggregation, LateEventError, OnlineWindows, compile_plan
from featurestore.transforms.online import TILE_MIN_EVENTS
from tests.transforms.test_window_batch_read import (
    PREFIX,
    S,
    _encode,
    _events,
    _mangle,
    _plan,
    aggs_st,
    small_st,
)

entity_st = st.tuples(
    st.one_of(small_st, st.integers(0, 2**31)),  # stored events: a few, or >= 256 (tiled)
    st.sampled_from(["ok"] * 6 + ["v1"] * 3 + ["none", "short", "magic", "schema"]),
    st.integers(0, 12),  # new events
    st.sampled_from(["near", "near", "far"]),  # new events near the watermark or past it
    st.integers(0, 3),  # rejected count written in the stored header
    st.booleans(),  # stored by a plan with another allowed lateness (horizon, tile size)
)


def _with_rejected(blob: bytes, rejected: int) -> bytes:
    """The state with header field 6 (events rejected so far) set, as an older round leaves."""
    head = np.frombuffer(blob, "<i8", 7).copy()
    head[6] = rejected
    return head.tobytes() + blob[56:]


def _new_events(
    ow: OnlineWindows, wm: int | None, m: int, how: str, rng: np.random.Generator
) -> list[tuple[int, float, int]]:
    """``m`` events in arrival order, each newer than the watermark so far minus the horizon."""
    out = []
    h = ow.horizon_us
    for _ in range(m):
        if wm is None:
            t = int(rng.integers(0, 60 * S))
        elif how == "far":  # evicts part or all of the buffer
            t = wm + int(rng.integers(-h + 1, max(2 * h, 5 * S)))
        else:
            t = wm + int(rng.integers(-h + 1, 3 * S))
        if rng.random() < 0.2 and out:
            t = out[-1][0]  # a tie with the previous event
        x = math.nan if rng.random() < 0.15 else float(np.round(rng.normal(0, 30), 1))
        out.append((t, x, int(rng.integers(0, 5))))
        wm = t if wm is None else max(wm, t)
    return out


def _reference(ow: OnlineWindows, value: bytes | None, prefix: bytes, *events: np.ndarray) -> bytes:
    """decode_value's rules, then ``ingest_prepared`` and ``encode`` (the per-entity path)."""
    if value is None or len(value) < len(prefix) or bytes(value[: len(prefix)]) != prefix:
        state = ow.new_state()
    else:
        state = ow.decode(memoryview(value)[len(prefix) :])
    assert ow.ingest_prepared(state, *events) == 0
    return ow.encode(state)


def _watermark(ow: OnlineWindows, value: bytes | None, prefix: bytes) -> int | None:
    if value is None or len(value) < len(prefix) or value[: len(prefix)] != prefix:
        return None
    return ow.decode(memoryview(value)[len(prefix) :]).watermark


def _batch(ow: OnlineWindows, news: list[list[tuple[int, float, int]]]) -> tuple:
    flat = [e for new in news for e in new]
    bounds = np.zeros(len(news) + 1, dtype=np.int64)
    np.cumsum([len(new) for new in news], out=bounds[1:])
    ts = np.array([e[0] for e in flat], dtype=np.int64)
    cols = {
        "x": np.array([e[1] for e in flat], dtype=np.float64),
        "k": np.array([e[2] for e in flat], dtype=np.int64),
    }
    return bounds, ts, *ow.prepare(cols)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    aggs=aggs_st,
    entities=st.lists(entity_st, min_size=0, max_size=8),
    lateness=st.sampled_from([0, 3 * S, 100 * S]),
    tile_min=st.sampled_from([TILE_MIN_EVENTS, TILE_MIN_EVENTS, 0, 6]),
    seed=st.integers(0, 2**16),
    no_prefix=st.integers(0, 5),
)
def test_batch_ingest_equals_decode_ingest_encode(
    aggs, entities, lateness, tile_min, seed, no_prefix
) -> None:
    rng = np.random.default_rng(seed)
    ow = OnlineWindows(_plan(aggs), allowed_lateness_us=lateness, on_late="count")
    values: list[bytes | None] = []
    other = OnlineWindows(ow.plan, allowed_lateness_us=lateness + 7 * S, on_late="count")
    for stored, how, _, _, rejected, foreign in entities:
        blob = _with_rejected(_encode(other if foreign else ow, _events(stored)), rejected)
        values.append(_mangle(ow, blob, how, rng))
    prefix = PREFIX
    if no_prefix == 0:  # raw encoded states, None for the absent ones
        values = [None if v is None or v[:8] != PREFIX else v[8:] for v in values]
        prefix = b""
    ow.tile_min_events = tile_min  # the states stored above keep the default's tiles
    news = [
        _new_events(ow, _watermark(ow, v, prefix), m, far, rng)
        for v, (_, _, m, far, _, _) in zip(values, entities, strict=True)
    ]
    bounds, ts, vals, valid8, kmat = _batch(ow, news)
    got = ow.ingest_encoded(values, prefix, bounds, ts, vals, valid8, kmat)
    assert len(got) == len(values)
    for i, v in enumerate(values):
        a, b = int(bounds[i]), int(bounds[i + 1])
        part = [np.ascontiguousarray(m[:, a:b]) for m in (vals, valid8, kmat)]
        want = _reference(ow, v, prefix, ts[a:b], *part)
        head = np.frombuffer(want, "<i8", 12)
        event("tiles written" if head[9] else "no tiles written")
        if v is not None and len(v) >= len(prefix) + 96 and v[: len(prefix)] == prefix:
            stored = np.frombuffer(v, "<i8", 12, len(prefix))
            event("version 1 read" if stored[0] == 1 else f"stored tiles: {bool(stored[9])}")
        assert got[i] == want, (i, len(got[i]), len(want))
        assert type(got[i]) is bytes


def _ow() -> OnlineWindows:
    plan = compile_plan(
        [
            Aggregation("x", "sum", ["10s"]),
            Aggregation("x", "stddev", ["5s"]),
            Aggregation("k", "distinct_count", ["30s"]),
        ]
    )
    return OnlineWindows(plan, allowed_lateness_us=2 * S, on_late="count")


def test_a_late_event_raises_and_an_empty_batch_is_empty() -> None:
    ow = _ow()
    stored = PREFIX + _encode(ow, [(100 * S, 1.0, 1)])
    bounds, ts, vals, valid8, kmat = _batch(ow, [[(60 * S, 2.0, 2)]])  # 40 s < 100 s - 32 s
    with pytest.raises(LateEventError, match="older than watermark 100000000"):
        ow.ingest_encoded([stored], PREFIX, bounds, ts, vals, valid8, kmat)
    assert ow.ingest_encoded([], PREFIX, np.zeros(1, np.int64), ts[:0], vals, valid8, kmat) == []
    with pytest.raises(ValueError, match="multiple of 8"):
        ow.ingest_encoded([stored], PREFIX[:4], bounds, ts, vals, valid8, kmat)


def test_a_state_of_another_layout_raises_as_decode_does() -> None:
    ow = _ow()
    other = OnlineWindows(compile_plan([Aggregation("y", "sum", ["1h"])]))
    good = PREFIX + _encode(ow, [(1 * S, 1.0, 1)])
    bad = PREFIX + _encode(other, [])
    bounds, ts, vals, valid8, kmat = _batch(ow, [[(2 * S, 2.0, 2)], [(2 * S, 3.0, 3)]])
    with pytest.raises(DefinitionError) as want:
        ow.decode(bad[8:])
    with pytest.raises(DefinitionError) as info:
        ow.ingest_encoded([good, bad], PREFIX, bounds, ts, vals, valid8, kmat)
    assert str(info.value) == str(want.value)
