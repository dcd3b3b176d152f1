"""Push bounds: an event time more than ``stream.max_future`` after now is refused (nothing of
the push written, online or offline); REST push reads the JSON forms answers use (base64 bytes,
"NaN"/"Infinity"/"-Infinity") and refuses finite numbers a Float32 would store as infinity; a
join key too long for the embedded store is a bad request naming it, not a 503."""

from __future__ import annotations

import base64
import math
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import featurestore.online.serving._push as push_mod
from featurestore import Array, Bytes, Entity, FeatureView, Field, Float32, Float64, ParquetSource
from featurestore.online.keys import build_key
from featurestore.online.serving._proto import featurestore_pb2 as pb
from featurestore.online.serving._proto import featurestore_pb2_grpc as pb_grpc
from featurestore.online.serving._push_checks import json_values
from featurestore.online.serving.errors import BadRequestError
from featurestore.online.serving.grpc_server import to_value
from featurestore.store import FeatureStore

from .conftest import ServerThread

UTC = timezone.utc
HOUR_US = 3_600_000_000
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)
# a fixed "now" for the push clock (real time, whole seconds), so the edge is exact
NOW = int(datetime.now(UTC).timestamp()) * 1_000_000
F32_END = 2.0**128 - 2.0**103  # the least magnitude a float32 rounds to infinity
FEATURES = ["balance", "f32", "i32", "blob", "emb"]

DEFS = """
from featurestore import (Array, Bytes, Entity, FeatureView, Field, Float32, Float64, Int32,
                          ParquetSource)

acct = Entity("acct", join_keys=["acct_id"])
acct_stats = FeatureView(
    name="acct_stats", entities=[acct], source=ParquetSource("data/acct"),
    schema=[Field("balance", Float64), Field("f32", Float32), Field("i32", Int32),
            Field("blob", Bytes), Field("emb", Array(Float32))],
)
"""


def build_repo(root: Path, online: str = "embedded", redis_url: str = "", stream: str = "") -> Path:
    """An applied repo with one seed row; ``stream`` is extra YAML under ``stream:``."""
    repo = root / "repo"
    (repo / "data" / "acct").mkdir(parents=True)
    if online == "embedded":
        online_cfg = "  type: embedded\n  path: data/online\n  map_size: 64MB\n"
    else:
        online_cfg = f"  type: redis\n  url: {redis_url}\n"
    (repo / "featurestore.yaml").write_text(
        f"project: bounds\nonline_store:\n{online_cfg}"
        + (f"stream:\n  {stream}\n" if stream else "")
    )
    (repo / "definitions.py").write_text(DEFS)
    pq.write_table(
        pa.table(
            {
                "acct_id": ["seed"],
                "event_timestamp": pa.array([T0], pa.timestamp("us", tz="UTC")),
                "balance": [1.0],
                "f32": pa.array([1.0], pa.float32()),
                "i32": pa.array([1], pa.int32()),
                "blob": pa.array([b"\x00"], pa.binary()),
                "emb": pa.array([[1.0]], pa.list_(pa.float32())),
            }
        ),
        repo / "data" / "acct" / "part-0.parquet",
    )
    with FeatureStore(repo) as store:
        store.apply()
    return repo


def offline_files(repo: Path) -> list[str]:
    return sorted(p.name for p in (repo / "data" / "acct").iterdir())


def row(key: str, balance: float = 1.0, ts: Any = None, **over: Any) -> dict[str, Any]:
    r = {"acct_id": key, "balance": balance, "f32": 1.0, "i32": 1, "blob": None, "emb": None}
    if ts is not None:
        r["event_timestamp"] = ts
    r.update(over)
    return r


def columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    return {k: [r[k] for r in rows] for k in rows[0]}


class Refused(Exception):
    """A push refused as a bad request by any front end (the message it answered with)."""


