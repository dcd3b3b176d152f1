"""Checks of a feature view against its source schema, as messages that name the fix."""

from __future__ import annotations

from typing import TYPE_CHECKING

from featurestore.offline._sql import ident, time_us_expr
from featurestore.types import FLOAT32_END, KEY_KIND_NOUNS, compatible, dtype_from_arrow

if TYPE_CHECKING:
    from collections.abc import Iterable

    import duckdb
    import pyarrow as pa

    from featurestore.entity import Entity
    from featurestore.feature_view import FeatureView
    from featurestore.offline._sql import SourcePlan
    from featurestore.types import DType


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
        if ok and _unsigned64(types[field.name]) and _inner(declared).name == "int64":
            problems.append(
                f"{head}: column '{field.name}' is {types[field.name]} in source '{label}' but "
                f"declared {declared.name}, which cannot hold uint64 values from 2**63 up; cast "
                "the column to int64 in the source, or declare a float type (which rounds "
                "integers above 2**53)"
            )
            continue
        if not ok:
            shown = actual.name if actual is not None else str(types[field.name])
            why = ""
            if actual is not None and _narrows(declared, actual):
                why = f", which cannot hold every {actual.name} value"
            problems.append(
                f"{head}: column '{field.name}' is {shown} in source '{label}' but declared "
                f"{declared.name}{why}; change the Field dtype or cast the column in the source"
            )
    return problems


def key_kind(d: DType | None) -> str | None:
    """How keys of a join-key column of type ``d`` are written: "int", "str" or None (a type
    join keys cannot have)."""
    name = d.name if d is not None else None
    return "int" if name in ("int32", "int64") else "str" if name == "string" else None


def join_key_kinds(
    sources: Iterable[tuple[FeatureView, pa.Schema, str]], entities: Iterable[Entity]
) -> tuple[dict[str, str], list[str]]:
    """Whether each join key holds integers or strings, read from its columns in the views'
    sources (view, schema, label) and the entities' declared value types; a problem for each
    column of another type, each key whose sources disagree and each entity that disagrees
    with its sources. Requests are checked against these: a string never finds a key written
    from an integer column."""
    seen: dict[str, tuple[str, str]] = {}  # join key -> (kind, what said so)
    problems: list[str] = []
    for view, schema, label in sources:
        types = {f.name: f.type for f in schema}
        for key in view.join_keys:
            if key not in types:
                continue  # the view's own checks report it
            kind = key_kind(dtype_from_arrow(types[key]))
            if kind is None:
                problems.append(
                    f"feature view '{view.name}': join key column '{key}' is {types[key]} in "
                    f"source '{label}'; join keys must be integer or string columns, so cast it "
                    "in the source"
                )
                continue
            where = f"the source of feature view '{view.name}'"
            known = seen.setdefault(key, (kind, where))
            if known[0] != kind:
                problems.append(
                    f"join key '{key}' holds {KEY_KIND_NOUNS[known[0]]} in {known[1]} but "
                    f"{KEY_KIND_NOUNS[kind]} in {where} ({label}); keys of one never match the "
                    "other, so give both columns one type"
                )
    for entity in entities:
        if entity.value_type is None or len(entity.join_keys) != 1:
            continue
        key, name = entity.join_keys[0], entity.value_type.name
        kind = key_kind(entity.value_type)
        if kind is None:
            problems.append(
                f"entity '{entity.name}' declares value_type {name}; join keys are integers "
                "(Int64) or strings (String)"
            )
            continue
        known = seen.setdefault(key, (kind, f"entity '{entity.name}'"))
        if known[0] != kind:
            problems.append(
                f"entity '{entity.name}' declares value_type {name} but its join key '{key}' "
                f"holds {KEY_KIND_NOUNS[known[0]]} in {known[1]}; fix the value_type or the column"
            )
    return {key: kind for key, (kind, _) in seen.items()}, problems


