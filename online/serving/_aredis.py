"""Redis reads for event-loop callers: MGETs on one pipelined asyncio connection per loop.

The servers' requests all run on one event loop. Handing each read to a thread (redis-py is
synchronous) costs a thread hop and a GIL hand-off per request, which dominates a 1-entity
lookup. Here a read is a RESP command written to the loop's connection and a future resolved
by the reply, so many concurrent requests share one connection: commands issued in the same
loop iteration go out in one write, and replies come back in order (FIFO).

A read is bounded by its request's deadline (a timer on the loop); a read whose deadline has
passed before it is sent is not sent. A reply that comes after its request gave up is read and
dropped, so the connection stays in step and serves the next read. A connection whose
oldest unanswered command is older than the store's socket timeout is hung: it is dropped,
every command on it fails, and the next read connects again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
import time
import weakref
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import hiredis

from featurestore.errors import OnlineStoreError, OnlineStoreUnavailableError
from featurestore.online._redis_wire import pack_mget
from featurestore.online.serving._inline import DeadlineExceeded

MAX_PENDING = 10_000  # unanswered commands on one connection before it counts as hung


def _command(*parts: bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for p in parts:
        out.append(b"$%d\r\n%b\r\n" % (len(p), p))
    return b"".join(out)


class _Connection(asyncio.Protocol):
    """One Redis connection: commands out in loop-iteration batches, replies matched FIFO."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader()
        self.pending: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self.out: list[bytes] = []
        self.flush_scheduled = False
        self.lost: BaseException | None = None
        self.hung = False  # dropped by us for not answering (retrying on a new one won't help)

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        reader, pending = self.reader, self.pending
        reader.feed(data)
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self.abort(exc)
                return
            if reply is False:
                return
            if not pending:
                self.abort(ConnectionError("a reply came with no command waiting for it"))
                return
            fut, _ = pending.popleft()
            if fut.done():
                continue  # its request gave up (deadline or cancelled): drop the reply
            if isinstance(reply, hiredis.ReplyError):
                fut.set_exception(OnlineStoreError(f"redis replied: {reply}"))
            else:
                fut.set_result(reply)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = exc or ConnectionError("the connection was closed")
        while self.pending:
            fut, _ = self.pending.popleft()
            if not fut.done():
                fut.set_exception(ConnectionError(f"redis connection lost: {self.lost}"))

    # commands
    @property
    def usable(self) -> bool:
        return self.lost is None and self.transport is not None

    def send(self, command: bytes) -> asyncio.Future[Any]:
        fut = self.loop.create_future()
        idle = not self.pending and not self.out
        self.pending.append((fut, time.monotonic()))
        if idle and self.transport is not None and self.lost is None:
            self.transport.write(command)  # nothing else in flight: no batching to wait for
            return fut
        self.out.append(command)  # others in flight: this loop pass's commands go out together
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        self.flush_scheduled = False
        out, self.out = self.out, []
        if self.transport is not None and self.lost is None and out:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def stuck_for(self, now: float) -> float:
        """Seconds the oldest command still waiting for its reply has waited (0: none)."""
        return now - self.pending[0][1] if self.pending else 0.0

    def abort(self, exc: BaseException) -> None:
        if self.lost is None:
            self.lost = exc
        if self.transport is not None:
            self.transport.abort()  # connection_lost fails whatever is still pending
        else:
            self.connection_lost(exc)


