"""Online results that are computed, not decoded: window states read at now, on-demand features.

Both quack like lookup's ``_ViewResult`` (``plan``, ``decoded.n/event_ts/present``, ``status``,
``served_lists()``) so ``OnlineResponse`` treats every view alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from featurestore.errors import EntityDataError
from featurestore.online.keys import as_pylist
from featurestore.online.windows import decode_value
from featurestore.transforms._errors import LateEventError
from featurestore.types import value_fits

_PRESENT, _NOT_FOUND, _EXPIRED = 0, 1, 2


class _Rows:
    """The per-row facts OnlineResponse reads besides values."""

    __slots__ = ("event_ts", "n", "present")

    def __init__(self, n: int, event_ts: np.ndarray, present: np.ndarray) -> None:
        self.n = n
        self.event_ts = event_ts
        self.present = present


class _Result:
    __slots__ = ("_lists", "decoded", "plan", "status")

    def __init__(self, plan: Any, lists: list[list[Any]], status: np.ndarray, rows: _Rows) -> None:
        self.plan = plan
        self._lists = lists
        self.status = status
        self.decoded = rows

    def served_lists(self) -> list[list[Any]]:
        return self._lists


class WindowPlan:
    """What reading some features of one window view needs."""

    on_demand = False

    def __init__(self, view: Any, features: tuple[str, ...]) -> None:
        self.view = view
        self.features = features
        self.fields = [view.field(f) for f in features]
        self.join_keys = view.join_keys
        names = [o.name for o in view.window.plan.outputs]
        outputs = view.window.plan.outputs
        self.idx = [names.index(f) for f in features]
        self.is_int = [outputs[i].is_int for i in self.idx]
        ow = view.window.online()
        blank = ow.read_array(ow.new_state(), 0)  # the empty window: counts/sums 0, rest null
        self.int_rows = [j for j, k in enumerate(self.is_int) if k]
        self.all_outputs = self.idx == list(range(len(names)))
        self.empty = [_py(float(blank[j]), k) for j, k in zip(self.idx, self.is_int, strict=True)]

    def result(self, values: list[bytes | None], now_us: int) -> _Result:
        """Read every requested output of each entity's state at ``now_us``."""
        if len(values) <= 1:  # a batch of one costs more than the per-entity path
            return self._result_one(values, now_us)
        return self._result_batch(values, now_us)

    def _result_batch(self, values: list[bytes | None], now_us: int) -> _Result:
        """All entities in one kernel call; the same values as ``_result_one``, bit for bit."""
        from featurestore.online.windows import read_values

        n = len(values)
        out, status, event_ts = read_values(self.view, values, now_us)
        sub = out.T if self.all_outputs else out.T[self.idx]  # (requested outputs, n)
        codes = status.tolist()
        other = [i for i, c in enumerate(codes) if c] if any(codes) else []  # absent or late
        if other:
            sub[:, other] = 0.0  # filled below
        lists: list[list[Any]] = sub.tolist()
        rows, cols = np.nonzero(~np.isfinite(sub))  # small numpy calls: few, not per entity
        for j, i in zip(rows.tolist(), cols.tolist(), strict=True):
            if self.is_int[j]:
                int(lists[j][i])  # NaN / inf: raises as the per-entity path does
            elif math.isnan(lists[j][i]):
                lists[j][i] = None
        if self.int_rows:
            conv = sub[self.int_rows].astype(np.int64).tolist()  # int(x) truncates alike
            for j, col in zip(self.int_rows, conv, strict=True):
                lists[j] = col
        nones = [None] * len(lists)
        for i in other:
            fill = self.empty if codes[i] == _NOT_FOUND else nones
            for col, v in zip(lists, fill, strict=True):
                col[i] = v
        return _Result(self, lists, status, _Rows(n, event_ts, status != _NOT_FOUND))

    def _result_one(self, values: list[bytes | None], now_us: int) -> _Result:
        """The per-entity path: decode the state and read it (cheaper than a batch of one)."""
        ow = self.view.window.online()
        n = len(values)
        status = np.zeros(n, dtype=np.int8)
        event_ts = np.zeros(n, dtype=np.int64)
        present = np.zeros(n, dtype=bool)
        empty = self.empty
        lists: list[list[Any]] = [[e] * n for e in empty]
        for i, value in enumerate(values):
            st = decode_value(self.view, value)
            if st is None:
                status[i] = _NOT_FOUND
                continue
            present[i] = True
            event_ts[i] = st.watermark or 0
            try:
                arr = ow.read_array(st, now_us)
            except LateEventError:
                status[i] = _EXPIRED
                for col in lists:
                    col[i] = None
                continue
            row = arr.tolist()  # Python floats: one call, not one numpy scalar per output
            for col, j, is_int in zip(lists, self.idx, self.is_int, strict=True):
                col[i] = _py(row[j], is_int)
        return _Result(self, lists, status, _Rows(n, event_ts, present))


def _py(x: float, is_int: bool) -> int | float | None:
    return int(x) if is_int else (None if math.isnan(x) else x)


