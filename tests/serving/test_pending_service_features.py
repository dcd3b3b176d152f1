"""A feature service losing a feature a model reads:
plan and apply warn, health is not ready and names it, predict is a 503."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from tests.serving.conftest import DEFS, make_repo

PLAIN = "FEATURE_NAMES = ['tx_count', 'amount_mean', 'risk']\ndef predict(x):\n    return x[:, 0]\n"
SVC2 = (
    '\nsvc2 = FeatureService(name="svc2", features=["user_stats:tx_count", '
    '"user_stats:amount_mean", "merchant_stats:risk"])\n'
)
LOST = (
    "model 'm' v1 reads feature 'risk', which its feature service 'svc2' no longer serves: it "
    "cannot be served until the service has it again or the model is registered again on the "
    "service's features"
)


def test_a_service_losing_a_model_feature_warns_and_turns_ready_false(
    tmp_path: Path, serve: Any
) -> None:
    from featurestore.store import FeatureStore
    from tests._models import publish

    repo = make_repo(tmp_path / "repo", defs=DEFS + SVC2)
    (tmp_path / "plain.py").write_text(PLAIN)
    with FeatureStore(repo) as store:
        publish(store, "m", flavor="python", artifact=tmp_path / "plain.py", service="svc2")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "featurestore.cli", "-r", str(repo), *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)

    assert cli("plan").stderr.strip() == ""
    s = serve(repo)
    with httpx.Client(base_url=s.url, timeout=10) as c:
        assert c.get("/health/ready").status_code == 200
        (repo / "definitions.py").write_text(DEFS + SVC2.replace(', "merchant_stats:risk"', ""))
        warning = "warning: " + LOST.replace("model 'm' v1", "model 'm@production' (v1)")
        for command in ("plan", "apply"):
            out = cli(command)
            assert out.returncode == 0, out.stderr
            assert out.stderr.strip().splitlines() == [warning], (command, out.stderr)
        ready = c.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json()["models_without_service"] == [LOST]
        one = {"model": "m", "entities": {"user_id": [3], "merchant_id": [1]}}
        assert c.post("/predict", json=one).status_code == 503
        assert c.post("/predict", json={**one, "model": "fraud"}).status_code == 200
