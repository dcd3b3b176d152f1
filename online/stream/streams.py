"""The repo's stream sources, and what talks to their Redis server besides ingest: the producer
(``send_events``) and ``featurestore ingest --status``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import orjson

from featurestore.errors import ConfigError, FeatureStoreError
from featurestore.online.stream.events import as_text
from featurestore.online.stream.locks import LOCK_SUFFIX, holder_text, is_materialize

if TYPE_CHECKING:
    from featurestore.feature_view import FeatureView
    from featurestore.sources import StreamSource
    from featurestore.store import FeatureStore

__all__ = ["LOCK_SUFFIX", "redis_client", "send_events", "stream_sources", "stream_status"]


def stream_sources(store: FeatureStore) -> dict[str, tuple[StreamSource, list[FeatureView]]]:
    """Every StreamSource of the applied views, with the views that read it."""
    from featurestore.sources import StreamSource

    out: dict[str, tuple[StreamSource, list[FeatureView]]] = {}
    for view in store.registry.feature_views.values():
        src = view.source
        if isinstance(src, StreamSource):
            out.setdefault(src.name, (src, []))[1].append(view)
    return out


def dead_letter_name(store: FeatureStore, stream: str) -> str:
    """The dead-letter stream beside ``stream``; a suffix that names no other stream (empty, or
    making another source's stream) is refused: its letters would be read again as events."""
    suffix = store.config.stream.dead_letter_suffix
    dead = stream + suffix
    if not suffix or dead in {src.stream for src, _ in stream_sources(store).values()}:
        raise ConfigError(
            f"stream.dead_letter_suffix {suffix!r} makes the dead-letter stream of '{stream}' "
            f"'{dead}', a stream ingest reads, so bad events would be read again forever; "
            "give another suffix (default ':dead')"
        )
    return dead


def redis_client(
    store: FeatureStore, *, timeout: float | None = None, connect_timeout: float = 2.0
) -> Any:
    """A client of the stream's Redis server (``stream.url``), or of the online store's Redis
    Cluster when ``stream.url`` is unset (or names it) and the online store is one."""
    import redis

    cfg, online = store.config.stream, store.config.online_store
    url = cfg.redis_url(online)
    if online.type == "redis_cluster" and url == online.url:
        return ClusterClient(url, socket_connect_timeout=connect_timeout, socket_timeout=timeout)
    return redis.Redis.from_url(url, socket_connect_timeout=connect_timeout, socket_timeout=timeout)


def stream_errors() -> tuple[type[BaseException], ...]:
    """What a failing stream server raises: Redis errors, and redis-py's cluster client's own
    RedisClusterException (no node reachable while it rebuilds its slot map), not a RedisError."""
    import redis

    return (redis.RedisError, redis.exceptions.RedisClusterException)


class ClusterClient:
    """A redis-py RedisCluster made on first use, as a plain client connects on its first
    command; a cluster it cannot reach is a redis.ConnectionError, as a plain server's is.

    Every stream command here names one key, so each goes to the node of that key's slot; a
    read of several streams is one XREADGROUP per stream (see ``Ingester._round``).
    """

    def __init__(self, url: str, **options: Any) -> None:
        import threading

        self._url, self._options = url, options
        self._client: Any = None
        self._lock = threading.Lock()  # threads sharing it make one cluster client, not two

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # not set yet (a copy, say): never a cluster command
            raise AttributeError(name)
        if self._client is None:
            import redis
            from redis.cluster import RedisCluster

            with self._lock:
                if self._client is None:
                    try:
                        self._client = RedisCluster.from_url(self._url, **self._options)
                    except redis.exceptions.RedisClusterException as exc:
                        raise redis.ConnectionError(str(exc).splitlines()[0]) from exc
        return getattr(self._client, name)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


@contextmanager
def using_client(store: FeatureStore, client: Any, *, timeout: float) -> Iterator[Any]:
    """The caller's client of the stream server as is (kept open: a caller calling often
    reuses its connection), or a new one, closed after."""
    if client is not None:
        yield client
        return
    own = redis_client(store, timeout=timeout)
    try:
        yield own
    finally:
        own.close()


def group_info(client: Any, stream: str, group: str) -> dict[str, Any] | None:
    """XINFO GROUPS' entry for ``group`` of ``stream`` (lag, pending...), None if it has none."""
    import redis

    try:
        groups = client.xinfo_groups(stream)
    except redis.ResponseError:  # no such stream yet
        return None
    return next((g for g in groups if as_text(g.get("name")) == group), None)


def send_events(store: FeatureStore, source: str, rows: Any, client: Any = None) -> list[str]:
    """XADD each event (a dict) as one JSON ``data`` field, in one round trip; the entry ids.

    ``client``: a redis-py client of the stream server to use (kept by the caller, so a
    producer sending often reuses its connection); None opens and closes one.
    """
    srcs = stream_sources(store)
    if source not in srcs:
        raise FeatureStoreError(
            f"no feature view reads a stream source named '{source}'; known: {sorted(srcs)}"
        )
    if isinstance(rows, dict):
        names = list(rows)
        rows = [dict(zip(names, vals, strict=True)) for vals in zip(*rows.values(), strict=True)]
    stream = srcs[source][0].stream
    with using_client(store, client, timeout=10.0) as c:
        pipe = c.pipeline(transaction=False)
        for row in rows:
            pipe.xadd(stream, {"data": orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY)})
        return [i.decode() for i in pipe.execute()]


def stream_status(store: FeatureStore, sources: list[str] | None = None) -> list[str]:
    """One line per source: stream length, the group's lag and pending entries, dead letters,
    and who holds the ingest lock."""

    found = stream_sources(store)
    group = store.config.stream.group
    client = redis_client(store, timeout=5.0)
    lines = []
    try:
        for name in sources or sorted(found):
            if name not in found:
                raise FeatureStoreError(f"unknown stream source '{name}'; known: {sorted(found)}")
            stream = found[name][0].stream
            g = group_info(client, stream, group)
            dead = client.xlen(dead_letter_name(store, stream))
            holder = client.get(stream + LOCK_SUFFIX)
            lines.append(
                f"{name}: stream '{stream}' {client.xlen(stream):,} entries; group '{group}' "
                + (f"lag {g.get('lag')}, pending {g.get('pending')}" if g else "not created yet")
                + f"; {dead:,} dead letters; "
                + _lock_state(holder)
            )
    finally:
        client.close()
    return lines


def _lock_state(holder: Any) -> str:
    """What the lock beside a stream says, for ``--status``."""
    if holder is None:
        return "ingest not running"
    if is_materialize(holder):
        return f"ingest not running; {holder_text(holder)} running"
    return f"ingest running ({as_text(holder)})"
