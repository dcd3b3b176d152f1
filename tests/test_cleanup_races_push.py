"""An online push into a view that apply redefined (a new join key, or removed and defined
again) while apply still deletes the rows of its earlier definition is not deleted with them:
in process, over REST and over gRPC it waits for the delete and lands after it, or, when the
delete does not come (the store failed it), is refused as retryable (503 / UNAVAILABLE) with
nothing written. Races are made by pausing the cleanup's delete (events, no sleeps)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from featurestore.errors import OnlineStoreUnavailableError
from featurestore.online.base import Status
from featurestore.online.serving._proto import featurestore_pb2 as pb
from featurestore.online.serving._proto import featurestore_pb2_grpc as pb_grpc
from featurestore.online.serving.errors import NotReadyError
from featurestore.store import FeatureStore

from .core.test_apply_cleanup import count_keys
from .serving.conftest import ServerThread
from .test_cleanup_races_materialize import (
    USERS,
    WAIT_S,
    Pause,
    Run,
    make_repo,
    two_stores,
    until,
    write_defs,
)

# a push may take 20 s (10x this), and waits for a cleanup up to half of that: a paused
# cleanup is let go long before, however slow the machine
SLOW = "serving:\n  deadline_ms: 2000\n"


def pause_deletes(monkeypatch: pytest.MonkeyPatch, store: FeatureStore, pause: Pause) -> None:
    """``store``'s cleanup pauses in its delete of view 'stats' (holding its locks)."""
    real = store.online.delete_view

    def delete_view(project: str, name: str) -> int:
        if name == "stats":
            pause.hit()
        return real(project, name)

    monkeypatch.setattr(store.online, "delete_view", delete_view)


def signal_waits(monkeypatch: pytest.MonkeyPatch, store: FeatureStore) -> list[str]:
    """The views whose cleanup lock ``store``'s pushes start to take (one entry a take)."""
    taken: list[str] = []
    registry = store._registry
    real = registry.cleanup_lock

    class Lock:
        def __init__(self, view: str) -> None:
            self._lock, self._view = real(view), view

        def acquire(self, *a: Any, **kw: Any) -> Any:
            taken.append(self._view)
            return self._lock.acquire(*a, **kw)

        def release(self) -> None:
            self._lock.release()

        def __enter__(self) -> Lock:
            self.acquire()
            return self

        def __exit__(self, *exc: object) -> None:
            self.release()

    monkeypatch.setattr(registry, "cleanup_lock", Lock)
    return taken


def redefine(store: FeatureStore, repo: Path, change: str) -> Run:
    """Start redefining 'stats' in a thread: a new join key (account_id) by an apply, or
    removed and defined again as before (what two applies at once can leave: a record marked
    ``again``), then its cleanup."""
    if change == "rekeyed":
        write_defs(repo, "stats", "win", "kept", entity="account")
        run = Run(store.apply)
    else:
        registry, state = store._registry, store.registry
        ents, views = list(state.entities.values()), list(state.feature_views.values())
        services, kinds = list(state.feature_services.values()), state.join_key_kinds
        without = [v for v in views if v.name != "stats"]
        registry.apply(ents, without, services, join_key_kinds=kinds)
        registry.apply(ents, views, services, join_key_kinds=kinds)
        assert store.registry.pending_cleanup["stats"].get("again")
        run = Run(lambda: store._report_cleanup(None))
    run.start()
    return run


def served(store: FeatureStore, key: str, value: int) -> tuple[Any, Any]:
    got = store.get_online_features(["stats:clicks"], {key: [value]})
    return got.to_dict()["clicks"][0], got.statuses["clicks"][0]


