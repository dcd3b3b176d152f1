"""Pushes of one entity at one event time, across separate pushes, in a view with no created
timestamp: the later push wins everywhere (training set, online store, materialize from the
files), as a slow oracle says: latest event time, then latest push, then last listed."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featurestore.config import config_from_dict
from featurestore.offline._sql import file_rank
from featurestore.offline.compact import compact_pushes, push_files
from featurestore.offline.push import push_file_name
from featurestore.store import FeatureStore

UTC = timezone.utc
T0 = datetime(2026, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)
KEYS_PER_EXAMPLE = 3
MAX_EXAMPLES = 30
N_KEYS = KEYS_PER_EXAMPLE * (MAX_EXAMPLES + 1)  # keys with a row in the source's own file
FEATS = ["ties:score"]

DEFS = """
from featurestore import Entity, FeatureView, Field, Float64, ParquetSource

user = Entity("user", join_keys=["user_id"])
ties = FeatureView(name="ties", entities=[user], source=ParquetSource("data/ties"),
                   schema=[Field("score", Float64)])
"""


def _online_config(repo: Path, path: Path) -> Any:
    return config_from_dict(
        {
            "project": "ties",
            "online_store": {"type": "embedded", "path": str(path), "map_size": "64MB"},
        },
        repo,
    )


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder source holding one file: every key at hour 1 with score -key (applied and
    materialized, so the online store holds those rows too)."""
    repo = tmp_path_factory.mktemp("ties") / "repo"
    (repo / "data" / "ties").mkdir(parents=True)
    (repo / "featurestore.yaml").write_text(
        "project: ties\nonline_store:\n  type: embedded\n  path: data/online\n  map_size: 64MB\n"
    )
    (repo / "definitions.py").write_text(DEFS)
    keys = list(range(N_KEYS))
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array(keys, pa.int64()),
                "event_timestamp": pa.array([T0 + HOUR] * N_KEYS, pa.timestamp("us", tz="UTC")),
                "score": pa.array([-float(k) for k in keys]),
            }
        ),
        repo / "data" / "ties" / "part-0.parquet",
    )
    with FeatureStore(repo) as store:
        store.apply()
        store.materialize(T0 - timedelta(days=1), datetime.now(UTC))
    return repo


@pytest.fixture(scope="module")
def store(repo: Path) -> Iterator[FeatureStore]:
    with FeatureStore(repo) as s:
        yield s


_EXAMPLE = itertools.count(1)

# a push: (same microsecond as the push before?, compact the folder before it?, rows);
# a row: (key 0..2 of the example's keys, event hour 0..3); hour 1 ties with the file's rows
_ROW = st.tuples(st.integers(0, KEYS_PER_EXAMPLE - 1), st.integers(0, 3))
_PUSH = st.tuples(st.booleans(), st.booleans(), st.lists(_ROW, min_size=1, max_size=5))


def _oracle(rows: list[tuple[int, int, int, int, float]], key: int, t_hour: float) -> Any:
    """The value a training set gives ``key`` at ``t_hour``: the row with the latest event
    hour <= t, then the latest push, then the last listed. rows: (key, hour, push, place,
    score); push 0 is the source's own file. None: no row yet."""
    best = None
    for k, hour, push, place, score in rows:
        if k == key and hour <= t_hour and (best is None or (hour, push, place) >= best[0]):
            best = ((hour, push, place), score)
    return None if best is None else best[1]


