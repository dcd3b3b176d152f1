"""Materialize and ingest never write a stream-fed view at once: materialize holds the stream's
lock for its whole run (an ingest started meanwhile is refused, naming it), the lock expires or
is taken over when its holder dies, and entries delivered again after a materialize are not
counted twice."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from featurestore import FeatureStore
from featurestore.errors import FeatureStoreError
from featurestore.online.stream import locks

from .conftest import DAY, GROUP, H, now_floor_us, small_repo, xadd_json

ROOT = Path(__file__).resolve().parents[2]
LOCK = "tx_events:ingest-lock"


def _count(store: FeatureStore, user: int, now: int) -> int:
    resp = store.get_online_features(["tx:amount_count_1d"], [{"user_id": user}], now=now)
    return resp.to_dict()["amount_count_1d"][0]


class _Paused:
    """A store's materialize stopped inside its run (after its checks) until ``go`` is set."""

    def __init__(self, store: FeatureStore) -> None:
        self.inside, self.go = threading.Event(), threading.Event()
        self.error: BaseException | None = None
        real = store._materialize_view

        def paused(*args: object, **kw: object) -> int:
            self.inside.set()
            assert self.go.wait(120)
            return real(*args, **kw)  # type: ignore[arg-type]

        store._materialize_view = paused  # type: ignore[method-assign]
        self.store = store

    def start(self, *args: object, **kw: object) -> threading.Thread:
        def run() -> None:
            try:
                self.store.materialize(*args, **kw)  # type: ignore[arg-type]
            except BaseException as exc:  # reported by the test
                self.error = exc

        t = threading.Thread(target=run)
        t.start()
        assert self.inside.wait(120), "materialize did not start"
        return t


def test_ingest_started_while_materialize_runs_is_refused(tmp_path, redis_url) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    repo = small_repo(tmp_path / "repo", redis_url, project="matlock")
    now = now_floor_us()
    with FeatureStore(repo) as store, FeatureStore(repo) as other:
        store.apply()
        xadd_json(client, "tx_events", [
            {"user_id": 5, "event_timestamp": now - H, "amount": 2.0, "merchant_id": 1}])  # fmt: skip
        paused = _Paused(store)
        t = paused.start(now - 3 * DAY, now, views=["tx"])
        try:
            holder = client.get(LOCK)
            assert holder is not None and b"materialize tx" in holder
            assert 0 < client.pttl(LOCK) <= locks.LOCK_MS  # it expires if materialize dies
            with pytest.raises(FeatureStoreError) as info:
                other.ingest(once=True)
            msg = str(info.value)
            assert "\n" not in msg
            assert "stream source 'tx_stream'" in msg and "materialize of view(s) 'tx'" in msg
            # nothing was read: the event is still new for the group
            assert client.xinfo_groups("tx_events")[0]["pending"] == 0
            # a second materialize of the view waits its turn too
            with pytest.raises(FeatureStoreError, match=r"materialize of view\(s\) 'tx'.*wait"):
                other.materialize(now - 3 * DAY, now, views=["tx"])
        finally:
            paused.go.set()
            t.join(120)
        assert paused.error is None, paused.error
        assert client.get(LOCK) is None  # released at the end
        assert other.ingest(once=True).applied == 1
        assert _count(other, 5, now) == 1
    client.close()


def test_a_plain_views_materialize_takes_no_stream_lock(tmp_path, redis_url) -> None:
    """Only the streams feeding the views written are locked."""
    import redis

    client = redis.Redis.from_url(redis_url)
    repo = small_repo(tmp_path / "repo", redis_url, project="matlock2")
    now = now_floor_us()
    with FeatureStore(repo) as store, FeatureStore(repo) as other:
        store.apply()
        paused = _Paused(store)
        t = paused.start(now - 3 * DAY, now, views=["profile"])
        try:
            assert client.get(LOCK) is None
            assert client.get("profile_events:ingest-lock") is not None
            assert other.ingest(["tx_stream"], once=True).applied == 0  # tx is free
        finally:
            paused.go.set()
            t.join(120)
        assert paused.error is None, paused.error
    client.close()


