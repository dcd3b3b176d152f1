"""Apply changing the join keys of stream-fed views while their ingest runs (a real redis-server,
real ingest threads): the rows of the old keys are deleted in the end, and no cleanup ever
deletes a row an ingest wrote under the new keys.

The ingest still running with the old keys stops at its next event for a re-keyed view, and no
ingest (nor materialize) writes it until an apply has taken the stream's lock and deleted what
the old one wrote; no apply deletes while another holds the lock or the stream server does not
answer; an ingest that read the registry before the apply but starts after it stops too.
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
from featurestore.online.stream.apply import check_fences, fence_key

from ..conftest import free_port
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
        assert row_keys(client, "tx", "user_id") != []  # nothing deleted under its lock

    send(client, 2, 2.0)  # the old ingest's next event for the view
    wait_for(
        lambda: old.stopped or row_keys(client, "tx", "user_id") != [],
        "the old ingest to stop or write user 2",
    )
    old.stop()

    new = Running(repo).start()  # restarted too soon, with the new join keys: it refuses
    send(client, 3, 3.0)
    wait_for(
        lambda: new.stopped or row_keys(client, "tx", "uid") != [],
        "the restarted ingest to stop or write",
    )
    new.stop()
    assert "still has online rows" in str(new.error) and row_keys(client, "tx", "uid") == []

    with FeatureStore(repo) as store:
        store.apply()  # no changes: what is left to clean up
        assert store.registry.pending_cleanup == {}
        store.ingest(once=True)  # every event not acknowledged, under the new keys
        assert served(store, 3 + UID) == (3.0, Status.PRESENT)
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
        assert (by_view[view].deleted, by_view[view].pending) == (0, True)  # under its lock
        assert row_keys(client, view, "user_id") != []
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
    assert len(row_keys(client, view, "user_id")) == 1  # user 1's, deleted by the next apply

    with FeatureStore(repo) as store:
        with pytest.raises(FeatureStoreError) as info:
            store.ingest(once=True)  # started too soon: no apply ran since the old one stopped
        msg = str(info.value)
        assert "\n" not in msg and "still has online rows under its old join keys" in msg
        assert row_keys(client, view, "uid") == []

        reports.clear()
        store.apply(report=reports.append)  # no ingest runs now
        assert {r.view: (r.deleted, r.pending) for r in reports}[view] == (1, False)
        assert not any(r.pending for r in reports)
        assert store.registry.pending_cleanup == {}
        assert row_keys(client, view, "user_id") == []
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
    # settled with no expiry: however late that ingest starts, the fence still stops it
    assert client.pttl(fence_key(PROJECT, "tx")) == -1

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


def fence_pending(repo: Path, client: Any) -> None:
    """Re-key the repo's views while an old ingest holds the stream's lock, then let the lock
    go (the old ingest stopped): the fence stands pending, nothing is deleted yet."""
    with FeatureStore(repo) as store:
        store.apply()
        client.set("tx_events:ingest-lock", "host:1:old")
        define(repo, "uid")
        store.apply(report=[].append)
        assert store.registry.pending_cleanup["tx"]["ingest"] == "host:1:old"
    client.delete("tx_events:ingest-lock")


def recent_tx(repo: Path, users: list[int]) -> None:
    """Batch events of ``users`` an hour ago (inside the 1-day window), which materialize
    writes under the new keys."""
    at = hour_floor_now_us() - H
    rows = [{"user_id": u, "uid": u + UID, "event_timestamp": at, "amount": 10.0 + u,
             "merchant_id": 1} for u in users]  # fmt: skip
    write_events(repo / "data" / "tx", "recent.parquet", rows, TX_TYPES)


def new_key_rows(client: Any) -> list[bytes]:
    return row_keys(client, "tx", "uid")


def test_an_apply_during_a_materialize_of_a_pending_view_loses_no_rows(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reviewer's case: the fence is pending, cron's materialize-incremental writes the
    view under the new keys holding the stream's lock, and an apply runs meanwhile (just
    before the watermark is recorded). No row written under the new keys may be deleted, and
    the watermark must say what the store holds; once an apply cleaned up, the same again."""
    import redis

    from featurestore.registry import watermark_us

    client = redis.Redis.from_url(redis_url)
    repo = make_repo(tmp_path / "repo", redis_url)
    recent_tx(repo, [5, 6])
    fence_pending(repo, client)

    def materialize_with_an_apply_meanwhile() -> tuple[Any, list[Any]]:
        during: list[Any] = []
        with FeatureStore(repo) as cron, FeatureStore(repo) as other:
            record = cron._record_watermark

            def apply_first(view: Any, start: int, end: int) -> None:
                written = new_key_rows(client)
                other.apply(report=during.append)  # the stream's lock is held by cron
                assert new_key_rows(client) == written, "an apply deleted materialized rows"
                record(view, start, end)

            monkeypatch.setattr(cron, "_record_watermark", apply_first)
            return cron.materialize_incremental(now_floor_us(), skip_busy=True), during

    def consistent() -> int | None:
        with FeatureStore(repo) as store:
            mark = watermark_us(store.registry, "tx", store._store_id)
            rows = new_key_rows(client)
            assert bool(rows) == (mark is not None), (rows, mark)  # watermark matches data
            if rows:
                assert served(store, 5 + UID) == (15.0, Status.PRESENT)
                assert served(store, 6 + UID) == (16.0, Status.PRESENT)
            return mark

    res, during = materialize_with_an_apply_meanwhile()
    assert consistent() is None  # the view was left alone: its old rows are not deleted yet
    assert list(res.skipped) == ["tx"] and "\n" not in res.skipped["tx"]
    assert "run featurestore apply" in res.skipped["tx"] and res.rows == {}
    with FeatureStore(repo) as store:
        with pytest.raises(FeatureStoreError, match="feature view 'tx' cannot be materialized"):
            store.materialize_incremental(now_floor_us(), views=["tx"])  # named: refused
        store.apply()  # the lock is free: the old rows go, the fence settles
        assert store.registry.pending_cleanup == {}

    res, during = materialize_with_an_apply_meanwhile()
    assert res.rows["tx"] >= 2 and len(during) == 0  # nothing left to clean up
    assert consistent() is not None
    with FeatureStore(repo) as store:
        store.apply()
    assert consistent() is not None
    client.close()


