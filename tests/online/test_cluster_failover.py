"""A Redis Cluster primary killed: once its replica has taken over, reads and writes go to the
replica by themselves. A dead node answers no MOVED, so the store reads the slot map again
after failing to reach a node (it used to keep sending to the dead node until something else,
such as a health check's ping, refreshed the map)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from featurestore.errors import OnlineStoreUnavailableError
from featurestore.online.redis_store import RedisClusterOnlineStore
from tests.conftest import HOST, RedisProcess, start_redis

NODE_TIMEOUT_MS = 1000
LIVENESS_S = 60  # a bound on recovery for the test to end, far above a failover's ~3 s


def _cluster_with_replicas(workdir: Path) -> tuple[list[RedisProcess], list[RedisProcess]]:
    """Three primaries, each with one synced replica."""
    opts = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
    opts += ("--cluster-node-timeout", str(NODE_TIMEOUT_MS))
    nodes = [start_redis(workdir / f"n{i}", *opts, with_bus=True) for i in range(6)]
    primaries, replicas = nodes[:3], nodes[3:]
    for i, p in enumerate(primaries):
        p.client().execute_command(
            "CLUSTER", "ADDSLOTSRANGE", i * 5461, 16383 if i == 2 else i * 5461 + 5460
        )
    for n in nodes[1:]:
        n.client().execute_command("CLUSTER", "MEET", HOST, nodes[0].port)
    deadline = time.monotonic() + 30
    while True:
        try:
            for p, r in zip(primaries, replicas, strict=True):
                r.client().execute_command(
                    "CLUSTER", "REPLICATE", p.client().execute_command("CLUSTER", "MYID")
                )
            break
        except Exception:  # the replica does not know the primary yet
            assert time.monotonic() < deadline, "the cluster did not meet"
            time.sleep(0.1)
    while not all(
        b"cluster_state:ok" in n.client().execute_command("CLUSTER", "INFO")
        and n.client().info("replication").get("master_link_status", "up") == "up"
        for n in nodes
    ):
        assert time.monotonic() < deadline, "the cluster did not form"
        time.sleep(0.1)
    return primaries, replicas


@pytest.fixture
def cluster(tmp_path: Path):
    primaries, replicas = _cluster_with_replicas(tmp_path / "cluster")
    yield primaries, replicas
    for n in primaries + replicas:
        n.stop()


def test_reads_and_writes_follow_a_failover_by_themselves(cluster) -> None:
    primaries, _ = cluster
    url = f"redis://{HOST}:{primaries[0].port}"
    store = RedisClusterOnlineStore(url, connect_timeout=0.5, socket_timeout=0.5)
    keys = [b"fs:{e%d}:v" % i for i in range(300)]  # spread over every primary's slots
    store.write_batch(keys, [b"v%d" % i for i in range(300)])
    for p in primaries:  # every write on a replica too before the kill
        p.client().execute_command("WAIT", 1, 5000)
    assert store.read(keys) == [b"v%d" % i for i in range(300)]

    os.kill(primaries[1].proc.pid, signal.SIGKILL)  # not the node of the URL
    primaries[1].proc.wait()
    deadline = time.monotonic() + LIVENESS_S
    failures = 0
    while True:  # only reads: nothing else (no ping, no health check) refreshes the map
        try:
            got = store.read(keys)
            break
        except OnlineStoreUnavailableError:
            failures += 1
            assert time.monotonic() < deadline, "reads never reached the promoted replica"
            time.sleep(0.2)
    assert failures > 0  # the kill was seen, then the replica answered
    assert got == [b"v%d" % i for i in range(300)]
    store.write_batch(keys[:50], [b"w"] * 50)  # writes go to the new primary too
    assert store.read(keys[:50]) == [b"w"] * 50
    store.close()
