"""A source file that vanishes while a query reads it (push files merged and deleted by
`featurestore compact`) costs a rerun of the query, not a failed training set or materialize."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import duckdb
import pyarrow as pa
import pytest

import featurestore.offline.store as offline_store
from featurestore.entity import Entity
from featurestore.errors import OfflineStoreError
from featurestore.feature_view import FeatureView
from featurestore.field import Field
from featurestore.offline import OfflineStore
from featurestore.offline.store import VANISHED_RETRIES, fetch_table, vanished
from featurestore.sources import ParquetSource
from featurestore.types import Float64

T0 = 1_704_067_200_000_000
GONE = 'IO Error: Cannot open file "/repo/data/u/push-u-1-ab.parquet": No such file or directory'


class _Flaky:
    """A relation whose first ``fails`` runs raise ``error``; later runs return ``table``."""

    def __init__(self, fails: int, error: Exception, table: pa.Table) -> None:
        self.fails, self.error, self.table, self.runs = fails, error, table, 0

    def to_arrow_table(self) -> pa.Table:
        self.runs += 1
        if self.runs <= self.fails:
            raise self.error
        return self.table


def test_a_vanished_file_reruns_the_query() -> None:
    table = pa.table({"a": [1, 2]})
    rel = _Flaky(VANISHED_RETRIES - 1, duckdb.IOException(GONE), table)
    assert fetch_table(rel) is table
    assert rel.runs == VANISHED_RETRIES


def test_reruns_are_bounded_and_other_errors_are_not_retried() -> None:
    rel = _Flaky(VANISHED_RETRIES, duckdb.IOException(GONE), pa.table({}))
    with pytest.raises(duckdb.IOException, match="No such file"):
        fetch_table(rel)
    assert rel.runs == VANISHED_RETRIES
    denied = _Flaky(
        1, duckdb.IOException('IO Error: Cannot open file "x": Permission denied'), pa.table({})
    )
    with pytest.raises(duckdb.IOException, match="Permission denied"):
        fetch_table(denied)
    assert denied.runs == 1
    parse = _Flaky(1, duckdb.ParserException("No such file or directory"), pa.table({}))
    with pytest.raises(duckdb.ParserException):
        fetch_table(parse)
    assert parse.runs == 1


def test_duckdbs_own_missing_file_error_is_recognised(tmp_path: Path) -> None:
    """The message check follows DuckDB's real wording (a listed file that is gone)."""
    import pyarrow.parquet as pq

    here = tmp_path / "here.parquet"
    pq.write_table(pa.table({"a": [1]}), here)
    con = duckdb.connect()
    with pytest.raises(duckdb.Error) as info:
        con.sql(f"SELECT * FROM read_parquet(['{here}', '{tmp_path / 'gone.parquet'}'])").fetchall()
    assert vanished(info.value)
    assert not vanished(ValueError("No such file or directory"))


def _view() -> FeatureView:
    return FeatureView(
        name="u",
        entities=[Entity("user", ["user_id"])],
        source=ParquetSource("data/u/"),
        schema=[Field("x", Float64)],
    )


def _latest(store: OfflineStore, view: FeatureView) -> pa.Table:
    return pa.Table.from_batches(list(store.iter_latest_rows(view, T0, T0 + 100, batch_rows=2)))


def _three_users(kit: SimpleNamespace, repo: Path) -> None:
    """One source file: users 1-3, user 1 twice (its later row is the latest)."""
    kit.write_parquet(
        repo / "data/u/part-0.parquet",
        {
            "user_id": [1, 2, 3, 1],
            "event_timestamp": kit.ts_array([T0, T0 + 1, T0 + 2, T0 + 3]),
            "x": [1.0, 2.0, 3.0, 4.0],
        },
    )


def test_materialize_reads_rerun_when_a_file_vanished_before_any_row(
    kit: SimpleNamespace, repo: Path, store: OfflineStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    _three_users(kit, repo)
    view = _view()
    want = _latest(store, view)
    real = offline_store.fetch_reader
    opened: list[int] = []

    def flaky(rel: Any, batch_rows: int) -> Any:  # the first run's first read finds a file gone
        reader = real(rel, batch_rows)
        opened.append(1)
        if len(opened) > 1:
            return reader

        class Gone:
            schema = reader.schema

            def read_next_batch(self) -> Any:
                raise duckdb.IOException(GONE)

            def close(self) -> None:
                reader.close()

        return Gone()

    monkeypatch.setattr(offline_store, "fetch_reader", flaky)
    assert _latest(store, view).equals(want)
    assert len(opened) == 2


def test_a_file_vanishing_after_rows_were_handed_out_fails_clearly(
    kit: SimpleNamespace, repo: Path, store: OfflineStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows already written cannot be taken back, so a rerun would hand them out twice: the
    read fails, naming the view (materialize is safe to run again)."""
    kit.write_parquet(
        repo / "data/u/part-0.parquet",
        {
            "user_id": [1, 2, 3, 4],
            "event_timestamp": kit.ts_array([T0, T0 + 1, T0 + 2, T0 + 3]),
            "x": [1.0, 2.0, 3.0, 4.0],
        },
    )
    real = offline_store.fetch_reader
    opened: list[int] = []

    def flaky(rel: Any, batch_rows: int) -> Any:  # the first run loses a file after one batch
        reader = real(rel, 2)
        opened.append(1)
        if len(opened) > 1:
            return reader

        class GoneLater:
            schema = reader.schema
            reads = 0

            def read_next_batch(self) -> Any:
                self.reads += 1
                if self.reads == 1:
                    return reader.read_next_batch()
                raise duckdb.IOException(GONE)

            def close(self) -> None:
                reader.close()

        return GoneLater()

    monkeypatch.setattr(offline_store, "fetch_reader", flaky)
    with pytest.raises(OfflineStoreError, match="'u'"):
        _latest(store, _view())
    assert len(opened) == 1


def test_the_progress_count_reruns_when_a_file_vanished(
    kit: SimpleNamespace, repo: Path, store: OfflineStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    _three_users(kit, repo)
    runs: list[int] = []

    class GoneOnce:  # the count's first run finds a file gone; the rerun reads the folder
        def __init__(self, rel: Any) -> None:
            self.rel = rel

        def to_arrow_table(self) -> pa.Table:
            runs.append(1)
            if len(runs) == 1:
                raise duckdb.IOException(GONE)
            return self.rel.to_arrow_table()

    real_cursor = store.cursor

    def cursor() -> Any:
        cur = real_cursor()

        def sql(q: str) -> Any:
            return GoneOnce(cur.sql(q)) if q.startswith("SELECT count(*)") else cur.sql(q)

        return SimpleNamespace(sql=sql, close=cur.close)

    monkeypatch.setattr(store, "cursor", cursor)
    assert store.count_latest_rows(_view(), T0, T0 + 100) == 3
    assert len(runs) == 2
