"""Embedded store: a process killed inside a read transaction must not keep freed pages from
being reused (its reader slot is cleared before a write) while another process keeps the store
open, as a running server does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from featurestore.online.embedded import EmbeddedOnlineStore
from featurestore.online.keys import build_keys

N_KEYS = 20_000
KEYS = build_keys("test", "v", ("user_id",), [list(range(N_KEYS))])

# opens the store as any process would, reads inside a transaction and dies there
_KILLED_READER = """
import os, signal, sys
import lmdb
env = lmdb.open(sys.argv[1], max_readers=512, readahead=False)
txn = env.begin()
assert txn.get(bytes.fromhex(sys.argv[2])) is not None
os.kill(os.getpid(), signal.SIGKILL)
"""


def _rewrite(store: EmbeddedOnlineStore, tag: int) -> int:
    """Replace every value (all pages of the tree are copied) and return data.mdb's size."""
    store.write_batch(KEYS, [bytes([tag]) * 200] * N_KEYS)
    return (Path(store.path) / "data.mdb").stat().st_size


def _kill_a_reader(store: EmbeddedOnlineStore) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _KILLED_READER, store.path, KEYS[1].hex()],
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()


def _dead_readers(store: EmbeddedOnlineStore, pid_alive: set[int]) -> list[str]:
    """Reader table rows holding a snapshot (txnid not '-') of a process not in ``pid_alive``."""
    rows = [line.split() for line in store._env().readers().splitlines()[1:]]
    return [" ".join(r) for r in rows if r and r[2] != "-" and int(r[0]) not in pid_alive]


def test_a_reader_killed_mid_transaction_does_not_stop_page_reuse(tmp_path: Path) -> None:
    store = EmbeddedOnlineStore(str(tmp_path / "online"), map_size="1GB")
    try:
        one_copy = _rewrite(store, 1)  # the file with one copy of the data
        _rewrite(store, 2)
        _kill_a_reader(store)  # this process keeps the store open all along
        sizes = [_rewrite(store, 3 + i) for i in range(6)]
        # the first rewrites may still take new pages; after them, freed pages are reused:
        # with the dead reader's snapshot pinned, each rewrite would add about one copy
        assert sizes[-1] - sizes[1] < one_copy // 2, (one_copy, sizes)
        assert store.read([KEYS[0], KEYS[-1]]) == [bytes([8]) * 200] * 2
    finally:
        store.close()


def test_the_dead_readers_slot_is_cleared_by_the_next_write(tmp_path: Path) -> None:
    store = EmbeddedOnlineStore(str(tmp_path / "online"), map_size="1GB")
    try:
        _rewrite(store, 1)
        alive = {os.getpid()}
        _kill_a_reader(store)
        assert len(_dead_readers(store, alive)) == 1  # LMDB itself leaves it there
        _rewrite(store, 2)
        assert _dead_readers(store, alive) == []
    finally:
        store.close()