@pytest.mark.parametrize("kind", ["embedded", "redis"])
@pytest.mark.parametrize("change", ["rekeyed", "again"])
def test_a_push_during_the_cleanup_lands_after_it(
    kind: str,
    change: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The cleanup of redefined 'stats' is paused in its delete; a push into the new
    definition waits for it, and its row is served once the cleanup finished."""
    make_repo(tmp_path, kind, request, SLOW)
    key = "account_id" if change == "rekeyed" else "user_id"
    with two_stores(tmp_path) as (p, a):
        pause = Pause()
        pause_deletes(monkeypatch, a, pause)
        cleanup = redefine(a, tmp_path, change)
        assert pause.inside.wait(WAIT_S)  # the registry says the new 'stats'; its delete waits
        taken = signal_waits(monkeypatch, p)
        push = Run(lambda: p.push("stats", {key: [7], "clicks": [99]}))
        push.start()
        until(lambda: "stats" in taken, push)  # (unfixed, it is written at once)
        pause.go.set()
        cleanup.finish()
        push.finish()
        assert cleanup.error is None and push.error is None, (cleanup.error, push.error)
        assert push.result == 1
        assert p.registry.pending_cleanup == {}
        assert served(p, key, 7) == (99, Status.PRESENT)
        assert count_keys(p, "stats", request) == 1  # the push's row; the old ones are gone


def _server(repo: Path, a: FeatureStore) -> ServerThread:
    """REST and gRPC over ``repo``; ``a`` shares its embedded store (one LMDB environment a
    process)."""
    srv = ServerThread.of_repo(repo).start()
    if a.config.online_store.type == "embedded":
        a.online.close()
        a._online = srv.app.state.engine.store.online
    return srv


def _rest_push(srv: ServerThread) -> httpx.Response:
    body = {"feature_view": "stats", "rows": {"account_id": [7], "clicks": [99]}}
    with httpx.Client(base_url=srv.url, timeout=60) as c:
        return c.post("/push", json=body)


def _grpc_push(srv: ServerThread, key: int) -> Any:
    req = pb.PushRequest(
        feature_view="stats",
        rows={"account_id": pb.ValueList(ints=[key]), "clicks": pb.ValueList(ints=[98])},
    )
    with grpc.insecure_channel(srv.grpc_target) as ch:
        return pb_grpc.FeatureServingStub(ch).Push(req, timeout=60)


@pytest.mark.parametrize("kind", ["embedded", "redis"])
def test_pushes_over_rest_and_grpc_wait_for_the_cleanup(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As in process: a REST push and a gRPC push into 'stats', whose join key an apply just
    changed, wait for its cleanup's delete and are served after it."""
    make_repo(tmp_path, kind, request, SLOW)
    a = FeatureStore(tmp_path)
    srv = _server(tmp_path, a)
    try:
        engine_store = srv.app.state.engine.store
        pause = Pause()
        pause_deletes(monkeypatch, a, pause)
        cleanup = redefine(a, tmp_path, "rekeyed")
        assert pause.inside.wait(WAIT_S)
        taken = signal_waits(monkeypatch, engine_store)
        rest = Run(lambda: _rest_push(srv))
        rpc = Run(lambda: _grpc_push(srv, 8))
        rest.start()
        rpc.start()
        until(lambda: taken.count("stats") >= 1, rest)
        until(lambda: taken.count("stats") >= 2, rpc)
        pause.go.set()
        for run in (cleanup, rest, rpc):
            assert run.finish().error is None, run.error
        assert rest.result.status_code == 200, rest.result.text
        assert rpc.result.rows_written == 1
        assert served(a, "account_id", 7) == (99, Status.PRESENT)
        assert served(a, "account_id", 8) == (98, Status.PRESENT)
        assert count_keys(a, "stats", request) == 2
    finally:
        srv.stop()
        if a._online is srv.app.state.engine.store._online:
            a._online = None
        a.close()


@pytest.mark.parametrize("kind", ["embedded", "redis"])
def test_a_push_is_refused_while_the_earlier_rows_are_not_deleted(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cleanup of 'stats' (its join key changed) failed: the old rows stand, recorded for
    the next apply, which would delete a row pushed now. In process, over REST and gRPC the
    push is refused as retryable (NotReadyError, 503, UNAVAILABLE) in one line, writing
    nothing; once apply ran again, the same push lands."""
    make_repo(tmp_path, kind, request)
    a = FeatureStore(tmp_path)
    srv = _server(tmp_path, a)
    try:
        real = a.online.delete_view

        def down(project: str, name: str) -> int:
            raise OnlineStoreUnavailableError("the store does not answer")

        monkeypatch.setattr(a.online, "delete_view", down)
        write_defs(tmp_path, "stats", "win", "kept", entity="account")
        reports: list[Any] = []
        a.apply(report=reports.append)
        assert "stats" in [r.view for r in reports if r.failed]
        assert "stats" in a.registry.pending_cleanup
        with FeatureStore(tmp_path) as p:
            if kind == "embedded":
                p._online = a.online
            with pytest.raises(NotReadyError) as info:
                p.push("stats", {"account_id": [7], "clicks": [99]})
            p._online = None
        text = str(info.value)
        assert "'stats'" in text and "push again" in text and "\n" not in text
        rest = _rest_push(srv)
        assert rest.status_code == 503, rest.text
        assert "'stats'" in rest.text
        with pytest.raises(grpc.RpcError) as rpc:
            _grpc_push(srv, 8)
        assert rpc.value.code() == grpc.StatusCode.UNAVAILABLE
        assert count_keys(a, "stats", request) == USERS  # only the old rows
        assert served(a, "account_id", 7)[1] == Status.NOT_FOUND
        monkeypatch.setattr(a.online, "delete_view", real)
        a.apply()  # deletes the old rows
        assert a.registry.pending_cleanup == {}
        assert _rest_push(srv).status_code == 200
        assert _grpc_push(srv, 8).rows_written == 1
        assert count_keys(a, "stats", request) == 2
    finally:
        srv.stop()
        if a._online is srv.app.state.engine.store._online:
            a._online = None
        a.close()
