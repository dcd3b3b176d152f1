"""Training sets mixing plain, window and on-demand views: the edges between them.

* ``as_known=True`` holds for window views as for plain views: an event counts at t only if it
  was known at t (``coalesce(created, event time) <= t``), checked against a slow Python oracle.
* Window views refuse spine keys of another kind exactly where plain views do, and otherwise
  match the same entities (1.0 matches 1, 1.5 and "1" match nothing).
* On-demand features read request fields from the spine only and fetched inputs from the join
  only; the hidden fetched inputs never clash with spine columns or other views' features.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featurestore import FeatureStore
from featurestore.errors import EntityDataError, FeatureStoreError, OfflineStoreError

from ..conftest import online_config

M = 60_000_000  # one minute in microseconds
T0 = 1_767_268_800_000_000  # 2026-01-01 12:00 UTC
DEFS = """
from featurestore import (Aggregation, Entity, FeatureView, Field, Float64, Int64,
                          OnDemandFeatureView, ParquetSource, RequestSource, on_demand_feature)

user = Entity("user", join_keys=["user_id"])
tag = Entity("tag", join_keys=["tag"])
events = ParquetSource("data/events.parquet", created_timestamp_field="created")
plain = FeatureView(name="plain", entities=[user], source=events, schema=[Field("x", Float64)])
win = FeatureView(
    name="win", entities=[user], source=events,
    aggregations=[
        Aggregation("x", "count", ["1h"]),
        Aggregation("x", "sum", ["1h", "3h"]),
        Aggregation("x", "min", ["1h"]),
        Aggregation("x", "max", ["3h"]),
        Aggregation("x", "last", ["3h"]),
    ],
)
ikeys = ParquetSource("data/ikeys.parquet")
kp = FeatureView(name="kp", entities=[user], source=ikeys, schema=[Field("x", Int64)])
kw = FeatureView(name="kw", entities=[user], source=ikeys,
                 aggregations=[Aggregation("x", "last", ["1h"])])
skeys = ParquetSource("data/skeys.parquet")
sp = FeatureView(name="sp", entities=[tag], source=skeys, schema=[Field("x", Int64)])
sw = FeatureView(name="sw", entities=[tag], source=skeys,
                 aggregations=[Aggregation("x", "last", ["1h"])])
p = FeatureView(name="p", entities=[user], source=ParquetSource("data/p.parquet"),
                schema=[Field("amount", Float64), Field("limit", Float64)])
q = FeatureView(name="q", entities=[user], source=ParquetSource("data/q.parquet"),
                schema=[Field("limit", Float64)])
req = RequestSource("req", schema=[Field("amount", Float64)])


@on_demand_feature(inputs=["amount", "p:amount"], output=Field("diff", Float64), sources=[req])
def diff(amount: float, usual: float) -> float:
    return amount - usual


@on_demand_feature(inputs=["amount", "p:limit"], output=Field("ratio", Float64), sources=[req])
def ratio(amount: float, limit: float) -> float:
    return amount / limit


@on_demand_feature(inputs=["amount", "win:x_sum_1h"], output=Field("plus", Float64),
                   sources=[req])
def plus(amount: float, recent: float) -> float:
    return amount + recent


