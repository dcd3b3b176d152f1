"""SQL building blocks for the offline store: quoting, type mapping and per-view source plans.

A ``SourcePlan`` turns a feature view plus the Arrow schema of its source into the SQL
expressions every query needs: the relation, the event/created timestamps as int64 UTC
microseconds, and each feature cast to its declared type. Integer timestamp columns are taken
as microseconds since the epoch (``UnixTimestamp``); timestamp columns of any unit or zone and
dates (midnight UTC) are converted. Nanosecond source times are rounded UP to the microsecond:
spine times are floored, so an event a few nanoseconds after a spine time is never served at
it (never a value from the future); the cost is an event up to 999 ns late.

Ties: rows of one key at one event time are ranked by created time (a null one loses), then,
for Parquet sources, by file order (the files as DuckDB lists them, by name: offline pushes'
names sort in push order, see offline/push.py) and row order in the file, the last winning.
So the push that came last wins offline as it does online, and of one file's rows the last.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from featurestore.types import DType

if TYPE_CHECKING:
    import pyarrow as pa

    from featurestore.feature_view import FeatureView

FILE_INDEX = "__fs_fi"  # the row's file, in listing order
FILE_ROW = "__fs_fr"  # the row's place in its file
_MIN_BIGINT = "CAST(-9223372036854775808 AS BIGINT)"
_MAX_BIGINT = "CAST(9223372036854775807 AS BIGINT)"

_DUCK = {
    "int32": "INTEGER",
    "int64": "BIGINT",
    "float32": "FLOAT",
    "float64": "DOUBLE",
    "bool": "BOOLEAN",
    "string": "VARCHAR",
    "bytes": "BLOB",
    "timestamp": "TIMESTAMPTZ",
}


def ident(name: str) -> str:
    """A double-quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def duck_type(dtype: DType) -> str:
    """The DuckDB type a declared feature type is cast to."""
    if dtype.inner is not None:
        return duck_type(dtype.inner) + "[]"
    return _DUCK[dtype.name]


def time_us_expr(column: str, arrow_type: pa.DataType) -> str | None:
    """SQL for a source time column as int64 UTC microseconds; None if it is not a time."""
    import pyarrow.types as pt

    col = ident(column)
    if pt.is_timestamp(arrow_type) and arrow_type.unit == "ns":
        # ceil, not epoch_us's floor; epoch_ns takes TIMESTAMP_NS and TIMESTAMPTZ_NS alike
        ns = f"epoch_ns({col})"
        return f"({ns} // 1000 + CASE WHEN {ns} % 1000 > 0 THEN 1 ELSE 0 END)"
    if pt.is_timestamp(arrow_type):
        return f"epoch_us({col})"
    if pt.is_date(arrow_type):
        return f"epoch_us(CAST({col} AS TIMESTAMP))"
    if pt.is_integer(arrow_type):
        return f"CAST({col} AS BIGINT)"
    return None


def cast_expr(expr: str, dtype: DType, arrow_type: pa.DataType | None) -> str:
    """``expr`` (a source column of ``arrow_type``) cast to the declared ``dtype``."""
    import pyarrow.types as pt

    if dtype.name == "timestamp" and arrow_type is not None and pt.is_integer(arrow_type):
        return f"CAST(make_timestamp(CAST({expr} AS BIGINT)) AS TIMESTAMPTZ)"
    return f"CAST({expr} AS {duck_type(dtype)})"


@dataclass(frozen=True)
class SourcePlan:
    """What the queries of one feature view select from its source."""

    view: FeatureView
    relation: str  # a FROM-able SQL relation
    event_us: str  # SQL: event timestamp as int64 us
    created_us: str | None  # SQL: created timestamp as int64 us, None when the source has none
    event_column: str
    source_types: dict[str, pa.DataType]
    file_order: bool = False  # ties broken by file and row order (see the module doc)

    @property
    def keys(self) -> tuple[str, ...]:
        return self.view.join_keys

    def base_select(self, features: list[str], *, where: str = "") -> str:
        """Source rows with keys, ``__fs_ev``, ``__fs_cr``, the file and row order ``__fs_fi``
        and ``__fs_fr`` (with ``file_order``) and raw features; null times dropped."""
        cols = [ident(k) for k in self.keys]
        cols.append(f"{self.event_us} AS __fs_ev")
        cols.append(f"{self.created_us or 'CAST(NULL AS BIGINT)'} AS __fs_cr")
        if self.file_order:
            cols.append(f"CAST(file_index AS BIGINT) AS {FILE_INDEX}")
            cols.append(f"CAST(file_row_number AS BIGINT) AS {FILE_ROW}")
        cols += [ident(f) for f in features]
        cond = f"{ident(self.event_column)} IS NOT NULL"
        if where:
            cond += f" AND ({where})"
        return f"SELECT {', '.join(cols)} FROM {self.relation} AS __fs_src WHERE {cond}"

    def tie_order(self, qualifier: str) -> list[str]:
        """ORDER BY terms ranking rows of one key and event time, the winner first."""
        q = f"{qualifier}." if qualifier else ""
        terms = [f"{q}__fs_cr DESC NULLS LAST"] if self.created_us is not None else []
        if self.file_order:
            terms += [f"{q}{FILE_INDEX} DESC", f"{q}{FILE_ROW} DESC"]
        return terms

    def rank_struct(self, qualifier: str) -> str:
        """A struct of a base row's (event time, created time, file, row) that compares as the
        tie rule ranks rows: an ASOF join on it picks the winner with no sort of its own."""
        q = f"{qualifier}."
        parts = [f"'e': {q}__fs_ev"]
        if self.created_us is not None:
            parts.append(f"'c': coalesce({q}__fs_cr, {_MIN_BIGINT})")
        parts += [f"'i': {q}{FILE_INDEX}", f"'r': {q}{FILE_ROW}"]
        return "{" + ", ".join(parts) + "}"

    def rank_bound(self, time_us: str) -> str:
        """The ``rank_struct`` value above every row at or before ``time_us``."""
        parts = [f"'e': {time_us}"]
        if self.created_us is not None:
            parts.append(f"'c': {_MAX_BIGINT}")
        parts += [f"'i': {_MAX_BIGINT}", f"'r': {_MAX_BIGINT}"]
        return "{" + ", ".join(parts) + "}"

    def feature_cast(self, feature: str, qualifier: str) -> str:
        """``qualifier.feature`` cast to its declared type."""
        field = self.view.field(feature)
        return cast_expr(
            f"{qualifier}.{ident(feature)}", field.dtype, self.source_types.get(feature)
        )


def key_match(keys: tuple[str, ...], left: str, right: str) -> str:
    """``left.k = right.k AND ...`` for every join key."""
    return " AND ".join(f"{left}.{ident(k)} = {right}.{ident(k)}" for k in keys)
