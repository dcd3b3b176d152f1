"""A Float32 request field reaches the transform as a float32, offline and online alike.

The same value gives the same on-demand output on every path: a training set over a spine
whose request column is stored in Parquet as float32 or as float64 (and batch_score over
both), in process (``get_online_features``, the engine, ``predict``), REST and gRPC. A Float64
field is not rounded; an Int32 field refuses in the training set what a request refuses (a
float that is no int32); a finite value past float32's range is refused on every path.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import httpx
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from featurestore.errors import EntityDataError
from featurestore.online.serving._proto import featurestore_pb2 as pb
from featurestore.online.serving._proto import featurestore_pb2_grpc as pb_grpc
from featurestore.online.serving._wire import column_values, to_value
from tests.serving.conftest import ServerThread, served_python_model

DEFS = """
from featurestore import (Entity, FeatureService, FeatureView, Field, Float32, Float64, Int32,
                          Int64, OnDemandFeatureView, ParquetSource, RequestSource,
                          on_demand_feature)

user = Entity("user", join_keys=["user_id"])
st = FeatureView(name="st", entities=[user], source=ParquetSource("data/st.parquet"),
                 schema=[Field("m", Float64)])
req = RequestSource("req", schema=[Field("a", Float32), Field("b", Float64), Field("k", Int32)])


@on_demand_feature(inputs=["a"], output=Field("seen", Float64), sources=[req])
def seen(a: float) -> float:
    return a


@on_demand_feature(inputs=["a", "st:m"], output=Field("mix", Float64), sources=[req])
def mix(a: float, m: float) -> float:
    return a * 3.0 + m


@on_demand_feature(inputs=["b"], output=Field("seen64", Float64), sources=[req])
def seen64(b: float) -> float:
    return b


@on_demand_feature(inputs=["k"], output=Field("half", Float64), sources=[req])
def half(k: float) -> float:
    return k / 2.0


odv = OnDemandFeatureView(name="odv", sources=[req, st], features=[seen, mix, seen64, half])
svc = FeatureService(name="svc", features=["odv:seen", "odv:mix"])
"""
MODEL = """import numpy as np
FEATURE_NAMES = ["seen", "mix"]


def predict(X):
    X = np.asarray(X, dtype=np.float64)
    return X[:, 0] * 7.0 + X[:, 1]
