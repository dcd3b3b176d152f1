"""Dead letters after ingest: list them with their reasons and original fields, replay them (moved
back to the stream with the fields as first sent, atomically) and drop them; the same through
``featurestore dead-letters``."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featurestore import FeatureStore
from featurestore.cli import cli
from featurestore.errors import FeatureStoreError
from featurestore.online.stream import (
    count_dead_letters,
    drop_dead_letters,
    list_dead_letters,
    replay_dead_letters,
)

from .conftest import (
    DAY,
    DEFS,
    LATENESS,
    H,
    client_of,
    dead_entries,
    iso,
    now_floor_us,
    small_repo,
    xadd_json,
)


@pytest.fixture
def repo(tmp_path: Path, redis_url: str) -> Path:
    return small_repo(tmp_path / "repo", redis_url, project="replay")


def client_of_url(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url)


def as_str(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


def _xadd(client, stream: str, entries: list[dict]) -> list[str]:
    pipe = client.pipeline(transaction=False)
    for fields in entries:
        pipe.xadd(stream, fields)
    return [i.decode() for i in pipe.execute()]


def _stream_fields(client, stream: str) -> list[dict[str, str]]:
    return [
        {k.decode(): v.decode() for k, v in fields.items()} for _, fields in client.xrange(stream)
    ]


def _count(store: FeatureStore, user: int, now: int, ref: str = "tx:amount_count_1d") -> Any:
    resp = store.get_online_features([ref], [{"user_id": user}], now=now)
    return resp.to_dict()[ref.split(":")[1]][0]


def _seed(store: FeatureStore, client) -> tuple[int, list[dict], list[str], Any]:
    """Apply, send the ``_mixed`` entries and ingest them once: (now, entries, ids, stats)."""
    now = now_floor_us()
    store.apply()
    entries = _mixed(now)
    ids = _xadd(client, "tx_events", entries)
    return now, entries, ids, store.ingest(once=True)


# a JSON event with a bad amount, a flat one with a bad merchant, an entry that is not JSON, a
# flat one that has a field named data (flat: it has others) and a good one
def _mixed(now: int) -> list[dict]:
    good = {"user_id": 3, "event_timestamp": now - H, "amount": 1.5, "merchant_id": 1}
    return [
        {"data": json.dumps({**good, "amount": "abc"})},
        {"user_id": "3", "amount": "2.0", "merchant_id": "1.5", "event_timestamp": iso(now - H)},
        {"data": "not json{"},
        {"data": "x", "amount": "1.0", "event_timestamp": iso(now - H)},
        {"data": json.dumps(good)},
    ]


def test_list_shows_reasons_and_original_fields(repo, redis_url) -> None:
    client = client_of_url(redis_url)
    with FeatureStore(repo) as store:
        _now, entries, ids, stats = _seed(store, client)
        assert (stats.applied, stats.dead) == (1, 4), stats

        letters = list_dead_letters(store, "tx_stream", limit=10)
        assert [x.original_id for x in letters] == ids[:4]
        assert [x.fields for x in letters] == entries[:4]  # exactly as sent, JSON or flat
        assert {x.source for x in letters} == {"tx_stream"}
        words = ["amount", "merchant_id", "json", "user_id"]
        for x, word in zip(letters, words, strict=True):
            assert word in x.reason.lower(), (x.reason, word)
        assert len({x.letter_id for x in letters}) == 4

        assert [x.original_id for x in list_dead_letters(store, "tx_stream", limit=2)] == ids[:2]
        only = list_dead_letters(store, "tx_stream", limit=10, reason_contains="MERCHANT_ID")
        assert [x.original_id for x in only] == [ids[1]]
        assert list_dead_letters(store, "profile_stream", limit=10) == []
        assert count_dead_letters(store, "tx_stream") == 4


def test_a_late_event_replayed_after_raising_lateness_is_served(repo, redis_url) -> None:
    client = client_of_url(redis_url)
    now = now_floor_us()
    late_ts = now - H - DAY - LATENESS - H  # late for allowed_lateness 2h, not for 3d
    with FeatureStore(repo) as store:
        store.apply()
        xadd_json(client, "tx_events", [
            {"user_id": 7, "event_timestamp": now - H, "amount": 1.0, "merchant_id": 1}])  # fmt: skip
        assert store.ingest(once=True).applied == 1
        (late_id,) = xadd_json(client, "tx_events", [
            {"user_id": 7, "event_timestamp": late_ts, "amount": 4.0, "merchant_id": 2}])  # fmt: skip
        assert store.ingest(once=True).dead == 1
        (letter,) = list_dead_letters(store, "tx_stream", limit=10)
        assert letter.original_id == late_id and "late" in letter.reason

    # the fix: a larger allowed_lateness (a new window plan: apply, then materialize again)
    (repo / "definitions.py").write_text(DEFS.replace('"2h"', '"3d"'))
    with FeatureStore(repo) as store:
        store.apply()
        store.materialize(now - 3 * DAY, now, views=["tx"])
        assert _count(store, 7, now) == 1
        assert replay_dead_letters(store, "tx_stream") == 1
        assert client.xlen("tx_events:dead") == 0
        stats = store.ingest(once=True)
        assert (stats.applied, stats.dead) == (1, 0), stats
        assert client.xlen("tx_events:dead") == 0
        # served online: the replayed event in its own hour, and the newer one still counted
        assert _count(store, 7, late_ts + H // 2, "tx:amount_count_1h") == 1
        assert _count(store, 7, late_ts + H // 2, "tx:amount_sum_1d") == 4.0
        assert _count(store, 7, now) == 1


@pytest.mark.parametrize("replay_first", [False, True])
def test_a_crash_before_the_ack_then_a_fix_applies_the_event_once(
    tmp_path, redis_url, replay_first
) -> None:
    """Ingest dead-letters a late event, then dies before acknowledging it; the fix (a larger
    allowed_lateness) comes before the restart. The restart reads the pending entry again and
    applies it, and its stale letter goes: a replay must not apply the event a second time, nor
    move the letter while its entry is still pending."""
    from featurestore.online.stream import Ingester

    yaml = "stream:\n  batch_size: 100\n  block_ms: 20\n  offline_flush_s: 3600\n"
    repo = small_repo(tmp_path / "repo", redis_url, project="crashfix", stream_yaml=yaml)
    client = client_of_url(redis_url)
    now = now_floor_us()
    late_ts = now - H - DAY - LATENESS - H
    with FeatureStore(repo) as store:
        store.apply()
        xadd_json(client, "tx_events", [
            {"user_id": 7, "event_timestamp": now - H, "amount": 1.0, "merchant_id": 1}])  # fmt: skip
        store.ingest(once=True)
        xadd_json(client, "tx_events", [
            {"user_id": 7, "event_timestamp": late_ts, "amount": 4.0, "merchant_id": 2}])  # fmt: skip
        ing = Ingester(store)
        ing._start()
        ing._round(True, 100)  # the pending entries (none), then the new one: dead-lettered
        ing._round(True, 100)
        ing.close()  # "the crash": no flush, so no acknowledgement
        assert count_dead_letters(store, "tx_stream") == 1
        assert client.xpending("tx_events", "featurestore")["pending"] == 1

    (repo / "definitions.py").write_text(DEFS.replace('"2h"', '"3d"'))
    with FeatureStore(repo) as store:
        store.apply()
        store.materialize(now - 3 * DAY, now, views=["tx"])
        if replay_first:  # its entry is pending: ingest will read it again, replay leaves it
            assert replay_dead_letters(store, "tx_stream") == 0
            assert count_dead_letters(store, "tx_stream") == 1
        stats = store.ingest(once=True)  # the restart
        assert (stats.applied, stats.dead) == (1, 0), stats
        assert count_dead_letters(store, "tx_stream") == 0  # the stale letter went with it
        assert replay_dead_letters(store, "tx_stream") == 0
        assert store.ingest(once=True).applied == 0
        assert _count(store, 7, late_ts + H // 2, "tx:amount_count_1h") == 1
        assert _count(store, 7, late_ts + H // 2, "tx:amount_sum_1d") == 4.0
    client.close()


def test_replay_with_a_reason_filter_moves_only_matching(repo, redis_url) -> None:
    client = client_of_url(redis_url)
    with FeatureStore(repo) as store:
        _now, entries, ids, _ = _seed(store, client)
        before = client.xlen("tx_events")

        assert replay_dead_letters(store, "tx_stream", reason_contains="merchant_id") == 1
        left = list_dead_letters(store, "tx_stream", limit=None)
        assert [x.original_id for x in left] == [ids[0], ids[2], ids[3]]
        assert client.xlen("tx_events") == before + 1
        assert _stream_fields(client, "tx_events")[-1] == entries[1]  # the flat fields as sent

        # limit: the oldest matching first
        assert replay_dead_letters(store, "tx_stream", limit=2) == 2
        assert [x.original_id for x in list_dead_letters(store, "tx_stream", limit=None)] == [
            ids[3]
        ]
        assert _stream_fields(client, "tx_events")[-2:] == [entries[0], entries[2]]
        assert replay_dead_letters(store, "tx_stream", reason_contains="no such reason") == 0


def test_a_still_bad_event_replayed_comes_back_as_a_dead_letter(repo, redis_url) -> None:
    client = client_of_url(redis_url)
    with FeatureStore(repo) as store:
        now, _entries, _, _ = _seed(store, client)
        first = list_dead_letters(store, "tx_stream", limit=None)

        assert replay_dead_letters(store, "tx_stream") == 4
        assert client.xlen("tx_events:dead") == 0
        replayed_ids = [as_str(i) for i, _ in client.xrange("tx_events")][-4:]
        stats = store.ingest(once=True)
        assert (stats.applied, stats.dead) == (0, 4), stats

        again = list_dead_letters(store, "tx_stream", limit=None)
        assert [x.fields for x in again] == [x.fields for x in first]
        assert [x.reason for x in again] == [x.reason for x in first]
        assert [x.original_id for x in again] == replayed_ids
        assert _count(store, 3, now) == 1  # only the good event, once


def test_a_letter_written_twice_is_sent_back_once(repo, redis_url) -> None:
    client = client_of_url(redis_url)
    now = now_floor_us()
    with FeatureStore(repo) as store:
        store.apply()
        _xadd(client, "tx_events", _mixed(now)[:2])
        store.ingest(once=True)
        # an ingest that crashed before its XACK writes the first letter again, later
        (_id, copy), _ = client.xrange("tx_events:dead")
        client.xadd("tx_events:dead", {"id": "1-0", "source": "tx_stream", "reason": "other",
                                       "data": json.dumps({"user_id": "9"})})  # fmt: skip
        client.xadd("tx_events:dead", copy)
        before = client.xlen("tx_events")

        assert replay_dead_letters(store, "tx_stream", limit=1) == 1
        assert client.xlen("tx_events") == before + 1
        left = dead_entries(client, "tx_events")
        assert [d["reason"] for d in left if d["id"] == as_str(copy[b"id"])] == []
        assert len(left) == 2


def test_drop_with_a_filter_and_all(repo, redis_url) -> None:
    client = client_of_url(redis_url)
    now = now_floor_us()
    with FeatureStore(repo) as store:
        store.apply()
        ids = _xadd(client, "tx_events", _mixed(now))
        store.ingest(once=True)
        kept = client.xlen("tx_events")  # the acknowledged entries were trimmed
        with pytest.raises(FeatureStoreError, match=r"tx_stream.*reason filter"):
            drop_dead_letters(store, "tx_stream")
        assert client.xlen("tx_events:dead") == 4

        assert drop_dead_letters(store, "tx_stream", reason_contains="JSON") == 1
        left = list_dead_letters(store, "tx_stream", limit=None)
        assert [x.original_id for x in left] == [ids[0], ids[1], ids[3]]
        assert drop_dead_letters(store, "tx_stream", everything=True) == 3
        assert client.xlen("tx_events:dead") == 0
        assert client.xlen("tx_events") == kept  # the stream itself is left alone


def test_unknown_source_names_the_known_ones(store) -> None:
    for call in (
        lambda: list_dead_letters(store, "nope"),
        lambda: replay_dead_letters(store, "nope"),
        lambda: drop_dead_letters(store, "nope", everything=True),
    ):
        with pytest.raises(FeatureStoreError, match=r"'nope'.*profile_stream.*tx_stream"):
            call()


def test_an_xadd_that_fails_leaves_the_letter(repo, redis_url) -> None:
    client = client_of_url(redis_url)
    with FeatureStore(repo) as store:
        _now, entries, _, _ = _seed(store, client)
        letters = dead_entries(client, "tx_events")

        client.delete("tx_events")
        client.set("tx_events", "not a stream")  # XADD to it fails (WRONGTYPE)
        with pytest.raises(FeatureStoreError, match=r"tx_events.*WRONGTYPE"):
            replay_dead_letters(store, "tx_stream")
        assert dead_entries(client, "tx_events") == letters
        assert client.get("tx_events") == b"not a stream"

        client.delete("tx_events")
        assert replay_dead_letters(store, "tx_stream") == 4
        assert _stream_fields(client, "tx_events") == entries[:4]
        assert client.xlen("tx_events:dead") == 0


def test_a_letter_another_replay_moved_meanwhile_is_not_sent_again(repo, redis_url, monkeypatch):
    from featurestore.online.stream import dead_letters

    client = client_of_url(redis_url)
    with FeatureStore(repo) as store:
        _now, entries, _, _ = _seed(store, client)
        first = as_str(client.xrange("tx_events:dead")[0][0])
        scan = dead_letters._scan

        def scan_then_move(c, dead):
            yield from scan(c, dead)
            client.xdel("tx_events:dead", first)  # another operator's replay took it

        monkeypatch.setattr(dead_letters, "_scan", scan_then_move)
        before = client.xlen("tx_events")
        assert replay_dead_letters(store, "tx_stream") == 3
        assert _stream_fields(client, "tx_events")[before:] == entries[1:4]


def test_many_letters_over_several_pages_and_batches(repo, redis_url, monkeypatch) -> None:
    from featurestore.online.stream import dead_letters

    monkeypatch.setattr(dead_letters, "_PAGE", 2)
    monkeypatch.setattr(dead_letters, "_BATCH", 2)
    client = client_of_url(redis_url)
    now = now_floor_us()
    with FeatureStore(repo) as store:
        store.apply()
        entries = [{"amount": str(i), "event_timestamp": iso(now)} for i in range(7)]
        ids = _xadd(client, "tx_events", entries)
        store.ingest(once=True)
        kept = client.xlen("tx_events")  # the acknowledged entries were trimmed
        assert [x.original_id for x in list_dead_letters(store, "tx_stream", limit=None)] == ids
        assert [x.original_id for x in list_dead_letters(store, "tx_stream", limit=5)] == ids[:5]
        assert replay_dead_letters(store, "tx_stream", limit=5) == 5
        assert _stream_fields(client, "tx_events")[kept:] == entries[:5]
        assert drop_dead_letters(store, "tx_stream", everything=True) == 2
        assert client.xlen("tx_events:dead") == 0


_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    flat=st.dictionaries(_text.filter(lambda k: k != "user_id"), _text, min_size=1, max_size=5),
    as_data=st.booleans(),
)
def test_any_entry_comes_back_as_it_was_sent(store, flat, as_data) -> None:
    """Whatever a producer sent (flat text fields, or one ``data`` field), a replay sends the
    same fields back."""
    client = client_of(store)
    client.delete("tx_events", "tx_events:dead")
    fields = {"data": json.dumps(flat)[:-1]} if as_data else flat  # no join key / not JSON
    (sent,) = _xadd(client, "tx_events", [fields])
    store.ingest(once=True)
    (letter,) = list_dead_letters(store, "tx_stream", limit=None)
    assert letter.original_id == sent and letter.fields == fields
    assert replay_dead_letters(store, "tx_stream") == 1
    assert _stream_fields(client, "tx_events")[-1] == fields
    assert client.xlen("tx_events:dead") == 0


def test_on_a_cluster_a_stream_with_a_hash_tag_replays(tmp_path, redis_cluster_url) -> None:
    """On a Redis Cluster a letter moves atomically only within one slot: a stream named with
    a hash tag replays; one without is refused in one line (list and drop still work)."""
    from redis.cluster import RedisCluster

    defs = DEFS.replace('stream="tx_events"', 'stream="{tx_events}"')
    repo = small_repo(tmp_path / "repo", redis_cluster_url, project="clreplay", defs=defs)
    cfg = repo / "featurestore.yaml"
    cfg.write_text(cfg.read_text().replace("type: redis\n", "type: redis_cluster\n"))
    client = RedisCluster.from_url(redis_cluster_url)
    now = now_floor_us()
    with FeatureStore(repo) as store:
        store.apply()
        entries = _mixed(now)
        for fields in entries:
            client.xadd("{tx_events}", fields)
        client.xadd("profile_events", {"user_id": "1"})  # no time: dead
        store.ingest(once=True)
        kept = client.xlen("{tx_events}")  # the acknowledged entries were trimmed
        letters = list_dead_letters(store, "tx_stream", limit=None)
        assert [x.fields for x in letters] == entries[:4]
        assert replay_dead_letters(store, "tx_stream") == 4
        assert _stream_fields(client, "{tx_events}")[kept:] == entries[:4]
        assert client.xlen("{tx_events}:dead") == 0

        with pytest.raises(FeatureStoreError, match=r"'profile_events'.*hash slot"):
            replay_dead_letters(store, "profile_stream")
        assert client.xlen("profile_events:dead") == 1
        (prof,) = list_dead_letters(store, "profile_stream", limit=None)
        assert prof.fields == {"user_id": "1"}
        assert drop_dead_letters(store, "profile_stream", everything=True) == 1
    client.close()


# ---- the CLI -------------------------------------------------------------------------------------
def _cli(repo: Path, *args: str):
    return CliRunner().invoke(cli, ["-r", str(repo), "dead-letters", *args])


def test_cli_list_replay_drop(repo, redis_url) -> None:
    client = client_of_url(redis_url)
    with FeatureStore(repo) as store:
        _now, entries, ids, _ = _seed(store, client)

    res = _cli(repo, "list")
    assert res.exit_code == 0, res.output
    assert "tx_stream: 4 dead letters, 4 shown" in res.output
    assert "profile_stream: 0 dead letters" in res.output
    assert "merchant_id=1.5" in res.output and '"amount": "abc"' in res.output
    for i in ids[:4]:
        assert f"(entry {i})" in res.output

    res = _cli(repo, "list", "--source", "tx_stream", "--json", "--reason", "amount")
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    assert [r["original_id"] for r in rows] == [ids[0]]
    assert rows[0]["fields"] == entries[0] and "amount" in rows[0]["reason"]

    res = _cli(repo, "replay", "--source", "tx_stream", "--reason", "merchant")
    assert res.exit_code == 0, res.output
    assert res.output.strip() == "tx_stream: sent 1 dead letters back to the stream"
    assert _stream_fields(client, "tx_events")[-1] == entries[1]

    res = _cli(repo, "drop", "--source", "tx_stream")
    assert res.exit_code == 1 and "--all" in res.output, res.output
    assert client.xlen("tx_events:dead") == 3
    res = _cli(repo, "drop", "--reason", "json")
    assert res.exit_code == 0, res.output
    assert "tx_stream: dropped 1 dead letters" in res.output
    res = _cli(repo, "drop", "--all")
    assert res.exit_code == 0 and "tx_stream: dropped 2 dead letters" in res.output, res.output
    assert client.xlen("tx_events:dead") == 0

    res = _cli(repo, "replay")
    assert res.exit_code == 0, res.output
    assert "tx_stream: sent 0 dead letters" in res.output


def test_cli_errors_are_one_line(repo, tmp_path) -> None:
    with FeatureStore(repo) as store:
        store.apply()
    for args in (["list", "--source", "nope"], ["replay", "--source", "nope"],
                 ["drop", "--source", "nope", "--all"]):  # fmt: skip
        res = _cli(repo, *args)
        assert res.exit_code == 1, res.output
        lines = res.output.strip().splitlines()
        assert len(lines) == 1, res.output
        assert "'nope'" in lines[0] and "profile_stream" in lines[0] and "tx_stream" in lines[0]

    # a stream server that does not answer: one line naming it
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = repo / "featurestore.yaml"
    cfg.write_text(cfg.read_text() + f"  url: redis://127.0.0.1:{port}/0\n")  # under stream:
    for args in (["list"], ["replay"], ["drop", "--all"]):
        res = _cli(repo, *args)
        assert res.exit_code == 1, res.output
        lines = res.output.strip().splitlines()
        assert len(lines) == 1 and f"stream server redis://127.0.0.1:{port}/0" in lines[0], lines
