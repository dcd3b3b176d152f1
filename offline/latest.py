"""Materialization reads: the latest source row per entity key within a time window.

Same tie rules as the point-in-time join (largest event timestamp, then largest created
timestamp, a null created timestamp losing, then the latest push time a Parquet file's name
carries and the last row: the last push wins, see offline/_sql.py); rows with a null join key or null event timestamp
are skipped. Rows are sorted by the join keys; rows a SQL source holds equal in both
timestamps are broken by the feature values, so a rerun yields identical batches.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from featurestore.errors import OfflineStoreError
from featurestore.offline._sql import ident
from featurestore.offline.pit import feature_sql

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

    from featurestore.feature_view import FeatureView
    from featurestore.offline._sql import SourcePlan
    from featurestore.offline.store import OfflineStore

EVENT_TS = "__event_ts"
CREATED_TS = "__created_ts"


def latest_sql(plan: SourcePlan, start_us: int, end_us: int, *, key_order: str = "keys") -> str:
    """SQL for the latest row per key in [start_us, end_us], ordered by the keys.

    ``key_order="online"`` orders the rows as their online store keys sort as bytes instead
    (exact for one integer join key: ``42`` sorts as the text ``42``; other keys keep the
    join-key order), so an ordered store is written front to back.
    """
    view = plan.view
    feats = list(view.feature_names)
    keys = [ident(k) for k in plan.keys]
    where = " AND ".join(
        [f"{plan.event_us} BETWEEN {int(start_us)} AND {int(end_us)}"]
        + [f"{k} IS NOT NULL" for k in keys]
    )
    base = plan.base_select(feats, where=where)
    casted = [f"{feature_sql(plan, f, 'b')} AS {ident(f)}" for f in feats]
    # Each key's latest event time comes from a hash aggregate over the keys and times alone
    # (``b`` is not materialized: that scan reads two columns), and the source rows at that
    # time from a join. Only keys with several rows at their latest time (ties, rare) are
    # ordered by the full tie-break (20+ columns), which costs far more than the rest.
    key_list = ", ".join(keys)
    b_keys = ", ".join(f"b.{k}" for k in keys)
    on = " AND ".join([*(f"b.{k} = m.{k}" for k in keys), "b.__fs_ev = m.__fs_ev"])
    tied_on = " AND ".join(f"j.{k} = t.{k}" for k in keys)
    order = ", ".join([*plan.tie_order("b"), *(f"b.{ident(f)}" for f in feats)])
    return (
        f"WITH b AS NOT MATERIALIZED ({base}), "
        f"m AS (SELECT {key_list}, max(__fs_ev) AS __fs_ev FROM b GROUP BY {key_list}), "
        f"j AS MATERIALIZED (SELECT b.* FROM b JOIN m ON {on}), "
        f"t AS (SELECT {key_list} FROM j GROUP BY {key_list} HAVING count(*) > 1), "
        f"w AS (SELECT * FROM j ANTI JOIN t ON {tied_on} "
        f"UNION ALL SELECT * FROM (SELECT j.* FROM j SEMI JOIN t ON {tied_on}) AS b "
        f"QUALIFY row_number() OVER (PARTITION BY {b_keys} ORDER BY {order}) = 1) "
        f"SELECT {b_keys}, {', '.join(casted)}, "
        f"b.__fs_ev AS {EVENT_TS}, b.__fs_cr AS {CREATED_TS} FROM w AS b "
        f"ORDER BY {_order_by(plan, key_order)}"
    )


def _order_by(plan: SourcePlan, key_order: str) -> str:
    """The ORDER BY list of ``latest_sql`` (keys unique there, so the order is total)."""
    import pyarrow as pa

    keys = [ident(k) for k in plan.keys]
    if key_order not in ("keys", "online"):
        raise ValueError(f"key_order must be 'keys' or 'online', got {key_order!r}")
    t = plan.source_types.get(plan.keys[0]) if len(keys) == 1 else None
    if key_order == "keys" or t is None or not pa.types.is_integer(t):
        return ", ".join(f"b.{k}" for k in keys)
    # the digits padded with 9s to 19 places, then longer first, order as the text ``<v>}``
    # does ("}" sorts after every digit); negative numbers ("-") come first
    k = f"b.{keys[0]}"
    digits = f"CAST(abs(CAST({k} AS HUGEINT)) AS VARCHAR)"
    return f"{k} < 0 DESC, CAST(rpad({digits}, 19, '9') AS UBIGINT), length({digits}) DESC"


def iter_latest_rows(
    store: OfflineStore,
    view: FeatureView,
    start_us: int,
    end_us: int,
    *,
    batch_rows: int,
    key_order: str = "keys",
) -> Iterator[pa.RecordBatch]:
    """See ``OfflineStore.iter_latest_rows``; batches hold at most ``batch_rows`` rows.

    ``key_order``: see ``latest_sql``.
    """
    import duckdb
    import pyarrow as pa

    from featurestore.offline.store import VANISHED_RETRIES, fetch_reader, vanished

    if batch_rows < 1:
        raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
    from featurestore.offline.validation import value_problem

    plan = store.plan(view)
    label = store.relation_label(view.source)
    sql = latest_sql(plan, start_us, end_us, key_order=key_order)
    cur = store.cursor()
    reader: pa.RecordBatchReader | None = None
    runs = yielded = 0
    try:
        while True:
            try:
                if reader is None:
                    runs += 1
                    reader = fetch_reader(cur.sql(sql), batch_rows)
                    schema = _target_schema(view, reader.schema)
                batch = reader.read_next_batch()
            except StopIteration:
                return
            except duckdb.Error as exc:
                # a source file gone mid-read (see fetch_table): run again, if nothing was
                # handed out yet (the rows are sorted as a whole before the first batch)
                if not yielded and runs < VANISHED_RETRIES and vanished(exc):
                    if reader is not None:
                        with contextlib.suppress(Exception):  # frees the cursor for the rerun
                            reader.close()
                    reader = None
                    continue
                problem = None
                if isinstance(exc, duckdb.ConversionException):  # a value no type holds?
                    problem = value_problem(cur, plan, list(view.feature_names), label)
                raise (OfflineStoreError(problem) if problem else _failed(view, exc, cur)) from None
            for start in range(0, batch.num_rows, batch_rows):
                part = batch.slice(start, batch_rows)
                if part.num_rows:
                    yielded += 1
                    yield pa.RecordBatch.from_arrays(
                        [c.cast(f.type) for c, f in zip(part.columns, schema, strict=True)],
                        schema=schema,
                    )
    finally:
        cur.close()


def count_latest_rows(store: OfflineStore, view: FeatureView, start_us: int, end_us: int) -> int:
    """The number of distinct entity keys with a row in [start_us, end_us] (a file that
    vanishes mid-count is read again, as in ``fetch_table``)."""
    import duckdb

    from featurestore.offline.store import fetch_table

    plan = store.plan(view)
    keys = ", ".join(ident(k) for k in plan.keys)
    where = " AND ".join(
        [f"{plan.event_us} BETWEEN {int(start_us)} AND {int(end_us)}"]
        + [f"{ident(k)} IS NOT NULL" for k in plan.keys]
    )
    sql = (
        f"SELECT count(*) FROM (SELECT DISTINCT {keys} FROM ({plan.base_select([], where=where)}))"
    )
    cur = store.cursor()
    try:
        return int(fetch_table(cur.sql(sql)).column(0)[0].as_py())
    except duckdb.Error as exc:
        raise _failed(view, exc, cur) from None
    finally:
        cur.close()


def _target_schema(view: FeatureView, got: pa.Schema) -> pa.Schema:
    import pyarrow as pa

    fields = []
    for f in got:
        if f.name in view.feature_names:
            fields.append(pa.field(f.name, view.field(f.name).dtype.to_arrow()))
        elif f.name in (EVENT_TS, CREATED_TS):
            fields.append(pa.field(f.name, pa.int64()))
        else:
            fields.append(f)
    return pa.schema(fields)


def _failed(
    view: FeatureView, exc: BaseException, cur: duckdb.DuckDBPyConnection
) -> OfflineStoreError:
    """The one-line error of a failed read of ``view`` on the DuckDB cursor ``cur``: running
    out of memory says how to give DuckDB more, anything else to validate the view."""
    import duckdb

    from featurestore.offline.pit import out_of_memory_advice

    first = str(exc).strip().splitlines()[0]
    advice = (
        out_of_memory_advice(cur)
        if isinstance(exc, duckdb.OutOfMemoryException)
        else "run validate_view() on it"
    )
    return OfflineStoreError(
        f"reading the latest rows of feature view '{view.name}' failed: {first}; {advice}"
    )
