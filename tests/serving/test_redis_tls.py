"""Redis over TLS with a password (``rediss://`` URLs, redis-py's ``ssl_*`` options), as managed
Redis services require: the event-loop reader, a served repo, pushes and stream ingestion."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from featurestore import FeatureStore
from featurestore.errors import OnlineStoreUnavailableError
from featurestore.online.serving._aredis import AsyncRedisReader
from tests.conftest import HOST, free_port, redis_server_binary
from tests.serving.conftest import ServerThread, expected_user, make_repo

PASSWORD = "tls:pw"  # a colon: must be quoted in the URL (%3A)
QUOTED = "tls%3Apw"


@dataclass
class TlsRedis:
    """A redis-server that speaks only TLS, with a password, and the PEM files of its CA."""

    port: int
    proc: subprocess.Popen[bytes]
    ca: Path
    client_cert: Path  # a client certificate (and its key) the same CA signed

    def url(self, *options: str, host: str = HOST, password: str = QUOTED) -> str:
        query = "&".join((f"ssl_ca_certs={self.ca}", *options))
        return f"rediss://:{password}@{host}:{self.port}/0?{query}"

    def client(self) -> Any:
        import redis

        return redis.Redis(
            host=HOST, port=self.port, password=PASSWORD, ssl=True, ssl_ca_certs=str(self.ca)
        )


def _start(
    tmp: Path, *extra: str, auth_clients: str = "optional", ca: Any = None, port: int = 0
) -> TlsRedis:
    import redis
    import trustme

    ca = ca or trustme.CA()
    server = ca.issue_cert("127.0.0.1")  # no "localhost": host name checks can fail on purpose
    client = ca.issue_cert("featurestore-client")
    tmp.mkdir(parents=True, exist_ok=True)
    ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
    server.private_key_and_cert_chain_pem.write_to_path(str(tmp / "server.pem"))
    client.private_key_and_cert_chain_pem.write_to_path(str(tmp / "client.pem"))
    port = port or free_port()
    args = [redis_server_binary(), "--port", "0", "--tls-port", str(port), "--bind", HOST]
    args += ["--tls-cert-file", str(tmp / "server.pem"), "--tls-key-file", str(tmp / "server.pem")]
    args += ["--tls-ca-cert-file", str(tmp / "ca.pem"), "--tls-auth-clients", auth_clients]
    args += ["--requirepass", PASSWORD, "--save", "", "--appendonly", "no", "--dir", str(tmp)]
    args += extra
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    out = TlsRedis(port, proc, tmp / "ca.pem", tmp / "client.pem")
    deadline = time.monotonic() + 10
    while True:
        try:
            kw = {"ssl_certfile": str(out.client_cert)} if auth_clients == "yes" else {}
            redis.Redis(
                host=HOST, port=port, password=PASSWORD, ssl=True, ssl_ca_certs=str(out.ca), **kw
            ).ping()
            return out
        except redis.RedisError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"redis-server with TLS did not start (exit {proc.poll()})")
            time.sleep(0.05)


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[TlsRedis]:
    """A TLS-only redis-server (client certificates optional)."""
    server = _start(tmp_path / "tls", auth_clients="optional")
    yield server
    server.proc.terminate()
    server.proc.wait(timeout=10)


@pytest.fixture
def runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as r:
        yield r


def _read(reader: AsyncRedisReader, runner: asyncio.Runner, keys: list[bytes]) -> list[Any]:
    return runner.run(reader.mget(keys, time.monotonic() + 5))


def _reader(url: str) -> AsyncRedisReader:
    return AsyncRedisReader(url, connect_timeout=3.0, socket_timeout=5.0)


def test_the_event_loop_reader_speaks_tls_with_a_password(tls_redis: TlsRedis, runner) -> None:
    tls_redis.client().mset({"a": b"1", "b": b"\x00\xff"})
    url = tls_redis.url()
    assert AsyncRedisReader.supports(url)
    reader = _reader(url)
    assert _read(reader, runner, [b"a", b"nope", b"b"]) == [b"1", None, b"\x00\xff"]
    reader.close()
    # without verification (ssl_cert_reqs=none) no CA is needed
    reader = _reader(f"rediss://:{QUOTED}@{HOST}:{tls_redis.port}/0?ssl_cert_reqs=none")
    assert _read(reader, runner, [b"a"]) == [b"1"]
    reader.close()
    # the certificate names 127.0.0.1 only: "localhost" fails its host name check unless off
    with pytest.raises(OnlineStoreUnavailableError, match=r"(?i)hostname|host name|match"):
        _read(_reader(tls_redis.url(host="localhost")), runner, [b"a"])
    reader = _reader(tls_redis.url("ssl_check_hostname=false", host="localhost"))
    assert _read(reader, runner, [b"a"]) == [b"1"]
    reader.close()


@pytest.mark.parametrize(
    ("make_url", "says"),
    [
        # the system's CAs do not know the test CA
        (lambda s: f"rediss://:{QUOTED}@{HOST}:{s.port}/0", "CERTIFICATE_VERIFY_FAILED"),
        (lambda s: s.url().replace("ca.pem", "missing.pem"), "ssl_ca_certs"),
        (lambda s: s.url(password="wrong"), "WRONGPASS"),
        # plain TCP to a TLS port: the server drops the connection
        (lambda s: s.url().replace("rediss://", "redis://").split("?")[0], "did not answer"),
    ],
    ids=["unknown-ca", "missing-ca-file", "wrong-password", "plain-tcp"],
)
def test_tls_failures_are_unavailable_in_one_line_without_the_password(
    tls_redis: TlsRedis, runner, make_url: Callable[[TlsRedis], str], says: str
) -> None:
    reader = _reader(make_url(tls_redis))
    with pytest.raises(OnlineStoreUnavailableError) as info:
        _read(reader, runner, [b"a"])
    msg = str(info.value)
    assert says in msg
    assert "\n" not in msg and PASSWORD not in msg and QUOTED not in msg
    assert msg.count("did not answer") == 1  # said once, not wrapped twice
    if "missing" in msg:
        assert "missing.pem" in msg  # names the file it could not read
    reader.close()


def test_mutual_tls_needs_the_client_certificate(tmp_path: Path, runner) -> None:
    server = _start(tmp_path / "mtls", auth_clients="yes")
    try:
        with pytest.raises(OnlineStoreUnavailableError):
            _read(_reader(server.url()), runner, [b"a"])
        cert = server.client_cert
        reader = _reader(server.url(f"ssl_certfile={cert}", f"ssl_keyfile={cert}"))
        assert _read(reader, runner, [b"a"]) == [None]
        reader.close()
    finally:
        server.proc.terminate()
        server.proc.wait(timeout=10)


def test_a_repo_on_tls_redis_materializes_serves_and_takes_pushes(
    tls_redis: TlsRedis, tmp_path: Path
) -> None:
    # materialize (redis-py's pipelines) over TLS, then REST and predict through the servers'
    # event-loop reader over TLS, then a push through the store's writes
    repo = make_repo(tmp_path / "repo", online="redis", redis_url=tls_redis.url())
    server = ServerThread.of_repo(repo).start()
    try:
        assert server.app.state.engine._aredis is not None  # the event-loop reader, not the pool
        with httpx.Client(base_url=server.url, timeout=10) as http:
            got = http.post(
                "/get-online-features",
                json={"features": ["user_stats:tx_count", "user_stats:country"],
                      "entities": {"user_id": [3, 7]}},
            )  # fmt: skip
            assert got.status_code == 200, got.text
            values = {n: r["values"] for n, r in zip(got.json()["feature_names"],
                                                      got.json()["results"], strict=True)}  # fmt: skip
            assert values["tx_count"] == [
                expected_user(3)["tx_count"],
                expected_user(7)["tx_count"],
            ]
            assert values["country"] == [expected_user(3)["country"], expected_user(7)["country"]]
            pred = http.post("/predict", json={"model": "fraud", "entities": {"user_id": [3],
                                                                          "merchant_id": [2]}})  # fmt: skip
            assert pred.status_code == 200, pred.text
            assert pred.json()["degraded"] is False
            pushed = http.post(
                "/push",
                json={"feature_view": "user_stats", "rows": {"user_id": [3], "tx_count": [999],
                      "amount_mean": [1.0], "country": ["zz"]}},
            )  # fmt: skip
            assert pushed.status_code == 200, pushed.text
            again = http.post(
                "/get-online-features",
                json={"features": ["user_stats:tx_count"], "entities": {"user_id": [3]}},
            )
            assert again.json()["results"][1]["values"] == [999]
    finally:
        server.stop()


def test_stream_ingestion_over_tls(tls_redis: TlsRedis, tmp_path: Path) -> None:
    from tests.stream.conftest import TX_REFS, now_floor_us, small_repo

    H = 3_600_000_000
    repo = small_repo(tmp_path / "stream", tls_redis.url())
    with FeatureStore(repo) as store:
        store.apply()
        now = now_floor_us()
        store.send_events(
            "tx_stream",
            [
                {"user_id": 5, "event_timestamp": now - H, "amount": 2.0, "merchant_id": 1},
                {"user_id": 5, "event_timestamp": now - 2 * H, "amount": 3.5, "merchant_id": 2},
            ],
        )
        stats = store.ingest(once=True)
        assert (stats.applied, stats.dead) == (2, 0)
        got = store.get_online_features(TX_REFS, [{"user_id": 5}], now=now).to_dict()
        assert got["amount_count_1d"] == [2]
        assert got["amount_sum_1d"] == [5.5]


def test_a_redis_cluster_over_tls_ingests_and_serves(tmp_path: Path) -> None:
    import trustme

    from tests.stream.conftest import TX_REFS, now_floor_us, small_repo

    ca, nodes = trustme.CA(), []
    try:
        for i in range(3):
            port = free_port(with_bus=True)
            nodes.append(
                _start(
                    tmp_path / f"node{i}",
                    *("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"),
                    *("--tls-cluster", "yes", "--masterauth", PASSWORD),
                    ca=ca,
                    port=port,
                )
            )
        clients = [n.client() for n in nodes]
        for i, c in enumerate(clients):
            c.execute_command(
                "CLUSTER", "ADDSLOTSRANGE", i * 5461, 16383 if i == 2 else i * 5461 + 5460
            )
        for c in clients[1:]:
            c.execute_command("CLUSTER", "MEET", HOST, nodes[0].port)
        deadline = time.monotonic() + 30

        def formed(c: Any) -> bool:
            text = c.execute_command("CLUSTER", "INFO").decode()
            return "cluster_state:ok" in text and "cluster_known_nodes:3" in text

        while not all(formed(c) for c in clients):
            assert time.monotonic() < deadline, "the TLS cluster did not form"
            time.sleep(0.05)

        H = 3_600_000_000
        repo = small_repo(tmp_path / "stream", nodes[0].url(), online="redis_cluster")
        with FeatureStore(repo) as store:
            store.apply()
            now = now_floor_us()
            users = list(range(10, 30))  # spread over the three nodes' slots
            store.send_events(
                "tx_stream",
                [
                    {"user_id": u, "event_timestamp": now - H, "amount": float(u), "merchant_id": 1}
                    for u in users
                ],
            )
            stats = store.ingest(once=True)
            assert (stats.applied, stats.dead) == (len(users), 0)
            got = store.get_online_features(TX_REFS, [{"user_id": u} for u in users], now=now)
            assert got.to_dict()["amount_sum_1d"] == [float(u) for u in users]
    finally:
        for n in nodes:
            n.proc.terminate()
            n.proc.wait(timeout=10)
