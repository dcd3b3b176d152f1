"""Push and write edges: several rows of one entity in one push keep, online, the row the
point-in-time join picks offline; on-demand views take no push; a push's deadline is checked
on every front end; an int or bool array with a null element is null as a whole (a push of
one is refused by name)."""

from __future__ import annotations

import itertools
import subprocess
import sys
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
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featurestore.online.codec import CREATED_TS, EVENT_TS
from featurestore.online.serving._proto import featurestore_pb2 as pb
from featurestore.online.serving._proto import featurestore_pb2_grpc as pb_grpc
from featurestore.online.serving.errors import BadRequestError
from featurestore.online.writer import latest_rows
from featurestore.store import FeatureStore

UTC = timezone.utc
HOUR = timedelta(hours=1)
T0 = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - 48 * HOUR

DEFS = """
from featurestore import (Array, Bool, Entity, FeatureView, Field, Float64, Int64,
                          OnDemandFeatureView, ParquetSource, RequestSource, on_demand_feature)

user = Entity("user", join_keys=["user_id"])
stats = FeatureView(name="stats", entities=[user], source=ParquetSource("data/stats"),
                    schema=[Field("tx", Int64), Field("amount", Float64)])
lists = FeatureView(name="lists", entities=[user], source=ParquetSource("data/lists"),
                    schema=[Field("ints", Array(Int64)), Field("flags", Array(Bool)),
                            Field("emb", Array(Float64))])
req = RequestSource("req", schema=[Field("price", Float64)])


@on_demand_feature(inputs=["price", "stats:amount"], output=Field("ratio", Float64), sources=[req])
def ratio(price: float, amount: float) -> float:
    return price / amount


scored = OnDemandFeatureView(name="scored", sources=[req, stats], features=[ratio])
"""


def _ts(values: list[datetime]) -> pa.Array:
    return pa.array(values, pa.timestamp("us", tz="UTC"))


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def build_repo(root: Path, online: str = "embedded", redis_url: str = "") -> Path:
    """Config, definitions and one row per user (1-3) in each view's folder; applied and
    materialized."""
    repo = root / "repo"
    for d in ("stats", "lists"):
        (repo / "data" / d).mkdir(parents=True)
    if online == "embedded":
        online_cfg = "  type: embedded\n  path: data/online\n  map_size: 64MB\n"
    else:
        online_cfg = f"  type: redis\n  url: {redis_url}\n"
    (repo / "featurestore.yaml").write_text(f"project: pushedge\nonline_store:\n{online_cfg}")
    (repo / "definitions.py").write_text(DEFS)
    uids = [1, 2, 3]
    base = {"user_id": pa.array(uids, pa.int64()), "event_timestamp": _ts([T0] * 3)}
    stats = {"tx": pa.array(uids, pa.int64()), "amount": pa.array([1.0, 2.0, 3.0])}
    pq.write_table(pa.table({**base, **stats}), repo / "data" / "stats" / "part-0.parquet")
    lists = {
        "ints": pa.array([[1, 2]] * 3, pa.list_(pa.int64())),
        "flags": pa.array([[True, False]] * 3, pa.list_(pa.bool_())),
        "emb": pa.array([[0.5, 1.5]] * 3, pa.list_(pa.float64())),
    }
    pq.write_table(pa.table({**base, **lists}), repo / "data" / "lists" / "part-0.parquet")
    with FeatureStore(repo) as store:
        store.apply()
        store.materialize(T0 - timedelta(days=1), datetime.now(UTC))
    return repo


