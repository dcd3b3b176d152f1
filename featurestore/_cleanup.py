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
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from featurestore.errors import OnlineStoreError, OnlineStoreUnavailableError

if TYPE_CHECKING:
    from featurestore.online.base import OnlineStore
    from featurestore.registry import Registry
    from featurestore.store import FeatureStore


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
    holders = _ingest_holders(store, {r.get("stream") for r in pending.values()} - {None})
    results: list[ViewCleanup] = []
    done: list[str] = []
    notes: dict[str, dict[str, str]] = {}
    down = ""  # the store did not answer: skip its other views instead of waiting again
    for name in sorted(pending):
        record = pending[name]
        kept = name in state.feature_views
        if down:
            results.append(ViewCleanup(name, error=down, kept=kept))
            continue
        try:
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
        else:
            done.append(name)
            results.append(ViewCleanup(name, deleted, kept=kept))
    registry.update_cleanup(done, notes)
    return results


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
