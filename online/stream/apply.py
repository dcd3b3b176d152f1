"""Events applied to the online store: the latest row of plain views, window state of the rest.

Applying is idempotent, so a batch delivered again after a crash changes nothing:

- a plain view's row is replaced only by an event at least as new (event time, then created
  time), as the offline join picks rows, so an old event delivered again is never written;
- a window view's value carries, after the state, the id of the newest stream entry applied
  to it (``FSP1`` + int64 ms + int64 seq); entries up to that id are not added again. The
  trailer is written in the same SET as the state, so both land or neither. Readers ignore it
  (the state's header gives its own length).

A view whose join keys an apply changed has a *fence* in the online store (see
featurestore/_cleanup.py): the keys and kinds it has now, and whether rows an ingest wrote under
the old keys are still to be deleted. Ingest reads it when it starts, and both writers here
read it with their rows, and stop rather than write when it stands against them: an ingest
started with the old keys always, and every ingest while old rows are pending, so the
cleanup's view-wide delete never meets a row of the new definition. A settled fence has no
expiry: an ingest that read the registry before the apply may start, or see its first event
for the view, any time later.
"""

from __future__ import annotations

import struct
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from featurestore.errors import FeatureStoreError
from featurestore.online.codec import CREATED_TS, EVENT_TS, NULL_TS, ROW_HEAD
from featurestore.online.keys import build_keys
from featurestore.online.stream.events import Event, columns_of
from featurestore.online.windows import MAGIC, decode_value
from featurestore.transforms.online import LateEventError, OnlineWindows, StateHead

if TYPE_CHECKING:
    from featurestore.feature_view import FeatureView
    from featurestore.online.base import OnlineStore

_POS = struct.Struct("<4s4xqq")
_POS_MAGIC = b"FSP1"
_VALUE_HEAD = struct.Struct("<4sI")  # online/windows.py's value head: magic, schema version
_MIN_STATE = 96  # the longest state header (version 2: 12 int64), which peek unpacks
_FENCE_MAGIC = b"FSF1"

EntityKey = tuple[Any, ...]


def position_of(value: bytes | None, head: StateHead | None = None) -> tuple[int, int]:
    """The newest entry id applied to a window value ((0, 0) for none or no trailer);
    ``head``: its state's header when already read."""
    if value is None or len(value) < 8 + _POS.size:
        return (0, 0)
    end = 8 + (head or OnlineWindows.peek(memoryview(value)[8:])).size
    if len(value) != end + _POS.size:
        return (0, 0)
    magic, ms, seq = _POS.unpack_from(value, end)
    return (ms, seq) if magic == _POS_MAGIC else (0, 0)


def position_trailer(entry: tuple[int, int]) -> bytes:
    """The bytes after a window state saying entries up to ``entry`` are in it."""
    return _POS.pack(_POS_MAGIC, *entry)


def group_by_entity(view: FeatureView, events: list[Event]) -> dict[EntityKey, list[Event]]:
    """The events of each entity of ``view``, in stream order."""
    out: dict[EntityKey, list[Event]] = defaultdict(list)
    for e in events:
        out[tuple(e.values[k] for k in view.join_keys)].append(e)
    return out


def _keys(project: str, view: FeatureView, entities: list[EntityKey]) -> list[bytes]:
    cols = [[ent[i] for ent in entities] for i in range(len(view.join_keys))]
    return build_keys(project, view.name, view.join_keys, cols)


def fence_key(project: str, view_name: str) -> bytes:
    """The key of a view's join-key fence: outside every view's key space (no ``{`` after the
    project), as the stored watermark is, so deleting the view's rows leaves it."""
    return f"{project}:__join_keys__:{view_name}".encode()


def fence_value(join_keys: tuple[str, ...], kinds: dict[str, str], *, pending: bool) -> bytes:
    """A fence: the view is keyed by ``join_keys`` (``kinds``: "int" / "str" where known), and
    ``pending``: rows an ingest wrote under its old keys are still to be deleted."""
    known = {k: kinds[k] for k in join_keys if k in kinds}
    return _FENCE_MAGIC + orjson.dumps({"join_keys": list(join_keys), "kinds": known,
                                        "pending": pending})  # fmt: skip


