"""A model failure is told from a refusal of missing inputs, in predict (in process, REST, gRPC)
and batch_score alike: a model that raises for another reason is an error naming the model and
the cause even when the rows it fails on hold a null feature; a model that refuses NaN (sklearn)
still scores those rows null and the others as usual."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from featurestore import FeatureStore
from featurestore.online.models.errors import ModelPredictError
from featurestore.online.models.flavors import Predictor
from featurestore.online.models.registry import ModelVersion
from featurestore.online.models.repo import register_model
from featurestore.online.models.runtime import LoadedModel
from tests.serving.conftest import ServerThread

NOW = datetime.now(timezone.utc).replace(microsecond=0)
DEFS = """
from featurestore import Entity, FeatureService, FeatureView, Field, Float64, ParquetSource

user = Entity("user", join_keys=["user_id"])
v = FeatureView(name="v", entities=[user], source=ParquetSource("data/v.parquet"),
                schema=[Field("x", Float64), Field("y", Float64)])
svc = FeatureService(name="svc", features=[v])
"""
# user: (x, y); y null (no default) reaches the model as NaN
ROWS = {1: (1.0, None), 2: (2.0, None), 3: (1.0, 5.0), 4: (3.0, 6.0)}
# handles NaN itself, but has a bug on large x
BUGGY = (
    "import numpy as np\n"
    "FEATURE_NAMES = ['x', 'y']\n"
    "def predict(x):\n"
    "    if (x[:, 0] > 1.5).any():\n"
    "        raise RuntimeError('model bug: x above 1.5')\n"
    "    return np.nan_to_num(x[:, 0]) * 10 + np.nan_to_num(x[:, 1])\n"
)


def _bug(rows: int) -> str:
    return f"model 'buggy' v1 failed to score {rows} row(s): RuntimeError: model bug: x above 1.5"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerThread, Any, Path]]:
    """A repo with a nullable feature, a buggy python model and an sklearn model refusing NaN,
    both in production, and a server over it; yields the server, the sklearn model, the repo."""
    from sklearn.linear_model import LinearRegression

    repo = tmp_path_factory.mktemp("model_failures_new") / "repo"
    (repo / "data").mkdir(parents=True)
    (repo / "featurestore.yaml").write_text(
        "project: failnew\nonline_store:\n  type: embedded\n  path: data/online\n"
        "  map_size: 64MB\nmodels:\n  poll_interval_s: 0.05\n"
    )
    (repo / "definitions.py").write_text(DEFS)
    users = list(ROWS)
    pq.write_table(
        pa.table({
            "user_id": users,
            "event_timestamp": pa.array([NOW - timedelta(hours=1)] * len(users),
                                        pa.timestamp("us", tz="UTC")),
            "x": [ROWS[u][0] for u in users],
            "y": pa.array([ROWS[u][1] for u in users], pa.float64()),
        }),
        repo / "data" / "v.parquet",
    )  # fmt: skip
    lr = LinearRegression().fit(np.array([[0.0, 1], [1, 0], [2, 3], [3, 1]]), [1.0, 2, 4, 3])
    (repo / "lr.pkl").write_bytes(pickle.dumps(lr))
    (repo / "buggy.py").write_text(BUGGY)
    with FeatureStore(repo) as store:
        store.apply()
        store.materialize(NOW - timedelta(days=1), NOW)
        for name, flavor, art in (("lr", "sklearn", "lr.pkl"), ("buggy", "python", "buggy.py")):
            register_model(
                store, name, flavor=flavor, artifact=repo / art, service="svc",
                alias="production",
            )  # fmt: skip
    s = ServerThread.of_repo(repo).start()
    yield s, lr, repo
    s.stop()


def _batch(repo: Path, model: str, users: list[int]) -> tuple[list[float | None], int]:
    with FeatureStore(repo) as store:
        spine = pl.DataFrame({"user_id": users, "event_timestamp": [NOW] * len(users)})
        res = store.batch_score(model, spine)
    return res.frame["score"].to_list(), res.unscored


def _in_process(s: ServerThread, model: str, users: list[int]) -> list[float | None]:
    """Predict through the server's engine: the in-process path (``FeatureStore.predict``)."""
    res = s.app.state.engine.predict(model, entities={"user_id": users})
    return [None if v != v else v for v in res.scores]


def _rest(s: ServerThread, model: str, users: list[int]) -> httpx.Response:
    with httpx.Client(base_url=s.url, timeout=10) as c:
        return c.post("/predict", json={"model": model, "entities": {"user_id": users}})


