"""Source values the online answer cannot hold as they are, served alike offline and online:
a UnixTimestamp outside the years 1-9999 is null, an array's null element is NaN in a float
array and makes an int or bool array null as a whole; materialize writes every other row."""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featurestore._time import EPOCH
from featurestore.online.serving._proto import featurestore_pb2 as pb
from featurestore.online.serving._proto import featurestore_pb2_grpc as pb_grpc
from featurestore.online.serving.grpc_server import column_values
from featurestore.store import FeatureStore
from featurestore.types import TIME_MAX_US, TIME_MIN_US
from tests.serving.conftest import ServerThread

UTC = timezone.utc
NOW = datetime.now(UTC).replace(microsecond=0)
EVENT = NOW - timedelta(hours=1)

DEFS = """
from featurestore import (Array, Bool, Entity, FeatureView, Field, Float32, Float64, Int32,
                          Int64, ParquetSource, UnixTimestamp)

e = Entity("e", join_keys=["k"])
times = FeatureView(name="times", entities=[e], source=ParquetSource("data/times.parquet"),
                    schema=[Field("seen", UnixTimestamp), Field("n", Int64)])
arrays = FeatureView(name="arrays", entities=[e], source=ParquetSource("data/arrays.parquet"),
                     schema=[Field("i64", Array(Int64)), Field("i32", Array(Int32)),
                             Field("flags", Array(Bool)), Field("f64", Array(Float64)),
                             Field("f32", Array(Float32))])
"""
ARRAY_TYPES = {
    "i64": pa.int64(),
    "i32": pa.int32(),
    "flags": pa.bool_(),
    "f64": pa.float64(),
    "f32": pa.float32(),
}
EDGES = [
    TIME_MIN_US,
    TIME_MAX_US,
    TIME_MIN_US - 1,
    TIME_MAX_US + 1,
    1_764_000_000_000_000_000,  # nanoseconds written as microseconds: year 57868
    2**63 - 1,
    -(2**63),
    0,
]


def _write_times(repo: Path, seen: list[int | None]) -> None:
    n = len(seen)
    pq.write_table(
        pa.table(
            {
                "k": pa.array(range(n), pa.int64()),
                "event_timestamp": pa.array([EVENT] * n, pa.timestamp("us", tz="UTC")),
                "seen": pa.array(seen, pa.int64()),
                "n": pa.array(range(n), pa.int64()),
            }
        ),
        repo / "data" / "times.parquet",
    )


def _write_arrays(repo: Path, rows: list[dict[str, Any]]) -> None:
    n = len(rows)
    cols: dict[str, Any] = {
        "k": pa.array(range(n), pa.int64()),
        "event_timestamp": pa.array([EVENT] * n, pa.timestamp("us", tz="UTC")),
    }
    for name, t in ARRAY_TYPES.items():
        cols[name] = pa.array([r[name] for r in rows], pa.list_(t))
    pq.write_table(pa.table(cols), repo / "data" / "arrays.parquet")


def _build(root: Path, online: str = "  type: embedded\n  path: data/online\n") -> Path:
    repo = root / "repo"
    (repo / "data").mkdir(parents=True)
    (repo / "featurestore.yaml").write_text(f"project: edges\nonline_store:\n{online}")
    (repo / "definitions.py").write_text(DEFS)
    _write_times(repo, EDGES)
    _write_arrays(repo, [{name: [True] if name == "flags" else [1] for name in ARRAY_TYPES}])
    with FeatureStore(repo) as store:
        store.apply()
    return repo


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return _build(tmp_path)


def _time(us: int) -> datetime | None:
    """The oracle: a time the years 1-9999 hold, else null."""
    return EPOCH + timedelta(microseconds=us) if TIME_MIN_US <= us <= TIME_MAX_US else None


def _served_array(name: str, v: list[Any] | None) -> list[Any] | None:
    """The oracle of an array value: a float array's null element is NaN; an int or bool array
    holding one is null; a Float32 array's elements rounded to float32."""
    if v is None:
        return None
    if name in ("f64", "f32"):
        out = [math.nan if x is None else x for x in v]
        if name == "f32":
            import numpy as np

            out = [float(x) for x in np.asarray(out, dtype=np.float32)]
        return out
    return None if None in v else list(v)


