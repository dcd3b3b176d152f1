"""The engine in process: the same calls as the servers, deadlines, breaker, config, parsing."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from featurestore.config import config_from_dict
from featurestore.errors import ConfigError
from featurestore.online.serving import _requests as rq
from featurestore.online.serving.config import models_config, serving_config
from featurestore.online.serving.engine import Engine
from featurestore.online.serving.errors import BadRequestError, TooManyEntitiesError
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


def test_one_entity_predict_shortcut_scores_as_the_general_path(engine: Engine) -> None:
    # return_features=True takes the general path (the columnar result); without it, one entity
    # takes the shortcut that builds the model's row straight from the stored rows
    for uid, mid in [(9, 4), (1, 10), (77, 4), (3, 99), (77, 99)]:  # 77, 99: never stored
        ents = {"user_id": [uid], "merchant_id": [mid]}
        fast = engine.predict("fraud", entities=ents)
        general = engine.predict("fraud", entities=ents, return_features=True)
        assert fast.scores == general.scores and not fast.degraded
    assert [v[2] is not None for v in engine._vectors.values()] == [True]


def test_batch_predict_scores_each_row_as_one_entity(engine: Engine) -> None:
    # 30 rows: the batch reads float columns as arrays (not lists); each row alone takes the
    # one-entity shortcut; 77 is never stored (defaults)
    users = [*range(1, 30), 77]
    merchants = [u % 10 + 1 for u in users]
    batch = engine.predict("fraud", entities={"user_id": users, "merchant_id": merchants})
    one = [
        engine.predict("fraud", entities={"user_id": [u], "merchant_id": [m]}).scores[0]
        for u, m in zip(users, merchants, strict=True)
    ]
    assert batch.scores == one and len(set(one)) > 1


def _store_errors(e: Engine) -> float:
    """The degraded-answer count for store errors (metrics may be shared within a process)."""
    prefix = 'featurestore_degraded_total{reason="store_error"} '
    lines = [x for x in e.metrics.render()[0].decode().splitlines() if x.startswith(prefix)]
    return float(lines[0][len(prefix) :]) if lines else 0.0


def test_predict_shortcut_degrades_to_the_defaults_row(engine_repo: Path) -> None:
    import numpy as np

    from featurestore.errors import OnlineStoreUnavailableError
    from featurestore.store import FeatureStore

    store = FeatureStore(engine_repo)
    e = Engine(store, own_store=True).start(poll=False)
    try:

        def dead(keys):
            raise OnlineStoreUnavailableError("down")

        store.online.read = dead  # type: ignore[method-assign]
        errors_before = _store_errors(e)
        res = e.predict("fraud", entities={"user_id": [9], "merchant_id": [4]})
        chosen, _ = e.models.select("fraud")
        defaults = np.array([[0, -1.0, 0.5]])  # tx_count, amount_mean, risk field defaults
        assert res.degraded and res.scores == chosen.predict(defaults).tolist()
        assert _store_errors(e) == errors_before + 1
    finally:
        e.close()


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


def test_predict_on_a_worker_still_loading_its_models_is_not_ready(engine_repo: Path) -> None:
    from featurestore.online.serving.errors import NotReadyError
    from featurestore.store import FeatureStore

    e = Engine(FeatureStore(engine_repo), own_store=True)  # not started: no model loaded yet
    try:
        with pytest.raises(NotReadyError, match="still loading its models"):
            e.predict("fraud", entities={"user_id": [1], "merchant_id": [2]})
        e.start(poll=False)
        assert len(e.predict("fraud", entities={"user_id": [1], "merchant_id": [2]}).scores) == 1
    finally:
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
    assert "featurestore_breaker_open 1.0" in e.metrics.render()[0].decode()
    store.online.read = lambda keys: [None] * len(keys)  # type: ignore[method-assign]
    e.breaker.reset_s = 0.0  # probe now: it succeeds and closes the breaker
    assert not e.get_features(features=["user_stats:tx_count"], entities={"user_id": [1]}).degraded
    assert "featurestore_breaker_open 0.0" in e.metrics.render()[0].decode()
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
    for key, value, needle in (
        ("rest_port", 70000, "ports go up to 65535"),
        ("workers", 0, "give 1 or more"),
    ):
        with pytest.raises(ConfigError, match=rf"serving.{key} is {value}; {needle}"):
            serving_config(config_from_dict({"project": "p", "serving": {key: value}}, tmp_path))
    for ms in (0, 60_001):  # a zero budget fails every request; one without end is no budget
        with pytest.raises(ConfigError, match=rf"serving.deadline_ms is {ms}; give milliseconds"):
            serving_config(
                config_from_dict({"project": "p", "serving": {"deadline_ms": ms}}, tmp_path)
            )


@pytest.mark.parametrize("ms", [-5.0, 0.0, float("nan"), float("inf"), 60_001.0, True])
def test_a_request_deadline_out_of_bounds_is_a_bad_request(engine: Engine, ms: float) -> None:
    """gRPC hands any double through (REST's schema bounds it): NaN or inf would never expire."""
    with pytest.raises(BadRequestError, match=r"deadline_ms must be a number of milliseconds"):
        engine.get_features(
            features=["user_stats:tx_count"], entities={"user_id": [1]}, deadline_ms=ms
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


def test_push_timestamp_features_are_validated() -> None:
    from featurestore import Entity, FeatureView, Field, ParquetSource, UnixTimestamp

    view = FeatureView(
        name="v",
        entities=[Entity("e", join_keys=["k"])],
        source=ParquetSource("x.parquet"),
        schema=[Field("seen", UnixTimestamp)],
    )
    t = rq.push_table(view, {"k": [1, 2], "seen": ["2026-01-01T00:00:00Z", 5]}, 10, 100)
    assert t.column("seen").cast("int64").to_pylist() == [1_767_225_600_000_000, 5]
    assert t.column("__event_ts").to_pylist() == [10, 10]
    with pytest.raises(BadRequestError, match=r"rows\.seen holds a bad time") as info:
        rq.push_table(view, {"k": [1], "seen": ["noon"]}, 10, 100)
    assert info.value.field == "rows.seen"


def test_push_to_a_window_view_says_push_takes_plain_views() -> None:
    from featurestore import Aggregation, Entity, FeatureView, ParquetSource

    view = FeatureView(
        name="tx",
        entities=[Entity("e", join_keys=["k"])],
        source=ParquetSource("x.parquet"),
        aggregations=[Aggregation("amount", "sum", "1h")],
    )
    with pytest.raises(BadRequestError, match=r"'tx' aggregates events over windows") as info:
        rq.push_table(view, {"k": [1], "amount_sum_1h": [2.0]}, 10, 100)
    assert info.value.field == "feature_view"


def test_request_faults_are_4xx_and_leave_the_breaker_alone(engine_repo: Path) -> None:
    from featurestore.errors import EntityDataError
    from featurestore.store import FeatureStore

    store = FeatureStore(engine_repo)
    e = Engine(store, own_store=True)

    def bad(keys):
        raise EntityDataError("entity rows lack join key 'x'")

    store.online.read = bad  # type: ignore[method-assign]
    for _ in range(10):
        with pytest.raises(EntityDataError, match="lack join key"):
            e.get_features(features=["user_stats:tx_count"], entities={"user_id": [1]})
    assert e.breaker.state.value == "closed"

    def buggy(keys):
        raise ValueError("decoder bug")

    store.online.read = buggy  # type: ignore[method-assign]
    res = e.get_features(features=["user_stats:tx_count"], entities={"user_id": [1]})
    assert res.degraded and res.degraded_reason == "store_error"
    e.close()


ODFV_DEFS = """
from featurestore import OnDemandFeatureView, RequestSource, on_demand_feature

txn = RequestSource("txn", schema=[Field("amount", Float64)])


@on_demand_feature(inputs=["amount", "user_stats:amount_mean"],
                   output=Field("amount_ratio", Float64), sources=[txn])
def amount_ratio(amount: float, mean: float) -> float:
    return amount / (mean + 1.0)


ratios = OnDemandFeatureView(name="ratios", sources=[txn, user_stats], features=[amount_ratio])
with_ratio = FeatureService(name="with_ratio",
                            features=["user_stats:tx_count", "ratios:amount_ratio"])
"""


def test_on_demand_features_from_request_data_feed_the_model(tmp_path: Path, serve) -> None:
    import httpx
    import numpy as np

    from featurestore.online.models.repo import service_feature_names
    from featurestore.store import FeatureStore
    from tests._models import publish
    from tests.serving.conftest import DEFS, train_model

    repo = make_repo(tmp_path / "repo", defs=DEFS + ODFV_DEFS)
    with FeatureStore(repo) as store:
        names = service_feature_names(store, "with_ratio")
        assert names == ["tx_count", "amount_ratio"]
        art = train_model(tmp_path / "r.txt", seed=4, names=names)
        publish(store, "ratio", flavor="lightgbm", artifact=art, service="with_ratio")
    s = serve(repo)
    with httpx.Client(base_url=s.url, timeout=10) as c:
        body = {
            "model": "ratio",
            "entities": {"user_id": [4, 5]},
            "request_data": {"amount": [70.0, None]},
            "return_features": True,
        }
        got = c.post("/predict", json=body)
        assert got.status_code == 200, got.text
        feats = dict(
            zip(
                got.json()["features"]["feature_names"],
                got.json()["features"]["results"],
                strict=True,
            )
        )
        ratio4 = 70.0 / (expected_user(4)["amount_mean"] + 1.0)
        assert feats["amount_ratio"]["values"] == [ratio4, None]
        booster_scores = s.app.state.engine.models.select("ratio")[0].predict(
            np.array(
                [[expected_user(4)["tx_count"], ratio4], [expected_user(5)["tx_count"], np.nan]]
            )
        )
        assert got.json()["scores"] == booster_scores.tolist()
        missing = c.post("/predict", json={"model": "ratio", "entities": {"user_id": [4]}})
        assert missing.status_code == 400
        assert "request_data lacks 'amount'" in missing.json()["error"]
        short = c.post(
            "/predict",
            json={
                "model": "ratio",
                "entities": {"user_id": [4, 5]},
                "request_data": {"amount": [1.0]},
            },
        )
        assert short.status_code == 400 and "request_data.amount" in short.json()["error"]
        for bad, shown in (("x", "'x' (str)"), (True, "True (bool)"), ([1.0], "[1.0] (list)")):
            # a 400 naming the field, not the compiled function's TypeError (a 500)
            wrong = c.post(
                "/predict",
                json={
                    "model": "ratio",
                    "entities": {"user_id": [4]},
                    "request_data": {"amount": [bad]},
                },
            )
            assert wrong.status_code == 400, wrong.text
            assert wrong.json()["error"] == (
                f"request_data.amount[0] is {shown}; request field 'amount' of on-demand "
                "feature view 'ratios' is float64"
            )
