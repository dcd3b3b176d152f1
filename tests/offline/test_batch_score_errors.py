"""Batch scoring's errors: each a FeatureStoreError whose one-line message names the wrong thing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from featurestore import FeatureStore
from featurestore.errors import EntityDataError, FeatureStoreError
from featurestore.online.models.errors import ModelNotFoundError

from ._batch_repo import (
    DEFS_WITHOUT_RISK,
    MODEL_ORDER,
    lgb_predict,
    make_repo,
    matrix,
    oracle_features,
    random_sources,
    random_spine,
    register,
    spine_table,
    train_lgb,
)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FeatureStore, dict, dict]]:
    """A repo with fraud v1 (production) and v2 (no alias)."""
    root = tmp_path_factory.mktemp("bs_err")
    rng = np.random.default_rng(3)
    src = random_sources(rng)
    repo = make_repo(root / "repo", src)
    register(repo, "fraud", train_lgb(root / "m1.txt", MODEL_ORDER, seed=1), alias="production")
    register(repo, "fraud", train_lgb(root / "m2.txt", MODEL_ORDER, seed=2))
    store = FeatureStore(repo)
    yield store, src, random_spine(rng, src)
    store.close()


def _one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert msg and "\n" not in msg.strip(), msg
    return msg


@pytest.mark.parametrize(
    ("model", "named"),
    [
        ("nosuch", "nosuch"),
        (["fraud", "nosuch2"], "nosuch2"),
        ("fraud@shadow", "shadow"),  # an alias that points nowhere
        ("fraud@canary", "canary"),
        ("fraud@9", "9"),
        ("fraud@v7", "7"),
    ],
)
def test_unknown_models(env, model, named: str) -> None:
    store, _, spine = env
    with pytest.raises(ModelNotFoundError) as info:
        store.batch_score(model, spine_table(spine))
    assert named in _one_line(info.value)


@pytest.mark.parametrize("drop", ["user_id", "merchant_id", "event_timestamp"])
def test_spine_without_a_key_or_the_timestamp(env, drop: str) -> None:
    store, _, spine = env
    table = spine_table(spine)
    table = table.drop_columns([drop])
    with pytest.raises(EntityDataError) as info:
        store.batch_score("fraud", table)
    assert drop in _one_line(info.value)


def test_timestamp_column_that_is_not_there(env) -> None:
    store, _, spine = env
    with pytest.raises(EntityDataError) as info:
        store.batch_score("fraud", spine_table(spine), timestamp_column="ts")
    assert "ts" in _one_line(info.value)


@pytest.mark.parametrize(
    ("models", "column", "include"),
    [
        ("fraud", "score", False),
        (["fraud@1", "fraud@2"], "score_fraud_v2", False),
        ("fraud", "x", True),
        ("fraud", "risk", True),
    ],
)
def test_spine_column_named_like_an_output(env, models, column: str, include: bool) -> None:
    store, _, spine = env
    table = spine_table(spine)
    table = table.append_column(column, pa.array([1.0] * table.num_rows))
    with pytest.raises(FeatureStoreError) as info:
        store.batch_score(models, table, include_features=include)
    assert column in _one_line(info.value)


def test_a_feature_named_spine_column_is_fine_without_include_features(env) -> None:
    """Without include_features the features are not output: a spine column named like one
    collides with nothing, is kept unchanged, and does not feed the model."""
    store, src, spine = env
    table = spine_table(spine)
    table = table.append_column("n", pa.array([12345] * table.num_rows, pa.int64()))
    res = store.batch_score("fraud", table)
    assert res.frame is not None
    assert res.frame.columns == [*table.column_names, "score"]
    assert res.frame["n"].to_list() == [12345] * table.num_rows
    want = lgb_predict(
        _artifact(store, "fraud@1"), matrix(oracle_features(src, spine), MODEL_ORDER)
    )
    assert res.frame["score"].to_list() == want.tolist()


def _artifact(store: FeatureStore, ref: str) -> str:
    from featurestore.online.models.repo import model_registry

    reg = model_registry(store)
    return reg.artifact_path(reg.resolve(ref))


@pytest.mark.parametrize("models", [["fraud@1", "fraud@1"], ["fraud", "fraud@v1"]])
def test_the_same_version_twice(env, models: list[str]) -> None:
    store, _, spine = env
    with pytest.raises(FeatureStoreError) as info:
        store.batch_score(models, spine_table(spine))
    msg = _one_line(info.value)
    assert "fraud" in msg and "1" in msg


@pytest.mark.parametrize("chunk", [0, -1])
def test_chunk_rows_below_one(env, chunk: int) -> None:
    store, _, spine = env
    with pytest.raises(FeatureStoreError) as info:
        store.batch_score("fraud", spine_table(spine), chunk_rows=chunk)
    assert "chunk_rows" in _one_line(info.value)


def test_errors_leave_no_file_at_out(env, tmp_path: Path) -> None:
    store, _, spine = env
    out = tmp_path / "o.parquet"
    for kwargs in ({"chunk_rows": 0}, {"timestamp_column": "nope"}):
        with pytest.raises(FeatureStoreError):
            store.batch_score("fraud", spine_table(spine), out=out, **kwargs)
    with pytest.raises(ModelNotFoundError):
        store.batch_score("nosuch", spine_table(spine), out=out)
    assert list(tmp_path.iterdir()) == []


def test_service_lost_a_feature_the_model_needs(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    src = random_sources(rng)
    repo = make_repo(tmp_path / "repo", src)
    register(repo, "fraud", train_lgb(tmp_path / "m.txt", MODEL_ORDER, seed=1), alias="production")
    (repo / "definitions.py").write_text(DEFS_WITHOUT_RISK)
    with FeatureStore(repo) as store:
        store.apply()
        assert "risk" not in [f for _, fs in store.resolve_features("svc") for f in fs]
        with pytest.raises(FeatureStoreError) as info:
            store.batch_score("fraud", spine_table(random_spine(rng, src)))
    msg = _one_line(info.value)
    assert "risk" in msg and "fraud" in msg and "re-register" in msg
