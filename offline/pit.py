"""Point-in-time joins: a spine plus features from several views, as of each spine row's time.

Plan per view (DESIGN.md section 3):

* source rows with a null event timestamp are dropped; rows sharing (keys, event_ts) are
  ranked by created timestamp (a null one loses every tie), then by the push time in the
  file's name and row order (the last pushed, the last listed wins; offline/_sql.py);
* DuckDB ``ASOF LEFT JOIN`` on the join keys and ``spine_ts >= event_ts`` (int64 us) picks
  the latest row at or before t; over Parquet files its inequality compares the whole rank
  (event time, created time, push time, file, row) as one struct, so it picks the tie's winner
  without a sort; over a SQL source with a created timestamp, ties are first reduced by a
  window. The row is used only if ``t - event_ts <= ttl`` (inclusive);
* ``as_known=True`` cannot be one ASOF (two inequalities), so it joins every known row
  (``coalesce(created_ts, event_ts) <= t``, inside the ttl) and keeps the best per spine row.

Only the spine's join keys, its times and a row number go into DuckDB; each view's result is
sorted back by row number and glued onto the untouched spine columns, so column order, types
and row order (duplicates included) are kept. Rows with no usable match get the field default
(a matched row whose value is null stays null).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from featurestore.errors import EntityDataError, FeatureStoreError, OfflineStoreError
from featurestore.offline._sql import ident, key_match
from featurestore.offline.spine import Spine, normalize_spine

if TYPE_CHECKING:
    import duckdb
    import polars as pl
    import pyarrow as pa

    from featurestore.feature_view import FeatureView
    from featurestore.offline._sql import SourcePlan
    from featurestore.offline.store import OfflineStore

ROW = "__fs_row"
TS = "__fs_ts"
HIT = "__fs_hit"
SPINE = "__fs_spine"


def output_names(
    requests: Sequence[tuple[FeatureView, list[str]]], full_feature_names: bool
) -> list[tuple[FeatureView, list[str], list[str]]]:
    """Merge requests per view and name the output columns; bare-name clashes raise."""
    merged: dict[str, tuple[FeatureView, list[str]]] = {}
    for view, feats in requests:
        names = list(feats) or list(view.feature_names)
        for f in names:
            view.field(f)  # raises FeatureNotFoundError naming the view's features
        if view.name in merged:
            prev = merged[view.name][1]
            prev += [f for f in names if f not in prev]
        else:
            merged[view.name] = (view, list(dict.fromkeys(names)))
    out = []
    owner: dict[str, str] = {}
    for view, feats in merged.values():
        cols = [f"{view.name}__{f}" if full_feature_names else f for f in feats]
        for col in cols:
            if col in owner:
                raise FeatureStoreError(
                    f"feature '{col}' is requested from both feature view '{owner[col]}' and "
                    f"'{view.name}'; pass full_feature_names=True to name columns view__feature"
                )
            owner[col] = view.name
        out.append((view, feats, cols))
    return out


def check_spine_columns(
    spine_columns: Sequence[str],
    named: Sequence[tuple[FeatureView, list[str], list[str]]],
    full_feature_names: bool,
) -> None:
    """Refuse a feature column (``output_names``'s) that would overwrite a spine column of
    that name; the advice is only what the caller can still do."""
    taken = set(spine_columns)
    for _, _, cols in named:
        for col in cols:
            if col in taken:
                also = "" if full_feature_names else ", or pass full_feature_names=True"
                raise EntityDataError(
                    f"feature column '{col}' would overwrite the entity dataframe column of "
                    f"that name; rename or drop that column of the entity dataframe{also}"
                )


def historical_features(
    store: OfflineStore,
    entity_df: Any,
    requests: Sequence[tuple[FeatureView, list[str]]],
    *,
    full_feature_names: bool = False,
    as_known: bool = False,
    timestamp_column: str = "event_timestamp",
    progress: bool = False,
) -> pl.DataFrame:
    """See ``OfflineStore.get_historical_features``."""
    import polars as pl
    import pyarrow as pa
    from tqdm.auto import tqdm

    named = output_names(requests, full_feature_names)
    spine = normalize_spine(
        entity_df,
        timestamp_column=timestamp_column,
        required_keys={v.name: v.join_keys for v, _, _ in named},
    )
    check_spine_columns(spine.column_names, named, full_feature_names)
    plans = [(store.plan(view), feats, cols) for view, feats, cols in named]
    keys = list(dict.fromkeys(k for v, _, _ in named for k in v.join_keys))
    _check_key_types(spine, plans)

    columns = list(spine.table.columns)
    names = list(spine.column_names)
    cur = store.cursor()
    try:
        cur.register(SPINE, _duck_spine(spine, keys))
        bar = tqdm(plans, desc="point-in-time join", unit="view", disable=not progress)
        for plan, feats, cols in bar:
            bar.set_postfix_str(plan.view.name)
            label = store.relation_label(plan.view.source)
            result = _join_view(cur, plan, feats, as_known=as_known, label=label)
            for feat, col in zip(feats, cols, strict=True):
                columns.append(_finish(result, plan.view, feat))
                names.append(col)
            del result
    finally:
        cur.close()
    table = pa.Table.from_arrays(columns, names=names)
    return pl.from_arrow(table, rechunk=False)  # type: ignore[return-value]


def _duck_spine(spine: Spine, keys: list[str]) -> pa.Table:
    import pyarrow as pa
    import pyarrow.types as pt

    arrays, names = [], []
    for k in keys:
        col = spine.table.column(k)
        if pt.is_dictionary(col.type):
            col = col.cast(col.type.value_type)
        arrays.append(col)
        names.append(k)
    arrays += [spine.ts_us, pa.array(range(spine.num_rows), type=pa.int64())]
    names += [TS, ROW]
    return pa.Table.from_arrays(arrays, names=names)


def _check_key_types(spine: Spine, plans: list[tuple[SourcePlan, list[str], list[str]]]) -> None:
    import pyarrow as pa

    from featurestore.offline.windows import untyped_key
    from featurestore.types import dtype_from_arrow

    def kind(t: pa.DataType) -> str:
        d = dtype_from_arrow(t)
        if d is None:
            return str(t)
        return "number" if d.name in ("int32", "int64", "float32", "float64") else d.name

    for plan, _, _ in plans:
        for k in plan.keys:
            if pa.types.is_null(plan.source_types[k]):  # e.g. an empty file pandas wrote
                raise untyped_key(plan.view.name, k)
            left = kind(spine.table.column(k).type)
            right = kind(plan.source_types[k])
            if left != right:
                raise EntityDataError(
                    f"entity dataframe column '{k}' holds {left} values but feature view "
                    f"'{plan.view.name}' has {right} keys in its source; cast the column to "
                    f"{right}"
                )


def join_sql(plan: SourcePlan, feats: list[str], *, as_known: bool) -> str:
    """The SQL joining the registered spine to one view: __fs_row, __fs_hit, raw features."""
    ttl = plan.view.ttl_us
    keys = plan.keys
    match = key_match(keys, "s", "f")
    base = plan.base_select(feats)
    if not as_known:
        asof = f"s.{TS} >= f.__fs_ev"
        if plan.file_order:
            # the ASOF inequality on the whole tie rank: the winner of a tie is the row ASOF
            # picks, so no window sort over the source (see SourcePlan.rank_struct)
            base = f"SELECT *, {plan.rank_struct('b')} AS __fs_o FROM ({base}) AS b"
            asof = f"{plan.rank_bound(f's.{TS}')} >= f.__fs_o"
        elif plan.created_us is not None:
            part = ", ".join([*(ident(k) for k in keys), "__fs_ev"])
            base += (
                f" QUALIFY row_number() OVER (PARTITION BY {part} "
                f"ORDER BY {', '.join(plan.tie_order(''))}) = 1"
            )
        hit = "f.__fs_ev IS NOT NULL"
        if ttl is not None:
            hit += f" AND s.{TS} - f.__fs_ev <= {ttl}"
        return (
            f"WITH f AS ({base}) "
            f"SELECT s.{ROW}, ({hit}) AS {HIT}, "
            + _case_list(plan, feats, hit if ttl is not None else None)
            + f" FROM {SPINE} s ASOF LEFT JOIN f ON {match} AND {asof} "
            f"ORDER BY s.{ROW}"
        )
    casted = ", ".join(f"{feature_sql(plan, x, 'f')} AS {ident(x)}" for x in feats)
    cond = f"{match} AND f.__fs_ev <= s.{TS} AND coalesce(f.__fs_cr, f.__fs_ev) <= s.{TS}"
    if ttl is not None:
        cond += f" AND f.__fs_ev >= s.{TS} - {ttl}"
    order = ", ".join(["f.__fs_ev DESC", *plan.tie_order("f")])
    return (
        f"WITH f AS ({base}), m AS ("
        f"SELECT s.{ROW}, {casted} FROM {SPINE} s JOIN f ON {cond} "
        f"QUALIFY row_number() OVER (PARTITION BY s.{ROW} "
        f"ORDER BY {order}) = 1) "
        f"SELECT s.{ROW}, (m.{ROW} IS NOT NULL) AS {HIT}, "
        + ", ".join(f"m.{ident(x)}" for x in feats)
        + f" FROM {SPINE} s LEFT JOIN m ON s.{ROW} = m.{ROW} ORDER BY s.{ROW}"
    )


def feature_sql(plan: SourcePlan, feature: str, qualifier: str) -> str:
    """``qualifier.feature`` as training sets and materialize read it: cast to its declared
    type, and a UnixTimestamp outside the years 1-9999 null (a Python datetime, so the online
    answer, cannot hold it: ``types.TIME_MIN_US``). Array null elements: ``served_lists``."""
    import pyarrow.types as pt

    from featurestore.offline._sql import time_us_expr
    from featurestore.types import TIME_MAX_US, TIME_MIN_US

    expr = plan.feature_cast(feature, qualifier)
    t = plan.source_types.get(feature)
    if plan.view.field(feature).dtype.name != "timestamp" or t is None:
        return expr
    if pt.is_timestamp(t) and t.unit == "ns":  # nanoseconds stay within 1677-2262
        return expr
    us = time_us_expr(feature, t, qualifier)
    if us is None:
        return expr
    return f"CASE WHEN {us} BETWEEN {TIME_MIN_US} AND {TIME_MAX_US} THEN {expr} END"


def _case_list(plan: SourcePlan, feats: list[str], hit: str | None) -> str:
    out = []
    for x in feats:
        expr = feature_sql(plan, x, "f")
        if hit is not None:
            expr = f"CASE WHEN {hit} THEN {expr} END"
        out.append(f"{expr} AS {ident(x)}")
    return ", ".join(out)


def _join_view(
    cur: duckdb.DuckDBPyConnection,
    plan: SourcePlan,
    feats: list[str],
    *,
    as_known: bool,
    label: str,
) -> pa.Table:
    """One view's join result; a failure names the offending source value when it can
    (``label``: how messages name the view's source)."""
    import duckdb

    from featurestore.offline.store import fetch_table
    from featurestore.offline.validation import value_problem

    sql = join_sql(plan, feats, as_known=as_known)
    try:
        return fetch_table(cur.sql(sql))
    except duckdb.Error as exc:
        problem = None
        if isinstance(exc, duckdb.ConversionException):
            problem = value_problem(cur, plan, feats, label)
        if problem is not None:
            raise OfflineStoreError(problem) from None
        first = str(exc).strip().splitlines()[0]
        advice = (
            out_of_memory_advice(cur)
            if isinstance(exc, duckdb.OutOfMemoryException)
            else "run validate_view() on it and check the entity dataframe's key types"
        )
        raise OfflineStoreError(
            f"point-in-time join of feature view '{plan.view.name}' failed: {first}; {advice}"
        ) from None


def out_of_memory_advice(cur: duckdb.DuckDBPyConnection) -> str:
    """What to do when DuckDB ran out of memory on ``cur``: raise the limit (named as DuckDB
    holds it) or give it a spill folder with room."""
    try:
        row = cur.execute("SELECT current_setting('memory_limit')").fetchone()
        now = f" (now {row[0]})" if row and row[0] else ""
    except Exception:  # the connection is unusable: the advice without the value
        now = ""
    return (
        f"raise offline_store.memory_limit{now} in featurestore.yaml, or set "
        "offline_store.temp_directory to a folder on a disk with room to spill to"
    )


def _finish(result: pa.Table, view: FeatureView, feature: str) -> pa.ChunkedArray:
    """One feature column: cast to the declared Arrow type, array null elements as online
    serves them (``types.served_lists``), default where no row matched."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from featurestore.types import served_lists

    field = view.field(feature)
    target = field.dtype.to_arrow()
    col = result.column(feature)
    if col.type != target:
        col = col.cast(target)
    col = served_lists(col, field.dtype)
    if field.default is not None:
        default = pa.scalar(field.default, type=target)
        col = pc.if_else(result.column(HIT), col, default)
    return col
