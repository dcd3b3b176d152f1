"""Training sets written to a Parquet file one spine chunk at a time, which bounds memory.

A spine row's features depend on that row alone (its keys and its time), so joining the spine
``chunk_rows`` rows at a time and appending each chunk's result to one file gives the same
rows, in the same order, with the same values, as joining the whole spine at once.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featurestore._progress import progress_bar
from featurestore.errors import FeatureStoreError
from featurestore.offline.spine import missing_spine, unreadable_spine

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.dataset as ds

    from featurestore.feature_service import FeatureService
    from featurestore.store import FeatureStore

DEFAULT_CHUNK_ROWS = 1_000_000  # as ``featurestore score``


@dataclass(frozen=True)
class WrittenSet:
    """What was written: the training set's rows and columns."""

    rows: int
    columns: int


def write_training_set(
    store: FeatureStore,
    spine: str | os.PathLike[str],
    features: Sequence[str] | FeatureService | str,
    path: Path,
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    full_feature_names: bool = False,
    as_known: bool = False,
    timestamp_column: str = "event_timestamp",
    progress: bool = False,
) -> WrittenSet:
    """Join the Parquet ``spine`` ``chunk_rows`` rows at a time and write every chunk's
    training set to the Parquet file ``path`` (the caller renames it into place)."""
    import pyarrow.parquet as pq

    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise FeatureStoreError(f"chunk_rows must be a whole number >= 1; got {chunk_rows!r}")
    dataset = _spine_dataset(Path(spine))
    writer: Any = None
    schema: pa.Schema | None = None
    rows = 0
    try:
        with progress_bar(_count_rows(dataset, spine), "training set", enabled=progress) as bar:
            for chunk in iter_spine_chunks(dataset, spine, chunk_rows):
                table = store.get_historical_features(
                    chunk,
                    features,
                    full_feature_names=full_feature_names,
                    as_known=as_known,
                    timestamp_column=timestamp_column,
                ).to_arrow()
                if schema is None:
                    schema = table.schema
                    writer = pq.ParquetWriter(path, schema, compression="zstd")
                table = _conform(table, schema, rows)
                writer.write_table(table)
                rows += table.num_rows
                bar.update(chunk.num_rows)
    finally:
        if writer is not None:
            writer.close()
    assert schema is not None  # iter_spine_chunks yields at least one chunk
    return WrittenSet(rows=rows, columns=len(schema))


def iter_spine_chunks(dataset: ds.Dataset, spine: Any, chunk_rows: int) -> Iterator[pa.Table]:
    """The spine's rows in order, ``chunk_rows`` at a time (the last chunk holds the rest;
    an empty spine is one empty chunk, so the file still gets the training set's columns)."""
    import pyarrow as pa

    parts: list[pa.RecordBatch] = []
    held = 0
    yielded = False
    batches = dataset.to_batches(batch_size=chunk_rows, batch_readahead=1, fragment_readahead=1)
    for batch in _readable(batches, spine):
        parts.append(batch)
        held += batch.num_rows
        while held >= chunk_rows:
            table = pa.Table.from_batches(parts, schema=dataset.schema)
            yield table.slice(0, chunk_rows)
            yielded = True
            rest = table.slice(chunk_rows)
            parts, held = rest.to_batches(), rest.num_rows
    if held or not yielded:
        yield pa.Table.from_batches(parts, schema=dataset.schema)


def _spine_dataset(path: Path) -> ds.Dataset:
    """The spine file or folder as ``pyarrow.parquet.read_table`` reads it (hive partition
    columns as dictionaries), refused with the messages a whole-spine read gives."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    if not path.exists():
        raise missing_spine(path)
    partitioning = None if path.is_file() else ds.HivePartitioning.discover(infer_dictionary=True)
    try:
        return ds.dataset(path, format="parquet", partitioning=partitioning)
    except (pa.ArrowInvalid, OSError) as exc:
        raise unreadable_spine(path, exc) from None


def _count_rows(dataset: ds.Dataset, spine: Any) -> int:
    import pyarrow as pa

    try:
        return int(dataset.count_rows())
    except (pa.ArrowInvalid, OSError) as exc:
        raise unreadable_spine(Path(spine), exc) from None


def _readable(batches: Iterator[pa.RecordBatch], spine: Any) -> Iterator[pa.RecordBatch]:
    """``batches``, with a read error turned into the one-line spine message."""
    import pyarrow as pa

    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowInvalid, OSError) as exc:
            raise unreadable_spine(Path(spine), exc) from None
        yield batch


def _conform(table: pa.Table, schema: pa.Schema, start: int) -> pa.Table:
    """``table`` with the first chunk's schema (the file has one); a column typed otherwise
    is cast when that loses nothing, else refused naming it."""
    import pyarrow as pa

    if table.schema == schema:
        return table
    if table.column_names != schema.names:
        raise FeatureStoreError(
            f"the training set of spine rows from {start:,} has columns {table.column_names}, "
            f"not {schema.names} as the first chunk; report this as a bug"
        )
    try:
        return table.cast(schema, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        bad = next(f for f, g in zip(schema, table.schema, strict=True) if f.type != g.type)
        got = table.schema.field(bad.name).type
        raise FeatureStoreError(
            f"column '{bad.name}' of the training set is {got} from spine row {start:,} on but "
            f"{bad.type} before; give the spine column one type in every file"
        ) from None
