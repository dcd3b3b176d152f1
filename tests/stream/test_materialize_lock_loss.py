"""A materialize that loses a stream's lock midway (it paused past the lock's expiry and an
ingest took the lock, maybe wrote and let go) stops before its next write with one line naming
the stream and saying to rerun; the views it did not finish keep their watermark, the ones it
finished before keep theirs, and the rerun writes them."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from featurestore import FeatureStore
from featurestore.errors import FeatureStoreError
from featurestore.online.stream import locks
from tests.conftest import RedisProcess, start_redis

from .conftest import DAY, PROFILE_TYPES, H, now_floor_us, small_repo, write_events, xadd_json

ROOT = Path(__file__).resolve().parents[2]
TX_LOCK = "tx_events:ingest-lock"
PROFILE_LOCK = "profile_events:ingest-lock"
OTHER = "otherhost:7:0badf00d"  # an ingest on another host

# materialize of 'tx' in a process whose locks live 2 s, stopping after it read the events
# (before it writes them) until a line arrives on stdin
PAUSED_MATERIALIZE = textwrap.dedent("""
    import sys
    from featurestore import FeatureStore
    from featurestore.errors import FeatureStoreError
    from featurestore.offline import windows
    from featurestore.online.stream import locks

    locks.LOCK_MS = 2_000
    real = windows.read_events

    def read_then_wait(*args, **kw):
        events = real(*args, **kw)
        print("read", flush=True)
        sys.stdin.readline()
        return events

    windows.read_events = read_then_wait
    with FeatureStore(sys.argv[1]) as store:
        try:
            store.materialize(int(sys.argv[2]), int(sys.argv[3]), views=["tx"])
        except FeatureStoreError as exc:
            print(f"error: {exc}", flush=True)
            sys.exit(3)
    print("done", flush=True)
