"""API keys and request ids on real REST and gRPC servers; the keys file and ``featurestore keys``."""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from click.testing import CliRunner, Result

from featurestore.cli import cli
from featurestore.errors import ConfigError
from featurestore.online.serving._proto import featurestore_pb2 as pb
from featurestore.online.serving._proto import featurestore_pb2_grpc as pb_grpc
from featurestore.online.serving.auth import (
    SCOPES,
    KeyRing,
    hash_key,
    make_entry,
    new_key,
    read_keys,
    write_keys,
)
from featurestore.online.serving.context import REQUEST_ID, current_caller
from featurestore.online.serving.grpc_server import to_value
from tests.serving.conftest import ServerThread, cli_serve, free_port, make_repo

AUTH_YAML = "serving:\n  auth:\n    reload_interval_s: 0.05\n"
ENTITIES = {"user_id": [1], "merchant_id": [1]}
HEX32 = re.compile(r"[0-9a-f]{32}")

# (method, path, JSON body, scope needed)
ROUTES = [
    ("POST", "/get-online-features", {"feature_service": "scoring", "entities": ENTITIES}, "features"),
    ("POST", "/predict", {"model": "fraud", "entities": ENTITIES}, "predict"),
    ("POST", "/push", {"feature_view": "merchant_stats", "rows": {"merchant_id": [77], "risk": [0.3]}}, "push"),
    ("GET", "/feature-services", None, "read"),
    ("GET", "/models", None, "read"),
    ("GET", "/metrics", None, "metrics"),
]  # fmt: skip


def _col(values: list) -> pb.ValueList:
    return pb.ValueList(values=[to_value(v) for v in values])


def _grpc_entities() -> dict[str, pb.ValueList]:
    return {k: _col(v) for k, v in ENTITIES.items()}


# (method, request, scope needed)
METHODS = [
    ("GetOnlineFeatures", lambda: pb.GetOnlineFeaturesRequest(feature_service="scoring", entities=_grpc_entities()), "features"),
    ("Predict", lambda: pb.PredictRequest(model="fraud", entities=_grpc_entities()), "predict"),
    ("Push", lambda: pb.PushRequest(feature_view="merchant_stats", rows={"merchant_id": _col([78]), "risk": _col([0.4])}), "push"),
    ("ListFeatureServices", lambda: pb.ListFeatureServicesRequest(), "read"),
    ("ListModels", lambda: pb.ListModelsRequest(), "read"),
]  # fmt: skip


def keys_cli(repo: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["-r", str(repo), "keys", *args])


def create_key(repo: Path, name: str, *scopes: str) -> str:
    """``featurestore keys create NAME --scope ...``; the key it printed."""
    r = keys_cli(repo, "create", name, *(a for s in scopes for a in ("--scope", s)))
    assert r.exit_code == 0, r.output
    printed = [line for line in r.output.splitlines() if line.startswith("fs_")]
    assert len(printed) == 1, r.output
    return printed[0]


