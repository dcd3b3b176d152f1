"""The in-memory side of the registry: loaded, warmed versions behind an atomically swapped pointer.

A request reads ``self._routes[name]`` once (one dict lookup, atomic in CPython) and uses that
snapshot to the end, so a promotion never changes a model under a running request. New
versions are loaded and warmed on the refresh thread and only then published.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import queue
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from featurestore.online.models.errors import (
    ModelExplainError,
    ModelLoadError,
    ModelNotFoundError,
    ModelPredictError,
    one_line,
)
from featurestore.online.models.explain import EXPLAINABLE, Explanation
from featurestore.online.models.flavors import Predictor, load_predictor
from featurestore.online.models.registry import ALIASES, ModelRegistry, ModelVersion

log = logging.getLogger("featurestore.models")


@dataclass(frozen=True)
class LoadedModel:
    """A warmed predictor and the version it came from."""

    version: ModelVersion
    predictor: Predictor

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.version.feature_names

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.predictor.predict(x)

    def score(self, x: np.ndarray, *, many: bool = False) -> tuple[np.ndarray, int]:
        """float64 scores of the rows ``x``, and how many rows were left unscored (NaN).

        Many models (most of sklearn's) refuse a missing input: when the model raises on rows
        holding NaN (a null feature with no default), those rows score NaN, answered as null,
        and the others are scored without them, so one incomplete entity does not fail its
        batch. Any other failure is a ModelPredictError naming the model and the cause.
        ``many``: an offline batch, scored on every core the flavor can use.
        """
        predict = self.predictor.predict_many if many else self.predictor.predict
        try:
            return np.asarray(predict(x), dtype=np.float64), 0
        except Exception as exc:
            missing = np.isnan(x).any(axis=1)
            if not missing.any():
                raise self._failed(exc, len(x)) from exc
        out = np.full(len(x), np.nan)
        ok = ~missing
        if ok.any():
            try:
                out[ok] = predict(np.ascontiguousarray(x[ok]))
            except Exception as exc:
                raise self._failed(exc, int(ok.sum())) from exc
        return out, int(missing.sum())

    @property
    def explainable(self) -> bool:
        """Whether ``explain`` can answer, decided at load so a request is refused up front.

        From the model's structure: a scikit-learn model with coefficients whose output turns
        out not to be linear in them is refused at its first explanation instead.
        """
        return self.predictor.explainer is not None

    def require_explainable(self) -> None:
        """Raise ModelExplainError when this model gives no explanations (before any work)."""
        if self.predictor.explainer is None:
            raise self._cannot_explain(self.predictor.unexplainable)

    def explain(self, x: np.ndarray) -> Explanation:
        """Per-row feature contributions of the rows ``x`` (as ``score`` gets them, NaN missing).

        ``base_values + contributions.sum(axis=1)`` equals the model's output in the space
        ``output`` names ("raw": log-odds of binary classifiers, the value of identity-link
        regressors; see ``featurestore.online.models.explain``). A model that cannot explain
        raises ModelExplainError; rows of the wrong width a ValueError; a library failure a
        ModelPredictError. Only runs when asked: scoring never pays for it.
        """
        self.require_explainable()
        ex = self.predictor.explainer
        k = len(self.feature_names)
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != k:
            raise ValueError(
                f"model '{self.version.name}' v{self.version.version} explains rows of its "
                f"{k} inputs {list(self.feature_names)}; got an array of shape {x.shape}"
            )
        if len(x) == 0:
            return Explanation(self.feature_names, np.zeros((0, k)), np.zeros(0), ex.output)
        try:
            contributions, base = ex.fn(np.ascontiguousarray(x))
            contributions = np.ascontiguousarray(contributions, dtype=np.float64)
            base = np.ascontiguousarray(base, dtype=np.float64)
            if contributions.shape != x.shape or base.shape != (len(x),):
                raise ValueError(
                    f"contributions of shape {contributions.shape} and base values of shape "
                    f"{base.shape} for {len(x)} row(s) of {k} inputs"
                )
        except ModelExplainError as exc:  # found out on first use (a sklearn model's probe)
            raise self._cannot_explain(str(exc)) from None
        except Exception as exc:
            raise self._failed(exc, len(x), "explain") from exc
        return Explanation(self.feature_names, contributions, base, ex.output)

    def _cannot_explain(self, why: str) -> ModelExplainError:
        v = self.version
        why = why or "its flavor gives no feature contributions"
        return ModelExplainError(
            f"model '{v.name}' v{v.version} ({v.flavor} flavor) cannot explain its scores: "
            f"{why}; explanations are available for {EXPLAINABLE}. Ask for scores without "
            "an explanation, or serve an explainable version"
        )

    def _failed(self, exc: Exception, rows: int, what: str = "score") -> ModelPredictError:
        v = self.version
        log.warning("model '%s' v%s failed to %s %d row(s): %r", v.name, v.version, what, rows, exc)
        return ModelPredictError(
            f"model '{v.name}' v{v.version} failed to {what} {rows} row(s): "
            f"{type(exc).__name__}: {one_line(exc)}"
        )


@dataclass(frozen=True)
class Route:
    """Where the traffic of one model name goes: production, optional canary share and shadow."""

    production: LoadedModel
    canary: LoadedModel | None = None
    canary_share: float = 0.0
    shadow: LoadedModel | None = None
    index_mtime: int = 0

    def pick(self) -> LoadedModel:
        if self.canary is not None and random.random() < self.canary_share:
            return self.canary
        return self.production


def warm(model: LoadedModel) -> None:
    """Predict on one zero row, so first-request costs (lazy init, page faults) happen now."""
    x = np.zeros((1, len(model.feature_names)), dtype=np.float64)
    try:
        out = model.predict(x)
    except Exception as exc:
        raise ModelLoadError(
            f"model '{model.version.name}' v{model.version.version} failed its warm-up "
            f"prediction: {exc}"
        ) from exc
    if np.asarray(out).shape != (1,):  # a (1, k) answer is a multiclass / multi-output model
        raise ModelLoadError(
            f"model '{model.version.name}' v{model.version.version} returned shape "
            f"{np.asarray(out).shape} for one row; expected one score per row"
        )


class ShadowRecorder:
    """Scores shadow versions off the request path; keeps the last N records and appends a log.

    The queue is bounded: under overload shadow work is dropped (and counted), never the request.
    """

    def __init__(
        self, *, buffer: int = 1000, log_path: str | None = None, on_record: Any = None
    ) -> None:
        self.records: collections.deque[dict[str, Any]] = collections.deque(maxlen=buffer)
        self.dropped = 0
        self.log_path = log_path
        self.on_record = on_record
        self._q: queue.Queue[Any] = queue.Queue(maxsize=1000)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(
        self, shadow: LoadedModel, primary: LoadedModel, x: np.ndarray, scores: np.ndarray
    ) -> None:
        self._ensure_thread()
        try:
            self._q.put_nowait((shadow, primary, x, scores, time.time()))
        except queue.Full:
            self.dropped += 1

    def _ensure_thread(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    t = threading.Thread(target=self._run, name="shadow-scorer", daemon=True)
                    t.start()
                    self._thread = t

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            shadow, primary, x, scores, ts = item
            try:
                s = np.asarray(shadow.predict(x), dtype=np.float64)
                rec = {
                    "ts": ts,
                    "model": shadow.version.name,
                    "shadow_version": shadow.version.version,
                    "primary_version": primary.version.version,
                    "scores": s.tolist(),
                    "primary_scores": np.asarray(scores, dtype=np.float64).tolist(),
                }
            except Exception as exc:
                rec = {
                    "ts": ts,
                    "model": shadow.version.name,
                    "shadow_version": shadow.version.version,
                    "error": str(exc),
                }
            self.records.append(rec)
            if self.on_record is not None:
                self.on_record(rec)
            if self.log_path:
                try:
                    with open(self.log_path, "a") as fh:
                        fh.write(json.dumps(rec) + "\n")
                except OSError as exc:
                    log.warning("cannot append shadow log %s: %s", self.log_path, exc)
            self._q.task_done()

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until queued shadow work is done (tests, shutdown)."""
        end = time.monotonic() + timeout
        while self._q.unfinished_tasks and time.monotonic() < end:
            time.sleep(0.005)

    def close(self) -> None:
        if self._thread is not None:
            self._q.put(None)
            self._thread.join(timeout=2)
            self._thread = None


class ModelRuntime:
    """Loads every model that has a production alias, serves ``name``/``name@alias``/``name@3``.

    ``refresh()`` re-reads changed indexes, loads and warms new versions, then swaps the route;
    ``start_polling()`` runs it every ``poll_interval_s`` so CLI promotions reach a live server.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        *,
        poll_interval_s: float = 1.0,
        shadow: ShadowRecorder | None = None,
    ) -> None:
        self.registry = registry
        self.poll_interval_s = poll_interval_s
        self.shadow = shadow or ShadowRecorder()
        self._routes: dict[str, Route] = {}
        self._pinned: dict[tuple[str, int], LoadedModel] = {}
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.loaded = False
        self.errors: dict[str, str] = {}  # per model: why its latest index could not be served
        self._failed: dict[str, int] = {}  # per model: index mtime that failed (no retry storm)
        self.swaps = 0

    # ---- request path -----------------------------------------------------------------------
    def select(self, ref: str) -> tuple[LoadedModel, LoadedModel | None]:
        """The model answering ``ref`` and the shadow to score alongside it (production only)."""
        name, _, sel = ref.partition("@")
        route = self._routes.get(name)
        if not sel:
            if route is None:
                self._missing(ref)
            return route.pick(), route.shadow  # type: ignore[union-attr]
        if route is not None and sel in ALIASES:
            m = {"production": route.production, "canary": route.canary, "shadow": route.shadow}[
                sel
            ]
            if m is not None:
                return m, None
        mv = self.registry.resolve(ref)  # raises ModelNotFoundError with the known names
        return self._pinned_model(mv), None

    def _missing(self, ref: str) -> None:
        names = sorted(self._routes) or ["none loaded"]
        try:
            self.registry.resolve(ref)  # a precise reason (no such model / no production alias)
        except ModelNotFoundError:
            raise
        raise ModelNotFoundError(f"model '{ref}' is not loaded yet; loaded models: {names}")

    def _pinned_model(self, mv: ModelVersion) -> LoadedModel:
        key = (mv.name, mv.version)
        m = self._pinned.get(key)
        if m is None:
            m = self._load(mv)
            self._pinned[key] = m
        return m

    # ---- loading ----------------------------------------------------------------------------
    def _load(self, mv: ModelVersion) -> LoadedModel:
        m = LoadedModel(mv, load_predictor(mv.flavor, self.registry.artifact_path(mv)))
        warm(m)
        return m

    def _reuse(self, mv: ModelVersion, old: Route | None) -> LoadedModel:
        if old is not None:
            for m in (old.production, old.canary, old.shadow):
                if m is not None and m.version == mv:
                    return m
        return self._pinned.get((mv.name, mv.version)) or self._load(mv)

    def refresh(self) -> bool:
        """Re-read the registry; load + warm what changed, then publish. True if it swapped."""
        with self._refresh_lock:
            changed = False
            routes = dict(self._routes)
            names = self.registry.names()
            for name in names:
                try:
                    mtime = os.stat(self.registry.index_path(name)).st_mtime_ns
                except FileNotFoundError:
                    continue
                old = routes.get(name)
                if (old is not None and old.index_mtime == mtime) or self._failed.get(
                    name
                ) == mtime:
                    continue
                try:
                    entry = self.registry.get(name)
                    if "production" not in entry.aliases:
                        continue
                    prod = self._reuse(entry.alias("production"), old)
                    canary = shadow = None
                    share = 0.0
                    if "canary" in entry.aliases:
                        canary = self._reuse(entry.alias("canary"), old)
                        share = float(entry.aliases["canary"].share or 0.0)
                    if "shadow" in entry.aliases:
                        shadow = self._reuse(entry.alias("shadow"), old)
                except Exception as exc:  # keep serving the old route; report the problem
                    self.errors[name] = f"model '{name}': {exc}"
                    self._failed[name] = mtime
                    log.error("cannot load %s", self.errors[name])
                    continue
                self.errors.pop(name, None)
                self._failed.pop(name, None)
                routes[name] = Route(prod, canary, share, shadow, mtime)
                changed = True
            for gone in set(routes) - set(names):
                del routes[gone]
                changed = True
            if changed:
                self._routes = routes  # the atomic swap
                self.swaps += 1
            self.loaded = True
            return changed

    def start_polling(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._poll, name="model-refresh", daemon=True)
            self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_interval_s):
            try:
                self.refresh()
            except Exception:  # never let the poller die
                log.exception("model refresh failed")

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None
        self.shadow.close()

    # ---- introspection ----------------------------------------------------------------------
    @property
    def last_error(self) -> str | None:
        """The load errors of models whose newest index is not being served, or None."""
        return "; ".join(self.errors.values()) or None

    def unserved(self) -> list[str]:
        """Models with a production alias in the registry but nothing loaded for them."""
        out = []
        for name in self.registry.names():
            if name not in self._routes and "production" in self.registry.get(name).aliases:
                out.append(name)
        return out

    @property
    def routes(self) -> dict[str, Route]:
        return self._routes

    def describe(self) -> list[dict[str, Any]]:
        """Every registered model, its versions and aliases, and what is loaded."""
        out = []
        for name in self.registry.names():
            entry = self.registry.get(name)
            route = self._routes.get(name)
            out.append(
                {
                    "name": name,
                    "versions": [v.to_dict() for v in entry.versions.values()],
                    "aliases": {
                        k: {"version": a.version, "share": a.share}
                        for k, a in entry.aliases.items()
                    },
                    "loaded": None
                    if route is None
                    else {
                        "production": route.production.version.version,
                        "canary": route.canary.version.version if route.canary else None,
                        "shadow": route.shadow.version.version if route.shadow else None,
                        # whether predict can explain the production version's scores
                        "explainable": route.production.explainable,
                    },
                }
            )
        return out
