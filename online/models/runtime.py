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
    ModelRegistryError,
    one_line,
    without_paths,
)
from featurestore.online.models.explain import EXPLAINABLE, Explanation
from featurestore.online.models.flavors import Predictor, load_predictor
from featurestore.online.models.registry import (
    ALIASES,
    ModelRegistry,
    ModelVersion,
    check_reference,
)

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
        batch. A refusal of NaN is told from any other failure by a probe: the rows holding
        NaN, their NaNs replaced by zeros (which register's trial prediction showed the model
        scores), must score. Any other failure is a ModelPredictError naming the model and the
        cause. ``many``: an offline batch, scored on every core the flavor can use.
        """
        predict = self.predictor.predict_many if many else self.predictor.predict
        try:
            out = predict(x)
        except Exception as exc:
            missing = np.isnan(x).any(axis=1)
            if not missing.any():
                raise self._failed(exc, len(x)) from exc
        else:
            return self._one_per_row(out, len(x)), 0
        scores = np.full(len(x), np.nan)
        ok = ~missing
        if ok.any():
            n = int(ok.sum())
            try:
                part = predict(np.ascontiguousarray(x[ok]))
            except Exception as exc:
                raise self._failed(exc, n) from exc
            scores[ok] = self._one_per_row(part, n)
        holes = x[missing]
        try:  # the same rows without their NaNs: a model failing on them fails for another reason
            predict(np.ascontiguousarray(np.where(np.isnan(holes), 0.0, holes)))
        except Exception as exc:
            raise self._failed(exc, len(holes)) from exc
        return scores, len(holes)

    def _one_per_row(self, out: Any, rows: int) -> np.ndarray:
        """``out`` as float64 scores when it holds one number per row, else ModelPredictError
        (a model whose answer does not line up with its rows must not be answered)."""
        try:
            scores = np.asarray(out, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise self._failed(exc, rows) from None
        if scores.shape != (rows,):
            v = self.version
            got = f"shape {scores.shape}" if scores.ndim != 1 else f"{len(scores)} score(s)"
            log.warning("model '%s' v%s returned %s for %d row(s)", v.name, v.version, got, rows)
            raise ModelPredictError(
                f"model '{v.name}' v{v.version} returned {got} for {rows} row(s); a model "
                "must return one score per row"
            )
        return scores

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

    def explain(self, x: np.ndarray, *, scores: np.ndarray | None = None) -> Explanation:
        """Per-row feature contributions of the rows ``x`` (as ``score`` gets them, NaN missing).

        ``base_values + contributions.sum(axis=1)`` equals the model's output in the space
        ``output`` names ("raw": log-odds of binary classifiers, the value of identity-link
        regressors; see ``featurestore.online.models.explain``). A python model giving no base
        (in its score's own space) gets the score less the sum, from ``scores`` (the rows'
        scores, when the caller has them) or a scoring of ``x``. A model that cannot explain
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
            contributions, given = ex.fn(np.ascontiguousarray(x))
            contributions = np.ascontiguousarray(contributions, dtype=np.float64)
            base = None if given is None else np.ascontiguousarray(given, dtype=np.float64)
            if contributions.shape != x.shape or (base is not None and base.shape != (len(x),)):
                raise ValueError(
                    f"contributions of shape {contributions.shape} and base values of shape "
                    f"{None if base is None else base.shape} for {len(x)} row(s) of {k} inputs"
                )
        except ModelExplainError as exc:  # found out on first use (a sklearn model's probe)
            raise self._cannot_explain(str(exc)) from None
        except Exception as exc:
            raise self._failed(exc, len(x), "explain") from exc
        if base is None:  # so that base + sum is the score, row by row (NaN: unscored)
            got = self.score(x)[0] if scores is None else np.asarray(scores, dtype=np.float64)
            if got.shape != (len(x),):
                raise ValueError(f"scores of shape {got.shape} for {len(x)} row(s)")
            base = got - contributions.sum(axis=1)
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
            f"{type(exc).__name__}: {without_paths(one_line(exc))}"  # clients see it: no paths
        )


@dataclass(frozen=True)
class Route:
    """Where the traffic of one model name goes: production, optional canary share and shadow."""

    production: LoadedModel
    canary: LoadedModel | None = None
    canary_share: float = 0.0
    shadow: LoadedModel | None = None
    index_mtime: int = 0

    def pick(self, explain: bool = False) -> LoadedModel:
        """The canary for its share of traffic, else production; a request for explanations
        goes to production when the canary cannot explain (so explain never fails by chance)."""
        c = self.canary
        if c is not None and random.random() < self.canary_share:
            if not explain or c.predictor.explainer is not None:
                return c
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


def input_columns(model: LoadedModel, rows_of: LoadedModel) -> list[int] | None:
    """Where each of ``model``'s inputs sits in ``rows_of``'s input rows (by feature name), or
    None when ``rows_of`` lacks one of them."""
    where = {n: i for i, n in enumerate(rows_of.feature_names)}
    cols = [where.get(n) for n in model.feature_names]
    return None if None in cols else cols  # type: ignore[return-value]


