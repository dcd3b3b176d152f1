"""Serving benchmark helpers: the served repo, the model, server processes, clients, floors.

Servers run in their own processes (one worker each, started like ``featurestore serve``), so
the client's Python never shares a GIL with the server's. The floor server is the same shape:
one uvicorn worker (same settings) whose lifespan starts a grpc.aio server on its loop, with a
POST endpoint and a unary method that return a constant. Run it alone with
``python -m benchmarks._serving --port P --grpc-port G``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from benchmarks.loadgen import LoadResult, _async_load, check_loopback, frozen_heap

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent
GRPC_SERVICE = "/featurestore.serving.v1.FeatureServing/"
BARE_GRPC = "/bench.Bare/Const"
BARE_SIZED_GRPC = "/bench.Bare/SizedConst"  # answers the bytes last PUT to /bare-sized/grpc
BARE_BODY = b'{"ok":true}'
MODEL = "bench_lgb"
SERVICES = {"user20": ("user_stats",), "all40": ("user_stats", "merchant_stats")}
N_TREES = 100

# ``featurestore serve`` runs uvicorn with exactly these (see featurestore/_cli_serve.py)
UVICORN = {
    "loop": "auto",
    "http": "httptools",
    "access_log": False,
    "workers": 1,
    "log_level": "warning",
}

_SERVICES_DEFS = """
from featurestore import FeatureService

user20 = FeatureService(name="user20", features=[user_stats])
all40 = FeatureService(name="all40", features=[user_stats, merchant_stats])
"""


# ---------------------------------------------------------------------------- the served repo


def write_serving_repo(
    bench_repo: Any, root: Path, redis_url: str, definitions: str, deadline_ms: int = 50
) -> Path:
    """A repo over the bench data (symlinked) with two feature services, on ``redis_url``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "data").mkdir(exist_ok=True)
    for src in (bench_repo.path / "data").glob("*.parquet"):
        link = root / "data" / src.name
        if not link.exists():
            link.symlink_to(src)
    (root / "definitions.py").write_text(definitions + _SERVICES_DEFS)
    (root / "featurestore.yaml").write_text(
        "project: bench\n"
        "online_store:\n"
        f"  type: redis\n  url: {redis_url}\n  socket_timeout: 5.0\n"
        "serving:\n"
        f"  host: {HOST}\n  deadline_ms: {deadline_ms}\n  log_level: warning\n"
        "models:\n  poll_interval_s: 5.0\n"
    )
    return root


def train_model(path: Path, names: Sequence[str], seed: int = 11) -> Path:
    """A LightGBM binary model, ``N_TREES`` trees over ``names`` (num_threads=1), saved."""
    import lightgbm as lgb
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((20_000, len(names)))
    w = rng.standard_normal(len(names))
    y = ((x @ w + rng.normal(0, 2.0, len(x))) > 0).astype(np.float64)
    params = {
        "objective": "binary",
        "num_leaves": 31,
        "learning_rate": 0.05,
        "max_bin": 63,
        "num_threads": 1,
        "force_col_wise": True,
        "verbose": -1,
        "seed": seed,
    }
    booster = lgb.train(params, lgb.Dataset(x, y, feature_name=list(names)), N_TREES)
    if booster.num_trees() != N_TREES:
        raise RuntimeError(f"expected {N_TREES} trees, LightGBM built {booster.num_trees()}")
    booster.save_model(str(path))
    return path


def register_model(store: Any, artifact: Path, service: str = "all40") -> Any:
    """Register ``artifact`` as the production version of ``MODEL`` against ``service``."""
    from featurestore.online.models.repo import register_model

    return register_model(
        store,
        MODEL,
        flavor="lightgbm",
        artifact=artifact,
        service=service,
        description="serving benchmark model",
        alias="production",
    )


# ---------------------------------------------------------------------------- server processes


