"""An end after now is materialized as now: a row dated in the future is not served before its
time (the training set at now has none), and the watermark never passes now, so later
incremental runs still pick up the rows that arrive meanwhile. On-demand views named in
--views are refused with one line."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore import FeatureStore
from featurestore._time import now_us, to_us
from featurestore.errors import FeatureStoreError

from .conftest import online_config

DEFS = """
from featurestore import (Entity, FeatureView, Field, Float64, OnDemandFeatureView, ParquetSource,
                          RequestSource, on_demand_feature)

acct = Entity("acct", join_keys=["acct_id"])
stats = FeatureView(name="stats", entities=[acct], ttl="30d",
                    source=ParquetSource("data/stats/"), schema=[Field("balance", Float64)])
req = RequestSource("req", schema=[Field("amount", Float64)])


@on_demand_feature(inputs=["amount", "stats:balance"], output=Field("left", Float64),
                   sources=[req])
def left(amount: float, balance: float) -> float:
    return balance - amount


after = OnDemandFeatureView(name="after", sources=[req, stats], features=[left])
"""


def _rows(folder: Path, name: str, rows: list[tuple[str, datetime, float]]) -> None:
    ids, ts, bal = zip(*rows, strict=True)
    pq.write_table(
        pa.table(
            {
                "acct_id": pa.array(ids),
                "event_timestamp": pa.array(ts, pa.timestamp("us", tz="UTC")),
                "balance": pa.array(bal, pa.float64()),
            }
        ),
        folder / name,
    )


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "data" / "stats").mkdir(parents=True)
    (tmp_path / "definitions.py").write_text(textwrap.dedent(DEFS))
    return tmp_path


def test_a_future_end_is_now_and_the_watermark_stays_behind_it(repo: Path) -> None:
    now = datetime.now(timezone.utc)
    folder = repo / "data" / "stats"
    _rows(
        folder,
        "a.parquet",
        [("a", now - timedelta(hours=1), 1.0), ("a", now + timedelta(days=1), 99.0)],
    )
    config = online_config("embedded", repo)
    far = now + timedelta(days=365)
    with FeatureStore(config=config) as store:
        store.apply()
        before = now_us()
        res = store.materialize_incremental(far)
        assert res.asked_end_us == to_us(far)
        assert before <= res.end_us <= now_us()
        assert store.get_online_features(["stats:balance"], {"acct_id": ["a"]}).to_dict()[
            "balance"
        ] == [1.0]  # not tomorrow's 99.0
        mark = store.registry.materialization["stats"]["watermark_us"]
        assert mark <= now_us()
    _rows(folder, "b.parquet", [("b", datetime.now(timezone.utc), 5.0)])  # arrives later
    with FeatureStore(config=config) as store:
        res = store.materialize_incremental(datetime.now(timezone.utc))
        assert res.asked_end_us is None and res.rows == {"stats": 1}
        got = store.get_online_features(["stats:balance"], {"acct_id": ["b"]}).to_dict()
        assert got["balance"] == [5.0]
        res = store.materialize(now - timedelta(days=2), far)  # an explicit window too
        assert res.asked_end_us == to_us(far) and res.end_us <= now_us()


def test_the_cli_says_the_end_was_moved_to_now(repo: Path) -> None:
    now = datetime.now(timezone.utc)
    _rows(repo / "data" / "stats", "a.parquet", [("a", now - timedelta(hours=1), 1.0)])
    (repo / "featurestore.yaml").write_text("project: fut\n")
    cli = [sys.executable, "-m", "featurestore.cli", "--repo", str(repo)]
    subprocess.run([*cli, "apply"], check=True, capture_output=True)
    out = subprocess.run(
        [*cli, "materialize-incremental", "2999-01-01"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "end 2999-01-01T00:00:00+00:00 is in the future: materialized up to now" in out.stdout


@pytest.mark.parametrize("incremental", [False, True])
def test_an_on_demand_view_named_in_views_is_refused(repo: Path, incremental: bool) -> None:
    now = datetime.now(timezone.utc)
    _rows(repo / "data" / "stats", "a.parquet", [("a", now - timedelta(hours=1), 1.0)])
    with FeatureStore(config=online_config("embedded", repo)) as store:
        store.apply()
        with pytest.raises(FeatureStoreError, match=r"'after' is an on-demand feature view") as e:
            if incremental:
                store.materialize_incremental(now, views=["after"])
            else:
                store.materialize(now - timedelta(days=1), now, views=["after"])
        assert "\n" not in str(e.value)


def test_a_key_too_long_for_the_embedded_store_is_named_with_its_view(repo: Path) -> None:
    now = datetime.now(timezone.utc)
    _rows(repo / "data" / "stats", "a.parquet", [("x" * 600, now - timedelta(hours=1), 1.0)])
    with FeatureStore(config=online_config("embedded", repo)) as store:
        store.apply()
        with pytest.raises(FeatureStoreError) as err:
            store.materialize(now - timedelta(days=1), now)
    msg = str(err.value)
    assert msg.startswith("materialize 'stats': a key of ") and "xxxxxxxx" in msg
    assert "longer than the embedded online store allows (511 bytes)" in msg
