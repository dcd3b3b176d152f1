"""Changes apply must see and act on: a transform's code, a view's ttl, an entity's join keys.

Each one leaves the online rows unfit as they are, so plan names it, apply drops the view's
watermark (the next incremental materialize writes it afresh) and, for join keys, deletes the
rows stored under the old keys."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore import (
    DefinitionError,
    Entity,
    FeatureStore,
    FeatureView,
    Field,
    Int64,
    ParquetSource,
)
from featurestore._transform_refs import code_hash, function_ref
from featurestore.config import RepoConfig
from featurestore.online.base import Status
from featurestore.online.keys import build_key, key_prefix, key_suffix
from featurestore.registry import Registry
from featurestore.transforms.row import load_module_from_path

from ..conftest import online_config

MIN = 60_000_000
NOW = int(time.time()) * 1_000_000  # recent: rows must be inside their ttl when written


def config(kind: str, repo: Path, request: pytest.FixtureRequest) -> RepoConfig:
    url = request.getfixturevalue("redis_url") if kind == "redis" else ""
    return online_config(kind, repo, url=url)


def now_us() -> int:
    return int(time.time() * 1_000_000)


# -- the code hash -----------------------------------------------------------------------------

BASE = """
from featurestore import transform

LIMIT = 100.0


@transform
def is_big(amount: float) -> bool:
    return amount > LIMIT
"""


def hash_of(tmp_path: Path, text: str, name: str = "defs.py") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    module = load_module_from_path(str(path))
    ref = function_ref(module.is_big, tmp_path)
    assert (ref["file"], ref["function"]) == (name, "is_big")
    return ref["code"]


def test_code_hash_follows_the_code_not_its_layout(tmp_path: Path) -> None:
    base = hash_of(tmp_path, BASE)
    moved = BASE.replace(
        "@transform\ndef is_big(amount: float) -> bool:\n    return amount > LIMIT",
        '\n\n# a comment\n@transform\ndef is_big(amount: float) -> bool:\n    """Doc."""\n\n'
        "    return (amount >\n            LIMIT)  # why",
    )
    assert moved != BASE
    assert hash_of(tmp_path, moved, "other.py") == base  # comments, lines, docstring, file
    assert hash_of(tmp_path, BASE.replace("> LIMIT", ">= LIMIT")) != base  # the body
    assert hash_of(tmp_path, BASE.replace("= 100.0", "= 10.0")) != base  # a constant it reads
    assert hash_of(tmp_path, BASE.replace("amount: float", "amount: int")) != base  # a type


def test_code_hash_is_the_same_in_another_process(tmp_path: Path) -> None:
    path = tmp_path / "defs.py"
    path.write_text(BASE)
    here = code_hash(load_module_from_path(str(path)).is_big)
    script = (
        "import sys\nfrom featurestore._transform_refs import code_hash\n"
        "from featurestore.transforms.row import load_module_from_path\n"
        "print(code_hash(load_module_from_path(sys.argv[1]).is_big))"
    )
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", script, str(path)],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        assert out.stdout.strip() == here


# -- transform code of a window view and of an on-demand view ----------------------------------

WINDOW_DEFS = """
from featurestore import (Aggregation, Entity, Field, Float64, FeatureView, OnDemandFeatureView,
                          ParquetSource, RequestSource, on_demand_feature, transform)

user = Entity("user", join_keys=["user_id"])


@transform
def is_big(amount: float) -> bool:
    return amount > 100.0


@transform
def twice(amount: float) -> float:
    return amount * 2.0


w = FeatureView(name="w", entities=[user], source=ParquetSource("data/events.parquet"),
    derived={"double": (twice, ["amount"])},
    aggregations=[Aggregation("amount", "count", ["1d"], name="big", where=is_big),
                  Aggregation("double", "sum", ["1d"], name="s")])
req = RequestSource("req", schema=[Field("x", Float64)])


@on_demand_feature(inputs=["x"], output=Field("y", Float64), sources=[req])
def plus(x: float) -> float:
    return x + 1.0


