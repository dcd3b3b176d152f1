"""The point-in-time join against two independent oracles on random data (DESIGN.md section 3)."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featurestore.entity import Entity
from featurestore.feature_view import FeatureView
from featurestore.field import Field
from featurestore.sources import ParquetSource
from featurestore.types import Float64, Int64, String

SEC = 1_000_000
T0 = 1_700_000_000 * SEC
USER = Entity("user", ["user_id"])

source_row = st.fixed_dictionaries(
    {
        "key": st.sampled_from([0, 1, 2, None]),
        "ev": st.one_of(st.integers(0, 4), st.none()),
        "cr": st.one_of(st.integers(0, 8), st.none()),
        "x": st.one_of(st.floats(-1e6, 1e6, allow_nan=False), st.none()),
        "n": st.one_of(st.integers(-5, 5), st.none()),
    }
)
# rows equal in key and both timestamps are a data error the join may resolve either way
rows_a = st.lists(
    source_row, min_size=4, max_size=25, unique_by=lambda r: (r["key"], r["ev"], r["cr"])
)
rows_b = st.lists(source_row, min_size=2, max_size=15, unique_by=lambda r: (r["key"], r["ev"]))
spine_rows = st.lists(
    st.tuples(
        st.sampled_from([0, 1, 2, 3, 4, None]), st.integers(-1, 11), st.sampled_from([-1, 0, 1])
    ),
    min_size=1,
    max_size=30,
)
ttls = st.sampled_from([None, 1, 2, 3])


def _us(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Row offsets (seconds) -> absolute microseconds, with the derived string feature."""
    out = []
    for r in rows:
        out.append(
            {
                **r,
                "ev": None if r["ev"] is None else T0 + r["ev"] * SEC,
                "cr": None if r["cr"] is None else T0 + r["cr"] * SEC,
                "s": None if r["n"] is None else f"s{r['n']}",
            }
        )
    return out


def _write_source(
    kit: SimpleNamespace, path: Path, rows: list[dict[str, Any]], has_cr: bool
) -> None:
    cols: dict[str, Any] = {
        "user_id": pa.array([r["key"] for r in rows], pa.int64()),
        "event_timestamp": kit.ts_array([r["ev"] for r in rows]),
        "x": pa.array([r["x"] for r in rows], pa.float64()),
        "n": pa.array([r["n"] for r in rows], pa.int64()),
        "s": pa.array([r["s"] for r in rows], pa.string()),
    }
    if has_cr:
        cols["created"] = kit.ts_array([r["cr"] for r in rows])
    kit.write_parquet(path, cols)


def _spine_input(table: pa.Table, kind: str, tz: str | None, folder: Path) -> Any:
    """The same spine as polars / pandas / pyarrow / a Parquet path, naive or tz-aware."""
    ts = table.column("event_timestamp").cast(pa.timestamp("us", tz=tz))
    table = table.set_column(1, "event_timestamp", ts)
    if kind == "arrow":
        return table
    if kind == "polars":
        import polars as pl

        return pl.from_arrow(table)
    if kind == "pandas":
        return table.to_pandas()
    path = folder / "spine.parquet"
    pq.write_table(table, path)
    return path


