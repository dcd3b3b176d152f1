"""Batch scoring against an independent oracle: a plain-Python point-in-time join of the raw
Parquet sources, fed to the model's own predict (LightGBM bit for bit, sklearn for the rows it
can score); spine forms, chunking, several models, aliases, unscored rows and the output file."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from featurestore import FeatureStore
from featurestore.offline.scoring import BatchScores
from featurestore.online.models.registry import ModelVersion

from ._batch_repo import (
    ACCT_TTL_S,
    MERCHANTS,
    MODEL_ORDER,
    SEC,
    SERVICE_FEATURES,
    T0,
    USERS,
    lgb_predict,
    make_repo,
    matrix,
    oracle_features,
    random_sources,
    random_spine,
    register,
    set_alias,
    spine_table,
    train_lgb,
    train_logreg,
)
from .conftest import duckdb_asof

SPINE_COLUMNS = ["user_id", "merchant_id", "event_timestamp", "label", "rid"]


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Model files trained once: two binary LightGBMs, a regressor, a LogisticRegression."""
    d = tmp_path_factory.mktemp("bs_models")
    spread = {  # (center, scale) of each input in the data, so every input can move a score
        "x": (0.0, 10.0), "n": (20.0, 15.0), "flag": (0.5, 0.5), "r": (0.5, 0.3),
        "risk": (0.5, 0.3),
    }  # fmt: skip
    fit = {
        "centers": [spread[f][0] for f in MODEL_ORDER],
        "scales": [spread[f][1] for f in MODEL_ORDER],
    }
    fit_value = {
        "centers": [spread[f][0] for f in SERVICE_FEATURES],
        "scales": [spread[f][1] for f in SERVICE_FEATURES],
    }
    return {
        "fraud1": train_lgb(d / "fraud1.txt", MODEL_ORDER, seed=1, **fit),
        "fraud2": train_lgb(d / "fraud2.txt", MODEL_ORDER, seed=2, trees=30, **fit),
        "value": train_lgb(
            d / "value.txt", SERVICE_FEATURES, seed=3, objective="regression", **fit_value
        ),
        "lr": train_logreg(d / "lr.pkl", SERVICE_FEATURES, seed=4),
    }


def build(root: Path, artifacts: dict[str, Path], seed: int) -> tuple[Path, dict, dict]:
    """A repo over random data with fraud v1 (production) + v2 (shadow), value v1, lr v1."""
    rng = np.random.default_rng(seed)
    src = random_sources(rng)
    repo = make_repo(root, src)
    register(repo, "fraud", artifacts["fraud1"], alias="production")
    register(repo, "fraud", artifacts["fraud2"], alias="shadow")
    register(repo, "value", artifacts["value"], alias="production")
    register(repo, "lr", artifacts["lr"], flavor="sklearn", alias="production")
    return repo, src, random_spine(rng, src)


@pytest.fixture(scope="module", params=[0, 1])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, artifacts):
    """(store, source rows, spine columns) over a read-only repo; never change its aliases."""
    repo, src, spine = build(tmp_path_factory.mktemp("bs_repo"), artifacts, request.param)
    store = FeatureStore(repo)
    yield store, src, spine
    store.close()


def _artifact(store: FeatureStore, ref: str) -> str:
    from featurestore.online.models.repo import model_registry

    reg = model_registry(store)
    return reg.artifact_path(reg.resolve(ref))


