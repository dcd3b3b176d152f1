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
must never meet a row of its new definition: apply sets the view's *fence* in the online store
(online/stream/apply.py), which every ingest reads with its rows. While an ingest (or a
materialize) holds a lock of the view's streams, the fence is pending: it stops the old ingest
at its next event for the view and keeps any new ingest from writing it, and the record stays;
the first apply to find the locks free takes them, deletes the rows (only old ones can be
there) and settles the fence, which then stops only ingests started with the old keys.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from featurestore.errors import OnlineStoreError, OnlineStoreUnavailableError

if TYPE_CHECKING:
    from featurestore.feature_view import FeatureView
    from featurestore.online.base import OnlineStore
    from featurestore.registry import Registry, RegistryState
    from featurestore.store import FeatureStore

# A settled fence outlives the start of any ingest that read the registry before the apply (it
# stops such an ingest at its first write); then it expires.
SETTLED_FENCE_MS = 600_000


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

    @property
    def failed(self) -> bool:
        return self.deleted is None

    @property
    def pending(self) -> bool:
        """True when the next apply has more to do for this view."""
        return self.failed or bool(self.ingest)

    def __str__(self) -> str:
        head = (
            f"view '{self.view}' with changed join keys"
            if self.kept
            else f"removed view '{self.view}'"
        )
        if self.deleted is None:
            return (
                f"{head}: online rows not deleted, the next `featurestore apply` retries: "
                f"{self.error}"
            )
        line = f"{head}: deleted {self.deleted:,} online rows"
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
                f"{line}; {who} holds its stream's lock: run `featurestore apply` again {what}, "
                "then start ingest (until then ingest refuses this view)"
            )
        if self.kept:
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


def delete_redefined(online: OnlineStore, project: str, names: Iterable[str]) -> None:
    """Delete the rows left by removed views that are defined again, before the registry says
    they exist (rows written then would be deleted later): a store that does not answer fails
    the apply with nothing changed."""
    for name in names:
        try:
            online.delete_view(project, name)
        except OnlineStoreError as exc:
            raise type(exc)(
                f"feature view '{name}' is defined again, but the online rows of its removed "
                f"version are not deleted yet ({_one_line(exc)}); nothing was applied: run apply "
                "again once the online store answers"
            ) from exc


def finish_cleanup(store: FeatureStore, registry: Registry) -> list[ViewCleanup]:
    """Delete the online rows of every view with a cleanup record and drop the records of those
    done. Never raises for the online store: what fails stays recorded for the next apply."""
    state = registry.load()
    pending = state.pending_cleanup
    if not pending:
        return []
    removed = {r.get("stream") for n, r in pending.items() if n not in state.feature_views}
    holders = _ingest_holders(store, removed - {None})
    results: list[ViewCleanup] = []
    done: list[str] = []
    notes: dict[str, dict[str, object]] = {}
    down = ""  # the store did not answer: skip its other views instead of waiting again
    for name in sorted(pending):
        record = pending[name]
        kept = name in state.feature_views
        if down:
            results.append(ViewCleanup(name, error=down, kept=kept))
            continue
        streams = _streams_of(record, state.feature_views[name]) if kept else set()
        try:
            if streams:  # a stream-fed view whose join keys changed
                deleted, holder = _delete_fenced(store, state, state.feature_views[name], streams)
                if holder:
                    notes[name] = {"ingest": holder, "fenced": True}
                    results.append(ViewCleanup(name, deleted, ingest=holder, kept=True))
                else:
                    done.append(name)
                    results.append(ViewCleanup(name, deleted, kept=True))
                continue
            deleted = store.online.delete_view(store.project, name)
        except OnlineStoreUnavailableError as exc:
            down = _one_line(exc)
            results.append(ViewCleanup(name, error=down, kept=kept))
            continue
        except Exception as exc:  # the registry is written: report, keep the record, go on
            error = f"{type(exc).__name__}: {_one_line(exc)}"
            results.append(ViewCleanup(name, error=error, kept=kept))
            continue
        holder = holders.get(record.get("stream"))
        if holder and record.get("ingest", holder) == holder:
            notes[name] = {"ingest": holder}
            results.append(ViewCleanup(name, deleted, ingest=holder, kept=kept))
            continue
        if record.get("fenced"):  # removed after its join keys changed: its fence goes too
            try:
                _clear_fence(store, name)
            except OnlineStoreError as exc:
                results.append(ViewCleanup(name, error=_one_line(exc), kept=kept))
                continue
        done.append(name)
        results.append(ViewCleanup(name, deleted, kept=kept))
    registry.update_cleanup(done, notes)
    return results


def _clear_fence(store: FeatureStore, name: str) -> None:
    """Overwrite the fence of removed view ``name`` with nothing, gone a second later."""
    import time

    from featurestore.online.stream.apply import fence_key

    expire = int(time.time() * 1000) + 1000
    store.online.write_batch([fence_key(store.project, name)], [b""], [expire])


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
    none held one, the rows are all deleted and the fence is settled)."""
    import time

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
    try:
        try:
            for stream in sorted(streams):
                lock = stream + LOCK_SUFFIX
                if not acquire(client, lock, token):
                    holder = "?"  # held, by whom is told next (unless the server fails)
                    holder = as_text(client.get(lock) or b"?")
                    break
                held.append(lock)
        except stream_errors():
            pass  # a stream server that does not answer has no ingest reading it
        # pending first: a writer that took a lock after all (it expired) writes nothing
        online.write_batch([key], [fence_value(view.join_keys, kinds, pending=True)])
        deleted = online.delete_view(store.project, view.name)
        if not holder:
            expire = int(time.time() * 1000) + SETTLED_FENCE_MS
            online.write_batch([key], [fence_value(view.join_keys, kinds, pending=False)], [expire])
        return deleted, holder
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