class AsyncRedisReader:
    """MGET for event-loop callers against the single Redis at ``url``; one connection per loop.

    Raises OnlineStoreUnavailableError when the server cannot be reached or drops the
    connection, OnlineStoreError on an error reply, DeadlineExceeded past the deadline.
    """

    def __init__(self, url: str, *, connect_timeout: float, socket_timeout: float) -> None:
        self.url = url
        self.connect_timeout = connect_timeout
        self.socket_timeout = socket_timeout
        self._target, self._hello = _parse(url)
        self._tls: ssl.SSLContext | None = None  # a rediss:// URL's context, made at connect
        self._conns: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Connection] = (
            weakref.WeakKeyDictionary()
        )
        self._connecting: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task[Any]]
        self._connecting = weakref.WeakKeyDictionary()
        self._closed = False

    @staticmethod
    def supports(url: str) -> bool:
        """Whether ``url`` is one this reader speaks: TCP (``rediss://`` for TLS, with
        redis-py's ``ssl_*`` options) or a unix socket; others are read by redis-py."""
        try:
            _parse(url)
        except ValueError:
            return False
        return True

    async def mget(self, keys: Sequence[bytes], deadline: float) -> list[bytes | None]:
        """The values of ``keys`` (None where missing), answered by ``deadline`` (monotonic)."""
        loop = asyncio.get_running_loop()
        conn = self._usable(loop) or await self._connected(loop, deadline)
        if not keys:
            return []
        if time.monotonic() >= deadline:  # already too late: don't make Redis work for nothing
            raise DeadlineExceeded
        command = pack_mget(keys)
        try:
            return await self._wait(loop, conn, conn.send(command), deadline)
        except OnlineStoreUnavailableError:
            if conn.usable or conn.hung or self._closed or time.monotonic() >= deadline:
                raise
        # the connection died under this read (e.g. the server closed it just as the command
        # went out): a read is safe to repeat, so once more on a new connection
        conn = await self._connected(loop, deadline)
        return await self._wait(loop, conn, conn.send(command), deadline)

    async def ping(self, deadline: float) -> None:
        """One PING answered by ``deadline`` (connecting first if needed)."""
        loop = asyncio.get_running_loop()
        conn = self._usable(loop) or await self._connected(loop, deadline)
        await self._wait(loop, conn, conn.send(_command(b"PING")), deadline)

    def _usable(self, loop: asyncio.AbstractEventLoop) -> _Connection | None:
        """The loop's connection if it is up (no await on the hot path)."""
        conn = self._conns.get(loop)
        return conn if conn is not None and conn.usable else None

    async def _wait(
        self,
        loop: asyncio.AbstractEventLoop,
        conn: _Connection,
        fut: asyncio.Future[Any],
        deadline: float,
        *,
        name_store: bool = True,
    ) -> Any:
        # loop.time() is time.monotonic() on asyncio's and uvloop's loops: one clock
        timer = loop.call_at(deadline, self._expire, conn, fut)
        try:
            return await fut
        except ConnectionError as exc:
            raise self._unavailable(exc) from None
        except OnlineStoreError as exc:  # an error reply: name the store it came from
            if not name_store:
                raise
            raise self._replied(exc) from None
        finally:
            timer.cancel()

    def _expire(self, conn: _Connection, fut: asyncio.Future[Any]) -> None:
        if not fut.done():
            fut.set_exception(DeadlineExceeded())
        # a reply far past the socket timeout, or a pile of unanswered commands: hung
        if conn.stuck_for(time.monotonic()) > self.socket_timeout or (
            len(conn.pending) > MAX_PENDING
        ):
            conn.hung = True
            conn.abort(ConnectionError(f"no reply in {self.socket_timeout}s"))

    async def _connected(self, loop: asyncio.AbstractEventLoop, deadline: float) -> _Connection:
        """The loop's connection, connecting once for every waiting request."""
        if self._closed:
            raise self._unavailable(ConnectionError("the reader is closed"))
        task = self._connecting.get(loop)
        if task is None:
            task = loop.create_task(self._connect(loop))
            self._connecting[loop] = task
            task.add_done_callback(self._connect_done)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded
        try:  # the connect goes on for later requests even if this one gives up
            return await asyncio.wait_for(asyncio.shield(task), remaining)
        except asyncio.TimeoutError:
            raise DeadlineExceeded from None

    def _connect_done(self, task: asyncio.Task[Any]) -> None:
        self._connecting.pop(task.get_loop(), None)
        if not task.cancelled():
            task.exception()  # retrieved here: every waiter may have given up already

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> _Connection:
        target = self._target
        conn: _Connection | None = None
        try:
            if "path" in target:
                coro = loop.create_unix_connection(lambda: _Connection(loop), target["path"])
            else:
                tls = target.get("tls")
                if tls is not None and self._tls is None:
                    self._tls = _tls_context(tls)  # once: reading the CA files is slow
                coro = loop.create_connection(
                    lambda: _Connection(loop),
                    target["host"],
                    target["port"],
                    ssl=self._tls if tls is not None else None,
                )
            _, conn = await asyncio.wait_for(coro, self.connect_timeout)
            end = time.monotonic() + self.connect_timeout
            for command in self._hello:  # AUTH, SELECT: answered before any read
                try:
                    await self._wait(loop, conn, conn.send(command), end, name_store=False)
                except OnlineStoreUnavailableError:  # already says which store and why
                    raise
                except OnlineStoreError as exc:  # refused: a wrong password can't connect
                    if command.split(b"\r\n", 3)[2] == b"AUTH":  # as redis-py
                        raise self._unavailable(exc) from None
                    raise self._replied(exc) from None
        except BaseException as exc:
            if conn is not None:  # a failed handshake must not leave the socket open
                conn.abort(ConnectionError("the connection handshake failed"))
            if isinstance(exc, (OSError, asyncio.TimeoutError, DeadlineExceeded)):
                raise self._unavailable(exc) from None
            raise
        if self._closed:
            conn.abort(ConnectionError("the reader is closed"))
            raise self._unavailable(ConnectionError("the reader is closed"))
        self._conns[loop] = conn
        return conn

    def _replied(self, exc: OnlineStoreError) -> OnlineStoreError:
        from featurestore.online.redis_store import _redact

        return OnlineStoreError(f"read on the redis online store at {_redact(self.url)}: {exc}")

    def _unavailable(self, exc: BaseException) -> OnlineStoreUnavailableError:
        from featurestore.online.redis_store import _redact

        why = str(exc) or type(exc).__name__
        return OnlineStoreUnavailableError(
            f"read: the redis online store at {_redact(self.url)} did not answer "
            f"(connect timeout {self.connect_timeout}s, socket timeout {self.socket_timeout}s): "
            f"{why}. Check that the server runs and that online_store.url in featurestore.yaml "
            "points at it"
        )

    def close(self) -> None:
        """Drop every connection (pending reads fail); later reads raise unavailable."""
        self._closed = True
        for conn in list(self._conns.values()):
            with contextlib.suppress(Exception):
                conn.loop.call_soon_threadsafe(conn.abort, ConnectionError("the reader is closed"))
        self._conns.clear()


