"""A graceful shutdown on SIGTERM, as a rolling deploy needs: every request the server was sent
before the signal is answered (``serving.shutdown_grace_s`` bounds how long that takes)."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from featurestore.online.serving.engine import Engine

log = logging.getLogger("featurestore.serving")

_SETTLE_STEP_S = 0.005
_SETTLE_QUIET_S = 0.05  # caught up: this long with no step held up by a request


def finish_s(grace: float) -> float:
    """Of a shutdown's ``grace``, the seconds requests in flight get to finish once the
    listeners close: the second half (the first is for taking in what was sent, see Drain)."""
    return grace / 2


class Drain:
    """The shutdown a rolling deploy needs, on SIGTERM: every request the server was sent
    before it is answered.

    At once: readiness false (``/health/ready`` 503, gRPC health NOT_SERVING). Then the event
    loop is left to catch up with what the kernel already holds for it (connections waiting
    to be accepted, requests not yet read, gRPC calls not yet picked up: a model runs on the
    loop, so these queue while it is busy), for at most half of ``grace``
    (``serving.shutdown_grace_s``), as closing a listener resets the connections still
    queued on it. Then, together: the gRPC server stops taking calls, and SIGTERM goes on to
    uvicorn, which closes its listener and idle keep-alive connections, and each busy one
    after its answer. Both give requests in flight the other half (``finish_s``; uvicorn's
    timeout_graceful_shutdown), then cancel them.

    It takes SIGTERM only on the main thread and from a Python handler (uvicorn's); a
    server embedded in a thread keeps its own shutdown, gRPC stopped at the lifespan's end.
    """

    def __init__(self, engine: Engine, grpc: Any, grace: float) -> None:
        self.engine = engine
        self.grpc = grpc
        self.grace = grace
        self._previous: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._grpc_stop: asyncio.Task[None] | None = None
        self._signalled = False
        self._handed_on = False

    def catch_sigterm(self) -> None:
        """Take SIGTERM from the server's handler (handed on after the drain's first steps)."""
        if threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGTERM)
        if not callable(previous):  # not a server that shuts down gracefully: leave it be
            return
        self._loop = asyncio.get_running_loop()
        self._previous = previous
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def release(self) -> None:
        """Give SIGTERM back to the server's handler."""
        if self._previous is not None and signal.getsignal(signal.SIGTERM) == self._on_sigterm:
            signal.signal(signal.SIGTERM, self._previous)

    def _on_sigterm(self, sig: int, frame: Any) -> None:
        if self._signalled or self._loop is None:  # a second SIGTERM: stop now
            self._hand_on(sig)
            return
        self._signalled = True
        self._loop.call_soon_threadsafe(self._begin, sig)

    def _begin(self, sig: int) -> None:
        self._task = asyncio.get_running_loop().create_task(self._drain(sig))

    def _hand_on(self, sig: int) -> None:
        if not self._handed_on:
            self._handed_on = True
            self._previous(sig, None)

    async def _drain(self, sig: int) -> None:
        try:
            self.engine.drain()
            if self.grpc is not None:
                await self.grpc.not_serving()
            log.info("SIGTERM: not ready; finishing the requests received")
            await _settle(self.grace - finish_s(self.grace))
            self._start_grpc_stop()
        finally:
            self._hand_on(sig)

    def _start_grpc_stop(self) -> None:
        if self.grpc is not None and self._grpc_stop is None:
            stop = self.grpc.stop(finish_s(self.grace))
            self._grpc_stop = asyncio.get_running_loop().create_task(stop)

    async def stop_grpc(self) -> None:
        """Stop the gRPC server (if not stopping yet) and wait until it has."""
        if self._task is not None and not self._task.done():  # the server stopped first
            self._task.cancel()
        self._start_grpc_stop()
        if self._grpc_stop is not None:
            await self._grpc_stop


async def _settle(limit_s: float) -> None:
    """Return once the event loop has caught up (``_SETTLE_QUIET_S`` of short sleeps none of
    which a request held up), or after ``limit_s``: by then it has accepted the connections
    and read the requests the kernel held for it."""
    loop = asyncio.get_running_loop()
    start = quiet_since = loop.time()
    while True:
        before = loop.time()
        await asyncio.sleep(_SETTLE_STEP_S)
        now = loop.time()
        if now - before > 2 * _SETTLE_STEP_S:  # a request's step held the loop
            quiet_since = now
        if now - quiet_since >= _SETTLE_QUIET_S or now - start >= limit_s:
            return
