"""Hidden inputs of on-demand features online: a fetched input the caller did not ask for never
shows in the answer and never clashes with a requested feature of the same bare name.

View ``o`` computes ``ratio`` from the request field ``amount`` and ``p:limit``; view ``q`` has
a feature ``limit`` too. Asking for ``q:limit`` and ``o:ratio`` is accepted online (in process,
REST, gRPC and predict through a feature service) as the training set accepts it, with the same
values: the training set on the same data is the oracle.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore import DefinitionError, FeatureStore
from featurestore.online.serving._proto import featurestore_pb2 as pb
from featurestore.online.serving._proto import featurestore_pb2_grpc as pb_grpc
from featurestore.online.serving.grpc_server import column_values, to_value
from tests.serving.conftest import DEFS, ServerThread, make_repo, train_model

HIDDEN_DEFS = (
    DEFS
    + """
from featurestore import OnDemandFeatureView, RequestSource, on_demand_feature

p = FeatureView(name="p", entities=[user], source=ParquetSource("data/p.parquet"),
                schema=[Field("spend", Float64), Field("limit", Float64)])
q = FeatureView(name="q", entities=[user], source=ParquetSource("data/q.parquet"),
                schema=[Field("limit", Float64)])
req = RequestSource("req", schema=[Field("amount", Float64)])


@on_demand_feature(inputs=["amount", "p:limit"], output=Field("ratio", Float64), sources=[req])
def ratio(amount: float, limit: float) -> float:
    return amount / limit