def fence_problem(view: FeatureView, arrow: dict[str, Any], value: bytes | None) -> str | None:
    """Why ingest must not write ``view`` (as defined when it started; ``arrow`` types its join
    keys) under the stored fence ``value``, in one line; None: it may write."""
    if value is None or not value.startswith(_FENCE_MAGIC):
        return None
    fence = orjson.loads(value[len(_FENCE_MAGIC) :])
    keys, kinds = tuple(fence["join_keys"]), fence["kinds"]
    mine = {k: _arrow_kind(arrow.get(k)) for k in view.join_keys}
    stale = keys != view.join_keys or any(
        kinds.get(k) and mine[k] and kinds[k] != mine[k] for k in keys
    )
    stream = getattr(view.source, "stream", "?")
    if stale:
        then = (
            "run featurestore apply to delete the rows written under the old keys, then start "
            "ingest again"
            if fence["pending"]
            else "start ingest again"
        )
        return (
            f"feature view '{view.name}' is now keyed by {list(keys)} (featurestore apply changed "
            f"its join keys after this ingest started), so ingest stopped: {then}"
        )
    if fence["pending"]:
        return (
            f"feature view '{view.name}' still has online rows under its old join keys, written "
            "by an ingest that ran while apply changed them; once no ingest reads stream "
            f"'{stream}', run featurestore apply to delete them, then start ingest again"
        )
    return None


def _arrow_kind(t: Any) -> str | None:
    """How a join key of Arrow type ``t`` is written: "int" or "str" (None: not known)."""
    import pyarrow as pa

    if t is None:
        return None
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "str"
    return None


def check_fences(
    store: OnlineStore, project: str, views: list[FeatureView], arrow: dict[str, Any]
) -> None:
    """Raise a one-line FeatureStoreError if the fence of any of ``views`` (read in one round
    trip) stands against an ingest that started with these definitions; ingest calls it when
    it starts, with its streams' locks held. Each write also reads its view's fence with its
    rows (``_read_fenced``): an apply may change the keys while ingest runs."""
    if not views:
        return
    fences = store.read([fence_key(project, v.name) for v in views])
    for view, value in zip(views, fences, strict=True):
        problem = fence_problem(view, arrow, value)
        if problem is not None:
            raise FeatureStoreError(problem)


def _read_fenced(
    store: OnlineStore, project: str, view: FeatureView, arrow: dict[str, Any], keys: list[bytes]
) -> list[bytes | None]:
    """The stored values of ``keys``, read with the view's fence in the same round trip; a
    FeatureStoreError when the fence stands against this ingest (see ``fence_problem``)."""
    got = store.read([*keys, fence_key(project, view.name)])
    problem = fence_problem(view, arrow, got[-1])
    if problem is not None:
        raise FeatureStoreError(problem)
    return got[:-1]


