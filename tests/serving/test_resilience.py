"""Under load: a model promotion drops no request; a dead or hung Redis costs at most the deadline
(answers degraded, with defaults) and the server recovers by itself when Redis is back."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import start_redis
from tests.serving.conftest import free_port, make_repo

DEADLINE_MS = 50
# Loopback HTTP on a loaded 2-core box: 98 % of answers must arrive within deadline + SLACK_S;
# every answer within HANG_S (the OS may deschedule the whole process for a few 100 ms).
SLACK_S = 0.1
HANG_S = 1.0


def assert_recovered(after: list[tuple[float, float, int, dict[str, Any]]], real: Any) -> None:
    """After the store is back every answer is real; the only exception is an answer that a
    scheduling stall pushed past deadline + slack (as assert_within_deadline allows), never a
    fast degraded one (a breaker stuck open) and never wrong data."""
    assert after and real(after[-1][3]), after[-1]
    for r in after:
        if r[3]["degraded"]:
            assert r[1] >= DEADLINE_MS / 1000 + SLACK_S, ("degraded after recovery", r[:3])
        else:
            assert real(r[3]), r


def assert_within_deadline(phase: list[tuple[float, float, int, dict[str, Any]]]) -> None:
    lat = sorted(r[1] for r in phase)
    late = [x for x in lat if x >= DEADLINE_MS / 1000 + SLACK_S]
    assert len(late) <= 0.02 * len(lat), f"{len(late)} of {len(lat)} late: {late[-5:]}"
    assert lat[-1] < HANG_S, f"an answer took {lat[-1]:.3f} s"


class Redis:
    """A redis-server we can kill, pause and restart on the same port."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = start_redis(self.workdir, port=self.port).proc

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)  # type: ignore[union-attr]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.resume()
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def redis_proc(tmp_path: Path):
    r = Redis(tmp_path / "redis")
    r.start()
    yield r
    r.stop()


