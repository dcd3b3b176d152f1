"""Training sets mixing plain views, window views and on-demand features in one call.

Plain views go through the point-in-time join (offline/pit.py); window views are aggregated
at every spine time (offline/windows.py); on-demand features then run vectorized over the
result columns and the spine's request-field columns. Fetched inputs of on-demand features
the caller did not ask for are computed and dropped. Output: the spine columns, then the
requested features in request order, named as for plain views.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from featurestore.errors import EntityDataError, FeatureStoreError

if TYPE_CHECKING:
    import polars as pl

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
    import numpy as np
    import polars as pl
    import pyarrow as pa

    from featurestore.offline.pit import output_names
    from featurestore.offline.spine import normalize_spine
    from featurestore.offline.windows import window_features
    from featurestore.online._computed import with_on_demand_inputs

    expanded, hidden = with_on_demand_inputs(list(requests), full_feature_names)
    named = output_names(expanded, full_feature_names)
    spine = normalize_spine(
        entity_df,
        timestamp_column=timestamp_column,
        required_keys={v.name: v.join_keys for v, _, _ in named if v.join_keys},
    )
    for _, _, cols in named:
        for col in cols:
            if col in spine.column_names:
                raise FeatureStoreError(
                    f"feature column '{col}' would overwrite the entity dataframe column of "
                    "that name; rename the spine column or pass full_feature_names=True"
                )
    plain = [(v, f) for v, f, _ in named if v.join_keys and not v.is_window]
    if plain:
        df = offline.get_historical_features(
            spine.table,
            plain,
            full_feature_names=full_feature_names,
            as_known=as_known,
            timestamp_column=timestamp_column,
            progress=progress,
        )
    else:
        df = pl.from_arrow(spine.table, rechunk=False)  # type: ignore[assignment]
    ts = np.asarray(spine.ts_us.to_numpy(zero_copy_only=False), dtype=np.int64)
    col_of = {
        f"{v.name}:{f}": c for v, feats, cols in named for f, c in zip(feats, cols, strict=True)
    }
    for view, feats, cols in named:
        if not view.is_window:
            continue
        arrays = window_features(offline, view, spine.table, ts)
        df = df.with_columns(
            [pl.Series(c, arrays[f]) for f, c in zip(feats, cols, strict=True)]  # type: ignore[arg-type]
        )
    for view, feats, cols in named:
        if view.join_keys:
            continue
        new = []
        for feat, col in zip(feats, cols, strict=True):
            odf = view.feature(feat)
            inputs: dict[str, Any] = {}
            for name in odf.inputs:
                src = col_of.get(name) if ":" in name else name
                if src not in df.columns:
                    raise EntityDataError(
                        f"on-demand feature '{view.name}:{feat}' needs request field '{name}'; "
                        "add it as a column of the entity dataframe"
                    )
                inputs[name] = df.get_column(src).to_arrow()
            vals, valid = odf.compute_columns(inputs)
            arr = pa.array(vals, mask=~np.asarray(valid, dtype=bool))
            new.append(pl.Series(col, arr.cast(view.field(feat).dtype.to_arrow())))
        df = df.with_columns(new)
    keep = [*spine.column_names, *(c for _, _, cols in named for c in cols if c not in hidden)]
    return df.select(keep)
