"""Pushes with ``to``: offline pushes land in the view's source folder as one Parquet file each,
so training sets and materialize see them; ``online_and_offline`` writes both, offline first."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import grpc
import httpx
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featurestore.offline.push import OfflineWriteError
from featurestore.online.serving._proto import featurestore_pb2 as pb
from featurestore.online.serving._proto import featurestore_pb2_grpc as pb_grpc
from featurestore.online.serving.errors import BadRequestError
from featurestore.online.serving.grpc_server import column_values, to_value
from featurestore.store import FeatureStore

UTC = timezone.utc
T0 = datetime(2026, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)
FEATS = ["user_facts:score", "user_facts:n", "user_facts:tag"]
N_USERS = 5

DEFS = """
from featurestore import (Aggregation, DuckDBSource, Entity, FeatureView, Field, Float64, Int64,
                          ParquetSource, StreamSource, String)

user = Entity("user", join_keys=["user_id"])
facts = ParquetSource("data/facts", created_timestamp_field="created")
user_facts = FeatureView(name="user_facts", entities=[user], source=facts,
                         schema=[Field("score", Float64), Field("n", Int64), Field("tag", String)])
facts_slim = FeatureView(name="facts_slim", entities=[user], source=facts,
                         schema=[Field("score", Float64)])
plain_facts = FeatureView(name="plain_facts", entities=[user], source=ParquetSource("data/plain"),
                          schema=[Field("score", Float64)])
single_file = FeatureView(name="single_file", entities=[user],
                          source=ParquetSource("data/single.parquet"),
                          schema=[Field("score", Float64)])
sql_view = FeatureView(name="sql_view", entities=[user],
                       source=DuckDBSource("SELECT * FROM 'data/single.parquet'"),
                       schema=[Field("score", Float64)])
tx_window = FeatureView(name="tx_window", entities=[user], source=ParquetSource("data/tx"),
                        aggregations=[Aggregation("amount", "sum", "1h")])
int_time = FeatureView(name="int_time", entities=[user], source=ParquetSource("data/inttime"),
                       schema=[Field("score", Float64)])
clicks = FeatureView(name="clicks", entities=[user],
                     source=StreamSource(name="clicks", batch_source=ParquetSource("data/clicks")),
                     schema=[Field("clicks", Int64)])
"""


def _ts(values: list[datetime]) -> pa.Array:
    return pa.array(values, pa.timestamp("us", tz="UTC"))


def _initial_facts() -> list[dict[str, Any]]:
    """The source's rows before any push: user u at T0 + u hours, created at its event time."""
    return [
        {
            "user_id": u,
            "ev": T0 + u * HOUR,
            "cr": T0 + u * HOUR,
            "score": u * 1.0,
            "n": u,
            "tag": f"t{u}",
        }
        for u in range(1, N_USERS + 1)
    ]


def build_repo(root: Path) -> Path:
    """Config, definitions and data (Parquet folders with timestamp(us, UTC) columns, as the
    tests and the quickstart write), applied and materialized."""
    repo = root / "repo"
    data = repo / "data"
    for d in ("facts", "plain", "tx", "clicks", "inttime"):
        (data / d).mkdir(parents=True)
    (repo / "featurestore.yaml").write_text(
        "project: pushoff\nonline_store:\n  type: embedded\n  path: data/online\n  map_size: 64MB\n"
    )
    (repo / "definitions.py").write_text(DEFS)
    rows = _initial_facts()
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array([r["user_id"] for r in rows], pa.int64()),
                "event_timestamp": _ts([r["ev"] for r in rows]),
                "created": _ts([r["cr"] for r in rows]),
                "score": pa.array([r["score"] for r in rows], pa.float64()),
                "n": pa.array([r["n"] for r in rows], pa.int64()),
                "tag": pa.array([r["tag"] for r in rows], pa.string()),
            }
        ),
        data / "facts" / "part-0.parquet",
    )
    uids = pa.array(range(1, N_USERS + 1), pa.int64())
    times = _ts([T0 + HOUR] * N_USERS)
    scores = pa.array([float(u) for u in range(1, N_USERS + 1)])
    base = {"user_id": uids, "event_timestamp": times}
    pq.write_table(pa.table({**base, "score": scores}), data / "plain" / "part-0.parquet")
    pq.write_table(pa.table({**base, "score": scores}), data / "single.parquet")
    pq.write_table(pa.table({**base, "amount": scores}), data / "tx" / "part-0.parquet")
    int_us = pa.array([int((T0 + HOUR).timestamp() * 1e6)] * N_USERS, pa.int64())
    pq.write_table(
        pa.table({"user_id": uids, "event_timestamp": int_us, "score": scores}),
        data / "inttime" / "part-0.parquet",
    )
    clicks = pa.array(range(N_USERS), pa.int64())
    pq.write_table(pa.table({**base, "clicks": clicks}), data / "clicks" / "part-0.parquet")
    with FeatureStore(repo) as store:
        store.apply()
        store.materialize(T0 - timedelta(days=1), datetime.now(UTC))
    return repo


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return build_repo(tmp_path)


