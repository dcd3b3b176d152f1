"""The model's input row for one entity, straight from the stored rows (single-entity predict).

A predict of one entity needs one float row in the model's input order, not the columnar result
(dicts of lists, statuses, names) that get-features answers with. When every feature the model
reads is a number stored in a fixed-width view, the row is built from each view's struct unpack
directly, with the same rules as the lookup (online/lookup.py): a missing value, an older schema
version or a value older than the view's TTL gives the feature's default; a null gives NaN.
Anything else (on-demand or window features, strings, timestamps, several entities, request
data) takes the general path. tests/serving/test_vector.py checks both agree on random rows.

A get-features call of one entity takes the same shortcut when every view it reads keeps the
requested features as float64 in request order (``FeatureRowPlan``): a row found, fresh and
without nulls is answered from a slice of its stored value; any other row, the general lookup.
"""

from __future__ import annotations

import math
import operator
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from featurestore.online._shape import _request_plan
from featurestore.online.base import Status
from featurestore.online.keys import OneEntityKeys
from featurestore.online.lookup import _ViewPlan
from featurestore.online.serving._requests import _INT64_MAX, _INT64_MIN
from featurestore.types import KEY_KIND_TYPES, NUMERIC_TYPES


class _View:
    """What one view contributes: its key, its stored row layout and the model slots it fills."""

    __slots__ = (
        "head",
        "join_keys",
        "name",
        "pick",
        "size",
        "slots",
        "span",
        "struct",
        "ttl",
        "var_codec",
        "ver",
        "zero",
    )

    def __init__(self, plan: _ViewPlan, slots: list[tuple[int, int, int]]) -> None:
        codec = plan.codec
        self.name = plan.view.name
        self.join_keys = plan.join_keys
        self.size = codec.fixed_size
        self.ver = codec._ver_bytes
        self.struct = codec.fixed_struct
        self.head = struct.Struct(f"<q12x{codec.n_null_bytes}s")  # event time, null bitmap
        # a view with strings or arrays: the codec itself says whether a value is readable
        self.var_codec = None if codec.fixed_only else codec
        self.ttl = plan.ttl_us
        self.zero = plan.no_nulls
        self.slots = slots  # (input position, struct item, null bit)
        self.pick = _picker([item for _, item, _ in slots])  # struct tuple -> slot values
        self.span = _float64_span(codec, [item for _, item, _ in slots])

    def readable(self, value: bytes | None) -> bool:
        """Whether ``value`` is a row this fixed-width layout reads: found, of its size and of
        the current schema version (else the lookup reads it as absent)."""
        return value is not None and len(value) == self.size and value[16:20] == self.ver

    def clean_span(self, value: bytes | None, now_us: int) -> bytes | None:
        """The bytes of ``span`` in ``value`` when the row is found, of the current schema
        version, fresh (within the TTL) and without a null; else None (the general rules
        decide: defaults, NaN, statuses)."""
        if self.span is None or self.var_codec is not None or not self.readable(value):
            return None
        event_us, nulls = self.head.unpack_from(value)
        if nulls != self.zero or (self.ttl is not None and now_us - event_us > self.ttl):
            return None
        a, b = self.span
        return value[a:b]


def _float64_span(codec: Any, items: list[int]) -> tuple[int, int] | None:
    """The bytes of a stored value holding struct ``items`` (fixed features 4, 5, ...), when
    they are float64 laid out one after another: the row's part is then a slice of the value."""
    if not items or not codec.fixed_only:  # (strings or arrays: items are not all in ``fixed``)
        return None
    offsets = []
    for item in items:
        i, _ = codec.fixed[item - 4]
        dtype, offset = codec.record_dtype.fields[f"c{i}"][:2]
        if dtype != np.dtype("<f8"):
            return None
        offsets.append(offset)
    if offsets != list(range(offsets[0], offsets[0] + 8 * len(offsets), 8)):
        return None
    return offsets[0], offsets[0] + 8 * len(offsets)


def _picker(items: list[int]) -> Callable[[tuple[Any, ...]], tuple[Any, ...]]:
    """A function giving the ``items`` of a tuple, always as a tuple (itemgetter of one item
    gives the bare item)."""
    if len(items) == 1:
        (item,) = items
        return lambda r: (r[item],)
    return operator.itemgetter(*items)


