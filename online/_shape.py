"""Planning an online lookup: what a request needs before any entity value is seen.

A request's shape (view plans, output names, on-demand inputs, key templates) depends only on
its views and features, so it is built once and reused: a lookup then only checks its entity
columns and renders their keys (one entity's directly, see online.keys.OneEntityKeys).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from featurestore.errors import EntityDataError, FeatureStoreError
from featurestore.online.keys import OneEntityKeys, build_keys, build_keys_views
from featurestore.online.lookup import _MAX_PLANS, Lookup, _plan, _ViewPlan

if TYPE_CHECKING:
    from featurestore.feature_view import FeatureView


class RequestShape:
    """What a request needs that does not depend on its entity values: view plans, output
    names, on-demand inputs and key templates. Built once per (views, features, full names) and
    reused, so a lookup only checks its entity columns and renders their keys."""

    __slots__ = (
        "_fetched",
        "_one_keys",
        "_project",
        "_same_keys",
        "hidden",
        "names",
        "needed",
        "plans",
        "views",
    )

    def __init__(
        self, project: str, requests: list[tuple[FeatureView, list[str]]], full: bool
    ) -> None:
        self.views = [v for v, _ in requests]  # keeps the ids in the cache key from reuse
        self._project = project
        extras: frozenset[tuple[str, str]] = frozenset()
        if any(not v.join_keys and hasattr(v, "inputs_of") for v, _ in requests):
            from featurestore.online._computed import with_on_demand_inputs

            requests, extras = with_on_demand_inputs(requests)
        # (an on-demand feature's inputs too: they are read from the store like the rest)
        offline = [v.name for v, _ in requests if getattr(v, "online", True) is False]
        if offline:
            from featurestore.errors import FeatureNotFoundError

            raise FeatureNotFoundError(
                f"feature view '{offline[0]}' is not served online (online=False): read it "
                "through training sets, or set online=True in its definition, apply and "
                "materialize"
            )
        self.plans, self.names, self.needed = _request_plan(requests, full, extras)
        # the internal output names of the hidden inputs: left out of every answer
        self.hidden = frozenset(
            name
            for plan, view_names in zip(self.plans, self.names, strict=True)
            for feat, name in zip(plan.features, view_names, strict=True)
            if (plan.view.name, feat) in extras
        )
        fetched = [p for p in self.plans if not getattr(p, "on_demand", False)]
        self._fetched = fetched
        self._same_keys = len(fetched) > 1 and all(
            p.join_keys == fetched[0].join_keys for p in fetched
        )
        self._one_keys = (
            OneEntityKeys(project, [(p.view.name, p.join_keys) for p in fetched])
            if all(p.join_keys for p in fetched)
            else None  # build_keys names the view without join keys
        )

    def plan(
        self,
        entity_rows: list[dict[str, Any]] | dict[str, Sequence[Any]],
        now_us: int,
        include_event_timestamps: bool = False,
        request_data: dict[str, Sequence[Any]] | None = None,
        key_kinds: Mapping[str, str] | None = None,
    ) -> Lookup:
        """The Lookup of ``entity_rows`` (see :func:`plan_lookup`)."""
        columns, n = _entity_columns(entity_rows, self.needed)
        if not self.needed and request_data:  # only on-demand features: rows come from the request
            n = len(next(iter(request_data.values())))
        keys = None
        if n == 1 and self._one_keys is not None:
            keys = self._one_keys.keys(columns, key_kinds)
        if keys is None:
            keys = self._keys(columns, key_kinds)
        return Lookup(
            self.plans,
            self.names,
            columns,
            n,
            keys,
            now_us,
            include_event_timestamps,
            self.hidden,
            request_data,
        )

    def _keys(
        self, columns: dict[str, Sequence[Any]], key_kinds: Mapping[str, str] | None
    ) -> list[bytes]:
        """Every fetched view's keys (rows in order, views one after another), batched."""
        project = self._project
        fetched = self._fetched
        if self._same_keys:
            jk = fetched[0].join_keys  # render the entity values once for every view
            return build_keys_views(
                project, [p.view.name for p in fetched], jk, [columns[k] for k in jk], key_kinds
            )
        keys: list[bytes] = []
        for plan in fetched:
            cols = [columns[k] for k in plan.join_keys]
            keys += build_keys(project, plan.view.name, plan.join_keys, cols, key_kinds)
        return keys


_SHAPES: dict[tuple[Any, ...], RequestShape] = {}


