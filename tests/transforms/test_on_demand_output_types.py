"""On-demand outputs the output type shapes: served online as the training set holds them.

The training set is the oracle for every online path (in process, REST, gRPC, predict):

- a ``Float32`` output is the float32 of the result (online: a Python float of that float32),
  an int result of a float output rounds the same way on both sides;
- a result an ``Int32`` output cannot hold (or a finite one a ``Float32`` output would hold as
  infinity) is one EntityDataError line naming the view, feature, row and value, offline and
  online alike (400 over REST);
- 0/0 is NaN on both sides: a value (status PRESENT, ``"NaN"`` in JSON), as a stored NaN is;
- an ``Int32`` request field refuses a value it cannot hold in the training set as online.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
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

from featurestore import FeatureStore
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
                 schema=[Field("m", Float64), Field("c", Int32)])
req = RequestSource("req", schema=[Field("a", Float64), Field("n", Int64), Field("n32", Int32)])


@on_demand_feature(inputs=["a", "st:m"], output=Field("r32", Float32), sources=[req])
def r32(a: float, m: float) -> float:
    return a / 3.0 + m


@on_demand_feature(inputs=["n"], output=Field("f32i", Float32), sources=[req])
def f32i(n: int) -> int:
    return n * 3


@on_demand_feature(inputs=["a", "st:m"], output=Field("big32", Float32), sources=[req])
def big32(a: float, m: float) -> float:
    return a * m


@on_demand_feature(inputs=["n", "st:c"], output=Field("i32o", Int32), sources=[req])
def i32o(n: int, c: int) -> int:
    return n + c


@on_demand_feature(inputs=["a", "st:m"], output=Field("dz", Float64), sources=[req])
def dz(a: float, m: float) -> float:
    return a / m


@on_demand_feature(inputs=["n32"], output=Field("echo", Int64), sources=[req])
def echo(n32: int) -> int:
    return n32


odv = OnDemandFeatureView(name="odv", sources=[req, st],
                          features=[r32, f32i, big32, i32o, dz, echo])
svc = FeatureService(name="svc", features=["odv:r32", "st:m"])
"""
MODEL = """import numpy as np
FEATURE_NAMES = ["r32", "m"]


def predict(X):
    return np.asarray(X, dtype=np.float64)[:, 0] * 1e9
"""
# user -> (m, c); user 4's m is a stored NaN, user 7 has no row
ROWS = {1: (3.0, 2**31 - 1), 2: (0.0, 5), 3: (7.0, -(2**31)), 4: (math.nan, 0), 5: (1e38, 7),
        6: (-2.5, 100)}  # fmt: skip
USERS = [*ROWS, 7]
F32_MAX = float(np.finfo(np.float32).max)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """An applied, materialized repo with a python model on ``svc`` and a server over it."""
    root = tmp_path_factory.mktemp("odout") / "repo"
    (root / "data").mkdir(parents=True)
    then = datetime.now(timezone.utc) - timedelta(hours=1)
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array(list(ROWS), pa.int64()),
                "event_timestamp": pa.array([then] * len(ROWS), pa.timestamp("us", tz="UTC")),
                "m": pa.array([r[0] for r in ROWS.values()], pa.float64()),
                "c": pa.array([r[1] for r in ROWS.values()], pa.int32()),
            }
        ),
        root / "data" / "st.parquet",
    )
    # in-process calls go through the server's store: one embedded store per process
    with served_python_model(root, "odout", DEFS, MODEL, ["r32", "m"]) as server:
        yield SimpleNamespace(store=server.app.state.engine.store, server=server)


def _offline(store: FeatureStore, users: list[int], refs: list[str], **req: list[Any]) -> Any:
    spine = pl.DataFrame(
        {"user_id": users, "event_timestamp": [datetime.now(timezone.utc)] * len(users), **req}
    )
    return store.get_historical_features(spine, refs)


def _online(store: FeatureStore, users: list[int], refs: list[str], **req: list[Any]) -> Any:
    return store.get_online_features(refs, {"user_id": users}, request_data=req)


def _grpc(server: ServerThread, feature: str, users: list[int], **req: list[Any]) -> Any:
    """One on-demand feature of ``users`` over gRPC, with ``req`` as request data."""
    with grpc.insecure_channel(server.grpc_target) as ch:
        return pb_grpc.FeatureServingStub(ch).GetOnlineFeatures(
            pb.GetOnlineFeaturesRequest(
                features=[feature],
                entities={"user_id": pb.ValueList(values=[to_value(u) for u in users])},
                request_data={
                    k: pb.ValueList(values=[to_value(x) for x in v]) for k, v in req.items()
                },
            )
        )


def _bits(v: Any) -> Any:
    """A float by its bits (NaN equals NaN, -0.0 differs from 0.0); anything else as it is."""
    return ("f", struct.pack("<d", v)) if isinstance(v, float) else v


def _f32(x: float) -> float:
    return float(np.float32(x))


