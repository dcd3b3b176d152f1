"""Batched window reads: one kernel call for many encoded states gives, per entity, the bits and
the status of decode + read_array (absent, late, version 1, tiles, layout errors included)."""

from __future__ import annotations

import math
import struct
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from featurestore.errors import DefinitionError
from featurestore.online._computed import WindowPlan
from featurestore.online.base import Status
from featurestore.transforms import (
    Aggregation,
    LateEventError,
    OnlineWindows,
    compile_plan,
    compute_window_features,
)
from featurestore.transforms.online import ABSENT, LATE, READ, TILE_MIN_EVENTS
from tests.test_windows_consistency import (  # noqa: F401 (defs_file: the shared fixture)
    REFS,
    H,
    defs_file,
    make_events,
    make_store,
    now_t,
    write_repo,
)
from tests.transforms.test_window_tiles import positive

S = 1_000_000
SCHEMA = 7
PREFIX = struct.pack("<4sI", b"FSW1", SCHEMA)  # online/windows.py's value head
FNS = ("count", "sum", "mean", "min", "max", "last", "var", "stddev", "distinct_count")
WINDOWS = ("2s", "5s", "10s", "30s")

aggs_st = st.sets(
    st.tuples(st.sampled_from(FNS), st.sampled_from(WINDOWS), st.booleans()), min_size=1, max_size=7
)
values_st = st.one_of(
    st.integers(-20, 20).map(lambda i: i / 4),  # ties in values
    st.floats(-1e6, 1e6, allow_nan=False, allow_subnormal=False),
    st.just(math.nan),  # a null input
    st.sampled_from([math.inf, -math.inf, 1e300, -1e300, 5e-324, -0.0]),
)
small_st = st.lists(st.tuples(st.integers(0, 40), values_st, st.integers(0, 4)), max_size=40)
# an entity: its events (small list, or a seed for >= TILE_MIN_EVENTS events), then a mangling
entity_st = st.tuples(
    st.one_of(small_st, st.integers(0, 2**31)),
    st.sampled_from(
        ["ok"] * 5 + ["v1"] * 3 + ["none", "short", "magic", "schema", "trunc", "other"]
    ),
)


def _plan(aggs: set[tuple[str, str, bool]]) -> Any:
    chosen: dict[tuple[str, str, bool], Aggregation] = {}
    for fn, w, where in sorted(aggs):
        if fn == "distinct_count":
            chosen[(fn, w, False)] = Aggregation("k", fn, [w])
        elif where:
            chosen[(fn, w, True)] = Aggregation("x", fn, [w], name=f"pos_{fn}", where=positive)
        else:
            chosen[(fn, w, False)] = Aggregation("x", fn, [w])
    return compile_plan(list(chosen.values()))


def _events(spec: list | int) -> list[tuple[int, float, int]]:
    if isinstance(spec, list):
        return [(t * S, v, k) for t, v, k in spec]
    rng = np.random.default_rng(spec)
    n = int(rng.integers(TILE_MIN_EVENTS, TILE_MIN_EVENTS + 150))
    ts = np.sort(rng.integers(0, 40 * S, n)) if rng.random() < 0.7 else rng.integers(0, 40 * S, n)
    ts[rng.random(n) < 0.2] = 20 * S  # ties
    x = np.round(rng.normal(0, 50, n), int(rng.integers(0, 4)))
    x[rng.random(n) < 0.1] = np.nan
    return list(zip(ts.tolist(), x.tolist(), rng.integers(0, 6, n).tolist(), strict=True))


def _encode(ow: OnlineWindows, events: list[tuple[int, float, int]]) -> bytes:
    state = ow.new_state()
    if events:
        ow.ingest(
            state,
            np.array([e[0] for e in events], dtype=np.int64),
            {
                "x": np.array([e[1] for e in events], dtype=np.float64),
                "k": np.array([e[2] for e in events], dtype=np.int64),
            },
        )
    return ow.encode(state)


def _mangle(ow: OnlineWindows, blob: bytes, how: str, rng: np.random.Generator) -> bytes | None:
    if how == "v1":  # the 8-field header of version 1 (no tiles) when the state has none
        head = np.frombuffer(blob, "<i8", 12)
        if head[9] == 0:
            blob = np.array([1, *head[1:8]], dtype="<i8").tobytes() + blob[96:]
    elif how == "none":
        return None
    elif how == "short":
        return PREFIX[: int(rng.integers(0, 8))]
    elif how == "magic":
        return b"FSW2" + PREFIX[4:] + blob
    elif how == "schema":
        return struct.pack("<4sI", b"FSW1", SCHEMA + 1) + blob
    elif how == "trunc":  # cut anywhere in the payload: decode raises, and so must the batch
        return PREFIX + blob[: int(rng.integers(0, len(blob)))]
    elif how == "other":  # a state of another plan: DefinitionError
        other = OnlineWindows(compile_plan([Aggregation("y", "sum", ["1h"])]))
        return PREFIX + _encode(other, [])
    return PREFIX + blob


