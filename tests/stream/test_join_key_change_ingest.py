"""Apply changing the join keys of stream-fed views while their ingest runs (a real redis-server,
real ingest threads): the rows of the old keys are deleted in the end, and no cleanup ever
deletes a row an ingest wrote under the new keys.

The ingest still running with the old keys stops at its next event for a re-keyed view, and no
ingest writes it until an apply has found the stream's lock free and deleted what the old one
wrote; an ingest that read the registry before the apply but starts after it stops too.
"""

from __future__ import annotations

import re
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from featurestore import FeatureStore
from featurestore.errors import FeatureStoreError
from featurestore.online.base import Status
from featurestore.online.stream import Ingester

from .conftest import H, hour_floor_now_us, now_floor_us, write_events, xadd_json

PROJECT = "rekey"
UID = 1000  # an event's new key: uid = user_id + UID
HEAD = """
from featurestore import (Aggregation, Entity, FeatureView, Field, Float64, Int64, ParquetSource,
                          StreamSource)

user = Entity("user", join_keys=["{key}"])
tx = FeatureView(
    name="tx",
    entities=[user],
    source=StreamSource(
        name="tx_stream",
        stream="tx_events",
        batch_source=ParquetSource("data/tx/", timestamp_field="event_timestamp"),
    ),
    allowed_lateness="2h",
    aggregations=[Aggregation("amount", "count", ["1d"]), Aggregation("amount", "sum", ["1d"])],
)
"""
PROFILE = """
profile = FeatureView(
    name="profile",
    entities=[user],
    source=StreamSource(
        name="profile_stream",
        stream="profile_events",
        batch_source=ParquetSource(
            "data/profile/", timestamp_field="event_timestamp", created_timestamp_field="created"
        ),
    ),
    ttl="2d",
    schema=[Field("tier", Int64), Field("score", Float64)],
)
"""
TS = pa.timestamp("us", tz="UTC")
PROFILE_TYPES = {"user_id": pa.int64(), "uid": pa.int64(), "event_timestamp": TS, "created": TS,
                 "tier": pa.int64(), "score": pa.float64()}  # fmt: skip
TX_TYPES = {"user_id": pa.int64(), "uid": pa.int64(), "event_timestamp": TS,
            "amount": pa.float64(), "merchant_id": pa.int64()}  # fmt: skip


def make_repo(root: Path, redis_url: str, *, profile: bool = False) -> Path:
    """A repo whose views are keyed by ``user_id``; its batch files hold ``uid`` too."""
    t = hour_floor_now_us() - 40 * H
    (root / "data").mkdir(parents=True)
    (root / "featurestore.yaml").write_text(
        f"project: {PROJECT}\nonline_store:\n  type: redis\n  url: {redis_url}\n"
        # entries are acknowledged when ingest stops, or an hour after they were applied
        "stream:\n  batch_size: 100\n  block_ms: 20\n  offline_flush_s: 3600\n"
    )
    prof = {"user_id": 0, "uid": UID, "event_timestamp": t, "created": t, "tier": 0, "score": 0.0}
    write_events(root / "data" / "profile", "initial.parquet", [prof], PROFILE_TYPES)
    first = {"user_id": 0, "uid": UID, "event_timestamp": t, "amount": 1.0, "merchant_id": 0}
    write_events(root / "data" / "tx", "initial.parquet", [first], TX_TYPES)
    define(root, "user_id", profile=profile)
    return root


def define(root: Path, key: str, *, profile: bool = False, ttl: str = "2d") -> None:
    text = textwrap.dedent(HEAD + (PROFILE if profile else "")).replace("{key}", key)
    (root / "definitions.py").write_text(text.replace('ttl="2d"', f'ttl="{ttl}"'))


def send(client: Any, user: int, amount: float) -> None:
    """One tx event of ``user``, carrying both its old and its new key."""
    now = now_floor_us()
    xadd_json(client, "tx_events", [{"user_id": user, "uid": user + UID, "event_timestamp":
                                     now - H, "amount": amount, "merchant_id": 1}])  # fmt: skip


