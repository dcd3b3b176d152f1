"""Redis specifics against real servers: one round trip per read, PXAT expiry, clear errors."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from featurestore.errors import OnlineStoreUnavailableError
from featurestore.online.base import open_online_store
from featurestore.online.keys import build_keys
from featurestore.online.redis_store import RedisClusterOnlineStore, RedisOnlineStore


def _cmdstats(client: Any) -> dict[str, int]:
    info = client.info("commandstats")
    return {k.removeprefix("cmdstat_"): v["calls"] for k, v in info.items()}


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    out = {k: v - before.get(k, 0) for k, v in after.items()}
    admin = ("info", "hello", "client", "cluster", "command", "ping")
    return {k: v for k, v in out.items() if v and not k.startswith(admin)}


def test_read_of_many_keys_and_views_is_one_mget(redis_url: str, redis_server: Any) -> None:
    store = RedisOnlineStore(redis_url)
    keys = [k for v in ("a", "b", "c") for k in build_keys("p", v, ("id",), [list(range(100))])]
    store.write_batch(keys, [b"v"] * len(keys))
    client = redis_server.client()
    before = _cmdstats(client)
    assert store.read(keys) == [b"v"] * 300
    assert _delta(before, _cmdstats(client)) == {"mget": 1}
    store.close()


def test_writes_are_sets_with_pxat_and_past_expiries_are_skipped(
    redis_url: str, redis_server: Any
) -> None:
    store = RedisOnlineStore(redis_url)
    keys = build_keys("p", "v", ("id",), [[1, 2, 3]])
    now_ms = int(time.time() * 1000)
    client = redis_server.client()
    before = _cmdstats(client)
    store.write_batch(keys, [b"1", b"2", b"3"], [now_ms + 60_000, now_ms - 5, None])
    assert _delta(before, _cmdstats(client)) == {"set": 2}
    assert 0 < client.pttl(keys[0]) <= 60_000
    assert client.exists(keys[1]) == 0
    assert client.pttl(keys[2]) == -1  # no expiry
    store.close()


class _SendCounter:
    """Counts send_packed_command calls (one per round trip) on every redis connection."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = redis.connection.AbstractConnection.send_packed_command

        def counting(conn: Any, *a: Any, **k: Any) -> Any:
            self.calls += 1
            return real(conn, *a, **k)

        monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)


