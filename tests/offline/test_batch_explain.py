"""Batch explanations (``batch_score(..., explain=True)`` / ``featurestore score --explain``):
each input's contribution to each score, equal to the library's own contributions on the rows
the batch scored, to the single-row explanation online predict gives, and unchanged by chunks
and by the threads that explain blocks of rows side by side."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore import FeatureStore
from featurestore.errors import EntityDataError
from featurestore.offline.scoring import METADATA_KEY
from featurestore.online.models import ModelExplainError

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

NO_EXPLAIN_MODEL = """
import numpy as np


def predict(x):
    return np.nan_to_num(x).sum(axis=1) * 0.01
"""


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """fraud (LightGBM, model order != service order), lr (linear sklearn), plain (python,
    no explain) over random data; returns the repo and a spine."""
    root = tmp_path_factory.mktemp("bx")
    rng = np.random.default_rng(3)
    src = random_sources(rng)
    repo = make_repo(root / "repo", src)
    scale = dict(centers=[0.0, 0.0, 0.5, 20.0, 0.5], scales=[0.3, 10.0, 0.5, 15.0, 0.3])
    register(
        repo, "fraud", train_lgb(root / "f.txt", MODEL_ORDER, seed=5, **scale), alias="production"
    )
    lr = train_logreg(root / "lr.pkl", SERVICE_FEATURES, seed=6)
    register(repo, "lr", lr, flavor="sklearn", alias="production")
    plain = root / "plain.py"
    plain.write_text(NO_EXPLAIN_MODEL)
    register(repo, "plain", plain, flavor="python", alias="production")
    return repo, random_spine(rng, src, n_free=60)


def _contribs(frame: pl.DataFrame, names: list[str], tag: str = "") -> np.ndarray:
    cols = [frame[f"contrib_{tag}{n}"].cast(pl.Float64).fill_null(np.nan) for n in names]
    return np.column_stack([c.to_numpy() for c in cols])


def _inputs(frame: pl.DataFrame, names: list[str]) -> np.ndarray:
    cols = [frame[n].cast(pl.Float64).fill_null(np.nan).to_numpy() for n in names]
    return np.ascontiguousarray(np.column_stack(cols))


def _loaded(store: FeatureStore, ref: str):
    from featurestore.online.models import LoadedModel, load_predictor
    from featurestore.online.models.repo import model_registry

    reg = model_registry(store)
    mv = reg.resolve(ref)
    return LoadedModel(mv, load_predictor(mv.flavor, reg.artifact_path(mv)))


def test_contributions_are_the_librarys_own_and_add_up_to_the_score(repo) -> None:
    import lightgbm as lgb

    path, spine = repo
    with FeatureStore(path) as store:
        res = store.batch_score("fraud", spine_table(spine), include_features=True, explain=True)
        artifact = _loaded(store, "fraud").predictor.model
    frame = res.frame
    assert frame.columns[-len(MODEL_ORDER) - 1 :] == [
        *(f"contrib_{n}" for n in MODEL_ORDER),
        "base_value",
    ]
    x = _inputs(frame, MODEL_ORDER)
    assert np.isnan(x).any()  # missing inputs are explained too
    own = lgb.Booster(model_str=artifact.model_to_string()).predict(x, pred_contrib=True)
    assert np.array_equal(_contribs(frame, MODEL_ORDER), own[:, :-1])
    assert np.array_equal(frame["base_value"].to_numpy(), own[:, -1])
    raw = own.sum(axis=1)
    assert np.allclose(1 / (1 + np.exp(-raw)), frame["score"].to_numpy(), rtol=1e-12, atol=0)
    assert np.abs(_contribs(frame, MODEL_ORDER)).sum() > 0


def test_each_row_equals_its_single_row_explanation(repo) -> None:
    """Online predict explains one entity's row alone: the batch row must be the same."""
    path, spine = repo
    with FeatureStore(path) as store:
        frame = store.batch_score(
            "fraud", spine_table(spine), include_features=True, explain=True
        ).frame
        model = _loaded(store, "fraud")
    x = _inputs(frame, MODEL_ORDER)
    got = _contribs(frame, MODEL_ORDER)
    for i in range(0, len(x), 7):
        one = model.explain(x[i : i + 1])
        assert np.array_equal(one.contributions[0], got[i]), i
        assert one.base_values[0] == frame["base_value"][i]


def test_threads_and_chunks_do_not_change_explanations(repo) -> None:
    """A spine large enough to be explained in blocks on several threads."""
    path, spine = repo
    one = spine_table(spine)
    big = pa.concat_tables([one] * 60 + [one.slice(0, 37)])  # > 2 blocks of 2,048 rows
    assert big.num_rows > 5000
    with FeatureStore(path) as store:
        whole = store.batch_score("fraud", big, include_features=True, explain=True).frame
        chunked = store.batch_score(
            "fraud", big, include_features=True, explain=True, chunk_rows=997
        ).frame
        model = _loaded(store, "fraud")
    assert whole.equals(chunked)
    one_thread = model.explain(_inputs(whole, MODEL_ORDER))
    assert np.array_equal(_contribs(whole, MODEL_ORDER), one_thread.contributions)
    assert np.array_equal(whole["base_value"].to_numpy(), one_thread.base_values)