@pytest.fixture
def store(repo: Path) -> Iterator[FeatureStore]:
    with FeatureStore(repo) as s:
        yield s


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def _files(repo: Path, folder: str) -> list[str]:
    return sorted(p.name for p in (repo / "data" / folder).iterdir())


def _training(store: FeatureStore, keys: list[int], times: list[datetime], feats=FEATS) -> dict:
    spine = pl.DataFrame(
        {"user_id": keys, "event_timestamp": times},
        schema={"user_id": pl.Int64, "event_timestamp": pl.Datetime("us", "UTC")},
    )
    out = store.get_historical_features(spine, feats)
    return {c: out[c].to_list() for c in out.columns if c not in ("user_id", "event_timestamp")}


def _online(store: FeatureStore, keys: list[int], feats=FEATS) -> dict:
    got = store.get_online_features(feats, {"user_id": keys}).to_dict()
    return {k: v for k, v in got.items() if k != "user_id"}


def _push_rows(keys, times, score, n, tag) -> dict[str, list[Any]]:
    return {
        "user_id": keys,
        "event_timestamp": [_iso(t) for t in times],
        "score": score,
        "n": n,
        "tag": tag,
    }


# ------------------------------------------------------------------ in process


def test_offline_push_reaches_the_training_set_and_not_the_online_store(
    store: FeatureStore, repo: Path
) -> None:
    before = _files(repo, "facts")
    rows = _push_rows([1, 99], [T0 + 10 * HOUR] * 2, [7.5, None], [70, 71], ["x", "y"])
    assert store.push("user_facts", rows, to="offline") == 2
    new = sorted(set(_files(repo, "facts")) - set(before))
    assert len(new) == 1 and new[0].startswith("push-user_facts-") and new[0].endswith(".parquet")
    got = _training(
        store, [1, 1, 99, 99], [T0 + 9 * HOUR, T0 + 10 * HOUR, T0 + 9 * HOUR, T0 + 11 * HOUR]
    )
    assert got == {
        "score": [1.0, 7.5, None, None],
        "n": [1, 70, None, 71],
        "tag": ["t1", "x", None, "y"],
    }
    # the online store was not written: the materialized value, and nothing for 99
    assert _online(store, [1, 99]) == {"score": [1.0, None], "n": [1, None], "tag": ["t1", None]}


def test_online_and_offline_writes_both(store: FeatureStore, repo: Path) -> None:
    before = _files(repo, "facts")
    rows = _push_rows([2], [T0 + 20 * HOUR], [2.25], [22], ["both"])
    assert store.push("user_facts", rows, to="online_and_offline") == 1
    assert len(set(_files(repo, "facts")) - set(before)) == 1
    assert _training(store, [2], [T0 + 21 * HOUR]) == {"score": [2.25], "n": [22], "tag": ["both"]}
    assert _online(store, [2]) == {"score": [2.25], "n": [22], "tag": ["both"]}


