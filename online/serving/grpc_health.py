"""The standard gRPC health service (grpc.health.v1) and server reflection on the gRPC port.

Load balancers and Kubernetes' gRPC probes ask ``grpc.health.v1.Health/Check``; grpcurl and
other tools list and call services through reflection. The overall status ("") and the
serving service's follow the engine's readiness (what ``/health/ready`` reports), re-checked
every ``POLL_S``; ``live`` is SERVING while the process serves. When the server stops, every
status turns NOT_SERVING first, so watchers move traffic away before calls are refused.
Neither needs an API key: a probe carries none.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

if TYPE_CHECKING:
    from featurestore.online.serving.engine import Engine

log = logging.getLogger("featurestore.serving")

POLL_S = 1.0  # how often readiness is re-checked
LIVE = "live"  # SERVING while the process serves: a liveness probe's service name
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthReporter:
    """The health service of one server, following ``engine``'s readiness."""

    def __init__(self, engine: Engine, service: str) -> None:
        self.servicer = health.aio.HealthServicer()
        self._engine = engine
        self._names = ("", service)  # the whole server, and the serving service
        self._ready: bool | None = None
        self._task: asyncio.Task[None] | None = None

    async def add_to(self, server: Any) -> None:
        """Register the health and reflection services on ``server`` (not yet started), not
        serving until the first readiness check says so."""
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, server)
        names = (*self._names[1:], health.SERVICE_NAME, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, server)
        for name in self._names:
            await self.servicer.set(name, NOT_SERVING)
        await self.servicer.set(LIVE, SERVING)

    def start(self) -> None:
        """Follow readiness from now on (call on the server's event loop)."""
        self._task = asyncio.get_running_loop().create_task(self._follow())

    async def _follow(self) -> None:
        while True:
            try:
                ready = bool((await asyncio.to_thread(self._engine.health))["ready"])
            except Exception as exc:  # a readiness check that fails: not ready, keep checking
                log.warning("gRPC health: readiness check failed: %s", exc)
                ready = False
            if ready is not self._ready:
                self._ready = ready
                for name in self._names:
                    await self.servicer.set(name, SERVING if ready else NOT_SERVING)
            await asyncio.sleep(POLL_S)

    async def close(self) -> None:
        """Stop following; every status NOT_SERVING for good (the server is going away)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.servicer.enter_graceful_shutdown()
