"""Clients send the request data production needs: a canary or shadow whose feature service needs
request fields or join keys production's does not is refused (register --alias and promote
alike), whichever alias changes, in one line naming the model, the version, the alias and what
is missing.

Model 'm' has one version per service; every service serves the bare names tx_count,
amount_mean and risk (risk from an on-demand view in three of them), so only request data
tells them apart: v1 needs the join key merchant_id (its risk is merchant_stats'), v2 the
request field 'a', v3 'b', v4 both; all need user_id.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featurestore._cli_serve import register_commands
from featurestore.cli import cli
from featurestore.online.models.errors import ModelRegistryError
from featurestore.store import FeatureStore
from tests.serving.conftest import DEFS, make_repo

register_commands(cli)

ON_DEMAND = """
from featurestore import OnDemandFeatureView, RequestSource, on_demand_feature

ra = RequestSource("ra", schema=[Field("a", Float64)])
rb = RequestSource("rb", schema=[Field("b", Float64)])


@on_demand_feature(inputs=["a", "user_stats:amount_mean"], output=Field("risk", Float64),
                   sources=[ra])
def risk_a(a: float, mean: float) -> float:
    return a + mean


@on_demand_feature(inputs=["b", "user_stats:amount_mean"], output=Field("risk", Float64),
                   sources=[rb])
def risk_b(b: float, mean: float) -> float:
    return b - mean


@on_demand_feature(inputs=["a", "b", "user_stats:amount_mean"], output=Field("risk", Float64),
                   sources=[ra, rb])
def risk_ab(a: float, b: float, mean: float) -> float:
    return a * b + mean


oda = OnDemandFeatureView(name="oda", sources=[ra, user_stats], features=[risk_a])
odb = OnDemandFeatureView(name="odb", sources=[rb, user_stats], features=[risk_b])
odab = OnDemandFeatureView(name="odab", sources=[ra, rb, user_stats], features=[risk_ab])
_BASE = ["user_stats:tx_count", "user_stats:amount_mean"]
need_a = FeatureService(name="need_a", features=_BASE + ["oda:risk"])
need_b = FeatureService(name="need_b", features=_BASE + ["odb:risk"])
need_ab = FeatureService(name="need_ab", features=_BASE + ["odab:risk"])
"""
MODEL = "FEATURE_NAMES = ['tx_count', 'amount_mean', 'risk']\ndef predict(x):\n    return x[:, 0]\n"
SERVICES = {1: "scoring", 2: "need_a", 3: "need_b", 4: "need_ab"}
A, B, MERCHANT = "request field 'a'", "request field 'b'", "join key 'merchant_id'"
NEEDS = {1: {MERCHANT}, 2: {A}, 3: {B}, 4: {A, B}}
OTHERS = ("canary", "shadow")


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repo with model 'm' v1-v4 registered (no aliases) and the model file for more."""
    from featurestore.online.models.repo import register_model

    root = tmp_path_factory.mktemp("request_fields")
    repo = make_repo(root / "repo", defs=DEFS + ON_DEMAND)
    (root / "m.py").write_text(MODEL)
    with FeatureStore(repo) as store:
        for v, svc in SERVICES.items():
            mv = register_model(store, "m", flavor="python", artifact=root / "m.py", service=svc)
            assert mv.version == v
    return repo


@pytest.fixture(scope="module")
def store(repo: Path) -> Iterator[FeatureStore]:
    with FeatureStore(repo) as s:
        yield s


def _index(repo: Path) -> Path:
    return repo / "data" / "models" / "m" / "index.json"


def _set_aliases(repo: Path, aliases: dict[str, int]) -> None:
    """Write the aliases into the index as they are (a state past any check)."""
    doc = json.loads(_index(repo).read_text())
    doc["aliases"] = {
        a: {"version": v, **({"share": 0.25} if a == "canary" else {})} for a, v in aliases.items()
    }
    _index(repo).write_text(json.dumps(doc))


def _aliases(repo: Path) -> dict[str, int]:
    return {a: d["version"] for a, d in json.loads(_index(repo).read_text())["aliases"].items()}


def _cli(repo: Path, *args: str) -> Any:
    return CliRunner().invoke(cli, ["-r", str(repo), *args], catch_exceptions=False)


def _refusal(before: dict[str, int], alias: str, version: int) -> tuple[str, list[str]] | None:
    """The oracle: the alias whose request fields exceed production's after the change (only
    pairs the change makes), and the fields; None when the change is accepted."""
    after = {**before, alias: version}
    prod = after.get("production")
    if prod is None:
        return None
    for other in OTHERS if alias == "production" else (alias,):
        if other in after and NEEDS[after[other]] - NEEDS[prod]:
            return other, sorted(NEEDS[after[other]] - NEEDS[prod])
    return None


