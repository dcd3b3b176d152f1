"""Apply deletes the online rows of the feature views it removes, on every online backend: only
theirs, counted in the store itself; a store that does not answer leaves the registry written,
one warning line, and a record the next apply finishes; a view defined again starts empty."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from featurestore import FeatureStore
from featurestore.cli import cli
from featurestore.config import RepoConfig
from featurestore.errors import OnlineStoreUnavailableError
from featurestore.online.base import Status
from featurestore.online.keys import key_prefix, key_suffix
from featurestore.registry import Registry

from ..conftest import online_config, start_redis

H = 3_600_000_000
USERS = 5
NOW = (int(time.time()) // 3600) * H  # recent: window states expire a window after events
HEAD = """
from featurestore import (Aggregation, Entity, FeatureView, Field, Float64, Int64, ParquetSource,
                          StreamSource)

user = Entity("user", join_keys=["user_id"])
src = ParquetSource("data/users.parquet", created_timestamp_field="created")
"""
VIEWS = {
    "user_stats": """user_stats = FeatureView(name="user_stats", entities=[user], source=src,
        schema=[Field("clicks", Int64), Field("spend", Float64)])""",
    "tx": """tx = FeatureView(name="tx", entities=[user], source=src,
        aggregations=[Aggregation("clicks", "sum", ["24h"])])""",
    "kept": """kept = FeatureView(name="kept", entities=[user], source=src, ttl="30d",
        schema=[Field("clicks", Int64)])""",
    "changed": """changed = FeatureView(name="changed", entities=[user], source=src,
        schema=[Field("spend", Float64)], description="{desc}")""",
    "live": """live = FeatureView(name="live", entities=[user],
        source=StreamSource(name="clicks", stream="click_events",
                            batch_source=ParquetSource("data/clicks/")),
        schema=[Field("clicks", Int64)])""",
}


def write_defs(repo: Path, *views: str, desc: str = "v1") -> None:
    body = "\n".join(textwrap.dedent(VIEWS[v]).replace("{desc}", desc) for v in views)
    (repo / "definitions.py").write_text(HEAD + body + "\n")


def write_data(repo: Path) -> None:
    ts = pa.array([NOW - (20 - i) * H for i in range(20)], pa.timestamp("us", tz="UTC"))
    table = pa.table(
        {
            "user_id": pa.array([i % USERS for i in range(20)], pa.int64()),
            "event_timestamp": ts,
            "created": ts,
            "clicks": pa.array(range(20), pa.int64()),
            "spend": pa.array([i * 1.5 for i in range(20)], pa.float64()),
        }
    )
    (repo / "data" / "clicks").mkdir(parents=True, exist_ok=True)
    pq.write_table(table, repo / "data" / "users.parquet")
    pq.write_table(table.drop(["created", "spend"]), repo / "data" / "clicks" / "part-0.parquet")


def backend_config(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> RepoConfig:
    url = ""
    if kind == "redis":
        url = request.getfixturevalue("redis_url")
    elif kind == "redis_cluster":
        url = request.getfixturevalue("redis_cluster_url")
    return online_config(kind, tmp_path, url=url)


def count_keys(store: FeatureStore, view: str, request: pytest.FixtureRequest) -> int:
    """Keys of ``view`` in the store itself: SCAN on every Redis node, a cursor walk in LMDB."""
    kind = store.config.online_store.type
    if kind == "embedded":
        prefix, suffix = key_prefix(store.project), key_suffix(view)
        with store.online._env().begin() as txn:  # type: ignore[attr-defined]
            return sum(
                k.startswith(prefix) and k.endswith(suffix)
                for k in txn.cursor().iternext(values=False)
            )
    p = store.project
    pattern = f"{p}:{{{p}|*}}:{view}"
    if kind == "redis":
        import redis

        client = redis.Redis.from_url(store.config.online_store.url)
        try:
            return sum(1 for _ in client.scan_iter(match=pattern, count=1000))
        finally:
            client.close()
    nodes = request.getfixturevalue("redis_cluster").nodes
    return sum(sum(1 for _ in n.client().scan_iter(match=pattern, count=1000)) for n in nodes)


def applied_with_cli(repo: Path, kind: str, url: str = "") -> CliRunner:
    """A repo on ``kind`` (at ``url``) with views ``user_stats`` and ``kept``, applied by the
    CLI and materialized; the runner to invoke the CLI again."""
    (repo / "featurestore.yaml").write_text(
        "project: test\nonline_store:\n  type: " + kind + (f"\n  url: {url}\n" if url else "\n")
    )
    write_data(repo)
    write_defs(repo, "user_stats", "kept")
    runner = CliRunner()
    assert runner.invoke(cli, ["--repo", str(repo), "apply"]).exit_code == 0
    with FeatureStore(repo) as store:
        store.materialize(NOW - 30 * 24 * H, NOW)
    return runner


def online_values(store: FeatureStore, refs: list[str]) -> dict[str, Any]:
    resp = store.get_online_features(refs, {"user_id": list(range(USERS))}, now=NOW)
    return {**resp.to_dict(), "status": {k: list(v) for k, v in resp.statuses.items()}}


@pytest.mark.parametrize("kind", ["embedded", "redis", "redis_cluster"])
def test_apply_deletes_only_the_removed_views_rows(kind: str, tmp_path: Path, request) -> None:
    config = backend_config(kind, tmp_path, request)
    write_data(tmp_path)
    write_defs(tmp_path, "user_stats", "tx", "kept", "changed")
    keep_refs = ["kept:clicks", "changed:spend"]
    with FeatureStore(config=config) as store:
        store.apply()
        store.materialize(NOW - 30 * 24 * H, NOW)
        before = {v: count_keys(store, v, request) for v in ("user_stats", "tx", "kept", "changed")}
        assert before == dict.fromkeys(before, USERS)
        kept_before = online_values(store, keep_refs)
        assert all(s == Status.PRESENT for col in kept_before["status"].values() for s in col)

        write_defs(tmp_path, "kept", "changed", desc="v2")  # two removed, one changed
        reports: list[Any] = []
        plan = store.apply(report=reports.append)

        assert {(c.name, c.action) for c in plan.changes} >= {
            ("user_stats", "remove"),
            ("tx", "remove"),
            ("changed", "change"),
        }
        assert [(r.view, r.deleted, r.pending) for r in reports] == [
            ("tx", USERS, False),
            ("user_stats", USERS, False),
        ]
        after = {v: count_keys(store, v, request) for v in before}
        assert after == {"user_stats": 0, "tx": 0, "kept": USERS, "changed": USERS}
        assert online_values(store, keep_refs) == kept_before
        assert store.registry.pending_cleanup == {}

        # nothing left to do: the next apply deletes nothing and reports nothing
        reports.clear()
        assert store.apply(report=reports.append).empty and reports == []
        assert {v: count_keys(store, v, request) for v in before} == after


@pytest.mark.parametrize("kind", ["embedded", "redis"])
def test_cli_apply_reports_the_deleted_rows(kind: str, tmp_path: Path, request) -> None:
    url = request.getfixturevalue("redis_url") if kind == "redis" else ""
    runner = applied_with_cli(tmp_path, kind, url)
    write_defs(tmp_path, "kept")
    res = runner.invoke(cli, ["--repo", str(tmp_path), "apply"])
    assert res.exit_code == 0, res.output
    assert f"removed view 'user_stats': deleted {USERS:,} online rows" in res.stdout.splitlines()
    assert res.stderr == ""


@pytest.mark.parametrize("kind", ["embedded", "redis", "redis_cluster"])
def test_a_view_defined_again_starts_from_scratch(kind: str, tmp_path: Path, request) -> None:
    config = backend_config(kind, tmp_path, request)
    write_data(tmp_path)
    write_defs(tmp_path, "user_stats", "kept")
    refs = ["user_stats:clicks", "user_stats:spend"]
    with FeatureStore(config=config) as store:
        store.apply()
        first = store.materialize_incremental(NOW)
        assert first.rows["user_stats"] == USERS
        assert store.registry.materialization["user_stats"]["watermark_us"] == NOW
        served = online_values(store, refs)

        write_defs(tmp_path, "kept")
        store.apply()
        assert "user_stats" not in store.registry.materialization
        write_defs(tmp_path, "user_stats", "kept")
        store.apply()
        # no row of the removed incarnation is served by the new one
        empty = online_values(store, refs)
        assert empty["status"]["clicks"] == [Status.NOT_FOUND] * USERS
        assert count_keys(store, "user_stats", request) == 0

        again = store.materialize_incremental(NOW)
        assert again.start_us == 0 and again.rows["user_stats"] == USERS  # from scratch
        assert online_values(store, refs) == served


def test_unreachable_store_keeps_the_registry_and_a_later_apply_finishes(tmp_path: Path) -> None:
    server = start_redis(tmp_path / "redis")
    try:
        runner = applied_with_cli(tmp_path, "redis", server.url)
        with FeatureStore(tmp_path) as store:
            assert count_keys(store, "user_stats", None) == USERS  # type: ignore[arg-type]
        port = server.port
        server.client().shutdown(save=True)  # keeps the keys on disk for the restart
        server.proc.wait(timeout=10)

        write_defs(tmp_path, "kept")
        res = runner.invoke(cli, ["--repo", str(tmp_path), "apply"])
        assert res.exit_code == 0, res.output
        registry = Registry(tmp_path / "data" / "registry.json", "test")
        state = registry.load()
        assert state.version == 2 and "user_stats" not in state.feature_views
        assert list(state.pending_cleanup) == ["user_stats"]
        warning = res.stderr.splitlines()
        assert len(warning) == 1, res.stderr
        assert warning[0].startswith("warning: removed view 'user_stats': online rows not deleted")
        assert f"127.0.0.1:{port}" in warning[0] and "Traceback" not in res.output

        # plan says what is still to delete
        res = runner.invoke(cli, ["--repo", str(tmp_path), "plan"])
        assert res.exit_code == 0, res.output
        assert "No changes" in res.stdout
        assert "still to delete (apply retries): user_stats." in res.stdout

        # defining it again while its old rows cannot be deleted changes nothing
        write_defs(tmp_path, "user_stats", "kept")
        with FeatureStore(tmp_path) as store, pytest.raises(OnlineStoreUnavailableError):
            store.apply()
        assert registry.load().version == 2

        write_defs(tmp_path, "kept")
        server = start_redis(tmp_path / "redis", port=port)
        assert server.client().dbsize() > 0
        res = runner.invoke(cli, ["--repo", str(tmp_path), "apply"])
        assert res.exit_code == 0 and res.stderr == "", res.output
        assert "No changes" in res.stdout
        assert f"removed view 'user_stats': deleted {USERS} online rows" in res.stdout
        assert registry.load().pending_cleanup == {}
        assert "still to delete" not in runner.invoke(cli, ["--repo", str(tmp_path), "plan"]).stdout
        with FeatureStore(tmp_path) as store:
            assert count_keys(store, "user_stats", None) == 0  # type: ignore[arg-type]
            assert count_keys(store, "kept", None) == USERS  # type: ignore[arg-type]
    finally:
        server.stop()


def test_without_report_a_failed_cleanup_is_a_warning(tmp_path: Path, unused_port: int) -> None:
    write_data(tmp_path)
    write_defs(tmp_path, "user_stats", "kept")
    url = f"redis://127.0.0.1:{unused_port}/0"
    config = online_config("redis", tmp_path, url=url)
    with FeatureStore(config=config) as store:
        store.apply()  # nothing removed: the store is not even contacted
        write_defs(tmp_path, "kept")
        with pytest.warns(UserWarning, match=r"removed view 'user_stats'.*did not answer"):
            store.apply()
        assert store.registry.version == 2 and list(store.registry.pending_cleanup) == [
            "user_stats"
        ]


def test_a_stream_fed_view_stays_recorded_while_its_old_ingest_runs(
    tmp_path: Path, request
) -> None:
    config = backend_config("redis", tmp_path, request)
    write_data(tmp_path)
    write_defs(tmp_path, "live", "kept")
    lock = "click_events:ingest-lock"
    with FeatureStore(config=config) as store:
        store.apply()
        store.materialize(NOW - 30 * 24 * H, NOW)
        assert count_keys(store, "live", request) == USERS
        client = store.online._client()  # type: ignore[attr-defined]
        client.set(lock, "host:1:old")  # an ingest started before the removal

        write_defs(tmp_path, "kept")
        reports: list[Any] = []
        store.apply(report=reports.append)
        assert [(r.view, r.deleted, r.ingest) for r in reports] == [("live", USERS, "host:1:old")]
        assert "restart ingest" in str(reports[0]) and reports[0].pending
        assert count_keys(store, "live", request) == 0
        assert store.registry.pending_cleanup["live"]["ingest"] == "host:1:old"

        client.set(b"test:{test|user_id=1}:live", b"written by the old ingest")
        reports.clear()
        store.apply(report=reports.append)  # the same ingest still runs: still recorded
        assert [(r.deleted, r.pending) for r in reports] == [(1, True)]

        client.set(b"test:{test|user_id=1}:live", b"written by the old ingest")
        client.set(lock, "host:2:new")  # restarted: the new ingest does not know the view
        reports.clear()
        store.apply(report=reports.append)
        assert [(r.deleted, r.pending) for r in reports] == [(1, False)]
        assert store.registry.pending_cleanup == {}
        assert count_keys(store, "live", request) == 0


def test_a_materialize_holding_the_stream_lock_is_no_ingest_to_wait_for(
    tmp_path: Path, request
) -> None:
    from featurestore.online.stream.locks import new_token

    config = backend_config("redis", tmp_path, request)
    write_data(tmp_path)
    write_defs(tmp_path, "live", "kept")
    with FeatureStore(config=config) as store:
        store.apply()
        store.materialize(NOW - 30 * 24 * H, NOW)
        client = store.online._client()  # type: ignore[attr-defined]
        client.set("click_events:ingest-lock", new_token(["live"]))  # a materialize runs
        write_defs(tmp_path, "kept")
        reports: list[Any] = []
        store.apply(report=reports.append)
        assert [(r.view, r.deleted, r.ingest, r.pending) for r in reports] == [
            ("live", USERS, "", False)
        ]
        assert store.registry.pending_cleanup == {}


def test_rows_materialized_after_the_removal_are_recorded_for_cleanup(tmp_path: Path) -> None:
    config = online_config("embedded", tmp_path)
    write_data(tmp_path)
    write_defs(tmp_path, "user_stats", "kept")
    with FeatureStore(config=config) as store:
        store.apply()
        view = store.get_feature_view("user_stats")
        write_defs(tmp_path, "kept")
        store.apply()
        # a materialize that read the registry before the apply finishes after it
        store._materialize_view(view, 0, NOW, False)
        assert "user_stats" not in store.registry.materialization
        assert list(store.registry.pending_cleanup) == ["user_stats"]
        assert count_keys(store, "user_stats", None) == USERS  # type: ignore[arg-type]
        reports: list[Any] = []
        store.apply(report=reports.append)
        assert [(r.view, r.deleted) for r in reports] == [("user_stats", USERS)]
        assert count_keys(store, "user_stats", None) == 0  # type: ignore[arg-type]
