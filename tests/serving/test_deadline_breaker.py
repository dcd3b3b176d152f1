"""A deadline a client chose shorter than ``serving.deadline_ms`` degrades only its own request:
missing it never counts against the circuit breaker, so other clients keep real answers, over
REST, gRPC and in process. A store that is really slow (a frozen Redis) still opens the breaker
with normal deadlines. All on a real redis-server and real servers."""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from featurestore.online.serving._proto import featurestore_pb2 as pb
from featurestore.online.serving._proto import featurestore_pb2_grpc as pb_grpc
from featurestore.online.serving._wire import column_values
from tests.conftest import RedisProcess, start_redis
from tests.serving.conftest import expected_user, make_repo

TIGHT_MS = 0.001  # shorter than any read: always missed
# the server's own budget is long, so a normal request on a busy test box is never late
SERVING = """
serving:
  deadline_ms: {deadline}
  breaker:
    failure_threshold: 3
    reset_ms: {reset}
"""


@pytest.fixture
def redis_proc(tmp_path: Path) -> Iterator[RedisProcess]:
    r = start_redis(tmp_path / "redis")
    yield r
    _resume(r)
    r.stop()


def _resume(r: RedisProcess) -> None:
    if r.proc.poll() is None:
        os.kill(r.proc.pid, signal.SIGCONT)


def _repo(tmp_path: Path, redis: RedisProcess, *, deadline: int, reset: int) -> Path:
    serving = SERVING.format(deadline=deadline, reset=reset)
    return make_repo(tmp_path / "repo", online="redis", redis_url=redis.url, serving=serving)


def _features(uids: list[int], deadline_ms: float | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "features": ["user_stats:tx_count"],
        "entities": {"user_id": uids},
    }
    if deadline_ms is not None:
        body["deadline_ms"] = deadline_ms
    return body


def _predict(deadline_ms: float | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "fraud", "entities": {"user_id": [3], "merchant_id": [3]}}
    if deadline_ms is not None:
        body["deadline_ms"] = deadline_ms
    return body


def _grpc_features(stub: Any, uids: list[int], deadline_ms: float = 0.0) -> Any:
    return stub.GetOnlineFeatures(
        pb.GetOnlineFeaturesRequest(
            features=["user_stats:tx_count"],
            entities={"user_id": pb.ValueList(ints=uids)},
            deadline_ms=deadline_ms,
        ),
        timeout=30,
    )


def _assert_real(c: httpx.Client, stub: Any, uid: int) -> None:
    """A normal request on each front end is answered from the store, with the right value."""
    r = c.post("/get-online-features", json=_features([uid]))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["degraded"] is False, body
    assert body["results"][1] == {
        "values": [expected_user(uid)["tx_count"]],
        "statuses": ["PRESENT"],
    }
    p = c.post("/predict", json=_predict())
    assert p.status_code == 200 and p.json()["degraded"] is False, p.text
    g = _grpc_features(stub, [uid])
    assert not g.degraded
    cols = {col.name: column_values(col) for col in g.columns}
    assert cols["tx_count"] == [expected_user(uid)["tx_count"]]


def test_tight_deadlines_never_degrade_other_clients(
    tmp_path: Path, serve: Any, redis_proc: RedisProcess
) -> None:
    # reset_ms is long: a breaker opened even once would still be open at the end
    s = serve(_repo(tmp_path, redis_proc, deadline=2000, reset=600_000))
    engine = s.app.state.engine
    many = list(range(1, 1001))  # a big MGET: the tight read is sent, then abandoned
    with (
        httpx.Client(base_url=s.url, timeout=30) as c,
        grpc.insecure_channel(s.grpc_target) as channel,
    ):
        stub = pb_grpc.FeatureServingStub(channel)
        for rnd in range(12):
            tight = [
                c.post("/get-online-features", json=_features(many, TIGHT_MS)).json(),
                c.post("/get-online-features", json=_features([3], TIGHT_MS)).json(),
                c.post("/predict", json=_predict(TIGHT_MS)).json(),
            ]
            assert all(t["degraded"] for t in tight), tight  # they did miss their deadlines
            assert _grpc_features(stub, many, TIGHT_MS).degraded
            # a short deadline a read can sometimes meet: abandoned or answered, never wrong
            near = c.post("/get-online-features", json=_features(many, 0.3)).json()
            if not near["degraded"]:
                assert near["results"][1]["values"][:3] == [10, 20, 30]
            _assert_real(c, stub, 1 + rnd % 50)
            ready = c.get("/health/ready").json()
            assert ready["breaker"] == "closed", (rnd, ready)
    assert engine.breaker.opens == 0


