"""Pushed rows appended to a feature view's source: one Parquet file per push, so training sets
and later materializations see what was pushed (``push(..., to="offline")``).

A push lands in the source's folder (a ``ParquetSource`` folder, or a ``StreamSource``'s batch
folder) as ``push-<view>-t-<push time us, 16 digits>-<sequence, 10 digits><random>.parquet``,
written to a hidden temporary file and renamed into place, so a training set read at any
moment sees the push whole or not at all. Rows of one key at one event time are ranked by the
(push time, sequence) the name carries, whatever the view (offline/_sql.py ``file_rank``):
above the folder's own data files, above older releases' ``push-<view>-<us>-`` names and
compacted files of earlier pushes (offline/compact.py), and a later push above an earlier one
(the process's write sequence orders pushes in one microsecond), so the later push wins
offline as online. The name never matches the stream sink's ``stream-...`` files, whose names
carry the stream position ingest resumes from. Columns carry the source's names: join keys, features,
the event time as ``timestamp_field`` and, when the source has a ``created_timestamp_field``,
the push time there, so a later push of the same key and event time wins the point-in-time
tie. Column types are those the source's files already hold (read from one file's footer), so
DuckDB's union_by_name read and the point-in-time join take the new file like the old ones;
times keep their zone (or lack of one) but never go coarser than the pushed microseconds, so
a folder of millisecond files takes pushes without losing digits (the reader merges units).
"""

from __future__ import annotations

import itertools
import os
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from featurestore.errors import OfflineStoreError
from featurestore.online.serving.errors import BadRequestError
from featurestore.sources import is_single_file

if TYPE_CHECKING:
    import pyarrow as pa

    from featurestore.config import RepoConfig
    from featurestore.feature_view import FeatureView
    from featurestore.registry import RegistryState
    from featurestore.sources import ParquetSource

PUSH_MODES = ("online", "offline", "online_and_offline")


class OfflineWriteError(OfflineStoreError):
    """A pushed file could not be written to the source's folder (the server's fault: 500)."""


@dataclass(frozen=True)
class PushTarget:
    """Where and under which column names a view's pushed rows are written."""

    view: FeatureView
    folder: Path
    timestamp_field: str
    created_timestamp_field: str | None


def push_mode(to: object) -> tuple[bool, bool]:
    """(offline, online) for a push's ``to``; BadRequestError naming ``to`` for anything else."""
    if to == "online":
        return False, True
    if to == "offline":
        return True, False
    if to == "online_and_offline":
        return True, True
    raise BadRequestError(
        f"push: to is {to!r}; give one of {', '.join(repr(m) for m in PUSH_MODES)}", field="to"
    )


def push_target(view: FeatureView, config: RepoConfig, state: RegistryState) -> PushTarget:
    """The folder offline pushes to ``view`` go to; BadRequestError when its source cannot take
    them (SQL, a single file, a glob or a URL; features that are not plain source columns; a
    folder shared with a view reading columns the push does not carry)."""
    head = f"push: feature view '{view.name}'"
    if view.window is not None:
        raise BadRequestError(
            f"{head} computes its features {list(view.feature_names)} from source columns "
            "(aggregations and derived columns); offline pushes take plain feature views only",
            field="feature_view",
        )
    src = view.source
    parquet = parquet_source(view)
    if parquet is None:
        raise BadRequestError(
            f"{head} reads source '{src.name}', a SQL query; offline pushes append Parquet files "
            "to a folder, so point the view's source at a folder (ParquetSource('data/folder'))",
            field="feature_view",
        )
    path = parquet.path
    why = ""
    if "://" in path:
        why = "a URL, where a file cannot be renamed into place"
    elif is_single_file(config.resolve(path)):
        why = "a single file"
    elif any(c in path for c in "*?["):
        why = "a glob"
    folder = Path(config.resolve(path))
    if not why and folder.exists() and not folder.is_dir():
        why = "a file, not a folder"
    if why:
        raise BadRequestError(
            f"{head} reads source '{path}', {why}; offline pushes add one Parquet file per push "
            "to the source's folder, so point the source at a folder of Parquet files",
            field="feature_view",
        )
    carried = {*view.join_keys, *view.feature_names, src.timestamp_field}
    if src.created_timestamp_field:
        carried.add(src.created_timestamp_field)
    for other in state.feature_views.values():
        if other.name == view.name or source_folder(other, config) != folder:
            continue
        cols = other.window.source_columns() if other.window else other.feature_names
        lacking = [c for c in (*other.join_keys, *cols) if c not in carried]
        if lacking:
            raise BadRequestError(
                f"{head} shares source folder '{path}' with feature view '{other.name}', which "
                f"reads {lacking}; rows pushed to '{view.name}' would give it nulls there, so "
                "give each view its own folder",
                field="feature_view",
            )
    return PushTarget(view, folder, src.timestamp_field, src.created_timestamp_field)