def _same_floats(a: list, b: list, rel: float = 0.0) -> bool:
    """Equal (to the last bit unless ``rel``), NaN (or null) equal to NaN (or null)."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        xn = x is None or (isinstance(x, float) and math.isnan(x))
        yn = y is None or (isinstance(y, float) and math.isnan(y))
        if xn or yn:
            if not (xn and yn):
                return False
        elif x != y and not (rel and math.isclose(x, y, rel_tol=rel, abs_tol=0.0)):
            return False
    return True


# ---- the oracle ------------------------------------------------------------------------------
@pytest.mark.parametrize("as_known", [False, True])
def test_scores_and_features_equal_the_oracle(world, as_known: bool) -> None:
    store, src, spine = world
    spine_pl = pl.from_arrow(spine_table(spine))
    res = store.batch_score("fraud", spine_pl, include_features=True, as_known=as_known)

    assert isinstance(res, BatchScores)
    assert all(isinstance(m, ModelVersion) for m in res.models)
    n = len(spine["rid"])
    assert res.rows == n and res.unscored == 0
    assert res.columns == ["score"]
    assert [(m.name, m.version, m.flavor, m.feature_service) for m in res.models] == [
        ("fraud", 1, "lightgbm", "svc")
    ]
    assert tuple(res.models[0].feature_names) == tuple(MODEL_ORDER)
    assert res.path is None and res.seconds >= 0
    df = res.frame
    assert df is not None
    assert df.columns == [*SPINE_COLUMNS, *MODEL_ORDER, "score"]
    assert df.height == n
    # spine columns unchanged (order, duplicates, the null key, the extra columns)
    assert_frame_equal(df.select(SPINE_COLUMNS), spine_pl)
    assert df.schema["score"] == pl.Float64

    expected = oracle_features(src, spine, as_known=as_known)
    for f in MODEL_ORDER:
        assert df[f].to_list() == expected[f], f
    if not as_known:  # the second, hand-written DuckDB ASOF oracle agrees on the ttl view
        asof_spine = pa.table(
            {
                "user_id": pa.array(spine["user_id"], pa.int64()),
                "t": pa.array(spine["event_timestamp"], pa.int64()),
                "rid": pa.array(spine["rid"], pa.int64()),
            }
        )
        acct = store.config.repo_path / "data" / "acct.parquet"
        hand = duckdb_asof(asof_spine, acct, ["x", "n", "flag"], ACCT_TTL_S * SEC, True)
        defaults = {"x": None, "n": 7, "flag": False}
        for f in ("x", "n", "flag"):
            want = [
                v if hit else defaults[f] for v, hit in zip(hand[f], hand["__hit"], strict=True)
            ]
            assert df[f].to_list() == want, ("asof", f)
    # the same values the training set gives
    training = store.get_historical_features(spine_pl, "svc", as_known=as_known)
    for f in MODEL_ORDER:
        assert df[f].to_list() == training[f].to_list(), f
    # the score is the model's own predict on the oracle's matrix, bit for bit
    want = lgb_predict(_artifact(store, "fraud@1"), matrix(expected, MODEL_ORDER))
    got = df["score"].to_numpy()
    bad = [(i, g, w) for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w]
    assert not bad, bad[:5]
    # the data exercises defaults, nulls and real values (the check above is not vacuous)
    assert None in expected["x"] and 7 in expected["n"] and 0.25 in expected["risk"]
    assert sum(v is not None for v in expected["x"]) >= 10


def test_regressor_scores_its_value(world) -> None:
    store, src, spine = world
    res = store.batch_score("value@production", spine_table(spine))
    assert res.frame is not None and res.frame.columns == [*SPINE_COLUMNS, "score"]
    expected = oracle_features(src, spine)
    want = lgb_predict(_artifact(store, "value"), matrix(expected, SERVICE_FEATURES))
    assert res.frame["score"].to_list() == want.tolist()


def test_a_large_spine_equals_row_by_row_scores(world) -> None:
    """Enough rows for a threaded model run: every score equals the model's own predict, and a
    sample equals one-row predicts (what online serving computes)."""
    store, _, _ = world
    rng = np.random.default_rng(21)
    n = 20_000
    spine = {
        "user_id": rng.integers(0, USERS + 2, n).tolist(),
        "merchant_id": rng.integers(0, MERCHANTS, n).tolist(),
        "event_timestamp": (T0 + rng.integers(-2 * SEC, 30 * SEC, n)).tolist(),
        "label": [0] * n,
        "rid": list(range(n)),
    }
    table = spine_table(spine)
    res = store.batch_score("fraud", table, include_features=True)
    assert res.rows == n and res.frame is not None
    training = store.get_historical_features(table, "svc")
    x = matrix({f: training[f].to_list() for f in MODEL_ORDER}, MODEL_ORDER)
    import lightgbm as lgb

    booster = lgb.Booster(model_file=_artifact(store, "fraud@1"))
    got = res.frame["score"].to_numpy()
    assert np.array_equal(got, booster.predict(x))
    for i in rng.choice(n, 200, replace=False):
        assert got[i] == booster.predict(x[i : i + 1], num_threads=1)[0], i
    assert len(np.unique(got)) >= 8


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    rows=st.lists(
        st.tuples(
            st.integers(0, USERS + 1),
            st.integers(0, MERCHANTS - 1),
            st.integers(-2, 26),  # seconds after T0
            st.sampled_from([-1, 0, 1, ACCT_TTL_S * SEC - 1, ACCT_TTL_S * SEC]),  # us
        ),
        min_size=1,
        max_size=25,
    ),
    as_known=st.booleans(),
    chunk=st.integers(1, 30),
)
def test_random_spines_equal_the_oracle(world, rows, as_known: bool, chunk: int) -> None:
    store, src, _ = world
    spine = {
        "user_id": [r[0] for r in rows],
        "merchant_id": [r[1] for r in rows],
        "event_timestamp": [T0 + r[2] * SEC + r[3] for r in rows],
        "label": [0] * len(rows),
        "rid": list(range(len(rows))),
    }
    res = store.batch_score(
        ["fraud@1", "value"], spine_table(spine), as_known=as_known, chunk_rows=chunk
    )
    expected = oracle_features(src, spine, as_known=as_known)
    df = res.frame
    assert df is not None and df["rid"].to_list() == spine["rid"]
    want1 = lgb_predict(_artifact(store, "fraud@1"), matrix(expected, MODEL_ORDER))
    want2 = lgb_predict(_artifact(store, "value"), matrix(expected, SERVICE_FEATURES))
    assert df["score_fraud_v1"].to_list() == want1.tolist()
    assert df["score_value_v1"].to_list() == want2.tolist()


def test_spine_forms_give_the_same_scores(world, tmp_path: Path) -> None:
    store, _, spine = world
    spine = {**spine, "user_id": [0 if u is None else u for u in spine["user_id"]]}  # for pandas
    table = spine_table(spine)
    path = tmp_path / "spine.parquet"
    pq.write_table(table, path)
    want = store.batch_score("fraud", table).frame
    assert want is not None
    for form in (pl.from_arrow(table), table.to_pandas(), path, str(path)):
        got = store.batch_score("fraud", form).frame
        assert got is not None
        assert got["score"].to_list() == want["score"].to_list(), type(form)
        assert got["rid"].to_list() == spine["rid"]
        assert got.columns == want.columns


def test_timestamp_column_option(world) -> None:
    store, _, spine = world
    table = spine_table(spine).rename_columns(["user_id", "merchant_id", "ts", "label", "rid"])
    res = store.batch_score("fraud", table, timestamp_column="ts")
    base = store.batch_score("fraud", spine_table(spine))
    assert res.frame is not None and base.frame is not None
    assert res.frame.columns == ["user_id", "merchant_id", "ts", "label", "rid", "score"]
    assert res.frame["score"].to_list() == base.frame["score"].to_list()


# ---- chunks, several models, aliases ---------------------------------------------------------
def test_chunk_sizes_give_identical_output(world) -> None:
    store, _, spine = world
    table = spine_table(spine)
    n = table.num_rows
    models = ["fraud", "fraud@shadow", "value"]
    frames = [
        store.batch_score(models, table, chunk_rows=c, include_features=True).frame
        for c in (1, 7, n, n + 100, 1_000_000)
    ]
    for f in frames[1:]:
        assert f is not None
        assert_frame_equal(f, frames[0])
    assert frames[0] is not None and frames[0].height == n


def test_progress_bar_changes_nothing(world, capfd: pytest.CaptureFixture[str]) -> None:
    store, _, spine = world
    a = store.batch_score("fraud", spine_table(spine), progress=True, chunk_rows=5).frame
    b = store.batch_score("fraud", spine_table(spine)).frame
    assert a is not None and b is not None
    assert_frame_equal(a, b)
    assert capfd.readouterr().out == ""  # the bar goes to stderr, never stdout


def test_several_models_each_equal_scoring_alone(world) -> None:
    store, _, spine = world
    table = spine_table(spine)
    res = store.batch_score(["fraud@1", "fraud@v2", "value"], table, include_features=True)
    assert res.columns == ["score_fraud_v1", "score_fraud_v2", "score_value_v1"]
    assert [(m.name, m.version) for m in res.models] == [("fraud", 1), ("fraud", 2), ("value", 1)]
    df = res.frame
    assert df is not None
    # two models with different input orders: each feature appears once, between the two
    assert df.columns[:5] == SPINE_COLUMNS and df.columns[-3:] == res.columns
    assert sorted(df.columns[5:-3]) == sorted(MODEL_ORDER)
    for col, ref in zip(res.columns, ["fraud@1", "fraud@2", "value"], strict=True):
        alone = store.batch_score(ref, table).frame
        assert alone is not None
        assert df[col].to_list() == alone["score"].to_list(), ref
        assert df.schema[col] == pl.Float64
    assert df["score_fraud_v1"].to_list() != df["score_fraud_v2"].to_list()

    # production + shadow of one model
    res2 = store.batch_score(["fraud", "fraud@shadow"], table)
    assert res2.columns == ["score_fraud_v1", "score_fraud_v2"]
    assert res2.frame is not None
    for col in res2.columns:
        assert res2.frame[col].to_list() == df[col].to_list()


def test_name_follows_the_production_alias(tmp_path: Path, artifacts) -> None:
    repo, src, spine = build(tmp_path / "repo", artifacts, 5)
    table = spine_table(spine)
    expected = oracle_features(src, spine)
    x = matrix(expected, MODEL_ORDER)
    with FeatureStore(repo) as store:
        before = store.batch_score("fraud", table)
        assert before.models[0].version == 1
        assert before.frame is not None
        assert before.frame["score"].to_list() == lgb_predict(artifacts["fraud1"], x).tolist()
        set_alias(repo, "fraud", 2, "production")
        after = store.batch_score("fraud", table)
        assert after.models[0].version == 2 and after.columns == ["score"]
        assert after.frame is not None
        assert after.frame["score"].to_list() == lgb_predict(artifacts["fraud2"], x).tolist()
        # a canary alias resolves too
        from featurestore.online.models.repo import model_registry

        model_registry(store).set_alias("fraud", 1, "canary", share=0.1)
        canary = store.batch_score("fraud@canary", table)
        assert canary.models[0].version == 1
        assert canary.frame is not None
        assert canary.frame["score"].to_list() == before.frame["score"].to_list()


def test_models_of_different_feature_services(tmp_path: Path, artifacts) -> None:
    """Each model gets its own service's features; include_features shows their union."""
    rng = np.random.default_rng(12)
    src = random_sources(rng)
    repo = make_repo(tmp_path / "repo", src, extra_config="models:\n  path: elsewhere/models\n")
    register(repo, "fraud", artifacts["fraud1"], alias="production")
    small_names = ["x", "r"]  # the model's order; the service lists r first
    small = train_lgb(tmp_path / "small.txt", small_names, seed=13, scales=[10.0, 0.3])
    register(repo, "small", small, alias="production", service="small")
    assert (repo / "elsewhere" / "models" / "small").is_dir()  # models.path is honoured
    spine = random_spine(rng, src)
    table = spine_table(spine)
    expected = oracle_features(src, spine)
    with FeatureStore(repo) as store:
        res = store.batch_score(["small", "fraud"], table, include_features=True)
        assert [m.feature_service for m in res.models] == ["small", "svc"]
        assert res.columns == ["score_small_v1", "score_fraud_v1"]
        df = res.frame
        assert df is not None
        assert df.columns[:5] == SPINE_COLUMNS and df.columns[-2:] == res.columns
        assert sorted(df.columns[5:-2]) == sorted(MODEL_ORDER)
        for f in MODEL_ORDER:
            assert df[f].to_list() == expected[f], f
        want_small = lgb_predict(small, matrix(expected, small_names))
        want_fraud = lgb_predict(artifacts["fraud1"], matrix(expected, MODEL_ORDER))
        assert df["score_small_v1"].to_list() == want_small.tolist()
        assert df["score_fraud_v1"].to_list() == want_fraud.tolist()
        alone = store.batch_score("small", table, include_features=True).frame
        assert alone is not None
        assert alone.columns == [*SPINE_COLUMNS, *small_names, "score"]
        assert alone["score"].to_list() == want_small.tolist()


