"""Stream sources ingest could not handle are refused up front with one line: a declared schema
whose join-key type is not the batch files', two sources on one Redis stream, a dead-letter
suffix that sends bad events back into the stream. And the dead-letter and materialize commands
end quietly or with a one-line project error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from featurestore import FeatureStore
from featurestore.errors import ConfigError, DefinitionError
from featurestore.online.stream import list_dead_letters

from .conftest import DEFS, FAST_STREAM, H, now_floor_us, small_repo, xadd_json

ROOT = Path(__file__).resolve().parents[2]

TYPED = DEFS.replace(
    """    stream="tx_events",
""",
    """    stream="tx_events",
    schema=[Field("user_id", {key}), Field("amount", Float64), Field("merchant_id", Int64),
            Field("event_timestamp", UnixTimestamp)],
""",
).replace("StreamSource)", "StreamSource, Int32, String, UnixTimestamp)")

TWO_ON_ONE = (
    DEFS
    + """
tx_copy = StreamSource(
    name="tx_copy",
    stream="tx_events",
    batch_source=ParquetSource("data/tx/", timestamp_field="event_timestamp"),
)
tx_again = FeatureView(
    name="tx_again", entities=[user], source=tx_copy,
    aggregations=[Aggregation("amount", "count", ["1d"])],
)
"""
)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from featurestore.cli import main; main()", *args]


def test_a_schema_whose_join_key_type_is_not_the_files_is_refused(tmp_path, redis_url) -> None:
    repo = small_repo(tmp_path / "repo", redis_url, defs=TYPED.replace("{key}", "String"))
    with FeatureStore(repo) as store:
        with pytest.raises(DefinitionError) as info:
            store.apply()
        assert not store._registry.exists()  # nothing applied
    msg = str(info.value)
    assert "\n" not in msg
    assert "stream source 'tx_stream'" in msg and "'user_id'" in msg
    assert "string" in msg and "int64" in msg


def test_a_schema_matching_the_files_is_accepted(tmp_path, redis_url) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    repo = small_repo(tmp_path / "repo", redis_url, defs=TYPED.replace("{key}", "Int32"))
    now = now_floor_us()
    with FeatureStore(repo) as store:
        store.apply()
        xadd_json(client, "tx_events", [
            {"user_id": 4, "event_timestamp": now - H, "amount": 2.0, "merchant_id": 1}])  # fmt: skip
        assert store.ingest(once=True).applied == 1
    client.close()


def test_two_sources_on_one_stream_are_refused(tmp_path, redis_url) -> None:
    repo = small_repo(tmp_path / "repo", redis_url, defs=TWO_ON_ONE)
    with FeatureStore(repo) as store:
        with pytest.raises(DefinitionError) as info:
            store.apply()
    msg = str(info.value)
    assert "\n" not in msg
    assert "'tx_copy'" in msg and "'tx_stream'" in msg and "'tx_events'" in msg


def test_an_empty_dead_letter_suffix_is_refused(tmp_path, redis_url) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    yaml = FAST_STREAM + "  dead_letter_suffix: ''\n"
    repo = small_repo(tmp_path / "repo", redis_url, stream_yaml=yaml)
    with FeatureStore(repo) as store:
        store.apply()
        xadd_json(client, "tx_events", [{"user_id": "not a number"}])  # a dead letter
        with pytest.raises(ConfigError) as info:
            store.ingest(once=True, max_events=50)  # without the check: read again and again
        assert "dead_letter_suffix" in str(info.value) and "\n" not in str(info.value)
        with pytest.raises(ConfigError, match="dead_letter_suffix"):
            list_dead_letters(store, "tx_stream")
    assert client.xlen("tx_events") == 1  # nothing was written back into the stream
    client.close()


def test_dead_letters_list_into_a_closed_pipe_ends_quietly(tmp_path, redis_url) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    repo = small_repo(tmp_path / "repo", redis_url)
    with FeatureStore(repo) as store:
        store.apply()
        xadd_json(client, "tx_events", [{"user_id": "bad", "n": i} for i in range(3000)])
        assert store.ingest(once=True).dead == 3000
    # ~600 KB of output: far more than a pipe holds, so the writer meets the closed end
    proc = subprocess.Popen(
        _cli("-r", str(repo), "dead-letters", "list", "--limit", "3000"),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline().startswith("profile_stream:")
    proc.stdout.close()  # what `| head -1` does
    _, err = proc.communicate(timeout=120)
    assert (proc.returncode, err) == (0, "")
    client.close()


def test_materialize_with_start_after_end_is_one_line(tmp_path, redis_url) -> None:
    repo = small_repo(tmp_path / "repo", redis_url)
    with FeatureStore(repo) as store:
        store.apply()
    proc = subprocess.run(
        _cli("-r", str(repo), "materialize", "2026-11-02", "2026-11-01"),
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: materialize: start "), lines
    assert "is after end" in lines[0] and "ValueError" not in lines[0]
