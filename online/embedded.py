"""The embedded online store: an LMDB file in the repo, no server, many reader processes.

LMDB readers never block each other or the writer, and a write transaction commits whole or
not at all, so a crash mid-batch leaves no half-written batch. The environment is opened
lazily in each process and reopened after ``fork`` (an LMDB handle must not cross a fork).

Two things other processes do are taken care of here: a process killed inside a read
transaction leaves its reader slot behind, pinning its snapshot so no freed page is reused
(cleared before each write: ``reader_check``), and a process that raised ``map_size`` and
grew the file past this process's map makes every transaction fail with MDB_MAP_RESIZED
(the new size is adopted, when no transaction of this process is open, and tried again).
"""

from __future__ import annotations

import operator
import os
import re
import struct
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from itertools import compress, islice
from typing import TYPE_CHECKING, Any, Protocol

from featurestore.errors import ConfigError, OnlineStoreError, OnlineStoreUnavailableError
from featurestore.online.base import OnlineStore
from featurestore.online.keys import key_prefix, key_suffix

if TYPE_CHECKING:
    import numpy as np

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


_ADOPT_WAIT_S = 5.0  # longest an adoption of a grown map waits for open transactions to end


class _TxnGate:
    """This process's open transactions on one environment, so a map grown by another process
    is adopted (``set_mapsize(0)``: allowed only while no transaction of the process is open,
    and serving reads run in several threads) without taking a lock on every read.

    A transaction registers in ``open`` (list append and pop are atomic in CPython) and then
    looks at ``adopting``; an adoption sets ``adopting`` and then waits for ``open`` to empty:
    whichever comes second sees the other, so no transaction begins during the remap.
    """

    def __init__(self) -> None:
        self.open: list[None] = []
        self.adopting = False
        self.maps = 0  # adoptions so far: a thread that saw the old map knows it was replaced
        self._lock = threading.Lock()  # held through an adoption

    def enter(self) -> None:
        """Count a transaction about to begin (after any adoption under way)."""
        while True:
            self.open.append(None)
            if not self.adopting:
                return
            self.open.pop()
            with self._lock:  # wait for the adoption to end
                pass

    def leave(self) -> None:
        """Uncount a transaction that has ended (or failed to begin)."""
        self.open.pop()

    def adopt(self, env: Any, seen: int) -> bool:
        """Adopt the map size another process grew the file to, unless done since adoption
        ``seen``; False when transactions stayed open too long (the caller fails as before)."""
        with self._lock:
            if self.maps != seen:
                return True
            self.adopting = True
            try:
                deadline = time.monotonic() + _ADOPT_WAIT_S
                while self.open:
                    if time.monotonic() > deadline:
                        return False
                    time.sleep(0.001)
                env.set_mapsize(0)
                self.maps += 1
                return True
            finally:
                self.adopting = False


class _Begin(Protocol):
    def __call__(self, *, write: bool = False) -> AbstractContextManager[Any]: ...


def _put_sorted(cursor: Any, keys: list[bytes], stored: list[bytes]) -> None:
    """Put the items with ``cursor`` in key order, appending when they all sort after the last
    stored key."""
    if not all(map(operator.lt, keys, islice(keys, 1, None))):  # not strictly ascending
        order = sorted(range(len(keys)), key=keys.__getitem__)  # stable: later stays later
        keys = [keys[i] for i in order]
        stored = [stored[i] for i in order]
    append = bool(keys) and (not cursor.last() or cursor.key() < keys[0])
    # zip hands over one reused tuple at a time: no list of pairs to build and free
    _, added = cursor.putmulti(
        zip(keys, stored, strict=True), dupdata=False, overwrite=True, append=append
    )
    if append and added != len(keys):
        # a repeated key: appending skips it, so put the batch again the plain way (every key
        # ends with its last value, as if put once in order)
        cursor.putmulti(zip(keys, stored, strict=True), dupdata=False, overwrite=True)


