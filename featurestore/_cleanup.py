"""Deleting the online rows of feature views an apply removed, and retrying what failed.

A view whose join keys changed (names, or integers <-> strings) is handled the same way: its
rows under the old keys are never read again, so apply records and deletes them all (the
registry dropped its watermark, so the next incremental materialize writes it afresh).

Apply writes the new registry version together with a cleanup record per removed view
(``RegistryState.pending_cleanup``), then deletes each view's rows with
``OnlineStore.delete_view`` and drops the record. A store that does not answer leaves the
record, so the next apply (one with no changes too) deletes them: the registry never forgets
rows it no longer describes. A stream-fed view may be written again by a ``featurestore
ingest`` that started before the removal (ingest reads the registry once, at start), so its
record stays while that ingest holds the stream's lock; the next apply once another ingest, or
none, holds it deletes what was written meanwhile.

A stream-fed view whose join keys changed is still written by ingest, so a view-wide delete
must never meet a row of its new definition. Its record is *fenced* from the start: no apply
deletes it as a view defined again (``delete_redefined``), and apply sets the view's fence in the
online store (online/stream/apply.py), which every ingest reads when it starts and with its rows.
While an ingest (or a materialize) holds a lock of the view's streams, or the stream server does
not answer, the fence is pending and nothing is deleted: the fence stops the old ingest at its
next event for the view, keeps any new ingest from starting, and materialize leaves the view
out (or refuses it) while its record stands, so only rows of the old keys can be written. The first apply to take
every lock deletes the rows (only old ones can be there) and settles the fence, which then
stops only ingests started with the old keys, for as long as the view keeps these keys (it is
overwritten by the next change of keys, and cleared when the view is removed).

Two applies (and their materializes) may run at once, so a record is acted on only under the
view's cleanup lock (``Registry.cleanup_lock``): whoever holds it reads the record again, deletes
the rows and drops the record before letting go, and a record read earlier is never trusted (it
may have been finished, and the view defined again and materialized since). An apply never
drops a record: a removed view defined again keeps it, marked ``again``, and the cleanup of
that apply deletes the rows of the removed version (waiting for another apply already deleting
them). Materialize leaves a defined view with a record alone (``fenced_views``), so no row of
its new definition exists before its record is gone, and none is deleted after.

A materialize that started before an apply removed or redefined its view would write rows of
the old definition after the cleanup deleted them, so whoever deletes a view's rows first
changes the view's cleanup mark (``Registry.new_cleanup_mark``), then takes its write lock
(``Registry.write_lock``) for the delete. Materialize reads the mark before the registry that
told it the view is current, and writes each batch (and records the watermark) holding the write
lock, having checked the mark is unchanged (``ViewWrites``): a batch lands before the delete
(which takes it too) or not at all, and the materialize stops writing the view at its next batch.
A push into a view with a record (redefined while its cleanup runs) waits for the cleanup under
the cleanup lock, so it lands after the delete (see online/serving/_push_checks.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from featurestore.errors import FeatureStoreError, OnlineStoreError, OnlineStoreUnavailableError

if TYPE_CHECKING:
    from featurestore.feature_view import FeatureView
    from featurestore.online.base import OnlineStore
    from featurestore.registry import Registry, RegistryState
    from featurestore.store import FeatureStore


WRITE_WAIT_S = 60.0  # how long a cleanup waits for a materialize's batch of the view to land


class _StreamServerDown(Exception):
    """The stream server did not answer: whether an ingest still writes a view is not known."""


class _WriterBusy(Exception):
    """A materialize held the view's write lock for longer than WRITE_WAIT_S: nothing deleted."""


class ViewChangedError(FeatureStoreError):
    """An apply removed or redefined a view while materialize wrote it, and its cleanup started
    deleting the view's online rows: materialize writes no more of it."""


