"""Write an Arrow table of feature rows into an online store, in batches."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from featurestore.errors import EntityDataError
from featurestore.online.base import OnlineStore
from featurestore.online.codec import (
    CREATED_TS,
    EVENT_TS,
    NULL_TS,
    RowCodec,
    int64_column,
)
from featurestore.online.embedded import EmbeddedOnlineStore
from featurestore.online.keys import POW10, build_keys, decimal_digits, signed_int_array

if TYPE_CHECKING:
    import pyarrow as pa

    from featurestore.feature_view import FeatureView


EMBEDDED_TXN_ROWS = 262_144  # most rows per LMDB transaction (whole batches; at least one)


def write_table(
    store: OnlineStore,
    project: str,
    view: FeatureView,
    table: pa.Table,
    *,
    now_us: int,
    key_ttl_grace_us: int,
    batch_size: int,
    only_newer: bool = False,
) -> int:
    """Encode rows (join keys, features, ``__event_ts``, ``__created_ts``) and store them.

    With a view ttl, keys expire at event_ts + ttl + grace (ms); rows already past that are
    skipped. The same table always writes the same bytes. Each ``batch_size`` batch lands whole
    or not at all (the embedded store puts several in one transaction). Rows sharing a key
    are written in order, so the last one listed stays: reduce them with ``latest_rows`` when
    they may repeat a key. ``only_newer`` (pushes, stream ingest, materialize): a row older than
    the one its key holds (event time, then created time; see ``codec.row_replaces``) is not
    written, as checked and set by the store in one atomic step, so concurrent writers of one
    key leave the newest row. Returns the rows written.
    """
    missing = [k for k in view.join_keys if k not in table.column_names]
    if missing:
        raise EntityDataError(
            f"rows for feature view '{view.name}' lack join key column(s) {missing}"
        )
    codec = RowCodec(view)
    ttl_us = view.ttl_us
    size = max(1, int(batch_size))
    if isinstance(store, EmbeddedOnlineStore):
        return _write_embedded(
            store, project, view, codec, table, now_us, key_ttl_grace_us, size, only_newer
        )
    written = 0
    for start in range(0, table.num_rows, size):
        batch = table.slice(start, size)
        keys = build_keys(
            project, view.name, view.join_keys, [batch.column(k) for k in view.join_keys]
        )
        values = codec.encode_table(batch)
        expire: list[int | None] | None = None
        if ttl_us is not None:
            deadline_us = _deadlines_us(batch, ttl_us + key_ttl_grace_us)
            live = deadline_us > now_us
            expire = (deadline_us // 1000).tolist()
            if not live.all():
                keep = np.flatnonzero(live).tolist()
                keys = [keys[i] for i in keep]
                values = [values[i] for i in keep]
                expire = [expire[i] for i in keep]
        if only_newer:
            written += store.write_newer(keys, values, expire)
        else:
            store.write_batch(keys, values, expire)
            written += len(keys)
    return written


def latest_rows(table: pa.Table, join_keys: tuple[str, ...]) -> pa.Table:
    """``table`` with one row per entity key: the one the point-in-time join would pick.

    That is the latest ``__event_ts``, then the latest ``__created_ts`` (a null one loses);
    rows equal in both keep the one listed last. Rows keep their order. ``write_table`` writes
    rows as given (a later row of a key overwrites an earlier one), so callers whose rows may
    repeat a key (a push) reduce them with this first; materialize reads one row per key.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    n = table.num_rows
    if n < 2 or _unique_keys(table, join_keys):
        return table
    ev, cr = _event_created(table)
    ranked = table.select(list(join_keys)).append_column("__ev", pa.array(ev, pa.int64()))
    ranked = ranked.append_column("__cr", pa.array(cr, pa.int64()))
    ranked = ranked.append_column("__at", pa.array(np.arange(n), pa.int64()))
    order = pc.sort_indices(
        ranked,
        [(k, "ascending") for k in join_keys]
        + [("__ev", "descending"), ("__cr", "descending"), ("__at", "descending")],
    )
    first = np.ones(n, dtype=bool)  # the first row of each key's run in sorted order
    same = np.ones(n - 1, dtype=bool)
    for k in join_keys:
        col = ranked.column(k).take(order)
        eq = pc.equal(col.slice(1), col.slice(0, n - 1)).fill_null(False)
        same &= eq.to_numpy(zero_copy_only=False)
    first[1:] = ~same
    if first.all():
        return table
    return table.take(np.sort(order.to_numpy()[first]))


