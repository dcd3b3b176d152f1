"""A running `featurestore ingest` outlives its stream server: killed and restarted empty (no
persistence: the stream, the group and the lock are gone), it reconnects, takes the lock and
the group again, and applies the events sent after the restart, without being restarted."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from featurestore import FeatureStore
from tests.conftest import start_redis

from .conftest import H, now_floor_us, small_repo, xadd_json

ROOT = Path(__file__).resolve().parents[2]


def _count(store: FeatureStore, user: int, now: int) -> int:
    resp = store.get_online_features(["tx:amount_count_1d"], [{"user_id": user}], now=now)
    return resp.to_dict()["amount_count_1d"][0]


def _wait_for(store: FeatureStore, user: int, now: int, want: int, proc) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if _count(store, user, now) == want:
            return
        time.sleep(0.05)
    got = _count(store, user, now)
    assert got == want, (got, proc.poll(), proc.stderr.read() if proc.poll() is not None else "")


def test_ingest_survives_a_stream_server_restart(tmp_path, redis_url) -> None:
    server = start_redis(tmp_path / "streams")
    port = server.port
    repo = small_repo(
        tmp_path / "repo",
        redis_url,
        project="restart",
        online="embedded",  # the online values must outlive the stream server
        stream_yaml=f"stream:\n  url: {server.url}\n  block_ms: 20\n  offline_flush_s: 0.2\n",
    )
    now = now_floor_us()
    with FeatureStore(repo) as store:
        store.apply()
    cmd = [sys.executable, "-c", "from featurestore.cli import main; main()", "-r", str(repo)]
    proc = subprocess.Popen(
        [*cmd, "ingest"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        with FeatureStore(repo) as store:
            first = [{"user_id": 7, "event_timestamp": now - H + i, "amount": 1.0,
                      "merchant_id": i} for i in range(10)]  # fmt: skip
            xadd_json(server.client(), "tx_events", first)
            _wait_for(store, 7, now, 10, proc)

            server.proc.kill()  # no persistence: the stream, its group and the lock are gone
            server.proc.wait(timeout=10)
            time.sleep(1.0)  # ingest meets a refused connection meanwhile
            server = start_redis(tmp_path / "streams2", port=port)
            later = [{"user_id": 7, "event_timestamp": now - H + 100 + i, "amount": 1.0,
                      "merchant_id": i} for i in range(5)]  # fmt: skip
            xadd_json(server.client(), "tx_events", later)
            _wait_for(store, 7, now, 15, proc)
            assert proc.poll() is None, "ingest exited instead of reconnecting"
            assert server.client().get("tx_events:ingest-lock") is not None  # the lock again
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        server.stop()
    assert proc.returncode == 0, err
    assert "retrying" in err, err
    assert "ingested 15 events" in out, out
