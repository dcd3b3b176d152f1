"""Failed requests are counted: REST and gRPC get features and predict answered with an error
add one to ``featurestore_requests_total{outcome="error"}`` and to
``featurestore_request_errors_total{status}``; the breaker gauge forgets dead workers."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from featurestore.online.serving._proto import featurestore_pb2 as pb
from featurestore.online.serving._proto import featurestore_pb2_grpc as pb_grpc
from featurestore.online.serving._wire import to_value
from featurestore.online.serving.auth import make_entry, new_key, write_keys
from tests.serving.conftest import ServerThread, make_repo

SERVING = "serving:\n  max_entities: 4\n  auth:\n    reload_interval_s: 0.05\n"
ENTITIES = {"user_id": [1], "merchant_id": [1]}
PREDICT = {"model": "fraud", "entities": ENTITIES}
FEATURES = {"feature_service": "scoring", "entities": ENTITIES}
Counts = dict[tuple[str, ...], float]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A repo with auth on, and keys 'all' (every scope) and 'read' (no predict, no features)."""
    repo = make_repo(tmp_path_factory.mktemp("errmetrics") / "repo", serving=SERVING)
    out = {"all": new_key(), "read": new_key()}
    write_keys(
        repo / "secrets" / "api_keys.json",
        [
            make_entry("all", out["all"], ["features", "predict", "push", "read", "metrics"]),
            make_entry("read", out["read"], ["read"]),
        ],
    )
    return repo, out


@pytest.fixture(scope="module")
def server(keys: tuple[Path, dict[str, str]]) -> Iterator[ServerThread]:
    s = ServerThread.of_repo(keys[0]).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def http(server: ServerThread, keys: tuple[Path, dict[str, str]]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10, headers={"x-api-key": keys[1]["all"]}) as c:
        yield c


@pytest.fixture(scope="module")
def stub(server: ServerThread) -> Iterator[Any]:
    with grpc.insecure_channel(server.grpc_target) as ch:
        yield pb_grpc.FeatureServingStub(ch)


def counts(http: httpx.Client) -> Counts:
    """Every sample of the request counters in /metrics, by (sample name, label values...)."""
    r = http.get("/metrics")
    assert r.status_code == 200, r.text
    out: Counts = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            if s.name == "featurestore_requests_total":
                out[(s.name, s.labels["endpoint"], s.labels["outcome"])] = s.value
            elif s.name == "featurestore_request_errors_total":
                out[(s.name, s.labels["endpoint"], s.labels["status"])] = s.value
    return out


def delta(http: httpx.Client, act: Callable[[], None]) -> Counts:
    """What ``act`` added to the request counters (only the samples that moved)."""
    before = counts(http)
    act()
    after = counts(http)
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}


def error_of(endpoint: str, status: int) -> Counts:
    return {
        ("featurestore_requests_total", endpoint, "error"): 1.0,
        ("featurestore_request_errors_total", endpoint, str(status)): 1.0,
    }


def _col(values: list[Any]) -> Any:
    return pb.ValueList(values=[to_value(v) for v in values])


