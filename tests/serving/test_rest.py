"""The REST server over loopback: every endpoint and every error path."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from tests.serving.conftest import N_USERS, ServerThread, expected_user


def _cols(body: dict) -> dict:
    return {n: r for n, r in zip(body["feature_names"], body["results"], strict=True)}


def test_get_online_features_by_service_returns_values_and_statuses(client: httpx.Client) -> None:
    r = client.post(
        "/get-online-features",
        json={
            "feature_service": "everything",
            "entities": {"user_id": [3, 10_000], "merchant_id": [2, 2]},
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["degraded"] is False
    cols = _cols(body)
    assert cols["user_id"]["values"] == [3, 10_000]
    assert cols["tx_count"]["values"] == [expected_user(3)["tx_count"], 0]  # default for missing
    assert cols["country"]["values"] == [expected_user(3)["country"], "??"]
    assert cols["tx_count"]["statuses"] == ["PRESENT", "NOT_FOUND"]
    assert cols["risk"]["values"] == [0.2, 0.2]


def test_get_online_features_by_refs_full_names(client: httpx.Client) -> None:
    r = client.post(
        "/get-online-features",
        json={
            "features": ["user_stats:amount_mean"],
            "entities": {"user_id": [5]},
            "full_feature_names": True,
            "include_event_timestamps": True,
        },
    )
    assert r.status_code == 200, r.text
    cols = _cols(r.json())
    assert cols["user_stats__amount_mean"]["values"] == [expected_user(5)["amount_mean"]]
    assert cols["user_stats__event_timestamp"]["values"][0] is not None


def test_predict_scores_each_entity_and_returns_features(client: httpx.Client) -> None:
    r = client.post(
        "/predict",
        json={
            "model": "fraud",
            "entities": {"user_id": [1, 2, 3], "merchant_id": [1, 5, 9]},
            "return_features": True,
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "fraud" and body["version"] == 1
    assert len(body["scores"]) == 3 and all(0 <= s <= 1 for s in body["scores"])
    assert _cols(body["features"])["risk"]["values"] == [0.1, 0.5, 0.9]
    pinned = client.post(
        "/predict", json={"model": "fraud@2", "entities": {"user_id": [1], "merchant_id": [1]}}
    ).json()
    assert pinned["version"] == 2


def test_predict_matches_the_model_on_the_same_features(
    client: httpx.Client, served_repo: Path
) -> None:
    import lightgbm as lgb
    import numpy as np

    body = client.post(
        "/predict", json={"model": "fraud", "entities": {"user_id": [7], "merchant_id": [3]}}
    ).json()
    booster = lgb.Booster(model_file=str(served_repo / "model1.txt"))
    u = expected_user(7)
    want = booster.predict(np.array([[u["tx_count"], u["amount_mean"], 0.3]]))[0]
    assert body["scores"][0] == pytest.approx(want, rel=1e-12)


def test_push_then_read_back(fresh_repo: Path, serve) -> None:
    s = serve(fresh_repo)
    with httpx.Client(base_url=s.url, timeout=10) as c:
        r = c.post(
            "/push",
            json={
                "feature_view": "user_stats",
                "rows": {
                    "user_id": [1, 777],
                    "tx_count": [5, 6],
                    "amount_mean": [1.25, None],
                    "country": ["fr", "de"],
                },
            },
        )
        assert r.status_code == 200, r.text
        assert r.json() == {"rows_written": 2}
        got = _cols(
            c.post(
                "/get-online-features",
                json={
                    "feature_service": "everything",
                    "entities": {"user_id": [1, 777], "merchant_id": [1, 1]},
                },
            ).json()
        )
        assert got["tx_count"]["values"] == [5, 6]
        assert got["amount_mean"]["values"] == [1.25, None]
        assert got["country"]["values"] == ["fr", "de"]


def test_health_metrics_and_listings(client: httpx.Client) -> None:
    assert client.get("/health/live").json() == {"live": True}
    ready = client.get("/health/ready")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert ready.json()["models"] == {"fraud": 1}
    client.post(
        "/predict", json={"model": "fraud", "entities": {"user_id": [1], "merchant_id": [1]}}
    )
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert 'featurestore_predictions_total{model="fraud",version="1"}' in metrics.text
    assert "featurestore_request_seconds_bucket" in metrics.text
    services = client.get("/feature-services").json()["feature_services"]
    assert {s["name"] for s in services} == {"scoring", "everything"}
    models = client.get("/models").json()["models"]
    assert models[0]["name"] == "fraud"
    assert [v["version"] for v in models[0]["versions"]] == [1, 2]
    assert models[0]["aliases"]["production"]["version"] == 1


def test_openapi_spec_lists_every_endpoint_with_request_models(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    for path in (
        "/get-online-features",
        "/predict",
        "/push",
        "/health/live",
        "/health/ready",
        "/metrics",
        "/feature-services",
        "/models",
    ):
        assert path in spec["paths"], path
    schemas = spec["components"]["schemas"]
    assert {"GetOnlineFeaturesRequest", "PredictRequest", "PushRequest"} <= set(schemas)
    assert "entities" in schemas["PredictRequest"]["required"]


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"feature_service": "nope", "entities": {"user_id": [1]}}, 404, "nope"),
        ({"features": ["user_stats:nope"], "entities": {"user_id": [1]}}, 404, "nope"),
        ({"features": ["ghost:tx_count"], "entities": {"user_id": [1]}}, 404, "ghost"),
        ({"features": ["bad-ref"], "entities": {"user_id": [1]}}, 404, "bad-ref"),
        ({"feature_service": "everything", "entities": {"user_id": [1]}}, 400, "merchant_id"),
        (
            {
                "feature_service": "everything",
                "features": ["user_stats:tx_count"],
                "entities": {"user_id": [1]},
            },
            400,
            "exactly one",
        ),
        ({"entities": {"user_id": [1]}}, 400, "exactly one"),
        (
            {"feature_service": "scoring", "entities": {"user_id": [1.5], "merchant_id": [1]}},
            400,
            "entities.user_id",
        ),
        (
            {"feature_service": "scoring", "entities": {"user_id": [True], "merchant_id": [1]}},
            400,
            "entities.user_id",
        ),
        (
            {"feature_service": "scoring", "entities": {"user_id": [1, 2], "merchant_id": [1]}},
            400,
            "different lengths",
        ),
        (
            {"feature_service": "scoring", "entities": {"user_id": [], "merchant_id": []}},
            400,
            "no entities",
        ),
        (
            {
                "feature_service": "scoring",
                "entities": {"user_id": list(range(1001)), "merchant_id": [1] * 1001},
            },
            413,
            "limit",
        ),
        ({"feature_service": "scoring", "entities": {"user_id": [1]}, "bogus": 1}, 422, "bogus"),
        (
            {
                "feature_service": "scoring",
                "entities": {"user_id": [1], "merchant_id": [1]},
                "deadline_ms": -1,
            },
            422,
            "deadline_ms",
        ),
    ],
)
def test_get_online_features_errors_name_the_field(
    client: httpx.Client, body: dict, status: int, needle: str
) -> None:
    r = client.post("/get-online-features", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert needle in err
    assert "Traceback" not in r.text


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"model": "ghost", "entities": {"user_id": [1], "merchant_id": [1]}}, 404, "ghost"),
        ({"model": "fraud@7", "entities": {"user_id": [1], "merchant_id": [1]}}, 404, "version 7"),
        (
            {"model": "fraud@canary", "entities": {"user_id": [1], "merchant_id": [1]}},
            404,
            "canary",
        ),
        ({"model": "fraud@x!", "entities": {"user_id": [1], "merchant_id": [1]}}, 404, "fraud@x!"),
        ({"model": "fraud", "entities": {"user_id": [1]}}, 400, "merchant_id"),
        ({"model": "", "entities": {"user_id": [1]}}, 400, "model"),
        ({"model": 3, "entities": {"user_id": [1]}}, 422, "model"),
        ({"entities": {"user_id": [1]}}, 422, "model"),
    ],
)
def test_predict_errors_name_the_field(
    client: httpx.Client, body: dict, status: int, needle: str
) -> None:
    r = client.post("/predict", json=body)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"feature_view": "ghost", "rows": {"user_id": [1]}}, 404, "ghost"),
        (
            {
                "feature_view": "user_stats",
                "rows": {"user_id": [1], "tx_count": [1], "amount_mean": [1.0]},
            },
            400,
            "country",
        ),
        (
            {
                "feature_view": "user_stats",
                "rows": {"user_id": [1], "tx_count": ["x"], "amount_mean": [1.0], "country": ["a"]},
            },
            400,
            "rows.tx_count",
        ),
        (
            {
                "feature_view": "user_stats",
                "rows": {"user_id": [1], "tx_count": [1.5], "amount_mean": [1.0], "country": ["a"]},
            },
            400,
            "rows.tx_count",
        ),
        (
            {
                "feature_view": "user_stats",
                "rows": {"tx_count": [1], "amount_mean": [1.0], "country": ["a"]},
            },
            400,
            "user_id",
        ),
        (
            {
                "feature_view": "user_stats",
                "rows": {
                    "user_id": [1],
                    "tx_count": [1],
                    "zzz": [1],
                    "amount_mean": [1.0],
                    "country": ["a"],
                },
            },
            400,
            "zzz",
        ),
        (
            {
                "feature_view": "user_stats",
                "rows": {
                    "user_id": [1],
                    "tx_count": [1],
                    "amount_mean": [1.0],
                    "country": ["a"],
                    "event_timestamp": ["yesterday"],
                },
            },
            400,
            "event_timestamp",
        ),
        (  # beyond int64: refused here, not an overflow deep in the writer (a 500)
            {
                "feature_view": "user_stats",
                "rows": {
                    "user_id": [1],
                    "tx_count": [2**70],
                    "amount_mean": [1.0],
                    "country": ["a"],
                },
            },
            400,
            "rows.tx_count[0] is 1180591620717411303424 (int); feature 'tx_count' of view "
            "'user_stats' is int64 and outside its range",
        ),
    ],
)
def test_push_errors_name_the_field(
    client: httpx.Client, body: dict, status: int, needle: str
) -> None:
    r = client.post("/push", json=body)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]


def test_malformed_json_is_a_4xx_with_an_error(client: httpx.Client) -> None:
    r = client.post("/predict", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"].startswith("the request body is not valid JSON: ")
    r = client.post("/predict", content=b"[1, 2]", headers={"content-type": "application/json"})
    assert r.status_code == 422


def test_batch_of_entities_in_one_predict(client: httpx.Client) -> None:
    n = N_USERS
    r = client.post(
        "/predict",
        json={
            "model": "fraud",
            "entities": {
                "user_id": list(range(1, n + 1)),
                "merchant_id": [1 + i % 10 for i in range(n)],
            },
        },
    )
    assert r.status_code == 200
    assert len(r.json()["scores"]) == n


def test_unapplied_repo_is_live_but_not_ready_until_apply(tmp_path: Path) -> None:
    from featurestore.online.serving.engine import Engine
    from featurestore.online.serving.rest import create_app
    from tests.serving.conftest import unapplied_repo

    repo = unapplied_repo(tmp_path)
    app = create_app(Engine.from_repo(str(repo)), own_engine=True)
    s = ServerThread(app)
    s.thread.start()
    try:
        while not s.server.started:
            time.sleep(0.01)
        with httpx.Client(base_url=s.url, timeout=10) as c:
            assert c.get("/health/live").status_code == 200
            r = c.get("/health/ready")
            assert r.status_code == 503 and r.json()["registry_version"] is None
            r = c.post(
                "/get-online-features",
                json={"feature_service": "scoring", "entities": {"user_id": [1]}},
            )
            assert r.status_code == 503 and "featurestore apply" in r.json()["error"]
            from featurestore.store import FeatureStore

            FeatureStore(repo).apply()
            deadline = time.monotonic() + 10
            while c.get("/health/ready").status_code != 200:
                assert time.monotonic() < deadline, "never became ready after apply"
                time.sleep(0.1)
    finally:
        s.stop()


def test_shadow_version_scores_are_recorded_not_returned(fresh_repo: Path, serve) -> None:
    from featurestore.online.models.repo import model_registry
    from featurestore.store import FeatureStore

    model_registry(FeatureStore(fresh_repo)).set_alias("fraud", 2, "shadow")
    s = serve(fresh_repo)
    engine = s.app.state.engine
    deadline = time.monotonic() + 10
    while engine.models.routes["fraud"].shadow is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    body = {"model": "fraud", "entities": {"user_id": [1, 2], "merchant_id": [3, 4]}}
    with httpx.Client(base_url=s.url, timeout=10) as c:
        got = c.post("/predict", json=body).json()
        assert got["version"] == 1 and set(got) == {"model", "version", "scores", "degraded"}
        engine.models.shadow.flush()
        rec = engine.models.shadow.records[-1]
        assert rec["shadow_version"] == 2 and rec["primary_scores"] == got["scores"]
        assert len(rec["scores"]) == 2 and rec["scores"] != got["scores"]
        metrics = c.get("/metrics").text
        assert 'featurestore_shadow_predictions_total{model="fraud",version="2"} 2.0' in metrics


def test_a_failed_promotion_keeps_serving_and_ready(fresh_repo: Path, serve, tmp_path) -> None:
    from featurestore._atomic import atomic_write
    from featurestore.online.models.repo import model_registry, service_feature_names
    from featurestore.store import FeatureStore

    s = serve(fresh_repo)
    bad = tmp_path / "bad.py"
    bad.write_text(
        "FEATURE_NAMES = ['tx_count', 'amount_mean', 'risk']\ndef predict(x):\n    return x[:, 2]\n"
    )
    with FeatureStore(fresh_repo) as store:
        reg = model_registry(store)
        mv = reg.register(
            "fraud",
            flavor="python",
            artifact=bad,
            feature_service="scoring",
            service_features=service_feature_names(store, "scoring"),
        )
        # broken after registering (register's trial prediction refuses a model that raises)
        Path(reg.artifact_path(mv)).write_text(
            "FEATURE_NAMES = ['tx_count', 'amount_mean', 'risk']\n"
            "def predict(x):\n    raise RuntimeError('broken model')\n"
        )
        # written into the index: set_alias now trial-loads and would refuse it (this is a
        # promotion made before the file broke)
        index = reg.index_path("fraud")
        doc = json.loads(index.read_text())
        doc["aliases"]["production"] = {"version": mv.version}
        atomic_write(index, json.dumps(doc).encode())  # the server never reads half of it
    engine = s.app.state.engine
    deadline = time.monotonic() + 10
    while "broken model" not in (engine.models.last_error or ""):
        assert time.monotonic() < deadline, "the failed warm-up was never reported"
        time.sleep(0.02)
    with httpx.Client(base_url=s.url, timeout=10) as c:
        ready = c.get("/health/ready")
        assert ready.status_code == 200 and "broken model" in ready.json()["model_error"]
        got = c.post(
            "/predict", json={"model": "fraud", "entities": {"user_id": [1], "merchant_id": [1]}}
        )
        assert got.status_code == 200 and got.json()["version"] == 1


def test_an_unexpected_error_is_a_json_500_and_keeps_the_connection(
    fresh_repo: Path, serve
) -> None:
    """uvicorn closes the connection of an app that raises: the 500 is answered before that."""
    import http.client

    server = serve(fresh_repo)
    engine = server.app.state.engine

    async def broken(*args: object, **kwargs: object) -> int:
        raise RuntimeError("a bug")

    engine.apush = broken
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    body = json.dumps({"feature_view": "user_stats", "rows": {"user_id": [1]}})
    conn.request("POST", "/push", body, {"content-type": "application/json"})
    r = conn.getresponse()
    assert r.status == 500
    assert json.loads(r.read()) == {"error": "internal error (RuntimeError); see the server log"}
    sock = conn.sock
    conn.request("GET", "/health/live")  # the same connection, still open
    r = conn.getresponse()
    assert r.status == 200 and json.loads(r.read()) == {"live": True}
    assert conn.sock is sock
    conn.close()