class Front:
    """Pushes and online reads through one front end: in process, REST or gRPC."""

    def __init__(self, kind: str, repo: Path, server: ServerThread | None) -> None:
        self.kind = kind
        self.store = FeatureStore(repo) if server is None else None
        self.server = server

    def push(self, rows: list[dict[str, Any]], to: str = "online") -> int:
        cols = columns(rows)
        if self.store is not None:
            try:
                return self.store.push("acct_stats", cols, to=to)
            except BadRequestError as exc:
                raise Refused(str(exc)) from None
        assert self.server is not None
        if self.kind == "rest":
            body = {"feature_view": "acct_stats", "rows": cols, "to": to}
            r = httpx.post(f"{self.server.url}/push", json=body, timeout=30)
            if r.status_code == 400:
                raise Refused(r.json()["error"])
            assert r.status_code == 200, r.text
            return r.json()["rows_written"]
        req = pb.PushRequest(
            feature_view="acct_stats",
            rows={k: pb.ValueList(values=[to_value(v) for v in vs]) for k, vs in cols.items()},
            to=to,
        )
        with grpc.insecure_channel(self.server.grpc_target) as ch:
            try:
                return pb_grpc.FeatureServingStub(ch).Push(req, timeout=30).rows_written
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    raise Refused(exc.details()) from None
                raise

    def read(self, keys: list[str], feature: str = "balance") -> list[Any]:
        refs = [f"acct_stats:{feature}"]
        if self.store is not None:
            return self.store.get_online_features(refs, {"acct_id": keys}).to_dict()[feature]
        assert self.server is not None
        res = self.server.app.state.engine.get_features(features=refs, entities={"acct_id": keys})
        values = [v.item() if hasattr(v, "item") else v for v in res.columns[feature]]
        found = [s != "NOT_FOUND" for s in res.statuses[feature]]
        return [v if ok else None for v, ok in zip(values, found, strict=True)]

    def close(self) -> None:
        if self.store is not None:
            self.store.close()


@pytest.fixture(params=["embedded", "redis"])
def backend(request: pytest.FixtureRequest) -> tuple[str, str]:
    url = request.getfixturevalue("redis_url") if request.param == "redis" else ""
    return request.param, url


@pytest.fixture
def fixed_now(monkeypatch: pytest.MonkeyPatch) -> int:
    """The push clock stopped at NOW (servers run in this process: theirs too)."""
    monkeypatch.setattr(push_mod, "now_us", lambda: NOW)
    return NOW


def open_front(kind: str, repo: Path, serve: Any) -> Front:
    return Front(kind, repo, None if kind == "inproc" else serve(repo))


# ------------------------------------------------------------------ future event times


@pytest.mark.parametrize("kind", ["inproc", "rest", "grpc"])
def test_a_row_past_max_future_is_refused_and_nothing_of_its_push_is_written(
    tmp_path: Path, backend: tuple[str, str], kind: str, serve: Any, fixed_now: int
) -> None:
    repo = build_repo(tmp_path, *backend, stream="max_future: 2h")
    front = open_front(kind, repo, serve)
    try:
        before = offline_files(repo)
        edge = fixed_now + 2 * HOUR_US
        # exactly at the bound: taken, online and offline
        assert front.push([row("edge", 5.0, edge)], to="online_and_offline") == 1
        assert front.read(["edge"]) == [5.0]
        assert len(offline_files(repo)) == len(before) + 1
        before = offline_files(repo)
        # one microsecond past it, beside a good row: the whole push is refused
        bad = [row("ok", 7.0, fixed_now), row("late", 8.0, edge + 1)]
        with pytest.raises(Refused) as info:
            front.push(bad, to="online_and_offline")
        msg = str(info.value)
        assert "rows.event_timestamp[1]" in msg and "'acct_stats'" in msg, msg
        shown = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=edge + 1)
        assert shown.isoformat().replace("+00:00", "Z") in msg, msg
        assert "stream.max_future (2h)" in msg and "\n" not in msg
        assert front.read(["ok", "late"]) == [None, None]
        assert offline_files(repo) == before
        # and later pushes of the entity are not blocked
        assert front.push([row("ok", 9.0)]) == 1
        assert front.read(["ok"]) == [9.0]
    finally:
        front.close()


