"""The one-entity get-features shortcut answers exactly as the general lookup, or leaves it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from featurestore import types as T
from featurestore.field import Field
from featurestore.online.keys import build_keys
from featurestore.online.lookup import get_online_features
from featurestore.online.serving._vector import feature_row_plan
from featurestore.online.serving._wire import encode_features_response, encode_predict_response
from featurestore.online.serving.engine import Engine
from featurestore.online.serving.rest import features_dict
from featurestore.online.serving.results import FeatureResult, PredictResult
from tests.online._online_views import MERCHANT, make_view
from tests.serving.conftest import make_repo
from tests.serving.test_vector import MERCHANT_FIELDS, T0, _Dict, _stored, random_pair

USER_FLOATS = [Field(f"u{i}", T.Float64, default=None if i % 2 else -float(i)) for i in range(6)]


def _general(stored: dict, requests: list, entities: dict, full: bool) -> FeatureResult:
    resp = get_online_features(
        _Dict(stored), "test", requests, entities, now_us=T0, full_feature_names=full
    )
    return FeatureResult(None, None, resp.feature_names, source=resp, requests=(requests, full))


def _both(
    stored: dict, requests: list, entities: dict, full: bool
) -> tuple[FeatureResult | None, FeatureResult]:
    """The shortcut's answer (None: it leaves the request to the lookup) and the lookup's."""
    plan = feature_row_plan("test", requests, full)
    assert plan is not None
    keys = plan.keys(entities)
    assert keys is not None
    src = plan.source(_Dict(stored).read(keys), T0, entities)
    shortcut = None
    if src is not None:
        shortcut = FeatureResult(None, None, src.feature_names, source=src, requests=plan.request)
    return shortcut, _general(stored, requests, entities, full)


def _assert_same_answer(a: FeatureResult, b: FeatureResult) -> None:
    """Equal columns, statuses and names; the same gRPC and REST bytes."""
    assert a == b
    assert a.feature_names == b.feature_names
    assert encode_features_response(a) == encode_features_response(b)
    assert orjson.dumps(features_dict(a)) == orjson.dumps(features_dict(b))
    pa_, pb_ = (PredictResult("m", 1, [0.5], False, features=r) for r in (a, b))
    assert encode_predict_response(pa_) == encode_predict_response(pb_)


@settings(max_examples=200, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    null_rate=st.sampled_from([0.0, 0.0, 0.3, 1.0]),
    ttl_s=st.sampled_from([None, 1, 3600]),
    age_us=st.sampled_from([0, 1_000_000, 1_000_001, 3_600_000_000, 3_600_000_001]),
    user=st.integers(0, 4),  # 4 is never stored: not found
    merchant=st.integers(0, 4),
    user_cut=st.tuples(st.integers(0, 5), st.integers(1, 6)),
    merchant_cut=st.tuples(st.integers(0, 8), st.integers(1, 9)),
    damage=st.booleans(),  # the user row written under another schema version
    full=st.booleans(),
)
def test_the_shortcut_answers_as_the_lookup(
    seed: int,
    null_rate: float,
    ttl_s: int | None,
    age_us: int,
    user: int,
    merchant: int,
    user_cut: tuple[int, int],
    merchant_cut: tuple[int, int],
    damage: bool,
    full: bool,
) -> None:
    users, merchants, stored = random_pair(USER_FLOATS, seed, ttl_s, age_us, null_rate)
    key = build_keys("test", "users", ("user_id",), [[user]])[0]
    if damage and key in stored:
        v = bytearray(stored[key])
        v[16] ^= 0xFF
        stored[key] = bytes(v)
    # a run of each view's features, in stored order: their bytes are one slice of the row
    a, b = sorted(user_cut)
    c, d = sorted(merchant_cut)
    requests = [
        (users, [f.name for f in USER_FLOATS[a : max(b, a + 1)]]),
        (merchants, [f.name for f in MERCHANT_FIELDS[c : max(d, c + 1)]]),
    ]
    entities = {"user_id": [user], "merchant_id": [merchant]}
    src, general = _both(stored, requests, entities, full)
    clean = all(s == "PRESENT" for st_ in general.statuses.values() for s in st_)
    if null_rate == 0.0 and clean:
        assert src is not None  # found, fresh and without nulls: the shortcut answers
    if null_rate == 1.0:
        assert src is None  # every row has nulls: the lookup decides
    if src is not None:
        _assert_same_answer(src, general)


@pytest.mark.parametrize(
    ("change", "answers"),
    [
        (None, True),  # found, fresh, without nulls: the shortcut answers
        ("expired", False),
        ("missing", False),
        ("version", False),  # written under another schema version: reads as absent
        ("truncated", False),  # a value of another size: reads as absent
        ("null", False),
    ],
)
def test_a_row_the_shortcut_cannot_serve_goes_to_the_lookup(
    change: str | None, answers: bool
) -> None:
    rng = np.random.default_rng(1)
    users = make_view("users", USER_FLOATS, ttl=3600)
    merchants = make_view("merchants", MERCHANT_FIELDS, entities=[MERCHANT], ttl=3600)
    stored = _stored(users, [1], [10], rng, 0.0) | _stored(merchants, [2], [0], rng, 0.0)
    key = build_keys("test", "merchants", ("merchant_id",), [[2]])[0]
    if change == "expired":
        stored[key] = (T0 - 3_600_000_001).to_bytes(8, "little", signed=True) + stored[key][8:]
    elif change == "missing":
        del stored[key]
    elif change == "version":
        stored[key] = stored[key][:16] + bytes(4) + stored[key][20:]
    elif change == "truncated":
        stored[key] = stored[key][:-8]
    elif change == "null":  # the null bitmap follows the 20-byte header: m0 null
        stored[key] = stored[key][:20] + b"\x01" + stored[key][21:]
    requests = [(users, ["u1", "u2", "u3"]), (merchants, [f.name for f in MERCHANT_FIELDS])]
    entities = {"user_id": [1], "merchant_id": [2]}
    src, general = _both(stored, requests, entities, False)
    assert (src is not None) == answers
    if src is not None:
        _assert_same_answer(src, general)
    else:  # what sent it there: the lookup's answer is not a clean one
        assert general.statuses["m0"] != ["PRESENT"] or general.columns["m0"] == [None]


def test_views_the_shortcut_cannot_slice_take_the_general_path() -> None:
    users = make_view("users", USER_FLOATS)
    assert feature_row_plan("test", [(users, ["u0", "u2"])], False) is None  # not one run
    assert feature_row_plan("test", [(users, ["u2", "u1"])], False) is None  # not stored order
    mixed = make_view("mixed", [Field("a", T.Float64), Field("b", T.Int64)])
    assert feature_row_plan("test", [(mixed, ["a", "b"])], False) is None
    assert feature_row_plan("test", [(mixed, ["a"])], False) is not None
    strings = make_view("strings", [Field("a", T.Float64), Field("s", T.String)])
    assert feature_row_plan("test", [(strings, ["a"])], False) is None  # variable-width rows
    clash = make_view("clash", [Field("u0", T.Float64)])
    assert feature_row_plan("test", [(users, ["u0"]), (clash, ["u0"])], False) is None
    plan = feature_row_plan("test", [(users, ["u0", "u1"])], False)
    assert plan is not None
    for entities in ({"user_id": [1, 2]}, {"user_id": [True]}, {"user_id": ["x"]} | {"o": [1]}):
        assert plan.keys(entities) is None


# --------------------------------------------------------------------------- in the engine


@pytest.fixture(scope="module")
def engine_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repo(tmp_path_factory.mktemp("feature_row") / "repo")


@pytest.fixture(scope="module")
def engine(engine_repo: Path) -> Any:
    e = Engine.from_repo(str(engine_repo)).start(poll=False)
    yield e
    e.close()


def _general_answer(e: Engine, call: Any) -> FeatureResult:
    """``call()`` with the shortcut off (an embedded store opens once per process: one engine)."""
    shortcut = e._feature_row
    e._feature_row = lambda *args: None  # type: ignore[method-assign]
    try:
        return call()  # type: ignore[no-any-return]
    finally:
        e._feature_row = shortcut  # type: ignore[method-assign]


def _taken(e: Engine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the engine's general preparations (the shortcut makes none)."""
    calls: list[int] = []
    prepare = e._prepare

    def counted(*args: Any) -> Any:
        calls.append(1)
        return prepare(*args)

    monkeypatch.setattr(e, "_prepare", counted)
    return calls


