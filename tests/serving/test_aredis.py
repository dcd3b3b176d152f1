"""The event-loop Redis reader against real redis-server processes: values, FIFO, failures."""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featurestore.errors import OnlineStoreError, OnlineStoreUnavailableError
from featurestore.online.serving._aredis import AsyncRedisReader
from featurestore.online.serving._inline import DeadlineExceeded
from tests.conftest import HOST, RedisProcess, start_redis

SLACK = 2.0  # generous: the box is shared; only upper bounds on deadline behaviour


def _reader(url: str, *, connect_timeout: float = 2.0, socket_timeout: float = 5.0) -> Any:
    return AsyncRedisReader(url, connect_timeout=connect_timeout, socket_timeout=socket_timeout)


def _soon(seconds: float = 5.0) -> float:
    return time.monotonic() + seconds


def _stat(client: Any, field: str) -> int:
    """An INFO field, read on ``client``'s pooled connection (no new connection per probe)."""
    return int(client.info()[field])


def _newest_id(admin: Any) -> int:
    return max(int(c["id"]) for c in admin.client_list())


def _left_open_since(admin: Any, newest: int, wait_s: float = 5.0) -> list[dict[str, Any]]:
    """Connections opened after client id ``newest`` that are still open (``admin``'s own
    excepted), once they had ``wait_s`` to go away."""
    own = admin.client_id()
    deadline = time.monotonic() + wait_s
    while True:
        left = [c for c in admin.client_list() if int(c["id"]) > newest and int(c["id"]) != own]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.02)


@pytest.fixture
def runner() -> Iterator[asyncio.Runner]:
    """One event loop for the whole test (the reader keeps one connection per loop)."""
    with asyncio.Runner() as r:
        yield r


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A redis-server of this test's own (it gets stopped, killed or reconfigured)."""
    server = start_redis(tmp_path / "redis")
    yield server
    if server.proc.poll() is None:
        os.kill(server.proc.pid, signal.SIGCONT)
    server.stop()


# ---- values ----------------------------------------------------------------------------------


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    stored=st.dictionaries(st.binary(min_size=1, max_size=24), st.binary(max_size=64), max_size=20),
    missing=st.lists(st.binary(min_size=1, max_size=24), max_size=10),
    order=st.randoms(use_true_random=False),
)
def test_mget_equals_redis_py_mget(redis_url: str, runner, stored, missing, order) -> None:
    import redis

    prefix = uuid.uuid4().hex.encode() + b":"  # examples share the server: no cross-talk
    client = redis.Redis.from_url(redis_url)
    if stored:
        client.mset({prefix + k: v for k, v in stored.items()})
    keys = [prefix + k for k in [*stored, *missing]]
    order.shuffle(keys)
    reader = _reader(redis_url)
    try:
        got = runner.run(reader.mget(keys, _soon()))
    finally:
        reader.close()
    assert got == client.mget(keys)
    for k, v in zip(keys, got, strict=True):
        assert v == stored.get(k[len(prefix) :])  # missing (and only missing) keys are None
    client.close()


def test_empty_key_list_and_ping(redis_url: str, runner) -> None:
    reader = _reader(redis_url)
    assert runner.run(reader.mget([], _soon())) == []
    runner.run(reader.ping(_soon()))
    reader.close()