def test_several_models_name_their_columns_and_linear_models_explain_as_weights(repo) -> None:
    path, spine = repo
    with FeatureStore(path) as store:
        res = store.batch_score(
            ["fraud", "lr"], spine_table(spine), include_features=True, explain=True
        )
        lr = _loaded(store, "lr").predictor.model
    frame = res.frame
    for tag, names in (("fraud_v1_", MODEL_ORDER), ("lr_v1_", SERVICE_FEATURES)):
        assert all(f"contrib_{tag}{n}" in frame.columns for n in names)
        assert f"base_value_{tag[:-1]}" in frame.columns
    assert "base_value" not in frame.columns and "contrib_x" not in frame.columns
    x = _inputs(frame, SERVICE_FEATURES)
    got = _contribs(frame, SERVICE_FEATURES, "lr_v1_")
    complete = ~np.isnan(x).any(axis=1)
    assert complete.any() and (~complete).any()
    assert np.allclose(got[complete], x[complete] * lr.coef_[0], rtol=1e-12, atol=1e-15)
    assert np.isnan(got[~complete]).all()  # the rows lr cannot score have no explanation
    base = frame["base_value_lr_v1"].to_numpy()
    assert np.allclose(base[complete], lr.intercept_[0], rtol=1e-12)
    # and the LightGBM columns are those of scoring it alone
    alone = store_frame(path, "fraud", spine)
    assert np.array_equal(_contribs(frame, MODEL_ORDER, "fraud_v1_"), _contribs(alone, MODEL_ORDER))


def store_frame(path: Path, model: str, spine: dict) -> pl.DataFrame:
    with FeatureStore(path) as store:
        return store.batch_score(model, spine_table(spine), explain=True).frame


def test_a_model_that_cannot_explain_is_refused_before_any_work(repo, tmp_path: Path) -> None:
    path, spine = repo
    out = tmp_path / "x.parquet"
    with FeatureStore(path) as store:
        with pytest.raises(ModelExplainError, match=r"'plain' v1 .*cannot explain"):
            store.batch_score(["fraud", "plain"], spine_table(spine), explain=True, out=out)
        # before the spine is even read: a spine without its timestamp column is not the error
        no_time = spine_table(spine).drop_columns(["event_timestamp"])
        with pytest.raises(ModelExplainError, match=r"'plain' v1 .*cannot explain"):
            store.batch_score("plain", no_time, explain=True)
        # without explain it scores
        assert store.batch_score("plain", spine_table(spine)).rows == len(spine["rid"])
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_a_spine_column_named_like_an_explanation_column_is_refused(repo) -> None:
    path, spine = repo
    table = spine_table(spine).append_column("base_value", pa.array([0.0] * len(spine["rid"])))
    with FeatureStore(path) as store:
        with pytest.raises(EntityDataError, match="'base_value'"):
            store.batch_score("fraud", table, explain=True)
        assert store.batch_score("fraud", table).rows == table.num_rows  # fine without explain


def test_empty_spine_has_the_explanation_columns(repo) -> None:
    path, spine = repo
    with FeatureStore(path) as store:
        frame = store.batch_score("fraud", spine_table(spine).slice(0, 0), explain=True).frame
    assert frame.height == 0
    assert [c for c in frame.columns if c.startswith("contrib_")] == [
        f"contrib_{n}" for n in MODEL_ORDER
    ]
    assert frame.schema["base_value"] == pl.Float64


def test_cli_explain_writes_columns_and_metadata(repo, tmp_path: Path) -> None:
    path, spine = repo
    spine_file = tmp_path / "spine.parquet"
    pq.write_table(spine_table(spine), spine_file)
    out = tmp_path / "scores.parquet"
    run = subprocess.run(
        [sys.executable, "-m", "featurestore.cli", "-r", str(path), "score", "fraud",
         "--spine", str(spine_file), "--out", str(out), "--explain"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    table = pq.read_table(out)
    meta = json.loads(table.schema.metadata[METADATA_KEY])
    ex = meta["models"][0]["explanation"]
    assert ex == {
        "contributions": [f"contrib_{n}" for n in MODEL_ORDER],
        "base_value": "base_value",
        "output": "raw",
    }
    frame = pl.from_arrow(table)
    assert frame.equals(store_frame(path, "fraud", spine))
    raw = _contribs(frame, MODEL_ORDER).sum(axis=1) + frame["base_value"].to_numpy()
    assert all(
        math.isclose(1 / (1 + math.exp(-r)), s, rel_tol=1e-12)
        for r, s in zip(raw, frame["score"], strict=True)
    )