def row_keys(client: Any, view: str, key: str) -> list[bytes]:
    """The online keys of ``view`` under join key ``key`` (SCAN of the server)."""
    return sorted(client.scan_iter(match=f"{PROJECT}:{{{PROJECT}|{key}=*}}:{view}", count=1000))


def wait_for(done: Callable[[], bool], what: str) -> None:
    """Poll until ``done()``; a run that never gets there fails (60 s bound, not a speed check)."""
    deadline = time.monotonic() + 60
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


class Running:
    """``featurestore ingest`` in a thread of its own store; it reads the registry at once."""

    def __init__(self, repo: Path) -> None:
        self.store = FeatureStore(repo)
        self.ingester = Ingester(self.store)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Running:
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            self.ingester.run()
        except BaseException as exc:  # what stopped it, for the test to look at
            self.error = exc

    @property
    def stopped(self) -> bool:
        return not self.thread.is_alive()

    def stop(self) -> None:
        self.ingester.stop()
        self.thread.join(60)
        assert not self.thread.is_alive()
        self.store.close()


def served(store: FeatureStore, uid: int) -> tuple[Any, Status]:
    """The 1-day amount sum of entity ``uid`` and its status."""
    resp = store.get_online_features(["tx:amount_sum_1d"], [{"uid": uid}])
    return resp.to_dict()["amount_sum_1d"][0], resp.statuses["amount_sum_1d"][0]


def test_rows_a_restarted_ingest_writes_survive_the_cleanup(tmp_path: Path, redis_url: str) -> None:
    """The bug: apply with the old ingest running, restart ingest as told, apply again. Rows
    the restarted ingest wrote under the new keys must survive every apply after, and the old
    keys' rows must be gone in the end."""
    import redis

    client = redis.Redis.from_url(redis_url)
    repo = make_repo(tmp_path / "repo", redis_url)
    with FeatureStore(repo) as store:
        store.apply()
    old = Running(repo).start()
    send(client, 1, 1.0)
    wait_for(lambda: row_keys(client, "tx", "user_id") != [], "the old ingest's first state")

    define(repo, "uid")
    with FeatureStore(repo) as store:
        reports: list[Any] = []
        store.apply(report=reports.append)  # the old ingest still runs
        assert [(r.view, r.kept, r.pending) for r in reports] == [("tx", True, True)]
        assert row_keys(client, "tx", "user_id") == []

    send(client, 2, 2.0)  # the old ingest's next event for the view
    wait_for(
        lambda: old.stopped or row_keys(client, "tx", "user_id") != [],
        "the old ingest to stop or write user 2",
    )
    old.stop()

    new = Running(repo).start()  # restarted, with the new join keys
    send(client, 3, 3.0)
    wait_for(
        lambda: new.stopped or row_keys(client, "tx", "uid") != [],
        "the restarted ingest to stop or write",
    )
    new.stop()

    with FeatureStore(repo) as store:
        store.apply()  # no changes: what is left to clean up
        assert store.registry.pending_cleanup == {}
        store.ingest(once=True)  # whatever the restarted ingest did not write
        assert served(store, 3 + UID) == (3.0, Status.PRESENT)  # what the restart wrote
        assert served(store, 2 + UID) == (2.0, Status.PRESENT)
        for _ in range(2):  # later applies leave the new rows as they are
            store.apply()
            assert served(store, 3 + UID) == (3.0, Status.PRESENT)
        rows = row_keys(client, "tx", "uid")  # user 1's event too, if ingest read it again
        assert {f"{PROJECT}:{{{PROJECT}|uid={u + UID}}}:tx".encode() for u in (2, 3)} <= set(rows)
        assert row_keys(client, "tx", "user_id") == []  # the old keys' rows are gone
    client.close()


