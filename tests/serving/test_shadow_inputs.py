"""A shadow version scores its own inputs in its own order, taken by name from the rows the
request's model was given; one it cannot score is counted, logged once and never changes the
answer (or the audit's shadow version), and ``promote --alias shadow`` refuses a shadow reading
features its production does not."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from click.testing import CliRunner

from featurestore._cli_serve import register_commands
from featurestore.cli import cli
from tests.serving.conftest import DEFS, ServerThread, expected_user, make_repo

register_commands(cli)

PAIR_SERVICE = '\npair = FeatureService(name="pair", features=["user_stats:tx_count", "merchant_stats:risk"])\n'
AUDIT = "serving:\n  audit:\n    path: data/audit\n"
# production: the service's order, scores tx_count
PROD = "FEATURE_NAMES = ['tx_count', 'amount_mean', 'risk']\ndef predict(x):\n    return x[:, 0]\n"
# the same features reversed: a score no other column order gives
REV = (
    "FEATURE_NAMES = ['risk', 'amount_mean', 'tx_count']\n"
    "def predict(x):\n"
    "    return x[:, 0] * 1000 + x[:, 1] + x[:, 2] / 1000\n"
)
# two of production's three features (service 'pair'): refuses any other width
PAIR = (
    "FEATURE_NAMES = ['tx_count', 'risk']\n"
    "def predict(x):\n"
    "    if x.shape[1] != 2:\n"
    "        raise ValueError(f'got {x.shape[1]} columns')\n"
    "    return x[:, 1] * 1000 + x[:, 0]\n"
)
# fine on the zero rows of registration and warm-up, broken on real rows
BOOM = (
    "import numpy as np\n"
    "def predict(x):\n"
    "    if (x == 0).all():\n"
    "        return np.zeros(len(x))\n"
    "    raise ValueError('boom')\n"
)
SHAPE = (
    "import numpy as np\n"
    "def predict(x):\n"
    "    return np.zeros(len(x) if (x == 0).all() else len(x) + 1)\n"
)


def _register(store: Any, name: str, code_file: Path, service: str, alias: str | None) -> int:
    from tests._models import publish

    return publish(store, name, flavor="python", artifact=code_file, service=service, alias=alias)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Models with shadows: rev (reversed order), pair (fewer features), wide (a feature its
    production lacks, set past the promote check), boom (raises), shape (one score too many),
    warned and narrow (for the CLI)."""
    from featurestore.online.models.repo import model_registry
    from featurestore.store import FeatureStore

    root = tmp_path_factory.mktemp("shadow_inputs")
    repo = make_repo(root / "repo", defs=DEFS + PAIR_SERVICE, serving=AUDIT)
    files = {}
    for name, code in (
        ("prod", PROD),
        ("rev", REV),
        ("pair", PAIR),
        ("boom", BOOM),
        ("shape", SHAPE),
    ):
        files[name] = root / f"{name}.py"
        files[name].write_text(code)
    with FeatureStore(repo) as store:
        for model, shadow, service in (
            ("rev", "rev", "scoring"),
            ("pair", "pair", "pair"),
            ("boom", "boom", "scoring"),
            ("shape", "shape", "scoring"),
            ("warned", "rev", "scoring"),
        ):
            _register(store, model, files["prod"], "scoring", "production")
            _register(store, model, files[shadow], service, "shadow")
        _register(store, "warned", files["pair"], "pair", None)  # v3
        for model in ("wide", "narrow"):
            _register(store, model, files["pair"], "pair", "production")
            _register(store, model, files["rev"], "scoring", None)
        model_registry(store).set_alias("wide", 2, "shadow")  # what promote now refuses
    return repo


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[ServerThread]:

    s = ServerThread.of_repo(repo)
    s.start()
    yield s
    s.stop()


