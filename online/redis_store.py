"""Redis and Redis Cluster online stores: one MGET per read, pipelined SETs per write.

Values carry their expiry as a Redis key expiry (``SET ... PXAT``), so Redis reclaims the
memory of rows past their ttl (+ grace); the lookup layer still judges ttl from event_ts.
``write_newer`` (pushes, stream ingest) checks and sets in one server-side script per key
group, so two writers of one key cannot interleave a read and a write.
"""

from __future__ import annotations

import itertools
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from featurestore.errors import OnlineStoreError, OnlineStoreUnavailableError
from featurestore.online import _redis_wire as wire
from featurestore.online.base import OnlineStore

if TYPE_CHECKING:
    from featurestore.config import OnlineStoreConfig

T = TypeVar("T")
log = logging.getLogger("featurestore.online")
_GLOB = re.compile(r"([\\*?\[\]])")
_SCAN_COUNT = 1000
_DELETE_CHUNK = 500


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
        self._cas: Any = None  # wire.CAS_LUA registered with the client (a redis-py Script)

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
            f"{str(exc).rstrip('.')}. Check that the server runs and that online_store.url in "
            "featurestore.yaml points at it"
        )

    def ping(self) -> None:
        self._call("ping", lambda: self._client().ping())

    def _client(self) -> Any:
        raise NotImplementedError

    def _script(self) -> Any:
        """``wire.CAS_LUA`` as a redis-py Script: its sha for EVALSHA, and a call that loads
        the script again when the server answers NOSCRIPT (restart, failover, SCRIPT FLUSH)."""
        if self._cas is None:
            self._cas = self._client().register_script(wire.CAS_LUA)
        return self._cas

    def write_newer(
        self,
        keys: list[bytes],
        values: list[bytes],
        expire_at_ms: list[int | None] | None = None,
    ) -> int:
        """Write each row unless its key holds a newer one, checked and set inside Redis
        (``wire.CAS_LUA``); returns how many were written."""
        keys, values, expires = _expiring(keys, values, expire_at_ms)
        if not keys:
            return 0
        return self._call("write", lambda: self._write_newer(keys, values, expires))

    def _write_newer(
        self, keys: list[bytes], values: list[bytes], expires: list[int | None] | None
    ) -> int:
        raise NotImplementedError

    def _cas_again(
        self,
        client: Any,
        keys: list[bytes],
        values: list[bytes],
        expires: list[int | None] | None,
    ) -> int:
        """One script call through redis-py (loads the script on NOSCRIPT, follows cluster
        redirects): for the groups whose fast call did not run."""
        return int(self._script()(keys=keys, args=wire.cas_args(values, expires), client=client))

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
            "write",
            lambda: wire.write_pooled(self._client().connection_pool, keys, values, expires),
        )

    def _write_newer(
        self, keys: list[bytes], values: list[bytes], expires: list[int | None] | None
    ) -> int:
        """One script call per ``wire.CAS_CHUNK`` rows, all sent on one connection before any
        reply is read."""
        client = self._client()
        sha = self._script().sha.encode()
        step = wire.CAS_CHUNK
        written = 0
        got = wire.cas_pooled(client.connection_pool, sha, keys, values, expires)
        for lo, reply in zip(range(0, len(keys), step), got, strict=True):
            if isinstance(reply, Exception):
                if type(reply).__name__ != "NoScriptError":
                    raise reply
                hi = lo + step
                part = None if expires is None else expires[lo:hi]
                reply = self._cas_again(client, keys[lo:hi], values[lo:hi], part)
            written += int(reply)
        return written

    def read(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """One MGET for all keys."""
        if not keys:
            return []
        return self._call("read", lambda: wire.read_pooled(self._client().connection_pool, keys))

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
        self._cas = None


class RedisClusterOnlineStore(_RedisBase):
    """Redis Cluster from the URL of any node; reads are one round trip per node.

    Reads and writes route by the client's slot map. A node that stops answering (killed, its
    host gone) sends no MOVED: after a failure to reach a node the map is read again from the
    cluster (at most every ``REFRESH_S``), so once a replica took over, the next calls go to it.
    """

    kind = "redis_cluster"
    REFRESH_S = 0.5  # the least time between two slot-map refreshes after failed calls

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._refreshed = 0.0  # time.monotonic() of the last refresh after a failure
        self._refresh_lock = threading.Lock()

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return super()._call(what, fn)
        except OnlineStoreUnavailableError:
            self._refresh_slots()
            raise

    def _refresh_slots(self) -> None:
        """Read the slot map again (a failover may have moved a dead node's slots to its
        replica); quietly nothing while another thread does it or one was done just now."""
        client = self._client_obj
        now = time.monotonic()
        if client is None or now - self._refreshed < self.REFRESH_S:
            return
        if not self._refresh_lock.acquire(blocking=False):
            return
        try:
            self._refreshed = now
            client.nodes_manager.initialize()
        except Exception as exc:  # the cluster as a whole does not answer: the next failure retries
            log.debug("redis cluster slot map refresh failed: %s", exc)
        finally:
            self._refresh_lock.release()

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
            client = self._client()
            sent = []
            error: Exception | None = None
            try:
                for node, idx in wire.group_by_node(client, keys).items():
                    pool = client.get_redis_connection(node).connection_pool
                    conn = pool.get_connection()
                    sent.append((pool, conn, len(idx)))
                    wire.send_sets(
                        conn,
                        [keys[i] for i in idx],
                        [values[i] for i in idx],
                        None if expires is None else [expires[i] for i in idx],
                    )
                for _, conn, count in sent:  # every node works while we read the first
                    error = wire.read_replies(conn, count) or error
            except BaseException:
                for _, conn, _ in sent:
                    conn.disconnect()
                raise
            finally:
                for pool, conn, _ in sent:
                    pool.release(conn)
            if error is None:
                return
            if type(error).__name__ not in wire.REDIRECT_ERRORS:
                raise error
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

    def _write_newer(
        self, keys: list[bytes], values: list[bytes], expires: list[int | None] | None
    ) -> int:
        """One script call per slot (a script's keys must share one; up to ``wire.CAS_CHUNK``
        keys each), all of a node's sent at once: one round trip per node, overlapped. Calls
        that met NOSCRIPT or a stale slot map (MOVED/ASK) did not run: they run again through
        redis-py, which loads the script and follows redirects."""
        client = self._client()
        sha = self._script().sha.encode()

        def pack(groups: list[list[int]]) -> bytes:
            # the groups of each size in one pass (_per_node sorts them by size; in a batch
            # spread over many slots most hold one key)
            parts = []
            for size, run in itertools.groupby(groups, key=len):
                idx = [i for g in run for i in g]
                parts.append(
                    wire.pack_cas_groups(
                        sha,
                        size,
                        [keys[i] for i in idx],
                        [values[i] for i in idx],
                        None if expires is None else [expires[i] for i in idx],
                    )
                )
            return b"".join(parts)

        again: list[list[int]] = []
        redirected = False
        written = 0
        for idx, reply in self._per_node(client, keys, pack, split=wire.CAS_CHUNK):
            if not isinstance(reply, Exception):
                written += int(reply)
                continue
            name = type(reply).__name__
            if name != "NoScriptError" and name not in wire.REDIRECT_ERRORS:
                raise reply
            redirected = redirected or name in wire.REDIRECT_ERRORS
            again.append(idx)
        if redirected:
            client.nodes_manager.initialize()
        for idx in again:
            written += self._cas_again(
                client,
                [keys[i] for i in idx],
                [values[i] for i in idx],
                None if expires is None else [expires[i] for i in idx],
            )
        return written

    @staticmethod
    def _per_node(
        client: Any,
        keys: Sequence[bytes],
        pack: Callable[[list[list[int]]], bytes],
        split: int | None = None,
    ) -> list[tuple[list[int], Any]]:
        """Each node's slot groups of ``keys`` (``split``: at most that many keys a group),
        smallest first (so groups of one key lead), sent as one ``pack``ed write per node, then
        every group's reply (a value, or the error it met): one round trip per node,
        overlapped. A connection that may hold unread replies is dropped, never reused."""
        plan = []
        out: list[tuple[list[int], Any]] = []
        try:
            for node, slots in wire.group_by_slot(client, keys).items():
                groups = sorted(slots.values(), key=len)
                if split and groups and len(groups[-1]) > split:
                    groups = [g[lo : lo + split] for g in groups for lo in range(0, len(g), split)]
                pool = client.get_redis_connection(node).connection_pool
                conn = pool.get_connection()
                plan.append((pool, conn, groups))
                conn.send_packed_command([pack(groups)])
            for _, conn, groups in plan:
                out += zip(groups, wire.replies(conn, len(groups)), strict=True)
        except BaseException:
            for _, conn, _ in plan:
                conn.disconnect()
            raise
        finally:
            for pool, conn, _ in plan:
                pool.release(conn)
        return out

    def read(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """One MGET per slot, all of a node's sent at once: one round trip per node, overlapped.

        Keys of one entity share a hash tag, so a multi-view read of one entity is one MGET.
        On a stale slot map (MOVED/ASK) the map is refreshed and redis-py's mget_nonatomic,
        which follows redirects, reads again.
        """
        if not keys:
            return []
        return self._call("read", lambda: self._read(keys))

    def _read(self, keys: Sequence[bytes]) -> list[bytes | None]:
        client = self._client()
        out: list[bytes | None] = [None] * len(keys)
        redirected = False
        for idx, reply in self._per_node(client, keys, lambda g: wire.pack_mgets(keys, g)):
            if isinstance(reply, Exception):
                if type(reply).__name__ not in wire.REDIRECT_ERRORS:
                    raise reply
                redirected = True
                continue
            for i, v in zip(idx, reply, strict=True):
                out[i] = v
        if redirected:
            client.nodes_manager.initialize()
            return client.mget_nonatomic(list(keys))
        return out

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

    def node_tags(self) -> list[str]:
        """One hash tag per primary node serving slots, each hashing to a slot of that node
        (see ``keys.node_tags``), from the client's slot map: a key per tag is one per node."""
        from featurestore.online.keys import node_tags

        def run() -> list[str]:
            table = self._client().nodes_manager.slots_cache
            return list(node_tags({s: n[0].name for s, n in table.items() if n}).values())

        return self._call("read", run)

    def delete_keys(self, keys: Sequence[bytes]) -> int:
        """Delete ``keys`` (any slots; redis-py's pipeline follows redirects); returns how many
        existed."""

        def run() -> int:
            pipe = self._client().pipeline()
            for k in keys:
                pipe.unlink(k)
            return sum(pipe.execute())

        return self._call("delete", run) if keys else 0

    def ping(self) -> None:
        from redis.cluster import RedisCluster

        self._call("ping", lambda: self._client().ping(target_nodes=RedisCluster.ALL_NODES))

    def close(self) -> None:
        if self._client_obj is not None:
            self._client_obj.close()
            self._client_obj = None
        self._cas = None
