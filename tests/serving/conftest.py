"""A small served repo (two views, one service, LightGBM models) and real servers on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

DEFS = """
from featurestore import (Entity, FeatureService, FeatureView, Field, Float64, Int64,
                          ParquetSource, String)

user = Entity("user", join_keys=["user_id"])
merchant = Entity("merchant", join_keys=["merchant_id"])
user_stats = FeatureView(
    name="user_stats",
    entities=[user],
    source=ParquetSource("data/users.parquet"),
    ttl="2d",
    schema=[Field("tx_count", Int64, default=0), Field("amount_mean", Float64, default=-1.0),
            Field("country", String, default="??")],
)
merchant_stats = FeatureView(
    name="merchant_stats",
    entities=[merchant],
    source=ParquetSource("data/merchants.parquet"),
    schema=[Field("risk", Float64, default=0.5)],
)
scoring = FeatureService(name="scoring", features=[
    "user_stats:tx_count", "user_stats:amount_mean", "merchant_stats:risk"])
everything = FeatureService(name="everything", features=[user_stats, merchant_stats])
"""


@contextlib.contextmanager
def cli_serve(repo: Path, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """``featurestore -r REPO serve ARGS`` in a subprocess (output piped), stopped at exit."""
    code = (
        "from featurestore.cli import cli; from featurestore._cli_serve import register_commands;"
        " register_commands(cli); cli()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "-r", str(repo), "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def free_port() -> int:
    """A free loopback TCP port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


MODEL_FEATURES = ["tx_count", "amount_mean", "risk"]
N_USERS = 50
N_MERCHANTS = 10


def expected_user(uid: int) -> dict[str, Any]:
    return {"tx_count": uid * 10, "amount_mean": uid * 1.5, "country": f"c{uid % 3}"}


def _write_data(repo: Path) -> None:
    now = datetime.now(timezone.utc) - timedelta(hours=1)
    (repo / "data").mkdir(parents=True, exist_ok=True)
    uids = list(range(1, N_USERS + 1))
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array(uids, pa.int64()),
                "event_timestamp": pa.array([now] * N_USERS, pa.timestamp("us", tz="UTC")),
                "tx_count": pa.array([expected_user(u)["tx_count"] for u in uids], pa.int64()),
                "amount_mean": pa.array(
                    [expected_user(u)["amount_mean"] for u in uids], pa.float64()
                ),
                "country": pa.array([expected_user(u)["country"] for u in uids], pa.string()),
            }
        ),
        repo / "data" / "users.parquet",
    )
    mids = list(range(1, N_MERCHANTS + 1))
    pq.write_table(
        pa.table(
            {
                "merchant_id": pa.array(mids, pa.int64()),
                "event_timestamp": pa.array([now] * N_MERCHANTS, pa.timestamp("us", tz="UTC")),
                "risk": pa.array([m / 10 for m in mids], pa.float64()),
            }
        ),
        repo / "data" / "merchants.parquet",
    )


def train_model(
    path: Path, *, seed: int, names: list[str] = MODEL_FEATURES, trees: int = 20
) -> Path:
    """A small LightGBM binary model over ``names``, saved to ``path``."""
    import lightgbm as lgb

    rng = np.random.default_rng(seed)
    x = rng.random((500, len(names))) * [500, 75, 1][: len(names)] + 0
    y = (x[:, -1] + rng.normal(0, 0.2, 500) > 0.5).astype(float)
    booster = lgb.train(
        {"objective": "binary", "verbose": -1, "num_threads": 1, "seed": seed},
        lgb.Dataset(x, y, feature_name=names),
        trees,
    )
    booster.save_model(str(path))
    return path


def make_repo(
    root: Path,
    *,
    online: str = "embedded",
    redis_url: str = "",
    serving: str = "",
    defs: str = DEFS,
) -> Path:
    """Write config + definitions + data, apply, materialize, register model 'fraud' v1 and v2."""
    from featurestore.online.models.repo import model_registry, service_feature_names
    from featurestore.store import FeatureStore

    repo = root
    repo.mkdir(parents=True, exist_ok=True)
    if online == "embedded":
        online_cfg = "online_store:\n  type: embedded\n  path: data/online\n  map_size: 256MB\n"
    else:
        online_cfg = (
            f"online_store:\n  type: redis\n  url: {redis_url}\n"
            "  connect_timeout: 0.2\n  socket_timeout: 0.2\n"
        )
    (repo / "featurestore.yaml").write_text(
        "project: servetest\n"
        + online_cfg
        + "models:\n  poll_interval_s: 0.05\n"
        + (textwrap.dedent(serving) if serving else "")
    )
    (repo / "definitions.py").write_text(defs)
    _write_data(repo)
    store = FeatureStore(repo)
    store.apply()
    store.materialize(datetime.now(timezone.utc) - timedelta(days=1), datetime.now(timezone.utc))
    reg = model_registry(store)
    names = service_feature_names(store, "scoring")
    for seed in (1, 2):
        art = train_model(root / f"model{seed}.txt", seed=seed, trees=10 * seed)
        reg.register(
            "fraud",
            flavor="lightgbm",
            artifact=art,
            feature_service="scoring",
            service_features=names,
        )
    reg.set_alias("fraud", 1, "production")
    store.close()
    return repo


