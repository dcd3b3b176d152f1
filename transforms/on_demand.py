"""On-demand features: a compiled row transform of request fields and fetched features.

Offline it runs vectorized over the training set (request fields come from spine columns),
online it runs once per request; both call kernels compiled from the same function and
signature (see ``row``). Inputs map positionally onto the function's parameters.
"""

from __future__ import annotations

import numbers
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

from featurestore.errors import DefinitionError, EntityDataError
from featurestore.field import Field
from featurestore.transforms.row import RowTransform
from featurestore.types import FLOAT32_END, INT_RANGES, past_float32

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from featurestore.types import DType

_F32 = struct.Struct("<f")  # packing rounds a float to the nearest float32, as numpy casts
_KIND = {"float64": "f", "float32": "f", "int64": "i", "int32": "i", "bool": "b", "boolean": "b"}
_SHOWN = {"int32": "Int32", "int64": "Int64", "float32": "Float32"}


@dataclass(frozen=True)
class RequestSource:
    """Fields a request carries (e.g. the transaction amount); offline they are spine columns."""

    name: str
    schema: tuple[Field, ...]

    def __init__(self, name: str, schema: Sequence[Field]) -> None:
        if not name or not isinstance(name, str):
            raise DefinitionError(f"request source name {name!r} must be a non-empty string")
        fields = tuple(schema or ())
        if not fields or not all(isinstance(f, Field) for f in fields):
            raise DefinitionError(f"request source '{name}' needs schema=[Field(...), ...]")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "schema", fields)

    def field(self, name: str) -> Field | None:
        return next((f for f in self.schema if f.name == name), None)


