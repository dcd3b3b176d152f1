"""The README's main job, at small scale: `featurestore quickstart` runs every step end to end."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import polars as pl


def test_quickstart_runs_every_step(tmp_path: Path) -> None:
    repo = tmp_path / "fraud"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "featurestore.cli",
            "quickstart",
            "--dir",
            str(repo),
            "--transactions",
            "30000",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    for step in range(1, 8):
        assert f"{step}/7 " in text
    assert "30,000 rows x" in text  # the training set keeps every spine row
    assert re.search(r"1 entity x \d+ features from 3 views: p50 \d+ us", text)
    assert len(re.findall(r"predict fraud \{.*\} -> 0\.\d+", text)) == 3
    assert "registered fraud v1 as production" in text
    train = pl.read_parquet(repo / "data" / "training_set.parquet")
    spine = pl.read_parquet(repo / "data" / "transactions.parquet")
    assert train["transaction_id"].to_list() == spine["transaction_id"].to_list()
    assert (repo / "data" / "models").is_dir()
    # the batch scores of the held-out rows give the AUC measured at training: same features
    trained = re.search(r"test AUC (\d\.\d+)", text)
    batch = re.search(r"-> data/scores\.parquet; AUC of the last [\d,]+: (\d\.\d+)", text)
    assert trained and batch and trained.group(1) == batch.group(1), text[-2000:]
    scores = pl.read_parquet(repo / "data" / "scores.parquet")
    assert scores["transaction_id"].to_list() == spine["transaction_id"].to_list()
    assert scores["score"].null_count() == 0 and scores["score"].is_between(0, 1).all()
