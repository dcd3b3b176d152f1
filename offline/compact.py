"""Push files merged: ``featurestore compact`` turns a folder's ``push-*.parquet`` files into one.

Each offline push is one file (offline/push.py), so a client pushing often leaves thousands of
small files that every training set and materialization opens. Compaction writes the union of
a folder's push files, exact duplicate rows dropped, as one new file
``push-<view>-compact-<push time us>-<sequence><random>.parquet`` (atomically: a hidden
temporary file renamed into place), THEN deletes the files it merged. A compacted file is a
push file like any other and takes part in the next compaction.

Order: the point-in-time join and materialize rank rows of one key and event time by created
time, then by rank (offline/_sql.py: a push file's (push time, sequence) from its name; a
stream ingest file's rows each by the time ingest applied it online, from the file's first row
to its last; any other file below all), then file path and row (the last wins). A merged file
has ONE rank, so it may only merge push files that no other ranked file of the folder (a
stream file, a push-named file in a subfolder) sits between or beside in that order: the push
files are cut into runs wherever such a file's ranks (a stream file's whole span) reach
between two neighbouring pushes' ranks, either end included, and each run of two or more is
merged on its own (a push next to a stream file stays as it is). Within a run, the merged file
keeps its inputs' rows in rank order, dropping earlier copies of exact duplicates, so the last
row of every tie stays the last; its name carries the run's largest (push time, sequence),
whatever view its pushes went to, so it ranks after every push it merged, before the next
stream file and before any push that comes after the compaction: a later push or stream file
still wins, and an earlier one still loses, as before the merge.

Why duplicates are harmless here: between the write and the deletes (or after a crash there)
the folder holds some rows twice: the merged file holds every input row, in input order, and
the inputs are still there, in theirs. The merged file ranks with its last input and above
the others of its run (no other file ranks among them); whichever of those two comes last, the
last row of a tie is the one the inputs alone ranked last, so training sets and online values
do not change, and the next compaction removes the copies.

Folders read by a WINDOW view are skipped: a ``count`` (or ``sum``) aggregation counts every
row, so copies in that short window would be counted twice, and rows a client pushed twice on
purpose would lose one count for good. Only the top level of a folder is compacted (where
pushes land); stream ingest's ``stream-...`` files and any other file are never touched,
since ingest resumes from the stream files' names.

Left open: a stream row ranks by when ingest applied it online, which is older than its
file; a file ingest writes AFTER a compaction, with rows applied between two pushes that were
merged, ranks below the merged file (and so below the earlier push's rows), where the separate
pushes would have ranked one below and one above it. Compact after ingest has caught up.

A training set or materialization whose query finds a merged file gone mid-read runs the query
again and reads the new listing (offline/store.py ``fetch_table``, offline/latest.py). Two
compactions of one folder are serialized by a hidden lock file in it.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from featurestore.errors import FeatureNotFoundError, FeatureStoreError, OfflineStoreError

if TYPE_CHECKING:
    import pyarrow as pa

    from featurestore.config import RepoConfig
    from featurestore.feature_view import FeatureView
    from featurestore.registry import RegistryState

LOCK_NAME = ".featurestore-compact.lock"
RANK = tuple[int, int]  # a row's tie rank: (push time us, sequence), see offline/_sql.py


@dataclass(frozen=True)
class CompactResult:
    """What compaction did to one source folder (``skipped``: why it did nothing)."""

    view: str
    folder: str  # the source's path as the definitions give it (a SQL source: its name)
    files_merged: int = 0
    rows_before: int = 0
    rows_after: int = 0
    output: Path | None = None  # the last merged file written
    skipped: str | None = None
    outputs: tuple[Path, ...] = ()  # every merged file written, one per run, in rank order


def compact_pushes(
    config: RepoConfig, state: RegistryState, view_name: str | None = None
) -> list[CompactResult]:
    """Merge the push files of each plain view's source folder (or only ``view_name``'s) into
    one file; one result per folder, folders that cannot be compacted with the reason.
    Raises FeatureNotFoundError for an unknown ``view_name``."""
    if view_name is not None:
        if view_name not in state.feature_views and view_name not in state.on_demand_views:
            known = ", ".join(compactable_views(config, state)) or "none"
            raise FeatureNotFoundError(
                f"no feature view '{view_name}' in the registry; views whose push files can be "
                f"compacted (plain views over a folder): {known}"
            )
        if view_name in state.on_demand_views:
            reason = "an on-demand view, computed at request time from no source folder"
            return [CompactResult(view_name, "-", skipped=reason)]
    from featurestore.offline.push import source_folder

    views = [v for _, v in sorted(state.feature_views.items()) if v.window is None]
    if view_name is not None:  # its folder, through the first view sharing it that takes pushes
        named = state.feature_views[view_name]
        folder = source_folder(named, config)
        views = [
            named,
            *(v for v in views if v is not named and folder and source_folder(v, config) == folder),
        ]
    groups: dict[object, list[FeatureView]] = {}  # views sharing a folder: compacted once
    for view in views:
        folder = source_folder(view, config)
        groups.setdefault(folder if folder is not None else view.name, []).append(view)
    return [_compact_group(group, config, state) for group in groups.values()]


def compactable_views(config: RepoConfig, state: RegistryState) -> list[str]:
    """The plain (not window, not on-demand) views whose source is a local folder, sorted:
    the ones ``compact --view`` can act on."""
    from featurestore.offline.push import parquet_source, source_folder
    from featurestore.sources import is_single_file

    out = []
    for name, view in sorted(state.feature_views.items()):
        parquet, folder = parquet_source(view), source_folder(view, config)
        if view.window is not None or parquet is None or folder is None:
            continue
        if any(c in parquet.path for c in "*?[") or is_single_file(str(folder)):
            continue
        out.append(name)
    return out


def _compact_group(
    views: list[FeatureView], config: RepoConfig, state: RegistryState
) -> CompactResult:
    """Compact the folder the first of ``views`` (one folder) that takes offline pushes writes
    to; skipped when their source is a single file, a window view reads it or none of them
    takes pushes."""
    from featurestore.offline.push import parquet_source, push_target, source_folder
    from featurestore.online.serving.errors import BadRequestError
    from featurestore.sources import is_single_file

    first = views[0]
    parquet = parquet_source(first)
    label = first.source.name if parquet is None else parquet.path
    folder = source_folder(first, config)
    if parquet is not None and folder is not None and is_single_file(str(folder)):
        return CompactResult(
            first.name,
            label,
            skipped=f"source '{label}' is a single file; compaction merges the push files of "
            "a folder source (offline pushes need one too), so there is nothing to merge",
        )
    windows = sorted(
        o.name
        for o in state.feature_views.values()
        if folder is not None and o.window is not None and source_folder(o, config) == folder
    )
    if windows:
        return CompactResult(
            first.name,
            label,
            skipped=f"window view(s) {windows} read this folder; a count there counts every "
            "row, so its push files are left as they are",
        )
    reasons: list[str] = []
    for view in views:
        try:
            target = push_target(view, config, state)
        except BadRequestError as exc:
            reasons.append(str(exc).removeprefix("push: "))
            continue
        return _compact_folder(view.name, label, target.folder)
    return CompactResult(first.name, label, skipped=f"takes no offline pushes: {reasons[0]}")


def _compact_folder(view: str, label: str, folder: Path) -> CompactResult:
    """Merge the push files at the top of ``folder`` when there are at least two."""
    if not folder.is_dir():
        return CompactResult(view, label, skipped="no such folder yet, nothing pushed")
    from filelock import FileLock

    with FileLock(str(folder / LOCK_NAME), timeout=600):
        files = push_files(folder)
        if len(files) < 2:
            return CompactResult(
                view, label, skipped=f"{len(files)} push file(s), nothing to merge"
            )
        runs = [r for r in push_runs(files, ranked_others(folder, files)) if len(r) > 1]
        if not runs:
            return CompactResult(
                view,
                label,
                skipped=f"{len(files)} push file(s), each next to a stream file (or another "
                "ranked file) in tie order, nothing to merge",
            )
        outputs: list[Path] = []
        merged = before = after = 0
        for run in runs:
            try:
                table, rows = merged_table(run)
            except (OSError, ValueError, FeatureStoreError) as exc:
                msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                if outputs:  # an earlier run is merged already: report it, leave the rest
                    break
                return CompactResult(view, label, skipped=f"push files could not be merged: {msg}")
            outputs.append(write_compacted(folder, view, table, run))
            remove_inputs(run)
            merged, before, after = merged + len(run), before + rows, after + table.num_rows
    return CompactResult(view, label, merged, before, after, outputs[-1], outputs=tuple(outputs))


def ranked_others(folder: Path, pushes: list[Path]) -> list[tuple[RANK, RANK]]:
    """The rank spans of every Parquet file under ``folder``, at any depth, that is not one of
    ``pushes`` and ranks above the data loaded into the folder: the stream files (and any
    other push-named file) a merge must not jump over. A file ranks as its name says
    (offline/_sql.py ``file_rank``), a stream file's rows as their ``APPLIED_US`` times say.
    Overlapping spans are joined, so the list is sorted and its spans disjoint."""
    from featurestore.offline._sql import BASE_RANK, file_rank

    skip = {p.name for p in pushes}
    spans = []
    for root, _, names in os.walk(folder):
        top = Path(root) == folder
        for n in names:
            if n.endswith(".parquet") and not (top and n in skip):
                rank = file_rank(n)
                if rank != BASE_RANK:
                    spans.append(_applied_span(Path(root) / n) or (rank, rank))
    joined: list[tuple[RANK, RANK]] = []
    for lo, hi in sorted(spans):
        if joined and lo <= joined[-1][1]:
            joined[-1] = (joined[-1][0], max(hi, joined[-1][1]))
        else:
            joined.append((lo, hi))
    return joined


def _applied_span(path: Path) -> tuple[RANK, RANK] | None:
    """The lowest and highest rank of a stream file's rows, from its ``APPLIED_US`` column's
    footer statistics (the column itself when they are missing); None for a file without it."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from featurestore.offline._sql import APPLIED_US

    try:
        meta = pq.read_metadata(path)
        col = meta.schema.to_arrow_schema().get_field_index(APPLIED_US)
        if col < 0:
            return None
        stats = [meta.row_group(g).column(col).statistics for g in range(meta.num_row_groups)]
        if stats and all(st is not None and st.has_min_max for st in stats):
            lo, hi = min(st.min for st in stats), max(st.max for st in stats)
        else:
            bounds = pc.min_max(pq.read_table(path, columns=[APPLIED_US])[APPLIED_US])
            lo, hi = bounds["min"].as_py(), bounds["max"].as_py()
    except (OSError, ValueError):
        return None  # unreadable or gone meanwhile: ranked by its name
    if lo is None:
        return None
    return (lo, 0), (hi, 0)


