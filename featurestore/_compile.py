"""Compile every transform of a repo at apply: row transforms, window plans, on-demand features.

Errors come back as one line each (function, file:line, numba's reason). The numba kernels of
the window engine are compiled (or loaded from numba's disk cache) once per process here too,
so the first training set or lookup after apply does not pay for them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from featurestore.errors import DefinitionError

if TYPE_CHECKING:
    from featurestore.offline.store import OfflineStore

_WARM = False
_KIND = {"float64": "f", "float32": "f", "int64": "i", "int32": "i", "boolean": "b"}


def compile_definitions(offline: OfflineStore, defs: Any) -> list[str]:
    """Problems found compiling ``defs`` (empty when everything compiled)."""
    problems: list[str] = []
    types = {f"{v.name}:{f.name}": f.dtype for v in defs.feature_views.values() for f in v.schema}
    for view in defs.feature_views.values():
        if view.window is None:
            continue
        where = defs.where("feature view", view.name)
        try:
            _check_derived_types(offline, view)
            _ = view.window.plan  # compiles derived transforms and where predicates
        except DefinitionError as exc:
            problems.append(f"{where}: feature view '{view.name}': {exc}")
    for odfv in defs.on_demand_views.values():
        try:
            odfv.compile(types)
        except DefinitionError as exc:
            problems.append(f"{defs.where('feature view', odfv.name)}: {exc}")
    if not problems and any(v.window is not None for v in defs.feature_views.values()):
        warm_kernels()
    return problems


def _check_derived_types(offline: OfflineStore, view: Any) -> None:
    """A derived transform's annotations must accept its source columns' types."""
    schema = offline.source_schema(view.source)
    types = {f.name: f.type for f in schema}
    derived = {}
    for name, t, args in view.window.derived:
        for param, ptype, col in zip(t.params, t.param_types, args, strict=True):
            kind = derived.get(col) or _arrow_kind(types.get(col))
            want = _KIND[ptype]
            ok = (
                kind is None
                or kind == want
                or (want == "f" and kind in "ib")
                or (want == "i" and kind == "b")
            )
            if not ok:
                raise DefinitionError(
                    f"transform '{t.name}' ({t.where}) takes '{param}' as {ptype} but column "
                    f"'{col}' is {types.get(col, 'derived ' + str(kind))}; change the "
                    "annotation or cast the column"
                )
        derived[name] = _KIND[t.return_type]
    for a in view.window.spec["aggregations"]:
        col = a["column"]
        kind = derived.get(col) or _arrow_kind(types.get(col))
        if kind == "s":
            raise DefinitionError(
                f"aggregation {a['function']} of column '{col}' ({types[col]}): aggregations "
                "read numeric or bool columns; map strings to int64 ids in the source first"
            )


def _arrow_kind(t: Any) -> str | None:
    if t is None:
        return None
    import pyarrow.types as pt

    if pt.is_floating(t):
        return "f"
    if pt.is_integer(t):
        return "i"
    if pt.is_boolean(t):
        return "b"
    return "s"


def warm_kernels() -> None:
    """Run the offline and online window kernels once on a tiny input (numba compile / load)."""
    global _WARM
    if _WARM:
        return
    import numpy as np

    from featurestore.transforms import (
        Aggregation,
        OnlineWindows,
        compile_plan,
        compute_window_features,
    )

    plan = compile_plan(
        [Aggregation("x", f, ["1h"]) for f in ("count", "sum", "last", "distinct_count")]
    )
    e = np.zeros(2, dtype=np.int64)
    t = np.array([1, 2], dtype=np.int64)
    compute_window_features(plan, e, t, {"x": np.array([1.0, 2.0])}, e[:1], t[1:])
    ow = OnlineWindows(plan, on_late="count")
    st = ow.new_state()
    ow.ingest(st, t, {"x": np.array([1.0, 2.0])})
    ow.update(st, 3, {"x": 3.0})
    ow.read_array(ow.decode(ow.encode(st)), 3)
    ow.tile_min_events = 1  # also compile the tile builder and the tiled read
    ow.read_array(ow.decode(ow.encode(st)), 3)
    _WARM = True