def test_the_lock_of_a_long_materialize_is_renewed(tmp_path, redis_url, monkeypatch) -> None:
    import redis

    monkeypatch.setattr(locks, "LOCK_MS", 1_500)
    client = redis.Redis.from_url(redis_url)
    repo = small_repo(tmp_path / "repo", redis_url, project="matlock3")
    now = now_floor_us()
    with FeatureStore(repo) as store, FeatureStore(repo) as other:
        store.apply()
        paused = _Paused(store)
        t = paused.start(now - 3 * DAY, now, views=["tx"])
        try:
            time.sleep(4.5)  # three lock lives: only renewal keeps it
            assert client.get(LOCK) is not None
            with pytest.raises(FeatureStoreError, match="materialize"):
                other.ingest(once=True)
        finally:
            paused.go.set()
            t.join(120)
        assert paused.error is None, paused.error
        assert client.get(LOCK) is None
    client.close()


def test_the_lock_of_a_killed_materialize_is_taken_over(tmp_path, redis_url) -> None:
    """kill -9 leaves the key; a holder dead on this host is taken over at once, and the key
    carries an expiry for any other host."""
    import redis

    client = redis.Redis.from_url(redis_url)
    repo = small_repo(tmp_path / "repo", redis_url, project="matlock4")
    with FeatureStore(repo) as store:
        store.apply()
    script = textwrap.dedent("""
        import sys, time
        from featurestore import FeatureStore
        from featurestore.online.stream.locks import materialize_lock
        s = FeatureStore(sys.argv[1])
        with materialize_lock(s, [s.registry.feature_view("tx")]):
            print("held", flush=True)
            time.sleep(600)
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(repo)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        assert b"materialize tx" in client.get(LOCK)
        assert 0 < client.pttl(LOCK) <= locks.LOCK_MS
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert client.get(LOCK) is not None  # the dead holder's key is still there
    with FeatureStore(repo) as store:
        assert store.ingest(once=True).applied == 0  # taken over, not refused
    assert client.get(LOCK) is None
    client.close()


def test_entries_delivered_again_after_a_materialize_are_not_counted_twice(
    tmp_path, redis_url
) -> None:
    """Ingest wrote the Parquet file and died before acknowledging; a materialize rebuilt the
    states from the files; the restart reads the entries again and must skip them."""
    import redis

    client = redis.Redis.from_url(redis_url)
    # trim off: the entries, acknowledged here, are delivered again below as if they were not
    yaml = "stream:\n  batch_size: 100\n  block_ms: 20\n  trim: false\n"
    repo = small_repo(tmp_path / "repo", redis_url, project="redeliver", stream_yaml=yaml)
    now = now_floor_us()
    events = [
        {"user_id": u, "event_timestamp": now - (k + 1) * 60_000_000, "amount": 1.0 + k,
         "merchant_id": k}
        for u in (3, 4) for k in range(3)
    ]  # fmt: skip
    with FeatureStore(repo) as store:
        store.apply()
        xadd_json(client, "tx_events", events)
        assert store.ingest(once=True).applied == 6
        client.xgroup_setid("tx_events", GROUP, id="0")  # as if never acknowledged
        store.materialize(now - 3 * DAY, now, views=["tx"])
        assert _count(store, 3, now) == 3
        stats = store.ingest(once=True)
        assert (stats.read, stats.replayed) == (6, 6), stats
        assert _count(store, 3, now) == 3 and _count(store, 4, now) == 3
        # an entry after the files' newest one is still applied after a materialize
        xadd_json(client, "tx_events", [
            {"user_id": 3, "event_timestamp": now - 1, "amount": 9.0, "merchant_id": 9}])  # fmt: skip
        store.materialize(now - 3 * DAY, now, views=["tx"])
        assert store.ingest(once=True).applied == 1
        assert _count(store, 3, now) == 4
    client.close()


def test_a_refused_materialize_frees_the_locks_it_had_taken(tmp_path, redis_url) -> None:
    """Refused at its second stream, materialize lets go of the first at once (not 15 s
    later), so that stream's ingest can start."""
    import redis

    client = redis.Redis.from_url(redis_url)
    repo = small_repo(tmp_path / "repo", redis_url, project="matlock5")
    now = now_floor_us()
    with FeatureStore(repo) as store:
        store.apply()
        client.set(LOCK, "otherhost:1:abcd", px=60_000)  # an ingest elsewhere reads tx_events
        try:
            with pytest.raises(FeatureStoreError, match="ingest is reading"):
                store.materialize(now - 3 * DAY, now, views=["profile", "tx"])
            assert client.get("profile_events:ingest-lock") is None
        finally:
            client.delete(LOCK)
    client.close()
