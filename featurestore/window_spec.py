"""WindowSpec: the window aggregations (and derived input columns) of an event feature view.

Each source row of such a view is one event; every aggregation output (``amount_sum_24h``)
becomes a feature: ``count``/``distinct_count`` are Int64, everything else Float64. A derived
column is a row transform of source columns (``{"amount_usd": (to_usd, ["amount", "fx"])}``)
that aggregations (and ``where`` predicates) may read like a source column.

The JSON form (``spec``) is what the registry stores and what equality compares; functions are
kept as (file, name) references and imported again only when the view is used.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featurestore._time import duration_us, format_duration, parse_duration
from featurestore.errors import DefinitionError
from featurestore.field import Field
from featurestore.types import Float64, Int64

if TYPE_CHECKING:
    import numpy as np

    from featurestore.transforms import Aggregation, RowTransform, WindowPlan

_INT_FUNCTIONS = ("count", "distinct_count")
_ALIASES = {"avg": "mean", "variance": "var", "std": "stddev", "nunique": "distinct_count"}


class WindowSpec:
    """Aggregations, derived columns and allowed lateness of one view; resolved lazily."""

    def __init__(
        self,
        view: str,
        aggregations: Sequence[Aggregation] | None = None,
        derived: Mapping[str, tuple[Any, Sequence[str]]] | None = None,
        allowed_lateness: Any = None,
        *,
        spec: dict[str, Any] | None = None,
        repo_path: Path | None = None,
    ) -> None:
        from featurestore._transform_refs import CURRENT_REPO, function_ref

        self.view = view
        self.repo_path = repo_path if repo_path is not None else CURRENT_REPO.get()
        self._aggs: tuple[Aggregation, ...] | None = None
        self._derived: tuple[tuple[str, RowTransform, tuple[str, ...]], ...] | None = None
        self._plan: WindowPlan | None = None
        self._online: Any = None
        if spec is not None:
            self.spec = spec
            return
        try:
            lateness = parse_duration(allowed_lateness)
        except (ValueError, TypeError) as exc:
            raise DefinitionError(f"feature view '{view}': allowed_lateness: {exc}") from None
        if lateness is not None and lateness.total_seconds() < 0:
            raise DefinitionError(
                f"feature view '{view}' has allowed_lateness {allowed_lateness!r}; use a "
                "duration >= 0"
            )
        aggs = tuple(aggregations or ())
        der: list[tuple[str, Any, tuple[str, ...]]] = []
        for name, value in (derived or {}).items():
            if not (isinstance(value, (tuple, list)) and len(value) == 2):
                raise DefinitionError(
                    f"feature view '{view}': derived column '{name}' must be "
                    "(transform, [input columns])"
                )
            t, args = value[0], tuple(value[1])
            if not hasattr(t, "apply_columns") or not hasattr(t, "params"):
                raise DefinitionError(
                    f"feature view '{view}': derived column '{name}' uses {t!r}, which is not "
                    "a @transform function"
                )
            if len(args) != len(t.params):
                raise DefinitionError(
                    f"feature view '{view}': derived column '{name}' passes {len(args)} "
                    f"columns {list(args)} to transform '{t.name}' ({t.where}), which takes "
                    f"{len(t.params)} {list(t.params)}"
                )
            der.append((name, t, args))
        from featurestore.transforms.aggregation import Aggregation as _Agg

        for a in aggs:
            if not isinstance(a, _Agg):
                raise DefinitionError(
                    f"feature view '{view}': aggregations must be Aggregation objects, got {a!r}"
                )
        self._aggs = aggs
        self._derived = tuple(der)
        rp = self.repo_path
        self.spec = {
            "aggregations": [
                {
                    "column": a.column,
                    "function": a.function,
                    "windows": list(a.labels),
                    "name": a.name,
                    "where": None if a.where is None else function_ref(a.where, rp),
                }
                for a in aggs
            ],
            "derived": [
                {"name": n, "args": list(args), **function_ref(t, rp)} for n, t, args in der
            ],
            "allowed_lateness": format_duration(lateness),
        }
        self.output_fields()  # duplicate names fail at definition time

    # -- static facts (no function needed) ---------------------------------------------------

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WindowSpec) and self.spec == other.spec

    def __hash__(self) -> int:
        return hash(json.dumps(self.spec, sort_keys=True))

    def __repr__(self) -> str:
        return f"WindowSpec({[f.name for f in self.output_fields()]})"

    @property
    def lateness_us(self) -> int:
        return duration_us(parse_duration(self.spec.get("allowed_lateness"))) or 0

    @property
    def derived_names(self) -> tuple[str, ...]:
        return tuple(d["name"] for d in self.spec["derived"])

    def output_fields(self) -> list[Field]:
        """One Field per aggregation output, in definition order."""
        out: list[Field] = []
        seen: set[str] = set()
        for a in self.spec["aggregations"]:
            fn = _ALIASES.get(a["function"], a["function"])
            stem = a.get("name") or f"{a['column']}_{fn}"
            for label in a["windows"]:
                name = f"{stem}_{label}"
                if name in seen:
                    raise DefinitionError(
                        f"feature view '{self.view}': aggregation output '{name}' is defined "
                        "twice; give one of them name=..."
                    )
                seen.add(name)
                out.append(Field(name, Int64 if fn in _INT_FUNCTIONS else Float64))
        return out

    def source_columns(self) -> list[str]:
        """Source columns the events must carry (aggregated, predicate and derived inputs)."""
        derived = set(self.derived_names)
        cols: list[str] = []

        def add(c: str) -> None:
            if c not in derived and c not in cols:
                cols.append(c)

        for d in self.spec["derived"]:
            for c in d["args"]:
                add(c)
        for a in self.spec["aggregations"]:
            add(a["column"])
        for a in self.aggregations:
            if a.where is not None:
                for p in a.where.params:
                    add(p)
        return cols

    # -- live objects (import the definitions file on first use) -----------------------------

    def _resolve(self) -> None:
        from featurestore._transform_refs import resolve_ref
        from featurestore.transforms.aggregation import Aggregation as _Agg

        what = f"feature view '{self.view}'"
        der = tuple(
            (d["name"], resolve_ref(d, self.repo_path, what), tuple(d["args"]))
            for d in self.spec["derived"]
        )
        aggs = tuple(
            _Agg(
                a["column"],
                a["function"],
                a["windows"],
                name=a.get("name"),
                where=None
                if a.get("where") is None
                else resolve_ref(a["where"], self.repo_path, what),
            )
            for a in self.spec["aggregations"]
        )
        self._derived, self._aggs = der, aggs

    @property
    def aggregations(self) -> tuple[Aggregation, ...]:
        if self._aggs is None:
            self._resolve()
        assert self._aggs is not None
        return self._aggs

    @property
    def derived(self) -> tuple[tuple[str, RowTransform, tuple[str, ...]], ...]:
        if self._derived is None:
            self._resolve()
        assert self._derived is not None
        return self._derived

    @property
    def plan(self) -> WindowPlan:
        """The compiled window plan (transforms compiled too, from numba's disk cache, unless
        ``check()`` passed: then they load on first use)."""
        if self._plan is None:
            from featurestore.transforms.aggregation import compile_plan

            for t in self._functions():
                if not getattr(t, "checked", False):
                    t.compile()
            self._plan = compile_plan(self.aggregations, view=self.view)
        return self._plan

    def compile(self) -> None:
        """Compile every derived transform and predicate; errors name function, file and line."""
        for t in self._functions():
            t.compile()

    def check(self) -> None:
        """As ``compile``, but a function known to compile loads its kernels on first use
        (apply does this; see ``RowTransform.check``)."""
        for t in self._functions():
            getattr(t, "check", t.compile)()

    def _functions(self) -> list[RowTransform]:
        """Derived transforms, then ``where`` predicates, in definition order."""
        out = [t for _, t, _ in self.derived]
        return out + [a.where for a in self.aggregations if a.where is not None]

    def online(self) -> Any:
        """The OnlineWindows of this view (one per spec; shared by materialize and lookup)."""
        if self._online is None:
            from featurestore.transforms.online import OnlineWindows

            self._online = OnlineWindows(
                self.plan, allowed_lateness_us=self.lateness_us, on_late="count"
            )
        return self._online

    def event_columns(self, columns: Mapping[str, Any]) -> dict[str, Any]:
        """Source columns plus every derived column (as arrays with nulls), for the kernels."""
        import numpy as np

        out: dict[str, Any] = dict(columns)
        for name, t, args in self.derived:
            vals, valid = t.apply_columns({p: out[c] for p, c in zip(t.params, args, strict=True)})
            out[name] = _with_nulls(np.asarray(vals), valid)
        return out


def _with_nulls(vals: np.ndarray, valid: np.ndarray) -> Any:
    import numpy as np

    if valid.all():
        return vals
    if vals.dtype.kind == "f":
        out = vals.astype(np.float64, copy=True)
        out[~valid] = np.nan
        return out
    import pyarrow as pa

    return pa.array(vals, mask=~valid)
