"""Deleting the API keys file while serving shuts every key out; its keys come back with it.

A file that is there but does not parse, or cannot be read, keeps the keys loaded before.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from featurestore.online.serving._proto import featurestore_pb2 as pb
from featurestore.online.serving._proto import featurestore_pb2_grpc as pb_grpc
from featurestore.online.serving.auth import KeyRing, make_entry, new_key, write_keys
from tests.serving.conftest import ServerThread, make_repo
from tests.serving.test_auth import create_key, wait_for

AUTH_YAML = "serving:\n  auth:\n    reload_interval_s: 0.05\n"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repo(tmp_path_factory.mktemp("keysdel") / "repo", serving=AUTH_YAML)


@pytest.fixture(scope="module")
def key(repo: Path) -> str:
    return create_key(repo, "reader", "read")


@pytest.fixture(scope="module")
def server(repo: Path, key: str) -> Iterator[ServerThread]:
    from featurestore.online.serving.engine import Engine
    from featurestore.online.serving.rest import create_app

    s = ServerThread(create_app(Engine.from_repo(str(repo)), grpc_port=0, own_engine=True))
    yield s.start()
    s.stop()


def _models(server: ServerThread, key: str) -> httpx.Response:
    return httpx.get(f"{server.url}/models", headers={"x-api-key": key}, timeout=10)


def _list_models(server: ServerThread, key: str) -> tuple[grpc.StatusCode, str]:
    with grpc.insecure_channel(server.grpc_target) as ch:
        stub = pb_grpc.FeatureServingStub(ch)
        try:
            stub.ListModels(pb.ListModelsRequest(), metadata=(("x-api-key", key),), timeout=10)
        except grpc.RpcError as exc:
            return exc.code(), exc.details()
        return grpc.StatusCode.OK, ""


def test_deleting_the_keys_file_refuses_every_key_until_it_is_back(
    repo: Path, key: str, server: ServerThread, caplog: Any
) -> None:
    path = repo / "secrets" / "api_keys.json"
    good = path.read_bytes()
    assert _models(server, key).status_code == 200
    try:
        with caplog.at_level(logging.WARNING, logger="featurestore.serving"):
            path.unlink()
            wait_for(lambda: _models(server, key).status_code == 401, "the delete to be seen")
            for _ in range(5):  # stays refused, and the log says so once
                r = _models(server, key)
                assert r.status_code == 401
                assert "keys file has been removed" in r.json()["error"]
                assert str(path) not in r.text  # clients are not told server paths
            code, details = _list_models(server, key)
            assert code == grpc.StatusCode.UNAUTHENTICATED
            assert "keys file has been removed" in details
            assert httpx.get(f"{server.url}/health/live", timeout=10).status_code == 200
        deleted = [m for m in caplog.messages if str(path) in m and "was deleted" in m]
        assert len(deleted) == 1, caplog.messages
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="featurestore.serving"):
            tmp = path.with_suffix(".restore")
            tmp.write_bytes(good)
            os.replace(tmp, path)
            wait_for(lambda: _models(server, key).status_code == 200, "the keys to come back")
        assert any(str(path) in m and "is back" in m for m in caplog.messages)
        assert _list_models(server, key)[0] == grpc.StatusCode.OK
    finally:
        if not path.exists():
            path.write_bytes(good)


def test_ring_keeps_keys_for_a_bad_or_unreadable_file_but_drops_them_when_gone(
    tmp_path: Path,
) -> None:
    path = tmp_path / "keys.json"
    a, b = new_key(), new_key()
    write_keys(path, [make_entry("a", a, ["read"])])
    ring = KeyRing(path, reload_interval_s=0)  # every lookup checks the file
    assert ring.lookup(a) is not None
    for text in ("", '{"keys": [{"name": "a"', "{not json"):  # empty: a half-written file
        path.write_text(text)
        assert ring.lookup(a) is not None, repr(text)
    write_keys(path, [make_entry("a", a, ["read"])])
    if os.geteuid() != 0:  # root reads a 000 file anyway
        path.chmod(0)
        assert ring.lookup(a) is not None
        path.chmod(0o600)
    path.unlink()  # a folder in its place: there, but not readable as a file
    path.mkdir()
    assert ring.lookup(a) is not None
    path.rmdir()
    assert ring.lookup(a) is None and ring.keys == []
    write_keys(path, [make_entry("b", b, ["read"])])
    assert ring.lookup(a) is None and ring.lookup(b) is not None
    path.parent.joinpath("keys.json").unlink()
    assert ring.lookup(b) is None
