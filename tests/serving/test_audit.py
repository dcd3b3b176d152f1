"""The audit log: one record per prediction and push, with the values the model was given,
written off the request path; a stalled or failing disk never blocks or fails a request."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from featurestore.online.serving import audit as audit_mod
from featurestore.online.serving.audit import AuditLog
from featurestore.online.serving.config import AuditConfig, ServingConfig
from featurestore.online.serving.context import CALLER, REQUEST_ID
from featurestore.online.serving.engine import Engine
from featurestore.online.serving.metrics import Metrics
from tests.serving.conftest import DEFS, MODEL_FEATURES, ServerThread, expected_user, make_repo
from tests.serving.test_engine import ODFV_DEFS

# merchant risk without a default: an unknown merchant reaches the model as NaN
NO_DEFAULT = DEFS.replace('Field("risk", Float64, default=0.5)', 'Field("risk", Float64)')
AUDIT = "serving:\n  audit:\n    path: data/audit\n"
NANNY = (  # a model that refuses missing inputs: such rows are answered unscored (null)
    "import numpy as np\n"
    "FEATURE_NAMES = ['tx_count', 'amount_mean', 'risk']\n"
    "def predict(x):\n"
    "    if np.isnan(x).any():\n"
    "        raise ValueError('Input contains NaN')\n"
    "    return x[:, 2] * 2.0\n"
)
SCORING = ["user_stats:tx_count", "user_stats:amount_mean", "merchant_stats:risk"]


def build_repo(root: Path) -> Path:
    """make_repo + on-demand features, model 'ratio' over them, model 'nanny' (refuses NaN),
    and fraud v2 as fraud's shadow."""
    from featurestore.online.models.repo import model_registry, service_feature_names
    from featurestore.store import FeatureStore
    from tests._models import publish
    from tests.serving.conftest import train_model

    repo = make_repo(root / "repo", defs=NO_DEFAULT + ODFV_DEFS, serving=AUDIT)
    (root / "nanny.py").write_text(NANNY)
    with FeatureStore(repo) as store:
        names = service_feature_names(store, "with_ratio")
        art = train_model(root / "ratio.txt", seed=4, names=names)
        publish(store, "ratio", flavor="lightgbm", artifact=art, service="with_ratio")
        publish(store, "nanny", flavor="python", artifact=root / "nanny.py", service="scoring")
        model_registry(store).set_alias("fraud", 2, "shadow")
    return repo


@pytest.fixture(scope="module")
def audit_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_repo(tmp_path_factory.mktemp("audit"))


@pytest.fixture(scope="module")
def store(audit_repo: Path) -> Iterator[Any]:
    """The repo's store, shared: an embedded store opens once per process."""
    from featurestore.store import FeatureStore

    s = FeatureStore(audit_repo)
    yield s
    s.close()


@pytest.fixture(scope="module")
def engine(store: Any) -> Iterator[Engine]:
    """An engine configured by the repo's featurestore.yaml (serving.audit on)."""
    e = Engine(store).start(poll=False)
    yield e
    e.close()


def engine_with(store: Any, audit: AuditConfig | None) -> Engine:
    """Another engine over ``store`` (as another worker would be) with its own audit config."""
    return Engine(store, serving=ServingConfig(audit=audit)).start(poll=False)


def read_records(log: AuditLog) -> list[dict[str, Any]]:
    """Every record of ``log`` so far, in order."""
    assert log.flush(), "the audit writer did not catch up"
    out: list[dict[str, Any]] = []
    for path in log.files:
        out += [orjson.loads(line) for line in path.read_bytes().splitlines()]
    return out


def record_of(engine: Engine, request_id: str | None) -> dict[str, Any]:
    assert engine.audit is not None and request_id
    found = [r for r in read_records(engine.audit) if r["request_id"] == request_id]
    assert len(found) == 1, (request_id, found)
    return found[0]


def nulls(values: list[Any]) -> list[Any]:
    """Values as the record holds them: floats, NaN and missing as null."""
    return [None if v is None or math.isnan(v) else float(v) for v in values]


def store_inputs(engine: Engine, users: list[int], merchants: list[int]) -> dict[str, list[Any]]:
    """The model inputs of these entities straight from the store, as the record holds them."""
    got = engine.store.get_online_features(
        SCORING, {"user_id": users, "merchant_id": merchants}
    ).to_dict()
    return {n: nulls(got[n]) for n in MODEL_FEATURES}


