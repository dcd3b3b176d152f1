"""Stream entries as typed events: parsing, checking against the source's columns, and columns.

An entry is either one field ``data`` holding a JSON object, or flat fields (every value a
string, parsed by its column's type). A bad entry yields a one-line reason naming the field;
it never stops the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from featurestore._time import to_us
from featurestore.errors import DefinitionError
from featurestore.types import DType, UnixTimestamp, dtype_from_arrow, value_fits

if TYPE_CHECKING:
    import pyarrow as pa

    from featurestore.feature_view import FeatureView
    from featurestore.offline.store import OfflineStore
    from featurestore.sources import StreamSource

_INTS = ("int32", "int64")
_FLOATS = ("float32", "float64")
_MIN_US, _MAX_US = -62_135_596_800_000_000, 253_402_300_799_999_999  # years 1 to 9999
_TRUE = {"true": True, "1": True, "false": False, "0": False}


def entry_id(raw: bytes | str) -> tuple[int, int]:
    """A stream entry id ``ms-seq`` as a pair that orders as Redis orders them."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


@dataclass
class Event:
    """One valid event: its entry id, event time (us), created time (us or None) and values."""

    id: tuple[int, int]
    raw_id: str
    ts: int
    created: int | None
    values: dict[str, Any]
    fields: Any = None  # the entry as read (for a dead letter that names it)
    applied_us: int | None = None  # when ingest applied it online: its rank in offline ties


@dataclass
class EventSchema:
    """The columns a source's events must fit: name -> type (join keys, inputs, timestamps, and
    the source's other columns, kept in its batch files for views defined later)."""

    source: StreamSource
    columns: dict[str, DType]
    arrow: dict[str, pa.DataType]  # the batch files' own column types (what the sink writes)
    keys: tuple[str, ...]  # every join key of every view reading the source
    max_future_us: int = 3_600_000_000  # an event further ahead of its XADD time is refused
    max_past_us: int | None = None  # ... and one further behind it (None: no bound)

    @classmethod
    def build(
        cls,
        source: StreamSource,
        views: list[FeatureView],
        offline: OfflineStore,
        max_future_us: int = 3_600_000_000,
        max_past_us: int | None = None,
    ) -> EventSchema:
        """Column types from ``source.schema`` or else from the batch source's Parquet files."""
        import pyarrow as pa

        wanted: list[str] = []
        keys: list[str] = []
        for view in views:
            for k in view.join_keys:
                if k not in keys:
                    keys.append(k)
            cols = view.window.source_columns() if view.window else view.feature_names
            wanted += [c for c in (*view.join_keys, *cols) if c not in wanted]
        ts_cols = [c for c in (source.timestamp_field, source.created_timestamp_field) if c]
        if source.schema is not None:
            arrow = {f.name: f.dtype.to_arrow() for f in source.schema}
            arrow.update({c: pa.timestamp("us", tz="UTC") for c in ts_cols})
        else:
            try:
                schema = offline.source_schema(source)
            except Exception as exc:  # one line for the user, naming the fix
                raise DefinitionError(
                    f"stream source '{source.name}': no column types ({exc}); give the source a "
                    "schema=[Field(...)] or put a Parquet file in its batch folder"
                ) from None
            arrow = {f.name: f.type for f in schema}
        columns: dict[str, DType] = {}
        for c in [*wanted, *ts_cols]:
            if c not in arrow:
                raise DefinitionError(
                    f"stream source '{source.name}': column '{c}' (read by its views) has no "
                    "type; add it to the source's schema or its batch files"
                )
            dtype = UnixTimestamp if c in ts_cols else dtype_from_arrow(arrow[c])
            if dtype is None:
                raise DefinitionError(
                    f"stream source '{source.name}': column '{c}' is {arrow[c]}, which events "
                    "cannot carry; use numbers, bools, strings or times"
                )
            columns[c] = dtype
        for c, kind in arrow.items():  # the source's other columns: kept, as the events hold
            dtype = None if c in columns else dtype_from_arrow(kind)  # them, for later views
            if dtype is not None:
                columns[c] = dtype
        arrow = {c: arrow[c] for c in columns}
        return cls(source, columns, arrow, tuple(keys), max_future_us, max_past_us)

    def parse(self, raw_id: bytes | str, fields: dict[Any, Any]) -> Event | str:
        """The event in one entry, or the reason it is bad (one line naming the field)."""
        rid = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
        flat = False
        if set(fields) in ({b"data"}, {"data"}):
            try:
                obj = orjson.loads(next(iter(fields.values())))
            except orjson.JSONDecodeError as exc:
                return f"field 'data' is not JSON ({str(exc).splitlines()[0]})"
            if not isinstance(obj, dict):
                return f"field 'data' holds a JSON {type(obj).__name__}, not an object"
        else:
            obj = {as_text(k): as_text(v) for k, v in fields.items()}
            flat = True
        values: dict[str, Any] = {}
        for name, dtype in self.columns.items():
            v = obj.get(name)
            if flat and v is not None:
                v = _from_text(v, dtype)
            if v is None:
                if name in self.keys:
                    return f"join key '{name}' is missing"
                values[name] = None
                continue
            if dtype is UnixTimestamp:
                us = _time_us(v)
                if us is None:
                    return (
                        f"'{name}' is {v!r}; give an ISO 8601 time or microseconds since the epoch"
                    )
                values[name] = us
            elif value_fits(v, dtype.name):
                values[name] = float(v) if dtype.name in _FLOATS else v
            else:
                return f"'{name}' is {v!r} ({type(v).__name__}); the column is {dtype.name}"
        ts_field = self.source.timestamp_field
        ts = values.get(ts_field)
        if ts is None:
            return f"timestamp '{ts_field}' is missing"
        eid = entry_id(rid)
        if ts - eid[0] * 1000 > self.max_future_us:
            # a future event would hold an entity's window (or row) hostage: never late, never
            # replaced; the entry id's clock (the XADD time) keeps the decision the same on replay
            return (
                f"'{ts_field}' {obj.get(ts_field)!r} is more than stream.max_future ahead of the "
                "time it was added to the stream (a unit or time zone mix-up?)"
            )
        if self.max_past_us is not None and eid[0] * 1000 - ts > self.max_past_us:
            # e.g. seconds sent as microseconds: 1970, which would be an entity's first event
            return (
                f"'{ts_field}' {obj.get(ts_field)!r} is more than stream.max_past behind the "
                "time it was added to the stream (a unit or time zone mix-up?)"
            )
        cr_field = self.source.created_timestamp_field
        created = values.get(cr_field) if cr_field else None
        return Event(eid, rid, ts, created, values)


