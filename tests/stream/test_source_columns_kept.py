"""Ingest keeps every column of a stream source's schema in its batch files, not only those the
views read today: a view added later over another column can then be built from the history.
A value that does not fit its declared column is a bad event (dead letter), read or not."""

from __future__ import annotations

import textwrap
from datetime import datetime, timezone
from pathlib import Path

import polars as pl

from featurestore import FeatureStore

from .conftest import FAST_STREAM, dead_entries, read_folder, redis_client_for, stream_files

DEFS = """
from featurestore import (Aggregation, Entity, FeatureView, Field, Float64, Int64, ParquetSource,
                          StreamSource, String)

user = Entity("user", join_keys=["user_id"])
tx = StreamSource(name="tx", stream="kept_tx", batch_source=ParquetSource("data/tx/"),
                  schema=[Field("user_id", Int64), Field("amount", Float64),
                          Field("merchant_id", Int64), Field("note", String)])
user_tx = FeatureView(name="user_tx", entities=[user], source=tx,
                      aggregations=[{aggs}])
"""
SUM = 'Aggregation("amount", "sum", ["1h"])'
DISTINCT = 'Aggregation("merchant_id", "distinct_count", ["1h"])'


def _write(repo: Path, aggs: str) -> None:
    (repo / "definitions.py").write_text(textwrap.dedent(DEFS.replace("{aggs}", aggs)))


def test_unread_source_columns_are_kept_for_later_views(tmp_path: Path, redis_url: str) -> None:
    repo = tmp_path / "repo"
    (repo / "data" / "tx").mkdir(parents=True)
    (repo / "featurestore.yaml").write_text(
        f"project: kept\nonline_store:\n  type: redis\n  url: {redis_url}\n" + FAST_STREAM
    )
    _write(repo, SUM)
    now = datetime.now(timezone.utc).replace(microsecond=0)
    with FeatureStore(repo) as store:
        store.apply()
        store.send_events(
            "tx",
            [
                {
                    "user_id": 1,
                    "amount": 5.0,
                    "merchant_id": 77,
                    "note": "a",
                    "event_timestamp": now,
                },
                {"user_id": 1, "amount": 2.0, "merchant_id": 78, "event_timestamp": now},
                {"user_id": 2, "amount": 1.0, "merchant_id": "x", "event_timestamp": now},
            ],
        )
        store.ingest(once=True)
        client = redis_client_for(redis_url)
        dead = dead_entries(client, "kept_tx")
    assert len(dead) == 1 and "merchant_id" in str(dead[0])  # not an int: a bad event
    assert stream_files(repo / "data" / "tx")
    rows = sorted(read_folder(repo / "data" / "tx"), key=lambda r: r["merchant_id"])
    assert [(r["user_id"], r["merchant_id"], r["note"]) for r in rows] == [
        (1, 77, "a"),
        (1, 78, None),
    ]

    _write(repo, f"{SUM}, {DISTINCT}")  # a view over a column no view read before
    with FeatureStore(repo) as store:
        store.apply()
        spine = pl.DataFrame({"user_id": [1], "event_timestamp": [now]}).with_columns(
            pl.col("event_timestamp").dt.cast_time_unit("us").dt.replace_time_zone("UTC")
        )
        out = store.get_historical_features(
            spine, ["user_tx:merchant_id_distinct_count_1h", "user_tx:amount_sum_1h"]
        )
    assert out["merchant_id_distinct_count_1h"].to_list() == [2]
    assert out["amount_sum_1h"].to_list() == [7.0]