@pytest.mark.parametrize(
    ("features", "merchant", "prepared"),
    [
        (["merchant_stats:risk"], 2, 0),  # found and fresh: the shortcut answers
        (["merchant_stats:risk"], 999, 1),  # not found: the lookup answers, from the same read
        (["user_stats:amount_mean"], None, 1),  # a view with strings: the general path
    ],
)
@pytest.mark.parametrize("full", [False, True])
def test_engine_answers_as_without_the_shortcut(
    engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
    features: list[str],
    merchant: int | None,
    prepared: int,
    full: bool,
) -> None:
    entities = {"merchant_id": [merchant]} if merchant is not None else {"user_id": [3]}

    def call() -> FeatureResult:
        return engine.get_features(features=features, entities=entities, full_feature_names=full)

    calls = _taken(engine, monkeypatch)
    got = call()
    assert len(calls) == prepared
    _assert_same_answer(got, _general_answer(engine, call))
    assert not got.degraded


def test_the_event_loop_path_takes_the_shortcut_too(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    def call() -> FeatureResult:
        return asyncio.run(
            engine.aget_features(features=["merchant_stats:risk"], entities={"merchant_id": [4]})
        )

    calls = _taken(engine, monkeypatch)
    got = call()
    assert calls == []
    _assert_same_answer(got, _general_answer(engine, call))
    assert got.columns == {"merchant_id": [4], "risk": [0.4]}


def test_a_dead_store_degrades_the_shortcut_to_the_defaults(engine_repo: Path) -> None:
    from featurestore.errors import OnlineStoreUnavailableError
    from featurestore.store import FeatureStore

    store = FeatureStore(engine_repo)
    e = Engine(store, own_store=True).start(poll=False)
    calls = 0

    def dead(keys: Any) -> Any:
        nonlocal calls
        calls += 1
        raise OnlineStoreUnavailableError("down")

    try:
        store.online.read = dead  # type: ignore[method-assign]
        errors = 'featurestore_degraded_total{reason="store_error"}'
        answers = 'featurestore_requests_total{endpoint="get_features",outcome="degraded"}'
        before = _metric(e, errors), _metric(e, answers)  # metrics are shared in a process
        assert e._feature_row(["merchant_stats:risk"], None, {"merchant_id": [2]}, None,
                              False, False, None) is not None  # fmt: skip
        res = e.get_features(features=["merchant_stats:risk"], entities={"merchant_id": [2]})
        assert res.degraded and res.degraded_reason == "store_error"
        assert res.columns == {"merchant_id": [2], "risk": [0.5]}  # the field's default
        assert res.statuses == {"risk": ["UNAVAILABLE"]}
        assert calls == 1  # read once, not again by the general path
        assert (_metric(e, errors), _metric(e, answers)) == (before[0] + 1, before[1] + 1)
    finally:
        e.close()


def _metric(e: Engine, series: str) -> float:
    """One series' value in the engine's Prometheus text (0 when absent)."""
    for line in e.metrics.render()[0].decode().splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
