"""The audit log: one JSON line per prediction and per push, written off the request path.

A fraud decision must be explainable later: which model version scored which entity with which
feature values, the score, whether the answer was degraded, who asked and the request id. With
``serving.audit`` set, the engine hands every answered prediction and every successful push to
an :class:`AuditLog`. The request only builds a tuple (the entity keys already as JSON, a
snapshot) and appends it to a bounded queue; a background thread formats, serialises (orjson)
and appends the records in batches, flushing each batch. Nothing the log does can block or fail
a request:

- queue full (the disk stalled): the record is dropped, counted in
  ``featurestore_audit_dropped_total{reason="queue_full"}``, and a warning is logged at most
  every ``WARN_EVERY_S`` seconds;
- a write error (disk full, folder removed): logged and counted
  (``featurestore_audit_write_errors_total``, the batch's records in
  ``featurestore_audit_dropped_total{reason="write_error"}``); the next batch recreates the
  folder and starts a new file.

Files are ``<path>/audit-<UTC start time>-<pid>.jsonl``, so worker processes never share one; a
new file starts once the current one reaches ``max_file_mb``, or when the current file was
removed or renamed away (e.g. by logrotate). ``close()`` drains the queue and fsyncs. A full
queue of one-entity, 40-feature predictions holds about 1 KB a record (~100 MB at MAX_QUEUE).

Records (keys in this order; ``ts`` is when the answer was ready, ``latency_us`` the engine's
time for it, from the call to the answer)::

    {"ts": "2026-11-27T06:31:05.123456Z", "request_id": "...", "caller": "fraud-api" | null,
     "kind": "predict", "model": "fraud", "version": 3, "shadow_version": 4 | null,
     "entities": {"user_id": [9]}, "scores": [0.93] (null: unscored, a NaN input),
     "degraded": false, "features": {"tx_count": [90.0], ...}, "latency_us": 412}

    {"ts": ..., "request_id": ..., "caller": ..., "kind": "push", "feature_view": "user_stats",
     "rows": 2, "entities": {"user_id": [1, 2]}, "to": "online"}

``features`` (only with ``include_features``) holds the exact values the model was given, by
input name in the model's input order: the defaults when the answer was degraded, null for a
missing value (NaN). A push records its entity keys and row count, not its feature values
(pushes can be large; the values are in the online store and the source). Not recorded: get
features (reads, not decisions), and requests that failed (an error answer decided nothing).
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from featurestore._jsonable import json_default
from featurestore.online.serving.context import current_caller, current_request_id

if TYPE_CHECKING:
    import numpy as np

    from featurestore.online.serving.metrics import Metrics

log = logging.getLogger("featurestore.serving.audit")

MAX_QUEUE = 100_000  # records waiting for the writer; beyond this they are dropped
BATCH = 8  # records serialised per write (and flush)
# Between two batches the writer sleeps PAUSE_S, unless CATCH_UP records are waiting: a
# request thread wanting the GIL then waits at most one batch (~0.1 ms), not until the
# interpreter's 5 ms switch interval forces the writer out (a released GIL, as in a write
# call, is taken straight back). Paced, the writer still does ~30k records/s; behind, it
# runs flat out.
PAUSE_S = 0.0001
CATCH_UP = 1000
WAKE_AT = 256  # queued records that wake the writer before FLUSH_S
FLUSH_S = 0.05  # the writer wakes at least this often (records reach the file within ~this)
WARN_EVERY_S = 10.0  # at most one warning per this many seconds for drops and write errors
_MB = 1 << 20
_PREDICT, _PUSH = 0, 1
_OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


class _Flush:
    """A marker in the queue: set once every record queued before it is written."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


