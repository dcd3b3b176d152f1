"""Window views online: one value per entity holding its OnlineWindows state (an event buffer).

Materialization to ``end`` writes, for every entity with events in
``(end - max_window - allowed_lateness, end]``, the state built by ``OnlineWindows.ingest``
from exactly those events, in the offline read order (see offline/windows.py). A lookup at
``now`` decodes the state and runs the offline kernel over it with the one query ``now``, so
the served value at t equals the training value at t (bit for bit: the same kernel).
Entities with no events in that range keep no live value (their key expires), and an absent
value serves the empty window: counts 0, everything else null, status NOT_FOUND.

Value layout (little endian)::

    4s      magic b"FSW1"
    uint32  schema_version of the view (a mismatch reads as absent; re-materialize)
    bytes   OnlineWindows.encode(state):
              int64[12]           header (version 2, n, n_inputs, n_keys, watermark, ...,
                                  tile_us, n_tiles, n_tiled_inputs, pool size)
              int64[n]            event timestamps, sorted
              float64[k*n]        input values (k = distinct (column, where) inputs)
              int64[d*n]          distinct-count keys (d = inputs used by distinct_count)
              uint8[k*n]          validity
              tiles               from 256 events on: per tile of max_window / 64 the
                                  count, min, max and exact sums (see transforms/online.py)
    [24 bytes]  a stream-fed view's position trailer: the newest stream entry in the state
                (see online/stream/apply.py); readers ignore it

Memory per entity: ``104 + n * (8 + 9k + 8d)`` bytes for ``n`` events in the horizon, plus the
tiles of states with 256+ events (~150-250 bytes per non-empty tile and tiled input, at most
~65 tiles), e.g. the quickstart's user view (k=2 inputs: amount, merchant_id; d=1): 50 events
take 1,804 bytes. A lookup's read merges the tiles inside each window and scans raw events only
in the two edge tiles, so its kernel cost no longer grows with the events buffered (a 30-day
stddev over ~11k events: ~1.6 ms -> ~75 us); decoding still copies the whole buffer, so
memory and decode time follow the events in the horizon. The key expires at
the newest event + max window + key_ttl_grace, after which its state would read empty anyway.
A read at ``now`` earlier than the newest stored event minus ``allowed_lateness`` cannot be
exact (the buffer may miss older events): it serves nulls with status EXPIRED.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from featurestore.feature_view import FeatureView
    from featurestore.offline.store import OfflineStore
    from featurestore.online.base import OnlineStore

MAGIC = b"FSW1"
_HEAD = struct.Struct("<4sI")


def encode_value(view: FeatureView, state: Any) -> bytes:
    """The online value of one entity's state."""
    assert view.window is not None
    return _HEAD.pack(MAGIC, view.schema_version) + view.window.online().encode(state)


def decode_value(view: FeatureView, value: bytes | None) -> Any:
    """The state in ``value``, or None when absent or written for another schema version."""
    if value is None or len(value) < _HEAD.size:
        return None
    magic, version = _HEAD.unpack_from(value)
    if magic != MAGIC or version != view.schema_version:
        return None
    assert view.window is not None
    return view.window.online().decode(memoryview(value)[_HEAD.size :])


