"""Redis and Redis Cluster online stores: one MGET per read, pipelined SETs per write.

Values carry their expiry as a Redis key expiry (``SET ... PXAT``), so Redis reclaims the
memory of rows past their ttl (+ grace); the lookup layer still judges ttl from event_ts.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from featurestore.online.base import OnlineStore

from featurestore.errors import OnlineStoreError, OnlineStoreUnavailableError

if TYPE_CHECKING:
    from featurestore.config import OnlineStoreConfig

T = TypeVar("T")
_GLOB = re.compile(r"([\\*?\[\]])")
_SCAN_COUNT = 1000
_DELETE_CHUNK = 500
_WRITE_CHUNK = 2000  # rows per send: bounds the client's buffer, not the server


_SET = b"*3\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n"
_SET_PXAT = b"*5\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$4\r\nPXAT\r\n$%d\r\n%d\r\n"


def _pack_sets(keys: list[bytes], values: list[bytes], expires: list[int | None] | None) -> bytes:
    """RESP for ``SET key value [PXAT ms]`` per row, in one ``%`` over a repeated template.

    redis-py's pipeline packs each command in Python (~10 us a row); interleaving the columns
    with slice assignments and one C-level format sends the same bytes for a fraction of that.
    """
    m = len(keys)
    if expires is None or all(e is None for e in expires):
        args: list[Any] = [None] * (4 * m)
        args[0::4] = map(len, keys)
        args[1::4] = keys
        args[2::4] = map(len, values)
        args[3::4] = values
        return (_SET * m) % tuple(args)
    if all(e is not None and 10**12 <= e < 10**13 for e in expires):  # ms in 2001..2286
        args = [13] * (6 * m)
        args[0::6] = map(len, keys)
        args[1::6] = keys
        args[2::6] = map(len, values)
        args[3::6] = values
        args[5::6] = expires
        return (_SET_PXAT * m) % tuple(args)
    parts = []
    for k, v, e in zip(keys, values, expires, strict=True):
        if e is None:
            parts.append(_SET % (len(k), k, len(v), v))
        else:
            parts.append(_SET_PXAT % (len(k), k, len(v), v, len(b"%d" % e), e))
    return b"".join(parts)


def _read_replies(conn: Any, count: int) -> Exception | None:
    """Read ``count`` replies; returns the first error reply (all are read either way).

    Uses the connection's hiredis reader directly when it has one (one C call per reply instead
    of redis-py's Python layers); otherwise falls back to ``read_response``.
    """
    import sys

    import redis

    parser = getattr(conn, "_parser", None)
    reader = getattr(parser, "_reader", None)
    # the reader's "incomplete" marker, set by redis-py's hiredis parser
    more = getattr(sys.modules.get(type(parser).__module__), "NOT_ENOUGH_DATA", None)
    error: Exception | None = None
    if reader is None or more is None or not hasattr(parser, "read_from_socket"):
        for _ in range(count):
            try:
                conn.read_response()
            except redis.ResponseError as exc:
                error = error or exc
        return error
    got = 0
    gets = reader.gets
    while got < count:
        reply = gets()
        if reply is more:
            parser.read_from_socket()
            continue
        got += 1
        if isinstance(reply, Exception) and error is None:
            error = reply
    return error


def _group_by_node(client: Any, keys: list[bytes]) -> dict[Any, list[int]]:
    """Row indexes per primary node, from the client's slot map."""
    groups: dict[Any, list[int]] = {}
    slot_node: dict[int, Any] = {}
    nodes = client.nodes_manager
    keyslot = client.keyslot
    for i, key in enumerate(keys):
        slot = keyslot(key)
        node = slot_node.get(slot)
        if node is None:
            node = slot_node[slot] = nodes.get_node_from_slot(slot)
        groups.setdefault(node, []).append(i)
    return groups


def _redact(url: str) -> str:
    """The URL without a password, for messages."""
    return re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:***@", url)


def _view_pattern(project: str, view_name: str) -> str:
    """A SCAN MATCH pattern for every key of one view (glob characters escaped)."""
    p, v = _GLOB.sub(r"\\\1", project), _GLOB.sub(r"\\\1", view_name)
    return f"{p}:{{{p}|*}}:{v}"