@settings(
    max_examples=70,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    a=rows_a,
    b=rows_b,
    free_spine=spine_rows,
    data=st.data(),
    ttl_a=ttls,
    ttl_b=ttls,
    as_known=st.booleans(),
    kind=st.sampled_from(["arrow", "polars", "pandas", "parquet"]),
    tz=st.sampled_from([None, "UTC", "Asia/Kolkata", "America/New_York"]),
)
def test_join_matches_python_loop_and_handwritten_asof(
    kit: SimpleNamespace,
    tmp_path_factory: pytest.TempPathFactory,
    a: list[dict[str, Any]],
    b: list[dict[str, Any]],
    free_spine: list[tuple[Any, int, int]],
    data: st.DataObject,
    ttl_a: int | None,
    ttl_b: int | None,
    as_known: bool,
    kind: str,
    tz: str | None,
) -> None:
    repo = Path(tempfile.mkdtemp(dir=tmp_path_factory.getbasetemp()))
    a = _us(a)
    b = [{**r, "cr": None} for r in _us(b)]  # view b's source has no created timestamp
    _write_source(kit, repo / "data/a.parquet", a, has_cr=True)
    _write_source(kit, repo / "data/b.parquet", b, has_cr=False)
    ttl_a_us = None if ttl_a is None else ttl_a * SEC
    ttl_b_us = None if ttl_b is None else ttl_b * SEC
    va = FeatureView(
        name="va",
        entities=[USER],
        source=ParquetSource("data/a.parquet", created_timestamp_field="created"),
        schema=[Field("x", Float64), Field("s", String, default="none")],
        ttl=None if ttl_a is None else f"{ttl_a}s",
    )
    vb = FeatureView(
        name="vb",
        entities=[USER],
        source=ParquetSource("data/b.parquet"),
        schema=[Field("n", Int64, default=7), Field("x", Float64, default=-1.5)],
        ttl=None if ttl_b is None else f"{ttl_b}s",
    )
    spine = [(k, T0 + j * SEC + d) for k, j, d in free_spine]
    spine += data.draw(_anchored_spine([(a, ttl_a_us), (b, ttl_b_us)]), label="anchored")
    spine = data.draw(st.permutations(spine), label="order")
    keys = [k for k, _ in spine]
    times = [t for _, t in spine]
    spine_table = pa.table(
        {
            "user_id": pa.array(keys, pa.int64()),
            "event_timestamp": kit.ts_array(times),
            "rid": pa.array(range(len(spine)), pa.int64()),
        }
    )
    store = kit.new_store(repo)
    try:
        df = store.get_historical_features(
            _spine_input(spine_table, kind, tz, repo),
            [(va, ["x", "s"]), (vb, ["n", "x"])],
            full_feature_names=True,
            as_known=as_known,
        )
    finally:
        store.close()

    assert df.columns == ["user_id", "event_timestamp", "rid", "va__x", "va__s", "vb__n", "vb__x"]
    assert df["rid"].to_list() == list(range(len(spine)))  # row order (and duplicates) kept
    got_keys = [
        None if v is None or (isinstance(v, float) and math.isnan(v)) else int(v)
        for v in df["user_id"].to_list()
    ]
    assert got_keys == keys

    for view_rows, ttl_us, prefix, feats, defaults in (
        (a, ttl_a_us, "va", ["x", "s"], {"s": "none"}),
        (b, ttl_b_us, "vb", ["n", "x"], {"n": 7, "x": -1.5}),
    ):
        for feat in feats:
            expected = []
            for key, t in zip(keys, times, strict=True):
                hit = kit.python_pit(view_rows, key, t, ttl_us, as_known=as_known)
                expected.append(defaults.get(feat) if hit is kit.MISS else hit[feat])
            assert df[f"{prefix}__{feat}"].to_list() == expected, (prefix, feat)

    if not as_known:
        asof_spine = pa.table(
            {
                "user_id": spine_table["user_id"],
                "t": pa.array(times, pa.int64()),
                "rid": spine_table["rid"],
            }
        )
        for path, ttl_us, prefix, feats, defaults, has_cr in (
            (repo / "data/a.parquet", ttl_a_us, "va", ["x", "s"], {"s": "none"}, True),
            (repo / "data/b.parquet", ttl_b_us, "vb", ["n", "x"], {"n": 7, "x": -1.5}, False),
        ):
            hand = kit.duckdb_asof(asof_spine, path, feats, ttl_us, has_cr)
            for feat in feats:
                expected = [
                    v if hit else defaults.get(feat)
                    for v, hit in zip(hand[feat], hand["__hit"], strict=True)
                ]
                assert df[f"{prefix}__{feat}"].to_list() == expected, ("asof", prefix, feat)


def _anchored_spine(
    views: list[tuple[list[dict[str, Any]], int | None]],
) -> st.SearchStrategy[list[tuple[Any, int]]]:
    """Spine rows on a source row's time (+-1 us), or on the ttl edge (+-1 us) of a key's latest row."""
    points: list[tuple[Any, int]] = []
    for rows, ttl_us in views:
        timed = [r for r in rows if r["ev"] is not None]
        for r in timed:
            points += [(r["key"], r["ev"] + d) for d in (-1, 0, 1)]
        for key in {r["key"] for r in timed}:
            last = max(r["ev"] for r in timed if r["key"] == key)
            if ttl_us is not None:
                points += [(key, last + ttl_us + d) for d in (-1, 0, 1)] * 3
    if not points:
        return st.just([])
    return st.lists(st.sampled_from(points), min_size=8, max_size=30)


def _key(v: Any) -> int | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else int(v)
