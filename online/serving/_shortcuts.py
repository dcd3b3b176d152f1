"""The one-entity shortcuts of Engine (a mixin): predict's input row and get-features' answer
straight from the stored rows (see _vector), planned once per model or request and cached.

Each hands a request it cannot answer as stored to the general lookup path, which then decides
from the same values (a missing, expired, older or null row) or reads them itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

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


class Shortcuts:
    """Plans and answers of the one-entity shortcuts (Engine's part)."""

    store: FeatureStore
    # per loaded model: (model, registry state, its one-entity shortcut or None)
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
        if hit is None or hit[0] is not chosen or hit[1] is not state:
            requests = self._resolve(None, chosen.version.feature_service)
            plan = vector_plan(
                self.store.project, requests, chosen.feature_names, state.join_key_kinds
            )
            if len(self._vectors) > 64:
                self._vectors.clear()
            hit = self._vectors[id(chosen)] = (chosen, state, plan)  # holds chosen: id unique
        plan = hit[2]
        if plan is None:
            return None
        keys = plan.keys(entities)
        return None if keys is None else (plan, keys)

    def _row_sync(
        self,
        features: Sequence[str] | None,
        service: str | None,
        entities: Any,
        request_data: Any,
        full: bool,
        include_ts: bool,
        deadline_ms: float | None,
    ) -> FeatureResult | None:
        """A get-features answer by the one-entity shortcut, or None: the general path's."""
        fast = self._feature_row(
            features, service, entities, request_data, full, include_ts, deadline_ms
        )
        if fast is None:
            return None
        plan, keys, deadline, now = fast
        try:
            values, reason = self._sync_read(lambda store: store.read(keys), deadline), None
        except _StoreFailed as f:
            values, reason = None, f.reason
        return self._row_result(
            plan, keys, values, reason, now, features, service, entities, full, deadline_ms
        )

    async def _row_async(
        self,
        features: Sequence[str] | None,
        service: str | None,
        entities: Any,
        request_data: Any,
        full: bool,
        include_ts: bool,
        deadline_ms: float | None,
    ) -> FeatureResult | None:
        """:meth:`_row_sync` for an event loop."""
        fast = self._feature_row(
            features, service, entities, request_data, full, include_ts, deadline_ms
        )
        if fast is None:
            return None
        plan, keys, deadline, now = fast
        try:
            values, reason = await self._async_values(keys, deadline), None
        except _StoreFailed as f:
            values, reason = None, f.reason
        return self._row_result(
            plan, keys, values, reason, now, features, service, entities, full, deadline_ms
        )

    def _feature_row(
        self,
        features: Sequence[str] | None,
        service: str | None,
        entities: Any,
        request_data: Any,
        full: bool,
        include_ts: bool,
        deadline_ms: float | None,
    ) -> tuple[FeatureRowPlan, list[bytes], float, int] | None:
        """The one-entity get-features shortcut (see _vector): its plan, the entity's keys, the
        deadline and the lookup's time, or None when this request takes the general path."""
        if request_data or include_ts or type(entities) is not dict:
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
        return None if keys is None else (plan, keys, deadline, now_us())

    def _row_result(
        self,
        plan: FeatureRowPlan,
        keys: list[bytes],
        values: Any,
        reason: str | None,
        now: int,
        features: Sequence[str] | None,
        service: str | None,
        entities: dict[str, list[Any]],
        full: bool,
        deadline_ms: float | None,
    ) -> FeatureResult | None:
        """The shortcut's answer from ``values`` (read for ``keys`` at ``now``). A row it does
        not serve as stored, or a failed read, is answered by the general lookup from the same
        values; None (read again, generally) if that lookup would read other keys."""
        if reason is None:
            src = plan.source(values, now, entities)
            if src is not None:
                self._count_read(None)
                return FeatureResult(
                    None, None, src.feature_names, source=src, requests=plan.request
                )
        p = self._prepare(features, service, entities, None, full, False, deadline_ms)
        if reason is not None:
            return self._finish(p, None, reason)
        lk = self._plan(p)
        if lk.keys != keys:
            return None
        return self._finish(p, lk.finish(values), None)