def _newer(cursor: Any, keys: list[bytes], stored: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """The items (stored form) whose row may replace the live one under their key
    (``codec.row_replaces``; an expired row counts as none), in key order, read with the write
    transaction's ``cursor``. A repeated key is checked against the item kept before it, as if
    put one by one.

    Keys all past the last stored key (a first fill) need no read; otherwise each key is looked
    up in key order (neighbouring searches touch the same pages; ``cursor.get`` per key is
    twice as fast as ``getmulti`` here), and the batch is compared in numpy when every value
    has one size (a fixed-width view), else row by row.
    """
    if not all(map(operator.lt, keys, islice(keys, 1, None))):  # not strictly ascending
        order = sorted(range(len(keys)), key=keys.__getitem__)  # stable: later stays later
        keys = [keys[i] for i in order]
        stored = [stored[i] for i in order]
        unique = all(map(operator.ne, keys, islice(keys, 1, None)))
    else:
        unique = True
    if not cursor.last() or cursor.key() < keys[0]:
        if unique:
            return keys, stored
        olds: list[bytes | None] = [None] * len(keys)
    else:
        olds = list(map(cursor.get, keys))
    if unique and len(stored) > _FEW:
        keep = _newer_fixed(stored, olds)
        if keep is not None:
            if keep.all():
                return keys, stored
            mask = keep.tolist()
            return list(compress(keys, mask)), list(compress(stored, mask))
    return _newer_rows(keys, stored, olds)


def _newer_fixed(stored: list[bytes], olds: list[bytes | None]) -> np.ndarray | None:
    """Which of ``stored`` may replace ``olds`` (None: no row), all in numpy; None when the
    values are not all one size (the caller then goes row by row)."""
    import numpy as np

    from featurestore.online.codec import ROW_HEAD

    if None in olds:
        held = [v is not None for v in olds]
        present: list[bytes] = list(compress(olds, held))  # type: ignore[arg-type]
        news = list(compress(stored, held))
    else:  # every key held a row (a view materialized again): no lists to build
        held, present, news = None, olds, stored  # type: ignore[assignment]
    sizes = set(map(len, stored))
    sizes.update(map(len, present))
    if len(sizes) != 1:
        return None
    (size,) = sizes
    if size < _EXPIRE.size + ROW_HEAD.size:
        return None
    keep = np.ones(len(stored), dtype=bool)
    if not present:
        return keep
    new = _heads(b"".join(news), len(news), size)
    old = _heads(b"".join(present), len(present), size)
    now_ms = int(time.time() * 1000)
    live = (old["exp"] == 0) | (old["exp"] > now_ms)
    later = (old["ev"] > new["ev"]) | ((old["ev"] == new["ev"]) & (old["cr"] > new["cr"]))
    stays = live & (old["ver"] == new["ver"]) & later  # the held row is newer: not replaced
    if held is None:
        keep[stays] = False
    else:
        keep[np.flatnonzero(held)[stays]] = False
    return keep


def _heads(buf: bytes, n: int, size: int) -> np.ndarray:
    """Expiry, event time, created time and schema version of ``n`` stored values of ``size``
    bytes each, laid end to end in ``buf`` (a view, no copy)."""
    import numpy as np

    head = np.dtype(
        {
            "names": ["exp", "ev", "cr", "ver"],
            "formats": ["<i8", "<i8", "<i8", "<u4"],
            "offsets": [0, 8, 16, 24],
            "itemsize": size,
        }
    )
    return np.frombuffer(buf, dtype=head, count=n)


def _newer_rows(
    keys: list[bytes], stored: list[bytes], olds: list[bytes | None]
) -> tuple[list[bytes], list[bytes]]:
    """``_newer`` row by row, against the rows ``olds`` stored under the keys (None: none)."""
    from featurestore.online.codec import row_replaces

    now_ms = int(time.time() * 1000)
    kept: dict[bytes, bytes] = {}
    out_keys: list[bytes] = []
    out: list[bytes] = []
    for key, value, old in zip(keys, stored, olds, strict=True):
        old = kept.get(key, old)
        if old is not None and _expired_at(old, now_ms):
            old = None
        if row_replaces(value, old, _EXPIRE.size):
            kept[key] = value
            out_keys.append(key)
            out.append(value)
    return out_keys, out


_SCAN_LIMIT = 200_000  # most keys one purge read transaction looks at (keeps snapshots short)


def _expired_at(value: bytes, cutoff: int) -> bool:
    """Whether a stored value has an expiry and it is at or before ``cutoff`` (ms)."""
    return value[:8] != _NEVER and _EXPIRE.unpack_from(value)[0] <= cutoff


_BODY = operator.itemgetter(slice(8, None))  # a stored value without its expiry prefix
_FEW = 8  # up to this many values, one Python pass beats numpy's setup


def _live(stored: list[bytes | None]) -> list[bytes | None]:
    """Stored values without their expiry prefix; missing and expired ones as None.

    A batch of values all there and of one size (a view's fixed-width rows) has its expiries
    checked in one numpy pass."""
    now_ms = int(time.time() * 1000)
    if len(stored) > _FEW:
        try:
            sizes = set(map(len, stored))  # type: ignore[arg-type]
        except TypeError:  # a value not found: the per-value pass below
            sizes = set()
        if len(sizes) == 1:
            import numpy as np

            (size,) = sizes
            buf = b"".join(stored)  # type: ignore[arg-type]
            at = np.ndarray((len(stored),), dtype="<i8", buffer=buf, strides=(size,))
            if ((at == 0) | (at > now_ms)).all():  # none _expired_at now_ms
                return list(map(_BODY, stored))  # type: ignore[arg-type]
    return [None if v is None or _expired_at(v, now_ms) else v[8:] for v in stored]


def _scan_expired(
    begin: _Begin, after: bytes | None, cutoff: int, batch: int
) -> tuple[list[bytes], bytes | None]:
    """Up to ``batch`` expired keys after ``after`` (from the start when None), in key order,
    and the last key looked at (None: the end was reached)."""
    expired: list[bytes] = []
    looked = 0
    unpack = _EXPIRE.unpack_from
    with begin() as txn:
        cursor = txn.cursor()
        if after is None:
            more = cursor.first()
        else:
            more = cursor.set_range(after)
            if more and cursor.key() == after:
                more = cursor.next()
        if not more:
            return expired, None
        for key, value in cursor.iternext():
            looked += 1
            if value[:8] != _NEVER and unpack(value)[0] <= cutoff:
                expired.append(key)
                if len(expired) >= batch:
                    return expired, key
            if looked >= _SCAN_LIMIT:
                return expired, key
    return expired, None


def _delete_expired(begin: _Begin, keys: list[bytes], cutoff: int) -> int:
    """Delete those of ``keys`` (ascending) that are still expired, in one write transaction."""
    deleted = 0
    with begin(write=True) as txn:
        cursor = txn.cursor()
        for key in keys:
            if cursor.set_key(key) and _expired_at(cursor.value(), cutoff):
                cursor.delete()
                deleted += 1
    return deleted


class EmbeddedOnlineStore(OnlineStore):
    """LMDB-backed store at ``path`` (a folder); values carry their expiry, checked on read."""

    ordered_keys = True  # a B-tree: writes in key order touch the fewest pages

    def __init__(self, path: str, *, map_size: str | int = "64GB") -> None:
        self.path = path
        self.map_size = parse_size(map_size)
        self._env_obj: Any = None
        self._pid = 0
        self._gate = _TxnGate()

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
            self._env_obj.reader_check()  # dead processes' reader slots pin old snapshots
        except (lmdb.Error, OSError) as exc:
            raise OnlineStoreUnavailableError(
                f"cannot open the embedded online store at {self.path}: {exc}; check "
                "online_store.path in featurestore.yaml"
            ) from exc
        self._pid = os.getpid()
        self._gate = _TxnGate()
        return self._env_obj

    @contextmanager
    def _txn(self, *, write: bool = False) -> Iterator[Any]:
        """A transaction (values as bytes), counted in the gate; a map another process grew
        is adopted and the begin tried once more. A write first clears the reader slots of
        dead processes (a few microseconds): a slot left by a process killed inside a read
        transaction would otherwise keep every page freed since from being reused."""
        import lmdb

        env = self._env()
        gate = self._gate
        if write:
            env.reader_check()
        for last in (False, True):
            seen = gate.maps
            gate.enter()
            try:
                txn = env.begin(write=write, buffers=False)
            except lmdb.MapResizedError:
                gate.leave()
                if last or not gate.adopt(env, seen):
                    raise
                continue
            except BaseException:
                gate.leave()
                raise
            break
        try:
            with txn:
                yield txn
        finally:
            gate.leave()

    def write_batch(
        self,
        keys: list[bytes],
        values: list[bytes],
        expire_at_ms: list[int | None] | None = None,
    ) -> None:
        """Write the whole batch in one LMDB transaction (all of it lands or none)."""
        if len(keys) != len(values) or (
            expire_at_ms is not None and len(expire_at_ms) != len(keys)
        ):
            raise OnlineStoreError(
                f"write_batch got {len(keys)} keys, {len(values)} values and "
                f"{'no' if expire_at_ms is None else len(expire_at_ms)} expiries; give one per key"
            )
        if expire_at_ms is None:
            stored = [_NEVER + v for v in values]
        else:
            now_ms = int(time.time() * 1000)
            pack = _EXPIRE.pack
            live = [e is None or e > now_ms for e in expire_at_ms]
            if not all(live):
                keys = [k for k, ok in zip(keys, live, strict=True) if ok]
                values = [v for v, ok in zip(values, live, strict=True) if ok]
                expire_at_ms = [e for e, ok in zip(expire_at_ms, live, strict=True) if ok]
            stored = [pack(e or 0) + v for v, e in zip(values, expire_at_ms, strict=True)]
        self._put([(keys, stored)])

    def write_newer(
        self,
        keys: list[bytes],
        values: list[bytes],
        expire_at_ms: list[int | None] | None = None,
    ) -> int:
        """``write_batch`` of the rows not older than the live row stored under their key,
        checked in the same write transaction (writers take turns: none comes in between);
        returns how many were written."""
        if len(keys) != len(values) or (
            expire_at_ms is not None and len(expire_at_ms) != len(keys)
        ):
            raise OnlineStoreError(
                f"write_newer got {len(keys)} keys, {len(values)} values and "
                f"{'no' if expire_at_ms is None else len(expire_at_ms)} expiries; give one per key"
            )
        if expire_at_ms is None:
            return self.write_stored([(keys, [_NEVER + v for v in values], None)], only_newer=True)
        import numpy as np

        expire = np.array([e or 0 for e in expire_at_ms], dtype=np.int64)
        pack = _EXPIRE.pack
        stored = [pack(e) + v for v, e in zip(values, expire.tolist(), strict=True)]
        return self.write_stored([(keys, stored, expire)], only_newer=True)

    def write_stored(
        self,
        batches: Iterable[tuple[list[bytes], list[bytes], np.ndarray | None]],
        *,
        only_newer: bool = False,
    ) -> int:
        """Write batches of (keys, values in stored form, expire-at ms or None) in ONE
        transaction: all of them land or none. Stored form: the expiry in front (see
        ``RowCodec.encode_table(lead=...)``); rows whose expiry (0 = never) is past by now are
        skipped. ``batches`` may be a generator: each batch is put as it comes. ``only_newer``:
        a row older than the live row stored under its key is skipped too (``online.codec``
        rows; checked inside the transaction, so atomically). Returns the rows written."""

        def live(
            batches: Iterable[tuple[list[bytes], list[bytes], np.ndarray | None]],
        ) -> Iterator[tuple[list[bytes], list[bytes]]]:
            for keys, stored, expire_at_ms in batches:
                if len(keys) != len(stored) or (
                    expire_at_ms is not None and len(expire_at_ms) != len(keys)
                ):
                    raise OnlineStoreError(
                        f"write_stored got {len(keys)} keys and {len(stored)} values; give one "
                        "per key"
                    )
                if expire_at_ms is not None and len(expire_at_ms):
                    import numpy as np

                    now_ms = int(time.time() * 1000)
                    ok = (expire_at_ms == 0) | (expire_at_ms > now_ms)
                    if not ok.all():
                        keep = np.flatnonzero(ok).tolist()
                        keys = [keys[i] for i in keep]
                        stored = [stored[i] for i in keep]
                yield keys, stored

        return self._put(live(batches), only_newer=only_newer)

    def _put(
        self, batches: Iterable[tuple[list[bytes], list[bytes]]], *, only_newer: bool = False
    ) -> int:
        """Put every batch (of equal keys, the later item wins) in one write transaction, each
        batch in key order: neighbouring keys share B-tree pages, so a sorted batch touches (and
        copies on write) far fewer pages. Keys past the last stored key are appended without a
        tree search. ``only_newer``: see ``write_stored``. Returns the items put."""
        import lmdb

        put = 0
        keys: list[bytes] = []
        try:
            with self._txn(write=True) as txn:
                cursor = txn.cursor()
                for keys, stored in batches:
                    if only_newer and keys:
                        keys, stored = _newer(cursor, keys, stored)
                    _put_sorted(cursor, keys, stored)
                    put += len(keys)
        except lmdb.MapFullError as exc:
            raise OnlineStoreError(
                f"the embedded online store at {self.path} is full ({self.map_size} bytes); "
                "raise online_store.map_size in featurestore.yaml"
            ) from exc
        except lmdb.BadValsizeError as exc:
            limit = self._env().max_key_size()
            long = next((k for k in keys if len(k) > limit), b"")
            raise OnlineStoreError(
                f"a key of {len(long)} bytes (starting {long[:40]!r}) is longer than the "
                f"embedded online store allows ({limit} bytes); use shorter join-key values "
                "or the redis online store"
            ) from exc
        except lmdb.Error as exc:
            raise OnlineStoreError(f"write to the embedded online store failed: {exc}") from exc
        return put

    def max_key_size(self) -> int:
        """The longest key this store can hold (LMDB's, fixed when it was built: 511 bytes)."""
        return int(self._env().max_key_size())

    def read(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """Values in one read transaction; expired values read as None."""
        import lmdb

        env = self._env()
        gate = self._gate
        try:
            try:  # _txn's steps written out: they would cost a read a quarter more
                gate.enter()
                try:
                    with env.begin(buffers=False) as txn:
                        stored = list(map(txn.get, keys))
                finally:
                    gate.leave()
            except lmdb.MapResizedError:
                with self._txn() as txn:  # adopts the grown map, or fails as before
                    stored = list(map(txn.get, keys))
        except lmdb.BadValsizeError:
            # a key too long to have been written cannot be there
            limit = self._env().max_key_size()
            return [None if len(k) > limit else self.read([k])[0] for k in keys]
        except lmdb.Error as exc:
            raise OnlineStoreError(f"read from the embedded online store failed: {exc}") from exc
        return _live(stored)

    def delete_view(self, project: str, view_name: str) -> int:
        prefix, suffix = key_prefix(project), key_suffix(view_name)
        deleted = 0
        with self._txn(write=True) as txn:
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

    def purge_expired(self, *, now_ms: int | None = None, batch: int = 10_000) -> int:
        """Delete every value whose expiry (not 0 = never) is at or before ``now_ms`` (default:
        now) and return how many: reads skip such values, but only a purge frees their space.

        A read transaction finds up to ``batch`` expired keys, then a short write transaction
        deletes them, each re-checked there (a key rewritten with a later expiry since the scan
        stays), so writers wait at most one batch for the lock and readers never wait.
        """
        import lmdb

        if batch < 1:
            raise OnlineStoreError(f"purge_expired got batch={batch}; give a batch of at least 1")
        cutoff = int(time.time() * 1000) if now_ms is None else int(now_ms)
        deleted = 0
        after: bytes | None = None  # the last key scanned: the next scan starts past it
        try:
            while True:
                expired, after = _scan_expired(self._txn, after, cutoff, batch)
                if expired:
                    deleted += _delete_expired(self._txn, expired, cutoff)
                if after is None:
                    return deleted
        except lmdb.MapFullError as exc:
            raise OnlineStoreError(
                f"the embedded online store at {self.path} is full ({self.map_size} bytes), too "
                f"full even to delete from; raise online_store.map_size in featurestore.yaml and "
                f"purge again ({deleted:,} expired rows were purged)"
            ) from exc
        except lmdb.Error as exc:
            raise OnlineStoreError(
                f"purge of the embedded online store at {self.path} failed after {deleted:,} "
                f"rows: {exc}"
            ) from exc

    def ping(self) -> None:
        with self._txn():
            pass

    def close(self) -> None:
        if self._env_obj is not None and self._pid == os.getpid():
            self._env_obj.close()
        self._env_obj = None

    def __repr__(self) -> str:
        return f"EmbeddedOnlineStore({self.path!r})"
