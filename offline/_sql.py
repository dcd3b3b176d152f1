"""SQL building blocks for the offline store: quoting, type mapping and per-view source plans.

A ``SourcePlan`` turns a feature view plus the Arrow schema of its source into the SQL
expressions every query needs: the relation, the event/created timestamps as int64 UTC
microseconds, and each feature cast to its declared type. Integer timestamp columns are taken
as microseconds since the epoch (``UnixTimestamp``); timestamp columns of any unit or zone and
dates (midnight UTC) are converted. Nanosecond source times are rounded UP to the microsecond:
spine times are floored, so an event a few nanoseconds after a spine time is never served at
it (never a value from the future); the cost is an event up to 999 ns late.

Ties: rows of one key at one event time are ranked by created time (a null one loses), then,
for Parquet sources, by the push time the file's name carries (``file_rank``): an offline push
file (``push-<view>-t-<us>-<seq>...``, offline/push.py) or a compacted one
(``push-<view>-compact-<us>-<seq>...``, offline/compact.py) ranks by (push time, sequence),
whatever view it was pushed to; an older release's ``push-<view>-[compact-]<us>-...`` file by
that time alone, below a current push of the same microsecond; a stream ingest file
(``stream-<source>-<first id>-<last id>``) row by row, by the time ingest applied the row online
(its ``__fs_applied_us`` column; a file an older release wrote, without it, by its last entry
id: XADD time, then sequence); every other file (the data loaded into the folder) below all of them. Then by file path, then row order in the file,
the last winning. So the push that came last wins offline as it does online.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from featurestore.types import DType

if TYPE_CHECKING:
    import pyarrow as pa

    from featurestore.feature_view import FeatureView

FILE_INDEX = "__fs_fi"  # the row's file, in listing order
FILE_ROW = "__fs_fr"  # the row's place in its file
PUSH_TIME = "__fs_pt"  # the push time (us) the row's file name carries (see file_rank)
PUSH_SEQ = "__fs_ps"  # the pushing process's sequence in that name (see file_rank)
APPLIED_US = "__fs_applied_us"  # a stream file's column: when ingest applied the row online
_MIN_BIGINT = "CAST(-9223372036854775808 AS BIGINT)"
_MAX_BIGINT = "CAST(9223372036854775807 AS BIGINT)"
BASE_RANK = (-(2**63), -(2**63))  # a file no push or ingest made: below every push
NO_SEQ = -1  # the sequence of a name that carries none (below a current push's 0)

# A file's base name, five groups: a current push's or compacted file's (1) time and (2)
# sequence; (3) an older release's push or compacted time; a stream file's last entry id,
# (4) its XADD ms and (5) its sequence in that ms.
# Plain regex syntax that DuckDB's RE2 and Python's re read alike. View and source names hold
# no "-" (offline/push.py ``_safe``, online/stream/sink.py ``_SAFE``).
NAME_PATTERN = (
    r"(?:^|[/\\])(?:push-[^-/\\]*-(?:t|compact)-(\d{1,18})-(\d{10})[0-9a-f]{8}"
    r"|push-[^-/\\]*-(?:compact-)?(\d{1,18})-[^-/\\]*"
    r"|stream-[^-/\\]*-\d{1,15}_\d{1,18}-(\d{1,15})_(\d{1,18}))\.parquet$"
)
_NAME_RE = re.compile(NAME_PATTERN)


def file_rank(path: str) -> tuple[int, int]:
    """(push time us, sequence) a file's name gives its rows in ties: see the module doc."""
    m = _NAME_RE.search(path)
    if m is None:
        return BASE_RANK
    if m.group(1) is not None:
        return int(m.group(1)), int(m.group(2))
    if m.group(3) is not None:
        return int(m.group(3)), NO_SEQ
    return int(m.group(4)) * 1000, int(m.group(5))