def disagreeing_files(
    view: FeatureView, files: Iterable[tuple[str, pa.Schema]], label: str
) -> list[str]:
    """A problem for each column ``view`` reads whose types in the source's ``files`` (name,
    footer schema) do not mix when DuckDB unions them: integers against times or strings,
    say. Numbers of any width mix, and so do times of any unit or zone and dates."""
    src = view.source
    cols = [*view.join_keys, src.timestamp_field]
    if src.created_timestamp_field:
        cols.append(src.created_timestamp_field)
    cols += view.window.source_columns() if view.window is not None else view.feature_names
    first: dict[str, tuple[str, str, pa.DataType]] = {}  # column -> (family, file, type)
    problems: dict[str, str] = {}  # column -> its problem (the first pair of files found)
    for name, schema in files:
        for f in schema:
            if f.name not in cols or f.name in problems:
                continue
            known = first.setdefault(f.name, (_family(f.type), name, f.type))
            if known[0] != _family(f.type):
                problems[f.name] = (
                    f"feature view '{view.name}': column '{f.name}' of source '{label}' is "
                    f"{known[2]} in file '{known[1]}' but {f.type} in file '{name}'; rewrite "
                    "the files so it has one type"
                )
    return list(problems.values())


def _family(t: pa.DataType) -> str:
    """Which Arrow types DuckDB's union_by_name read mixes: one family per kind of value."""
    import pyarrow.types as pt

    if pt.is_integer(t) or pt.is_floating(t) or pt.is_decimal(t):
        return "number"
    if pt.is_timestamp(t) or pt.is_date(t):
        return "time"
    if pt.is_dictionary(t):
        return _family(t.value_type)
    if pt.is_string(t) or pt.is_large_string(t) or pt.is_string_view(t):
        return "string"
    if pt.is_binary(t) or pt.is_large_binary(t):
        return "bytes"
    if pt.is_list(t) or pt.is_large_list(t) or pt.is_fixed_size_list(t):
        return "list of " + _family(t.value_type)
    return str(t)


def _narrows(declared: DType, actual: DType) -> bool:
    """Whether ``declared`` is an int type too small for the int column type ``actual``."""
    while declared.inner is not None and actual.inner is not None:
        declared, actual = declared.inner, actual.inner
    return declared.name == "int32" and actual.name == "int64"


def value_problem(
    cur: duckdb.DuckDBPyConnection, plan: SourcePlan, features: list[str], label: str
) -> str | None:
    """Why reading ``features`` of ``plan``'s view failed, when a source value no declared type
    can hold is the cause: one line naming the view, the column, an entity holding such a value
    and the value; None when none is found. Run only after a read failed: it scans the source.
    A finite number a Float32 (or Float32 array) feature would store as infinity is such a
    value: refused as a push refuses it, rather than read as infinity or null."""
    import duckdb

    view = plan.view
    keys = ", ".join(f"__fs_src.{ident(k)}" for k in plan.keys)
    for name in features:
        field = view.field(name)
        if _inner(field.dtype).name != "float32" or name not in plan.source_types:
            continue
        col = f"__fs_src.{ident(name)}"
        rows_of = plan.relation
        if field.dtype.is_list:  # one row per element, beside its row's keys
            bare = ", ".join(ident(k) for k in plan.keys)
            elements = f"unnest({col}) AS {ident(name)}"
            rows_of = f"(SELECT {bare}, {elements} FROM {plan.relation} AS __fs_src)"
        x = f"CAST({col} AS DOUBLE)"
        sql = (
            f"SELECT {keys}, {x} FROM {rows_of} AS __fs_src "
            f"WHERE isfinite({x}) AND abs({x}) >= {FLOAT32_END!r} LIMIT 1"
        )
        try:
            rows = cur.sql(sql).fetchall()
        except duckdb.Error:
            return None  # the source itself is unreadable: the caller's message says so
        if not rows:
            continue
        row = rows[0]
        entity = ", ".join(f"{k}={v!r}" for k, v in zip(plan.keys, row[:-1], strict=True))
        return (
            f"feature view '{view.name}': column '{name}' of source '{label}' holds "
            f"{row[-1]!r} (entity {entity}), which the {field.dtype.name} feature would store "
            "as infinity (float32 ends at 3.4028235e38); declare it Float64 or fix the value "
            "in the source"
        )
    return None


def _inner(d: DType) -> DType:
    """A list type's element type; any other type itself."""
    while d.inner is not None:
        d = d.inner
    return d


def _unsigned64(t: pa.DataType) -> bool:
    """Whether an Arrow type is uint64, or a list of it."""
    import pyarrow.types as pt

    while pt.is_list(t) or pt.is_large_list(t) or pt.is_fixed_size_list(t):
        t = t.value_type
    return bool(pt.is_uint64(t))


def _brief(names: list[str]) -> str:
    if len(names) <= 12:
        return ", ".join(names) or "no columns"
    return ", ".join(names[:10]) + f", ... ({len(names)} in all)"
