"""The engine in process: the same calls as the servers, deadlines, breaker, config, parsing."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from featurestore.online.serving import _requests as rq
from featurestore.online.serving.config import models_config, serving_config
from featurestore.online.serving.engine import Engine
from featurestore.online.serving.errors import BadRequestError, TooManyEntitiesError
from hypothesis import given, settings
from hypothesis import strategies as st

from featurestore.config import config_from_dict
from featurestore.errors import ConfigError
from tests.serving.conftest import expected_user, make_repo


@pytest.fixture(scope="module")
def engine_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # its own repo: an embedded store opens once per process, and the shared server has its own
    return make_repo(tmp_path_factory.mktemp("engine") / "repo")


@pytest.fixture(scope="module")
def engine(engine_repo: Path):
    e = Engine.from_repo(str(engine_repo)).start(poll=False)
    yield e
    e.close()


def test_in_process_predict_equals_features_through_the_model(engine: Engine) -> None:
    import numpy as np

    res = engine.predict("fraud", entities=[{"user_id": 9, "merchant_id": 4}], return_features=True)
    u = expected_user(9)
    chosen, _ = engine.models.select("fraud")
    want = chosen.predict(np.array([[u["tx_count"], u["amount_mean"], 0.4]]))
    assert res.scores == want.tolist()
    assert res.features is not None and res.features.columns["tx_count"] == [u["tx_count"]]


def test_rows_or_columns_give_the_same_answer(engine: Engine) -> None:
    a = engine.get_features(
        feature_service="everything",
        entities=[{"user_id": 1, "merchant_id": 2}, {"user_id": 3, "merchant_id": 4}],
    )
    b = engine.get_features(
        feature_service="everything", entities={"user_id": [1, 3], "merchant_id": [2, 4]}
    )
    assert a.to_dict() == b.to_dict()


def test_a_tiny_deadline_degrades_instead_of_waiting(engine_repo: Path) -> None:
    from featurestore.online.serving.config import ServingConfig

    from featurestore.store import FeatureStore

    store = FeatureStore(engine_repo)
    e = Engine(store, serving=ServingConfig(isolate_reads="always"), own_store=True)
    slow_read = store.online.read

    def read(keys):
        time.sleep(0.2)
        return slow_read(keys)

    store.online.read = read  # type: ignore[method-assign]
    t = time.perf_counter()
    res = e.get_features(
        features=["user_stats:tx_count"], entities={"user_id": [1]}, deadline_ms=20
    )
    took = time.perf_counter() - t
    assert (
        res.degraded
        and res.columns["tx_count"] == [0]
        and res.statuses["tx_count"] == ["UNAVAILABLE"]
    )
    assert took < 0.15
    assert 'featurestore_degraded_total{reason="timeout"} 1.0' in e.metrics.render()[0].decode()
    e.close()


def test_breaker_opens_and_skips_the_store(engine_repo: Path) -> None:
    from featurestore.errors import OnlineStoreUnavailableError
    from featurestore.store import FeatureStore

    store = FeatureStore(engine_repo)
    e = Engine(store, own_store=True)
    calls = 0

    def dead(keys):
        nonlocal calls
        calls += 1
        raise OnlineStoreUnavailableError("down")

    store.online.read = dead  # type: ignore[method-assign]
    for _ in range(20):
        assert e.get_features(features=["user_stats:tx_count"], entities={"user_id": [1]}).degraded
    assert calls == e.config.breaker.failure_threshold  # then the breaker stopped the calls
    assert e.breaker.state.value == "open"
    e.close()


def test_serving_config_parsing(tmp_path: Path) -> None:
    cfg = config_from_dict(
        {
            "project": "p",
            "serving": {"rest_port": 9000, "deadline_ms": 20, "breaker": {"reset_ms": 50}},
            "models": {"path": "m"},
        },
        tmp_path,
    )
    s = serving_config(cfg)
    assert (s.rest_port, s.deadline_ms, s.breaker.reset_ms, s.breaker.failure_threshold) == (
        9000,
        20,
        50,
        5,
    )
    assert models_config(cfg).path == "m"
    bad = config_from_dict({"project": "p", "serving": {"rest_prot": 1}}, tmp_path)
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['rest_prot'\] in 'serving'"):
        serving_config(bad)
    with pytest.raises(ConfigError, match="must not be negative"):
        serving_config(config_from_dict({"project": "p", "serving": {"deadline_ms": -1}}, tmp_path))
    with pytest.raises(ConfigError, match="isolate_reads"):
        serving_config(
            config_from_dict({"project": "p", "serving": {"isolate_reads": "x"}}, tmp_path)
        )


keys = st.one_of(st.integers(-(2**63), 2**63 - 1), st.text(max_size=5))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(keys, keys), min_size=1, max_size=20))
def test_rows_and_columns_parse_to_the_same_columns(pairs) -> None:
    rows = [{"a": a, "b": b} for a, b in pairs]
    cols = {"a": [a for a, _ in pairs], "b": [b for _, b in pairs]}
    assert rq.to_columns(rows, "entities") == rq.to_columns(cols, "entities") == cols
    assert rq.check_entities(cols, {"a": "v", "b": "w"}, 100) == len(pairs)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.one_of(st.floats(allow_nan=False), st.booleans(), st.none(), st.binary(max_size=3)),
        min_size=1,
        max_size=5,
    )
)
def test_non_key_values_are_rejected_naming_the_key(values) -> None:
    with pytest.raises(BadRequestError, match=r"entities\.a\[\d+\]") as info:
        rq.check_entities({"a": values}, {"a": "v"}, 100)
    assert info.value.field == "entities.a"


def test_entity_cap() -> None:
    with pytest.raises(TooManyEntitiesError, match="limit is 3"):
        rq.check_entities({"a": [1, 2, 3, 4]}, {"a": "v"}, 3)


def test_on_demand_features_use_request_data_and_fetched_features(engine: Engine) -> None:
    from featurestore.transforms import RequestSource, on_demand_feature

    from featurestore.field import Field
    from featurestore.types import Float64

    txn = RequestSource("txn", schema=[Field("amount", Float64)])

    @on_demand_feature(
        inputs=["amount", "user_stats:amount_mean"],
        output=Field("amount_ratio", Float64),
        sources=[txn],
    )
    def amount_ratio(amount: float, mean: float) -> float:
        return amount / (mean + 1.0)

    # the embedded store opens once per process: share the module engine's store
    e = Engine(engine.store, on_demand=[amount_ratio])
    res = e.get_features(
        feature_service="everything",
        entities={"user_id": [4, 5], "merchant_id": [1, 1]},
        request_data={"amount": [70.0, None]},
    )
    mean4 = expected_user(4)["amount_mean"]
    assert res.columns["amount_ratio"] == [70.0 / (mean4 + 1.0), None]
    assert "amount_ratio" in res.to_dict()["feature_names"]
    without = e.get_features(
        feature_service="everything", entities={"user_id": [4], "merchant_id": [1]}
    )
    assert "amount_ratio" not in without.columns  # its request input was not sent
    e.close()
