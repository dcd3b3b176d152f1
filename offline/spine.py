"""Entity dataframes ("spines"): any supported frame -> an Arrow table plus UTC microseconds.

A spine is the left side of a point-in-time join: join-key columns plus one timestamp column
saying *when* each row wants its features. Accepted inputs are a polars DataFrame or
LazyFrame, a pandas DataFrame, a pyarrow Table or RecordBatch, or a path (str / Path) to a
Parquet file or folder.

Timestamps: tz-aware values are converted to UTC; naive datetimes are taken as UTC (they are
documented as UTC, never shifted by the local zone); dates mean midnight UTC. Sub-microsecond
values are floored to the microsecond so a spine time never moves into the future.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featurestore.errors import EntityDataError

if TYPE_CHECKING:
    import pyarrow as pa

DEFAULT_TIMESTAMP_COLUMN = "event_timestamp"
_US_PER_UNIT = {"s": 1_000_000, "ms": 1_000}


@dataclass(frozen=True)
class Spine:
    """A normalised spine: the original columns, in order, and the row times in UTC us."""

    table: pa.Table
    timestamp_column: str
    ts_us: pa.Array  # int64 microseconds since the epoch, UTC, no nulls

    @property
    def num_rows(self) -> int:
        return self.table.num_rows

    @property
    def column_names(self) -> list[str]:
        return list(self.table.column_names)


def to_arrow_table(entity_df: Any) -> pa.Table:
    """Any supported spine input as a pyarrow Table (zero-copy where the input allows)."""
    import pyarrow as pa

    if isinstance(entity_df, pa.Table):
        return entity_df
    if isinstance(entity_df, pa.RecordBatch):
        return pa.Table.from_batches([entity_df])
    if isinstance(entity_df, (str, os.PathLike)):
        return _read_parquet(Path(entity_df))
    module = type(entity_df).__module__.split(".")[0]
    if module == "polars":
        import polars as pl

        if isinstance(entity_df, pl.LazyFrame):
            entity_df = entity_df.collect()
        if isinstance(entity_df, pl.DataFrame):
            return entity_df.to_arrow()
    if module == "pandas":
        import pandas as pd

        if isinstance(entity_df, pd.DataFrame):
            if not all(isinstance(c, str) for c in entity_df.columns):
                raise EntityDataError(
                    "entity dataframe has non-string column names "
                    f"{[c for c in entity_df.columns if not isinstance(c, str)]!r}; "
                    "rename the columns to strings"
                )
            if entity_df.columns.has_duplicates:
                dup = sorted(set(entity_df.columns[entity_df.columns.duplicated()]))
                raise EntityDataError(f"entity dataframe repeats column(s) {dup}; rename them")
            try:
                return pa.Table.from_pandas(entity_df, preserve_index=False)
            except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                raise EntityDataError(
                    f"entity dataframe could not be converted to Arrow ({exc}); give each "
                    "column a single type"
                ) from None
    raise EntityDataError(
        f"entity dataframe has unsupported type {type(entity_df).__name__}; pass a polars or "
        "pandas DataFrame, a pyarrow Table or the path of a Parquet file"
    )


def normalize_spine(
    entity_df: Any,
    *,
    timestamp_column: str = DEFAULT_TIMESTAMP_COLUMN,
    required_keys: Mapping[str, Iterable[str]] | None = None,
) -> Spine:
    """Check and normalise a spine; ``required_keys`` maps a view name to the keys it needs."""
    table = to_arrow_table(entity_df)
    names = table.column_names
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise EntityDataError(f"entity dataframe repeats column(s) {dup}; rename them")
    for view_name, keys in (required_keys or {}).items():
        for key in keys:
            if key not in names:
                raise EntityDataError(
                    f"entity dataframe has no column '{key}', the join key feature view "
                    f"'{view_name}' needs; add it (columns: {_brief(names)})"
                )
    ts_us = timestamp_us(table, timestamp_column)
    return Spine(table=table, timestamp_column=timestamp_column, ts_us=ts_us)


def timestamp_us(table: pa.Table, column: str) -> pa.Array:
    """The timestamp column as int64 UTC microseconds; raises when missing, null or not a time."""
    import pyarrow as pa
    import pyarrow.types as pt

    if column not in table.column_names:
        raise EntityDataError(
            f"entity dataframe has no timestamp column '{column}'; add it or pass "
            f"timestamp_column=<name> (columns: {_brief(table.column_names)})"
        )
    col = table.column(column)
    t = col.type
    if pt.is_dictionary(t):
        col, t = col.cast(t.value_type), t.value_type
    if pt.is_date(t):
        col, t = col.cast(pa.timestamp("s")), pa.timestamp("s")
    if not pt.is_timestamp(t):
        raise EntityDataError(
            f"entity dataframe column '{column}' is {t}, not a datetime; convert it (e.g. "
            "polars .str.to_datetime() or pandas.to_datetime) before the join"
        )
    if col.null_count:
        raise EntityDataError(
            f"entity dataframe column '{column}' has {col.null_count} null timestamp(s); drop "
            "or fill those rows, every spine row needs a time"
        )
    # Arrow stores timestamps as UTC epoch offsets whatever the tz: only the unit matters.
    values = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    raw = values.view(pa.int64()) if values.type.bit_width == 64 else values.cast(pa.int64())
    unit = t.unit
    if unit == "us":
        return raw
    import numpy as np

    arr = raw.to_numpy(zero_copy_only=False)
    if unit == "ns":
        out = np.floor_divide(arr, 1000)
    else:
        out = arr * _US_PER_UNIT[unit]
    return pa.array(out, type=pa.int64())


def _read_parquet(path: Path) -> pa.Table:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.exists():
        raise missing_spine(path)
    try:
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise unreadable_spine(path, exc) from None


def missing_spine(path: Path) -> EntityDataError:
    """The error of a spine path that does not exist (whole or chunked reads alike)."""
    return EntityDataError(
        f"entity dataframe path '{path}' does not exist; pass an existing Parquet file or folder"
    )


def unreadable_spine(path: Path, exc: BaseException) -> EntityDataError:
    """The error of a spine path that is not Parquet pyarrow can read."""
    return EntityDataError(
        f"entity dataframe path '{path}' is not readable Parquet ({exc}); write it with "
        "pyarrow/polars .write_parquet"
    )


def _brief(names: list[str]) -> str:
    if len(names) <= 10:
        return ", ".join(names) or "none"
    return ", ".join(names[:8]) + f", ... ({len(names)} in all)"
