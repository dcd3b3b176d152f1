"""iter_latest_rows / count_latest_rows: window edges, ties, order, batches, determinism."""

from __future__ import annotations

import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featurestore.entity import Entity
from featurestore.feature_view import FeatureView
from featurestore.field import Field
from featurestore.offline import OfflineStore
from featurestore.sources import ParquetSource
from featurestore.types import Float32, Int64

T0 = 1_704_067_200_000_000
USER = Entity("user", ["user_id"])


def _view(created: str | None = "created") -> FeatureView:
    return FeatureView(
        name="u",
        entities=[USER],
        source=ParquetSource("data/u.parquet", created_timestamp_field=created),
        schema=[Field("x", Float32), Field("n", Int64)],
    )


def _rows(store: OfflineStore, view: FeatureView, start: int, end: int, **kw: Any) -> pa.Table:
    batches = list(store.iter_latest_rows(view, start, end, **kw))
    if not batches:
        return pa.table({})
    return pa.Table.from_batches(batches)


def test_window_edges_are_inclusive(kit: SimpleNamespace, repo: Path, store: OfflineStore) -> None:
    kit.write_parquet(
        repo / "data/u.parquet",
        {
            "user_id": [1, 2, 3, 4, 5],
            "event_timestamp": kit.ts_array([T0 - 1, T0, T0 + 5, T0 + 10, T0 + 11]),
            "created": kit.ts_array([None] * 5),
            "x": [1.0, 2.0, 3.0, 4.0, 5.0],
            "n": [1, 2, 3, 4, 5],
        },
    )
    view = _view()
    t = _rows(store, view, T0, T0 + 10)
    assert t.column("user_id").to_pylist() == [2, 3, 4]
    assert t.column("__event_ts").to_pylist() == [T0, T0 + 5, T0 + 10]
    assert t.column("__created_ts").to_pylist() == [None, None, None]
    assert store.count_latest_rows(view, T0, T0 + 10) == 3
    assert t.schema.names == ["user_id", "x", "n", "__event_ts", "__created_ts"]
    assert t.schema.field("x").type == pa.float32()
    assert t.schema.field("__event_ts").type == pa.int64()
    assert t.schema.field("__created_ts").type == pa.int64()


def test_latest_row_wins_with_created_tie_break_and_null_keys_skipped(
    kit: SimpleNamespace, repo: Path, store: OfflineStore
) -> None:
    kit.write_parquet(
        repo / "data/u.parquet",
        {
            "user_id": [1, 1, 1, 1, None, 2, 2],
            "event_timestamp": kit.ts_array([T0, T0 + 3, T0 + 3, T0 + 3, T0, T0 + 1, T0 + 1]),
            "created": kit.ts_array([T0 + 9, T0 + 4, T0 + 6, None, T0, None, T0]),
            "x": [0.0, 4.0, 6.0, 9.0, 1.0, 7.0, 8.0],
            "n": [0, 4, 6, 9, 1, 7, None],
        },
    )
    t = _rows(store, _view(), T0, T0 + 100)
    assert t.to_pydict() == {
        "user_id": [1, 2],
        "x": [6.0, 8.0],
        "n": [6, None],
        "__event_ts": [T0 + 3, T0 + 1],
        "__created_ts": [T0 + 6, T0],
    }


def test_batches_are_bounded_sorted_and_identical_on_rerun(
    kit: SimpleNamespace, repo: Path, store: OfflineStore
) -> None:
    n = 2_500
    keys = [(i * 7919) % 1000 for i in range(n)]
    kit.write_parquet(
        repo / "data/u.parquet",
        {
            "user_id": keys,
            "event_timestamp": kit.ts_array([T0 + (i % 13) for i in range(n)]),
            "x": [float(i) for i in range(n)],
            "n": list(range(n)),
        },
    )
    view = _view(created=None)
    first = list(store.iter_latest_rows(view, T0, T0 + 100, batch_rows=128))
    again = list(store.iter_latest_rows(view, T0, T0 + 100, batch_rows=128))
    assert all(b.num_rows <= 128 for b in first)
    assert len(first) >= 8
    assert [b.equals(c) for b, c in zip(first, again, strict=True)] == [True] * len(first)
    ids = pa.Table.from_batches(first).column("user_id").to_pylist()
    assert ids == sorted(set(keys))
    assert store.count_latest_rows(view, T0, T0 + 100) == 1000


def test_empty_window_yields_nothing(kit: SimpleNamespace, repo: Path, store: OfflineStore) -> None:
    kit.write_parquet(
        repo / "data/u.parquet",
        {
            "user_id": [1],
            "event_timestamp": kit.ts_array([T0]),
            "created": kit.ts_array([T0]),
            "x": [1.0],
            "n": [1],
        },
    )
    assert list(store.iter_latest_rows(_view(), T0 + 1, T0 + 5)) == []
    assert store.count_latest_rows(_view(), T0 + 1, T0 + 5) == 0
    with pytest.raises(ValueError, match="batch_rows"):
        list(store.iter_latest_rows(_view(), T0, T0, batch_rows=0))


row = st.fixed_dictionaries(
    {
        "key": st.sampled_from([0, 1, 2, None]),
        "ev": st.one_of(st.integers(0, 6), st.none()),
        "cr": st.one_of(st.integers(0, 6), st.none()),
        "n": st.integers(-3, 3),
    }
)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(row, max_size=20, unique_by=lambda r: (r["key"], r["ev"], r["cr"])),
    start=st.integers(-1, 7),
    length=st.integers(0, 7),
)
def test_latest_rows_match_python_loop(
    kit: SimpleNamespace,
    tmp_path_factory: pytest.TempPathFactory,
    rows: list[dict[str, Any]],
    start: int,
    length: int,
) -> None:
    repo = Path(tempfile.mkdtemp(dir=tmp_path_factory.getbasetemp()))
    rows = [
        {
            **r,
            "ev": None if r["ev"] is None else T0 + r["ev"],
            "cr": None if r["cr"] is None else T0 + r["cr"],
        }
        for r in rows
    ]
    kit.write_parquet(
        repo / "data/u.parquet",
        {
            "user_id": pa.array([r["key"] for r in rows], pa.int64()),
            "event_timestamp": kit.ts_array([r["ev"] for r in rows]),
            "created": kit.ts_array([r["cr"] for r in rows]),
            "x": pa.array([float(r["n"]) for r in rows], pa.float64()),
            "n": pa.array([r["n"] for r in rows], pa.int64()),
        },
    )
    lo, hi = T0 + start, T0 + start + length
    expected = {"user_id": [], "n": [], "__event_ts": [], "__created_ts": []}
    for key in sorted({r["key"] for r in rows if r["key"] is not None}):
        in_window = [r for r in rows if r["ev"] is not None and lo <= r["ev"] <= hi]
        hit = kit.python_pit(in_window, key, hi, None)
        if hit is not kit.MISS:
            expected["user_id"].append(key)
            expected["n"].append(hit["n"])
            expected["__event_ts"].append(hit["ev"])
            expected["__created_ts"].append(hit["cr"])
    store = kit.new_store(repo)
    try:
        t = _rows(store, _view(), lo, hi, batch_rows=2)
        count = store.count_latest_rows(_view(), lo, hi)
    finally:
        store.close()
    got = {k: (t.column(k).to_pylist() if t.num_columns else []) for k in expected}
    assert got == expected
    assert count == len(expected["user_id"])
