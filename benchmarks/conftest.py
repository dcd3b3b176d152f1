"""Benchmark fixtures: one generated repo per session, a private redis-server, the results table.

Scale (environment variables, defaults in brackets): ``FS_BENCH_ENTITIES`` [200000] entities
per view, ``FS_BENCH_ROWS_PER_ENTITY`` [10] feature rows per entity (so ~2M rows per view),
``FS_BENCH_SPINE`` [1000000] spine rows. Two views of 20 float64 features each: ``user_stats``
(ttl 30d, 1% nulls in ``u_f00``) and ``merchant_stats`` (ttl 3d, so some spine rows expire).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from benchmarks import _report
from tests.conftest import RedisProcess, start_redis

HOST = "127.0.0.1"
PROJECT = "bench"
N_FEATURES = 20
DAY_US = 86_400_000_000
VIEWS = {  # view -> (join key, feature prefix, ttl in days)
    "user_stats": ("user_id", "u_f", 30),
    "merchant_stats": ("merchant_id", "m_f", 3),
}
RESULTS = Path(__file__).with_name("results.md")
SMALL_ENTITIES = 5000  # per view, in the small in-process predict repo (embedded_serving)
N_DISTINCT = 256  # distinct one-entity requests cycled through there


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


SCALE = {
    "entities_per_view": _env_int("FS_BENCH_ENTITIES", 200_000),
    "rows_per_entity": _env_int("FS_BENCH_ROWS_PER_ENTITY", 10),
    "spine_rows": _env_int("FS_BENCH_SPINE", 1_000_000),
}


def feature_names(view: str) -> list[str]:
    prefix = VIEWS[view][1]
    return [f"{prefix}{i:02d}" for i in range(N_FEATURES)]


def feature_refs(*views: str) -> list[str]:
    """``view:feature`` references of every feature of ``views``."""
    return [f"{v}:{f}" for v in views for f in feature_names(v)]


@dataclass(frozen=True)
class BenchRepo:
    """The generated feature repo and the facts benchmarks need about its data."""

    path: Path
    spine_path: Path
    n_entities: int
    start_us: int  # materialization window covering every row
    end_us: int

    def source_path(self, view: str) -> Path:
        return self.path / "data" / f"{view}.parquet"

    def config(self, online: dict[str, Any]) -> Any:
        from featurestore.config import config_from_dict

        return config_from_dict({"project": PROJECT, "online_store": online}, self.path)

    def store(self, online: dict[str, Any]) -> Any:
        from featurestore import FeatureStore

        return FeatureStore(config=self.config(online))


_DEFINITIONS = '''"""Benchmark repo: two views of 20 float64 features over generated Parquet."""

from featurestore import Entity, FeatureView, Field, Float64, ParquetSource

user = Entity("user", join_keys=["user_id"])
merchant = Entity("merchant", join_keys=["merchant_id"])

user_stats = FeatureView(
    name="user_stats",
    entities=[user],
    source=ParquetSource("data/user_stats.parquet", timestamp_field="event_timestamp"),
    ttl="30d",
    schema=[Field(f"u_f{i:02d}", Float64) for i in range(20)],
)

merchant_stats = FeatureView(
    name="merchant_stats",
    entities=[merchant],
    source=ParquetSource("data/merchant_stats.parquet", timestamp_field="event_timestamp"),
    ttl="3d",
    schema=[Field(f"m_f{i:02d}", Float64) for i in range(20)],
)
'''


def _write_view(path: Path, view: str, n: int, per: int, base_us: int, seed: int) -> None:
    """``n * per`` rows of (key, event_timestamp, 20 float64), in event-time order."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    key, _prefix, _ttl = VIEWS[view]
    rows = n * per
    ts = base_us + rng.integers(0, 10 * DAY_US - 60_000_000, size=rows, dtype=np.int64)
    # every entity's latest row is in the last 2 days, so no row materialized during the run
    # is near its key expiry (event + ttl + 1d grace) and every rerun writes the same keys;
    # older rows keep gaps longer than the 3d ttl, so the training set still sees expiries
    ts[::per] = base_us + 10 * DAY_US - rng.integers(60_000_000, 2 * DAY_US, size=n)
    ids = np.repeat(np.arange(n, dtype=np.int64), per)
    order = np.argsort(ts, kind="stable")
    ts, ids = ts[order], ids[order]
    arrays: list[Any] = [pa.array(ids), pa.array(ts, type=pa.timestamp("us", tz="UTC"))]
    names = [key, "event_timestamp"]
    for i, name in enumerate(feature_names(view)):
        values = rng.standard_normal(rows)
        mask = rng.random(rows) < 0.01 if (view == "user_stats" and i == 0) else None
        arrays.append(pa.array(values, mask=mask))
        names.append(name)
    pq.write_table(pa.Table.from_arrays(arrays, names=names), path, row_group_size=256 * 1024)