def _reference(ow: OnlineWindows, values: list, t: int, prefix: bytes) -> Any:
    """decode_value's rules + decode + read_array per value; the first exception, if any."""
    n_out = len(ow.plan.outputs)
    out = np.full((len(values), n_out), np.nan)
    code = np.full(len(values), ABSENT, dtype=np.int8)
    wm = np.zeros(len(values), dtype=np.int64)
    for i, v in enumerate(values):
        if v is None or len(v) < len(prefix) or bytes(v[: len(prefix)]) != prefix:
            continue
        try:
            state = ow.decode(memoryview(v)[len(prefix) :])
        except Exception as exc:
            return exc
        wm[i] = state.watermark or 0
        try:
            out[i] = ow.read_array(state, t)
            code[i] = READ
        except LateEventError:
            code[i] = LATE
    return out, code, wm


def _bits(a: np.ndarray) -> list:
    return np.ascontiguousarray(a, dtype=np.float64).view(np.int64).tolist()


def _view(ow: OnlineWindows) -> Any:
    """The parts of a FeatureView that WindowPlan and decode_value use."""
    window = SimpleNamespace(plan=ow.plan, online=lambda: ow)
    return SimpleNamespace(
        window=window, schema_version=SCHEMA, join_keys=("id",), field=lambda f: f
    )


def _same_lists(a: list[list[Any]], b: list[list[Any]]) -> bool:
    def key(x: Any) -> Any:
        return (type(x), np.float64(x).view(np.int64) if isinstance(x, float) else x)

    return [[key(x) for x in col] for col in a] == [[key(x) for x in col] for col in b]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    aggs=aggs_st,
    entities=st.lists(entity_st, min_size=0, max_size=10),
    lateness=st.sampled_from([0, 3 * S, 100 * S]),
    times=st.lists(st.one_of(st.integers(30, 80), st.integers(-5, 80)), min_size=1, max_size=3),
    seed=st.integers(0, 2**16),
    no_prefix=st.integers(0, 9),
)
def test_batch_read_equals_decode_and_read_array(
    aggs, entities, lateness, times, seed, no_prefix
) -> None:
    rng = np.random.default_rng(seed)
    ow = OnlineWindows(_plan(aggs), allowed_lateness_us=lateness, on_late="count")
    values = [_mangle(ow, _encode(ow, _events(ev)), how, rng) for ev, how in entities]
    for v in values:
        if v is not None and len(v) >= 48 and v[:8] == PREFIX:
            head = np.frombuffer(v, "<i8", 5, 8)
            event("version 1" if head[0] == 1 else "tiled" if len(v) > 104 and
                  np.frombuffer(v, "<i8", 1, 80)[0] else f"version {head[0]}")  # fmt: skip
    prefix = PREFIX
    if no_prefix == 0:  # OnlineWindows.read_values without a prefix: raw encoded states
        values = [None if v is None or v[:8] != PREFIX else v[8:] for v in values]
        prefix = b""
    wms = [int(np.frombuffer(v, "<i8", 1, len(prefix) + 32)[0]) for v in values if v and
           len(v) >= len(prefix) + 40 and v[: len(prefix)] == prefix]  # fmt: skip
    # grid times, and just before / at each watermark minus the allowed lateness (late edge)
    read_at = [t * S + d for t in times for d in (0, 1)] + [
        w - lateness + d for w in wms[:2] for d in (-1, 0)
    ]
    clean = [v for v in values if not isinstance(_reference(ow, [v], 0, prefix), Exception)]
    for t in read_at:
        want = _reference(ow, values, t, prefix)
        if isinstance(want, Exception):  # the batch raises as the first failing decode does
            event(f"raises {type(want).__name__}")
            with pytest.raises(type(want)) as info:
                ow.read_values(values, t, prefix)
            assert str(info.value) == str(want)
        want = _reference(ow, clean, t, prefix)
        out, code, wm = ow.read_values(clean, t, prefix)
        for c in set(code.tolist()):
            event(f"code {c}")
        assert code.tolist() == want[1].tolist(), t
        assert wm.tolist() == want[2].tolist()
        assert _bits(out) == _bits(want[0]), (t, out, want[0])
    # the lookup's lists: one kernel call == the per-entity path (ints, None for null, statuses)
    if prefix:
        names = [o.name for o in ow.plan.outputs]
        feats = tuple(rng.permutation(names)[: int(rng.integers(1, len(names) + 1))].tolist())
        for plan in (WindowPlan(_view(ow), tuple(names)), WindowPlan(_view(ow), feats)):
            try:
                plan._result_one(values, read_at[0])
            except Exception as exc:
                with pytest.raises(type(exc)):
                    plan._result_batch(values, read_at[0])
            event(f"lookup of {min(len(clean), 2)}+ entities")
            for t in read_at:
                one = plan._result_one(clean, t)
                many = plan._result_batch(clean, t)
                assert _same_lists(many.served_lists(), one.served_lists())
                assert many.status.tolist() == one.status.tolist()
                assert many.decoded.event_ts.tolist() == one.decoded.event_ts.tolist()
                assert many.decoded.present.tolist() == one.decoded.present.tolist()


