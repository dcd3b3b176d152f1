"""Training set: a 1M-row spine x 2 views x 20 features, vs a hand-written DuckDB ASOF JOIN.

The floor reads the same Parquet files (spine and sources) and returns the same columns as a
polars DataFrame, with the same semantics (latest row at or before t, ttl inclusive, spine
order kept). Floor and ours alternate round by round; the figure is the median round.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import pytest

from benchmarks import _report
from benchmarks.conftest import DAY_US, VIEWS, BenchRepo, feature_names, feature_refs

ROUNDS = 3
TARGET = 1.5  # ours / floor


def floor_sql(repo: BenchRepo, spine: Path | None = None, *, nan: bool = False) -> str:
    """One statement: spine ASOF LEFT JOIN each view, ttl applied, in spine order; ``nan``:
    a miss or a null as NaN (a model's input) instead of null."""
    selects = ["s.user_id", "s.merchant_id", "s.event_timestamp", "s.label"]
    joins = []
    for alias, (view, (key, _prefix, ttl_days)) in zip("uv", VIEWS.items(), strict=True):
        hit = (
            f"epoch_us(s.event_timestamp) - epoch_us({alias}.event_timestamp) "
            f"<= {ttl_days * DAY_US}"
        )
        for f in feature_names(view):
            value = f"CASE WHEN {hit} THEN {alias}.{f} END"
            selects.append(f"coalesce({value}, 'NaN'::DOUBLE) AS {f}" if nan else f"{value} AS {f}")
        joins.append(
            f"ASOF LEFT JOIN read_parquet('{repo.source_path(view)}') {alias} "
            f"ON s.{key} = {alias}.{key} AND s.event_timestamp >= {alias}.event_timestamp"
        )
    return (
        f"SELECT {', '.join(selects)} "
        f"FROM read_parquet('{spine or repo.spine_path}', file_row_number = true) s "
        + " ".join(joins)
        + " ORDER BY s.file_row_number"
    )


@pytest.fixture(scope="module")
def offline_fs(bench_repo: BenchRepo) -> Any:
    fs = bench_repo.store({"type": "embedded", "path": str(bench_repo.path / "data" / "online")})
    yield fs
    fs.close()


def test_training_set_1m_spine_2_views_20_features(
    benchmark: Any, bench_repo: BenchRepo, offline_fs: Any, request: pytest.FixtureRequest
) -> None:
    import duckdb

    features = feature_refs(*VIEWS)
    sql = floor_sql(bench_repo)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    floor_times: list[float] = []
    ours_times: list[float] = []
    floor_out: dict[str, Any] = {}

    def run_floor() -> Any:
        return con.sql(sql).pl()

    timed_floor = _report.timed(run_floor, floor_times)

    def setup() -> None:
        floor_out.pop("df", None)
        gc.collect()
        floor_out["df"] = timed_floor()
        gc.collect()

    def ours() -> Any:
        return offline_fs.get_historical_features(str(bench_repo.spine_path), features)

    result = benchmark.pedantic(_report.timed(ours, ours_times), setup=setup, rounds=ROUNDS)
    con.close()

    rows = result.height
    _report.record_time_ratio(
        benchmark,
        request.node.nodeid,
        workload=f"training set, {rows:,}-row spine x 2 views x 20 features",
        rows=rows,
        ours_times=ours_times,
        floor_times=floor_times,
        floor_what="DuckDB ASOF LEFT JOIN",
        target=TARGET,
    )

    # same rows, same values as the floor (after recording, so a mismatch still reports speed)
    floor_df = floor_out["df"]
    assert rows == floor_df.height == bench_repo_spine_rows(bench_repo)
    cols = ["user_id", "merchant_id", "label", *feature_names("user_stats")]
    cols += feature_names("merchant_stats")
    assert result.columns[:4] == ["user_id", "merchant_id", "event_timestamp", "label"]
    mismatched = [c for c in cols if not result[c].equals(floor_df[c])]
    assert not mismatched, f"training set differs from the DuckDB ASOF floor in {mismatched}"


def bench_repo_spine_rows(repo: BenchRepo) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(repo.spine_path).metadata.num_rows