@dataclass
class ServerProcess:
    """A server subprocess with a REST port and a gRPC port on loopback."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    grpc_port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def grpc_target(self) -> str:
        return f"{HOST}:{self.grpc_port}"

    def wait_ready(self, path: str, timeout: float = 60.0) -> None:
        import grpc
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} server exited; see {self.log}:\n{self._tail()}")
            try:
                if httpx.get(self.url + path, timeout=2.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        else:
            raise RuntimeError(f"{self.name} server not ready in {timeout:.0f} s; see {self.log}")
        with grpc.insecure_channel(self.grpc_target) as ch:
            grpc.channel_ready_future(ch).result(timeout=max(1.0, deadline - time.monotonic()))

    def _tail(self) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def _spawn(name: str, cmd: list[str], port: int, grpc_port: int, logdir: Path) -> ServerProcess:
    log = logdir / f"{name}-{port}.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    return ServerProcess(name, proc, port, grpc_port, log)


def start_ours(repo: Path, port: int, grpc_port: int, logdir: Path) -> ServerProcess:
    """``featurestore serve`` (REST + gRPC in one worker process), ready and warm."""
    cmd = [sys.executable, "-m", "featurestore.cli", "--repo", str(repo), "serve"]
    cmd += ["--host", HOST, "--port", str(port), "--grpc-port", str(grpc_port)]
    cmd += ["--workers", "1", "--log-level", "warning"]
    server = _spawn("featurestore-serve", cmd, port, grpc_port, logdir)
    try:
        server.wait_ready("/health/ready")
    except BaseException:
        server.stop()
        raise
    return server


def start_bare(port: int, grpc_port: int, logdir: Path) -> ServerProcess:
    """The floor server (constant answers), same process shape and uvicorn settings."""
    cmd = [sys.executable, "-m", "benchmarks._serving"]
    cmd += ["--port", str(port), "--grpc-port", str(grpc_port)]
    server = _spawn("bare", cmd, port, grpc_port, logdir)
    try:
        server.wait_ready("/health")
    except BaseException:
        server.stop()
        raise
    return server


def bare_app(grpc_port: int) -> Any:
    """FastAPI app: ``POST /bare`` -> constant; its lifespan runs a grpc.aio constant method."""
    import grpc
    from fastapi import FastAPI
    from fastapi.responses import Response
    from starlette.routing import Route

    # what the sized constants answer: set once per workload to a real answer of ours, so a
    # floor of the same size shows what the answer's bytes alone cost (reported, not a target)
    sized = {"rest": BARE_BODY, "grpc": BARE_BODY}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async def const(request: bytes, context: Any) -> bytes:
            return BARE_BODY

        async def sized_const(request: bytes, context: Any) -> bytes:
            return sized["grpc"]

        server = grpc.aio.server()
        handler = grpc.method_handlers_generic_handler(
            "bench.Bare",
            {
                "Const": grpc.unary_unary_rpc_method_handler(const),
                "SizedConst": grpc.unary_unary_rpc_method_handler(sized_const),
            },
        )
        server.add_generic_rpc_handlers((handler,))
        if server.add_insecure_port(f"{HOST}:{grpc_port}") == 0:
            raise OSError(f"bare gRPC server cannot bind {HOST}:{grpc_port}")
        await server.start()
        try:
            yield
        finally:
            await server.stop(grace=1.0)

    app = FastAPI(lifespan=lifespan, default_response_class=Response)

    @app.post("/bare")
    async def bare() -> Response:
        return Response(BARE_BODY, media_type="application/json")

    @app.get("/health")
    async def health() -> Response:
        return Response(BARE_BODY, media_type="application/json")

    @app.post("/bare-sized")
    async def bare_sized() -> Response:
        return Response(sized["rest"], media_type="application/json")

    async def set_sized(request: Any) -> Response:  # a plain Starlette route: raw body in
        proto = request.path_params["proto"]
        if proto not in sized:
            return Response(status_code=404)
        sized[proto] = await request.body()
        return Response(BARE_BODY, media_type="application/json")

    app.router.routes.append(Route("/bare-sized/{proto}", set_sized, methods=["PUT"]))

    return app


# ---------------------------------------------------------------------------- request payloads


def entity_columns(view_keys: Sequence[str], batch: Sequence[tuple[int, int]]) -> dict[str, list]:
    """Entity columns (join key -> values) of ``batch`` (user_id, merchant_id) pairs."""
    cols = {"user_id": [u for u, _ in batch], "merchant_id": [m for _, m in batch]}
    return {k: cols[k] for k in view_keys}


def rest_body(kind: str, service: str, entities: dict[str, list]) -> bytes:
    import orjson

    if kind == "predict":
        return orjson.dumps({"model": MODEL, "entities": entities})
    return orjson.dumps({"feature_service": service, "entities": entities})


def grpc_request(kind: str, service: str, entities: dict[str, list]) -> bytes:
    from featurestore.online.serving._proto import featurestore_pb2 as pb

    cols = {k: pb.ValueList(ints=vs) for k, vs in entities.items()}  # the packed form
    if kind == "predict":
        return pb.PredictRequest(model=MODEL, entities=cols).SerializeToString()
    return pb.GetOnlineFeaturesRequest(feature_service=service, entities=cols).SerializeToString()


def grpc_method(kind: str) -> str:
    return GRPC_SERVICE + ("Predict" if kind == "predict" else "GetOnlineFeatures")


# ---------------------------------------------------------------------------- clients


Call = Callable[[], Any]
AsyncCall = Callable[[], Awaitable[Any]]
AsyncFactory = Callable[[], Awaitable[tuple[AsyncCall, Callable[[], Awaitable[None]]]]]


def _cycler(items: Sequence[Any]) -> Callable[[], Any]:
    state = {"i": 0}
    n = len(items)

    def nxt() -> Any:
        i = state["i"]
        state["i"] = i + 1 if i + 1 < n else 0
        return items[i]

    return nxt


def _check_http(r: Any) -> bytes:
    if r.status_code != 200:
        raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
    return r.content


def rest_sync(url: str, bodies: Sequence[bytes]) -> tuple[Call, Callable[[], None]]:
    """(call, close): one keep-alive httpx client POSTing the next body; non-200 raises."""
    import httpx

    client = httpx.Client(timeout=10.0, headers={"content-type": "application/json"})
    nxt = _cycler(bodies)
    return (lambda: _check_http(client.post(url, content=nxt()))), client.close


def rest_async(url: str, bodies: Sequence[bytes], concurrency: int) -> AsyncFactory:
    """A factory (call it inside the event loop) of a POST call over ``concurrency`` keep-alive
    HTTP/1.1 connections. A minimal raw client: httpx's async client spends ~5 ms of CPU per
    request at 32 callers, which would make the client, not the server, the bottleneck."""
    parts = urlsplit(url)
    host, port, path = parts.hostname or HOST, parts.port or 80, parts.path or "/"
    check_loopback(host)
    head = f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
    reqs = [head.encode() + b"Content-Length: %d\r\n\r\n" % len(b) + b for b in bodies]

    async def make() -> tuple[AsyncCall, Callable[[], Awaitable[None]]]:
        pool: asyncio.Queue[Any] = asyncio.Queue()
        for _ in range(concurrency):
            pool.put_nowait(await asyncio.open_connection(host, port))
        nxt = _cycler(reqs)

        async def call() -> bytes:
            conn = await pool.get()
            try:
                if conn is None:
                    conn = await asyncio.open_connection(host, port)
                reader, writer = conn
                writer.write(nxt())
                header = await reader.readuntil(b"\r\n\r\n")
                body = await reader.readexactly(_content_length(header))
            except BaseException:
                if conn is not None:
                    conn[1].close()
                pool.put_nowait(None)  # reconnect on next use
                raise
            pool.put_nowait(conn)
            if header[9:12] != b"200":
                raise RuntimeError(f"HTTP {header[9:12].decode()}: {body[:200]!r}")
            return body

        async def close() -> None:
            while not pool.empty():
                conn = pool.get_nowait()
                if conn is not None:
                    conn[1].close()

        return call, close

    return make


def _content_length(header: bytes) -> int:
    i = header.lower().find(b"\r\ncontent-length:")
    if i < 0:
        raise RuntimeError(f"no Content-Length in response: {header[:200]!r}")
    j = header.index(b"\r\n", i + 2)
    return int(header[i + 17 : j])


def set_bare_sized(bare_url: str, proto: str, answer: bytes) -> None:
    """Make the bare server's sized constant (REST or gRPC) answer ``answer``."""
    import httpx

    r = httpx.put(f"{bare_url}/bare-sized/{proto.lower()}", content=answer, timeout=10.0)
    r.raise_for_status()


