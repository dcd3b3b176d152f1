"""OfflineStore: DuckDB (in process) over Parquet files and SQL sources.

One DuckDB database per store, configured from ``offline_store`` in featurestore.yaml: a
memory limit with a temp directory so big joins spill to disk instead of failing, a thread
count, UTC as the session zone, and the repo folder as the file search path so relative
paths inside ``DuckDBSource`` SQL resolve against the repo. Every call works on its own
cursor, so one store may be shared by threads.
"""

from __future__ import annotations

import glob
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featurestore.errors import OfflineStoreError
from featurestore.offline._sql import APPLIED_US, SourcePlan, duck_type, ident, time_us_expr

if TYPE_CHECKING:
    import duckdb
    import polars as pl
    import pyarrow as pa

    from featurestore.config import RepoConfig
    from featurestore.feature_view import FeatureView
    from featurestore.sources import ParquetSource, Source


class OfflineStore:
    """Point-in-time training sets and materialization reads over a repo's sources."""

    def __init__(self, config: RepoConfig) -> None:
        self.config = config
        self._con: duckdb.DuckDBPyConnection | None = None
        self._lock = threading.Lock()

    # -- connection --------------------------------------------------------------------------

    def _connection(self) -> duckdb.DuckDBPyConnection:
        with self._lock:
            if self._con is None:
                self._con = _connect(self.config)
            return self._con

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A fresh DuckDB cursor on this store's database (settings shared)."""
        cur = self._connection().cursor()
        _session_settings(cur, self.config)
        return cur

    def close(self) -> None:
        """Close the DuckDB database; the store reconnects on next use."""
        with self._lock:
            if self._con is not None:
                self._con.close()
                self._con = None

    def __enter__(self) -> OfflineStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- schema and validation ---------------------------------------------------------------

    def relation_sql(self, source: Source, schema: pa.Schema | None = None) -> str:
        """The FROM-able SQL relation of a source (paths resolved against the repo). A Parquet
        folder that holds no file yet is a typed relation of zero rows: ``schema``'s columns,
        or the source's declared ones (see source_schema)."""
        if self.is_empty_folder(source):
            return empty_relation(schema if schema is not None else self.source_schema(source))
        return source.relation_sql(self.config.resolve)

    def source_schema(self, source: Source, *, ranks: bool = False) -> pa.Schema:
        """The Arrow schema of a source without reading its rows (Parquet metadata / LIMIT 0).
        A Parquet folder with no file yet has the columns its StreamSource declares, or none.
        The rank column stream ingest adds to its files (offline/_sql.py ``APPLIED_US``) is
        left out unless ``ranks``: it ranks rows, it is not the source's data."""
        import duckdb

        if self.is_empty_folder(source):
            return declared_source_schema(source)
        folder = self._folder_path(source)
        if folder is not None and not os.path.exists(folder):
            raise OfflineStoreError(
                f"source '{source.name}' is unreadable: folder '{folder}' does not exist; check "
                "the path, or create the folder if offline pushes or stream ingest fill it"
            )
        cur = self.cursor()
        try:
            relation = source.relation_sql(self.config.resolve)
            rel = cur.sql(f"SELECT * FROM {relation} AS __fs_src LIMIT 0")
            schema = fetch_table(rel).schema
            return schema if ranks else without_ranks(schema)
        except duckdb.Error as exc:
            raise OfflineStoreError(
                f"source '{source.name}' is unreadable: {_first_line(exc)}; check the path or query"
            ) from None
        finally:
            cur.close()

    def source_files(self, source: Source) -> list[str] | None:
        """The local Parquet files a Parquet (or stream batch) source reads now, sorted; None
        for a SQL source or a URL."""
        from featurestore.sources import is_single_file

        parquet = _parquet_source(source)
        if parquet is None or "://" in parquet.path:
            return None
        path = self.config.resolve(parquet.path)
        if is_single_file(path):
            return [path] if os.path.isfile(path) else []
        if not any(c in path for c in "*?["):
            path = os.path.join(path, "**", "*.parquet")
        return sorted(f for f in glob.glob(path, recursive=True) if os.path.isfile(f))

    def is_empty_folder(self, source: Source) -> bool:
        """Whether ``source`` is a Parquet folder that exists and holds no Parquet file yet
        (one waiting for offline pushes or stream ingest): it reads as zero rows."""
        folder = self._folder_path(source)
        if folder is None or not os.path.isdir(folder):
            return False
        files = glob.iglob(os.path.join(glob.escape(folder), "**", "*.parquet"), recursive=True)
        return not any(os.path.isfile(f) for f in files)

    def _folder_path(self, source: Source) -> str | None:
        from featurestore.sources import is_single_file

        parquet = _parquet_source(source)
        if parquet is None or "://" in parquet.path or any(c in parquet.path for c in "*?["):
            return None
        path = self.config.resolve(parquet.path)
        return None if is_single_file(path) else path

    def view_schema(self, view: FeatureView, *, ranks: bool = False) -> tuple[pa.Schema, bool]:
        """The schema ``view`` is checked and read against, and whether its source is a folder
        with no file yet (then the schema holds the types the view and its source declare)."""
        if self.is_empty_folder(view.source):
            return declared_view_schema(view), True
        return self.source_schema(view.source, ranks=ranks), False

    def validate_view(self, view: FeatureView) -> list[str]:
        """Problems that would stop ``view`` from being read, each naming the column and fix;
        also columns the source's files disagree on (read from their footers)."""
        from featurestore.offline.validation import view_problems

        try:
            schema, empty = self.view_schema(view)
        except OfflineStoreError as exc:
            return [f"feature view '{view.name}': {exc}"]
        problems = view_problems(view, schema, self.relation_label(view.source))
        return problems or ([] if empty else self.file_problems(view))

    def file_problems(self, view: FeatureView) -> list[str]:
        """Columns ``view`` reads that the files of its Parquet source hold in types that do
        not mix (integers in one, times or strings in another), naming two such files. Cheap:
        Parquet footers only."""
        import pyarrow.parquet as pq

        from featurestore.offline.validation import disagreeing_files

        files = self.source_files(view.source) or []  # glob order: sorted, so messages repeat
        if len(files) < 2:
            return []
        schemas = []
        for f in files:
            try:
                schemas.append((self._shown(f), pq.read_schema(f)))
            except (OSError, ValueError):
                continue  # unreadable (or gone meanwhile): DuckDB's own read names it
        return disagreeing_files(view, schemas, self.relation_label(view.source))

    def _shown(self, path: str) -> str:
        """A file's path as messages give it: relative to the repo when inside it."""
        try:
            return Path(path).relative_to(self.config.repo_path.resolve()).as_posix()
        except ValueError:
            return path

    def relation_label(self, source: Source) -> str:
        """How messages name a source: its path, or its name for SQL sources."""
        return getattr(source, "path", None) or source.name

    def plan(self, view: FeatureView) -> SourcePlan:
        """The SQL plan for reading ``view``; raises OfflineStoreError on an unusable source."""
        from featurestore.offline.validation import view_problems

        try:
            schema, empty = self.view_schema(view, ranks=True)
        except OfflineStoreError as exc:
            raise OfflineStoreError(f"feature view '{view.name}': {exc}") from None
        src = view.source
        applied = APPLIED_US in schema.names
        schema = without_ranks(schema)
        problems = view_problems(view, schema, self.relation_label(src))
        if problems:
            raise OfflineStoreError(problems[0])
        types = {f.name: f.type for f in schema}
        event_us = time_us_expr(src.timestamp_field, types[src.timestamp_field])
        created = src.created_timestamp_field
        created_us = time_us_expr(created, types[created]) if created else None
        assert event_us is not None  # view_problems reports non-time columns
        return SourcePlan(
            view=view,
            relation=empty_relation(schema) if empty else src.relation_sql(self.config.resolve),
            event_us=event_us,
            created_us=created_us,
            event_column=src.timestamp_field,
            source_types=types,
            file_order=not empty and _parquet_source(src) is not None and has_file_order(types),
            applied_rank=applied and not empty,
        )

    # -- reads -------------------------------------------------------------------------------

    def get_historical_features(
        self,
        entity_df: Any,
        requests: list[tuple[FeatureView, list[str]]],
        *,
        full_feature_names: bool = False,
        as_known: bool = False,
        timestamp_column: str = "event_timestamp",
        progress: bool = False,
    ) -> pl.DataFrame:
        """A point-in-time correct training set: the spine plus the requested features.

        Per view and spine row (keys, t): the source row with the largest event timestamp
        <= t (ties: largest created timestamp, then, over Parquet files, the latest push time
        a file's name carries, the folder's own data files lowest, then the last row: the last
        push; offline/_sql.py), used only if t - event_ts <= ttl; else the field default (or
        null).
        ``as_known=True`` only uses rows whose created timestamp is <= t (a null created
        timestamp counts as known at its event time). An empty feature list means all of the
        view's features. Spine rows with a null join key get defaults; naive spine times are
        UTC.
        """
        from featurestore.offline.pit import historical_features

        return historical_features(
            self,
            entity_df,
            requests,
            full_feature_names=full_feature_names,
            as_known=as_known,
            timestamp_column=timestamp_column,
            progress=progress,
        )

    def iter_latest_rows(
        self,
        view: FeatureView,
        start_us: int,
        end_us: int,
        *,
        batch_rows: int = 100_000,
        key_order: str = "keys",
    ) -> Iterator[pa.RecordBatch]:
        """The latest source row per entity key with start_us <= event_ts <= end_us, in key
        order (``key_order="online"``: the online store's key-byte order, see latest_sql)."""
        from featurestore.offline.latest import iter_latest_rows

        return iter_latest_rows(
            self, view, start_us, end_us, batch_rows=batch_rows, key_order=key_order
        )

    def count_latest_rows(self, view: FeatureView, start_us: int, end_us: int) -> int:
        """How many rows ``iter_latest_rows`` yields for the same window."""
        from featurestore.offline.latest import count_latest_rows

        return count_latest_rows(self, view, start_us, end_us)


