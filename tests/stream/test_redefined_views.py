"""A window view redefined by apply (a new window plan) holds states of its old definition until
it is materialized again. Ingest must not restart such a state from the new events alone (a
partial value served as present): it stops, saying to materialize first. A new entity still
starts afresh, and after the materialize a state it did not rewrite is no obstacle."""

from __future__ import annotations

import pytest

from featurestore import FeatureStore
from featurestore.errors import FeatureStoreError
from featurestore.online.base import Status
from featurestore.online.keys import build_keys

from .conftest import DAY, DEFS, H, now_floor_us, small_repo, xadd_json

LATER = DEFS.replace('allowed_lateness="2h"', 'allowed_lateness="3h"')  # a new window plan
SHORT = DEFS.replace('"1d"', '"6h"')  # horizon 8 h: materialize leaves older states as they are


def _served(store: FeatureStore, user: int, now: int, feature: str = "amount_count_1d"):
    resp = store.get_online_features([f"tx:{feature}"], [{"user_id": user}], now=now)
    return resp.to_dict()[feature][0], resp.statuses[feature][0]


def _event(user: int, ts: int, amount: float = 1.0) -> dict:
    return {"user_id": user, "event_timestamp": ts, "amount": amount, "merchant_id": 1}


def test_ingest_stops_at_a_state_of_the_old_definition(tmp_path, redis_url) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    repo = small_repo(tmp_path / "repo", redis_url, project="redef")
    now = now_floor_us()
    with FeatureStore(repo) as store:
        store.apply()
        xadd_json(client, "tx_events", [_event(5, now - 2 * H, 10.0)])
        assert store.ingest(once=True).applied == 1
        assert _served(store, 5, now) == (1, Status.PRESENT)

    (repo / "definitions.py").write_text(LATER)
    with FeatureStore(repo) as store:
        store.apply()
        xadd_json(client, "tx_events", [_event(5, now - H, 1.0)])
        with pytest.raises(FeatureStoreError) as info:
            store.ingest(once=True)
        msg = str(info.value)
        assert "\n" not in msg and "feature view 'tx'" in msg and "materialize" in msg
        # not served: the old state reads as absent, and no fresh one holds the new event alone
        assert _served(store, 5, now) == (0, Status.NOT_FOUND)
        assert _served(store, 5, now, "amount_sum_1d")[1] == Status.NOT_FOUND

        store.materialize(now - 3 * DAY, now, views=["tx"])
        assert _served(store, 5, now) == (1, Status.PRESENT)  # the event in the files
        stats = store.ingest(once=True)  # the refused entry is read again, and applied now
        assert stats.applied == 1, stats
        assert _served(store, 5, now) == (2, Status.PRESENT)
        assert _served(store, 5, now, "amount_sum_1d")[0] == 11.0
    client.close()


def test_a_new_entity_starts_afresh_after_a_redefinition(tmp_path, redis_url) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    repo = small_repo(tmp_path / "repo", redis_url, project="redefnew")
    now = now_floor_us()
    with FeatureStore(repo) as store:
        store.apply()
        xadd_json(client, "tx_events", [_event(5, now - 2 * H)])
        store.ingest(once=True)
    (repo / "definitions.py").write_text(LATER)
    with FeatureStore(repo) as store:
        store.apply()
        xadd_json(client, "tx_events", [_event(77, now - H, 3.0)])  # no state at all
        assert store.ingest(once=True).applied == 1
        assert _served(store, 77, now) == (1, Status.PRESENT)
        assert _served(store, 77, now, "amount_sum_1d")[0] == 3.0
    client.close()


def test_a_state_the_materialize_left_does_not_stop_ingest(tmp_path, redis_url) -> None:
    """The new horizon is shorter than the old state's events are old: materialize does not
    rewrite that state, and ingest starts it afresh instead of asking for materialize forever."""
    import redis

    client = redis.Redis.from_url(redis_url)
    repo = small_repo(tmp_path / "repo", redis_url, project="redefold")
    now = now_floor_us()
    with FeatureStore(repo) as store:
        store.apply()
        xadd_json(client, "tx_events", [_event(6, now - 20 * H)])
        assert store.ingest(once=True).applied == 1
    (repo / "definitions.py").write_text(SHORT)
    with FeatureStore(repo) as store:
        store.apply()
        store.materialize(now - 3 * DAY, now, views=["tx"])
        key = build_keys(store.project, "tx", ("user_id",), [[6]])
        assert store.online.read(key)[0] is not None  # the old definition's state is still there
        xadd_json(client, "tx_events", [_event(6, now - H, 4.0)])
        assert store.ingest(once=True).applied == 1
        assert _served(store, 6, now, "amount_count_6h") == (1, Status.PRESENT)
        assert _served(store, 6, now, "amount_sum_6h")[0] == 4.0
    client.close()