def metric(engine: Engine, name: str) -> float:
    text = engine.metrics.render()[0].decode()
    lines = [x for x in text.splitlines() if x.startswith(name + " ")]
    return float(lines[0].split()[-1]) if lines else 0.0


# ---------------------------------------------------------------------------- predictions


def test_shortcut_predict_records_model_entities_scores_and_fed_features(engine: Engine) -> None:
    ents = {"user_id": [9], "merchant_id": [4]}
    chosen, shadow = engine.models.select("fraud")
    assert engine._vector(chosen, ents) is not None  # this request takes the one-entity shortcut
    before = time.time()
    res = engine.predict("fraud", entities=ents)
    rec = record_of(engine, res.request_id)
    assert res.to_dict()["request_id"] == res.request_id
    assert rec["kind"] == "predict" and rec["caller"] is None
    assert (rec["model"], rec["version"], rec["shadow_version"]) == ("fraud", 1, 2)
    assert shadow is not None and shadow.version.version == 2
    assert rec["entities"] == ents and rec["scores"] == res.scores and rec["degraded"] is False
    assert rec["features"] == store_inputs(engine, [9], [4])
    assert list(rec["features"]) == list(chosen.feature_names)  # the model's input order
    x = np.array([[rec["features"][n][0] for n in chosen.feature_names]])
    assert chosen.predict(x).tolist() == rec["scores"]
    ts = datetime.strptime(rec["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    assert before - 0.001 <= ts.timestamp() <= time.time()
    assert isinstance(rec["latency_us"], int) and 0 < rec["latency_us"] < 10_000_000
    assert list(rec) == [
        "ts",
        "request_id",
        "caller",
        "kind",
        "model",
        "version",
        "shadow_version",
        "entities",
        "scores",
        "degraded",
        "features",
        "latency_us",
    ]


def test_general_path_batch_record_matches_the_store_and_the_answer(engine: Engine) -> None:
    users, merchants = [3, 7, 77], [2, 5, 999]  # 77, 999: never stored
    rows = [{"user_id": u, "merchant_id": m} for u, m in zip(users, merchants, strict=True)]
    res = asyncio.run(engine.apredict("fraud", entities=rows, return_features=True))
    rec = record_of(engine, res.request_id)
    assert rec["entities"] == {"user_id": users, "merchant_id": merchants}
    assert rec["scores"] == res.scores and len(rec["scores"]) == 3
    want = store_inputs(engine, users, merchants)
    assert rec["features"] == want and want["risk"][2] is None  # unknown merchant: NaN -> null
    assert res.features is not None
    assert {n: nulls(res.features.columns[n]) for n in MODEL_FEATURES} == want
    assert res.to_dict()["request_id"] == rec["request_id"]


def test_async_shortcut_and_sync_general_path_are_recorded(engine: Engine) -> None:
    fast = asyncio.run(engine.apredict("fraud", entities={"user_id": [5], "merchant_id": [1]}))
    batch = engine.predict("fraud", entities={"user_id": [5, 6], "merchant_id": [1, 2]})
    for res, users, merchants in ((fast, [5], [1]), (batch, [5, 6], [1, 2])):
        rec = record_of(engine, res.request_id)
        assert rec["entities"] == {"user_id": users, "merchant_id": merchants}
        assert rec["features"] == store_inputs(engine, users, merchants)
        assert rec["scores"] == res.scores
    assert fast.request_id != batch.request_id


def test_the_record_keeps_the_entities_as_asked_and_queues_no_gc_containers(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gc

    log = engine.audit
    assert log is not None
    release = _stall(log, monkeypatch)
    try:
        end = time.monotonic() + 5
        while not getattr(log, "stalled", False) and time.monotonic() < end:
            time.sleep(0.005)  # the writer is past any drain it was in
        ents = {"user_id": [9], "merchant_id": [4]}
        res = engine.predict("fraud", entities=ents)
        ents["user_id"][0] = 10  # the caller reuses its lists: the record must not change
        gc.collect()
        assert log.queued >= 1 and not gc.is_tracked(log._q[-1])  # no work for the collector
    finally:
        release.set()
    assert record_of(engine, res.request_id)["entities"] == {"user_id": [9], "merchant_id": [4]}


def test_on_demand_features_from_request_data_are_recorded(engine: Engine) -> None:
    res = engine.predict(
        "ratio", entities={"user_id": [4, 5]}, request_data={"amount": [70.0, None]}
    )
    rec = record_of(engine, res.request_id)
    ratio4 = 70.0 / (expected_user(4)["amount_mean"] + 1.0)
    assert rec["model"] == "ratio" and rec["entities"] == {"user_id": [4, 5]}
    assert rec["features"] == {
        "tx_count": [expected_user(4)["tx_count"], expected_user(5)["tx_count"]],
        "amount_ratio": [ratio4, None],
    }
    assert rec["scores"] == res.scores


def test_unscored_rows_record_null_scores_and_null_features(engine: Engine) -> None:
    one = engine.predict("nanny", entities={"user_id": [3], "merchant_id": [999]})
    batch = engine.predict("nanny", entities={"user_id": [3, 4], "merchant_id": [999, 2]})
    assert one.scores == [None] or math.isnan(one.scores[0])
    r1, r2 = record_of(engine, one.request_id), record_of(engine, batch.request_id)
    assert r1["scores"] == [None] and r1["features"]["risk"] == [None]
    assert r2["scores"] == [None, 0.4] and r2["features"]["risk"] == [None, 0.2]
    assert r1["shadow_version"] is None


def test_caller_and_request_id_come_from_the_context(engine: Engine) -> None:
    caller, rid = CALLER.set("fraud-api"), REQUEST_ID.set("req-42")
    try:
        res = engine.predict("fraud", entities={"user_id": [2], "merchant_id": [2]})
        n = engine.push(
            "user_stats", {"user_id": [48], "tx_count": [1], "amount_mean": [1.0], "country": ["x"]}
        )
    finally:
        CALLER.reset(caller)
        REQUEST_ID.reset(rid)
    assert res.request_id == "req-42" and n == 1
    recs = [r for r in read_records(engine.audit) if r["request_id"] == "req-42"]
    assert [(r["kind"], r["caller"]) for r in recs] == [
        ("predict", "fraud-api"),
        ("push", "fraud-api"),
    ]


def test_degraded_answers_record_the_defaults_fed_to_the_model(audit_repo: Path) -> None:
    from featurestore.errors import OnlineStoreUnavailableError
    from featurestore.store import FeatureStore

    store = FeatureStore(audit_repo)
    e = Engine(store, own_store=True).start(poll=False)
    try:

        def dead(keys: Any) -> Any:
            raise OnlineStoreUnavailableError("down")

        store.online.read = dead  # type: ignore[method-assign]
        one = {"user_id": [9], "merchant_id": [4]}
        two = {"user_id": [9, 1], "merchant_id": [4, 1]}
        answers = [
            e.predict("fraud", entities=one),
            e.predict("fraud", entities=two),
            asyncio.run(e.apredict("fraud", entities=one)),
            asyncio.run(e.apredict("fraud", entities=two, return_features=True)),
        ]
        defaults = [0.0, -1.0, None]  # tx_count, amount_mean, risk (no default: NaN)
        for res in answers:
            assert res.degraded
            rec = record_of(e, res.request_id)
            n = len(rec["scores"])
            assert rec["degraded"] is True and rec["scores"] == res.scores
            assert rec["features"] == {
                k: [d] * n for k, d in zip(MODEL_FEATURES, defaults, strict=True)
            }
    finally:
        e.close()


# ---------------------------------------------------------------------------- pushes


def test_push_records_keys_and_row_count_not_values(engine: Engine) -> None:
    rows = {
        "user_id": [41, 42],
        "tx_count": [5, 6],
        "amount_mean": [1.5, 2.5],
        "country": ["fr", "de"],
    }
    assert engine.push("user_stats", rows) == 2
    assert asyncio.run(engine.apush("merchant_stats", [{"merchant_id": 3, "risk": 0.25}])) == 1
    pushes = [r for r in read_records(engine.audit) if r["kind"] == "push"]
    got = [(r["feature_view"], r["rows"], r["entities"]) for r in pushes[-2:]]
    assert got == [
        ("user_stats", 2, {"user_id": [41, 42]}),
        ("merchant_stats", 1, {"merchant_id": [3]}),
    ]
    assert list(pushes[-1]) == [
        "ts",
        "request_id",
        "caller",
        "kind",
        "feature_view",
        "rows",
        "entities",
        "to",
    ]
    assert pushes[-1]["to"] == "online"


def test_a_failed_push_or_prediction_is_not_recorded(engine: Engine) -> None:
    from featurestore.errors import FeatureStoreError

    before = len(read_records(engine.audit))
    with pytest.raises(FeatureStoreError):
        engine.push("user_stats", {"user_id": [1], "nope": [1]})
    with pytest.raises(FeatureStoreError):
        engine.predict("fraud", entities={"user_id": [1]})  # merchant_id missing
    assert len(read_records(engine.audit)) == before


# ---------------------------------------------------------------------------- configuration


def test_audit_off_changes_nothing(store: Any, tmp_path: Path) -> None:
    e = engine_with(store, None)
    try:
        assert e.audit is None and e.config.audit is None
        fast = e.predict("fraud", entities={"user_id": [9], "merchant_id": [4]})
        batch = e.predict("fraud", entities={"user_id": [9, 1], "merchant_id": [4, 1]})
        assert fast.request_id is None and batch.request_id is None
        assert "request_id" not in fast.to_dict() and "request_id" not in batch.to_dict()
        assert list(fast.to_dict()) == ["model", "version", "scores", "degraded"]
    finally:
        e.close()


def test_audit_config_comes_from_featurestore_yaml(engine: Engine, audit_repo: Path) -> None:
    assert engine.config.audit == AuditConfig(path="data/audit")
    assert engine.audit is not None and engine.audit.path == audit_repo / "data" / "audit"


def test_include_features_false_leaves_features_out(store: Any, tmp_path: Path) -> None:
    e = engine_with(store, AuditConfig(path=str(tmp_path / "a"), include_features=False))
    try:
        res = e.predict("fraud", entities={"user_id": [9], "merchant_id": [4]})
        rec = record_of(e, res.request_id)
        assert "features" not in rec and rec["scores"] == res.scores
        assert e.audit is not None and e.audit.files[0].parent == tmp_path / "a"
    finally:
        e.close()


# ---------------------------------------------------------------------------- files


def test_files_rotate_at_max_file_mb_and_keep_every_record_in_order(
    store: Any, tmp_path: Path
) -> None:
    limit = 4096  # bytes: about 12 records a file
    e = engine_with(store, AuditConfig(path=str(tmp_path / "a"), max_file_mb=limit / 2**20))
    try:
        ids = [
            e.predict("fraud", entities={"user_id": [u % 50 + 1], "merchant_id": [1]}).request_id
            for u in range(200)
        ]
        recs = read_records(e.audit)
        files = e.audit.files
    finally:
        e.close()
    assert [r["request_id"] for r in recs] == ids
    assert len(files) >= 200 * 300 // limit
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [p.name for p in files]
    for p in files:
        assert 0 < p.stat().st_size <= limit and p.read_bytes().endswith(b"\n")


@settings(max_examples=60, deadline=None)
@given(
    batches=st.lists(st.lists(st.integers(1, 300), max_size=30), min_size=1, max_size=6),
    limit=st.integers(1, 1500),
)
def test_a_batch_splits_into_files_at_record_boundaries(
    batches: list[list[int]], limit: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        log = AuditLog(tmp, metrics=Metrics())
        log.max_bytes = limit
        lines: list[bytes] = []
        for sizes in batches:
            batch = [b"%d" % len(lines) + b"x" * n + b"\n" for n in sizes]
            lines += batch
            log._write(batch, [len(batch), 0])
        log.close()
        assert b"".join(p.read_bytes() for p in log.files) == b"".join(lines)
        assert log.written == len(lines)
        for p in log.files:
            data = p.read_bytes()
            assert data and (len(data) <= limit or data.count(b"\n") == 1)


_FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e-7, 1e300, 5e-324]),
)


@settings(max_examples=80, deadline=None)
@given(
    data=st.data(),
    names=st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=6, unique=True),
    rows=st.integers(1, 4),
)
def test_features_are_the_input_matrix_by_column_with_nan_as_null(
    data: st.DataObject, names: list[str], rows: int
) -> None:
    x = np.array(
        data.draw(
            st.lists(
                st.lists(_FLOATS, min_size=len(names), max_size=len(names)),
                min_size=rows,
                max_size=rows,
            )
        )
    )
    log = AuditLog("unused", metrics=Metrics())
    names_t = tuple(names)
    got = orjson.loads(log._features(names_t, x))
    assert list(got) == names
    for j, name in enumerate(names):
        assert got[name] == [float(v) if math.isfinite(v) else None for v in x[:, j]]
    assert orjson.loads(log._features(names_t, x)) == got  # the cached template


