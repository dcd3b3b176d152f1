"""Embedded store: another process raises map_size and grows the file past this process's map
(as the "store is full" error advises); this process adopts the new size and goes on reading
and writing, without a restart, from several threads at once."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from featurestore.online.embedded import EmbeddedOnlineStore
from featurestore.online.keys import build_keys

OLD_SIZE = "1MB"
N_NEW = 20_000  # with 200-byte values, some 5 MB: far past the old map
OLD_KEYS = build_keys("test", "v", ("user_id",), [list(range(10))])
NEW_KEYS = build_keys("test", "w", ("user_id",), [list(range(N_NEW))])

# another process (a materialize run with a raised online_store.map_size) grows the store
_GROWER = """
import sys
from featurestore.online.embedded import EmbeddedOnlineStore
from featurestore.online.keys import build_keys
keys = build_keys("test", "w", ("user_id",), [list(range(int(sys.argv[2])))])
store = EmbeddedOnlineStore(sys.argv[1], map_size="64MB")
store.write_batch(keys, [b"%07d" % i + b"n" * 193 for i in range(len(keys))])
store.close()
"""


def _new_value(i: int) -> bytes:
    return b"%07d" % i + b"n" * 193


def _grow(path: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _GROWER, path, str(N_NEW)], capture_output=True, timeout=120
    )
    assert done.returncode == 0, done.stderr.decode()


def _small_store(tmp_path: Path) -> EmbeddedOnlineStore:
    store = EmbeddedOnlineStore(str(tmp_path / "online"), map_size=OLD_SIZE)
    store.write_batch(OLD_KEYS, [b"old"] * len(OLD_KEYS))
    assert store.read(OLD_KEYS[:1]) == [b"old"]  # the environment is open on the old size
    return store


def test_reads_see_the_rows_of_a_process_that_grew_the_map(tmp_path: Path) -> None:
    store = _small_store(tmp_path)
    try:
        _grow(store.path)
        assert store.read([NEW_KEYS[0], NEW_KEYS[-1], OLD_KEYS[0]]) == [
            _new_value(0),
            _new_value(N_NEW - 1),
            b"old",
        ]
        store.ping()  # what /health/ready asks
    finally:
        store.close()


def test_a_write_after_another_process_grew_the_map(tmp_path: Path) -> None:
    store = _small_store(tmp_path)
    try:
        _grow(store.path)
        store.write_batch(OLD_KEYS, [b"pushed"] * len(OLD_KEYS))  # e.g. a push to the server
        assert store.read([OLD_KEYS[0], NEW_KEYS[5]]) == [b"pushed", _new_value(5)]
    finally:
        store.close()


def test_threads_reading_while_another_process_grows_the_map(tmp_path: Path) -> None:
    store = _small_store(tmp_path)
    grown = threading.Event()
    errors: list[BaseException] = []
    saw_new: list[int] = []

    def keep_reading(n: int) -> None:
        try:
            while True:
                got = store.read([OLD_KEYS[n], NEW_KEYS[n * 997]])
                assert got[0] == b"old", got
                if got[1] is not None:
                    assert got[1] == _new_value(n * 997), got
                    saw_new.append(n)
                    return
                if grown.is_set() and store.read([NEW_KEYS[n * 997]]) == [None]:
                    raise AssertionError(f"thread {n}: the new rows are not seen")
        except BaseException as exc:  # handed to the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=keep_reading, args=(n,)) for n in range(8)]
    try:
        for t in threads:
            t.start()
        _grow(store.path)
        grown.set()
        for t in threads:
            t.join(timeout=120)
        assert not any(t.is_alive() for t in threads)
        assert errors == []
        assert sorted(saw_new) == list(range(8))
    finally:
        grown.set()
        store.close()