class OnDemandPlan:
    """Some outputs of one on-demand feature view."""

    on_demand = True
    join_keys: tuple[str, ...] = ()

    def __init__(self, view: Any, features: tuple[str, ...]) -> None:
        self.view = view
        self.features = features
        self.fields = [view.field(f) for f in features]
        # request field -> dtype name, to check request data (the view rebuilds its schema)
        self.request_types = {f.name: f.dtype.name for f in view.request_schema}
        self._features: dict[str, Any] = {}

    def feature(self, name: str) -> Any:
        """The view's OnDemandFeature ``name``, looked up once per plan (on first compute, so
        a transform that fails to load still fails there)."""
        odf = self._features.get(name)
        if odf is None:
            odf = self._features[name] = self.view.feature(name)
        return odf


def with_on_demand_inputs(
    requests: list[tuple[Any, list[str]]], full: bool = False
) -> tuple[list[tuple[Any, list[str]]], frozenset[tuple[str, str]]]:
    """``requests`` plus the fetched inputs of its on-demand features, and the extras as
    (view, feature) pairs: hidden inputs, never named like an output (``full`` changes
    nothing here; output names are the caller's, see online._shape)."""
    from featurestore.errors import FeatureNotFoundError

    out = [(v, list(f)) for v, f in requests]
    have = {(v.name, f) for v, feats in out for f in feats}
    hidden: set[tuple[str, str]] = set()
    for view, feats in requests:
        if view.join_keys or not hasattr(view, "inputs_of"):
            continue
        for feat in feats:
            for ref in view.inputs_of(feat):
                if ":" not in ref:
                    continue
                vname, fname = ref.split(":", 1)
                if (vname, fname) in have:
                    continue
                target = next((e for e in out if e[0].name == vname), None)
                if target is None:
                    src = getattr(view, "_source_views", {}).get(vname)
                    if src is None:
                        raise FeatureNotFoundError(
                            f"on-demand feature '{view.name}:{feat}' needs '{ref}'; the "
                            "registry has no such view"
                        )
                    target = (src, [])
                    out.append(target)
                target[1].append(fname)
                have.add((vname, fname))
                hidden.add((vname, fname))
    return out, frozenset(hidden)


def compute_on_demand(
    plans: list[Any],
    results: list[Any],
    request_data: dict[str, Sequence[Any]] | None,
    n: int,
) -> None:
    """Fill the on-demand slots of ``results`` from fetched results and ``request_data``."""
    fetched = _FetchedInputs(plans, results)
    req = request_data or {}
    for i, plan in enumerate(plans):
        if not getattr(plan, "on_demand", False):
            continue
        lists: list[list[Any]] = []
        status = np.zeros(n, dtype=np.int8)
        for feat in plan.features:
            odf = plan.feature(feat)
            inputs = []
            for name in odf.inputs:
                if ":" in name:
                    inputs.append(fetched[name])
                    continue
                inputs.append(_request_column(plan, feat, name, req.get(name), n))
            col_out: list[Any] = []
            for r in range(n):
                v = odf.compute_row(
                    {name: inp[r] for name, inp in zip(odf.inputs, inputs, strict=True)}
                )
                # as the training set holds it (Float32 rounded, out of range an error); a NaN
                # result (0/0) is a value, as in the training set and as a stored NaN is served
                v = odf.serve_row(v, plan.view.name, r)
                if v is None:  # a null input
                    status[r] = _NOT_FOUND
                col_out.append(v)
            lists.append(col_out)
        rows = _Rows(n, np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool))
        results[i] = _Result(plan, lists, status, rows)


class _FetchedInputs:
    """``view:feature`` -> served column of the fetched results, built per view on first use:
    a lookup serves only the views its on-demand features read, not every fetched view."""

    def __init__(self, plans: list[Any], results: list[Any]) -> None:
        self._views: dict[str, list[tuple[Any, Any]]] = {}
        for plan, res in zip(plans, results, strict=True):
            if res is not None:
                self._views.setdefault(plan.view.name, []).append((plan, res))
        self._columns: dict[str, list[Any]] = {}

    def __getitem__(self, ref: str) -> list[Any]:
        col = self._columns.get(ref)
        if col is None:
            for plan, res in self._views.pop(ref.split(":", 1)[0], ()):  # later ones win
                for feat, served in zip(plan.features, res.served_lists(), strict=True):
                    self._columns[f"{plan.view.name}:{feat}"] = served
            col = self._columns[ref]  # KeyError: not fetched (with_on_demand_inputs adds them)
        return col


def _request_column(
    plan: Any, feat: str, name: str, col: Sequence[Any] | None, n: int
) -> list[Any]:
    """Request field ``name`` of on-demand feature ``feat`` as a list, its values checked."""
    if col is None:
        raise EntityDataError(
            f"on-demand feature '{plan.view.name}:{feat}' needs request field "
            f"'{name}'; pass request_data={{'{name}': [one value per entity row]}} (in "
            f"the CLI: --request {name}=VALUE,...)"
        )
    if len(col) != n:
        raise EntityDataError(
            f"request field '{name}' has {len(col)} values for {n} entity rows; "
            "give one value per entity row"
        )
    col = as_pylist(col)
    dtype = plan.request_types.get(name, "")
    bad = next((r for r, v in enumerate(col) if not value_fits(v, dtype)), None)
    if bad is not None:
        v = col[bad]
        raise EntityDataError(
            f"request field '{name}' is {v!r} ({type(v).__name__}) at entity row "
            f"{bad}; on-demand feature view '{plan.view.name}' declares it {dtype}"
        )
    return col