@pytest.fixture(params=["embedded", "redis"])
def repo(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    url = request.getfixturevalue("redis_url") if request.param == "redis" else ""
    return build_repo(tmp_path, request.param, url)


@pytest.fixture
def embedded_repo(tmp_path: Path) -> Path:
    return build_repo(tmp_path)


def _offline_tx(repo: Path, uid: int) -> Any:
    """The training set's stats:tx for ``uid`` as of now (the point-in-time join)."""
    spine = pl.DataFrame({"user_id": [uid], "event_timestamp": [datetime.now(UTC)]})
    with FeatureStore(repo) as store:
        return store.get_historical_features(spine, ["stats:tx"])["tx"].to_list()[0]


def _rows(uid: int, txs: list[int], times: list[datetime]) -> dict[str, list[Any]]:
    n = len(txs)
    return {
        "user_id": [uid] * n,
        "tx": txs,
        "amount": [1.0] * n,
        "event_timestamp": [_iso(t) for t in times],
    }


# ------------------------------------------------------------------ duplicate keys in a push


def test_a_push_with_two_rows_of_one_entity_serves_the_latest_as_offline_does(
    repo: Path, serve: Any
) -> None:
    """Rows listed newest first (and a third, in the middle): online keeps the newest event, as
    the training set does, over REST and gRPC alike."""
    s = serve(repo)
    rows = _rows(7, [10, 20, 15], [T0 + 3 * HOUR, T0 + HOUR, T0 + 2 * HOUR])
    body = {"feature_view": "stats", "rows": rows, "to": "online_and_offline"}
    with httpx.Client(base_url=s.url, timeout=30) as c:
        r = c.post("/push", json=body)
        assert r.status_code == 200, r.text
        got = c.post(
            "/get-online-features", json={"features": ["stats:tx"], "entities": {"user_id": [7]}}
        ).json()
    assert got["results"][1]["values"] == [10]
    assert got["results"][1]["statuses"] == ["PRESENT"]
    assert _offline_tx(repo, 7) == 10
    with grpc.insecure_channel(s.grpc_target) as ch:
        stub = pb_grpc.FeatureServingStub(ch)
        resp = stub.GetOnlineFeatures(
            pb.GetOnlineFeaturesRequest(
                features=["stats:tx"], entities={"user_id": pb.ValueList(ints=[7])}
            ),
            timeout=30,
        )
    assert list(resp.columns[1].ints.values) == [10]


def test_a_grpc_push_with_two_rows_of_one_entity_keeps_the_latest(
    embedded_repo: Path, serve: Any
) -> None:
    s = serve(embedded_repo)
    times = [_iso(T0 + 5 * HOUR), _iso(T0 + 4 * HOUR)]
    req = pb.PushRequest(
        feature_view="stats",
        rows={
            "user_id": pb.ValueList(ints=[8, 8]),
            "tx": pb.ValueList(ints=[30, 40]),
            "amount": pb.ValueList(doubles=[1.0, 1.0]),
            "event_timestamp": pb.ValueList(strings=times),
        },
    )
    with grpc.insecure_channel(s.grpc_target) as ch:
        stub = pb_grpc.FeatureServingStub(ch)
        assert stub.Push(req, timeout=30).rows_written == 1
        resp = stub.GetOnlineFeatures(
            pb.GetOnlineFeaturesRequest(
                features=["stats:tx"], entities={"user_id": pb.ValueList(ints=[8])}
            ),
            timeout=30,
        )
    assert list(resp.columns[1].ints.values) == [30]


_ids = itertools.count(1000, 100)  # each example's own users: the offline folder keeps growing


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 20)),
        min_size=1,
        max_size=12,
        unique=True,  # one entity's rows differ in event time (equal times: a data error)
    )
)
def test_online_after_a_push_equals_the_training_set_per_entity(
    embedded_repo: Path, rows: list[tuple[int, int]]
) -> None:
    base = next(_ids)
    uids = [base + e for e, _ in rows]
    cols = {
        "user_id": uids,
        "tx": list(range(len(rows))),  # each row its own value
        "amount": [1.0] * len(rows),
        "event_timestamp": [_iso(T0 + h * HOUR) for _, h in rows],
    }
    with FeatureStore(embedded_repo) as store:
        store.push("stats", cols, to="online_and_offline")
        wanted = sorted(set(uids))
        online = store.get_online_features(["stats:tx"], {"user_id": wanted}).to_dict()["tx"]
        spine = pl.DataFrame(
            {"user_id": wanted, "event_timestamp": [datetime.now(UTC)] * len(wanted)}
        )
        offline = store.get_historical_features(spine, ["stats:tx"])["tx"].to_list()
    assert online == offline
    latest = {}
    for i, (e, h) in enumerate(rows):
        if e not in latest or h > rows[latest[e]][1]:
            latest[e] = i
    assert online == [latest[u - base] for u in wanted]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c"]),
            st.integers(0, 3),
            st.one_of(st.none(), st.integers(0, 3)),
        ),
        max_size=10,
    )
)
def test_latest_rows_keeps_the_point_in_time_pick_per_key(
    rows: list[tuple[str, int, int | None]],
) -> None:
    """Largest event time, then largest created time (a null loses), then the row listed last;
    rows keep their order."""
    table = pa.table(
        {
            "k": pa.array([r[0] for r in rows], pa.string()),
            EVENT_TS: pa.array([r[1] for r in rows], pa.int64()),
            CREATED_TS: pa.array([r[2] for r in rows], pa.int64()),
            "at": pa.array(range(len(rows)), pa.int64()),
        }
    )
    best: dict[str, int] = {}
    for i, (k, ev, cr) in enumerate(rows):
        rank = (ev, -1 if cr is None else cr, i)
        j = best.get(k)
        if j is None or rank > (rows[j][1], -1 if rows[j][2] is None else rows[j][2], j):
            best[k] = i
    got = latest_rows(table, ("k",))
    assert got.column("at").to_pylist() == sorted(best.values())
    assert got.schema == table.schema


# ------------------------------------------------------------------ on-demand views, deadlines


