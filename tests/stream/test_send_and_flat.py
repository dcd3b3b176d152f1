"""Producing events: ``store.send_events`` round trip (in process) and flat-field XADD entries,
which must work like JSON entries; ``max_events`` stops after that many."""

from __future__ import annotations

import json
import math
import re

import pytest

from featurestore import FeatureStore
from featurestore._time import to_us
from featurestore.errors import FeatureStoreError

from .conftest import (
    TX_REFS,
    H,
    client_of,
    dead_entries,
    iso,
    now_floor_us,
    pending_count,
    read_folder,
    xadd_json,
)


def _id(entry_id: str) -> tuple[int, int]:
    ms, seq = entry_id.split("-")
    return int(ms), int(seq)


def _tx(store: FeatureStore, users: list[int], now: int) -> dict:
    return store.get_online_features(TX_REFS, [{"user_id": u} for u in users], now=now).to_dict()


def test_send_events_round_trip(store) -> None:
    now = now_floor_us()
    client = client_of(store)
    rows = [
        {"user_id": 21, "event_timestamp": now - H, "amount": 4.5, "merchant_id": 1},
        {"user_id": 21, "event_timestamp": iso(now - 2 * H), "amount": None, "merchant_id": 2},
        {"user_id": 22, "event_timestamp": now - 3 * H, "amount": 8.0, "merchant_id": 1},
    ]
    ids = store.send_events("tx_stream", rows)
    assert len(ids) == 3 and all(re.fullmatch(r"\d+-\d+", i) for i in ids)
    entries = client.xrange("tx_events")
    assert [e[0].decode() for e in entries] == ids
    for (_, fields), row in zip(entries, rows, strict=True):
        data = json.loads(fields[b"data"])
        assert isinstance(data, dict)
        assert {k: data.get(k) for k in ("user_id", "amount", "merchant_id")} == {
            k: row[k] for k in ("user_id", "amount", "merchant_id")
        }
        assert to_us(data["event_timestamp"]) == to_us(row["event_timestamp"])

    # the column form gives the same entries
    cols = {
        "user_id": [23, 23],
        "event_timestamp": [now - H, now - 90 * 60_000_000],
        "amount": [1.25, 2.0],
        "merchant_id": [5, 6],
    }
    ids2 = store.send_events("tx_stream", cols)
    assert len(ids2) == 2 and _id(ids2[0]) > _id(ids[-1])

    stats = store.ingest(once=True)
    assert (stats.applied, stats.dead) == (5, 0)
    got = _tx(store, [21, 22, 23, 24], now)
    assert got["amount_count_1d"] == [1, 1, 2, 0]
    assert got["amount_sum_1d"][:3] == [4.5, 8.0, 3.25]
    assert got["merchant_id_distinct_count_1d"] == [2, 1, 2, 0]
    assert pending_count(client, "tx_events") == 0


def test_send_events_to_an_unknown_source_fails_naming_it(store) -> None:
    with pytest.raises(FeatureStoreError, match="no_such_stream"):
        store.send_events("no_such_stream", [{"user_id": 1}])


def test_flat_field_entries_work_like_json(store) -> None:
    now = now_floor_us()
    client = client_of(store)
    events = [
        {"event_timestamp": now - H, "amount": 12.5, "merchant_id": 3},
        {"event_timestamp": now - 2 * H, "amount": 0.1, "merchant_id": 4},
        {"event_timestamp": now - 30 * 60_000_000, "amount": 7.0, "merchant_id": 3},
    ]
    # user 31: JSON entries; user 32: the same events as flat string fields
    xadd_json(client, "tx_events", [{"user_id": 31, **e} for e in events])
    for i, e in enumerate(events):
        ts = iso(e["event_timestamp"]) if i % 2 == 0 else str(e["event_timestamp"])
        client.xadd(
            "tx_events",
            {
                "user_id": "32",
                "amount": repr(e["amount"]),
                "merchant_id": str(e["merchant_id"]),
                "event_timestamp": ts,
            },
        )
    bad = client.xadd(
        "tx_events",
        {"user_id": "32", "amount": "abc", "merchant_id": "1", "event_timestamp": iso(now)},
    ).decode()
    client.xadd(  # plain view, flat: strings parsed by each column's type
        "profile_events",
        {"user_id": "32", "event_timestamp": iso(now - H), "created": str(now - H), "tier": "3",
         "score": "0.75"},
    )  # fmt: skip

    stats = store.ingest(once=True)
    assert (stats.applied, stats.dead) == (7, 1)
    got = _tx(store, [31, 32], now)
    for f in got:
        if f != "user_id":
            assert got[f][0] == got[f][1], (f, got[f])
    assert got["amount_count_1d"] == [3, 3] and got["amount_sum_1d"][1] == math.fsum(
        [12.5, 0.1, 7.0]
    )
    dead = dead_entries(client, "tx_events")
    assert [d["id"] for d in dead] == [bad] and "amount" in dead[0]["reason"]
    prof = store.get_online_features(["profile:tier", "profile:score"], [{"user_id": 32}], now=now)
    assert prof.to_dict()["tier"] == [3] and prof.to_dict()["score"] == [0.75]

    rows = read_folder(store.config.repo_path / "data" / "tx")
    by_user = {
        u: sorted((r["event_timestamp"], r["amount"], r["merchant_id"]) for r in rows if r["user_id"] == u)
        for u in (31, 32)
    }  # fmt: skip
    assert by_user[31] == by_user[32] and len(by_user[31]) == 3


def test_max_events_stops_after_that_many(store) -> None:
    now = now_floor_us()
    client = client_of(store)
    xadd_json(
        client,
        "tx_events",
        [
            {"user_id": 41, "event_timestamp": now - H + i, "amount": 1.0, "merchant_id": 1}
            for i in range(20)
        ],
    )
    first = store.ingest(once=True, max_events=5)
    assert first.applied == 5
    assert pending_count(client, "tx_events") == 0
    assert _tx(store, [41], now)["amount_count_1d"] == [5]
    rest = store.ingest(once=True)
    assert rest.applied == 15 and rest.replayed == 0
    assert _tx(store, [41], now)["amount_count_1d"] == [20]