def test_the_repro_a_push_dated_2030_no_longer_blocks_later_pushes(tmp_path: Path) -> None:
    """The hunt's reproduction, in process with the default bound (1h)."""
    repo = build_repo(tmp_path)
    with FeatureStore(repo) as store:
        far = {"acct_id": ["x"], "balance": [2030.0], "f32": [1.0], "i32": [1], "blob": [None]}
        far.update(emb=[None], event_timestamp=["2030-01-01T00:00:00Z"])
        with pytest.raises(BadRequestError, match=r"rows.event_timestamp\[0\] is 2030-01-01T00"):
            store.push("acct_stats", far, to="online_and_offline")
        now = {**far, "balance": [1.0]}
        del now["event_timestamp"]
        assert store.push("acct_stats", now, to="online_and_offline") == 1
        assert store.get_online_features(["acct_stats:balance"], {"acct_id": ["x"]}).to_dict()[
            "balance"
        ] == [1.0]
        spine = {"acct_id": ["x"], "event_timestamp": [datetime.now(UTC) + timedelta(seconds=1)]}
        import polars as pl

        got = store.get_historical_features(pl.DataFrame(spine), ["acct_stats:balance"])
        assert got["balance"].to_list() == [1.0]


def test_the_default_bound_is_one_hour(tmp_path: Path, fixed_now: int) -> None:
    repo = build_repo(tmp_path)
    with FeatureStore(repo) as store:
        edge = fixed_now + HOUR_US
        assert store.push("acct_stats", columns([row("a", 1.0, edge)])) == 1
        with pytest.raises(BadRequestError) as info:
            store.push("acct_stats", columns([row("b", 1.0, edge + 1)]))
        assert info.value.field == "rows.event_timestamp"


# ------------------------------------------------------------------ the JSON forms of answers


@pytest.fixture(scope="module")
def json_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    s = ServerThread.of_repo(build_repo(tmp_path_factory.mktemp("json"))).start()
    yield s
    s.stop()


def rest_push(s: ServerThread, cols: dict[str, list[Any]]) -> httpx.Response:
    return httpx.post(
        f"{s.url}/push", json={"feature_view": "acct_stats", "rows": cols}, timeout=30
    )


def rest_read(s: ServerThread, key: str) -> dict[str, Any]:
    refs = [f"acct_stats:{f}" for f in FEATURES]
    r = httpx.post(
        f"{s.url}/get-online-features",
        json={"features": refs, "entities": {"acct_id": [key]}},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    return {
        n: res["values"][0] for n, res in zip(body["feature_names"], body["results"], strict=True)
    }


_keys = iter(range(10**9))

finite32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


def _spelled(v: float) -> float | str:
    """A float as JSON answers write it: NaN and infinities as protobuf's strings."""
    if math.isfinite(v):
        return v
    return "NaN" if v != v else ("Infinity" if v > 0 else "-Infinity")


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    blob=st.binary(max_size=40),
    balance=st.floats(),  # NaN and infinities included: answers spell them as strings
    f32=st.floats(width=32),
    i32=st.integers(-(2**31), 2**31 - 1),
    emb=st.lists(st.floats(width=32), max_size=4),  # NaN and infinities inside too
)
def test_a_value_read_over_rest_pushes_back_to_the_same_value(
    json_server: ServerThread, blob: bytes, balance: float, f32: float, i32: int, emb: list
) -> None:
    """Read a row over REST, push what was read under another key, read the same again."""
    first, second = f"a{next(_keys)}", f"b{next(_keys)}"
    sent = {"acct_id": [first], "balance": [balance], "f32": [f32], "i32": [i32], "emb": [emb]}
    sent["blob"] = [base64.b64encode(blob).decode()]
    for k in ("balance", "f32"):  # JSON has no NaN or infinity: the answers' spelling
        sent[k] = [_spelled(sent[k][0])]
    sent["emb"] = [[_spelled(v) for v in emb]]
    r = rest_push(json_server, sent)
    assert r.status_code == 200, r.text
    got = rest_read(json_server, first)
    assert base64.b64decode(got["blob"]) == blob
    assert got["i32"] == i32
    assert got["balance"] == sent["balance"][0]
    r = rest_push(json_server, {"acct_id": [second], **{k: [got[k]] for k in FEATURES}})
    assert r.status_code == 200, r.text
    assert rest_read(json_server, second) == {**got, "acct_id": second}


