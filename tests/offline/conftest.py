"""Fixtures for the offline store tests: a repo folder, a store, and independent join oracles."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore.config import config_from_dict
from featurestore.entity import Entity
from featurestore.offline import OfflineStore

MISS = object()  # the oracle's "no usable row" marker (becomes the default or null)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    return tmp_path


@pytest.fixture
def store(repo: Path) -> Iterator[OfflineStore]:
    st = OfflineStore(config_from_dict({"project": "t"}, repo))
    yield st
    st.close()


@pytest.fixture
def user() -> Entity:
    return Entity("user", ["user_id"])


def write_parquet(path: Path, columns: dict[str, Any], schema: pa.Schema | None = None) -> Path:
    """Write a dict of columns (lists or Arrow arrays) as one Parquet file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns, schema=schema), path)
    return path


def ts_array(values: Sequence[int | None]) -> pa.Array:
    """int64 microseconds as a naive Arrow timestamp column (UTC by convention)."""
    return pa.array(values, type=pa.int64()).cast(pa.timestamp("us"))


def python_pit(
    rows: Sequence[dict[str, Any]],
    key: Any,
    t: int,
    ttl_us: int | None,
    *,
    as_known: bool = False,
) -> Any:
    """DESIGN.md section 3 as a slow loop: the row dict to use, or MISS.

    rows hold "key", "ev", "cr" (int us or None) and the values. Tie order: larger created
    timestamp wins, a null created timestamp loses; in as_known mode a row counts as known at
    coalesce(cr, ev).
    """
    if key is None:
        return MISS
    best = None
    for r in rows:
        if r["key"] is None or r["key"] != key or r["ev"] is None or r["ev"] > t:
            continue
        if as_known and (r["cr"] if r["cr"] is not None else r["ev"]) > t:
            continue
        rank = (r["ev"], r["cr"] is not None, r["cr"] or 0)
        if best is None or rank > best[0]:
            best = (rank, r)
    if best is None:
        return MISS
    if ttl_us is not None and t - best[1]["ev"] > ttl_us:
        return MISS
    return best[1]


def duckdb_asof(
    spine: pa.Table, source_path: Path, features: list[str], ttl_us: int | None, has_cr: bool
) -> dict[str, list[Any]]:
    """A hand-written DuckDB ASOF query (independent of the store's SQL), in spine order.

    The spine holds user_id, t (int64 us) and rid; the source user_id, event_timestamp,
    optional created, and the features. Returns feature -> values plus "__hit".
    """
    import duckdb

    con = duckdb.connect()
    con.register("sp", spine)
    dedupe = (
        "AND NOT EXISTS (SELECT 1 FROM src o WHERE o.user_id = i.user_id AND o.ev = i.ev AND "
        "coalesce(o.cr, -1) > coalesce(i.cr, -1))"
        if has_cr
        else ""
    )
    cr = "epoch_us(created)" if has_cr else "NULL::BIGINT"
    ok = "j.ev IS NOT NULL" + (f" AND sp.t - j.ev <= {ttl_us}" if ttl_us is not None else "")
    sel = ", ".join(f"CASE WHEN {ok} THEN j.{f} END AS {f}" for f in features)
    feats = ", ".join(features)
    sql = f"""
        WITH src AS (SELECT user_id, epoch_us(event_timestamp) AS ev, {cr} AS cr, {feats}
                     FROM read_parquet('{source_path}') WHERE event_timestamp IS NOT NULL),
             j AS (SELECT * FROM src i WHERE TRUE {dedupe})
        SELECT sp.rid, ({ok}) AS __hit, {sel}
        FROM sp ASOF LEFT JOIN j ON sp.user_id = j.user_id AND sp.t >= j.ev
        ORDER BY sp.rid"""
    out = con.sql(sql).fetchall()
    con.close()
    names = ["rid", "__hit", *features]
    return {n: [row[i] for row in out] for i, n in enumerate(names)}


@pytest.fixture(scope="session")
def kit() -> SimpleNamespace:
    """Helpers for tests (session-scoped so hypothesis tests may use it)."""
    return SimpleNamespace(
        MISS=MISS,
        write_parquet=write_parquet,
        ts_array=ts_array,
        python_pit=python_pit,
        duckdb_asof=duckdb_asof,
        new_store=new_store,
    )


def new_store(repo: Path) -> OfflineStore:
    """A store over ``repo`` (a folder); close it when done."""
    return OfflineStore(config_from_dict({"project": "t"}, repo))