def _same(a: Any, b: Any) -> bool:
    """Equality with NaN equal to NaN, inside lists too."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return bool(a == b)


def _offline(store: FeatureStore, refs: list[str], n: int) -> dict[str, list[Any]]:
    spine = pl.DataFrame({"k": list(range(n)), "event_timestamp": [NOW] * n})
    out = store.get_historical_features(spine, refs)
    return {r.split(":")[1]: out[r.split(":")[1]].to_list() for r in refs}


def _materialize(store: FeatureStore, view: str) -> int:
    res = store.materialize(EVENT - timedelta(hours=1), NOW, views=[view], overwrite=True)
    return res.rows[view]


_times = st.lists(
    st.one_of(
        st.none(),
        st.sampled_from(EDGES),
        st.integers(TIME_MIN_US - 3, TIME_MIN_US + 3),
        st.integers(TIME_MAX_US - 3, TIME_MAX_US + 3),
        st.integers(-(2**63), 2**63 - 1),
        st.integers(TIME_MIN_US, TIME_MAX_US),
    ),
    min_size=1,
    max_size=12,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seen=_times)
def test_a_time_outside_the_years_1_to_9999_is_null_offline_and_online(
    repo: Path, seen: list[int | None]
) -> None:
    """Training set, materialize and the online answer agree on every int64 value, the
    extremes included: a time a datetime holds, else null (never an error)."""
    _write_times(repo, seen)
    n = len(seen)
    with FeatureStore(repo) as store:
        off = _offline(store, ["times:seen", "times:n"], n)
        assert _materialize(store, "times") == n
        on = store.get_online_features(["times:seen", "times:n"], {"k": list(range(n))})
        got = on.to_dict()
    want = [None if us is None else _time(us) for us in seen]
    assert off["seen"] == want
    assert got["seen"] == want
    assert got["n"] == off["n"] == list(range(n))
    assert on.to_arrow().column("seen").to_pylist() == want


_elements = {
    "i64": st.integers(-(2**63), 2**63 - 1),
    "i32": st.integers(-(2**31), 2**31 - 1),
    "flags": st.booleans(),
    "f64": st.floats(allow_nan=False),
    "f32": st.floats(width=32, allow_nan=False),
}
_array_row = st.fixed_dictionaries(
    {
        name: st.one_of(st.none(), st.lists(st.one_of(st.none(), el), max_size=4))
        for name, el in _elements.items()
    }
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=st.lists(_array_row, min_size=1, max_size=8))
def test_array_null_elements_serve_alike_and_never_stop_materialize(
    repo: Path, rows: list[dict[str, Any]]
) -> None:
    """Every row is written, whatever its arrays hold, and online serves what the training set
    gives: NaN for a float array's null element, null for an int or bool array holding one."""
    _write_arrays(repo, rows)
    n = len(rows)
    refs = [f"arrays:{name}" for name in ARRAY_TYPES]
    with FeatureStore(repo) as store:
        off = _offline(store, refs, n)
        assert _materialize(store, "arrays") == n
        got = store.get_online_features(refs, {"k": list(range(n))}).to_dict()
    for name in ARRAY_TYPES:
        want = [_served_array(name, r[name]) for r in rows]
        online = [None if v is None else list(v) for v in got[name]]
        assert _same(off[name], want), name
        assert _same(online, want), name


# ------------------------------------------------------------------ REST and gRPC


@pytest.fixture
def served(tmp_path: Path, redis_url: str) -> Iterator[tuple[Path, ServerThread]]:
    """A repo on Redis holding the edge times and arrays with null elements, materialized,
    and a server over it."""
    repo = _build(tmp_path, f"  type: redis\n  url: {redis_url}\n")
    _write_arrays(
        repo,
        [
            {"i64": [None, 3], "i32": [1], "flags": [None, True], "f64": [None, 1.5], "f32": []},
            {"i64": [1], "i32": [2, None], "flags": [False], "f64": [2.0], "f32": [None, 0.5]},
        ],
    )
    with FeatureStore(repo) as store:
        assert _materialize(store, "times") == len(EDGES)
        assert _materialize(store, "arrays") == 2
    s = ServerThread.of_repo(repo).start()
    yield repo, s
    s.stop()


def _rest_time(v: str | None) -> datetime | None:
    return None if v is None else datetime.fromisoformat(v.replace("Z", "+00:00"))


