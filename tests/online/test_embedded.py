"""Embedded LMDB store: concurrent processes, fork safety, atomic batches, sizes."""

from __future__ import annotations

import multiprocessing as mp
import os
import struct
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

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
    with pytest.raises(OnlineStoreError, match="longer than the embedded online store allows"):
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


def _raw(path: str) -> dict[bytes, bytes]:
    """Every stored (key, raw value with its expiry prefix) of a closed store's folder."""
    import lmdb

    env = lmdb.open(path, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return dict(txn.cursor().iternext())
    finally:
        env.close()


_batch = st.lists(
    st.tuples(
        st.integers(-30, 30),  # few keys: repeats within and across batches
        st.binary(max_size=12),
        st.one_of(st.none(), st.integers(1, 2), st.just(4_000_000_000_000)),  # past / future
    ),
    max_size=40,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batches=st.lists(_batch, min_size=1, max_size=4))
def test_batches_in_any_key_order_land_as_if_put_one_by_one(
    tmp_path_factory: pytest.TempPathFactory, batches: list[list[tuple[int, bytes, int | None]]]
) -> None:
    """Writes go in key order (appended past the last key when they can), which must not change
    what lands: the last item of a repeated key wins, expired items are skipped."""
    path = str(tmp_path_factory.mktemp("db"))
    store = EmbeddedOnlineStore(path, map_size="64MB")
    want: dict[bytes, bytes] = {}
    for batch in batches:
        keys = build_keys("t", "v", ("k",), [[k for k, _, _ in batch]])
        values = [v for _, v, _ in batch]
        expire = [e for _, _, e in batch]
        store.write_batch(keys, values, expire)
        for key, v, e in zip(keys, values, expire, strict=True):
            if e is None or e > 2:
                want[key] = struct.pack("<q", e or 0) + v
    store.close()
    assert _raw(path) == want


def test_write_stored_puts_stored_values_and_skips_expired_rows(tmp_path: Path) -> None:
    import numpy as np

    store = EmbeddedOnlineStore(str(tmp_path / "db"), map_size="64MB")
    keys = KEYS[:4][::-1]  # not in key order
    future = int(time.time() * 1000) + 3_600_000
    expire = np.array([0, 5, future, future], dtype=np.int64)
    stored = [struct.pack("<q", int(e)) + b"v%d" % i for i, e in enumerate(expire)]
    more = [_NEVER_PREFIX + b"w"]
    assert store.write_stored([(keys, stored, expire), (keys[:1], more, None)]) == 4
    assert store.read(keys) == [b"w", None, b"v2", b"v3"]
    with pytest.raises(OnlineStoreError, match="one per key"):
        store.write_stored([(keys, stored[:1], None)])


def test_write_stored_batches_land_together_or_not_at_all(tmp_path: Path) -> None:
    store = EmbeddedOnlineStore(str(tmp_path / "db"), map_size="64MB")
    store.write_batch(KEYS[:2], [b"old0", b"old1"])

    def batches() -> Any:
        yield [KEYS[0]], [_NEVER_PREFIX + b"new0"], None
        raise ValueError("the second batch could not be built")

    with pytest.raises(ValueError, match="second batch"):
        store.write_stored(batches())
    too_long = b"k" * 4096
    with pytest.raises(OnlineStoreError, match="longer than the embedded online store allows"):
        store.write_stored(
            [([KEYS[1]], [_NEVER_PREFIX + b"new1"], None), ([too_long], [_NEVER_PREFIX], None)]
        )
    assert store.read(KEYS[:2]) == [b"old0", b"old1"]
    store.close()


_NEVER_PREFIX = struct.pack("<q", 0)


_entry = st.tuples(
    st.booleans(),  # stored (when the batch may miss values)
    st.sampled_from([0, 4_000_000_000_000, 1, -5, "past"]),  # 0: never; the rest once expired
    st.sampled_from([0, 3, 17]),  # value size, when the batch may mix sizes
)


@settings(max_examples=100, deadline=None)
@example(entries=[(True, 1, 0)] * 20, may_miss=False, may_expire=1, one_size=True)
@example(entries=[(True, 1, 0)] * 20, may_miss=False, may_expire=0, one_size=True)
@given(
    entries=st.lists(_entry, min_size=1, max_size=8) | st.lists(_entry, min_size=9, max_size=40),
    may_miss=st.booleans(),
    may_expire=st.integers(0, 2),  # 0: none expired, 1: exactly one (the last), 2: any
    one_size=st.booleans(),
)
def test_read_drops_prefixes_and_hides_missing_and_expired_values(
    tmp_path_factory: pytest.TempPathFactory,
    entries: list[Any],
    may_miss: bool,
    may_expire: int,
    one_size: bool,
) -> None:
    """Whatever mix of missing, expired, unexpiring and live values of whatever sizes a batch
    holds, read returns each value without its expiry prefix, or None: as one pass per value
    would (the batch check of all-present, one-size values must agree with it)."""
    path = str(tmp_path_factory.mktemp("db"))
    store = EmbeddedOnlineStore(path, map_size="64MB")
    now_ms = int(time.time() * 1000)
    keys = build_keys("t", "v", ("k",), [list(range(len(entries)))])
    want: list[bytes | None] = []
    with store._env().begin(write=True) as txn:  # raw puts: write_* skip expired rows
        for i, (key, (stored, at, size)) in enumerate(zip(keys, entries, strict=True)):
            if may_miss and not stored:
                want.append(None)
                continue
            if may_expire == 0 or (may_expire == 1 and i < len(entries) - 1):
                at = 0 if at == 0 else 4_000_000_000_000
            elif may_expire == 1:
                at = now_ms - 1
            at = now_ms - 60_000 if at == "past" else at
            body = bytes([i % 251]) * (7 if one_size else size)
            txn.put(key, struct.pack("<q", at) + body)
            want.append(body if at == 0 or at > now_ms + 30_000 else None)
    assert store.read(keys) == want
    store.close()
