"""The CLI end to end in subprocesses: init, plan, apply, materialize, get, training-set, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from .conftest import DEFS


def run(*args: str, cwd: Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "featurestore.cli", *args]
    out = subprocess.run(
        cmd,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    if ok:
        assert out.returncode == 0, out.stderr
    return out


@pytest.fixture(scope="module")
def demo_repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    run("init", "demo", cwd=root)
    return root / "demo"


def test_init_scaffolds_a_repo_that_applies(demo_repo: Path) -> None:
    assert (demo_repo / "featurestore.yaml").is_file()
    assert (demo_repo / "definitions.py").is_file()
    assert (demo_repo / "data" / "transactions.parquet").is_file()
    out = run("plan", cwd=demo_repo)
    assert "+ feature view user_stats" in out.stdout
    out = run("apply", cwd=demo_repo)
    assert "Registry at version 1" in out.stdout
    assert "No changes" in run("plan", cwd=demo_repo).stdout
    listed = run("list", cwd=demo_repo).stdout
    assert "feature view    user_stats  13 features  ttl=2d" in listed


def test_materialize_then_get_prints_json(demo_repo: Path) -> None:
    run("apply", cwd=demo_repo)
    out = run("materialize-incremental", "now", cwd=demo_repo)
    assert "materialized" in out.stdout and "rows/s" in out.stdout
    got = run(
        "get",
        "--features",
        "user_stats:tx_count_7d,merchant_stats:m_risk_tier",
        "--entity",
        "user_id=1,2",
        "--entity",
        "merchant_id=3,999999",
        cwd=demo_repo,
    )
    doc = json.loads(got.stdout)
    assert doc["features"]["user_id"] == [1, 2]
    assert doc["status"]["m_risk_tier"][1] == "NOT_FOUND"
    assert doc["status"]["tx_count_7d"] == ["PRESENT", "PRESENT"]
    assert isinstance(doc["features"]["tx_count_7d"][0], int)


def test_training_set_command_writes_parquet(demo_repo: Path) -> None:
    run("apply", cwd=demo_repo)
    spine = pl.read_parquet(demo_repo / "data" / "transactions.parquet").head(1000)
    spine.write_parquet(demo_repo / "spine.parquet")
    out = run(
        "training-set",
        "--spine",
        "spine.parquet",
        "--feature-service",
        "fraud_model_v1",
        "--out",
        "train.parquet",
        cwd=demo_repo,
    )
    assert "wrote 1,000 rows" in out.stdout
    train = pl.read_parquet(demo_repo / "train.parquet")
    assert train["transaction_id"].to_list() == spine["transaction_id"].to_list()
    assert "m_chargeback_rate_30d" in train.columns


def test_errors_are_one_line_unless_debug(tmp_path: Path) -> None:
    repo = tmp_path / "r"
    repo.mkdir()
    (repo / "featurestore.yaml").write_text("project: t\n")
    (repo / "definitions.py").write_text(DEFS + '\nbroken = Entity("merchant")\n')
    out = run("apply", cwd=repo, ok=False)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("error: definitions.py:")
    assert "entity 'merchant' has no join keys" in lines[0]
    debug = run("--debug", "apply", cwd=repo, ok=False)
    assert "Traceback" in debug.stderr


def test_unknown_feature_in_get_is_one_line(demo_repo: Path) -> None:
    run("apply", cwd=demo_repo)
    out = run(
        "get", "--features", "user_stats:nope", "--entity", "user_id=1", cwd=demo_repo, ok=False
    )
    assert out.returncode == 1
    assert out.stderr.strip() == (
        "error: feature view 'user_stats' has no feature 'nope'; it has tx_count_1d, tx_count_7d, "
        "tx_count_30d, amount_sum_1d, amount_sum_7d, amount_mean_7d, ... (13 in all)"
    )


def test_get_with_request_data_computes_on_demand_features(demo_repo: Path) -> None:
    run("apply", cwd=demo_repo)
    run("materialize-incremental", "now", cwd=demo_repo)
    args = (
        "get",
        "--features",
        "user_tx_windows:rt_amount_mean_7d,transaction_features:amount_vs_mean_7d",
        "--entity",
        "user_id=1,2",
    )
    got = json.loads(run(*args, "--request", "amount=50,0.5", cwd=demo_repo).stdout)["features"]
    for amount, mean, ratio in zip(
        [50, 0.5], got["rt_amount_mean_7d"], got["amount_vs_mean_7d"], strict=True
    ):
        assert mean is not None and mean > 0
        assert ratio == pytest.approx(amount / mean, rel=1e-12)
    missing = run(*args, cwd=demo_repo, ok=False)
    assert missing.returncode == 1
    assert "amount" in missing.stderr and len(missing.stderr.strip().splitlines()) == 1
    assert "--request amount=" in missing.stderr  # how to give it here, not only in Python
    assert "on-demand view  transaction_features  1 feature" in run("list", cwd=demo_repo).stdout


@pytest.mark.parametrize("command", [["materialize", "2020-01-01"], ["materialize-incremental"]])
def test_views_naming_no_view_is_refused_not_read_as_all(demo_repo: Path, command: list) -> None:
    run("apply", cwd=demo_repo)
    out = run(*command, "now", "--views", " , ", cwd=demo_repo, ok=False)
    assert out.returncode == 2
    assert "Invalid value for '--views': ' , ' names no feature view" in out.stderr
    assert "materialized" not in out.stdout


def test_get_adds_up_a_repeated_entity_key_and_reads_escaped_commas(demo_repo: Path) -> None:
    run("apply", cwd=demo_repo)
    run("materialize-incremental", "now", cwd=demo_repo)
    base = ("get", "--features", "transaction_features:amount_vs_mean_7d")
    one = ("--entity", "user_id=1,2", "--request", "amount=50,0.5")
    twice = ("--entity", "user_id=1", "--entity", "user_id=2", "--request", "amount=50")
    split = json.loads(run(*base, *one, cwd=demo_repo).stdout)["features"]
    repeated = json.loads(run(*base, *twice, "--request", "amount=0.5", cwd=demo_repo).stdout)
    assert repeated["features"]["user_id"] == [1, 2]  # not only the last --entity
    assert repeated["features"] == split


def test_values_split_on_unescaped_commas_only() -> None:
    from featurestore.cli import _values

    assert _values("1,2") == ["1", "2"]
    assert _values(r"a\,b,c") == ["a,b", "c"]
    assert _values("x") == ["x"]


def test_a_closed_pipe_ends_the_command_quietly(demo_repo: Path) -> None:
    """``featurestore list | head -1``: the reader left, so no 'error: BrokenPipeError'."""
    run("apply", cwd=demo_repo)
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line
    try:
        out = subprocess.run(
            [sys.executable, "-m", "featurestore.cli", "list"],
            cwd=demo_repo,
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
        )
    finally:
        os.close(write)
    assert out.returncode == 141 and out.stderr == ""
