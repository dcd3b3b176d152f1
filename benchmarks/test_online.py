"""Online lookups, p50/p99, next to raw reads of the same keys, on Redis and on the embedded store.

Workloads: 1 entity x 20 features (one view, one key) and 100 entities x 40 features from two
views (200 keys). Ours is ``FeatureStore.get_online_features(...).to_dict()`` (what a caller
gets: plain lists); the floor is redis-py ``GET`` / ``MGET`` of the same keys (or LMDB gets in
one read transaction, on an identical copy of the data). Both walk the same entity sequence,
alternating in blocks (benchmarks.loadgen.interleaved) so load from other processes on the
machine hits both alike. Percentiles come from the load generator's raw timings.
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Callable
from typing import Any

import pytest

from benchmarks import _report
from benchmarks.conftest import PROJECT, VIEWS, BenchRepo, RedisProcess, feature_refs
from benchmarks.loadgen import LoadResult, interleaved

CALLS = {1: 4000, 100: 2000}  # lookups per target, per workload (entities per request)
BLOCK = 50  # calls per target before switching: fine-grained, so drift hits all alike
PEDANTIC_ROUNDS = 300  # extra rounds of ours for pytest-benchmark's own table
FACTOR, SLACK_US = 1.5, 50.0  # target: ours p99 <= FACTOR * floor p99 + SLACK_US


def target_text() -> str:
    return f"p99 <= {FACTOR}x floor + {SLACK_US:.0f} us"


def entity_batches(repo: BenchRepo, size: int, count: int, seed: int) -> list[list[dict[str, int]]]:
    """``count`` requests of ``size`` entity rows (user_id, merchant_id), all known entities."""
    import numpy as np

    rng = np.random.default_rng(seed)
    ids = rng.integers(0, repo.n_entities, size=(count, size, 2)).tolist()
    return [[{"user_id": u, "merchant_id": m} for u, m in req] for req in ids]


def request_keys(views: tuple[str, ...], batch: list[dict[str, int]]) -> list[bytes]:
    """The store keys a request reads: every view's key for every entity row, view by view."""
    from featurestore.online.keys import build_keys

    keys: list[bytes] = []
    for view in views:
        key = VIEWS[view][0]
        keys += build_keys(PROJECT, view, (key,), [[row[key] for row in batch]])
    return keys


def cycling(fn: Callable[[Any], Any], inputs: list[Any]) -> Callable[[], Any]:
    """A no-argument call that feeds ``fn`` the next input each time (round robin)."""
    it = itertools.cycle(inputs)
    return lambda: fn(next(it))


@pytest.fixture(scope="module")
def redis_online(bench_repo: BenchRepo, redis_server: RedisProcess) -> Any:
    """A FeatureStore on the session redis-server with every view materialized."""
    fs = bench_repo.store({"type": "redis", "url": redis_server.url, "socket_timeout": 30.0})
    redis_server.client(socket_timeout=30).flushall()
    fs.materialize(bench_repo.start_us, bench_repo.end_us)
    yield fs
    fs.close()


