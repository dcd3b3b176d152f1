"""``featurestore compact``: a folder's push files become one, exact duplicates dropped, and the
training sets and online values built from the folder do not change (nor do stream files)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
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

from featurestore.errors import FeatureNotFoundError, OfflineStoreError
from featurestore.offline.compact import (
    CompactResult,
    compact_pushes,
    merged_table,
    push_files,
    write_compacted,
)
from featurestore.store import FeatureStore

UTC = timezone.utc
T0 = datetime(2026, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)
N_USERS = 5
FACTS = ["user_facts:score", "user_facts:n", "user_facts:tag"]

DEFS = """
from featurestore import (Aggregation, DuckDBSource, Entity, FeatureView, Field, Float64, Int64,
                          ParquetSource, StreamSource, String)

user = Entity("user", join_keys=["user_id"])
user_facts = FeatureView(name="user_facts", entities=[user],
                         source=ParquetSource("data/facts", created_timestamp_field="created"),
                         schema=[Field("score", Float64), Field("n", Int64), Field("tag", String)])
facts_slim = FeatureView(name="facts_slim", entities=[user],
                         source=ParquetSource("data/facts", created_timestamp_field="created"),
                         schema=[Field("score", Float64)])
plain_facts = FeatureView(name="plain_facts", entities=[user], source=ParquetSource("data/plain"),
                          schema=[Field("score", Float64)])
tx_plain = FeatureView(name="tx_plain", entities=[user], source=ParquetSource("data/tx"),
                       schema=[Field("amount", Float64)])
tx_window = FeatureView(name="tx_window", entities=[user], source=ParquetSource("data/tx"),
                        aggregations=[Aggregation("amount", "count", "1d")])
single_file = FeatureView(name="single_file", entities=[user],
                          source=ParquetSource("data/single.parquet"),
                          schema=[Field("score", Float64)])
sql_view = FeatureView(name="sql_view", entities=[user],
                       source=DuckDBSource("SELECT * FROM 'data/single.parquet'"),
                       schema=[Field("score", Float64)])
clicks = FeatureView(name="clicks", entities=[user],
                     source=StreamSource(name="clicks", batch_source=ParquetSource("data/clicks")),
                     schema=[Field("clicks", Int64)])