class _OneEntity:
    """The keys of one entity in ``views``, for requests in the plain form the shortcuts take."""

    join_keys: frozenset[str]
    kinds: dict[str, type]
    _keys: OneEntityKeys

    def keys(self, entities: Any) -> list[bytes] | None:
        """The views' keys for one entity given as ``{key: [value]}``, or None when the request
        is anything else (the general path then validates it and names what is wrong)."""
        if type(entities) is not dict or entities.keys() != self.join_keys:
            return None
        kinds = self.kinds
        for key, col in entities.items():
            if type(col) is not list or len(col) != 1:
                return None
            v = col[0]
            kind = type(v)
            if not (kind is str or (kind is int and _INT64_MIN <= v <= _INT64_MAX)):
                return None
            if kinds.get(key, kind) is not kind:
                return None  # a string for an integer key or the reverse: the general path says so
        return self._keys.keys(entities, None)  # the values' types are checked above


class VectorPlan(_OneEntity):
    """Keys and input-row assembly of one model over its feature service (one entity a call)."""

    def __init__(
        self,
        project: str,
        views: list[_View],
        defaults: list[float],
        join_keys: frozenset[str],
        kinds: Mapping[str, str] | None = None,
    ) -> None:
        self.project = project
        self.views = views  # only those the model reads
        self.join_keys = join_keys  # every key the feature service needs, as the general path
        # the type each key's values must have (the registry's join_key_kinds)
        self.kinds = {k: KEY_KIND_TYPES[v] for k, v in (kinds or {}).items() if k in join_keys}
        self._defaults = defaults
        self.defaults = np.array([defaults], dtype=np.float64)  # the degraded answer's row
        self._keys = OneEntityKeys(project, [(v.name, v.join_keys) for v in views])
        # the views' slots, one view after another, fill the inputs in order: a row whose
        # views are all present, fresh and without nulls is their picked values, concatenated
        order = [pos for v in views for pos, _, _ in v.slots]
        self._in_order = order == list(range(len(defaults)))
        # ... and when each view's part is a run of float64, the row is their bytes, joined
        self._spans = self._in_order and all(v.span is not None for v in views)

    def row(self, values: Sequence[bytes | None], now_us: int) -> np.ndarray:
        """The (1, k) input row from the views' stored values (in ``keys`` order)."""
        if self._spans:  # the usual row: every view found, fresh, no null, float64 runs
            raw = b""
            for view, value in zip(self.views, values, strict=True):
                part = view.clean_span(value, now_us)
                if part is None:
                    break
                raw += part
            else:
                return np.frombuffer(raw, dtype="<f8").reshape(1, -1).copy()
        elif self._in_order:  # ... or other numbers, from each view's struct
            got: tuple[Any, ...] = ()
            for view, value in zip(self.views, values, strict=True):
                if view.var_codec is not None or not view.readable(value):
                    break
                r = view.struct.unpack_from(value)
                if r[3] != view.zero or (view.ttl is not None and now_us - r[0] > view.ttl):
                    break
                got += view.pick(r)
            else:
                return np.array([got], dtype=np.float64)
        return self._row(values, now_us)

    def _row(self, values: Sequence[bytes | None], now_us: int) -> np.ndarray:
        """:meth:`row` for any row: defaults, NaN for nulls, inputs in any order."""
        x = list(self._defaults)
        for view, value in zip(self.views, values, strict=True):
            if view.var_codec is not None:
                if value is None or not view.var_codec.decode([value]).present_idx:
                    continue  # not found, another schema version or unreadable: defaults
            elif not view.readable(value):
                continue  # not found (or another schema version): defaults
            r = view.struct.unpack_from(value)  # the fixed part: header, then fixed features
            if view.ttl is not None and now_us - r[0] > view.ttl:
                continue  # expired: defaults
            if r[3] == view.zero:
                for pos, item, _ in view.slots:
                    x[pos] = r[item]
            else:
                nulls = int.from_bytes(r[3], "little")
                for pos, item, bit in view.slots:
                    x[pos] = math.nan if nulls >> bit & 1 else r[item]
        return np.array([x], dtype=np.float64)