def test_many_concurrent_mgets_get_their_own_answers_on_one_connection(
    redis_url: str, runner
) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    n = 500
    client.mset({f"k{i}": f"v{i}" * (i % 7 + 1) for i in range(n)})
    reader = _reader(redis_url)
    runner.run(reader.ping(_soon()))  # connected: every command below goes on this connection
    before = _stat(client, "total_connections_received")

    from featurestore.online.serving import _aredis

    writes: list[int] = []
    flush = _aredis._Connection._flush

    def counting_flush(self: Any) -> None:
        if self.out:
            writes.append(len(self.out))
        flush(self)

    send = _aredis._Connection.send

    def counting_send(self: Any, command: bytes) -> Any:
        fut = send(self, command)
        if not self.out or self.out[-1] is not command:  # written at once (connection idle)
            writes.append(1)
        return fut

    async def one(i: int) -> tuple[int, list[bytes | None]]:
        await asyncio.sleep(0)
        keys = [f"k{i}".encode(), f"missing{i}".encode(), f"k{(i * 7) % n}".encode()]
        return i, await reader.mget(keys, _soon())

    async def many() -> list[tuple[int, list[bytes | None]]]:
        return await asyncio.gather(*(one(i) for i in range(n)))

    mp = pytest.MonkeyPatch()
    mp.setattr(_aredis._Connection, "_flush", counting_flush)
    mp.setattr(_aredis._Connection, "send", counting_send)
    try:
        results = runner.run(many())
    finally:
        mp.undo()
    for i, got in results:
        j = (i * 7) % n
        assert got == [f"v{i}".encode() * (i % 7 + 1), None, f"v{j}".encode() * (j % 7 + 1)]
    assert _stat(client, "total_connections_received") == before  # no new connection
    assert sum(writes) == n and len(writes) < 10  # coalesced: a few writes, not one per command
    reader.close()
    client.close()


# ---- URL: password, db, unix socket, supports() ---------------------------------------------------


def test_password_and_db_from_the_url(private_redis: RedisProcess, runner) -> None:
    import redis

    c0 = private_redis.client()
    c0.config_set("requirepass", "s3cr:et")
    c0 = redis.Redis(host=HOST, port=private_redis.port, password="s3cr:et", db=0)
    c3 = redis.Redis(host=HOST, port=private_redis.port, password="s3cr:et", db=3)
    c0.set("k", "db0")
    c3.set("k", "db3")
    base = f"{HOST}:{private_redis.port}"
    for url, want in [
        (f"redis://:s3cr%3Aet@{base}/0", b"db0"),
        (f"redis://:s3cr%3Aet@{base}/3", b"db3"),
        (f"redis://:s3cr%3Aet@{base}?db=3", b"db3"),
        (f"redis://default:s3cr%3Aet@{base}/3", b"db3"),  # AUTH user password
    ]:
        reader = _reader(url)
        assert runner.run(reader.mget([b"k", b"nope"], _soon())) == [want, None], url
        reader.close()
    c0.close()
    c3.close()


def test_wrong_password_is_unavailable_names_the_url_and_leaks_no_connection(
    private_redis: RedisProcess, runner
) -> None:
    import redis

    private_redis.client().config_set("requirepass", "right")
    admin = redis.Redis(host=HOST, port=private_redis.port, password="right")
    newest = _newest_id(admin)
    url = f"redis://:wrongpw@{HOST}:{private_redis.port}/0"
    reader = _reader(url)
    for _ in range(3):  # each read tries again
        with pytest.raises(OnlineStoreUnavailableError) as info:
            runner.run(reader.mget([b"k"], _soon()))
        msg = str(info.value)
        assert f"redis://:***@{HOST}:{private_redis.port}/0" in msg
        assert "wrongpw" not in msg and "WRONGPASS" in msg
    # the refused handshakes closed their sockets (they used to stay open)
    assert _left_open_since(admin, newest) == []
    reader.close()
    admin.close()


def test_bad_db_index_is_a_store_error_naming_the_url(private_redis: RedisProcess, runner) -> None:
    admin = private_redis.client()
    newest = _newest_id(admin)
    reader = _reader(f"redis://{HOST}:{private_redis.port}/99")
    with pytest.raises(OnlineStoreError) as info:
        runner.run(reader.mget([b"k"], _soon()))
    assert not isinstance(info.value, OnlineStoreUnavailableError)
    assert "DB index is out of range" in str(info.value)
    assert f"redis://{HOST}:{private_redis.port}/99" in str(info.value)
    assert _left_open_since(admin, newest) == []  # the failed handshake closed its socket
    reader.close()


