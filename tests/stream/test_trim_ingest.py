"""Ingest trims each stream it reads of the entries every consumer group is done with: entries
applied, written to the Parquet folder and acknowledged go; entries pending (a round not yet
flushed, an ingest killed before its XACK) and entries another group has not read or not
acknowledged stay. On one Redis server and on a Redis Cluster alike."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from featurestore import FeatureStore
from featurestore.online.stream import Ingester
from featurestore.online.stream.metrics import IngestMetrics

from .conftest import (
    GROUP,
    H,
    now_floor_us,
    pending_count,
    read_folder,
    redis_client_for,
    small_repo,
    stream_files,
    tx_key,
    tx_oracle,
    xadd_json,
)

ROOT = Path(__file__).resolve().parents[2]
USERS = (31, 32, 33)
N = 120
# a Parquet file and its acknowledgements every 50 events (a round), none by time; a trim
# after each acknowledgement
ROUND_YAML = """
stream:
  batch_size: 50
  block_ms: 20
  offline_flush_events: 50
  offline_flush_s: 3600
  trim_interval_s: 0
"""

FOLLOW = """
import sys
from featurestore import FeatureStore
print("started", flush=True)
FeatureStore(sys.argv[1]).ingest(["tx_stream"])
"""


@pytest.fixture(params=["redis", "redis_cluster"])
def backend(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(url, online store type): the streams on one server, or on a cluster."""
    if request.param == "redis":
        return request.getfixturevalue("redis_url"), "redis"
    return request.getfixturevalue("redis_cluster_url"), "redis_cluster"


def _repo(tmp_path: Path, backend: tuple[str, str], project: str, yaml: str) -> Path:
    url, online = backend
    return small_repo(tmp_path / "repo", url, project=project, online=online, stream_yaml=yaml)


def _events(now: int, n: int = N) -> list[dict]:
    return [
        {"user_id": USERS[i % 3], "event_timestamp": now - H + i, "amount": i + 0.5,
         "merchant_id": i % 7}
        for i in range(n)
    ]  # fmt: skip


def _ids(client: Any, stream: str = "tx_events") -> list[str]:
    return [i.decode() for i, _ in client.xrange(stream)]


def _wait(what: str, check: Any, deadline_s: float = 60) -> None:
    deadline = time.monotonic() + deadline_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {deadline_s}s for {what}")
        time.sleep(0.01)


def _served_counts(store: FeatureStore, now: int) -> list[int]:
    got = store.get_online_features(
        ["tx:amount_count_1d"], [{"user_id": u} for u in USERS], now=now
    ).to_dict()
    return got["amount_count_1d"]


def _pending_now(client: Any) -> int | None:
    """The ingest group's pending count; None before ingest has made its group."""
    import redis

    try:
        return pending_count(client, "tx_events")
    except redis.ResponseError:
        return None


def _newest_in_files(folder: Path) -> str:
    """The newest entry id written to the folder's stream files (their names end with it)."""
    last = max(tuple(map(int, p.stem.rsplit("-", 1)[1].split("_"))) for p in stream_files(folder))
    return f"{last[0]}-{last[1]}"


def test_applied_and_acknowledged_entries_are_trimmed(tmp_path, backend) -> None:
    repo = _repo(tmp_path, backend, "trimall", "stream:\n  batch_size: 50\n  block_ms: 20\n")
    client = redis_client_for(*backend)
    now = now_floor_us()
    events = _events(now)
    metrics = IngestMetrics()
    with FeatureStore(repo) as store:
        store.apply()
        ids = xadd_json(client, "tx_events", events)
        bad = xadd_json(client, "tx_events", [{"user_id": 31}])  # no time: a dead letter
        stats = Ingester(store, ["tx_stream"], metrics=metrics).run(once=True)
        assert (stats.applied, stats.dead) == (N, 1)
        # every entry but the newest delivered one (the trim keeps its bound) is gone
        assert _ids(client) == bad
        assert stats.trimmed == N
        assert pending_count(client, "tx_events") == 0
        assert client.xlen("tx_events:dead") == 1  # dead letters are not trimmed
        assert _served_counts(store, now) == [40, 40, 40]
    sample = metrics.registry.get_sample_value
    assert sample("featurestore_ingest_trimmed_entries_total", {"source": "tx_stream"}) == N
    assert sample("featurestore_ingest_stream_entries", {"source": "tx_stream"}) == 1
    # and every event is in the offline store
    rows = [r for r in read_folder(repo / "data" / "tx") if r["user_id"] in USERS]
    assert sorted(map(tx_key, rows)) == sorted(map(tx_key, events))
    assert len(ids) == N
    client.close()


