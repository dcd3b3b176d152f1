"""Pushes: rows checked against a feature view's schema and written, under a time limit, to its
online store, its offline source or both (``to``; a mixin of Engine).

``to="online"`` (the default) writes the online store only. ``to="offline"`` appends the rows to
the view's source folder as one Parquet file (featurestore.offline.push), so training sets and
later materializations see them; ``to="online_and_offline"`` does both, the offline file first
(the durable record), then the online store. When the online write then fails or times out the
request fails as an online push does, and the offline file stays: a retry adds an identical
row, which the point-in-time join resolves to the same values.

Before anything is written, every front end's rows are checked beside ``push_table`` (see
``_push_checks``): the JSON forms answers use are read back (base64 text of a Bytes feature,
``"NaN"``/``"Infinity"``/``"-Infinity"`` of a float one) and finite numbers a Float32 would
store as infinity are refused; an event time more than ``stream.max_future`` after now is
refused, as stream ingest refuses it; and so is a join key too long for the embedded store.
A refused push writes nothing, online or offline.

A write runs on the engine's thread pool, so a hung store or disk cannot hang the request; its
limit is ten times the read budget, at least a second (writes may take longer than reads). A
write that lands after its request timed out is not recorded in the audit log.

An online push into a view that apply redefined (new join keys, or removed and defined again)
while it still deletes the online rows of the earlier definition would be deleted with them:
it waits for that cleanup, up to half its time limit, so it lands after the delete, or is
refused with ``CleanupPendingError`` (503 / UNAVAILABLE, retryable), nothing written (see
``_push_checks.wait_for_cleanup``). A stream-fed view whose join keys changed is refused at
once: its old rows are deleted only once no ingest reads its stream (featurestore/_cleanup.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from featurestore._inputs import entity_input
from featurestore._time import now_us
from featurestore.errors import (
    EntityDataError,
    FeatureStoreError,
    OnlineStoreError,
    OnlineStoreUnavailableError,
)
from featurestore.online.models.errors import without_paths
from featurestore.online.serving import _requests as rq
from featurestore.online.serving._push_checks import (
    check_key_sizes,
    check_not_future,
    json_values,
    wait_for_cleanup,
)
from featurestore.online.serving.config import MAX_DEADLINE_MS
from featurestore.online.serving.errors import BadRequestError, NotReadyError

if TYPE_CHECKING:
    from featurestore.online.serving.audit import AuditLog
    from featurestore.online.serving.config import ServingConfig
    from featurestore.online.serving.metrics import Metrics
    from featurestore.store import FeatureStore

log = logging.getLogger("featurestore.serving")


class ThrottledLog:
    """Error lines at most one per ``period`` seconds for each kind of failure; the next one
    says how many were left out. A store outage fails every push: one line each would flood
    the log (reads are cut short by the breaker, pushes are not)."""

    def __init__(self, period: float) -> None:
        self.period = period
        self._next: dict[Any, float] = {}  # kind -> when it may be logged again
        self._left_out: dict[Any, int] = {}
        self._lock = threading.Lock()

    def error(self, kind: Any, msg: str, *args: Any) -> None:
        now = time.monotonic()
        with self._lock:
            if now < self._next.get(kind, 0.0):
                self._left_out[kind] = self._left_out.get(kind, 0) + 1
                return
            left_out = self._left_out.pop(kind, 0)
            self._next[kind] = now + self.period
        if left_out:
            msg += " (and %d more like it in the last %g s, not logged)"
            args = (*args, left_out, self.period)
        log.error(msg, *args)


_FAILURES = ThrottledLog(10.0)  # failed pushes' log lines (every one is counted in metrics)


def _plain_rows(rows: Any) -> Any:
    """In-process rows as ``to_columns`` takes them: columns as lists (``entity_input``, which
    lists numpy datetime64 columns as times, not as bare integers); rows it refuses are left
    for ``to_columns`` to name as the push's field."""
    try:
        return entity_input(rows)
    except EntityDataError:
        return rows


