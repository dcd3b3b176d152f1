"""Window views offline: events read with DuckDB, aggregated by the numba kernel at spine times.

Events are the source rows (null event times and null keys dropped) with the join keys, the
event time as int64 us and the columns the plan reads, in one fixed order: event time, then
created time (nulls first), then every input column. That order is the "arrival order" that
breaks ties for ``last``; materialization reads events in the same order per entity, so the
online state replays exactly what the training set saw. Entity keys of events and spine are
factorised together into int64 codes; spine rows with a null key see no events.
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
    if ts not in types or time_us_expr(ts, types[ts]) is None:
        out.append(
            f"{head}: timestamp column '{ts}' is missing from source '{label}' or not a time; "
            f"fix the source's timestamp_field (columns: {have})"
        )
    assert view.window is not None
    for col in (*view.join_keys, *view.window.source_columns()):
        if col not in types:
            out.append(
                f"{head}: column '{col}' is not in source '{label}'; add it or fix the "
                f"aggregation / derived column (columns: {have})"
            )
    return out


def events_sql(
    store: OfflineStore, view: FeatureView, lo_us: int | None, hi_us: int | None, *, by_key: bool
) -> str:
    """SQL for the events with ``lo_us < event_ts <= hi_us`` (either bound optional)."""
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
    return (
        f"SELECT {', '.join([*keys, f'{ev} AS {EV}', *cols])} "
        f"FROM {store.relation_sql(src)} AS __fs_src WHERE {' AND '.join(cond)} "
        f"ORDER BY {', '.join(order)}"
    )


def read_events(
    store: OfflineStore, view: FeatureView, lo_us: int | None, hi_us: int | None, *, by_key: bool
) -> pa.Table:
    """The events of ``view`` in (lo_us, hi_us] as an Arrow table (keys, __fs_ev, inputs)."""
    import duckdb

    from featurestore.offline.store import fetch_table

    sql = events_sql(store, view, lo_us, hi_us, by_key=by_key)
    cur = store.cursor()
    try:
        return fetch_table(cur.sql(sql))
    except duckdb.Error as exc:
        first = str(exc).strip().splitlines()[0]
        raise OfflineStoreError(
            f"reading the events of feature view '{view.name}' failed: {first}"
        ) from None
    finally:
        cur.close()


def window_features(
    store: OfflineStore, view: FeatureView, spine: pa.Table, spine_ts: np.ndarray
) -> dict[str, pa.Array]:
    """Every output of ``view`` at each spine row's (keys, t), as Arrow arrays in spine order."""
    import pyarrow as pa

    from featurestore.transforms.offline import compute_window_features

    assert view.window is not None
    plan = view.window.plan
    q_ts = np.asarray(spine_ts, dtype=np.int64)
    if q_ts.size:
        lo, hi = int(q_ts.min()) - plan.max_window_us, int(q_ts.max())
        events = read_events(store, view, lo, hi, by_key=False)
    else:
        events = read_events(store, view, 0, -1, by_key=False)
    ev_codes, q_codes = entity_codes(events, spine, view.join_keys)
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
            try:
                sp = sp.cast(ev.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                raise EntityDataError(
                    f"entity dataframe column '{k}' is {sp.type} but the events have "
                    f"{ev.type} keys; cast the column"
                ) from None
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


def as_arrow_spine_ts(ts: Any) -> np.ndarray:
    """Spine times (a pyarrow int64 array) as a numpy int64 array."""
    return np.asarray(ts.to_numpy(zero_copy_only=False), dtype=np.int64)
