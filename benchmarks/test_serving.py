"""Serving: get features and predict over REST and gRPC (concurrency 1 and 32), and in process,
each next to its floors measured in the same run.

Floors: a bare FastAPI POST endpoint and a bare grpc.aio unary method returning a constant (one
uvicorn worker with the settings ``featurestore serve`` uses, its own process, sent the very
same request bytes), raw redis-py reads of the keys a request touches, and the bare LightGBM
``Booster.predict`` (100 trees, 40 features, num_threads=1) on a vector read from the store.
Ours is ``featurestore serve`` (one worker process: REST and gRPC on one event loop) over the
Redis online store. Ours, the endpoint floor and the store floor (the same entities' keys) alternate
in blocks, so the machine's load in any one minute hits all three.
The client does not decode responses (bytes only); it checks HTTP 200 / gRPC OK.

Targets (issue 4): in-process predict p99 <= store round-trip p99 + 300 us; REST/gRPC p99 <=
1.3 x (bare endpoint p99 + store p99 [+ model p99]). At concurrency 32 latency is queueing
(about 32 x the per-request cost on one worker), so the endpoint and store floors are measured
at 32 as well (the store by 32 asyncio callers of redis-py's asyncio client); the model floor
stays the single-caller predict time (the stricter choice).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from benchmarks import _report
from benchmarks import _serving as sv
from benchmarks.conftest import (
    _DEFINITIONS,
    HOST,
    PROJECT,
    VIEWS,
    BenchRepo,
    RedisProcess,
    feature_refs,
)
from benchmarks.loadgen import LoadResult, interleaved
from tests.conftest import free_port

FACTOR = 1.3  # REST/gRPC p99 <= FACTOR * (endpoint + store [+ model]) floors' p99
INPROC_BUDGET_US = 300.0  # in-process predict p99 <= store p99 + this
# the default 50 ms budget answers with defaults (degraded) once 32 callers queue up on one
# worker; the benchmark measures full answers, so it allows more (degraded answers still count
# against a row)
DEADLINE_MS = 1000
REDIS_DB = 1  # the other benchmarks flush and fill db 0
N_DISTINCT = 256  # distinct requests cycled through per workload
# calls per target (ours and the endpoint floor each), by (entities per request, concurrency):
# enough that a p99 rests on 20+ samples above it (with 300 calls it was the 3rd largest, and
# rows moved across the target from run to run on noise alone; with 1,000 at 100 entities it
# was the 10th, and those rows still did)
CALLS = {(1, 1): 3000, (100, 1): 2500, (1, 32): 6000, (100, 32): 2000}
# ours/floor alternation blocks, by concurrency. One caller: about 20 calls per target per
# block (17 at 100 entities), so a stall of the shared machine (tens to hundreds of ms) spans
# every target's calls alike; with 200-call blocks a stall landed on one target's block and
# moved its p99 alone (the same code read 0.97-1.64 against the target from run to run)
BLOCKS = {1: 150, 32: 5}
MAX_SECONDS = 60.0  # per test, all targets together
STORE_FLOOR = {"GET": "redis-py GET", "MGET2": "MGET 2 keys", "MGET200": "MGET 200 keys"}
PEDANTIC_ROUNDS = 50  # rounds of ours (single caller) for pytest-benchmark's own table


@dataclass(frozen=True)
class Workload:
    """One request shape: kind (get/predict), feature service, entities per request."""

    name: str
    kind: str
    service: str
    size: int

    @property
    def views(self) -> tuple[str, ...]:
        return sv.SERVICES[self.service]

    @property
    def join_keys(self) -> list[str]:
        return [VIEWS[v][0] for v in self.views]

    @property
    def n_features(self) -> int:
        return 20 * len(self.views)

    @property
    def store_floor(self) -> str:
        n = self.size * len(self.views)
        return "GET" if n == 1 else f"MGET{n}"

    def describe(self) -> str:
        ents = f"{self.size} entit{'y' if self.size == 1 else 'ies'}"
        if self.kind == "predict":
            return f"predict (LightGBM {sv.N_TREES} trees), {ents} x {self.n_features} features"
        return f"get features, {ents} x {self.n_features} features"


WORKLOADS = {
    "get_1x20": Workload("get_1x20", "get", "user20", 1),
    "get_100x40": Workload("get_100x40", "get", "all40", 100),
    "predict_1x40": Workload("predict_1x40", "predict", "all40", 1),
}


@dataclass
class Serving:
    """Everything the serving benchmarks share: repo, store, model, both servers, redis."""

    repo: Path
    store: Any
    booster: Any
    model_names: list[str]
    ours: sv.ServerProcess
    bare: sv.ServerProcess
    redis: Any
    n_entities: int


def pairs(n_entities: int, size: int, count: int, seed: int) -> list[list[tuple[int, int]]]:
    """``count`` requests of ``size`` known (user_id, merchant_id) pairs."""
    import numpy as np

    rng = np.random.default_rng(seed)
    ids = rng.integers(0, n_entities, size=(count, size, 2)).tolist()
    return [[(u, m) for u, m in req] for req in ids]


def keys_of(views: tuple[str, ...], batch: list[tuple[int, int]]) -> list[bytes]:
    from featurestore.online.keys import build_keys

    cols = {"user_id": [u for u, _ in batch], "merchant_id": [m for _, m in batch]}
    out: list[bytes] = []
    for view in views:
        key = VIEWS[view][0]
        out += build_keys(PROJECT, view, (key,), [cols[key]])
    return out


def cycling(fn: Callable[[Any], Any], inputs: list[Any]) -> Callable[[], Any]:
    """A no-argument call feeding ``fn`` the next input each time (round robin)."""
    it = itertools.cycle(inputs)
    return lambda: fn(next(it))


@pytest.fixture(scope="module")
def serving(
    bench_repo: BenchRepo, redis_server: RedisProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Serving]:
    """Apply + materialize the served repo into Redis db 1, register the model, start both
    servers (each one worker process); stopped after the module."""
    import lightgbm as lgb
    import redis

    from featurestore.online.models.repo import service_feature_names
    from featurestore.store import FeatureStore

    root = tmp_path_factory.mktemp("serving")
    url = f"redis://{HOST}:{redis_server.port}/{REDIS_DB}"
    repo = sv.write_serving_repo(
        bench_repo, root / "repo", url, _DEFINITIONS, deadline_ms=DEADLINE_MS
    )
    client = redis.Redis(host=HOST, port=redis_server.port, db=REDIS_DB, socket_timeout=30)
    client.flushdb()
    store = FeatureStore(repo)
    store.apply()
    store.materialize(bench_repo.start_us, bench_repo.end_us)
    names = service_feature_names(store, "all40")
    artifact = sv.train_model(root / "model.txt", names)
    sv.register_model(store, artifact)
    booster = lgb.Booster(model_file=str(artifact))
    started: list[sv.ServerProcess] = []
    try:
        started.append(sv.start_bare(free_port(), free_port(), root))
        started.append(sv.start_ours(repo, free_port(), free_port(), root))
        _report.NOTES.append(
            "- serving rows: ours is `featurestore serve` with one worker process (REST and "
            f"gRPC on one event loop) over Redis, serving.deadline_ms {DEADLINE_MS}; the "
            "endpoint floor is a constant-answer FastAPI POST and grpc.aio method in the same "
            "process shape, sent the same request bytes. Clients send pre-encoded requests and "
            "do not decode answers. At concurrency 32 (one asyncio client process: raw HTTP/1.1 "
            "keep-alive connections, or one grpc.aio channel) latency is mostly queueing, so its "
            "p99 ratio tracks the per-request server cost ratio."
        )
        yield Serving(
            repo, store, booster, names, started[1], started[0], client, bench_repo.n_entities
        )
    finally:
        for s in started:
            s.stop()
        client.close()
        store.close()


@pytest.fixture(scope="module")
def floors(serving: Serving) -> dict[str, LoadResult]:
    """Store and model floors (single caller): GET 1 key, MGET 2 / 200 keys, LightGBM predict."""
    import numpy as np

    r, n = serving.redis, serving.n_entities
    one = [keys_of(("user_stats",), b) for b in pairs(n, 1, N_DISTINCT, 101)]
    two = [keys_of(sv.SERVICES["all40"], b) for b in pairs(n, 1, N_DISTINCT, 102)]
    many = [keys_of(sv.SERVICES["all40"], b) for b in pairs(n, 100, N_DISTINCT, 103)]
    assert all(v is not None for v in r.mget(many[0])), "floor keys missing from Redis"
    # the model floor scores real stored vectors, in the model's input order
    batch = pairs(n, 64, 1, 104)[0]
    feats = serving.store.get_online_features(
        feature_refs(*sv.SERVICES["all40"]),
        [{"user_id": u, "merchant_id": m} for u, m in batch],
    ).to_dict()
    x = np.array([feats[name] for name in serving.model_names], dtype=np.float64).T
    rows = [np.ascontiguousarray(x[i : i + 1]) for i in range(len(x))]
    booster = serving.booster
    res = interleaved(
        {
            "GET": cycling(lambda ks: r.get(ks[0]), one),
            "MGET2": cycling(r.mget, two),
            "MGET200": cycling(r.mget, many),
            "model": cycling(lambda row: booster.predict(row, num_threads=1), rows),
        },
        n=6000,
        blocks=30,
        max_seconds=50,
    )
    for v in res.values():
        assert not v.errors, v.first_error
    return res


def _pcts(r: LoadResult) -> str:
    return (
        f"p50 {_report.fmt_us(r.p50_us)} / p99 {_report.fmt_us(r.p99_us)} / "
        f"p99.9 {_report.fmt_us(r.p999_us)}"
    )


def _rate(r: LoadResult) -> str:
    return f"{r.throughput:,.0f} req/s"


# ---------------------------------------------------------------------------- in process


def test_serving_inprocess_predict(
    benchmark: Any,
    request: pytest.FixtureRequest,
    serving: Serving,
    floors: dict[str, LoadResult],
) -> None:
    import numpy as np

    from featurestore.online.serving.engine import Engine

    engine = Engine(serving.store).start(poll=False)
    try:
        batches = pairs(serving.n_entities, 1, N_DISTINCT, 201)
        ents = [{"user_id": [u], "merchant_id": [m]} for ((u, m),) in batches]
        first = engine.predict(sv.MODEL, entities=ents[0], return_features=True)
        assert len(first.scores) == 1 and not first.degraded
        # the served score is the bare model's score on the served vector
        cols = first.features.columns
        x = np.array([[cols[name][0] for name in serving.model_names]], dtype=np.float64)
        assert abs(serving.booster.predict(x, num_threads=1)[0] - first.scores[0]) < 1e-9
        degraded = [0]

        def predict(e: dict[str, list[int]]) -> Any:
            res = engine.predict(sv.MODEL, entities=e)
            degraded[0] += res.degraded
            return res

        keys = [keys_of(sv.SERVICES["all40"], b) for b in batches]
        r, booster = serving.redis, serving.booster
        rows = [x]  # the vector the engine served for ents[0]
        res = interleaved(
            {
                "store": cycling(r.mget, keys),
                "ours": cycling(predict, ents),
                "model": cycling(lambda row: booster.predict(row, num_threads=1), rows),
            },
            n=10_000,  # the target is a difference of two p99s: each rests on 100 samples
            blocks=500,  # 20 calls per target per block, as the endpoints' (see BLOCKS)
            max_seconds=60,
        )
        for v in res.values():
            assert not v.errors, v.first_error
        benchmark.pedantic(cycling(predict, ents), rounds=PEDANTIC_ROUNDS * 4, warmup_rounds=10)
    finally:
        engine.close()
    o, s, m = res["ours"], res["store"], res["model"]
    over = o.p99_us - s.p99_us
    _report.record(
        benchmark,
        workload="predict in process (Engine.predict), 1 entity x 40 features, LightGBM 100 trees",
        ours=_pcts(o),
        floor=f"store p99 {_report.fmt_us(s.p99_us)} (redis-py MGET 2 keys); "
        f"model alone p99 {_report.fmt_us(m.p99_us)}",
        ratio=over / INPROC_BUDGET_US,
        target=f"p99 - store p99 <= {INPROC_BUDGET_US:.0f} us (ratio: over / budget)",
        met=over <= INPROC_BUDGET_US and degraded[0] == 0,
        nodeid=request.node.nodeid,
        ours_p50_us=o.p50_us,
        ours_p99_us=o.p99_us,
        ours_p999_us=o.p999_us,
        store_p50_us=s.p50_us,
        store_p99_us=s.p99_us,
        model_p50_us=m.p50_us,
        model_p99_us=m.p99_us,
        over_store_p99_us=over,
        over_store_p50_us=o.p50_us - s.p50_us,
        degraded=degraded[0],
        calls_each=o.n,
        ours_per_s=o.throughput,
    )
    _report.NOTES.append(
        f"- in-process predict: p50 {_report.fmt_us(o.p50_us)} vs store p50 "
        f"{_report.fmt_us(s.p50_us)} + model p50 {_report.fmt_us(m.p50_us)} "
        f"(p50 over the store: {_report.fmt_us(o.p50_us - s.p50_us)}); {_rate(o)} single caller."
    )


# ---------------------------------------------------------------------------- REST and gRPC


def _targets(
    proto: str, w: Workload, serving: Serving, concurrency: int
) -> tuple[dict[str, Any], Callable[[], Any], Callable[[], None]]:
    """(endpoint floor + store floor + ours calls (sync, or async factories at concurrency > 1),
    a sync ours call, a close of the clients). The store floor reads the same entities' keys
    with redis-py, in the same interleaved blocks as the endpoints, so all three see the same
    minute. A 100-entity workload at one caller also gets "sized": the bare endpoint answering
    a constant as large as ours (set by the caller before the run; reported, not a target)."""
    batches = pairs(serving.n_entities, w.size, N_DISTINCT, 300 + w.size)
    ents = [sv.entity_columns(w.join_keys, b) for b in batches]
    keysets = [keys_of(w.views, b) for b in batches]
    if concurrency == 1:
        r = serving.redis
        store: Any = cycling(lambda ks: r.get(ks[0]) if len(ks) == 1 else r.mget(ks), keysets)
    else:
        store = sv.redis_async(r_port(serving), REDIS_DB, keysets)
    if proto == "REST":
        bodies = [sv.rest_body(w.kind, w.service, e) for e in ents]
        ours_url = serving.ours.url + (
            "/predict" if w.kind == "predict" else "/get-online-features"
        )
        floor_url = serving.bare.url + "/bare"
        sync_call, close = sv.rest_sync(ours_url, bodies)
        if concurrency == 1:
            f_call, f_close = sv.rest_sync(floor_url, bodies)
            targets = {"floor": f_call, "store": store, "ours": sync_call}
            closes = [close, f_close]
            if w.size > 1:
                targets["sized"], s_close = sv.rest_sync(serving.bare.url + "/bare-sized", bodies)
                closes.append(s_close)
            return targets, sync_call, _all(closes)
        targets = {
            "floor": sv.rest_async(floor_url, bodies, concurrency),
            "store": store,
            "ours": sv.rest_async(ours_url, bodies, concurrency),
        }
        return targets, sync_call, close
    reqs = [sv.grpc_request(w.kind, w.service, e) for e in ents]
    sync_call, close = sv.grpc_sync(serving.ours.grpc_target, sv.grpc_method(w.kind), reqs)
    if concurrency == 1:
        f_call, f_close = sv.grpc_sync(serving.bare.grpc_target, sv.BARE_GRPC, reqs)
        targets = {"floor": f_call, "store": store, "ours": sync_call}
        closes = [close, f_close]
        if w.size > 1:
            targets["sized"], s_close = sv.grpc_sync(
                serving.bare.grpc_target, sv.BARE_SIZED_GRPC, reqs
            )
            closes.append(s_close)
        return targets, sync_call, _all(closes)
    targets = {
        "floor": sv.grpc_async(serving.bare.grpc_target, sv.BARE_GRPC, reqs),
        "store": store,
        "ours": sv.grpc_async(serving.ours.grpc_target, sv.grpc_method(w.kind), reqs),
    }
    return targets, sync_call, close


def _all(closes: list[Callable[[], None]]) -> Callable[[], None]:
    """One close for several clients."""

    def close() -> None:
        for c in closes:
            c()

    return close


def r_port(serving: Serving) -> int:
    return int(serving.redis.connection_pool.connection_kwargs["port"])


def _check_answer(proto: str, w: Workload, raw: bytes) -> None:
    """One real answer has the right shape and is not degraded."""
    if proto == "REST":
        import orjson

        body = orjson.loads(raw)
        if w.kind == "predict":
            assert len(body["scores"]) == w.size and not body["degraded"], body
        else:
            assert len(body["feature_names"]) == len(w.join_keys) + w.n_features, body
            assert all(len(c["values"]) == w.size for c in body["results"])
            assert not body["degraded"]
        return
    from featurestore.online.serving._proto import featurestore_pb2 as pb
    from featurestore.online.serving.grpc_server import column_values

    if w.kind == "predict":
        p = pb.PredictResponse.FromString(raw)
        assert len(p.scores) == w.size and not p.degraded
    else:
        g = pb.GetOnlineFeaturesResponse.FromString(raw)
        assert len(g.columns) == len(w.join_keys) + w.n_features and not g.degraded
        assert all(len(column_values(c)) == w.size for c in g.columns)


@pytest.mark.parametrize("concurrency", [1, 32], ids=["c1", "c32"])
@pytest.mark.parametrize("workload", list(WORKLOADS))
@pytest.mark.parametrize("proto", ["REST", "gRPC"])
def test_serving_remote(
    benchmark: Any,
    request: pytest.FixtureRequest,
    serving: Serving,
    floors: dict[str, LoadResult],
    proto: str,
    workload: str,
    concurrency: int,
) -> None:
    w = WORKLOADS[workload]
    targets, sync_call, close = _targets(proto, w, serving, concurrency)
    n = CALLS[(w.size, concurrency)]
    sv.wait_breaker_closed(serving.ours.url)
    degraded_before = sv.degraded_count(serving.ours.url)
    try:
        answer = sync_call()
        _check_answer(proto, w, answer)
        if "sized" in targets:  # the bare endpoint's sized constant: this very answer
            sv.set_bare_sized(serving.bare.url, proto, answer)
        if concurrency == 1:
            res = interleaved(targets, n=n, blocks=BLOCKS[1], max_seconds=MAX_SECONDS, warmup=30)
        else:
            res = sv.interleaved_async(
                targets,
                n=n,
                blocks=BLOCKS[32],
                concurrency=concurrency,
                max_seconds=MAX_SECONDS,
                warmup=2 * concurrency,
            )
        benchmark.pedantic(sync_call, rounds=PEDANTIC_ROUNDS, warmup_rounds=5)
    finally:
        close()
    degraded = sv.degraded_count(serving.ours.url) - degraded_before
    for v in res.values():
        assert not v.errors, v.first_error
    o, f = res["ours"], res["floor"]
    store = res["store"]
    model = floors["model"] if w.kind == "predict" else None
    budget = f.p99_us + store.p99_us + (model.p99_us if model else 0.0)
    parts = [f"bare {proto} p99 {_report.fmt_us(f.p99_us)} ({_rate(f)})"]
    at = f" at {concurrency}" if concurrency > 1 else ""
    parts.append(f"store p99 {_report.fmt_us(store.p99_us)} ({STORE_FLOOR[w.store_floor]}{at})")
    if model:
        parts.append(f"model p99 {_report.fmt_us(model.p99_us)}")
    _report.record(
        benchmark,
        workload=f"{proto} {w.describe()}, concurrency {concurrency}",
        ours=f"{_pcts(o)}, {_rate(o)}" + (f", {degraded:.0f} degraded" if degraded else ""),
        floor=" + ".join(parts) + f" = {_report.fmt_us(budget)}",
        ratio=o.p99_us / budget,
        target=f"p99 <= {FACTOR}x sum of floors' p99",
        met=o.p99_us <= FACTOR * budget and degraded == 0,
        nodeid=request.node.nodeid,
        ours_p50_us=o.p50_us,
        ours_p99_us=o.p99_us,
        ours_p999_us=o.p999_us,
        ours_per_s=o.throughput,
        floor_p50_us=f.p50_us,
        floor_p99_us=f.p99_us,
        floor_p999_us=f.p999_us,
        floor_per_s=f.throughput,
        store_p99_us=store.p99_us,
        model_p99_us=model.p99_us if model else 0.0,
        degraded=degraded,
        calls_each=o.n,
        concurrency=concurrency,
        stopped_by_time=o.stopped_by_time or f.stopped_by_time,
    )
    if concurrency == 1:
        p50_floor = f.p50_us + store.p50_us + (model.p50_us if model else 0.0)
        _report.NOTES.append(
            f"- {proto} {w.describe()}, one caller: p50 {_report.fmt_us(o.p50_us)} vs floors' "
            f"p50 sum {_report.fmt_us(p50_floor)} ({o.p50_us / p50_floor:.2f}x)."
        )
        if "sized" in res:
            sz = res["sized"]
            _report.NOTES.append(
                f"- {proto} {w.describe()}, one caller, against a bare endpoint answering a "
                f"constant as large as ours ({len(answer):,} B; not the target's floor): "
                f"endpoint p50 {_report.fmt_us(sz.p50_us)} / p99 {_report.fmt_us(sz.p99_us)} "
                f"(the small constant's: {_report.fmt_us(f.p50_us)} / "
                f"{_report.fmt_us(f.p99_us)}); ratio "
                f"{o.p99_us / (sz.p99_us + store.p99_us):.2f} at p99, "
                f"{o.p50_us / (sz.p50_us + store.p50_us):.2f}x at p50."
            )
    else:
        single = floors[w.store_floor].p99_us
        strict = f.p99_us + single + (model.p99_us if model else 0.0)
        _report.NOTES.append(
            f"- {proto} {w.describe()}, {concurrency} callers, against the single-caller store "
            f"floor instead (p99 {_report.fmt_us(single)}): ratio {o.p99_us / strict:.2f}."
        )
        _report.NOTES.append(
            f"- sustained, one worker process, {proto} {w.describe()}, {concurrency} callers: "
            f"{_rate(o)} ({o.throughput * w.size:,.0f} entities/s); bare {proto} endpoint "
            f"{_rate(f)} with the same client (one asyncio Python process on the same 2 cores)."
        )