def grpc_sync(
    target: str, method: str, requests: Sequence[bytes]
) -> tuple[Call, Callable[[], None]]:
    """(call, close): a unary call with the next pre-serialized request (bytes out)."""
    import grpc

    channel = grpc.insecure_channel(target)
    stub = channel.unary_unary(method)
    nxt = _cycler(requests)
    return (lambda: stub(nxt(), timeout=10.0)), channel.close


def grpc_async(target: str, method: str, requests: Sequence[bytes]) -> AsyncFactory:
    """A factory (call it inside the event loop) of a grpc.aio unary call."""

    async def make() -> tuple[AsyncCall, Callable[[], Awaitable[None]]]:
        import grpc

        channel = grpc.aio.insecure_channel(target)
        stub = channel.unary_unary(method)
        nxt = _cycler(requests)

        async def call() -> bytes:
            return await stub(nxt(), timeout=10.0)

        async def close() -> None:
            await channel.close()

        return call, close

    return make


def redis_async(port: int, db: int, keysets: Sequence[list[bytes]]) -> AsyncFactory:
    """A factory of a raw redis-py asyncio read of the next key set (GET for one key, else
    MGET) over its own connection pool: the store floor at concurrency > 1."""

    async def make() -> tuple[AsyncCall, Callable[[], Awaitable[None]]]:
        import redis.asyncio as aredis

        client = aredis.Redis(host=HOST, port=port, db=db, socket_timeout=30)
        nxt = _cycler(keysets)

        async def call() -> Any:
            keys = nxt()
            return await (client.get(keys[0]) if len(keys) == 1 else client.mget(keys))

        async def close() -> None:
            await client.aclose()

        return call, close

    return make