def test_unix_socket_url(tmp_path: Path, runner) -> None:
    sock_dir = Path(tempfile.mkdtemp(prefix="fsr", dir="/tmp"))  # short: sun_path is 108 bytes
    sock = sock_dir / "r.sock"
    server = start_redis(tmp_path / "unix", "--unixsocket", str(sock), "--unixsocketperm", "700")
    try:
        import redis

        redis.Redis(host=HOST, port=server.port, db=0).set("u", "zero")
        redis.Redis(host=HOST, port=server.port, db=2).set("u", "two")
        for url, want in [(f"unix://{sock}", b"zero"), (f"unix://{sock}?db=2", b"two")]:
            assert AsyncRedisReader.supports(url)
            reader = _reader(url)
            assert runner.run(reader.mget([b"u", b"x"], _soon())) == [want, None]
            reader.close()
    finally:
        server.stop()
        sock.unlink(missing_ok=True)
        sock_dir.rmdir()


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("redis://localhost:6379/0", True),
        ("redis://localhost", True),
        ("redis://:pw@localhost:6379/2", True),
        ("redis://user:pw@localhost:6379?db=2", True),
        ("unix:///tmp/redis.sock", True),
        ("unix:///tmp/redis.sock?db=1", True),
        ("rediss://localhost:6379/0", True),  # TLS, with redis-py's ssl_* options
        ("rediss://:pw@localhost:6379/0?ssl_ca_certs=/x/ca.pem&ssl_check_hostname=false", True),
        (
            "rediss://localhost/0?ssl_certfile=/c.pem&ssl_keyfile=/k.pem&ssl_cert_reqs=optional",
            True,
        ),
        ("rediss://localhost:6379/0?ssl_cert_reqs=sometimes", False),  # not a level redis-py has
        ("rediss://localhost:6379/0?ssl_ciphers=HIGH", False),  # an option it would ignore
        ("redis://localhost:6379/0?ssl_ca_certs=/x/ca.pem", False),  # TLS options without TLS
        ("redis://localhost:6379/0?socket_timeout=1", False),  # an option it would ignore
        ("unix:///tmp/redis.sock?db=1&ssl_cert_reqs=none", False),
        ("redis://localhost:6379/notadb", False),
        ("http://localhost:6379", False),
        ("localhost:6379", False),
    ],
)
def test_supports(url: str, ok: bool) -> None:
    assert AsyncRedisReader.supports(url) is ok


# ---- failures ------------------------------------------------------------------------------------


def test_sigstopped_redis_misses_the_deadline_then_answers_in_step(
    private_redis: RedisProcess, runner
) -> None:
    admin = private_redis.client()
    admin.mset({f"s{i}": f"val{i}" for i in range(20)})
    reader = _reader(private_redis.url, socket_timeout=30.0)  # never judged hung here
    assert runner.run(reader.mget([b"s0"], _soon())) == [b"val0"]
    before = _stat(admin, "total_connections_received")

    async def late(i: int, budget: float) -> float:
        t = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            await reader.mget([f"s{i}".encode()], time.monotonic() + budget)
        return time.monotonic() - t

    async def all_late() -> list[float]:
        return await asyncio.gather(*(late(i, 0.1 + 0.05 * i) for i in range(1, 6)))

    os.kill(private_redis.proc.pid, signal.SIGSTOP)
    try:
        took = runner.run(all_late())
    finally:
        os.kill(private_redis.proc.pid, signal.SIGCONT)
    for i, t in enumerate(took, start=1):
        assert t < 0.1 + 0.05 * i + SLACK
    # the five late replies come now and are dropped: each read gets its own keys' values
    for _ in range(3):
        keys = [f"s{i}".encode() for i in (7, 8, 9)]
        assert runner.run(reader.mget(keys, _soon())) == [b"val7", b"val8", b"val9"]
    assert _stat(admin, "total_connections_received") == before  # the same connection
    reader.close()