def _event_created(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Each row's event time and created time (NULL_TS where it has none), int64 us."""
    ev, _ = int64_column(table.column(EVENT_TS))
    if CREATED_TS not in table.column_names:
        return ev, np.full(table.num_rows, NULL_TS, dtype=np.int64)
    values, mask = int64_column(table.column(CREATED_TS))
    return ev, values if mask is None else np.where(mask, NULL_TS, values)


def _unique_keys(table: pa.Table, join_keys: tuple[str, ...]) -> bool:
    """Whether no entity key repeats, known cheaply when the first column alone never repeats
    (one C pass; the usual push of one row per entity)."""
    import pyarrow.compute as pc

    col = table.column(join_keys[0])
    return col.null_count == 0 and pc.count_distinct(col).as_py() == table.num_rows


def _deadlines_us(table: pa.Table, ttl_us: int) -> np.ndarray:
    """int64 event time + ``ttl_us`` of every row."""
    ev = table.column(EVENT_TS).to_numpy()
    if ev.dtype.kind == "M":
        ev = ev.astype("datetime64[us]").astype(np.int64)
    return ev.astype(np.int64) + ttl_us


def _write_embedded(
    store: EmbeddedOnlineStore,
    project: str,
    view: FeatureView,
    codec: RowCodec,
    table: pa.Table,
    now_us: int,
    key_ttl_grace_us: int,
    size: int,
    only_newer: bool = False,
) -> int:
    """``write_table`` into LMDB: rows go in key order, each value encoded with its expiry in
    front (the stored form: one copy per row, not two), and the ``size``-row batches of up to
    ``EMBEDDED_TXN_ROWS`` rows share one transaction (all or nothing, so each batch still is).

    Key order makes a transaction fill or touch a narrow run of B-tree pages instead of copying
    pages all over the tree; fewer commits mean fewer syncs to wait for. A row's key and bytes
    do not depend on either.
    """
    order = key_order(table, view.join_keys)
    if order is not None:
        table = table.take(order)
    ttl_us = view.ttl_us

    def batches(lo: int, hi: int) -> Iterator[tuple[list[bytes], list[bytes], np.ndarray | None]]:
        for start in range(lo, hi, size):
            batch = table.slice(start, min(size, hi - start))
            keys = build_keys(
                project, view.name, view.join_keys, [batch.column(k) for k in view.join_keys]
            )
            if ttl_us is None:
                yield keys, codec.encode_table(batch, lead=np.zeros(len(keys), np.int64)), None
                continue
            deadline_us = _deadlines_us(batch, ttl_us + key_ttl_grace_us)
            expire = deadline_us // 1000
            values = codec.encode_table(batch, lead=expire)
            live = deadline_us > now_us
            if not live.all():
                keep = np.flatnonzero(live)
                expire = expire[keep]
                keys = [keys[i] for i in keep.tolist()]
                values = [values[i] for i in keep.tolist()]
            yield keys, values, expire

    step = max(1, EMBEDDED_TXN_ROWS // size) * size
    return sum(
        store.write_stored(batches(lo, min(lo + step, table.num_rows)), only_newer=only_newer)
        for lo in range(0, table.num_rows, step)
    )


def key_order(table: pa.Table, join_keys: tuple[str, ...]) -> np.ndarray | None:
    """A stable row order of ``table`` close to the byte order of the rows' online keys, or
    None when the rows are in that order already. Exact for one integer join key."""
    import pyarrow as pa

    if table.num_rows < 2:
        return None
    cols = [table.column(k) for k in join_keys]
    ints = signed_int_array(cols[0]) if len(cols) == 1 else None
    if ints is not None:
        parts = _decimal_text_order(ints)
        if _ascending(parts):
            return None
        return np.lexsort(parts[::-1])
    import pyarrow.compute as pc

    try:  # strings sort as their quoted keys nearly do; any stable order is correct
        order = pc.sort_indices(
            table.select(list(join_keys)), [(k, "ascending") for k in join_keys]
        )
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError):
        return None
    idx = order.to_numpy()
    return None if bool((idx[1:] > idx[:-1]).all()) else idx


def _decimal_text_order(v: np.ndarray) -> tuple[np.ndarray, ...]:
    """Sort keys (most significant first) that order ints as their key text ``=<v>}`` does.

    Negatives (``-``) come first; then the digits compare as text, a shorter number being
    greater than any longer one it is a prefix of (``}`` sorts after every digit). Padding the
    digits with 9s to 19 places and then putting longer numbers first gives exactly that.
    """
    neg, mag, digits = decimal_digits(v)
    padded = (mag + np.uint64(1)) * POW10[19 - digits] - np.uint64(1)
    return (~neg, padded, -digits)


def _ascending(parts: tuple[np.ndarray, ...]) -> bool:
    """Whether rows are non-decreasing in the lexicographic order of the key arrays."""
    undecided = np.ones(len(parts[0]) - 1, dtype=bool)
    for p in parts:
        a, b = p[:-1], p[1:]
        if bool((undecided & (a > b)).any()):
            return False
        undecided &= a == b
    return True