"""
M = {1: 0.5, 2: -2.25, 3: 1e-3}  # user -> st:m
REFS = ["odv:seen", "odv:mix"]
# values whose float32 differs from the float64 sent: 0.1, 3333333333.33 (3333333248 as a
# float32), 1/3; 2**24 + 1 is an int that float32 cannot hold either
VALUES = [0.1, 3333333333.33, 1 / 3, -2.5, 16777217.0, 1e-40]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """An applied, materialized repo with a python model on ``svc`` and a server over it."""
    root = tmp_path_factory.mktemp("req32") / "repo"
    (root / "data").mkdir(parents=True)
    then = datetime.now(timezone.utc) - timedelta(hours=1)
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array(list(M), pa.int64()),
                "event_timestamp": pa.array([then] * len(M), pa.timestamp("us", tz="UTC")),
                "m": pa.array(list(M.values()), pa.float64()),
            }
        ),
        root / "data" / "st.parquet",
    )
    # in-process calls go through the server's store: one embedded store per process
    with served_python_model(root, "req32", DEFS, MODEL, ["seen", "mix"]) as server:
        yield SimpleNamespace(root=root, store=server.app.state.engine.store, server=server)


def _spine(path: Path, users: list[int], col: str, values: list[Any], kind: pa.DataType) -> Path:
    """A Parquet spine of ``users`` now, with request column ``col`` stored as ``kind``."""
    now = datetime.now(timezone.utc)
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array(users, pa.int64()),
                "event_timestamp": pa.array([now] * len(users), pa.timestamp("us", tz="UTC")),
                col: pa.array(values, kind),
            }
        ),
        path,
    )
    return path


def _bits(v: Any) -> Any:
    """A float by its bits (NaN equals NaN); anything else as it is."""
    return ("f", struct.pack("<d", v)) if isinstance(v, float) else v


def _same(got: list[Any], want: list[Any]) -> bool:
    return [_bits(v) for v in got] == [_bits(v) for v in want]


def _f32(x: float) -> float:
    return float(np.float32(x))


def _rest(server: ServerThread, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, timeout=30)


def _grpc_features(server: ServerThread, users: list[int], **req: list[Any]) -> dict[str, list]:
    with grpc.insecure_channel(server.grpc_target) as ch:
        resp = pb_grpc.FeatureServingStub(ch).GetOnlineFeatures(
            pb.GetOnlineFeaturesRequest(
                features=REFS,
                entities={"user_id": pb.ValueList(values=[to_value(u) for u in users])},
                request_data={
                    k: pb.ValueList(values=[to_value(x) for x in v]) for k, v in req.items()
                },
            ),
            timeout=30,
        )
    return {c.name: column_values(c) for c in resp.columns}


def _grpc_predict(server: ServerThread, users: list[int], a: list[Any]) -> list[float]:
    with grpc.insecure_channel(server.grpc_target) as ch:
        resp = pb_grpc.FeatureServingStub(ch).Predict(
            pb.PredictRequest(
                model="m",
                entities={"user_id": pb.ValueList(values=[to_value(u) for u in users])},
                request_data={"a": pb.ValueList(values=[to_value(x) for x in a])},
            ),
            timeout=30,
        )
    return list(resp.scores)


# ---- every path, value for value ---------------------------------------------------------------


def test_float32_and_float64_spines_and_every_online_path_agree(
    repo: SimpleNamespace, tmp_path: Path
) -> None:
    users = [1, 2, 3, 1, 2, 3]
    a = VALUES
    want_seen = [_f32(x) for x in a]  # the oracle: what a float32 column holds, widened
    assert want_seen[0] != 0.1 and want_seen[1] == 3333333248.0 and want_seen[4] == 16777216.0
    want_mix = [s * 3.0 + M[u] for s, u in zip(want_seen, users, strict=True)]
    store = repo.store
    for kind in (pa.float32(), pa.float64()):
        off = store.get_historical_features(
            _spine(tmp_path / f"spine_{kind}.parquet", users, "a", a, kind), REFS
        )
        assert _same(off["seen"].to_list(), want_seen), kind
        assert _same(off["mix"].to_list(), want_mix), kind
    on = store.get_online_features(REFS, {"user_id": users}, request_data={"a": a}).to_dict()
    assert _same(on["seen"], want_seen) and _same(on["mix"], want_mix)
    engine = repo.server.app.state.engine
    res = engine.get_features(features=REFS, entities={"user_id": users}, request_data={"a": a})
    got = res.columns
    assert _same(got["seen"], want_seen) and _same(got["mix"], want_mix)
    r = _rest(
        repo.server,
        "/get-online-features",
        {"features": REFS, "entities": {"user_id": users}, "request_data": {"a": a}},
    )
    assert r.status_code == 200, r.text
    cols = r.json()["results"]
    assert _same(cols[1]["values"], want_seen) and _same(cols[2]["values"], want_mix)
    g = _grpc_features(repo.server, users, a=a)
    assert _same(g["seen"], want_seen) and _same(g["mix"], want_mix)


def test_predict_scores_equal_batch_score_over_both_spines(
    repo: SimpleNamespace, tmp_path: Path
) -> None:
    users, a = [1, 2, 3, 1, 2, 3], VALUES
    want = [_f32(x) * 7.0 + (_f32(x) * 3.0 + M[u]) for x, u in zip(a, users, strict=True)]
    for kind in (pa.float32(), pa.float64()):
        spine = _spine(tmp_path / f"bs_{kind}.parquet", users, "a", a, kind)
        batch = repo.store.batch_score("m", spine).frame["score"].to_list()
        assert _same(batch, want), kind
    got = repo.store.predict("m", {"user_id": users}, request_data={"a": a}).scores
    assert _same(list(got), want)
    r = _rest(repo.server, "/predict", {"model": "m", "entities": {"user_id": users},
                                         "request_data": {"a": a}})  # fmt: skip
    assert r.status_code == 200, r.text
    assert _same(r.json()["scores"], want)
    assert _same(_grpc_predict(repo.server, users, a), want)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    a=st.lists(
        st.one_of(
            st.none(),
            st.floats(-3.4e38, 3.4e38, allow_nan=False, allow_subnormal=True),
            st.integers(-(2**62), 2**62),
        ),
        min_size=1,
        max_size=6,
    )
)
@example(a=[0.1, 3333333333.33, None, 2**53 + 2**29 + 1, -(2**60) - 2**36 - 1])
def test_in_process_rows_equal_the_spines(repo: SimpleNamespace, a: list[Any]) -> None:
    """Any number and a null: the online row is the float32 spine's row and the float64
    spine's; ints sent as ints are rounded once from the integer, as an int64 column is."""
    users = [1] * len(a)
    floats = [None if v is None else float(v) for v in a]
    ints = [None if v is None else (v if isinstance(v, int) else 0) for v in a]
    null = np.array([v is None for v in a])
    columns = {
        "f32": pa.array(np.array([0.0 if v is None else v for v in floats], np.float32), mask=null),
        "f64": pa.array(np.array([0.0 if v is None else v for v in floats], np.float64), mask=null),
        "i64": pa.array(np.array([0 if v is None else v for v in ints], np.int64), mask=null),
    }
    sent = {"f32": floats, "f64": floats, "i64": ints}
    now = datetime.now(timezone.utc)
    for kind, col in columns.items():
        on = repo.store.get_online_features(
            ["odv:seen"], {"user_id": users}, request_data={"a": sent[kind]}
        ).to_dict()["seen"]
        spine = pa.table(
            {"user_id": pa.array(users, pa.int64()),
             "event_timestamp": pa.array([now] * len(a), pa.timestamp("us", tz="UTC")),
             "a": col}
        )  # fmt: skip
        off = repo.store.get_historical_features(spine, ["odv:seen"])["seen"].to_list()
        assert _same(on, off), kind
        if kind == "i64":
            want = [None if v is None else float(np.float32(np.int64(v))) for v in ints]
        else:
            want = [None if v is None else _f32(v) for v in floats]
        assert _same(on, want), kind