def test_online_push_leaves_the_source_alone(store: FeatureStore, repo: Path) -> None:
    before = _files(repo, "facts")
    rows = _push_rows([3], [T0 + 20 * HOUR], [3.5], [33], ["on"])
    assert store.push("user_facts", rows) == 1  # default: online
    assert store.push("user_facts", rows, to="online") == 1
    assert _files(repo, "facts") == before
    assert _training(store, [3], [T0 + 21 * HOUR]) == {"score": [3.0], "n": [3], "tag": ["t3"]}
    assert _online(store, [3]) == {"score": [3.5], "n": [33], "tag": ["on"]}


def test_the_file_has_the_sources_columns_and_types(store: FeatureStore, repo: Path) -> None:
    from featurestore._time import now_us

    t_before = now_us()
    store.push("user_facts", _push_rows([4], [T0], [None], [None], [None]), to="offline")
    (name,) = [f for f in _files(repo, "facts") if f.startswith("push-")]
    table = pq.read_table(repo / "data" / "facts" / name)
    old = pq.read_schema(repo / "data" / "facts" / "part-0.parquet")
    assert table.schema.names == ["user_id", "score", "n", "tag", "event_timestamp", "created"]
    for f in table.schema:
        assert f.type == old.field(f.name).type, f.name
    assert table.column("event_timestamp").to_pylist() == [T0]
    created_us = table.column("created").cast(pa.int64()).to_pylist()[0]
    assert t_before <= created_us <= now_us()
    # no temporary file left beside it
    assert all(not f.startswith(".") for f in _files(repo, "facts"))


def test_a_source_with_integer_microsecond_times_gets_them_too(
    store: FeatureStore, repo: Path
) -> None:
    rows = {"user_id": [1], "event_timestamp": [_iso(T0 + 3 * HOUR)], "score": [-3.5]}
    store.push("int_time", rows, to="offline")
    (name,) = [f for f in _files(repo, "inttime") if f.startswith("push-")]
    ts = pq.read_table(repo / "data" / "inttime" / name).column("event_timestamp")
    assert ts.type == pa.int64()
    got = _training(store, [1, 1], [T0 + 2 * HOUR, T0 + 3 * HOUR], ["int_time:score"])
    assert got == {"score": [1.0, -3.5]}


def test_a_later_push_of_the_same_key_and_time_wins(store: FeatureStore) -> None:
    t = T0 + 2 * HOUR  # user 2's initial row has this event time too
    store.push("user_facts", _push_rows([2], [t], [20.0], [200], ["first"]), to="offline")
    assert _training(store, [2], [t]) == {"score": [20.0], "n": [200], "tag": ["first"]}
    store.push("user_facts", _push_rows([2], [t], [21.0], [None], ["second"]), to="offline")
    assert _training(store, [2], [t]) == {"score": [21.0], "n": [None], "tag": ["second"]}


def test_a_stream_sources_batch_folder_takes_offline_pushes(
    store: FeatureStore, repo: Path
) -> None:
    rows = {"user_id": [1], "event_timestamp": [_iso(T0 + 5 * HOUR)], "clicks": [42]}
    assert store.push("clicks", rows, to="offline") == 1
    new = [f for f in _files(repo, "clicks") if f != "part-0.parquet"]
    # never named like the stream sink's files, whose names carry ingest's resume position
    assert len(new) == 1 and new[0].startswith("push-clicks-")
    got = _training(store, [1, 1], [T0 + 4 * HOUR, T0 + 5 * HOUR], ["clicks:clicks"])
    assert got == {"clicks": [0, 42]}


def test_materialize_after_an_offline_push_serves_the_pushed_values(store: FeatureStore) -> None:
    rows = _push_rows([3, 77], [T0 + 50 * HOUR] * 2, [30.5, 77.5], [None, 7], ["m", "n"])
    store.push("user_facts", rows, to="offline")
    assert _online(store, [3, 77])["score"] == [3.0, None]
    store.materialize(T0 - timedelta(days=1), datetime.now(UTC), views=["user_facts"])
    assert _online(store, [3, 77]) == {"score": [30.5, 77.5], "n": [None, 7], "tag": ["m", "n"]}


