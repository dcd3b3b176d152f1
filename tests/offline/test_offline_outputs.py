"""Where batch scores and training sets go, and the spine columns they refuse: every refusal a
one-line project error before any join, advice the caller can follow, and a training-set file
that appears whole (written beside ``--out`` and renamed) in a folder created for it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result

from featurestore import FeatureStore
from featurestore.errors import EntityDataError
from featurestore.offline.scoring import BatchScoreError

from ._batch_repo import (
    MODEL_ORDER,
    make_repo,
    random_sources,
    random_spine,
    register,
    spine_table,
    train_lgb,
)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, pa.Table]]:
    """(repo, spine file, spine table): model fraud v1 (production) on service svc."""
    root = tmp_path_factory.mktemp("outputs")
    rng = np.random.default_rng(11)
    src = random_sources(rng)
    repo = make_repo(root / "repo", src)
    register(repo, "fraud", train_lgb(root / "m.txt", MODEL_ORDER, seed=1), alias="production")
    table = spine_table(random_spine(rng, src))
    spine = root / "spine.parquet"
    pq.write_table(table, spine)
    yield repo, spine, table


@pytest.fixture
def joins(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Records every point-in-time join a FeatureStore runs (and runs it)."""
    calls: list[Any] = []
    real = FeatureStore.get_historical_features

    def spy(self: FeatureStore, *args: Any, **kwargs: Any) -> pl.DataFrame:
        calls.append(args)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(FeatureStore, "get_historical_features", spy)
    return calls


def _one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert msg and "\n" not in msg.strip(), msg
    return msg


# ------------------------------------------------------------ batch scoring: spine columns


@pytest.mark.parametrize("column", ["acct__x", "merch__risk", "acct__flag"])
@pytest.mark.parametrize("include", [False, True])
def test_a_full_name_spine_column_gets_advice_batch_scoring_can_follow(
    env, joins: list[Any], column: str, include: bool
) -> None:
    """A training set built with full feature names, used as the spine: its ``view__feature``
    columns are where scoring joins the features; the message says to rename or drop them,
    not to pass an option batch_score does not have, and no join has run."""
    repo, _, table = env
    spine = table.append_column(column, pa.array([1.0] * table.num_rows))
    with FeatureStore(repo) as store, pytest.raises(EntityDataError) as info:
        store.batch_score("fraud", spine, include_features=include)
    msg = _one_line(info.value)
    assert f"'{column}'" in msg and "rename or drop" in msg
    assert "full_feature_names" not in msg
    assert joins == []


def test_a_full_name_spine_column_asked_for_or_only_fetched(tmp_path: Path) -> None:
    """A spine column named like an on-demand feature's fetched input that the service does
    not name is no output: it stays as it is. Named by the service, it is refused."""
    repo = tmp_path / "repo"
    (repo / "data" / "p").mkdir(parents=True)
    (repo / "featurestore.yaml").write_text(
        "project: hidden\nonline_store:\n  type: embedded\n  path: data/online\n  map_size: 64MB\n"
    )
    (repo / "definitions.py").write_text(
        """
from featurestore import (Entity, FeatureService, FeatureView, Field, Float64,
                          OnDemandFeatureView, ParquetSource, RequestSource, on_demand_feature)

user = Entity("user", join_keys=["user_id"])
p = FeatureView(name="p", entities=[user], source=ParquetSource("data/p"),
                schema=[Field("lim", Float64)])
req = RequestSource("req", schema=[Field("amount", Float64)])

@on_demand_feature(inputs=["amount", "p:lim"], output=Field("ratio", Float64), sources=[req])
def ratio(amount: float, lim: float) -> float:
    return amount / lim

o = OnDemandFeatureView(name="o", sources=[req, p], features=[ratio])
svc = FeatureService(name="svc", features=["o:ratio"])
both = FeatureService(name="both", features=["o:ratio", "p:lim"])
"""
    )
    t = pa.array([1_700_000_000_000_000], pa.int64()).cast(pa.timestamp("us", tz="UTC"))
    pq.write_table(
        pa.table({"user_id": [1], "event_timestamp": t, "lim": [4.0]}),
        repo / "data" / "p" / "a.parquet",
    )
    (repo / "model.py").write_text("def predict(x):\n    return x[:, 0] * 10\n")
    with FeatureStore(repo) as store:
        store.apply()
    register(repo, "m", repo / "model.py", flavor="python", alias="production")
    register(repo, "m2", repo / "model.py", flavor="python", alias="production", service="both")
    spine = pa.table({"user_id": [1], "event_timestamp": t, "amount": [2.0]})
    full = spine.append_column("p__lim", pa.array([9.0]))
    with FeatureStore(repo) as store:
        assert store.batch_score("m", spine).frame["score"].to_list() == [5.0]
        got = store.batch_score("m", full).frame
        assert got["p__lim"].to_list() == [9.0] and got["score"].to_list() == [5.0]
        with pytest.raises(EntityDataError) as info:
            store.batch_score("m2", full)
    msg = _one_line(info.value)
    assert "'p__lim'" in msg and "'p:lim'" in msg and "rename or drop" in msg
    assert "full_feature_names" not in msg