class Load:
    """A client thread sending requests back to back, recording every outcome."""

    def __init__(self, url: str, body: dict[str, Any], path: str = "/predict") -> None:
        self.url, self.body, self.path = url, body, path
        self.results: list[tuple[float, float, int, dict[str, Any]]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as c:
            while not self._stop.is_set():
                t = time.perf_counter()
                try:
                    r = c.post(self.path, json=self.body)
                    self.results.append(
                        (time.monotonic(), time.perf_counter() - t, r.status_code, r.json())
                    )
                except Exception as exc:  # a dropped connection would show here
                    self.errors.append(repr(exc))

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.thread.join(timeout=20)

    def since(self, t: float) -> list[tuple[float, float, int, dict[str, Any]]]:
        return [r for r in self.results if r[0] >= t]

    def wait_for(self, pred, timeout: float = 10.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.results and pred(self.results[-1]):
                return True
            time.sleep(0.01)
        return False


BODY = {"model": "fraud", "entities": {"user_id": [1, 2], "merchant_id": [1, 2]}}
SERVING = f"""
serving:
  deadline_ms: {DEADLINE_MS}
  breaker:
    failure_threshold: 3
    reset_ms: 200
"""


def test_promotion_under_load_drops_no_request(fresh_repo: Path, serve) -> None:
    from featurestore.online.models.repo import model_registry
    from featurestore.store import FeatureStore

    s = serve(fresh_repo)
    with Load(s.url, BODY) as load:
        assert load.wait_for(lambda r: r[3].get("version") == 1)
        time.sleep(0.3)
        model_registry(FeatureStore(fresh_repo)).set_alias("fraud", 2, "production")
        assert load.wait_for(lambda r: r[3].get("version") == 2), "the promotion never landed"
        time.sleep(0.3)
    assert not load.errors
    statuses = {r[2] for r in load.results}
    assert statuses == {200}
    versions = [r[3]["version"] for r in load.results]
    assert set(versions) == {1, 2}
    first2 = versions.index(2)
    assert all(v == 2 for v in versions[first2:])  # one atomic switch, no flapping
    assert not any(r[3]["degraded"] for r in load.results)
    assert len(versions) > 20


def test_killed_redis_answers_degraded_within_deadline_and_recovers(
    tmp_path: Path, serve, redis_proc: Redis
) -> None:
    repo = make_repo(tmp_path / "repo", online="redis", redis_url=redis_proc.url, serving=SERVING)
    s = serve(repo)
    with Load(s.url, BODY) as load:
        assert load.wait_for(lambda r: r[2] == 200 and not r[3]["degraded"])
        time.sleep(0.2)
        t_kill = time.monotonic()
        redis_proc.kill()
        assert load.wait_for(lambda r: r[3].get("degraded") is True), "never degraded"
        time.sleep(1.0)
        t_restart = time.monotonic()
        redis_proc.start()  # same port, empty: recovery means answers stop being degraded
        assert load.wait_for(lambda r: r[3].get("degraded") is False, timeout=10), (
            "did not recover after redis came back"
        )
        t_back = time.monotonic()
        time.sleep(0.3)
    assert not load.errors
    assert {r[2] for r in load.results} == {200}
    outage = [r for r in load.results if t_kill <= r[0] <= t_restart]
    assert outage and all(r[3]["degraded"] for r in outage[3:]), [
        (round(r[0] - t_kill, 3), r[3]["degraded"]) for r in outage[:10]
    ]
    assert_within_deadline(outage)
    assert t_back - t_restart < 5
    degraded = next(r for r in outage if r[3]["degraded"])
    assert degraded[3]["scores"] and len(degraded[3]["scores"]) == 2  # scored on defaults
    assert_recovered(load.since(t_back + 0.05), lambda body: not body["degraded"])


def test_hung_redis_costs_at_most_the_deadline(tmp_path: Path, serve, redis_proc: Redis) -> None:
    repo = make_repo(tmp_path / "repo", online="redis", redis_url=redis_proc.url, serving=SERVING)
    s = serve(repo)
    body = {"feature_service": "everything", "entities": {"user_id": [3], "merchant_id": [3]}}
    with Load(s.url, body, path="/get-online-features") as load:
        assert load.wait_for(lambda r: r[2] == 200 and not r[3]["degraded"])
        t_pause = time.monotonic()
        redis_proc.pause()  # accepts connections, never answers: the slow-store case
        assert load.wait_for(lambda r: r[3].get("degraded") is True)
        time.sleep(1.0)
        t_resume = time.monotonic()
        redis_proc.resume()
        assert load.wait_for(lambda r: r[3].get("degraded") is False, timeout=10)
        t_back = time.monotonic()
        time.sleep(0.5)
    assert not load.errors and {r[2] for r in load.results} == {200}
    hung = [r for r in load.results if t_pause <= r[0] <= t_resume]
    assert len(hung) > 20
    assert_within_deadline(hung)
    d = next(r[3] for r in hung if r[3]["degraded"])
    cols = dict(zip(d["feature_names"], d["results"], strict=True))
    assert cols["tx_count"] == {"values": [0], "statuses": ["UNAVAILABLE"]}  # the default
    assert cols["country"]["values"] == ["??"]
    real = [30]  # tx_count of user 3 once the store answers again
    assert_recovered(load.since(t_back + 0.05), lambda b: b["results"][2]["values"] == real)


class SyncLoad(Load):
    """In-process callers of the synchronous Engine.predict (reads on the caller's thread)."""

    def __init__(self, engine: Any, threads: int = 2) -> None:
        self.engine = engine
        self.results = []
        self.errors = []
        self._stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        self.thread = self.threads[0]

    def _run(self) -> None:
        while not self._stop.is_set():
            t = time.perf_counter()
            try:
                res = self.engine.predict("fraud", entities=BODY["entities"])
                self.results.append((time.monotonic(), time.perf_counter() - t, 200, res.to_dict()))
            except Exception as exc:
                self.errors.append(repr(exc))

    def __enter__(self) -> SyncLoad:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self.threads:
            t.join(timeout=20)


@pytest.mark.parametrize("outage", ["pause", "kill"])
def test_sync_reads_on_the_callers_thread_keep_the_deadline(
    tmp_path: Path, redis_proc: Redis, outage: str
) -> None:
    from featurestore.online.serving.engine import Engine

    repo = make_repo(tmp_path / "repo", online="redis", redis_url=redis_proc.url, serving=SERVING)
    engine = Engine.from_repo(str(repo)).start()
    try:
        with SyncLoad(engine) as load:
            assert load.wait_for(lambda r: not r[3]["degraded"])
            time.sleep(0.3)
            # every caller thread has its own ready connection: reads skip the pool
            slots = engine._inline._slots
            assert len(slots) >= 2 and all(s.ready for s in slots)
            t_out = time.monotonic()
            redis_proc.pause() if outage == "pause" else redis_proc.kill()
            assert load.wait_for(lambda r: r[3]["degraded"]), "never degraded"
            time.sleep(1.0)
            t_end = time.monotonic()
            redis_proc.resume() if outage == "pause" else redis_proc.start()
            assert load.wait_for(lambda r: not r[3]["degraded"], timeout=10), "did not recover"
            t_back = time.monotonic()
            time.sleep(0.3)
        assert not load.errors, load.errors[:3]
        during = [r for r in load.results if t_out <= r[0] <= t_end]
        assert len(during) > 20
        assert_within_deadline(during)
        after = load.since(t_back + 0.05)
        assert after and not any(r[3]["degraded"] for r in after)
        assert any(s.ready for s in engine._inline._slots)  # back on the inline path
    finally:
        engine.close()