VANISHED_RETRIES = 3  # runs of a query whose source file vanished mid-read (see fetch_table)


def vanished(exc: BaseException) -> bool:
    """Whether a DuckDB error says a source file disappeared while the query ran (e.g. push
    files merged and deleted by ``featurestore compact``): running the query again re-lists
    the folder and reads the file that replaced them."""
    import duckdb

    text = str(exc)
    return isinstance(exc, duckdb.IOException) and (
        "No such file or directory" in text or "No files found that match" in text
    )


def fetch_table(rel: Any) -> pa.Table:
    """A DuckDB relation's rows as an Arrow table (DuckDB 1.x and 2.x spellings). A source file
    that vanishes mid-read is read again from the folder's new listing, up to VANISHED_RETRIES
    runs in all (a relation re-lists a glob each time it runs)."""
    fetch = getattr(rel, "to_arrow_table", None) or rel.fetch_arrow_table
    for _ in range(VANISHED_RETRIES - 1):
        try:
            return fetch()
        except Exception as exc:
            if not vanished(exc):
                raise
    return fetch()  # the last run: whatever it raises goes to the caller


def fetch_reader(rel: Any, batch_rows: int) -> pa.RecordBatchReader:
    """A streaming Arrow reader over a DuckDB relation's rows."""
    fetch = getattr(rel, "to_arrow_reader", None) or rel.fetch_record_batch
    return fetch(batch_rows)


