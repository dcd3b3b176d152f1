"""``featurestore training-set --chunk-rows N``: the spine joined N rows at a time and appended
to one Parquet file gives the file one whole-spine join gives (rows, order, values, types),
for plain, window and on-demand features, with and without ``--as-known``; a failing chunk
leaves neither the output nor a temporary file behind; the progress bar counts spine rows."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from featurestore.cli import cli
from featurestore.store import FeatureStore

M = 60_000_000  # a minute in microseconds
T0 = 1_767_268_800_000_000  # 2026-01-01 12:00 UTC
USERS = 6  # users 0..5 have rows; spines also ask for 6 (never seen)
DEFS = """
from featurestore import (Aggregation, Entity, FeatureView, Field, Float64, Int64,
                          OnDemandFeatureView, ParquetSource, RequestSource, String,
                          on_demand_feature)

user = Entity("user", join_keys=["user_id"])
events = ParquetSource("data/events.parquet", created_timestamp_field="created")
plain = FeatureView(name="plain", entities=[user], source=events, ttl="2h",
                    schema=[Field("x", Float64), Field("tier", String),
                            Field("n", Int64, default=-1)])
win = FeatureView(name="win", entities=[user], source=events,
                  aggregations=[Aggregation("x", "sum", ["1h"]), Aggregation("x", "count", ["1h"]),
                                Aggregation("x", "last", ["3h"])])
req = RequestSource("req", schema=[Field("amount", Float64)])


@on_demand_feature(inputs=["amount", "plain:n"], output=Field("gap", Float64), sources=[req])
def gap(amount: float, n: int) -> float:
    return amount - n