def as_text(v: Any) -> Any:
    """Bytes from Redis as str (ids, field names and values); anything else as it is."""
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else v


def _from_text(v: str, dtype: DType) -> Any:
    """A flat field's string as its column's Python value (left as is when it does not parse)."""
    try:
        if dtype.name in _INTS:
            return int(v)
        if dtype.name in _FLOATS:
            return float(v)
    except ValueError:
        return v
    if dtype.name == "bool":
        return _TRUE.get(v.lower(), v)
    if dtype is UnixTimestamp and v.lstrip("-").isdigit():
        return int(v)
    return v


def _time_us(v: Any) -> int | None:
    """Microseconds for an ISO 8601 string or an integer; None for anything else."""
    if isinstance(v, bool) or not isinstance(v, (int, str)) or v == "now":
        return None
    try:
        us = to_us(v)
    except (TypeError, ValueError, OverflowError):
        return None
    return us if _MIN_US <= us <= _MAX_US else None


def columns_of(events: list[Event], names: list[str] | tuple[str, ...], arrow: dict) -> dict:
    """Arrow arrays (with nulls) of ``names`` over ``events``, typed as the batch files are."""
    import pyarrow as pa

    out = {}
    for c in names:
        vals = [e.values[c] for e in events]
        t = arrow[c]
        if pa.types.is_timestamp(t) or pa.types.is_date(t):
            out[c] = pa.array(vals, pa.int64()).cast(pa.timestamp("us", tz="UTC")).cast(t)
        else:
            out[c] = pa.array(vals, t)
    return out
