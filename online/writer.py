"""Write an Arrow table of feature rows into an online store, in batches."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from featurestore.errors import EntityDataError
from featurestore.online.base import OnlineStore
from featurestore.online.codec import EVENT_TS, RowCodec
from featurestore.online.keys import build_keys

if TYPE_CHECKING:
    import pyarrow as pa

    from featurestore.feature_view import FeatureView


def write_table(
    store: OnlineStore,
    project: str,
    view: FeatureView,
    table: pa.Table,
    *,
    now_us: int,
    key_ttl_grace_us: int,
    batch_size: int,
) -> int:
    """Encode rows (join keys, features, ``__event_ts``, ``__created_ts``) and store them.

    With a view ttl, keys expire at event_ts + ttl + grace (ms); rows already past that are
    skipped. The same table always writes the same bytes. Returns the rows written.
    """
    missing = [k for k in view.join_keys if k not in table.column_names]
    if missing:
        raise EntityDataError(
            f"rows for feature view '{view.name}' lack join key column(s) {missing}"
        )
    codec = RowCodec(view)
    ttl_us = view.ttl_us
    size = max(1, int(batch_size))
    written = 0
    for start in range(0, table.num_rows, size):
        batch = table.slice(start, size)
        keys = build_keys(
            project, view.name, view.join_keys, [batch.column(k) for k in view.join_keys]
        )
        values = codec.encode_table(batch)
        expire: list[int | None] | None = None
        if ttl_us is not None:
            ev = batch.column(EVENT_TS).to_numpy()
            if ev.dtype.kind == "M":
                ev = ev.astype("datetime64[us]").astype(np.int64)
            deadline_us = ev.astype(np.int64) + (ttl_us + key_ttl_grace_us)
            live = deadline_us > now_us
            expire = (deadline_us // 1000).tolist()
            if not live.all():
                keep = np.flatnonzero(live).tolist()
                keys = [keys[i] for i in keep]
                values = [values[i] for i in keep]
                expire = [expire[i] for i in keep]
        store.write_batch(keys, values, expire)
        written += len(keys)
    return written
