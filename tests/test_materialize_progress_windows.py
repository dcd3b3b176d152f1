"""Materializing a window view shows a progress bar of its entities, counted as whole numbers,
that ends at their total, also when some or all of them are written nothing (already expired)."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore import FeatureStore

H = 3_600_000_000
NOW = (int(time.time()) // 3600) * H
DEFS = """
from featurestore import Aggregation, Entity, FeatureView, ParquetSource

user = Entity("user", join_keys=["user_id"])
w = FeatureView(name="w", entities=[user], source=ParquetSource("data/events.parquet"),
                aggregations=[Aggregation("amount", "sum", ["1d"])])
"""


def _repo(root: Path, users: int, *, batch: int, age: int = 0) -> Path:
    """A repo of one window view over ``users`` entities with two events each, 1-2 hours
    before ``NOW - age``."""
    (root / "data").mkdir(parents=True)
    ids = [u for u in range(1, users + 1) for _ in range(2)]
    times = [NOW - age - (1 + i % 2) * H for i in range(len(ids))]
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array(ids, pa.int64()),
                "event_timestamp": pa.array(times, pa.timestamp("us", tz="UTC")),
                "amount": pa.array([float(i) for i in range(len(ids))], pa.float64()),
            }
        ),
        root / "data" / "events.parquet",
    )
    (root / "featurestore.yaml").write_text(
        "project: winprogress\nonline_store:\n  type: embedded\n  map_size: 64MB\n"
        f"  write_batch_size: {batch}\n"
    )
    (root / "definitions.py").write_text(textwrap.dedent(DEFS))
    return root


def _last_count(err: str) -> str:
    """The count ("a/b") the bar showed last."""
    last = [part for part in err.replace("\r", "\n").splitlines() if "materialize w" in part][-1]
    return next(tok for tok in last.split() if "/" in tok and tok[0].isdigit())


@pytest.mark.parametrize("batch", [2, 10_000])
def test_a_window_views_bar_counts_its_entities_to_the_total(
    tmp_path: Path, batch: int, capsys: pytest.CaptureFixture
) -> None:
    with FeatureStore(_repo(tmp_path / "repo", 5, batch=batch)) as store:
        store.apply()
        capsys.readouterr()
        res = store.materialize(NOW - 24 * H, NOW, views=["w"], progress=True)
        err = capsys.readouterr().err
    assert res.rows == {"w": 5}
    assert "materialize w" in err, err
    assert _last_count(err) == "5/5", err
    assert "5.00" not in err and "entities" in err, err


def test_the_bar_ends_at_the_total_when_every_state_has_expired(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Events three days old, materialized to their time: every window (1 day, plus the 1 day
    key grace) is empty for readers now, so nothing is written; each entity still counts."""
    with FeatureStore(_repo(tmp_path / "repo", 3, batch=2, age=72 * H)) as store:
        store.apply()
        capsys.readouterr()
        res = store.materialize(NOW - 96 * H, NOW - 72 * H, views=["w"], progress=True)
        assert res.rows == {"w": 0}
        err = capsys.readouterr().err
    assert _last_count(err) == "3/3", err


def test_no_bar_without_progress(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with FeatureStore(_repo(tmp_path / "repo", 2, batch=2)) as store:
        store.apply()
        capsys.readouterr()
        assert store.materialize(NOW - 24 * H, NOW, views=["w"]).rows == {"w": 2}
    assert "materialize w" not in capsys.readouterr().err