def test_a_second_apply_while_the_old_ingest_holds_the_lock_deletes_nothing(
    tmp_path: Path, redis_url: str
) -> None:
    """Every apply while an ingest holds the stream's lock leaves the view's rows alone (it
    may write them still); the first apply after it stopped deletes them."""
    import redis

    client = redis.Redis.from_url(redis_url)
    repo = make_repo(tmp_path / "repo", redis_url)
    with FeatureStore(repo) as store:
        store.apply()
    old = Running(repo).start()
    send(client, 1, 1.0)
    wait_for(lambda: row_keys(client, "tx", "user_id") != [], "the old ingest's first state")
    written = row_keys(client, "tx", "user_id")

    define(repo, "uid")
    for change in ("keys", "none"):
        with FeatureStore(repo) as store:
            reports: list[Any] = []
            store.apply(report=reports.append)
            assert [(r.view, r.deleted, r.pending) for r in reports] == [("tx", 0, True)], change
            assert row_keys(client, "tx", "user_id") == written, change
    old.stop()
    with FeatureStore(repo) as store:
        reports = []
        store.apply(report=reports.append)
        assert [(r.view, r.deleted, r.pending) for r in reports] == [("tx", 1, False)]
    assert row_keys(client, "tx", "user_id") == []
    client.close()


def test_ingest_refuses_to_start_on_a_pending_fence(tmp_path: Path, redis_url: str) -> None:
    """With the fence pending, ingest stops when it starts, before any event for the view
    comes (none does here), says what to do in one line, and leaves the lock free."""
    import redis

    client = redis.Redis.from_url(redis_url)
    repo = make_repo(tmp_path / "repo", redis_url)
    fence_pending(repo, client)
    with FeatureStore(repo) as store:
        with pytest.raises(FeatureStoreError) as info:
            store.ingest(once=True)
        msg = str(info.value)
        assert "\n" not in msg and "feature view 'tx' still has online rows" in msg
        assert "run featurestore apply" in msg
        assert client.get("tx_events:ingest-lock") is None
        store.apply()
        assert store.ingest(once=True).read == 0  # settled: it starts
    client.close()