def wait_for(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """Poll ``check`` until it holds (bounded: fails with ``what`` after ``timeout``)."""
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def auth_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repo(tmp_path_factory.mktemp("auth") / "repo", serving=AUTH_YAML)


@pytest.fixture(scope="module")
def keys(auth_repo: Path) -> dict[str, str]:
    """'all': every scope; 'no-S': every scope but S."""
    out = {"all": create_key(auth_repo, "all", *SCOPES)}
    for s in SCOPES:
        out[f"no-{s}"] = create_key(auth_repo, f"no-{s}", *(x for x in SCOPES if x != s))
    return out


@pytest.fixture(scope="module")
def server(auth_repo: Path, keys: dict[str, str]) -> Iterator[ServerThread]:
    from featurestore.online.serving.engine import Engine
    from featurestore.online.serving.rest import create_app

    engine = Engine.from_repo(str(auth_repo))
    s = ServerThread(create_app(engine, grpc_port=0, own_engine=True)).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def http(server: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as c:
        yield c


@pytest.fixture(scope="module")
def stub(server: ServerThread) -> Iterator[pb_grpc.FeatureServingStub]:
    with grpc.insecure_channel(server.grpc_target) as ch:
        yield pb_grpc.FeatureServingStub(ch)


def call(http: httpx.Client, method: str, path: str, body: Any, **headers: str) -> httpx.Response:
    hdrs = {k.replace("_", "-"): v for k, v in headers.items()}
    return http.request(method, path, json=body, headers=hdrs)


def rpc(stub: Any, method: str, request: Any, *metadata: tuple[str, str]) -> Any:
    """(status code, details, initial metadata) of one call."""
    try:
        _, c = getattr(stub, method).with_call(request, metadata=metadata, timeout=10)
        return grpc.StatusCode.OK, "", dict(c.initial_metadata())
    except grpc.RpcError as exc:
        return exc.code(), exc.details(), dict(exc.initial_metadata())


# ---- REST ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "body", "scope"), ROUTES, ids=[r[1] for r in ROUTES])
def test_rest_route_needs_a_key_with_its_scope(
    http: httpx.Client, keys: dict[str, str], method: str, path: str, body: Any, scope: str
) -> None:
    r = call(http, method, path, body)
    assert r.status_code == 401 and "missing API key" in r.json()["error"]
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert HEX32.fullmatch(r.headers["x-request-id"])
    for bad in ({"x_api_key": "fs_nope"}, {"authorization": "Bearer fs_nope"}):
        r = call(http, method, path, body, **bad)
        assert r.status_code == 401 and "unknown API key" in r.json()["error"], bad
    r = call(http, method, path, body, authorization="Basic " + keys["all"])  # not a bearer key
    assert r.status_code == 401
    r = call(http, method, path, body, x_api_key=keys[f"no-{scope}"])
    assert r.status_code == 403
    assert f"API key 'no-{scope}' lacks scope '{scope}'" in r.json()["error"]
    for good in ({"x_api_key": keys["all"]}, {"authorization": "Bearer " + keys["all"]}):
        r = call(http, method, path, body, **good)
        assert r.status_code == 200, (good, r.text)
    # a key is enough for a route whose scope it holds, whatever else it lacks
    other = next(s for s in SCOPES if s != scope)
    assert call(http, method, path, body, x_api_key=keys[f"no-{other}"]).status_code == 200


@pytest.mark.parametrize(
    "path", ["/health/live", "/health/ready", "/openapi.json", "/docs", "/redoc"]
)
def test_health_and_docs_need_no_key(http: httpx.Client, path: str) -> None:
    r = http.get(path)
    assert r.status_code == 200, r.text
    assert HEX32.fullmatch(r.headers["x-request-id"])


def test_unknown_path_is_401_without_a_key_and_404_with_one(
    http: httpx.Client, keys: dict[str, str]
) -> None:
    assert http.get("/no-such-thing").status_code == 401
    assert http.get("/no-such-thing", headers={"x-api-key": keys["all"]}).status_code == 404


def test_openapi_declares_the_key_schemes(http: httpx.Client) -> None:
    spec = http.get("/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearer"] == {"type": "http", "scheme": "bearer", "description": "API key"}
    assert schemes["apiKey"]["name"] == "X-API-Key"
    assert spec["paths"]["/predict"]["post"]["security"] == [{"bearer": []}, {"apiKey": []}]
    assert "403" in spec["paths"]["/metrics"]["get"]["responses"]
    assert "security" not in spec["paths"]["/health/live"]["get"]
    params = spec["paths"]["/predict"]["post"]["parameters"]
    assert [p["name"] for p in params if p["in"] == "header"] == ["x-request-id"]


def test_rest_request_id_is_echoed_or_made(http: httpx.Client, keys: dict[str, str]) -> None:
    path, body = "/get-online-features", ROUTES[0][2]
    r = call(http, "POST", path, body, x_api_key=keys["all"], x_request_id="trace-42/x")
    assert r.status_code == 200 and r.headers["x-request-id"] == "trace-42/x"
    top = "x" * 128
    assert call(http, "POST", path, body, x_request_id=top).headers["x-request-id"] == top
    r = call(http, "POST", path, body, x_api_key=keys["all"])
    assert HEX32.fullmatch(r.headers["x-request-id"])
    for bad in ("a b", "x" * 129, "", "caf\xc3\xa9".encode("latin-1")):
        r = http.post(path, json=body, headers={"x-api-key": keys["all"], "x-request-id": bad})
        assert r.status_code == 200, repr(bad)  # an invalid id is replaced, never refused
        assert HEX32.fullmatch(r.headers["x-request-id"])


def test_the_engine_sees_the_caller_and_request_id(
    server: ServerThread, http: httpx.Client, stub: Any, keys: dict[str, str], monkeypatch: Any
) -> None:
    engine = server.app.state.engine
    seen: list[tuple[str | None, str | None]] = []
    real_get, real_services = engine.aget_features, engine.feature_services

    async def aget_features(*a: Any, **kw: Any) -> Any:
        seen.append((current_caller(), REQUEST_ID.get()))
        return await real_get(*a, **kw)

    def feature_services() -> Any:
        seen.append((current_caller(), REQUEST_ID.get()))
        return real_services()

    monkeypatch.setattr(engine, "aget_features", aget_features)
    monkeypatch.setattr(engine, "feature_services", feature_services)
    h = {"x-api-key": keys["no-push"], "x-request-id": "r1"}
    assert http.post("/get-online-features", json=ROUTES[0][2], headers=h).status_code == 200
    assert http.get("/feature-services", headers={**h, "x-request-id": "r2"}).status_code == 200
    md = ("authorization", "Bearer " + keys["all"])
    assert (
        rpc(stub, "GetOnlineFeatures", METHODS[0][1](), md, ("x-request-id", "g1"))[0].name == "OK"
    )
    assert rpc(stub, "ListFeatureServices", pb.ListFeatureServicesRequest(), md)[0].name == "OK"
    assert seen[:3] == [("no-push", "r1"), ("no-push", "r2"), ("all", "g1")]
    assert seen[3][0] == "all" and HEX32.fullmatch(seen[3][1] or "")
    assert len(seen) == 4


# ---- gRPC ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "make", "scope"), METHODS, ids=[m[0] for m in METHODS])
def test_grpc_method_needs_a_key_with_its_scope(
    stub: Any, keys: dict[str, str], method: str, make: Callable[[], Any], scope: str
) -> None:
    code, details, md = rpc(stub, method, make())
    assert code == grpc.StatusCode.UNAUTHENTICATED and "missing API key" in details
    assert HEX32.fullmatch(md["x-request-id"])
    for bad in (("x-api-key", "fs_nope"), ("authorization", "Bearer fs_nope")):
        code, details, _ = rpc(stub, method, make(), bad)
        assert code == grpc.StatusCode.UNAUTHENTICATED and "unknown API key" in details
    code, details, _ = rpc(stub, method, make(), ("x-api-key", keys[f"no-{scope}"]))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert f"API key 'no-{scope}' lacks scope '{scope}'" in details
    for good in (("x-api-key", keys["all"]), ("authorization", "Bearer " + keys["all"])):
        code, details, md = rpc(stub, method, make(), good)
        assert code == grpc.StatusCode.OK, (good, details)
        assert HEX32.fullmatch(md["x-request-id"])


@pytest.mark.parametrize("method", ["Live", "Ready"])
def test_grpc_health_needs_no_key(stub: Any, method: str) -> None:
    code, details, md = rpc(stub, method, pb.HealthRequest())
    assert code == grpc.StatusCode.OK, details
    assert HEX32.fullmatch(md["x-request-id"])


def test_standard_grpc_health_needs_no_key(server: ServerThread) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(server.grpc_target) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check
        got = check(health_pb2.HealthCheckRequest(service="live"), timeout=5)
        assert got.status == health_pb2.HealthCheckResponse.SERVING


def test_grpc_request_id_is_echoed_or_made(stub: Any, keys: dict[str, str]) -> None:
    key = ("x-api-key", keys["all"])
    code, _, md = rpc(stub, "ListModels", pb.ListModelsRequest(), key, ("x-request-id", "abc.1"))
    assert code == grpc.StatusCode.OK and md["x-request-id"] == "abc.1"
    for bad in ("a b", "x" * 129):
        code, details, md = rpc(
            stub, "ListModels", pb.ListModelsRequest(), key, ("x-request-id", bad)
        )
        assert code == grpc.StatusCode.OK, details  # an invalid id is replaced, never refused
        assert HEX32.fullmatch(md["x-request-id"])


# ---- the keys file while serving ---------------------------------------------------------------


def test_revoke_takes_effect_without_a_restart(
    auth_repo: Path, http: httpx.Client, stub: Any
) -> None:
    key = create_key(auth_repo, "temp", "read")
    wait_for(lambda: http.get("/models", headers={"x-api-key": key}).status_code == 200, "new key")
    assert rpc(stub, "ListModels", pb.ListModelsRequest(), ("x-api-key", key))[0].name == "OK"
    r = keys_cli(auth_repo, "revoke", "temp")
    assert r.exit_code == 0 and "revoked API key 'temp'" in r.output
    wait_for(lambda: http.get("/models", headers={"x-api-key": key}).status_code == 401, "revoke")
    code, details, _ = rpc(stub, "ListModels", pb.ListModelsRequest(), ("x-api-key", key))
    assert code == grpc.StatusCode.UNAUTHENTICATED and "unknown API key" in details


def test_a_bad_keys_file_keeps_the_served_keys(
    auth_repo: Path, http: httpx.Client, keys: dict[str, str], caplog: Any
) -> None:
    path = auth_repo / "secrets" / "api_keys.json"
    good = path.read_bytes()
    try:
        with caplog.at_level(logging.WARNING, logger="featurestore.serving"):
            path.write_text('{"keys": [{"name": "x"')
            wait_for(
                lambda: (
                    http.get("/models", headers={"x-api-key": keys["all"]}).status_code == 200
                    and any("not valid JSON" in m for m in caplog.messages)
                ),
                "the bad file to be read",
            )
        assert any(str(path) in m and "keeping the" in m for m in caplog.messages)
        assert http.get("/models", headers={"x-api-key": keys["all"]}).status_code == 200
        assert http.get("/models").status_code == 401
    finally:
        tmp = path.with_suffix(".restore")
        tmp.write_bytes(good)
        os.replace(tmp, path)


def test_key_ring_reloads_on_change_and_keeps_the_last_good_keys(
    tmp_path: Path, caplog: Any
) -> None:
    path = tmp_path / "keys.json"
    a, b = new_key(), new_key()
    write_keys(path, [make_entry("a", a, ["features"])])
    ring = KeyRing(path, reload_interval_s=0)  # every lookup checks the file
    assert ring.lookup(a).name == "a" and ring.lookup(b) is None  # type: ignore[union-attr]
    bad_files = [
        "{not json",
        '{"keys": {}}',
        '[{"name": "a"}]',
        json.dumps({"keys": [{"name": "a", "sha256": "zz", "scopes": ["read"]}]}),
        json.dumps({"keys": [{"name": "a", "sha256": hash_key(b), "scopes": ["root"]}]}),
    ]
    with caplog.at_level(logging.WARNING, logger="featurestore.serving"):
        for text in bad_files:
            path.write_text(text)
            assert ring.lookup(a).name == "a", text  # type: ignore[union-attr]
            assert ring.lookup(b) is None
        path.unlink()
        assert ring.lookup(a) is None  # deleted: no key is valid until the file is back
    assert len([m for m in caplog.messages if str(path) in m]) == len(bad_files) + 1
    write_keys(path, [make_entry("b", b, ["push"])])
    assert ring.lookup(a) is None and ring.lookup(b).scopes == {"push"}  # type: ignore[union-attr]


def test_key_ring_checks_the_file_at_most_every_interval(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    a = new_key()
    write_keys(path, [make_entry("a", a, ["read"])])
    now = [100.0]
    ring = KeyRing(path, reload_interval_s=1.0, clock=lambda: now[0])
    write_keys(path, [])
    assert ring.lookup(a) is not None  # not due yet: no stat
    now[0] += 1.0
    assert ring.lookup(a) is None


def _bare_repo(root: Path, serving: str = "") -> Path:
    root.mkdir(parents=True)
    (root / "featurestore.yaml").write_text(
        "project: bare\nonline_store:\n  type: embedded\n  path: data/online\n" + serving
    )
    return root


def test_a_missing_or_bad_keys_file_stops_the_server_from_starting(tmp_path: Path) -> None:
    from featurestore.online.serving.engine import Engine
    from featurestore.online.serving.rest import create_app

    repo = _bare_repo(tmp_path / "repo", "serving:\n  auth:\n")
    engine = Engine.from_repo(str(repo))
    try:
        with pytest.raises(ConfigError) as err:
            create_app(engine)
        msg = str(err.value)
        assert str(repo / "secrets" / "api_keys.json") in msg and "does not exist" in msg
        assert "featurestore keys create NAME --scope" in msg
        (repo / "secrets").mkdir()
        (repo / "secrets" / "api_keys.json").write_text("[]")
        with pytest.raises(ConfigError, match=r'api_keys.json: expected \{"keys"'):
            create_app(engine)
    finally:
        engine.close()


def test_auth_off_adds_no_gate(shared_server: ServerThread, client: httpx.Client) -> None:
    from featurestore.online.serving._fast_rest import RequestGate

    assert RequestGate not in [m.cls for m in shared_server.app.user_middleware]
    r = client.get("/models")
    assert r.status_code == 200 and "x-request-id" not in r.headers
    with grpc.insecure_channel(shared_server.grpc_target) as ch:
        code, _, md = rpc(pb_grpc.FeatureServingStub(ch), "ListModels", pb.ListModelsRequest())
    assert code == grpc.StatusCode.OK and "x-request-id" not in md


def test_audit_alone_installs_request_ids_but_asks_no_key(
    served_repo: Path, tmp_path: Path
) -> None:
    from featurestore.online.serving._fast_rest import RequestGate
    from featurestore.online.serving.config import AuditConfig, ServingConfig
    from featurestore.online.serving.engine import Engine
    from featurestore.online.serving.rest import create_app
    from featurestore.store import FeatureStore

    engine = Engine(
        FeatureStore(served_repo),
        serving=ServingConfig(audit=AuditConfig(path=str(tmp_path))),
        own_store=True,
    )
    try:
        app = create_app(engine)
        gates = [m for m in app.user_middleware if m.cls is RequestGate]
        assert len(gates) == 1 and gates[0].kwargs["keyring"] is None
    finally:
        engine.close()


# ---- featurestore keys -----------------------------------------------------------------------


def test_keys_create_list_revoke(tmp_path: Path) -> None:
    repo = _bare_repo(tmp_path / "repo")
    r = keys_cli(repo, "create", "ci-bot", "--scope", "predict", "--scope", "features")
    assert r.exit_code == 0, r.output
    key = next(line for line in r.output.splitlines() if line.startswith("fs_"))
    assert r.output.count(key) == 1 and len(key) == 46
    assert "not stored" in r.output and "serving.auth is not set" in r.output
    path = repo / "secrets" / "api_keys.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert key not in text and key[3:] not in text
    (entry,) = read_keys(path)
    assert entry.name == "ci-bot" and entry.sha256 == hash_key(key)
    assert entry.scopes == {"features", "predict"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", entry.created)

    create_key(repo, "dashboard", "read", "metrics")
    r = keys_cli(repo, "list")
    assert r.exit_code == 0
    lines = r.output.splitlines()
    assert lines[0].split() == ["ci-bot", "features,predict", entry.created]
    assert lines[1].split()[:2] == ["dashboard", "read,metrics"]
    assert entry.sha256 not in r.output and "fs_" not in r.output

    r = keys_cli(repo, "revoke", "ci-bot")
    assert r.exit_code == 0 and "revoked API key 'ci-bot'" in r.output
    assert [k.name for k in read_keys(path)] == ["dashboard"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["create", "x", "--scope", "admin"], "unknown scope 'admin'"),
        (["create", "dup", "--scope", "read"], "an API key named 'dup' already exists"),
        (["create", "bad name", "--scope", "read"], "API key name 'bad name' is not allowed"),
        (["create", "x"], "Missing option '--scope'"),
        (["revoke", "carol"], "no API key named 'carol'"),
    ],
)
def test_keys_cli_errors_are_one_line(tmp_path: Path, args: list[str], needle: str) -> None:
    repo = _bare_repo(tmp_path / "repo")
    create_key(repo, "dup", "read")
    r = keys_cli(repo, *args)
    assert r.exit_code != 0 and needle in r.output, r.output
    assert "Traceback" not in r.output
    assert [k.name for k in read_keys(repo / "secrets" / "api_keys.json")] == ["dup"]


def test_keys_cli_uses_the_configured_file(tmp_path: Path) -> None:
    repo = _bare_repo(tmp_path / "repo", "serving:\n  auth:\n    keys_file: conf/keys.json\n")
    r = keys_cli(repo, "create", "a", "--scope", "read")
    assert r.exit_code == 0 and "serving.auth is not set" not in r.output
    assert [k.name for k in read_keys(repo / "conf" / "keys.json")] == ["a"]
    assert not (repo / "secrets").exists()


# ---- featurestore serve ----------------------------------------------------------------------


def test_serve_with_auth_refuses_a_request_without_a_key(
    auth_repo: Path, keys: dict[str, str]
) -> None:
    rest = free_port()
    url = f"http://127.0.0.1:{rest}"
    with cli_serve(auth_repo, "--port", str(rest), "--grpc-port", "0") as proc:

        def ready() -> bool:
            assert proc.poll() is None, proc.stdout.read().decode()  # type: ignore[union-attr]
            try:
                return httpx.get(f"{url}/health/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, "featurestore serve", timeout=60)
        body = {"model": "fraud", "entities": ENTITIES}
        r = httpx.post(f"{url}/predict", json=body, timeout=5)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        r = httpx.post(f"{url}/predict", json=body, headers={"x-api-key": keys["all"]}, timeout=5)
        assert r.status_code == 200 and r.json()["version"] == 1


def test_serve_with_auth_and_no_keys_file_stops_with_the_fix(tmp_path: Path) -> None:
    repo = _bare_repo(tmp_path / "repo", "serving:\n  auth:\n")
    out = subprocess.run(
        [sys.executable, "-c", "from featurestore.cli import cli; cli()", "-r", str(repo),
         "serve", "--port", str(free_port()), "--grpc-port", "0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 1
    assert "api_keys.json does not exist" in out.stderr
    assert "featurestore keys create NAME --scope" in out.stderr
