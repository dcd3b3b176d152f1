"""Join-key kinds: apply records whether each key holds integers or strings (from the sources),
refuses keys no lookup could match, and in-process lookups refuse values of the other kind."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore import DefinitionError, FeatureStore
from featurestore.errors import EntityDataError

from .conftest import DEFS, T0, write_users

CITY_DEFS = """
from featurestore import Entity, FeatureView, Field, Float64, ParquetSource

city = Entity("city", join_keys=["city"])
weather = FeatureView(
    name="weather",
    entities=[city],
    source=ParquetSource("data/cities.parquet"),
    schema=[Field("temp", Float64)],
)
"""


def _write_cities(path: Path, city_type: pa.DataType = pa.string()) -> None:
    names = ["oslo", "1234", "pune"] if city_type == pa.string() else [1.0, 2.0, 3.0]
    pq.write_table(
        pa.table(
            {
                "city": pa.array(names, city_type),
                "event_timestamp": pa.array([T0] * 3, pa.timestamp("us", tz="UTC")),
                "temp": pa.array([1.5, 20.0, 31.0], pa.float64()),
            }
        ),
        path,
    )


def _materialized(repo: Path) -> FeatureStore:
    """``repo`` applied and materialized, its users' rows recent enough for their 1d TTL."""
    write_users(
        repo / "data" / "users.parquet", t0=datetime.now(timezone.utc) - timedelta(hours=20)
    )
    store = FeatureStore(repo)
    store.apply()
    store.materialize(T0 - timedelta(days=1), datetime.now(timezone.utc))
    return store


def test_apply_records_each_key_kind(make_repo) -> None:
    repo = make_repo(defs=DEFS + CITY_DEFS)
    _write_cities(repo / "data" / "cities.parquet")
    FeatureStore(repo).apply()
    doc = json.loads((repo / "data" / "registry.json").read_text())
    assert doc["join_key_kinds"] == {"user_id": "int", "city": "str"}


def test_a_float_join_key_column_fails_at_apply(make_repo) -> None:
    repo = make_repo(defs=DEFS + CITY_DEFS)
    _write_cities(repo / "data" / "cities.parquet", pa.float64())
    with pytest.raises(DefinitionError, match=r"join key column 'city' is double .*integer or str"):
        FeatureStore(repo).apply()


def test_sources_that_disagree_fail_at_apply(make_repo) -> None:
    second = """
weather = FeatureView(
    name="weather",
    entities=[user],
    source=ParquetSource("data/cities.parquet"),
    schema=[Field("temp", Float64)],
)
"""
    repo = make_repo(defs=DEFS + second)
    pq.write_table(  # user_id as strings in the second view's source
        pa.table(
            {
                "user_id": pa.array(["1", "2"]),
                "event_timestamp": pa.array([T0] * 2, pa.timestamp("us", tz="UTC")),
                "temp": pa.array([1.0, 2.0]),
            }
        ),
        repo / "data" / "cities.parquet",
    )
    with pytest.raises(
        DefinitionError,
        match=r"join key 'user_id' holds integers in the source of feature view 'user_stats' "
        r"but strings in the source of feature view 'weather'",
    ):
        FeatureStore(repo).apply()


def test_an_entity_value_type_that_disagrees_fails_at_apply(make_repo) -> None:
    defs = DEFS.replace(
        'Entity("user", join_keys=["user_id"])',
        'Entity("user", join_keys=["user_id"], value_type=String)',
    ).replace("Int64, ParquetSource", "Int64, ParquetSource, String")
    repo = make_repo(defs=defs)
    with pytest.raises(DefinitionError, match=r"entity 'user' declares value_type string"):
        FeatureStore(repo).apply()


def test_in_process_lookup_refuses_the_other_kind(make_repo) -> None:
    repo = make_repo(defs=DEFS + CITY_DEFS)
    _write_cities(repo / "data" / "cities.parquet")
    store = _materialized(repo)
    ok = store.get_online_features(["user_stats:spend"], {"user_id": np.array([1, 2])})
    assert ok.to_dict()["spend"] == [24.0, 25.5]
    with pytest.raises(
        EntityDataError, match=r"join key 'user_id' holds integers .* row 1 gives '2'"
    ):
        store.get_online_features(["user_stats:spend"], [{"user_id": 1}, {"user_id": "2"}])
    with pytest.raises(EntityDataError, match=r"join key 'city' holds strings .* row 0 gives 7"):
        store.get_online_features(["weather:temp"], [{"city": 7}])
    with pytest.raises(EntityDataError, match=r"join key 'city' holds strings"):
        store.get_online_features(["weather:temp"], {"city": np.array([7])})
    with pytest.raises(
        EntityDataError, match=r"join key 'city' holds strings .* row 1 gives np.int64\(7\)"
    ):
        store.get_online_features(["weather:temp"], {"city": ["oslo", np.int64(7)]})
    assert store.get_online_features(["weather:temp"], [{"city": "1234"}]).to_dict()["temp"] == [
        20.0
    ]
    store.close()


def test_a_registry_from_before_kinds_is_not_checked_until_the_next_apply(make_repo) -> None:
    repo = make_repo()
    store = _materialized(repo)
    path = repo / "data" / "registry.json"
    doc = json.loads(path.read_text())
    del doc["join_key_kinds"]
    path.write_text(json.dumps(doc))
    store.close()

    old = FeatureStore(repo)
    resp = old.get_online_features(["user_stats:spend"], [{"user_id": "1"}])
    assert resp.to_dict()["spend"] == [None]  # as before: the string finds nothing
    plan = old.plan()  # nothing changed in the definitions, but the kinds get recorded
    assert [(c.kind, c.name, c.action) for c in plan.changes] == [("join key", "user_id", "add")]
    old.apply()
    assert old.registry.version == 2 and old.registry.join_key_kinds == {"user_id": "int"}
    with pytest.raises(EntityDataError, match="join key 'user_id' holds integers"):
        old.get_online_features(["user_stats:spend"], [{"user_id": "1"}])
    old.close()


def test_cli_get_keeps_a_string_key_a_string(make_repo) -> None:
    from .test_cli import run

    repo = make_repo(defs=DEFS + CITY_DEFS)
    _write_cities(repo / "data" / "cities.parquet")
    _materialized(repo).close()
    out = run("get", "--features", "weather:temp", "--entity", "city=1234,oslo", cwd=repo)
    doc = json.loads(out.stdout)
    assert doc["features"]["city"] == ["1234", "oslo"]
    assert doc["features"]["temp"] == [20.0, 1.5]
    assert doc["status"]["temp"] == ["PRESENT", "PRESENT"]


def test_a_join_key_changing_kind_is_a_breaking_change(make_repo) -> None:
    repo = make_repo()
    FeatureStore(repo).apply()
    users = repo / "data" / "users.parquet"
    table = pq.read_table(users)
    i = table.schema.get_field_index("user_id")
    pq.write_table(table.set_column(i, "user_id", table.column(i).cast(pa.string())), users)
    (change,) = FeatureStore(repo).plan().changes
    assert (change.kind, change.name, change.action, change.breaking) == (
        "join key",
        "user_id",
        "change",
        True,
    )
    assert "integers -> strings (breaking" in str(change)