"""


def _ts(values: list[datetime]) -> pa.Array:
    return pa.array(values, pa.timestamp("us", tz="UTC"))


def build_repo(root: Path) -> Path:
    """Parquet folders (timestamp(us, UTC) columns) for plain, window, single-file, SQL and
    stream views; applied and materialized."""
    repo = root / "repo"
    data = repo / "data"
    for d in ("facts", "plain", "tx", "clicks"):
        (data / d).mkdir(parents=True)
    (repo / "featurestore.yaml").write_text(
        "project: compact\nonline_store:\n  type: embedded\n  path: data/online\n  map_size: 64MB\n"
    )
    (repo / "definitions.py").write_text(DEFS)
    users = list(range(1, N_USERS + 1))
    uids = pa.array(users, pa.int64())
    times = _ts([T0 + u * HOUR for u in users])
    pq.write_table(
        pa.table(
            {
                "user_id": uids,
                "event_timestamp": times,
                "created": times,
                "score": pa.array([float(u) for u in users]),
                "n": uids,
                # as polars writes strings: the compacted file must keep the type
                "tag": pa.array([f"t{u}" for u in users], pa.large_string()),
            }
        ),
        data / "facts" / "part-0.parquet",
    )
    base = {"user_id": uids, "event_timestamp": times}
    scores = pa.array([float(u) for u in users])
    pq.write_table(pa.table({**base, "score": scores}), data / "plain" / "part-0.parquet")
    pq.write_table(pa.table({**base, "score": scores}), data / "single.parquet")
    pq.write_table(pa.table({**base, "amount": scores}), data / "tx" / "part-0.parquet")
    pq.write_table(pa.table({**base, "clicks": uids}), data / "clicks" / "part-0.parquet")
    # a file as the stream sink names it: ingest resumes from its name, so it must stay put
    half = _ts([T0 + u * HOUR + HOUR / 2 for u in users])  # no tie with part-0's rows
    stream_rows = pa.table(
        {"user_id": uids, "event_timestamp": half, "clicks": pa.array([10 * u for u in users])}
    )
    pq.write_table(stream_rows, data / "clicks" / "stream-clicks-1_0-1_4.parquet")
    with FeatureStore(repo) as store:
        store.apply()
        store.materialize(T0 - timedelta(days=1), datetime.now(UTC))
    return repo


@pytest.fixture
def crepo(tmp_path: Path) -> Path:
    return build_repo(tmp_path)


@pytest.fixture
def fs(crepo: Path) -> Iterator[FeatureStore]:
    with FeatureStore(crepo) as s:
        yield s


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def _push(store: FeatureStore, view: str, keys: list[int], hours: list[int], **cols: Any) -> None:
    rows = {"user_id": keys, "event_timestamp": [_iso(T0 + h * HOUR) for h in hours], **cols}
    assert store.push(view, rows, to="offline") == len(keys)


def _pushes(repo: Path, folder: str) -> list[str]:
    return sorted(p.name for p in push_files(repo / "data" / folder))


def _spine() -> pl.DataFrame:
    keys = [u for u in range(0, N_USERS + 3) for _ in range(0, 30, 2)]
    times = [T0 + h * HOUR for _ in range(0, N_USERS + 3) for h in range(0, 30, 2)]
    return pl.DataFrame(
        {"user_id": keys, "event_timestamp": times},
        schema={"user_id": pl.Int64, "event_timestamp": pl.Datetime("us", "UTC")},
    )


def _training(store: FeatureStore, feats: list[str] | None = None) -> pl.DataFrame:
    feats = feats or [*FACTS, "plain_facts:score", "clicks:clicks"]
    out = store.get_historical_features(_spine(), feats, full_feature_names=True)
    return out.sort(out.columns)


def _online(store: FeatureStore) -> dict[str, list[Any]]:
    feats = [*FACTS, "plain_facts:score", "clicks:clicks"]
    keys = list(range(0, N_USERS + 3))
    return store.get_online_features(feats, {"user_id": keys}, full_feature_names=True).to_dict()


def _no_duplicate_rows(path: Path) -> bool:
    df = pl.read_parquet(path)
    return not df.is_duplicated().any()


def _by_folder(results: list[CompactResult]) -> dict[str, CompactResult]:
    return {r.folder: r for r in results}


def _several_pushes(store: FeatureStore) -> None:
    """Pushes with exact repeats (plain folder: no created column, so a repeated push is the
    same row) and later pushes of the same key and event time (facts: created breaks the tie)."""
    _push(store, "user_facts", [1, 2, 9], [10, 11, 12], score=[7.5, None, 9.0], n=[1, 2, 3],
          tag=["a", "b", None])  # fmt: skip
    _push(store, "user_facts", [1, 3], [10, 3], score=[8.5, 3.5], n=[None, 33], tag=["a2", "c"])
    _push(store, "user_facts", [1], [10], score=[9.5], n=[11], tag=["a3"])
    for _ in range(3):  # the same push three times: two rows repeated exactly
        _push(store, "plain_facts", [1, 6], [14, 15], score=[14.0, 66.0])
    _push(store, "plain_facts", [2], [16], score=[2.5])
    _push(store, "clicks", [1, 2], [20, 21], clicks=[100, 200])
    _push(store, "clicks", [1], [22], clicks=[101])


# ------------------------------------------------------------------ the training set


def test_compact_leaves_one_file_and_the_same_training_set_and_online_values(
    fs: FeatureStore, crepo: Path
) -> None:
    _several_pushes(fs)
    assert len(_pushes(crepo, "facts")) == 3 and len(_pushes(crepo, "plain")) == 4
    facts_schema = pq.read_schema(crepo / "data" / "facts" / _pushes(crepo, "facts")[0])
    before = _training(fs)
    fs.materialize(T0 - timedelta(days=1), datetime.now(UTC))
    online_before = _online(fs)

    got = _by_folder(compact_pushes(fs.config, fs.registry))

    facts = got["data/facts"]
    assert facts.view == "user_facts"  # facts_slim shares the folder but cannot take pushes
    assert (facts.skipped, facts.files_merged, facts.rows_before, facts.rows_after) == (
        None,
        3,
        6,
        6,
    )
    plain = got["data/plain"]
    assert (plain.files_merged, plain.rows_before, plain.rows_after) == (4, 7, 3)
    assert got["data/clicks"].files_merged == 2
    for folder in ("facts", "plain", "clicks"):
        (name,) = _pushes(crepo, folder)
        assert name.startswith(("push-user_facts-compact-", "push-plain_facts-compact-",
                                "push-clicks-compact-"))  # fmt: skip
        assert _no_duplicate_rows(crepo / "data" / folder / name)
    (name,) = _pushes(crepo, "facts")
    assert name == facts.output.name if facts.output else False
    merged = pq.read_schema(crepo / "data" / "facts" / name)
    assert [(f.name, f.type) for f in merged] == [(f.name, f.type) for f in facts_schema]
    assert merged.field("tag").type == pa.large_string()
    # not a hidden temporary file left over
    assert not [n for n in os.listdir(crepo / "data" / "facts") if n.endswith(".tmp")]

    after = _training(fs)
    assert after.equals(before), (before, after)
    # the later push of user 1 at hour 10 still wins over the earlier ones
    row = after.filter((pl.col("user_id") == 1) & (pl.col("event_timestamp") == T0 + 10 * HOUR))
    assert row["user_facts__tag"].to_list() == ["a3"]
    fs.materialize(T0 - timedelta(days=1), datetime.now(UTC))
    assert _online(fs) == online_before

    # again: one file each, nothing to merge
    again = _by_folder(compact_pushes(fs.config, fs.registry))
    assert again["data/facts"].skipped == "1 push file(s), nothing to merge"
    assert _training(fs).equals(before)


def test_the_compacted_name_carries_the_latest_push_time(fs: FeatureStore, crepo: Path) -> None:
    _push(fs, "plain_facts", [1], [1], score=[1.0])
    _push(fs, "plain_facts", [2], [2], score=[2.0])
    times = [int(n.split("-")[-2]) for n in _pushes(crepo, "plain")]
    (res,) = compact_pushes(fs.config, fs.registry, "plain_facts")
    assert res.output is not None
    assert res.output.name.startswith(f"push-plain_facts-compact-{max(times)}-")


def test_a_view_sharing_a_folder_compacts_it_through_one_taking_pushes(
    fs: FeatureStore, crepo: Path
) -> None:
    _several_pushes(fs)
    (res,) = compact_pushes(fs.config, fs.registry, "facts_slim")
    assert (res.view, res.folder, res.files_merged) == ("user_facts", "data/facts", 3)
    assert len(_pushes(crepo, "facts")) == 1


def test_a_crash_between_write_and_delete_is_repaired_by_the_next_run(
    fs: FeatureStore, crepo: Path
) -> None:
    _several_pushes(fs)
    expected = _training(fs)
    compact_pushes(fs.config, fs.registry)  # one compacted file per folder
    for _ in range(2):  # more pushes, repeating rows of the compacted file
        _push(fs, "plain_facts", [1, 6], [14, 15], score=[14.0, 66.0])
    _push(fs, "plain_facts", [7], [17], score=[77.0])
    folder = crepo / "data" / "plain"
    expected = _training(fs)
    # the inner steps of a compaction that crashed after the write, before the deletes
    files = push_files(folder)
    table, _ = merged_table(files)
    write_compacted(folder, "plain_facts", table, files)
    assert len(push_files(folder)) == len(files) + 1
    assert _training(fs).equals(expected)  # duplicates for a while: the same values

    (res,) = compact_pushes(fs.config, fs.registry, "plain_facts")
    (name,) = _pushes(crepo, "plain")
    assert (res.files_merged, res.rows_after) == (5, 4)
    assert _no_duplicate_rows(folder / name)
    assert pq.read_metadata(folder / name).num_rows == 4
    assert _training(fs).equals(expected)

    # a compacted file copied back next to its inputs (the same crash, another way)
    shutil.copy(folder / name, folder / name.replace("-compact-", "-compact-0"))
    (res,) = compact_pushes(fs.config, fs.registry, "plain_facts")
    assert (res.files_merged, res.rows_before, res.rows_after) == (2, 8, 4)
    assert len(_pushes(crepo, "plain")) == 1
    assert _training(fs).equals(expected)


def test_a_failed_write_leaves_every_push_file(
    fs: FeatureStore, crepo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _several_pushes(fs)
    files = _pushes(crepo, "plain")
    expected = _training(fs)

    def fail(*_: Any, **__: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("featurestore._atomic.atomic_write", fail)
    with pytest.raises(OfflineStoreError, match=r"plain_facts.*No space left"):
        compact_pushes(fs.config, fs.registry, "plain_facts")
    assert _pushes(crepo, "plain") == files
    assert _training(fs).equals(expected)


# ------------------------------------------------------------------ what is left alone


def test_stream_and_other_files_are_untouched(fs: FeatureStore, crepo: Path) -> None:
    folder = crepo / "data" / "clicks"
    (folder / "sub").mkdir()
    shutil.copy(folder / "part-0.parquet", folder / "sub" / "push-clicks-1-abcdef12.parquet")
    shutil.copy(folder / "part-0.parquet", folder / "pushed-by-hand.parquet")
    others = ["part-0.parquet", "stream-clicks-1_0-1_4.parquet", "pushed-by-hand.parquet",
              "sub/push-clicks-1-abcdef12.parquet"]  # fmt: skip
    before = {n: (folder / n).read_bytes() for n in others}
    _push(fs, "clicks", [1], [20], clicks=[100])
    _push(fs, "clicks", [2], [21], clicks=[200])
    (res,) = compact_pushes(fs.config, fs.registry, "clicks")
    assert (res.files_merged, res.rows_after) == (2, 2)
    assert {n: (folder / n).read_bytes() for n in others} == before
    top = sorted(n for n in os.listdir(folder) if not n.startswith("."))
    assert top == sorted([*others[:3], "sub", res.output.name if res.output else ""])


def test_a_folder_shared_with_a_window_view_is_skipped(fs: FeatureStore, crepo: Path) -> None:
    for _ in range(2):  # pushed twice on purpose: a count must see both
        _push(fs, "tx_plain", [1], [3], amount=[5.0])
    files = {n: (crepo / "data" / "tx" / n).read_bytes() for n in _pushes(crepo, "tx")}
    (res,) = compact_pushes(fs.config, fs.registry, "tx_plain")
    assert res.skipped is not None and "tx_window" in res.skipped and res.files_merged == 0
    assert {n: (crepo / "data" / "tx" / n).read_bytes() for n in _pushes(crepo, "tx")} == files
    every = _by_folder(compact_pushes(fs.config, fs.registry))
    assert "tx_window" in (every["data/tx"].skipped or "")
    (res,) = compact_pushes(fs.config, fs.registry, "tx_window")
    assert res.skipped is not None and "tx_window" in res.skipped


def test_sql_and_single_file_views_are_not_applicable(fs: FeatureStore) -> None:
    (sql,) = compact_pushes(fs.config, fs.registry, "sql_view")
    assert sql.skipped is not None and "SQL query" in sql.skipped and sql.files_merged == 0
    (single,) = compact_pushes(fs.config, fs.registry, "single_file")
    assert single.skipped is not None and "a single file" in single.skipped
    every = {r.view: r for r in compact_pushes(fs.config, fs.registry)}
    assert every["sql_view"].skipped == sql.skipped
    assert every["single_file"].skipped == single.skipped
    with pytest.raises(FeatureNotFoundError, match="'nope'"):
        compact_pushes(fs.config, fs.registry, "nope")


# ------------------------------------------------------------------ semantics


_ROW = st.tuples(
    st.integers(1, N_USERS + 1),  # user 6 has no initial row
    st.integers(0, 24),  # event hour
    st.one_of(st.none(), st.floats(-5, 5, allow_nan=False)),
)


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FeatureStore]:
    with FeatureStore(build_repo(tmp_path_factory.mktemp("semantics"))) as s:
        yield s


@settings(
    max_examples=15,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    batches=st.lists(
        # one push has one created time: a key twice at one event time in it would be a tie
        # that no rule breaks, with or without compaction
        st.lists(_ROW, min_size=1, max_size=5, unique_by=lambda r: (r[0], r[1])),
        min_size=1,
        max_size=4,
    )
)
def test_compaction_never_changes_the_training_set(
    shared_store: FeatureStore, batches: list
) -> None:
    store = shared_store
    for batch in batches:
        keys, hours, scores = [r[0] for r in batch], [r[1] for r in batch], [r[2] for r in batch]
        _push(store, "user_facts", keys, hours, score=scores, n=hours, tag=["x"] * len(batch))
        # no created column: a value fixed by (key, hour), so equal times mean equal rows
        # (part-0's row of user u at hour u has score u)
        values = [float(k) if h == k else k * 100.0 + h for k, h in zip(keys, hours, strict=True)]
        _push(store, "plain_facts", keys, hours, score=values)
    before = _training(store)
    compact_pushes(store.config, store.registry)
    assert _training(store).equals(before)
    folder = Path(store.config.resolve("data/plain"))
    (only,) = push_files(folder)
    assert _no_duplicate_rows(only)


# ------------------------------------------------------------------ the command line


def _cli(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "featurestore.cli", "--repo", str(repo), "compact", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


def test_cli_prints_a_line_per_folder(fs: FeatureStore, crepo: Path) -> None:
    for _ in range(3):
        _push(fs, "plain_facts", [1, 6], [14, 15], score=[14.0, 66.0])
    out = _cli(crepo, "--view", "plain_facts")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "compacted 'data/plain': 3 files, 6 rows -> 1 file, 2 rows\n"
    out = _cli(crepo)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "skipped 'data/plain' (view 'plain_facts'): 1 push file(s), nothing to merge" in lines
    assert any(ln.startswith("skipped 'data/tx' (view 'tx_plain'): window view") for ln in lines)
    assert any(ln.startswith("skipped 'data/single.parquet'") for ln in lines)


def test_cli_unknown_view_is_one_error_line(crepo: Path) -> None:
    out = _cli(crepo, "--view", "nope")
    assert out.returncode != 0
    assert out.stdout == ""
    (line,) = out.stderr.splitlines()
    assert line.startswith("error:") and "'nope'" in line and "Traceback" not in out.stderr
