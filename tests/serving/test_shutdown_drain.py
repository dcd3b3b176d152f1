"""SIGTERM (a rolling deploy) answers every request the server was sent before it, REST and
gRPC, with the model busy on the event loop; readiness turns false first."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from featurestore.online.serving._proto import featurestore_pb2 as pb
from featurestore.online.serving._proto import featurestore_pb2_grpc as pb_grpc
from tests.serving.conftest import cli_serve, free_port, make_repo

# a model that holds the event loop (as a big explain does) and counts its calls in a file
SLOW_MODEL = """
import time
from pathlib import Path

import numpy as np

CALLS = Path({calls!r})


def predict(x):
    with CALLS.open("a") as f:
        f.write("call\\n")
    time.sleep(0.3)
    return np.zeros(len(x))
"""
N_REST = 5
N_GRPC = 3
ENTITIES = {"user_id": [3], "merchant_id": [1]}


@pytest.fixture(scope="module")
def slow_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from featurestore.store import FeatureStore
    from tests._models import publish

    root = tmp_path_factory.mktemp("drain")
    repo = make_repo(root / "repo")
    calls = root / "calls.txt"
    (root / "slow.py").write_text(SLOW_MODEL.format(calls=str(calls)))
    with FeatureStore(repo) as store:
        publish(store, "slow", flavor="python", artifact=root / "slow.py", service="scoring")
    return repo


def _calls(repo: Path) -> int:
    path = repo.parent / "calls.txt"
    return len(path.read_text().splitlines()) if path.exists() else 0


def _wait_for(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


def _send_predict(port: int) -> socket.socket:
    """A connection with one whole POST /predict written to it (keep-alive, as clients do)."""
    body = json.dumps({"model": "slow", "entities": ENTITIES}).encode()
    head = (
        f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.sendall(head + body)
    return sock


def _answer(sock: socket.socket) -> tuple[str, dict[str, Any] | None]:
    """The status line and JSON body of the answer on ``sock`` (or the error reading it)."""
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return f"closed after {len(data)} bytes", None
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                return "body cut short", None
            rest += chunk
    except OSError as exc:
        return type(exc).__name__, None
    finally:
        sock.close()
    return head.split(b"\r\n", 1)[0].decode(), json.loads(rest[:length])


def test_sigterm_answers_every_request_sent_before_it(slow_repo: Path) -> None:
    rest, grpc_port = free_port(), free_port()
    args = ("--port", str(rest), "--grpc-port", str(grpc_port), "--workers", "1")
    with cli_serve(slow_repo, *args) as proc:

        def ready() -> bool:
            assert proc.poll() is None, proc.stdout.read().decode()  # type: ignore[union-attr]
            try:
                r = httpx.get(f"http://127.0.0.1:{rest}/health/ready", timeout=2)
            except httpx.HTTPError:
                return False
            return r.status_code == 200

        _wait_for(ready, "featurestore serve")
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = pb_grpc.FeatureServingStub(channel)
            stub.Live(pb.HealthRequest(), timeout=10)  # connected before the load
            request = pb.PredictRequest(
                model="slow", entities={k: pb.ValueList(ints=v) for k, v in ENTITIES.items()}
            )
            before = _calls(slow_repo)
            calls = [stub.Predict.future(request, timeout=60) for _ in range(N_GRPC)]
            socks = [_send_predict(rest) for _ in range(N_REST)]
            # the server is busy with the first of them: the others wait for the loop, queued
            # in the kernel (accept queue, socket buffers) and in gRPC's core
            _wait_for(lambda: _calls(slow_repo) > before, "the first predict")
            os.kill(proc.pid, signal.SIGTERM)

            answers = [_answer(s) for s in socks]
            outcomes = []
            for c in calls:
                try:
                    outcomes.append((grpc.StatusCode.OK, len(c.result().scores)))
                except grpc.RpcError as exc:
                    outcomes.append((exc.code(), exc.details()))
        statuses = [status for status, _ in answers]
        assert (statuses, outcomes) == (
            ["HTTP/1.1 200 OK"] * N_REST,
            [(grpc.StatusCode.OK, 1)] * N_GRPC,
        ), answers
        assert all(body is not None and body["scores"] == [0.0] for _, body in answers)
        assert _calls(slow_repo) - before == N_REST + N_GRPC
        # uvicorn ends a SIGTERM'd server by re-raising the signal once it has drained
        assert proc.wait(timeout=60) == -signal.SIGTERM
    with pytest.raises(ConnectionRefusedError):  # gone: a new connection is refused cleanly
        socket.create_connection(("127.0.0.1", rest), timeout=5).close()


class _Recorder:
    """Stands in for the gRPC server: records what the drain asks of it, and when."""

    def __init__(self, engine: Any, log: list[tuple[Any, ...]]) -> None:
        self.engine = engine
        self.log = log

    async def not_serving(self) -> None:
        self.log.append(("grpc not serving", self.engine.health()["ready"]))

    async def stop(self, grace: float) -> None:
        self.log.append(("grpc stop", grace))


def test_sigterm_turns_readiness_off_then_stops_grpc_and_hands_on(slow_repo: Path) -> None:
    """The order of a drain: not ready first (REST and gRPC health); then, together, gRPC
    stops taking calls (half the grace for those in flight) and the server's own SIGTERM
    handler runs (uvicorn: it closes its listener)."""
    from featurestore.online.serving.drain import Drain
    from featurestore.online.serving.engine import Engine

    engine = Engine.from_repo(str(slow_repo))
    engine.start(poll=False)
    log: list[tuple[Any, ...]] = []

    def server_handler(sig: int, frame: Any) -> None:
        h = engine.health()
        log.append(("server handler", sig, h["ready"], h["draining"]))

    previous = signal.signal(signal.SIGTERM, server_handler)
    try:
        assert engine.health()["ready"] is True

        async def main() -> Drain:
            drain = Drain(engine, _Recorder(engine, log), grace=4.0)
            drain.catch_sigterm()
            os.kill(os.getpid(), signal.SIGTERM)
            end = time.monotonic() + 30
            while not any(e[0] == "server handler" for e in log):
                assert time.monotonic() < end, log
                await asyncio.sleep(0.01)
            for _ in range(100):  # the drain stops gRPC itself, not the lifespan's end
                if ("grpc stop", 2.0) in log:
                    break
                await asyncio.sleep(0.01)
            assert ("grpc stop", 2.0) in log, log
            await drain.stop_grpc()  # the lifespan's end: gRPC already stopping, not again
            drain.release()
            return drain

        asyncio.run(main())
        assert signal.getsignal(signal.SIGTERM) is server_handler  # given back
    finally:
        signal.signal(signal.SIGTERM, previous)
        engine.close()
    assert log[0] == ("grpc not serving", False)
    assert sorted(log[1:]) == [
        ("grpc stop", 2.0),  # once: the lifespan's end did not stop it again
        ("server handler", signal.SIGTERM, False, True),
    ]