class WindowBatch:
    """One window view's part of a batch: states read once, late events found, then written.

    A stored value of another schema version predates the view's definition (an apply changed
    it): unless the view was materialized since, ingest stops rather than start that entity's
    state afresh from the new events alone (partial values served as present)."""

    def __init__(
        self,
        store: OnlineStore,
        project: str,
        view: FeatureView,
        events: list[Event],
        arrow: dict[str, Any],
        *,
        materialized: bool = True,
    ) -> None:
        self.view = view
        self.materialized = materialized  # since the view's definition last changed
        self.arrow = arrow  # the input columns' types in the batch files, as materialize reads
        self.ow = view.window.online()  # type: ignore[union-attr]
        self.by_entity = group_by_entity(view, events)
        self.entities = list(self.by_entity)
        self.keys = _keys(project, view, self.entities)
        self.values = _read_fenced(store, project, view, arrow, self.keys) if self.keys else []
        self.prefix = _VALUE_HEAD.pack(MAGIC, view.schema_version)
        self.shape = (len(self.ow.plan.inputs), len(self.ow.plan.distinct_inputs))
        heads = [self._head(v) for v in self.values]
        self.watermarks = [self._watermark(v, h) for v, h in zip(self.values, heads, strict=True)]
        self.positions = [position_of(v, h) for v, h in zip(self.values, heads, strict=True)]

    def _head(self, value: bytes | None) -> StateHead | None:
        """A stored state's header, read once (None: too short to hold one)."""
        if value is None or len(value) < 8 + _MIN_STATE:
            return None
        return OnlineWindows.peek(memoryview(value)[8:])

    def _watermark(self, value: bytes | None, head: StateHead | None) -> int | None:
        """The watermark of a stored state from its header (None: absent or without one)."""
        if value is None:
            return None  # a new entity: a new state
        if value[:8] != self.prefix:
            if not self.materialized:
                raise FeatureStoreError(
                    f"feature view '{self.view.name}' holds online values written before its "
                    "definition last changed, which one event cannot rebuild; run featurestore "
                    "materialize for it first, then start ingest again"
                )
            # materialized since: a state it did not rewrite holds no event of the horizon
            return None
        if head is not None and head.version in (1, 2) and head[1:3] == self.shape:
            return head.watermark
        return decode_value(self.view, value).watermark  # raises as decode does

    def late(self, dead: set[str]) -> set[str]:
        """Ids of events the state would reject (older than its watermark minus the horizon),
        leaving out the events in ``dead``; as the kernel decides, in stream order."""
        out: set[str] = set()
        horizon = self.ow.horizon_us
        for ent, wm, pos in zip(self.entities, self.watermarks, self.positions, strict=True):
            for e in self.by_entity[ent]:
                if e.id <= pos or e.raw_id in dead:
                    continue
                if wm is not None and e.ts <= wm - horizon:
                    out.add(e.raw_id)
                else:
                    wm = e.ts if wm is None else max(wm, e.ts)
        return out

    def write(
        self, store: OnlineStore, dead: set[str], *, grace_us: int, now_us: int
    ) -> tuple[int, int]:
        """Add the new events to each state and write the states; (events applied, skipped)."""
        view, ow = self.view, self.ow
        max_w = view.window.plan.max_window_us  # type: ignore[union-attr]
        keys: list[bytes] = []
        values: list[bytes] = []
        expire: list[int | None] = []
        todo: list[tuple[int, list[Event]]] = []  # (entity index, its new events)
        skipped = 0
        for i, ent in enumerate(self.entities):
            fresh = [e for e in self.by_entity[ent] if e.raw_id not in dead]
            new = [e for e in fresh if e.id > self.positions[i]]
            skipped += len(fresh) - len(new)
            if new:
                todo.append((i, new))
        flat = [e for _, new in todo for e in new]
        if not flat:
            return 0, skipped
        # every input column built once for the batch, then sliced per entity (as materialize)
        window = view.window  # type: ignore[union-attr]
        built = window.event_columns(columns_of(flat, window.source_columns(), self.arrow))
        vals, valid, kmat = ow.prepare(built)
        ts = np.fromiter((e.ts for e in flat), np.int64, len(flat))
        bounds = np.zeros(len(todo) + 1, dtype=np.int64)
        np.cumsum([len(new) for _, new in todo], out=bounds[1:])
        try:  # one kernel call: every entity's state read, its events added, encoded again
            states = ow.ingest_encoded(
                [self.values[i] for i, _ in todo], self.prefix, bounds, ts, vals, valid, kmat
            )
        except LateEventError as exc:  # late() decides as the kernel does; a difference is a bug
            raise AssertionError(f"view '{view.name}': late event(s) not caught: {exc}") from exc
        prefix = self.prefix
        for (i, new), state in zip(todo, states, strict=True):
            deadline_us = OnlineWindows.peek(state).watermark + max_w + grace_us  # type: ignore[operator]
            if deadline_us <= now_us:
                continue  # every window is already empty for readers at the wall clock
            keys.append(self.keys[i])
            values.append(prefix + state + position_trailer(new[-1].id))
            expire.append(deadline_us // 1000)
        applied = len(flat)
        if keys:
            store.write_batch(keys, values, expire)
        return applied, skipped


def write_plain(
    store: OnlineStore,
    project: str,
    view: FeatureView,
    events: list[Event],
    arrow: dict[str, Any],
    *,
    grace_us: int,
    now_us: int,
    batch_size: int,
) -> int:
    """Write each entity's newest event if it is at least as new as its stored row; returns
    the rows written. The read (with the view's fence) skips rows already older; the write
    checks again in one atomic step, so a push landing between them keeps its newer row.
    Without a created-time field in the source, a row's created time is ``now_us``, as a
    push's is its push time: of one event time the row written last wins, as in training
    sets, which rank these rows by the time they were applied (see sink.py)."""
    import pyarrow as pa

    from featurestore.online.writer import write_table

    def created(e: Event) -> int | None:
        return e.created if view.source.created_timestamp_field else now_us

    newest: dict[EntityKey, Event] = {}
    for ent, evs in group_by_entity(view, events).items():
        newest[ent] = max(evs, key=lambda e: (e.ts, _cr(created(e)), e.id))
    if not newest:
        return 0
    entities = list(newest)
    stored = _read_fenced(store, project, view, arrow, _keys(project, view, entities))
    keep = []
    for ent, value in zip(entities, stored, strict=True):
        e = newest[ent]
        if value is not None and len(value) >= ROW_HEAD.size:
            ev, cr, version = ROW_HEAD.unpack_from(value)
            if version == view.schema_version and (e.ts, _cr(created(e))) < (ev, cr):
                continue
        keep.append(e)
    if not keep:
        return 0
    types = {f.name: f.dtype.to_arrow() for f in view.features}
    types.update({k: arrow[k] for k in view.join_keys})
    cols = columns_of(keep, [*view.join_keys, *view.feature_names], types)
    cols[EVENT_TS] = pa.array([e.ts for e in keep], pa.int64())
    cols[CREATED_TS] = pa.array([created(e) for e in keep], pa.int64())
    return write_table(
        store, project, view, pa.table(cols), now_us=now_us, key_ttl_grace_us=grace_us,
        batch_size=batch_size, only_newer=True,
    )  # fmt: skip


def _cr(created: int | None) -> int:
    return NULL_TS if created is None else created
