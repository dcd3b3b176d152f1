"""A plan that takes from a feature service a feature a registered model reads: the plan says
it narrows a service, and the models it would strand are named with the version and the
feature, as for a removed service (what plan and apply print as warnings)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from featurestore.feature_service import FeatureService
from featurestore.online.models.registry import ModelVersion
from featurestore.online.models.repo import (
    lost_features,
    models_reading_missing_services,
    register_model,
    service_problem,
)
from featurestore.store import FeatureStore

from .conftest import DEFS as CORE_DEFS

# the core repo's definitions, with svc's features to fill in and a second service
DEFS = (
    CORE_DEFS.replace(
        'FeatureService(name="svc", features=[user_stats])',
        'FeatureService(name="svc", features={features})',
    )
    + 'other = FeatureService(name="other", features=["user_stats:clicks"])\n'
)
BOTH = '["user_stats:clicks", "user_stats:spend"]'
MODEL = (
    "import numpy as np\nFEATURE_NAMES = ['clicks', 'spend']\n"
    "def predict(X):\n    return np.nan_to_num(X).sum(axis=1)\n"
)
LOST_SPEND = (
    "model 'm@production' (v1) reads feature 'spend', which its feature service 'svc' no "
    "longer serves: it cannot be served until the service has it again or the model is "
    "registered again on the service's features"
)


def _repo(make_repo: Callable[..., Path], features: str = BOTH) -> Path:
    repo = make_repo(defs=DEFS.format(features=features), extra_files={"m.py": MODEL})
    with FeatureStore(repo) as store:
        store.apply()
        register_model(store, "m", flavor="python", artifact=repo / "m.py", service="svc",
                       alias="production")  # fmt: skip
    return repo


def _define(repo: Path, features: str) -> None:
    (repo / "definitions.py").write_text(DEFS.format(features=features))


def test_a_service_losing_a_feature_a_model_reads_is_named_by_plan_and_after_apply(
    make_repo: Callable[..., Path],
) -> None:
    repo = _repo(make_repo)
    _define(repo, '["user_stats:clicks"]')
    with FeatureStore(repo) as store:
        plan = store.plan()
        assert plan.narrows_services
        assert set(plan.feature_services) == {"svc", "other"}
        assert plan.feature_services["svc"].features == ("user_stats:clicks",)
        # the registry still has the old service: only the plan's services tell
        assert models_reading_missing_services(store, set(store.registry.feature_services)) == []
        assert models_reading_missing_services(store, plan.feature_services) == [LOST_SPEND]
        store.apply()
        assert models_reading_missing_services(store, store.registry.feature_services) == [
            LOST_SPEND
        ]


def test_a_whole_view_service_losing_a_field_is_named(make_repo: Callable[..., Path]) -> None:
    """A service of a whole view loses a feature when the view drops the field."""
    repo = _repo(make_repo, "[user_stats]")
    defs = DEFS.format(features="[user_stats]").replace(', Field("spend", Float64)]', "]")
    (repo / "definitions.py").write_text(defs)
    with FeatureStore(repo) as store:
        plan = store.plan()
        assert plan.narrows_services
        assert models_reading_missing_services(store, plan.feature_services) == [LOST_SPEND]


def test_changes_that_keep_every_model_feature_name_none(
    make_repo: Callable[..., Path],
) -> None:
    repo = _repo(make_repo, '["user_stats:clicks", "user_stats:spend"]')
    _define(repo, '["user_stats:spend", "user_stats:clicks"]')  # reordered: still served
    with FeatureStore(repo) as store:
        plan = store.plan()
        assert not plan.narrows_services
        assert models_reading_missing_services(store, plan.feature_services) == []


def test_a_removed_service_is_named_as_before(make_repo: Callable[..., Path]) -> None:
    repo = _repo(make_repo)
    (repo / "definitions.py").write_text(
        DEFS.format(features=BOTH).split("svc = ")[0]
        + 'other = FeatureService(name="other", features=["user_stats:clicks"])\n'
    )
    with FeatureStore(repo) as store:
        plan = store.plan()
        assert plan.narrows_services
        want = [
            "model 'm@production' (v1) reads feature service 'svc', which is no longer "
            "defined: it cannot be served until the service is restored or the model is "
            "registered on another"
        ]
        assert models_reading_missing_services(store, plan.feature_services) == want
        assert models_reading_missing_services(store, set(plan.feature_services)) == want


def _version(names: list[str]) -> ModelVersion:
    return ModelVersion("m", 3, "python", "v3/m.py", "svc", tuple(names), "2026-01-01")


NAMES = st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), unique=True, min_size=1)


@given(model=NAMES, served=NAMES)
def test_lost_features_are_exactly_the_model_names_the_service_lacks(
    model: list[str], served: list[str]
) -> None:
    svc = FeatureService(name="svc", features=[f"view:{n}" for n in served])
    why = lost_features(_version(model), svc)
    missing = [n for n in model if n not in served]
    if not missing:
        assert why is None
        assert service_problem(_version(model), {"svc": svc}) is None
        return
    assert why is not None and why.startswith("model 'm' v3 reads ")
    shown = f"feature '{missing[0]}'" if len(missing) == 1 else f"features {missing}"
    assert f"reads {shown}, which its feature service 'svc' no longer serves" in why
    assert service_problem(_version(model), {"svc": svc}) == why
    assert "no longer defined" in (service_problem(_version(model), {}) or "")
