"""Running ingest in production: future events are refused, `ingest --status` tells the state of
each stream, `--metrics-port` serves Prometheus metrics from the running process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from featurestore import FeatureStore
from featurestore.errors import FeatureStoreError

from .conftest import H, dead_entries, now_floor_us, pending_count, small_repo, xadd_json

ROOT = Path(__file__).resolve().parents[2]
MIN = 60_000_000


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from featurestore.cli import main; main()", *args]


def _count(store: FeatureStore, user: int, now: int) -> int:
    resp = store.get_online_features(["tx:amount_count_1d"], [{"user_id": user}], now=now)
    return resp.to_dict()["amount_count_1d"][0]


def test_events_far_ahead_of_their_xadd_time_are_dead_letters(tmp_path, redis_url) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    repo = small_repo(tmp_path / "repo", redis_url, project="future")
    ahead = int(time.time() * 1_000_000) + 2 * H  # 2 h ahead of the XADD: a unit or zone mix-up
    near = int(time.time() * 1_000_000) + 30 * MIN  # within the default stream.max_future (1h)
    with FeatureStore(repo) as store:
        store.apply()
        ids = xadd_json(
            client,
            "tx_events",
            [
                {"user_id": 1, "event_timestamp": ahead, "amount": 1.0, "merchant_id": 1},
                {"user_id": 1, "event_timestamp": near, "amount": 2.0, "merchant_id": 1},
            ],
        )
        stats = store.ingest(once=True)
        assert (stats.applied, stats.dead) == (1, 1)
        dead = dead_entries(client, "tx_events")
        assert [d["id"] for d in dead] == [ids[0]]
        assert "event_timestamp" in dead[0]["reason"] and "max_future" in dead[0]["reason"]
        # the refused event did not move the entity's window: the near one is served
        assert _count(store, 1, near) == 1


def test_max_future_is_configurable(tmp_path, redis_url) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    repo = small_repo(
        tmp_path / "repo", redis_url, project="future3", stream_yaml="stream:\n  max_future: 3h\n"
    )
    ahead = int(time.time() * 1_000_000) + 2 * H
    with FeatureStore(repo) as store:
        store.apply()
        xadd_json(client, "tx_events", [{"user_id": 2, "event_timestamp": ahead, "amount": 1.0,
                                         "merchant_id": 1}])  # fmt: skip
        stats = store.ingest(once=True)
        assert (stats.applied, stats.dead) == (1, 0)
        assert _count(store, 2, ahead) == 1


def test_max_past_refuses_events_far_behind_their_xadd_time(tmp_path, redis_url) -> None:
    """An event time sent in seconds reads as 1970: with stream.max_past set it is a dead letter
    naming the bound; an event inside the bound is applied. Without it both are applied (a
    replay of old events stays possible)."""
    import redis

    from .conftest import FAST_STREAM

    client = redis.Redis.from_url(redis_url)
    now = int(time.time() * 1_000_000)
    seconds = now // 1_000_000  # the producer's unit mix-up
    events = [
        {"user_id": 3, "event_timestamp": seconds, "amount": 1.0, "merchant_id": 1},
        {"user_id": 4, "event_timestamp": now - 2 * H, "amount": 2.0, "merchant_id": 1},
    ]
    for project, bound, want in (("past1", "  max_past: 1d\n", (1, 1)), ("past2", "", (2, 0))):
        client.delete("tx_events", "tx_events:dead")
        repo = small_repo(
            tmp_path / project, redis_url, project=project, stream_yaml=FAST_STREAM + bound
        )
        with FeatureStore(repo) as store:
            store.apply()
            ids = xadd_json(client, "tx_events", events)
            stats = store.ingest(once=True)
            assert (stats.applied, stats.dead) == want, project
            assert _count(store, 4, now) == 1
            dead = dead_entries(client, "tx_events")
            if bound:
                assert [d["id"] for d in dead] == [ids[0]]
                assert "event_timestamp" in dead[0]["reason"] and "max_past" in dead[0]["reason"]
            else:
                assert dead == []


def test_status_reports_length_lag_pending_dead_and_the_lock(tmp_path, redis_url) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    repo = small_repo(tmp_path / "repo", redis_url, project="status")
    now = now_floor_us()
    assert subprocess.run(_cli("-r", str(repo), "apply"), cwd=ROOT).returncode == 0

    def status() -> str:
        proc = subprocess.run(
            _cli("-r", str(repo), "ingest", "--status", "--source", "tx_stream"),
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    assert "not created yet" in status()
    good = [{"user_id": 3, "event_timestamp": now - H, "amount": 1.0, "merchant_id": i}
            for i in range(4)]  # fmt: skip
    xadd_json(client, "tx_events", [*good, {"user_id": 3}])  # the last one lacks its time
    with FeatureStore(repo) as store:
        store.ingest(once=True)
    xadd_json(client, "tx_events", good[:2])  # not ingested yet
    line = status()
    # the 5 acknowledged entries were trimmed but the newest (the trim keeps its bound)
    assert line.startswith("tx_stream: stream 'tx_events' 3 entries"), line
    assert "lag 2, pending 0" in line and "1 dead letters" in line, line
    assert "ingest not running" in line, line


def test_metrics_port_serves_ingest_metrics_while_it_runs(tmp_path, redis_url, unused_port) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    repo = small_repo(
        tmp_path / "repo", redis_url, project="metrics", stream_yaml="stream:\n  block_ms: 20\n"
    )
    now = now_floor_us()
    assert subprocess.run(_cli("-r", str(repo), "apply"), cwd=ROOT).returncode == 0
    events = [{"user_id": 4, "event_timestamp": now - H + i, "amount": 1.0, "merchant_id": 1}
              for i in range(6)]  # fmt: skip
    xadd_json(client, "tx_events", [*events, {"data": "bad"}])
    client.xadd("tx_events", {"data": "not json{"})
    proc = subprocess.Popen(
        _cli("-r", str(repo), "ingest", "--metrics-port", str(unused_port)),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        text = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                url = f"http://127.0.0.1:{unused_port}/metrics"
                text = urllib.request.urlopen(url, timeout=2).read().decode()
            except OSError:
                text = ""
            if 'featurestore_ingest_events_total{outcome="dead",source="tx_stream"} 2.0' in text:
                break
            time.sleep(0.2)
        assert 'featurestore_ingest_events_total{outcome="applied",source="tx_stream"} 6.0' in (
            text
        ), text[-3000:]
        assert 'featurestore_ingest_events_total{outcome="dead",source="tx_stream"} 2.0' in text
        assert 'featurestore_ingest_delay_seconds_count{source="tx_stream"} 6.0' in text
        assert 'featurestore_ingest_round_seconds_count{source="tx_stream"}' in text
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "ingested 6 events" in out and "2 dead-lettered" in out, out
    assert pending_count(client, "tx_events") == 0
    first = json.loads(dead_entries(client, "tx_events")[0]["data"])  # the entry's own fields
    assert json.loads(first["data"]) == {"data": "bad"}


def test_an_unreachable_stream_server_is_one_line(tmp_path, redis_url, unused_port) -> None:
    url = f"redis://127.0.0.1:{unused_port}/0"
    repo = small_repo(tmp_path / "repo", redis_url, project="down",
                      stream_yaml=f"stream:\n  url: {url}\n")  # fmt: skip
    assert subprocess.run(_cli("-r", str(repo), "apply"), cwd=ROOT).returncode == 0
    for extra in (["--once"], ["--status"]):
        proc = subprocess.run(
            _cli("-r", str(repo), "ingest", *extra),
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 1, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: stream server {url}"), lines


def test_materialize_of_a_view_being_ingested_is_refused(tmp_path, redis_url) -> None:
    import redis

    repo = small_repo(tmp_path / "repo", redis_url, project="both")
    now = now_floor_us()
    assert subprocess.run(_cli("-r", str(repo), "apply"), cwd=ROOT).returncode == 0
    proc = subprocess.Popen(
        _cli("-r", str(repo), "ingest"),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    client = redis.Redis.from_url(redis_url)
    try:
        deadline = time.monotonic() + 60
        while client.get("tx_events:ingest-lock") is None and time.monotonic() < deadline:
            time.sleep(0.05)
        with FeatureStore(repo) as store:
            with pytest.raises(FeatureStoreError, match=r"'tx'.*'tx_stream'.*stop it"):
                store.materialize(now - 2 * H, now, views=["tx"])
            with pytest.raises(FeatureStoreError, match=r"'profile'.*'profile_stream'"):
                store.materialize_incremental(now, views=["profile"])
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 0
    with FeatureStore(repo) as store:  # ingest stopped: its lock is gone, materialize runs
        assert client.get("tx_events:ingest-lock") is None
        store.materialize(now - 2 * H, now, views=["tx", "profile"])
