"""Failed pushes are counted as failed reads and predictions are: over REST and gRPC each one
adds exactly one to ``featurestore_requests_total{endpoint="push",outcome="error"}`` and to
``featurestore_request_errors_total{endpoint="push",status}``, whatever failed (the request,
the key, the online store or the disk); a good push adds only its ``ok``."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import grpc
import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore.online.serving._proto import featurestore_pb2 as pb
from featurestore.online.serving._proto import featurestore_pb2_grpc as pb_grpc
from featurestore.online.serving._wire import to_value
from featurestore.online.serving.auth import make_entry, new_key, write_keys
from tests.serving.conftest import DEFS, ServerThread, make_repo
from tests.serving.test_error_metrics import Counts, delta, error_of

SERVING = "serving:\n  max_entities: 4\n  auth:\n    reload_interval_s: 0.05\n"
EXTRA_DEFS = """
from featurestore import OnDemandFeatureView, RequestSource, on_demand_feature

facts = FeatureView(name="facts", entities=[user], source=ParquetSource("data/facts"),
                    schema=[Field("score", Float64, default=0.0)])
txn = RequestSource("txn", schema=[Field("amount", Float64)])


@on_demand_feature(inputs=["amount", "user_stats:amount_mean"],
                   output=Field("amount_ratio", Float64), sources=[txn])
def amount_ratio(amount: float, mean: float) -> float:
    return amount / (mean + 1.0)