""")


def _count(store: FeatureStore, user: int, now: int) -> int:
    resp = store.get_online_features(["tx:amount_count_1d"], [{"user_id": user}], now=now)
    return resp.to_dict()["amount_count_1d"][0]


def _tier(store: FeatureStore, user: int, now: int) -> int | None:
    resp = store.get_online_features(["profile:tier"], [{"user_id": user}], now=now)
    return resp.to_dict()["tier"][0]


def _mark(repo: Path, view: str) -> int | None:
    with FeatureStore(repo) as store:
        return (store.registry.materialization.get(view) or {}).get("watermark_us")


def _wait_gone(client: Any, key: str) -> None:
    deadline = time.monotonic() + 60
    while client.exists(key) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not client.exists(key), f"{key} never expired"


def test_a_paused_materialize_whose_lock_an_ingest_used_stops_before_writing(
    tmp_path: Path, redis_url: str
) -> None:
    """The process is stopped (SIGSTOP) past its lock's life; an ingest takes the lock, applies
    a newer event and lets go. Resumed, materialize would overwrite that state with the one it
    built before (one event fewer): it stops instead, and the watermark stays."""
    import redis

    client = redis.Redis.from_url(redis_url)
    repo = small_repo(tmp_path / "repo", redis_url, project="lockloss1")
    now = now_floor_us()
    t0 = now - H
    with FeatureStore(repo) as store:
        store.apply()
        xadd_json(client, "tx_events", [
            {"user_id": 5, "event_timestamp": now - 2 * H, "amount": 1.0, "merchant_id": 1}])  # fmt: skip
        assert store.ingest(once=True).applied == 1
        assert store.materialize(now - 3 * DAY, t0, views=["tx"]).rows == {"tx": 1}
        assert _count(store, 5, now) == 1
    assert _mark(repo, "tx") == t0 and client.get(TX_LOCK) is None

    proc = subprocess.Popen(
        [sys.executable, "-c", PAUSED_MATERIALIZE, str(repo), str(now - 3 * DAY), str(now)],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "read"
        assert b"materialize tx" in client.get(TX_LOCK)
        proc.send_signal(signal.SIGSTOP)
        _wait_gone(client, TX_LOCK)  # expired while the process was stopped
        with FeatureStore(repo) as store:
            xadd_json(client, "tx_events", [
                {"user_id": 5, "event_timestamp": now - H // 2, "amount": 2.0, "merchant_id": 2}])  # fmt: skip
            assert store.ingest(once=True).applied == 1  # took the free lock, wrote, let go
            assert _count(store, 5, now) == 2
        proc.send_signal(signal.SIGCONT)
        out, _ = proc.communicate("go\n", timeout=120)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait(30)
    assert proc.returncode == 3, out
    lines = out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: materialize stopped"), out
    assert "stream 'tx_events'" in lines[0] and "rerun materialize" in lines[0], out
    assert "expired" in lines[0], out
    with FeatureStore(repo) as store:
        assert _count(store, 5, now) == 2  # the ingest's state, not the stale one
    assert _mark(repo, "tx") == t0  # not advanced
    assert client.get(TX_LOCK) is None
    with FeatureStore(repo) as store:  # the rerun writes it, from the folder ingest filled
        assert store.materialize_incremental(now, views=["tx"]).rows == {"tx": 1}
        assert _count(store, 5, now) == 2
    assert _mark(repo, "tx") == now
    client.close()


def test_a_lock_another_took_stops_at_the_next_write_and_keeps_finished_watermarks(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two views, one stream each: 'tx' is written first under its lock; while 'profile' is read,
    an ingest elsewhere holds its stream's lock, which the renewer finds on its check. No row of
    'profile' is written, its watermark stays, 'tx' keeps the one it finished, and the other
    holder's lock is left alone."""
    import redis

    client = redis.Redis.from_url(redis_url)
    renewers: list[Any] = []

    class Recorded(locks._Renewer):
        def __init__(self, *args: Any, **kw: Any) -> None:
            super().__init__(*args, **kw)
            renewers.append(self)

    monkeypatch.setattr(locks, "_Renewer", Recorded)
    repo = small_repo(tmp_path / "repo", redis_url, project="lockloss2")
    now = now_floor_us()
    t0 = now - 2 * H
    folder = repo / "data" / "profile"
    old = {"user_id": 7, "event_timestamp": t0 - H, "created": t0 - H, "tier": 1, "score": 1.0}
    write_events(folder, "old.parquet", [old], PROFILE_TYPES)
    with FeatureStore(repo) as store:
        store.apply()
        store.materialize(now - DAY, t0, views=["tx", "profile"])
        assert _tier(store, 7, now) == 1
        new = {**old, "event_timestamp": t0 + H, "created": t0 + H, "tier": 2, "score": 2.0}
        write_events(folder, "new.parquet", [new], PROFILE_TYPES)
        real = store.offline.iter_latest_rows

        def taken_meanwhile(view: Any, *args: Any, **kw: Any) -> Any:
            if view.name == "profile":
                client.set(PROFILE_LOCK, OTHER, px=120_000)
                renewers[-1].check()
            return real(view, *args, **kw)

        monkeypatch.setattr(store.offline, "iter_latest_rows", taken_meanwhile)
        with pytest.raises(FeatureStoreError) as info:
            store.materialize(now - DAY, now, views=["tx", "profile"])
        msg = str(info.value)
        assert "\n" not in msg
        assert "stream 'profile_events'" in msg and "stream source 'profile_stream'" in msg
        assert f"now held by featurestore ingest ({OTHER})" in msg and "rerun" in msg
        assert _tier(store, 7, now) == 1  # nothing written after the loss
    assert _mark(repo, "tx") == now  # finished under its lock
    assert _mark(repo, "profile") == t0
    assert client.get(PROFILE_LOCK) == OTHER.encode()  # not released: it is not ours
    assert client.get(TX_LOCK) is None

    client.delete(PROFILE_LOCK)  # the ingest stopped: a rerun writes the view
    with FeatureStore(repo) as store:
        assert store.materialize(now - DAY, now, views=["profile"]).rows == {"profile": 1}
        assert _tier(store, 7, now) == 2
    assert _mark(repo, "profile") == now
    client.close()


def test_a_lock_that_is_renewed_lets_every_write_through(tmp_path: Path, redis_url: str) -> None:
    """The checks before each write pass while the lock is held: batches of one row each."""
    import redis

    client = redis.Redis.from_url(redis_url)
    repo = small_repo(
        tmp_path / "repo", redis_url, project="lockloss3",
        stream_yaml="stream:\n  block_ms: 20\n",
    )  # fmt: skip
    cfg = repo / "featurestore.yaml"
    cfg.write_text(cfg.read_text().replace("  url:", "  write_batch_size: 1\n  url:"))
    now = now_floor_us()
    rows = [
        {"user_id": u, "event_timestamp": now - H, "created": now - H, "tier": u, "score": 0.5}
        for u in (11, 12, 13)
    ]
    write_events(repo / "data" / "profile", "more.parquet", rows, PROFILE_TYPES)
    with FeatureStore(repo) as store:
        store.apply()
        assert store.materialize(now - DAY, now, views=["profile"]).rows == {"profile": 3}
        assert [_tier(store, u, now) for u in (11, 12, 13)] == [11, 12, 13]
    assert _mark(repo, "profile") == now
    assert client.get(PROFILE_LOCK) is None
    client.close()


