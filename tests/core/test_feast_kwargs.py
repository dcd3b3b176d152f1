"""Feast's keyword names work on FeatureStore: ``materialize(start_date=, end_date=,
feature_views=)``, ``materialize_incremental(end_date=, feature_views=)``, ``push(df=)``;
positional calls are unchanged and one argument given under both names is a TypeError."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from featurestore import FeatureStore
from tests.core.conftest import DEFS, write_users

TWO_VIEWS = (
    DEFS
    + """
user_more = FeatureView(
    name="user_more",
    entities=[user],
    source=ParquetSource("data/users.parquet", created_timestamp_field="created"),
    ttl="1d",
    schema=[Field("clicks", Int64, default=0)],
)
"""
)
# rows an hour apart from T0, the last an hour ago: all within the views' ttl of now
T0 = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0) - timedelta(hours=20)
END = T0 + timedelta(hours=19, minutes=30)


@pytest.fixture
def store(make_repo: Callable[..., Path]) -> Iterator[FeatureStore]:
    repo = make_repo(defs=TWO_VIEWS)
    write_users(repo / "data" / "users.parquet", t0=T0)
    s = FeatureStore(repo)
    s.apply()
    yield s
    s.close()


def test_materialize_takes_feasts_keywords(store: FeatureStore) -> None:
    got = store.materialize(start_date=T0, end_date=END, feature_views=["user_more"])
    assert got.rows == {"user_more": 5}
    assert got.start_us == int(T0.timestamp() * 1e6) and got.end_us == int(END.timestamp() * 1e6)
    same = store.materialize(T0, END, views=["user_more"])  # positional calls as before
    assert (same.rows, same.start_us, same.end_us) == (got.rows, got.start_us, got.end_us)
    assert store.materialize(T0, end_date=END).rows == {"user_stats": 5, "user_more": 5}


def test_materialize_incremental_takes_feasts_keywords(store: FeatureStore) -> None:
    got = store.materialize_incremental(end_date=END, feature_views=["user_stats"])
    assert list(got.rows) == ["user_stats"] and got.rows["user_stats"] == 5
    assert got.end_us == int(END.timestamp() * 1e6)
    later = store.materialize_incremental(END)  # positional as before
    assert later.rows == {"user_stats": 0, "user_more": 5}
    online = store.get_online_features("user_stats:clicks", {"user_id": [4]})
    assert online.to_dict()["clicks"] == [19]


@pytest.mark.parametrize(
    ("call", "ours", "feasts"),
    [
        (lambda s: s.materialize(T0, END, start_date=T0), "start", "start_date"),
        (lambda s: s.materialize(T0, END, end_date=END), "end", "end_date"),
        (lambda s: s.materialize(T0, END, views=["a"], feature_views=["a"]), "views", "feature_views"),
        (lambda s: s.materialize_incremental(END, end_date=END), "end", "end_date"),
        (lambda s: s.materialize_incremental(END, views=[], feature_views=[]), "views", "feature_views"),
        (lambda s: s.push("user_stats", {"user_id": [1]}, df={"user_id": [1]}), "rows", "df"),
    ],
)  # fmt: skip
def test_one_argument_under_both_names_is_a_type_error_naming_both(
    store: FeatureStore, call: Callable[[FeatureStore], object], ours: str, feasts: str
) -> None:
    with pytest.raises(TypeError, match=f"got both '{ours}' and '{feasts}'"):
        call(store)


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda s: s.materialize(end_date=END), "'start' (or 'start_date')"),
        (lambda s: s.materialize(T0), "'end' (or 'end_date')"),
        (lambda s: s.materialize_incremental(), "'end' (or 'end_date')"),
        (lambda s: s.push("user_stats"), "'rows' (or 'df')"),
    ],
)
def test_a_missing_argument_names_both_spellings(
    store: FeatureStore, call: Callable[[FeatureStore], object], needle: str
) -> None:
    with pytest.raises(TypeError, match=re.escape(f"missing required argument {needle}")):
        call(store)


def test_push_takes_feasts_df(store: FeatureStore) -> None:
    rows = {"user_id": [7], "clicks": [41], "spend": [2.5]}  # stamped now
    assert store.push("user_stats", df=rows) == 1
    online = store.get_online_features("user_stats:clicks", {"user_id": [7]})
    assert online.to_dict()["clicks"] == [41]
