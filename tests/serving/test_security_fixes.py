"""What the servers reveal and accept: error answers name models, not server folders; audit
files are owner-only; an encrypted TLS key is one line, never a prompt; a bad request id is
replaced, never refused; the health checks need no key with a trailing slash either."""

from __future__ import annotations

import re
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from featurestore.online.serving._proto import featurestore_pb2 as pb
from featurestore.online.serving._proto import featurestore_pb2_grpc as pb_grpc
from featurestore.online.serving._wire import to_value
from featurestore.online.serving.auth import make_entry, new_key, write_keys
from tests.serving.conftest import ServerThread, free_port, make_repo, unapplied_repo

SERVING = "serving:\n  auth:\n    reload_interval_s: 0.05\n  audit:\n    path: data/audit\n"
ENTITIES = {"user_id": [1], "merchant_id": [1]}
PREDICT = {"model": "fraud", "entities": ENTITIES}
HEX32 = re.compile(r"[0-9a-f]{32}")
BAD_IDS = ["bad id", "x" * 129, "caf\xe9"]


@pytest.fixture(scope="module")
def repo_and_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A repo with API keys and the audit log on, and a key with every scope."""
    repo = make_repo(tmp_path_factory.mktemp("security") / "repo", serving=SERVING)
    key = new_key()
    scopes = ["features", "predict", "push", "read", "metrics"]
    write_keys(repo / "secrets" / "api_keys.json", [make_entry("all", key, scopes)])
    return repo, key


@pytest.fixture(scope="module")
def server(repo_and_key: tuple[Path, str]) -> Iterator[ServerThread]:
    s = ServerThread.of_repo(repo_and_key[0]).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def http(server: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as c:
        yield c


@pytest.fixture(scope="module")
def stub(server: ServerThread) -> Iterator[Any]:
    with grpc.insecure_channel(server.grpc_target) as ch:
        yield pb_grpc.FeatureServingStub(ch)


def _entities() -> dict[str, Any]:
    return {k: pb.ValueList(values=[to_value(v) for v in vs]) for k, vs in ENTITIES.items()}


def _grpc_error(stub: Any, request: Any, key: str) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(request, metadata=[("x-api-key", key)], timeout=10)
    return err.value.code(), err.value.details()


# ---- error answers name the model, not the server's folders -------------------------------------


def test_an_unknown_model_is_named_without_the_registry_folder(
    http: httpx.Client, stub: Any, repo_and_key: tuple[Path, str]
) -> None:
    repo, key = repo_and_key
    r = http.post("/predict", json={**PREDICT, "model": "nosuch"}, headers={"x-api-key": key})
    assert r.status_code == 404
    rest_error = r.json()["error"]
    code, grpc_error = _grpc_error(
        stub, pb.PredictRequest(model="nosuch", entities=_entities()), key
    )
    assert code == grpc.StatusCode.NOT_FOUND
    for error in (rest_error, grpc_error):
        assert "no model 'nosuch'" in error and "known models: fraud" in error
        assert str(repo) not in error and "models" not in error.split("known models")[0]
        assert "/" not in error, error


# ---- audit files are the owner's only ------------------------------------------------------------


def test_audit_files_and_their_folder_are_owner_only(
    http: httpx.Client, repo_and_key: tuple[Path, str]
) -> None:
    repo, key = repo_and_key
    r = http.post("/predict", json=PREDICT, headers={"x-api-key": key})
    assert r.status_code == 200, r.text
    folder = repo / "data" / "audit"
    end = time.monotonic() + 15
    while not list(folder.glob("audit-*.jsonl")):  # written by a background thread
        assert time.monotonic() < end, "no audit file was written"
        time.sleep(0.02)
    files = list(folder.glob("audit-*.jsonl"))
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, (f.name, oct(f.stat().st_mode))
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700, oct(folder.stat().st_mode)


# ---- request ids: an invalid one is replaced, never refused ------------------------------------


@pytest.mark.parametrize("bad", BAD_IDS, ids=["space", "129-chars", "non-ascii"])
def test_a_bad_request_id_is_replaced_on_health_and_predict(
    http: httpx.Client, repo_and_key: tuple[Path, str], bad: str
) -> None:
    header = {"x-request-id": bad.encode("latin-1")}
    for path in ("/health/ready", "/health/live"):
        r = http.get(path, headers=header)
        assert r.status_code == 200, (path, r.text)
        assert HEX32.fullmatch(r.headers["x-request-id"]), r.headers["x-request-id"]
    r = http.post("/predict", json=PREDICT, headers={**header, "x-api-key": repo_and_key[1]})
    assert r.status_code == 200, r.text
    assert HEX32.fullmatch(r.headers["x-request-id"])
    assert r.json()["request_id"] == r.headers["x-request-id"]  # the audit record's id too


def test_a_bad_grpc_request_id_is_replaced(stub: Any, repo_and_key: tuple[Path, str]) -> None:
    for bad in BAD_IDS[:2]:
        md = [("x-api-key", repo_and_key[1]), ("x-request-id", bad)]
        res, call = stub.Predict.with_call(
            pb.PredictRequest(model="fraud", entities=_entities()), metadata=md, timeout=10
        )
        assert len(res.scores) == 1
        assert HEX32.fullmatch(dict(call.initial_metadata())["x-request-id"])
        res, call = stub.Ready.with_call(
            pb.HealthRequest(), metadata=[("x-request-id", bad)], timeout=10
        )
        assert HEX32.fullmatch(dict(call.initial_metadata())["x-request-id"])


@pytest.mark.parametrize("path", ["/health/ready/", "/health/live/"])
def test_health_checks_need_no_key_with_a_trailing_slash(http: httpx.Client, path: str) -> None:
    r = http.get(path)
    assert r.status_code != 401, r.text
    r = http.get(path, follow_redirects=True)
    assert r.status_code == 200, (path, r.status_code, r.text)
    assert "ready" in r.json() or r.json() == {"live": True}


def test_other_paths_still_need_a_key_with_a_trailing_slash(http: httpx.Client) -> None:
    for path in ("/models/", "/metrics/", "/health/ready/x", "/health/"):
        assert http.get(path).status_code == 401, path


# ---- a corrupt model index is named by the model -------------------------------------------------


def test_a_corrupt_model_index_is_named_without_its_path(
    http: httpx.Client, stub: Any, repo_and_key: tuple[Path, str]
) -> None:
    repo, key = repo_and_key
    index = repo / "data" / "models" / "broken" / "index.json"
    index.parent.mkdir()
    index.write_text("{not json")
    try:
        r = http.post("/predict", json={**PREDICT, "model": "broken@1"}, headers={"x-api-key": key})
        assert r.status_code == 400, r.text
        code, grpc_error = _grpc_error(
            stub, pb.PredictRequest(model="broken@1", entities=_entities()), key
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        for error in (r.json()["error"], grpc_error):
            assert "model index of 'broken' is corrupt" in error
            assert str(repo) not in error and "data/models" not in error, error
    finally:
        index.unlink()
        index.parent.rmdir()


# ---- an encrypted TLS key: one line, no prompt ----------------------------------------------------


def test_an_encrypted_tls_key_stops_serve_with_one_line(tmp_path: Path) -> None:
    repo = unapplied_repo(tmp_path)
    certs = repo / "certs"
    certs.mkdir()
    issued = trustme.CA().issue_cert("127.0.0.1")
    issued.private_key_and_cert_chain_pem.write_to_path(str(certs / "server.pem"))
    key = serialization.load_pem_private_key(issued.private_key_pem.bytes(), None)
    for fmt in (serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL):
        (certs / "server.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, fmt, serialization.BestAvailableEncryption(b"pw")
            )
        )
        with (repo / "featurestore.yaml").open("a") as f:
            if fmt is serialization.PrivateFormat.PKCS8:
                f.write(
                    "serving:\n  tls:\n    cert_file: certs/server.pem\n"
                    "    key_file: certs/server.key\n"
                )
        code = (
            "from featurestore.cli import cli; from featurestore._cli_serve import "
            "register_commands; register_commands(cli); cli()"
        )
        # its own session, no terminal and a passphrase on stdin: a prompt could not block
        # the test, and a key loaded with the piped passphrase would start a server
        proc = subprocess.run(
            [sys.executable, "-c", code, "-r", str(repo), "serve", "--port", str(free_port())],
            input=b"pw\n",
            capture_output=True,
            timeout=120,
            start_new_session=True,
        )
        out = (proc.stdout + proc.stderr).decode().strip()
        assert proc.returncode != 0, out
        assert len(out.splitlines()) == 1 and "Traceback" not in out, out
        assert "serving.tls.key_file 'certs/server.key' is encrypted" in out, out
        assert "not supported" in out and "pass phrase" not in out, out
