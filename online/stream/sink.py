"""Streamed events appended to the offline store: one Parquet file per batch in the batch folder.

Files are named ``stream-<source>-<first id>-<last id>.parquet`` and appear by an atomic rename,
so a reader sees a batch whole or not at all. Each row also holds the time ingest applied it
online (the ``__fs_applied_us`` column): training sets rank a row of a tie by it, so the row
written online last wins offline too, whenever in the flush it came. The newest
last id among them is how far the offline side has got: after a restart, entries up to it are
not written again, so each event is in the offline store exactly once however often it is
delivered.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from featurestore._atomic import atomic_write
from featurestore.offline._sql import APPLIED_US
from featurestore.online.stream.events import Event, EventSchema, columns_of

if TYPE_CHECKING:
    from featurestore.config import RepoConfig
    from featurestore.sources import StreamSource

_SAFE = re.compile(r"[^A-Za-z0-9_.]+")


class OfflineSink:
    """Appends a source's valid events to its batch folder, once each."""

    def __init__(self, config: RepoConfig, schema: EventSchema) -> None:
        self.schema = schema
        self.folder = Path(config.resolve(schema.source.batch_source.path))
        self.tag = _tag(schema.source)
        self.position = self._scan()

    def _scan(self) -> tuple[int, int]:
        """The newest entry id already in a file of this source (0-0 when none)."""
        return _newest_id(self.folder, self.tag)

    def write(self, events: list[Event]) -> int:
        """Write the events newer than the position as one file; returns how many."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        new = []
        last = self.position
        for e in events:  # stream order; a redelivered entry is not written twice
            if e.id > last:
                new.append(e)
                last = e.id
        if not new:
            return 0
        names = list(self.schema.columns)
        columns = columns_of(new, names, self.schema.arrow)
        columns[APPLIED_US] = pa.array([e.applied_us for e in new], pa.int64())
        table = pa.table(columns)
        first, last = new[0].id, new[-1].id
        name = f"stream-{self.tag}-{first[0]}_{first[1]}-{last[0]}_{last[1]}.parquet"
        buf = pa.BufferOutputStream()
        pq.write_table(table, buf)
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write(self.folder / name, buf.getvalue().to_pybytes())
        self.position = last
        return len(new)


def offline_position(config: RepoConfig, source: StreamSource) -> tuple[int, int]:
    """How far ingest has written ``source``'s events to its batch folder: the newest entry id
    in its files (0-0 when none). Every valid event of an entry up to it is in a file."""
    return _newest_id(Path(config.resolve(source.batch_source.path)), _tag(source))


def _tag(source: StreamSource) -> str:
    return _SAFE.sub("_", source.name)


def _newest_id(folder: Path, tag: str) -> tuple[int, int]:
    pattern = re.compile(rf"stream-{re.escape(tag)}-\d+_\d+-(\d+)_(\d+)\.parquet")
    best = (0, 0)
    if folder.is_dir():
        for name in os.listdir(folder):
            m = pattern.fullmatch(name)
            if m:
                best = max(best, (int(m.group(1)), int(m.group(2))))
    return best
