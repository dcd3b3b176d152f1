"""Pointing an alias at a version checks that its stored artifact still loads; a server that
cannot load a model's version answers it with a 503 naming the version, not a 404.

The repo is ``make_repo``'s (LightGBM 'fraud' v1 in production, v2 unaliased); the damaged
artifacts are real files (deleted, truncated, replaced by a python file that does not parse).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from featurestore._cli_serve import register_commands
from featurestore.cli import cli
from featurestore.online.models.errors import ModelRegistryError

register_commands(cli)


def _cli(repo: Path, *args: str) -> Any:
    return CliRunner().invoke(cli, ["-r", str(repo), *args], catch_exceptions=False)


def _artifact(repo: Path, version: int) -> Path:
    from featurestore.online.models.repo import model_registry
    from featurestore.store import FeatureStore

    with FeatureStore(repo) as store:
        reg = model_registry(store)
        return Path(reg.artifact_path(reg.get("fraud").version(version)))


def _damage(path: Path, how: str) -> str:
    """Break the stored artifact ``path`` the way ``how`` says; what the refusal must say."""
    if how == "deleted":
        path.unlink()
        return "is missing from the model registry"
    if how == "truncated":
        path.write_text(path.read_text()[:200])
        return "no longer loads: Wrong size of feature_infos"
    path.write_bytes(b"\x00\x01 not a model \xff" * 50)  # garbage
    return "no longer loads: Unknown model format or submodel type in model file v2/model2.txt"


def _aliases(repo: Path) -> dict[str, Any]:
    index = repo / "data" / "models" / "fraud" / "index.json"
    return json.loads(index.read_text())["aliases"]


@pytest.mark.parametrize("how", ["deleted", "truncated", "garbage"])
def test_promote_refuses_a_version_whose_artifact_no_longer_loads(
    fresh_repo: Path, how: str
) -> None:
    why = _damage(_artifact(fresh_repo, 2), how)
    before = _aliases(fresh_repo)
    r = _cli(fresh_repo, "models", "promote", "fraud", "2")
    assert r.exit_code == 1, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.output, r.output
    assert lines[0].startswith(
        "error: model 'fraud' v2 cannot become production: its artifact v2/model2.txt "
    ), lines[0]
    assert why in lines[0], lines[0]
    assert _aliases(fresh_repo) == before  # production still v1, nothing else set


@pytest.mark.parametrize(("alias", "share"), [("shadow", None), ("canary", 0.2)])
def test_every_alias_is_checked_by_the_python_api(
    fresh_repo: Path, alias: str, share: float | None
) -> None:
    from featurestore.online.models.repo import model_registry, promote_model
    from featurestore.store import FeatureStore

    _damage(_artifact(fresh_repo, 2), "deleted")
    before = _aliases(fresh_repo)
    with FeatureStore(fresh_repo) as store:
        with pytest.raises(ModelRegistryError, match=f"model 'fraud' v2 cannot become {alias}"):
            promote_model(store, "fraud", 2, alias, share=share)
        with pytest.raises(ModelRegistryError, match="is missing from the model registry"):
            model_registry(store).set_alias("fraud", 2, alias, share=share)
        # the version that loads is still accepted
        assert promote_model(store, "fraud", 1, alias, share=share) == []
    assert _aliases(fresh_repo) == {
        **before,
        alias: {"version": 1, **({"share": share} if share else {})},
    }


def test_a_python_artifact_that_no_longer_parses_is_refused(
    fresh_repo: Path, tmp_path: Path
) -> None:
    from featurestore.online.models.repo import register_model
    from featurestore.store import FeatureStore

    model = tmp_path / "m.py"
    model.write_text(
        "import numpy as np\nFEATURE_NAMES = ['tx_count', 'amount_mean', 'risk']\n"
        "def predict(X):\n    return np.nan_to_num(X[:, 0])\n"
    )
    with FeatureStore(fresh_repo) as store:
        mv = register_model(store, "py", flavor="python", artifact=model, service="scoring",
                            alias="production")  # fmt: skip
        mv2 = register_model(store, "py", flavor="python", artifact=model, service="scoring")
    stored = fresh_repo / "data" / "models" / "py" / mv2.artifact
    stored.write_text("def predict(X) oops\n")
    r = _cli(fresh_repo, "models", "promote", "py", "2")
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1, r.output
    assert r.output.startswith(
        "error: model 'py' v2 cannot become production: its artifact v2/m.py no longer loads: "
        "cannot import python model file v2/m.py: SyntaxError"
    ), r.output
    assert str(fresh_repo) not in r.output
    assert _aliases_of(fresh_repo, "py") == {"production": {"version": mv.version}}


def test_a_version_that_returns_no_scores_any_more_is_refused(fresh_repo: Path) -> None:
    """A file that still loads but fails register's trial prediction (another model put in its
    place: two classes' worth of outputs) is refused too."""
    import lightgbm as lgb
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.random((300, 3))
    y = np.minimum((x[:, 0] * 3).astype(int), 2)
    names = ["tx_count", "amount_mean", "risk"]
    booster = lgb.train(
        {"objective": "multiclass", "num_class": 3, "verbose": -1, "num_threads": 1},
        lgb.Dataset(x, y, feature_name=names),
        3,
    )
    booster.save_model(str(_artifact(fresh_repo, 2)))
    r = _cli(fresh_repo, "models", "promote", "fraud", "2", "--alias", "shadow")
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1, r.output
    assert r.output.startswith(
        "error: model 'fraud' v2 cannot become shadow: its artifact v2/model2.txt fails "
        "register's checks: model 'fraud' is a 3-class lightgbm classifier"
    ), r.output
    assert "shadow" not in _aliases(fresh_repo)