def test_cluster_read_is_one_round_trip_per_node(
    redis_cluster_url: str, redis_cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = RedisClusterOnlineStore(redis_cluster_url)
    keys = [k for v in ("a", "b") for k in build_keys("p", v, ("id",), [list(range(300))])]
    store.write_batch(keys, [b"x%d" % i for i in range(len(keys))])
    store.ping()  # connections exist before counting
    counter = _SendCounter(monkeypatch)
    got = store.read(keys)
    assert got == [b"x%d" % i for i in range(len(keys))]
    assert counter.calls == len(redis_cluster.nodes)  # 600 keys spread over all 3 nodes
    store.close()


def test_cluster_keys_of_one_entity_live_on_one_node(
    redis_cluster_url: str, redis_cluster: Any
) -> None:
    store = RedisClusterOnlineStore(redis_cluster_url)
    keys = [build_keys("p", v, ("id",), [[42]])[0] for v in ("a", "b", "c", "d")]
    store.write_batch(keys, [b"1", b"2", b"3", b"4"])
    befores = [_cmdstats(n.client()) for n in redis_cluster.nodes]
    assert store.read(keys) == [b"1", b"2", b"3", b"4"]
    nodes = redis_cluster.nodes
    deltas = [_delta(b, _cmdstats(n.client())) for b, n in zip(befores, nodes, strict=True)]
    assert sorted(d.get("mget", 0) for d in deltas) == [0, 0, 1]
    assert all(set(d) <= {"mget"} for d in deltas)
    store.close()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections (kernel backlog) but never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield s.getsockname()[1]


@pytest.mark.parametrize("kind", ["redis", "redis_cluster"])
@pytest.mark.parametrize("where", ["refused", "silent"])
def test_unanswering_url_fails_fast_naming_url_and_config_key(
    kind: str,
    where: str,
    silent_port: int,
    unused_port: int,
    tmp_path: Any,
    make_online_config: Any,
) -> None:
    port = silent_port if where == "silent" else unused_port
    url = f"redis://127.0.0.1:{port}/0" if kind == "redis" else f"redis://127.0.0.1:{port}"
    config = make_online_config(kind, tmp_path, url=url, connect_timeout=0.3, socket_timeout=0.3)
    store = open_online_store(config)
    t0 = time.monotonic()
    with pytest.raises(OnlineStoreUnavailableError) as info:
        store.read([b"k"])
    elapsed = time.monotonic() - t0
    assert elapsed < 2.0, f"took {elapsed:.2f}s with 0.3s timeouts"
    assert f"127.0.0.1:{port}" in str(info.value)
    assert "online_store.url" in str(info.value)
    assert ".." not in str(info.value)  # redis-py's own message ends with a period already
    with pytest.raises(OnlineStoreUnavailableError):
        store.ping()


def test_error_reply_surfaces_and_the_store_keeps_working(
    redis_url: str, redis_server: Any
) -> None:
    from featurestore.errors import OnlineStoreError

    store = RedisOnlineStore(redis_url)
    keys = build_keys("p", "v", ("id",), [list(range(50))])
    client = redis_server.client()
    client.config_set("maxmemory", "1")  # every write now fails with OOM (noeviction)
    try:
        with pytest.raises(OnlineStoreError, match="maxmemory"):
            store.write_batch(keys, [b"x"] * 50)
    finally:
        client.config_set("maxmemory", "0")
    assert store.read(keys[:2]) == [None, None]  # the connection is usable, replies in sync
    store.write_batch(keys, [b"y"] * 50)
    assert store.read(keys) == [b"y"] * 50
    store.close()


def test_plain_reply_reading_fallback(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a hiredis reader, replies are read one by one through redis-py."""
    from featurestore.online import _redis_wire as wire

    real = wire.read_replies

    def without_reader(conn: Any, count: int) -> Any:
        class _Plain:
            def read_response(self) -> Any:
                return conn.read_response()

        return real(_Plain(), count)

    monkeypatch.setattr(wire, "read_replies", without_reader)
    store = RedisOnlineStore(redis_url)
    keys = build_keys("p", "v", ("id",), [list(range(3000))])
    now_ms = int(time.time() * 1000)
    store.write_batch(keys, [b"%d" % i for i in range(3000)], [now_ms + 60_000] * 3000)
    assert store.read(keys) == [b"%d" % i for i in range(3000)]
    store.close()


def test_cluster_write_with_a_stale_slot_map_falls_back_to_redirects(
    redis_cluster_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from featurestore.online import _redis_wire as wire

    store = RedisClusterOnlineStore(redis_cluster_url)
    client = store._client()
    one_node = client.get_primaries()[0]
    # pretend every key lives on one node: the others' keys come back MOVED
    monkeypatch.setattr(wire, "group_by_node", lambda c, keys: {one_node: list(range(len(keys)))})
    keys = build_keys("p", "v", ("id",), [list(range(300))])
    store.write_batch(keys, [b"%d" % i for i in range(300)])
    assert store.read(keys) == [b"%d" % i for i in range(300)]
    store.close()


def test_cluster_read_with_a_stale_slot_map_falls_back_to_redirects(
    redis_cluster_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from featurestore.online import _redis_wire as wire

    store = RedisClusterOnlineStore(redis_cluster_url)
    keys = build_keys("p", "v", ("id",), [list(range(300))])
    store.write_batch(keys, [b"%d" % i for i in range(300)])
    client = store._client()
    one_node = client.get_primaries()[0]
    real = wire.group_by_slot

    def stale(c: Any, ks: Any) -> Any:
        merged: dict[int, list[int]] = {}
        for slots in real(c, ks).values():
            merged.update(slots)
        return {one_node: merged}  # every slot sent to one node: the others answer MOVED

    monkeypatch.setattr(wire, "group_by_slot", stale)
    assert store.read(keys) == [b"%d" % i for i in range(300)]
    store.close()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=5000), max_size=40))
def test_packed_mget_is_the_resp_a_client_library_sends(keys: list[bytes]) -> None:
    import hiredis

    from featurestore.online._redis_wire import pack_mget

    assert pack_mget(keys) == hiredis.pack_command(("MGET", *keys))
