"""The serving engine: lookup -> model in one pass, inside a per-request deadline.

One ``Engine`` is shared by the REST server, the gRPC server and in-process callers. How it reads
the store under the deadline is in ``_reads`` (awaited on the event loop for a single Redis,
on the caller's own connection for synchronous calls, on a thread pool otherwise), so a slow or
dead store costs at most the request's deadline: the answer then carries each feature's default
and ``degraded=True``, and the circuit breaker stops sending reads until a probe succeeds. A
request that asks for less than ``serving.deadline_ms`` and misses it is answered degraded but
does not count against the breaker (see ``_reads``).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from featurestore._time import duration_us, now_us, parse_duration
from featurestore.errors import (
    FeatureNotFoundError,
    FeatureStoreError,
    RegistryError,
)
from featurestore.online.models.errors import ModelLoadError
from featurestore.online.serving import _requests as rq
from featurestore.online.serving._aredis import AsyncRedisReader
from featurestore.online.serving._inline import InlineRedisReader, NotReady
from featurestore.online.serving._push import Pushes
from featurestore.online.serving._reads import Deadline, StoreReads, _StoreFailed
from featurestore.online.serving._shortcuts import Shortcuts
from featurestore.online.serving.breaker import CircuitBreaker
from featurestore.online.serving.config import (
    MAX_DEADLINE_MS,
    ModelsConfig,
    ServingConfig,
    models_config,
    serving_config,
)
from featurestore.online.serving.errors import (
    BadRequestError,
    NotReadyError,
    TooManyEntitiesError,
)
from featurestore.online.serving.metrics import Metrics, ServedState
from featurestore.online.serving.results import (
    FeatureRequest,
    FeatureResult,
    PredictResult,
    Prepared,
    degraded_result,
    from_response,
)

if TYPE_CHECKING:
    from featurestore.online.models.runtime import LoadedModel, ModelRuntime
    from featurestore.online.serving.audit import AuditLog
    from featurestore.store import FeatureStore

log = logging.getLogger("featurestore.serving")
# a request field's value in the warm-up lookup, by dtype (numbers: 0)
_WARM_VALUE: dict[str, Any] = {"string": "", "bytes": "", "bool": False}
# a join key's value in the warm-up lookup, by the registry's join_key_kinds (else 0)
_WARM_KEY: dict[str, Any] = {"str": "", "int": 0}


def _numeric(values: list[Any]) -> bool:
    try:
        np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    return True


class Engine(StoreReads, Pushes, Shortcuts):
    """Features, predictions and pushes with a deadline; safe to share across threads and loops."""

    def __init__(
        self,
        store: FeatureStore,
        *,
        serving: ServingConfig | None = None,
        models: ModelRuntime | None = None,
        models_cfg: ModelsConfig | None = None,
        own_store: bool = False,
    ) -> None:
        self.store = store
        self._own_store = own_store
        self.config = serving or serving_config(store.config)
        self.models_config = models_cfg or models_config(store.config)
        self.metrics = Metrics()
        self.metrics.serve_state(self._served_state)
        if models is None:
            from featurestore.online.models import ModelRegistry, ModelRuntime, ShadowRecorder

            mc = self.models_config
            shadow = ShadowRecorder(
                buffer=mc.shadow_buffer,
                log_path=store.config.resolve(mc.shadow_log) if mc.shadow_log else None,
                on_record=self._count_shadow,
            )
            models = ModelRuntime(
                ModelRegistry(store.config.resolve(mc.path)),
                poll_interval_s=mc.poll_interval_s,
                shadow=shadow,
            )
        if models.shadow.on_record is None:  # a runtime made elsewhere: still counted here
            models.shadow.on_record = self._count_shadow
        self.models = models
        br = self.config.breaker
        self.breaker = CircuitBreaker(
            failure_threshold=br.failure_threshold, reset_s=br.reset_ms / 1000
        )
        self._breaker_open = False  # as last reported to the gauge
        self._warming = False  # warm-up lookups are not requests: metrics leave them out
        self._pool = cf.ThreadPoolExecutor(
            max(1, self.config.read_threads), thread_name_prefix="store-read"
        )
        self._resolved: dict[Any, tuple[Any, FeatureRequest]] = {}
        # per resolved request: (join key -> a view needing it, request field -> view)
        self._needs: dict[int, tuple[FeatureRequest, dict[str, str], rq.RequestFields]] = {}
        self._started = False
        self._draining = False  # shutting down: not ready, still answering
        self._store_ok_at = 0.0
        self._grace_us = duration_us(parse_duration(store.config.online_store.key_ttl_grace)) or 0
        self._lock = threading.Lock()
        iso = self.config.isolate_reads
        self._isolate = iso == "always" or (
            iso == "auto" and store.config.online_store.type != "embedded"
        )
        # "auto" on a single Redis: synchronous calls read on their own thread, bounded by the
        # remaining deadline as the socket timeout (no pool hop); event-loop calls keep the pool
        self._inline: InlineRedisReader | None = None
        # and event-loop calls on a single Redis await a pipelined asyncio connection instead
        self._aredis: AsyncRedisReader | None = None
        osc = store.config.online_store
        if iso == "auto" and osc.type == "redis":
            self._inline = InlineRedisReader(lambda: store.online, self._pool)
            if AsyncRedisReader.supports(osc.url):
                self._aredis = AsyncRedisReader(
                    osc.url, connect_timeout=osc.connect_timeout, socket_timeout=osc.socket_timeout
                )
        self._vectors = {}  # the one-entity shortcuts' plans (see _shortcuts)
        self._rows = {}
        self._observers: dict[str, tuple[Any, Any, Any]] = {}
        self._audit: AuditLog | None = None  # serving.audit: a record per prediction and push
        if self.config.audit is not None:
            from featurestore.online.serving.audit import AuditLog

            ac = self.config.audit
            self._audit = AuditLog(
                store.config.resolve(ac.path),
                include_features=ac.include_features,
                max_file_mb=ac.max_file_mb,
                metrics=self.metrics,
            )

    @property
    def audit(self) -> AuditLog | None:
        """The audit log (``serving.audit``), or None when it is off."""
        return self._audit

    @classmethod
    def from_repo(cls, repo_path: str = ".") -> Engine:
        from featurestore.store import FeatureStore

        return cls(FeatureStore(repo_path), own_store=True)

    # ---- lifecycle --------------------------------------------------------------------------
    def start(self, *, poll: bool = True) -> Engine:
        """Load the registry and the models, warm the lookup path; idempotent.

        Never waits on a network store: ``store.predict`` starts the engine inside its first
        call, whose deadline a slow store must not outlast."""
        with self._lock:
            if self._started:
                return self
            _ = self.store.registry  # RegistryError if nothing was applied
            self.models.refresh()
            if poll:
                self.models.start_polling()
            if self._inline is not None:  # this thread's own connection, made on the pool
                with contextlib.suppress(NotReady):
                    self._inline.read([], time.monotonic())
            if self.store.config.online_store.type == "embedded":
                self._check_store()  # local; opened by this ping before any read opens it too
            else:
                self._probe_store()  # a network store: pinged on the pool, never waited for
            from featurestore.online._stored import warm

            warm()  # batch lookups' kernel, compiled or loaded before traffic
            for svc in list(self.store.registry.feature_services):
                try:  # first lookups build codecs and plans; pay that before traffic
                    self._warm_plans(svc)
                except Exception as exc:  # best effort; real requests report errors
                    log.warning("warm-up of feature service %s failed: %s", svc, exc)
            services = self.store.registry.feature_services
            for route in list(self.models.routes.values()):
                for model in (route.production, route.canary):
                    if model is None or model.version.feature_service not in services:
                        continue  # a model whose service is gone: health reports it
                    try:
                        self._vector(model, None)  # predict's one-entity plan
                    except Exception as exc:
                        log.warning("warm-up of model %s failed: %s", model.version.name, exc)
            self._started = True
        return self

    def _warm_plans(self, service: str) -> None:
        """What a first lookup of ``service`` builds (codecs, plans, key templates, the
        one-entity shortcut's plan), on a throwaway request answered as if nothing were
        stored: the store is not asked, so a slow one cannot hold up the start."""
        args = self._warm_request(service)
        ents, data = args["entities"], args["request_data"]
        self._feature_row(None, service, ents, data, False, False, None)
        p = self._prepare(None, service, ents, data, False, False, None)
        lk = self._plan(p)
        from_response(p, lk.finish([None] * len(lk.keys))).wire_columns()

    def _warm_request(self, service: str) -> dict[str, Any]:
        """Arguments of a throwaway lookup of ``service``: each join key a value of its kind
        (0 or ""), each request field a zero of its type."""
        requests = self._resolve(None, service)
        keys, fields = self._needs_of(requests)
        kinds = self._registry().join_key_kinds
        return {
            "entities": {k: [_WARM_KEY.get(kinds.get(k, "int"), 0)] for k in keys},
            "request_data": {f: [_WARM_VALUE.get(t, 0)] for f, (_, t) in fields.items()} or None,
        }

    def drain(self) -> None:
        """Report not ready from now on (the server is shutting down); requests are still
        answered, so load balancers move traffic away before the listeners close."""
        self._draining = True

    def close(self) -> None:
        self.models.close()
        if self._audit is not None:
            self._audit.close()
        if self._inline is not None:
            self._inline.close()
        if self._aredis is not None:
            self._aredis.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._own_store:
            self.store.close()

    def _probe_store(self) -> None:
        """Ping the store on the pool without waiting for it: the breaker and the health
        check hear how it went."""
        if not self.breaker.allow():
            return

        def heard(fut: cf.Future[None]) -> None:
            if fut.cancelled() or fut.exception() is not None:
                self.breaker.failure()
                return
            self.breaker.success()
            self._store_ok_at = time.monotonic()

        online = self.store.online  # opened here, on one thread: never twice at once
        self._pool.submit(online.ping).add_done_callback(heard)

    def _check_store(self) -> bool:
        if not self.breaker.allow():
            return False
        fut = self._pool.submit(self.store.online.ping)
        try:
            fut.result(timeout=max(0.05, self.config.deadline_ms / 1000 * 4))
        except Exception:
            self.breaker.failure()
            return False
        self.breaker.success()
        self._store_ok_at = time.monotonic()
        return True

    def health(self) -> dict[str, Any]:
        """Readiness details: registry applied, store answering, models loaded and warm."""
        try:
            registry_version: int | None = self.store.registry.version
        except FeatureStoreError:
            registry_version = None
        store_ok = time.monotonic() - self._store_ok_at < 1.0 or self._check_store()
        try:  # a failed promotion keeps the old version serving: reported, still ready
            unserved = self.models.unserved()
        except FeatureStoreError as exc:
            unserved = [str(exc)]
        no_service = self._models_without_service()
        models_ok = self.models.loaded and not unserved and not no_service
        ready = self._started and registry_version is not None and store_ok and models_ok
        return {
            "ready": bool(ready) and not self._draining,
            "draining": self._draining,
            "registry_version": registry_version,
            "online_store": "ok" if store_ok else "unavailable",
            "breaker": self.breaker.state.value,
            "models": {
                name: r.production.version.version for name, r in self.models.routes.items()
            },
            "model_error": self.models.last_error,
            "models_not_loaded": unserved,
            "models_without_service": no_service,
        }

    def _models_without_service(self) -> list[str]:
        """Loaded production and canary versions whose feature service the registry lost, or
        that read a feature their service no longer serves."""
        from featurestore.online.models.repo import lost_features

        try:
            services = self._registry().feature_services
        except FeatureStoreError:
            return []
        out = []
        for route in self.models.routes.values():
            for m in (route.production, route.canary):
                if m is None:
                    continue
                svc = services.get(m.version.feature_service)
                why = str(self._service_gone(m)) if svc is None else lost_features(m.version, svc)
                if why is not None:
                    out.append(why)
        return out

    # ---- features ---------------------------------------------------------------------------
    def _served_state(self) -> ServedState:
        """Registry version, online views' watermarks and model alias versions, for /metrics."""
        state = self._registry()
        from featurestore.registry import watermark_us
        from featurestore.sources import StreamSource

        store = self.store._store_id  # watermarks of this server's online store only
        marks = {  # a stream-fed view is kept fresh by ingest: its watermark says nothing of that
            name: mark
            for name, view in state.feature_views.items()
            if view.online
            and not isinstance(view.source, StreamSource)
            and (mark := watermark_us(state, name, store)) is not None
        }
        versions: dict[tuple[str, str], int] = {}
        for name, route in self.models.routes.items():
            for alias, model in (
                ("production", route.production),
                ("canary", route.canary),
                ("shadow", route.shadow),
            ):
                if model is not None:
                    versions[(name, alias)] = model.version.version
        return ServedState(state.version, marks, versions)

    def join_keys(self, view: str) -> tuple[str, ...]:
        """``view``'s join keys; none for a view the registry lacks (the push names that)."""
        try:
            fv = self._registry().feature_views.get(view)
        except FeatureStoreError:
            return ()
        return tuple(fv.join_keys) if fv is not None else ()

    def _registry(self) -> Any:
        """The registry state, re-checked (one stat) at most every 0.1 s, and at once after a
        write by this process (RegistryError until applied: never cached)."""
        return self.store.recent_registry()

    def _resolve(self, features: Sequence[str] | None, service: str | None) -> FeatureRequest:
        state = self._registry()
        if (features is None) == (service is None):
            raise BadRequestError(
                "give exactly one of 'features' or 'feature_service'", field="features"
            )
        if service is None and not features:  # [] or (): a request for nothing is malformed
            raise BadRequestError(
                "features is empty; name at least one 'view:feature' or give a feature_service",
                field="features",
            )
        key = service if service is not None else tuple(features or ())
        hit = self._resolved.get(key)
        if hit is not None and hit[0] is state:
            return hit[1]
        if service is not None:
            if not isinstance(service, str) or service not in state.feature_services:
                known = sorted(state.feature_services) or "none"
                raise FeatureNotFoundError(
                    f"feature_service: no feature service {service!r}; known: {known}"
                )
            req = self.store.resolve_features(service)
        else:
            for ref in features or ():
                if not isinstance(ref, str):
                    raise BadRequestError(
                        f"features: {ref!r} is not a 'view:feature' string", field="features"
                    )
            req = self.store.resolve_features(list(features or ()))
        if len(self._resolved) > 1024:
            self._resolved.clear()
        self._resolved[key] = (state, req)
        return req

    def _prepare(
        self,
        features: Sequence[str] | None,
        service: str | None,
        entities: Any,
        request_data: Any,
        full: bool,
        include_ts: bool,
        deadline_ms: float | None,
    ) -> Prepared:
        deadline = self._deadline(deadline_ms)
        requests = self._resolve(features, service)
        cols = rq.to_columns(entities, "entities")
        needed, fields = self._needs_of(requests)
        req_cols = rq.to_columns(request_data, "request_data") if request_data else None
        if needed or not req_cols:
            kinds = self._registry().join_key_kinds
            n = rq.check_entities(cols, needed, self.config.max_entities, kinds)
        else:  # only on-demand features: the rows are the request data's
            n = rq.check_entities(req_cols, {}, self.config.max_entities)
        if fields:
            rq.check_request_data(req_cols or {}, n, fields)
        elif req_cols:
            rq.check_request_data(req_cols, n, {})
        return Prepared(
            requests,
            {k: cols[k] for k in needed},
            n,
            full,
            include_ts,
            deadline,
            req_cols,
        )

    def _deadline(self, deadline_ms: float | None) -> Deadline:
        """The request's deadline on time.monotonic(): now + its budget (or the default); a
        budget below ``serving.deadline_ms`` is not judged (its miss spares the breaker)."""
        t0 = time.monotonic()
        budget = self.config.deadline_ms if deadline_ms is None else deadline_ms
        if (
            not isinstance(budget, (int, float))
            or isinstance(budget, bool)
            or not 0 < budget <= MAX_DEADLINE_MS  # NaN fails too: a read with no end is a hang
        ):
            raise BadRequestError(
                f"deadline_ms must be a number of milliseconds above 0 and up to "
                f"{MAX_DEADLINE_MS}, got {budget!r}",
                field="deadline_ms",
            )
        return Deadline(t0 + budget / 1000, budget >= self.config.deadline_ms)

    def _needs_of(self, requests: FeatureRequest) -> tuple[dict[str, str], rq.RequestFields]:
        """Join keys and request fields a resolved request needs, computed once per request."""
        hit = self._needs.get(id(requests))
        if hit is not None and hit[0] is requests:
            return hit[1], hit[2]
        from featurestore.online._computed import with_on_demand_inputs

        needed: dict[str, str] = {}
        # the views on-demand features read count too: only those may need the keys
        for view, _ in with_on_demand_inputs(requests)[0]:
            for k in view.join_keys:
                needed.setdefault(k, view.name)
        fields = rq.request_fields(requests)
        if len(self._needs) > 1024:
            self._needs.clear()
        self._needs[id(requests)] = (requests, needed, fields)  # holds requests: id stays unique
        return needed, fields

    async def awarm(self) -> None:
        """Connect the event loop's store reads and run each feature service once on them."""
        self._warming = True
        try:
            for svc in list(self._registry().feature_services):
                try:
                    await self.aget_features(feature_service=svc, **self._warm_request(svc))
                except Exception as exc:  # best effort, as in start()
                    log.warning("event-loop warm-up of feature service %s failed: %s", svc, exc)
        finally:
            self._warming = False

    def _finish(self, p: Prepared, resp: Any, reason: str | None) -> FeatureResult:
        self._count_read(reason)
        return from_response(p, resp) if reason is None else degraded_result(p, reason)

    def _count_read(self, reason: str | None) -> None:
        """Metrics of one store read: the breaker gauge, and why an answer is degraded."""
        if self._warming:
            return
        is_open = self.breaker.is_open
        if is_open is not self._breaker_open:  # the gauge moves only when the breaker does
            self._breaker_open = is_open
            self.metrics.breaker_state.set(1.0 if is_open else 0.0)
        if reason is not None:
            self.metrics.child(self.metrics.degraded, reason).inc()
            if reason != "breaker_open":
                self.metrics.store_errors.inc()

    def get_features(
        self,
        *,
        features: Sequence[str] | None = None,
        feature_service: str | None = None,
        entities: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]],
        request_data: Mapping[str, Sequence[Any]] | None = None,
        full_feature_names: bool = False,
        include_event_timestamps: bool = False,
        deadline_ms: float | None = None,
    ) -> FeatureResult:
        """Online features for a batch of entities; defaults + degraded if the store is late."""
        t0 = time.perf_counter()
        out = self._row_sync(
            features, feature_service, entities, request_data, full_feature_names,
            include_event_timestamps, deadline_ms,
        )  # fmt: skip
        if out is not None:  # one entity, answered by the shortcut (see _shortcuts)
            self._observe("get_features", t0, out.degraded, 1)
            return out
        p = self._prepare(
            features,
            feature_service,
            entities,
            request_data,
            full_feature_names,
            include_event_timestamps,
            deadline_ms,
        )
        try:
            resp, reason = self._read_sync(p), None
        except _StoreFailed as f:
            resp, reason = None, f.reason
        out = self._finish(p, resp, reason)
        self._observe("get_features", t0, out.degraded, p.n)
        return out

    async def aget_features(
        self,
        *,
        features: Sequence[str] | None = None,
        feature_service: str | None = None,
        entities: Any,
        request_data: Any = None,
        full_feature_names: bool = False,
        include_event_timestamps: bool = False,
        deadline_ms: float | None = None,
    ) -> FeatureResult:
        """:meth:`get_features` for an event loop (the read runs on the pool, awaited)."""
        t0 = time.perf_counter()
        out = await self._row_async(
            features, feature_service, entities, request_data, full_feature_names,
            include_event_timestamps, deadline_ms,
        )  # fmt: skip
        if out is not None:  # one entity, answered by the shortcut (see _shortcuts)
            self._observe("get_features", t0, out.degraded, 1)
            return out
        p = self._prepare(
            features,
            feature_service,
            entities,
            request_data,
            full_feature_names,
            include_event_timestamps,
            deadline_ms,
        )
        try:
            resp, reason = await self._read_async(p), None
        except _StoreFailed as f:
            resp, reason = None, f.reason
        out = self._finish(p, resp, reason)
        self._observe("get_features", t0, out.degraded, p.n)
        return out

    def _observe(self, endpoint: str, t0: float, degraded: bool, n: int) -> None:
        if self._warming:
            return
        kids = self._observers.get(endpoint)
        m = self.metrics
        if kids is None:  # the endpoint's latency, ok and degraded children, looked up once
            kids = self._observers[endpoint] = (
                m.child(m.latency, endpoint),
                m.child(m.requests, endpoint, "ok"),
                m.child(m.requests, endpoint, "degraded"),
            )
        kids[0].observe(time.perf_counter() - t0)
        kids[2 if degraded else 1].inc()
        m.entities.inc(n)

    # ---- predict ----------------------------------------------------------------------------
    def _model(self, model: str, explain: bool) -> tuple[LoadedModel, LoadedModel | None]:
        """The version answering ``model`` and its shadow; with ``explain``, one that can
        explain (a bare name's canary that cannot leaves the request to production)."""
        if not isinstance(model, str) or not model:
            raise BadRequestError("model must be a name, NAME@ALIAS or NAME@VERSION", field="model")
        name, at, sel = model.partition("@")
        if at and (not name or not sel):
            shown = model if len(model) <= 80 else model[:80] + "..."
            raise BadRequestError(
                f"model {shown!r} has {'no name before' if not name else 'nothing after'} its "
                "'@'; expected NAME, NAME@ALIAS (production, shadow, canary) or NAME@VERSION",
                field="model",
            )
        if not self.models.loaded:  # a worker still starting: "retry", not "no such model"
            raise NotReadyError(
                f"model '{model}': this server is still loading its models; retry shortly"
            )
        chosen, shadow = self.models.select(model, explain=explain)
        if explain:  # refused before any read, not after
            chosen.require_explainable()
        service = chosen.version.feature_service
        if service not in self._registry().feature_services:
            raise self._service_gone(chosen)
        return chosen, shadow

    @staticmethod
    def _service_gone(m: LoadedModel) -> ModelLoadError:
        v = m.version
        return ModelLoadError(
            f"model '{v.name}' v{v.version} reads feature service '{v.feature_service}', which "
            "the registry no longer has; restore the service or re-register the model"
        )

    def _score(
        self,
        chosen: LoadedModel,
        shadow: LoadedModel | None,
        feats: FeatureResult,
        return_features: bool,
        t0: float,
        entities: dict[str, list[Any]],
        explain: bool,
    ) -> PredictResult:
        cols = feats.wire_columns()  # float64 arrays where read as stored: no lists built
        names = chosen.feature_names
        try:  # one C call for the whole matrix (None -> NaN); the model's input order
            if len(next(iter(cols.values()), ())) == 1:  # one entity: a flat row is cheaper
                x = np.array([[cols[n][0] for n in names]], dtype=np.float64)
            else:
                x = np.array([cols[n] for n in names], dtype=np.float64).T
        except (TypeError, ValueError):
            bad = next(n for n in names if not _numeric(cols[n]))
            raise ModelLoadError(
                f"feature '{bad}' of model '{chosen.version.name}' is not numeric; "
                "the model needs numbers"
            ) from None
        except KeyError as exc:
            raise ModelLoadError(
                f"model '{chosen.version.name}' needs feature {exc} which its feature service "
                f"'{chosen.version.feature_service}' no longer serves; re-register the model"
            ) from None
        return self._scored(
            chosen, shadow, np.ascontiguousarray(x), feats.degraded, t0, entities, explain,
            feats if return_features else None,
        )  # fmt: skip

    def _scored(
        self,
        chosen: LoadedModel,
        shadow: LoadedModel | None,
        x: np.ndarray,
        degraded: bool,
        t0: float,
        entities: dict[str, list[Any]],
        explain: bool,
        feats: FeatureResult | None = None,
    ) -> PredictResult:
        """Score the input rows ``x`` of ``entities`` (shadow on the side), counted in the
        metrics and, when on, recorded in the audit log; ``explain``: with contributions."""
        if explain and x.shape[0] > self.config.max_explained_entities:
            raise TooManyEntitiesError(
                f"explain: {x.shape[0]} entities; an explained request takes at most "
                f"{self.config.max_explained_entities} (serving.max_explained_entities): an "
                "explanation costs about a millisecond per entity"
            )
        scores, unscored = chosen.score(x)
        mv = chosen.version
        m = self.metrics
        m.child(m.predictions, mv.name, str(mv.version)).inc(x.shape[0] - unscored)
        if unscored:
            m.child(m.unscored, mv.name, str(mv.version)).inc(unscored)
        if shadow is not None and not self.models.shadow.submit(shadow, chosen, x, scores):
            shadow = None  # not scored (see ShadowRecorder): the audit names no shadow version
        self._observe("predict", t0, degraded, x.shape[0])
        res = PredictResult(mv.name, mv.version, scores.tolist(), degraded, feats)
        if explain:
            res.explanation = chosen.explain(x, scores=scores)  # a base from the scores
        if self._audit is not None:
            res.request_id = self._audit.predict(
                model=mv.name,
                version=mv.version,
                shadow_version=None if shadow is None else shadow.version.version,
                entities=entities,
                x=x,
                feature_names=chosen.feature_names,
                scores=scores,
                degraded=degraded,
                latency_us=int((time.perf_counter() - t0) * 1e6),
            )
        return res

    def _count_shadow(self, rec: dict[str, Any]) -> None:
        """Count a shadow record: its scored rows, or one failure by its reason."""
        m = self.metrics
        version = str(rec["shadow_version"])
        if "scores" in rec:
            m.child(m.shadow, rec["model"], version).inc(len(rec["scores"]))
        else:
            m.child(m.shadow_errors, rec["model"], version, rec.get("reason", "error")).inc()

    def predict(
        self,
        model: str,
        *,
        entities: Any,
        request_data: Any = None,
        return_features: bool = False,
        deadline_ms: float | None = None,
        explain: bool = False,
    ) -> PredictResult:
        """Features for each entity -> model -> one score per entity (shadow scored on the side);
        with ``explain``, each feature's contribution to each score too."""
        t0 = time.perf_counter()
        chosen, shadow = self._model(model, explain)
        fast = None if return_features or request_data else self._vector(chosen, entities)
        if fast is not None:
            plan, keys = fast
            deadline, now = self._deadline(deadline_ms), now_us()
            try:
                x = plan.row(self._sync_read(lambda store: store.read(keys), deadline), now)
                reason = None
            except _StoreFailed as f:
                x, reason = plan.defaults, f.reason
            self._count_read(reason)
            return self._scored(chosen, shadow, x, reason is not None, t0, entities, explain)
        p = self._prepare(
            None, chosen.version.feature_service, entities, request_data, False, False, deadline_ms
        )
        try:
            resp, reason = self._read_sync(p), None
        except _StoreFailed as f:
            resp, reason = None, f.reason
        out = self._finish(p, resp, reason)
        return self._score(chosen, shadow, out, return_features, t0, p.entities, explain)

    async def apredict(
        self,
        model: str,
        *,
        entities: Any,
        request_data: Any = None,
        return_features: bool = False,
        deadline_ms: float | None = None,
        explain: bool = False,
    ) -> PredictResult:
        t0 = time.perf_counter()
        chosen, shadow = self._model(model, explain)
        fast = None if return_features or request_data else self._vector(chosen, entities)
        if fast is not None:
            plan, keys = fast
            deadline, now = self._deadline(deadline_ms), now_us()
            try:
                x, reason = plan.row(await self._async_values(keys, deadline), now), None
            except _StoreFailed as f:
                x, reason = plan.defaults, f.reason
            self._count_read(reason)
            return self._scored(chosen, shadow, x, reason is not None, t0, entities, explain)
        p = self._prepare(
            None, chosen.version.feature_service, entities, request_data, False, False, deadline_ms
        )
        try:
            resp, reason = await self._read_async(p), None
        except _StoreFailed as f:
            resp, reason = None, f.reason
        out = self._finish(p, resp, reason)
        return self._score(chosen, shadow, out, return_features, t0, p.entities, explain)

    # ---- listings ---------------------------------------------------------------------------
    def feature_services(self) -> list[dict[str, Any]]:
        try:
            state = self.store.registry
        except RegistryError:
            return []
        return [s.to_dict() for s in state.feature_services.values()]

    def list_models(self) -> list[dict[str, Any]]:
        return self.models.describe()

    def require_ready(self) -> None:
        if not self._started:
            raise NotReadyError("the engine is still starting")