def _predict(s: ServerThread, model: str, users: list[int], merchants: list[int]) -> dict:
    body = {"model": model, "entities": {"user_id": users, "merchant_id": merchants}}
    r = httpx.post(f"{s.url}/predict", json=body, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def _last_shadow(s: ServerThread, model: str) -> dict[str, Any]:
    shadow = s.app.state.engine.models.shadow
    shadow.flush()
    return [r for r in shadow.records if r["model"] == model][-1]


def _audited(s: ServerThread, request_id: str) -> dict[str, Any]:
    log = s.app.state.engine.audit
    assert log.flush()
    recs = [orjson.loads(line) for p in log.files for line in p.read_bytes().splitlines()]
    return next(r for r in recs if r.get("request_id") == request_id)


def _metric(s: ServerThread, name: str, **labels: str) -> float:
    text = httpx.get(f"{s.url}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.parametrize(
    ("users", "merchants"),
    [([3], [2]), ([1, 2, 3, 4], [4, 3, 2, 999])],
    ids=["one-entity", "batch"],
)
@pytest.mark.parametrize("model", ["rev", "pair"])
def test_a_shadow_scores_its_own_inputs_in_its_own_order(
    server: ServerThread, model: str, users: list[int], merchants: list[int]
) -> None:
    answer = _predict(server, model, users, merchants)
    assert answer["version"] == 1
    assert answer["scores"] == [float(expected_user(u)["tx_count"]) for u in users]
    rec = _last_shadow(server, model)
    assert "error" not in rec, rec
    direct = _predict(server, f"{model}@2", users, merchants)["scores"]
    assert rec["scores"] == direct
    assert rec["primary_scores"] == answer["scores"]
    assert _audited(server, answer["request_id"])["shadow_version"] == 2


@pytest.mark.parametrize(
    ("model", "reason", "audited_shadow"),
    [("wide", "inputs", None), ("boom", "error", 2), ("shape", "shape", 2)],
)
def test_a_shadow_that_cannot_score_is_counted_logged_once_and_leaves_the_answer(
    server: ServerThread,
    caplog: pytest.LogCaptureFixture,
    model: str,
    reason: str,
    audited_shadow: int | None,
) -> None:
    before = _metric(server, "featurestore_shadow_errors_total", model=model, reason=reason)
    scored_before = _metric(server, "featurestore_shadow_predictions_total", model=model)
    want = {
        "wide": lambda u, m: m / 10 * 1000 + expected_user(u)["tx_count"],
        "boom": lambda u, m: float(expected_user(u)["tx_count"]),
        "shape": lambda u, m: float(expected_user(u)["tx_count"]),
    }[model]
    with caplog.at_level(logging.WARNING, logger="featurestore.models"):
        for users, merchants in (([3], [2]), ([1, 2], [5, 6]), ([4, 5, 6], [1, 2, 3])):
            answer = _predict(server, model, users, merchants)
            assert answer["version"] == 1
            assert answer["scores"] == pytest.approx(
                [want(u, m) for u, m in zip(users, merchants, strict=True)]
            )
            assert _audited(server, answer["request_id"])["shadow_version"] == audited_shadow
        rec = _last_shadow(server, model)
    assert rec["reason"] == reason and "scores" not in rec
    after = _metric(server, "featurestore_shadow_errors_total", model=model, reason=reason)
    assert after - before == 3
    assert _metric(server, "featurestore_shadow_predictions_total", model=model) == scored_before
    said = [
        r for r in caplog.records if "shadow model" in r.getMessage() and model in r.getMessage()
    ]
    assert len(said) == 1, [r.getMessage() for r in said]


def _cli(repo: Path, *args: str) -> Any:
    return CliRunner().invoke(cli, ["-r", str(repo), *args], catch_exceptions=False)


def test_promote_refuses_a_shadow_reading_features_its_production_does_not(
    server: ServerThread, repo: Path
) -> None:
    from featurestore.online.models.repo import model_registry
    from featurestore.store import FeatureStore

    r = _cli(repo, "models", "promote", "narrow", "2", "--alias", "shadow")
    assert r.exit_code == 1
    assert r.output.startswith("error: model 'narrow' v2 reads ['amount_mean']"), r.output
    assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output
    with FeatureStore(repo) as store:
        assert "shadow" not in model_registry(store).get("narrow").aliases
    # the other way round: a new production lacking the shadow's inputs is allowed, with a warning
    r = _cli(repo, "models", "promote", "warned", "3")
    assert r.exit_code == 0, r.output
    assert "warned@production -> v3" in r.output
    assert "warning: model 'warned' v2 reads ['amount_mean']" in r.output


def test_input_columns_maps_by_name() -> None:
    from featurestore.online.models.registry import ModelVersion
    from featurestore.online.models.runtime import LoadedModel, input_columns

    def model(names: list[str]) -> LoadedModel:
        mv = ModelVersion("m", 1, "python", "x", "s", tuple(names), "now")
        return LoadedModel(mv, None)  # type: ignore[arg-type]

    prod = model(["a", "b", "c"])
    assert input_columns(model(["c", "a"]), prod) == [2, 0]
    assert input_columns(model(["a", "b", "c"]), prod) == [0, 1, 2]
    assert input_columns(model(["a", "d"]), prod) is None
    x = np.arange(6, dtype=np.float64).reshape(2, 3)
    assert x[:, input_columns(model(["c", "a"]), prod)].tolist() == [[2.0, 0.0], [5.0, 3.0]]