# ---- unscored rows ---------------------------------------------------------------------------
def test_a_model_refusing_nan_leaves_those_rows_unscored(tmp_path: Path, artifacts) -> None:
    import pickle

    repo, src, spine = build(tmp_path / "repo", artifacts, 6)
    register(repo, "lr", artifacts["lr"], flavor="sklearn")  # lr v2: the same model again
    table = spine_table(spine)
    expected = oracle_features(src, spine)
    x = matrix(expected, SERVICE_FEATURES)
    missing = np.isnan(x).any(axis=1)
    assert 3 <= missing.sum() < len(x) - 3  # both kinds of rows are there
    model = pickle.loads(artifacts["lr"].read_bytes())
    with pytest.raises(ValueError):
        model.predict_proba(x)  # the premise: this model refuses NaN
    want = np.full(len(x), np.nan)
    want[~missing] = model.predict_proba(x[~missing])[:, 1]
    # sklearn itself is not bit-stable across batch shapes (a 1-row predict_proba can differ in
    # the last bit from the same row inside a matrix), so its scores compare to 1e-12 relative
    rel = 1e-12

    with FeatureStore(repo) as store:
        res = store.batch_score("lr", table)
        assert res.unscored == int(missing.sum()) and res.rows == len(x)
        assert res.frame is not None
        got = res.frame["score"].to_list()
        assert _same_floats(got, want.tolist(), rel)
        # summed over models; the LightGBM model scores every row
        res2 = store.batch_score(["lr@1", "lr@2", "fraud"], table)
        assert res2.unscored == 2 * int(missing.sum())
        assert res2.frame is not None
        assert _same_floats(res2.frame["score_lr_v1"].to_list(), want.tolist(), rel)
        assert _same_floats(res2.frame["score_lr_v2"].to_list(), want.tolist(), rel)
        assert res2.frame["score_fraud_v1"].null_count() == 0
        assert not res2.frame["score_fraud_v1"].is_nan().any()
        # chunking does not change which rows are unscored
        res3 = store.batch_score("lr", table, chunk_rows=3)
        assert res3.unscored == res.unscored and res3.frame is not None
        assert _same_floats(res3.frame["score"].to_list(), got, rel)