def request_shape(
    project: str, requests: list[tuple[FeatureView, list[str]]], full: bool
) -> RequestShape:
    """The cached RequestShape of ``requests`` (by view identity and feature names)."""
    key = (project, full, *[(id(v), tuple(f)) for v, f in requests])
    hit = _SHAPES.get(key)
    if hit is not None and all(a is b for a, (b, _) in zip(hit.views, requests, strict=True)):
        return hit
    shape = RequestShape(project, requests, full)
    if len(_SHAPES) >= _MAX_PLANS:
        _SHAPES.clear()
    _SHAPES[key] = shape
    return shape


_REQUESTS: dict[tuple[Any, ...], tuple[list[_ViewPlan], list[list[str]], dict[str, str]]] = {}


def _request_plan(
    requests: list[tuple[FeatureView, list[str]]],
    full: bool,
    hidden: frozenset[tuple[str, str]] = frozenset(),
) -> tuple[list[_ViewPlan], list[list[str]], dict[str, str]]:
    """Plans, output names and needed join keys (-> first view needing it), cached per request.

    ``hidden``: (view, feature) pairs fetched only as on-demand inputs, given internal names
    (see ``_output_names``)."""
    key = (full, hidden, *[(id(v), tuple(f)) for v, f in requests])
    hit = _REQUESTS.get(key)
    if hit is not None and all(p.view is v for p, (v, _) in zip(hit[0], requests, strict=True)):
        return hit
    plans = [_plan(view, feats) for view, feats in requests]
    needed: dict[str, str] = {}
    for plan in plans:
        for k in plan.join_keys:
            needed.setdefault(k, plan.view.name)
    names = _output_names(plans, full, needed, hidden)
    if len(_REQUESTS) >= _MAX_PLANS:
        _REQUESTS.clear()
    _REQUESTS[key] = (plans, names, needed)
    return plans, names, needed


def _entity_columns(
    entity_rows: list[dict[str, Any]] | dict[str, Sequence[Any]], needed: dict[str, str]
) -> tuple[dict[str, Sequence[Any]], int]:
    """The join-key columns every view needs (in first-use order), and the row count."""
    if isinstance(entity_rows, dict):
        columns: dict[str, Sequence[Any]] = {}
        n = -1
        for k, view_name in needed.items():
            if k not in entity_rows:
                raise _missing_key(k, view_name, list(entity_rows))
            col = entity_rows[k]
            if n == -1:
                n = len(col)
            elif len(col) != n:
                raise EntityDataError(
                    f"entity column '{k}' has {len(col)} values but other join keys have {n}; "
                    "give every join key one value per entity row"
                )
            columns[k] = col
        return columns, max(n, 0)
    rows = entity_rows
    columns = {}
    for k, view_name in needed.items():
        try:
            columns[k] = [r[k] for r in rows]
        except KeyError:
            bad = next(r for r in rows if k not in r)
            raise _missing_key(k, view_name, list(bad)) from None
    return columns, len(rows)


def _missing_key(key: str, view_name: str, given: list[str]) -> EntityDataError:
    return EntityDataError(
        f"entity rows lack join key '{key}' needed by feature view '{view_name}' (got "
        f"{given}); add '{key}' to every entity row"
    )


def _output_names(
    plans: list[_ViewPlan],
    full: bool,
    join_keys: dict[str, str],
    hidden: frozenset[tuple[str, str]] = frozenset(),
) -> list[list[str]]:
    """Each plan's output names; requested ones must not clash (FeatureStoreError), hidden
    inputs get internal names clashing with nothing (see ``_hidden_name``)."""
    names = [
        [f"{p.view.name}__{f}" for f in p.features] if full else list(p.features) for p in plans
    ]
    seen: dict[str, str] = {k: "(join key)" for k in join_keys}
    for plan, view_names in zip(plans, names, strict=True):
        for name, feat in zip(view_names, plan.features, strict=True):
            if (plan.view.name, feat) in hidden:
                continue
            other = seen.get(name)
            if other is not None:
                where = "a join key" if other == "(join key)" else f"feature view '{other}'"
                raise FeatureStoreError(
                    f"output name '{name}' of feature view '{plan.view.name}' clashes with "
                    f"{where}; pass full_feature_names=True to name features 'view__feature'"
                )
            seen[name] = plan.view.name
    if hidden:
        for plan, view_names in zip(plans, names, strict=True):
            for j, feat in enumerate(plan.features):
                if (plan.view.name, feat) in hidden:
                    view_names[j] = _hidden_name(plan.view.name, feat, seen)
                    seen[view_names[j]] = plan.view.name
    return names


def _hidden_name(view: str, feature: str, taken: Mapping[str, str]) -> str:
    """The internal output name of hidden input ``view:feature``: that reference (requested
    names are ``feature`` or ``view__feature``), with "_" before it while ``taken`` has it."""
    name = f"{view}:{feature}"
    while name in taken:
        name = "_" + name
    return name