version = st.sampled_from(sorted(SERVICES))


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    before=st.fixed_dictionaries(
        {},
        optional={"production": version, "canary": version, "shadow": version},
    ),
    alias=st.sampled_from(("production", *OTHERS)),
    v=version,
)
def test_every_other_alias_needs_a_subset_of_productions_request_fields(
    repo: Path, store: FeatureStore, before: dict[str, int], alias: str, v: int
) -> None:
    from featurestore.online.models.repo import promote_model

    _set_aliases(repo, before)
    want = _refusal(before, alias, v)
    share = 0.1 if alias == "canary" else None
    if want is None:
        assert promote_model(store, "m", v, alias, share=share) == []
        assert _aliases(repo) == {**before, alias: v}
        return
    other, fields = want
    with pytest.raises(ModelRegistryError) as info:
        promote_model(store, "m", v, alias, share=share)
    msg = str(info.value)
    assert msg.startswith(f"model 'm' v{v} cannot become {alias}: ")
    assert f"needs {', '.join(fields)}, which" in msg
    assert "\n" not in msg
    if alias == "production":
        assert f"its {other} v{before[other]} (feature service '{SERVICES[before[other]]}')" in msg
        assert f"`featurestore models unset m --alias {other}`" in msg
    else:
        assert f"production v{before['production']}" in msg
    assert _aliases(repo) == before  # nothing moved


def test_cli_promote_refuses_a_canary_needing_more_request_data(repo: Path) -> None:
    _set_aliases(repo, {"production": 2})
    r = _cli(repo, "models", "promote", "m", "4", "--alias", "canary", "--share", "0.1")
    assert r.exit_code == 1
    assert r.output == (
        "error: model 'm' v4 cannot become canary: its feature service 'need_ab' needs request "
        "field 'b', which production v2 (feature service 'need_a') does not; clients send what "
        "production needs, so its share of requests would fail with a 400: promote a production "
        "version needing them first, or register the canary on a service needing only "
        "production's request data\n"
    )
    assert _aliases(repo) == {"production": 2}
    r = _cli(repo, "models", "promote", "m", "4")  # production first: then the canary fits
    assert r.exit_code == 0, r.output
    r = _cli(repo, "models", "promote", "m", "2", "--alias", "canary", "--share", "0.1")
    assert r.exit_code == 0, r.output
    assert _aliases(repo) == {"production": 4, "canary": 2}


def test_cli_promote_refuses_a_production_needing_less_than_its_shadow(repo: Path) -> None:
    _set_aliases(repo, {"production": 4, "shadow": 3})
    r = _cli(repo, "models", "promote", "m", "2")
    assert r.exit_code == 1
    assert r.output.startswith(
        "error: model 'm' v2 cannot become production: its shadow v3 (feature service 'need_b') "
        "needs request field 'b', which v2 (feature service 'need_a') does not; clients send "
        "what production needs, so the shadow, scored on the features fetched for production, "
        "would never get the ones computed from them: unset the shadow first (`featurestore "
        "models unset m --alias shadow`)"
    ), r.output
    assert len(r.output.splitlines()) == 1
    assert _aliases(repo) == {"production": 4, "shadow": 3}


def test_cli_register_with_alias_shadow_refuses_more_request_data(
    repo: Path, tmp_path: Path
) -> None:
    _set_aliases(repo, {"production": 1})
    code = tmp_path / "m.py"
    code.write_text(MODEL)
    r = _cli(
        repo, "models", "register", "m", "--flavor", "python", "--path", str(code),
        "--features", "need_a", "--alias", "shadow",
    )  # fmt: skip
    assert r.exit_code == 1
    lines = r.output.splitlines()
    assert lines[0] == "registered m v5 (python, 3 features from 'need_a')"
    assert lines[1].startswith(
        "error: model 'm' v5 cannot become shadow: its feature service 'need_a' needs request "
        "field 'a', which production v1 (feature service 'scoring') does not"
    ), r.output
    assert len(lines) == 2
    assert _aliases(repo) == {"production": 1}


def test_without_production_any_alias_is_accepted(repo: Path, store: FeatureStore) -> None:
    from featurestore.online.models.repo import promote_model

    _set_aliases(repo, {})
    assert promote_model(store, "m", 4, "shadow") == []
    assert promote_model(store, "m", 3, "canary", share=0.5) == []
    assert _aliases(repo) == {"shadow": 4, "canary": 3}


def test_a_canary_needing_a_join_key_production_does_not_is_refused(repo: Path) -> None:
    _set_aliases(repo, {"production": 2})  # need_a: user_id and 'a'
    r = _cli(repo, "models", "promote", "m", "1", "--alias", "canary", "--share", "0.1")
    assert r.exit_code == 1
    assert r.output.startswith(
        "error: model 'm' v1 cannot become canary: its feature service 'scoring' needs join key "
        "'merchant_id', which production v2 (feature service 'need_a') does not"
    ), r.output
    assert _aliases(repo) == {"production": 2}