def read_values(
    view: FeatureView, values: Sequence[bytes | None], now_us: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every output of many entities' values at ``now_us`` in one kernel call.

    (out, code, watermark) of ``OnlineWindows.read_values``; absent by ``decode_value``'s rules.
    """
    assert view.window is not None
    prefix = _HEAD.pack(MAGIC, view.schema_version)
    return view.window.online().read_values(values, now_us, prefix)


def materialize_window_view(
    offline: OfflineStore,
    online: OnlineStore,
    project: str,
    view: FeatureView,
    end_us: int,
    *,
    key_ttl_grace_us: int,
    batch_size: int,
    now_us: int,
    before_write: Callable[[], None] | None = None,
    progress: bool = False,
) -> int:
    """Write the state of every entity with events in the horizon before ``end_us``.

    A view fed by a stream also gets, after each state, how far ingest had written the stream
    to the batch folder: a stream entry up to there that ingest delivers again (it died before
    acknowledging it) is in the state already and is not added twice. ``before_write`` runs
    before each batch is written (materialize's stream-lock check, which raises to stop);
    ``progress`` shows a bar on stderr counting entities up to their total."""
    from featurestore._progress import progress_bar
    from featurestore.offline.windows import read_events

    assert view.window is not None
    ow = view.window.online()
    lo = end_us - ow.horizon_us
    trailer = _stream_trailer(offline, view)  # read before the events: they hold all up to it
    events = read_events(offline, view, lo, end_us, by_key=True)
    starts = _group_starts(events, view.join_keys) if events.num_rows else np.zeros(0, np.int64)
    with progress_bar(
        int(starts.size), f"materialize {view.name}", enabled=progress, unit="entities"
    ) as bar:
        return _write_states(
            online, project, view, events, starts, key_ttl_grace_us, batch_size, now_us,
            trailer, before_write, bar.update,
        )  # fmt: skip


def _write_states(
    online: OnlineStore,
    project: str,
    view: FeatureView,
    events: Any,
    starts: np.ndarray,
    key_ttl_grace_us: int,
    batch_size: int,
    now_us: int,
    trailer: bytes,
    before_write: Callable[[], None] | None,
    done: Callable[[int], Any],
) -> int:
    """Build and write each entity's state in batches; ``done(k)`` after k more entities
    (written or already expired), so the counts reach ``starts.size``."""
    from featurestore.offline.windows import EV
    from featurestore.online.keys import build_keys

    assert view.window is not None
    ow = view.window.online()
    n = events.num_rows
    if n == 0:
        return 0
    columns = view.window.event_columns(
        {c: _np(events.column(c)) for c in view.window.source_columns()}
    )
    ts = events.column(EV).to_numpy()
    bounds = np.append(starts, n)
    keys = build_keys(
        project, view.name, view.join_keys, [events.column(k).take(starts) for k in view.join_keys]
    )
    max_w = view.window.plan.max_window_us
    size = max(1, int(batch_size))
    written = counted = 0
    values: list[bytes] = []
    expire: list[int | None] = []
    batch_keys: list[bytes] = []
    for g in range(starts.size):
        a, b = int(bounds[g]), int(bounds[g + 1])
        state = ow.new_state()
        ow.ingest(state, ts[a:b], {c: _slice(v, a, b) for c, v in columns.items()})
        deadline_us = int(ts[b - 1]) + max_w + key_ttl_grace_us
        if deadline_us > now_us:  # else every window is already empty for readers now
            batch_keys.append(keys[g])
            values.append(encode_value(view, state) + trailer)
            expire.append(deadline_us // 1000)
        last = g + 1 == starts.size
        if batch_keys and (len(batch_keys) >= size or last):
            if before_write is not None:
                before_write()
            online.write_batch(batch_keys, values, expire)
            written += len(batch_keys)
            batch_keys, values, expire = [], [], []
        if not batch_keys and (last or g + 1 - counted >= size):  # all up to g are done
            done(g + 1 - counted)
            counted = g + 1
    return written


def _stream_trailer(offline: OfflineStore, view: FeatureView) -> bytes:
    """The position trailer for a stream-fed view's states (see online/stream/apply.py); none
    for other views or before ingest wrote any file."""
    from featurestore.sources import StreamSource

    if not isinstance(view.source, StreamSource):
        return b""
    from featurestore.online.stream.apply import position_trailer
    from featurestore.online.stream.sink import offline_position

    pos = offline_position(offline.config, view.source)
    return position_trailer(pos) if pos != (0, 0) else b""


def _np(col: Any) -> Any:
    """An Arrow column as numpy when it has no nulls (cheap slicing), else as one Arrow array."""
    arr = col.combine_chunks()
    if arr.null_count == 0:
        return arr.to_numpy(zero_copy_only=False)
    return arr


def _slice(col: Any, a: int, b: int) -> Any:
    return col[a:b] if isinstance(col, np.ndarray) else col.slice(a, b - a)


def _group_starts(events: Any, keys: tuple[str, ...]) -> np.ndarray:
    """Row index where each entity's run starts (events are sorted by key)."""
    n = events.num_rows
    change = np.zeros(n, dtype=bool)
    change[0] = True
    for k in keys:
        idx = events.column(k).combine_chunks().dictionary_encode().indices.to_numpy()
        change[1:] |= idx[1:] != idx[:-1]
    return np.flatnonzero(change)