def test_non_base64_text_for_bytes_is_a_400_naming_column_and_row(
    json_server: ServerThread,
) -> None:
    ok = base64.b64encode(b"\x00\x01").decode()
    for bad in ("!!! not base64 !!!", "AAE", "AA E=", "é"):
        cols = columns([row("nb1", blob=ok), row("nb2", blob=bad)])
        r = rest_push(json_server, cols)
        assert r.status_code == 400, (bad, r.text)
        err = r.json()["error"]
        assert "rows.blob[1]" in err and "base64" in err and "'acct_stats'" in err, err
    assert rest_read(json_server, "nb1")["blob"] is None  # nothing of the push written
    assert rest_push(json_server, columns([row("nb1", blob=ok)])).status_code == 200
    assert rest_read(json_server, "nb1")["blob"] == ok  # the base64 text's bytes, not the text's


@pytest.mark.parametrize(
    ("column", "value", "where"),
    [
        ("f32", 1e300, "rows.f32[1]"),
        ("f32", -F32_END, "rows.f32[1]"),
        ("f32", 10**30 * 10**10, "rows.f32[1]"),  # an integer past Float32 (and int64)
        ("emb", [1.0, 1e39], "rows.emb[1][1]"),
    ],
)
def test_a_finite_value_past_float32_is_a_400_as_int32_overflow_is(
    json_server: ServerThread, column: str, value: Any, where: str
) -> None:
    good = f"of{next(_keys)}"
    r = rest_push(json_server, columns([row(good), row(f"of{next(_keys)}", **{column: value})]))
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert where in err and "'acct_stats'" in err and "infinity" in err, err
    assert rest_read(json_server, good)["balance"] is None
    r = rest_push(json_server, columns([row("of3", i32=2**31)]))
    assert r.status_code == 400 and "rows.i32[0]" in r.json()["error"]


def test_float32_edge_and_non_finite_values_are_kept(json_server: ServerThread) -> None:
    below = math.nextafter(F32_END, 0.0)  # rounds to the largest Float32
    largest = float(np.finfo(np.float32).max)
    cols = columns([row("e1", f32=below, emb=[-below, 1.0])])
    assert rest_push(json_server, cols).status_code == 200
    got = rest_read(json_server, "e1")
    assert got["f32"] == largest and got["emb"] == [-largest, 1.0]
    for spelled in ("NaN", "Infinity", "-Infinity"):
        assert (
            rest_push(json_server, columns([row("e2", f32=spelled, balance=spelled)])).status_code
            == 200
        )
        got = rest_read(json_server, "e2")
        assert got["f32"] == got["balance"] == spelled
    r = rest_push(json_server, columns([row("e3", balance="nan")]))  # only the answers' spelling
    assert r.status_code == 400 and "rows.balance[0]" in r.json()["error"]