# rediss:// options read as redis-py reads them (anything else: the pool's redis-py client)
_TLS_OPTIONS = frozenset(
    {
        "ssl_ca_certs",
        "ssl_ca_path",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_password",
        "ssl_cert_reqs",
        "ssl_check_hostname",
    }
)
_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
_FALSE = frozenset({"0", "F", "FALSE", "N", "NO"})


def _parse(url: str) -> tuple[dict[str, Any], list[bytes]]:
    """(host/port or unix path, the commands a new connection sends first) of a redis URL;
    a ``rediss://`` URL's target also holds its TLS options (``"tls"``)."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"unsupported scheme {parts.scheme!r}")
    query = dict(parse_qsl(parts.query))
    known = {"db"} | (_TLS_OPTIONS if parts.scheme == "rediss" else set())
    if set(query) - known:
        raise ValueError(f"unsupported URL options {sorted(set(query) - known)}")
    if parts.scheme == "unix":
        target: dict[str, Any] = {"path": unquote(parts.path)}
        db = query.get("db", "0")
    else:
        target = {"host": parts.hostname or "localhost", "port": parts.port or 6379}
        path = parts.path.lstrip("/")
        db = path or query.get("db", "0")
    if parts.scheme == "rediss":
        tls = {k: v for k, v in query.items() if k in _TLS_OPTIONS}
        if tls.get("ssl_cert_reqs", "required") not in _CERT_REQS:
            raise ValueError(f"unsupported ssl_cert_reqs {tls['ssl_cert_reqs']!r}")
        target["tls"] = tls
    hello: list[bytes] = []
    if parts.password is not None:
        user, pw = unquote(parts.username or ""), unquote(parts.password)
        args = (user.encode(), pw.encode()) if user else (pw.encode(),)
        hello.append(_command(b"AUTH", *args))
    if int(db) != 0:
        hello.append(_command(b"SELECT", str(int(db)).encode()))
    return target, hello


def _tls_context(options: dict[str, str]) -> ssl.SSLContext:
    """The client TLS context redis-py builds for the same ``rediss://`` options: the system's
    CAs unless ``ssl_ca_certs``/``ssl_ca_path`` name others, certificate and host name checked
    unless ``ssl_cert_reqs=none`` / ``ssl_check_hostname=false``. A file it cannot read is a
    ConnectionError naming the option."""
    ctx = ssl.create_default_context()
    reqs = _CERT_REQS[options.get("ssl_cert_reqs", "required")]
    check = options.get("ssl_check_hostname", "true").upper() not in _FALSE
    ctx.check_hostname = check and reqs != ssl.CERT_NONE
    ctx.verify_mode = reqs
    option = ""
    try:
        if "ssl_certfile" in options or "ssl_keyfile" in options:
            option = "ssl_certfile" if "ssl_certfile" in options else "ssl_keyfile"
            ctx.load_cert_chain(
                options.get("ssl_certfile", options.get("ssl_keyfile", "")),
                options.get("ssl_keyfile"),
                options.get("ssl_password"),
            )
        if "ssl_ca_certs" in options or "ssl_ca_path" in options:
            option = "ssl_ca_certs" if "ssl_ca_certs" in options else "ssl_ca_path"
            ctx.load_verify_locations(options.get("ssl_ca_certs"), options.get("ssl_ca_path"))
    except (OSError, ssl.SSLError) as exc:
        why = getattr(exc, "strerror", None) or str(exc)
        raise ConnectionError(f"cannot use {option} {options[option]!r}: {why}") from None
    return ctx
