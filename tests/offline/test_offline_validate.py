"""validate_view and source_schema: each problem is found and named with its fix."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pytest

from featurestore.entity import Entity
from featurestore.errors import OfflineStoreError
from featurestore.feature_view import FeatureView
from featurestore.field import Field
from featurestore.offline import OfflineStore
from featurestore.sources import DuckDBSource, ParquetSource
from featurestore.types import Float64, Int64, String, UnixTimestamp

T0 = 1_704_067_200_000_000


@pytest.fixture
def users_file(kit: SimpleNamespace, repo: Path) -> Path:
    return kit.write_parquet(
        repo / "data/users.parquet",
        {
            "user_id": [1],
            "event_timestamp": kit.ts_array([T0]),
            "created": kit.ts_array([T0]),
            "f0": [1.0],
            "n": pa.array([1], pa.int32()),
            "s": ["a"],
            "when": pa.array(["2024-01-01"]),
        },
    )


def _view(
    user: Entity, fields: list[Field], path: str = "data/users.parquet", **src: object
) -> FeatureView:
    return FeatureView(
        name="user_stats",
        entities=[user],
        source=ParquetSource(path, **src),  # type: ignore[arg-type]
        schema=fields,
    )


def test_a_good_view_has_no_problems(store: OfflineStore, user: Entity, users_file: Path) -> None:
    fields = [Field("f0", Float64), Field("n", Int64), Field("s", String)]
    assert store.validate_view(_view(user, fields, created_timestamp_field="created")) == []
    # ints widen to floats
    assert store.validate_view(_view(user, [Field("n", Float64)])) == []


def test_missing_feature_column_lists_what_the_source_has(
    store: OfflineStore, user: Entity, users_file: Path
) -> None:
    problems = store.validate_view(_view(user, [Field("f21", Float64)]))
    assert problems == [
        "feature view 'user_stats': column 'f21' is not in source 'data/users.parquet'; remove "
        "the field or add the column (the source has: user_id, event_timestamp, created, f0, n, "
        "s, when)"
    ]


def test_no_files_names_the_path(store: OfflineStore, user: Entity, repo: Path) -> None:
    (problem,) = store.validate_view(_view(user, [Field("f0", Float64)], path="data/none/"))
    assert problem.startswith("feature view 'user_stats': source 'data/none/' is unreadable")
    assert str(repo / "data/none") in problem


def test_missing_or_bad_timestamp_columns(
    store: OfflineStore, user: Entity, users_file: Path
) -> None:
    (p,) = store.validate_view(_view(user, [Field("f0", Float64)], timestamp_field="ts"))
    assert (
        "timestamp column 'ts' is not in source 'data/users.parquet'; set the source's "
        "timestamp_field" in p
    )
    (p,) = store.validate_view(_view(user, [Field("f0", Float64)], timestamp_field="when"))
    assert "timestamp column 'when' in source 'data/users.parquet' is string, not a timestamp" in p
    (p,) = store.validate_view(
        _view(user, [Field("f0", Float64)], created_timestamp_field="written")
    )
    assert "created timestamp column 'written' is not in source" in p
    assert "created_timestamp_field" in p


def test_missing_join_key(store: OfflineStore, users_file: Path) -> None:
    (p,) = store.validate_view(_view(Entity("acct", ["account_id"]), [Field("f0", Float64)]))
    assert p.startswith(
        "feature view 'user_stats': join key column 'account_id' is not in source "
        "'data/users.parquet'; add it to the source or fix the entity's join_keys"
    )


@pytest.mark.parametrize(
    ("field", "shown"),
    [
        (Field("s", Float64), "string"),
        (Field("f0", Int64), "float64"),
        (Field("n", UnixTimestamp), None),
    ],
)
def test_type_mismatch(
    store: OfflineStore, user: Entity, users_file: Path, field: Field, shown: str | None
) -> None:
    problems = store.validate_view(_view(user, [field]))
    if shown is None:  # int columns may hold UnixTimestamp microseconds
        assert problems == []
        return
    assert problems == [
        f"feature view 'user_stats': column '{field.name}' is {shown} in source "
        f"'data/users.parquet' but declared {field.dtype.name}; change the Field dtype or cast "
        "the column in the source"
    ]


def test_several_problems_are_all_reported(
    store: OfflineStore, user: Entity, users_file: Path
) -> None:
    view = _view(user, [Field("a", Float64), Field("s", Int64)], timestamp_field="ts")
    assert len(store.validate_view(view)) == 3


def test_source_schema_for_parquet_and_sql(
    store: OfflineStore, user: Entity, users_file: Path
) -> None:
    schema = store.source_schema(ParquetSource("data/users.parquet"))
    assert schema.field("n").type == pa.int32()
    assert schema.field("event_timestamp").type == pa.timestamp("us")
    sql = DuckDBSource("SELECT user_id, f0 + 1 AS g FROM 'data/users.parquet'")
    assert store.source_schema(sql).names == ["user_id", "g"]
    with pytest.raises(OfflineStoreError, match="is unreadable"):
        store.source_schema(DuckDBSource("SELECT nope FROM 'data/users.parquet'"))


def test_bad_sql_source_is_a_problem(store: OfflineStore, user: Entity, users_file: Path) -> None:
    view = FeatureView(
        name="q",
        entities=[user],
        source=DuckDBSource("SELEC 1"),
        schema=[Field("x", Float64)],
    )
    (p,) = store.validate_view(view)
    assert p.startswith("feature view 'q': source 'SELEC 1' is unreadable")
