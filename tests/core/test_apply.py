"""plan/apply: the registry is versioned and atomic, and bad definitions fail with one clear line."""

from __future__ import annotations

import json

import pytest

from featurestore import DefinitionError, FeatureNotFoundError, FeatureStore, RegistryError

from .conftest import DEFS


def test_apply_writes_a_versioned_registry(make_repo) -> None:
    repo = make_repo()
    store = FeatureStore(repo)
    plan = store.apply()
    assert {(c.kind, c.name, c.action) for c in plan.changes} == {
        ("entity", "user", "add"),
        ("feature view", "user_stats", "add"),
        ("feature service", "svc", "add"),
        ("join key", "user_id", "add"),
    }
    assert store.registry.version == 1
    assert store.plan().empty  # applying again would change nothing
    store.apply()
    assert store.registry.version == 1
    doc = json.loads((repo / "data" / "registry.json").read_text())
    assert doc["feature_views"][0]["ttl"] == "1d"
    assert (repo / "data" / "registry.json.history" / "v1.json").is_file()


def test_plan_flags_breaking_schema_changes(make_repo) -> None:
    repo = make_repo()
    FeatureStore(repo).apply()
    (repo / "definitions.py").write_text(
        DEFS.replace('Field("clicks", Int64, default=0)', 'Field("clicks", Float64)')
    )
    plan = FeatureStore(repo).plan()
    (change,) = [c for c in plan.changes if c.kind == "feature view"]
    assert change.action == "change" and change.breaking
    assert any("clicks: int64 -> float64 (breaking)" in d for d in change.details)
    assert "[BREAKING]" in str(plan)


def test_removed_view_is_breaking_and_added_feature_is_not(make_repo) -> None:
    repo = make_repo()
    FeatureStore(repo).apply()
    (repo / "definitions.py").write_text(
        DEFS.replace(
            'Field("spend", Float64)', 'Field("spend", Float64), Field("user_id_copy", Int64)'
        )
    )
    # the added column is not in the data: apply must refuse and keep version 1
    with pytest.raises(DefinitionError, match="user_id_copy"):
        FeatureStore(repo).apply()
    assert FeatureStore(repo).registry.version == 1


def test_duplicate_names_across_files_name_both_files(make_repo) -> None:
    repo = make_repo(
        extra_files={"more.py": DEFS.replace('"svc"', '"svc2"').replace('ttl="1d"', 'ttl="2d"')}
    )
    with pytest.raises(
        DefinitionError, match=r"feature view 'user_stats' is defined twice \(also in"
    ):
        FeatureStore(repo).plan()


def test_error_in_definitions_names_file_and_line(make_repo) -> None:
    repo = make_repo(defs=DEFS + '\nbad = Entity("merchant")\n')
    with pytest.raises(
        DefinitionError, match=r"definitions.py:\d+: entity 'merchant' has no join keys"
    ):
        FeatureStore(repo).apply()


def test_unknown_column_fails_at_apply(make_repo) -> None:
    repo = make_repo(defs=DEFS.replace('Field("spend", Float64)', 'Field("spent", Float64)'))
    with pytest.raises(DefinitionError, match=r"definitions.py: .*'spent'"):
        FeatureStore(repo).apply()


def test_missing_timestamp_column_fails_at_apply(make_repo) -> None:
    repo = make_repo(
        defs=DEFS.replace(
            'created_timestamp_field="created"',
            'timestamp_field="ts", created_timestamp_field="created"',
        )
    )
    with pytest.raises(DefinitionError, match="'ts'"):
        FeatureStore(repo).apply()


def test_type_mismatch_with_data_fails_at_apply(make_repo) -> None:
    repo = make_repo(defs=DEFS.replace('Field("spend", Float64)', 'Field("spend", Int64)'))
    with pytest.raises(DefinitionError, match="spend"):
        FeatureStore(repo).apply()


def test_missing_source_file_fails_at_apply(make_repo) -> None:
    repo = make_repo(defs=DEFS.replace("data/users.parquet", "data/nope.parquet"))
    with pytest.raises(DefinitionError, match=r"nope\.parquet"):
        FeatureStore(repo).apply()


def test_service_referencing_unknown_feature(make_repo) -> None:
    repo = make_repo(defs=DEFS.replace("features=[user_stats]", 'features=["user_stats:nope"]'))
    with pytest.raises(
        DefinitionError, match="'user_stats:nope', but view 'user_stats' has no feature 'nope'"
    ):
        FeatureStore(repo).plan()


def test_reads_before_apply_say_to_apply(make_repo) -> None:
    with pytest.raises(RegistryError, match="run `featurestore apply`"):
        FeatureStore(make_repo()).list_feature_views()


def test_unknown_feature_reference_lists_known_ones(make_repo) -> None:
    store = FeatureStore(make_repo())
    store.apply()
    with pytest.raises(FeatureNotFoundError, match="has no feature 'nope'; it has clicks, spend"):
        store.resolve_features(["user_stats:nope"])
    with pytest.raises(FeatureNotFoundError, match="no feature view 'other'"):
        store.resolve_features(["other:x"])
    with pytest.raises(FeatureNotFoundError, match="expected 'view:feature'"):
        store.resolve_features(["a:b:c"])
    assert store.resolve_features("svc")[0][1] == ["clicks", "spend"]


def test_corrupt_registry_is_reported(make_repo) -> None:
    repo = make_repo()
    FeatureStore(repo).apply()
    (repo / "data" / "registry.json").write_text("{not json")
    with pytest.raises(RegistryError, match="is corrupt"):
        FeatureStore(repo).list_feature_views()


def test_definition_files_import_helpers_beside_them(make_repo) -> None:
    """A repo may keep shared objects in a helper module (``_*.py`` is not itself read as
    definitions) and import it, as a script imports modules beside it."""
    import subprocess
    import sys
    import textwrap

    helper = """
    from featurestore import Entity, Field, Float64, RequestSource, on_demand_feature

    user = Entity("user", join_keys=["user_id"])
    order = RequestSource("order", schema=[Field("amount", Float64)])

    @on_demand_feature(inputs=["amount", "user_stats:spend"], output=Field("ratio", Float64),
                       sources=[order])
    def ratio(amount: float, spend: float) -> float:
        return amount / (spend + 1.0)
    """
    defs = """
    from featurestore import FeatureView, Field, Float64, Int64, OnDemandFeatureView, ParquetSource

    from _common import order, ratio, user

    user_stats = FeatureView(
        name="user_stats",
        entities=[user],
        source=ParquetSource("data/users.parquet", created_timestamp_field="created"),
        schema=[Field("clicks", Int64, default=0), Field("spend", Float64)],
    )
    spend_ratio = OnDemandFeatureView(name="spend_ratio", sources=[order, user_stats],
                                      features=[ratio])
    """
    repo = make_repo(defs=defs, extra_files={"_common.py": helper})
    FeatureStore(repo).apply()
    assert str(repo) not in sys.path  # only while the files run
    # a new process imports the function's file from the registry's reference
    script = textwrap.dedent(f"""
        from featurestore import FeatureStore
        store = FeatureStore({str(repo)!r})
        store.materialize("2025-12-01", "2026-02-01")
        r = store.get_online_features(["spend_ratio:ratio"], [{{"user_id": 4}}],
                                      request_data={{"amount": [29.5]}}, now="2026-01-01T20:00:00Z")
        print(r.to_dict()["ratio"][0])
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    # user 4's latest row by then is row 19 (spend 28.5)
    assert float(out.stdout.strip().splitlines()[-1]) == 29.5 / (19 * 1.5 + 1.0)
