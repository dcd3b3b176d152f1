"""Server file paths stay in the server log: a model version whose artifact is corrupt or was
deleted after register answers REST, gRPC and ``/health/ready`` with the model's name, version
and the reason, but no folder of the server; failed pushes and an unreadable registry alike."""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from featurestore.online.models.errors import without_paths
from featurestore.online.serving._proto import featurestore_pb2 as pb
from featurestore.online.serving._proto import featurestore_pb2_grpc as pb_grpc
from featurestore.online.serving._wire import to_value
from tests.serving.conftest import ServerThread, make_repo, train_model

ENTITIES = {"user_id": [1], "merchant_id": [1]}
USER = {"user_id": [7], "tx_count": [3], "amount_mean": [2.5], "country": ["fr"]}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """make_repo's 'fraud' (v1 production), v2's artifact deleted after register, and v3's
    (registered from a good file) overwritten with garbage."""
    from featurestore.online.models.repo import model_registry, service_feature_names
    from featurestore.store import FeatureStore

    root = tmp_path_factory.mktemp("nopaths")
    repo = make_repo(root / "repo")
    with FeatureStore(repo) as store:
        reg = model_registry(store)
        art = train_model(root / "model3.txt", seed=3)
        names = service_feature_names(store, "scoring")
        v3 = reg.register(
            "fraud", flavor="lightgbm", artifact=art, feature_service="scoring",
            service_features=names,
        )  # fmt: skip
        v2 = reg.get("fraud").version(2)
        Path(reg.artifact_path(v2)).unlink()
        Path(reg.artifact_path(v3)).write_text("tree\nversion=v3\nnot a model at all\n")
    return repo


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[ServerThread]:
    s = ServerThread.of_repo(repo).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def http(server: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def stub(server: ServerThread) -> Iterator[Any]:
    with grpc.insecure_channel(server.grpc_target) as ch:
        yield pb_grpc.FeatureServingStub(ch)


def _cols(rows: dict[str, list[Any]]) -> dict[str, Any]:
    return {k: pb.ValueList(values=[to_value(v) for v in vs]) for k, vs in rows.items()}


def _no_paths(text: str, repo: Path) -> None:
    """No folder of the server in ``text``: neither the repo's nor the one above it."""
    assert str(repo) not in text, text
    assert str(repo.parent) not in text, text
    assert str(repo.resolve()) not in text, text


def _grpc_error(call: Any, request: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call(request, timeout=30)
    return err.value.code(), err.value.details()


def _logged(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("ref", "reason"),
    [("fraud@2", "Could not open model2.txt"), ("fraud@3", "cannot load lightgbm model fraud v3")],
    ids=["deleted", "corrupt"],
)
def test_a_pinned_version_that_cannot_load_is_named_without_its_path(
    http: httpx.Client,
    stub: Any,
    repo: Path,
    caplog: pytest.LogCaptureFixture,
    ref: str,
    reason: str,
) -> None:
    name, version = ref.split("@")
    caplog.set_level(logging.ERROR, logger="featurestore.models")
    r = http.post("/predict", json={"model": ref, "entities": ENTITIES})
    assert r.status_code == 503, r.text
    code, details = _grpc_error(
        stub.Predict, pb.PredictRequest(model=ref, entities=_cols(ENTITIES))
    )
    assert code == grpc.StatusCode.UNAVAILABLE
    for answer in (r.text, details):
        _no_paths(answer, repo)
        assert f"cannot load lightgbm model {name} v{version}: " in answer, answer
        assert reason in answer, answer
    assert str(repo) in _logged(caplog)  # the operator still learns which file it was


def test_health_names_a_version_that_cannot_load_without_its_path(
    http: httpx.Client, stub: Any, repo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A shadow pointed at v2, whose artifact is gone: the refresh fails, production keeps serving, and
    /health/ready (no key needed) and gRPC Ready report it without the artifact's folder."""
    from featurestore._atomic import atomic_write
    from featurestore.online.models.repo import model_registry
    from featurestore.store import FeatureStore

    caplog.set_level(logging.ERROR, logger="featurestore.models")
    with FeatureStore(repo) as store:
        reg = model_registry(store)
        # written into the index: set_alias refuses a version whose artifact is gone (this is
        # a promotion made before its file was deleted)
        index = reg.index_path("fraud")
        doc = json.loads(index.read_text())
        doc["aliases"]["shadow"] = {"version": 2}
        atomic_write(index, json.dumps(doc).encode())  # the server never reads half of it
        try:
            health = _wait_for_model_error(http)
            ready = stub.Ready(pb.HealthRequest(), timeout=30)
        finally:
            reg.remove_alias("fraud", "shadow")
    error = health["model_error"]
    # LightGBM's own message names the file: only its name is left
    assert "model 'fraud': cannot load lightgbm model fraud v2: Could not open model2.txt" in error
    grpc_detail = json.loads(ready.detail)
    assert grpc_detail["model_error"] == error
    for answer in (json.dumps(health), ready.detail):
        _no_paths(answer, repo)
    assert str(repo) in _logged(caplog)


def _wait_for_model_error(http: httpx.Client) -> dict[str, Any]:
    """/health/ready once it reports a model error (the server re-reads the registry every
    0.05 s); bounded by a count of tries, not a time."""
    for _ in range(400):
        body = http.get("/health/ready").json()
        if body.get("model_error"):
            return body
        time.sleep(0.025)
    raise AssertionError(f"no model_error reported: {body}")


def test_a_push_the_store_fails_is_answered_without_the_path_and_logged_with_it(
    http: httpx.Client,
    stub: Any,
    repo: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import featurestore.online.writer

    where = repo / "data" / "online"

    def down(*args: Any, **kwargs: Any) -> int:
        raise OSError(f"the embedded online store at {where} is full")

    monkeypatch.setattr(featurestore.online.writer, "write_table", down)
    caplog.set_level(logging.ERROR, logger="featurestore.serving")
    r = http.post("/push", json={"feature_view": "user_stats", "rows": USER})
    assert r.status_code == 503, r.text
    code, details = _grpc_error(
        stub.Push, pb.PushRequest(feature_view="user_stats", rows=_cols(USER))
    )
    assert code == grpc.StatusCode.UNAVAILABLE
    for answer in (r.text, details):
        _no_paths(answer, repo)
        assert "the online store failed" in answer and "data/online is full" in answer, answer
    assert str(where) in _logged(caplog)


def test_a_registry_that_cannot_be_read_is_answered_without_its_path(
    http: httpx.Client, stub: Any, repo: Path
) -> None:
    """The registry file corrupted under a running server: requests fail with 503 naming it
    relative to the repo at most. Restored afterwards."""
    from featurestore.store import FeatureStore

    with FeatureStore(repo) as store:
        path = Path(store.config.resolve(store.config.registry))
    saved = path.with_suffix(".saved")
    shutil.copy2(path, saved)
    try:
        path.write_text("{ not json")
        body = {"feature_service": "scoring", "entities": ENTITIES}
        r = _until_refused(http, body)
        code, details = _grpc_error(
            stub.GetOnlineFeatures,
            pb.GetOnlineFeaturesRequest(feature_service="scoring", entities=_cols(ENTITIES)),
        )
    finally:
        shutil.copy2(saved, path)
    assert r.status_code == 503, r.text
    assert code == grpc.StatusCode.UNAVAILABLE, details
    for answer in (r.text, details):
        _no_paths(answer, repo)
        assert "corrupt" in answer, answer


def _until_refused(http: httpx.Client, body: dict[str, Any]) -> httpx.Response:
    """The first answer after the server re-read the registry (it checks at most every 0.1 s);
    bounded by a count of tries."""
    for _ in range(100):
        r = http.post("/get-online-features", json=body)
        if r.status_code != 200:
            return r
        time.sleep(0.05)
    return r


# folder names as users pick them: spaces and a few signs between letters or digits
_NAME = st.from_regex(r"[a-zA-Z0-9]([a-zA-Z0-9 _.()'-]{0,10}[a-zA-Z0-9])?", fullmatch=True)


@settings(max_examples=200, deadline=None)
@given(
    parents=st.lists(_NAME, min_size=1, max_size=3),
    inside=st.lists(_NAME.filter(lambda n: " " not in n), min_size=1, max_size=3),
    quote=st.sampled_from(["", "'", '"']),
)
def test_a_path_under_a_known_folder_loses_the_whole_folder_spaces_and_all(
    parents: list[str], inside: list[str], quote: str
) -> None:
    """'/srv/My Repo/data/events' with '/srv/My Repo' known is 'data/events', never
    'My Repo/data/events': the known folder goes by its spelling before any other rule."""
    folder = "/" + "/".join(parents)
    rel = "/".join(inside)
    text = f"cannot read {quote}{folder}/{rel}{quote}: no such file"
    for given_as in (folder, folder + "/", Path(folder)):
        out = without_paths(text, given_as)
        assert out == f"cannot read {quote}{rel}{quote}: no such file", (folder, out)


@pytest.mark.parametrize(
    ("text", "folders", "shown"),
    [
        ("read /srv/My Repo/data/events: gone", ["/srv/My Repo"], "read data/events: gone"),
        ("read /srv/My Repo/data/events: gone", ["/srv/x/../My Repo"], "read data/events: gone"),
        ("repo /srv/My Repo is locked", ["/srv/My Repo/"], "repo . is locked"),
        ("no such file: '/srv/My Repo/data/events'", [], "no such file: 'events'"),
        ('no such file: "/srv/My Repo/a b.parquet"', [], 'no such file: "a b.parquet"'),
        ("under '/srv/My Repo2/x', not /srv/My Repo", ["/srv/My Repo"], "under 'x', not ."),
        ("copy in '/mnt/srv/My Repo/x'", ["/srv/My Repo"], "copy in 'x'"),
        ("it's /srv/a/b, not 'rel/x' https://h/a/b", [], "it's b, not 'rel/x' https://h/a/b"),
    ],
)
def test_known_folders_first_then_other_absolute_paths(
    text: str, folders: list[str], shown: str
) -> None:
    assert without_paths(text, *folders) == shown
