"""Data sources: where a feature view's rows come from (Parquet files, a DuckDB query, or a
stream of events that also lands in Parquet)."""

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
        """A DuckDB relation for the files; ``resolve`` maps a repo-relative path to absolute.
        What is on disk decides (see is_single_file): a file whatever its suffix, a folder even
        if named ``x.parquet``; a glob is passed to DuckDB as it is."""
        path = resolve(self.path)
        if not is_single_file(path) and not any(c in path for c in "*?["):
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


@dataclass(frozen=True)
class StreamSource:
    """Events on a Redis stream (``stream``; default: ``name``), ingested by ``featurestore
    ingest`` into the online store and appended to ``batch_source`` (a Parquet folder).

    Training sets and materialize read ``batch_source``, so they see the streamed events and
    the online value at t equals the training value at t. ``schema`` gives the event columns'
    types; without it they are taken from the batch source's files.
    """

    name: str
    batch_source: ParquetSource
    stream: str = ""
    schema: tuple[Any, ...] | None = None
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not self.name:
            raise DefinitionError("StreamSource needs a name")
        if not isinstance(self.batch_source, ParquetSource):
            raise DefinitionError(
                f"stream source '{self.name}': batch_source must be a ParquetSource naming a "
                "folder (streamed events are appended there as Parquet files)"
            )
        path = self.batch_source.path
        if path.endswith(".parquet") or any(c in path for c in "*?["):
            raise DefinitionError(
                f"stream source '{self.name}': batch_source path '{path}' is a file or a glob; "
                "give a folder, where ingest appends the streamed events as Parquet files"
            )
        if not self.stream:
            object.__setattr__(self, "stream", self.name)
        if self.schema is not None:
            object.__setattr__(self, "schema", tuple(self.schema))

    @property
    def timestamp_field(self) -> str:
        return self.batch_source.timestamp_field

    @property
    def created_timestamp_field(self) -> str | None:
        return self.batch_source.created_timestamp_field

    def relation_sql(self, resolve: Any) -> str:
        """The batch source's relation: the files loaded before plus those ingest appended."""
        return self.batch_source.relation_sql(resolve)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "stream",
            "name": self.name,
            "stream": self.stream,
            "batch_source": self.batch_source.to_dict(),
            "schema": None if self.schema is None else [f.to_dict() for f in self.schema],
            "description": self.description,
            "tags": self.tags,
        }


Source = ParquetSource | DuckDBSource | StreamSource


def source_from_dict(d: dict[str, Any]) -> Source:
    d = dict(d)
    kind = d.pop("kind")
    if kind == "parquet":
        return ParquetSource(**d)
    if kind == "duckdb":
        return DuckDBSource(**d)
    if kind == "stream":
        from featurestore.field import Field

        batch = source_from_dict(d.pop("batch_source"))
        schema = d.pop("schema", None)
        fields = None if schema is None else tuple(Field.from_dict(f) for f in schema)
        return StreamSource(batch_source=batch, schema=fields, **d)  # type: ignore[arg-type]
    raise DefinitionError(f"unknown source kind {kind!r} in the registry")


def is_single_file(path: str) -> bool:
    """Whether a resolved Parquet source path names one file: what is on disk decides (a file
    whatever its suffix, a folder even if named ``x.parquet``); else a name ending in
    ``.parquet`` (a URL, or a file not written yet)."""
    import os

    if "://" not in path and os.path.exists(path):
        return os.path.isfile(path)
    return path.endswith(".parquet")


def _sql_str(s: str) -> str:
    return s.replace("'", "''")