def test_bad_to_and_sources_that_cannot_take_offline_pushes(store: FeatureStore) -> None:
    one = {"user_id": [1], "score": [1.0]}
    with pytest.raises(BadRequestError) as info:
        store.push("single_file", one, to="sideways")
    assert info.value.field == "to"
    for word in ("to", "'online'", "'offline'", "'online_and_offline'"):
        assert word in str(info.value)
    for to in ("offline", "online_and_offline"):
        with pytest.raises(BadRequestError, match=r"'single_file'.*data/single\.parquet.*folder"):
            store.push("single_file", one, to=to)
        with pytest.raises(BadRequestError, match=r"'sql_view'.*SQL query.*folder"):
            store.push("sql_view", one, to=to)
        with pytest.raises(BadRequestError, match=r"'facts_slim' shares .*'user_facts'.*'n'"):
            store.push("facts_slim", one, to=to)
    for to in ("online", "offline", "online_and_offline"):
        with pytest.raises(BadRequestError, match="'tx_window' aggregates events over windows"):
            store.push("tx_window", {"user_id": [1], "amount_sum_1h": [1.0]}, to=to)
    assert store.push("single_file", one) == 1  # online pushes still take any plain view


def test_a_failed_offline_write_is_a_clear_error_and_nothing_goes_online(
    store: FeatureStore, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import featurestore._atomic

    def refuse(path: Path, data: bytes, **kw: Any) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(featurestore._atomic, "atomic_write", refuse)
    rows = _push_rows([1], [T0 + 30 * HOUR], [9.0], [9], ["no"])
    with pytest.raises(OfflineWriteError, match=r"'user_facts'.*Permission denied"):
        store.push("user_facts", rows, to="online_and_offline")
    assert _online(store, [1])["score"] == [1.0]  # offline first: a failed record stops it


def test_a_failed_online_write_fails_the_push_and_keeps_the_offline_file(
    store: FeatureStore, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import featurestore.online.writer
    from featurestore.errors import OnlineStoreUnavailableError

    def broken(*a: Any, **kw: Any) -> int:
        raise ConnectionError("store down")

    monkeypatch.setattr(featurestore.online.writer, "write_table", broken)
    rows = _push_rows([1], [T0 + 30 * HOUR], [9.0], [9], ["kept"])
    with pytest.raises(OnlineStoreUnavailableError, match="online store failed"):
        store.push("user_facts", rows, to="online_and_offline")
    assert _training(store, [1], [T0 + 31 * HOUR])["tag"] == ["kept"]


def test_the_audit_record_of_a_push_says_where_it_went(store: FeatureStore, tmp_path: Path) -> None:
    import orjson

    from featurestore.online.serving.config import AuditConfig, ServingConfig
    from featurestore.online.serving.engine import Engine

    audit = AuditConfig(path=str(tmp_path / "audit"))
    engine = Engine(store, serving=ServingConfig(audit=audit)).start(poll=False)
    try:
        for to in ("online", "offline", "online_and_offline"):
            engine.push("user_facts", _push_rows([1], [T0], [1.0], [1], ["a"]), to=to)
        assert engine.audit is not None and engine.audit.flush()
        recs = [
            orjson.loads(line) for f in engine.audit.files for line in f.read_bytes().splitlines()
        ]
    finally:
        engine.close()
    assert [r["to"] for r in recs if r["kind"] == "push"] == [
        "online",
        "offline",
        "online_and_offline",
    ]


# ------------------------------------------------------------------ oracle

_KEYS = st.integers(1, 7)  # 6 and 7 are not in the source yet
_TIMES = st.integers(0, 12).map(lambda h: T0 + h * HOUR)  # collide with the source's times
_ROW = st.fixed_dictionaries(
    {
        "user_id": _KEYS,
        "ev": _TIMES,
        "score": st.none() | st.floats(-1e6, 1e6, allow_nan=False),
        "n": st.none() | st.integers(-(2**40), 2**40),
        "tag": st.none() | st.text("abc", max_size=3),
    }
)


def _expected(rows: list[dict[str, Any]], key: int, t: datetime) -> set[tuple]:
    """The values a point-in-time join may return: the row with the largest event time <= t,
    ties broken by the largest created time; rows equal in both may resolve either way."""
    cands = [r for r in rows if r["user_id"] == key and r["ev"] <= t]
    if not cands:
        return {(None, None, None)}
    best = max((r["ev"], r["cr"]) for r in cands)
    return {(r["score"], r["n"], r["tag"]) for r in cands if (r["ev"], r["cr"]) == best}


@pytest.fixture(scope="module")
def oracle_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FeatureStore, list]]:
    repo = build_repo(tmp_path_factory.mktemp("oracle"))
    with FeatureStore(repo) as s:
        yield s, _initial_facts()