@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(pushes=st.lists(_PUSH, min_size=1, max_size=6))
def test_the_later_push_wins_ties_offline_and_online(
    store: FeatureStore,
    repo: Path,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    pushes: list[tuple[bool, bool, list[tuple[int, int]]]],
) -> None:
    n = next(_EXAMPLE)
    keys = [n * KEYS_PER_EXAMPLE + i for i in range(KEYS_PER_EXAMPLE)]
    rows = [(k, 1, 0, 0, -float(k)) for k in keys if k < N_KEYS]  # the file's (and online)
    # a clock that stands still when asked: pushes in one microsecond must keep their order
    clock = [datetime.now(UTC).timestamp() * 1e6]

    def now_us() -> int:
        return int(clock[0])

    monkeypatch.setattr("featurestore.online.serving._push.now_us", now_us)
    for p, (same_us, compact_first, batch) in enumerate(pushes, start=1):
        if compact_first:
            compact_pushes(store.config, store.registry, "ties")
        if not same_us:
            clock[0] += 1
        scores = [float(p * 100 + i) for i in range(len(batch))]
        rows += [
            (keys[k], h, p, i, s) for i, ((k, h), s) in enumerate(zip(batch, scores, strict=True))
        ]
        pushed = {
            "user_id": [keys[k] for k, _ in batch],
            "event_timestamp": [(T0 + h * HOUR).isoformat() for _, h in batch],
            "score": scores,
        }
        store.push("ties", pushed, to="online_and_offline")
    monkeypatch.undo()

    # the training set, at every hour and between hours
    spine_keys, spine_times, want = [], [], []
    for k in keys:
        for half_hours in range(0, 9):
            spine_keys.append(k)
            spine_times.append(T0 + half_hours * HOUR / 2)
            want.append(_oracle(rows, k, half_hours / 2))
    spine = pl.DataFrame(
        {"user_id": spine_keys, "event_timestamp": spine_times},
        schema={"user_id": pl.Int64, "event_timestamp": pl.Datetime("us", "UTC")},
    )
    got = store.get_historical_features(spine, FEATS)["score"].to_list()
    assert got == want, (pushes, list(zip(spine_keys, spine_times, got, want, strict=True)))

    latest = [_oracle(rows, k, 99) for k in keys]
    # the online store the pushes wrote
    online = store.get_online_features(FEATS, {"user_id": keys}).to_dict()["score"]
    assert online == latest, pushes
    # materialize from the files into a fresh online store
    fresh = tmp_path_factory.mktemp("fresh") / "online"
    with FeatureStore(config=_online_config(repo, fresh)) as other:
        other.materialize(T0 - timedelta(days=1), datetime.now(UTC) + timedelta(days=1))
        again = other.get_online_features(FEATS, {"user_id": keys}).to_dict()["score"]
    assert again == latest, pushes


def test_push_file_names_rank_in_push_order() -> None:
    t = 1_767_225_600_000_000
    made = [push_file_name("v", t), push_file_name("w", t), push_file_name("a", t + 1)]
    made.append(push_file_name("v", t))  # an earlier push time, written later
    ranked = sorted(made, key=file_rank)
    assert ranked == [made[0], made[1], made[3], made[2]]
    # above the older names (push time alone) and compacted files of the same time, which
    # hold only pushes that came before
    older = f"push-v-{t}-0123abcd.parquet"
    compacted = f"push-z-compact-{t}-0123abcd.parquet"
    assert file_rank(older) < file_rank(made[0]) and file_rank(compacted) < file_rank(made[0])


def test_a_later_push_beats_a_compacted_file_in_the_same_microsecond(
    store: FeatureStore, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = 10**6  # a key of its own
    frozen = int(datetime.now(UTC).timestamp() * 1e6)
    monkeypatch.setattr("featurestore.online.serving._push.now_us", lambda: frozen)
    at = (T0 + 2 * HOUR).isoformat()
    for score in (1.0, 2.0):
        store.push(
            "ties", {"user_id": [key], "event_timestamp": [at], "score": [score]}, to="offline"
        )
    compact_pushes(store.config, store.registry, "ties")
    assert len(push_files(repo / "data" / "ties")) == 1
    store.push("ties", {"user_id": [key], "event_timestamp": [at], "score": [3.0]}, to="offline")
    spine = pl.DataFrame(
        {"user_id": [key], "event_timestamp": [T0 + 3 * HOUR]},
        schema={"user_id": pl.Int64, "event_timestamp": pl.Datetime("us", "UTC")},
    )
    assert store.get_historical_features(spine, FEATS)["score"].to_list() == [3.0]
    compact_pushes(store.config, store.registry, "ties")
    assert store.get_historical_features(spine, FEATS)["score"].to_list() == [3.0]