def test_a_connection_hung_past_the_socket_timeout_is_dropped_and_replaced(
    private_redis: RedisProcess, runner
) -> None:
    admin = private_redis.client()
    admin.set("h", "here")
    reader = _reader(private_redis.url, socket_timeout=0.2)
    assert runner.run(reader.mget([b"h"], _soon())) == [b"here"]
    before = _stat(admin, "total_connections_received")

    async def hung() -> tuple[float, BaseException | None]:
        t = time.monotonic()
        other = asyncio.ensure_future(reader.mget([b"h"], time.monotonic() + 10))
        with pytest.raises(DeadlineExceeded):
            await reader.mget([b"h"], time.monotonic() + 0.5)
        # past the socket timeout: the connection is aborted, the longer read fails now
        with pytest.raises(OnlineStoreUnavailableError):
            await other
        return time.monotonic() - t, None

    os.kill(private_redis.proc.pid, signal.SIGSTOP)
    try:
        took, _ = runner.run(hung())
    finally:
        os.kill(private_redis.proc.pid, signal.SIGCONT)
    assert took < 0.5 + SLACK  # not the 10 s of the longer read
    assert runner.run(reader.mget([b"h", b"x"], _soon())) == [b"here", None]
    assert _stat(admin, "total_connections_received") == before + 1  # reconnected once
    reader.close()


def test_short_deadlines_still_find_a_hung_connection(private_redis: RedisProcess, runner) -> None:
    """Every deadline is shorter than the socket timeout; the oldest wait still counts."""
    admin = private_redis.client()
    admin.set("h", "here")
    reader = _reader(private_redis.url, socket_timeout=0.3)
    assert runner.run(reader.mget([b"h"], _soon())) == [b"here"]
    before = _stat(admin, "total_connections_received")

    async def short_reads() -> list[str]:
        outcomes = []
        for _ in range(6):  # 0.1 s each: 0.6 s in all, twice the socket timeout
            try:
                await reader.mget([b"h"], time.monotonic() + 0.1)
                outcomes.append("answered")
            except DeadlineExceeded:
                outcomes.append("deadline")
            except OnlineStoreUnavailableError:
                outcomes.append("unavailable")
        return outcomes

    os.kill(private_redis.proc.pid, signal.SIGSTOP)
    try:
        outcomes = runner.run(short_reads())
    finally:
        os.kill(private_redis.proc.pid, signal.SIGCONT)
    assert "answered" not in outcomes and outcomes[0] == "deadline"
    assert runner.run(reader.mget([b"h"], _soon())) == [b"here"]
    # the hung connection was dropped (a new one was made) while the server was stopped
    assert _stat(admin, "total_connections_received") > before
    reader.close()


def test_killed_redis_fails_fast_and_a_restart_on_the_same_port_recovers(
    private_redis: RedisProcess, tmp_path: Path, runner
) -> None:
    reader = _reader(private_redis.url, socket_timeout=30.0)
    private_redis.client().set("a", "1")
    assert runner.run(reader.mget([b"a"], _soon())) == [b"1"]

    async def pending_then_kill() -> float:
        os.kill(private_redis.proc.pid, signal.SIGSTOP)
        read = asyncio.ensure_future(reader.mget([b"a"], time.monotonic() + 20))
        await asyncio.sleep(0.1)
        t = time.monotonic()
        private_redis.proc.kill()
        with pytest.raises(OnlineStoreUnavailableError) as info:
            await read
        assert f"{HOST}:{private_redis.port}" in str(info.value)
        return time.monotonic() - t

    assert runner.run(pending_then_kill()) < SLACK  # the pending read fails, not at 20 s
    private_redis.proc.wait(timeout=10)
    t = time.monotonic()
    with pytest.raises(OnlineStoreUnavailableError):  # connection refused now
        runner.run(reader.mget([b"a"], _soon(20)))
    assert time.monotonic() - t < SLACK
    again = start_redis(tmp_path / "again", port=private_redis.port)
    try:
        again.client().set("a", "2")
        assert runner.run(reader.mget([b"a", b"b"], _soon())) == [b"2", None]  # same reader
    finally:
        again.stop()
    reader.close()