def test_a_push_to_an_on_demand_view_is_a_bad_request_naming_feature_view(
    embedded_repo: Path, serve: Any
) -> None:
    s = serve(embedded_repo)
    rows = {"user_id": [1], "ratio": [1.0]}
    for to in ("online", "offline", "online_and_offline"):
        r = httpx.post(
            f"{s.url}/push", json={"feature_view": "scored", "rows": rows, "to": to}, timeout=30
        )
        assert r.status_code == 400, r.text
        msg = r.json()["error"]
        assert "feature_view 'scored'" in msg and "on-demand" in msg
    with grpc.insecure_channel(s.grpc_target) as ch:
        stub = pb_grpc.FeatureServingStub(ch)
        req = pb.PushRequest(
            feature_view="scored",
            rows={"user_id": pb.ValueList(ints=[1]), "ratio": pb.ValueList(doubles=[1.0])},
        )
        with pytest.raises(grpc.RpcError) as err:
            stub.Push(req, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "feature_view 'scored'" in err.value.details()
    with FeatureStore(embedded_repo) as store:
        with pytest.raises(BadRequestError, match="feature_view 'scored' is an on-demand") as exc:
            store.push("scored", rows)
    assert exc.value.field == "feature_view"


@pytest.mark.parametrize("deadline", [-5.0, float("nan"), float("inf"), 60_001.0])
def test_a_push_deadline_out_of_range_is_refused_over_grpc_and_in_process(
    embedded_repo: Path, serve: Any, deadline: float
) -> None:
    s = serve(embedded_repo)
    rows = _rows(9, [5], [T0 + HOUR])
    req = pb.PushRequest(
        feature_view="stats",
        deadline_ms=deadline,
        rows={
            "user_id": pb.ValueList(ints=[9]),
            "tx": pb.ValueList(ints=[5]),
            "amount": pb.ValueList(doubles=[1.0]),
            "event_timestamp": pb.ValueList(strings=rows["event_timestamp"]),
        },
    )
    with grpc.insecure_channel(s.grpc_target) as ch:
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.FeatureServingStub(ch).Push(req, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "deadline_ms" in err.value.details()
    engine = s.app.state.engine
    with pytest.raises(BadRequestError, match="deadline_ms"):
        engine.push("stats", rows, deadline_ms=deadline)
    # nothing was written by either
    got = engine.get_features(features=["stats:tx"], entities={"user_id": [9]})
    assert got.statuses["tx"] == ["NOT_FOUND"]


# ------------------------------------------------------------------ arrays with null elements


def _add_lists(repo: Path, ints: list[Any], flags: list[Any], emb: list[Any]) -> None:
    """A second lists file: user 2 one hour after T0 with these values."""
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array([2], pa.int64()),
                "event_timestamp": _ts([T0 + HOUR]),
                "ints": pa.array([ints], pa.list_(pa.int64())),
                "flags": pa.array([flags], pa.list_(pa.bool_())),
                "emb": pa.array([emb], pa.list_(pa.float64())),
            }
        ),
        repo / "data" / "lists" / "part-1.parquet",
    )


@pytest.mark.parametrize(
    ("ints", "flags", "feature"),
    [([1, None, 3], [True], "ints"), ([1], [False, None], "flags")],
)
def test_an_int_or_bool_array_with_a_null_element_is_null_online_and_offline(
    embedded_repo: Path, ints: list[Any], flags: list[Any], feature: str
) -> None:
    """Such an array has no online form: it is null as a whole, in the training set and
    online alike, and materialize writes the row (and every other) instead of failing."""
    _add_lists(embedded_repo, ints, flags, [1.0])
    with FeatureStore(embedded_repo) as store:
        store.materialize(T0 - timedelta(days=1), datetime.now(UTC), views=["lists"])
        got = store.get_online_features(
            ["lists:ints", "lists:flags", "lists:emb"], {"user_id": [2]}
        ).to_dict()
        spine = pl.DataFrame(
            {"user_id": [2], "event_timestamp": [T0 + 2 * HOUR]},
            schema={"user_id": pl.Int64, "event_timestamp": pl.Datetime("us", "UTC")},
        )
        train = store.get_historical_features(spine, ["lists:ints", "lists:flags"])
    whole = {"ints": ints, "flags": flags}
    for name in ("ints", "flags"):
        want = None if name == feature else whole[name]
        online = got[name][0]
        assert (None if online is None else list(online)) == want, name
        assert train[name].to_list() == [want], name
    assert list(got["emb"][0]) == [1.0]


def test_the_cli_materializes_an_array_with_a_null_element(embedded_repo: Path) -> None:
    _add_lists(embedded_repo, [None], [True], [1.0])
    out = subprocess.run(
        [sys.executable, "-m", "featurestore.cli", "-r", str(embedded_repo), "materialize",
         _iso(T0 - timedelta(days=1)), _iso(datetime.now(UTC)), "--views", "lists"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    with FeatureStore(embedded_repo) as store:
        got = store.get_online_features(["lists:ints", "lists:flags"], {"user_id": [2]})
    assert got.to_dict()["ints"] == [None]
    assert [list(v) for v in got.to_dict()["flags"]] == [[True]]


def test_a_null_element_in_a_float_array_is_stored_as_nan(embedded_repo: Path) -> None:
    _add_lists(embedded_repo, [4], [True], [1.0, None, 2.5])
    with FeatureStore(embedded_repo) as store:
        store.materialize(T0 - timedelta(days=1), datetime.now(UTC), views=["lists"])
        got = store.get_online_features(["lists:emb", "lists:ints"], {"user_id": [2]}).to_dict()
    emb = np.asarray(got["emb"][0])
    assert emb[0] == 1.0 and np.isnan(emb[1]) and emb[2] == 2.5
    assert list(got["ints"][0]) == [4]
