"""Shared fixtures: private redis-server processes, a local Redis Cluster, online backends.

Every fixture here starts real servers on free loopback ports and stops them at the end.
``online_backend`` runs one test on each online store (embedded, redis, redis_cluster).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from featurestore.config import OnlineStoreConfig, RepoConfig

HOST = "127.0.0.1"
_START_TIMEOUT_S = 10.0


def redis_server_binary() -> str:
    """Path of redis-server; fails the test with how to install it when it is missing."""
    path = shutil.which("redis-server")
    if path is None:
        pytest.fail(
            "redis-server is not installed; the online tests need a real Redis 7. Install it "
            "with `apt-get install -y redis-server` (or put redis-server on PATH)",
            pytrace=False,
        )
    return path


def free_port(*, with_bus: bool = False) -> int:
    """A free loopback TCP port (and port + 10000 free too, for a cluster bus)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        if not with_bus:
            return port
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind((HOST, port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair found for a redis cluster node")


@dataclass
class RedisProcess:
    """One running redis-server."""

    port: int
    proc: subprocess.Popen[bytes]
    workdir: Path

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def client(self, *, socket_timeout: float = 5.0) -> Any:
        import redis

        return redis.Redis(host=HOST, port=self.port, socket_timeout=socket_timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def start_redis(
    workdir: Path, *extra: str, with_bus: bool = False, port: int | None = None
) -> RedisProcess:
    """Start ``redis-server --port N --save '' --appendonly no`` and wait until it answers.

    ``port``: that port (e.g. a restart in place of a killed server), else a free one.
    """
    import redis

    binary = redis_server_binary()
    workdir.mkdir(parents=True, exist_ok=True)
    last: Exception | None = None
    fixed = port
    # a free port taken between free_port() and bind: try another
    for _attempt in range(3 if fixed is None else 1):
        port = free_port(with_bus=with_bus) if fixed is None else fixed
        log = open(workdir / f"redis-{port}.log", "wb")
        proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                HOST,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(workdir),
                *extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        server = RedisProcess(port, proc, workdir)
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if server.client().ping():
                    return server
            except redis.RedisError as exc:
                last = exc
            time.sleep(0.02)
        server.stop()
    log_text = "\n".join(p.read_text()[-2000:] for p in workdir.glob("redis-*.log"))
    raise RuntimeError(f"redis-server did not start ({last}); log:\n{log_text}")


@dataclass
class RedisCluster:
    """A running local Redis Cluster (primaries only)."""

    nodes: list[RedisProcess]

    @property
    def url(self) -> str:
        return self.nodes[0].url.rsplit("/", 1)[0]

    @property
    def urls(self) -> list[str]:
        return [n.url.rsplit("/", 1)[0] for n in self.nodes]

    def flushall(self) -> None:
        for n in self.nodes:
            n.client().flushall()

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


def start_redis_cluster(workdir: Path, size: int = 3) -> RedisCluster:
    """Start ``size`` cluster-enabled redis-servers, give each a slot range, wait for state ok."""
    nodes: list[RedisProcess] = []
    try:
        for i in range(size):
            nodes.append(
                start_redis(
                    workdir / f"node{i}",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "5000",
                    with_bus=True,
                )
            )
        clients = [n.client() for n in nodes]
        per = 16384 // size
        for i, c in enumerate(clients):
            last = 16383 if i == size - 1 else (i + 1) * per - 1
            c.execute_command("CLUSTER", "ADDSLOTSRANGE", i * per, last)
        for c in clients[1:]:
            c.execute_command("CLUSTER", "MEET", HOST, nodes[0].port)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            infos = [c.execute_command("CLUSTER", "INFO") for c in clients]
            texts = [i.decode() if isinstance(i, bytes) else str(i) for i in infos]
            if all("cluster_state:ok" in t and f"cluster_known_nodes:{size}" in t for t in texts):
                return RedisCluster(nodes)
            time.sleep(0.05)
        raise RuntimeError(f"redis cluster did not reach cluster_state:ok: {texts}")
    except BaseException:
        for n in nodes:
            n.stop()
        raise


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """A private redis-server for the whole session (``.url``, ``.port``, ``.client()``)."""
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisProcess) -> str:
    """The session redis-server's URL, flushed before the test."""
    redis_server.client().flushall()
    return redis_server.url


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A 3-node local Redis Cluster for the whole session (``.url`` is any node)."""
    cluster = start_redis_cluster(tmp_path_factory.mktemp("redis_cluster"))
    yield cluster
    cluster.stop()


@pytest.fixture
def redis_cluster_url(redis_cluster: RedisCluster) -> str:
    """The session cluster's URL (one node), flushed before the test."""
    redis_cluster.flushall()
    return redis_cluster.url


def online_config(
    kind: str, tmp_path: Path, *, url: str = "", project: str = "test", **online: Any
) -> RepoConfig:
    """A RepoConfig for one online backend: embedded (in tmp_path), redis or redis_cluster."""
    cfg = OnlineStoreConfig(type=kind, path=str(tmp_path / "online"), map_size="1GB")  # type: ignore[arg-type]
    if url:
        cfg = replace(cfg, url=url)
    if online:
        cfg = replace(cfg, **online)
    return RepoConfig(project=project, repo_path=tmp_path, online_store=cfg)


ONLINE_BACKENDS = ("embedded", "redis", "redis_cluster")


@pytest.fixture(params=ONLINE_BACKENDS)
def online_backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[RepoConfig, Any]]:
    """(config, open store) for each online backend, empty at the start of the test."""
    from featurestore.online.base import open_online_store

    kind = request.param
    url = ""
    if kind == "redis":
        url = request.getfixturevalue("redis_url")
    elif kind == "redis_cluster":
        url = request.getfixturevalue("redis_cluster_url")
    config = online_config(kind, tmp_path, url=url)
    store = open_online_store(config)
    yield config, store
    store.close()


@pytest.fixture
def make_online_config() -> Any:
    """The :func:`online_config` factory, for tests that build their own backends."""
    return online_config


@pytest.fixture
def unused_port() -> int:
    """A loopback port with nothing listening on it."""
    return free_port()