# (what, path, body, extra headers, status, endpoint)
REST_FAILURES = [
    ("unknown model", "/predict", {**PREDICT, "model": "nosuch"}, {}, 404, "predict"),
    ("bad join key", "/predict", {**PREDICT, "entities": {"user_id": [1.5], "merchant_id": [1]}}, {}, 400, "predict"),
    ("schema: deadline", "/predict", {**PREDICT, "deadline_ms": -1}, {}, 422, "predict"),
    ("too many", "/predict", {**PREDICT, "entities": {"user_id": [1] * 5, "merchant_id": [1] * 5}}, {}, 413, "predict"),
    ("no key", "/predict", PREDICT, {"x-api-key": ""}, 401, "predict"),
    ("no scope", "/predict", PREDICT, {"read": ""}, 403, "predict"),
    ("unknown service", "/get-online-features", {**FEATURES, "feature_service": "nosuch"}, {}, 404, "get_features"),
    ("ragged", "/get-online-features", {**FEATURES, "entities": {"user_id": [1, 2], "merchant_id": [1]}}, {}, 400, "get_features"),
    ("no key", "/get-online-features", FEATURES, {"x-api-key": ""}, 401, "get_features"),
    ("no scope", "/get-online-features", FEATURES, {"read": ""}, 403, "get_features"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("what", "path", "body", "extra", "status", "endpoint"),
    REST_FAILURES,
    ids=[f"{f[5]}-{f[4]}-{f[0]}" for f in REST_FAILURES],
)
def test_a_failed_rest_request_is_counted_by_status(
    http: httpx.Client,
    keys: tuple[Path, dict[str, str]],
    what: str,
    path: str,
    body: Any,
    extra: dict[str, str],
    status: int,
    endpoint: str,
) -> None:
    headers = {"x-api-key": keys[1]["read"]} if "read" in extra else extra

    def act() -> None:
        r = http.post(path, json=body, headers=headers)
        assert r.status_code == status, r.text

    assert delta(http, act) == error_of(endpoint, status)


def test_a_body_that_is_not_json_is_counted(http: httpx.Client) -> None:
    def act() -> None:
        r = http.post("/predict", content=b"model=fraud", headers={"content-type": "text/plain"})
        assert r.status_code == 415, r.text

    assert delta(http, act) == error_of("predict", 415)


def test_a_successful_request_counts_no_error(http: httpx.Client) -> None:
    def act() -> None:
        assert http.post("/predict", json=PREDICT).status_code == 200
        assert http.post("/get-online-features", json=FEATURES).status_code == 200

    moved = delta(http, act)
    assert moved == {
        ("featurestore_requests_total", "predict", "ok"): 1.0,
        ("featurestore_requests_total", "get_features", "ok"): 1.0,
    }


def test_failed_grpc_calls_are_counted_as_rest_ones(
    http: httpx.Client, stub: Any, keys: tuple[Path, dict[str, str]]
) -> None:
    all_key = ("x-api-key", keys[1]["all"])
    ents = {k: _col(v) for k, v in ENTITIES.items()}
    # (method, request, metadata, code, HTTP status it stands for, endpoint)
    cases = [
        ("Predict", pb.PredictRequest(model="nosuch", entities=ents), [all_key], grpc.StatusCode.NOT_FOUND, 404, "predict"),
        ("Predict", pb.PredictRequest(model="", entities=ents), [all_key], grpc.StatusCode.INVALID_ARGUMENT, 400, "predict"),
        ("Predict", pb.PredictRequest(model="fraud", entities=ents), [], grpc.StatusCode.UNAUTHENTICATED, 401, "predict"),
        ("GetOnlineFeatures", pb.GetOnlineFeaturesRequest(feature_service="nosuch", entities=ents), [all_key], grpc.StatusCode.NOT_FOUND, 404, "get_features"),
        ("GetOnlineFeatures", pb.GetOnlineFeaturesRequest(feature_service="scoring", entities=ents), [("x-api-key", keys[1]["read"])], grpc.StatusCode.PERMISSION_DENIED, 403, "get_features"),
    ]  # fmt: skip
    for method, request, md, code, status, endpoint in cases:
        act = functools.partial(_rpc_fails, getattr(stub, method), request, md, code)
        assert delta(http, act) == error_of(endpoint, status), (method, code)


def _rpc_fails(call: Any, request: Any, metadata: Any, code: grpc.StatusCode) -> None:
    """One call that must fail with ``code``."""
    with pytest.raises(grpc.RpcError) as err:
        call(request, metadata=metadata, timeout=10)
    assert err.value.code() == code, err.value.details()


def test_a_corrupt_grpc_message_is_counted(
    http: httpx.Client, server: ServerThread, keys: tuple[Path, dict[str, str]]
) -> None:
    def act() -> None:
        with grpc.insecure_channel(server.grpc_target) as ch:
            call = ch.unary_unary(
                "/featurestore.serving.v1.FeatureServing/GetOnlineFeatures",
                request_serializer=lambda b: b,
                response_deserializer=lambda b: b,
            )
            with pytest.raises(grpc.RpcError) as err:
                call(b"\xff\xff\xff", metadata=[("x-api-key", keys[1]["all"])], timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    assert delta(http, act) == error_of("get_features", 400)


# ---- the breaker gauge with several workers -----------------------------------------------------

WORKER = textwrap.dedent(
    """
    import sys
    from featurestore.online.serving.metrics import Metrics

    m = Metrics()
    m.breaker_state.set(float(sys.argv[1]))
    if sys.argv[2] == "render":
        sys.stdout.write(m.render()[0].decode())
    """
)


def _worker(folder: Path, breaker: int, then: str) -> str:
    """A worker process with its metrics in ``folder``: sets the breaker gauge, then exits
    (``then`` "exit") or prints the merged /metrics text ("render")."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)}
    out = subprocess.run(
        [sys.executable, "-c", WORKER, str(breaker), then],
        env=env,
        capture_output=True,
        timeout=60,
        check=True,
    )
    return out.stdout.decode()


def _breaker(text: str) -> float:
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "featurestore_breaker_open":
                return s.value
    raise AssertionError(f"no featurestore_breaker_open in:\n{text}")


def test_a_dead_workers_open_breaker_is_forgotten(tmp_path: Path) -> None:
    """A worker that died with its breaker open no longer shows as open; a live one does."""
    folder = tmp_path / "metrics"
    folder.mkdir()
    _worker(folder, 1, "exit")  # died with the breaker open
    assert _breaker(_worker(folder, 0, "render")) == 0.0
    assert _breaker(_worker(folder, 1, "render")) == 1.0  # a live worker's open breaker shows
