"""Serving on an IPv6 host (``--host ::1`` / ``::``): both servers listen, the banner shows the
address in brackets; a gRPC port that cannot be bound stops the start with one line."""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path

import grpc
import httpx
import pytest

from featurestore.online.serving._proto import featurestore_pb2 as pb
from featurestore.online.serving._proto import featurestore_pb2_grpc as pb_grpc
from featurestore.online.serving.grpc_server import grpc_address
from tests.serving.conftest import cli_serve, make_repo


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not _ipv6_loopback(), reason="this machine has no IPv6 loopback")


def _free_port6() -> int:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
        s.bind(("::1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("::1", "[::1]:50051"),
        ("::", "[::]:50051"),
        ("fe80::1%eth0", "[fe80::1%eth0]:50051"),
        ("[::1]", "[::1]:50051"),
        ("127.0.0.1", "127.0.0.1:50051"),
        ("0.0.0.0", "0.0.0.0:50051"),
        ("localhost", "localhost:50051"),
    ],
)
def test_grpc_address_brackets_ipv6_literals(host: str, address: str) -> None:
    assert grpc_address(host, 50051) == address


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repo(tmp_path_factory.mktemp("v6") / "repo")


@needs_ipv6
@pytest.mark.parametrize("host", ["::1", "::"])
def test_serve_on_an_ipv6_host_answers_rest_and_grpc(repo: Path, host: str) -> None:
    rest, grpc_port = _free_port6(), _free_port6()
    args = ("--host", host, "--port", str(rest), "--grpc-port", str(grpc_port))
    with cli_serve(repo, *args) as proc:
        url = f"http://[::1]:{rest}"
        end = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()  # type: ignore[union-attr]
            assert time.monotonic() < end, "featurestore serve did not get ready"
            try:
                if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        body = {"model": "fraud", "entities": {"user_id": [3], "merchant_id": [1]}}
        r = httpx.post(f"{url}/predict", json=body, timeout=10)
        assert r.status_code == 200 and len(r.json()["scores"]) == 1
        with grpc.insecure_channel(f"[::1]:{grpc_port}") as channel:
            stub = pb_grpc.FeatureServingStub(channel)
            reply = stub.Predict(
                pb.PredictRequest(
                    model="fraud",
                    entities={
                        "user_id": pb.ValueList(ints=[3]),
                        "merchant_id": pb.ValueList(ints=[1]),
                    },
                ),
                timeout=10,
            )
        assert list(reply.scores) == pytest.approx(r.json()["scores"])
    banner = proc.stdout.read().decode().splitlines()[0]  # type: ignore[union-attr]
    assert f"REST on http://[{host}]:{rest}, gRPC on [{host}]:{grpc_port}," in banner


def test_a_grpc_port_it_cannot_bind_stops_the_start_with_one_line(
    repo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The port is taken (listening, without SO_REUSEPORT) after any check the CLI made: the
    worker's start fails with one line naming the address and why, no traceback."""
    import uvicorn

    from featurestore.online.serving.engine import Engine
    from featurestore.online.serving.rest import create_app

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        app = create_app(Engine.from_repo(str(repo)), grpc_port=port, own_engine=True)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            rest = s.getsockname()[1]
        config = uvicorn.Config(
            app, host="127.0.0.1", port=rest, lifespan="on", log_config=None, loop="asyncio"
        )
        server = uvicorn.Server(config)
        caplog.set_level(logging.INFO)
        exits: list[object] = []

        def run() -> None:
            try:
                server.run()
            except SystemExit as exc:  # uvicorn's way out of a failed start
                exits.append(exc.code)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        thread.join(timeout=60)
    assert not thread.is_alive() and not server.started and exits == [3]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    expected = (
        f"the gRPC server cannot listen on 127.0.0.1:{port}: Address already in use; "
        "pick another with --host / --grpc-port or serving.host / serving.grpc_port"
    )
    assert errors == [expected, "Application startup failed. Exiting."]
    assert not any(r.exc_info for r in caplog.records)
