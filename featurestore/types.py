"""Feature value types: a small closed set that maps one-to-one onto Arrow and numpy types."""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa


@dataclass(frozen=True)
class DType:
    """A scalar or list value type; ``name`` is the stable name stored in the registry."""

    name: str
    numpy: str | None = None  # fixed-width numpy dtype, None for variable-width types
    inner: DType | None = None  # element type of a list

    @property
    def fixed_width(self) -> bool:
        """True when a value packs into a fixed number of bytes (numbers, bools, timestamps)."""
        return self.numpy is not None

    @property
    def is_list(self) -> bool:
        return self.inner is not None

    def to_arrow(self) -> pa.DataType:
        import pyarrow as pa

        if self.inner is not None:
            return pa.list_(self.inner.to_arrow())
        return _ARROW[self.name]()

    def __repr__(self) -> str:
        return self.name


Int32 = DType("int32", "<i4")
Int64 = DType("int64", "<i8")
Float32 = DType("float32", "<f4")
Float64 = DType("float64", "<f8")
Bool = DType("bool", "?")
String = DType("string")
Bytes = DType("bytes")
UnixTimestamp = DType("timestamp", "<i8")  # microseconds since the epoch, UTC


def Array(inner: DType) -> DType:
    """A list of numbers, e.g. ``Array(Float32)`` for an embedding."""
    if inner.name not in ("int32", "int64", "float32", "float64", "bool"):
        raise ValueError(f"Array() holds numbers or bools, got {inner.name}")
    return DType(f"array<{inner.name}>", None, inner)


_SCALARS = {t.name: t for t in (Int32, Int64, Float32, Float64, Bool, String, Bytes, UnixTimestamp)}

_ARROW = {
    "int32": lambda: __import__("pyarrow").int32(),
    "int64": lambda: __import__("pyarrow").int64(),
    "float32": lambda: __import__("pyarrow").float32(),
    "float64": lambda: __import__("pyarrow").float64(),
    "bool": lambda: __import__("pyarrow").bool_(),
    "string": lambda: __import__("pyarrow").large_string(),
    "bytes": lambda: __import__("pyarrow").large_binary(),
    "timestamp": lambda: __import__("pyarrow").timestamp("us", tz="UTC"),
}


# what a join key holds, as the registry's join_key_kinds records it, in messages
KEY_KIND_NOUNS = {"int": "integers", "str": "strings"}
KEY_KIND_TYPES = {"int": int, "str": str}  # the Python type of such keys' values
INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}
# the least magnitude a float32 rounds to infinity: a finite number from there on does not fit
# a Float32 (pushes, on-demand outputs and source reads refuse it alike)
FLOAT32_END = 2.0**128 - 2.0**103


def past_float32(v: float) -> bool:
    """Whether the number ``v`` is finite but beyond what a Float32 holds (it would round to
    infinity); an integer past even float64's range counts too."""
    try:
        f = float(v)
    except OverflowError:
        return True
    return abs(f) >= FLOAT32_END and f - f == 0.0  # (x - x is NaN for an infinity or a NaN)


# the types a model can take as an input (converted to float64; bool as 0/1)
NUMERIC_TYPES = frozenset({"int32", "int64", "float32", "float64", "bool"})
# the UnixTimestamp values a Python datetime can hold (years 1 to 9999), in microseconds since
# the epoch: a source value outside reads as null, in training sets and online alike
TIME_MIN_US, TIME_MAX_US = -62_135_596_800_000_000, 253_402_300_799_999_999


def value_fits(v: Any, dtype_name: str) -> bool:
    """Whether the Python value ``v`` (None: a null) can be stored as ``dtype_name``: how pushed
    rows and request data are checked before they reach the codec or a transform."""
    if v is None:
        return True
    t = type(v)  # the plain JSON types first: the numbers.* checks below are slow ABC checks
    if t is float:
        return dtype_name in ("float32", "float64")
    if t is int:
        if dtype_name in INT_RANGES:
            lo, hi = INT_RANGES[dtype_name]
            return lo <= v <= hi
        return dtype_name in ("float32", "float64", "timestamp")
    if t is str:
        return dtype_name in ("string", "bytes", "timestamp")
    if dtype_name in INT_RANGES:  # numbers.*: numpy scalars count too
        lo, hi = INT_RANGES[dtype_name]
        return isinstance(v, numbers.Integral) and not isinstance(v, bool) and lo <= v <= hi
    if dtype_name in ("float32", "float64"):
        return isinstance(v, numbers.Real) and not isinstance(v, bool)
    if dtype_name == "bool":
        return isinstance(v, bool)
    if dtype_name == "string":
        return isinstance(v, str)
    if dtype_name == "bytes":
        return isinstance(v, (bytes, str))
    if dtype_name == "timestamp":
        return (isinstance(v, int) and not isinstance(v, bool)) or isinstance(v, str)
    if dtype_name.startswith("array<"):
        inner = dtype_name[6:-1]
        return isinstance(v, list) and all(x is not None and value_fits(x, inner) for x in v)
    return False