class Pushes:
    """Validated, time-limited writes of pushed rows (Engine's part)."""

    store: FeatureStore
    config: ServingConfig
    metrics: Metrics
    _pool: cf.ThreadPoolExecutor
    _grace_us: int
    _audit: AuditLog | None
    _observe: Callable[[str, float, bool, int], None]  # the engine's latency and counters

    def _push_fn(
        self, feature_view: str, rows: Any, to: str, wait_s: float
    ) -> tuple[Callable[[], int], dict[str, list[Any]]]:
        """The write of a validated push, and its entity keys (for the audit log). An online
        push into a view with a cleanup record waits up to ``wait_s`` for the cleanup first
        (in the write: off the event loop; see ``wait_for_cleanup``)."""
        from featurestore._cleanup import is_fenced
        from featurestore.offline.push import push_mode, push_target, write_offline_push
        from featurestore.online.codec import EVENT_TS
        from featurestore.online.writer import latest_rows, write_table

        offline, online = push_mode(to)
        if not isinstance(feature_view, str) or not feature_view:
            raise BadRequestError("feature_view must be a view's name", field="feature_view")
        state = self.store.registry
        view = state.feature_view(feature_view)
        record = state.pending_cleanup.get(view.name) if online else None
        if record is not None and is_fenced(record, view):
            # (its old-key rows are still to be deleted view-wide: a row written now would go too)
            raise NotReadyError(
                f"feature view '{view.name}' changed its join keys and its rows under the old "
                "keys are not deleted yet; run `featurestore apply` again once no ingest reads "
                "its stream, then push online"
            )
        now = now_us()
        cols = json_values(view, rq.to_columns(_plain_rows(rows), "rows"))
        table = rq.push_table(view, cols, now, self.config.max_entities, state.join_key_kinds)
        ts_name = view.source.timestamp_field
        ts_name = ts_name if ts_name in cols else "event_timestamp"
        check_not_future(view, table, ts_name, now, self.store.config.stream.max_future)
        if online:
            check_key_sizes(self.store.online, self.store.project, view, cols, state.join_key_kinds)
        # rows of one entity at one event time (the created time is the push's): the last
        # listed is kept, offline too, where a training set could otherwise pick either
        table = latest_rows(table, (*view.join_keys, EVENT_TS))
        target = push_target(view, self.store.config, state) if offline else None
        store, project = self.store.online, self.store.project
        batch = self.store.config.online_store.write_batch_size
        registry = self.store._registry

        def write() -> int:
            if record is not None:  # redefined: its earlier rows are being deleted view-wide
                wait_for_cleanup(registry, view, wait_s)
            if target is not None:  # first: the durable record
                write_offline_push(target, table, now_us=now)
            if not online:
                return table.num_rows
            # per key the row the point-in-time join picks, as offline: the push's latest,
            # unless the store already holds a newer one (checked and set atomically, so a
            # concurrent push or stream write of the same entity cannot slip in between)
            return write_table(
                store, project, view, latest_rows(table, view.join_keys), now_us=now,
                key_ttl_grace_us=self._grace_us, batch_size=batch, only_newer=True,
            )  # fmt: skip

        return write, {k: cols[k] for k in view.join_keys}

    def push(
        self,
        feature_view: str,
        rows: Any,
        *,
        to: str = "online",
        deadline_ms: float | None = None,
    ) -> int:
        """Validate rows against the view's schema and write them where ``to`` says ("online",
        "offline" or "online_and_offline"; see the module doc); returns rows written."""
        t0 = time.perf_counter()
        timeout = self._push_timeout(deadline_ms)
        write, keys = self._push_fn(feature_view, rows, to, timeout / 2)
        fut = self._pool.submit(write)
        try:
            n = fut.result(timeout=timeout)
        except Exception as exc:
            raise self._push_error(exc, to) from None
        return self._pushed(feature_view, n, keys, t0, to)

    async def apush(
        self,
        feature_view: str,
        rows: Any,
        *,
        to: str = "online",
        deadline_ms: float | None = None,
    ) -> int:
        """``push`` for an event loop."""
        t0 = time.perf_counter()
        timeout = self._push_timeout(deadline_ms)
        write, keys = self._push_fn(feature_view, rows, to, timeout / 2)
        fut = self._pool.submit(write)
        try:
            n = await asyncio.wait_for(asyncio.wrap_future(fut), timeout)
        except Exception as exc:
            raise self._push_error(exc, to) from None
        return self._pushed(feature_view, n, keys, t0, to)

    def _pushed(
        self, feature_view: str, n: int, keys: dict[str, list[Any]], t0: float, to: str
    ) -> int:
        """A push that landed: counted, timed and (when on) audited; returns its row count."""
        self._observe("push", t0, False, n)
        if self._audit is not None:
            self._audit.push(feature_view, n, keys, to)
        return n

    def _push_timeout(self, deadline_ms: float | None) -> float:
        """Seconds a push may take: 10x the read budget (writes may legitimately take longer),
        at least 1 s. A ``deadline_ms`` outside (0, MAX_DEADLINE_MS] is a BadRequestError, as
        for reads (every front end: gRPC cannot refuse it in its schema, as REST does)."""
        if deadline_ms is not None and (
            not isinstance(deadline_ms, (int, float))
            or isinstance(deadline_ms, bool)
            or not 0 < deadline_ms <= MAX_DEADLINE_MS  # NaN fails too
        ):
            raise BadRequestError(
                f"deadline_ms must be a number of milliseconds above 0 and up to "
                f"{MAX_DEADLINE_MS}, got {deadline_ms!r}",
                field="deadline_ms",
            )
        return max(1.0, (deadline_ms or self.config.deadline_ms) * 10 / 1000)

    def _push_error(self, exc: BaseException, to: str = "online") -> BaseException:
        """The error a failed write answers with. A store or disk failure is logged whole and
        answered without server paths; it is counted by the servers, as every failed push
        (``Metrics.failed``), so a request is counted once whatever failed."""
        from featurestore.offline.push import OfflineWriteError

        if isinstance(exc, FeatureStoreError) and not isinstance(
            exc, (OnlineStoreError, OfflineWriteError)
        ):
            return exc
        if isinstance(exc, (asyncio.TimeoutError, cf.TimeoutError)):
            if to == "online":
                return OnlineStoreUnavailableError("push: the online store did not answer in time")
            return OnlineStoreUnavailableError(
                f"push (to={to}): the writes did not finish in time; the offline file may still "
                "land (a retry then adds an identical row)"
            )
        _FAILURES.error((to, type(exc)), "push (to=%s) failed: %s", to, exc)
        why = without_paths(str(exc), self.store.config.repo_path)
        if isinstance(exc, OfflineWriteError):
            return OfflineWriteError(why)
        return OnlineStoreUnavailableError(f"push: the online store failed: {why}")