def _expiring(
    keys: list[bytes], values: list[bytes], expire_at_ms: list[int | None] | None
) -> tuple[list[bytes], list[bytes], list[int | None] | None]:
    """The columns to write, leaving out keys whose expiry is already past."""
    if len(keys) != len(values) or (expire_at_ms is not None and len(expire_at_ms) != len(keys)):
        raise OnlineStoreError(
            f"write_batch got {len(keys)} keys, {len(values)} values and "
            f"{'no' if expire_at_ms is None else len(expire_at_ms)} expiries; give one per key"
        )
    if expire_at_ms is None:
        return keys, values, None
    now_ms = int(time.time() * 1000)
    if all(e is None or e > now_ms for e in expire_at_ms):
        return keys, values, expire_at_ms
    keep = [i for i, e in enumerate(expire_at_ms) if e is None or e > now_ms]
    return [keys[i] for i in keep], [values[i] for i in keep], [expire_at_ms[i] for i in keep]


def _write_pooled(
    pool: Any, keys: list[bytes], values: list[bytes], expires: list[int | None] | None
) -> None:
    """Pipelined SETs on one pooled connection; raises the first error reply."""
    conn = pool.get_connection()
    try:
        # send every chunk before reading: the server works on one chunk while the next is
        # packed; its replies (5 bytes each) wait in its output buffer
        for start in range(0, len(keys), _WRITE_CHUNK):
            stop = start + _WRITE_CHUNK
            packed = _pack_sets(
                keys[start:stop],
                values[start:stop],
                None if expires is None else expires[start:stop],
            )
            conn.send_packed_command([packed], check_health=start == 0)
        error = _read_replies(conn, len(keys))
        if error is not None:
            raise error
    except BaseException:
        conn.disconnect()  # replies may be left unread: never reuse this connection
        raise
    finally:
        pool.release(conn)


class _RedisBase(OnlineStore):
    """Shared error mapping: redis errors become OnlineStore(Unavailable)Error naming the URL."""

    kind = "redis"

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float = 1.0,
        socket_timeout: float = 1.0,
        max_connections: int = 64,
    ) -> None:
        self.url = url
        self.connect_timeout = connect_timeout
        self.socket_timeout = socket_timeout
        self.max_connections = max_connections
        self._client_obj: Any = None

    @classmethod
    def from_config(cls: type[T], cfg: OnlineStoreConfig) -> T:
        return cls(  # type: ignore[call-arg]
            cfg.url,
            connect_timeout=cfg.connect_timeout,
            socket_timeout=cfg.socket_timeout,
            max_connections=cfg.max_connections,
        )

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        import redis

        try:
            return fn()
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            raise self._unavailable(what, exc) from exc
        except redis.exceptions.RedisClusterException as exc:
            raise self._unavailable(what, exc) from exc
        except redis.RedisError as exc:
            raise OnlineStoreError(
                f"{what} on the {self.kind} online store at {_redact(self.url)} failed: {exc}"
            ) from exc

    def _unavailable(self, what: str, exc: BaseException) -> OnlineStoreUnavailableError:
        return OnlineStoreUnavailableError(
            f"{what}: the {self.kind} online store at {_redact(self.url)} did not answer "
            f"(connect timeout {self.connect_timeout}s, socket timeout {self.socket_timeout}s): "
            f"{exc}. Check that the server runs and that online_store.url in featurestore.yaml "
            "points at it"
        )

    def ping(self) -> None:
        self._call("ping", lambda: self._client().ping())

    def _client(self) -> Any:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({_redact(self.url)!r})"