def push_runs(files: list[Path], others: list[tuple[RANK, RANK]]) -> list[list[Path]]:
    """``files`` (push files) in rank order, cut wherever a span in ``others`` (sorted and
    disjoint, see ranked_others) reaches between two neighbours, either end included: merging
    a run then moves no row past another file's rows, and a push ranked equal to another
    file's row (a tie its path breaks) stays by itself."""
    import bisect

    from featurestore.offline._sql import file_rank

    ordered = sorted(files, key=lambda f: (file_rank(f.name), str(f)))
    highs = [hi for _, hi in others]
    runs: list[list[Path]] = []
    prev: RANK | None = None
    for f in ordered:
        rank = file_rank(f.name)
        i = bisect.bisect_left(highs, prev) if prev is not None else len(others)
        if prev is None or (i < len(others) and others[i][0] <= rank):
            runs.append([])
        runs[-1].append(f)
        prev = rank
    return runs


def push_files(folder: Path) -> list[Path]:
    """The push files (named as offline/push.py or this module names them, of any release) at
    the top of ``folder``; not hidden temporary files, nor data merely named ``push-...``."""
    from featurestore.offline._sql import BASE_RANK, file_rank

    return sorted(
        folder / n
        for n in os.listdir(folder)
        if n.startswith("push-") and n.endswith(".parquet") and file_rank(n) != BASE_RANK
    )


