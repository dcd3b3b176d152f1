"""Training sets mixing plain views, window views and on-demand features in one call.

Plain views go through the point-in-time join (offline/pit.py); window views are aggregated
at every spine time (offline/windows.py); on-demand features then run vectorized over the
fetched features (``view:feature`` inputs) and the spine's columns (request fields), never one
for the other. Fetched inputs the caller did not ask for are computed under internal names and
dropped, so they clash with nothing. Output: the spine columns, unchanged, then the requested
features in request order, named as for plain views.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from featurestore.errors import EntityDataError

if TYPE_CHECKING:
    import polars as pl

    from featurestore.offline.spine import Spine
    from featurestore.offline.store import OfflineStore


def historical_features(
    offline: OfflineStore,
    entity_df: Any,
    requests: Sequence[tuple[Any, list[str]]],
    *,
    full_feature_names: bool,
    as_known: bool,
    timestamp_column: str,
    progress: bool,
) -> pl.DataFrame:
    """See ``FeatureStore.get_historical_features``."""
    import polars as pl

    from featurestore.offline.pit import check_spine_columns, output_names
    from featurestore.offline.spine import normalize_spine
    from featurestore.online._computed import with_on_demand_inputs

    requests = [(v, list(f) or list(v.feature_names)) for v, f in requests]  # [] means all
    asked = output_names(requests, full_feature_names)  # the output columns
    expanded, _ = with_on_demand_inputs(requests, full_feature_names)
    fetch = [(v, feats) for v, feats, _ in output_names(expanded, True)]
    spine = normalize_spine(
        entity_df,
        timestamp_column=timestamp_column,
        required_keys={v.name: v.join_keys for v, _ in fetch if v.join_keys},
    )
    check_spine_columns(spine.column_names, asked, full_feature_names)
    base = pl.from_arrow(spine.table, rechunk=False)
    assert isinstance(base, pl.DataFrame)
    values = _fetched(offline, spine, fetch, as_known=as_known, progress=progress)
    for view, feats in fetch:
        if not view.join_keys:
            for feat in feats:
                values[f"{view.name}:{feat}"] = _on_demand(view, feat, base, values)
    return base.with_columns(
        [
            values[f"{v.name}:{f}"].alias(c)
            for v, feats, cols in asked
            for f, c in zip(feats, cols, strict=True)
        ]
    )


def _fetched(
    offline: OfflineStore,
    spine: Spine,
    fetch: list[tuple[Any, list[str]]],
    *,
    as_known: bool,
    progress: bool,
) -> dict[str, pl.Series]:
    """Every plain and window feature of ``fetch`` as a column in spine order, by "view:feature".

    The point-in-time join sees only the spine's keys and times, under view__feature names, so
    neither a spine column nor another view's feature of the same bare name can get in the way.
    """
    import numpy as np
    import polars as pl

    from featurestore.offline.windows import window_features

    values: dict[str, pl.Series] = {}
    plain = [(v, f) for v, f in fetch if v.join_keys and not v.is_window]
    if plain:
        keys = dict.fromkeys([*(k for v, _ in plain for k in v.join_keys), spine.timestamp_column])
        joined = offline.get_historical_features(
            spine.table.select(list(keys)),
            plain,
            full_feature_names=True,
            as_known=as_known,
            timestamp_column=spine.timestamp_column,
            progress=progress,
        )
        for v, feats in plain:
            for f in feats:
                values[f"{v.name}:{f}"] = joined.get_column(f"{v.name}__{f}")
    ts = np.asarray(spine.ts_us.to_numpy(zero_copy_only=False), dtype=np.int64)
    for view, feats in fetch:
        if view.is_window:
            arrays = window_features(offline, view, spine.table, ts, as_known=as_known)
            for f in feats:
                values[f"{view.name}:{f}"] = pl.Series(f, arrays[f])
    return values


def _on_demand(view: Any, feat: str, base: pl.DataFrame, values: dict[str, pl.Series]) -> pl.Series:
    """On-demand feature ``feat``: request fields from the spine only, fetched inputs from the
    join only (a spine column never stands in for a feature, nor a feature for a request field).
    Values are held as online serves them (``OnDemandFeature.output_column``)."""
    import numpy as np
    import polars as pl
    import pyarrow as pa

    odf = view.feature(feat)
    declared = {f.name: f.dtype.name for f in view.request_schema}
    inputs: dict[str, Any] = {}
    for name in odf.inputs:
        if ":" in name:
            inputs[name] = values[name].to_arrow()
            continue
        if name not in base.columns:
            raise EntityDataError(
                f"on-demand feature '{view.name}:{feat}' needs request field '{name}'; "
                "add it as a column of the entity dataframe"
            )
        inputs[name] = base.get_column(name).to_arrow()
        _check_request_range(view.name, name, declared.get(name, ""), inputs[name])
    vals, valid = odf.compute_columns(inputs)
    valid = np.asarray(valid, dtype=bool)
    out = odf.output_column(vals, valid, view.name)
    arr = pa.array(out, mask=~valid)
    return pl.Series(feat, arr.cast(view.field(feat).dtype.to_arrow()))


def _check_request_range(view: str, name: str, dtype: str, col: Any) -> None:
    """A request field refuses a spine value its declared type cannot hold, as a request
    refuses it online, naming the first such row (one line): an Int32 (Int64) field an integer
    out of its range or a float that is no such integer (NaN is a null there); a Float32
    field a finite number past float32's range (it would round to infinity)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from featurestore.types import FLOAT32_END, INT_RANGES

    why = f"declares it {dtype}"
    if pa.types.is_floating(col.type) and dtype in INT_RANGES:
        lo, hi = INT_RANGES[dtype]
        # lo and hi + 1 are powers of two: exact as floats
        out = pc.or_(pc.less(col, float(lo)), pc.greater_equal(col, float(hi) + 1.0))
        off = pc.or_(out, pc.not_equal(pc.floor(col), col))
        bad = pc.and_(off, pc.invert(pc.is_nan(col)))
    elif pa.types.is_floating(col.type) and dtype == "float32":
        bad = pc.and_(pc.is_finite(col), pc.greater_equal(pc.abs(col), FLOAT32_END))
        why += ", which holds finite values up to about +-3.4e+38"
    elif pa.types.is_integer(col.type) and dtype in INT_RANGES:
        lo, hi = INT_RANGES[dtype]
        seen = pc.min_max(col).as_py()  # nulls skipped; both None when all are null
        if seen["min"] is None or (lo <= seen["min"] and seen["max"] <= hi):
            return
        bad = pa.array([v is not None and not lo <= v <= hi for v in col.to_pylist()])
    else:
        return
    flags = np.asarray(bad.fill_null(False), dtype=bool)
    if not flags.any():
        return
    row = int(np.argmax(flags))
    v = col[row].as_py()
    raise EntityDataError(
        f"request field '{name}' is {v} at spine row {row}; on-demand feature view '{view}' {why}"
    )