@pytest.fixture(scope="module")
def embedded_online(bench_repo: BenchRepo, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """(FeatureStore on a materialized embedded store, raw lmdb env on an identical copy)."""
    import lmdb

    root = tmp_path_factory.mktemp("online_embedded")
    fs = bench_repo.store({"type": "embedded", "path": str(root / "ours"), "map_size": "8GB"})
    fs.materialize(bench_repo.start_us, bench_repo.end_us)
    fs.online.close()  # never two handles on one LMDB file in one process
    src = lmdb.open(str(root / "ours"), readonly=True, lock=False)
    with src.begin() as txn:
        items = list(txn.cursor().iternext())
    src.close()
    copy = root / "floor"
    shutil.rmtree(copy, ignore_errors=True)
    env = lmdb.open(str(copy), map_size=8 << 30, readahead=False, max_readers=512)
    with env.begin(write=True) as txn:
        txn.cursor().putmulti(items)
    yield fs, env
    env.close()
    fs.close()


def _run(
    benchmark: Any,
    request: pytest.FixtureRequest,
    *,
    backend: str,
    fs: Any,
    floor_read: Callable[[list[bytes]], Any],
    floor_name: str,
    size: int,
    views: tuple[str, ...],
    bench_repo: BenchRepo,
) -> None:
    features = feature_refs(*views)
    batches = entity_batches(bench_repo, size, 256, seed=size)
    keys = [request_keys(views, b) for b in batches]

    # the floor must see the values ours serves: every key of a sample request is there
    assert all(v is not None for v in floor_read(keys[0])), "floor found missing keys"
    first = fs.get_online_features(features, batches[0]).to_dict()
    assert len(first) == len(features) + len({VIEWS[v][0] for v in views})
    assert all(len(col) == size for col in first.values())

    ours = cycling(lambda rows: fs.get_online_features(features, rows).to_dict(), batches)
    raw = cycling(lambda rows: fs.get_online_features(features, rows), batches)
    floor = cycling(floor_read, keys)
    res = interleaved(
        {"floor": floor, "ours": ours, "ours_no_to_dict": raw},
        n=CALLS[size],
        blocks=CALLS[size] // BLOCK,
        max_seconds=120,
    )
    for r in res.values():
        assert not r.errors, r.first_error
    benchmark.pedantic(ours, rounds=PEDANTIC_ROUNDS, warmup_rounds=20)

    o, f, lo = res["ours"], res["floor"], res["ours_no_to_dict"]
    met = o.p99_us <= FACTOR * f.p99_us + SLACK_US
    n_keys = size * len(views)
    row = _report.record(
        benchmark,
        workload=(
            f"online {backend}, {size} entit{'y' if size == 1 else 'ies'} x "
            f"{len(features)} features ({len(views)} view{'s' * (len(views) > 1)}, "
            f"{n_keys} key{'s' * (n_keys > 1)})"
        ),
        ours=_pcts(o),
        floor=f"{_pcts(f)}, {floor_name}",
        ratio=o.p99_us / f.p99_us,
        target=target_text(),
        met=met,
        nodeid=request.node.nodeid,
        ours_p50_us=o.p50_us,
        ours_p99_us=o.p99_us,
        ours_p999_us=o.p999_us,
        floor_p50_us=f.p50_us,
        floor_p99_us=f.p99_us,
        floor_p999_us=f.p999_us,
        ours_no_to_dict_p50_us=lo.p50_us,
        ours_no_to_dict_p99_us=lo.p99_us,
        calls_each=o.n,
        ours_lookups_per_s=o.throughput,
        floor_lookups_per_s=f.throughput,
    )
    _report.NOTES.append(
        f"- {row.workload}: without `.to_dict()` (the columnar response only) {_pcts(lo)}."
    )


def _pcts(r: LoadResult) -> str:
    return f"p50 {_report.fmt_us(r.p50_us)} / p99 {_report.fmt_us(r.p99_us)}"


ONE = ("user_stats",)
TWO = ("user_stats", "merchant_stats")


@pytest.mark.parametrize(("size", "views"), [(1, ONE), (100, TWO)], ids=["1x20", "100x40"])
def test_online_redis(
    benchmark: Any,
    request: pytest.FixtureRequest,
    bench_repo: BenchRepo,
    redis_online: Any,
    redis_server: RedisProcess,
    size: int,
    views: tuple[str, ...],
) -> None:
    import redis

    client = redis.Redis(host="127.0.0.1", port=redis_server.port)  # hiredis parser if installed
    if size == 1:
        floor_read, name = (lambda ks: [client.get(ks[0])]), "redis-py GET"
    else:
        floor_read, name = client.mget, f"redis-py MGET of {size * len(views)} keys"
    _run(
        benchmark,
        request,
        backend="Redis",
        fs=redis_online,
        floor_read=floor_read,
        floor_name=name,
        size=size,
        views=views,
        bench_repo=bench_repo,
    )
    client.close()


@pytest.mark.parametrize(("size", "views"), [(1, ONE), (100, TWO)], ids=["1x20", "100x40"])
def test_online_embedded(
    benchmark: Any,
    request: pytest.FixtureRequest,
    bench_repo: BenchRepo,
    embedded_online: Any,
    size: int,
    views: tuple[str, ...],
) -> None:
    fs, env = embedded_online

    def floor_read(keys: list[bytes]) -> list[bytes | None]:
        with env.begin() as txn:
            get = txn.get
            return [get(k) for k in keys]

    _run(
        benchmark,
        request,
        backend="embedded",
        fs=fs,
        floor_read=floor_read,
        floor_name="raw lmdb gets, one txn",
        size=size,
        views=views,
        bench_repo=bench_repo,
    )