def test_a_float64_field_is_not_rounded(repo: SimpleNamespace) -> None:
    b = [0.1, 3333333333.33]
    on = repo.store.get_online_features(
        ["odv:seen64"], {"user_id": [1, 1]}, request_data={"b": b}
    ).to_dict()["seen64"]
    spine = pl.DataFrame(
        {"user_id": [1, 1], "event_timestamp": [datetime.now(timezone.utc)] * 2, "b": b}
    )
    off = repo.store.get_historical_features(spine, ["odv:seen64"])["seen64"].to_list()
    assert on == off == b


# ---- values a field's type cannot hold -------------------------------------------------------


def test_a_finite_value_past_float32_is_refused_on_every_path(
    repo: SimpleNamespace, tmp_path: Path
) -> None:
    users, a = [1, 1], [1.0, 1e39]
    spine = _spine(tmp_path / "big.parquet", users, "a", a, pa.float64())
    with pytest.raises(
        EntityDataError,
        match=r"^request field 'a' is 1e\+39 at spine row 1; on-demand feature view 'odv' "
        r"declares it float32, which holds finite values up to about \+-3.4e\+38$",
    ):
        repo.store.get_historical_features(spine, REFS)
    with pytest.raises(EntityDataError, match=r"^request field 'a' is 1e\+39, which its Float32"):
        repo.store.get_online_features(REFS, {"user_id": users}, request_data={"a": a})
    line = (
        "request_data.a[1] is 1e+39; request field 'a' of on-demand feature view 'odv' is "
        "float32, which holds finite values up to about +-3.4e+38"
    )
    body = {"features": REFS, "entities": {"user_id": users}, "request_data": {"a": a}}
    r = _rest(repo.server, "/get-online-features", body)
    assert (r.status_code, r.json()) == (400, {"error": line})
    with pytest.raises(grpc.RpcError) as err:
        _grpc_features(repo.server, users, a=a)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == line
    # infinities and NaN are values a float32 holds: the same on both sides
    a = [math.inf, -math.inf, 3.4028235e38]
    off = repo.store.get_historical_features(
        _spine(tmp_path / "inf.parquet", [1] * 3, "a", a, pa.float64()), ["odv:seen"]
    )["seen"].to_list()
    on = repo.store.get_online_features(["odv:seen"], {"user_id": [1] * 3}, request_data={"a": a})
    assert off == on.to_dict()["seen"] == [math.inf, -math.inf, float(np.finfo(np.float32).max)]


@pytest.mark.parametrize(
    ("k", "row", "shown"),
    [([1.0, 1.5], 1, "1.5"), ([2.0**31], 0, "2147483648.0"), ([None, math.inf], 1, "inf")],
    ids=str,
)
def test_an_int32_field_refuses_a_float_spine_value_a_request_refuses(
    repo: SimpleNamespace, k: list[Any], row: int, shown: str
) -> None:
    """A float column (as pandas makes of ints with nulls) passes whole numbers in range;
    1.5 or 2**31 is refused as online refuses it, not handed to the function."""
    spine = pl.DataFrame(
        {"user_id": [1] * len(k), "event_timestamp": [datetime.now(timezone.utc)] * len(k),
         "k": pl.Series(k, dtype=pl.Float64)}
    )  # fmt: skip
    with pytest.raises(
        EntityDataError,
        match=rf"^request field 'k' is {shown} at spine row {row}; on-demand feature view "
        "'odv' declares it int32$",
    ):
        repo.store.get_historical_features(spine, ["odv:half"])
    # online, a float is refused for an int field (whole or not): 400 naming the value
    body = {"features": ["odv:half"], "entities": {"user_id": [1]},
            "request_data": {"k": [k[row]]}}  # fmt: skip
    r = httpx.post(
        f"{repo.server.url}/get-online-features",
        content=json.dumps(body, allow_nan=True),
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 400 and r.json()["error"].startswith("request_data.k[0] is "), r.text


def test_an_int32_field_from_a_float_column_of_whole_numbers_and_nulls(
    repo: SimpleNamespace,
) -> None:
    k = [3.0, None, float("nan"), -(2.0**31)]
    spine = pl.DataFrame(
        {"user_id": [1] * 4, "event_timestamp": [datetime.now(timezone.utc)] * 4,
         "k": pl.Series(k, dtype=pl.Float64)}
    )  # fmt: skip
    off = repo.store.get_historical_features(spine, ["odv:half"])["half"].to_list()
    on = repo.store.get_online_features(
        ["odv:half"], {"user_id": [1] * 4}, request_data={"k": [3, None, None, -(2**31)]}
    ).to_dict()["half"]
    assert off == on == [1.5, None, None, -(2.0**30)]
