"""Materialization rows/s into Redis and into the embedded store, each next to its raw floor.

The floor writes exactly the keys and encoded values (and key expiries) our run wrote, read
back from the store after an untimed first run: redis-py pipelined ``SET .. PXAT`` in batches
of ``online_store.write_batch_size``, or LMDB puts of the same items in one transaction. Floor
and ours alternate round by round; the figure is the median round.

``materialize`` is end to end (latest row per entity from Parquet via DuckDB, encode, write);
the ``write path`` rows start from the already-read Arrow batches (encode + keys + write).
"""

from __future__ import annotations

import gc
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from benchmarks import _report
from benchmarks.conftest import PROJECT, VIEWS, BenchRepo, RedisProcess

ROUNDS = 3
WRITE_PATH_ROUNDS = 2  # keeps the whole suite within ~10 minutes on 2 shared cores
# redis-py's pipeline packs each command in Python (~25-40k rows/s here), so the Redis floor
# writes an evenly spread sample of the same items; its rate does not depend on the count
REDIS_FLOOR_ROWS = 100_000
TARGET = 0.7  # ours rows/s / floor rows/s
MAP_SIZE = "8GB"


# ---------------------------------------------------------------------------- floors


def dump_redis(client: Any, chunk: int = 10_000) -> list[tuple[bytes, bytes, int | None]]:
    """Every view row's (key, value, expire-at ms or None) in the Redis database, sorted by key
    (the views' stored watermarks left out: the floor writes rows)."""
    from featurestore.online.keys import is_watermark_key

    keys = sorted(k for k in client.scan_iter(count=chunk) if not is_watermark_key(k))
    out: list[tuple[bytes, bytes, int | None]] = []
    for start in range(0, len(keys), chunk):
        part = keys[start : start + chunk]
        pipe = client.pipeline(transaction=False)
        for k in part:
            pipe.get(k)
            pipe.execute_command("PEXPIRETIME", k)
        res = pipe.execute()
        for i, k in enumerate(part):
            exp = int(res[2 * i + 1])
            out.append((k, res[2 * i], exp if exp > 0 else None))
    return out


