"""Stream ingestion: events from Redis streams into the online store and the offline store.

``featurestore ingest`` (or ``FeatureStore.ingest``) reads the streams of the repo's
StreamSources with a consumer group; ``FeatureStore.send_events`` writes events to them.
"""

from __future__ import annotations

from featurestore.online.stream.dead_letters import (
    DeadLetter,
    check_replayable,
    count_dead_letters,
    drop_dead_letters,
    list_dead_letters,
    replay_dead_letters,
)
from featurestore.online.stream.ingest import Ingester, IngestStats
from featurestore.online.stream.streams import send_events, stream_sources, stream_status

__all__ = [
    "DeadLetter",
    "IngestStats",
    "Ingester",
    "check_replayable",
    "count_dead_letters",
    "drop_dead_letters",
    "list_dead_letters",
    "replay_dead_letters",
    "send_events",
    "stream_sources",
    "stream_status",
]