def _grpc(s: ServerThread, model: str, users: list[int]) -> Any:
    from featurestore.online.serving._proto import featurestore_pb2 as pb
    from featurestore.online.serving._proto import featurestore_pb2_grpc as pb_grpc

    req = pb.PredictRequest(model=model, entities={"user_id": pb.ValueList(ints=users)})
    with grpc.insecure_channel(s.grpc_target) as ch:
        return pb_grpc.FeatureServingStub(ch).Predict(req, timeout=10)


@pytest.mark.parametrize(
    ("users", "failed"),
    [([1, 2], 2), ([2], 1), ([2, 3], 1), ([3, 2, 1], 2)],
    ids=["every-row-null", "one-entity", "null-row-beside-a-complete-row", "mixed"],
)
def test_a_model_bug_on_rows_holding_a_null_is_an_error_on_every_path(
    served, users: list[int], failed: int
) -> None:
    """User 2 (y null) hits the bug: not a refusal of NaN, so no null score hides it."""
    s, _, repo = served
    with pytest.raises(ModelPredictError) as info:
        _batch(repo, "buggy", users)
    assert str(info.value) == _bug(failed)
    with pytest.raises(ModelPredictError) as info:
        _in_process(s, "buggy", users)
    assert str(info.value) == _bug(failed)
    r = _rest(s, "buggy", users)
    assert (r.status_code, r.json()) == (500, {"error": _bug(failed)})
    with pytest.raises(grpc.RpcError) as rpc:
        _grpc(s, "buggy", users)
    assert (rpc.value.code(), rpc.value.details()) == (grpc.StatusCode.INTERNAL, _bug(failed))


def test_the_same_model_scores_rows_it_does_not_fail_on(served) -> None:
    s, _, repo = served
    want = [10.0, 15.0]  # user 1 (y null: the model's own 0), user 3
    assert _batch(repo, "buggy", [1, 3]) == (want, 0)
    assert _in_process(s, "buggy", [1, 3]) == want
    assert _rest(s, "buggy", [1, 3]).json()["scores"] == want


@pytest.mark.parametrize("users", [[1, 2], [1], [3, 1, 4, 2], [4, 3]])
def test_a_model_refusing_missing_inputs_scores_those_rows_null_and_the_rest(
    served, users: list[int]
) -> None:
    s, lr, repo = served
    complete = [u for u in users if ROWS[u][1] is not None]
    scores = lr.predict(np.array([ROWS[u] for u in complete])) if complete else []
    scored = dict(zip(complete, scores, strict=True))
    want = [scored.get(u) for u in users]
    got, unscored = _batch(repo, "lr", users)
    assert unscored == len(users) - len(complete)
    for answer in (got, _in_process(s, "lr", users), _rest(s, "lr", users).json()["scores"]):
        assert [v is None for v in answer] == [v is None for v in want]
        np.testing.assert_allclose(
            [v for v in answer if v is not None], [v for v in want if v is not None], rtol=1e-12
        )
    assert list(_grpc(s, "lr", users).scores) == pytest.approx(
        [np.nan if v is None else v for v in want], rel=1e-12, nan_ok=True
    )


def _loaded(fn: Any) -> LoadedModel:
    mv = ModelVersion(
        name="m", version=2, flavor="python", artifact="m.py", feature_service="svc",
        feature_names=("a", "b", "c"), created_at="",
    )  # fmt: skip
    return LoadedModel(mv, Predictor("python", None, None, 3, fn, _predict_many=fn))


@settings(max_examples=200, deadline=None)
@given(
    x=arrays(np.float64, st.tuples(st.integers(1, 6), st.just(3)),
             elements=st.one_of(st.just(np.nan), st.floats(-3, 3))),
    limit=st.floats(0, 3),
    many=st.booleans(),
)  # fmt: skip
def test_score_tells_a_refusal_of_nan_from_a_bug(x: np.ndarray, limit: float, many: bool) -> None:
    """A model refusing NaN (like sklearn's) with a bug on present values above ``limit``: the
    batch fails iff some row has such a value; else rows with NaN score NaN, the rest the model's
    score."""

    def model(rows: np.ndarray) -> np.ndarray:
        if (rows > limit).any():  # NaN compares false: a bug on present values only
            raise RuntimeError("bug")
        if np.isnan(rows).any():
            raise ValueError("Input X contains NaN")
        return rows.sum(axis=1)

    if (x > limit).any():
        with pytest.raises(ModelPredictError, match=r"^model 'm' v2 failed to score \d+ row"):
            _loaded(model).score(x, many=many)
        return
    scores, unscored = _loaded(model).score(x, many=many)
    missing = np.isnan(x).any(axis=1)
    assert unscored == missing.sum()
    np.testing.assert_array_equal(scores, np.where(missing, np.nan, np.nan_to_num(x).sum(axis=1)))