def test_an_unreachable_stream_server_deletes_nothing(tmp_path: Path, redis_url: str) -> None:
    """An apply that cannot reach the stream server cannot tell whether an ingest still writes
    the view: it leaves the rows and the fence pending, and says so in one line; the first
    apply that reaches it cleans up."""
    import redis

    client = redis.Redis.from_url(redis_url)
    repo = make_repo(tmp_path / "repo", redis_url)
    with FeatureStore(repo) as store:
        store.apply()
    old_row = f"{PROJECT}:{{{PROJECT}|user_id=1}}:tx".encode()
    client.set(old_row, b"written by an ingest")
    yaml = repo / "featurestore.yaml"
    reachable = yaml.read_text()
    yaml.write_text(reachable + f"  url: redis://127.0.0.1:{free_port()}/0\n")  # nothing there
    define(repo, "uid")
    ints = {"user_id": pa.int64(), "uid": pa.int64()}
    with FeatureStore(repo) as store:
        reports: list[Any] = []
        store.apply(report=reports.append)
        (report,) = reports
        line = str(report)
        assert (report.view, report.failed, report.pending) == ("tx", True, True)
        assert "stream server did not answer" in line and "\n" not in line
        assert client.get(old_row) is not None
        assert store.registry.pending_cleanup["tx"]["fenced"]
        with pytest.raises(FeatureStoreError, match="still has online rows"):
            check_fences(store.online, PROJECT, [store.registry.feature_views["tx"]], ints)
    yaml.write_text(reachable)
    with FeatureStore(repo) as store:
        store.apply()
        assert store.registry.pending_cleanup == {} and client.get(old_row) is None
        check_fences(store.online, PROJECT, [store.registry.feature_views["tx"]], ints)
    client.close()


def test_a_crash_before_the_cleanup_leaves_the_record_fenced(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An apply that wrote the registry but died before its cleanup ran: the record is fenced
    from the start, so the next apply, while the old ingest still holds the lock, deletes
    nothing (no view-wide delete of a 'view defined again' behind the fence's back)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    repo = make_repo(tmp_path / "repo", redis_url)
    with FeatureStore(repo) as store:
        store.apply()
    old_row = f"{PROJECT}:{{{PROJECT}|user_id=1}}:tx".encode()
    client.set(old_row, b"written by the old ingest")
    client.set("tx_events:ingest-lock", "host:1:old")
    define(repo, "uid")
    with FeatureStore(repo) as store:
        monkeypatch.setattr(store, "_report_cleanup", lambda report: None)  # the crash
        store.apply()
        assert store.registry.pending_cleanup["tx"]["fenced"]
    with FeatureStore(repo) as store:
        reports: list[Any] = []
        store.apply(report=reports.append)
        assert [(r.view, r.deleted, r.pending) for r in reports] == [("tx", 0, True)]
        assert client.get(old_row) is not None
    client.delete("tx_events:ingest-lock")
    with FeatureStore(repo) as store:
        store.apply()
        assert store.registry.pending_cleanup == {} and client.get(old_row) is None
    client.close()


def test_an_online_push_to_a_view_with_a_pending_fence_is_refused(
    tmp_path: Path, redis_url: str
) -> None:
    """A row pushed online under the new keys while the old rows wait for their view-wide
    delete would be deleted with them: the push is refused (503) until an apply cleaned up;
    an offline push is still taken."""
    import redis

    from featurestore.online.serving.errors import NotReadyError

    client = redis.Redis.from_url(redis_url)
    repo = make_repo(tmp_path / "repo", redis_url, profile=True)
    row = {"uid": UID + 1, "tier": 1, "score": 0.5}
    with FeatureStore(repo) as store:
        store.apply()
        client.set("profile_events:ingest-lock", "host:1:old")
        define(repo, "uid", profile=True)
        store.apply(report=[].append)
        assert store.registry.pending_cleanup["profile"]["fenced"]
        with pytest.raises(NotReadyError, match="feature view 'profile' changed its join keys"):
            store.push("profile", [row])
        assert row_keys(client, "profile", "uid") == []
        assert store.push("profile", [row], to="offline") == 1
    client.delete("profile_events:ingest-lock")
    with FeatureStore(repo) as store:
        store.apply(report=[].append)
        assert "profile" not in store.registry.pending_cleanup
        assert store.push("profile", [row]) == 1
    assert len(row_keys(client, "profile", "uid")) == 1
    client.close()