o = OnDemandFeatureView(name="o", sources=[req, plain], features=[gap])
"""
FEATURES = "plain:x,plain:tier,plain:n,win:x_sum_1h,win:x_count_1h,win:x_last_3h,o:gap"


def _ts(values: list[int]) -> pa.Array:
    return pa.array(values, pa.int64()).cast(pa.timestamp("us", tz="UTC"))


@pytest.fixture(scope="module")
def fs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    repo = tmp_path_factory.mktemp("ts_chunks")
    (repo / "data").mkdir()
    (repo / "definitions.py").write_text(DEFS)
    (repo / "featurestore.yaml").write_text(
        "project: chunks\nonline_store:\n  type: embedded\n  path: data/online\n  map_size: 64MB\n"
    )
    rng = np.random.default_rng(11)
    n = 300
    ev = T0 + rng.integers(0, 240, n) * M  # four hours of events, many on the same minute
    created = ev + rng.integers(-1, 90, n) * M  # some known long after they happened
    x = rng.normal(size=n).round(3)
    tiers = np.array(["a", "b", "c"])[rng.integers(0, 3, n)]
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array(rng.integers(0, USERS, n), pa.int64()),
                "event_timestamp": _ts(ev.tolist()),
                "created": _ts(created.tolist()),
                "x": pa.array(x, mask=rng.random(n) < 0.1),
                "tier": pa.array(tiers, mask=rng.random(n) < 0.2),
                "n": pa.array(rng.integers(0, 100, n), pa.int64(), mask=rng.random(n) < 0.1),
            }
        ),
        repo / "data" / "events.parquet",
    )
    with FeatureStore(repo) as store:
        store.apply()
        yield SimpleNamespace(store=store, repo=repo)


def _spine(path: Path, users: list[int], minutes: list[int], amounts: list[float]) -> Path:
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array(users, pa.int64()),
                "event_timestamp": _ts([T0 + m * M for m in minutes]),
                "amount": pa.array(amounts, pa.float64()),
                "row": pa.array([f"r{i}" for i in range(len(users))]),
            }
        ),
        path,
    )
    return path


def _run(repo: Path, *args: str) -> object:
    return CliRunner().invoke(cli, ["--repo", str(repo), "training-set", *args])


def _whole(fs: SimpleNamespace, spine: Path, out: Path, *flags: str) -> pl.DataFrame:
    """The training set as one join of the whole spine writes it (the command before chunks)."""
    df = fs.store.get_historical_features(
        str(spine),
        FEATURES.split(","),
        as_known="--as-known" in flags,
        full_feature_names="--full-feature-names" in flags,
    )
    df.write_parquet(out)
    return df


def _same_file(got: Path, want: Path) -> None:
    """Equal rows, order, values and column types, read back by polars and by pyarrow."""
    assert_frame_equal(pl.read_parquet(got), pl.read_parquet(want), check_exact=True)
    a, b = pq.read_table(got), pq.read_table(want)
    assert a.schema.names == b.schema.names
    assert [pl.from_arrow(c).dtype for c in a.columns] == [
        pl.from_arrow(c).dtype for c in b.columns
    ]
    assert a.num_rows == b.num_rows


rows = st.lists(
    st.tuples(
        st.integers(0, USERS),  # user 6 has no rows
        st.integers(-30, 400),  # minutes after T0: before, inside and after the events
        st.floats(-50, 50, allow_nan=False).map(lambda v: round(v, 2)),
    ),
    min_size=1,
    max_size=40,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=rows,
    chunk=st.integers(1, 45),
    as_known=st.booleans(),
    full=st.booleans(),
)
def test_chunks_write_the_file_one_join_writes(
    fs: SimpleNamespace,
    tmp_path_factory: pytest.TempPathFactory,
    rows: list[tuple[int, int, float]],
    chunk: int,
    as_known: bool,
    full: bool,
) -> None:
    d = tmp_path_factory.mktemp("ex")
    users, minutes, amounts = (list(c) for c in zip(*rows, strict=True))
    spine = _spine(d / "spine.parquet", users, minutes, amounts)
    flags = [f for f, on in (("--as-known", as_known), ("--full-feature-names", full)) if on]
    want = _whole(fs, spine, d / "want.parquet", *flags)
    out = d / "got.parquet"
    res = _run(
        fs.repo, "--spine", str(spine), "--features", FEATURES, "--out", str(out),
        "--chunk-rows", str(chunk), *flags,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    _same_file(out, d / "want.parquet")
    assert f"wrote {want.height:,} rows x {want.width} columns" in res.stdout
    assert sorted(p.name for p in d.iterdir()) == ["got.parquet", "spine.parquet", "want.parquet"]


def test_uneven_chunks_of_a_longer_spine(fs: SimpleNamespace, tmp_path: Path) -> None:
    """1000 rows in chunks of 137 (seven full chunks and one of 41), as known and not."""
    rng = np.random.default_rng(5)
    n = 1000
    spine = _spine(
        tmp_path / "spine.parquet",
        rng.integers(0, USERS + 1, n).tolist(),
        rng.integers(-30, 400, n).tolist(),
        rng.normal(size=n).round(2).tolist(),
    )
    for flags in ([], ["--as-known"]):
        want = tmp_path / "want.parquet"
        _whole(fs, spine, want, *flags)
        out = tmp_path / "got.parquet"
        res = _run(
            fs.repo, "--spine", str(spine), "--features", FEATURES, "--out", str(out),
            "--chunk-rows", "137", *flags,
        )  # fmt: skip
        assert res.exit_code == 0, res.output
        _same_file(out, want)
        assert pq.ParquetFile(out).metadata.num_rows == n
        # the bar counts spine rows, and ends at all of them
        assert "training set" in res.stderr and f"{n}/{n}" in res.stderr, res.stderr


def test_a_spine_folder_is_read_in_the_order_one_read_gives(
    fs: SimpleNamespace, tmp_path: Path
) -> None:
    folder = tmp_path / "spine"
    folder.mkdir()
    for i, users in enumerate(([1, 2, 3, 6, 0], [5, 4], [2, 2, 2, 1, 0, 3, 4])):
        _spine(folder / f"part{i}.parquet", users, [60 * i + 7 * j for j in range(len(users))],
               [1.5] * len(users))  # fmt: skip
    want = tmp_path / "want.parquet"
    _whole(fs, folder, want)
    out = tmp_path / "got.parquet"
    res = _run(
        fs.repo, "--spine", str(folder), "--features", FEATURES, "--out", str(out),
        "--chunk-rows", "3",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    _same_file(out, want)


def test_a_failing_chunk_leaves_no_file(fs: SimpleNamespace, tmp_path: Path) -> None:
    """A null spine time in the third chunk: an error after two chunks were written, and
    neither ``--out`` (an older file there is kept) nor a temporary file is left."""
    spine = tmp_path / "spine.parquet"
    times = [T0 + i * M for i in range(12)]
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array([1] * 12, pa.int64()),
                "event_timestamp": pa.array(
                    [*times[:9], None, *times[10:]], pa.timestamp("us", tz="UTC")
                ),
                "amount": pa.array([1.0] * 12),
            }
        ),
        spine,
    )
    out = tmp_path / "out" / "ts.parquet"
    out.parent.mkdir()
    out.write_bytes(b"old")
    res = _run(
        fs.repo, "--spine", str(spine), "--features", FEATURES, "--out", str(out),
        "--chunk-rows", "4",
    )  # fmt: skip
    assert res.exit_code == 1
    assert "null timestamp" in res.stderr, res.stderr
    assert out.read_bytes() == b"old"
    assert [p.name for p in out.parent.iterdir()] == ["ts.parquet"]


def test_chunk_rows_must_be_positive(fs: SimpleNamespace, tmp_path: Path) -> None:
    spine = _spine(tmp_path / "spine.parquet", [1], [5], [1.0])
    out = tmp_path / "got.parquet"
    res = _run(
        fs.repo, "--spine", str(spine), "--features", FEATURES, "--out", str(out),
        "--chunk-rows", "0",
    )  # fmt: skip
    assert res.exit_code == 2, res.output
    assert "--chunk-rows" in res.stderr and "0 is not in the range x>=1" in res.stderr
    assert not out.exists()