def test_the_training_set_advice_depends_on_full_feature_names(env) -> None:
    """With full names already on, passing them is no way out; without, it is one."""
    repo, _, table = env
    with FeatureStore(repo) as store:
        with pytest.raises(EntityDataError) as full:
            store.get_historical_features(
                table.append_column("acct__x", pa.array([1.0] * table.num_rows)),
                ["acct:x"],
                full_feature_names=True,
            )
        with pytest.raises(EntityDataError) as bare:
            store.get_historical_features(
                table.append_column("x", pa.array([1.0] * table.num_rows)), ["acct:x"]
            )
    assert "'acct__x' would overwrite" in _one_line(full.value)
    assert "rename or drop" in str(full.value)
    assert "full_feature_names" not in str(full.value)
    assert "'x' would overwrite" in _one_line(bare.value)
    assert "full_feature_names=True" in str(bare.value)


# ---------------------------------------------------------------- batch scoring: out


def test_out_an_existing_folder_is_a_project_error_before_any_work(
    env, joins: list[Any], tmp_path: Path
) -> None:
    """Refused before the model is even looked up (an unknown model would say so otherwise)."""
    repo, _, table = env
    folder = tmp_path / "scores"
    folder.mkdir()
    with FeatureStore(repo) as store:
        for model in ("fraud", "nosuch"):
            with pytest.raises(BatchScoreError) as info:
                store.batch_score(model, table, out=folder)
            msg = _one_line(info.value)
            assert f"'{folder}' is a directory" in msg
    assert joins == []
    assert list(folder.iterdir()) == []


def test_out_below_a_file_is_a_project_error_before_any_work(
    env, joins: list[Any], tmp_path: Path
) -> None:
    repo, _, table = env
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    with FeatureStore(repo) as store, pytest.raises(BatchScoreError) as info:
        store.batch_score("fraud", table, out=blocker / "sub" / "s.parquet")
    assert f"'{blocker}', which is a file" in _one_line(info.value)
    assert joins == []
    assert blocker.read_text() == "not a folder"


# ------------------------------------------------------------------ training-set --out


def _training_set(repo: Path, spine: Path, out: Path, *extra: str) -> Result:
    from featurestore.cli import cli

    args = ["-r", str(repo), *extra, "training-set", "--spine", str(spine)]
    return CliRunner().invoke(cli, [*args, "--feature-service", "svc", "--out", str(out)])


def _error_line(r: Result) -> str:
    assert r.exit_code == 1, (r.exit_code, r.output)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr
    return lines[-1]


def test_training_set_creates_the_folder_of_out(env, tmp_path: Path) -> None:
    """In a real process, as a user runs it: the missing folders are made, and the file holds
    the training set the Python API returns; nothing else is left in the folder."""
    repo, spine, _ = env
    out = tmp_path / "new" / "deeper" / "train.parquet"
    r = subprocess.run(
        [sys.executable, "-m", "featurestore.cli", "-r", str(repo), "training-set",
         "--spine", str(spine), "--feature-service", "svc", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert str(out) in r.stdout
    with FeatureStore(repo) as store:
        want = store.get_historical_features(str(spine), "svc")
    assert pl.read_parquet(out).equals(want)
    assert sorted(p.name for p in out.parent.iterdir()) == ["train.parquet"]


def test_training_set_out_below_a_file_fails_before_the_join(
    env, joins: list[Any], tmp_path: Path
) -> None:
    repo, spine, _ = env
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    line = _error_line(_training_set(repo, spine, blocker / "sub" / "t.parquet"))
    assert f"'{blocker}', which is a file" in line
    assert joins == []


def test_training_set_replaces_out_whole_or_not_at_all(
    env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that dies half-way leaves the previous training set at ``--out`` as it was and
    no temporary file; the next run replaces it whole."""
    repo, spine, _ = env
    out = tmp_path / "train.parquet"
    out.write_bytes(b"the previous training set")
    real = pq.ParquetWriter.write_table

    def dies_half_way(self: pq.ParquetWriter, table: Any, *args: Any, **kwargs: Any) -> None:
        real(self, table, *args, **kwargs)  # part of the file is out
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pq.ParquetWriter, "write_table", dies_half_way)
    line = _error_line(_training_set(repo, spine, out))
    assert "No space left on device" in line
    assert out.read_bytes() == b"the previous training set"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.parquet"]

    monkeypatch.setattr(pq.ParquetWriter, "write_table", real)
    r = _training_set(repo, spine, out)
    assert r.exit_code == 0, r.output
    with FeatureStore(repo) as store:
        assert pl.read_parquet(out).equals(store.get_historical_features(str(spine), "svc"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.parquet"]


def test_a_failed_join_leaves_no_temporary_file(env, tmp_path: Path) -> None:
    repo, _, table = env
    bad = tmp_path / "bad_spine.parquet"
    pq.write_table(table.drop_columns(["user_id"]), bad)
    out = tmp_path / "out" / "train.parquet"
    line = _error_line(_training_set(repo, bad, out))
    assert "user_id" in line
    assert list(out.parent.iterdir()) == []