class OnDemandFeature:
    """``output`` computed from ``inputs`` (request field names or ``view:feature`` refs)."""

    def __init__(
        self,
        func: Callable[..., Any] | RowTransform,
        *,
        inputs: Sequence[str],
        output: Field,
        sources: Sequence[RequestSource] = (),
    ) -> None:
        self.transform = func if isinstance(func, RowTransform) else RowTransform(func)
        self.name = output.name if isinstance(output, Field) else ""
        t = self.transform
        if not isinstance(output, Field):
            raise DefinitionError(
                f"on-demand feature '{t.name}' ({t.where}): output must be a Field, got {output!r}"
            )
        self.output = output
        self.inputs = tuple(inputs)
        self.sources = tuple(sources)
        if len(self.inputs) != len(t.params):
            raise DefinitionError(
                f"on-demand feature '{self.name}' ({t.where}): {len(self.inputs)} inputs "
                f"{list(self.inputs)} but the function takes {len(t.params)} {list(t.params)}"
            )
        # positions of the Float32 request fields: their values reach the function rounded to
        # float32 on every path (a spine column may hold them as float32 or float64)
        self._float32_at = tuple(
            k
            for k, i in enumerate(self.inputs)
            if (f := self._request_field(i)) is not None and f.dtype.name == "float32"
        )

    @property
    def request_fields(self) -> tuple[str, ...]:
        """Inputs that come from a request source (the rest are fetched features)."""
        return tuple(i for i in self.inputs if self._request_field(i) is not None)

    def _request_field(self, name: str) -> Field | None:
        for s in self.sources:
            f = s.field(name)
            if f is not None:
                return f
        return None

    def compile(self, feature_types: Mapping[str, DType] | None = None) -> OnDemandFeature:
        """Check input/output types against the function's annotations, then compile it."""
        self._check_types(feature_types)
        self.transform.compile()
        return self

    def check(self, feature_types: Mapping[str, DType] | None = None) -> OnDemandFeature:
        """As ``compile``, but the kernels load on first use when the function is known to
        compile (``RowTransform.check``; apply uses this)."""
        self._check_types(feature_types)
        self.transform.check()
        return self

    def _check_types(self, feature_types: Mapping[str, DType] | None) -> None:
        """Inputs and output against the function's annotations (one DefinitionError line)."""
        t = self.transform
        if t._error is not None:
            raise t._error
        for inp, param, ptype in zip(self.inputs, t.params, t.param_types, strict=True):
            f = self._request_field(inp)
            dtype = f.dtype if f is not None else (feature_types or {}).get(inp)
            if dtype is not None and not _fits(dtype.name, ptype):
                raise DefinitionError(
                    f"on-demand feature '{self.name}': transform '{t.name}' ({t.where}) takes "
                    f"'{param}' as {ptype} but input '{inp}' is {dtype.name}; change the "
                    "annotation or the input's type"
                )
        if _KIND.get(self.output.dtype.name) != _KIND[t.return_type] and not (
            _KIND.get(self.output.dtype.name) == "f" and _KIND[t.return_type] == "i"
        ):
            raise DefinitionError(
                f"on-demand feature '{self.name}': transform '{t.name}' ({t.where}) returns "
                f"{t.return_type} but the output field is {self.output.dtype.name}; make them match"
            )

    def compute_row(self, values: Mapping[str, Any]) -> Any:
        """One request: the njit kernel over ``values[input]``; None when an input is null.
        A Float32 request field is rounded to float32 first, as ``compute_columns`` does."""
        if not self._float32_at:
            return self.transform(*(values.get(i) for i in self.inputs))
        args = [values.get(i) for i in self.inputs]
        for k in self._float32_at:
            args[k] = self._float32(self.inputs[k], args[k])
        return self.transform(*args)

    def _float32(self, name: str, v: Any) -> Any:
        """Request field ``name``'s value ``v`` as the float32 a spine column of that type
        holds (a Python float); None stays None, NaN and infinities stay what they are."""
        if v is None:
            return None
        try:
            if type(v) is not float and isinstance(v, numbers.Integral):
                v = int(v)  # a large integer is rounded once, from the integer (as a column is)
                if 2**53 < abs(v):
                    lo, hi = INT_RANGES["int64"]
                    if lo <= v <= hi:
                        import numpy as np

                        return float(np.float32(np.int64(v)))
                    v = float(v)
            return _F32.unpack(_F32.pack(v))[0]
        except struct.error:  # not a number: the kernel refuses it as before
            return v
        except OverflowError:  # finite, but past float32's range
            raise EntityDataError(
                f"request field '{name}' is {v!r}, which its Float32 type cannot hold (finite "
                f"values up to about +-3.4e+38); on-demand feature '{self.name}' reads it: "
                "send a smaller value or declare the field Float64"
            ) from None

    def serve_row(self, value: Any, view: str, row: int) -> Any:
        """A computed row value as the output type holds it, as the training set holds it
        (``output_column``): a Float32 output rounded to float32 (a Python float), an int
        result of a float output rounded once to the nearest float. A value the output type
        cannot hold is an EntityDataError naming ``view``, the feature, entity row ``row`` and
        the value; NaN and infinities are values."""
        if value is None:
            return None
        kind = self.output.dtype.name
        if kind == "float64":
            return float(value)
        if kind == "float32":
            import numpy as np

            if isinstance(value, int):  # the nearest float32, not the float32 of a float64
                return float(np.float32(np.int64(value)))
            f = float(value)
            if past_float32(f):
                raise self._out_of_range(view, f, f"entity row {row}")
            return float(np.float32(f))
        if kind in INT_RANGES:
            i = int(value)
            lo, hi = INT_RANGES[kind]
            if not lo <= i <= hi:
                raise self._out_of_range(view, i, f"entity row {row}")
            return i
        return bool(value)

    def output_column(self, values: np.ndarray, valid: np.ndarray, view: str) -> np.ndarray:
        """A training set's computed ``values`` (``compute_columns``) as the output type holds
        them, row for row what ``serve_row`` serves: the same rounding, the same error (naming
        the first spine row) for a value the type cannot hold; null slots are not checked."""
        import numpy as np

        kind = self.output.dtype.name
        if kind in ("float32", "float64"):
            out = np.asarray(values)
            if kind == "float64" or out.dtype.kind in "iu":  # ints: the nearest float, once
                return out.astype(np.float64 if kind == "float64" else np.float32)
            with np.errstate(invalid="ignore"):
                bad = np.isfinite(out) & (np.abs(out) >= FLOAT32_END) & valid
            if bad.any():
                r = int(np.argmax(bad))
                raise self._out_of_range(view, float(out[r]), f"spine row {r}")
            return out.astype(np.float32)
        if kind in INT_RANGES:
            out = np.asarray(values)
            lo, hi = INT_RANGES[kind]
            bad = ((out < lo) | (out > hi)) & valid
            if bad.any():
                r = int(np.argmax(bad))
                raise self._out_of_range(view, int(out[r]), f"spine row {r}")
            return out.astype(np.int32 if kind == "int32" else np.int64)
        return np.asarray(values, dtype=bool)

    def _out_of_range(self, view: str, value: float | int, where: str) -> EntityDataError:
        kind = self.output.dtype.name
        if kind == "float32":
            limits = "finite values up to about +-3.4e+38"
        else:
            lo, hi = INT_RANGES[kind]
            limits = f"{lo} to {hi}"
        wider = "Int64 (or Float64)" if kind == "int32" else "Float64"
        return EntityDataError(
            f"on-demand feature '{view}:{self.name}' computed {value!r} at {where}, which its "
            f"{_SHOWN[kind]} output cannot hold ({limits}); declare the output {wider} or keep "
            "the result in range"
        )

    def compute_columns(self, columns: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """A whole training set: columns by input name -> (values, valid)."""
        missing = [i for i in self.inputs if i not in columns]
        if missing:
            raise DefinitionError(
                f"on-demand feature '{self.name}' needs columns {missing}; have {sorted(columns)}"
            )
        by_param = {p: columns[i] for p, i in zip(self.transform.params, self.inputs, strict=True)}
        for k in self._float32_at:  # Float32 request fields: rounded as compute_row rounds
            p = self.transform.params[k]
            by_param[p] = float32_column(by_param[p])
        return self.transform.apply_columns(by_param)


def float32_column(col: Any) -> Any:
    """A numeric column rounded to float32 (one numpy cast; nulls become NaN, which a
    transform reads as null): how a Float32 request field reaches the function. Any other
    column is returned as is (``apply_columns`` names a wrong one)."""
    import numpy as np

    from featurestore.transforms._columns import to_numpy

    arr, valid = to_numpy(col)
    if arr.dtype.kind not in "iuf":
        return col
    with np.errstate(over="ignore"):  # past float32's range: refused before (see offline)
        out = arr.astype(np.float32)
    if valid is not None:
        out[~valid] = np.nan
    return out


def _fits(input_type: str, param_type: str) -> bool:
    ki, kp = _KIND.get(input_type), _KIND[param_type]
    if ki is None:
        return False
    return ki == kp or (kp == "f" and ki in "ib")


def on_demand_feature(
    *, inputs: Sequence[str], output: Field, sources: Sequence[RequestSource] = ()
) -> Callable[[Callable[..., Any]], OnDemandFeature]:
    """Decorator: ``@on_demand_feature(inputs=["amount", "user:amount_mean_7d"], output=...)``."""

    def wrap(func: Callable[..., Any]) -> OnDemandFeature:
        return OnDemandFeature(func, inputs=inputs, output=output, sources=sources)

    return wrap
