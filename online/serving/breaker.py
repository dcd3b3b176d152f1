"""A circuit breaker (closed / open / half-open) so a dead online store is not hammered."""

from __future__ import annotations

import threading
import time
from enum import Enum


class BreakerState(str, Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Opens after ``failure_threshold`` consecutive failures; after ``reset_s`` lets one probe
    through (half-open): its success closes the breaker, its failure opens it again.

    Callers decide what a failure is: the engine counts store errors, and a missed deadline only
    when the request allowed at least ``serving.deadline_ms``; a miss of a shorter deadline the
    client chose is neither (``release``), so it cannot open the breaker for other clients.
    """

    def __init__(
        self, *, failure_threshold: int = 5, reset_s: float = 1.0, clock: object = time.monotonic
    ) -> None:
        self.failure_threshold = max(1, failure_threshold)
        self.reset_s = reset_s
        self._clock = clock
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_out = False
        self.opens = 0  # how many times it opened (a metric)

    @property
    def state(self) -> BreakerState:
        with self._lock:
            if self._state is BreakerState.OPEN and self._now() - self._opened_at >= self.reset_s:
                return BreakerState.HALF_OPEN
            return self._state

    @property
    def is_open(self) -> bool:
        """Open and not yet probed (lock-free: one attribute read on the request path)."""
        return self._state is BreakerState.OPEN

    def _now(self) -> float:
        return self._clock()  # type: ignore[operator]

    def allow(self) -> bool:
        """Whether a call may go to the store now (in half-open: only the one probe)."""
        if self._state is BreakerState.CLOSED:  # fast path, no lock
            return True
        with self._lock:
            if self._state is BreakerState.OPEN:
                if self._now() - self._opened_at < self.reset_s:
                    return False
                self._state = BreakerState.HALF_OPEN
                self._probe_out = False
            if self._state is BreakerState.HALF_OPEN:
                if self._probe_out:
                    return False
                self._probe_out = True
                return True
            return True

    def success(self) -> None:
        if self._state is BreakerState.CLOSED and self._failures == 0:
            return
        with self._lock:
            self._state = BreakerState.CLOSED
            self._failures = 0
            self._probe_out = False

    def release(self) -> None:
        """The allowed call says nothing about the store (a bad request, a deadline the client
        made shorter than the server's): free the probe slot, count neither way."""
        if self._state is BreakerState.CLOSED:
            return
        with self._lock:
            self._probe_out = False

    def failure(self) -> None:
        with self._lock:
            self._failures += 1
            if self._state is BreakerState.HALF_OPEN or self._failures >= self.failure_threshold:
                if self._state is not BreakerState.OPEN:
                    self.opens += 1
                self._state = BreakerState.OPEN
                self._opened_at = self._now()
                self._probe_out = False