def dtype_from_name(name: str) -> DType:
    """Inverse of ``DType.name``, used when loading the registry."""
    if name in _SCALARS:
        return _SCALARS[name]
    if name.startswith("array<") and name.endswith(">"):
        return Array(dtype_from_name(name[6:-1]))
    raise ValueError(f"unknown type {name!r}; expected one of {sorted(_SCALARS)} or array<...>")


def dtype_from_arrow(t: pa.DataType) -> DType | None:
    """The DType an Arrow column maps to, or None when it has no counterpart."""
    import pyarrow as pa
    import pyarrow.types as pt

    if pt.is_int8(t) or pt.is_int16(t) or pt.is_int32(t) or pt.is_uint8(t) or pt.is_uint16(t):
        return Int32
    if pt.is_int64(t) or pt.is_uint32(t) or pt.is_uint64(t):
        return Int64
    if pt.is_float16(t) or pt.is_float32(t):
        return Float32
    if pt.is_float64(t) or pt.is_decimal(t):
        return Float64
    if pt.is_boolean(t):
        return Bool
    if pt.is_string(t) or pt.is_large_string(t) or pt.is_string_view(t) or pt.is_dictionary(t):
        return String
    if pt.is_binary(t) or pt.is_large_binary(t):
        return Bytes
    if pt.is_timestamp(t) or pt.is_date(t):
        return UnixTimestamp
    if pt.is_list(t) or pt.is_large_list(t) or pt.is_fixed_size_list(t):
        inner = dtype_from_arrow(t.value_type)
        if inner is not None and inner.fixed_width and inner is not UnixTimestamp:
            return Array(inner)
    _ = pa
    return None


def compatible(declared: DType, actual: DType) -> bool:
    """Whether every value of type ``actual`` can be served as ``declared`` without losing
    meaning: ints widen (int32 to int64) and any number may be served as a float (Float32 may
    round it); an int type narrower than the column, or an int over floats, is refused, since
    the cast would fail or lose values at read time."""
    if declared == actual:
        return True
    numeric = {"int32", "int64", "float32", "float64"}
    if declared.name in numeric and actual.name in numeric:
        if declared.name.startswith("float"):
            return True
        return actual.name == "int32"  # declared int64 or int32: only from int32 columns
    if declared.is_list and actual.is_list:
        return compatible(declared.inner, actual.inner)  # type: ignore[arg-type]
    return False


def served_lists(col: Any, dtype: DType) -> Any:
    """An Arrow array column of ``dtype`` with its null elements as training sets and online
    serve them: NaN in a float array, and an int or bool array holding one is null as a whole
    (the online codec and the wire have no null element). Other columns are returned as is."""
    import pyarrow as pa

    if not dtype.is_list or _no_null_element(col):
        return col
    if isinstance(col, pa.ChunkedArray):
        return pa.chunked_array([_served_chunk(c, dtype) for c in col.chunks], col.type)
    return _served_chunk(col, dtype)


def _no_null_element(col: Any) -> bool:
    import pyarrow.compute as pc

    return bool(pc.list_flatten(col).null_count == 0)


def _served_chunk(arr: Any, dtype: DType) -> Any:
    """``served_lists`` of one Arrow list array (kept in its own list type)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    flat = pc.list_flatten(arr)
    if not flat.null_count:
        return arr
    lengths = pc.list_value_length(arr).fill_null(0).to_numpy(zero_copy_only=False)
    offsets = np.zeros(len(arr) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    nulls = arr.is_null().to_numpy(zero_copy_only=False)
    inner = dtype.inner.name  # type: ignore[union-attr]
    if inner in ("float32", "float64"):
        flat = pc.fill_null(flat, pa.scalar(float("nan"), flat.type))
    else:
        holes = flat.is_null().to_numpy(zero_copy_only=False)
        parents = np.repeat(np.arange(len(arr)), lengths)  # flat value -> its row
        nulls = nulls.copy()
        nulls[parents[holes]] = True
    large = pa.types.is_large_list(arr.type)
    cls = pa.LargeListArray if large else pa.ListArray
    list_type = pa.large_list(flat.type) if large else pa.list_(flat.type)
    out = cls.from_arrays(
        pa.array(offsets, pa.int64() if large else pa.int32()),
        flat,
        type=list_type,
        mask=pa.array(nulls, pa.bool_()),
    )
    return out.cast(arr.type) if out.type != arr.type else out
