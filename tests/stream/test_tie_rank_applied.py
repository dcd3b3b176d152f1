"""A stream row and a push of one key at one event time: the one written online last wins in the
training set too. A stream row ranks by when ingest applied it online, not by its file: a push
between two events of one flush, or made while ingest was behind, keeps the same winner online
and offline."""

from __future__ import annotations

import textwrap
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from featurestore import FeatureStore
from featurestore.offline._sql import APPLIED_US
from featurestore.online.stream import Ingester

from .conftest import stream_files

DEFS = """
from featurestore import Entity, FeatureView, Field, Float64, Int64, ParquetSource, StreamSource

user = Entity("user", join_keys=["user_id"])
src = StreamSource(name="xs", stream="tie_xs", batch_source=ParquetSource("data/xs/"),
                   schema=[Field("user_id", Int64), Field("amount", Float64)])
xv = FeatureView(name="xv", entities=[user], source=src, schema=[Field("amount", Float64)])
"""
E = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=3)


def _repo(root: Path, redis_url: str) -> Path:
    (root / "data" / "xs").mkdir(parents=True)
    (root / "featurestore.yaml").write_text(
        f"project: tieapplied\nonline_store:\n  type: redis\n  url: {redis_url}\n"
        "stream:\n  batch_size: 100\n  block_ms: 20\n  offline_flush_s: 600\n"
    )
    (root / "definitions.py").write_text(textwrap.dedent(DEFS))
    return root


def _event(user: int, amount: float) -> dict[str, Any]:
    return {"user_id": user, "amount": amount, "event_timestamp": E}


def _online(store: FeatureStore, user: int) -> Any:
    return store.get_online_features(["xv:amount"], {"user_id": [user]}).to_dict()["amount"][0]


def _training(store: FeatureStore, user: int) -> Any:
    spine = pl.DataFrame(
        {"user_id": [user], "event_timestamp": [E + timedelta(seconds=1)]},
        schema={"user_id": pl.Int64, "event_timestamp": pl.Datetime("us", "UTC")},
    )
    return store.get_historical_features(spine, ["xv:amount"])["amount"].to_list()[0]


def _wait_online(store: FeatureStore, user: int, value: float) -> None:
    deadline = time.monotonic() + 30
    while _online(store, user) != value:
        assert time.monotonic() < deadline, f"ingest did not apply user {user}'s event"
        time.sleep(0.02)


def test_a_push_between_two_events_of_one_flush_wins_offline_as_online(
    tmp_path: Path, redis_url: str
) -> None:
    """Event (user 11: 10.0) applied, then a push (user 11: 20.0), then an event of user 13, all
    in one flush: online serves the push, and so does the training set (the stream file, ranked
    as a whole by its last entry, used to win)."""
    with FeatureStore(_repo(tmp_path / "repo", redis_url)) as store:
        store.apply()
        ingester = Ingester(store)
        worker = threading.Thread(target=ingester.run)
        worker.start()
        try:
            store.send_events("xs", [_event(11, 10.0)])
            _wait_online(store, 11, 10.0)
            store.push("xv", [_event(11, 20.0)], to="online_and_offline")
            time.sleep(0.005)  # the next event is applied in a later microsecond
            store.send_events("xs", [_event(13, 30.0)])
            _wait_online(store, 13, 30.0)
        finally:
            ingester.stop()
            worker.join(timeout=60)
        assert not worker.is_alive()
        (file,) = stream_files(tmp_path / "repo" / "data" / "xs")  # one flush, both events
        assert pq.read_table(file).column("user_id").to_pylist() == [11, 13]
        assert _online(store, 11) == 20.0
        assert _training(store, 11) == 20.0
        assert _training(store, 13) == 30.0


def test_an_event_applied_after_a_push_wins_offline_as_online(
    tmp_path: Path, redis_url: str
) -> None:
    """Event sent (user 11: 10.0) while ingest is not running, then a push (user 11: 20.0),
    then ingest: the event is written online after the push and wins there, and so it does in
    the training set (its stream entry is older than the push)."""
    with FeatureStore(_repo(tmp_path / "repo", redis_url)) as store:
        store.apply()
        store.send_events("xs", [_event(11, 10.0)])
        time.sleep(0.005)
        store.push("xv", [_event(11, 20.0)], to="online_and_offline")
        assert _online(store, 11) == 20.0
        store.ingest(once=True)
        assert _online(store, 11) == 10.0
        assert _training(store, 11) == 10.0
        (file,) = stream_files(tmp_path / "repo" / "data" / "xs")
        assert pq.read_table(file).column(APPLIED_US).null_count == 0
        # the rank column is the store's own: not a column of the source users see
        source = store.get_feature_view("xv").source
        assert APPLIED_US not in store.offline.source_schema(source).names