def _rest_float(v: Any) -> Any:
    if isinstance(v, list):
        return [_rest_float(x) for x in v]
    return {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}.get(v, v)


def test_rest_and_grpc_serve_the_training_sets_values(
    served: tuple[Path, ServerThread],
) -> None:
    """No 500 for an entity holding a time past 9999: REST, gRPC and the training set give the
    same values, null for such a time, and the arrays' null elements as the training set does."""
    repo, s = served
    n = len(EDGES)
    with FeatureStore(repo) as store:
        off = _offline(store, ["times:seen"], n)
        arr = _offline(store, [f"arrays:{a}" for a in ARRAY_TYPES], 2)
    assert off["seen"] == [_time(us) for us in EDGES]
    with httpx.Client(base_url=s.url, timeout=30) as c:
        r = c.post(
            "/get-online-features",
            json={"features": ["times:seen"], "entities": {"k": list(range(n))}},
        )
        assert r.status_code == 200, r.text
        col = r.json()["results"][1]
        assert [_rest_time(v) for v in col["values"]] == off["seen"]
        assert set(col["statuses"]) == {"PRESENT"}
        r = c.post(
            "/get-online-features",
            json={"features": [f"arrays:{a}" for a in ARRAY_TYPES], "entities": {"k": [0, 1]}},
        )
        assert r.status_code == 200, r.text
        for name, res in zip(ARRAY_TYPES, r.json()["results"][1:], strict=True):
            assert _same(_rest_float(res["values"]), arr[name]), name
    with pb_grpc_channel(s) as stub:
        resp = stub.GetOnlineFeatures(
            pb.GetOnlineFeaturesRequest(
                features=["times:seen"], entities={"k": pb.ValueList(ints=list(range(n)))}
            )
        )
        seen = {c.name: column_values(c) for c in resp.columns}["seen"]
        assert [None if v is None else _time(v) for v in seen] == off["seen"]
        resp = stub.GetOnlineFeatures(
            pb.GetOnlineFeaturesRequest(
                features=[f"arrays:{a}" for a in ARRAY_TYPES],
                entities={"k": pb.ValueList(ints=[0, 1])},
            )
        )
    cols = {c.name: column_values(c) for c in resp.columns}
    for name in ARRAY_TYPES:
        assert _same(cols[name], arr[name]), name


class pb_grpc_channel:
    """A FeatureServing stub over an insecure channel to ``s`` (a context manager)."""

    def __init__(self, s: ServerThread) -> None:
        import grpc

        self._channel = grpc.insecure_channel(s.grpc_target)

    def __enter__(self) -> Any:
        return pb_grpc.FeatureServingStub(self._channel)

    def __exit__(self, *exc: object) -> None:
        self._channel.close()


def test_a_stored_time_past_9999_reads_as_null_not_an_error(repo: Path) -> None:
    """A row written with such a time by a path that skips the training set's rule (an older
    release's materialize) is served as null too, in every answer, with its other values."""
    from featurestore.online.codec import CREATED_TS, EVENT_TS
    from featurestore.online.writer import write_table

    ev = int((EVENT - EPOCH) / timedelta(microseconds=1))
    seen = [TIME_MAX_US + 1, 1_764_000_000_000_000_000, TIME_MIN_US - 1, -(2**62), 5] * 4
    n = len(seen)
    table = pa.table(
        {
            "k": pa.array(range(n), pa.int64()),
            "seen": pa.array(seen, pa.int64()),
            "n": pa.array(range(n), pa.int64()),
            EVENT_TS: pa.array([ev] * n, pa.int64()),
            CREATED_TS: pa.array([ev] * n, pa.int64()),
        }
    )
    with FeatureStore(repo) as store:
        view = store.registry.feature_view("times")
        write_table(
            store.online, store.project, view, table, now_us=ev, key_ttl_grace_us=0, batch_size=64
        )
        want = [_time(us) for us in seen]
        for ks in ([0], [1], [4, 1, 2], list(range(n))):  # one row, a few, numpy decoding
            got = store.get_online_features(
                ["times:seen", "times:n"], {"k": ks}, include_event_timestamps=True
            ).to_dict()
            assert got["seen"] == [want[k] for k in ks]
            assert got["n"] == ks