def test_a_round_not_yet_flushed_is_kept_until_its_acknowledgement(tmp_path, backend) -> None:
    repo = _repo(tmp_path, backend, "trimround", ROUND_YAML)
    client = redis_client_for(*backend)
    now = now_floor_us()
    with FeatureStore(repo) as store:
        store.apply()
        ids = xadd_json(client, "tx_events", _events(now))
        ing = Ingester(store, ["tx_stream"])
        failed: list[BaseException] = []

        def run() -> None:
            try:
                ing.run()
            except BaseException as exc:
                failed.append(exc)

        runner = threading.Thread(target=run)
        runner.start()
        try:
            # rounds of 50, 50 (each flushed, acknowledged, trimmed), then 20 applied online
            # and held for the next Parquet file: pending
            _wait("the third round", lambda: _pending_now(client) == 20 or failed)
            assert not failed, failed
            assert _served_counts(store, now) == [40, 40, 40]  # applied online already
            assert _newest_in_files(repo / "data" / "tx") == ids[99]
            assert _ids(client) == ids[99:]  # the pending 20 stay, and the last one acked
        finally:
            ing.stop()
            runner.join(timeout=60)
        assert not runner.is_alive() and not failed, failed
        # the last flush wrote them and acknowledged them, and the trim followed
        assert _newest_in_files(repo / "data" / "tx") == ids[-1]
        assert _ids(client) == ids[-1:]
    client.close()


def test_entries_of_an_ingest_killed_before_its_ack_are_kept_and_applied_once(
    tmp_path, backend
) -> None:
    repo = _repo(tmp_path, backend, "trimkill", ROUND_YAML)
    client = redis_client_for(*backend)
    now = now_floor_us()
    events = _events(now)
    with FeatureStore(repo) as store:
        store.apply()
    ids = xadd_json(client, "tx_events", events)
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(FOLLOW), str(repo)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        _wait(
            "the third round",
            lambda: _pending_now(client) == 20 or proc.poll() is not None,
        )
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    assert pending_count(client, "tx_events") == 20
    assert _ids(client) == ids[99:]  # what it had not acknowledged is still there
    with FeatureStore(repo) as store:
        # the restart trims first (keeping the pending entries), reads them again, writes them
        stats = store.ingest(["tx_stream"], once=True)
        assert stats.read == 20, stats
        for t in (now, now + H // 2):
            want = [tx_oracle(events, u, t, "amount_count_1d") for u in USERS]
            assert _served_counts(store, t) == want
    rows = [r for r in read_folder(repo / "data" / "tx") if r["user_id"] in USERS]
    assert sorted(map(tx_key, rows)) == sorted(map(tx_key, events))  # each exactly once
    assert _ids(client) == ids[-1:]
    client.close()


def test_another_group_keeps_what_it_has_not_read_or_acknowledged(tmp_path, backend) -> None:
    repo = _repo(tmp_path, backend, "trimgroups", "stream:\n  batch_size: 50\n  block_ms: 20\n")
    client = redis_client_for(*backend)
    now = now_floor_us()
    other = "other-app"
    with FeatureStore(repo) as store:
        store.apply()
        ids = xadd_json(client, "tx_events", _events(now))
        client.xgroup_create("tx_events", other, id="0")
        assert store.ingest(["tx_stream"], once=True).applied == N
        assert _ids(client) == ids  # the other group has read nothing yet
        assert pending_count(client, "tx_events") == 0

        client.xreadgroup(other, "worker", {"tx_events": ">"}, count=30)
        client.xack("tx_events", other, *ids[:10])
        assert store.ingest(["tx_stream"], once=True).trimmed == 10
        assert _ids(client) == ids[10:]  # its oldest pending entry is ids[10]

        client.xack("tx_events", other, *ids[10:30])
        store.ingest(["tx_stream"], once=True)  # nothing new to read: trimmed at start
        assert _ids(client) == ids[29:]  # its last delivered entry is ids[29]

        rest = client.xreadgroup(other, "worker", {"tx_events": ">"})
        client.xack("tx_events", other, *[i for _, entries in rest for i, _ in entries])
        assert store.ingest(["tx_stream"], once=True).trimmed == N - 30
        assert _ids(client) == ids[-1:]
        assert pending_count(client, "tx_events", group=GROUP) == 0
        assert pending_count(client, "tx_events", group=other) == 0
    client.close()


def test_trim_off_keeps_every_entry(tmp_path, backend) -> None:
    yaml = "stream:\n  batch_size: 50\n  block_ms: 20\n  trim: false\n"
    repo = _repo(tmp_path, backend, "trimoff", yaml)
    client = redis_client_for(*backend)
    now = now_floor_us()
    with FeatureStore(repo) as store:
        store.apply()
        ids = xadd_json(client, "tx_events", _events(now))
        stats = store.ingest(["tx_stream"], once=True)
        assert (stats.applied, stats.trimmed) == (N, 0)
        assert pending_count(client, "tx_events") == 0
        assert _ids(client) == ids
    client.close()
