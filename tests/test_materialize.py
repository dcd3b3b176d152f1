"""Materialization is repeatable: a rerun writes the same bytes, and a run killed midway,
run again, leaves exactly the state of a clean run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore import FeatureStore
from featurestore.online.keys import is_watermark_key

from .conftest import online_config

DEFS = """
from featurestore import Entity, FeatureView, Field, Float64, Int64, ParquetSource

user = Entity("user", join_keys=["user_id"])
stats = FeatureView(
    name="stats", entities=[user], ttl="30d",
    source=ParquetSource("data/stats.parquet"),
    schema=[Field("n", Int64)] + [Field(f"f{i}", Float64) for i in range(8)],
)
"""


def make_repo(root: Path, entities: int, seed: int = 3) -> tuple[Path, datetime]:
    """A repo with two rows per entity (the later one must win) ending at a round time T."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "definitions.py").write_text(textwrap.dedent(DEFS))
    (root / "data").mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    t = datetime.now(timezone.utc).replace(microsecond=0)
    t_us = int(t.timestamp()) * 1_000_000
    n = 2 * entities
    ids = np.concatenate([np.arange(entities), np.arange(entities)])
    ts = t_us - rng.integers(0, 5 * 86_400_000_000, n)
    cols = {f"f{i}": rng.normal(size=n) for i in range(8)}
    pq.write_table(
        pa.table(
            {
                "user_id": ids,
                "event_timestamp": pa.array(ts, pa.timestamp("us", tz="UTC")),
                "n": rng.integers(0, 100, n),
                **cols,
            }
        ),
        root / "data" / "stats.parquet",
    )
    return root, t


# a map larger than any store's here: a writer growing the file meanwhile (a materialize
# still running) would otherwise fail our read with MDB_MAP_RESIZED
_READ_ONLY = {"readonly": True, "lock": False, "map_size": 1 << 36}


def dump(config, *, watermarks: bool = False) -> dict[bytes, bytes]:
    """Every key and value the online store holds (raw bytes), read with the backend's own
    client; the views' rows only, unless ``watermarks`` (the stored watermark keys too)."""
    kind = config.online_store.type
    if kind == "embedded":
        import lmdb

        env = lmdb.open(config.resolve(config.online_store.path), **_READ_ONLY)
        with env.begin() as txn:
            data = dict(txn.cursor())
        env.close()
    else:
        import redis

        client = redis.Redis.from_url(config.online_store.url)
        keys = sorted(client.scan_iter(count=10_000))
        values = client.mget(keys) if keys else []
        client.close()
        data = dict(zip(keys, values, strict=True))
    return {k: v for k, v in data.items() if watermarks or not is_watermark_key(k)}


def count(config) -> int:
    if config.online_store.type == "embedded":
        import lmdb

        path = config.resolve(config.online_store.path)
        if not os.path.exists(os.path.join(path, "data.mdb")):
            return 0
        env = lmdb.open(path, **_READ_ONLY)
        n = env.stat()["entries"]
        env.close()
        return n
    import redis

    return redis.Redis.from_url(config.online_store.url).dbsize()


def backend_config(kind: str, repo: Path, request) -> object:
    url = request.getfixturevalue("redis_url") if kind == "redis" else ""
    return online_config(kind, repo, url=url, project="mat", write_batch_size=2000)


@pytest.mark.parametrize("kind", ["embedded", "redis"])
def test_rerun_over_the_same_window_writes_the_same_bytes(kind: str, tmp_path, request) -> None:
    repo, t = make_repo(tmp_path / "repo", entities=3000)
    config = backend_config(kind, repo, request)
    with FeatureStore(config=config) as store:
        store.apply()
        first = store.materialize(t - timedelta(days=10), t)
    before = dump(config)
    with FeatureStore(config=config) as store:
        second = store.materialize(t - timedelta(days=10), t)
    after = dump(config)
    assert first.rows == second.rows == {"stats": 3000}
    assert len(before) == 3000
    assert before == after


def test_an_incremental_run_ending_before_the_watermark_keeps_newer_values(tmp_path) -> None:
    repo, t = make_repo(tmp_path / "repo", entities=300)
    config = online_config("embedded", repo, project="mat")
    with FeatureStore(config=config) as store:
        store.apply()
        assert store.materialize_incremental(t).rows == {"stats": 300}
    newest = dump(config)
    # the older row of entity 0: an incremental run ending exactly at its time would write it
    src = pq.read_table(repo / "data" / "stats.parquet").to_pydict()
    pairs = zip(src["user_id"], src["event_timestamp"], strict=True)
    older = min(ts for uid, ts in pairs if uid == 0)
    with FeatureStore(config=config) as store:
        for end in (older, t - timedelta(days=6), t):  # before the watermark, then at it
            assert store.materialize_incremental(end).rows == {"stats": 0}
        assert store.registry.materialization["stats"]["watermark_us"] == int(t.timestamp() * 1e6)
    assert dump(config) == newest
    with FeatureStore(config=config) as store:  # an older explicit window keeps newer rows
        store.materialize(t - timedelta(days=3), t - timedelta(days=2))
    assert dump(config) == newest
    with FeatureStore(config=config) as store:  # overwrite=True rewrites the past
        window = (t - timedelta(days=3), t - timedelta(days=2))
        assert store.materialize(*window, overwrite=True).rows["stats"] > 0
    assert dump(config) != newest