def _connect(config: RepoConfig) -> duckdb.DuckDBPyConnection:
    import duckdb

    off = config.offline_store
    settings: dict[str, Any] = {
        "memory_limit": off.memory_limit,
        "temp_directory": config.resolve(off.temp_directory),
    }
    if off.threads:
        settings["threads"] = int(off.threads)
    try:
        return duckdb.connect(":memory:", config=settings)
    except duckdb.Error as exc:
        raise OfflineStoreError(
            f"offline_store settings {settings} were refused by DuckDB: {_first_line(exc)}; fix "
            "them in featurestore.yaml"
        ) from None


def _session_settings(cur: duckdb.DuckDBPyConnection, config: RepoConfig) -> None:
    import duckdb

    path = str(config.repo_path).replace("'", "''")
    cur.execute(f"SET file_search_path = '{path}'")
    try:
        cur.execute("SET TimeZone = 'UTC'")
    except duckdb.Error:
        pass  # builds without the ICU extension only know UTC anyway


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def declared_source_schema(source: Source) -> pa.Schema:
    """The columns a source declares without files: a StreamSource's ``schema`` and its time
    columns (UTC microseconds); none for other sources."""
    import pyarrow as pa

    fields = getattr(source, "schema", None)
    if fields is None:
        return pa.schema([])
    cols = {f.name: f.dtype.to_arrow() for f in fields}
    for c in (source.timestamp_field, source.created_timestamp_field):
        if c:
            cols[c] = pa.timestamp("us", tz="UTC")
    return pa.schema(list(cols.items()))


