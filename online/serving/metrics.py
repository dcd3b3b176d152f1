"""Prometheus metrics of one engine (own CollectorRegistry, so several engines can coexist).

With several worker processes (``featurestore serve --workers N``) the server sets
``PROMETHEUS_MULTIPROC_DIR`` before the workers start (or uses the one the user set, emptied of
an earlier run's files at start), prometheus_client keeps every worker's values in files there,
and ``/metrics`` on any worker renders all of them merged: one scrape sees the whole server,
whichever worker answers it.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

# the endpoints whose failed requests the servers count (see ``Metrics.failed``): REST path or
# gRPC method -> the ``endpoint`` label the engine gives their answered requests
REST_ENDPOINTS = {"/get-online-features": "get_features", "/predict": "predict", "/push": "push"}
GRPC_ENDPOINTS = {"GetOnlineFeatures": "get_features", "Predict": "predict", "Push": "push"}


@dataclass(frozen=True)
class ServedState:
    """What a server serves right now, read at scrape time: the registry version, each online
    view's materialization watermark (microseconds) and each model alias's version."""

    registry_version: int | None = None
    watermarks_us: dict[str, int] = field(default_factory=dict)
    model_versions: dict[tuple[str, str], int] = field(default_factory=dict)


class _StateCollector:
    """Gauges computed at each scrape from ``ServedState`` (nothing kept between scrapes), so
    every worker answers alike and a failed read costs only these gauges, not the scrape."""

    def __init__(self, read: Callable[[], ServedState]) -> None:
        self._read = read
        self._last_error: str | None = None

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        try:
            state = self._read()
        except Exception as exc:  # the registry unreadable, say: the other metrics still go out
            reason = f"{type(exc).__name__}: {exc}"
            if reason != self._last_error:  # said once per distinct failure, not every scrape
                self._last_error = reason
                log.warning("/metrics left out the served-state gauges: %s", reason)
            return
        self._last_error = None
        if state.registry_version is not None:
            yield GaugeMetricFamily(
                "featurestore_registry_version",
                "Registry version the server answers with",
                value=state.registry_version,
            )
        marks = GaugeMetricFamily(
            "featurestore_materialization_watermark_timestamp_seconds",
            "End of the last materialization window of each batch-fed online view (Unix "
            "time); time() minus it is how stale its features may be",
            labels=["view"],
        )
        for view, us in sorted(state.watermarks_us.items()):
            marks.add_metric([view], us / 1e6)
        yield marks
        models = GaugeMetricFamily(
            "featurestore_model_version",
            "Version each model alias serves (production, canary, shadow)",
            labels=["model", "alias"],
        )
        for (name, alias), version in sorted(state.model_versions.items()):
            models.add_metric([name, alias], version)
        yield models


class Metrics:
    """Request counts and latencies, degraded answers, breaker state, model and shadow scores,
    audit records written and dropped."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "featurestore_requests_total",
            "Requests by endpoint and outcome (ok, degraded, error)",
            ["endpoint", "outcome"],
            registry=r,
        )
        self.request_errors = Counter(
            "featurestore_request_errors_total",
            "Requests answered with an error, by endpoint and HTTP status (gRPC: the status its "
            "code stands for, e.g. 400 for INVALID_ARGUMENT)",
            ["endpoint", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "featurestore_request_seconds",
            "Engine time per answered request (failed ones are counted, not timed)",
            ["endpoint"],
            registry=r,
            buckets=(
                0.0001,
                0.00025,
                0.0005,
                0.001,
                0.0025,
                0.005,
                0.01,
                0.025,
                0.05,
                0.1,
                0.25,
                0.5,
                1.0,
            ),
        )
        self.degraded = Counter(
            "featurestore_degraded_total",
            "Answers served with default values because the store failed",
            ["reason"],
            registry=r,
        )
        self.store_errors = Counter(
            "featurestore_store_errors_total",
            "Online store reads that failed or timed out",
            registry=r,
        )
        self.breaker_state = Gauge(
            "featurestore_breaker_open",
            "1 while the online-store circuit breaker is open (any live worker)",
            registry=r,
            multiprocess_mode="livemax",  # a dead worker's last value is dropped (see render)
        )
        self.predictions = Counter(
            "featurestore_predictions_total", "Rows scored", ["model", "version"], registry=r
        )
        self.unscored = Counter(
            "featurestore_unscored_rows_total",
            "Rows answered with a null score: the model refused their missing (NaN) inputs",
            ["model", "version"],
            registry=r,
        )
        self.shadow = Counter(
            "featurestore_shadow_predictions_total",
            "Rows scored by shadow versions",
            ["model", "version"],
            registry=r,
        )
        self.shadow_errors = Counter(
            "featurestore_shadow_errors_total",
            "Shadow scorings that failed or were skipped, by reason: inputs (the request's rows "
            "lack a shadow input), shape, error (the model raised), dropped (queue full)",
            ["model", "version", "reason"],
            registry=r,
        )
        self.entities = Counter("featurestore_entities_total", "Entities looked up", registry=r)
        self.audit_records = Counter(
            "featurestore_audit_records_total",
            "Audit records written (serving.audit)",
            ["kind"],
            registry=r,
        )
        self.audit_dropped = Counter(
            "featurestore_audit_dropped_total",
            "Audit records lost: queue_full (the disk stalled), write_error, unserialisable, "
            "closed",
            ["reason"],
            registry=r,
        )
        self.audit_write_errors = Counter(
            "featurestore_audit_write_errors_total",
            "Audit log writes that failed (disk full, folder removed); their records are dropped",
            registry=r,
        )
        self._children: dict[tuple[Any, ...], Any] = {}
        self._state: _StateCollector | None = None

    def serve_state(self, read: Callable[[], ServedState]) -> None:
        """Report ``read()`` at every scrape (registry version, watermarks, model versions)."""
        self._state = _StateCollector(read)
        self.registry.register(self._state)

    def child(self, metric: Any, *labels: str) -> Any:
        """A cached labelled child (``labels()`` costs more than the increment itself)."""
        key = (id(metric), *labels)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = metric.labels(*labels)
        return c

    def failed(self, endpoint: str, status: int) -> None:
        """Count one request answered with an error: outcome "error" in the requests counter
        and its status in the errors counter. Called on error paths only."""
        self.child(self.requests, endpoint, "error").inc()
        self.child(self.request_errors, endpoint, str(status)).inc()

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
        from prometheus_client import values as pv

        if pv.ValueClass is pv.MutexValue:  # one process: this engine's own registry
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        from prometheus_client import multiprocess

        _forget_dead_workers()
        merged = CollectorRegistry()  # several workers: every worker's values, from the files
        multiprocess.MultiProcessCollector(merged)
        if self._state is not None:  # read now, the same in every worker
            merged.register(self._state)
        return generate_latest(merged), CONTENT_TYPE_LATEST


def _forget_dead_workers() -> None:
    """Remove the live-gauge files of worker processes that are gone, so a gauge in a "live"
    mode (the breaker's) stops reporting a dead worker's last value. uvicorn restarts a dead
    worker but has no hook to tell prometheus_client, so every scrape looks for itself."""
    from prometheus_client import multiprocess

    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not folder:
        return
    for name in glob.glob(os.path.join(folder, "gauge_live*_*.db")):
        pid_text = os.path.basename(name)[:-3].rsplit("_", 1)[1]
        if pid_text.isdigit() and not _alive(int(pid_text)):
            try:
                multiprocess.mark_process_dead(int(pid_text), folder)
            except FileNotFoundError:  # another worker's scrape removed it first
                pass


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True
