"""Column adapters: numpy, Arrow and polars columns to (values, validity), copying little."""

from __future__ import annotations

from typing import Any

import numpy as np


def to_numpy(col: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """A column as (values, valid) where ``valid`` is None when the column has no nulls.

    Null slots of integer or bool columns hold 0 / False in ``values``; float nulls are NaN.
    """
    mod = type(col).__module__
    if mod.startswith("polars"):
        col = col.to_arrow()
        mod = type(col).__module__
    if mod.startswith("pyarrow"):
        import pyarrow as pa
        import pyarrow.compute as pc

        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        if pa.types.is_timestamp(col.type):
            col = col.cast(pa.timestamp("us", tz=col.type.tz)).cast(pa.int64())
        if pa.types.is_dictionary(col.type):
            col = col.dictionary_decode()
        if col.null_count:
            valid = np.asarray(pc.is_valid(col))
            if pa.types.is_floating(col.type):
                return col.to_numpy(zero_copy_only=False), valid
            filled = pc.fill_null(col, False if pa.types.is_boolean(col.type) else 0)
            return filled.to_numpy(zero_copy_only=False), valid
        return col.to_numpy(zero_copy_only=False), None
    arr = np.asarray(col)
    if arr.dtype == object:
        arr = np.asarray([np.nan if v is None else v for v in arr], dtype=np.float64)
    if arr.dtype.kind == "M":
        arr = arr.astype("datetime64[us]").view(np.int64)
    return arr, None