# ---- the output file -------------------------------------------------------------------------
def _meta(path: Path) -> dict:
    md = pq.read_schema(path).metadata
    assert md is not None and b"featurestore.batch_score" in md
    return json.loads(md[b"featurestore.batch_score"])


def test_out_file_holds_the_frame_and_metadata(world, tmp_path: Path) -> None:
    store, _, spine = world
    table = spine_table(spine)
    frame = store.batch_score(["fraud", "value"], table, include_features=True).frame
    assert frame is not None
    out = tmp_path / "sub" / "scores.parquet"
    out.parent.mkdir()
    out.write_bytes(b"an old file, replaced on success")
    before = datetime.now().astimezone()
    res = store.batch_score(["fraud", "value"], table, include_features=True, out=out)
    assert res.frame is None and res.path is not None
    assert Path(res.path).resolve() == out.resolve()
    assert res.rows == table.num_rows and res.columns == ["score_fraud_v1", "score_value_v1"]
    assert_frame_equal(pl.read_parquet(out), frame)
    assert sorted(p.name for p in out.parent.iterdir()) == ["scores.parquet"]  # no temp file

    meta = _meta(out)
    assert meta["models"] == [
        {
            "name": "fraud",
            "version": 1,
            "flavor": "lightgbm",
            "feature_service": "svc",
            "column": "score_fraud_v1",
        },
        {
            "name": "value",
            "version": 1,
            "flavor": "lightgbm",
            "feature_service": "svc",
            "column": "score_value_v1",
        },
    ]
    assert meta["timestamp_column"] == "event_timestamp"
    assert meta["as_known"] is False and meta["rows"] == table.num_rows
    scored_at = datetime.fromisoformat(meta["scored_at"])
    assert scored_at.utcoffset() == timedelta(0)
    assert before - timedelta(seconds=5) <= scored_at <= datetime.now().astimezone()

    # a str path and as_known land in the metadata too
    res2 = store.batch_score("fraud@shadow", table, out=str(out), as_known=True, chunk_rows=4)
    assert res2.frame is None
    meta2 = _meta(out)
    assert meta2["as_known"] is True
    assert [m["column"] for m in meta2["models"]] == ["score"]
    assert meta2["models"][0]["version"] == 2
    want = store.batch_score("fraud@shadow", table, as_known=True).frame
    assert want is not None
    assert_frame_equal(pl.read_parquet(out), want)