od = OnDemandFeatureView(name="od", sources=[req], features=[plus])
"""


def write_events(repo: Path) -> None:
    (repo / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array([1, 1, 1, 1], pa.int64()),
                "amount": pa.array([5.0, 50.0, 150.0, 500.0]),
                "event_timestamp": pa.array(
                    [NOW - m * MIN for m in (40, 30, 20, 10)], pa.timestamp("us", tz="UTC")
                ),
            }
        ),
        repo / "data" / "events.parquet",
    )


def offline_value(store: FeatureStore, ref: str, at_us: int) -> Any:
    spine = pl.DataFrame(
        {"user_id": [1], "event_timestamp": [at_us]},
        schema={"user_id": pl.Int64, "event_timestamp": pl.Datetime("us", "UTC")},
    )
    return store.get_historical_features(spine, [ref])[ref.split(":")[1]][0]


def view_change(plan: Any, name: str, kind: str = "feature view") -> Any:
    (change,) = [c for c in plan.changes if (c.kind, c.name) == (kind, name)]
    return change


def test_editing_a_where_predicate_is_a_breaking_change(tmp_path: Path) -> None:
    write_events(tmp_path)
    (tmp_path / "definitions.py").write_text(WINDOW_DEFS)
    cfg = online_config("embedded", tmp_path)
    with FeatureStore(config=cfg) as store:
        store.apply()
        store.materialize_incremental(now_us())
        online = store.get_online_features(["w:big_1d"], {"user_id": [1]})
        assert online.to_dict()["big_1d"] == [2]

    (tmp_path / "definitions.py").write_text(WINDOW_DEFS.replace("> 100.0", "> 10.0"))
    with FeatureStore(config=cfg) as store:
        # the registry holds other code than the file: reading the view refuses to run it
        with pytest.raises(DefinitionError, match=r"'is_big' in definitions\.py was edited after"):
            offline_value(store, "w:big_1d", now_us())
        change = view_change(store.plan(), "w")
        assert change.breaking
        assert any(
            "code of function 'is_big' (where of aggregation 'big') changed" in d
            for d in change.details
        ), change.details
        plan = store.apply()
        assert not plan.empty
        assert "w" not in store.registry.materialization  # the next run writes it afresh
        # state built with the old predicate is not served as current
        stale = store.get_online_features(["w:big_1d"], {"user_id": [1]})
        assert list(stale.statuses["big_1d"]) == [Status.NOT_FOUND]
        assert store.materialize_incremental(now_us()).rows["w"] == 1
        at = now_us()
        fresh = store.get_online_features(["w:big_1d"], {"user_id": [1]}, now=at)
        assert fresh.to_dict()["big_1d"] == [3] == [offline_value(store, "w:big_1d", at)]


def test_a_registry_from_before_code_hashes_keeps_serving_after_apply(tmp_path: Path) -> None:
    """Upgrading: the first apply records each function's hash without a rebuild; the states
    written before are served, the watermark kept. A later edit is breaking, twice over."""
    import json

    write_events(tmp_path)
    (tmp_path / "definitions.py").write_text(WINDOW_DEFS)
    cfg = online_config("embedded", tmp_path)
    with FeatureStore(config=cfg) as store:
        store.apply()
        store.materialize_incremental(now_us())
        version = store.registry.feature_views["w"].schema_version
    reg_path = tmp_path / "data" / "registry.json"
    reg = json.loads(reg_path.read_text())
    from featurestore._transform_refs import without_code

    reg_path.write_text(json.dumps(without_code(reg)))  # as an older release wrote it
    with FeatureStore(config=cfg) as store:
        assert store.registry.feature_views["w"].schema_version == version
        change = view_change(store.plan(), "w")
        assert not change.breaking, change.details
        assert any("code of function 'is_big'" in d and "recorded" in d for d in change.details)
        store.apply()
        assert "w" in store.registry.materialization  # nothing to write again
        assert store.registry.feature_views["w"].schema_version == version
        online = store.get_online_features(["w:big_1d"], {"user_id": [1]})
        assert online.to_dict()["big_1d"] == [2]
        assert store.plan().empty
    for threshold, want in (("> 10.0", 3), ("> 1.0", 4)):  # each edit: a new code epoch
        (tmp_path / "definitions.py").write_text(WINDOW_DEFS.replace("> 100.0", threshold))
        with FeatureStore(config=cfg) as store:
            before = store.registry.feature_views["w"].schema_version
            assert view_change(store.plan(), "w").breaking
            store.apply()
            assert store.registry.feature_views["w"].schema_version != before
            stale = store.get_online_features(["w:big_1d"], {"user_id": [1]})
            assert list(stale.statuses["big_1d"]) == [Status.NOT_FOUND]
            store.materialize_incremental(now_us())
            fresh = store.get_online_features(["w:big_1d"], {"user_id": [1]})
            assert fresh.to_dict()["big_1d"] == [want]
            assert store.plan().empty  # the epoch is kept, not counted again


def test_derived_and_on_demand_code_changes_show_in_plan(tmp_path: Path) -> None:
    write_events(tmp_path)
    (tmp_path / "definitions.py").write_text(WINDOW_DEFS)
    with FeatureStore(config=online_config("embedded", tmp_path)) as store:
        store.apply()
        edited = WINDOW_DEFS.replace("amount * 2.0", "amount * 3.0").replace("x + 1.0", "x + 2.0")
        (tmp_path / "definitions.py").write_text(edited)
        plan = store.plan()
        w, od = view_change(plan, "w"), view_change(plan, "od", "on-demand feature view")
        assert w.breaking and not od.breaking  # on-demand outputs are not stored
        assert any(
            "code of function 'twice' (derived column 'double') changed" in d for d in w.details
        )
        assert any("code of function 'plus' (output 'y') changed" in d for d in od.details)
        assert len(plan.changes) == 2, str(plan)
        store.apply()
        assert store.plan().empty


# -- ttl ---------------------------------------------------------------------------------------

TTL_DEFS = """
from featurestore import Entity, FeatureView, Field, Int64, ParquetSource

