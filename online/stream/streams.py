"""The repo's stream sources, and what talks to their Redis server besides ingest: the producer
(``send_events``) and ``featurestore ingest --status``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import orjson

from featurestore.errors import FeatureStoreError
from featurestore.online.stream.events import as_text

if TYPE_CHECKING:
    from featurestore.feature_view import FeatureView
    from featurestore.sources import StreamSource
    from featurestore.store import FeatureStore

LOCK_SUFFIX = ":ingest-lock"  # the key beside a stream that says which ingest reads it


def stream_sources(store: FeatureStore) -> dict[str, tuple[StreamSource, list[FeatureView]]]:
    """Every StreamSource of the applied views, with the views that read it."""
    from featurestore.sources import StreamSource

    out: dict[str, tuple[StreamSource, list[FeatureView]]] = {}
    for view in store.registry.feature_views.values():
        src = view.source
        if isinstance(src, StreamSource):
            out.setdefault(src.name, (src, []))[1].append(view)
    return out


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
            dead = client.xlen(stream + store.config.stream.dead_letter_suffix)
            holder = client.get(stream + LOCK_SUFFIX)
            lines.append(
                f"{name}: stream '{stream}' {client.xlen(stream):,} entries; group '{group}' "
                + (f"lag {g.get('lag')}, pending {g.get('pending')}" if g else "not created yet")
                + f"; {dead:,} dead letters; ingest "
                + (f"running ({as_text(holder)})" if holder else "not running")
            )
    finally:
        client.close()
    return lines


def check_not_ingesting(store: FeatureStore, views: list[FeatureView]) -> None:
    """Refuse to materialize stream-fed views while ``featurestore ingest`` reads their stream:
    both write those views' online values, and a materialized window state does not carry the
    stream position, so an event could be counted twice. An unreachable stream server has no
    ingest running (it could not read), so it does not stop materialize."""

    from featurestore.sources import StreamSource

    fed = [v for v in views if isinstance(v.source, StreamSource)]
    if not fed:
        return
    client = redis_client(store, timeout=2.0, connect_timeout=0.5)
    try:
        for view in fed:
            src = view.source
            holder = client.get(src.stream + LOCK_SUFFIX)  # type: ignore[union-attr]
            if holder is not None:
                raise FeatureStoreError(
                    f"feature view '{view.name}' is fed by stream source '{src.name}', which "
                    f"featurestore ingest is reading ({as_text(holder)}); stop it before "
                    "materializing this view, then start it again"
                )
    except stream_errors():
        return
    finally:
        client.close()
