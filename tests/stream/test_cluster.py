"""Stream ingestion when the online store is a Redis Cluster: the streams live on the cluster
too (no ``stream.url``), each on the node of its key's slot."""

from __future__ import annotations

import threading
import time

import pytest
from click.testing import CliRunner

from featurestore import FeatureStore
from featurestore.cli import cli
from featurestore.errors import FeatureStoreError
from featurestore.online.stream import stream_status

from .conftest import H, dead_entries, now_floor_us, pending_count, redis_client_for, small_repo


def _cluster_repo(tmp_path, url: str, project: str):
    repo = small_repo(tmp_path / "repo", url, project=project)
    cfg = repo / "featurestore.yaml"
    cfg.write_text(cfg.read_text().replace("type: redis\n", "type: redis_cluster\n"))
    return repo


def _served(store: FeatureStore, user: int, now: int) -> tuple[int, float | None]:
    got = store.get_online_features(
        ["tx:amount_count_1d", "profile:score"], [{"user_id": user}], now=now
    ).to_dict()
    return got["amount_count_1d"][0], got["score"][0]


def test_following_the_streams_of_a_cluster(tmp_path, redis_cluster_url) -> None:
    repo = _cluster_repo(tmp_path, redis_cluster_url, "clfollow")
    client = redis_client_for(redis_cluster_url, "redis_cluster")
    nodes = {client.get_node_from_key(k).name for k in ("tx_events", "profile_events")}
    assert len(nodes) == 2  # one read per stream, on two nodes
    now = now_floor_us()
    with FeatureStore(repo) as store:
        store.apply()
        stats: list = []
        runner = threading.Thread(target=lambda: stats.append(store.ingest(max_events=7)))
        runner.start()
        try:
            deadline = time.monotonic() + 30
            while client.get("tx_events:ingest-lock") is None and time.monotonic() < deadline:
                time.sleep(0.02)
            # the lock is on the cluster: materializing a streamed view is refused meanwhile
            with pytest.raises(FeatureStoreError, match="featurestore ingest is reading"):
                store.materialize(now - 3 * 24 * H, now, views=["tx"])
            tx = [
                {"user_id": 5, "event_timestamp": now - H + i, "amount": 2.0, "merchant_id": i}
                for i in range(4)
            ]
            store.send_events("tx_stream", tx)  # producers reach the cluster too
            store.send_events("tx_stream", [{"user_id": 5, "amount": 1.0}])  # no time: dead
            prof = {"user_id": 5, "event_timestamp": now - H, "created": now - H}
            store.send_events("profile_stream", [{**prof, "tier": 2, "score": 0.5}])
            store.send_events("profile_stream", [{**prof, "tier": "x", "score": 0.1}])  # dead
        finally:
            runner.join(timeout=60)
        assert not runner.is_alive() and stats, "ingest did not stop after 7 events"
    assert (stats[0].read, stats[0].applied, stats[0].dead) == (7, 5, 2)
    with FeatureStore(repo) as store:
        assert _served(store, 5, now) == (4, 0.5)
        lines = stream_status(store)
    (tx_dead,) = dead_entries(client, "tx_events")
    (prof_dead,) = dead_entries(client, "profile_events")
    assert "event_timestamp" in tx_dead["reason"] and "tier" in prof_dead["reason"]
    assert pending_count(client, "tx_events") == pending_count(client, "profile_events") == 0
    assert any("tx_events" in line and "1 dead letters" in line for line in lines), lines
    assert client.get("tx_events:ingest-lock") is None  # released at the end
    client.close()


def test_an_unreachable_cluster_is_one_line(tmp_path, redis_cluster_url) -> None:
    from tests.conftest import free_port

    repo = _cluster_repo(tmp_path, redis_cluster_url, "cldown")
    with FeatureStore(repo) as store:
        store.apply()
    cfg = repo / "featurestore.yaml"
    cfg.write_text(cfg.read_text().replace(redis_cluster_url, f"redis://127.0.0.1:{free_port()}"))
    out = CliRunner().invoke(cli, ["-r", str(repo), "ingest", "--once"])
    assert out.exit_code == 1
    lines = out.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: stream server redis://127.0.0.1:")
    assert "Traceback" not in out.output


def _restart(cluster) -> None:
    """Stop every node, then start each again on its port with its nodes.conf (same slots, no
    data: a restart without persistence)."""
    from tests.conftest import start_redis

    for node in cluster.nodes:
        node.stop()
    time.sleep(1.0)  # ingest meets refused connections meanwhile
    cluster.nodes = [
        start_redis(node.workdir, "--cluster-enabled", "yes", "--cluster-config-file",
                    "nodes.conf", "--cluster-node-timeout", "5000", with_bus=True,
                    port=node.port)
        for node in cluster.nodes
    ]  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        infos = [n.client().execute_command("CLUSTER", "INFO") for n in cluster.nodes]
        if all(b"cluster_state:ok" in i for i in infos):
            return
        time.sleep(0.05)
    raise AssertionError(f"the restarted cluster did not reach cluster_state:ok: {infos}")


def _wait_served(repo, user: int, now: int, want: int, deadline_s: float = 30) -> None:
    deadline = time.monotonic() + deadline_s
    got = None
    while time.monotonic() < deadline:
        with FeatureStore(repo) as store:
            got = _served(store, user, now)[0]
        if got == want:
            return
        time.sleep(0.1)
    raise AssertionError(f"user {user}: amount_count_1d {got}, expected {want}")


def test_ingest_rides_out_a_whole_cluster_restart(tmp_path) -> None:
    from featurestore.online.stream import Ingester
    from tests.conftest import start_redis_cluster

    cluster = start_redis_cluster(tmp_path / "cluster")
    try:
        repo = _cluster_repo(tmp_path, cluster.url, "clrestart")
        now = now_floor_us()
        with FeatureStore(repo) as store:
            store.apply()
            ing = Ingester(store, ["tx_stream"])
            failed: list[BaseException] = []

            def run() -> None:
                try:
                    ing.run()
                except BaseException as exc:  # the thread must not die; the test says why
                    failed.append(exc)

            runner = threading.Thread(target=run)
            runner.start()
            try:

                def send(user: int, n: int) -> None:
                    rows = [{"user_id": user, "event_timestamp": now - H + i, "amount": 1.0,
                             "merchant_id": i} for i in range(n)]  # fmt: skip
                    store.send_events("tx_stream", rows)

                send(21, 3)
                _wait_served(repo, 21, now, 3)
                _restart(cluster)
                assert runner.is_alive(), failed
                send(22, 4)  # the stream and group are gone: ingest makes them again
                _wait_served(repo, 22, now, 4)
                assert runner.is_alive() and not failed, failed
            finally:
                ing.stop()
                runner.join(timeout=30)
            assert not runner.is_alive() and not failed, failed
    finally:
        cluster.stop()
