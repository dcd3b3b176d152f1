"""Embedded LMDB store: concurrent processes, fork safety, atomic batches, sizes."""

from __future__ import annotations

import multiprocessing as mp
import os
import struct
import time
from pathlib import Path
from typing import Any

import pytest

from featurestore.errors import ConfigError, OnlineStoreError
from featurestore.online.embedded import EmbeddedOnlineStore, parse_size
from featurestore.online.keys import build_keys

N_KEYS = 200
KEYS = build_keys("test", "v", ("user_id",), [list(range(N_KEYS))])


def _values(version: int) -> list[bytes]:
    return [struct.pack("<qq", version, i) for i in range(N_KEYS)]


def _writer(store: EmbeddedOnlineStore, versions: int, done: Any) -> None:
    try:
        for version in range(1, versions + 1):
            store.write_batch(KEYS, _values(version))
            time.sleep(0.002)
    finally:
        done.set()


def _reader(store: EmbeddedOnlineStore, done: Any, out: Any) -> None:
    """Reads until the writer is done; every read must see exactly one batch (one version)."""
    seen: list[int] = []
    reads = 0
    last = -1
    while True:
        finished = done.is_set()
        got = store.read(KEYS)
        reads += 1
        versions = {struct.unpack("<qq", v)[0] for v in got}  # type: ignore[arg-type]
        assert len(versions) == 1, f"a read saw a half-written batch: {sorted(versions)}"
        assert all(struct.unpack("<qq", v)[1] == i for i, v in enumerate(got))  # type: ignore[arg-type]
        (version,) = versions
        assert version >= last, "versions went backwards"
        if version != last:
            seen.append(version)
        last = version
        if finished:
            break
    out.put((os.getpid(), reads, seen))


def test_two_processes_read_while_a_third_writes(tmp_path: Path) -> None:
    ctx = mp.get_context("fork")
    store = EmbeddedOnlineStore(str(tmp_path / "db"), map_size="256MB")
    store.write_batch(KEYS, _values(0))  # the parent has the env open before forking
    done, out = ctx.Event(), ctx.Queue()
    readers = [ctx.Process(target=_reader, args=(store, done, out)) for _ in range(2)]
    writer = ctx.Process(target=_writer, args=(store, 150, done))
    for p in (*readers, writer):
        p.start()
    results = [out.get(timeout=60) for _ in readers]
    for p in (*readers, writer):
        p.join(timeout=60)
        assert p.exitcode == 0
    for _pid, reads, seen in results:
        assert reads > 1
        assert seen[-1] == 150  # the last read came after the last batch
    assert len({pid for pid, _, _ in results}) == 2
    # the parent's handle still works after its children used their own
    assert store.read(KEYS[:1]) == [_values(150)[0]]
    store.close()


def test_a_failed_batch_writes_nothing(tmp_path: Path) -> None:
    store = EmbeddedOnlineStore(str(tmp_path / "db"), map_size="64MB")
    store.write_batch(KEYS[:2], [b"old0", b"old1"])
    too_long = b"k" * 4096  # beyond LMDB's key size limit
    with pytest.raises(OnlineStoreError, match="longer than LMDB allows"):
        store.write_batch([KEYS[0], too_long, KEYS[1]], [b"new0", b"x", b"new1"])
    assert store.read(KEYS[:2]) == [b"old0", b"old1"]
    assert store.read([too_long]) == [None]


def test_full_map_is_an_error_naming_map_size(tmp_path: Path) -> None:
    store = EmbeddedOnlineStore(str(tmp_path / "db"), map_size="1MB")
    with pytest.raises(OnlineStoreError, match=r"online_store\.map_size"):
        store.write_batch(KEYS, [b"x" * 20_000] * N_KEYS)
    assert store.read(KEYS[:3]) == [None, None, None]


def test_data_persists_across_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    a = EmbeddedOnlineStore(path)
    a.write_batch(KEYS[:1], [b"kept"])
    a.close()
    assert EmbeddedOnlineStore(path).read(KEYS[:1]) == [b"kept"]


@pytest.mark.parametrize(
    ("text", "size"),
    [("64GB", 64 << 30), ("512MB", 512 << 20), ("1.5GiB", int(1.5 * (1 << 30))), ("4096", 4096)],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_bad_size_names_the_config_key() -> None:
    with pytest.raises(ConfigError, match=r"online_store\.map_size"):
        parse_size("lots")
