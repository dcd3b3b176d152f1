"""The ``stream:`` section of featurestore.yaml is honoured (group, dead-letter suffix,
write_offline), and a first start on a stream that does not exist yet creates it and the group."""

from __future__ import annotations

import json

from featurestore import FeatureStore

from .conftest import (
    H,
    dead_entries,
    now_floor_us,
    pending_count,
    read_folder,
    small_repo,
    stream_files,
    xadd_json,
)


def test_first_start_creates_the_stream_and_group_then_reads_from_the_start(
    tmp_path, redis_url
) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    repo = small_repo(tmp_path / "repo", redis_url, project="cfg1")
    now = now_floor_us()
    with FeatureStore(repo) as store:
        store.apply()
        assert not client.exists("tx_events")
        stats = store.ingest(once=True)
        assert (stats.applied, stats.dead) == (0, 0)
        assert client.exists("tx_events") and client.exists("profile_events")
        assert [g["name"] for g in client.xinfo_groups("tx_events")] == [b"featurestore"]
        xadd_json(
            client,
            "tx_events",
            [{"user_id": 70, "event_timestamp": now - H, "amount": 3.0, "merchant_id": 1}],
        )
        assert store.ingest(once=True).applied == 1
        resp = store.get_online_features(["tx:amount_sum_1d"], [{"user_id": 70}], now=now)
        assert resp.to_dict()["amount_sum_1d"] == [3.0]


def test_group_suffix_and_write_offline_come_from_the_config(tmp_path, redis_url) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    yaml = (
        "stream:\n  group: g2\n  dead_letter_suffix: ':bad'\n  write_offline: false\n"
        "  block_ms: 20\n  batch_size: 7\n"
    )
    repo = small_repo(tmp_path / "repo", redis_url, project="cfg2", stream_yaml=yaml)
    now = now_floor_us()
    events = [
        {"user_id": 71, "event_timestamp": now - H + i, "amount": 1.0, "merchant_id": 1}
        for i in range(20)
    ]
    xadd_json(client, "tx_events", events)
    bad = client.xadd("tx_events", {"data": json.dumps({"user_id": 71})}).decode()
    with FeatureStore(repo) as store:
        store.apply()
        stats = store.ingest(once=True)
        assert (stats.applied, stats.dead) == (20, 1)
        assert stats.batches >= 3  # 21 entries, 7 per read
        resp = store.get_online_features(["tx:amount_count_1d"], [{"user_id": 71}], now=now)
        assert resp.to_dict()["amount_count_1d"] == [20]
    assert [g["name"] for g in client.xinfo_groups("tx_events")] == [b"g2"]
    assert pending_count(client, "tx_events", group="g2") == 0
    assert [d["id"] for d in dead_entries(client, "tx_events", suffix=":bad")] == [bad]
    assert not client.exists("tx_events:dead")
    # write_offline: false: nothing appended to the batch folder
    assert stream_files(repo / "data" / "tx") == []
    assert [r["user_id"] for r in read_folder(repo / "data" / "tx")] == [0]
