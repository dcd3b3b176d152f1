"""``featurestore ingest``: apply stream events to the online and offline stores until stopped."""

from __future__ import annotations

import signal
import time
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from featurestore.store import FeatureStore


@click.command()
@click.option(
    "--source", "sources", multiple=True, help="A StreamSource to read (default: all of them)."
)
@click.option("--once", is_flag=True, help="Apply what the streams hold now, then exit.")
@click.option("--max-events", type=click.IntRange(min=1), help="Stop after this many entries.")
@click.option("--status", is_flag=True, help="Print each stream's length, lag and dead letters.")
@click.option(
    "--metrics-port", type=click.IntRange(0, 65535), help="Serve Prometheus /metrics on this port."
)
@click.option("--metrics-host", default="127.0.0.1", show_default=True)
@click.pass_context
def ingest(
    ctx: click.Context,
    sources: tuple[str, ...],
    once: bool,
    max_events: int | None,
    status: bool,
    metrics_port: int | None,
    metrics_host: str,
) -> None:
    """Read the repo's event streams (Redis, stream.url) and keep the stores fresh.

    Bad events go to <stream>:dead with the reason. SIGINT/SIGTERM finish the round in hand.
    """
    from featurestore.errors import FeatureStoreError
    from featurestore.online.stream.streams import stream_errors
    from featurestore.store import FeatureStore

    store = FeatureStore(ctx.obj["repo"])
    try:
        if status:
            from featurestore.online.stream import stream_status
            from featurestore.online.stream.streams import stream_sources

            if not stream_sources(store):  # (as dead-letters says, not a silent success)
                raise FeatureStoreError("no applied feature view reads a StreamSource")
            for line in stream_status(store, list(sources) or None):
                click.echo(line)
        else:
            _run(store, list(sources) or None, once, max_events, metrics_port, metrics_host)
    except stream_errors() as exc:  # one line, as every CLI error (a traceback with --debug)
        url = store.config.stream.redis_url(store.config.online_store)
        raise FeatureStoreError(f"stream server {url}: {exc}") from exc
    finally:
        store.close()


def _run(
    store: FeatureStore,
    sources: list[str] | None,
    once: bool,
    max_events: int | None,
    metrics_port: int | None,
    metrics_host: str,
) -> None:
    """Ingest until stopped (SIGINT/SIGTERM finish the round in hand), then say what was done."""
    from featurestore.online.stream import Ingester

    metrics = None
    if metrics_port is not None:
        from featurestore.online.stream.metrics import IngestMetrics

        metrics = IngestMetrics()
        metrics.serve(metrics_port, metrics_host)
    ing = Ingester(store, sources, echo=_err, metrics=metrics)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: ing.stop())
    t0 = time.perf_counter()
    stats = ing.run(once=once, max_events=max_events)
    seconds = time.perf_counter() - t0
    rate = stats.applied / seconds if seconds > 0 else 0.0
    trimmed = (
        f"; {stats.trimmed:,} acknowledged entries trimmed" if store.config.stream.trim else ""
    )
    click.echo(
        f"ingested {stats.applied:,} events ({rate:,.0f}/s), {stats.dead:,} dead-lettered, "
        f"{stats.replayed:,} already applied{trimmed}"
    )


def _err(line: str) -> None:
    click.echo(line, err=True)
