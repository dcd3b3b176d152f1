"""At-least-once delivery, exactly-once effect: an ingest process killed mid-stream (SIGKILL at a
random point, and a crash right before an XACK, after the online write and the offline file
landed) and restarted leaves window counts and sums equal to the oracle and the batch folder
holding each event exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

from featurestore import FeatureStore

from .conftest import (
    H,
    make_repo,
    now_floor_us,
    pending_count,
    read_folder,
    stream_files,
    tx_key,
    tx_oracle,
    xadd_json,
)

ROOT = Path(__file__).resolve().parents[2]
N_EVENTS = 6000
USERS = 20
STREAM_YAML = """
stream:
  batch_size: 50
  block_ms: 20
  offline_flush_events: 120
"""  # a flush (Parquet file, then XACK) every third round: a kill can land between them

# Dies (exit 137, no cleanup) just before the Nth XACK would be sent: whatever the code did
# for that batch before acknowledging it (online write, offline file) has landed.
CRASH_AT_XACK = """
import os, sys
import redis.connection as rc

N = int(sys.argv[2])
seen = [0]
cls = getattr(rc, "AbstractConnection", rc.Connection)
real = cls.send_packed_command

def send(self, command, check_health=True):
    data = command if isinstance(command, (bytes, bytearray)) else b"".join(
        bytes(c) for c in command)
    if b"\\r\\nXACK\\r\\n" in data.upper():
        seen[0] += 1
        if seen[0] >= N:
            os._exit(137)
    return real(self, command, check_health)

cls.send_packed_command = send
from featurestore import FeatureStore
FeatureStore(sys.argv[1]).ingest(once=True)
"""

PLAIN_RUN = """
import sys
from featurestore import FeatureStore
FeatureStore(sys.argv[1]).ingest(once=True)
"""


def _events(rng: np.random.Generator, now: int) -> list[dict]:
    ts = now - rng.integers(H, 20 * H, N_EVENTS)  # within the lateness horizon: none is late
    ts[100:200] = ts[200:300]  # ties
    return [
        {
            "user_id": int(rng.integers(0, USERS)),
            "event_timestamp": int(ts[i]),
            "amount": float(i) + 0.25,  # unique: each event is identifiable offline
            "merchant_id": int(rng.integers(0, 5)),
        }
        for i in range(N_EVENTS)
    ]


def _run(repo: Path, script: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), str(repo), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_killed_ingest_restarted_counts_each_event_once(tmp_path, redis_url) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    rng = np.random.default_rng(11)
    now = now_floor_us()
    t_old = now - 40 * H
    initial = [{"user_id": 0, "event_timestamp": t_old, "amount": 0.5, "merchant_id": 0}]
    prof = [{"user_id": 0, "event_timestamp": t_old, "created": t_old, "tier": 0, "score": 0.0}]
    repo = make_repo(tmp_path / "repo", redis_url, initial, prof, project="crash",
                     stream_yaml=STREAM_YAML)  # fmt: skip
    folder = repo / "data" / "tx"
    with FeatureStore(repo) as store:
        store.apply()
    events = _events(rng, now)
    for i in range(0, N_EVENTS, 1000):
        xadd_json(client, "tx_events", events[i : i + 1000])

    # 1) SIGKILL at a random point while it works through the stream
    proc = _run(repo, PLAIN_RUN)
    target = int(rng.integers(5, 20))
    deadline = time.monotonic() + 120
    while (
        len(stream_files(folder)) < target and proc.poll() is None and time.monotonic() < deadline
    ):
        time.sleep(0.001)
    time.sleep(float(rng.random()) * 0.05)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, ("not killed mid-run", err.decode()[-2000:])
    files_after_kill = len(stream_files(folder))
    assert 0 < files_after_kill < N_EVENTS // 50  # mid-stream
    # the restarts below take over the dead process's lock (same host, its pid is gone)

    # 2) a crash right before the 3rd XACK: two rounds acknowledged, the third applied only
    proc = _run(repo, CRASH_AT_XACK, "3")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 137, err.decode()[-2000:]
    assert pending_count(client, "tx_events") > 0  # the third round was delivered, not acked
    assert len(stream_files(folder)) > files_after_kill

    # 3) restart in process: the rest is applied, the pending batch not applied twice
    with FeatureStore(repo) as store:
        stats = store.ingest(once=True)
        assert stats.dead == 0, stats
        assert stats.applied > 0, stats
        assert pending_count(client, "tx_events") == 0
        group = client.xinfo_groups("tx_events")[0]
        assert group["last-delivered-id"] == client.xinfo_stream("tx_events")["last-generated-id"]

        all_events = initial + events
        users = list(range(USERS))
        for t in (now, now - H // 2, now + 3 * H):
            resp = store.get_online_features(
                ["tx:amount_count_1d", "tx:amount_sum_1d", "tx:merchant_id_distinct_count_1d"],
                [{"user_id": u} for u in users],
                now=t,
            ).to_dict()
            for f in ("amount_count_1d", "amount_sum_1d", "merchant_id_distinct_count_1d"):
                want = [tx_oracle(all_events, u, t, f) for u in users]
                assert resp[f] == want, (t, f, resp[f], want)

    # offline: every event exactly once
    rows = read_folder(folder)
    assert len(rows) == len(initial) + N_EVENTS
    assert sorted(map(tx_key, rows)) == sorted(map(tx_key, initial + events))

    # the round applied before the crash was recognised on redelivery, not applied again
    assert stats.replayed >= 1, stats