o = OnDemandFeatureView(name="o", sources=[req, p], features=[diff, ratio])
ow = OnDemandFeatureView(name="ow", sources=[req, win], features=[plus])
"""
# (output, function, window in minutes) of view "win"
WIN = [
    ("x_count_1h", "count", 60),
    ("x_sum_1h", "sum", 60),
    ("x_sum_3h", "sum", 180),
    ("x_min_1h", "min", 60),
    ("x_max_3h", "max", 180),
    ("x_last_3h", "last", 180),
]
USERS = [1, 2, 3]
P_AMOUNT = {1: 10.0, 2: 20.5, 3: -4.25}
P_LIMIT = {1: 100.0, 2: 8.0, 3: 0.5}
Q_LIMIT = {1: 7.0, 2: 9.0, 3: 11.0}


def _tstamp(values: list[int | None]) -> pa.Array:
    return pa.array(values, pa.int64()).cast(pa.timestamp("us", tz="UTC"))


def write_events(repo: Path, events: list[dict[str, Any]]) -> None:
    """events: user, ev, cr (int us or None), x (float or None)."""
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array([e["user"] for e in events], pa.int64()),
                "event_timestamp": _tstamp([e["ev"] for e in events]),
                "created": _tstamp([e["cr"] for e in events]),
                "x": pa.array([e["x"] for e in events], pa.float64()),
            }
        ),
        repo / "data" / "events.parquet",
    )


@pytest.fixture(scope="module")
def fs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    repo = tmp_path_factory.mktemp("training_set_edges")
    (repo / "data").mkdir()
    (repo / "definitions.py").write_text(textwrap.dedent(DEFS))
    write_events(repo, [{"user": 1, "ev": T0, "cr": None, "x": 1.0}])
    one_event = {"event_timestamp": _tstamp([T0] * 3), "x": pa.array([10, 20, 30], pa.int64())}
    pq.write_table(
        pa.table({"user_id": pa.array([1, 2, 3], pa.int64()), **one_event}),
        repo / "data" / "ikeys.parquet",
    )
    pq.write_table(
        pa.table({"tag": pa.array(["1", "01", "a"]), **one_event}), repo / "data" / "skeys.parquet"
    )
    for name, cols in (
        ("p", {"amount": P_AMOUNT, "limit": P_LIMIT}),
        ("q", {"limit": Q_LIMIT}),
    ):
        pq.write_table(
            pa.table(
                {
                    "user_id": pa.array(USERS, pa.int64()),
                    "event_timestamp": _tstamp([T0 - 60 * M] * len(USERS)),
                    **{c: pa.array([v[u] for u in USERS], pa.float64()) for c, v in cols.items()},
                }
            ),
            repo / "data" / f"{name}.parquet",
        )
    with FeatureStore(config=online_config("embedded", repo, project="edges")) as store:
        store.apply()
        yield SimpleNamespace(store=store, repo=repo)


def spine(users: list[Any], times: list[int], **extra: Any) -> pa.Table:
    return pa.table(
        {"user_id": users, "event_timestamp": _tstamp(times), **extra}  # type: ignore[arg-type]
    )


# -- as_known for window views ------------------------------------------------------------------


def window_oracle(
    events: list[dict[str, Any]], user: Any, t: int, fn: str, minutes: int, as_known: bool
) -> float | int | None:
    """The window ``(t - w, t]`` over the raw events as a plain loop; None is null."""
    rows = [
        e
        for e in events
        if e["user"] == user
        and t - minutes * M < e["ev"] <= t
        and not (as_known and (e["cr"] if e["cr"] is not None else e["ev"]) > t)
    ]
    valid = [e for e in rows if e["x"] is not None]
    vals = [e["x"] for e in valid]
    if fn == "count":
        return len(vals)
    if fn == "sum":
        return math.fsum(vals)
    if not vals:
        return None
    if fn == "min":
        return min(vals)
    if fn == "max":
        return max(vals)
    # last: newest event; ties in arrival order (created time, nulls first, then the value)
    return max(valid, key=lambda e: (e["ev"], e["cr"] is not None, e["cr"] or 0, e["x"]))["x"]


def test_as_known_drops_an_event_created_after_t(fs: SimpleNamespace) -> None:
    write_events(fs.repo, [{"user": 1, "ev": T0, "cr": T0 + 24 * 60 * M, "x": 5.0}])
    refs = ["plain:x", "win:x_sum_1h", "win:x_count_1h", "ow:plus"]
    sp_ = spine([1, 1], [T0 + M, T0 + 24 * 60 * M], amount=[1.0, 1.0])
    known = fs.store.get_historical_features(sp_, refs, as_known=True).to_dict(as_series=False)
    # at T0 + 1min the event is not known yet; a day later it is known but out of the 1h window
    assert known["x"] == [None, 5.0]
    assert known["x_sum_1h"] == [0.0, 0.0]
    assert known["x_count_1h"] == [0, 0]
    assert known["plus"] == [1.0, 1.0]  # the hidden window input is as known too
    seen = fs.store.get_historical_features(sp_, refs).to_dict(as_series=False)
    assert seen["x_sum_1h"] == [5.0, 0.0] and seen["plus"] == [6.0, 1.0]


event_rows = st.lists(
    st.fixed_dictionaries(
        {
            "user": st.sampled_from(USERS[:2]),
            "ev": st.integers(0, 40).map(lambda m: T0 + 5 * m * M),  # a 5-minute grid: ties
            "cr_delta": st.one_of(st.none(), st.integers(-6, 45).map(lambda m: 5 * m * M)),
            "x": st.one_of(st.none(), st.integers(-20, 20).map(float)),
        }
    ),
    max_size=25,
)


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    raw=event_rows,
    free=st.lists(st.tuples(st.sampled_from(USERS), st.integers(-10, 450)), max_size=10),
    as_known=st.booleans(),
)
def test_window_features_equal_the_python_oracle_as_known_or_not(
    fs: SimpleNamespace,
    kit: SimpleNamespace,
    raw: list[dict[str, Any]],
    free: list[tuple[int, int]],
    as_known: bool,
) -> None:
    events = [
        {
            "user": r["user"],
            "ev": r["ev"],
            "cr": None if r["cr_delta"] is None else r["ev"] + r["cr_delta"],
            "x": r["x"],
        }
        for r in raw
    ]
    write_events(fs.repo, events or [{"user": 9, "ev": T0, "cr": None, "x": None}])
    # spine rows on the edges: at each event, just before and at its creation, at the end of
    # its 1h window, for its user and another; then free ones
    queries = [(u, T0 + m * M) for u, m in free]
    for e in events:
        for t in {
            e["ev"],
            e["ev"] + 59 * M,
            e["ev"] + 60 * M,
            *([e["cr"], e["cr"] - 1] if e["cr"] else []),
        }:
            queries += [(e["user"], t), (3 - e["user"], t)]
    queries = queries or [(1, T0)]
    users = [u for u, _ in queries]
    times = [t for _, t in queries]
    refs = ["plain:x", *(f"win:{f}" for f, _, _ in WIN)]
    got = fs.store.get_historical_features(spine(users, times), refs, as_known=as_known)
    got_d = got.to_dict(as_series=False)
    assert got_d["user_id"] == users
    for name, fn, minutes in WIN:
        want = [
            window_oracle(events, u, t, fn, minutes, as_known)
            for u, t in zip(users, times, strict=True)
        ]
        assert got_d[name] == want, (name, as_known)
    # the plain view of the same source follows the same "known at t" rule (rows equal in
    # both timestamps are a data error the join may resolve either way: not compared)
    if len({(e["user"], e["ev"], e["cr"]) for e in events}) < len(events):
        return
    rows = [{"key": e["user"], "ev": e["ev"], "cr": e["cr"], "x": e["x"]} for e in events]
    want_x = []
    for u, t in zip(users, times, strict=True):
        hit = kit.python_pit(rows, u, t, None, as_known=as_known)
        want_x.append(None if hit is kit.MISS else hit["x"])
    assert got_d["x"] == want_x


# -- spine key kinds for window views ---------------------------------------------------------


def _outcome(fs: SimpleNamespace, ref: str, keys: pa.Array, key: str) -> Any:
    """Values of ``ref`` for a spine with these keys, or the error (type, message)."""
    table = pa.table({key: keys, "event_timestamp": _tstamp([T0 + M] * len(keys))})
    try:
        col = fs.store.get_historical_features(table, [ref]).to_dict(as_series=False)
    except FeatureStoreError as exc:
        return type(exc), str(exc).replace(f"'{ref.split(':')[0]}'", "'VIEW'")
    values = col[ref.split(":")[1]]
    return [None if v is None else float(v) for v in values]


INT_SPINES = [
    pa.array(["1", "01", None]),
    pa.array(["1", "2"], pa.large_string()),
    pa.array(["1", "2"]).dictionary_encode(),
    pa.array([True, False]),
    pa.array([None, None], pa.null()),
    _tstamp([1, 2]),
    pa.array([1, 2, 5, None], pa.int32()),
    pa.array([1, 3, 2**64 - 1], pa.uint64()),
    pa.array([1.0, 1.5, 2.0, float("nan"), float("inf"), None, 3.0000000001], pa.float64()),
    pa.array([2.0, 3.0], pa.float32()),
]
STR_SPINES = [
    pa.array([1, 2], pa.int64()),
    pa.array([1.0], pa.float64()),
    pa.array(["1", "01", "a", "b", None]),
    pa.array(["a", "01", "a"], pa.large_string()),
    pa.array(["a", "1", "zz"]).dictionary_encode(),
]


@pytest.mark.parametrize("keys", INT_SPINES, ids=lambda a: str(a.type))
def test_window_views_take_integer_keys_as_plain_views_do(
    fs: SimpleNamespace, keys: pa.Array
) -> None:
    plain = _outcome(fs, "kp:x", keys, "user_id")
    window = _outcome(fs, "kw:x_last_1h", keys, "user_id")
    assert window == plain
    if pa.types.is_string(keys.type):
        assert window[0] is EntityDataError and "holds string values" in window[1]


@pytest.mark.parametrize("keys", STR_SPINES, ids=lambda a: str(a.type))
def test_window_views_take_string_keys_as_plain_views_do(
    fs: SimpleNamespace, keys: pa.Array
) -> None:
    assert _outcome(fs, "sw:x_last_1h", keys, "tag") == _outcome(fs, "sp:x", keys, "tag")


@settings(max_examples=40, deadline=None)
@given(
    keys=st.lists(
        st.one_of(
            st.none(),
            st.integers(-3, 5).map(float),
            st.floats(allow_nan=True, allow_infinity=True),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_float_spine_keys_match_the_same_entities(fs: SimpleNamespace, keys: list) -> None:
    arr = pa.array(keys, pa.float64())
    want = _outcome(fs, "kp:x", arr, "user_id")
    assert _outcome(fs, "kw:x_last_1h", arr, "user_id") == want
    assert want == [float(k) * 10 if k in (1.0, 2.0, 3.0) else None for k in keys]


# -- request fields and hidden inputs of on-demand features -----------------------------------


def test_a_request_field_never_reads_a_fetched_feature_of_its_name(fs: SimpleNamespace) -> None:
    with pytest.raises(EntityDataError, match="'o:diff' needs request field 'amount'"):
        fs.store.get_historical_features(spine([1], [T0]), ["o:diff"])
    amount = np.random.default_rng(5).uniform(-50, 50, 6).round(3).tolist()
    users = [1, 2, 3, 4, 1, 2]  # user 4 has no row: a null feature, a null difference
    got = fs.store.get_historical_features(
        spine(users, [T0] * 6, amount=amount), ["o:diff"]
    ).to_dict(as_series=False)
    assert got["amount"] == amount  # the spine column is untouched
    assert got["diff"] == [
        a - P_AMOUNT[u] if u in P_AMOUNT else None for u, a in zip(users, amount, strict=True)
    ]
    assert list(got) == ["user_id", "event_timestamp", "amount", "diff"]
    # asked for by name, the feature does clash with the request column; full names keep both
    with pytest.raises(FeatureStoreError, match="feature column 'amount' would overwrite"):
        fs.store.get_historical_features(
            spine(users, [T0] * 6, amount=amount), ["p:amount", "o:diff"]
        )
    with pytest.raises(FeatureStoreError, match="would overwrite") as clash:
        fs.store.get_historical_features(
            spine(users, [T0] * 6, amount=amount, p__amount=amount),
            ["p:amount", "o:diff"],
            full_feature_names=True,
        )
    assert "rename or drop" in str(clash.value)
    assert "full_feature_names" not in str(clash.value)  # already on: no way out
    full = fs.store.get_historical_features(
        spine(users, [T0] * 6, amount=amount), ["p:amount", "o:diff"], full_feature_names=True
    ).to_dict(as_series=False)
    assert full["amount"] == amount
    assert full["p__amount"] == [P_AMOUNT.get(u) for u in users]
    assert full["o__diff"] == got["diff"]


@pytest.mark.parametrize("full", [False, True])
def test_hidden_inputs_never_clash_with_spine_columns(fs: SimpleNamespace, full: bool) -> None:
    users = [1, 2, 3, 4]
    amount = [5.0, 4.0, 3.0, 2.0]
    own = [999.0, -1.0, None, 0.0]
    table = spine(users, [T0] * 4, amount=amount, limit=own, p__limit=["a", "b", "c", "d"])
    got = fs.store.get_historical_features(table, ["o:ratio"], full_feature_names=full).to_dict(
        as_series=False
    )
    col = "o__ratio" if full else "ratio"
    assert list(got) == ["user_id", "event_timestamp", "amount", "limit", "p__limit", col]
    assert got["limit"] == own and got["p__limit"] == ["a", "b", "c", "d"]
    assert got[col] == [
        a / P_LIMIT[u] if u in P_LIMIT else None for u, a in zip(users, amount, strict=True)
    ]
    # window inputs too: a spine column named like the hidden window feature stays as it is
    win = fs.store.get_historical_features(
        spine(users, [T0] * 4, amount=amount, x_sum_1h=[7, 7, 7, 7]), ["ow:plus"]
    ).to_dict(as_series=False)
    assert win["x_sum_1h"] == [7, 7, 7, 7]


def test_a_hidden_input_does_not_clash_with_a_feature_of_its_bare_name(
    fs: SimpleNamespace,
) -> None:
    users = [1, 2, 3]
    got = fs.store.get_historical_features(
        spine(users, [T0] * 3, amount=[1.0, 2.0, 3.0]), ["q:limit", "o:ratio"]
    ).to_dict(as_series=False)
    assert got["limit"] == [Q_LIMIT[u] for u in users]  # the asked feature, not p's
    assert got["ratio"] == [a / P_LIMIT[u] for u, a in zip(users, [1.0, 2.0, 3.0], strict=True)]


def test_a_window_views_events_out_of_memory_say_raise_the_limit(
    fs: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading a window view's events gives the same advice as the plain join when DuckDB runs
    out of memory (the error DuckDB raises is put in its place here: a real one needs GBs)."""
    import sys

    import duckdb

    from featurestore.offline import store as offline_store

    real = offline_store.fetch_table

    def out_of_memory(*args: Any, **kwargs: Any) -> Any:
        if sys._getframe(1).f_code.co_name != "read_events":  # other reads as they are
            return real(*args, **kwargs)
        raise duckdb.OutOfMemoryException("Out of Memory Error: failed to allocate 2.0 MiB")

    monkeypatch.setattr(offline_store, "fetch_table", out_of_memory)  # read_events' import
    kind, msg = _outcome(fs, "kw:x_last_1h", pa.array([1, 2], pa.int64()), "user_id")
    assert kind is OfflineStoreError
    assert msg.startswith("reading the events of feature view 'VIEW' failed: Out of Memory"), msg
    assert "; raise offline_store.memory_limit (now " in msg
