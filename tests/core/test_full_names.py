"""Apply refuses definitions whose full feature names (``view__feature``) collide: two features
with one full name, or a join key named like one. Either would make one column overwrite
another in a training set or an online answer with full feature names."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from featurestore import DefinitionError, FeatureStore

from .conftest import T0

HEAD = """
from featurestore import Entity, FeatureView, Field, Float64, Int64, ParquetSource

user = Entity("user", join_keys=[{key!r}])
src = ParquetSource("data/users.parquet", created_timestamp_field="created")
"""


def _repo(make_repo: Callable[..., Path], key: str, views: str) -> Path:
    repo = make_repo(HEAD.format(key=key) + views)
    if key != "user_id":  # the data's join-key column under the entity's name
        path = repo / "data" / "users.parquet"
        t = pq.read_table(path)
        pq.write_table(
            t.rename_columns([key if c == "user_id" else c for c in t.column_names]), path
        )
    return repo


def test_two_features_with_one_full_name_fail_at_apply(make_repo: Callable[..., Path]) -> None:
    repo = _repo(
        make_repo,
        "user_id",
        """
x = FeatureView(name="x", entities=[user], source=src, ttl="1d",
                schema=[Field("clicks__spend", Float64)])
x__clicks = FeatureView(name="x__clicks", entities=[user], source=src, ttl="1d",
                        schema=[Field("spend", Float64)])
""",
    )
    with pytest.raises(DefinitionError) as err:
        FeatureStore(repo).apply()
    msg = str(err.value)
    assert "'x:clicks__spend' and 'x__clicks:spend'" in msg and "'x__clicks__spend'" in msg
    assert "\n" not in msg


def test_a_join_key_named_like_a_full_feature_name_fails_at_apply(
    make_repo: Callable[..., Path],
) -> None:
    repo = _repo(
        make_repo,
        "x__clicks",
        """
x = FeatureView(name="x", entities=[user], source=src, ttl="1d",
                schema=[Field("clicks", Int64), Field("spend", Float64)])
""",
    )
    with pytest.raises(DefinitionError, match=r"entity 'user' has join key 'x__clicks', the full"):
        FeatureStore(repo).apply()


def test_double_underscores_without_a_collision_apply(make_repo: Callable[..., Path]) -> None:
    """Names with ``__`` are fine on their own: only a real collision is refused."""
    repo = _repo(
        make_repo,
        "user__id",
        """
x__y = FeatureView(name="x__y", entities=[user], source=src, ttl="1d",
                   schema=[Field("clicks", Int64), Field("spend", Float64)])
""",
    )
    store = FeatureStore(repo)
    store.apply()
    spine = pl.DataFrame(
        {"user__id": [1], "event_timestamp": [T0 + timedelta(hours=12)]}
    ).with_columns(pl.col("event_timestamp").dt.cast_time_unit("us"))
    out = store.get_historical_features(spine, ["x__y:clicks"], full_feature_names=True)
    assert list(out.to_dict())[-1] == "x__y__clicks"
