"""The first in-process predict of a process keeps its deadline while the engine starts.

``store.predict`` starts the serving engine on first use. With the Redis server frozen
(SIGSTOP: it takes connections and never answers) that start must not wait on the store, so the
first answer comes degraded (the model's score on the features' defaults) as later answers do,
not after the store's timeouts, however long the configured default deadline is.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import RedisProcess, start_redis
from tests.serving.conftest import make_repo

# the configured default deadline is long (a start that reads the store under it, or pings it
# for four of it, takes seconds), the call's own is short, and the store's timeouts (5 s) are
# longer than both: a start that waits on the store at all shows in the first call's time
SLOW = """
serving:
  deadline_ms: 2000
"""
CALL_DEADLINE_MS = 50
BOUND_S = 3.0  # generous: the start itself loads the registry, the models and the kernel
ENTITIES = {"user_id": [3], "merchant_id": [2]}
DEFAULTS = [0.0, -1.0, 0.5]  # tx_count, amount_mean, risk: their fields' defaults


@pytest.fixture
def frozen(tmp_path: Path) -> Iterator[tuple[Path, RedisProcess]]:
    """A repo over its own redis-server, with long store timeouts; the server is resumed and
    stopped at the end."""
    redis = start_redis(tmp_path / "redis")
    try:
        repo = make_repo(tmp_path / "repo", online="redis", redis_url=redis.url, serving=SLOW)
        cfg = repo / "featurestore.yaml"
        text = cfg.read_text().replace("connect_timeout: 0.2", "connect_timeout: 5")
        cfg.write_text(text.replace("socket_timeout: 0.2", "socket_timeout: 5"))
        yield repo, redis
    finally:
        os.kill(redis.proc.pid, signal.SIGCONT)
        redis.stop()


def _degraded_score(root: Path) -> float:
    """What a degraded answer scores: production model v1 on the features' defaults."""
    import lightgbm as lgb
    import numpy as np

    booster = lgb.Booster(model_file=str(root / "model1.txt"))
    return float(booster.predict(np.array([DEFAULTS], dtype=np.float64))[0])


@pytest.mark.parametrize("entities", [ENTITIES, {"user_id": [3, 4], "merchant_id": [2, 1]}])
def test_first_predict_is_degraded_within_its_deadline(
    frozen: tuple[Path, RedisProcess], entities: dict[str, list[int]]
) -> None:
    from featurestore.store import FeatureStore

    repo, redis = frozen
    with FeatureStore(repo) as store:
        _ = store.registry  # the registry is read before the clock starts, as a caller would
        os.kill(redis.proc.pid, signal.SIGSTOP)
        t0 = time.perf_counter()
        res = store.predict("fraud", entities, deadline_ms=CALL_DEADLINE_MS)
        took = time.perf_counter() - t0
        assert res.degraded is True
        assert took < BOUND_S, f"the first predict took {took:.2f} s"
        want = _degraded_score(repo)
        assert res.scores == pytest.approx([want] * len(entities["user_id"]), rel=1e-9)
        # the engine works once the store answers again: real values, not defaults
        os.kill(redis.proc.pid, signal.SIGCONT)
        end = time.monotonic() + 20
        while True:
            res = store.predict("fraud", entities, deadline_ms=1000, return_features=True)
            if not res.degraded:
                break
            assert time.monotonic() < end, "still degraded after the store came back"
            time.sleep(0.05)
        cols = res.features.to_dict()
        got = dict(zip(cols["feature_names"], cols["results"], strict=True))
        assert got["tx_count"]["values"][0] == 30 and got["risk"]["values"][0] == 0.2
