"""How the engine reads the online store under a request's deadline (a mixin of Engine).

Four ways, picked per store and caller (see ``serving.isolate_reads``): event-loop callers on a
single Redis await the pipelined asyncio connection (``_aredis``); synchronous callers on a single
Redis read on their own thread's connection with the remaining deadline as the socket timeout
(``_inline``); other network stores read on the thread pool, awaited with a timeout; the
embedded store reads inline. Every way reports to the circuit breaker and turns a late or failed
read into ``_StoreFailed`` (the engine then answers with defaults, degraded).

What the breaker hears: an answer is a success; a store error is a failure; a missed deadline
is a failure only when the request allowed at least the server's own ``serving.deadline_ms``
(a ``Deadline`` that is ``judged``). A client that asks for less and misses it is answered
degraded, but its miss says nothing about the store: it counts neither way (a half-open probe
slot it held is freed), so one client's tight deadlines never open the breaker for the others.
A read whose deadline has passed before it would be sent is not sent (a missed deadline).
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NoReturn

from featurestore._time import now_us
from featurestore.errors import FeatureStoreError, OnlineStoreError
from featurestore.online.serving._inline import DeadlineExceeded, DeadlineStore, NotReady

if TYPE_CHECKING:
    from featurestore.online.lookup import Lookup
    from featurestore.online.serving._aredis import AsyncRedisReader
    from featurestore.online.serving._inline import InlineRedisReader
    from featurestore.online.serving.breaker import CircuitBreaker
    from featurestore.online.serving.results import Prepared
    from featurestore.store import FeatureStore

log = logging.getLogger("featurestore.serving")


class Deadline(float):
    """A request's deadline on time.monotonic(). ``judged``: the request allowed at least
    ``serving.deadline_ms``, so missing it is the store's fault and counts against the breaker.
    """

    __slots__ = ("judged",)

    def __new__(cls, at: float, judged: bool) -> Deadline:
        out = super().__new__(cls, at)
        out.judged = judged
        return out


class _StoreFailed(Exception):
    """Internal: the read did not produce an answer in time (or the store raised)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


class StoreReads:
    """Store reads with a deadline, the breaker and error classification (Engine's part)."""

    store: FeatureStore
    breaker: CircuitBreaker
    _pool: cf.ThreadPoolExecutor
    _isolate: bool
    _inline: InlineRedisReader | None
    _aredis: AsyncRedisReader | None

    def _plan(self, p: Prepared) -> Lookup:
        """The keys ``p`` needs (bad entity values raise here, before the store is asked)."""
        from featurestore.online.lookup import plan_lookup

        return plan_lookup(
            self.store.project,
            p.requests,
            p.entities,
            now_us=now_us(),
            full_feature_names=p.full,
            include_event_timestamps=p.include_ts,
            request_data=p.request_data,
        )

    @contextlib.contextmanager
    def _judged(
        self,
        timeouts: tuple[type[BaseException], ...],
        deadline: float,
        fut: cf.Future[Any] | None = None,
    ) -> Iterator[None]:
        """Tell the breaker how the read inside went: a success, a timeout (``fut``, the read
        on the pool, is cancelled; see ``_timed_out``), or a failure that ``_classify`` sorts
        into the request's fault (re-raised) or the store's (``_StoreFailed``)."""
        try:
            yield
        except (NotReady, _StoreFailed):
            raise
        except timeouts:
            if fut is not None:
                fut.cancel()
            raise self._timed_out(deadline) from None
        except Exception as exc:
            self._failed(exc)
        self.breaker.success()

    def _timed_out(self, deadline: float) -> _StoreFailed:
        """A missed ``deadline``: a breaker failure only if it was ``judged`` (at least the
        configured budget; a plain float counts too); a shorter one counts neither way."""
        if getattr(deadline, "judged", True):
            self.breaker.failure()
        else:
            self.breaker.release()  # no verdict on the store: free a half-open probe slot
        return _StoreFailed("timeout")

    def _failed(self, exc: Exception) -> NoReturn:
        """Raise what a failed read becomes (see ``_classify``); call inside its except."""
        err = self._classify(exc)
        if err is exc:
            raise exc
        raise err from exc

    def _read_sync(self, p: Prepared) -> Any:
        lk = self._plan(p)
        if not lk.keys:  # only on-demand features: nothing to read, nothing to tell the breaker
            return lk.finish([])
        return lk.finish(self._sync_read(lambda store: store.read(lk.keys), p.deadline))

    def _sync_read(self, read: Callable[[Any], Any], deadline: float) -> Any:
        """``read(store)`` for a synchronous caller, judged, answered by ``deadline``."""
        if not self.breaker.allow():
            raise _StoreFailed("breaker_open")
        if not self._isolate:
            with self._judged((DeadlineExceeded,), deadline):
                return read(self.store.online)
        if self._inline is not None:
            try:
                with self._judged((DeadlineExceeded,), deadline):
                    return read(DeadlineStore(self._inline, deadline))
            except NotReady:
                pass  # this thread's connection is being made: read through the pool meanwhile
        if time.monotonic() >= deadline:  # too late already: queue no read nobody waits for
            raise self._timed_out(deadline)
        fut = self._pool.submit(read, self.store.online)
        with self._judged((cf.TimeoutError,), deadline, fut):
            return fut.result(timeout=max(0.0, deadline - time.monotonic()))

    async def _read_async(self, p: Prepared) -> Any:
        lk = self._plan(p)
        return lk.finish(await self._async_values(lk.keys, p.deadline) if lk.keys else [])

    async def _async_values(self, keys: list[bytes], deadline: float) -> Any:
        """The stored values of ``keys`` for an event-loop caller, judged, by ``deadline``."""
        if self._aredis is not None:
            return await self._aredis_values(keys, deadline)
        return await self._async_read(lambda store: store.read(keys), deadline)

    async def _async_read(self, read: Callable[[Any], Any], deadline: float) -> Any:
        if not self.breaker.allow():
            raise _StoreFailed("breaker_open")
        if not self._isolate:
            with self._judged((DeadlineExceeded,), deadline):
                return read(self.store.online)
        if time.monotonic() >= deadline:
            raise self._timed_out(deadline)
        fut = self._pool.submit(read, self.store.online)
        with self._judged((asyncio.TimeoutError, cf.TimeoutError), deadline, fut):
            remaining = max(0.0, deadline - time.monotonic())
            return await asyncio.wait_for(asyncio.wrap_future(fut), remaining)

    async def _aredis_values(self, keys: list[bytes], deadline: float) -> Any:
        """``_judged`` written out: every request of an event-loop server takes this path."""
        if not self.breaker.allow():
            raise _StoreFailed("breaker_open")
        try:
            values = await self._aredis.mget(keys, deadline)  # type: ignore[union-attr]
        except DeadlineExceeded:
            raise self._timed_out(deadline) from None
        except Exception as exc:
            self._failed(exc)
        self.breaker.success()
        return values

    def _classify(self, exc: Exception) -> Exception:
        """A failed read: the request's fault (re-raised, store untouched) or the store's."""
        if isinstance(exc, FeatureStoreError) and not isinstance(exc, OnlineStoreError):
            self.breaker.release()  # bad entity values, name clashes: a 4xx, not an outage
            return exc
        self.breaker.failure()
        if isinstance(exc, (OnlineStoreError, OSError, TimeoutError)):
            log.warning("online store read failed: %s", exc)
        else:  # a bug, not an outage: keep serving (degraded) but leave a traceback in the log
            log.error("online read raised %s", type(exc).__name__, exc_info=exc)
        return _StoreFailed("store_error")