def send_to(client: Any, view: str, user: int, value: int) -> None:
    """One event of ``user`` for ``view``: a tx amount, or a profile tier."""
    if view == "tx":
        send(client, user, float(value))
        return
    now = now_floor_us()
    xadd_json(client, "profile_events", [{"user_id": user, "uid": user + UID, "event_timestamp":
              now - H, "created": now, "tier": value, "score": 0.5}])  # fmt: skip


def value_of(store: FeatureStore, view: str, uid: int) -> tuple[Any, Status]:
    """What ``view`` serves for entity ``uid`` (the amount sum, or the tier) and its status."""
    feature = "amount_sum_1d" if view == "tx" else "tier"
    resp = store.get_online_features([f"{view}:{feature}"], [{"uid": uid}])
    return resp.to_dict()[feature][0], resp.statuses[feature][0]


@pytest.mark.parametrize("view", ["tx", "profile"])  # a window view, a plain view
def test_ingest_stays_off_a_rekeyed_view_until_the_old_rows_are_deleted(
    view: str, tmp_path: Path, redis_url: str
) -> None:
    """The old ingest stops before writing its next event, and a new one refuses until an
    apply ran with the stream's lock free; each says in one line what to do."""
    import redis

    client = redis.Redis.from_url(redis_url)
    both = view == "profile"
    repo = make_repo(tmp_path / "repo", redis_url, profile=both)
    with FeatureStore(repo) as store:
        store.apply()
    old = Running(repo).start()
    send_to(client, view, 1, 1)
    wait_for(lambda: row_keys(client, view, "user_id") != [], "the old ingest's first row")

    define(repo, "uid", profile=both)
    with FeatureStore(repo) as store:
        reports: list[Any] = []
        store.apply(report=reports.append)
        by_view = {r.view: r for r in reports}
        assert (by_view[view].deleted, by_view[view].pending) == (1, True)
        assert all(r.pending for r in reports)  # the same ingest reads every stream
        line = str(by_view[view])
        assert "stops at its next event for this view" in line and "\n" not in line
        assert store.registry.pending_cleanup[view]["ingest"] in line

    send_to(client, view, 2, 2)
    wait_for(lambda: old.stopped, "the old ingest to stop")
    msg = str(old.error)
    assert isinstance(old.error, FeatureStoreError) and "\n" not in msg
    assert f"feature view '{view}' is now keyed by ['uid']" in msg and "featurestore apply" in msg
    old.stop()
    assert row_keys(client, view, "user_id") == []

    with FeatureStore(repo) as store:
        with pytest.raises(FeatureStoreError) as info:
            store.ingest(once=True)  # started too soon: no apply ran since the old one stopped
        msg = str(info.value)
        assert "\n" not in msg and "still has online rows under its old join keys" in msg
        assert row_keys(client, view, "uid") == []

        reports.clear()
        store.apply(report=reports.append)  # no ingest runs now
        assert [(r.deleted, r.pending) for r in reports] == [(0, False)] * len(reports)
        assert store.registry.pending_cleanup == {}
        # the refused event, and user 1's, which the old ingest applied but never acknowledged
        assert store.ingest(once=True).applied == 2
        assert value_of(store, view, 2 + UID) == (2, Status.PRESENT)
        assert value_of(store, view, 1 + UID) == (1, Status.PRESENT)
    client.close()


def test_an_ingest_that_read_the_old_keys_before_the_apply_writes_none(
    tmp_path: Path, redis_url: str
) -> None:
    """No ingest ran at the apply, so it deleted everything at once; an ingest that had read
    the old definition just before still starts after it, and must not write the old keys."""
    import redis

    client = redis.Redis.from_url(redis_url)
    repo = make_repo(tmp_path / "repo", redis_url)
    with FeatureStore(repo) as store:
        store.apply()
    late = FeatureStore(repo)
    ingester = Ingester(late)  # the registry is read here, the stream's lock taken in run()

    define(repo, "uid")
    with FeatureStore(repo) as store:
        (change,) = [c for c in store.plan().changes if c.kind == "feature view"]
        assert "fed by stream(s) 'tx_events': stop their ingest first" in str(change)
        reports: list[Any] = []
        store.apply(report=reports.append)
        assert [(r.view, r.kept, r.pending) for r in reports] == [("tx", True, False)]
        assert store.registry.pending_cleanup == {}

    send(client, 4, 4.0)
    with pytest.raises(FeatureStoreError, match="start ingest again") as info:
        ingester.run(once=True)
    assert "\n" not in str(info.value)
    late.close()
    assert row_keys(client, "tx", "user_id") == []
    with FeatureStore(repo) as store:
        assert store.ingest(once=True).applied == 1
        assert served(store, 4 + UID) == (4.0, Status.PRESENT)
    client.close()