def ranked_rows(relation: str, *, applied: bool = False) -> str:
    """``SELECT *`` of a Parquet ``relation`` plus each row's tie rank: file index and row
    (``__fs_fi``, ``__fs_fr``) and its file's ``file_rank`` (``__fs_pt``, ``__fs_ps``), taken
    from DuckDB's ``filename`` once per file name, not per row's value. With ``applied`` (the
    relation has an ``APPLIED_US`` column), a row that holds one ranks by (that time, 0)."""
    inner = (
        f"SELECT *, CAST(file_index AS BIGINT) AS {FILE_INDEX}, "
        f"CAST(file_row_number AS BIGINT) AS {FILE_ROW}, "
        f"regexp_extract(filename, '{NAME_PATTERN}', ['t', 's', 'o', 'm', 'n']) AS __fs_nm "
        f"FROM {relation} AS __fs_scan"
    )
    n = "__fs_nm"
    own_time = own_seq = ""
    if applied:
        own_time = f"WHEN {APPLIED_US} IS NOT NULL THEN CAST({APPLIED_US} AS BIGINT) "
        own_seq = f"WHEN {APPLIED_US} IS NOT NULL THEN 0 "
    time = (
        f"CASE {own_time}WHEN {n}.t <> '' THEN CAST({n}.t AS BIGINT) "
        f"WHEN {n}.o <> '' THEN CAST({n}.o AS BIGINT) "
        f"WHEN {n}.m <> '' THEN CAST({n}.m AS BIGINT) * 1000 ELSE {_MIN_BIGINT} END"
    )
    seq = (
        f"CASE {own_seq}WHEN {n}.s <> '' THEN CAST({n}.s AS BIGINT) "
        f"WHEN {n}.m <> '' THEN CAST({n}.n AS BIGINT) "
        f"WHEN {n}.o <> '' THEN {NO_SEQ} ELSE {_MIN_BIGINT} END"
    )
    return f"SELECT *, {time} AS {PUSH_TIME}, {seq} AS {PUSH_SEQ} FROM ({inner}) AS __fs_named"


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


def time_us_expr(column: str, arrow_type: pa.DataType, qualifier: str = "") -> str | None:
    """SQL for a source time column (of relation ``qualifier`` when given) as int64 UTC
    microseconds; None if it is not a time."""
    import pyarrow.types as pt

    col = f"{qualifier}.{ident(column)}" if qualifier else ident(column)
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
    file_order: bool = False  # ties broken by push time, file and row (see the module doc)
    applied_rank: bool = False  # stream files' rows carry their own rank (APPLIED_US)

    @property
    def keys(self) -> tuple[str, ...]:
        return self.view.join_keys

    def base_select(self, features: list[str], *, where: str = "") -> str:
        """Source rows with keys, ``__fs_ev``, ``__fs_cr``, the tie rank ``__fs_pt``,
        ``__fs_ps``, ``__fs_fi`` and ``__fs_fr`` (with ``file_order``) and raw features; null
        times dropped."""
        cols = [ident(k) for k in self.keys]
        cols.append(f"{self.event_us} AS __fs_ev")
        cols.append(f"{self.created_us or 'CAST(NULL AS BIGINT)'} AS __fs_cr")
        relation = self.relation
        if self.file_order:
            cols += [PUSH_TIME, PUSH_SEQ, FILE_INDEX, FILE_ROW]
            relation = f"({ranked_rows(relation, applied=self.applied_rank)})"
        cols += [ident(f) for f in features]
        cond = f"{ident(self.event_column)} IS NOT NULL"
        if where:
            cond += f" AND ({where})"
        return f"SELECT {', '.join(cols)} FROM {relation} AS __fs_src WHERE {cond}"

    def tie_order(self, qualifier: str) -> list[str]:
        """ORDER BY terms ranking rows of one key and event time, the winner first."""
        q = f"{qualifier}." if qualifier else ""
        terms = [f"{q}__fs_cr DESC NULLS LAST"] if self.created_us is not None else []
        if self.file_order:
            terms += [f"{q}{c} DESC" for c in (PUSH_TIME, PUSH_SEQ, FILE_INDEX, FILE_ROW)]
        return terms

    def rank_struct(self, qualifier: str) -> str:
        """A struct of a base row's (event time, created time, push time, sequence, file, row)
        that compares as the tie rule ranks rows: an ASOF join on it picks the winner with no
        sort of its own."""
        q = f"{qualifier}."
        parts = [f"'e': {q}__fs_ev"]
        if self.created_us is not None:
            parts.append(f"'c': coalesce({q}__fs_cr, {_MIN_BIGINT})")
        parts += [
            f"'{a}': {q}{c}"
            for a, c in zip("pqir", (PUSH_TIME, PUSH_SEQ, FILE_INDEX, FILE_ROW), strict=True)
        ]
        return "{" + ", ".join(parts) + "}"

    def rank_bound(self, time_us: str) -> str:
        """The ``rank_struct`` value above every row at or before ``time_us``."""
        parts = [f"'e': {time_us}"]
        if self.created_us is not None:
            parts.append(f"'c': {_MAX_BIGINT}")
        parts += [f"'{a}': {_MAX_BIGINT}" for a in "pqir"]
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
