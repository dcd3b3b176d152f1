"""Checks of a feature view against its source schema, as messages that name the fix."""

from __future__ import annotations

from typing import TYPE_CHECKING

from featurestore.offline._sql import time_us_expr
from featurestore.types import compatible, dtype_from_arrow

if TYPE_CHECKING:
    import pyarrow as pa

    from featurestore.feature_view import FeatureView


def view_problems(view: FeatureView, schema: pa.Schema, label: str) -> list[str]:
    """Every problem of ``view`` against ``schema`` (its source, called ``label`` in messages)."""
    types = {f.name: f.type for f in schema}
    has = _brief(schema.names)
    head = f"feature view '{view.name}'"
    problems: list[str] = []
    src = view.source
    for what, col, attr in (
        ("timestamp", src.timestamp_field, "timestamp_field"),
        ("created timestamp", src.created_timestamp_field, "created_timestamp_field"),
    ):
        if col is None:
            continue
        if col not in types:
            problems.append(
                f"{head}: {what} column '{col}' is not in source '{label}'; set the source's "
                f"{attr} to one of its columns ({has})"
            )
        elif time_us_expr(col, types[col]) is None:
            problems.append(
                f"{head}: {what} column '{col}' in source '{label}' is {types[col]}, not a "
                "timestamp, date or int64 microseconds; convert it in the source"
            )
    for key in view.join_keys:
        if key not in types:
            problems.append(
                f"{head}: join key column '{key}' is not in source '{label}'; add it to the "
                f"source or fix the entity's join_keys (the source has: {has})"
            )
    for field in view.features:
        if field.name not in types:
            problems.append(
                f"{head}: column '{field.name}' is not in source '{label}'; remove the field or "
                f"add the column (the source has: {has})"
            )
            continue
        actual = dtype_from_arrow(types[field.name])
        declared = field.dtype
        ok = actual is not None and (
            compatible(declared, actual)
            or (declared.name == "timestamp" and actual.name in ("int32", "int64"))
        )
        if not ok:
            shown = actual.name if actual is not None else str(types[field.name])
            problems.append(
                f"{head}: column '{field.name}' is {shown} in source '{label}' but declared "
                f"{declared.name}; change the Field dtype or cast the column in the source"
            )
    return problems


def _brief(names: list[str]) -> str:
    if len(names) <= 12:
        return ", ".join(names) or "no columns"
    return ", ".join(names[:10]) + f", ... ({len(names)} in all)"
