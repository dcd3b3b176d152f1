"""Point-in-time join: edge cases by hand, output shape and types, errors."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import polars as pl
import pyarrow as pa
import pytest

from featurestore.entity import Entity
from featurestore.errors import (
    EntityDataError,
    FeatureNotFoundError,
    FeatureStoreError,
    OfflineStoreError,
)
from featurestore.feature_view import FeatureView
from featurestore.field import Field
from featurestore.offline import OfflineStore
from featurestore.sources import DuckDBSource, ParquetSource
from featurestore.types import Array, Bool, Float32, Float64, Int64, String, UnixTimestamp

SEC = 1_000_000
DAY = 86_400 * SEC
T0 = 1_704_067_200 * SEC  # 2024-01-01 UTC


def _view(name: str, user: Entity, path: str, fields: list[Field], **kw: object) -> FeatureView:
    created = kw.pop("created", None)
    return FeatureView(
        name=name,
        entities=[user],
        source=ParquetSource(path, created_timestamp_field=created),  # type: ignore[arg-type]
        schema=fields,
        **kw,  # type: ignore[arg-type]
    )


def _spine(kit: SimpleNamespace, keys: list[object], times: list[int]) -> pa.Table:
    return pa.table({"user_id": keys, "event_timestamp": kit.ts_array(times)})


def test_ttl_edge_is_inclusive_and_one_microsecond_past_is_null(
    kit: SimpleNamespace, repo: Path, store: OfflineStore, user: Entity
) -> None:
    kit.write_parquet(
        repo / "data/u.parquet",
        {"user_id": [1], "event_timestamp": kit.ts_array([T0]), "x": [1.5]},
    )
    v = _view("u", user, "data/u.parquet", [Field("x", Float64)], ttl="1d")
    times = [T0 - 1, T0, T0 + DAY, T0 + DAY + 1]
    df = store.get_historical_features(_spine(kit, [1] * 4, times), [(v, ["x"])])
    assert df["x"].to_list() == [None, 1.5, 1.5, None]


def test_created_timestamp_breaks_ties_and_null_created_loses(
    kit: SimpleNamespace, repo: Path, store: OfflineStore, user: Entity
) -> None:
    kit.write_parquet(
        repo / "data/u.parquet",
        {
            "user_id": [1, 1, 1, 2, 2],
            "event_timestamp": kit.ts_array([T0, T0, T0, T0, T0]),
            "created": kit.ts_array([T0 + 5, T0 + 9, T0 + 1, None, T0]),
            "x": [5.0, 9.0, 1.0, 0.0, 2.0],
        },
    )
    v = _view("u", user, "data/u.parquet", [Field("x", Float64)], created="created")
    df = store.get_historical_features(_spine(kit, [1, 2], [T0, T0]), [(v, ["x"])])
    assert df["x"].to_list() == [9.0, 2.0]
    # as it was known at T0 + 6: the row written at T0 + 9 did not exist yet
    df = store.get_historical_features(
        _spine(kit, [1, 1, 1], [T0 + 6, T0 + 9, T0]), [(v, ["x"])], as_known=True
    )
    assert df["x"].to_list() == [5.0, 9.0, None]


def test_defaults_fill_missing_and_expired_but_not_matched_nulls(
    kit: SimpleNamespace, repo: Path, store: OfflineStore, user: Entity
) -> None:
    kit.write_parquet(
        repo / "data/u.parquet",
        {"user_id": [1, 2], "event_timestamp": kit.ts_array([T0, T0]), "x": [None, 3.0]},
    )
    v = _view("u", user, "data/u.parquet", [Field("x", Float64, default=-1.0)], ttl="1h")
    spine = _spine(kit, [1, 2, 3, None, 2, 2], [T0, T0, T0, T0, T0 - 1, T0 + 3_600 * SEC + 1])
    df = store.get_historical_features(spine, [(v, ["x"])])
    assert df["x"].to_list() == [None, 3.0, -1.0, -1.0, -1.0, -1.0]


def test_spine_columns_order_and_duplicate_rows_are_kept(
    kit: SimpleNamespace, repo: Path, store: OfflineStore, user: Entity
) -> None:
    kit.write_parquet(
        repo / "data/u.parquet",
        {"user_id": [1, 2], "event_timestamp": kit.ts_array([T0, T0]), "x": [1.0, 2.0]},
    )
    v = _view("u", user, "data/u.parquet", [Field("x", Float64)])
    spine = pl.DataFrame(
        {
            "label": ["c", "a", "b", "b"],
            "event_timestamp": [datetime(2024, 1, 2)] * 4,
            "user_id": [2, 1, 2, 2],
            "weight": [0.1, 0.2, 0.3, 0.3],
        }
    )
    df = store.get_historical_features(spine, [(v, ["x"])])
    assert df.columns == ["label", "event_timestamp", "user_id", "weight", "x"]
    assert df.drop("x").equals(spine)
    assert df["x"].to_list() == [2.0, 1.0, 2.0, 2.0]


def test_several_views_with_different_ttls_and_full_names(
    kit: SimpleNamespace, repo: Path, store: OfflineStore, user: Entity
) -> None:
    for name, x in (("a", 1.0), ("b", 2.0)):
        kit.write_parquet(
            repo / f"data/{name}.parquet",
            {"user_id": [1], "event_timestamp": kit.ts_array([T0]), "x": [x]},
        )
    va = _view("va", user, "data/a.parquet", [Field("x", Float64)], ttl="1h")
    vb = _view("vb", user, "data/b.parquet", [Field("x", Float64)], ttl="2h")
    spine = _spine(kit, [1, 1, 1], [T0, T0 + 90 * 60 * SEC, T0 + 3 * 3_600 * SEC])
    df = store.get_historical_features(spine, [(va, ["x"]), (vb, ["x"])], full_feature_names=True)
    assert df["va__x"].to_list() == [1.0, None, None]
    assert df["vb__x"].to_list() == [2.0, 2.0, None]
    with pytest.raises(FeatureStoreError, match="full_feature_names=True"):
        store.get_historical_features(spine, [(va, ["x"]), (vb, ["x"])])


def test_feature_name_clashing_with_spine_column_is_refused(
    kit: SimpleNamespace, repo: Path, store: OfflineStore, user: Entity
) -> None:
    kit.write_parquet(
        repo / "data/u.parquet", {"user_id": [1], "event_timestamp": kit.ts_array([T0]), "x": [1.0]}
    )
    v = _view("u", user, "data/u.parquet", [Field("x", Float64)])
    spine = _spine(kit, [1], [T0]).append_column("x", pa.array([0]))
    with pytest.raises(FeatureStoreError, match="'x' would overwrite"):
        store.get_historical_features(spine, [(v, ["x"])])


def test_unknown_feature_names_the_view_features(
    kit: SimpleNamespace, repo: Path, store: OfflineStore, user: Entity
) -> None:
    v = _view("u", user, "data/u.parquet", [Field("x", Float64)])
    with pytest.raises(FeatureNotFoundError, match="'u' has no feature 'y'; it has x"):
        store.get_historical_features(_spine(kit, [1], [T0]), [(v, ["y"])])


def test_declared_types_are_cast(
    kit: SimpleNamespace, repo: Path, store: OfflineStore, user: Entity
) -> None:
    kit.write_parquet(
        repo / "data/u.parquet",
        {
            "user_id": pa.array([1], pa.int32()),
            "event_timestamp": pa.array([T0 // 1000], pa.timestamp("ms", tz="Europe/Paris")),
            "i": pa.array([3], pa.int32()),
            "f": pa.array([2], pa.int64()),
            "b": [True],
            "s": pa.array(["hi"], pa.string()),
            "seen": pa.array([T0 - 5], pa.int64()),
            "seen2": pa.array([(T0 - 7) * 1000], pa.timestamp("ns")),
            "emb": pa.array([[1.0, 2.0]], pa.list_(pa.float64())),
        },
    )
    fields = [
        Field("i", Int64),
        Field("f", Float32),
        Field("b", Bool),
        Field("s", String),
        Field("seen", UnixTimestamp),
        Field("seen2", UnixTimestamp),
        Field("emb", Array(Float32)),
    ]
    v = _view("u", user, "data/u.parquet", fields)
    assert store.validate_view(v) == []
    df = store.get_historical_features(_spine(kit, [1, 9], [T0, T0]), [(v, [])])
    assert df.schema["i"] == pl.Int64
    assert df.schema["f"] == pl.Float32
    assert df.schema["b"] == pl.Boolean
    assert df.schema["s"] == pl.String
    assert df.schema["seen"] == pl.Datetime("us", "UTC")
    assert df.schema["emb"] == pl.List(pl.Float32)
    row = df.row(0, named=True)
    assert row["i"] == 3 and row["f"] == 2.0 and row["b"] is True and row["s"] == "hi"
    assert int(df["seen"].dt.epoch("us")[0]) == T0 - 5
    assert int(df["seen2"].dt.epoch("us")[0]) == T0 - 7
    assert row["emb"] == [1.0, 2.0]
    assert df.row(1) == (9, datetime(2024, 1, 1), None, None, None, None, None, None, None)


def test_int_microsecond_event_timestamps_and_composite_keys(
    kit: SimpleNamespace, repo: Path, store: OfflineStore
) -> None:
    ent = Entity("pair", ["a", "b"])
    kit.write_parquet(
        repo / "data/p.parquet",
        {"a": [1, 1], "b": ["x", "y"], "ts": pa.array([T0, T0 + 1], pa.int64()), "v": [10, 20]},
    )
    view = FeatureView(
        name="p",
        entities=[ent],
        source=ParquetSource("data/p.parquet", timestamp_field="ts"),
        schema=[Field("v", Int64)],
    )
    spine = pa.table(
        {"a": [1, 1, 1], "b": ["y", "x", "y"], "event_timestamp": kit.ts_array([T0 + 1, T0, T0])}
    )
    df = store.get_historical_features(spine, [(view, ["v"])])
    assert df["v"].to_list() == [20, 10, None]


def test_duckdb_source_reads_a_relative_parquet_path(
    kit: SimpleNamespace, repo: Path, store: OfflineStore, user: Entity
) -> None:
    kit.write_parquet(
        repo / "data/raw.parquet",
        {"user_id": [1, 1], "event_timestamp": kit.ts_array([T0, T0 + 5]), "amount": [2.0, 3.0]},
    )
    src = DuckDBSource("SELECT user_id, event_timestamp, amount * 2 AS dbl FROM 'data/raw.parquet'")
    view = FeatureView(name="d", entities=[user], source=src, schema=[Field("dbl", Float64)])
    assert store.validate_view(view) == []
    assert store.source_schema(src).names == ["user_id", "event_timestamp", "dbl"]
    df = store.get_historical_features(_spine(kit, [1, 1], [T0 + 4, T0 + 5]), [(view, ["dbl"])])
    assert df["dbl"].to_list() == [4.0, 6.0]


def test_empty_spine_gives_empty_frame_with_all_columns(
    kit: SimpleNamespace, repo: Path, store: OfflineStore, user: Entity
) -> None:
    kit.write_parquet(
        repo / "data/u.parquet", {"user_id": [1], "event_timestamp": kit.ts_array([T0]), "x": [1.0]}
    )
    v = _view("u", user, "data/u.parquet", [Field("x", Float64, default=0.0)])
    spine = pa.table({"user_id": pa.array([], pa.int64()), "event_timestamp": kit.ts_array([])})
    df = store.get_historical_features(spine, [(v, ["x"])])
    assert df.height == 0 and df.columns == ["user_id", "event_timestamp", "x"]
    assert df.schema["x"] == pl.Float64


def test_progress_bar_names_each_view(
    kit: SimpleNamespace,
    repo: Path,
    store: OfflineStore,
    user: Entity,
    capsys: pytest.CaptureFixture[str],
) -> None:
    kit.write_parquet(
        repo / "data/u.parquet", {"user_id": [1], "event_timestamp": kit.ts_array([T0]), "x": [1.0]}
    )
    v = _view("user_stats", user, "data/u.parquet", [Field("x", Float64)])
    store.get_historical_features(_spine(kit, [1], [T0]), [(v, ["x"])], progress=True)
    err = capsys.readouterr().err
    assert "point-in-time join" in err and "user_stats" in err and "1/1" in err


def test_key_type_mismatch_and_unreadable_source_are_clear_errors(
    kit: SimpleNamespace, repo: Path, store: OfflineStore, user: Entity
) -> None:
    kit.write_parquet(
        repo / "data/u.parquet", {"user_id": [1], "event_timestamp": kit.ts_array([T0]), "x": [1.0]}
    )
    v = _view("u", user, "data/u.parquet", [Field("x", Float64)])
    spine = pa.table({"user_id": ["1"], "event_timestamp": kit.ts_array([T0])})
    with pytest.raises(EntityDataError, match="'user_id' holds string values but feature view 'u'"):
        store.get_historical_features(spine, [(v, ["x"])])
    gone = _view("gone", user, "data/missing.parquet", [Field("x", Float64)])
    with pytest.raises(OfflineStoreError, match=r"feature view 'gone'.*missing\.parquet"):
        store.get_historical_features(_spine(kit, [1], [T0]), [(gone, ["x"])])
