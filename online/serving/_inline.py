"""Deadline-bound Redis reads on the caller's own thread (synchronous engine calls).

A thread-pool hop costs ~100+ us on a busy box, more than the lookup itself. A synchronous
caller instead reads on its own per-thread connection whose reply is awaited with the socket
timeout set to the request's remaining deadline, so a hung Redis still costs at most the
deadline. Connecting (TCP + handshake, bounded only by the store's own timeouts) never happens
on the caller's thread: a thread without a ready connection has it connected on the read pool
in the background and reads through the pool meanwhile.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any

from featurestore.online._redis_wire import pack_mget


class NotReady(Exception):
    """Internal: this thread has no connected connection yet; read through the pool."""


class DeadlineExceeded(Exception):
    """Internal: no reply within the deadline (the connection was dropped)."""


class _Slot:
    __slots__ = ("__weakref__", "conn", "connecting", "ready")

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.ready = False  # set only after connect() returned: the handshake is done
        self.connecting = False


class InlineRedisReader:
    """Per-thread connections to the store's Redis, each used only by its own thread.

    A thread's connection lives as long as the thread (weakly tracked here, for ``close``).
    """

    def __init__(self, store: Callable[[], Any], pool: Executor) -> None:
        self._store = store  # the RedisOnlineStore, looked up when first needed
        self._pool = pool
        self._local = threading.local()
        self._slots: weakref.WeakSet[_Slot] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._closed = False

    def _slot(self) -> _Slot:
        slot = getattr(self._local, "slot", None)
        if slot is None:
            cp = self._store()._client().connection_pool
            slot = _Slot(cp.connection_class(**cp.connection_kwargs))
            with self._lock:
                self._slots.add(slot)
            self._local.slot = slot
        return slot

    def _connect(self, slot: _Slot) -> None:
        try:
            slot.conn.connect()
            slot.ready = not self._closed
        except Exception:  # the next request tries again; its own read goes through the pool
            slot.ready = False
        finally:
            slot.connecting = False

    def read(self, keys: Sequence[bytes], deadline: float) -> list[bytes | None]:
        """One MGET answered by ``deadline`` (time.monotonic()), or DeadlineExceeded."""
        slot = self._slot()
        if not slot.ready:
            if not slot.connecting and not self._closed:
                slot.connecting = True
                self._pool.submit(self._connect, slot)
            raise NotReady
        if not keys:
            return []
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded
        conn = slot.conn
        import redis

        def mget() -> list[bytes | None]:
            try:
                conn.send_packed_command([pack_mget(keys)])
                return conn.read_response(timeout=remaining)  # a timeout drops the connection
            except redis.TimeoutError:
                slot.ready = False
                raise DeadlineExceeded from None
            except BaseException:
                slot.ready = False
                conn.disconnect()
                raise

        return self._store()._call("read", mget)  # redis errors -> OnlineStore(Unavailable)Error

    def close(self) -> None:
        self._closed = True
        with self._lock:
            slots = list(self._slots)
        for slot in slots:
            slot.ready = False
            try:
                slot.conn.disconnect()
            except Exception:
                pass


class DeadlineStore:
    """The store as ``get_online_features`` sees it: ``read`` goes through the inline reader."""

    __slots__ = ("_deadline", "_reader")

    def __init__(self, reader: InlineRedisReader, deadline: float) -> None:
        self._reader = reader
        self._deadline = deadline

    def read(self, keys: Sequence[bytes]) -> list[bytes | None]:
        return self._reader.read(keys, self._deadline)
