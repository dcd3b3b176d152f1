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
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from featurestore.errors import OnlineStoreError, OnlineStoreUnavailableError

if TYPE_CHECKING:
    from featurestore.feature_view import FeatureView
    from featurestore.online.base import OnlineStore
    from featurestore.registry import Registry, RegistryState
    from featurestore.store import FeatureStore


class _StreamServerDown(Exception):
    """The stream server did not answer: whether an ingest still writes a view is not known."""


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


def is_fenced(record: dict[str, object], view: FeatureView | None) -> bool:
    """Whether a cleanup record is a fenced one: a stream-fed view (then or now) that is still
    defined (its join keys changed); its rows are deleted only behind its fence."""
    return view is not None and bool(_streams_of(record, view))


def fenced_views(state: RegistryState) -> dict[str, dict[str, object]]:
    """The views of ``state`` whose fenced cleanup is still to run: view -> its record."""
    return {
        n: r for n, r in state.pending_cleanup.items() if is_fenced(r, state.feature_views.get(n))
    }


def delete_redefined(
    online: OnlineStore, project: str, records: Mapping[str, Mapping[str, object]]
) -> None:
    """Delete the rows left by removed views that are defined again, before the registry says
    they exist (rows written then would be deleted later): a store that does not answer fails
    the apply with nothing changed. Fenced views are never passed here: no lock guards this
    delete (see ``_delete_fenced``). ``records``: view -> its cleanup record; the fence a
    stream-fed removed version may have left goes too."""
    for name, record in records.items():
        try:
            online.delete_view(project, name)
            if record.get("stream") or record.get("fenced"):
                _clear_fence(online, project, name)
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
            if not kept:  # its watermark's copies too (every node's on Redis Cluster)
                store._drop_watermark(name)
        except _StreamServerDown as exc:  # the fence stands pending: the next apply retries
            notes[name] = {"fenced": True}
            results.append(ViewCleanup(name, error=str(exc), kept=kept))
            continue
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
        if record.get("stream") or record.get("fenced"):  # a stream-fed view's fence goes too
            try:
                _clear_fence(store.online, store.project, name)
            except OnlineStoreError as exc:
                results.append(ViewCleanup(name, error=_one_line(exc), kept=kept))
                continue
        done.append(name)
        results.append(ViewCleanup(name, deleted, kept=kept))
    registry.update_cleanup(done, notes)
    return results


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