def interleaved_async(
    factories: dict[str, AsyncFactory],
    *,
    n: int,
    blocks: int,
    concurrency: int,
    max_seconds: float,
    warmup: int,
) -> dict[str, LoadResult]:
    """Like ``loadgen.interleaved`` but for coroutine calls, all on one event loop (so clients
    and connections live for the whole run); ``warmup`` calls run at full concurrency first."""

    async def main() -> dict[str, LoadResult]:
        calls = {name: await make() for name, make in factories.items()}
        out: dict[str, LoadResult] = {}
        per_block = max(concurrency, n // blocks)
        budget = max_seconds / (blocks * len(calls))
        try:
            for name, (call, _) in calls.items():
                await _async_load(call, warmup, concurrency, max_seconds, 0, name)
            for _ in range(blocks):
                for name, (call, _) in calls.items():
                    res = await _async_load(call, per_block, concurrency, budget, 0, name)
                    out[name] = out[name].merged(res) if name in out else res
        finally:
            for _, close in calls.values():
                await close()
        return out

    with frozen_heap():
        return asyncio.run(main())


# ---------------------------------------------------------------------------- metrics scrape


def degraded_count(url: str) -> float:
    """``featurestore_degraded_total`` summed over reasons, from the server's /metrics."""
    import httpx

    text = httpx.get(url + "/metrics", timeout=5.0).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("featurestore_degraded_total"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_breaker_closed(url: str, timeout: float = 10.0) -> None:
    """Wait until the server's circuit breaker is closed (a previous overload may have opened
    it), so one benchmark's aftermath does not leak into the next."""
    import httpx

    deadline = time.monotonic() + timeout
    state = "?"
    while time.monotonic() < deadline:
        r = httpx.get(url + "/health/ready", timeout=5.0)
        state = r.json().get("breaker", "?")
        if r.status_code == 200 and state == "closed":
            return
        time.sleep(0.1)
    raise RuntimeError(f"the server's breaker is still {state} after {timeout:.0f} s")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the floor server (one uvicorn worker, the settings ``featurestore serve`` uses)."""
    import uvicorn

    p = argparse.ArgumentParser(prog="python -m benchmarks._serving")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--grpc-port", type=int, required=True)
    a = p.parse_args(argv)
    os.environ["BENCH_BARE_GRPC_PORT"] = str(a.grpc_port)
    uvicorn.run(
        "benchmarks._serving:bare_app_from_env", factory=True, host=HOST, port=a.port, **UVICORN
    )
    return 0


def bare_app_from_env() -> Any:
    """uvicorn factory of :func:`bare_app` (gRPC port from ``BENCH_BARE_GRPC_PORT``)."""
    return bare_app(int(os.environ["BENCH_BARE_GRPC_PORT"]))


if __name__ == "__main__":
    sys.exit(main())
