"""Window views offline: events read with DuckDB, aggregated by the numba kernel at spine times.

Events are the source rows (null event times and null keys dropped) with the join keys, the
event time as int64 us and the columns the plan reads, in one fixed order: event time, then
created time (nulls first), then every input column. That order is the "arrival order" that
breaks ties for ``last``; materialization reads events in the same order per entity, so the
online state replays exactly what the training set saw. Entity keys of events and spine are
factorised together into int64 codes; spine rows with a null key see no events.

``as_known=True`` (strict backtests) counts an event at t only if it was known at t, by the rule
the point-in-time join uses: ``coalesce(created, event time) <= t``. The kernel takes one window
per output, so each spine row that would otherwise see a not-yet-created event in its window
gets its own copy of the known events of that window, under an entity code of its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from featurestore.errors import EntityDataError, OfflineStoreError
from featurestore.offline._sql import ident, time_us_expr

if TYPE_CHECKING:
    import pyarrow as pa

    from featurestore.feature_view import FeatureView
    from featurestore.offline.store import OfflineStore

EV = "__fs_ev"
KNOWN = "__fs_known"  # int64 us: when the event became known (never before its event time)


def window_problems(store: OfflineStore, view: FeatureView) -> list[str]:
    """Problems that stop a window view from reading its events, each naming the fix."""
    try:
        schema = store.source_schema(view.source)
    except OfflineStoreError as exc:
        return [f"feature view '{view.name}': {exc}"]
    types = {f.name: f.type for f in schema}
    label = store.relation_label(view.source)
    head = f"feature view '{view.name}'"
    have = ", ".join(schema.names)
    out: list[str] = []
    ts = view.source.timestamp_field
    if ts not in types and store.is_empty_folder(view.source):
        return [
            f"{head}: source folder '{label}' holds no Parquet file yet, and a window view "
            "reads its event columns from the files; add one, or declare the columns in a "
            "StreamSource schema"
        ]
    if ts not in types or time_us_expr(ts, types[ts]) is None:
        out.append(
            f"{head}: timestamp column '{ts}' is missing from source '{label}' or not a time; "
            f"fix the source's timestamp_field (columns: {have})"
        )
    cr = view.source.created_timestamp_field
    if cr and (cr not in types or time_us_expr(cr, types[cr]) is None):
        out.append(
            f"{head}: created timestamp column '{cr}' is missing from source '{label}' or not "
            f"a time; fix the source's created_timestamp_field (columns: {have})"
        )
    assert view.window is not None
    for col in (*view.join_keys, *view.window.source_columns()):
        if col not in types:
            out.append(
                f"{head}: column '{col}' is not in source '{label}'; add it or fix the "
                f"aggregation / derived column (columns: {have})"
            )
    return out or store.file_problems(view)


def events_sql(
    store: OfflineStore,
    view: FeatureView,
    lo_us: int | None,
    hi_us: int | None,
    *,
    by_key: bool,
    known: bool = False,
) -> str:
    """SQL for the events with ``lo_us < event_ts <= hi_us`` (either bound optional).

    ``known`` adds a ``__fs_known`` column when the source has a created timestamp.
    """
    problems = window_problems(store, view)
    if problems:
        raise OfflineStoreError(problems[0])
    assert view.window is not None
    src = view.source
    types = {f.name: f.type for f in store.source_schema(src)}
    ev = time_us_expr(src.timestamp_field, types[src.timestamp_field])
    cr_col = src.created_timestamp_field
    cr = time_us_expr(cr_col, types[cr_col]) if cr_col and cr_col in types else None
    keys = [ident(k) for k in view.join_keys]
    cols = [ident(c) for c in view.window.source_columns()]
    cond = [f"{ident(src.timestamp_field)} IS NOT NULL", *(f"{k} IS NOT NULL" for k in keys)]
    if lo_us is not None:
        cond.append(f"{ev} > {int(lo_us)}")
    if hi_us is not None:
        cond.append(f"{ev} <= {int(hi_us)}")
    order = [*(keys if by_key else []), EV]
    if cr is not None:
        order.append(f"{cr} ASC NULLS FIRST")
    order += [f"{c} ASC NULLS FIRST" for c in cols]
    select = [*keys, f"{ev} AS {EV}", *cols]
    if known and cr is not None:
        select.append(f"greatest({ev}, coalesce({cr}, {ev})) AS {KNOWN}")
    return (
        f"SELECT {', '.join(select)} "
        f"FROM {store.relation_sql(src)} AS __fs_src WHERE {' AND '.join(cond)} "
        f"ORDER BY {', '.join(order)}"
    )


def read_events(
    store: OfflineStore,
    view: FeatureView,
    lo_us: int | None,
    hi_us: int | None,
    *,
    by_key: bool,
    known: bool = False,
) -> pa.Table:
    """The events of ``view`` in (lo_us, hi_us] as an Arrow table (keys, __fs_ev, inputs and,
    with ``known`` and a created timestamp, __fs_known)."""
    import duckdb

    from featurestore.offline.store import fetch_table

    sql = events_sql(store, view, lo_us, hi_us, by_key=by_key, known=known)
    cur = store.cursor()
    try:
        return fetch_table(cur.sql(sql))
    except duckdb.Error as exc:
        first = str(exc).strip().splitlines()[0]
        if isinstance(exc, duckdb.OutOfMemoryException):
            from featurestore.offline.pit import out_of_memory_advice

            first += f"; {out_of_memory_advice(cur)}"
        raise OfflineStoreError(
            f"reading the events of feature view '{view.name}' failed: {first}"
        ) from None
    finally:
        cur.close()


def window_features(
    store: OfflineStore,
    view: FeatureView,
    spine: pa.Table,
    spine_ts: np.ndarray,
    *,
    as_known: bool = False,
) -> dict[str, pa.Array]:
    """Every output of ``view`` at each spine row's (keys, t), as Arrow arrays in spine order.

    ``as_known``: only events known at t (``coalesce(created, event time) <= t``) count.
    """
    import pyarrow as pa

    from featurestore.transforms.offline import compute_window_features

    assert view.window is not None
    check_key_kinds(store, view, spine)
    plan = view.window.plan
    q_ts = np.asarray(spine_ts, dtype=np.int64)
    if q_ts.size:
        lo, hi = int(q_ts.min()) - plan.max_window_us, int(q_ts.max())
        events = read_events(store, view, lo, hi, by_key=False, known=as_known)
    else:
        events = read_events(store, view, 0, -1, by_key=False, known=as_known)
    ev_codes, q_codes = entity_codes(events, spine, view.join_keys)
    if KNOWN in events.column_names:
        known = events.column(KNOWN).to_numpy()
        events, ev_codes, q_codes = known_copies(
            events, ev_codes, known, q_codes, q_ts, plan.max_window_us
        )
    columns = view.window.event_columns({c: events.column(c) for c in view.window.source_columns()})
    ev_ts = events.column(EV).to_numpy()
    result = compute_window_features(plan, ev_codes, ev_ts, columns, q_codes, q_ts)
    out: dict[str, pa.Array] = {}
    for f in view.features:
        arr = result[f.name]
        if arr.dtype.kind == "f":
            out[f.name] = pa.array(arr, type=pa.float64(), from_pandas=True)  # NaN -> null
        else:
            out[f.name] = pa.array(arr, type=pa.int64())
    return out


def _kind(t: pa.DataType) -> str:
    """How a key type compares across spine and source: every number type is one kind."""
    from featurestore.types import dtype_from_arrow

    d = dtype_from_arrow(t)
    if d is None:
        return str(t)
    return "number" if d.name in ("int32", "int64", "float32", "float64") else d.name


def untyped_key(view: str, key: str) -> EntityDataError:
    """The error of a source whose join-key column has no type (Arrow null: every value null,
    or no rows, as pandas writes an empty frame), for plain and window views alike."""
    return EntityDataError(
        f"feature view '{view}': its source's join-key column '{key}' has no type (every value "
        f"null, or no rows, written without a schema); write it with integer or string '{key}' "
        "values"
    )


def check_key_kinds(store: OfflineStore, view: FeatureView, spine: pa.Table) -> None:
    """Refuse spine keys of another kind than the source's (the plain views' join refuses them)."""
    import pyarrow as pa

    try:
        types = {f.name: f.type for f in store.source_schema(view.source)}
    except OfflineStoreError:
        return  # reading the events reports it, naming the view
    for k in view.join_keys:
        if k not in types:
            continue  # reading the events reports the missing column
        if pa.types.is_null(types[k]):
            raise untyped_key(view.name, k)
        left, right = _kind(spine.column(k).type), _kind(types[k])
        if left != right:
            raise EntityDataError(
                f"entity dataframe column '{k}' holds {left} values but feature view "
                f"'{view.name}' has {right} keys in its source; cast the column to {right}"
            )


def known_copies(
    events: pa.Table,
    ev_codes: np.ndarray,
    known: np.ndarray,
    q_codes: np.ndarray,
    q_ts: np.ndarray,
    max_window_us: int,
) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """Events and codes such that each query sees only the events known at its time.

    A query is "affected" when an event of its entity is in its widest window but not yet
    known. Each affected query gets a fresh entity code and a copy of its window's known
    events (in arrival order); other queries read the shared events as before. The extra work
    is the window contents of the affected queries only.
    """
    import pyarrow as pa

    ev_ts = events.column(EV).to_numpy()
    late = np.flatnonzero(known > ev_ts)
    if late.size == 0 or q_codes.size == 0:
        return events, ev_codes, q_codes
    # pending interval of a late event: [event time, min(known, event time + widest window))
    start = ev_ts[late]
    end = np.minimum(known[late], start + max_window_us)
    axis = np.sort(np.concatenate([start, end]))
    opened = _at_or_before(_pairs(ev_codes[late], start, axis), q_codes, q_ts, axis)
    closed = _at_or_before(_pairs(ev_codes[late], end, axis), q_codes, q_ts, axis)
    hit = np.flatnonzero((opened > closed) & (q_codes >= 0))
    if hit.size == 0:
        return events, ev_codes, q_codes
    axis = np.sort(ev_ts)
    pairs = _pairs(ev_codes, ev_ts, axis)
    order = np.argsort(pairs, kind="stable")  # by (entity, time), then arrival
    ordered = pairs[order]
    hc, ht = q_codes[hit], q_ts[hit]
    lo = np.searchsorted(ordered, _pairs(hc, ht - max_window_us, axis), side="right")
    hi = np.searchsorted(ordered, _pairs(hc, ht, axis), side="right")
    lengths = hi - lo
    owner = np.repeat(np.arange(hit.size), lengths)
    first = np.repeat(lo - (np.cumsum(lengths) - lengths), lengths)
    idx = order[np.arange(int(lengths.sum())) + first]
    keep = known[idx] <= ht[owner]
    idx, owner = idx[keep], owner[keep]
    base = int(max(ev_codes.max(initial=-1), q_codes.max(initial=-1))) + 1
    new_q = q_codes.copy()
    new_q[hit] = base + np.arange(hit.size)
    new_ev = np.concatenate([ev_codes, base + owner]).astype(np.int64)
    copies = events.take(pa.array(idx, type=pa.int64()))
    return pa.concat_tables([events, copies]), new_ev, new_q


def _pairs(codes: np.ndarray, ts: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """(entity code, time) as one int64 that sorts like the pair, for codes >= 0.

    A time becomes its rank on the sorted ``axis`` (how many axis times are <= it); that keeps
    every comparison between a time on the axis and any other time exact.
    """
    rank = np.searchsorted(axis, ts, side="right").astype(np.int64)
    return codes.astype(np.int64) * (axis.size + 1) + rank


def _at_or_before(
    pairs: np.ndarray, codes: np.ndarray, ts: np.ndarray, axis: np.ndarray
) -> np.ndarray:
    """Per (code, t): how many ``pairs`` have that code and a time at or before t."""
    ordered = np.sort(pairs)
    upto = np.searchsorted(ordered, _pairs(codes, ts, axis), side="right")
    below = np.searchsorted(ordered, codes.astype(np.int64) * (axis.size + 1), side="left")
    return upto - below


def entity_codes(
    events: pa.Table, spine: pa.Table, keys: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """int64 entity codes of events and spine rows from one factorisation of both."""
    import pyarrow as pa

    n_ev = events.num_rows
    total = np.zeros(n_ev + spine.num_rows, dtype=np.int64)
    null = np.zeros(total.size, dtype=bool)
    for k in keys:
        ev = events.column(k).combine_chunks()
        sp = spine.column(k).combine_chunks()
        if pa.types.is_dictionary(sp.type):
            sp = sp.dictionary_decode()
        if sp.type != ev.type:
            sp = _as_event_keys(k, sp, ev.type)
        enc = pa.concat_arrays([ev, sp]).dictionary_encode()
        idx = enc.indices.to_numpy(zero_copy_only=False)
        isnull = np.asarray(enc.indices.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        idx = np.where(isnull, 0, idx).astype(np.int64)
        null |= isnull
        total = total * (len(enc.dictionary) + 1) + idx
        if len(keys) > 1 and total.size:
            _, total = np.unique(total, return_inverse=True)
            total = total.astype(np.int64)
    total[null] = -1  # null keys: an entity with no events
    return total[:n_ev], total[n_ev:]


def _as_event_keys(name: str, sp: pa.Array, target: pa.DataType) -> pa.Array:
    """Spine keys in the events' key type; a number no event key can equal (1.5 for integer
    keys, out of range) becomes null, so it matches nothing, as in the plain views' join."""
    import pyarrow as pa

    try:
        return sp.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    if _kind(sp.type) == _kind(target) == "number":
        return pa.array([_exact_number(v, target) for v in sp.to_pylist()], type=target)
    raise EntityDataError(
        f"entity dataframe column '{name}' is {sp.type} but the events have {target} keys; "
        "cast the column"
    )


def _exact_number(v: Any, target: pa.DataType) -> int | float | None:
    """``v`` as a value of the number type ``target`` if it fits exactly, else None."""
    import pyarrow as pa

    if v is None:
        return None
    if not pa.types.is_integer(target):
        return float(v)
    if isinstance(v, float) and not v.is_integer():  # NaN and infinities too
        return None
    iv = int(v)
    if iv != v:  # a non-integral Decimal
        return None
    bits = target.bit_width
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
    if pa.types.is_unsigned_integer(target):
        lo, hi = 0, (1 << bits) - 1
    return iv if lo <= iv <= hi else None


def as_arrow_spine_ts(ts: Any) -> np.ndarray:
    """Spine times (a pyarrow int64 array) as a numpy int64 array."""
    return np.asarray(ts.to_numpy(zero_copy_only=False), dtype=np.int64)