def _write_spine(path: Path, n_entities: int, rows: int, base_us: int, end_us: int) -> None:
    """Random (user, merchant, time) rows, 1% unknown keys, some before any feature row."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(7)
    hi = n_entities + max(1, n_entities // 100)
    table = pa.table(
        {
            "user_id": rng.integers(0, hi, size=rows, dtype=np.int64),
            "merchant_id": rng.integers(0, hi, size=rows, dtype=np.int64),
            "event_timestamp": pa.array(
                rng.integers(base_us - DAY_US, end_us, size=rows, dtype=np.int64),
                type=pa.timestamp("us", tz="UTC"),
            ),
            "label": rng.integers(0, 2, size=rows, dtype=np.int8),
        }
    )
    pq.write_table(table, path, row_group_size=256 * 1024)


@pytest.fixture(scope="session")
def bench_repo(tmp_path_factory: pytest.TempPathFactory) -> BenchRepo:
    """Generate the repo (Parquet sources, spine, definitions) once and apply it."""
    root = tmp_path_factory.mktemp("bench_repo")
    (root / "data").mkdir()
    n, per = SCALE["entities_per_view"], SCALE["rows_per_entity"]
    end_us = time.time_ns() // 1000
    base_us = end_us - 10 * DAY_US
    t0 = time.perf_counter()
    for seed, view in enumerate(VIEWS):
        _write_view(root / "data" / f"{view}.parquet", view, n, per, base_us, seed + 1)
    spine = root / "spine.parquet"
    _write_spine(spine, n, SCALE["spine_rows"], base_us, end_us)
    (root / "definitions.py").write_text(_DEFINITIONS)
    repo = BenchRepo(root, spine, n, base_us - DAY_US, end_us)
    repo.store({"type": "embedded", "path": str(root / "data" / "online")}).apply()
    print(f"\nbench repo generated and applied in {time.perf_counter() - t0:.1f}s at {root}")
    return repo


# ---------------------------------------------------------------------------- redis-server


@dataclass
class EmbeddedServing:
    """The repo, its store and the request entities."""

    repo: Path
    store: Any
    entities: list[dict[str, list[int]]]


@pytest.fixture(scope="module")
def embedded_serving(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServing]:
    """A small embedded-store repo over the benchmark schema, the serving model registered
    (for in-process predict benchmarks; a module's own, well under a minute to build)."""
    import numpy as np

    from benchmarks import _serving as sv
    from featurestore.online.models.repo import service_feature_names
    from featurestore.store import FeatureStore

    root = tmp_path_factory.mktemp("embedded_serving")
    (root / "data").mkdir()
    end_us = time.time_ns() // 1000
    base_us = end_us - 10 * DAY_US
    for seed, view in enumerate(VIEWS):
        _write_view(root / "data" / f"{view}.parquet", view, SMALL_ENTITIES, 2, base_us, seed + 1)
    (root / "definitions.py").write_text(_DEFINITIONS + sv._SERVICES_DEFS)
    (root / "featurestore.yaml").write_text(
        f"project: {PROJECT}\n"
        "online_store:\n  type: embedded\n  path: data/online\n  map_size: 256MB\n"
        "models:\n  poll_interval_s: 5.0\n"
    )
    store = FeatureStore(root)
    store.apply()
    store.materialize(base_us - DAY_US, end_us)
    names = service_feature_names(store, "all40")
    sv.register_model(store, sv.train_model(root / "model.txt", names))
    rng = np.random.default_rng(5)
    ids = rng.integers(0, SMALL_ENTITIES, size=(N_DISTINCT, 2)).tolist()
    try:
        yield EmbeddedServing(root, store, [{"user_id": [u], "merchant_id": [m]} for u, m in ids])
    finally:
        store.close()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """``redis-server --port N --save '' --appendonly no`` for the session, stopped after."""
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


# ---------------------------------------------------------------------------- results table


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        crash = getattr(report.longrepr, "reprcrash", None)
        why = crash.message if crash is not None else str(report.longrepr)
        lines = why.strip().splitlines() or ["?"]
        _report.FAILED.append((item.nodeid, f"{report.when}: {lines[0][:300]}"))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    bs = getattr(session.config, "_benchmarksession", None)
    if not (_report.ROWS or _report.FAILED):
        return
    if bs is not None and bs.disabled:
        print("\nbenchmarks ran disabled (one round each); results.md left unchanged")
        return
    _report.write_results(RESULTS, SCALE)
    print(f"\nresults written to {RESULTS}")
