"""The audit log's cost: in-process predict with ``serving.audit`` off and on, and the writer's
sustained rate, measured in the same run.

Both engines serve the same model (LightGBM, 100 trees over 40 float64 features) from the same
embedded (LMDB) store: the fastest store makes the audit's share of a request the largest, so
the ratio is the strictest one. Off and on alternate in blocks (benchmarks.loadgen.interleaved),
so the machine's load in any one second hits both alike. The "on" engine writes every record,
with its features, to a real file; the writer thread shares the process (and the GIL) with the
caller, so its serialisation cost shows up in the "on" latencies.

The writer's rate is measured by queueing records with the writer held back, then timing the
drain to the file (serialise, write, flush per batch, fsync at close). Its floor is the same
records serialised by ``orjson.dumps`` and written in one call, with nothing else.

Targets: audit-on predict p50 <= 1.25 x audit-off p50; the writer sustains at least 5 x the
single-caller predict rate (so one worker cannot outrun its log). The caller here never idles,
so the writer's serialisation (~13 us of GIL time a record with 40 features, on the 2-core
machine the suite runs on) lands inside requests, on top of the ~3 us the request itself spends
queueing its record; a server absorbs the writer between requests. The budget: a quarter of
the fastest predict, for the worst case.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from benchmarks import _report
from benchmarks import _serving as sv
from benchmarks.conftest import EmbeddedServing
from benchmarks.loadgen import LoadResult, interleaved

CALLS = 10_000  # per target (off and on), interleaved
RATIO_TARGET = 1.25  # audit-on p50 / audit-off p50
WRITER_RECORDS = 50_000
WRITER_FACTOR = 5.0  # writer records/s >= this x the single-caller predict rate


def cycling(fn: Callable[[Any], Any], inputs: list[Any]) -> Callable[[], Any]:
    """A no-argument call feeding ``fn`` the next input each time (round robin)."""
    it = itertools.cycle(inputs)
    return lambda: fn(next(it))


def _pcts(r: LoadResult) -> str:
    return f"p50 {_report.fmt_us(r.p50_us)} / p99 {_report.fmt_us(r.p99_us)}"


def test_audit_overhead_inprocess_predict(
    benchmark: Any,
    request: pytest.FixtureRequest,
    embedded_serving: EmbeddedServing,
    tmp_path: Path,
) -> None:
    from featurestore.online.serving.config import AuditConfig, ServingConfig
    from featurestore.online.serving.engine import Engine

    store, ents = embedded_serving.store, embedded_serving.entities
    off = Engine(store, serving=ServingConfig(deadline_ms=1000)).start(poll=False)
    audit = AuditConfig(path=str(tmp_path / "audit"), include_features=True)
    on = Engine(store, serving=ServingConfig(deadline_ms=1000, audit=audit)).start(poll=False)
    degraded = [0]
    try:
        first_off = off.predict(sv.MODEL, entities=ents[0])
        first_on = on.predict(sv.MODEL, entities=ents[0])
        assert first_on.scores == first_off.scores and not first_on.degraded
        chosen, _ = on.models.select(sv.MODEL)
        assert on._vector(chosen, ents[0]) is not None  # the one-entity shortcut, as served

        def call(engine: Engine) -> Callable[[dict[str, list[int]]], Any]:
            def predict(e: dict[str, list[int]]) -> Any:
                res = engine.predict(sv.MODEL, entities=e)
                degraded[0] += res.degraded
                return res

            return predict

        res = interleaved(
            {"off": cycling(call(off), ents), "on": cycling(call(on), ents)},
            n=CALLS,
            blocks=20,
            max_seconds=30,
        )
        for v in res.values():
            assert not v.errors, v.first_error
        benchmark.pedantic(cycling(call(on), ents), rounds=200, warmup_rounds=10)
        log = on.audit
        assert log is not None and log.flush(30)
        assert log.dropped == 0 and log.written >= res["on"].n
        written = log.written
        on_bytes = sum(p.stat().st_size for p in log.files)
    finally:
        on.close()
        off.close()
    o, f = res["on"], res["off"]
    ratio = o.p50_us / f.p50_us
    _report.record(
        benchmark,
        workload="predict in process with serving.audit on (records with 40 features, to a "
        "file), 1 entity, LightGBM 100 trees, embedded store",
        ours=_pcts(o),
        floor=f"audit off, same run: {_pcts(f)}",
        ratio=ratio,
        target=f"on p50 / off p50 <= {RATIO_TARGET}",
        met=ratio <= RATIO_TARGET and degraded[0] == 0,
        nodeid=request.node.nodeid,
        on_p50_us=o.p50_us,
        on_p99_us=o.p99_us,
        off_p50_us=f.p50_us,
        off_p99_us=f.p99_us,
        p99_ratio=o.p99_us / f.p99_us,
        on_per_s=o.throughput,
        off_per_s=f.throughput,
        records_written=written,
        record_bytes=on_bytes / max(1, written),
        degraded=degraded[0],
    )
    _report.NOTES.append(
        f"- audit log: predict p50 {_report.fmt_us(o.p50_us)} on vs {_report.fmt_us(f.p50_us)} "
        f"off (p99 {_report.fmt_us(o.p99_us)} vs {_report.fmt_us(f.p99_us)}); "
        f"{on_bytes / max(1, written):.0f} bytes a record with 40 features."
    )
    benchmark.extra_info["predict_rate_on"] = o.throughput
    _PREDICT_RATE.append(o.throughput)


_PREDICT_RATE: list[float] = []  # the audit-on single-caller rate, for the writer's target


def _records(n: int) -> list[dict[str, Any]]:
    """Arguments of ``n`` one-entity predict records with 40 features."""
    import numpy as np

    rng = np.random.default_rng(3)
    names = [f"u_f{i:02d}" for i in range(20)] + [f"m_f{i:02d}" for i in range(20)]
    xs = rng.standard_normal((n, 1, 40))
    return [
        {
            "model": sv.MODEL,
            "version": 1,
            "shadow_version": None,
            "entities": {"user_id": [i], "merchant_id": [i % 997]},
            "x": xs[i],
            "feature_names": names,
            "scores": xs[i][:, 0].copy(),
            "degraded": False,
            "latency_us": 120,
        }
        for i in range(n)
    ]


def test_audit_writer_sustained_rate(
    benchmark: Any, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    import orjson

    from featurestore.online.serving.audit import AuditLog
    from featurestore.online.serving.metrics import Metrics

    args = _records(WRITER_RECORDS)
    rounds: list[float] = []

    def drain_once() -> None:
        log = AuditLog(tmp_path / f"w{len(rounds)}", metrics=Metrics())
        hold = threading.Event()
        drain = log._drain
        log._drain = lambda: (hold.wait(60), drain())  # type: ignore[method-assign]
        for a in args:
            log.predict(**a)
        assert log.queued == WRITER_RECORDS
        t0 = time.perf_counter()
        hold.set()
        log.close()
        rounds.append(time.perf_counter() - t0)
        assert log.written == WRITER_RECORDS and log.dropped == 0

    benchmark.pedantic(drain_once, rounds=3, warmup_rounds=0)
    ours_s = min(rounds)

    # floor: the same records, serialised by orjson and written in one call
    from featurestore.online.serving.context import new_request_id

    recs = [
        {
            "ts": "2026-11-27T06:31:05.123456Z",
            "request_id": new_request_id(),
            "caller": None,
            "kind": "predict",
            "model": a["model"],
            "version": 1,
            "shadow_version": None,
            "entities": a["entities"],
            "scores": a["scores"],
            "degraded": False,
            "features": dict(zip(a["feature_names"], a["x"].T.tolist(), strict=True)),
            "latency_us": 120,
        }
        for a in args
    ]
    floors = []
    for i in range(3):
        t0 = time.perf_counter()
        opt = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE
        data = b"".join([orjson.dumps(r, option=opt) for r in recs])
        (tmp_path / f"floor{i}.jsonl").write_bytes(data)
        floors.append(time.perf_counter() - t0)
    floor_s = min(floors)
    ours_rate, floor_rate = WRITER_RECORDS / ours_s, WRITER_RECORDS / floor_s
    predict_rate = _PREDICT_RATE[-1] if _PREDICT_RATE else None
    need = WRITER_FACTOR * predict_rate if predict_rate else None
    row = _report.record(
        benchmark,
        workload=f"audit writer, {WRITER_RECORDS:,} queued predict records (40 features) "
        "drained to a file",
        ours=f"{ours_rate:,.0f} records/s",
        floor=f"{floor_rate:,.0f} records/s, orjson.dumps of prebuilt records + one write",
        ratio=ours_rate / floor_rate,
        target=f"records/s >= {WRITER_FACTOR:.0f}x single-caller predict rate"
        + (f" ({need:,.0f}/s)" if need else " (not measured: run with the overhead test)"),
        met=need is not None and ours_rate >= need,
        nodeid=request.node.nodeid,
        records_per_s=ours_rate,
        floor_records_per_s=floor_rate,
        predict_rate=predict_rate,
        record_bytes=len(data) / WRITER_RECORDS,
    )
    if need is None:
        row.met = None  # "?": the target needs the overhead test's predict rate