class ViewWrites:
    """Materialize's guard of one view's writes: ``batch()`` holds the view's write lock and
    raises ViewChangedError if its cleanup mark moved since ``mark`` (read before the registry
    that said the view is current), so no batch lands after a cleanup's delete."""

    def __init__(self, registry: Registry, view: str, mark: str) -> None:
        self._registry, self.view, self._mark = registry, view, mark
        self._lock = registry.write_lock(view)

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Hold the write lock for one write (or the watermark's record), the mark checked."""
        with self._lock:
            if self._registry.cleanup_mark(self.view) != self._mark:
                raise ViewChangedError(
                    f"materialize stopped writing feature view '{self.view}': featurestore apply "
                    "removed or redefined it meanwhile and deleted its online rows, so its "
                    "watermark did not move; materialize it again if it is still defined"
                )
            yield


@contextmanager
def _writes_stopped(registry: Registry, name: str) -> Iterator[None]:
    """Stop every materialize writing view ``name`` before its rows are deleted: the cleanup
    mark changes (each stops at its next batch), then the write lock is held for the delete,
    taken once the batch being written landed; _WriterBusy after WRITE_WAIT_S."""
    from filelock import Timeout

    registry.new_cleanup_mark(name)
    lock = registry.write_lock(name)
    try:
        lock.acquire(timeout=WRITE_WAIT_S)
    except Timeout:
        raise _WriterBusy(
            f"a materialize kept writing it for {WRITE_WAIT_S:g} s (a hung online store?)"
        ) from None
    try:
        yield
    finally:
        lock.release()


class OnlineCleanupWarning(UserWarning):
    """Apply wrote the registry but left a removed view's online rows for the next apply."""


@dataclass(frozen=True)
class ViewCleanup:
    """What apply did with one removed view's online rows; ``str()`` is the line to show."""

    view: str
    deleted: int | None = None  # rows deleted; None: not deleted, ``error`` says why
    error: str = ""
    ingest: str = ""  # the running ingest that may write the view again
    kept: bool = False  # the view is still defined: its join keys changed (rows of old keys)
    again: bool = False  # the view was removed, then defined again (rows of its old version)

    @property
    def failed(self) -> bool:
        return self.deleted is None

    @property
    def pending(self) -> bool:
        """True when the next apply has more to do for this view."""
        return self.failed or bool(self.ingest)

    def __str__(self) -> str:
        if self.again:
            head = f"view '{self.view}' defined again"
        elif self.kept:
            head = f"view '{self.view}' with changed join keys"
        else:
            head = f"removed view '{self.view}'"
        if self.again and self.deleted is None:
            return (
                f"{head}: online rows of its removed version not deleted, the next `featurestore "
                f"apply` retries (materialize leaves the view alone until then): {self.error}"
            )
        if self.deleted is None:
            return (
                f"{head}: online rows not deleted, the next `featurestore apply` retries: "
                f"{self.error}"
            )
        if self.kept and self.ingest:
            from featurestore.online.stream.locks import holder_text, is_materialize

            who = holder_text(self.ingest)
            what = (
                "once it has finished"
                if is_materialize(self.ingest)
                else "once it has stopped (it stops at its next event for this view), to delete "
                "what it wrote under the old keys"
            )
            return (
                f"{head}: online rows under the old keys not deleted yet; {who} holds its "
                f"stream's lock: run `featurestore apply` again {what}, then start ingest or "
                "materialize (until then ingest refuses this view and materialize skips it)"
            )
        line = f"{head}: deleted {self.deleted:,} online rows"
        if self.again:
            line += " left by its removed version"
        if self.kept or self.again:
            line += "; materialize it to fill it again"
        if self.ingest:
            line += (
                f"; featurestore ingest ({self.ingest}) started before the removal and may write "
                "it again: restart ingest, then run apply again to delete those rows"
            )
        return line


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def is_fenced(record: Mapping[str, object], view: FeatureView | None) -> bool:
    """Whether a cleanup record is a fenced one: a stream-fed view (then or now) that is still
    defined (its join keys changed); its rows are deleted only behind its fence."""
    return view is not None and not record.get("again") and bool(_streams_of(record, view))


def fenced_views(state: RegistryState) -> dict[str, dict[str, object]]:
    """The defined views of ``state`` with a cleanup record still to run (fenced ones, views
    defined again, views whose join keys changed): view -> its record. Materialize leaves them
    alone: the cleanup deletes every row of the view, new ones too."""
    return {n: r for n, r in state.pending_cleanup.items() if n in state.feature_views}


def delete_redefined(
    online: OnlineStore,
    project: str,
    records: Mapping[str, Mapping[str, object]],
    registry: Registry | None = None,
) -> None:
    """Delete the rows left by removed views that are defined again, before the registry says
    they exist, so no lookup reads them as the new view's: a store that does not answer fails
    the apply with nothing changed. Fenced views are never passed here (see
    ``_delete_fenced``). ``records``: view -> its cleanup record as read at the apply's start;
    the fence a stream-fed removed version may have left goes too.

    With ``registry``, each view's cleanup lock is held and its record read again first (read
    earlier, it may be finished, and the view defined again and materialized since: those rows
    stay); then the record is dropped. Without it the record stays, and the cleanup after the
    apply deletes again under the lock."""
    for name, record in records.items():
        lock = registry.cleanup_lock(name) if registry is not None else nullcontext()
        try:
            with lock:
                writes: Any = nullcontext()
                if registry is not None:
                    current = registry.reload().pending_cleanup.get(name)
                    if current is None or current.get("fenced"):
                        continue  # finished by another apply (or its fence decides)
                    record = current
                    writes = _writes_stopped(registry, name)
                with writes:  # a materialize of the removed version writes no more
                    online.delete_view(project, name)
                if record.get("stream") or record.get("fenced"):
                    _clear_fence(online, project, name)
                if registry is not None:
                    registry.update_cleanup([name])
        except OnlineStoreError as exc:
            raise type(exc)(
                f"feature view '{name}' is defined again, but the online rows of its removed "
                f"version are not deleted yet ({_one_line(exc)}); nothing was applied: run apply "
                "again once the online store answers"
            ) from exc
        except _WriterBusy as exc:
            raise FeatureStoreError(
                f"feature view '{name}' is defined again, but the online rows of its removed "
                f"version are not deleted yet ({exc}); nothing was applied: run apply again"
            ) from None


def finish_cleanup(store: FeatureStore, registry: Registry) -> list[ViewCleanup]:
    """Delete the online rows of every view with a cleanup record and drop the records of those
    done, one view at a time under its cleanup lock (see the module's docstring). Never raises
    for the online store: what fails stays recorded for the next apply."""
    names = sorted(registry.load().pending_cleanup)
    results: list[ViewCleanup] = []
    holders: dict[str, str | None] = {}  # stream -> the ingest reading it, asked once
    down = ""  # the store did not answer: skip its other views instead of waiting again
    for name in names:
        state = registry.load()
        record = state.pending_cleanup.get(name)
        if record is None:
            continue
        defined = name in state.feature_views
        again = defined and bool(record.get("again"))
        if down:
            results.append(ViewCleanup(name, error=down, kept=defined and not again, again=again))
            continue
        lock = registry.cleanup_lock(name)
        # a view this apply defines is waited for, so the apply returns once its old rows are
        # gone; a removed one being deleted by another apply is left to it
        if not _acquire(lock, wait=defined):
            continue
        try:
            result = _finish_one(store, registry, name, holders)
        except OnlineStoreUnavailableError as exc:  # its other views are skipped, not waited for
            down = _one_line(exc)
            result = ViewCleanup(name, error=down, kept=defined and not again, again=again)
        finally:
            lock.release()
        if result is not None:
            results.append(result)
    return results


def _acquire(lock: Any, *, wait: bool) -> bool:
    """Take ``lock`` (a FileLock); without ``wait``, False when another holds it."""
    from filelock import Timeout

    try:
        lock.acquire(blocking=wait)
    except Timeout:
        return False
    return True


def _finish_one(
    store: FeatureStore, registry: Registry, name: str, holders: dict[str, str | None]
) -> ViewCleanup | None:
    """Delete the rows of view ``name`` by its record as it stands now (None: no record, it is
    finished), with its cleanup lock held, and drop the record (or note why it stays). A store
    that does not answer raises OnlineStoreUnavailableError, the record kept."""
    state = registry.reload()
    record = state.pending_cleanup.get(name)
    if record is None:
        return None
    view = state.feature_views.get(name)
    again = view is not None and bool(record.get("again"))
    kept = view is not None and not again
    streams = _streams_of(record, view) if kept and view is not None else set()
    try:
        with _writes_stopped(registry, name):  # a materialize that started before stops
            if streams and view is not None:  # a stream-fed view whose join keys changed
                deleted, holder = _delete_fenced(store, state, view, streams)
                if holder:
                    registry.update_cleanup([], {name: {"ingest": holder, "fenced": True}})
                    return ViewCleanup(name, deleted, ingest=holder, kept=True)
                registry.update_cleanup([name])
                return ViewCleanup(name, deleted, kept=True)
            deleted = store.online.delete_view(store.project, name)
            if not kept:  # its watermark's copies too (every node's on Redis Cluster)
                store._drop_watermark(name)
    except _WriterBusy as exc:  # the record stays: the next apply retries
        return ViewCleanup(name, error=str(exc), kept=kept, again=again)
    except _StreamServerDown as exc:  # the fence stands pending: the next apply retries
        registry.update_cleanup([], {name: {"fenced": True}})
        return ViewCleanup(name, error=str(exc), kept=kept, again=again)
    except OnlineStoreUnavailableError:
        raise
    except Exception as exc:  # the registry is written: report, keep the record, go on
        error = f"{type(exc).__name__}: {_one_line(exc)}"
        return ViewCleanup(name, error=error, kept=kept, again=again)
    stream = record.get("stream")
    if view is None and isinstance(stream, str):  # a removed view an ingest may write again
        if stream not in holders:
            holders[stream] = _ingest_holders(store, {stream}).get(stream)
        holder = holders[stream]
        if holder and record.get("ingest", holder) == holder:
            registry.update_cleanup([], {name: {"ingest": holder}})
            return ViewCleanup(name, deleted, ingest=holder)
    if record.get("stream") or record.get("fenced"):  # a stream-fed view's fence goes too
        try:
            _clear_fence(store.online, store.project, name)
        except OnlineStoreError as exc:
            return ViewCleanup(name, error=_one_line(exc), kept=kept, again=again)
    registry.update_cleanup([name])
    return ViewCleanup(name, deleted, kept=kept, again=again)


def _clear_fence(online: OnlineStore, project: str, name: str) -> None:
    """Overwrite the fence of removed view ``name`` (if any) with nothing, gone a second later,
    so the same name defined again later, with other keys, is not held back."""
    import time

    from featurestore.online.stream.apply import fence_key

    expire = int(time.time() * 1000) + 1000
    online.write_batch([fence_key(project, name)], [b""], [expire])


def _streams_of(record: dict[str, object], view: FeatureView) -> set[str]:
    """The streams whose ingest may write ``view``: the old definition's (the record's) and
    the new one's."""
    from featurestore.sources import StreamSource

    new = view.source.stream if isinstance(view.source, StreamSource) else None
    return {s for s in (record.get("stream"), new) if isinstance(s, str)}


def _delete_fenced(
    store: FeatureStore, state: RegistryState, view: FeatureView, streams: set[str]
) -> tuple[int, str]:
    """Delete the rows of a stream-fed ``view`` whose join keys changed, behind its fence (see
    the module's docstring); returns (rows deleted, the holder of a lock of ``streams``, or "":
    every lock was taken, the rows are all deleted and the fence is settled). With a holder the
    fence is left pending and nothing is deleted; a stream server that does not answer raises
    ``_StreamServerDown`` after the same."""
    from featurestore.online.stream.apply import fence_key, fence_value
    from featurestore.online.stream.events import as_text
    from featurestore.online.stream.locks import LOCK_SUFFIX, acquire, new_token, release
    from featurestore.online.stream.streams import redis_client, stream_errors

    online, key = store.online, fence_key(store.project, view.name)
    kinds = state.join_key_kinds
    token = new_token([view.name])  # as a materialize's: no ingest starts, no apply waits for it
    client = redis_client(store, timeout=2.0, connect_timeout=0.5)
    held: list[str] = []
    holder = ""
    down = ""
    try:
        try:
            for stream in sorted(streams):
                lock = stream + LOCK_SUFFIX
                if not acquire(client, lock, token):
                    holder = "?"  # held, by whom is told next (unless the server fails)
                    holder = as_text(client.get(lock) or b"?")
                    break
                held.append(lock)
        except stream_errors() as exc:  # an ingest may still run: nothing is known
            down = _one_line(exc)
        # pending first: a writer that took a lock after all (it expired) writes nothing
        online.write_batch([key], [fence_value(view.join_keys, kinds, pending=True)])
        if down and not holder:
            raise _StreamServerDown(
                f"the stream server did not answer ({down}), so an ingest may still write the "
                "view under its old keys; ingest and materialize leave it alone until then"
            )
        if holder:
            return 0, holder
        deleted = online.delete_view(store.project, view.name)
        # settled, with no expiry: an ingest that read the old keys may start any time later
        online.write_batch([key], [fence_value(view.join_keys, kinds, pending=False)])
        return deleted, ""
    finally:
        for lock in held:
            try:
                release(client, lock, token)
            except stream_errors():  # it expires by itself
                pass
        client.close()


def _ingest_holders(store: FeatureStore, streams: set[str]) -> dict[str, str]:
    """Stream -> the ingest holding its lock, for the streams read by one now; a stream server
    that does not answer has no ingest reading it."""
    if not streams:
        return {}

    from featurestore.online.stream.events import as_text
    from featurestore.online.stream.locks import is_materialize
    from featurestore.online.stream.streams import LOCK_SUFFIX, redis_client, stream_errors

    client = redis_client(store, timeout=2.0, connect_timeout=0.5)
    try:
        found = {s: client.get(s + LOCK_SUFFIX) for s in sorted(streams)}
    except stream_errors():
        return {}
    finally:
        client.close()
    # a materialize holding the lock writes only while it runs: it is no ingest to wait for
    return {s: as_text(h) for s, h in found.items() if h is not None and not is_materialize(h)}