def test_a_watermark_belongs_to_the_store_it_was_written_to(tmp_path, request) -> None:
    """Switching the online store (the embedded one, then a Redis server) starts the
    incremental record afresh: the new store gets every row, not only rows after the old
    store's watermark. Switching back finds the record of the store then in use."""
    repo, t = make_repo(tmp_path / "repo", entities=300)
    embedded = online_config("embedded", repo, project="mat")
    with FeatureStore(config=embedded) as store:
        store.apply()
        assert store.materialize_incremental(t).rows == {"stats": 300}
    on_redis = backend_config("redis", repo, request)
    assert on_redis.registry_path == embedded.registry_path  # one registry, two stores
    with FeatureStore(config=on_redis) as store:
        assert store.materialize_incremental(t).rows == {"stats": 300}
        assert store.materialize_incremental(t).rows == {"stats": 0}
        record = store.registry.materialization["stats"]
        assert record["store"].startswith("redis:") and "redis://" not in str(record)
    assert len(dump(on_redis)) == 300
    with FeatureStore(config=embedded) as store:  # the record now is Redis's: afresh again
        assert store.materialize_incremental(t).rows == {"stats": 300}


@pytest.mark.parametrize("kind", ["embedded", "redis"])
def test_a_store_that_lost_its_data_is_filled_again(kind: str, tmp_path, request) -> None:
    """The watermark is kept in the online store too: a Redis restarted without persistence
    (or an embedded folder removed) has lost it, and the next incremental run fills the store
    again instead of trusting the registry's watermark over rows that are gone."""
    import shutil

    repo, t = make_repo(tmp_path / "repo", entities=300)
    config = backend_config(kind, repo, request)
    with FeatureStore(config=config) as store:
        store.apply()
        assert store.materialize_incremental(t).rows == {"stats": 300}
        assert store.materialize_incremental(t).rows == {"stats": 0}  # the store still has it
    full = dump(config, watermarks=True)
    assert len(full) == 301  # the rows and the view's watermark
    if kind == "redis":
        import redis

        redis.Redis.from_url(config.online_store.url).flushall()
    else:
        shutil.rmtree(config.resolve(config.online_store.path))
    with FeatureStore(config=config) as store:
        assert "stats" in store.registry.materialization  # the registry still says done
        assert store.materialize_incremental(t).rows == {"stats": 300}
        assert store.materialize_incremental(t).rows == {"stats": 0}
    assert dump(config, watermarks=True) == full


@pytest.mark.parametrize("kind", ["embedded", "redis"])
def test_killed_materialization_rerun_equals_a_clean_run(kind: str, tmp_path, request) -> None:
    entities = 200_000
    repo, t = make_repo(tmp_path / "killed", entities=entities)
    config = backend_config(kind, repo, request)
    FeatureStore(config=config).apply()
    script = textwrap.dedent(f"""
        import sys
        from featurestore import FeatureStore
        from tests.conftest import online_config
        from pathlib import Path
        cfg = online_config({kind!r}, Path({str(repo)!r}), url={config.online_store.url!r},
                            project="mat", write_batch_size=2000)
        FeatureStore(config=cfg).materialize_incremental({t.isoformat()!r})
    """)
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=root)
    deadline = time.monotonic() + 120
    while count(config) < 5000 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = count(config)
    assert 0 < partial < entities, f"the kill did not land mid-run ({partial} rows written)"

    # the watermark did not move, so the next incremental run redoes the whole window
    with FeatureStore(config=config) as store:
        assert "stats" not in store.registry.materialization
        store.materialize_incremental(t)
    repaired = dump(config)

    # a clean run: a fresh registry (no watermark) and an empty online store
    if kind == "redis":
        import redis

        redis.Redis.from_url(config.online_store.url).flushall()
        online = config.online_store
    else:
        online = online_config(kind, tmp_path / "clean", project="mat").online_store
    clean_config = replace(
        config, online_store=online, registry=str(tmp_path / "clean" / "registry.json")
    )
    with FeatureStore(config=clean_config) as store:
        store.apply()
        store.materialize_incremental(t)
    clean = dump(clean_config)
    assert len(clean) == entities
    assert repaired == clean
