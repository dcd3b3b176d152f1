"""Bad events go to ``<stream>:dead`` with their id and a reason naming the field; the good events
of the same batch are applied; nothing stays pending."""

from __future__ import annotations

import json

import pytest

from featurestore import FeatureStore

from .conftest import (
    DAY,
    LATENESS,
    H,
    dead_entries,
    iso,
    now_floor_us,
    pending_count,
    read_folder,
    small_repo,
    xadd_json,
)


@pytest.fixture
def repo(tmp_path, redis_url):
    return small_repo(tmp_path / "repo", redis_url, project="dead")


def _counts(store: FeatureStore, users: list[int], now: int) -> tuple[list, list]:
    d = store.get_online_features(
        ["tx:amount_count_1d", "tx:amount_sum_1d"], [{"user_id": u} for u in users], now=now
    ).to_dict()
    return d["amount_count_1d"], d["amount_sum_1d"]


def test_each_bad_kind_is_dead_lettered_and_the_good_ones_applied(repo, redis_url) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    now = now_floor_us()
    mark = now - H
    with FeatureStore(repo) as store:
        store.apply()
        xadd_json(client, "tx_events", [{"user_id": 5, "event_timestamp": mark, "amount": 1.0,
                                         "merchant_id": 1}])  # fmt: skip
        assert store.ingest(once=True).applied == 1

        good = {"user_id": 5, "amount": 10.0, "merchant_id": 2}
        entries: list[tuple[str, dict, str | None]] = [
            # (kind, fields, a word the reason must hold; None: a good event)
            ("good", {"data": json.dumps({**good, "event_timestamp": iso(now - 30 * 60_000_000)})}, None),
            ("not json", {"data": "not json{"}, "json"),
            ("not an object", {"data": "[1, 2]"}, "object"),
            ("missing key", {"data": json.dumps({"event_timestamp": now, "amount": 1.0, "merchant_id": 1})}, "user_id"),
            ("missing ts", {"data": json.dumps({"user_id": 5, "amount": 1.0, "merchant_id": 1})}, "event_timestamp"),
            ("bad ts", {"data": json.dumps({**good, "event_timestamp": "yesterday at noon"})}, "event_timestamp"),
            ("abc float", {"data": json.dumps({**good, "event_timestamp": now, "amount": "abc"})}, "amount"),
            ("float for int", {"data": json.dumps({**good, "event_timestamp": now, "merchant_id": 1.5})}, "merchant_id"),
            ("late", {"data": json.dumps({**good, "event_timestamp": mark - DAY - LATENESS - H})}, "late"),
            ("good extra field", {"data": json.dumps({"user_id": 6, "event_timestamp": now - H, "amount": 2.5, "merchant_id": 3, "foo": "bar"})}, None),
            ("good int for float", {"data": json.dumps({**good, "event_timestamp": now - 2 * H, "amount": 3})}, None),
        ]  # fmt: skip
        pipe = client.pipeline(transaction=False)
        for _, fields, _ in entries:
            pipe.xadd("tx_events", fields)
        ids = [i.decode() for i in pipe.execute()]

        stats = store.ingest(once=True)
        n_bad = sum(1 for e in entries if e[2] is not None)
        assert stats.dead == n_bad, stats
        assert stats.applied == len(entries) - n_bad, stats

        dead = dead_entries(client, "tx_events")
        assert len(dead) == n_bad
        by_id = {d["id"]: d for d in dead}
        for (kind, _fields, word), entry_id in zip(entries, ids, strict=True):
            if word is None:
                assert entry_id not in by_id, (kind, by_id.get(entry_id))
                continue
            d = by_id.get(entry_id)
            assert d is not None, (kind, "not dead-lettered", dead)
            assert d["source"] == "tx_stream", d
            reason = d["reason"]
            assert reason and "\n" not in reason, (kind, reason)
            assert word in reason.lower(), (kind, reason)
            assert d["data"], (kind, d)
            json.loads(d["data"])  # the original entry as JSON
        assert "not json{" in by_id[ids[1]]["data"]
        assert "abc" in by_id[ids[6]]["data"]

        # the good ones of the batch were applied: 1 + 10 + 3 for user 5, 2.5 for user 6
        assert _counts(store, [5, 6], now) == ([3, 1], [14.0, 2.5])
        assert pending_count(client, "tx_events") == 0

    # offline: the good events only (the late one is not appended either)
    rows = [r for r in read_folder(repo / "data" / "tx") if r["user_id"] in (5, 6)]
    assert sorted((r["user_id"], r["amount"]) for r in rows) == [
        (5, 1.0),
        (5, 3.0),
        (5, 10.0),
        (6, 2.5),
    ]