def merged_table(files: list[Path]) -> tuple[pa.Table, int]:
    """The distinct rows of ``files`` (in this order) read by name, as the offline store reads
    them, in the column types the files hold; and how many rows they hold in all.

    Rows keep their tie order: file by file as ranked by push time (offline/_sql.py), each
    file's rows as stored, and of exact duplicates the last copy is kept. The point-in-time
    join ranks rows of one key and event time that way, the last winning, so the merged file
    ranks them as its inputs did."""
    import duckdb
    import pyarrow as pa
    import pyarrow.parquet as pq

    from featurestore.offline._sql import (
        FILE_INDEX,
        FILE_ROW,
        PUSH_SEQ,
        PUSH_TIME,
        ident,
        ranked_rows,
    )
    from featurestore.offline.store import has_file_order

    schemas = [pq.read_schema(f) for f in files]
    rows_before = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    try:
        schema = pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise OfflineStoreError(f"their column types disagree: {exc}") from None
    if not has_file_order(schema.names):
        raise OfflineStoreError(
            "they hold a column named file_index, file_row_number or filename, which hides "
            "the row order a merged file must keep (or DuckDB is older than 1.3); rename it"
        )
    paths = ", ".join("'" + str(f).replace("'", "''") + "'" for f in files)
    cols = ", ".join(ident(n) for n in schema.names)
    rank = [PUSH_TIME, PUSH_SEQ, FILE_INDEX, FILE_ROW]
    sql = (
        f"SELECT {cols} FROM ({ranked_rows(f'read_parquet([{paths}], union_by_name = true)')}) "
        f"QUALIFY row_number() OVER (PARTITION BY {cols} "
        f"ORDER BY {', '.join(f'{c} DESC' for c in rank)}) = 1 "
        f"ORDER BY {', '.join(rank)}"
    )
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        res = con.sql(sql).to_arrow_table()
    except duckdb.Error as exc:
        raise OfflineStoreError(str(exc)) from None
    finally:
        con.close()
    cols = {f.name: res.column(f.name).cast(f.type) for f in schema}
    return pa.table(cols, schema=schema), rows_before


