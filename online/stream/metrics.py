"""Prometheus metrics of an ingest process (``featurestore ingest --metrics-port``).

The delay of an event is the time from its XADD (the wall-clock time in its entry id) to the
moment its round was applied online: how fresh the served features are.
"""

from __future__ import annotations

import time
from typing import Any

_DELAY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class IngestMetrics:
    """Events by outcome, delay from XADD to applied, round time, the group's lag, and the
    stream's trimming (entries removed, entries left)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self.events = Counter(
            "featurestore_ingest_events_total",
            "Stream events by outcome (applied, dead, replayed: applied before a restart)",
            ["source", "outcome"],
            registry=r,
        )
        self.delay = Histogram(
            "featurestore_ingest_delay_seconds",
            "Time from an event's XADD to its round being applied online",
            ["source"],
            buckets=_DELAY_BUCKETS,
            registry=r,
        )
        self.round = Histogram(
            "featurestore_ingest_round_seconds",
            "Time to handle one round of entries",
            ["source"],
            registry=r,
        )
        self.lag = Gauge(
            "featurestore_ingest_lag_entries",
            "Entries in the stream not yet delivered to the group",
            ["source"],
            registry=r,
        )
        self.trimmed = Counter(
            "featurestore_ingest_trimmed_entries_total",
            "Stream entries removed once every consumer group had acknowledged them",
            ["source"],
            registry=r,
        )
        self.length = Gauge(
            "featurestore_ingest_stream_entries",
            "Entries left in the stream after its last trim (grows while a group lags)",
            ["source"],
            registry=r,
        )

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """Expose /metrics on ``host:port`` from a background thread."""
        from prometheus_client import start_http_server

        start_http_server(port, addr=host, registry=self.registry)

    def observe_round(
        self, source: str, ids: list[tuple[int, int]], counts: dict[str, int], seconds: float
    ) -> None:
        """One handled round: its entries' ids (ms, seq), events per outcome, and its time."""
        now_ms = time.time() * 1000
        h = self.delay.labels(source)
        for ms, _ in ids:
            h.observe(max(0.0, now_ms - ms) / 1000)
        for outcome, n in counts.items():
            if n:
                self.events.labels(source, outcome).inc(n)
        self.round.labels(source).observe(seconds)

    def observe_trim(self, source: str, removed: int, left: int) -> None:
        """One trim of a source's stream: entries removed, and the stream's length after it."""
        if removed:
            self.trimmed.labels(source).inc(removed)
        self.length.labels(source).set(left)

    def render(self) -> Any:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
