"""A feature view declared ``online=False`` is for training sets only: materialize refuses it by
name (and leaves it out otherwise), and every online lookup of it, or of an on-demand feature
reading it, is refused naming it (404 over REST, NOT_FOUND over gRPC), never served empty."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import grpc
import httpx
import polars as pl
import pytest

from featurestore import FeatureStore
from featurestore.errors import FeatureNotFoundError, FeatureStoreError
from featurestore.online.serving._proto import featurestore_pb2 as pb
from featurestore.online.serving._proto import featurestore_pb2_grpc as pbg
from featurestore.online.serving.grpc_server import to_value
from tests.serving.conftest import DEFS, make_repo

OFFLINE_ONLY = """
from featurestore import OnDemandFeatureView, on_demand_feature

user_history = FeatureView(
    name="user_history",
    entities=[user],
    source=ParquetSource("data/users.parquet"),
    online=False,
    schema=[Field("tx_count", Int64, default=0)],
)


@on_demand_feature(inputs=["user_history:tx_count"], output=Field("tx_x2", Int64))
def tx_x2(n: int) -> int:
    return n * 2


history_x2 = OnDemandFeatureView(name="history_x2", sources=[user_history], features=[tx_x2])
history = FeatureService(name="history", features=[user_history])
"""
SAYS = "feature view 'user_history' is not served online (online=False)"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repo(tmp_path_factory.mktemp("offline_only") / "repo", defs=DEFS + OFFLINE_ONLY)


def test_materialize_refuses_it_by_name_and_leaves_it_out_otherwise(repo: Path) -> None:
    now = datetime.now(timezone.utc)
    with FeatureStore(repo) as store:
        with pytest.raises(FeatureStoreError, match=r"not served online \(online=False\)"):
            store.materialize(now - timedelta(days=1), now, views=["user_history"])
        done = store.materialize(now - timedelta(days=1), now)
        assert "user_history" not in done.rows and "user_stats" in done.rows
        # training sets read it as any view
        spine = pl.DataFrame({"user_id": [3], "event_timestamp": [now]})
        got = store.get_historical_features(spine, ["user_history:tx_count"])
        assert got["tx_count"].to_list() == [30]


@pytest.mark.parametrize("features", [["user_history:tx_count"], ["history_x2:tx_x2"], "history"])
def test_every_online_lookup_of_it_is_refused_naming_it(repo: Path, features, serve) -> None:
    with FeatureStore(repo) as store:
        for rows in ({"user_id": [3]}, {"user_id": [3, 4]}):
            with pytest.raises(
                FeatureNotFoundError, match=SAYS.replace("(", r"\(").replace(")", r"\)")
            ):
                store.get_online_features(features, rows)
    server = serve(repo)
    body = {"feature_service": features} if isinstance(features, str) else {"features": features}
    with httpx.Client(base_url=server.url, timeout=10) as http:
        for ids in ([3], [3, 4]):  # the one-entity shortcut and the general path
            r = http.post("/get-online-features", json={**body, "entities": {"user_id": ids}})
            assert r.status_code == 404, r.text
            assert SAYS in r.json()["error"]
    with grpc.insecure_channel(server.grpc_target) as ch:
        stub = pbg.FeatureServingStub(ch)
        req = pb.GetOnlineFeaturesRequest(entities={"user_id": pb.ValueList(values=[to_value(3)])})
        if isinstance(features, str):
            req.feature_service = features
        else:
            req.features.extend(features)
        with pytest.raises(grpc.RpcError) as info:
            stub.GetOnlineFeatures(req, timeout=10)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert SAYS in info.value.details()
