"""The circuit breaker's state machine, with a fake clock."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from featurestore.online.serving.breaker import BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_opens_after_threshold_then_half_open_probe_closes_it() -> None:
    clock = Clock()
    b = CircuitBreaker(failure_threshold=3, reset_s=1.0, clock=clock)
    for _ in range(2):
        assert b.allow()
        b.failure()
    assert b.state is BreakerState.CLOSED
    b.failure()
    assert b.state is BreakerState.OPEN and not b.allow()
    clock.t = 1.0
    assert b.state is BreakerState.HALF_OPEN
    assert b.allow()  # the one probe
    assert not b.allow()  # nobody else while it is out
    b.success()
    assert b.state is BreakerState.CLOSED and b.allow()


def test_failed_probe_reopens_for_another_period() -> None:
    clock = Clock()
    b = CircuitBreaker(failure_threshold=1, reset_s=1.0, clock=clock)
    b.failure()
    clock.t = 1.5
    assert b.allow()
    b.failure()
    assert b.state is BreakerState.OPEN and not b.allow()
    clock.t = 2.4
    assert not b.allow()
    clock.t = 2.5
    assert b.allow()
    assert b.opens == 2


def test_a_success_resets_the_failure_count() -> None:
    b = CircuitBreaker(failure_threshold=2, reset_s=1.0, clock=Clock())
    b.failure()
    b.success()
    b.failure()
    assert b.state is BreakerState.CLOSED


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["allow", "ok", "fail", "tick"]), st.floats(0, 2)), max_size=60
    )
)
def test_never_more_than_one_probe_while_half_open(ops) -> None:
    clock = Clock()
    b = CircuitBreaker(failure_threshold=2, reset_s=1.0, clock=clock)
    probes = 0
    for op, dt in ops:
        if op == "tick":
            clock.t += dt
        elif op == "allow":
            was = b._state
            if b.allow() and was is not BreakerState.CLOSED:
                probes += 1
                assert probes == 1  # only one call gets through until it reports
        elif op == "ok":
            b.success()
            probes = 0
        else:
            b.failure()
            probes = 0
        if b._state is BreakerState.OPEN and clock.t - b._opened_at < 1.0:
            assert not b.allow()  # open and inside the reset period: nothing gets through


def test_a_bad_request_in_half_open_frees_the_probe_without_closing() -> None:
    clock = Clock()
    b = CircuitBreaker(failure_threshold=1, reset_s=1.0, clock=clock)
    b.failure()
    clock.t = 1.0
    assert b.allow()
    b.release()  # the probe was a bad request: the store was never asked
    assert b.state is BreakerState.HALF_OPEN
    assert b.allow()  # the next call may probe


def test_a_request_with_nothing_to_read_leaves_the_breaker_alone() -> None:
    import asyncio

    from featurestore.online.serving._reads import StoreReads

    class _NoKeys:  # the lookup of a request for on-demand features only
        keys: list[bytes] = []

        def finish(self, values: list) -> str:
            assert values == []
            return "computed"

    class _Reads(StoreReads):
        def _plan(self, p: object) -> _NoKeys:  # type: ignore[override]
            return _NoKeys()

    reads = _Reads()
    reads.breaker = CircuitBreaker(failure_threshold=1, reset_s=0.0)
    reads._aredis = None
    reads.breaker.failure()  # open; with reset_s 0 the next call would be the half-open probe
    assert reads._read_sync(None) == "computed"  # type: ignore[arg-type]
    assert asyncio.run(reads._read_async(None)) == "computed"  # type: ignore[arg-type]
    assert reads.breaker.state is BreakerState.HALF_OPEN  # neither a probe nor a verdict
    assert reads.breaker.allow()  # the probe is still there for a read that reaches the store
