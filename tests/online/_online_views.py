"""Helpers to build feature views and tables for the online tests."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from featurestore import types as T
from featurestore.entity import Entity
from featurestore.feature_view import FeatureView
from featurestore.field import Field
from featurestore.sources import ParquetSource

USER = Entity("user", ["user_id"])
MERCHANT = Entity("merchant", ["merchant_id"])


def make_view(
    name: str = "user_stats",
    fields: list[Field] | None = None,
    *,
    entities: list[Entity] | None = None,
    ttl: Any = None,
) -> FeatureView:
    """A feature view over a dummy Parquet path (nothing reads it)."""
    return FeatureView(
        name=name,
        entities=entities or [USER],
        source=ParquetSource("data/dummy.parquet"),
        schema=fields or [Field(f"f{i}", T.Float64) for i in range(20)],
        ttl=ttl,
    )


def float_table(
    view: FeatureView, ids: list[int] | np.ndarray, event_ts: int | np.ndarray, seed: int = 0
) -> pa.Table:
    """Rows of a float-only view: join key, random features, __event_ts, null __created_ts."""
    rng = np.random.default_rng(seed)
    n = len(ids)
    cols: dict[str, Any] = {view.join_keys[0]: np.asarray(ids, dtype=np.int64)}
    for f in view.features:
        cols[f.name] = rng.random(n)
    cols["__event_ts"] = np.broadcast_to(np.asarray(event_ts, dtype=np.int64), (n,)).copy()
    cols["__created_ts"] = pa.nulls(n, pa.int64())
    return pa.table(cols)