@settings(
    max_examples=30,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    batches=st.lists(st.lists(_ROW, min_size=1, max_size=6), min_size=1, max_size=2),
    spine=st.lists(
        st.tuples(_KEYS, st.integers(0, 13).map(lambda h: T0 + h * HOUR)), min_size=1, max_size=10
    ),
)
def test_offline_pushes_match_a_point_in_time_oracle(
    oracle_store: tuple[FeatureStore, list], batches: list, spine: list
) -> None:
    store, truth = oracle_store
    for batch in batches:
        rows = _push_rows(
            [r["user_id"] for r in batch],
            [r["ev"] for r in batch],
            [r["score"] for r in batch],
            [r["n"] for r in batch],
            [r["tag"] for r in batch],
        )
        # rows of one entity at one event time: the push keeps the last listed
        kept = list({(r["user_id"], r["ev"]): r for r in batch}.values())
        assert store.push("user_facts", rows, to="offline") == len(kept)
        pushed_at = datetime.now(UTC) + timedelta(microseconds=len(truth))  # after every created
        truth += [{**r, "cr": pushed_at} for r in kept]
    keys, times = [k for k, _ in spine], [t for _, t in spine]
    got = _training(store, keys, times)
    for i, (k, t) in enumerate(spine):
        row = (got["score"][i], got["n"][i], got["tag"][i])
        assert {row} == _expected(truth, k, t), (k, t, row)  # no tie left to pick from


# ------------------------------------------------------------------ REST and gRPC


def test_rest_to_field_end_to_end(repo: Path, serve: Any) -> None:
    s = serve(repo)
    before = _files(repo, "facts")
    with httpx.Client(base_url=s.url, timeout=10) as c:

        def push(view: str, rows: dict, **extra: Any) -> httpx.Response:
            return c.post("/push", json={"feature_view": view, "rows": rows, **extra})

        def online(key: int) -> list:
            r = c.post(
                "/get-online-features",
                json={"features": ["user_facts:score"], "entities": {"user_id": [key]}},
            )
            return r.json()["results"][1]["values"]

        off = _push_rows([1], [T0 + 40 * HOUR], [11.5], [11], ["rest-off"])
        r = push("user_facts", off, to="offline")
        assert r.status_code == 200 and r.json() == {"rows_written": 1}, r.text
        assert online(1) == [1.0]
        both = _push_rows([2], [T0 + 40 * HOUR], [12.5], [12], ["rest-both"])
        r = push("user_facts", both, to="online_and_offline")
        assert r.status_code == 200, r.text
        assert online(2) == [12.5]
        assert len(set(_files(repo, "facts")) - set(before)) == 2
        r = push("user_facts", _push_rows([3], [T0 + 40 * HOUR], [13.5], [13], ["on"]))
        assert r.status_code == 200 and online(3) == [13.5]
        assert len(set(_files(repo, "facts")) - set(before)) == 2  # no "to": online only

        one = {"user_id": [1], "score": [1.0]}
        r = push("user_facts", off, to="nowhere")
        assert r.status_code == 400 and "to is 'nowhere'" in r.json()["error"]
        assert "'online_and_offline'" in r.json()["error"]
        for view in ("single_file", "sql_view"):
            r = push(view, one, to="offline")
            assert r.status_code == 400 and f"'{view}'" in r.json()["error"], r.text
        r = push("tx_window", {"user_id": [1], "amount_sum_1h": [1.0]}, to="offline")
        assert r.status_code == 400 and "aggregates events over windows" in r.json()["error"]
    with FeatureStore(repo) as store:
        got = _training(store, [1, 2, 3], [T0 + 41 * HOUR] * 3)
    assert got["tag"] == ["rest-off", "rest-both", "t3"]