def write_compacted(folder: Path, view: str, table: pa.Table, files: list[Path]) -> Path:
    """Write ``table`` atomically, named with the largest (push time, sequence) of ``files``:
    ``push-<view>-compact-<us>-<sequence><random>.parquet``, or, when only older releases'
    files (no sequence) were merged, ``push-<view>-compact-<us>-<random>.parquet``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from featurestore._atomic import atomic_write
    from featurestore.offline._sql import BASE_RANK, NO_SEQ, file_rank
    from featurestore.offline.push import _safe

    ranks = [r for r in (file_rank(f.name) for f in files) if r != BASE_RANK]
    us, seq = max(ranks, default=(time.time_ns() // 1000, NO_SEQ))
    random = uuid.uuid4().hex[:8]
    tail = f"{seq:010d}{random}" if seq != NO_SEQ else random
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    path = folder / f"push-{_safe(view)}-compact-{us:016d}-{tail}.parquet"
    try:
        atomic_write(path, buf.getvalue().to_pybytes())
    except OSError as exc:
        raise OfflineStoreError(
            f"compact: feature view '{view}': could not write {path.name} to '{folder}' "
            f"({exc.strerror or exc}); the push files are left as they were, run it again "
            "once the folder is writable"
        ) from None
    return path


def remove_inputs(files: list[Path]) -> None:
    """Delete the merged files (one already gone, e.g. by a crashed run's delete, is fine)."""
    for f in files:
        with contextlib.suppress(FileNotFoundError):
            f.unlink()


__all__ = ["CompactResult", "compact_pushes", "compactable_views"]
