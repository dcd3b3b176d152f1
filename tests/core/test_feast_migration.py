"""Feast idioms a migrating team writes as they are: a projection ``view[["a"]]`` and an
on-demand view object in a FeatureService, ``to_df()`` on an online answer, and a ttl of 0
refused with the spelling that means the same here."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from featurestore import (
    Entity,
    FeatureService,
    FeatureStore,
    FeatureView,
    Field,
    Float64,
    Int64,
    ParquetSource,
)
from featurestore.errors import DefinitionError, FeatureNotFoundError
from tests.core.conftest import DEFS, write_users

FEAST_STYLE = (
    DEFS
    + """
from featurestore import OnDemandFeatureView, on_demand_feature


@on_demand_feature(inputs=["user_stats:spend"], output=Field("spend_x2", Float64))
def spend_x2(spend: float) -> float:
    return spend * 2.0


doubled = OnDemandFeatureView(name="doubled", sources=[user_stats], features=[spend_x2])
picked = FeatureService(name="picked", features=[user_stats[["spend"]], doubled])
"""
)


def test_a_projection_and_an_on_demand_view_in_a_feature_service(
    make_repo: Callable[..., Path],
) -> None:
    repo = make_repo(defs=FEAST_STYLE)
    now = datetime.now(timezone.utc).replace(microsecond=0)
    write_users(repo / "data" / "users.parquet", t0=now - timedelta(hours=20))
    with FeatureStore(repo) as store:
        store.apply()
        assert store.registry.feature_services["picked"].features == (
            "user_stats:spend",
            "doubled:spend_x2",
        )
        store.materialize(now - timedelta(days=2), now)
        got = store.get_online_features("picked", {"user_id": [1, 2]})
        d = got.to_dict()
        assert d["spend"] == [16 * 1.5, 17 * 1.5]  # user 1's newest row is row 16, user 2's 17
        assert d["spend_x2"] == [2 * v for v in d["spend"]]
        df = got.to_df()  # pandas, as Feast's online response gives
        assert type(df).__module__.startswith("pandas")
        assert list(df.columns) == list(d)
        assert df["spend_x2"].tolist() == d["spend_x2"]


def test_a_projection_names_an_unknown_feature_and_its_view() -> None:
    view = FeatureView(
        name="user_stats",
        entities=[Entity("user", join_keys=["user_id"])],
        source=ParquetSource("data/users.parquet"),
        schema=[Field("clicks", Int64), Field("spend", Float64)],
    )
    assert FeatureService(name="s", features=[view[["clicks"]]]).features == ("user_stats:clicks",)
    assert FeatureService(name="s", features=[view["spend"]]).features == ("user_stats:spend",)
    with pytest.raises(
        FeatureNotFoundError, match="feature view 'user_stats' has no feature 'nope'"
    ):
        view[["clicks", "nope"]]  # type: ignore[index]
    with pytest.raises(DefinitionError, match="give a list of its feature names"):
        view[[]]  # type: ignore[index]
    with pytest.raises(DefinitionError, match="neither a feature view"):
        FeatureService(name="s", features=[42])


def test_a_ttl_of_zero_says_none_means_never_expiring(make_repo: Callable[..., Path]) -> None:
    repo = make_repo(defs=DEFS.replace('ttl="1d"', "ttl=timedelta(0)").replace(
        "from featurestore import", "from datetime import timedelta\nfrom featurestore import", 1
    ))  # fmt: skip
    with FeatureStore(repo) as store, pytest.raises(DefinitionError) as info:
        store.apply()
    assert "a ttl must be positive, or None for rows that never expire" in str(info.value)


def test_a_push_carrying_the_sources_created_column_says_why_it_is_refused(
    make_repo: Callable[..., Path],
) -> None:
    from featurestore.errors import FeatureStoreError

    repo = make_repo()
    with FeatureStore(repo) as store:
        store.apply()
        now = datetime.now(timezone.utc)
        row = {"user_id": [1], "event_timestamp": [now], "clicks": [3], "spend": [1.0]}
        with pytest.raises(FeatureStoreError) as info:
            store.push("user_stats", {**row, "created": [now]})  # as Feast's push frames have
        msg = str(info.value)
        assert "'created' is the created timestamp of feature view 'user_stats''s source" in msg
        assert "which a push sets itself" in msg and "leave the column out" in msg
        store.push("user_stats", row)  # without it the same row is taken
        assert store.get_online_features("user_stats:clicks", {"user_id": [1]}).to_dict()[
            "clicks"
        ] == [3]


def test_a_source_emptied_with_untyped_keys_is_named_in_training_sets(
    make_repo: Callable[..., Path],
) -> None:
    import polars as pl
    import pyarrow as pa
    import pyarrow.parquet as pq

    from featurestore.errors import FeatureStoreError

    repo = make_repo()
    with FeatureStore(repo) as store:
        store.apply()
        # the data cleared, as pandas writes an empty frame: the key column's type is null
        ts = pa.timestamp("us", tz="UTC")
        empty = pa.table(
            {
                "user_id": pa.array([], pa.null()),
                "event_timestamp": pa.array([], ts),
                "created": pa.array([], ts),
                "clicks": pa.array([], pa.int64()),
                "spend": pa.array([], pa.float64()),
            }
        )
        pq.write_table(empty, repo / "data" / "users.parquet")
        spine = pl.DataFrame({"user_id": [1], "event_timestamp": [datetime.now(timezone.utc)]})
        with pytest.raises(FeatureStoreError) as info:
            store.get_historical_features(spine, ["user_stats:clicks"])
    msg = str(info.value)
    assert "its source's join-key column 'user_id' has no type" in msg
    assert "cast the column to null" not in msg


def test_apply_with_objects_says_it_reads_the_definition_files(
    make_repo: Callable[..., Path],
) -> None:
    repo = make_repo()
    with FeatureStore(repo) as store:
        user = Entity("user", join_keys=["user_id"])
        with pytest.raises(TypeError, match="apply\\(\\) takes no objects: it reads the repo's"):
            store.apply([user])  # Feast's store.apply([entity, view, ...])
        assert not store.apply().empty  # the files, as always
        assert "user_stats" in store.registry.feature_views