def vector_plan(
    project: str,
    requests: list[tuple[Any, list[str]]],
    inputs: Sequence[str],
    kinds: Mapping[str, str] | None = None,
) -> VectorPlan | None:
    """The plan for a model reading ``inputs`` from ``requests`` (a feature service, resolved),
    or None when some input is not a number stored in a fixed-width view."""
    try:
        plans, names, needed = _request_plan(requests, False)
    except Exception:  # name clashes and the like: the general path reports them
        return None
    if any(type(p) is not _ViewPlan or p.codec.fixed_struct is None for p in plans):
        return None  # on-demand inputs, windows: the general path
    where: dict[str, tuple[int, int]] = {}
    for p, view_names in enumerate(names):
        for j, name in enumerate(view_names):
            where[name] = (p, j)
    slots: dict[int, list[tuple[int, int, int]]] = {}
    defaults: list[float] = []
    for pos, name in enumerate(inputs):
        hit = where.get(name)
        if hit is None:
            return None
        p, j = hit
        plan = plans[p]
        field = plan.fields[j]
        if field.dtype.name not in NUMERIC_TYPES:
            return None
        default = field.served_default
        defaults.append(math.nan if default is None else float(default))
        slots.setdefault(p, []).append((pos, plan.struct_cols[j], int(plan.field_idx[j])))
    views = [_View(plans[p], s) for p, s in sorted(slots.items())]
    return VectorPlan(project, views, defaults, frozenset(needed), kinds)


class FeatureRowPlan(_OneEntity):
    """One entity's get-features answer over ``requests`` straight from its stored values, when
    every view keeps the requested features as float64 in request order (see the module doc)."""

    def __init__(
        self,
        project: str,
        request: tuple[list[tuple[Any, list[str]]], bool],
        views: list[_View],
        names: list[list[str]],
        needed: dict[str, str],
        kinds: Mapping[str, str] | None,
    ) -> None:
        self.request = request  # what the answer's statuses are named from (FeatureResult)
        self.views = views
        self.names = names  # per view, its output names
        self.feature_names = [n for view_names in names for n in view_names]
        self.needed = list(needed)  # the join keys, in the order the lookup answers them
        self.join_keys = frozenset(needed)
        self.kinds = {k: KEY_KIND_TYPES[v] for k, v in (kinds or {}).items() if k in needed}
        self._keys = OneEntityKeys(project, [(v.name, v.join_keys) for v in views])

    def source(
        self, values: Sequence[bytes | None], now_us: int, entities: dict[str, list[Any]]
    ) -> CleanRow | None:
        """The answer's source (see CleanRow) when every view's row is found, fresh and without
        nulls; else None (the general lookup decides, from the same values)."""
        parts = []
        for view, value in zip(self.views, values, strict=True):
            part = view.clean_span(value, now_us)
            if part is None:
                return None
            parts.append(part)
        return CleanRow(self, {k: entities[k] for k in self.needed}, parts)


class CleanRow:
    """What a lookup's OnlineResponse gives a FeatureResult, for one entity whose every view
    row was served as stored: the same columns, every status PRESENT."""

    __slots__ = ("_entities", "_parts", "_plan")

    def __init__(self, plan: FeatureRowPlan, entities: dict[str, list[Any]], parts: list[bytes]):
        self._plan, self._entities, self._parts = plan, entities, parts

    @property
    def feature_names(self) -> list[str]:
        return self._plan.feature_names

    def wire_blocks(self) -> list[Any]:
        """The join keys' columns, then each view's ``(names, float64 bytes, no nulls)``."""
        return [
            dict(self._entities),
            *[(names, raw, None) for names, raw in zip(self._plan.names, self._parts, strict=True)],
        ]

    def to_dict(self) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = dict(self._entities)
        for names, raw in zip(self._plan.names, self._parts, strict=True):
            out.update(
                zip(names, ([v] for v in struct.unpack(f"<{len(names)}d", raw)), strict=True)
            )
        return out

    wire_columns = to_dict

    def status_codes(self, view_name: str) -> list[int]:
        """Every row (the one) PRESENT."""
        return [int(Status.PRESENT)]


def feature_row_plan(
    project: str,
    requests: list[tuple[Any, list[str]]],
    full: bool,
    kinds: Mapping[str, str] | None = None,
) -> FeatureRowPlan | None:
    """The one-entity get-features shortcut over ``requests``, or None when some view does not
    keep its requested features as float64 in request order (or the request is not plain)."""
    try:
        plans, names, needed = _request_plan(requests, full)
    except Exception:  # name clashes and the like: the general path reports them
        return None
    views = []
    for plan in plans:
        if (
            type(plan) is not _ViewPlan
            or plan.codec.fixed_struct is None
            or not plan.features
            or not plan.join_keys
        ):
            return None  # on-demand or window features, strings: the general path
        slots = [
            (j, item, int(bit))
            for j, (item, bit) in enumerate(zip(plan.struct_cols, plan.field_idx, strict=True))
        ]
        view = _View(plan, slots)
        if view.span is None or view.var_codec is not None:
            return None
        views.append(view)
    return FeatureRowPlan(project, (requests, full), views, names, needed, kinds)
