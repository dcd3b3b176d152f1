"""The embedded online store: an LMDB file in the repo, no server, many reader processes.

LMDB readers never block each other or the writer, and a write transaction commits whole or
not at all, so a crash mid-batch leaves no half-written batch. The environment is opened
lazily in each process and reopened after ``fork`` (an LMDB handle must not cross a fork).
"""

from __future__ import annotations

import os
import re
import struct
import time
from collections.abc import Sequence
from typing import Any

from featurestore.errors import ConfigError, OnlineStoreError, OnlineStoreUnavailableError
from featurestore.online.base import OnlineStore
from featurestore.online.keys import key_prefix, key_suffix

_EXPIRE = struct.Struct("<q")  # value prefix: expire-at in ms since the epoch, 0 = never
_NEVER = _EXPIRE.pack(0)
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B)?\s*$", re.IGNORECASE)
_SIZE_UNIT = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(value: str | int) -> int:
    """``"64GB"``, ``"512MiB"``, ``"1T"`` or a byte count -> bytes (binary units)."""
    if isinstance(value, int):
        return value
    m = _SIZE.match(str(value))
    if not m:
        raise ConfigError(
            f"online_store.map_size is {value!r}; expected a size such as '64GB' or '512MB'"
        )
    return int(float(m.group(1)) * _SIZE_UNIT[m.group(2).upper()])


def _close_inherited(env: Any) -> None:
    """Close an environment this process inherited over fork.

    LMDB refuses a second open of one file in a process, so the child must close the copy it
    inherited. That is safe: the child holds no reader slot or file lock of the parent's (POSIX
    locks are per process, and LMDB only clears reader slots tagged with the caller's pid).
    """
    try:
        env.close()
    except Exception:  # the parent's handle may be in any state; the child only needs it gone
        pass


class EmbeddedOnlineStore(OnlineStore):
    """LMDB-backed store at ``path`` (a folder); values carry their expiry, checked on read."""

    def __init__(self, path: str, *, map_size: str | int = "64GB") -> None:
        self.path = path
        self.map_size = parse_size(map_size)
        self._env_obj: Any = None
        self._pid = 0

    def _env(self) -> Any:
        if self._env_obj is not None and self._pid == os.getpid():
            return self._env_obj
        if self._env_obj is not None:  # inherited over fork: drop it before opening our own
            _close_inherited(self._env_obj)
            self._env_obj = None
        import lmdb

        try:
            os.makedirs(self.path, exist_ok=True)
            self._env_obj = lmdb.open(
                self.path,
                map_size=self.map_size,
                subdir=True,
                lock=True,
                readahead=False,
                max_readers=512,
                max_dbs=0,
            )
        except (lmdb.Error, OSError) as exc:
            raise OnlineStoreUnavailableError(
                f"cannot open the embedded online store at {self.path}: {exc}; check "
                "online_store.path in featurestore.yaml"
            ) from exc
        self._pid = os.getpid()
        return self._env_obj

    def write_batch(
        self,
        keys: list[bytes],
        values: list[bytes],
        expire_at_ms: list[int | None] | None = None,
    ) -> None:
        """Write the whole batch in one LMDB transaction (all of it lands or none)."""
        import lmdb

        if len(keys) != len(values) or (
            expire_at_ms is not None and len(expire_at_ms) != len(keys)
        ):
            raise OnlineStoreError(
                f"write_batch got {len(keys)} keys, {len(values)} values and "
                f"{'no' if expire_at_ms is None else len(expire_at_ms)} expiries; give one per key"
            )
        if expire_at_ms is None:
            items = [(k, _NEVER + v) for k, v in zip(keys, values, strict=True)]
        else:
            now_ms = int(time.time() * 1000)
            pack = _EXPIRE.pack
            items = [
                (k, pack(e or 0) + v)
                for k, v, e in zip(keys, values, expire_at_ms, strict=True)
                if e is None or e > now_ms
            ]
        env = self._env()
        try:
            with env.begin(write=True) as txn:
                cursor = txn.cursor()
                cursor.putmulti(items, dupdata=False, overwrite=True)
        except lmdb.MapFullError as exc:
            raise OnlineStoreError(
                f"the embedded online store at {self.path} is full ({self.map_size} bytes); "
                "raise online_store.map_size in featurestore.yaml"
            ) from exc
        except lmdb.BadValsizeError as exc:
            raise OnlineStoreError(
                f"a key is longer than LMDB allows ({env.max_key_size()} bytes); use shorter "
                "join-key values or the redis online store"
            ) from exc
        except lmdb.Error as exc:
            raise OnlineStoreError(f"write to the embedded online store failed: {exc}") from exc

    def read(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """Values in one read transaction; expired values read as None."""
        import lmdb

        env = self._env()
        out: list[bytes | None] = []
        now_ms = 0
        try:
            with env.begin(buffers=False) as txn:
                get = txn.get
                for k in keys:
                    v = get(k)
                    if v is None:
                        out.append(None)
                        continue
                    if v[:8] != _NEVER:
                        if not now_ms:
                            now_ms = int(time.time() * 1000)
                        if _EXPIRE.unpack_from(v)[0] <= now_ms:
                            out.append(None)
                            continue
                    out.append(v[8:])
        except lmdb.BadValsizeError:
            # a key too long to have been written cannot be there
            return [None if len(k) > env.max_key_size() else self.read([k])[0] for k in keys]
        except lmdb.Error as exc:
            raise OnlineStoreError(f"read from the embedded online store failed: {exc}") from exc
        return out

    def delete_view(self, project: str, view_name: str) -> int:
        prefix, suffix = key_prefix(project), key_suffix(view_name)
        deleted = 0
        with self._env().begin(write=True) as txn:
            cursor = txn.cursor()
            if not cursor.set_range(prefix):
                return 0
            while True:
                key = cursor.key()
                if not key.startswith(prefix):
                    break
                if key.endswith(suffix):
                    deleted += 1
                    cursor.delete()  # moves to the next item (or past the end: key() == b"")
                elif not cursor.next():
                    break
        return deleted

    def ping(self) -> None:
        with self._env().begin():
            pass

    def close(self) -> None:
        if self._env_obj is not None and self._pid == os.getpid():
            self._env_obj.close()
        self._env_obj = None

    def __repr__(self) -> str:
        return f"EmbeddedOnlineStore({self.path!r})"