class RedisOnlineStore(_RedisBase):
    """A single Redis server (or a proxy in front of several), through a connection pool."""

    kind = "redis"

    def _client(self) -> Any:
        if self._client_obj is None:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            try:
                pool = redis.ConnectionPool.from_url(
                    self.url,
                    socket_connect_timeout=self.connect_timeout,
                    socket_timeout=self.socket_timeout,
                    max_connections=self.max_connections,
                    retry=Retry(NoBackoff(), 0),  # fail within the timeouts, no silent retries
                )
            except ValueError as exc:
                raise OnlineStoreError(
                    f"online_store.url {_redact(self.url)!r} is not a redis URL ({exc}); use "
                    "e.g. redis://localhost:6379/0"
                ) from exc
            self._client_obj = redis.Redis(connection_pool=pool)
        return self._client_obj

    def write_batch(
        self,
        keys: list[bytes],
        values: list[bytes],
        expire_at_ms: list[int | None] | None = None,
    ) -> None:
        """Pipelined SETs (no MULTI); each SET replaces one key atomically."""
        keys, values, expires = _expiring(keys, values, expire_at_ms)
        if not keys:
            return

        self._call(
            "write", lambda: _write_pooled(self._client().connection_pool, keys, values, expires)
        )

    def read(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """One MGET for all keys."""
        if not keys:
            return []
        return self._call("read", lambda: self._client().mget(keys))

    def delete_view(self, project: str, view_name: str) -> int:
        pattern = _view_pattern(project, view_name)

        def run() -> int:
            client = self._client()
            deleted = 0
            batch: list[bytes] = []
            for key in client.scan_iter(match=pattern, count=_SCAN_COUNT):
                batch.append(key)
                if len(batch) >= _DELETE_CHUNK:
                    deleted += client.unlink(*batch)
                    batch = []
            if batch:
                deleted += client.unlink(*batch)
            return deleted

        return self._call("delete", run)

    def close(self) -> None:
        if self._client_obj is not None:
            self._client_obj.connection_pool.disconnect()
            self._client_obj = None


class RedisClusterOnlineStore(_RedisBase):
    """Redis Cluster from the URL of any node; reads are one round trip per node."""

    kind = "redis_cluster"

    def _client(self) -> Any:
        if self._client_obj is None:
            from redis.backoff import NoBackoff
            from redis.cluster import RedisCluster
            from redis.retry import Retry

            def connect() -> Any:
                return RedisCluster.from_url(
                    self.url,
                    socket_connect_timeout=self.connect_timeout,
                    socket_timeout=self.socket_timeout,
                    max_connections=self.max_connections,
                    retry=Retry(NoBackoff(), 1),
                )

            self._client_obj = self._call("connect", connect)
        return self._client_obj

    def write_batch(
        self,
        keys: list[bytes],
        values: list[bytes],
        expire_at_ms: list[int | None] | None = None,
    ) -> None:
        """Pipelined SETs grouped by node (from the slot map), one round trip per node.

        If the slot map is stale (MOVED/ASK), the slot map is refreshed and the batch is written
        again through redis-py's cluster pipeline, which follows redirects. SETs are idempotent,
        so writing a key twice is harmless.
        """
        keys, values, expires = _expiring(keys, values, expire_at_ms)
        if not keys:
            return

        def run() -> None:
            import redis

            client = self._client()
            try:
                for node, idx in _group_by_node(client, keys).items():
                    _write_pooled(
                        client.get_redis_connection(node).connection_pool,
                        [keys[i] for i in idx],
                        [values[i] for i in idx],
                        None if expires is None else [expires[i] for i in idx],
                    )
            except (
                redis.exceptions.MovedError,
                redis.exceptions.AskError,
                redis.exceptions.TryAgainError,
                redis.exceptions.ClusterDownError,
            ):
                # slots moved: refresh the map and let the cluster pipeline follow redirects
                client.nodes_manager.initialize()
                self._write_pipeline(keys, values, expires)

        self._call("write", run)

    def _write_pipeline(
        self, keys: list[bytes], values: list[bytes], expires: list[int | None] | None
    ) -> None:
        """The slow, redirect-following path: redis-py's cluster pipeline."""
        pipe = self._client().pipeline()
        for k, v, e in zip(keys, values, expires or [None] * len(keys), strict=True):
            if e is None:
                pipe.set(k, v)
            else:
                pipe.set(k, v, pxat=e)
        pipe.execute()

    def read(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """MGET per slot, sent as one pipeline per node."""
        if not keys:
            return []
        return self._call("read", lambda: self._client().mget_nonatomic(list(keys)))

    def delete_view(self, project: str, view_name: str) -> int:
        pattern = _view_pattern(project, view_name)

        def run() -> int:
            client = self._client()
            keys = list(client.scan_iter(match=pattern, count=_SCAN_COUNT))
            deleted = 0
            for start in range(0, len(keys), _DELETE_CHUNK):
                pipe = client.pipeline()
                for k in keys[start : start + _DELETE_CHUNK]:
                    pipe.unlink(k)
                deleted += sum(pipe.execute())
            return deleted

        return self._call("delete", run)

    def ping(self) -> None:
        from redis.cluster import RedisCluster

        self._call("ping", lambda: self._client().ping(target_nodes=RedisCluster.ALL_NODES))

    def close(self) -> None:
        if self._client_obj is not None:
            self._client_obj.close()
            self._client_obj = None