def test_plain_view_bad_values_are_dead_lettered(repo, redis_url) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    now = now_floor_us()
    with FeatureStore(repo) as store:
        store.apply()
        ids = xadd_json(
            client,
            "profile_events",
            [
                {"user_id": 9, "event_timestamp": now - H, "created": now - H, "tier": "gold"},
                {"user_id": 9, "event_timestamp": now - 2 * H, "created": now, "tier": 4},
                {"user_id": "nine", "event_timestamp": now - H, "created": now, "tier": 4},
            ],
        )
        stats = store.ingest(once=True)
        assert (stats.applied, stats.dead) == (1, 2)
        dead = {d["id"]: d for d in dead_entries(client, "profile_events")}
        assert set(dead) == {ids[0], ids[2]}
        assert "tier" in dead[ids[0]]["reason"] and "user_id" in dead[ids[2]]["reason"]
        resp = store.get_online_features(["profile:tier"], [{"user_id": 9}], now=now)
        assert resp.to_dict()["tier"] == [4]
        assert pending_count(client, "profile_events") == 0


def test_values_out_of_range_are_dead_letters_not_a_crash(repo, redis_url) -> None:
    """Poison entries (numbers past int64, bytes that are not UTF-8) must not stop the loop."""
    import redis

    client = redis.Redis.from_url(redis_url)
    now = now_floor_us()
    good = {"user_id": 90, "event_timestamp": now - H, "amount": 2.0, "merchant_id": 1}
    entries = [
        ("ts past int64", {"data": json.dumps({**good, "event_timestamp": 2**63 + 5})}),
        ("flat ts past int64", {"user_id": "90", "amount": "1", "merchant_id": "1",
                                "event_timestamp": "99999999999999999999"}),
        ("int past int64", {"data": json.dumps({**good, "merchant_id": 2**63 + 5})}),
        ("key past uint64", {"data": json.dumps({**good, "user_id": 2**65})}),
        ("not utf-8", {"data": b"\xff\xfe{"}),
        ("flat no key", {"amount": "1.0", "event_timestamp": iso(now)}),
    ]  # fmt: skip
    with FeatureStore(repo) as store:
        store.apply()
        pipe = client.pipeline(transaction=False)
        for _, fields in entries:
            pipe.xadd("tx_events", fields)
        pipe.xadd("tx_events", {"data": json.dumps(good)})
        ids = [i.decode() for i in pipe.execute()]
        stats = store.ingest(once=True)
        assert (stats.applied, stats.dead) == (1, len(entries)), stats
        dead = {d["id"]: d for d in dead_entries(client, "tx_events")}
        assert set(dead) == set(ids[:-1])
        for (kind, _), entry_id in zip(entries, ids, strict=False):
            assert dead[entry_id]["reason"] and "\n" not in dead[entry_id]["reason"], kind
        assert "merchant_id" in dead[ids[2]]["reason"]
        assert "event_timestamp" in dead[ids[1]]["reason"]
        assert "user_id" in dead[ids[5]]["reason"]
        resp = store.get_online_features(["tx:amount_count_1d"], [{"user_id": 90}], now=now)
        assert resp.to_dict()["amount_count_1d"] == [1]
        assert pending_count(client, "tx_events") == 0
        # the training set still reads the folder
        import pyarrow as pa

        spine = pa.table(
            {"user_id": [90], "event_timestamp": pa.array([now], pa.timestamp("us", tz="UTC"))}
        )
        hist = store.get_historical_features(spine, ["tx:amount_count_1d"]).to_dict(as_series=False)
        assert hist["amount_count_1d"] == [1]
