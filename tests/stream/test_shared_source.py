"""One StreamSource read by a window view and a plain view: each event updates both views, is
appended to the batch folder once (not once per view), and the late-event edge is exact."""

from __future__ import annotations

from featurestore import FeatureStore
from featurestore.online.base import Status

from .conftest import (
    DAY,
    DEFS,
    LATENESS,
    H,
    dead_entries,
    now_floor_us,
    pending_count,
    read_folder,
    small_repo,
    tx_key,
    xadd_json,
)

SHARED = (
    DEFS
    + """
last_tx = FeatureView(
    name="last_tx",
    entities=[user],
    source=tx_stream,
    ttl="2d",
    schema=[Field("amount", Float64), Field("merchant_id", Int64)],
)
"""
)
HORIZON = DAY + LATENESS


def test_both_views_of_one_source_are_updated_and_the_folder_gets_each_event_once(
    tmp_path, redis_url
) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    repo = small_repo(tmp_path / "repo", redis_url, project="shared", defs=SHARED)
    now = now_floor_us()
    events = [
        {"user_id": 80, "event_timestamp": now - 2 * H, "amount": 5.0, "merchant_id": 1},
        {"user_id": 80, "event_timestamp": now - H, "amount": 7.0, "merchant_id": 2},
        {"user_id": 80, "event_timestamp": now - 3 * H, "amount": 9.0, "merchant_id": 3},
        {"user_id": 81, "event_timestamp": now - H, "amount": None, "merchant_id": 4},
    ]
    with FeatureStore(repo) as store:
        store.apply()
        xadd_json(client, "tx_events", events)
        stats = store.ingest(once=True)
        assert stats.dead == 0
        resp = store.get_online_features(
            ["tx:amount_count_1d", "tx:amount_sum_1d", "last_tx:amount", "last_tx:merchant_id"],
            [{"user_id": 80}, {"user_id": 81}],
            now=now,
        )
        got = resp.to_dict()
        assert got["amount_count_1d"] == [3, 0] and got["amount_sum_1d"] == [21.0, 0.0]
        assert got["amount"] == [7.0, None] and got["merchant_id"] == [2, 4]
        assert resp.statuses["amount"] == [Status.PRESENT, Status.PRESENT]

        # the late edge, against user 80's watermark (now - 1h): one microsecond inside the
        # horizon is applied; older is dead for the whole source (neither view, not offline)
        mark = now - H
        inside = {"user_id": 80, "event_timestamp": mark - HORIZON + 1, "amount": 1.0,
                  "merchant_id": 5}  # fmt: skip
        late = {**inside, "event_timestamp": mark - HORIZON - H, "amount": 100.0}
        ids = xadd_json(client, "tx_events", [inside, late])
        stats = store.ingest(once=True)
        assert (stats.applied, stats.dead) == (1, 1), stats
        assert [d["id"] for d in dead_entries(client, "tx_events")] == [ids[1]]
        got = store.get_online_features(
            ["tx:amount_count_1d", "last_tx:amount"], [{"user_id": 80}], now=now
        ).to_dict()
        assert got["amount_count_1d"] == [3] and got["amount"] == [7.0]  # out of window, older
        # read where the accepted event is inside the 1d window: it counts
        early = mark - LATENESS
        got = store.get_online_features(
            ["tx:amount_count_1d", "tx:amount_sum_1d"], [{"user_id": 80}], now=early
        ).to_dict()
        # (early - 1d, early] = (now - 27h, now - 3h]: the 1.0 event (at its start + 1 us) and 9.0
        assert got["amount_count_1d"] == [2] and got["amount_sum_1d"] == [10.0]
        assert pending_count(client, "tx_events") == 0

    rows = [r for r in read_folder(repo / "data" / "tx") if r["user_id"] in (80, 81)]
    assert sorted(map(tx_key, rows), key=repr) == sorted(map(tx_key, [*events, inside]), key=repr)