def write_offline_push(target: PushTarget, table: pa.Table, *, now_us: int) -> Path:
    """Write the validated push ``table`` (``online.serving._requests.push_table``'s columns:
    join keys, features, ``__event_ts``/``__created_ts`` in us) as one new Parquet file in the
    target's folder, atomically; returns its path. Raises OfflineWriteError when the folder is
    not writable and BadRequestError when a value does not fit the files' column type."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from featurestore._atomic import atomic_write
    from featurestore.online.codec import CREATED_TS, EVENT_TS

    view = target.view
    existing = _existing_types(target.folder)
    ts_type = pa.timestamp("us", tz="UTC")
    names: dict[str, str] = {k: k for k in view.join_keys}
    names.update({f: f for f in view.feature_names})
    names[EVENT_TS] = target.timestamp_field
    if target.created_timestamp_field:
        names[CREATED_TS] = target.created_timestamp_field
    cols: dict[str, pa.Array] = {}
    for src_name, col in names.items():
        arr = table.column(src_name).combine_chunks()
        if src_name in (EVENT_TS, CREATED_TS):
            arr = arr.cast(ts_type)  # int64 us -> a UTC time, as the quickstart's files hold
        want = _file_type(arr.type, existing.get(col))
        if want is not None and not arr.type.equals(want):
            try:
                arr = arr.cast(want)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise BadRequestError(
                    f"push: a value of rows.{col} does not fit column '{col}' of the source of "
                    f"feature view '{view.name}' ({want}): {exc}",
                    field=f"rows.{col}",
                ) from None
        cols[col] = arr
    buf = pa.BufferOutputStream()
    pq.write_table(pa.table(cols), buf)
    name = push_file_name(view.name, now_us)
    path = target.folder / name
    try:
        target.folder.mkdir(parents=True, exist_ok=True)
        atomic_write(path, buf.getvalue().to_pybytes())
    except OSError as exc:
        raise OfflineWriteError(
            f"push: feature view '{view.name}': could not write {name} to '{target.folder}' "
            f"({exc.strerror or exc}); let the server write to the source's folder"
        ) from None
    return path


_SEQ = itertools.count()
_SEQ_LOCK = threading.Lock()


def push_file_name(view: str, now_us: int) -> str:
    """A new push file's name for ``view`` at push time ``now_us``: ranked above every name
    this process made for an earlier or equal push time, to any view (see the module doc)."""
    with _SEQ_LOCK:
        seq = next(_SEQ)
    return f"push-{_safe(view)}-t-{now_us:016d}-{seq:010d}{uuid.uuid4().hex[:8]}.parquet"


def _file_type(pushed: pa.DataType, existing: pa.DataType | None) -> pa.DataType | None:
    """The type a pushed column is written as: the existing files' type, except that a time
    keeps its own unit when the files' is coarser (a push of microsecond times into a folder of
    millisecond files writes microseconds: the reader merges the units, and a cast down would
    lose digits). The files' zone, or lack of one, is kept: naive and zoned times do not merge."""
    import pyarrow as pa
    import pyarrow.types as pt

    if existing is None or not (pt.is_timestamp(pushed) and pt.is_timestamp(existing)):
        return existing
    unit = min(pushed.unit, existing.unit, key=_UNITS.index)
    return pa.timestamp(unit, tz=existing.tz)


_UNITS = ("ns", "us", "ms", "s")  # finest first


def _existing_types(folder: Path) -> dict[str, pa.DataType]:
    """Column types of one Parquet file of the folder, from its footer (none yet: empty, so the
    declared types are used). One file, not all: the cost of a push must not grow with the
    files before it, and any file's types union with the others' as DuckDB reads them."""
    import pyarrow.parquet as pq

    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.endswith(".parquet") and not name.startswith("."):
                try:
                    schema = pq.read_schema(os.path.join(root, name))
                except (OSError, ValueError):
                    continue  # unreadable: try another
                return {f.name: f.type for f in schema}
    return {}


def parquet_source(view: FeatureView) -> ParquetSource | None:
    """The Parquet source behind ``view``: its own, or its StreamSource's batch source; None
    for a SQL source."""
    from featurestore.sources import ParquetSource, StreamSource

    src = view.source
    parquet = src.batch_source if isinstance(src, StreamSource) else src
    return parquet if isinstance(parquet, ParquetSource) else None


def source_folder(view: FeatureView, config: RepoConfig) -> Path | None:
    """The local path ``view``'s Parquet source names (None: a SQL source or a URL)."""
    parquet = parquet_source(view)
    if parquet is None or "://" in parquet.path:
        return None
    return Path(config.resolve(parquet.path))


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "_." else "_" for c in name)


__all__ = [
    "PUSH_MODES",
    "OfflineWriteError",
    "PushTarget",
    "parquet_source",
    "push_file_name",
    "push_mode",
    "push_target",
    "source_folder",
    "write_offline_push",
]