def test_a_write_after_a_pause_checks_the_lock_first(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The renewer thread did not run (the whole process was paused): the check before a write
    renews at once, as its last renewal is older than half the lock's life, and finds the lock
    another's; it stays lost."""
    import redis

    monkeypatch.setattr(locks, "LOCK_MS", 3_000)
    monkeypatch.setattr(locks._Renewer, "_run", lambda self: None)  # a thread that never renews
    client = redis.Redis.from_url(redis_url)
    repo = small_repo(tmp_path / "repo", redis_url, project="lockloss4")
    with FeatureStore(repo) as store:
        store.apply()
        with locks.materialize_lock(store, [store.get_feature_view("tx")]) as held:
            held.ensure_held()  # just taken: fine
            _wait_gone(client, TX_LOCK)
            client.set(TX_LOCK, OTHER, px=120_000)
            for _ in range(2):
                with pytest.raises(FeatureStoreError, match=f"now held by .*{OTHER}"):
                    held.ensure_held()
    assert client.get(TX_LOCK) == OTHER.encode()
    client.close()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A redis-server of this test alone, which it may stop (SIGSTOP) without stalling others."""
    server = start_redis(tmp_path / "redis")
    try:
        yield server
    finally:
        server.proc.send_signal(signal.SIGCONT)
        server.stop()


def test_a_stream_server_silent_longer_than_the_lock_life_stops_materialize(
    tmp_path: Path, own_redis: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lock was taken, then the server stops answering this host (stopped with SIGSTOP):
    renewals fail, the lock expires on the server and an ingest elsewhere could take it, so
    once the last renewal is older than the lock's life the next write is refused, and stays
    refused after the server answers again."""
    monkeypatch.setattr(locks, "LOCK_MS", 1_000)
    repo = small_repo(tmp_path / "repo", own_redis.url, project="lockloss5")
    client = own_redis.client()
    with FeatureStore(repo) as store:
        store.apply()
        with locks.materialize_lock(store, [store.get_feature_view("tx")]) as held:
            assert held.guards(store.get_feature_view("tx"))
            held.ensure_held()
            assert client.pttl(TX_LOCK) > 0
            own_redis.proc.send_signal(signal.SIGSTOP)
            try:
                time.sleep(1.5)  # past the lock's life, the thread's renewals failing meanwhile
                with pytest.raises(FeatureStoreError) as info:
                    held.ensure_held()
            finally:
                own_redis.proc.send_signal(signal.SIGCONT)
            msg = str(info.value)
            assert "\n" not in msg and msg.startswith("materialize stopped: lost the lock")
            assert "stream 'tx_events'" in msg and "did not answer" in msg, msg
            assert "rerun materialize" in msg, msg
            with pytest.raises(FeatureStoreError, match="did not answer"):
                held.ensure_held()  # the server answers again: the lock stays lost
    assert client.get(TX_LOCK) is None  # it had expired: an ingest could have taken it
    client.close()


def test_a_stream_server_silent_shorter_than_the_lock_life_keeps_the_lock(
    tmp_path: Path, own_redis: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A renewal round the server does not answer, well within the lock's life, loses nothing:
    the lock still lives on the server, and the next round that reaches it renews it."""
    monkeypatch.setattr(locks, "LOCK_MS", 120_000)
    monkeypatch.setattr(locks._Renewer, "_run", lambda self: None)  # rounds run by the test
    renewers: list[Any] = []

    class Recorded(locks._Renewer):
        def __init__(self, *args: Any, **kw: Any) -> None:
            super().__init__(*args, **kw)
            renewers.append(self)

    monkeypatch.setattr(locks, "_Renewer", Recorded)
    repo = small_repo(tmp_path / "repo", own_redis.url, project="lockloss6")
    client = own_redis.client()
    with FeatureStore(repo) as store:
        store.apply()
        with locks.materialize_lock(store, [store.get_feature_view("tx")]) as held:
            own_redis.proc.send_signal(signal.SIGSTOP)
            try:
                renewers[-1].check()  # times out: the server is stopped
            finally:
                own_redis.proc.send_signal(signal.SIGCONT)
            assert renewers[-1].lost is None
            held.ensure_held()
            client.pexpire(TX_LOCK, 60_000)
            renewers[-1].check()  # reaches the server: renewed to the full life again
            assert client.pttl(TX_LOCK) > 60_000
            held.ensure_held()
    assert client.get(TX_LOCK) is None  # released at the end
    client.close()


def test_a_materialize_started_while_the_stream_server_is_down_runs_without_the_lock(
    tmp_path: Path, unused_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing to lose: no lock was taken (no ingest can read a server that is down either), so
    the checks before each write pass however long the server stays away."""
    monkeypatch.setattr(locks, "LOCK_MS", 200)
    down = f"redis://127.0.0.1:{unused_port}/0"
    stream = f"stream:\n  url: {down}\n  block_ms: 20\n"
    repo = small_repo(
        tmp_path / "repo", down, project="lockloss7", online="embedded", stream_yaml=stream
    )
    with FeatureStore(repo) as store:
        store.apply()
        with locks.materialize_lock(store, [store.get_feature_view("tx")]) as held:
            assert not held.guards(store.get_feature_view("tx"))
            time.sleep(0.5)  # past the lock's life
            held.ensure_held()
