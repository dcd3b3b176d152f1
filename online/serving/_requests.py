"""Request parsing shared by every front end: entity rows, request data and push rows.

Pure functions over Python values, so they are tested without a server.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np

from featurestore._time import to_us
from featurestore.online.keys import kind_mismatch
from featurestore.online.serving.errors import (
    BadRequestError,
    TooManyEntitiesError,
    join_key_error,
)
from featurestore.types import INT_RANGES, past_float32, value_fits

if TYPE_CHECKING:
    import pyarrow as pa

    from featurestore.feature_view import FeatureView

Columns = dict[str, list[Any]]
RequestFields = dict[str, tuple[str, str]]  # request field -> (a view reading it, its dtype)
_INT64_MIN, _INT64_MAX = INT_RANGES["int64"]
# the times a datetime can hold (years 1-9999), in microseconds since the epoch
_US_MIN = to_us(datetime.min.replace(tzinfo=timezone.utc))
_US_MAX = to_us(datetime.max.replace(tzinfo=timezone.utc))
TIME_FORMS = "microseconds since the epoch or an ISO 8601 time (in process also a datetime)"


def to_columns(
    rows: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]], what: str
) -> Columns:
    """Columnar ``{name: [values]}`` from columns or from a list of row dicts; equal lengths."""
    if isinstance(rows, Mapping):
        cols: Columns = {}
        for k, v in rows.items():
            if not isinstance(k, str):
                raise BadRequestError(
                    f"{what}: column names must be strings, got {k!r}", field=what
                )
            if isinstance(v, (str, bytes)) or not isinstance(v, Sequence):
                raise BadRequestError(
                    f"{what}.{k} must be a list of values, got {type(v).__name__}",
                    field=f"{what}.{k}",
                )
            cols[k] = list(v)
        lengths = {k: len(cols[k]) for k in sorted(cols)}  # by name: a gRPC map has no order
        if len(set(lengths.values())) > 1:
            raise BadRequestError(f"{what}: columns have different lengths {lengths}", field=what)
        return cols
    if isinstance(rows, (str, bytes)) or not isinstance(rows, Sequence):
        raise BadRequestError(f"{what} must be a mapping of columns or a list of rows", field=what)
    cols = {}
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise BadRequestError(
                f"{what}[{i}] must be an object of name -> value", field=f"{what}[{i}]"
            )
        if i == 0:
            cols = {k: [] for k in row}
        elif set(row) != set(cols):
            raise BadRequestError(
                f"{what}[{i}] has keys {sorted(row)} but {what}[0] has {sorted(cols)}",
                field=f"{what}[{i}]",
            )
        for k, v in row.items():
            cols[k].append(v)
    return cols


def n_rows(cols: Columns) -> int:
    return len(next(iter(cols.values()))) if cols else 0


def check_entities(
    cols: Columns,
    join_keys: dict[str, str],
    max_entities: int,
    kinds: Mapping[str, str] | None = None,
    where: str = "entities",
) -> int:
    """Validate join-key columns (ints or strings, no nulls); returns the entity count.

    ``join_keys`` maps each needed key to a view that needs it (for the message); ``kinds``
    (the registry's join_key_kinds) is whether each key holds integers or strings.
    """
    for key, view in join_keys.items():
        if key not in cols:
            raise BadRequestError(
                f"entities lack join key '{key}' (needed by feature view '{view}'); "
                f"given: {sorted(cols) or 'none'}",
                field=f"entities.{key}",
            )
    n = n_rows(cols)
    if n == 0:
        raise BadRequestError("no entities given; pass at least one entity row", field="entities")
    if n > max_entities:
        raise TooManyEntitiesError(
            f"{n} entities in one request; the limit is {max_entities} (serving.max_entities)",
            field="entities",
        )
    for key in join_keys:
        col = cols[key]
        want = kinds.get(key) if kinds else None
        types = set(map(type, col))  # the usual case: C-level passes only
        if types == {int} and want != "str" and _INT64_MIN <= min(col) and max(col) <= _INT64_MAX:
            continue
        if types == {str} and want != "int":
            continue
        for i, v in enumerate(col):
            if isinstance(v, bool) or not isinstance(v, (int, str)):
                raise join_key_error(f"{where}.{key}", i, v)
            if isinstance(v, int) and not _INT64_MIN <= v <= _INT64_MAX:
                raise join_key_error(f"{where}.{key}", i, int(v))
        hit = kind_mismatch(col, want) if want else None
        if hit is not None:
            i, v = hit
            raise join_key_error(f"{where}.{key}", i, v, holds=want)
    return n


def request_fields(requests: Sequence[tuple[Any, list[str]]]) -> RequestFields:
    """Request fields the on-demand views among ``requests`` read -> (a view reading it, the
    field's dtype name)."""
    out: RequestFields = {}
    for view, feats in requests:
        inputs_of = getattr(view, "inputs_of", None)
        if inputs_of is None:
            continue
        request = {f.name: f.dtype.name for f in view.request_schema}
        for f in feats:
            for i in inputs_of(f):
                if i in request:
                    out.setdefault(i, (view.name, request[i]))
    return out


def check_request_data(cols: Columns, n: int, needed: RequestFields) -> None:
    """Every needed request field present, of its declared type, one value per entity row."""
    for k, (view, dtype) in needed.items():
        if k not in cols:
            raise BadRequestError(
                f"request_data lacks '{k}', an input of on-demand feature view '{view}'; "
                f"given: {sorted(cols) or 'none'}",
                field=f"request_data.{k}",
            )
        col = cols[k]
        for i, v in enumerate(col):
            if not value_fits(v, dtype):
                raise BadRequestError(
                    f"request_data.{k}[{i}] is {v!r} ({type(v).__name__}); request field "
                    f"'{k}' of on-demand feature view '{view}' is {dtype}",
                    field=f"request_data.{k}",
                )
        if dtype == "float32":  # a finite number past float32's range would round to infinity
            i = next((i for i, v in enumerate(col) if v is not None and past_float32(v)), None)
            if i is not None:
                raise BadRequestError(
                    f"request_data.{k}[{i}] is {col[i]!r}; request field '{k}' of on-demand "
                    f"feature view '{view}' is float32, which holds finite values up to about "
                    "+-3.4e+38",
                    field=f"request_data.{k}",
                )
    for k, v in cols.items():
        if len(v) != n:
            raise BadRequestError(
                f"request_data.{k} has {len(v)} values but there are {n} entities",
                field=f"request_data.{k}",
            )


def push_table(
    view: FeatureView,
    rows: Columns,
    now_us: int,
    max_rows: int,
    kinds: Mapping[str, str] | None = None,
) -> pa.Table:
    """The validated Arrow table ``online.writer.write_table`` takes for ``view`` (join keys
    checked against ``kinds``, the registry's join_key_kinds)."""
    import pyarrow as pa

    from featurestore.on_demand_view import OnDemandFeatureView
    from featurestore.online.codec import CREATED_TS, EVENT_TS

    if isinstance(view, OnDemandFeatureView):
        raise BadRequestError(
            f"push: feature_view '{view.name}' is an on-demand view; its features are computed at "
            "request time from request data and other views, so it takes no push: push to "
            "the plain feature views it reads",
            field="feature_view",
        )
    if getattr(view, "is_window", False):
        raise BadRequestError(
            f"push: feature view '{view.name}' aggregates events over windows; its online state "
            "is written by materialize and by `featurestore ingest` from a StreamSource, and "
            "push takes rows of plain feature views only",
            field="feature_view",
        )
    n = n_rows(rows)
    if n == 0:
        raise BadRequestError("push: no rows given", field="rows")
    if n > max_rows:
        raise TooManyEntitiesError(
            f"push: {n} rows in one request; the limit is {max_rows}", field="rows"
        )
    ts_col = view.source.timestamp_field
    allowed = {*view.join_keys, *view.feature_names, ts_col, "event_timestamp"}
    unknown = sorted(set(rows) - allowed)
    created = getattr(view.source, "created_timestamp_field", None)
    if created is not None and created in unknown:  # Feast's push frames carry it
        raise BadRequestError(
            f"push: '{created}' is the created timestamp of feature view '{view.name}''s "
            "source, which a push sets itself (the time of the push, so of two pushes at one "
            "event time the later wins); leave the column out",
            field=f"rows.{created}",
        )
    if unknown:
        raise BadRequestError(
            f"push: feature view '{view.name}' has no column(s) {unknown}; it has join keys "
            f"{list(view.join_keys)} and features {list(view.feature_names)}",
            field=f"rows.{unknown[0]}",
        )
    check_entities(rows, dict.fromkeys(view.join_keys, view.name), max_rows, kinds, "rows")
    missing = [f for f in view.feature_names if f not in rows]
    if missing:
        raise BadRequestError(
            f"push: rows for feature view '{view.name}' lack feature(s) {missing}; send every "
            "feature (null where unknown)",
            field=f"rows.{missing[0]}",
        )
    data: dict[str, Any] = {k: rows[k] for k in view.join_keys}
    for f in view.features:
        vals = rows[f.name]
        if f.dtype.name == "timestamp":
            us = _times(vals, f"rows.{f.name}", None)
            data[f.name] = pa.array(us, pa.int64()).cast(f.dtype.to_arrow())
            continue
        for i, v in enumerate(vals):
            if not value_fits(v, f.dtype.name):
                big = (
                    " and outside its range"
                    if type(v) is int and f.dtype.name in INT_RANGES
                    else ""
                )
                raise BadRequestError(
                    f"push: rows.{f.name}[{i}] is {v!r} ({type(v).__name__}); feature "
                    f"'{f.name}' of view '{view.name}' is {f.dtype.name}{big}",
                    field=f"rows.{f.name}",
                )
        if f.dtype.name == "bytes":
            data[f.name] = pa.array(
                [v.encode() if isinstance(v, str) else v for v in vals], f.dtype.to_arrow()
            )
        else:
            data[f.name] = pa.array(vals, f.dtype.to_arrow())
    ts_name = ts_col if ts_col in rows else "event_timestamp"
    raw_ts = rows.get(ts_name)
    ev = [now_us] * n if raw_ts is None else _times(raw_ts, f"rows.{ts_name}", now_us)
    data[EVENT_TS] = pa.array(ev, pa.int64())
    data[CREATED_TS] = pa.array([now_us] * n, pa.int64())
    return pa.table(data)


def time_us(v: Any) -> int | None:
    """A pushed time in microseconds since the epoch; None (and NaT) stays None.

    Integers are microseconds, strings ISO 8601; in process also a datetime (a pandas
    Timestamp too), a date (midnight UTC) or a numpy datetime64. Naive times are taken as UTC,
    as everywhere in the project (never shifted by the local zone); nanoseconds are floored.
    Raises ValueError naming what is wrong.
    """
    if v is None:
        return None
    if type(v) is int or (isinstance(v, (int, np.integer)) and not isinstance(v, bool)):
        us = int(v)
    elif isinstance(v, str):
        try:
            us = to_us(v)
        except ValueError:
            raise ValueError(f"{v!r} is not ISO 8601") from None
    elif isinstance(v, datetime):
        if type(v).__name__ == "NaTType":  # pandas' missing time
            return None
        us = to_us(v)
    elif isinstance(v, date):
        us = to_us(datetime(v.year, v.month, v.day, tzinfo=timezone.utc))
    elif isinstance(v, np.datetime64):
        if np.isnat(v):
            return None
        us = int(v.astype("datetime64[us]").astype(np.int64))
    else:
        raise ValueError(f"a {type(v).__name__} is not a time")
    if not _US_MIN <= us <= _US_MAX:
        raise ValueError(
            f"{us} microseconds since the epoch is outside the years 1-9999 (nanoseconds? "
            "divide by 1000)"
        )
    return us


def _times(vals: Sequence[Any], where: str, null: int | None) -> list[int | None]:
    """``time_us`` of each value (a null becomes ``null``); a bad one is a BadRequestError
    naming its row."""
    out: list[int | None] = []
    for i, v in enumerate(vals):
        try:
            us = time_us(v)
        except (TypeError, ValueError, OverflowError) as exc:
            raise BadRequestError(
                f"push: {where} holds a bad time ({where}[{i}]: {exc}); give {TIME_FORMS}",
                field=where,
            ) from None
        out.append(null if us is None else us)
    return out