def _aliases_of(repo: Path, name: str) -> dict[str, Any]:
    return json.loads((repo / "data" / "models" / name / "index.json").read_text())["aliases"]


# ---- a server that cannot load a model's version ------------------------------------------------


def test_a_production_version_that_fails_to_load_is_a_503_naming_it(
    fresh_repo: Path, serve: Any
) -> None:
    """The artifact is damaged after its promotion (the only way left to get there): a server
    started on it is not ready, and predict says which version failed to load, without paths."""
    import grpc

    from featurestore.online.serving._proto import featurestore_pb2 as pb
    from featurestore.online.serving._proto import featurestore_pb2_grpc as pb_grpc
    from featurestore.online.serving.grpc_server import to_value

    _artifact(fresh_repo, 1).write_text("tree\nversion=v4\nnot a model\n")
    s = serve(fresh_repo)
    body = {"model": "fraud", "entities": {"user_id": [1], "merchant_id": [1]}}
    with httpx.Client(base_url=s.url, timeout=10) as c:
        r = c.post("/predict", json=body)
        assert r.status_code == 503, r.text
        error = r.json()["error"]
        assert error.startswith(
            "model 'fraud' v1 (production) failed to load on this server, so 'fraud' cannot "
            "be served: cannot load lightgbm model fraud v1: "
        ), error
        assert "not loaded yet" not in error and str(fresh_repo) not in error
        ready = c.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json()["models_not_loaded"] == ["fraud"]
        assert "cannot load lightgbm model fraud v1" in ready.json()["model_error"]
        assert c.post("/predict", json={**body, "model": "ghost"}).status_code == 404
    with grpc.insecure_channel(s.grpc_target) as ch:
        stub = pb_grpc.FeatureServingStub(ch)
        cols = {
            k: pb.ValueList(values=[to_value(v) for v in vs]) for k, vs in body["entities"].items()
        }
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(pb.PredictRequest(model="fraud", entities=cols), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert info.value.details() == error


def test_a_model_that_loads_again_is_served_once_promoted(fresh_repo: Path, serve: Any) -> None:
    """After a load failure, promoting a version that loads clears the 503 and the error."""
    import time

    _artifact(fresh_repo, 1).unlink()
    s = serve(fresh_repo)
    body = {"model": "fraud", "entities": {"user_id": [1], "merchant_id": [1]}}
    with httpx.Client(base_url=s.url, timeout=10) as c:
        assert c.post("/predict", json=body).status_code == 503
        assert _cli(fresh_repo, "models", "promote", "fraud", "2").exit_code == 0
        for _ in range(400):  # the server re-reads the registry every 0.05 s
            r = c.post("/predict", json=body)
            if r.status_code == 200:
                break
            time.sleep(0.025)
        assert r.status_code == 200 and r.json()["version"] == 2, r.text
        health = c.get("/health/ready").json()
        assert health["ready"] is True and health["model_error"] is None, health


# ---- load errors on one line ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("not a model\n" * 200, "Invalid model format in: `m.json`"),
        ('{"learner": ' + "x" * 5000 + "}\n", "Unknown construct"),
    ],
    ids=["text", "json"],
)
def test_an_xgboost_file_that_does_not_load_is_named_on_one_line(
    tmp_path: Path, body: str, reason: str
) -> None:
    """XGBoost's error carries its native stack trace (and a log prefix): left out, so the
    refusal is one line with the library's reason."""
    from featurestore.online.models import ModelLoadError, load_predictor

    art = tmp_path / "m.json"
    art.write_text(body)
    with pytest.raises(ModelLoadError) as info:
        load_predictor("xgboost", art)
    msg = str(info.value)
    assert "\n" not in msg and "Stack trace" not in msg and "[bt]" not in msg, msg
    assert msg.startswith(f"cannot load xgboost model from {art}: "), msg
    assert reason in msg.replace(str(tmp_path) + "/", ""), msg
    assert len(msg) <= len(f"cannot load xgboost model from {art}: ") + 300
    with pytest.raises(ModelLoadError) as served:  # as a server words it: no folder
        load_predictor("xgboost", art, model="m v1")
    msg = str(served.value)
    assert msg.startswith("cannot load xgboost model m v1: ") and "\n" not in msg, msg
    assert str(tmp_path) not in msg and "Stack trace" not in msg and reason in msg, msg
    assert ".cc:" not in msg, msg  # XGBoost's "[12:34:56] /src/...cc:123: " prefix is gone
