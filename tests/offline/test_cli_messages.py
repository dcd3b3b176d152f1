"""One-line CLI messages: ``compact --view`` of an unknown view lists only the views it can
compact, of a single-file view names the file; ``--out`` refuses a name that is not Parquet."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore._atomic import check_parquet_out
from featurestore.errors import FeatureStoreError
from featurestore.store import FeatureStore

DEFS = """
from featurestore import (Aggregation, DuckDBSource, Entity, FeatureView, Field, Float64,
                          OnDemandFeatureView, ParquetSource, RequestSource, on_demand_feature)

user = Entity("user", join_keys=["user_id"])
folder_view = FeatureView(name="folder_view", entities=[user], source=ParquetSource("data/f"),
                          schema=[Field("score", Float64)])
single_view = FeatureView(name="single_view", entities=[user],
                          source=ParquetSource("data/single.parquet"),
                          schema=[Field("score", Float64)])
single_window = FeatureView(name="single_window", entities=[user],
                            source=ParquetSource("data/single.parquet"),
                            aggregations=[Aggregation("score", "sum", "1h")])
sql_view = FeatureView(name="sql_view", entities=[user],
                       source=DuckDBSource("SELECT * FROM 'data/single.parquet'"),
                       schema=[Field("score", Float64)])
req = RequestSource("req", schema=[Field("amount", Float64)])


@on_demand_feature(inputs=["amount", "folder_view:score"], output=Field("gap", Float64),
                   sources=[req])
def gap(amount: float, score: float) -> float:
    return score - amount


odfv_checks = OnDemandFeatureView(name="odfv_checks", sources=[req, folder_view],
                                  features=[gap])
"""


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("cli_messages") / "repo"
    (repo / "data" / "f").mkdir(parents=True)
    (repo / "featurestore.yaml").write_text(
        "project: msgs\nonline_store:\n  type: embedded\n  path: data/online\n  map_size: 64MB\n"
    )
    (repo / "definitions.py").write_text(DEFS)
    table = pa.table(
        {
            "user_id": pa.array([1, 2], pa.int64()),
            "event_timestamp": pa.array([0, 1], pa.timestamp("us", tz="UTC")),
            "score": [1.0, 2.0],
        }
    )
    pq.write_table(table, repo / "data" / "f" / "part-0.parquet")
    pq.write_table(table, repo / "data" / "single.parquet")
    pq.write_table(table, repo / "spine.parquet")
    with FeatureStore(repo) as store:
        store.apply()
    return repo


def _cli(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "featurestore.cli", "--repo", str(repo), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


def test_compact_of_an_unknown_view_lists_only_plain_folder_views(repo: Path) -> None:
    out = _cli(repo, "compact", "--view", "nope")
    assert out.returncode != 0 and out.stdout == ""
    (line,) = out.stderr.splitlines()
    assert line.startswith("error:") and "'nope'" in line, line
    listed = line.rsplit(":", 1)[1]
    assert [v.strip() for v in listed.split(",")] == ["folder_view"], line


def test_compact_of_a_single_file_view_names_the_file_and_asks_for_a_folder(repo: Path) -> None:
    for view in ("single_view", "single_window"):
        out = _cli(repo, "compact", "--view", view)
        assert out.returncode == 0, out.stderr
        (line,) = out.stdout.splitlines()
        assert "'data/single.parquet' is a single file" in line, line
        assert "folder source" in line and "read this folder" not in line, line


@pytest.mark.parametrize("name", ["x.csv", "x", "x.parquet.tmp"])
def test_score_refuses_an_out_that_is_not_parquet(repo: Path, name: str) -> None:
    out_path = repo / name
    out = _cli(repo, "score", "m", "--spine", str(repo / "spine.parquet"), "--out", str(out_path))
    assert out.returncode != 0
    (line,) = out.stderr.splitlines()
    assert line.startswith("error: --out ") and name in line and ".parquet" in line, line
    assert not out_path.exists()


@pytest.mark.parametrize("name", ["x.csv", "x"])
def test_training_set_refuses_an_out_that_is_not_parquet(repo: Path, name: str) -> None:
    out_path = repo / name
    out = _cli(
        repo, "training-set", "--spine", str(repo / "spine.parquet"), "--features",
        "folder_view:score", "--out", str(out_path),
    )  # fmt: skip
    assert out.returncode != 0
    (line,) = out.stderr.splitlines()
    assert line.startswith("error: --out ") and name in line and ".parquet" in line, line
    assert not out_path.exists()


@pytest.mark.parametrize("name", ["x.parquet", "x.PQ", "sub/x.pq"])
def test_parquet_names_pass_the_out_check(tmp_path: Path, name: str) -> None:
    check_parquet_out(tmp_path / name)  # no error


@pytest.mark.parametrize("name", ["x.csv", "x", "x.json"])
def test_the_out_check_names_the_option(tmp_path: Path, name: str) -> None:
    with pytest.raises(FeatureStoreError, match=r"^--out '.*' (ends in|has no suffix).*\.parquet"):
        check_parquet_out(tmp_path / name)
    (tmp_path / "d.parquet").mkdir()
    with pytest.raises(FeatureStoreError, match=r"--spine-out .* is a folder"):
        check_parquet_out(tmp_path / "d.parquet", "--spine-out")