def test_abandoned_reads_leave_the_shared_connection_in_step(
    tmp_path: Path, serve: Any, redis_proc: RedisProcess
) -> None:
    # big reads whose short deadlines run out while their MGET is on the event loop's one Redis
    # connection, concurrent with normal reads on it: each reply still goes to its own read
    s = serve(_repo(tmp_path, redis_proc, deadline=2000, reset=600_000))
    stop = threading.Event()
    tight: list[bool] = []

    def abandon() -> None:
        with httpx.Client(base_url=s.url, timeout=30) as c:
            for i in itertools.count():
                if stop.is_set():
                    return
                ms = (0.5, 1, 2, 3, 5)[i % 5]
                r = c.post("/get-online-features", json=_features(list(range(1, 1001)), ms))
                body = r.json()
                tight.append(body["degraded"])
                if not body["degraded"]:
                    assert body["results"][1]["values"][:50] == [10 * u for u in range(1, 51)]

    threads = [threading.Thread(target=abandon, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        with httpx.Client(base_url=s.url, timeout=30) as c:
            for i in range(150):
                uid = 1 + i % 49  # users 1-50 are stored
                body = c.post("/get-online-features", json=_features([uid, uid + 1])).json()
                assert body["degraded"] is False, body
                want = [expected_user(u)["tx_count"] for u in (uid, uid + 1)]
                assert body["results"][1]["values"] == want, (i, body)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert any(tight), "no short deadline was missed: nothing was abandoned"
    assert s.app.state.engine.breaker.opens == 0


def test_tight_deadlines_in_process_leave_the_breaker_closed(
    tmp_path: Path, redis_proc: RedisProcess
) -> None:
    from featurestore.online.serving.engine import Engine
    from featurestore.store import FeatureStore

    repo = _repo(tmp_path, redis_proc, deadline=2000, reset=600_000)
    engine = Engine.from_repo(str(repo)).start()
    store = FeatureStore(repo)
    try:
        for _ in range(10):  # synchronous reads on the caller's own connection, then the store's
            res = engine.get_features(
                features=["user_stats:tx_count"],
                entities={"user_id": list(range(1, 1001))},
                deadline_ms=TIGHT_MS,
            )
            assert res.degraded
            assert engine.predict(
                "fraud", entities=_predict()["entities"], deadline_ms=TIGHT_MS
            ).degraded
            assert store.predict("fraud", _predict()["entities"], deadline_ms=TIGHT_MS).degraded
        normal = engine.get_features(features=["user_stats:tx_count"], entities={"user_id": [4]})
        assert not normal.degraded
        assert normal.to_dict()["results"][1]["values"] == [40]
        assert not engine.predict("fraud", entities=_predict()["entities"]).degraded
        assert not store.predict("fraud", _predict()["entities"]).degraded
        assert engine.breaker.opens == 0
        assert store._engine is not None and store._engine.breaker.opens == 0
    finally:
        store.close()
        engine.close()


def test_a_frozen_redis_still_opens_the_breaker_with_normal_deadlines(
    tmp_path: Path, serve: Any, redis_proc: RedisProcess
) -> None:
    # the gRPC health poll pings the store too (a failure after 4 deadlines, once a second): the
    # requests below fill the breaker's 3 failures well before it could
    s = serve(_repo(tmp_path, redis_proc, deadline=300, reset=600_000))
    engine = s.app.state.engine
    with httpx.Client(base_url=s.url, timeout=30) as c:
        assert not c.post("/get-online-features", json=_features([3])).json()["degraded"]
        os.kill(redis_proc.proc.pid, signal.SIGSTOP)  # accepts, never answers: a slow store
        try:
            # shorter deadlines than the server's: sent, unanswered, missed; no verdict
            for _ in range(6):
                assert c.post("/get-online-features", json=_features([3], 20)).json()["degraded"]
            assert engine.breaker.opens == 0
            assert engine.breaker.state.value == "closed"
            # the server's own deadline (and a longer one) missed: the store's fault
            answers = [
                c.post("/get-online-features", json=_features([3], ms)).json()
                for ms in (None, 400, None)
            ]
            assert all(a["degraded"] for a in answers)
            assert engine.breaker.opens == 1
            assert c.get("/health/ready").json()["breaker"] == "open"
            assert c.post("/get-online-features", json=_features([3])).json()["degraded"]
        finally:
            _resume(redis_proc)


def test_a_tight_request_as_the_half_open_probe_frees_it(
    tmp_path: Path, serve: Any, redis_proc: RedisProcess
) -> None:
    s = serve(_repo(tmp_path, redis_proc, deadline=150, reset=300))
    engine = s.app.state.engine
    with (
        httpx.Client(base_url=s.url, timeout=30) as c,
        grpc.insecure_channel(s.grpc_target) as channel,
    ):
        stub = pb_grpc.FeatureServingStub(channel)
        os.kill(redis_proc.proc.pid, signal.SIGSTOP)
        try:
            for _ in range(3):
                c.post("/get-online-features", json=_features([3]))
            assert engine.breaker.opens >= 1
        finally:
            _resume(redis_proc)
        # past reset_ms the next read is the one probe; a tight one takes it and misses
        end = time.monotonic() + 30
        while engine.breaker.state.value != "half_open" and time.monotonic() < end:
            time.sleep(0.05)
        assert engine.breaker.state.value == "half_open"
        assert c.post("/get-online-features", json=_features([3], TIGHT_MS)).json()["degraded"]
        # its miss says nothing about the store: the slot is free for the next request
        _assert_real(c, stub, 5)
        assert engine.breaker.state.value == "closed"
