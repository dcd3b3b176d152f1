"""``stream.dead_letter_maxlen``: the dead-letter stream keeps only the newest N letters (a
producer bug dead-lettering every event would otherwise grow Redis without end); unset, every
letter stays, as before."""

from __future__ import annotations

import json

import pytest

from featurestore import FeatureStore
from featurestore.config import load_config
from featurestore.errors import ConfigError

from .conftest import FAST_STREAM, dead_entries, small_repo


def _bad_events(client, n: int) -> list[str]:
    """``n`` events missing their join key, in order; their entry ids."""
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd("tx_events", {"data": json.dumps({"amount": float(i), "merchant_id": 1})})
    return [i.decode() for i in pipe.execute()]


@pytest.mark.parametrize("cap", [3, None])
def test_the_dead_letter_stream_keeps_the_newest_n(tmp_path, redis_url, cap) -> None:
    import redis

    extra = f"  dead_letter_maxlen: {cap}\n" if cap is not None else ""
    repo = small_repo(tmp_path / "repo", redis_url, stream_yaml=FAST_STREAM + extra)
    client = redis.Redis.from_url(redis_url)
    with FeatureStore(repo) as store:
        store.apply()
        ids = _bad_events(client, 10)
        assert store.ingest(once=True).dead == 10
    kept = [d["id"] for d in dead_entries(client, "tx_events")]
    assert kept == (ids[-cap:] if cap is not None else ids)
    assert all("user_id" in d["reason"] for d in dead_entries(client, "tx_events"))


@pytest.mark.parametrize("bad", ["0", "-5"])
def test_a_cap_below_one_is_refused_naming_the_key(tmp_path, bad) -> None:
    (tmp_path / "featurestore.yaml").write_text(
        f"project: p\nstream:\n  dead_letter_maxlen: {bad}\n"
    )
    with pytest.raises(ConfigError, match=r"stream\.dead_letter_maxlen is -?[05]; give 1 or more"):
        load_config(tmp_path)