@contextlib.contextmanager
def served_python_model(
    root: Path, project: str, defs: str, model: str, inputs: list[str]
) -> Iterator[ServerThread]:
    """Serve ``root`` (its ``data/`` written by the caller) with this config, ``defs`` and the
    python model ``model`` registered as 'm' v1, production, reading ``inputs`` of service
    'svc'; applied and materialized first. Yields the started server (stopped at exit)."""
    from featurestore.online.models.repo import model_registry
    from featurestore.store import FeatureStore

    (root / "featurestore.yaml").write_text(
        f"project: {project}\nonline_store:\n  type: embedded\n  path: data/online\n"
        "models:\n  poll_interval_s: 0.05\n"
    )
    (root / "definitions.py").write_text(textwrap.dedent(defs))
    (root / "model.py").write_text(model)
    with FeatureStore(root) as store:
        store.apply()
        store.materialize_incremental(datetime.now(timezone.utc))
        reg = model_registry(store)
        reg.register(
            "m", flavor="python", artifact=root / "model.py", feature_service="svc",
            service_features=inputs,
        )  # fmt: skip
        reg.set_alias("m", 1, "production")
    server = ServerThread.of_repo(root).start()
    try:
        yield server
    finally:
        server.stop()


def unapplied_repo(root: Path) -> Path:
    """A repo with config, definitions and data, not applied: a server over it is live, not
    ready."""
    repo = root / "repo"
    repo.mkdir()
    (repo / "featurestore.yaml").write_text(
        "project: late\nonline_store:\n  type: embedded\n  path: data/online\n  map_size: 64MB\n"
    )
    (repo / "definitions.py").write_text(DEFS)
    _write_data(repo)
    return repo


@pytest.fixture(scope="session")
def served_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An embedded-store repo shared by the read-only tests (never mutate its aliases)."""
    return make_repo(tmp_path_factory.mktemp("served") / "repo")


@pytest.fixture
def fresh_repo(tmp_path: Path) -> Path:
    """A private embedded-store repo for tests that push, promote or break things."""
    return make_repo(tmp_path / "repo")


class ServerThread:
    """uvicorn (+ the gRPC server in its lifespan) on free loopback ports, in a thread."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            loop="auto",
            log_level="warning",
            lifespan="on",
            access_log=False,
        )
        self.server = uvicorn.Server(config)
        self.app = app
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:  # the loop `featurestore serve` runs on (uvicorn's "auto"): uvloop when installed
            import uvloop
        except ImportError:
            asyncio.run(self.server.serve())
        else:
            uvloop.run(self.server.serve())

    def start(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        engine = self.app.state.engine
        while not engine._started and time.monotonic() < deadline:
            time.sleep(0.01)
        return self

    @classmethod
    def of_repo(cls, repo: Path) -> ServerThread:
        """A server (not started) over ``repo``'s engine, gRPC on a free port."""
        from featurestore.online.serving.engine import Engine
        from featurestore.online.serving.rest import create_app

        return cls(create_app(Engine.from_repo(str(repo)), grpc_port=0, own_engine=True))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.app.state.grpc_port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


@pytest.fixture
def serve() -> Iterator[Callable[..., ServerThread]]:
    """``serve(repo)`` -> a started ServerThread (REST + gRPC); stopped after the test."""
    started: list[ServerThread] = []

    def start(repo: Path) -> ServerThread:
        s = ServerThread.of_repo(repo).start()
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


@pytest.fixture(scope="session")
def shared_server(served_repo: Path) -> Iterator[ServerThread]:
    """One server over ``served_repo`` for all read-only endpoint tests."""
    s = ServerThread.of_repo(served_repo).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(shared_server: ServerThread) -> Iterator[Any]:
    """An HTTP client of the shared server."""
    import httpx

    with httpx.Client(base_url=shared_server.url, timeout=10) as c:
        yield c
