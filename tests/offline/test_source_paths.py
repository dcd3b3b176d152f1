"""What a Parquet source's path names: a file whatever its suffix, a folder even one named
``x.parquet``, and a folder with no file yet (one waiting for offline pushes) reads as zero
rows while a folder that is not there is an apply error naming it."""

from __future__ import annotations

import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import polars as pl
import pyarrow as pa
import pytest

from featurestore.entity import Entity
from featurestore.errors import DefinitionError, OfflineStoreError
from featurestore.feature_view import FeatureView
from featurestore.field import Field
from featurestore.offline import OfflineStore
from featurestore.sources import ParquetSource, StreamSource
from featurestore.store import FeatureStore
from featurestore.types import Float64, Int64, String

T0 = 1_767_268_800_000_000  # 2026-01-01 12:00 UTC in us
UTC = timezone.utc


def _view(user: Entity, path: str, fields: list[Field] | None = None) -> FeatureView:
    return FeatureView(
        name="v",
        entities=[user],
        source=ParquetSource(path),
        schema=fields or [Field("a", Int64)],
    )


def _spine(keys: list[int], ts: list[int]) -> pa.Table:
    return pa.table(
        {"user_id": keys, "event_timestamp": pa.array(ts, pa.int64()).cast(pa.timestamp("us"))}
    )


def _rows(kit: SimpleNamespace, keys: list[int], ts: list[int], a: list[int]) -> dict:
    return {"user_id": keys, "event_timestamp": kit.ts_array(ts), "a": a}


@pytest.mark.parametrize("name", ["data/v.pq", "data/v", "data/v.parquet.bak"])
def test_an_existing_file_is_read_as_a_file_whatever_its_suffix(
    kit: SimpleNamespace, repo: Path, store: OfflineStore, user: Entity, name: str
) -> None:
    kit.write_parquet(repo / name, _rows(kit, [1, 2], [T0, T0], [10, 20]))
    view = _view(user, name)
    assert store.validate_view(view) == []
    df = store.get_historical_features(_spine([2, 1, 3], [T0] * 3), [(view, ["a"])])
    assert df["a"].to_list() == [20, 10, None]


def test_a_folder_named_like_a_file_is_read_as_a_folder(
    kit: SimpleNamespace, repo: Path, store: OfflineStore, user: Entity
) -> None:
    kit.write_parquet(repo / "data/v.parquet/part-0.parquet", _rows(kit, [1], [T0], [10]))
    kit.write_parquet(repo / "data/v.parquet/part-1.parquet", _rows(kit, [2], [T0], [20]))
    view = _view(user, "data/v.parquet")
    assert store.validate_view(view) == []
    df = store.get_historical_features(_spine([1, 2], [T0, T0]), [(view, ["a"])])
    assert df["a"].to_list() == [10, 20]


def test_a_folder_with_no_file_yet_reads_as_zero_rows_until_a_file_lands(
    kit: SimpleNamespace, repo: Path, store: OfflineStore, user: Entity
) -> None:
    (repo / "data/pushed/sub").mkdir(parents=True)
    (repo / "data/pushed/notes.txt").write_text("not parquet")
    fields = [Field("a", Int64, default=-1), Field("s", String), Field("x", Float64)]
    view = _view(user, "data/pushed", fields)
    assert store.validate_view(view) == []
    spine = _spine([1, 2], [T0, T0 + 5])
    df = store.get_historical_features(spine, [(view, [])])
    assert df.columns == ["user_id", "event_timestamp", "a", "s", "x"]
    assert df["a"].to_list() == [-1, -1]  # the default: no row
    assert df["s"].to_list() == [None, None] and df["x"].to_list() == [None, None]
    assert df.schema["s"] == pl.String and df.schema["x"] == pl.Float64
    assert list(store.iter_latest_rows(view, 0, T0 * 2)) == []
    assert store.count_latest_rows(view, 0, T0 * 2) == 0

    kit.write_parquet(
        repo / "data/pushed/sub/push-1.parquet",
        {**_rows(kit, [1], [T0], [10]), "s": ["hi"], "x": [1.5]},
    )
    df = store.get_historical_features(spine, [(view, [])])
    assert df["a"].to_list() == [10, -1] and df["s"].to_list() == ["hi", None]
    assert store.count_latest_rows(view, 0, T0 * 2) == 1


def test_an_empty_folder_still_checks_the_types_its_stream_source_declares(
    repo: Path, store: OfflineStore, user: Entity
) -> None:
    (repo / "data/clicks").mkdir()
    src = StreamSource(
        name="clicks",
        batch_source=ParquetSource("data/clicks"),
        schema=[Field("user_id", Int64), Field("a", String)],
    )
    view = FeatureView(name="v", entities=[user], source=src, schema=[Field("a", Int64)])
    assert store.validate_view(view) == [
        "feature view 'v': column 'a' is string in source 'clicks' but declared int64; "
        "change the Field dtype or cast the column in the source"
    ]
    assert store.source_schema(src).names == ["user_id", "a", "event_timestamp"]


def test_a_missing_folder_is_an_error_naming_it(
    repo: Path, store: OfflineStore, user: Entity
) -> None:
    (problem,) = store.validate_view(_view(user, "data/nowhere"))
    assert problem == (
        f"feature view 'v': source 'data/nowhere' is unreadable: folder "
        f"'{repo.resolve() / 'data/nowhere'}' does not exist; check the path, or create the "
        "folder if offline pushes or stream ingest fill it"
    )
    with pytest.raises(OfflineStoreError, match="'data/nowhere' is unreadable"):
        store.get_historical_features(_spine([1], [T0]), [(_view(user, "data/nowhere"), [])])


DEFS = """
from featurestore import Entity, FeatureView, Field, Int64, ParquetSource

user = Entity("user", join_keys=["user_id"])
v = FeatureView(name="v", entities=[user], source=ParquetSource("data/{folder}"),
                schema=[Field("a", Int64)])
"""


def _repo(root: Path, folder: str) -> Path:
    (root / "data").mkdir(parents=True)
    (root / "featurestore.yaml").write_text(
        "project: paths\nonline_store:\n  type: embedded\n  path: data/online\n"
    )
    (root / "definitions.py").write_text(textwrap.dedent(DEFS.format(folder=folder)))
    return root


def test_a_push_only_view_applies_materializes_nothing_then_serves_its_pushes(
    tmp_path: Path,
) -> None:
    root = _repo(tmp_path / "repo", "pushed")
    (root / "data/pushed").mkdir()
    t0 = datetime(2026, 1, 1, 12, tzinfo=UTC)
    spine = pl.DataFrame({"user_id": [1, 2], "event_timestamp": [t0 + timedelta(hours=1)] * 2})
    with FeatureStore(root) as store:
        store.apply()
        assert store.get_historical_features(spine, ["v:a"])["a"].to_list() == [None, None]
        assert store.materialize(t0 - timedelta(days=1), t0 + timedelta(days=1)).rows == {"v": 0}
        store.push("v", [{"user_id": 1, "a": 7, "event_timestamp": t0}], to="offline")
        assert store.get_historical_features(spine, ["v:a"])["a"].to_list() == [7, None]


def test_apply_refuses_a_missing_folder_in_one_line(tmp_path: Path) -> None:
    root = _repo(tmp_path / "repo", "typo")
    with FeatureStore(root) as store, pytest.raises(DefinitionError) as err:
        store.apply()
    msg = str(err.value)
    assert "\n" not in msg
    assert "feature view 'v': source 'data/typo' is unreadable: folder" in msg
    assert "does not exist" in msg