keys_st = st.one_of(
    st.integers(0, 4).map(float), st.just(math.nan), st.sampled_from([-0.0, 0.0, 2.5, math.inf])
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    events=st.lists(st.tuples(st.integers(0, 40), values_st, keys_st), max_size=60),
    tiles=st.booleans(),
)
def test_distinct_count_of_nullable_filtered_keys_equals_offline(events, tiles) -> None:
    plan = compile_plan(
        [
            Aggregation("k", "distinct_count", ["3s", "30s"]),
            Aggregation("k", "distinct_count", ["10s"], name="pos_k", where=positive),
            Aggregation("x", "sum", ["10s"]),
        ]
    )
    ow = OnlineWindows(plan, allowed_lateness_us=100 * S, on_late="count")
    if tiles:
        ow.tile_min_events = 0
    ts = np.array([e[0] * S for e in events], dtype=np.int64)
    cols = {
        "x": np.array([e[1] for e in events], dtype=np.float64),
        "k": np.array([e[2] for e in events], dtype=np.float64),  # NaN keys: not counted
    }
    state = ow.new_state()
    ow.ingest(state, ts, cols)
    blob = PREFIX + ow.encode(state)
    times = [t * S + d for t in range(-2, 75, 3) for d in (0, 1)]
    off = compute_window_features(
        plan, np.zeros(ts.size, np.int64), ts, cols, np.zeros(len(times), np.int64), np.array(times)
    )
    for qi, t in enumerate(times):
        out, code, _ = ow.read_values([blob, None, blob], t, PREFIX)
        assert code.tolist() == [READ, ABSENT, READ]
        want = [float(off[o.name][qi]) for o in plan.outputs]
        assert _bits(out[0]) == _bits(np.array(want)) == _bits(out[2]), (t, out[0], want)


def test_codes_cover_absent_late_and_tiled_states_in_one_batch() -> None:
    plan = compile_plan(
        [Aggregation("x", "stddev", ["30s"]), Aggregation("k", "distinct_count", ["10s"])]
    )
    ow = OnlineWindows(plan, allowed_lateness_us=5 * S, on_late="count")
    big = _encode(ow, _events(3))
    assert np.frombuffer(big, "<i8", 12)[9] > 0  # tiled
    small = _encode(ow, [(S, 1.0, 1), (2 * S, math.nan, 2), (2 * S, 4.0, 2)])
    values = [PREFIX + big, None, PREFIX + small, b"FSW", PREFIX + _encode(ow, [])]
    out, code, wm = ow.read_values(values, 41 * S, PREFIX)
    assert code.tolist() == [READ, ABSENT, READ, ABSENT, READ]
    assert wm.tolist()[1:] == [0, 2 * S, 0, 0]
    out, code, _ = ow.read_values(values, -3 * S, PREFIX)  # 2 s - 5 s lateness: still exact
    assert code.tolist()[2] == READ
    out, code, _ = ow.read_values(values, -3 * S - 1, PREFIX)
    assert code.tolist() == [LATE, ABSENT, LATE, ABSENT, READ]
    assert np.isnan(out[[0, 2]]).all()
    with pytest.raises(DefinitionError, match="does not match the plan"):
        ow.read_values(
            [PREFIX + small, _mangle(ow, small, "other", np.random.default_rng())], 0, PREFIX
        )


def test_lookup_of_50_entities_equals_50_one_entity_lookups(
    tmp_path: Path,
    defs_file: Path,  # noqa: F811 (the fixture imported above)
) -> None:
    rng = np.random.default_rng(11)
    t_us = now_t()
    t0 = t_us - 3 * H  # events up to t0 + 2 h: a read at t0 expires their users
    write_repo(tmp_path, make_events(rng, t0), t0)
    with make_store(tmp_path, defs_file, "embedded") as store:
        store.apply()
        store.materialize(t_us - 72 * H, t_us, views=["tx"])
        users = rng.integers(0, 15, 50).tolist()  # 10, 11: no events; 12..14: unknown
        sub = [REFS[9], REFS[0], REFS[6], REFS[3]]  # some outputs, out of plan order
        for refs in (REFS, sub):
            for now in (t0, t_us):
                many = store.get_online_features(
                    refs, {"user_id": users}, now=now, include_event_timestamps=True
                )
                ones = [
                    store.get_online_features(
                        refs, {"user_id": [u]}, now=now, include_event_timestamps=True
                    )
                    for u in users
                ]
                got = many.to_dict()
                for name, col in got.items():
                    want = [o.to_dict()[name][0] for o in ones]
                    assert _same_lists([col], [want]), (name, col, want)
                for name, col in many.statuses.items():
                    assert col == [o.statuses[name][0] for o in ones], name
                seen = {s for col in many.statuses.values() for s in col}
                must = {Status.EXPIRED} if now == t0 else {Status.PRESENT, Status.NOT_FOUND}
                assert must <= seen, seen
