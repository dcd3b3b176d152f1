"""``stream.trim`` and ``stream.trim_interval_s``: checked when the config is read, a bounded
trim rate, the CLI's summary, and a server that refuses to trim named in one line."""

from __future__ import annotations

import threading
import time

import pytest
from click.testing import CliRunner

from featurestore import FeatureStore
from featurestore.cli import cli
from featurestore.errors import ConfigError
from featurestore.online.stream import Ingester

from .conftest import H, now_floor_us, pending_count, small_repo, xadd_json


def _events(now: int, n: int) -> list[dict]:
    return [
        {"user_id": 41, "event_timestamp": now - H + i, "amount": 1.0, "merchant_id": 1}
        for i in range(n)
    ]


@pytest.mark.parametrize(
    ("yaml", "message"),
    [
        ("  trim: 'yes'\n", "stream.trim is 'yes'; expected true or false"),
        ("  trim_interval_s: -1\n", "stream.trim_interval_s is -1; give 0 or more seconds"),
        ("  trim_interval_s: .inf\n", "stream.trim_interval_s is inf; give 0 or more seconds"),
        ("  trim_interval_s: soon\n", "stream.trim_interval_s is 'soon'; expected a number"),
    ],
)
def test_bad_trim_settings_are_one_line_naming_the_key(tmp_path, yaml, message) -> None:
    repo = small_repo(tmp_path / "repo", "redis://127.0.0.1:1/0", stream_yaml="stream:\n" + yaml)
    with pytest.raises(ConfigError) as info:
        FeatureStore(repo)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_trim_settings_are_read(tmp_path) -> None:
    yaml = "stream:\n  trim: false\n  trim_interval_s: 0\n"
    repo = small_repo(tmp_path / "repo", "redis://127.0.0.1:1/0", stream_yaml=yaml)
    with FeatureStore(repo) as store:
        assert (store.config.stream.trim, store.config.stream.trim_interval_s) == (False, 0)


def test_a_stream_is_trimmed_at_most_every_interval(tmp_path, redis_url) -> None:
    """With a long interval, the acknowledgements of a running ingest do not trim until it
    stops (its last trim is not held back)."""
    import redis

    yaml = """
    stream:
      batch_size: 50
      block_ms: 20
      offline_flush_events: 50
      trim_interval_s: 3600
    """
    repo = small_repo(tmp_path / "repo", redis_url, project="triminterval", stream_yaml=yaml)
    client = redis.Redis.from_url(redis_url)
    now = now_floor_us()
    with FeatureStore(repo) as store:
        store.apply()
        ids = xadd_json(client, "tx_events", _events(now, 120))
        ing = Ingester(store, ["tx_stream"])
        runner = threading.Thread(target=ing.run)
        runner.start()
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # rounds of 50, 50 (acknowledged), then 20
                if client.exists("tx_events") and client.xinfo_groups("tx_events"):
                    if pending_count(client, "tx_events") == 20:
                        break
                time.sleep(0.01)
            assert pending_count(client, "tx_events") == 20
            assert client.xlen("tx_events") == 120  # 100 acknowledged, none trimmed yet
        finally:
            ing.stop()
            runner.join(timeout=60)
        assert not runner.is_alive()
        assert [i.decode() for i, _ in client.xrange("tx_events")] == ids[-1:]
    client.close()


def test_cli_says_how_many_entries_it_trimmed(tmp_path, redis_url) -> None:
    import redis

    repo = small_repo(tmp_path / "repo", redis_url, project="trimcli")
    client = redis.Redis.from_url(redis_url)
    out = CliRunner().invoke(cli, ["-r", str(repo), "apply"])
    assert out.exit_code == 0, out.output
    xadd_json(client, "tx_events", _events(now_floor_us(), 30))
    out = CliRunner().invoke(cli, ["-r", str(repo), "ingest", "--once", "--source", "tx_stream"])
    assert out.exit_code == 0, out.output
    assert "ingested 30 events" in out.output and "29 acknowledged entries trimmed" in out.output
    assert client.xlen("tx_events") == 1
    client.close()


def test_a_server_refusing_to_trim_is_one_line_naming_the_fix(tmp_path, redis_url) -> None:
    """A user not allowed XTRIM (as a server before Redis 6.2 refuses XTRIM MINID) stops ingest
    at start with one line; ``trim: false`` then lets it run."""
    import redis

    admin = redis.Redis.from_url(redis_url)
    admin.execute_command("ACL", "SETUSER", "notrim", "on", ">pw", "~*", "&*", "+@all",
                          "-xtrim")  # fmt: skip
    try:
        url = redis_url.replace("redis://", "redis://notrim:pw@")
        yaml = f"stream:\n  url: {url}\n  block_ms: 20\n"
        repo = small_repo(tmp_path / "repo", redis_url, project="trimacl", stream_yaml=yaml)
        assert CliRunner().invoke(cli, ["-r", str(repo), "apply"]).exit_code == 0
        xadd_json(admin, "tx_events", _events(now_floor_us(), 5))
        out = CliRunner().invoke(cli, ["-r", str(repo), "ingest", "--once"])
        assert out.exit_code == 1, out.output
        lines = out.output.strip().splitlines()
        assert len(lines) == 1, out.output
        assert lines[0].startswith("error: stream source '")
        assert "trimming stream '" in lines[0] and "can't run this command" in lines[0]
        assert "set stream.trim: false" in lines[0]
        assert admin.get("tx_events:ingest-lock") is None  # the lock was let go

        cfg = repo / "featurestore.yaml"
        cfg.write_text(cfg.read_text() + "  trim: false\n")
        out = CliRunner().invoke(cli, ["-r", str(repo), "ingest", "--once"])
        assert out.exit_code == 0, out.output
        assert "ingested 5 events" in out.output and "trimmed" not in out.output
        assert admin.xlen("tx_events") == 5
    finally:
        admin.execute_command("ACL", "DELUSER", "notrim")
        admin.close()
