"""Ties between rows of one key at one event time are ranked by push time, not by file path:
the folder's own data (in a subfolder, or named to sort after ``push-``) loses to every push,
a stream file ranks by its XADD time, a push to one view beats an older push to another view
sharing the folder, and a push after a compaction beats the compacted file. The training set
(plain and as known), materialize from the files and the online store the pushes wrote agree
with a slow oracle: latest event time, then the latest write, then the last listed."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from featurestore.config import config_from_dict
from featurestore.offline._sql import BASE_RANK, NAME_PATTERN, file_rank, ranked_rows
from featurestore.offline.compact import compact_pushes, push_files
from featurestore.offline.push import push_file_name
from featurestore.store import FeatureStore

UTC = timezone.utc
T0 = datetime(2026, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)
KEYS = [1, 2, 3]

DEFS = """
from featurestore import Entity, FeatureView, Field, Float64, ParquetSource

user = Entity("user", join_keys=["user_id"])
a = FeatureView(name="a", entities=[user], source=ParquetSource("data/src"),
                schema=[Field("score", Float64)])
b = FeatureView(name="b", entities=[user], source=ParquetSource("data/src"),
                schema=[Field("score", Float64)])
"""


@dataclass
class Row:
    """One row the oracle knows: ``order`` is its write (0: the folder's data, then the files
    written before the pushes, then each push); ``view`` the view a push went to (online)."""

    key: int
    hour: int
    order: float
    place: int
    score: float
    view: str | None = None


def _file(path: Path, rows: list[tuple[int, int, float]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array([k for k, _, _ in rows], pa.int64()),
                "event_timestamp": pa.array(
                    [T0 + h * HOUR for _, h, _ in rows], pa.timestamp("us", tz="UTC")
                ),
                "score": pa.array([s for _, _, s in rows], pa.float64()),
            }
        ),
        path,
    )


def _oracle(rows: list[Row], key: int, t_hour: float, view: str | None = None) -> Any:
    """The score at ``t_hour``: latest event hour <= t, then the latest write, then the last
    listed; ``view``: only the folder's files and that view's pushes (its online store)."""
    best = None
    for r in rows:
        if r.key != key or r.hour > t_hour or (view and r.view not in (None, view)):
            continue
        rank = (r.hour, r.order, r.place)
        if best is None or rank >= best[0]:
            best = (rank, r.score)
    return None if best is None else best[1]


# pushed: ("push", view, same microsecond as the push before?, [(key, hour)]); ("compact", view)
SINGLE = [
    ("push", "a", False, [(1, 1), (2, 1), (2, 2)]),
    ("push", "a", False, [(2, 1), (3, 1)]),
    ("push", "a", True, [(2, 1), (1, 1)]),
    ("compact", "a"),
    ("push", "a", True, [(1, 1)]),
    ("push", "a", False, [(3, 2)]),
]
SHARED = [
    ("push", "b", False, [(1, 1), (2, 1)]),
    ("push", "a", False, [(1, 1), (3, 1)]),
    ("push", "b", True, [(3, 1)]),
    ("compact", "b"),
    ("push", "a", False, [(2, 1), (3, 1)]),
    ("push", "b", False, [(1, 2)]),
    ("push", "a", True, [(1, 2)]),
]
COMPACTED_B_THEN_A = [
    ("push", "b", False, [(1, 1), (2, 1)]),
    ("push", "b", False, [(1, 1), (3, 2)]),
    ("compact", "b"),
    ("push", "a", False, [(1, 1), (3, 2)]),
]
BASE = [(k, 1, -float(k)) for k in KEYS] + [(1, 0, -10.0)]


def _layouts(push_ms: int) -> dict[str, tuple[list[tuple[str, list[tuple[int, int, float]]]], Any]]:
    """name -> (files written before the pushes, in rank order; the pushes)."""
    stream = f"stream-clicks-{push_ms - 9000}_0-{push_ms - 5000}_3.parquet"
    older = f"push-a-{(push_ms - 5000) * 1000}-0123abcd.parquet"
    tie = [(k, 1, 50.0 + k) for k in KEYS]
    return {
        "base in a year=2024 subfolder": ([("year=2024/part.parquet", BASE)], SINGLE),
        "base named transactions.parquet": ([("transactions.parquet", BASE)], SINGLE),
        "base named users_1.parquet": ([("users_1.parquet", BASE)], SINGLE),
        "two views share a folder": ([("part-0.parquet", BASE)], SHARED),
        "view b compacted, then a push to view a": (
            [("part-0.parquet", BASE)],
            COMPACTED_B_THEN_A,
        ),
        "a stream file, after the data, before the pushes": (
            [
                ("part-0.parquet", BASE),
                ("users_1.parquet", [(k, 0, 30.0 + k) for k in KEYS]),
                (stream, [(1, 0, 51.0), (2, 0, 52.0), (1, 1, 61.0)]),
            ],
            SINGLE,
        ),
        "an older release's push file": (
            [("year=2024/part.parquet", BASE), (older, tie[1:])],
            SHARED,
        ),
    }


LAYOUTS = list(_layouts(0))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_ties_go_to_the_latest_write_offline_and_online(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: str
) -> None:
    repo = tmp_path / "repo"
    src = repo / "data" / "src"
    src.mkdir(parents=True)
    (repo / "featurestore.yaml").write_text(
        "project: tierank\nonline_store:\n  type: embedded\n  path: data/online\n  map_size: 64MB\n"
    )
    (repo / "definitions.py").write_text(DEFS)
    clock = [int(datetime.now(UTC).timestamp() * 1e6)]
    files, steps = _layouts(clock[0] // 1000)[layout]
    rows: list[Row] = []
    for order, (name, content) in enumerate(files):
        _file(src / name, content)
        rows += [Row(k, h, order / 10, i, s) for i, (k, h, s) in enumerate(content)]
    views = sorted({s[1] for s in steps})

    with FeatureStore(repo) as store:
        store.apply()
        store.materialize(T0 - timedelta(days=1), T0 + timedelta(days=1))
        monkeypatch.setattr("featurestore.online.serving._push.now_us", lambda: clock[0])
        for n, step in enumerate(steps, start=1):
            if step[0] == "compact":
                (res,) = compact_pushes(store.config, store.registry, step[1])
                assert res.output is not None and res.output.name.startswith(f"push-{step[1]}-")
                continue
            _, view, same_us, batch = step
            clock[0] += 0 if same_us else 1
            scores = [float(n * 100 + i) for i in range(len(batch))]
            rows += [
                Row(k, h, n, i, s, view)
                for i, ((k, h), s) in enumerate(zip(batch, scores, strict=True))
            ]
            store.push(
                view,
                {
                    "user_id": [k for k, _ in batch],
                    "event_timestamp": [(T0 + h * HOUR).isoformat() for _, h in batch],
                    "score": scores,
                },
                to="online_and_offline",
            )
        monkeypatch.undo()

        spine_keys = [k for k in KEYS for _ in range(8)]
        halves = [h / 2 for _ in KEYS for h in range(8)]
        spine = pl.DataFrame(
            {"user_id": spine_keys, "event_timestamp": [T0 + h * HOUR for h in halves]},
            schema={"user_id": pl.Int64, "event_timestamp": pl.Datetime("us", "UTC")},
        )
        want = [_oracle(rows, k, t) for k, t in zip(spine_keys, halves, strict=True)]
        latest = [_oracle(rows, k, 99) for k in KEYS]
        for view in views:
            for as_known in (False, True):
                got = store.get_historical_features(spine, [f"{view}:score"], as_known=as_known)
                assert got["score"].to_list() == want, (layout, view, as_known)
            online = store.get_online_features([f"{view}:score"], {"user_id": KEYS})
            assert online.to_dict()["score"] == [_oracle(rows, k, 99, view) for k in KEYS], view

    fresh = config_from_dict(
        {
            "project": "tierank",
            "online_store": {
                "type": "embedded",
                "path": str(tmp_path / "fresh"),
                "map_size": "64MB",
            },
        },
        repo,
    )
    with FeatureStore(config=fresh) as other:
        other.materialize(T0 - timedelta(days=1), T0 + timedelta(days=1))
        for view in views:
            again = other.get_online_features([f"{view}:score"], {"user_id": KEYS}).to_dict()
            assert again["score"] == latest, (layout, view)


# ---------------------------------------------------------------------------- names and ranks

_DIGITS = st.text("0123456789", min_size=1, max_size=17)
_HEX = st.text("0123456789abcdef", min_size=8, max_size=8)
_VIEW = st.text("abz_.Z09", min_size=1, max_size=6)
_NAME = st.one_of(
    st.builds(
        lambda v, t, s, r: f"push-{v}-t-{t}-{s}{r}.parquet",
        _VIEW,
        _DIGITS,
        st.text("0123456789", min_size=10, max_size=10),
        _HEX,
    ),
    st.builds(
        lambda v, t, s, r: f"push-{v}-compact-{t}-{s}{r}.parquet",
        _VIEW,
        _DIGITS,
        st.text("0123456789", min_size=10, max_size=10),
        _HEX,
    ),
    st.builds(lambda v, t, r: f"push-{v}-compact-{t}-{r}.parquet", _VIEW, _DIGITS, _HEX),
    st.builds(lambda v, t, r: f"push-{v}-{t}-{r}.parquet", _VIEW, _DIGITS, _HEX),
    st.builds(
        lambda v, a, b, n: f"stream-{v}-{a}_0-{b}_{n}.parquet", _VIEW, _DIGITS, _DIGITS, _DIGITS
    ),
    st.text("abcpushtream-_=.0123456789", max_size=20)
    .filter(lambda s: not s.startswith("."))
    .map(lambda s: s + ".parquet"),
)


@settings(max_examples=200, deadline=None, database=None)
@given(names=st.lists(_NAME, min_size=1, max_size=6, unique=True), sub=st.booleans())
def test_file_rank_in_sql_and_in_python_agree(
    tmp_path_factory: Any, names: list[str], sub: bool
) -> None:
    """DuckDB (the joins) and Python (compaction's name) read a file's rank alike."""
    folder = tmp_path_factory.mktemp("names")
    for i, name in enumerate(names):
        path = folder / ("year=2024" if sub else "") / name
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"i": [i]}), path)
    rel = f"read_parquet('{folder}/**/*.parquet')"
    con = duckdb.connect()
    try:
        got = con.sql(f"SELECT i, __fs_pt, __fs_ps FROM ({ranked_rows(rel)})").fetchall()
    finally:
        con.close()
    assert sorted(got) == [(i, *file_rank(name)) for i, name in enumerate(names)]


def test_file_ranks() -> None:
    t = 1_767_225_600_000_000
    now = push_file_name("any", t)
    assert file_rank(now)[0] == t and file_rank(now) < file_rank(push_file_name("other", t))
    assert file_rank(f"x/push-v-compact-{t}-0000000007abcdef01.parquet") == (t, 7)
    assert file_rank(f"push-v-compact-{t}-abcdef01.parquet") == (t, -1)
    assert file_rank(f"push-v-{t}-abcdef01.parquet") == (t, -1)
    assert file_rank("stream-clicks-1767225600000_0-1767225601000_5.parquet") == (t + 10**6, 5)
    # stream files of one millisecond in stream order, though their names sort the other way
    assert file_rank("stream-s-5_9-5_9.parquet") < file_rank("stream-s-5_10-5_10.parquet")
    for base in ("year=2024/part.parquet", "transactions.parquet", "push-notes.parquet"):
        assert file_rank(base) == BASE_RANK
    assert "'" not in NAME_PATTERN  # pasted into SQL as a literal


def test_compaction_names_the_merged_file_after_its_last_push_of_any_view(
    tmp_path: Path,
) -> None:
    """A compacted file takes the largest (push time, sequence) of the pushes it merged, of
    any view, so a push made after it ranks above it; data named ``push-...`` is left alone."""
    from featurestore.offline.compact import merged_table, write_compacted

    t = 1_767_225_600_000_000
    names = [push_file_name("b", t + 2), push_file_name("a", t + 5), push_file_name("b", t + 3)]
    for i, name in enumerate(names):
        _file(tmp_path / name, [(1, 1, float(i))])
    _file(tmp_path / "push-notes.parquet", [(1, 1, 9.0)])
    files = push_files(tmp_path)
    assert [f.name for f in files] == sorted(names)
    table, _ = merged_table(files)
    assert table.column("score").to_pylist() == [0.0, 2.0, 1.0]  # push order, not name order
    out = write_compacted(tmp_path, "b", table, files)
    assert file_rank(out.name) == file_rank(names[1])
    later = push_file_name("a", t + 5)
    assert file_rank(later) > file_rank(out.name) > file_rank(names[2])
    assert os.path.exists(tmp_path / "push-notes.parquet")
