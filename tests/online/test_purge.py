"""purge_expired: the embedded store deletes exactly its expired rows, in bounded transactions,
keeps rows rewritten meanwhile, lets other processes read and write throughout; Redis: nothing."""

from __future__ import annotations

import multiprocessing as mp
import re
import struct
import textwrap
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from featurestore import FeatureStore
from featurestore.cli import cli
from featurestore.online import embedded
from featurestore.online.base import open_online_store
from featurestore.online.embedded import EmbeddedOnlineStore
from featurestore.online.keys import build_keys, is_watermark_key

from ..conftest import online_config

T0 = 1_900_000_000_000  # ms; a purge "now" of T0 + ... is far past any real write time
FAR = 4_000_000_000_000  # an expiry that is in the future for every purge here


def _keys(n: int, view: str = "v", start: int = 0) -> list[bytes]:
    return build_keys("test", view, ("user_id",), [list(range(start, start + n))])


def _value(i: int, version: int = 0) -> bytes:
    return struct.pack("<qq", i, version)


def _stored_keys(store: EmbeddedOnlineStore) -> set[bytes]:
    """Every row key in the LMDB file, read with a cursor (expired or not); the views' stored
    watermarks, which never expire, left out."""
    with store._env().begin() as txn:
        keys = txn.cursor().iternext(keys=True, values=False)
        return {k for k in keys if not is_watermark_key(k)}


def _fill(store: EmbeddedOnlineStore, n: int = 300) -> tuple[set[bytes], list[bytes], list[Any]]:
    """n keys: expiry T0 + i (past for a purge at T0 + n // 2 when i <= n // 2), far future,
    or none, mixed. Returns (the keys a purge at T0 + n // 2 must delete, all keys, their
    expiries)."""
    keys = _keys(n)
    expire: list[Any] = [T0 + i if i % 3 < 2 else (FAR if i % 2 else None) for i in range(n)]
    store.write_batch(keys, [_value(i) for i in range(n)], expire)
    cutoff = T0 + n // 2
    doomed = {k for k, e in zip(keys, expire, strict=True) if e is not None and e <= cutoff}
    return doomed, keys, expire


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = EmbeddedOnlineStore(str(tmp_path / "db"), map_size="256MB")
    yield s
    s.close()


def test_purge_deletes_exactly_the_expired_keys(store: EmbeddedOnlineStore) -> None:
    n = 300
    doomed, keys, expire = _fill(store, n)
    cutoff = T0 + n // 2
    # the boundary: expiry == now is expired (as on read), now + 1 is not
    assert any(e == cutoff for e in expire) and any(e == cutoff + 1 for e in expire)
    assert 0 < len(doomed) < n
    before = store.read(keys)
    assert all(v is not None for v in before)  # T0 is in the future for real reads
    assert store.purge_expired(now_ms=cutoff) == len(doomed)
    assert _stored_keys(store) == set(keys) - doomed
    after = store.read(keys)
    for k, b, a in zip(keys, before, after, strict=True):
        assert a == (None if k in doomed else b)
    assert store.purge_expired(now_ms=cutoff) == 0  # nothing left to purge
    # far in the future everything with an expiry goes; no-expiry keys never do
    forever = {k for k, e in zip(keys, expire, strict=True) if e is None}
    assert store.purge_expired(now_ms=FAR) == n - len(doomed) - len(forever)
    assert _stored_keys(store) == forever


@pytest.mark.parametrize(("batch", "scan_limit"), [(1, None), (3, None), (3, 7), (10_000, 5)])
def test_batch_sizes_give_the_same_result_in_bounded_transactions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch: int, scan_limit: int | None
) -> None:
    if scan_limit is not None:  # short read transactions: the scan resumes after its last key
        monkeypatch.setattr(embedded, "_SCAN_LIMIT", scan_limit)
    sizes: list[int] = []
    real = embedded._delete_expired

    def counted(env: Any, keys: list[bytes], cutoff: int) -> int:
        sizes.append(len(keys))
        return real(env, keys, cutoff)

    monkeypatch.setattr(embedded, "_delete_expired", counted)
    results = []
    for name, b in (("reference", 10_000), ("tested", batch)):
        s = EmbeddedOnlineStore(str(tmp_path / name), map_size="64MB")
        doomed, keys, _ = _fill(s, 100)
        sizes.clear()
        assert s.purge_expired(now_ms=T0 + 50, batch=b) == len(doomed)
        assert sizes and max(sizes) <= b and sum(sizes) == len(doomed)
        results.append((_stored_keys(s), s.read(keys)))
        s.close()
    assert results[0] == results[1]
    if batch == 1:
        assert len(sizes) == len(doomed)  # one deletion per write transaction


