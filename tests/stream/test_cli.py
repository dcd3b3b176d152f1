"""``featurestore ingest`` as a user runs it (subprocess): --once applies what is in the stream and
prints progress; a second ingest of the same source exits non-zero with one line; SIGTERM
finishes cleanly; a StreamSource over a file fails at apply with one line naming it."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from featurestore import FeatureStore, ParquetSource, StreamSource
from featurestore.errors import DefinitionError
from featurestore.sources import source_from_dict

from .conftest import DEFS, H, now_floor_us, pending_count, small_repo, xadd_json

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from featurestore.cli import main; main()", *args]


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_cli(*args), cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _count(store: FeatureStore, user: int, now: int) -> int:
    resp = store.get_online_features(["tx:amount_count_1d"], [{"user_id": user}], now=now)
    return resp.to_dict()["amount_count_1d"][0]


def test_ingest_once_applies_and_prints_progress(tmp_path, redis_url) -> None:
    import redis

    # online store embedded: the stream's url comes from the stream section alone
    repo = small_repo(
        tmp_path / "repo",
        redis_url,
        project="cli1",
        online="embedded",
        stream_yaml=f"stream:\n  url: {redis_url}\n  block_ms: 20\n",
    )
    client = redis.Redis.from_url(redis_url)
    now = now_floor_us()
    assert _run("-r", str(repo), "apply").returncode == 0
    xadd_json(
        client,
        "tx_events",
        [
            {"user_id": 50 + i % 3, "event_timestamp": now - H + i, "amount": 2.0, "merchant_id": i}
            for i in range(30)
        ],
    )
    proc = _run("-r", str(repo), "ingest", "--once")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip(), "no progress lines on stderr"
    assert "tx_stream" in proc.stderr or "tx_events" in proc.stderr, proc.stderr
    assert "30" in proc.stderr, proc.stderr
    with FeatureStore(repo) as store:
        assert [_count(store, u, now) for u in (50, 51, 52, 53)] == [10, 10, 10, 0]
    assert pending_count(client, "tx_events") == 0
    groups = client.xinfo_groups("tx_events")
    assert [g["name"].decode() for g in groups] == ["featurestore"]


def test_second_ingest_of_a_source_exits_with_one_line(tmp_path, redis_url) -> None:
    import redis

    repo = small_repo(tmp_path / "repo", redis_url, project="cli2")
    client = redis.Redis.from_url(redis_url)
    now = now_floor_us()
    with FeatureStore(repo) as store:
        store.apply()
    ev = {"user_id": 60, "event_timestamp": now - H, "amount": 1.0, "merchant_id": 1}
    xadd_json(client, "tx_events", [ev])
    first = subprocess.Popen(
        _cli("-r", str(repo), "ingest"),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with FeatureStore(repo) as store:
            deadline = time.monotonic() + 30
            while _count(store, 60, now) < 1 and time.monotonic() < deadline:
                assert first.poll() is None, first.communicate()[1]
                time.sleep(0.05)
            assert _count(store, 60, now) == 1, "the running ingest did not apply the event"

            second = _run("-r", str(repo), "ingest", "--source", "tx_stream", "--once")
            assert second.returncode != 0
            lines = second.stderr.strip().splitlines()
            assert len(lines) == 1, second.stderr
            assert "tx_stream" in lines[0] or "tx_events" in lines[0], lines

            # the first one keeps applying new events (freshness in well under a few seconds)
            xadd_json(client, "tx_events", [{**ev, "event_timestamp": now - H + 1}])
            deadline = time.monotonic() + 10
            while _count(store, 60, now) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert _count(store, 60, now) == 2
    finally:
        first.send_signal(signal.SIGTERM)
        try:
            first.wait(timeout=20)
        except subprocess.TimeoutExpired:
            first.kill()
            first.wait()
    assert first.returncode == 0, first.stderr.read() if first.stderr else ""
    assert pending_count(client, "tx_events") == 0

    # with the first gone, the source is free again
    xadd_json(client, "tx_events", [{**ev, "event_timestamp": now - H + 2}])
    again = _run("-r", str(repo), "ingest", "--source", "tx_stream", "--once")
    assert again.returncode == 0, again.stderr
    with FeatureStore(repo) as store:
        assert _count(store, 60, now) == 3


@pytest.mark.parametrize("path", ["data/tx.parquet", "data/tx/*.parquet"])
def test_stream_source_over_a_file_fails_at_apply_naming_it(tmp_path, redis_url, path) -> None:
    bad = DEFS.replace('ParquetSource("data/tx/"', f'ParquetSource("{path}"')
    assert bad != DEFS
    repo = small_repo(tmp_path / "repo", redis_url, project="cli3", defs=bad)
    proc = _run("-r", str(repo), "apply")
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "tx_stream" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr

    with pytest.raises(DefinitionError, match="tx_stream"):
        StreamSource(name="tx_stream", batch_source=ParquetSource(path))


def test_registry_form_round_trips() -> None:
    src = StreamSource(
        name="s1",
        batch_source=ParquetSource("data/s1/", created_timestamp_field="created"),
    )
    d = src.to_dict()
    assert d["kind"] == "stream" and d["name"] == "s1" and d["stream"] == "s1"
    assert d["batch_source"]["path"] == "data/s1/" and d["schema"] is None
    back = source_from_dict(d)
    assert back == src
    assert back.timestamp_field == "event_timestamp" and back.created_timestamp_field == "created"
