"""Offline pushes into folders whose files hold times in another unit than the pushed
microseconds: the push lands without losing a digit, keeps the files' zone (or lack of one),
and training sets and ``featurestore compact`` read the mixed folder as one."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featurestore.offline.compact import compact_pushes
from featurestore.store import FeatureStore

UTC = timezone.utc
T0 = datetime(2026, 1, 1, 12, tzinfo=UTC)
US = timedelta(microseconds=1)
FEATS = ["v:a", "v:when"]

DEFS = """
from featurestore import Entity, FeatureView, Field, Int64, ParquetSource, UnixTimestamp

user = Entity("user", join_keys=["user_id"])
v = FeatureView(name="v", entities=[user],
                source=ParquetSource("data/v", created_timestamp_field="created"),
                schema=[Field("a", Int64), Field("when", UnixTimestamp)])
"""


def build_repo(root: Path, unit: str, tz: str | None) -> Path:
    """A folder of one file whose time columns (event, created and the ``when`` feature) are
    ``timestamp(unit, tz)``: user 1 has a = 1 at T0."""
    repo = root / f"repo-{unit}-{tz}"
    (repo / "data" / "v").mkdir(parents=True)
    (repo / "featurestore.yaml").write_text(
        "project: units\nonline_store:\n  type: embedded\n  path: data/online\n  map_size: 64MB\n"
    )
    (repo / "definitions.py").write_text(DEFS)
    ttype = pa.timestamp(unit, tz=tz)
    t0 = T0 if tz else T0.replace(tzinfo=None)  # a naive column holds UTC wall times
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array([1], pa.int64()),
                "event_timestamp": pa.array([t0], ttype),
                "created": pa.array([t0], ttype),
                "a": pa.array([1], pa.int64()),
                "when": pa.array([t0], ttype),
            }
        ),
        repo / "data" / "v" / "base.parquet",
    )
    with FeatureStore(repo) as store:
        store.apply()
    return repo


@pytest.fixture
def ms_repo(tmp_path: Path) -> Iterator[Path]:
    yield build_repo(tmp_path, "ms", "UTC")


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def _rows(keys: list[int], times: list[datetime], a: list[int]) -> dict[str, list[Any]]:
    return {
        "user_id": keys,
        "event_timestamp": [_iso(t) for t in times],
        "a": a,
        "when": [_iso(t) for t in times],
    }


def _training(store: FeatureStore, keys: list[int], times: list[datetime]) -> pl.DataFrame:
    spine = pl.DataFrame(
        {"user_id": keys, "event_timestamp": times},
        schema={"user_id": pl.Int64, "event_timestamp": pl.Datetime("us", "UTC")},
    )
    return store.get_historical_features(spine, FEATS)


def _push_files(repo: Path) -> list[Path]:
    return sorted((repo / "data" / "v").glob("push-*.parquet"))


@pytest.mark.parametrize(
    ("unit", "tz", "written"),
    [
        ("ms", "UTC", "us"),
        ("ms", None, "us"),
        ("s", "UTC", "us"),
        ("us", "UTC", "us"),
        ("ns", None, "ns"),
        ("ns", "UTC", "ns"),
        ("ms", "Europe/Paris", "us"),
    ],
)
def test_a_push_lands_at_the_finer_unit_in_the_files_zone(
    tmp_path: Path, unit: str, tz: str | None, written: str
) -> None:
    repo = build_repo(tmp_path, unit, tz)
    ev = T0 + timedelta(hours=1, microseconds=123)  # sub-millisecond digits
    with FeatureStore(repo) as store:
        assert store.push("v", _rows([1], [ev], [2]), to="offline") == 1
        (path,) = _push_files(repo)
        schema = pq.read_schema(path)
        for col in ("event_timestamp", "created", "when"):
            assert schema.field(col).type == pa.timestamp(written, tz=tz), col
        table = pq.read_table(path)
        as_us = table.column("event_timestamp").cast(pa.timestamp("us", tz=tz))
        assert as_us.cast(pa.int64()).to_pylist() == [int(ev.timestamp() * 1e6)]
        got = _training(store, [1, 1, 1], [ev - US, ev, ev + US])
    assert got["a"].to_list() == [1, 2, 2]
    assert got["when"].to_list() == [T0, ev, ev]


def test_the_push_time_in_created_keeps_its_microseconds(ms_repo: Path) -> None:
    from featurestore._time import now_us

    with FeatureStore(ms_repo) as store:
        before = now_us()
        store.push("v", _rows([1], [T0], [5]), to="offline")  # ties the base row's event time
        after = now_us()
        (path,) = _push_files(ms_repo)
        created = pq.read_table(path).column("created").cast(pa.int64()).to_pylist()[0]
        # the later push wins the tie with the base row on its created time
        assert _training(store, [1], [T0])["a"].to_list() == [5]
    assert before <= created <= after


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    offsets=st.lists(st.integers(1, 999_999), min_size=1, max_size=4, unique=True),
    probes=st.lists(st.integers(-2, 1_000_001), min_size=1, max_size=6),
)
def test_sub_millisecond_pushes_match_an_oracle(
    ms_repo: Path, offsets: list[int], probes: list[int]
) -> None:
    """Each example pushes to its own user; a spine row at t sees the latest push at or before
    t, to the microsecond, else the base file's row (user 1's only)."""
    key = 2 + len(_push_files(ms_repo))  # a user no earlier example pushed to
    times = [T0 + o * US for o in offsets]
    with FeatureStore(ms_repo) as store:
        store.push("v", _rows([key] * len(times), times, offsets), to="offline")
        spine_times = [T0 + p * US for p in probes]
        got = _training(store, [key] * len(probes), spine_times)["a"].to_list()
    want = [max((o for o in offsets if o <= p), default=None) for p in probes]
    assert got == want


@pytest.mark.parametrize("tz", ["UTC", None])
def test_compact_merges_millisecond_and_microsecond_push_files(
    tmp_path: Path, tz: str | None
) -> None:
    """A push file written in milliseconds (as pushes into this folder once were) and a new
    microsecond one compact into one file; the training set does not change. (A naive folder
    must get naive pushes: naive and zoned files do not merge.)"""
    repo = build_repo(tmp_path, "ms", tz)
    old = T0 + timedelta(minutes=30)
    old_ms = pa.array([old if tz else old.replace(tzinfo=None)], pa.timestamp("ms", tz=tz))
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array([1], pa.int64()),
                "a": pa.array([3], pa.int64()),
                "when": old_ms,
                "event_timestamp": old_ms,
                "created": old_ms,
            }
        ),
        repo / "data" / "v" / "push-v-1767270600000000-0000abcd.parquet",
    )
    ev = T0 + timedelta(hours=1, microseconds=7)
    probes = [T0, old, ev - US, ev, ev + timedelta(hours=1)]
    with FeatureStore(repo) as store:
        store.push("v", _rows([1], [ev], [4]), to="offline")
        before = _training(store, [1] * len(probes), probes)
        (res,) = compact_pushes(store.config, store.registry)
        assert res.skipped is None, res.skipped
        assert res.files_merged == 2
        (path,) = _push_files(repo)
        assert pq.read_schema(path).field("event_timestamp").type == pa.timestamp("us", tz=tz)
        after = _training(store, [1] * len(probes), probes)
    assert before["a"].to_list() == [1, 3, 3, 4, 4]
    assert before["when"].to_list() == [T0, old, old, ev, ev]
    assert after.equals(before)


def test_a_folder_named_like_a_parquet_file_takes_pushes(tmp_path: Path) -> None:
    """What is on disk decides, as for reads: a folder called ``v.parquet`` is a folder."""
    repo = build_repo(tmp_path, "us", "UTC")
    (repo / "data" / "v").rename(repo / "data" / "v.parquet")
    defs = (repo / "definitions.py").read_text()
    (repo / "definitions.py").write_text(defs.replace('"data/v"', '"data/v.parquet"'))
    ev = T0 + timedelta(hours=1)
    with FeatureStore(repo) as store:
        store.apply()
        assert store.push("v", _rows([1], [ev], [2]), to="offline") == 1
        assert len(list((repo / "data" / "v.parquet").glob("push-*.parquet"))) == 1
        assert _training(store, [1, 1], [ev - US, ev])["a"].to_list() == [1, 2]