def declared_view_schema(view: FeatureView) -> pa.Schema:
    """What a plain view reads from a source with no file yet: the source's declared columns,
    its time columns (UTC), each join key (its entity's value_type, else int64) and each
    feature as declared."""
    import pyarrow as pa

    src = view.source
    cols = {f.name: f.type for f in declared_source_schema(src)}
    for c in (src.timestamp_field, src.created_timestamp_field):
        if c:
            cols.setdefault(c, pa.timestamp("us", tz="UTC"))
    for entity in view.entities:
        vt = entity.value_type if len(entity.join_keys) == 1 else None
        for k in entity.join_keys:
            cols.setdefault(k, vt.to_arrow() if vt is not None else pa.int64())
    for field in view.features:
        cols.setdefault(field.name, field.dtype.to_arrow())
    return pa.schema(list(cols.items()))


def empty_relation(schema: pa.Schema) -> str:
    """A SQL relation of zero rows with ``schema``'s columns (types from featurestore.types)."""
    from featurestore.types import dtype_from_arrow

    cols = []
    for f in schema:
        dtype = dtype_from_arrow(f.type)
        duck = duck_type(dtype) if dtype is not None else "VARCHAR"
        cols.append(f"CAST(NULL AS {duck}) AS {ident(f.name)}")
    return f"(SELECT {', '.join(cols) or 'NULL AS __fs_none'} WHERE false)"


def without_ranks(schema: pa.Schema) -> pa.Schema:
    """``schema`` without the rank column stream ingest adds (offline/_sql.py ``APPLIED_US``)."""
    i = schema.get_field_index(APPLIED_US)
    return schema if i < 0 else schema.remove(i)


def has_file_order(columns: Any) -> bool:
    """Whether DuckDB's ``filename``, ``file_index`` and ``file_row_number`` of a Parquet read
    (1.3 on) rank rows by push time, file and row (offline/_sql.py): not when the files hold
    columns of those names, which hide them."""
    import duckdb

    try:
        version = tuple(int(p) for p in duckdb.__version__.split(".")[:2])
    except ValueError:
        version = (0, 0)
    return version >= (1, 3) and not {"filename", "file_index", "file_row_number"} & set(columns)


def _parquet_source(source: Source) -> ParquetSource | None:
    """The Parquet source behind ``source`` (a StreamSource's batch source); None for SQL."""
    from featurestore.sources import ParquetSource, StreamSource

    src = source.batch_source if isinstance(source, StreamSource) else source
    return src if isinstance(src, ParquetSource) else None