def test_grpc_push_keeps_typed_bytes_and_refuses_float32_overflow(
    json_server: ServerThread,
) -> None:
    """gRPC values are typed: bytes_val is the bytes themselves (not base64 text), and a
    double past Float32 is refused as over REST."""
    raw = b"AAE="  # bytes that happen to read as base64: kept as they are
    front = Front("grpc", Path("."), json_server)
    assert front.push([row("g1", blob=raw, f32=0.5)]) == 1
    assert front.read(["g1"], "blob") == [raw]
    with pytest.raises(Refused, match=r"rows.f32\[0\]"):
        front.push([row("g2", f32=1e300)])
    assert front.read(["g2"]) == [None]


def _view() -> Any:
    return FeatureView(
        name="v",
        entities=[Entity("e", join_keys=["k"])],
        source=ParquetSource("data/v"),
        schema=[Field("blob", Bytes), Field("f32", Float32), Field("f64", Float64),
                Field("emb", Array(Float32))],
    )  # fmt: skip


@given(raw=st.binary(max_size=64), v=st.floats())
def test_json_values_against_base64_and_numpy_float32(raw: bytes, v: float) -> None:
    """Bytes: base64 text decoded, bytes kept. Floats: refused exactly when finite and numpy's
    float32 of it is infinite (Float64 takes every double)."""
    view = _view()
    text = base64.b64encode(raw).decode()
    got = json_values(view, {"blob": [text, raw, None]})
    assert got["blob"] == [raw, raw, None]
    with np.errstate(over="ignore"):
        overflows = math.isfinite(v) and bool(np.isinf(np.float32(v)))
    for col, value in (("f32", v), ("emb", [0.5, v])):
        if overflows:
            with pytest.raises(BadRequestError) as info:
                json_values(view, {col: [1.0, value]})
            assert info.value.field == f"rows.{col}"
            assert f"rows.{col}[1]" + ("[1]" if col == "emb" else "") in str(info.value)
        else:
            assert json_values(view, {col: [value]})[col] == [value]
    assert json_values(view, {"f64": [v]})["f64"] == [v]


# ------------------------------------------------------------------ join keys too long


def key_of(value: str) -> int:
    return len(build_key("bounds", "acct_stats", {"acct_id": value}))


@pytest.mark.parametrize("kind", ["inproc", "rest", "grpc"])
def test_a_key_longer_than_the_embedded_store_holds_is_a_bad_request(
    tmp_path: Path, kind: str, serve: Any
) -> None:
    repo = build_repo(tmp_path)
    front = open_front(kind, repo, serve)
    try:
        limit = 511  # LMDB's as built in py-lmdb
        fits = "k" * (limit - key_of(""))
        assert key_of(fits) == limit
        assert front.push([row(fits, 3.0)], to="online_and_offline") == 1
        assert front.read([fits]) == [3.0]
        before = offline_files(repo)
        over = fits + "k"
        with pytest.raises(Refused) as info:
            front.push([row("short"), row(over, 4.0)], to="online_and_offline")
        msg = str(info.value)
        assert "rows.acct_id[1]" in msg and f"{len(over)} bytes" in msg, msg
        assert f"at most {limit} bytes" in msg and f"{limit + 1} bytes" in msg, msg
        assert offline_files(repo) == before
        assert front.read(["short", over]) == [None, None]
    finally:
        front.close()


def test_redis_takes_a_key_the_embedded_store_cannot(tmp_path: Path, redis_url: str) -> None:
    repo = build_repo(tmp_path, "redis", redis_url)
    with FeatureStore(repo) as store:
        long = "k" * 2000
        assert store.push("acct_stats", columns([row(long, 6.0)])) == 1
        got = store.get_online_features(["acct_stats:balance"], {"acct_id": [long]})
        assert got.to_dict()["balance"] == [6.0]


def test_other_text_inside_a_float_array_is_a_400_naming_it(json_server: ServerThread) -> None:
    r = rest_push(json_server, columns([row("txt1", emb=[1.0, "one"])]))
    assert r.status_code == 400, r.text
    assert "rows.emb[0]" in r.json()["error"], r.text
    assert rest_read(json_server, "txt1")["emb"] is None  # nothing of the push written