user = Entity("user", join_keys=["{key}"])
stats = FeatureView(name="stats", entities=[user], ttl={ttl},
    source=ParquetSource("data/stats.parquet"), schema=[Field("a", Int64)])
"""
EVENT = NOW - 30 * MIN


def write_stats(repo: Path, user_ids: list[Any] | None = None) -> None:
    (repo / "data").mkdir(parents=True, exist_ok=True)
    ids = user_ids or [1, 2]
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array(ids),
                "uid": pa.array([101, 102], pa.int64()),
                "a": pa.array([7, 8], pa.int64()),
                "event_timestamp": pa.array([EVENT, EVENT], pa.timestamp("us", tz="UTC")),
            }
        ),
        repo / "data" / "stats.parquet",
    )


def write_ttl_defs(repo: Path, ttl: str, key: str = "user_id") -> None:
    (repo / "definitions.py").write_text(TTL_DEFS.format(ttl=ttl, key=key))


def expiry_ms(store: FeatureStore, entity: dict[str, Any]) -> int | None:
    """When the store itself drops the row of ``entity`` (None: never)."""
    key = build_key(store.project, "stats", entity)
    if store.config.online_store.type == "embedded":
        with store.online._env().begin() as txn:  # type: ignore[attr-defined]
            at = int.from_bytes(txn.get(key)[:8], "little", signed=True)
        return at or None
    import redis

    client = redis.Redis.from_url(store.config.online_store.url)
    try:
        at = client.pexpiretime(key)
    finally:
        client.close()
    assert at != -2, "the key is missing"
    return None if at == -1 else at


def test_a_materialize_that_outlives_an_apply_leaves_the_dropped_watermark_dropped(
    tmp_path: Path,
) -> None:
    """Rows written under the old ttl by a run that started before the apply: recording its
    watermark would hide them from the next incremental run, which must rewrite them."""
    write_stats(tmp_path)
    write_ttl_defs(tmp_path, "'10m'")
    cfg = online_config("embedded", tmp_path)
    with FeatureStore(config=cfg) as store, FeatureStore(config=cfg) as other:
        store.apply()
        real = store._registry.update_materialization

        def apply_first(*args: Any, **kwargs: Any) -> Any:  # an apply lands mid-run
            write_ttl_defs(tmp_path, "'2h'")
            other.apply()
            return real(*args, **kwargs)

        store._registry.update_materialization = apply_first  # type: ignore[method-assign]
        assert store.materialize(NOW - 3 * 60 * MIN, now_us()).rows["stats"] == 2
        store._registry.update_materialization = real  # type: ignore[method-assign]
        assert "stats" not in store.registry.materialization
        assert store.materialize_incremental(now_us()).rows["stats"] == 2  # written afresh
        assert "stats" in store.registry.materialization


@pytest.mark.parametrize("kind", ["embedded", "redis"])
def test_a_ttl_change_rewrites_the_rows_with_the_new_expiry(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    write_stats(tmp_path)
    write_ttl_defs(tmp_path, '"40m"')
    cfg = config(kind, tmp_path, request)
    user = {"user_id": 1}
    with FeatureStore(config=cfg) as store:
        store.apply()
        assert store.materialize_incremental(now_us()).rows["stats"] == 2
        first = expiry_ms(store, user)
        assert first is not None

        write_ttl_defs(tmp_path, '"2h"')
        change = view_change(store.plan(), "stats")
        assert not change.breaking
        assert any(
            "ttl 40m -> 2h" in d and "rewritten" in d and "next materialize" in d
            for d in change.details
        ), change.details
        store.apply()
        assert "stats" not in store.registry.materialization
        assert store.materialize_incremental(now_us()).rows["stats"] == 2
        assert expiry_ms(store, user) == first + 80 * 60_000
        if kind == "embedded":  # an hour after the event the row is still there and served
            assert store.online.purge_expired(now_ms=(EVENT + 60 * MIN) // 1000) == 0
            got = store.get_online_features(["stats:a"], [user], now=EVENT + 60 * MIN)
            assert got.to_dict()["a"] == [7]

        write_ttl_defs(tmp_path, '"40m"')  # lowering: keys must not outlive the new ttl
        store.apply()
        assert store.materialize_incremental(now_us()).rows["stats"] == 2
        assert expiry_ms(store, user) == first
        late = store.get_online_features(["stats:a"], [user], now=EVENT + 41 * MIN)
        assert list(late.statuses["a"]) == [Status.EXPIRED]  # reads hide it too

        write_ttl_defs(tmp_path, "None")
        assert any("ttl 40m -> none" in d for d in view_change(store.plan(), "stats").details)
        store.apply()
        assert store.materialize_incremental(now_us()).rows["stats"] == 2
        assert expiry_ms(store, user) is None


# -- join keys ---------------------------------------------------------------------------------


def count_rows(store: FeatureStore, view: str) -> int:
    prefix, suffix = key_prefix(store.project), key_suffix(view)
    if store.config.online_store.type == "embedded":
        with store.online._env().begin() as txn:  # type: ignore[attr-defined]
            keys = list(txn.cursor().iternext(values=False))
        return sum(k.startswith(prefix) and k.endswith(suffix) for k in keys)
    import redis

    client = redis.Redis.from_url(store.config.online_store.url)
    try:
        pattern = f"{store.project}:{{{store.project}|*}}:{view}"
        return sum(1 for _ in client.scan_iter(match=pattern))
    finally:
        client.close()


@pytest.mark.parametrize("kind", ["embedded", "redis"])
def test_a_join_key_rename_deletes_old_rows_and_rematerializes(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    write_stats(tmp_path)
    write_ttl_defs(tmp_path, '"1d"')
    with FeatureStore(config=config(kind, tmp_path, request)) as store:
        store.apply()
        assert store.materialize_incremental(now_us()).rows["stats"] == 2

        write_ttl_defs(tmp_path, '"1d"', key="uid")
        change = view_change(store.plan(), "stats")
        assert change.breaking
        assert any("join keys ['user_id'] -> ['uid']" in d for d in change.details)
        reports: list[Any] = []
        store.apply(report=reports.append)
        assert [(r.view, r.deleted, r.kept) for r in reports] == [("stats", 2, True)]
        assert count_rows(store, "stats") == 0  # the old keys are gone
        assert "stats" not in store.registry.materialization
        assert not store.registry.pending_cleanup
        assert store.materialize_incremental(now_us()).rows["stats"] == 2
        got = store.get_online_features(["stats:a"], {"uid": [101, 102]})
        assert got.to_dict()["a"] == [7, 8]
        assert count_rows(store, "stats") == 2


def test_a_join_key_changing_kind_resets_the_view(tmp_path: Path) -> None:
    write_stats(tmp_path)
    write_ttl_defs(tmp_path, '"1d"')
    with FeatureStore(config=online_config("embedded", tmp_path)) as store:
        store.apply()
        store.materialize_incremental(now_us())
        write_stats(tmp_path, ["1", "2"])
        (change,) = store.plan().changes  # the key, naming the views it re-keys
        assert (change.kind, change.name, change.breaking) == ("join key", "user_id", True)
        assert "integers -> strings (breaking" in str(change)
        assert "views stats: online rows are deleted; materialize them again" in change.details
        store.apply()
        assert count_rows(store, "stats") == 0
        assert "stats" not in store.registry.materialization
        assert store.materialize_incremental(now_us()).rows["stats"] == 2
        got = store.get_online_features(["stats:a"], {"user_id": ["1", "2"]})
        assert got.to_dict()["a"] == [7, 8]


def test_rows_deleted_late_for_a_rekeyed_view_also_drop_its_watermark(tmp_path: Path) -> None:
    """A cleanup that failed at apply runs later (the store answers again): the rows it deletes
    may include ones materialized meanwhile, so the watermark must go with them."""
    src = ParquetSource("data/stats.parquet")
    old_user, new_user = Entity("user", join_keys=["user_id"]), Entity("user", join_keys=["uid"])

    def view(user: Entity) -> FeatureView:
        return FeatureView(name="stats", entities=[user], source=src, schema=[Field("a", Int64)])

    for finish in ("cleanup", "apply"):
        reg = Registry(tmp_path / f"{finish}.json", "test")
        reg.apply([old_user], [view(old_user)], [])
        reg.update_materialization("stats", 0, 10)
        reg.apply([new_user], [view(new_user)], [])
        state = reg.load()
        assert "stats" in state.pending_cleanup and "stats" not in state.materialization
        reg.update_materialization("stats", 0, 20)  # materialized before the cleanup ran
        if finish == "apply":  # a new version keeps the record: its cleanup drops it
            state = reg.apply([new_user], [view(new_user)], [], join_key_kinds={"uid": "int"})
            assert list(state.pending_cleanup) == ["stats"]
        reg.update_cleanup(["stats"])
        state = reg.load()
        assert not state.pending_cleanup and "stats" not in state.materialization, finish
