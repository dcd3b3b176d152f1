"""``featurestore score``: the one-line summary on stdout, the file (same as the Python API's
frame), the options, and every error as one ``error: ...`` line on stderr with exit code 1."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result
from polars.testing import assert_frame_equal

from featurestore import FeatureStore

from ._batch_repo import (
    MODEL_ORDER,
    SERVICE_FEATURES,
    make_repo,
    random_sources,
    random_spine,
    register,
    spine_table,
    train_lgb,
    train_logreg,
)

REPEAT = 20  # the spine repeated: over a thousand rows, so the count shows its comma


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, pa.Table]]:
    """(repo, spine file, spine table): fraud v1 production, v2 shadow, lr v1 production."""
    root = tmp_path_factory.mktemp("bs_cli")
    rng = np.random.default_rng(9)
    src = random_sources(rng)
    repo = make_repo(root / "repo", src)
    register(repo, "fraud", train_lgb(root / "m1.txt", MODEL_ORDER, seed=1), alias="production")
    register(repo, "fraud", train_lgb(root / "m2.txt", MODEL_ORDER, seed=2), alias="shadow")
    lr = train_logreg(root / "lr.pkl", SERVICE_FEATURES, seed=4)
    register(repo, "lr", lr, flavor="sklearn", alias="production")
    one = spine_table(random_spine(rng, src))
    table = pa.concat_tables([one] * REPEAT)
    spine = root / "spine.parquet"
    pq.write_table(table, spine)
    yield repo, spine, table


def invoke(repo: Path, *args: str) -> Result:
    from featurestore.cli import cli

    return CliRunner().invoke(cli, ["-r", str(repo), "score", *args])


def _python(repo: Path, table: pa.Table, models: str | list[str], **kw) -> pl.DataFrame:
    with FeatureStore(repo) as store:
        frame = store.batch_score(models, table, **kw).frame
    assert frame is not None
    return frame


def test_score_in_a_real_process(cli_env, tmp_path: Path) -> None:
    repo, spine, table = cli_env
    out = tmp_path / "out.parquet"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "featurestore.cli",
            "-r",
            str(repo),
            "score",
            "fraud",
            "--spine",
            str(spine),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    n = table.num_rows
    assert n >= 1000
    m = re.fullmatch(
        rf"scored {n:,} rows with fraud v1 \(lightgbm\) in (\d+\.\d+) s \(([\d,]+) rows/s\) "
        r"-> (.+)",
        lines[0],
    )
    assert m, lines[0]
    assert m.group(3).endswith("out.parquet")
    assert "unscored" not in lines[0]
    assert "Traceback" not in proc.stderr
    assert_frame_equal(pl.read_parquet(out), _python(repo, table, "fraud"))


def test_options_reach_the_file(cli_env, tmp_path: Path) -> None:
    repo, spine, table = cli_env
    out = tmp_path / "o.parquet"
    r = invoke(
        repo, "fraud", "fraud@shadow", "--spine", str(spine), "--out", str(out),
        "--with-features", "--as-known", "--chunk-rows", "97",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert len(r.stdout.strip().splitlines()) == 1 and r.stdout.startswith("scored ")
    want = _python(repo, table, ["fraud", "fraud@shadow"], include_features=True, as_known=True)
    got = pl.read_parquet(out)
    assert got.columns[-2:] == ["score_fraud_v1", "score_fraud_v2"]
    assert_frame_equal(got, want)
    meta = json.loads(pq.read_schema(out).metadata[b"featurestore.batch_score"])
    assert meta["as_known"] is True and meta["rows"] == table.num_rows
    assert [(m["name"], m["version"]) for m in meta["models"]] == [("fraud", 1), ("fraud", 2)]

    # another timestamp column name
    renamed = table.rename_columns(["user_id", "merchant_id", "ts", "label", "rid"])
    ts_spine = tmp_path / "ts.parquet"
    pq.write_table(renamed, ts_spine)
    out2 = tmp_path / "o2.parquet"
    r2 = invoke(
        repo, "fraud", "--spine", str(ts_spine), "--out", str(out2), "--timestamp-column", "ts"
    )
    assert r2.exit_code == 0, r2.output
    got2 = pl.read_parquet(out2)
    assert got2["score"].to_list() == _python(repo, table, "fraud")["score"].to_list()
    assert (
        json.loads(pq.read_schema(out2).metadata[b"featurestore.batch_score"])["timestamp_column"]
        == "ts"
    )


def test_unscored_rows_are_counted_in_the_line(cli_env, tmp_path: Path) -> None:
    repo, spine, table = cli_env
    out = tmp_path / "lr.parquet"
    r = invoke(repo, "lr", "--spine", str(spine), "--out", str(out))
    assert r.exit_code == 0, r.output
    with FeatureStore(repo) as store:
        res = store.batch_score("lr", table)
    assert res.unscored > 0
    line = r.stdout.strip()
    assert "\n" not in line and f"; {res.unscored:,} left unscored" in line, line
    assert line.startswith(f"scored {table.num_rows:,} rows with lr v1 (sklearn) in ")
    assert (
        pl.read_parquet(out)["score"].is_nan().sum() + pl.read_parquet(out)["score"].null_count()
        == res.unscored
    )


def _spine_variant(table: pa.Table, tmp: Path, how: str) -> Path:
    if how == "no_key":
        table = table.drop_columns(["merchant_id"])
    elif how == "no_ts":
        table = table.drop_columns(["event_timestamp"])
    elif how == "score_col":
        table = table.append_column("score", pa.array([0.0] * table.num_rows))
    path = tmp / f"{how}.parquet"
    pq.write_table(table, path)
    return path


@pytest.mark.parametrize(
    ("models", "how", "extra", "named"),
    [
        (["nosuch"], "ok", [], "nosuch"),
        (["lr@shadow"], "ok", [], "shadow"),
        (["fraud@5"], "ok", [], "5"),
        (["fraud"], "no_key", [], "merchant_id"),
        (["fraud"], "no_ts", [], "event_timestamp"),
        (["fraud"], "score_col", [], "score"),
        (["fraud", "fraud@1"], "ok", [], "fraud"),
        (["fraud"], "ok", ["--chunk-rows", "0"], "chunk"),
    ],
)
def test_errors_are_one_line_with_exit_1(
    cli_env, tmp_path: Path, models: list[str], how: str, extra: list[str], named: str
) -> None:
    repo, spine, table = cli_env
    path = spine if how == "ok" else _spine_variant(table, tmp_path, how)
    out = tmp_path / "out.parquet"
    r = invoke(repo, *models, "--spine", str(path), "--out", str(out), *extra)
    assert r.exit_code == 1, (r.exit_code, r.output)
    # a progress bar may come first (its lines end in \r); the error is one last line
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], r.stderr
    assert named in errors[0] and "Traceback" not in r.stderr
    assert r.stdout == ""
    assert not out.exists()


def test_debug_shows_the_exception(cli_env, tmp_path: Path) -> None:
    from featurestore.cli import cli
    from featurestore.errors import FeatureStoreError

    repo, spine, _ = cli_env
    r = CliRunner().invoke(
        cli,
        ["-r", str(repo), "--debug", "score", "nosuch", "--spine", str(spine), "--out",
         str(tmp_path / "o.parquet")],
    )  # fmt: skip
    assert r.exit_code != 0 and isinstance(r.exception, FeatureStoreError)