def test_rest_offline_write_failure_is_a_500_naming_the_view(
    repo: Path, serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import featurestore._atomic

    def refuse(path: Path, data: bytes, **kw: Any) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(featurestore._atomic, "atomic_write", refuse)
    s = serve(repo)
    rows = _push_rows([1], [T0], [1.0], [1], ["x"])
    r = httpx.post(
        f"{s.url}/push", json={"feature_view": "user_facts", "rows": rows, "to": "offline"}
    )
    assert r.status_code == 500
    assert "'user_facts'" in r.json()["error"] and "Permission denied" in r.json()["error"]


def _col(values: list) -> pb.ValueList:
    return pb.ValueList(values=[to_value(v) for v in values])


def test_grpc_to_field_end_to_end(repo: Path, serve: Any) -> None:
    s = serve(repo)
    before = _files(repo, "facts")

    def req(view: str, rows: dict, to: str = "") -> pb.PushRequest:
        return pb.PushRequest(feature_view=view, rows={k: _col(v) for k, v in rows.items()}, to=to)

    with grpc.insecure_channel(s.grpc_target) as ch:
        stub = pb_grpc.FeatureServingStub(ch)
        rows = _push_rows([4], [T0 + 40 * HOUR], [14.5], [14], ["grpc-off"])
        assert stub.Push(req("user_facts", rows, "offline")).rows_written == 1
        assert len(set(_files(repo, "facts")) - set(before)) == 1
        rows = _push_rows([5], [T0 + 40 * HOUR], [15.5], [15], ["grpc-on"])
        assert stub.Push(req("user_facts", rows)).rows_written == 1  # empty: online
        assert len(set(_files(repo, "facts")) - set(before)) == 1
        resp = stub.GetOnlineFeatures(
            pb.GetOnlineFeaturesRequest(features=FEATS[:1], entities={"user_id": _col([4, 5])})
        )
        got = {c.name: c for c in resp.columns}
        assert column_values(got["score"]) == [4.0, 15.5]  # the offline push: not online

        one = {"user_id": [1], "score": [1.0]}
        for view, to, needle in (
            ("user_facts", "sideways", "to is 'sideways'"),
            ("single_file", "offline", "'single_file'"),
            ("sql_view", "online_and_offline", "'sql_view'"),
            ("tx_window", "offline", "aggregates events over windows"),
        ):
            with pytest.raises(grpc.RpcError) as info:
                stub.Push(req(view, one if view != "user_facts" else rows, to))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, view
            assert needle in info.value.details()
    with FeatureStore(repo) as store:
        got = _training(store, [4, 5], [T0 + 41 * HOUR] * 2)
    assert got["tag"] == ["grpc-off", "t5"]


def test_an_older_push_never_hides_a_newer_online_row(store: FeatureStore) -> None:
    """As stream ingest: the online store keeps the row a training set would pick now."""
    late, early, later = T0 + 30 * HOUR, T0 + 25 * HOUR, T0 + 35 * HOUR
    assert store.push("user_facts", _push_rows([1], [late], [30.0], [3], ["late"])) == 1
    older = _push_rows([1, 2], [early, early], [25.0, 2.5], [2, 20], ["early", "other"])
    assert store.push("user_facts", older, to="online_and_offline") == 1  # only user 2's
    got = _online(store, [1, 2])
    assert got["tag"] == ["late", "other"]
    now = datetime.now(UTC)
    assert _training(store, [2], [now])["tag"] == ["other"]
    assert store.push("user_facts", _push_rows([1], [later], [35.0], [4], ["later"])) == 1
    assert _online(store, [1])["tag"] == ["later"]