def append_line(path: str, line: str) -> None:
    """Append ``line`` and a newline to the file ``path``, creating it owner-only (0600) as the
    audit log's files are: shadow records hold scores of real entities. An existing file keeps
    its mode (the audit log never changes one either)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a") as fh:
        fh.write(line + "\n")


class ShadowRecorder:
    """Scores shadow versions off the request path; keeps the last N records and appends a log.

    A shadow scores its own inputs, in its own order, taken by name from the rows the request's
    model was given; a shadow reading a feature those rows lack is not scored. Every failure
    (reason ``inputs``, ``shape``, ``error`` or, when the queue is full, ``dropped``) is passed
    to ``on_record`` and logged once per model version and cause; it never touches the answer.
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
        # per (shadow, primary) pair: both, and the shadow's columns in the primary's rows
        self._columns: dict[tuple[int, int], tuple[Any, Any, list[int] | None]] = {}
        self._logged: set[tuple[str, int, str]] = set()  # causes already logged

    def columns(self, shadow: LoadedModel, primary: LoadedModel) -> list[int] | None:
        """``input_columns(shadow, primary)``, computed once per pair of loaded versions."""
        key = (id(shadow), id(primary))
        hit = self._columns.get(key)
        if hit is None or hit[0] is not shadow or hit[1] is not primary:
            if len(self._columns) > 64:
                self._columns.clear()
            hit = self._columns[key] = (shadow, primary, input_columns(shadow, primary))
        return hit[2]

    def submit(
        self, shadow: LoadedModel, primary: LoadedModel, x: np.ndarray, scores: np.ndarray
    ) -> bool:
        """Queue ``shadow``'s scoring of the rows ``x`` that ``primary`` scored as ``scores``;
        False when the shadow will not score them (its inputs are not in ``x``, or overload)."""
        cols = self.columns(shadow, primary)
        self._ensure_thread()
        try:
            self._q.put_nowait((shadow, primary, x, cols, scores, time.time()))
        except queue.Full:
            self.dropped += 1
            if self.on_record is not None:
                self.on_record(self._error(shadow, primary, time.time(), "dropped", "queue full"))
            return False
        return cols is not None

    def _ensure_thread(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    t = threading.Thread(target=self._run, name="shadow-scorer", daemon=True)
                    t.start()
                    self._thread = t

    @staticmethod
    def _error(
        shadow: LoadedModel, primary: LoadedModel, ts: float, reason: str, error: str
    ) -> dict[str, Any]:
        return {
            "ts": ts,
            "model": shadow.version.name,
            "shadow_version": shadow.version.version,
            "primary_version": primary.version.version,
            "reason": reason,
            "error": error,
        }

    def _score(
        self,
        shadow: LoadedModel,
        primary: LoadedModel,
        x: np.ndarray,
        cols: list[int] | None,
        scores: np.ndarray,
        ts: float,
    ) -> dict[str, Any]:
        sv, pv = shadow.version, primary.version
        if cols is None:
            missing = [n for n in shadow.feature_names if n not in pv.feature_names]
            return self._error(
                shadow, primary, ts, "inputs",
                f"shadow '{sv.name}' v{sv.version} reads {missing}, which v{pv.version} "
                f"(feature service '{pv.feature_service}') does not read; not scored",
            )  # fmt: skip
        if cols != list(range(x.shape[1])):
            x = np.ascontiguousarray(x[:, cols])
        try:
            s = np.asarray(shadow.predict(x), dtype=np.float64)
        except Exception as exc:
            why = f"{type(exc).__name__}: {one_line(exc)}"
            return self._error(shadow, primary, ts, "error", why)
        if s.shape != (len(x),):
            return self._error(
                shadow, primary, ts, "shape",
                f"shadow '{sv.name}' v{sv.version} returned shape {s.shape} for {len(x)} "
                "row(s); a model must return one score per row",
            )  # fmt: skip
        return {
            "ts": ts,
            "model": sv.name,
            "shadow_version": sv.version,
            "primary_version": pv.version,
            "scores": s.tolist(),
            "primary_scores": np.asarray(scores, dtype=np.float64).tolist(),
        }

    def _log_once(self, rec: dict[str, Any]) -> None:
        """Log a failed shadow record the first time its model version fails for that cause."""
        reason = rec["reason"]
        cause = (rec["model"], rec["shadow_version"], reason if reason != "error" else rec["error"])
        if cause in self._logged:
            return
        if len(self._logged) > 1000:
            self._logged.clear()
        self._logged.add(cause)
        log.warning(
            "shadow model '%s' v%s not scored (%s): %s; further failures of this cause are "
            "counted in featurestore_shadow_errors_total, not logged",
            rec["model"], rec["shadow_version"], reason, rec["error"],
        )  # fmt: skip

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            try:
                rec = self._score(*item)
                if "error" in rec:
                    self._log_once(rec)
                self.records.append(rec)
                if self.on_record is not None:
                    self.on_record(rec)
                if self.log_path:
                    try:
                        append_line(self.log_path, json.dumps(rec))
                    except OSError as exc:
                        log.warning("cannot append shadow log %s: %s", self.log_path, exc)
            except Exception:  # never let the scorer die
                log.exception("shadow scoring failed")
            finally:
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
        # per model with nothing loaded for it: the version that failed to load, as clients see it
        self._unloadable: dict[str, str] = {}
        self.swaps = 0

    # ---- request path -----------------------------------------------------------------------
    def select(self, ref: str, *, explain: bool = False) -> tuple[LoadedModel, LoadedModel | None]:
        """The model answering ``ref`` and the shadow to score alongside it (a bare name only);
        ``explain``: a bare name's canary only when it can explain (see ``Route.pick``)."""
        name, at, sel = ref.partition("@")
        route = self._routes.get(name)
        if not sel:
            if at:  # "fraud@": not a silent production
                check_reference(ref)
            if route is None:
                self._missing(ref)
            return route.pick(explain), route.shadow  # type: ignore[union-attr]
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
        failed = self._unloadable.get(ref)
        if failed is not None:  # it exists, but this server could not load it: 503, not 404
            raise ModelLoadError(failed)
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
        """Load and warm ``mv``; a failure is a ModelLoadError naming the model, not its
        artifact's path (clients see it; load_predictor logs the path)."""
        path = self.registry.artifact_path(mv)
        m = LoadedModel(mv, load_predictor(mv.flavor, path, model=f"{mv.name} v{mv.version}"))
        try:
            warm(m)
        except ModelLoadError as exc:
            log.error("%s (artifact %s)", exc, path)
            raise ModelLoadError(without_paths(str(exc), self.registry.root)) from exc
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
                loading = ""  # the alias being loaded, when a version's load fails
                try:
                    entry = self.registry.get(name)
                    if "production" not in entry.aliases:
                        continue
                    loading = "production"
                    prod = self._reuse(entry.alias("production"), old)
                    canary = shadow = None
                    share = 0.0
                    if "canary" in entry.aliases:
                        loading = "canary"
                        canary = self._reuse(entry.alias("canary"), old)
                        share = float(entry.aliases["canary"].share or 0.0)
                    if "shadow" in entry.aliases:
                        loading = "shadow"
                        shadow = self._reuse(entry.alias("shadow"), old)
                except Exception as exc:  # keep serving the old route; report the problem
                    log.error("cannot load model '%s': %s", name, exc)  # the log keeps paths
                    # health answers anyone with it: no server paths (see without_paths)
                    why = without_paths(str(exc), self.registry.root)
                    self.errors[name] = f"model '{name}': {why}"
                    self._failed[name] = mtime
                    if loading:
                        v = entry.aliases[loading].version
                        self._unloadable[name] = (
                            f"model '{name}' v{v} ({loading}) failed to load on this server, "
                            f"so '{name}' cannot be served: {one_line(why)}"
                        )
                    continue
                self.errors.pop(name, None)
                self._failed.pop(name, None)
                self._unloadable.pop(name, None)
                routes[name] = Route(prod, canary, share, shadow, mtime)
                changed = True
            for gone in set(routes) - set(names):
                del routes[gone]
                changed = True
            for gone in (set(self.errors) | set(self._unloadable)) - set(names):
                self.errors.pop(gone, None)  # a model no longer registered: nothing to report
                self._failed.pop(gone, None)
                self._unloadable.pop(gone, None)
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
            if name in self._routes:
                continue
            try:
                if "production" in self.registry.get(name).aliases:
                    out.append(name)
            except ModelRegistryError as exc:  # a corrupt index: nothing of it can be served
                out.append(f"{name} ({one_line(exc)})")
        return out

    @property
    def routes(self) -> dict[str, Route]:
        return self._routes

    def describe(self) -> list[dict[str, Any]]:
        """Every registered model, its versions and aliases, and what is loaded."""
        out = []
        for name in self.registry.names():
            route = self._routes.get(name)
            loaded = (
                None
                if route is None
                else {
                    "production": route.production.version.version,
                    "canary": route.canary.version.version if route.canary else None,
                    "shadow": route.shadow.version.version if route.shadow else None,
                    # whether predict can explain the production version's scores (an
                    # explain request to the bare name never goes to a canary that cannot)
                    "explainable": route.production.explainable,
                }
            )
            try:
                entry = self.registry.get(name)
            except ModelRegistryError as exc:  # one corrupt index: the others are still listed
                item = {"name": name, "versions": [], "aliases": {}, "loaded": loaded}
                out.append({**item, "error": one_line(exc)})
                continue
            out.append(
                {
                    "name": name,
                    "versions": [v.to_dict() for v in entry.versions.values()],
                    "aliases": {
                        k: {"version": a.version, "share": a.share}
                        for k, a in entry.aliases.items()
                    },
                    "loaded": loaded,
                }
            )
        return out
