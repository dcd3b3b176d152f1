"""Field: one named, typed column of a feature view, with an optional default value."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from featurestore._time import to_us, to_utc
from featurestore.errors import DefinitionError
from featurestore.types import TIME_MAX_US, TIME_MIN_US, DType, dtype_from_name


@dataclass(frozen=True)
class Field:
    """A feature column. ``default`` is served when no row exists (not found or expired)."""

    name: str
    dtype: DType
    default: Any = None
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise DefinitionError("a Field needs a non-empty name")
        if not isinstance(self.dtype, DType):
            raise DefinitionError(
                f"field '{self.name}' has dtype {self.dtype!r}; use a type from "
                "featurestore.types such as Float64, Int64, String or Array(Float32)"
            )
        if isinstance(self.default, datetime) and self.dtype.name == "timestamp":
            object.__setattr__(self, "default", to_us(self.default))  # stored as us, as data
        if self.default is not None:
            _check_default(self)

    @property
    def served_default(self) -> Any:
        """``default`` as online answers give it: a time as a UTC datetime, Float32 values
        rounded to float32 (as a training set fills them), so online and offline serve the
        same number."""
        d = self.default
        if d is None:
            return None
        if self.dtype.name == "timestamp":
            return to_utc(d)
        name = self.dtype.inner.name if self.dtype.is_list and self.dtype.inner else self.dtype.name
        if name != "float32":
            return d
        import numpy as np

        if self.dtype.is_list:
            return [float(x) for x in np.asarray(d, dtype=np.float32)]
        return float(np.float32(d))

    def to_dict(self) -> dict[str, Any]:
        d = self.default
        return {
            "name": self.name,
            "dtype": self.dtype.name,
            "default": {"base64": base64.b64encode(d).decode()} if isinstance(d, bytes) else d,
            "description": self.description,
            "tags": self.tags,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Field:
        default = d.get("default")
        if isinstance(default, dict) and "base64" in default:  # a Bytes default (JSON has none)
            default = base64.b64decode(default["base64"])
        return cls(
            name=d["name"],
            dtype=dtype_from_name(d["dtype"]),
            default=default,
            description=d.get("description", ""),
            tags=d.get("tags") or {},
        )


def _check_default(f: Field) -> None:
    ok: bool
    d = f.default
    name = f.dtype.name
    if f.dtype.is_list:
        inner = f.dtype.inner.name if f.dtype.inner is not None else "float64"
        kinds: tuple[type, ...] = {"bool": (bool,), "int32": (int,), "int64": (int,)}.get(
            inner, (int, float)
        )
        ok = isinstance(d, (list, tuple)) and all(
            isinstance(x, kinds) and (inner == "bool") == isinstance(x, bool) for x in d
        )
    elif name in ("int32", "int64", "timestamp"):
        ok = isinstance(d, int) and not isinstance(d, bool)
    elif name in ("float32", "float64"):
        ok = isinstance(d, (int, float)) and not isinstance(d, bool)
    elif name == "bool":
        ok = isinstance(d, bool)
    elif name == "string":
        ok = isinstance(d, str)
    else:
        ok = isinstance(d, bytes)
    if ok and name == "timestamp" and not TIME_MIN_US <= d <= TIME_MAX_US:
        raise DefinitionError(
            f"field '{f.name}' has the default {d} microseconds since the epoch, outside the "
            "years 1-9999 (nanoseconds?); give a time in that range"
        )
    if not ok:
        what = type(d).__name__
        if f.dtype.is_list and isinstance(d, (list, tuple)):
            what = "a list of " + ", ".join(sorted({type(x).__name__ for x in d}))
        raise DefinitionError(
            f"field '{f.name}' is {name} but its default {d!r} is {what}; "
            f"give a default of type {name}"
        )
