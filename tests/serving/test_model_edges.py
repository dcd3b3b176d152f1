"""Edges of model serving: on-demand-only requests, a model giving the wrong number of scores,
a removed feature service, explain with a canary that cannot, model references with an empty
side of '@', a corrupt model index, the ``models unset`` and ``register`` CLI, and the warm-up
of services keyed by strings."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import grpc
import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from featurestore._cli_serve import register_commands
from featurestore.cli import cli
from featurestore.online.serving._proto import featurestore_pb2 as pb
from featurestore.online.serving._proto import featurestore_pb2_grpc as pb_grpc
from featurestore.online.serving.grpc_server import column_values, to_value
from tests.serving.conftest import DEFS, ServerThread, expected_user, make_repo

register_commands(cli)

ODFV = """
from featurestore import OnDemandFeatureView, RequestSource, on_demand_feature

txn = RequestSource("txn", schema=[Field("amount", Float64)])


@on_demand_feature(inputs=["amount", "user_stats:amount_mean"],
                   output=Field("amount_ratio", Float64), sources=[txn])
def amount_ratio(amount: float, mean: float) -> float:
    return amount / (mean + 1.0)


ratios = OnDemandFeatureView(name="ratios", sources=[txn, user_stats], features=[amount_ratio])
"""
SVC2 = (
    '\nsvc2 = FeatureService(name="svc2", features=["user_stats:tx_count", '
    '"user_stats:amount_mean", "merchant_stats:risk"])\n'
)
PLAIN = "FEATURE_NAMES = ['tx_count', 'amount_mean', 'risk']\ndef predict(x):\n    return x[:, 0]\n"


def _m_on_svc2(tmp_path: Path) -> Path:
    """A repo with feature service svc2 and model 'm' (PLAIN) registered on it, production."""
    from featurestore.store import FeatureStore
    from tests._models import publish

    repo = make_repo(tmp_path / "repo", defs=DEFS + SVC2)
    (tmp_path / "plain.py").write_text(PLAIN)
    with FeatureStore(repo) as store:
        publish(store, "m", flavor="python", artifact=tmp_path / "plain.py", service="svc2")
    return repo


def _run(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``featurestore -r REPO ARGS...`` in a subprocess (stderr apart), output captured."""
    cmd = [sys.executable, "-m", "featurestore.cli", "-r", str(repo), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


SHAPE = (  # right on registration's zero rows, one score too many on real ones
    "import numpy as np\n"
    "def predict(x):\n"
    "    return np.zeros(len(x) if (x == 0).all() else len(x) + 1)\n"
)


def _col(values: list) -> pb.ValueList:
    return pb.ValueList(values=[to_value(v) for v in values])


def _cli(repo: Path, *args: str) -> Any:
    return CliRunner().invoke(cli, ["-r", str(repo), *args], catch_exceptions=False)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """make_repo + on-demand features; fraud v3 (python, cannot explain) as a 90% canary;
    badshape (one score too many)."""
    from featurestore.online.models.repo import model_registry
    from featurestore.store import FeatureStore
    from tests._models import publish

    root = tmp_path_factory.mktemp("model_edges")
    repo = make_repo(root / "repo", defs=DEFS + ODFV)
    (root / "plain.py").write_text(PLAIN)
    (root / "shape.py").write_text(SHAPE)
    with FeatureStore(repo) as store:
        v = publish(store, "fraud", flavor="python", artifact=root / "plain.py", service="scoring",
                    alias=None)  # fmt: skip
        model_registry(store).set_alias("fraud", v, "canary", share=0.9)
        publish(store, "badshape", flavor="python", artifact=root / "shape.py", service="scoring")
    return repo


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[ServerThread]:

    s = ServerThread.of_repo(repo)
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def stub(server: ServerThread) -> Iterator[Any]:
    with grpc.insecure_channel(server.grpc_target) as ch:
        yield pb_grpc.FeatureServingStub(ch)


# ---- on-demand features alone ---------------------------------------------------------------
@pytest.mark.parametrize("users", [[4], [4, 5, 9]])
def test_only_on_demand_features_read_the_keys_their_inputs_need(
    server: ServerThread, stub: Any, users: list[int]
) -> None:
    amounts = [70.0 + i for i in range(len(users))]
    want = [
        a / (expected_user(u)["amount_mean"] + 1.0) for u, a in zip(users, amounts, strict=True)
    ]
    feats = ["ratios:amount_ratio"]
    body = {"features": feats, "entities": {"user_id": users}, "request_data": {"amount": amounts}}
    r = httpx.post(f"{server.url}/get-online-features", json=body, timeout=10)
    assert r.status_code == 200, r.text
    got = dict(zip(r.json()["feature_names"], r.json()["results"], strict=True))
    assert got["amount_ratio"]["values"] == pytest.approx(want)
    resp = stub.GetOnlineFeatures(
        pb.GetOnlineFeaturesRequest(
            features=feats,
            entities={"user_id": _col(users)},
            request_data={"amount": _col(amounts)},
        )
    )
    cols = {c.name: column_values(c) for c in resp.columns}
    assert cols["amount_ratio"] == pytest.approx(want)
    res = server.app.state.engine.get_features(
        features=feats, entities={"user_id": users}, request_data={"amount": amounts}
    )
    assert res.columns["amount_ratio"] == pytest.approx(want)
    # the input's key still has to be given: a 400 naming it
    r = httpx.post(
        f"{server.url}/get-online-features",
        json={**body, "entities": {"merchant_id": [1] * len(users)}},
        timeout=10,
    )
    assert r.status_code == 400 and "user_id" in r.json()["error"]


# ---- a model giving the wrong number of scores ------------------------------------------------
@pytest.mark.parametrize("n", [1, 3])
def test_a_model_returning_the_wrong_number_of_scores_is_a_model_failure(
    server: ServerThread, stub: Any, n: int
) -> None:
    from featurestore.online.models.errors import ModelPredictError

    ents = {"user_id": list(range(1, n + 1)), "merchant_id": list(range(1, n + 1))}
    r = httpx.post(
        f"{server.url}/predict", json={"model": "badshape", "entities": ents}, timeout=10
    )
    assert r.status_code == 500, r.text
    assert r.json()["error"] == (
        f"model 'badshape' v1 returned {n + 1} score(s) for {n} row(s); a model must return "
        "one score per row"
    )
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(
            pb.PredictRequest(model="badshape", entities={k: _col(v) for k, v in ents.items()})
        )
    assert err.value.code() == grpc.StatusCode.INTERNAL and "badshape" in err.value.details()
    with pytest.raises(ModelPredictError, match="'badshape' v1 returned"):
        server.app.state.engine.predict("badshape", entities=ents)


# ---- explain with a canary that cannot --------------------------------------------------------
def test_explain_requests_go_to_production_when_the_canary_cannot_explain(
    server: ServerThread,
) -> None:
    ents = {"user_id": [1, 2], "merchant_id": [1, 2]}
    with httpx.Client(base_url=server.url, timeout=10) as c:
        seen: set[int] = set()
        for _ in range(300):  # until both answered (all 300 to a 90% canary: p ~ 2e-14)
            seen.add(
                c.post("/predict", json={"model": "fraud", "entities": ents}).json()["version"]
            )
            if seen == {1, 3}:
                break
        assert seen == {1, 3}  # the 90% canary takes traffic, production the rest
        for _ in range(30):
            r = c.post("/predict", json={"model": "fraud", "entities": ents, "explain": True})
            assert r.status_code == 200, r.text
            assert r.json()["version"] == 1 and r.json()["explanation"] is not None
        # asked by name, the canary still says it cannot
        r = c.post("/predict", json={"model": "fraud@canary", "entities": ents, "explain": True})
        assert r.status_code == 400 and "cannot explain" in r.json()["error"]
        listed = {m["name"]: m for m in c.get("/models").json()["models"]}
    assert listed["fraud"]["loaded"]["explainable"] is True


# ---- references with an empty side of '@' -----------------------------------------------------
@pytest.mark.parametrize(("ref", "what"), [("fraud@", "nothing after"), ("@1", "no name before")])
def test_a_reference_with_an_empty_side_of_at_is_refused(
    server: ServerThread, stub: Any, ref: str, what: str
) -> None:
    from featurestore.online.models.errors import ModelNotFoundError
    from featurestore.online.serving.errors import BadRequestError

    ents = {"user_id": [1], "merchant_id": [1]}
    r = httpx.post(f"{server.url}/predict", json={"model": ref, "entities": ents}, timeout=10)
    assert r.status_code == 400, r.text
    assert r.json()["error"].startswith(f"model {ref!r} has {what} its '@'")
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(pb.PredictRequest(model=ref, entities={k: _col(v) for k, v in ents.items()}))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(BadRequestError) as bad:
        server.app.state.engine.predict(ref, entities=ents)
    assert bad.value.field == "model"
    with pytest.raises(ModelNotFoundError, match="bad model reference"):
        server.app.state.engine.models.registry.resolve(ref)


# ---- a removed feature service ------------------------------------------------------------------
def test_a_removed_feature_service_is_a_503_naming_the_model_and_not_ready(
    tmp_path: Path, serve: Any
) -> None:
    from featurestore.online.models.repo import models_reading_missing_services
    from featurestore.store import FeatureStore

    repo = _m_on_svc2(tmp_path)
    s = serve(repo)
    with httpx.Client(base_url=s.url, timeout=10) as c:
        one = {"model": "m", "entities": {"user_id": [3], "merchant_id": [1]}}
        assert c.post("/predict", json=one).json()["scores"] == [30.0]
        assert c.get("/health/ready").status_code == 200
        (repo / "definitions.py").write_text(DEFS)
        with FeatureStore(repo) as store:
            store.apply()
            # what plan/apply can show: the models the new definitions leave without a service
            assert models_reading_missing_services(store, set(store.registry.feature_services)) == [
                "model 'm@production' (v1) reads feature service 'svc2', which is no longer "
                "defined: it cannot be served until the service is restored or the model is "
                "registered on another"
            ]
        for body in (one, {"model": "m", "entities": {"user_id": [3, 4], "merchant_id": [1, 2]}}):
            r = c.post("/predict", json=body)
            assert r.status_code == 503, r.text
            assert r.json()["error"] == (
                "model 'm' v1 reads feature service 'svc2', which the registry no longer has; "
                "restore the service or re-register the model"
            )
        assert c.post("/predict", json={**one, "model": "fraud"}).status_code == 200
        ready = c.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json()["models_without_service"] == [r.json()["error"]]


# ---- a corrupt model index ----------------------------------------------------------------------
def test_a_corrupt_model_index_leaves_the_other_models_listed(
    fresh_repo: Path, serve: Any, tmp_path: Path
) -> None:
    from featurestore.store import FeatureStore
    from tests._models import publish

    (tmp_path / "plain.py").write_text(PLAIN)
    with FeatureStore(fresh_repo) as store:
        publish(store, "other", flavor="python", artifact=tmp_path / "plain.py", service="scoring")
    s = serve(fresh_repo)
    index = next((fresh_repo / "data").rglob("other/index.json"))
    index.write_text("{not json")
    r = httpx.get(f"{s.url}/models", timeout=10)
    assert r.status_code == 200, r.text
    listed = {m["name"]: m for m in r.json()["models"]}
    assert (
        listed["fraud"]["aliases"]["production"]["version"] == 1 and "error" not in listed["fraud"]
    )
    assert "is corrupt" in listed["other"]["error"] and listed["other"]["versions"] == []
    with grpc.insecure_channel(s.grpc_target) as ch:
        resp, call = pb_grpc.FeatureServingStub(ch).ListModels.with_call(pb.ListModelsRequest())
    assert {m.name for m in resp.models} == {"fraud", "other"}
    errors = [v for k, v in call.trailing_metadata() if k == "x-model-error"]
    assert (
        len(errors) == 1 and errors[0].startswith("other: model index") and "corrupt" in errors[0]
    )
    out = _cli(fresh_repo, "models", "list").output
    assert "fraud: production=v1" in out and "other: error: model index" in out


# ---- the models CLI -------------------------------------------------------------------------------
def test_models_unset_removes_a_canary_or_shadow_and_refuses_production(fresh_repo: Path) -> None:
    from featurestore.online.models.repo import model_registry
    from featurestore.store import FeatureStore

    assert _cli(fresh_repo, "models", "promote", "fraud", "2", "--alias", "canary", "--share",
                "0.2").exit_code == 0  # fmt: skip
    assert _cli(fresh_repo, "models", "promote", "fraud", "2", "--alias", "shadow").exit_code == 0
    r = _cli(fresh_repo, "models", "unset", "fraud", "--alias", "canary")
    assert r.exit_code == 0 and r.output.strip() == "fraud@canary removed (was v2)"
    r = _cli(fresh_repo, "models", "unset", "fraud", "--alias", "canary")
    assert r.exit_code == 0 and "fraud has no canary alias" in r.output
    r = _cli(fresh_repo, "models", "unset", "fraud", "--alias", "production")
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1
    assert r.output.startswith("error: model 'fraud': the production alias cannot be removed")
    r = _cli(fresh_repo, "models", "unset", "ghost", "--alias", "shadow")
    assert r.exit_code == 1 and "no model 'ghost'" in r.output
    with FeatureStore(fresh_repo) as store:
        reg = model_registry(store)
        assert set(reg.get("fraud").aliases) == {"production", "shadow"}
        assert not (reg.root / "ghost").exists()
    assert _cli(fresh_repo, "models", "unset", "fraud", "--alias", "shadow").exit_code == 0
    assert "fraud: production=v1\n" in _cli(fresh_repo, "models", "list").output


def test_models_cli_errors_are_one_line(fresh_repo: Path, tmp_path: Path) -> None:
    r = _cli(fresh_repo, "models", "register", "bad", "--flavor", "python", "--path",
             "no_such_module_xyz", "--features", "scoring")  # fmt: skip
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert r.output.strip() == (
        "error: cannot import python model module 'no_such_module_xyz': ModuleNotFoundError: "
        "No module named 'no_such_module_xyz'; give a .py file, or a module name importable "
        "where the server runs"
    )
    (tmp_path / "broken.py").write_text("import no_such_module_xyz\n")
    r = _cli(fresh_repo, "models", "register", "bad", "--flavor", "python", "--path",
             str(tmp_path / "broken.py"), "--features", "scoring")  # fmt: skip
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1
    assert "error: cannot import python model file" in r.output
    r = _cli(fresh_repo, "models", "promote", "fraud", "2", "--alias", "canary")
    assert r.exit_code == 1 and "pass --share" in r.output and "None" not in r.output


# ---- warm-up of a service keyed by strings -------------------------------------------------------
STRING_DEFS = """
from featurestore import Entity, FeatureService, FeatureView, Field, Float64, ParquetSource

item = Entity("item", join_keys=["item_id"])
items = FeatureView(name="items", entities=[item], source=ParquetSource("data/items.parquet"),
                    schema=[Field("price", Float64, default=0.0)])
by_item = FeatureService(name="by_item", features=["items:price"])
"""


def test_warm_up_uses_a_key_of_the_right_kind(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from featurestore.online.serving.engine import Engine
    from featurestore.store import FeatureStore

    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    (repo / "featurestore.yaml").write_text(
        "project: strkeys\nonline_store:\n  type: embedded\n  path: data/online\n  map_size: 64MB\n"
    )
    (repo / "definitions.py").write_text(STRING_DEFS)
    now = datetime.now(timezone.utc) - timedelta(hours=1)
    pq.write_table(
        pa.table(
            {
                "item_id": pa.array(["a", "b"], pa.string()),
                "event_timestamp": pa.array([now, now], pa.timestamp("us", tz="UTC")),
                "price": pa.array([1.5, 2.5], pa.float64()),
            }
        ),
        repo / "data" / "items.parquet",
    )
    with FeatureStore(repo) as store:
        store.apply()
        store.materialize(now - timedelta(days=1), now + timedelta(minutes=30))
        assert store.registry.join_key_kinds == {"item_id": "str"}
        engine = Engine(store)
        try:
            with caplog.at_level(logging.WARNING, logger="featurestore.serving"):
                engine.start(poll=False)
            assert [r.getMessage() for r in caplog.records if "warm-up" in r.getMessage()] == []
            assert engine._warm_request("by_item")["entities"] == {"item_id": [""]}
            got = engine.get_features(feature_service="by_item", entities={"item_id": ["b"]})
            assert got.columns["price"] == [2.5]
        finally:
            engine.close()


def test_plan_and_apply_warn_about_a_model_whose_service_they_remove(tmp_path: Path) -> None:
    repo = _m_on_svc2(tmp_path)
    warning = (
        "warning: model 'm@production' (v1) reads feature service 'svc2', which is no longer "
        "defined: it cannot be served until the service is restored or the model is "
        "registered on another"
    )
    assert warning not in _run(repo, "plan").stderr  # nothing removed yet
    (repo / "definitions.py").write_text(DEFS)
    for command in ("plan", "apply"):
        out = _run(repo, command)
        assert out.returncode == 0, out.stderr
        assert out.stderr.strip().splitlines() == [warning], (command, out.stderr)
    assert _run(repo, "apply").stderr.strip() == ""  # once applied, later applies remove nothing


# ---- a feature service losing a feature a model reads ---------------------------------------
LOST = (
    "model 'm' v1 reads feature 'risk', which its feature service 'svc2' no longer serves: it "
    "cannot be served until the service has it again or the model is registered again on the "
    "service's features"
)


def test_a_service_losing_a_model_feature_warns_and_turns_ready_false(
    tmp_path: Path, serve: Any
) -> None:
    """Plan and apply warn, health is not ready and names it, predict is a 503."""
    repo = _m_on_svc2(tmp_path)
    assert _run(repo, "plan").stderr.strip() == ""
    s = serve(repo)
    with httpx.Client(base_url=s.url, timeout=10) as c:
        assert c.get("/health/ready").status_code == 200
        (repo / "definitions.py").write_text(DEFS + SVC2.replace(', "merchant_stats:risk"', ""))
        warning = "warning: " + LOST.replace("model 'm' v1", "model 'm@production' (v1)")
        for command in ("plan", "apply"):
            out = _run(repo, command)
            assert out.returncode == 0, out.stderr
            assert out.stderr.strip().splitlines() == [warning], (command, out.stderr)
        ready = c.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json()["models_without_service"] == [LOST]
        one = {"model": "m", "entities": {"user_id": [3], "merchant_id": [1]}}
        assert c.post("/predict", json=one).status_code == 503
        assert c.post("/predict", json={**one, "model": "fraud"}).status_code == 200