def test_a_key_rewritten_after_the_scan_survives(
    store: EmbeddedOnlineStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    doomed, keys, expire = _fill(store, 300)
    ordered = sorted(doomed)
    later, forever = (
        ordered[0],
        ordered[len(ordered) // 2],
    )  # both rewritten between scan and delete
    real_scan = embedded._scan_expired
    rewritten = False

    def scan_then_rewrite(*args: Any) -> tuple[list[bytes], bytes | None]:
        nonlocal rewritten
        found = real_scan(*args)
        if not rewritten:
            assert later in found[0] and forever in found[0]  # the scan saw them expired
            store.write_batch([later, forever], [_value(-1, 1), _value(-2, 1)], [FAR, None])
            rewritten = True
        return found

    monkeypatch.setattr(embedded, "_scan_expired", scan_then_rewrite)
    assert store.purge_expired(now_ms=T0 + 150) == len(doomed) - 2
    assert _stored_keys(store) == set(keys) - doomed | {later, forever}
    assert store.read([later, forever]) == [_value(-1, 1), _value(-2, 1)]
    # a key rewritten with a later expiry before the purge starts is not purged either
    rest = sorted(k for k, e in zip(keys, expire, strict=True) if e is not None and e < FAR)
    rest = [k for k in rest if k not in doomed]
    key = rest[0]
    store.write_batch([key], [_value(5, 2)], [T0 + 10_000])
    assert store.purge_expired(now_ms=T0 + 5_000) == len(rest) - 1
    assert store.read([key]) == [_value(5, 2)]
    assert _stored_keys(store) == {
        k for k, e in zip(keys, expire, strict=True) if e in (None, FAR)
    } | {later, forever, key}


def test_bad_batch_is_refused(store: EmbeddedOnlineStore) -> None:
    from featurestore.errors import OnlineStoreError

    with pytest.raises(OnlineStoreError, match="batch=0"):
        store.purge_expired(batch=0)


LIVE = 2_000
DEAD = 50_000


def _reader(store: EmbeddedOnlineStore, ready: Any, done: Any, out: Any) -> None:
    """Reads the live keys (always all there, unchanged or a newer version) and a sample of
    the expired ones (always None) until told to stop; sends back each read's end time."""
    live = _keys(LIVE, "live")
    dead = _keys(DEAD, "dead")[::100]
    ends: list[float] = []
    ready.set()
    while not done.is_set():
        got = store.read(live)
        for i, v in enumerate(got):
            assert v is not None and struct.unpack("<qq", v)[0] == i, f"live key {i} read {v!r}"
        assert store.read(dead) == [None] * len(dead)
        ends.append(time.monotonic())
    out.put(ends)


def _writer(store: EmbeddedOnlineStore, ready: Any, done: Any, out: Any) -> None:
    """Rewrites the live keys, version after version (as materialize would), timing each."""
    live = _keys(LIVE, "live")
    spans: list[tuple[float, float]] = []
    version = 0
    ready.set()
    while not done.is_set():
        version += 1
        t = time.monotonic()
        store.write_batch(live, [_value(i, version) for i in range(LIVE)], [FAR] * LIVE)
        spans.append((t, time.monotonic()))
        time.sleep(0.005)
    out.put((spans, version))


def test_other_processes_read_and_write_during_a_large_purge(tmp_path: Path) -> None:
    store = EmbeddedOnlineStore(str(tmp_path / "db"), map_size="512MB")
    live = _keys(LIVE, "live")
    store.write_batch(live, [_value(i) for i in range(LIVE)], [None] * LIVE)
    expire_at = int(time.time() * 1000) + 1_500  # expired in real time when the purge runs
    dead = _keys(DEAD, "dead")
    store.write_batch(dead, [_value(i) for i in range(DEAD)], [expire_at] * DEAD)
    assert len(_stored_keys(store)) == LIVE + DEAD
    time.sleep(max(0.0, expire_at / 1000 - time.time()) + 0.05)

    ctx = mp.get_context("fork")
    done = ctx.Event()
    reader_ready, writer_ready = ctx.Event(), ctx.Event()
    reads, writes = ctx.Queue(), ctx.Queue()
    procs = [
        ctx.Process(target=_reader, args=(store, reader_ready, done, reads)),
        ctx.Process(target=_writer, args=(store, writer_ready, done, writes)),
    ]
    for p in procs:
        p.start()
    try:
        assert reader_ready.wait(30) and writer_ready.wait(30)
        time.sleep(0.2)
        start = time.monotonic()
        purged = store.purge_expired(batch=1_000)  # default now: the dead keys are past
        end = time.monotonic()
        time.sleep(0.2)
    finally:
        done.set()
    read_ends = reads.get(timeout=60)
    spans, version = writes.get(timeout=60)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert purged == DEAD
    assert _stored_keys(store) == set(live)
    assert store.read(live) == [_value(i, version) for i in range(LIVE)]
    # the reader kept reading and the writer kept writing while the purge ran (a purge in one
    # write transaction would let at most one write finish before it ends)
    assert any(start <= t <= end for t in read_ends), (end - start, len(read_ends))
    assert sum(start <= b <= end for _, b in spans) >= 3, (end - start, spans)
    # no write waited for anything like the whole purge (at most one batch of deletions)
    assert max(b - a for a, b in spans) < max(1.0, (end - start) / 2)
    store.close()


DEFS = """
from featurestore import Entity, FeatureView, Field, Int64, ParquetSource

user = Entity("user", join_keys=["user_id"])
short = FeatureView(
    name="short", entities=[user], ttl="{ttl}",
    source=ParquetSource("data/short.parquet"), schema=[Field("clicks", Int64)],
)
forever = FeatureView(
    name="forever", entities=[user],
    source=ParquetSource("data/forever.parquet"), schema=[Field("clicks", Int64)],
)
"""


def _repo(
    tmp_path: Path, *, ttl: str, grace: str, event_us: np.ndarray, rewrite: bool = False
) -> None:
    """A repo with an embedded store: view ``short`` (ttl) and ``forever`` (no ttl);
    ``rewrite``: only the views' data."""
    if not rewrite:
        (tmp_path / "featurestore.yaml").write_text(
            "project: purge\nonline_store:\n  type: embedded\n  map_size: 64MB\n"
            f"  key_ttl_grace: {grace}\n"
        )
        (tmp_path / "definitions.py").write_text(textwrap.dedent(DEFS.format(ttl=ttl)))
        (tmp_path / "data").mkdir()
    n = len(event_us)
    for name in ("short", "forever"):
        pq.write_table(
            pa.table(
                {
                    "user_id": pa.array(np.arange(n), pa.int64()),
                    "event_timestamp": pa.array(event_us, pa.timestamp("us", tz="UTC")),
                    "clicks": pa.array(np.arange(n) * 10, pa.int64()),
                }
            ),
            tmp_path / "data" / f"{name}.parquet",
        )


def _online_keys(view: str, n: int) -> list[bytes]:
    return build_keys("purge", view, ("user_id",), [list(range(n))])


def test_materialized_rows_expire_at_event_time_plus_ttl_plus_grace(tmp_path: Path) -> None:
    n = 40
    now = datetime.now(timezone.utc).replace(microsecond=0)
    now_us = int(now.timestamp()) * 1_000_000
    hour = 3_600_000_000
    event_us = now_us - np.arange(n, dtype=np.int64) * hour  # one user per hour back
    _repo(tmp_path, ttl="2d", grace="1d", event_us=event_us)
    with FeatureStore(tmp_path) as fs:
        fs.apply()
        fs.materialize(now - timedelta(days=10), now)
        online = fs.online
        assert isinstance(online, EmbeddedOnlineStore)
        short, forever = _online_keys("short", n), _online_keys("forever", n)
        assert _stored_keys(online) == set(short) | set(forever)
        before = online.read(short + forever)
        # purge as of 3 days - 10.5 hours from now: users 0..10 (events 0..10 h back) remain
        cutoff_ms = (now_us + 3 * 24 * hour - 21 * hour // 2) // 1000
        expires_ms = (event_us + 3 * 24 * hour) // 1000
        doomed = {k for k, e in zip(short, expires_ms, strict=True) if e <= cutoff_ms}
        assert len(doomed) == n - 11
        assert online.purge_expired(now_ms=cutoff_ms) == len(doomed)
        assert _stored_keys(online) == set(short) - doomed | set(forever)
        after = online.read(short + forever)
        for k, b, a in zip(short + forever, before, after, strict=True):
            assert a == (None if k in doomed else b)
        # far in the future: every ttl row goes, the no-ttl view stays whole
        assert online.purge_expired(now_ms=FAR) == 11
        assert _stored_keys(online) == set(forever)


LINE = re.compile(r"^purged ([\d,]+) expired rows from the embedded online store in \d+\.\d\d s$")


def test_cli_purges_the_expired_rows(tmp_path: Path) -> None:
    n = 25
    _repo(tmp_path, ttl="3s", grace="1s", event_us=np.zeros(n, np.int64))
    with FeatureStore(tmp_path) as fs:
        fs.apply()
        # the rows' time is set after apply, so a slow apply does not eat into their 3 s
        t0_us = time.time_ns() // 1000
        event_us = np.full(n, t0_us - 1_000_000, np.int64)  # expire at t0 - 1 s + 3 s + 1 s
        _repo(tmp_path, ttl="3s", grace="1s", event_us=event_us, rewrite=True)
        start = datetime.fromtimestamp(t0_us / 1e6 - 60, timezone.utc)
        res = fs.materialize(start, datetime.fromtimestamp(t0_us / 1e6, timezone.utc))
        assert res.rows == {"short": n, "forever": n}  # all written: none expired yet
    runner = CliRunner()
    time.sleep(max(0.0, (t0_us + 3_000_000) / 1e6 - time.time()) + 0.1)
    out = runner.invoke(cli, ["--repo", str(tmp_path), "purge-expired"])
    assert out.exit_code == 0, out.output
    assert LINE.match(out.output.strip()), out.output
    assert LINE.match(out.output.strip()).group(1) == "25"  # type: ignore[union-attr]
    store = EmbeddedOnlineStore(str(tmp_path / "data" / "online_store"))
    assert _stored_keys(store) == set(_online_keys("forever", n))
    store.close()
    again = runner.invoke(cli, ["--repo", str(tmp_path), "purge-expired", "--batch", "1"])
    assert LINE.match(again.output.strip()).group(1) == "0"  # type: ignore[union-attr]
    bad = runner.invoke(cli, ["--repo", str(tmp_path), "purge-expired", "--batch", "0"])
    assert bad.exit_code != 0 and "--batch" in bad.output


def test_redis_expires_keys_itself(tmp_path: Path, redis_url: str) -> None:
    config = online_config("redis", tmp_path, url=redis_url, project="purge_redis")
    with open_online_store(config) as store:
        keys = build_keys("purge_redis", "v", ("user_id",), [[1, 2]])
        expire_ms = int(time.time() * 1000) + 60_000
        store.write_batch(keys, [b"a", b"b"], [expire_ms, None])
        assert store.purge_expired() == 0
        assert store.purge_expired(now_ms=FAR, batch=1) == 0  # deletes nothing, even "later"
        assert store.read(keys) == [b"a", b"b"]
    (tmp_path / "featurestore.yaml").write_text(
        f"project: purge_redis\nonline_store:\n  type: redis\n  url: {redis_url}\n"
    )
    out = CliRunner().invoke(cli, ["--repo", str(tmp_path), "purge-expired"])
    assert out.exit_code == 0, out.output
    assert (
        out.output.strip() == "the redis online store: Redis expires keys itself, nothing to purge"
    )