def floor_sample(items: list[Any]) -> list[Any]:
    """Every k-th item (both views, spread over the key space), about REDIS_FLOOR_ROWS of them."""
    return items[:: max(1, len(items) // REDIS_FLOOR_ROWS)]


def redis_mset_rate(client: Any, items: list[tuple[bytes, bytes, int | None]], batch: int) -> float:
    """Rows/s of plain MSET (no expiry) of the same payloads: for reference only."""
    client.flushall()
    t0 = time.perf_counter()
    for start in range(0, len(items), batch):
        client.mset({k: v for k, v, _ in items[start : start + batch]})
    rate = len(items) / (time.perf_counter() - t0)
    client.flushall()
    return rate


def redis_floor_write(
    client: Any, items: list[tuple[bytes, bytes, int | None]], batch: int
) -> None:
    """Raw redis-py: one non-transactional pipeline of SETs per ``batch`` items."""
    for start in range(0, len(items), batch):
        pipe = client.pipeline(transaction=False)
        for k, v, e in items[start : start + batch]:
            if e is None:
                pipe.set(k, v)
            else:
                pipe.set(k, v, pxat=e)
        pipe.execute()


def dump_lmdb(path: Path) -> list[tuple[bytes, bytes]]:
    """Every view row's (key, stored value) of an LMDB environment (the store must be closed;
    the views' stored watermarks left out: the floor writes rows)."""
    import lmdb

    from featurestore.online.keys import is_watermark_key

    env = lmdb.open(str(path), readonly=True, lock=False, subdir=True)
    try:
        with env.begin() as txn:
            items = txn.cursor().iternext(keys=True, values=True)
            return [(k, v) for k, v in items if not is_watermark_key(k)]
    finally:
        env.close()


def lmdb_floor_write(path: Path, items: list[tuple[bytes, bytes]]) -> None:
    """Raw lmdb: a fresh environment, every item put in one write transaction."""
    import lmdb

    from featurestore.online.embedded import parse_size

    env = lmdb.open(str(path), map_size=parse_size(MAP_SIZE), subdir=True, readahead=False)
    try:
        with env.begin(write=True) as txn:
            txn.cursor().putmulti(items, dupdata=False, overwrite=True)
    finally:
        env.close()


# ---------------------------------------------------------------------------- Redis


@pytest.fixture(scope="module")
def redis_fs(bench_repo: BenchRepo, redis_server: RedisProcess) -> Any:
    fs = bench_repo.store({"type": "redis", "url": redis_server.url, "socket_timeout": 60.0})
    yield fs
    fs.close()


def _record_rate(
    benchmark: Any,
    request: pytest.FixtureRequest,
    workload: str,
    floor_name: str,
    ours_rows: int,
    ours_times: list[float],
    floor_rows: int,
    floor_times: list[float],
    **extra: Any,
) -> None:
    ours_rate = ours_rows / _report.median(ours_times)
    floor_rate = floor_rows / _report.median(floor_times)
    ratio = ours_rate / floor_rate
    _report.record(
        benchmark,
        workload=workload,
        ours=_report.fmt_rate(ours_rate),
        floor=f"{_report.fmt_rate(floor_rate)}, {floor_name}",
        ratio=ratio,
        target=f"rate ratio >= {TARGET}",
        met=ratio >= TARGET,
        nodeid=request.node.nodeid,
        ours_rows_per_s=ours_rate,
        floor_rows_per_s=floor_rate,
        ours_rows=ours_rows,
        floor_rows=floor_rows,
        ours_rounds_s=ours_times,
        floor_rounds_s=floor_times,
        **extra,
    )


def test_materialize_redis(
    benchmark: Any,
    bench_repo: BenchRepo,
    redis_fs: Any,
    redis_server: RedisProcess,
    request: pytest.FixtureRequest,
) -> None:
    client = redis_server.client(socket_timeout=30)
    client.flushall()
    first = redis_fs.materialize(bench_repo.start_us, bench_repo.end_us)  # untimed warm-up
    items = dump_redis(client)
    assert len(items) == first.total_rows, "rows reported written != keys in Redis"
    assert first.total_rows >= 0.95 * len(VIEWS) * bench_repo.n_entities
    batch = redis_fs.config.online_store.write_batch_size
    sample = floor_sample(items)
    mset = redis_mset_rate(client, sample, batch)
    floor_times: list[float] = []
    ours_times: list[float] = []
    timed_floor = _report.timed(lambda: redis_floor_write(client, sample, batch), floor_times)

    def setup() -> None:
        client.flushall()
        gc.collect()
        timed_floor()
        client.flushall()
        gc.collect()

    def ours() -> Any:
        return redis_fs.materialize(bench_repo.start_us, bench_repo.end_us)

    result = benchmark.pedantic(_report.timed(ours, ours_times), setup=setup, rounds=ROUNDS)
    _record_rate(
        benchmark,
        request,
        f"materialize into Redis, {result.total_rows:,} rows x 20 float64 (2 views)",
        f"redis-py pipelined SET x{batch:,}",
        result.total_rows,
        ours_times,
        len(sample),
        floor_times,
        floor_mset_no_expiry_rows_per_s=mset,
    )
    _report.NOTES.append(
        f"- For reference, redis-py MSET of the same payloads (no expiry, so not the same "
        f"writes): {_report.fmt_rate(mset)}."
    )
    assert dump_redis(client) == items, "a rerun over the same window wrote different bytes"


def latest_tables(fs: Any, repo: BenchRepo) -> list[tuple[Any, Any]]:
    """(view, Arrow table of its latest rows): what materialize reads, read once up front."""
    import pyarrow as pa

    out = []
    for name in VIEWS:
        view = fs.get_feature_view(name)
        batches = fs.offline.iter_latest_rows(view, repo.start_us, repo.end_us)
        out.append((view, pa.Table.from_batches(list(batches))))
    return out


def write_path(fs: Any, tables: list[tuple[Any, Any]]) -> Callable[[], int]:
    """A call doing materialize's write half: keys + encode + store writes, for every view,
    through the only-newer check materialize writes with (into an empty store here)."""
    from featurestore._time import duration_us, now_us, parse_duration
    from featurestore.online.writer import write_table

    cfg = fs.config.online_store
    grace = duration_us(parse_duration(cfg.key_ttl_grace)) or 0

    def run() -> int:
        now = now_us()
        return sum(
            write_table(fs.online, PROJECT, view, t, now_us=now, key_ttl_grace_us=grace,
                        batch_size=cfg.write_batch_size, only_newer=True)
            for view, t in tables
        )  # fmt: skip

    return run


def test_materialize_redis_write_path(
    benchmark: Any,
    bench_repo: BenchRepo,
    redis_fs: Any,
    redis_server: RedisProcess,
    request: pytest.FixtureRequest,
) -> None:
    """Encode + keys + write only: the Arrow batches come from the offline store beforehand."""
    client = redis_server.client(socket_timeout=30)
    ours = write_path(redis_fs, latest_tables(redis_fs, bench_repo))
    client.flushall()
    ours()
    items = dump_redis(client)
    batch = redis_fs.config.online_store.write_batch_size
    sample = floor_sample(items)
    floor_times: list[float] = []
    ours_times: list[float] = []
    timed_floor = _report.timed(lambda: redis_floor_write(client, sample, batch), floor_times)

    def setup() -> None:
        client.flushall()
        gc.collect()
        timed_floor()
        client.flushall()
        gc.collect()

    rows = benchmark.pedantic(
        _report.timed(ours, ours_times), setup=setup, rounds=WRITE_PATH_ROUNDS
    )
    _record_rate(
        benchmark,
        request,
        f"materialize write path into Redis (keys + encode + SET), {rows:,} rows",
        f"redis-py pipelined SET x{batch:,}",
        rows,
        ours_times,
        len(sample),
        floor_times,
    )
    assert rows == len(items)


# ---------------------------------------------------------------------------- embedded (LMDB)


def test_materialize_embedded(
    benchmark: Any, bench_repo: BenchRepo, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    ours_path = tmp_path / "ours"
    floor_path = tmp_path / "floor"
    fs = bench_repo.store({"type": "embedded", "path": str(ours_path), "map_size": MAP_SIZE})
    try:
        first = fs.materialize(bench_repo.start_us, bench_repo.end_us)  # untimed warm-up
        fs.online.close()
        items = dump_lmdb(ours_path)
        assert len(items) == first.total_rows, "rows reported written != keys in LMDB"
        floor_times: list[float] = []
        ours_times: list[float] = []

        def floor_round() -> None:
            lmdb_floor_write(floor_path, items)

        timed_floor = _report.timed(floor_round, floor_times)

        def setup() -> None:
            shutil.rmtree(floor_path, ignore_errors=True)
            gc.collect()
            timed_floor()
            shutil.rmtree(floor_path, ignore_errors=True)
            fs.online.close()  # reopened on first use, on an empty folder
            shutil.rmtree(ours_path, ignore_errors=True)
            gc.collect()

        def ours() -> Any:
            return fs.materialize(bench_repo.start_us, bench_repo.end_us)

        result = benchmark.pedantic(_report.timed(ours, ours_times), setup=setup, rounds=ROUNDS)
        fs.online.close()
        _record_rate(
            benchmark,
            request,
            f"materialize into embedded (LMDB), {result.total_rows:,} rows x 20 float64",
            "raw lmdb putmulti, one txn",
            result.total_rows,
            ours_times,
            len(items),
            floor_times,
        )
        assert dump_lmdb(ours_path) == items, "a rerun over the same window wrote different bytes"
    finally:
        fs.close()


def test_materialize_embedded_write_path(
    benchmark: Any, bench_repo: BenchRepo, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Keys + encode + LMDB writes only, from the already-read latest rows."""
    ours_path = tmp_path / "ours"
    floor_path = tmp_path / "floor"
    fs = bench_repo.store({"type": "embedded", "path": str(ours_path), "map_size": MAP_SIZE})
    try:
        ours = write_path(fs, latest_tables(fs, bench_repo))
        rows = ours()
        fs.online.close()
        items = dump_lmdb(ours_path)
        floor_times: list[float] = []
        ours_times: list[float] = []
        timed_floor = _report.timed(lambda: lmdb_floor_write(floor_path, items), floor_times)

        def setup() -> None:
            shutil.rmtree(floor_path, ignore_errors=True)
            gc.collect()
            timed_floor()
            shutil.rmtree(floor_path, ignore_errors=True)
            fs.online.close()
            shutil.rmtree(ours_path, ignore_errors=True)
            gc.collect()

        rows = benchmark.pedantic(
            _report.timed(ours, ours_times), setup=setup, rounds=WRITE_PATH_ROUNDS
        )
        fs.online.close()
        _record_rate(
            benchmark,
            request,
            f"materialize write path into embedded (keys + encode + put), {rows:,} rows",
            "raw lmdb putmulti, one txn",
            rows,
            ours_times,
            len(items),
            floor_times,
        )
        assert rows == len(items)
    finally:
        fs.close()
