"""Spine normalisation: every input kind, time zones and units, and every error path."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore.errors import EntityDataError
from featurestore.offline.spine import normalize_spine, to_arrow_table

US_2024 = 1_704_067_200_000_000  # 2024-01-01T00:00:00Z in microseconds


def _frames(tmp_path: Path) -> dict[str, object]:
    data = {"user_id": [1, 2], "event_timestamp": [datetime(2024, 1, 1), datetime(2024, 1, 2)]}
    path = tmp_path / "spine.parquet"
    pl.DataFrame(data).write_parquet(path)
    return {
        "polars": pl.DataFrame(data),
        "lazy": pl.DataFrame(data).lazy(),
        "pandas": pd.DataFrame(data),
        "arrow": pa.table(data),
        "batch": pa.RecordBatch.from_pydict(data),
        "path-str": str(path),
        "path": path,
    }


@pytest.mark.parametrize("kind", ["polars", "lazy", "pandas", "arrow", "batch", "path-str", "path"])
def test_every_input_kind_gives_the_same_utc_microseconds(tmp_path: Path, kind: str) -> None:
    spine = normalize_spine(_frames(tmp_path)[kind], required_keys={"v": ["user_id"]})
    assert spine.ts_us.to_pylist() == [US_2024, US_2024 + 86_400_000_000]
    assert spine.column_names == ["user_id", "event_timestamp"]
    assert spine.table.column("user_id").to_pylist() == [1, 2]


def test_naive_is_utc_and_aware_is_converted() -> None:
    naive = pd.DataFrame({"t": [datetime(2024, 1, 1, 1, 0)]})
    paris = pd.DataFrame({"t": [datetime(2024, 1, 1, 2, 0, tzinfo=timezone(timedelta(hours=1)))]})
    as_utc = normalize_spine(naive, timestamp_column="t").ts_us.to_pylist()
    assert as_utc == [US_2024 + 3_600_000_000]
    assert normalize_spine(paris, timestamp_column="t").ts_us.to_pylist() == as_utc
    pl_aware = pl.DataFrame({"t": [datetime(2024, 1, 1, 1, 0)]}).with_columns(
        pl.col("t").dt.replace_time_zone("UTC").dt.convert_time_zone("Asia/Tokyo")
    )
    assert normalize_spine(pl_aware, timestamp_column="t").ts_us.to_pylist() == as_utc


def test_units_are_scaled_and_nanoseconds_floor() -> None:
    table = pa.table(
        {
            "s": pa.array([1], pa.timestamp("s")),
            "ms": pa.array([1], pa.timestamp("ms")),
            "ns": pa.array([-1_500], pa.timestamp("ns")),
            "d": pa.array([date(1970, 1, 2)], pa.date32()),
        }
    )
    assert normalize_spine(table, timestamp_column="s").ts_us.to_pylist() == [1_000_000]
    assert normalize_spine(table, timestamp_column="ms").ts_us.to_pylist() == [1_000]
    # -1.5 us floors to -2 us so a spine time never moves forward into the future
    assert normalize_spine(table, timestamp_column="ns").ts_us.to_pylist() == [-2]
    assert normalize_spine(table, timestamp_column="d").ts_us.to_pylist() == [86_400_000_000]


def test_all_columns_and_row_order_are_kept() -> None:
    times = [datetime(2024, 1, 3), datetime(2024, 1, 1), datetime(2024, 1, 1)]
    df = pl.DataFrame({"b": ["x", "y", "y"], "event_timestamp": times, "a": [3, 1, 1]})
    spine = normalize_spine(df)
    assert pl.from_arrow(spine.table).equals(df)


def test_missing_join_key_names_the_view() -> None:
    df = pl.DataFrame({"event_timestamp": [datetime(2024, 1, 1)]})
    with pytest.raises(
        EntityDataError, match="no column 'user_id', the join key feature view 'user_stats' needs"
    ):
        normalize_spine(df, required_keys={"user_stats": ["user_id"]})


def test_missing_timestamp_column_says_how_to_fix() -> None:
    df = pl.DataFrame({"user_id": [1], "ts": [datetime(2024, 1, 1)]})
    with pytest.raises(EntityDataError, match=r"no timestamp column 'event_timestamp'.*pass ti"):
        normalize_spine(df)


@pytest.mark.parametrize("values", [["2024-01-01"], [1_704_067_200]])
def test_timestamp_column_that_is_not_a_datetime_is_refused(values: list[object]) -> None:
    df = pl.DataFrame({"event_timestamp": values})
    with pytest.raises(EntityDataError, match=r"'event_timestamp' is .*, not a datetime; convert"):
        normalize_spine(df)


def test_null_timestamps_are_refused() -> None:
    df = pl.DataFrame({"event_timestamp": [datetime(2024, 1, 1), None]})
    with pytest.raises(EntityDataError, match="'event_timestamp' has 1 null timestamp"):
        normalize_spine(df)


def test_unsupported_input_type() -> None:
    with pytest.raises(EntityDataError, match="unsupported type dict; pass a polars or pandas"):
        to_arrow_table({"a": [1]})


def test_parquet_path_missing_or_not_parquet(tmp_path: Path) -> None:
    with pytest.raises(EntityDataError, match="does not exist"):
        to_arrow_table(tmp_path / "nope.parquet")
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    with pytest.raises(EntityDataError, match="is not readable Parquet"):
        to_arrow_table(bad)


def test_pandas_column_name_problems() -> None:
    dup = pd.DataFrame([[1, 2]], columns=["a", "a"])
    with pytest.raises(EntityDataError, match=r"repeats column\(s\) \['a'\]"):
        to_arrow_table(dup)
    with pytest.raises(EntityDataError, match="non-string column names"):
        to_arrow_table(pd.DataFrame({0: [1]}))
    with pytest.raises(EntityDataError, match="could not be converted to Arrow"):
        to_arrow_table(pd.DataFrame({"a": [1, "x"]}))


def test_parquet_spine_keeps_file_columns(tmp_path: Path) -> None:
    path = tmp_path / "s.parquet"
    pq.write_table(
        pa.table({"event_timestamp": pa.array([US_2024], pa.timestamp("us", tz="UTC")), "z": [1]}),
        path,
    )
    spine = normalize_spine(path)
    assert spine.column_names == ["event_timestamp", "z"]
    assert spine.ts_us.to_pylist() == [US_2024]