# ---- Float32 outputs --------------------------------------------------------------------------


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.lists(
        st.tuples(
            st.sampled_from([1, 2, 3, 4, 6, 7]),
            st.floats(-1e30, 1e30, allow_nan=False, allow_subnormal=True),
            st.integers(-(2**61), 2**61),
        ),
        min_size=1,
        max_size=6,
    )
)
# an int result a float64 would round to a float32 tie: rounded once, 2**60 + 2**37 (twice: 2**60)
@example(rows=[(1, 1.0, (2**60 + 2**36 + 1) // 3)])
def test_float32_outputs_online_are_the_training_values(
    repo: SimpleNamespace, rows: list[tuple[int, float, int]]
) -> None:
    users, a, n = [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]
    refs = ["odv:r32", "odv:f32i"]
    off = _offline(repo.store, users, refs, a=a, n=n)
    assert off.schema["r32"] == pl.Float32 and off.schema["f32i"] == pl.Float32
    on = _online(repo.store, users, refs, a=a, n=n)
    got = on.to_dict()
    for name in ("r32", "f32i"):
        want = off[name].to_list()
        assert [_bits(v) for v in got[name]] == [_bits(v) for v in want], name
        assert all(v is None or type(v) is float for v in got[name])
    # independently of both: the float32 of the float64 result, null for a null input
    m = [ROWS.get(u, (None,))[0] for u in users]
    oracle = [
        None if x is None or x != x else _f32(ai / 3.0 + x) for ai, x in zip(a, m, strict=True)
    ]
    assert [_bits(v) for v in got["r32"]] == [_bits(v) for v in oracle]
    assert got["f32i"] == [float(np.float32(np.int64(ni * 3))) for ni in n]  # rounded once


def test_float32_rounding_over_rest_grpc_and_predict(repo: SimpleNamespace) -> None:
    """1/3 + 3 as a float32 everywhere online; predict scores it as batch_score does."""
    users, a = [1, 6], [1.0, 0.1]
    want = _offline(repo.store, users, ["odv:r32"], a=a)["r32"].to_list()
    assert want[0] == _f32(1.0 / 3.0 + 3.0) != 1.0 / 3.0 + 3.0
    body = {"features": ["odv:r32"], "entities": {"user_id": users}, "request_data": {"a": a}}
    r = httpx.post(f"{repo.server.url}/get-online-features", json=body, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["results"][1]["values"] == want
    resp = _grpc(repo.server, "odv:r32", users, a=a)
    assert {c.name: column_values(c) for c in resp.columns}["r32"] == want
    spine = pl.DataFrame(
        {"user_id": users, "event_timestamp": [datetime.now(timezone.utc)] * 2, "a": a}
    )
    batch = repo.store.batch_score("m", spine).frame["score"].to_list()
    assert batch == [w * 1e9 for w in want]
    assert list(repo.store.predict("m", {"user_id": users}, request_data={"a": a}).scores) == batch
    r = httpx.post(
        f"{repo.server.url}/predict",
        json={"model": "m", "entities": {"user_id": users}, "request_data": {"a": a}},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    assert r.json()["scores"] == batch


def test_a_finite_float32_overflow_fails_alike_and_infinity_is_a_value(
    repo: SimpleNamespace,
) -> None:
    """10 * 1e38 is finite but no float32: one line on both sides; inf * 1e38 is infinity."""
    users, a = [5, 5, 5], [1.0, math.inf, 3.4028235]
    off = _offline(repo.store, users, ["odv:big32"], a=a)["big32"].to_list()
    on = _online(repo.store, users, ["odv:big32"], a=a).to_dict()["big32"]
    assert off == on == [_f32(1e38), math.inf, F32_MAX]  # 3.4028235e38 still rounds to the max
    for a2, row in (([1.0, 10.0], 1), ([-4.0], 0)):
        shown = re.escape(repr(a2[row] * 1e38))
        line = rf"^on-demand feature 'odv:big32' computed {shown} at %s row {row}, .*Float32"
        with pytest.raises(EntityDataError, match=line % "spine"):
            _offline(repo.store, [5] * len(a2), ["odv:big32"], a=a2)
        with pytest.raises(EntityDataError, match=line % "entity"):
            _online(repo.store, [5] * len(a2), ["odv:big32"], a=a2)


# ---- Int32 outputs ----------------------------------------------------------------------------


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.lists(
        st.tuples(st.sampled_from(USERS), st.integers(-(2**33), 2**33)), min_size=1, max_size=6
    )
)
def test_int32_outputs_agree_or_fail_alike(
    repo: SimpleNamespace, rows: list[tuple[int, int]]
) -> None:
    users, n = [r[0] for r in rows], [r[1] for r in rows]
    sums = [None if u not in ROWS else ni + ROWS[u][1] for u, ni in rows]
    bad = next((i for i, s in enumerate(sums) if s is not None and not -(2**31) <= s < 2**31), None)
    if bad is None:
        off = _offline(repo.store, users, ["odv:i32o"], n=n)
        assert off.schema["i32o"] == pl.Int32
        on = _online(repo.store, users, ["odv:i32o"], n=n)
        assert off["i32o"].to_list() == on.to_dict()["i32o"] == sums
        return
    one_line = (
        rf"^on-demand feature 'odv:i32o' computed {sums[bad]} at %s row {bad}, .*Int32[^\n]*$"
    )
    with pytest.raises(EntityDataError, match=one_line % "spine"):
        _offline(repo.store, users, ["odv:i32o"], n=n)
    with pytest.raises(EntityDataError, match=one_line % "entity"):
        _online(repo.store, users, ["odv:i32o"], n=n)


def test_int32_out_of_range_over_rest_and_grpc(repo: SimpleNamespace) -> None:
    """The request error (400 / INVALID_ARGUMENT) with the same line, not a served 2**31."""
    body = {
        "features": ["odv:i32o"],
        "entities": {"user_id": [2, 1]},
        "request_data": {"n": [1, 1]},
    }
    r = httpx.post(f"{repo.server.url}/get-online-features", json=body, timeout=10)
    assert r.status_code == 400, r.text
    assert r.json()["error"].startswith(
        "on-demand feature 'odv:i32o' computed 2147483648 at entity row 1, which its Int32"
    )
    with pytest.raises(grpc.RpcError) as err:
        _grpc(repo.server, "odv:i32o", [1], n=[1])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'odv:i32o' computed 2147483648 at entity row 0" in (err.value.details() or "")


# ---- 0/0 ---------------------------------------------------------------------------------------


def test_zero_by_zero_is_nan_online_as_offline(repo: SimpleNamespace) -> None:
    """0/0 NaN, 1/0 inf, a stored-NaN input or a missing row null: the same on every path."""
    users, a = [2, 2, 2, 4, 7], [0.0, 1.0, -1.0, 1.0, 1.0]
    off = _offline(repo.store, users, ["odv:dz"], a=a)["dz"]
    assert off.is_null().to_list() == [False, False, False, True, True]
    want = off.to_list()
    assert math.isnan(want[0]) and want[1:3] == [math.inf, -math.inf]
    on = _online(repo.store, users, ["odv:dz", "st:m"], a=a)
    assert [_bits(v) for v in on.to_dict()["dz"]] == [_bits(v) for v in want]
    present = ["PRESENT"] * 3 + ["NOT_FOUND"] * 2
    assert [s.name for s in on.statuses["dz"]] == present
    assert math.isnan(on.to_dict()["m"][3]) and on.statuses["m"][3].name == "PRESENT"  # stored
    body = {
        "features": ["odv:dz", "st:m"],
        "entities": {"user_id": users},
        "request_data": {"a": a},
    }
    r = httpx.post(f"{repo.server.url}/get-online-features", json=body, timeout=10)
    assert r.status_code == 200, r.text
    dz, m = r.json()["results"][1:]
    assert dz == {"values": ["NaN", "Infinity", "-Infinity", None, None], "statuses": present}
    assert m["values"][3] == "NaN" and m["statuses"][3] == "PRESENT"  # a NaN served as a NaN
    resp = _grpc(repo.server, "odv:dz", users, a=a)
    col = next(c for c in resp.columns if c.name == "dz")
    assert [_bits(v) for v in column_values(col)] == [_bits(v) for v in want]


# ---- Int32 request fields -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n32", "row"), [([5, 2**40], 1), ([-(2**31) - 1], 0), ([None, 2**31], 1)], ids=str
)
def test_an_int32_request_field_out_of_range_is_refused_offline_as_online(
    repo: SimpleNamespace, n32: list[int | None], row: int
) -> None:
    users = [1] * len(n32)
    v = n32[row]
    with pytest.raises(
        EntityDataError,
        match=rf"^request field 'n32' is {v} .*at entity row {row}; on-demand feature view 'odv'",
    ):
        _online(repo.store, users, ["odv:echo"], n32=n32)
    spine_n32 = pl.Series("n32", n32, dtype=pl.Int64)
    with pytest.raises(
        EntityDataError,
        match=rf"^request field 'n32' is {v} at spine row {row}; on-demand feature view 'odv' "
        "declares it int32$",
    ):
        _offline(repo.store, users, ["odv:echo"], n32=spine_n32)


def test_int32_request_fields_in_range_and_nulls_pass_alike(repo: SimpleNamespace) -> None:
    n32 = [2**31 - 1, -(2**31), None, 0]
    spine = pl.Series("n32", n32, dtype=pl.Int64)
    off = _offline(repo.store, [1] * 4, ["odv:echo"], n32=spine)["echo"].to_list()
    assert off == _online(repo.store, [1] * 4, ["odv:echo"], n32=n32).to_dict()["echo"] == n32


def test_a_uint64_spine_column_beyond_int64_is_refused() -> None:
    """The range check reads unsigned columns by value (2**63 does not wrap to a negative)."""
    from featurestore.offline.mixed import _check_request_range

    col = pa.array([1, None, 2**63], pa.uint64())
    with pytest.raises(EntityDataError, match=r"'n' is 9223372036854775808 at spine row 2;"):
        _check_request_range("v", "n", "int64", col)
    _check_request_range("v", "n", "int64", pa.array([2**63 - 1, None], pa.uint64()))
    _check_request_range("v", "n", "int32", pa.array([None, None], pa.int64()))
