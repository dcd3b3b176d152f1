"""Check that every transform of a repo compiles at apply: row transforms, window plans,
on-demand features.

Errors come back as one line each (function, file:line, numba's reason). A function that
compiled before with the same code is not loaded again (see ``transforms/_compiled_record.py``),
and the window engine's own kernels are not run here: numba costs about a second to load even
from its disk cache, which the first training set, materialization or lookup pays instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from featurestore.errors import DefinitionError

if TYPE_CHECKING:
    from featurestore.offline.store import OfflineStore

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
            view.window.check()  # derived transforms and where predicates compile
            _ = view.window.plan  # outputs named twice, unknown functions
        except DefinitionError as exc:
            problems.append(f"{where}: feature view '{view.name}': {exc}")
    for odfv in defs.on_demand_views.values():
        try:
            odfv.check(types)
        except DefinitionError as exc:
            problems.append(f"{defs.where('feature view', odfv.name)}: {exc}")
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
