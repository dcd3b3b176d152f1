"""Data sources: where a feature view's rows come from (Parquet files or a DuckDB query)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from featurestore.errors import DefinitionError


@dataclass(frozen=True)
class ParquetSource:
    """Parquet file, folder or glob. Paths are relative to the feature repo unless absolute.

    ``timestamp_field`` holds when each fact became true; ``created_timestamp_field``
    (optional) when it was written, which breaks ties between equal event timestamps.
    """

    path: str
    timestamp_field: str = "event_timestamp"
    created_timestamp_field: str | None = None
    name: str = ""
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not self.path:
            raise DefinitionError("ParquetSource needs a path (a file, a folder or a glob)")
        if not self.timestamp_field:
            raise DefinitionError(f"ParquetSource '{self.path}' needs a timestamp_field")
        if not self.name:
            object.__setattr__(self, "name", self.path)

    def relation_sql(self, resolve: Any) -> str:
        """A DuckDB relation for the files; ``resolve`` maps a repo-relative path to absolute."""
        path = resolve(self.path)
        if not any(c in path for c in "*?[") and not path.endswith(".parquet"):
            path = path.rstrip("/") + "/**/*.parquet"
        return f"read_parquet('{_sql_str(path)}', union_by_name=true)"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "parquet",
            "path": self.path,
            "timestamp_field": self.timestamp_field,
            "created_timestamp_field": self.created_timestamp_field,
            "name": self.name,
            "description": self.description,
            "tags": self.tags,
        }


@dataclass(frozen=True)
class DuckDBSource:
    """A SQL query (run by DuckDB, with the repo folder as its file search path) over files."""

    query: str
    timestamp_field: str = "event_timestamp"
    created_timestamp_field: str | None = None
    name: str = ""
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not self.query or not self.query.strip():
            raise DefinitionError("DuckDBSource needs a query")
        if not self.timestamp_field:
            raise DefinitionError("DuckDBSource needs a timestamp_field")
        if not self.name:
            object.__setattr__(self, "name", " ".join(self.query.split())[:60])

    def relation_sql(self, resolve: Any) -> str:
        return f"({self.query.strip().rstrip(';')})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "duckdb",
            "query": self.query,
            "timestamp_field": self.timestamp_field,
            "created_timestamp_field": self.created_timestamp_field,
            "name": self.name,
            "description": self.description,
            "tags": self.tags,
        }


Source = ParquetSource | DuckDBSource


def source_from_dict(d: dict[str, Any]) -> Source:
    d = dict(d)
    kind = d.pop("kind")
    if kind == "parquet":
        return ParquetSource(**d)
    if kind == "duckdb":
        return DuckDBSource(**d)
    raise DefinitionError(f"unknown source kind {kind!r} in the registry")


def _sql_str(s: str) -> str:
    return s.replace("'", "''")