ratios = OnDemandFeatureView(name="ratios", sources=[txn, user_stats], features=[amount_ratio])
"""
USER = {"user_id": [7], "tx_count": [3], "amount_mean": [2.5], "country": ["fr"]}
FACTS = {"user_id": [7], "score": [0.5]}
OK_PUSH: Counts = {("featurestore_requests_total", "push", "ok"): 1.0}


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A repo with auth on, a folder-fed view ('facts', offline pushes) and an on-demand view
    ('ratios'); keys 'all' (every scope) and 'read' (no push)."""
    repo = tmp_path_factory.mktemp("pusherr") / "repo"
    (repo / "data" / "facts").mkdir(parents=True)
    now = datetime.now(timezone.utc)
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array([1], pa.int64()),
                "event_timestamp": pa.array([now], pa.timestamp("us", tz="UTC")),
                "score": pa.array([0.1]),
            }
        ),
        repo / "data" / "facts" / "part-0.parquet",
    )
    make_repo(repo, serving=SERVING, defs=DEFS + EXTRA_DEFS)
    out = {"all": new_key(), "read": new_key()}
    write_keys(
        repo / "secrets" / "api_keys.json",
        [
            make_entry("all", out["all"], ["features", "predict", "push", "read", "metrics"]),
            make_entry("read", out["read"], ["read", "metrics"]),
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
    with httpx.Client(base_url=server.url, timeout=30, headers={"x-api-key": keys[1]["all"]}) as c:
        yield c


@pytest.fixture(scope="module")
def stub(server: ServerThread) -> Iterator[Any]:
    with grpc.insecure_channel(server.grpc_target) as ch:
        yield pb_grpc.FeatureServingStub(ch)


def _push(view: str, rows: dict[str, list[Any]], **more: Any) -> dict[str, Any]:
    return {"feature_view": view, "rows": rows, **more}


def _broken_online_store(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every online write fails as a dead store would (the server runs in this process)."""
    import featurestore.online.writer

    def down(*args: Any, **kwargs: Any) -> int:
        raise ConnectionError("store down")

    monkeypatch.setattr(featurestore.online.writer, "write_table", down)


def _broken_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every offline push file fails to be written, as on a full or read-only disk."""
    import featurestore._atomic

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(featurestore._atomic, "atomic_write", refuse)


# (what, body, extra headers, breakage, status)
REST_FAILURES: list[tuple[str, Any, dict[str, str], Any, int]] = [
    ("unknown view", _push("nosuch", USER), {}, None, 404),
    ("on-demand view", _push("ratios", {"user_id": [7], "amount_ratio": [1.0]}), {}, None, 400),
    ("bad value type", _push("user_stats", {**USER, "tx_count": ["many"]}), {}, None, 400),
    ("missing feature", _push("user_stats", {"user_id": [7], "tx_count": [3]}), {}, None, 400),
    ("bad to", _push("user_stats", USER, to="sideways"), {}, None, 400),
    ("offline to a file source", _push("user_stats", USER, to="offline"), {}, None, 400),
    ("too many rows", _push("facts", {"user_id": [1, 2, 3, 4, 5], "score": [0.0] * 5}), {}, None, 413),
    ("schema: object value", _push("user_stats", {**USER, "country": [{"a": 1}]}), {}, None, 422),
    ("schema: no rows", {"feature_view": "user_stats"}, {}, None, 422),
    ("schema: deadline", _push("user_stats", USER, deadline_ms=-1), {}, None, 422),
    ("no key", _push("user_stats", USER), {"x-api-key": ""}, None, 401),
    ("no push scope", _push("user_stats", USER), {"read": ""}, None, 403),
    ("online store down", _push("user_stats", USER), {}, _broken_online_store, 503),
    ("disk refuses", _push("facts", FACTS, to="offline"), {}, _broken_disk, 500),
]  # fmt: skip


@pytest.mark.parametrize(
    ("what", "body", "extra", "breakage", "status"),
    REST_FAILURES,
    ids=[f"{f[4]}-{f[0]}" for f in REST_FAILURES],
)
def test_a_failed_rest_push_counts_one_error_with_its_status(
    http: httpx.Client,
    keys: tuple[Path, dict[str, str]],
    monkeypatch: pytest.MonkeyPatch,
    what: str,
    body: Any,
    extra: dict[str, str],
    breakage: Any,
    status: int,
) -> None:
    headers = {"x-api-key": keys[1]["read"]} if "read" in extra else extra
    if breakage is not None:
        breakage(monkeypatch)

    def act() -> None:
        r = http.post("/push", json=body, headers=headers)
        assert r.status_code == status, r.text

    assert delta(http, act) == error_of("push", status)


def test_a_rest_push_body_that_is_not_json_counts_one_415(http: httpx.Client) -> None:
    def act() -> None:
        r = http.post("/push", content=b"feature_view=x", headers={"content-type": "text/plain"})
        assert r.status_code == 415, r.text

    assert delta(http, act) == error_of("push", 415)


def test_good_pushes_count_no_error(http: httpx.Client, stub: Any, keys: Any) -> None:
    def rest() -> None:
        r = http.post("/push", json=_push("user_stats", USER))
        assert r.status_code == 200, r.text
        assert r.json() == {"rows_written": 1}

    def offline() -> None:
        r = http.post("/push", json=_push("facts", FACTS, to="online_and_offline"))
        assert r.status_code == 200, r.text

    def over_grpc() -> None:
        request = pb.PushRequest(feature_view="facts", rows=_cols(FACTS))
        out = stub.Push(request, metadata=[("x-api-key", keys[1]["all"])], timeout=30)
        assert out.rows_written == 1

    for act in (rest, offline, over_grpc):
        assert delta(http, act) == OK_PUSH, act.__name__


def _cols(rows: dict[str, list[Any]]) -> dict[str, Any]:
    return {k: pb.ValueList(values=[to_value(v) for v in vs]) for k, vs in rows.items()}


def _rpc_fails(call: Callable[..., Any], request: Any, metadata: Any, code: Any) -> None:
    with pytest.raises(grpc.RpcError) as err:
        call(request, metadata=metadata, timeout=30)
    assert err.value.code() == code, err.value.details()


C = grpc.StatusCode
# (what, request, key name or None, breakage, code, status)
GRPC_FAILURES: list[tuple[str, Any, str | None, Any, Any, int]] = [
    ("unknown view", pb.PushRequest(feature_view="nosuch", rows=_cols(USER)), "all", None, C.NOT_FOUND, 404),
    ("no view", pb.PushRequest(rows=_cols(USER)), "all", None, C.INVALID_ARGUMENT, 400),
    ("on-demand view", pb.PushRequest(feature_view="ratios", rows=_cols({"user_id": [7], "amount_ratio": [1.0]})), "all", None, C.INVALID_ARGUMENT, 400),
    ("bad value type", pb.PushRequest(feature_view="user_stats", rows=_cols({**USER, "tx_count": ["many"]})), "all", None, C.INVALID_ARGUMENT, 400),
    ("bad to", pb.PushRequest(feature_view="user_stats", rows=_cols(USER), to="sideways"), "all", None, C.INVALID_ARGUMENT, 400),
    ("bad deadline", pb.PushRequest(feature_view="user_stats", rows=_cols(USER), deadline_ms=-1), "all", None, C.INVALID_ARGUMENT, 400),
    ("too many rows", pb.PushRequest(feature_view="facts", rows=_cols({"user_id": [1, 2, 3, 4, 5], "score": [0.0] * 5})), "all", None, C.RESOURCE_EXHAUSTED, 413),
    ("no key", pb.PushRequest(feature_view="user_stats", rows=_cols(USER)), None, None, C.UNAUTHENTICATED, 401),
    ("no push scope", pb.PushRequest(feature_view="user_stats", rows=_cols(USER)), "read", None, C.PERMISSION_DENIED, 403),
    ("online store down", pb.PushRequest(feature_view="user_stats", rows=_cols(USER)), "all", _broken_online_store, C.UNAVAILABLE, 503),
    ("disk refuses", pb.PushRequest(feature_view="facts", rows=_cols(FACTS), to="offline"), "all", _broken_disk, C.INTERNAL, 500),
]  # fmt: skip


@pytest.mark.parametrize(
    ("what", "request_", "key", "breakage", "code", "status"),
    GRPC_FAILURES,
    ids=[f"{f[5]}-{f[0]}" for f in GRPC_FAILURES],
)
def test_a_failed_grpc_push_counts_one_error_as_rest_does(
    http: httpx.Client,
    stub: Any,
    keys: tuple[Path, dict[str, str]],
    monkeypatch: pytest.MonkeyPatch,
    what: str,
    request_: Any,
    key: str | None,
    breakage: Any,
    code: Any,
    status: int,
) -> None:
    if breakage is not None:
        breakage(monkeypatch)
    metadata = [] if key is None else [("x-api-key", keys[1][key])]
    act = functools.partial(_rpc_fails, stub.Push, request_, metadata, code)
    assert delta(http, act) == error_of("push", status)


def test_a_corrupt_grpc_push_message_counts_one_400(
    http: httpx.Client, server: ServerThread, keys: tuple[Path, dict[str, str]]
) -> None:
    def act() -> None:
        with grpc.insecure_channel(server.grpc_target) as ch:
            call = ch.unary_unary(
                "/featurestore.serving.v1.FeatureServing/Push",
                request_serializer=lambda b: b,
                response_deserializer=lambda b: b,
            )
            _rpc_fails(call, b"\xff\xff\xff", [("x-api-key", keys[1]["all"])], C.INVALID_ARGUMENT)

    assert delta(http, act) == error_of("push", 400)


def test_a_failed_offline_write_names_the_folder_within_the_repo_only(
    http: httpx.Client,
    stub: Any,
    keys: tuple[Path, dict[str, str]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The disk's refusal names the view's folder as the repo does ('data/facts'), not the
    server's absolute path, which goes to the log."""
    import logging

    from featurestore.online.serving import _push as push_module

    repo = keys[0]
    _broken_disk(monkeypatch)
    # a fresh log throttle: earlier tests' failed writes must not keep this one out of the log
    monkeypatch.setattr(push_module, "_FAILURES", push_module.ThrottledLog(10.0))
    caplog.set_level(logging.ERROR, logger="featurestore.serving")
    r = http.post("/push", json=_push("facts", FACTS, to="offline"))
    assert r.status_code == 500, r.text
    with pytest.raises(grpc.RpcError) as err:
        stub.Push(
            pb.PushRequest(feature_view="facts", rows=_cols(FACTS), to="offline"),
            metadata=[("x-api-key", keys[1]["all"])],
            timeout=30,
        )
    assert err.value.code() == C.INTERNAL
    for answer in (r.json()["error"], err.value.details()):
        assert "'data/facts'" in answer and "Permission denied" in answer, answer
        assert str(repo) not in answer and str(repo.parent) not in answer, answer
    logged = "\n".join(rec.getMessage() for rec in caplog.records)
    assert str(repo / "data" / "facts") in logged