FAILING_MODEL = f"""
import numpy as np

FEATURE_NAMES = {MODEL_ORDER!r}


def predict(x):
    if (x[:, 3] == 666).any():  # n == 666: a row only the second chunk holds
        raise RuntimeError("boom on the second chunk")
    return np.nan_to_num(x).sum(axis=1)
"""


def test_a_failure_mid_way_leaves_no_partial_file(tmp_path: Path, artifacts) -> None:
    rng = np.random.default_rng(8)
    src = random_sources(rng)
    src["acct"] = [r for r in src["acct"] if r["key"] is not None]
    src["acct"].append(
        {"key": 0, "ev": T0 + 100 * SEC, "cr": None, "x": 1.0, "n": 666, "flag": True, "tier": "g"}
    )
    repo = make_repo(tmp_path / "repo", src)
    model_file = tmp_path / "failing.py"
    model_file.write_text(FAILING_MODEL)
    register(repo, "bad", model_file, flavor="python", alias="production")
    users = [1, 2, 3, 4, 1, 2, 3, 4, 0, 0]  # the last two rows see n == 666
    times = [T0 + 30 * SEC] * 8 + [T0 + 101 * SEC] * 2
    table = pa.table(
        {
            "user_id": pa.array(users, pa.int64()),
            "merchant_id": pa.array([0] * 10, pa.int64()),
            "event_timestamp": pa.array(times, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        }
    )
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "scores.parquet"
    with FeatureStore(repo) as store:
        ok = store.batch_score("bad", table.slice(0, 8), out=out, chunk_rows=4)  # works
        assert ok.rows == 8
        old = out.read_bytes()
        with pytest.raises(Exception, match=r"boom on the second chunk|bad"):
            store.batch_score("bad", table, out=out, chunk_rows=4)
        assert out.read_bytes() == old  # the old file survives unchanged
        assert sorted(p.name for p in out_dir.iterdir()) == ["scores.parquet"]
        out.unlink()
        with pytest.raises(Exception, match=r"boom on the second chunk|bad"):
            store.batch_score("bad", table, out=out, chunk_rows=4)
        assert list(out_dir.iterdir()) == []  # nothing at out, no temp file


# ---- empty spines ----------------------------------------------------------------------------
def test_empty_spine_gives_empty_output_with_the_columns(world, tmp_path: Path) -> None:
    store, _, spine = world
    table = spine_table(spine).slice(0, 0)
    res = store.batch_score(["fraud", "value"], table, include_features=True)
    assert res.rows == 0 and res.unscored == 0
    assert res.frame is not None and res.frame.height == 0
    cols = res.frame.columns
    assert cols[:5] == SPINE_COLUMNS and cols[-2:] == ["score_fraud_v1", "score_value_v1"]
    assert sorted(cols[5:-2]) == sorted(MODEL_ORDER)
    assert res.frame.schema["score_fraud_v1"] == pl.Float64
    one = store.batch_score("fraud", table)
    assert one.frame is not None and one.frame.columns == [*SPINE_COLUMNS, "score"]
    out = tmp_path / "empty.parquet"
    res2 = store.batch_score("fraud", table, out=out)
    assert res2.rows == 0 and res2.path is not None
    got = pl.read_parquet(out)
    assert got.columns == [*SPINE_COLUMNS, "score"] and got.height == 0
    assert _meta(out)["rows"] == 0
