"""Definition objects reject bad input at construction, with messages naming the object."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from featurestore import (
    Array,
    DefinitionError,
    DuckDBSource,
    Entity,
    FeatureService,
    FeatureView,
    Field,
    Float32,
    Float64,
    Int64,
    ParquetSource,
    String,
)
from featurestore._time import parse_duration, to_us
from featurestore.types import dtype_from_name

user = Entity("user", join_keys=["user_id"])
src = ParquetSource("data/u.parquet", created_timestamp_field="created")


def view(**kw):
    args = dict(name="user_stats", entities=[user], source=src, schema=[Field("f", Float64)])
    args.update(kw)
    return FeatureView(**args)


def test_entity_without_join_keys_names_the_fix() -> None:
    with pytest.raises(DefinitionError, match=r"entity 'user' has no join keys; add join_keys"):
        Entity("user")


def test_field_default_of_wrong_type() -> None:
    with pytest.raises(DefinitionError, match=r"field 'f' is int64 but its default 'x' is str"):
        Field("f", Int64, default="x")


def test_field_needs_a_featurestore_type() -> None:
    with pytest.raises(DefinitionError, match="field 'f' has dtype"):
        Field("f", float)  # type: ignore[arg-type]


@pytest.mark.parametrize("ttl", ["0s", "-1d", "soon", 0])
def test_view_rejects_bad_ttl(ttl) -> None:
    with pytest.raises(DefinitionError, match="feature view 'user_stats'"):
        view(ttl=ttl)


def test_view_ttl_accepts_strings_and_timedeltas() -> None:
    assert view(ttl="36h").ttl == timedelta(hours=36)
    assert view(ttl=timedelta(days=2)).ttl_us == 2 * 86_400_000_000


def test_view_drops_keys_and_timestamps_from_features() -> None:
    v = view(schema=[Field("user_id", Int64), Field("created", Int64), Field("f", Float64)])
    assert v.feature_names == ("f",)
    assert v.join_keys == ("user_id",)


def test_view_rejects_duplicate_feature() -> None:
    with pytest.raises(DefinitionError, match="lists feature 'f' twice"):
        view(schema=[Field("f", Float64), Field("f", Int64)])


def test_view_without_entities() -> None:
    with pytest.raises(DefinitionError, match="has no entities"):
        view(entities=[])


def test_schema_version_tracks_names_and_types_only() -> None:
    a = view(schema=[Field("f", Float64)])
    assert a.schema_version == view(schema=[Field("f", Float64, description="x")]).schema_version
    assert a.schema_version != view(schema=[Field("f", Float32)]).schema_version


def test_view_round_trips_through_dict() -> None:
    v = view(
        ttl="7d",
        schema=[Field("f", Float64, default=1.5), Field("s", String), Field("e", Array(Float32))],
        tags={"team": "risk"},
    )
    assert FeatureView.from_dict(v.to_dict(), {"user": user}) == v


def test_service_accepts_views_and_refs_and_rejects_junk() -> None:
    v = view(schema=[Field("a", Float64), Field("b", Float64)])
    s = FeatureService(name="m", features=[v, "other:x"])
    assert s.features == ("user_stats:a", "user_stats:b", "other:x")
    with pytest.raises(DefinitionError, match="neither a feature view"):
        FeatureService(name="m", features=["nocolon"])
    with pytest.raises(DefinitionError, match="more than once"):
        FeatureService(name="m", features=[v, "user_stats:a"])


def test_sources_need_their_essentials() -> None:
    with pytest.raises(DefinitionError, match="needs a path"):
        ParquetSource("")
    with pytest.raises(DefinitionError, match="needs a query"):
        DuckDBSource(" ")


def test_durations_and_times() -> None:
    assert parse_duration("10m") == timedelta(minutes=10)
    assert parse_duration("1.5h") == timedelta(minutes=90)
    with pytest.raises(ValueError, match="bad duration"):
        parse_duration("ten minutes")
    assert to_us("1970-01-01T00:00:01Z") == 1_000_000
    # naive datetimes are documented as UTC, not shifted by the local zone
    assert to_us("1970-01-01T00:00:01") == 1_000_000
    before = to_us(datetime.now(timezone.utc))
    assert before <= to_us("now") <= to_us(datetime.now(timezone.utc))  # as the CLI takes it
    with pytest.raises(ValueError, match=r"'yesterday' is not a time: give an ISO 8601 string"):
        to_us("yesterday")


def test_dtype_names_round_trip() -> None:
    for t in (
        "int32",
        "int64",
        "float32",
        "float64",
        "bool",
        "string",
        "bytes",
        "timestamp",
        "array<float32>",
        "array<int64>",
    ):
        assert dtype_from_name(t).name == t
    with pytest.raises(ValueError, match="unknown type"):
        dtype_from_name("decimal")
