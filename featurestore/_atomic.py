"""All-or-nothing file writes, for the files other processes read while they change."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def _umask() -> int:
    """The process's umask (read by setting it back at once: there is no other portable way)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _umask()  # read once, at import (umask calls are not thread-safe)


def atomic_write(path: Path, data: bytes, *, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` so a reader sees the old file or the new one, never half:
    a temporary file beside it, fsynced, then renamed over it. ``mode``: its permissions;
    without one, what ``open`` would give (0666 less the umask), not the temporary file's
    owner-only 0600, so other users and services can read the store's files as before."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode if mode is not None else 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def file_above(path: Path) -> Path | None:
    """The file that stops ``path`` from being created (its nearest existing ancestor, when
    that is a file and not a folder), or None: the missing folders can be made."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    return None if parent.is_dir() else parent


PARQUET_SUFFIXES = (".parquet", ".pq")


def check_parquet_out(out: str | os.PathLike[str], option: str = "--out") -> None:
    """Refuse a path that a Parquet file is to be written to when it is a folder or its suffix
    is not .parquet/.pq (``x.csv`` would hold Parquet under a CSV name): FeatureStoreError,
    one line naming ``option``."""
    from featurestore.errors import FeatureStoreError

    path = Path(out)
    if path.is_dir():
        raise FeatureStoreError(
            f"{option} '{out}' is a folder; give the path of a Parquet file (name.parquet)"
        )
    suffix = path.suffix
    if suffix.lower() not in PARQUET_SUFFIXES:
        said = f"ends in '{suffix}'" if suffix else "has no suffix"
        raise FeatureStoreError(
            f"{option} '{out}' {said}, but the file written is Parquet; give a path ending in "
            f".parquet or .pq (e.g. '{path.with_suffix('.parquet').name}')"
        )
