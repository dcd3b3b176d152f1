"""Window aggregations: definitions and the compiled plan both paths run (no numba import here).

Window convention: the window of length ``w`` at time ``t`` holds the events with
``t - w < event_ts <= t``, i.e. ``(t - w, t]``; timestamps are int64 microseconds UTC. An
event exactly at ``t`` is in, one exactly at ``t - w`` is out. The same rule holds offline
(training sets), online (serving) and in streaming, because all three run one kernel.

Functions (nulls, i.e. NaN or a False validity, and rows a ``where`` predicate rejects, are
skipped by every function; ``count`` therefore counts non-null values):

==================  ============================================  ===================
function            value                                          empty window
==================  ============================================  ===================
``count``           number of non-null values (int64)               0
``sum``             exact sum, rounded once to float64              0.0
``mean``            ``sum / count``                                 null (NaN)
``min``/``max``     smallest / largest value                        null
``last``            value of the newest event: largest                null
                    ``(event_ts, arrival order)``
``var``             population variance (ddof=0), from exact sums    null
``stddev``          ``sqrt(var)`` (population)                      null
``distinct_count``  exact number of distinct values (int64)         0
==================  ============================================  ===================

Values are float64 (``-0.0`` is stored as ``0.0``; ``distinct_count`` keys on int64 columns
exactly and on the bits of float columns). Sums are exact: the result depends only on the
values in the window, never on the order they arrived or were evicted in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np


from featurestore._time import duration_us, format_duration, parse_duration
from featurestore.errors import DefinitionError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from featurestore.transforms.row import RowTransform

FUNCTIONS = ("count", "sum", "mean", "min", "max", "last", "var", "stddev", "distinct_count")
_ALIASES = {"avg": "mean", "variance": "var", "std": "stddev", "nunique": "distinct_count"}
_INT_FUNCTIONS = ("count", "distinct_count")


@dataclass(frozen=True)
class Aggregation:
    """``function`` of ``column`` over each window in ``windows``, optionally filtered by ``where``.

    Example: ``Aggregation("amount", "sum", ["1h", "24h"])`` -> ``amount_sum_1h``,
    ``amount_sum_24h``.
    """

    column: str
    function: str
    windows: tuple[timedelta, ...]
    name: str | None = None
    where: RowTransform | None = None
    labels: tuple[str, ...] = ()  # each window as spelled by the user ("24h" stays "24h")

    def __init__(
        self,
        column: str,
        function: str,
        windows: Sequence[str | timedelta] | str | timedelta,
        name: str | None = None,
        where: RowTransform | None = None,
    ) -> None:
        label = name or f"{column}_{function}"
        if not column or not isinstance(column, str):
            raise DefinitionError(f"aggregation '{label}' needs a column name, got {column!r}")
        fn = _ALIASES.get(function, function)
        if fn not in FUNCTIONS:
            raise DefinitionError(
                f"aggregation '{label}' has unknown function {function!r}; "
                f"use one of {', '.join(FUNCTIONS)}"
            )
        if isinstance(windows, (str, timedelta)):
            windows = [windows]
        if not windows:
            raise DefinitionError(f"aggregation '{label}' has no windows; give e.g. ['1h', '24h']")
        parsed = []
        for w in windows:
            try:
                td = parse_duration(w)
            except (ValueError, TypeError) as exc:
                raise DefinitionError(f"aggregation '{label}': window {w!r}: {exc}") from None
            if td is None or duration_us(td) <= 0:
                raise DefinitionError(
                    f"aggregation '{label}' has window {w!r}; a window must be a positive "
                    "duration such as '10m', '24h' or '7d'"
                )
            parsed.append(td)
        if len(set(parsed)) != len(parsed):
            raise DefinitionError(f"aggregation '{label}' lists a window twice: {list(windows)}")
        if where is not None and not hasattr(where, "apply_columns"):
            raise DefinitionError(
                f"aggregation '{label}': where= must be a @transform predicate, got {where!r}"
            )
        for attr, val in (
            ("column", column),
            ("function", fn),
            ("windows", tuple(parsed)),
            ("name", name),
            ("where", where),
            ("labels", tuple(_label(w, td) for w, td in zip(windows, parsed, strict=True))),
        ):
            object.__setattr__(self, attr, val)

    def feature_names(self) -> list[str]:
        """Output names: ``{column}_{function}_{window}`` or ``{name}_{window}``."""
        stem = self.name or f"{self.column}_{self.function}"
        return [f"{stem}_{label}" for label in self.labels]

    def to_dict(self) -> dict[str, Any]:
        return {
            "column": self.column,
            "function": self.function,
            "windows": list(self.labels),
            "name": self.name,
            "where": None if self.where is None else self.where.name,
        }

    @classmethod
    def from_dict(
        cls, d: Mapping[str, Any], transforms: Mapping[str, RowTransform] | None = None
    ) -> Aggregation:
        """Inverse of ``to_dict``; ``transforms`` resolves a ``where`` predicate by name."""
        where = d.get("where")
        if where is not None:
            if not transforms or where not in transforms:
                raise DefinitionError(
                    f"aggregation '{d.get('name') or d['column']}' uses predicate '{where}', "
                    "which is not among the registered transforms"
                )
            where = transforms[where]
        return cls(d["column"], d["function"], d["windows"], name=d.get("name"), where=where)


def _label(spelled: str | timedelta, td: timedelta) -> str:
    if isinstance(spelled, str):
        return spelled.strip().replace(" ", "")
    return format_duration(td) or ""


_FN_CODE = {f: i for i, f in enumerate(FUNCTIONS)}


@dataclass(frozen=True)
class WindowOutput:
    """One output column of a plan: ``function`` of input ``input`` over ``window_us``."""

    name: str
    function: str
    code: int
    input: int
    distinct_input: int
    window_us: int

    @property
    def is_int(self) -> bool:
        return self.function in _INT_FUNCTIONS


@dataclass(frozen=True)
class WindowPlan:
    """The compiled form of a list of aggregations: deduplicated inputs and flat outputs.

    An input is a (column, where) pair; aggregations sharing one share its value arrays.
    """

    inputs: tuple[tuple[str, RowTransform | None], ...]
    distinct_inputs: tuple[int, ...]  # input index of each distinct-count key column
    outputs: tuple[WindowOutput, ...]
    fns: np.ndarray = field(repr=False, compare=False)
    inps: np.ndarray = field(repr=False, compare=False)
    wins: np.ndarray = field(repr=False, compare=False)
    dins: np.ndarray = field(repr=False, compare=False)

    @property
    def names(self) -> list[str]:
        return [o.name for o in self.outputs]

    @property
    def max_window_us(self) -> int:
        return int(self.wins.max())

    @property
    def columns(self) -> list[str]:
        """Event columns the plan reads (aggregated columns and predicate arguments)."""
        cols: list[str] = []
        for col, where in self.inputs:
            for c in (col, *(where.params if where is not None else ())):
                if c not in cols:
                    cols.append(c)
        return cols


def compile_plan(aggregations: Sequence[Aggregation], *, view: str = "") -> WindowPlan:
    """Flatten aggregations into one plan; duplicate output names -> DefinitionError."""
    import numpy as np

    where_ctx = f"feature view '{view}': " if view else ""
    inputs: list[tuple[str, Any]] = []
    distinct: list[int] = []
    outputs: list[WindowOutput] = []
    seen: set[str] = set()
    for agg in aggregations:
        if not isinstance(agg, Aggregation):
            raise DefinitionError(f"{where_ctx}expected Aggregation objects, got {agg!r}")
        key = (agg.column, agg.where)
        idx = next((i for i, k in enumerate(inputs) if k[0] == key[0] and k[1] is key[1]), None)
        if idx is None:
            inputs.append(key)
            idx = len(inputs) - 1
        d_idx = 0
        if agg.function == "distinct_count":
            if idx not in distinct:
                distinct.append(idx)
            d_idx = distinct.index(idx)
        for name, w in zip(agg.feature_names(), agg.windows, strict=True):
            if name in seen:
                raise DefinitionError(f"{where_ctx}aggregation output '{name}' is defined twice")
            seen.add(name)
            outputs.append(
                WindowOutput(name, agg.function, _FN_CODE[agg.function], idx, d_idx, duration_us(w))
            )
    if not outputs:
        raise DefinitionError(f"{where_ctx}no aggregations to compile")
    return WindowPlan(
        inputs=tuple(inputs),
        distinct_inputs=tuple(distinct),
        outputs=tuple(outputs),
        fns=np.array([o.code for o in outputs], dtype=np.int64),
        inps=np.array([o.input for o in outputs], dtype=np.int64),
        wins=np.array([o.window_us for o in outputs], dtype=np.int64),
        dins=np.array([o.distinct_input for o in outputs], dtype=np.int64),
    )


def prepare_inputs(
    plan: WindowPlan, columns: Mapping[str, Any]
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Event columns -> (values [n_inputs, n] float64, valid [n_inputs, n] bool, int64 keys).

    NaN / null values and rows the input's predicate rejects are invalid; -0.0 becomes 0.0.
    Used offline for all events and online for each ingested batch, so both see equal inputs.
    """
    import numpy as np

    from featurestore.transforms._columns import to_numpy

    n_in = len(plan.inputs)
    vals = valid = None
    raw = []
    for i, (col, where) in enumerate(plan.inputs):
        if col not in columns:
            raise DefinitionError(f"aggregation input column '{col}' is missing from the events")
        arr, ok = to_numpy(columns[col])
        if arr.dtype.kind not in "biuf":
            raise DefinitionError(
                f"aggregation input column '{col}' has dtype {arr.dtype}; aggregate numeric or "
                "bool columns (map strings to int64 ids first)"
            )
        if vals is None:
            # one allocation per matrix; rows are written in place (10M-row inputs are common)
            vals = np.empty((n_in, arr.size), dtype=np.float64)
            valid = np.empty((n_in, arr.size), dtype=bool)
        if arr.size != vals.shape[1]:
            raise DefinitionError(
                f"aggregation input column '{col}' has {arr.size} rows, not {vals.shape[1]}"
            )
        x = vals[i]
        np.add(arr, 0.0, out=x, casting="unsafe")  # also turns -0.0 into 0.0
        v = valid[i]
        np.isnan(x, out=v)
        np.logical_not(v, out=v)
        if ok is not None:
            v &= ok
        if where is not None:
            p_vals, p_ok = where.apply_columns(columns)
            v &= p_ok & p_vals.astype(bool)
        raw.append(arr)
    if vals is None or valid is None:
        vals = np.zeros((0, 0))
        valid = np.zeros((0, 0), dtype=bool)
    keys = []
    for idx in plan.distinct_inputs:
        arr = raw[idx]
        if arr.dtype.kind in "biu":
            keys.append(np.asarray(arr, dtype=np.int64))
        else:
            keys.append((arr.astype(np.float64) + 0.0).view(np.int64))
    return vals, valid, keys