def _entities(entities: Mapping[str, Sequence[Any]]) -> orjson.Fragment:
    """The entity columns as JSON, now: a snapshot the caller cannot change afterwards, cheaper
    than a copy, and holding no containers (a queued record is then no work for the garbage
    collector, which would otherwise promote thousands of waiting records to its oldest
    generation and pay for full collections on the request path)."""
    try:
        return orjson.Fragment(orjson.dumps(entities, default=json_default, option=_OPTS))
    except Exception:  # e.g. an integer beyond 64 bits: recorded as text rather than lost
        return orjson.Fragment(
            orjson.dumps({str(k): [str(v) for v in col] for k, col in entities.items()})
        )


class AuditLog:
    """Append-only JSON-lines audit records of predictions and pushes, written by a thread."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        include_features: bool = True,
        max_file_mb: float = 100.0,
        metrics: Metrics | None = None,
        max_queue: int = MAX_QUEUE,
    ) -> None:
        if metrics is None:
            from featurestore.online.serving.metrics import Metrics

            metrics = Metrics()
        self.path = Path(path)
        self.include_features = include_features
        self.max_bytes = max(1, int(max_file_mb * _MB))
        self.max_queue = max_queue
        self.metrics = metrics
        self.files: list[Path] = []  # every file this log opened, oldest first
        self.written = 0
        self.dropped = 0
        self.write_errors = 0
        self._q: collections.deque[Any] = collections.deque()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._file: Any = None
        self._file_path: Path | None = None
        self._file_bytes = 0
        self._ts_s = -1
        self._ts_text = ""
        self._warned_at: dict[str, float] = {}
        self._templates: dict[int, tuple[Sequence[str], bytes]] = {}  # see _features
        self._unwarned: dict[str, int] = {}
        self._counted = {
            _PREDICT: metrics.child(metrics.audit_records, "predict"),
            _PUSH: metrics.child(metrics.audit_records, "push"),
        }
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: (a := ref()) is not None and a._forked())

    # ---- the request path: build a tuple, append it ------------------------------------------
    def predict(
        self,
        *,
        model: str,
        version: int,
        shadow_version: int | None,
        entities: Mapping[str, Sequence[Any]],
        x: np.ndarray,
        feature_names: Sequence[str],
        scores: np.ndarray,
        degraded: bool,
        latency_us: int,
    ) -> str:
        """Queue the record of one answered prediction; returns its request id."""
        rid = current_request_id()
        self._put(
            (
                _PREDICT,
                time.time_ns() // 1000,
                rid,
                current_caller(),
                model,
                version,
                shadow_version,
                _entities(entities),
                scores,
                degraded,
                x if self.include_features else None,
                feature_names,
                latency_us,
            )
        )
        return rid

    def push(
        self,
        feature_view: str,
        rows: int,
        entities: Mapping[str, Sequence[Any]],
        to: str = "online",
    ) -> str:
        """Queue the record of one successful push (entity keys only); returns its request id."""
        rid = current_request_id()
        self._put(
            (
                _PUSH,
                time.time_ns() // 1000,
                rid,
                current_caller(),
                feature_view,
                rows,
                _entities(entities),
                to,
            )
        )
        return rid

    def _put(self, item: tuple[Any, ...]) -> None:
        if self._thread is None:
            self._start()
        q = self._q
        n = len(q)
        if n >= self.max_queue or self._closed:
            self._drop(1, "closed" if self._closed else "queue_full")
            return
        q.append(item)
        if n == WAKE_AT:  # enough waiting: no need to sleep out the flush interval
            self._wake.set()

    # ---- control ------------------------------------------------------------------------------
    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every record queued so far is written and flushed; False on timeout."""
        if self._thread is None or self._closed:
            return not self._q
        marker = _Flush()
        self._q.append(marker)  # past the bound on purpose: a marker holds no data
        self._wake.set()
        return marker.done.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Drain the queue, fsync and close the file; later records are dropped (counted)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        if thread is not None:
            self._wake.set()
            thread.join(timeout)
            if thread.is_alive():
                log.warning(
                    "audit log %s: the writer did not finish within %.0f s (disk stalled?); "
                    "%d record(s) may be lost",
                    self.path,
                    timeout,
                    len(self._q),
                )
                return
            self._drain()  # what slipped in while the writer finished (it has stopped)
        self._close_file()

    @property
    def queued(self) -> int:
        """Records waiting for the writer."""
        return len(self._q)

    def _start(self) -> None:
        with self._lock:
            if self._thread is None and not self._closed:
                t = threading.Thread(target=self._run, name="audit-writer", daemon=True)
                t.start()
                self._thread = t

    def _forked(self) -> None:
        """In a forked child: the parent's writer thread and file are not ours."""
        self._thread = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._q = collections.deque()
        self._file, self._file_path, self._file_bytes = None, None, 0

    def _drop(self, n: int, reason: str, error: BaseException | None = None) -> None:
        self.dropped += n
        self.metrics.child(self.metrics.audit_dropped, reason).inc(n)
        # at most one warning per WARN_EVERY_S and reason, with the count since the last one
        self._unwarned[reason] = self._unwarned.get(reason, 0) + n
        now = time.monotonic()
        last = self._warned_at.get(reason)
        if last is None or now - last >= WARN_EVERY_S:
            self._warned_at[reason] = now
            count, self._unwarned[reason] = self._unwarned[reason], 0
            log.warning(
                "audit log %s: dropped %d record(s) (%s)%s%s",
                self.path,
                count,
                reason,
                "" if last is None else f" in the last {now - last:.0f} s",
                "" if error is None else f"; last error: {error}",
            )

    # ---- the writer thread ----------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            self._wake.wait(FLUSH_S)
            self._wake.clear()
            stopping = self._closed  # read before draining: what comes later is refused anyway
            try:
                self._drain()
            except Exception:  # never let the writer die: the log would silently stop
                log.exception("audit log %s: writer error", self.path)
            if stopping:
                return

    def _drain(self) -> None:
        q = self._q
        lines: list[bytes] = []
        counts = [0, 0]
        while q:
            item = q.popleft()
            if type(item) is _Flush:
                self._write(lines, counts)
                lines, counts = [], [0, 0]
                item.done.set()
                continue
            try:
                lines.append(self._encode(item))
                counts[item[0]] += 1
            except Exception as exc:  # an unserialisable value must not take the batch down
                self._drop(1, "unserialisable")
                log.debug("audit record not serialisable: %r", exc)
            if len(lines) >= BATCH:
                self._write(lines, counts)
                lines, counts = [], [0, 0]
                if len(q) < CATCH_UP:  # keeping up: step aside (see PAUSE_S)
                    time.sleep(PAUSE_S)
        self._write(lines, counts)

    def _iso(self, us: int) -> str:
        s, frac = divmod(us, 1_000_000)
        if s != self._ts_s:
            self._ts_s = s
            self._ts_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(s))
        return f"{self._ts_text}.{frac:06d}Z"

    def _features(self, names: Sequence[str], x: np.ndarray) -> bytes:
        """``{name: [column]}`` of the input rows ``x`` as JSON (NaN as null).

        The names part is a template made once per model; the numbers come from one orjson call
        on the whole matrix, cut at the column boundaries (numbers and null hold no brackets
        or commas): cheaper than building and dumping a dict of lists for each record.
        """
        hit = self._templates.get(id(names))
        if hit is None or hit[0] is not names:
            if len(self._templates) >= 64:
                self._templates.clear()
            keys = [orjson.dumps(str(n)).replace(b"%", b"%%") for n in names]
            hit = self._templates[id(names)] = (
                names,
                b"{" + b",".join(k + b":[%b]" for k in keys) + b"}",
            )
        if x.shape[0] == 1:
            cols = orjson.dumps(x[0].tolist())[1:-1].split(b",")
        else:
            cols = orjson.dumps(x.T.tolist())[2:-2].split(b"],[")
        return hit[1] % tuple(cols)

    def _encode(self, item: tuple[Any, ...]) -> bytes:
        if item[0] == _PREDICT:
            _, ts, rid, caller, model, version, shadow, ents, scores, degraded, x, names, lat = item
            rec: dict[str, Any] = {
                "ts": self._iso(ts),
                "request_id": rid,
                "caller": caller,
                "kind": "predict",
                "model": model,
                "version": version,
                "shadow_version": shadow,
                "entities": ents,
                "scores": scores,  # a float64 array: NaN (unscored) dumps as null
                "degraded": bool(degraded),
            }
            if x is not None:
                rec["features"] = orjson.Fragment(self._features(names, x))
            rec["latency_us"] = lat
        else:
            _, ts, rid, caller, view, rows, ents, to = item
            rec = {
                "ts": self._iso(ts),
                "request_id": rid,
                "caller": caller,
                "kind": "push",
                "feature_view": view,
                "rows": rows,
                "entities": ents,
                "to": to,
            }
        return orjson.dumps(rec, default=json_default, option=_OPTS | orjson.OPT_APPEND_NEWLINE)

    def _write(self, lines: list[bytes], counts: list[int]) -> None:
        """Append ``lines`` (whole records), starting new files at the size limit; flush."""
        if not lines:
            return
        try:
            i = 0
            while i < len(lines):
                f = self._writable()
                room = self.max_bytes - self._file_bytes
                j, size = i, 0
                while j < len(lines) and size + len(lines[j]) <= room:
                    size += len(lines[j])
                    j += 1
                if j == i:  # the next record does not fit
                    if self._file_bytes:
                        self._close_file()  # the next file takes it
                        continue
                    j, size = i + 1, len(lines[i])  # larger than a whole file: a file of its own
                f.write(b"".join(lines[i:j]))
                self._file_bytes += size
                i = j
            self._file.flush()
        except OSError as exc:
            self.write_errors += 1
            self.metrics.audit_write_errors.inc()
            self._abandon_file()
            self._drop(len(lines), "write_error", exc)
            return
        self.written += len(lines)
        for kind, n in enumerate(counts):
            if n:
                self._counted[kind].inc(n)

    def _writable(self) -> Any:
        """The open file, or a new one (also when the current one was removed or replaced)."""
        f = self._file
        if f is not None and self._file_bytes < self.max_bytes and self._still_there():
            return f
        if f is not None:
            self._close_file()
        # the records hold entity ids, feature values, scores and callers: owner only
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        us = time.time_ns() // 1000
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(us // 1_000_000))
        base = f"audit-{stamp}.{us % 1_000_000:06d}Z-{os.getpid()}"
        for n in range(1000):
            p = self.path / (f"{base}.jsonl" if n == 0 else f"{base}-{n}.jsonl")
            try:  # created owner-only (0600), kept open across batches
                f = os.fdopen(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")
            except FileExistsError:
                continue
            break
        else:
            raise FileExistsError(f"audit log {self.path}: no free file name for {base}")
        self._file, self._file_path, self._file_bytes = f, p, 0
        self.files.append(p)
        return f

    def _still_there(self) -> bool:
        """Whether the open file is still at its path (not deleted, renamed or replaced)."""
        try:
            return os.stat(self._file_path).st_ino == os.fstat(self._file.fileno()).st_ino  # type: ignore[arg-type]
        except OSError:
            return False

    def _close_file(self) -> None:
        """Flush, fsync and close the current file."""
        f, self._file = self._file, None
        if f is None:
            return
        try:
            f.flush()
            os.fsync(f.fileno())
        except OSError as exc:
            log.warning("audit log %s: cannot sync %s: %s", self.path, self._file_path, exc)
        finally:
            try:
                f.close()
            except OSError:
                pass

    def _abandon_file(self) -> None:
        """After a failed write: close without caring; the next batch opens a new file."""
        f, self._file = self._file, None
        if f is not None:
            try:
                f.close()
            except OSError:
                pass