def test_two_engines_write_two_files(store: Any, tmp_path: Path) -> None:
    a = engine_with(store, AuditConfig(path=str(tmp_path)))
    b = engine_with(store, AuditConfig(path=str(tmp_path)))
    try:
        ra = [a.predict("fraud", entities={"user_id": [1], "merchant_id": [1]}) for _ in range(5)]
        rb = [b.predict("fraud", entities={"user_id": [2], "merchant_id": [2]}) for _ in range(7)]
        assert a.audit is not None and b.audit is not None
        got_a, got_b = read_records(a.audit), read_records(b.audit)
        assert len(a.audit.files) == len(b.audit.files) == 1
        assert a.audit.files[0] != b.audit.files[0]
        assert a.audit.files[0].parent == b.audit.files[0].parent == tmp_path
        assert not any(r.degraded for r in ra + rb)
        assert [r["request_id"] for r in got_a] == [r.request_id for r in ra]
        assert [r["request_id"] for r in got_b] == [r.request_id for r in rb]
        name = a.audit.files[0].name
        assert name.startswith("audit-") and name.endswith(f"-{os.getpid()}.jsonl")
    finally:
        a.close()
        b.close()


# ---------------------------------------------------------------------------- failures


def _stall(log: AuditLog, monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Make ``log``'s writer hang (as on a stalled disk) until the returned event is set."""
    release = threading.Event()
    drain = log._drain

    def stalled() -> None:
        log.stalled = True  # type: ignore[attr-defined]
        release.wait(30)
        drain()

    monkeypatch.setattr(log, "stalled", False, raising=False)
    monkeypatch.setattr(log, "_drain", stalled)
    return release


def test_a_full_queue_drops_and_counts_without_blocking(
    store: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    e = engine_with(store, AuditConfig(path=str(tmp_path)))
    log = e.audit
    assert log is not None
    log.max_queue = 20
    release = _stall(log, monkeypatch)
    try:
        ents = {"user_id": [9], "merchant_id": [4]}
        caplog.set_level(logging.WARNING, logger="featurestore.serving.audit")
        took = []
        answers = []
        for _ in range(100):
            t = time.perf_counter()
            answers.append(e.predict("fraud", entities=ents))
            took.append(time.perf_counter() - t)
        assert all(not r.degraded and r.scores == answers[0].scores for r in answers)
        assert max(took) < 0.5 and sorted(took)[50] < 0.01  # never waits for the writer
        assert log.dropped == 80 and log.queued == 20
        assert metric(e, 'featurestore_audit_dropped_total{reason="queue_full"}') == 80
        warnings = [r for r in caplog.records if "dropped" in r.getMessage()]
        assert len(warnings) == 1 and "queue_full" in warnings[0].getMessage()
        release.set()
        recs = read_records(log)
        assert [r["request_id"] for r in recs] == [r.request_id for r in answers[:20]]
        assert metric(e, 'featurestore_audit_records_total{kind="predict"}') == 20
    finally:
        release.set()
        e.close()


def test_write_errors_are_counted_and_the_writer_recovers(tmp_path: Path) -> None:
    folder = tmp_path / "audit"
    log = AuditLog(folder, metrics=Metrics())
    x, s = np.array([[1.0, 2.0]]), np.array([0.5])

    def put(n: int) -> list[str]:
        return [
            log.predict(
                model="m",
                version=1,
                shadow_version=None,
                entities={"k": [i]},
                x=x,
                feature_names=["a", "b"],
                scores=s,
                degraded=False,
                latency_us=1,
            )
            for i in range(n)
        ]

    try:
        first = put(3)
        assert log.flush() and len(log.files) == 1
        # the folder removed under the writer: the next batch recreates it and a new file
        for p in folder.iterdir():
            p.unlink()
        folder.rmdir()
        second = put(2)
        assert log.flush() and len(log.files) == 2 and log.files[1].exists()
        # the folder cannot be made (a file in its way): the batch is dropped and counted
        folder_files = list(folder.iterdir())
        for p in folder_files:
            p.unlink()
        folder.rmdir()
        folder.write_text("in the way")
        put(4)
        assert log.flush() and log.write_errors == 1 and log.dropped == 4
        folder.unlink()
        third = put(2)
        assert log.flush() and log.written == 3 + 2 + 2
        got = [orjson.loads(line)["request_id"] for line in log.files[-1].read_bytes().splitlines()]
        assert got == third and first and second
        text = log.metrics.render()[0].decode()
        assert 'featurestore_audit_dropped_total{reason="write_error"} 4.0' in text
        assert "featurestore_audit_write_errors_total 1.0" in text
    finally:
        log.close()


def test_close_drains_and_fsyncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real_fsync = audit_mod.os.fsync
    monkeypatch.setattr(audit_mod.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    log = AuditLog(tmp_path / "a", metrics=Metrics())
    release = _stall(log, monkeypatch)
    for i in range(5000):
        log.push("v", 1, {"k": [i]})
    assert log.queued >= 4999 and not log.files  # nothing written yet
    release.set()
    log.close()
    lines = b"".join(p.read_bytes() for p in log.files).splitlines()
    assert [orjson.loads(x)["entities"]["k"] for x in lines] == [[i] for i in range(5000)]
    assert synced and log.written == 5000
    log.push("v", 1, {"k": [0]})  # after close: dropped and counted, not blocking
    assert log.dropped == 1


def test_concurrent_predicts_each_get_one_record(engine: Engine) -> None:
    out: list[str] = []

    def worker(uid: int) -> None:
        for _ in range(50):
            ents = {"user_id": [uid], "merchant_id": [uid % 10 + 1]}
            out.append(engine.predict("fraud", entities=ents).request_id or "")

    threads = [threading.Thread(target=worker, args=(u,)) for u in range(1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    recs = {r["request_id"]: r for r in read_records(engine.audit)}
    assert len(set(out)) == 200 and all(rid in recs for rid in out)
    assert all(recs[rid]["entities"]["user_id"][0] in range(1, 5) for rid in out)


# ---------------------------------------------------------------------------- real servers


@pytest.fixture(scope="module")
def server(store: Any) -> Iterator[ServerThread]:
    from featurestore.online.serving.rest import create_app

    e = Engine(store)
    s = ServerThread(create_app(e, grpc_port=0, own_engine=True)).start()
    yield s
    s.stop()


def test_rest_predict_record_carries_the_servers_request_id(server: ServerThread) -> None:
    import httpx

    e = server.app.state.engine
    body = {"model": "fraud", "entities": {"user_id": [9], "merchant_id": [4]}}
    with httpx.Client(base_url=server.url, timeout=10) as c:
        mine = c.post("/predict", json=body, headers={"x-request-id": "client-id-1"})
        theirs = c.post("/predict", json=body)
        push = c.post(
            "/push",
            json={"feature_view": "merchant_stats", "rows": {"merchant_id": [7], "risk": [0.7]}},
        )
    assert mine.status_code == theirs.status_code == push.status_code == 200, mine.text
    assert mine.headers.get("x-request-id") == "client-id-1"
    assert mine.json()["request_id"] == "client-id-1"
    rid = theirs.headers.get("x-request-id")
    assert rid and theirs.json()["request_id"] == rid
    for answer, want in ((mine, "client-id-1"), (theirs, rid)):
        rec = record_of(e, want)
        assert rec["scores"] == answer.json()["scores"] and rec["entities"] == body["entities"]
    assert record_of(e, push.headers.get("x-request-id"))["kind"] == "push"


def test_openapi_shows_the_request_id_header_with_audit_on(server: ServerThread) -> None:
    import httpx

    spec = httpx.get(f"{server.url}/openapi.json", timeout=10).json()
    predict = spec["paths"]["/predict"]["post"]
    assert any(p["name"] == "x-request-id" and p["in"] == "header" for p in predict["parameters"])
    assert "x-request-id" in predict["responses"]["200"]["headers"]
    assert "securitySchemes" not in spec.get("components", {})  # audit on, auth off: no keys
    assert "security" not in predict


def test_grpc_predict_record_carries_the_servers_request_id(server: ServerThread) -> None:
    import grpc

    from featurestore.online.serving._proto import featurestore_pb2 as pb
    from featurestore.online.serving._proto import featurestore_pb2_grpc as pb_grpc

    e = server.app.state.engine
    ents = {"user_id": pb.ValueList(ints=[9]), "merchant_id": pb.ValueList(ints=[4])}
    with grpc.insecure_channel(server.grpc_target) as ch:
        stub = pb_grpc.FeatureServingStub(ch)
        resp, call = stub.Predict.with_call(
            pb.PredictRequest(model="fraud", entities=ents),
            metadata=(("x-request-id", "grpc-id-7"),),
        )
        _, anon = stub.Predict.with_call(pb.PredictRequest(model="fraud", entities=ents))
    sent = dict(call.initial_metadata())
    assert sent.get("x-request-id") == "grpc-id-7"
    rec = record_of(e, "grpc-id-7")
    assert rec["scores"] == list(resp.scores) and rec["entities"] == {
        "user_id": [9],
        "merchant_id": [4],
    }
    rid = dict(anon.initial_metadata()).get("x-request-id")
    assert rid and record_of(e, rid)["model"] == "fraud"