o = OnDemandFeatureView(name="o", sources=[req, p], features=[ratio])
limits = FeatureService(name="limits", features=["q:limit", "o:ratio"])
"""
)
# user -> (hours ago, spend, limit) rows of p, and (hours ago, limit) rows of q: the latest
# row counts, a null limit gives a null ratio, user 5 has no p row and user 4 no q row
P_ROWS = {
    1: [(5, 1.0, 999.0), (2, 10.0, 100.0)],
    2: [(3, 20.5, 8.0)],
    3: [(4, -4.25, 0.5), (1, 3.0, None)],
    4: [(2, 7.0, 4.0)],
}
Q_ROWS = {1: [(3, 7.0)], 2: [(6, 1.0), (2, 9.0)], 3: [(2, 11.0)], 5: [(2, 13.0)]}
USERS = [1, 2, 3, 4, 5, 6]
AMOUNT = [5.0, 4.0, 3.0, 2.0, 1.0, 6.5]
REFS = ["q:limit", "o:ratio"]


def _write(path: Path, rows: dict[int, list[tuple[Any, ...]]], now: datetime, cols: list[str]):
    flat = [(u, *r) for u, rs in rows.items() for r in rs]
    table = {
        "user_id": pa.array([r[0] for r in flat], pa.int64()),
        "event_timestamp": pa.array(
            [now - timedelta(hours=r[1]) for r in flat], pa.timestamp("us", tz="UTC")
        ),
    }
    for j, c in enumerate(cols):
        table[c] = pa.array([r[2 + j] for r in flat], pa.float64())
    pq.write_table(pa.table(table), path)


@pytest.fixture(scope="module")
def hidden(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """A served repo with views p, q and o, a model 'lim' on service 'limits', and a server."""
    from featurestore.online.models.repo import model_registry, service_feature_names

    root = tmp_path_factory.mktemp("hidden") / "repo"
    (root / "data").mkdir(parents=True)
    now = datetime.now(timezone.utc)
    _write(root / "data" / "p.parquet", P_ROWS, now, ["spend", "limit"])
    _write(root / "data" / "q.parquet", Q_ROWS, now, ["limit"])
    repo = make_repo(root, defs=HIDDEN_DEFS)
    with FeatureStore(repo) as store:
        names = service_feature_names(store, "limits")
        assert names == ["limit", "ratio"]
        art = train_model(root.parent / "lim.txt", seed=3, names=names)
        reg = model_registry(store)
        reg.register(
            "lim", flavor="lightgbm", artifact=art, feature_service="limits", service_features=names
        )
        reg.set_alias("lim", 1, "production")
    server = ServerThread.of_repo(repo)
    server.start()
    try:  # in-process calls go through the server's store: one embedded store per process
        yield SimpleNamespace(store=server.app.state.engine.store, server=server, model=art)
    finally:
        server.stop()


def training_set(store: FeatureStore, refs: list[str] | str, full: bool) -> dict[str, list[Any]]:
    """The oracle: the training set of USERS at now, request field ``amount`` from the spine."""
    spine = pa.table(
        {
            "user_id": pa.array(USERS, pa.int64()),
            "event_timestamp": pa.array(
                [datetime.now(timezone.utc)] * len(USERS), pa.timestamp("us", tz="UTC")
            ),
            "amount": pa.array(AMOUNT, pa.float64()),
        }
    )
    got = store.get_historical_features(spine, refs, full_feature_names=full)
    return got.drop("event_timestamp", "amount").to_dict(as_series=False)


def _assert_matches(got: dict[str, list[Any]], want: dict[str, list[Any]]) -> None:
    """The same columns in the same order with the same values (no NaN in this data)."""
    assert list(got) == list(want)
    for name in want:
        assert got[name] == want[name], name


@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize(
    "refs", [REFS, ["o:ratio", "q:limit"], ["p:spend", "q:limit", "o:ratio"]], ids=str
)
def test_in_process_answers_as_the_training_set(
    hidden: SimpleNamespace, refs: list[str], full: bool
) -> None:
    want = training_set(hidden.store, refs, full)
    # the oracle itself: q's limit under the bare name, the ratio over p's limit
    limit = "q__limit" if full else "limit"
    assert want[limit] == [Q_ROWS[u][-1][1] if u in Q_ROWS else None for u in USERS]
    assert want["o__ratio" if full else "ratio"][:3] == [5.0 / 100.0, 4.0 / 8.0, None]
    resp = hidden.store.get_online_features(
        refs, {"user_id": USERS}, full_feature_names=full, request_data={"amount": AMOUNT}
    )
    _assert_matches(resp.to_dict(), want)
    assert resp.feature_names == list(want)[1:]
    assert set(resp.statuses) == set(want) - {"user_id"}
    assert resp.to_arrow().column_names == list(want)
    ts = hidden.store.get_online_features(
        refs,
        {"user_id": USERS},
        full_feature_names=full,
        include_event_timestamps=True,
        request_data={"amount": AMOUNT},
    ).to_dict()
    # a view read only for a hidden input has no timestamp column either
    stamps = {k for k in ts if k.endswith("__event_timestamp")}
    assert stamps == {f"{r.split(':')[0]}__event_timestamp" for r in refs}
    _assert_matches({k: v for k, v in ts.items() if k not in stamps}, want)


def _rest(server: ServerThread, refs: list[str], full: bool) -> dict[str, Any]:
    r = httpx.post(
        f"{server.url}/get-online-features",
        json={
            "features": refs,
            "entities": {"user_id": USERS},
            "request_data": {"amount": AMOUNT},
            "full_feature_names": full,
        },
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("full", [False, True])
def test_rest_and_grpc_answer_as_the_training_set(hidden: SimpleNamespace, full: bool) -> None:
    want = training_set(hidden.store, REFS, full)
    body = _rest(hidden.server, REFS, full)
    assert body["degraded"] is False
    assert body["feature_names"] == list(want)
    got = {n: res["values"] for n, res in zip(body["feature_names"], body["results"], strict=True)}
    _assert_matches(got, want)
    limit = "q__limit" if full else "limit"
    statuses = body["results"][body["feature_names"].index(limit)]["statuses"]
    assert statuses == ["PRESENT" if u in Q_ROWS else "NOT_FOUND" for u in USERS]
    with grpc.insecure_channel(hidden.server.grpc_target) as ch:
        resp = pb_grpc.FeatureServingStub(ch).GetOnlineFeatures(
            pb.GetOnlineFeaturesRequest(
                features=REFS,
                entities={"user_id": pb.ValueList(values=[to_value(u) for u in USERS])},
                request_data={"amount": pb.ValueList(values=[to_value(a) for a in AMOUNT])},
                full_feature_names=full,
            )
        )
    assert resp.degraded is False
    _assert_matches({c.name: column_values(c) for c in resp.columns}, want)


def test_predict_through_the_service_scores_the_training_rows(hidden: SimpleNamespace) -> None:
    import lightgbm as lgb
    import numpy as np

    want = training_set(hidden.store, "limits", False)
    x = np.array([want["limit"], want["ratio"]], dtype=np.float64).T  # None -> NaN
    scores = lgb.Booster(model_file=str(hidden.model)).predict(x).tolist()
    res = hidden.store.predict(
        "lim", {"user_id": USERS}, request_data={"amount": AMOUNT}, return_features=True
    )
    assert res.degraded is False
    assert res.scores == pytest.approx(scores, rel=1e-12)
    feats = res.features.to_dict()
    assert feats["feature_names"] == list(want)
    r = httpx.post(
        f"{hidden.server.url}/predict",
        json={"model": "lim", "entities": {"user_id": USERS}, "request_data": {"amount": AMOUNT}},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    assert r.json()["scores"] == pytest.approx(scores, rel=1e-12)


# ---- a hidden input named like a join key (full names) --------------------------------------
KEYED_DEFS = """
from featurestore import (Entity, FeatureView, Field, Float64, OnDemandFeatureView,
                          ParquetSource, RequestSource, on_demand_feature)

acct = Entity("acct", join_keys=["p__limit"])  # what full names once called p's hidden limit
p = FeatureView(name="p", entities=[acct], source=ParquetSource("data/p.parquet"),
                schema=[Field("limit", Float64)])
req = RequestSource("req", schema=[Field("amount", Float64)])


@on_demand_feature(inputs=["amount", "p:limit"], output=Field("ratio", Float64), sources=[req])
def ratio(amount: float, limit: float) -> float:
    return amount / limit


o = OnDemandFeatureView(name="o", sources=[req, p], features=[ratio])
"""


def test_a_join_key_named_like_a_hidden_input_fails_at_apply(tmp_path: Path) -> None:
    """A join key named like an input's full name (here p's hidden limit) would be overwritten
    by it in a training set with full names: apply refuses it before anything is served."""
    from tests.conftest import online_config

    (tmp_path / "definitions.py").write_text(KEYED_DEFS)
    with FeatureStore(config=online_config("embedded", tmp_path, project="keyed")) as store:
        with pytest.raises(
            DefinitionError, match=r"join key 'p__limit', the full feature name of 'p:limit'"
        ):
            store.apply()


def test_hidden_names_step_aside_for_taken_names() -> None:
    from featurestore.online._shape import _hidden_name

    assert _hidden_name("p", "limit", {}) == "p:limit"
    assert _hidden_name("p", "limit", {"p:limit": "q", "_p:limit": "(join key)"}) == "__p:limit"
