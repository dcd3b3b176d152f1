"""The standard gRPC health service follows readiness, and reflection lists the services."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from featurestore.online.serving.grpc_server import SERVICE
from tests.serving.conftest import ServerThread, unapplied_repo

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _status(target: str, service: str) -> Any:
    with grpc.insecure_channel(target) as channel:
        req = health_pb2.HealthCheckRequest(service=service)
        return health_pb2_grpc.HealthStub(channel).Check(req, timeout=5).status


def _wait_status(target: str, service: str, want: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while (got := _status(target, service)) != want:
        assert time.monotonic() < deadline, f"{service!r} stayed {got}, expected {want}"
        time.sleep(0.05)


def test_a_ready_server_is_serving(shared_server: ServerThread) -> None:
    target = shared_server.grpc_target
    _wait_status(target, "", SERVING)  # the first check runs as the server starts
    assert _status(target, SERVICE) == SERVING
    assert _status(target, "live") == SERVING
    with pytest.raises(grpc.RpcError) as info:
        _status(target, "no.such.Service")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_and_describes_the_services(shared_server: ServerThread) -> None:
    from google.protobuf.descriptor_pool import DescriptorPool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    with grpc.insecure_channel(shared_server.grpc_target) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        services = set(db.get_services())
        assert {SERVICE, "grpc.health.v1.Health"} <= services
        methods = {m.name for m in DescriptorPool(db).FindServiceByName(SERVICE).methods}
    assert {"GetOnlineFeatures", "Predict", "Push", "Ready"} <= methods


def test_not_serving_until_ready_then_serving(tmp_path: Path) -> None:
    """A server started before ``featurestore apply``: live, not serving; serving after it."""
    from featurestore.store import FeatureStore

    repo = unapplied_repo(tmp_path)
    s = ServerThread.of_repo(repo)
    s.thread.start()
    try:
        deadline = time.monotonic() + 20
        while not hasattr(s.app.state, "grpc_port"):
            assert time.monotonic() < deadline, "the gRPC server never started"
            time.sleep(0.01)
        target = s.grpc_target
        time.sleep(1.5)  # a readiness check or more has run
        assert _status(target, "") == NOT_SERVING
        assert _status(target, SERVICE) == NOT_SERVING
        assert _status(target, "live") == SERVING
        FeatureStore(repo).apply()
        _wait_status(target, "", SERVING)
        assert _status(target, SERVICE) == SERVING
    finally:
        s.stop()


def test_stopping_turns_watchers_not_serving_first(fresh_repo: Path, serve: Any) -> None:
    s = serve(fresh_repo)
    _wait_status(s.grpc_target, "", SERVING)
    seen: list[Any] = []
    channel = grpc.insecure_channel(s.grpc_target)
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))

    def follow() -> None:
        try:
            for msg in watch:
                seen.append(msg.status)
        except grpc.RpcError:
            pass  # the server went away after saying so

    t = threading.Thread(target=follow, daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while not seen:
        assert time.monotonic() < deadline, "the watch never got its first status"
        time.sleep(0.01)
    s.stop()
    t.join(timeout=15)
    channel.close()
    assert seen[0] == SERVING and seen[-1] == NOT_SERVING


def test_not_serving_before_the_first_readiness_check() -> None:
    """Between the server's start and its first readiness check nothing claims SERVING (the
    health servicer's own default for the whole server is SERVING)."""
    import asyncio

    from featurestore.online.serving.grpc_health import HealthReporter

    class _Ready:
        def health(self) -> dict[str, Any]:
            return {"ready": True}

    async def statuses() -> tuple[Any, ...]:
        server = grpc.aio.server()
        reporter = HealthReporter(_Ready(), SERVICE)  # type: ignore[arg-type]
        await reporter.add_to(server)
        check = reporter.servicer.Check
        before = [
            (await check(health_pb2.HealthCheckRequest(service=name), None)).status
            for name in ("", SERVICE, "live")
        ]
        reporter.start()
        await asyncio.sleep(0.2)
        after = (await check(health_pb2.HealthCheckRequest(service=""), None)).status
        await reporter.close()
        closed = (await check(health_pb2.HealthCheckRequest(service=""), None)).status
        await server.stop(None)
        return (*before, after, closed)

    assert asyncio.run(statuses()) == (NOT_SERVING, NOT_SERVING, SERVING, SERVING, NOT_SERVING)