def test_the_fence_check_for_plain_views(tmp_path: Path, redis_url: str) -> None:
    """``check_fences`` (what ingest asks before writing plain views): pending, it stops every
    definition; settled, only the old keys, or the old kind of the keys."""
    import redis

    from featurestore.online.stream.apply import check_fences

    client = redis.Redis.from_url(redis_url)
    repo = make_repo(tmp_path / "repo", redis_url, profile=True)
    ints = {"user_id": pa.int64(), "uid": pa.int64()}
    with FeatureStore(repo) as store:
        store.apply()
        was = store.registry.feature_views["profile"]
        check_fences(store.online, PROJECT, [was], ints)  # no fence: nothing to say
        client.set("profile_events:ingest-lock", "host:1:old")  # an ingest runs

        define(repo, "uid", profile=True)
        store.apply(report=[].append)
        now = store.registry.feature_views["profile"]
        for view, said in ((was, "now keyed by ['uid']"), (now, "still has online rows")):
            with pytest.raises(FeatureStoreError, match=re.escape(said)):
                check_fences(store.online, PROJECT, [view], ints)

        define(repo, "uid", profile=True, ttl="3d")  # another change while it still runs
        store.apply(report=[].append)
        assert store.registry.pending_cleanup["profile"]["ingest"] == "host:1:old"
        with pytest.raises(FeatureStoreError, match="still has online rows"):
            check_fences(store.online, PROJECT, [now], ints)

        client.delete("profile_events:ingest-lock")  # it stopped
        store.apply()
        assert store.registry.pending_cleanup == {}
        check_fences(store.online, PROJECT, [now], ints)
        with pytest.raises(FeatureStoreError, match="start ingest again"):
            check_fences(store.online, PROJECT, [was], ints)
        with pytest.raises(FeatureStoreError, match="start ingest again"):
            check_fences(store.online, PROJECT, [now], {"uid": pa.string()})  # the old kind
    client.close()


def test_a_fenced_view_removed_then_defined_again_is_not_held_back(
    tmp_path: Path, redis_url: str
) -> None:
    """Removing a view whose fence stands deletes the fence with the rows once no ingest
    holds the lock; the same view defined again is written by ingest as any new view."""
    import redis

    from featurestore.online.stream.apply import check_fences, fence_key

    client = redis.Redis.from_url(redis_url)
    repo = make_repo(tmp_path / "repo", redis_url, profile=True)
    ints = {"user_id": pa.int64(), "uid": pa.int64()}
    with FeatureStore(repo) as store:
        store.apply()
        client.set("profile_events:ingest-lock", "host:1:old")
        define(repo, "uid", profile=True)
        store.apply(report=[].append)  # fenced: the old ingest holds the lock
        define(repo, "uid")  # profile removed
        store.apply(report=[].append)
        assert store.registry.pending_cleanup["profile"]["fenced"]
        client.delete("profile_events:ingest-lock")
        store.apply()
        assert store.registry.pending_cleanup == {}
        assert not client.get(fence_key(PROJECT, "profile"))  # nothing, or gone already

        define(repo, "uid", profile=True)  # defined again
        store.apply()
        check_fences(store.online, PROJECT, [store.registry.feature_views["profile"]], ints)
    client.close()