def test_a_connection_the_server_dropped_while_idle_is_replaced(
    private_redis: RedisProcess, runner
) -> None:
    admin = private_redis.client()
    admin.set("i", "idle")
    reader = _reader(private_redis.url)

    async def scenario() -> list[bytes | None]:
        assert await reader.mget([b"i"], _soon()) == [b"idle"]
        killed = await asyncio.to_thread(
            admin.execute_command, "CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"
        )
        assert killed >= 1  # the reader's (and any other idle admin connection)
        return await reader.mget([b"i", b"j"], _soon())  # the close may or may not be seen yet

    before = _stat(admin, "total_connections_received")
    assert runner.run(scenario()) == [b"idle", None]
    assert _stat(admin, "total_connections_received") >= before + 2  # connect, then reconnect
    reader.close()


def test_connection_refused_is_unavailable(unused_port: int, runner) -> None:
    url = f"redis://:topsecret@{HOST}:{unused_port}/0"
    reader = _reader(url)
    t = time.monotonic()
    with pytest.raises(OnlineStoreUnavailableError) as info:
        runner.run(reader.mget([b"a"], _soon(10)))
    assert time.monotonic() - t < SLACK
    msg = str(info.value)
    assert f"redis://:***@{HOST}:{unused_port}/0" in msg and "topsecret" not in msg
    assert "online_store.url" in msg  # says where to fix it
    reader.close()


def test_an_error_reply_is_a_store_error_and_the_connection_stays_in_step(
    tmp_path: Path, runner
) -> None:
    server = start_redis(tmp_path / "renamed", "--rename-command", "MGET", "")
    try:
        reader = _reader(server.url)
        with pytest.raises(OnlineStoreError) as info:
            runner.run(reader.mget([b"a"], _soon()))
        assert not isinstance(info.value, OnlineStoreUnavailableError)
        assert "unknown command" in str(info.value) and server.url in str(info.value)
        runner.run(reader.ping(_soon()))  # the next reply on the same connection is its own
    finally:
        server.stop()


def test_error_replies_interleaved_with_answers_keep_fifo(
    private_redis: RedisProcess, runner
) -> None:
    admin = private_redis.client()
    admin.mset({f"ok:{i}": str(i) for i in range(50)} | {f"secret:{i}": "x" for i in range(50)})
    admin.execute_command("ACL", "SETUSER", "reader", "on", ">pw", "~ok:*", "+mget", "+ping")
    reader = _reader(f"redis://reader:pw@{HOST}:{private_redis.port}/0")

    async def one(i: int) -> Any:
        key = f"ok:{i}" if i % 3 else f"secret:{i}"
        try:
            return await reader.mget([key.encode()], _soon())
        except OnlineStoreError as exc:
            return exc

    async def many() -> list[Any]:
        return await asyncio.gather(*(one(i) for i in range(50)))

    for i, got in enumerate(runner.run(many())):
        if i % 3:
            assert got == [str(i).encode()]
        else:
            assert isinstance(got, OnlineStoreError) and "NOPERM" in str(got)
            assert "reader:***@" in str(got) and ":pw@" not in str(got)
    reader.close()


