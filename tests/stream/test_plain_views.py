"""Plain views fed by a stream: per entity the newest event (event time, then created time, then
stream order) is served, an older one never overwrites it, missing columns are null, and rows
past the ttl are not served."""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featurestore import FeatureStore
from featurestore.online.base import Status

from .conftest import DAY, H, client_of, now_floor_us, pending_count, read_folder, xadd_json

_IDS = itertools.count(1000)


def _row(user: int, ts: int, tier: int | None, created: int | None = None, **extra) -> dict:
    return {
        "user_id": user,
        "event_timestamp": ts,
        "created": ts if created is None else created,
        "tier": tier,
        **extra,
    }


def _served(store: FeatureStore, user: int, now: int) -> tuple[int | None, float | None, Status]:
    resp = store.get_online_features(
        ["profile:tier", "profile:score"], [{"user_id": user}], now=now
    )
    d = resp.to_dict()
    return d["tier"][0], d["score"][0], resp.statuses["tier"][0]


def test_out_of_order_in_one_batch_keeps_the_newest(store) -> None:
    now = now_floor_us()
    client = client_of(store)
    xadd_json(
        client,
        "profile_events",
        [
            _row(1, now - 2 * H, 1),
            _row(1, now - H, 2),  # newest
            _row(1, now - 3 * H, 3),  # older, after the newest
            _row(2, now - H, 7, score=0.5),
        ],
    )
    stats = store.ingest(once=True)
    assert stats.applied == 4 and stats.dead == 0
    assert _served(store, 1, now) == (2, None, Status.PRESENT)
    assert _served(store, 2, now) == (7, 0.5, Status.PRESENT)
    assert pending_count(client, "profile_events") == 0


def test_an_older_event_in_a_later_batch_does_not_overwrite(store) -> None:
    now = now_floor_us()
    client = client_of(store)
    xadd_json(client, "profile_events", [_row(3, now - H, 5, created=now - H + 10, score=1.5)])
    store.ingest(once=True)
    assert _served(store, 3, now) == (5, 1.5, Status.PRESENT)

    xadd_json(client, "profile_events", [_row(3, now - 3 * H, 6, score=2.5)])  # older
    store.ingest(once=True)
    assert _served(store, 3, now) == (5, 1.5, Status.PRESENT)

    # same event time, lower created time: older, not written
    xadd_json(client, "profile_events", [_row(3, now - H, 8, created=now - H + 5)])
    store.ingest(once=True)
    assert _served(store, 3, now) == (5, 1.5, Status.PRESENT)

    # same event time, higher created time: newer; its missing score is null
    xadd_json(client, "profile_events", [_row(3, now - H, 9, created=now - H + 20)])
    store.ingest(once=True)
    assert _served(store, 3, now) == (9, None, Status.PRESENT)

    xadd_json(client, "profile_events", [_row(3, now - 30 * 60_000_000, 4, score=-1.0)])
    store.ingest(once=True)
    assert _served(store, 3, now) == (4, -1.0, Status.PRESENT)


def test_ttl_rows_past_it_are_not_served(store) -> None:
    now = now_floor_us()
    client = client_of(store)
    ttl = 2 * DAY
    xadd_json(
        client,
        "profile_events",
        [
            _row(4, now - ttl - H, 1, score=1.0),  # already past the ttl when it arrives
            _row(5, now - H, 2, score=2.0),
        ],
    )
    stats = store.ingest(once=True)
    assert stats.dead == 0
    tier, score, status = _served(store, 4, now)
    assert (tier, score) == (None, None) and status in (Status.EXPIRED, Status.NOT_FOUND)
    assert _served(store, 5, now) == (2, 2.0, Status.PRESENT)
    # the same row judged later: on the ttl edge still served, past it expired
    assert _served(store, 5, now - H + ttl) == (2, 2.0, Status.PRESENT)
    assert _served(store, 5, now - H + ttl + 1) == (None, None, Status.EXPIRED)
    # the training set sees the old event (the offline store keeps history)
    rows = [
        r for r in read_folder(store.config.repo_path / "data" / "profile") if r["user_id"] == 4
    ]
    assert len(rows) == 1 and rows[0]["tier"] == 1


EVENT = st.tuples(
    st.integers(0, 3),  # event time step (few values: many ties)
    st.integers(0, 2),  # created time step (ties too)
    st.integers(0, 99),  # tier
)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(events=st.lists(EVENT, min_size=1, max_size=12), cuts=st.sets(st.integers(1, 11)))
def test_served_row_is_the_newest_by_event_created_then_stream_order(store, events, cuts) -> None:
    """Whatever the arrival order and however the events split into ingest runs."""
    user = next(_IDS)
    now = now_floor_us()
    base = now - 10 * H
    client = client_of(store)
    rows = [
        _row(user, base + e * H, tier, created=base + e * H + c * 1000, score=float(i))
        for i, (e, c, tier) in enumerate(events)
    ]
    bounds = [0, *sorted(c for c in cuts if c < len(rows)), len(rows)]
    for a, b in itertools.pairwise(bounds):
        xadd_json(client, "profile_events", rows[a:b])
        store.ingest(once=True)
    best = max(range(len(rows)), key=lambda i: (rows[i]["event_timestamp"], rows[i]["created"], i))
    assert _served(store, user, now) == (rows[best]["tier"], float(best), Status.PRESENT)
