"""Entity rows as the Python API takes them, in the two shapes the lookup reads.

``get_online_features`` and ``predict`` take a dict of columns, a list of row dicts or a
DataFrame (polars, pandas) or Arrow table; a column may be a list, tuple, numpy array or
Series. Anything else fails here with a message naming the column, not deep in the lookup.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from featurestore.errors import EntityDataError
from featurestore.online.keys import as_pylist


def entity_input(rows: Any) -> dict[str, list[Any]] | list[Any] | tuple[Any, ...]:
    """``rows`` as a dict of list columns or a sequence of row dicts."""
    if isinstance(rows, Mapping):
        out: dict[str, list[Any]] = {}
        for name, col in rows.items():
            if isinstance(col, (str, bytes)) or not hasattr(col, "__len__"):
                raise EntityDataError(
                    f"entity column '{name}' must hold one value per entity row (a list, "
                    f"array or Series), got {type(col).__name__} {col!r}"
                )
            out[name] = col if type(col) is list else as_pylist(col)
        return out
    if isinstance(rows, (list, tuple)):
        return rows
    names = getattr(rows, "column_names", None)  # an Arrow table
    if names is not None:
        return {str(n): as_pylist(rows.column(n)) for n in names}
    names = getattr(rows, "columns", None)  # a polars or pandas DataFrame
    if names is not None and hasattr(rows, "__getitem__"):
        return {str(n): as_pylist(rows[n]) for n in names}
    raise EntityDataError(
        "entity rows must be a dict of columns, a list of row dicts, a DataFrame or an Arrow "
        f"table; got {type(rows).__name__}"
    )