def test_close_fails_pending_and_later_reads(private_redis: RedisProcess, runner) -> None:
    reader = _reader(private_redis.url)
    assert runner.run(reader.mget([b"k"], _soon())) == [None]

    async def close_while_pending() -> None:
        os.kill(private_redis.proc.pid, signal.SIGSTOP)
        read = asyncio.ensure_future(reader.mget([b"k"], time.monotonic() + 20))
        await asyncio.sleep(0.05)
        reader.close()
        with pytest.raises(OnlineStoreUnavailableError):
            await asyncio.wait_for(read, SLACK)

    try:
        runner.run(close_while_pending())
    finally:
        os.kill(private_redis.proc.pid, signal.SIGCONT)
    with pytest.raises(OnlineStoreUnavailableError) as info:
        runner.run(reader.mget([b"k"], _soon()))
    assert "closed" in str(info.value)
    with pytest.raises(OnlineStoreUnavailableError):
        runner.run(reader.ping(_soon()))


def test_a_past_deadline_raises_without_waiting(redis_url: str, runner) -> None:
    reader = _reader(redis_url)
    with pytest.raises(DeadlineExceeded):  # not connected yet: no time left to connect
        runner.run(reader.mget([b"k"], time.monotonic() - 1))
    reader.close()


# ---- the engine over it ---------------------------------------------------------------------------


def test_engine_aget_features_over_aredis_equals_the_sync_paths(
    redis_url: str, tmp_path: Path
) -> None:
    from featurestore.online.serving.engine import Engine
    from tests.serving.conftest import make_repo

    repo = make_repo(tmp_path / "repo", online="redis", redis_url=redis_url)
    engine = Engine.from_repo(str(repo)).start(poll=False)
    try:
        assert engine._aredis is not None  # "auto" on a single Redis: the event-loop reader
        calls: list[int] = []
        real = engine._aredis.mget

        async def counted(keys: Any, deadline: float) -> Any:
            calls.append(len(keys))
            return await real(keys, deadline)

        engine._aredis.mget = counted  # type: ignore[method-assign]
        entities = {"user_id": [1, 7, 9999, 3], "merchant_id": [2, 2, 5, 77]}
        for kwargs in (
            {"feature_service": "everything"},
            {"features": ["user_stats:tx_count", "merchant_stats:risk"]},
            {"feature_service": "everything", "include_event_timestamps": True},
            {"feature_service": "scoring", "full_feature_names": True},
        ):
            a = asyncio.run(engine.aget_features(entities=entities, **kwargs))
            s = engine.get_features(entities=entities, **kwargs)
            assert not a.degraded and a.to_dict() == s.to_dict() and a.columns == s.columns
            refs = kwargs.get("features") or engine.store.get_feature_service(
                kwargs["feature_service"]
            )
            direct = engine.store.get_online_features(
                refs,
                entities,
                full_feature_names=kwargs.get("full_feature_names", False),
                include_event_timestamps=kwargs.get("include_event_timestamps", False),
            )
            assert a.columns == direct.to_dict()
            want = {k: [getattr(x, "name", x) for x in v] for k, v in direct.statuses.items()}
            assert {k: a.statuses[k] for k in want} == want
        assert len(calls) == 4 and all(n > 0 for n in calls)
        assert a.columns["user_id"] == [1, 7, 9999, 3]
        tx = "user_stats__tx_count" if "user_stats__tx_count" in a.columns else "tx_count"
        assert a.columns[tx] == [10, 70, 0, 30]
    finally:
        engine.close()


def test_a_command_on_an_idle_connection_goes_out_at_once(redis_url: str, runner: Any) -> None:
    from featurestore.online._redis_wire import pack_mget

    reader = _reader(redis_url)
    runner.run(reader.ping(_soon()))

    async def check() -> list[Any]:
        conn = reader._usable(asyncio.get_running_loop())
        first = conn.send(pack_mget([b"idle-a"]))
        assert not conn.out and not conn.flush_scheduled  # written now: no loop pass to wait
        second = conn.send(pack_mget([b"idle-b"]))
        assert conn.out and conn.flush_scheduled  # one in flight: batched into this pass
        return [await first, await second]

    assert runner.run(check()) == [[None], [None]]
    reader.close()
