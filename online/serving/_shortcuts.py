"""The one-entity shortcuts of Engine (a mixin): predict's input row and get-features' answer
straight from the stored rows (see _vector), planned once per model or request and cached.

Each hands a request it cannot answer as stored to the general lookup path, which then decides
from the same values (a missing, expired, older or null row) or reads them itself.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from featurestore._time import now_us
from featurestore.online.serving._reads import _StoreFailed
from featurestore.online.serving._vector import (
    FeatureRowPlan,
    VectorPlan,
    feature_row_plan,
    vector_plan,
)
from featurestore.online.serving.results import FeatureResult

if TYPE_CHECKING:
    from featurestore.online.models.runtime import LoadedModel
    from featurestore.online.serving.results import Prepared
    from featurestore.store import FeatureStore


class _RowCall(NamedTuple):
    """A get-features call the one-entity shortcut takes: its plan, the entity's keys, the
    deadline, the lookup's time and the request's (features, service, entities, full names,
    deadline_ms), for the general path."""

    plan: FeatureRowPlan
    keys: list[bytes]
    deadline: float
    now: int
    request: tuple[Any, Any, dict[str, list[Any]], bool, float | None]


def _forget(cache: dict[int, tuple[Any, ...]], key: int, ref: weakref.ref[Any]) -> None:
    """Drop ``cache[key]`` once the model its weak reference ``ref`` pointed at is freed (not
    a newer entry that reuses the id)."""
    if cache.get(key, (None,))[0] is ref:
        cache.pop(key, None)  # (at worst a newer entry set in between: one more cache miss)


class Shortcuts:
    """Plans and answers of the one-entity shortcuts (Engine's part)."""

    store: FeatureStore
    # per loaded model: (a weak reference to it, registry state, its one-entity shortcut or None)
    _vectors: dict[int, tuple[Any, Any, VectorPlan | None]]
    # per resolved request and full-names flag: (request, registry state, its shortcut or None)
    _rows: dict[tuple[int, bool], tuple[Any, Any, FeatureRowPlan | None]]
    # the engine's own steps
    _registry: Callable[[], Any]
    _resolve: Callable[[Sequence[str] | None, str | None], Any]
    _deadline: Callable[[float | None], float]
    _prepare: Callable[..., Prepared]
    _plan: Callable[[Prepared], Any]
    _finish: Callable[[Prepared, Any, str | None], FeatureResult]
    _count_read: Callable[[str | None], None]
    _sync_read: Callable[[Callable[[Any], Any], float], Any]
    _async_values: Callable[[list[bytes], float], Awaitable[Any]]

    def _vector(self, chosen: LoadedModel, entities: Any) -> tuple[VectorPlan, list[bytes]] | None:
        """The one-entity shortcut for ``chosen`` (see _vector): its plan and the entity's keys,
        or None when this request takes the general path."""
        state = self._registry()
        hit = self._vectors.get(id(chosen))
        if hit is None or hit[0]() is not chosen or hit[1] is not state:
            requests = self._resolve(None, chosen.version.feature_service)
            plan = vector_plan(
                self.store.project, requests, chosen.feature_names, state.join_key_kinds
            )
            if len(self._vectors) > 64:
                self._vectors.clear()
            # a weak reference: a model promoted away is freed, and its entry with it
            ref = weakref.ref(chosen, functools.partial(_forget, self._vectors, id(chosen)))
            hit = self._vectors[id(chosen)] = (ref, state, plan)
        plan = hit[2]
        if plan is None:
            return None
        keys = plan.keys(entities)
        return None if keys is None else (plan, keys)

    def _row_sync(self, *request: Any) -> FeatureResult | None:
        """A get-features answer (``request``: see :meth:`_feature_row`) by the one-entity
        shortcut, or None: the general path's."""
        call = self._feature_row(*request)
        if call is None:
            return None
        try:
            read = self._sync_read(lambda store: store.read(call.keys), call.deadline)
        except _StoreFailed as f:
            return self._row_result(call, None, f.reason)
        return self._row_result(call, read, None)

    async def _row_async(self, *request: Any) -> FeatureResult | None:
        """:meth:`_row_sync` for an event loop."""
        call = self._feature_row(*request)
        if call is None:
            return None
        try:
            read = await self._async_values(call.keys, call.deadline)
        except _StoreFailed as f:
            return self._row_result(call, None, f.reason)
        return self._row_result(call, read, None)

    def _feature_row(
        self,
        features: Sequence[str] | None,
        service: str | None,
        entities: Any,
        request_data: Any,
        full: bool,
        include_ts: bool,
        deadline_ms: float | None,
    ) -> _RowCall | None:
        """The one-entity get-features shortcut's call (see _vector), or None when this
        request takes the general path."""
        if request_data or include_ts or type(entities) is not dict:
            return None
        col = next(iter(entities.values()), None)
        if type(col) is not list or len(col) != 1:  # a batch: straight to the general path
            return None
        deadline = self._deadline(deadline_ms)  # refused first, as the general path does
        state = self._registry()
        requests = self._resolve(features, service)
        key = (id(requests), full)
        hit = self._rows.get(key)
        if hit is None or hit[0] is not requests or hit[1] is not state:
            plan = feature_row_plan(self.store.project, requests, full, state.join_key_kinds)
            if len(self._rows) > 256:
                self._rows.clear()
            hit = self._rows[key] = (requests, state, plan)  # holds requests: id unique
        plan = hit[2]
        keys = None if plan is None else plan.keys(entities)
        if keys is None:
            return None
        request = (features, service, entities, full, deadline_ms)
        return _RowCall(plan, keys, deadline, now_us(), request)

    def _row_result(self, call: _RowCall, values: Any, reason: str | None) -> FeatureResult | None:
        """The shortcut's answer from ``values`` (read for ``call.keys``). A row it does not
        serve as stored, or a failed read (``reason``), is answered by the general lookup from
        the same values; None (read again, generally) if that lookup would read other keys."""
        if reason is None:
            src = call.plan.source(values, call.now, call.request[2])
            if src is not None:
                self._count_read(None)
                return FeatureResult(
                    None, None, src.feature_names, source=src, requests=call.plan.request
                )
        features, service, entities, full, deadline_ms = call.request
        p = self._prepare(features, service, entities, None, full, False, deadline_ms)
        if reason is not None:
            return self._finish(p, None, reason)
        lk = self._plan(p)
        if lk.keys != call.keys:
            return None
        return self._finish(p, lk.finish(values), None)
