"""Field defaults serve the same value offline and online: Float32 ones as float32 numbers,
Bytes ones through the registry, timestamp ones given as datetimes. And apply refuses a repo
with no definitions file rather than removing every view."""

from __future__ import annotations

import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore import Array, Bytes, DefinitionError, FeatureStore, Field, Float32, Int64
from featurestore.types import UnixTimestamp
from tests.conftest import online_config

NOW = datetime.now(timezone.utc).replace(microsecond=0)

DEFS = """
from datetime import datetime, timezone
from featurestore import (Array, Bytes, Entity, FeatureView, Field, Float32, ParquetSource,
                          UnixTimestamp)

user = Entity("user", join_keys=["user_id"])
u = FeatureView(
    name="u", entities=[user], source=ParquetSource("data/u.parquet"), ttl="30d",
    schema=[
        Field("f", Float32, default=0.1),
        Field("fa", Array(Float32), default=[0.1, 2.5e-8]),
        Field("b", Bytes, default=b"\\x00\\xff"),
        Field("t", UnixTimestamp, default=datetime(2024, 5, 1, 12, tzinfo=timezone.utc)),
    ],
)
"""


def _repo(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array([1], pa.int64()),
                "event_timestamp": pa.array([NOW - timedelta(hours=1)], pa.timestamp("us", "UTC")),
                "f": pa.array([0.25], pa.float32()),
                "fa": pa.array([[1.5]], pa.list_(pa.float32())),
                "b": pa.array([b"x"], pa.binary()),
                "t": pa.array([NOW], pa.timestamp("us", "UTC")),
            }
        ),
        tmp_path / "data" / "u.parquet",
    )
    (tmp_path / "definitions.py").write_text(textwrap.dedent(DEFS))
    return tmp_path


def test_defaults_are_the_same_value_online_and_offline(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    refs = ["u:f", "u:fa", "u:b", "u:t"]
    with FeatureStore(config=online_config("embedded", repo)) as store:
        store.apply()
        store.materialize(NOW - timedelta(days=1), NOW)
        online = store.get_online_features(refs, {"user_id": [2]}).to_dict()
        spine = pl.DataFrame({"user_id": [2], "event_timestamp": [NOW]}).with_columns(
            pl.col("event_timestamp").dt.cast_time_unit("us")
        )
        offline = store.get_historical_features(spine, refs).to_dict(as_series=False)
    assert online["f"] == offline["f"] == [float(np.float32(0.1))]
    assert online["fa"] == offline["fa"] == [[float(np.float32(0.1)), float(np.float32(2.5e-8))]]
    assert online["b"] == offline["b"] == [b"\x00\xff"]
    when = datetime(2024, 5, 1, 12, tzinfo=timezone.utc)
    assert [v.replace(tzinfo=timezone.utc) for v in offline["t"]] == [when]
    assert [v.replace(tzinfo=timezone.utc) for v in online["t"]] == [when]


def test_a_bytes_default_survives_the_registry(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    with FeatureStore(config=online_config("embedded", repo)) as store:
        store.apply()
    with FeatureStore(config=online_config("embedded", repo)) as again:
        assert again.get_feature_view("u").field("b").default == b"\x00\xff"
        assert again.plan().empty


def test_field_round_trips_its_default_through_a_dict() -> None:
    for f in (
        Field("b", Bytes, default=b"\x00\xff"),
        Field("f", Float32, default=0.1),
        Field("a", Array(Float32), default=[1.0]),
        Field("i", Int64, default=3),
    ):
        assert Field.from_dict(f.to_dict()) == f
    stamped = Field("t", UnixTimestamp, default=datetime(2024, 5, 1, 12, tzinfo=timezone.utc))
    assert stamped.default == 1_714_564_800_000_000  # stored as microseconds, as data is
    assert Field("f", Float32, default=0.1).served_default == float(np.float32(0.1))


def test_apply_without_a_definitions_file_removes_nothing(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    with FeatureStore(config=online_config("embedded", repo)) as store:
        store.apply()
        store.materialize(NOW - timedelta(days=1), NOW)
    (repo / "definitions.py").rename(repo / "_old_definitions.py")
    with FeatureStore(config=online_config("embedded", repo)) as store:
        with pytest.raises(DefinitionError, match=r"no definitions file in .*add one") as err:
            store.apply()
        assert "\n" not in str(err.value)
        assert store.get_online_features(["u:f"], {"user_id": [1]}).to_dict()["f"] == [0.25]
