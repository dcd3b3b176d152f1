"""``featurestore compact`` in a folder holding push files and stream ingest files: a merged
file has one rank, so pushes a stream file ranks between stay apart, and the training set and
materialize's latest rows are the same before and after compaction."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from featurestore.offline._sql import APPLIED_US, file_rank
from featurestore.offline.compact import _applied_span, compact_pushes, push_files
from featurestore.store import FeatureStore

UTC = timezone.utc
T0 = datetime(2026, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)
KEYS = [1, 2, 3]
HOURS = [0, 1, 2]

DEFS = """
from featurestore import Entity, FeatureView, Field, Float64, ParquetSource, StreamSource

user = Entity("user", join_keys=["user_id"])
xs = StreamSource(name="xs", batch_source=ParquetSource("data/xs"))
xv = FeatureView(name="xv", entities=[user], source=xs, schema=[Field("amount", Float64)])
"""


def build_repo(root: Path) -> Path:
    """A folder read by a stream source's view (no window view), holding only loaded data."""
    repo = root / "repo"
    (repo / "data" / "xs").mkdir(parents=True)
    (repo / "featurestore.yaml").write_text(
        "project: cso\nonline_store:\n  type: embedded\n  path: data/online\n  map_size: 64MB\n"
    )
    (repo / "definitions.py").write_text(DEFS)
    _write(repo / "data" / "xs" / "seed.parquet", [(k, h, -1.0) for k in KEYS for h in HOURS])
    with FeatureStore(repo) as store:
        store.apply()
    return repo


def _write(
    path: Path, rows: list[tuple[int, int, float]], applied: list[int] | None = None
) -> None:
    """Rows (key, event hour, amount) as push and the stream sink write them; ``applied``: each
    row's time of apply online, which the sink keeps beside it."""
    columns = {
        "user_id": pa.array([r[0] for r in rows], pa.int64()),
        "event_timestamp": pa.array([T0 + r[1] * HOUR for r in rows], pa.timestamp("us", tz="UTC")),
        "amount": pa.array([r[2] for r in rows], pa.float64()),
    }
    if applied is not None:
        columns[APPLIED_US] = pa.array(applied, pa.int64())
    pq.write_table(pa.table(columns), path)


def _spine() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "user_id": [k for k in KEYS for _ in HOURS],
            "event_timestamp": [T0 + h * HOUR for _ in KEYS for h in HOURS],
        },
        schema={"user_id": pl.Int64, "event_timestamp": pl.Datetime("us", "UTC")},
    )


def _training(store: FeatureStore) -> dict[tuple[int, int], Any]:
    """(key, spine hour) -> the training set's amount."""
    out = store.get_historical_features(_spine(), ["xv:amount"])
    return {
        (row["user_id"], int((row["event_timestamp"] - T0) / HOUR)): row["amount"]
        for row in out.iter_rows(named=True)
    }


def _latest(store: FeatureStore) -> dict[tuple[int, int], Any]:
    """(key, end hour) -> amount of the latest row materialize reads up to that hour."""
    view = store.registry.feature_views["xv"]
    got: dict[tuple[int, int], Any] = {}
    for hour in HOURS:
        end = int((T0 + hour * HOUR).timestamp() * 1_000_000)
        for batch in store.offline.iter_latest_rows(view, 0, end):
            for row in batch.to_pylist():
                got[(row["user_id"], hour)] = row["amount"]
    return got


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return build_repo(tmp_path)


@pytest.fixture
def fs(repo: Path) -> Iterator[FeatureStore]:
    with FeatureStore(repo) as s:
        yield s


def _push(store: FeatureStore, rows: list[tuple[int, int, float]]) -> None:
    payload = {
        "user_id": [r[0] for r in rows],
        "event_timestamp": [(T0 + r[1] * HOUR).isoformat() for r in rows],
        "amount": [r[2] for r in rows],
    }
    assert store.push("xv", payload, to="offline") == len(rows)


def _stream_file_after_last_push(folder: Path, rows: list[tuple[int, int, float]]) -> str:
    """A stream file as ingest names it, its last entry 1 ms after the newest push; then wait
    until the clock is past it, so the next push ranks above it."""
    newest = max(file_rank(p.name) for p in push_files(folder))
    ms = newest[0] // 1000 + 1
    name = f"stream-xs-{ms}_0-{ms}_0.parquet"
    _write(folder / name, rows)
    while time.time_ns() // 1_000_000 <= ms + 1:
        time.sleep(0.001)
    return name


def test_a_push_before_a_stream_file_is_not_merged_past_it(fs: FeatureStore, repo: Path) -> None:
    """Push A (user 1: 1.0), a stream event (user 1: 2.0, same event time), push B (user 2):
    the stream value wins before and after compaction, which leaves A and B apart."""
    folder = repo / "data" / "xs"
    _push(fs, [(1, 1, 1.0), (2, 1, 100.0)])
    _stream_file_after_last_push(folder, [(1, 1, 2.0)])
    _push(fs, [(2, 1, 3.0)])
    before = _training(fs)
    assert (before[(1, 1)], before[(2, 1)]) == (2.0, 3.0)
    latest = _latest(fs)
    assert (latest[(1, 1)], latest[(2, 1)]) == (2.0, 3.0)
    files = sorted(p.name for p in push_files(folder))

    (res,) = compact_pushes(fs.config, fs.registry)

    assert _training(fs) == before
    assert _latest(fs) == latest
    assert res.skipped is not None and "nothing to merge" in res.skipped
    assert sorted(p.name for p in push_files(folder)) == files


def test_runs_on_either_side_of_a_stream_file_are_merged_apart(
    fs: FeatureStore, repo: Path
) -> None:
    """Pushes A1, A2, a stream file, pushes B1, B2: two merged files, one per run, ranked so
    the stream value beats A's rows and B's beat the stream's; the command says so."""
    folder = repo / "data" / "xs"
    _push(fs, [(1, 1, 1.0), (2, 1, 1.0), (3, 1, 1.0)])
    _push(fs, [(1, 1, 1.5)])
    stream = _stream_file_after_last_push(folder, [(1, 1, 2.0), (2, 1, 2.0)])
    _push(fs, [(2, 1, 3.0)])
    _push(fs, [(3, 2, 4.0)])
    before = _training(fs)
    assert [before[(k, 1)] for k in KEYS] == [2.0, 3.0, 1.0]
    latest = _latest(fs)

    out = subprocess.run(
        [sys.executable, "-m", "featurestore.cli", "--repo", str(repo), "compact"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )

    assert out.returncode == 0, out.stderr
    assert _training(fs) == before
    assert _latest(fs) == latest
    assert out.stdout == "compacted 'data/xs': 4 files, 6 rows -> 2 files, 6 rows\n"
    ranks = sorted(file_rank(p.name) for p in push_files(folder))
    assert len(ranks) == 2 and ranks[0] < file_rank(stream) < ranks[1]
    assert (folder / stream).exists()


def test_the_result_lists_each_merged_file(fs: FeatureStore, repo: Path) -> None:
    folder = repo / "data" / "xs"
    _push(fs, [(1, 1, 1.0)])
    _push(fs, [(1, 1, 1.5)])
    _stream_file_after_last_push(folder, [(1, 1, 2.0)])
    _push(fs, [(2, 1, 3.0)])
    _push(fs, [(2, 1, 3.0)])  # an exact repeat: dropped

    (res,) = compact_pushes(fs.config, fs.registry, "xv")

    assert res.skipped is None and (res.files_merged, res.rows_before, res.rows_after) == (4, 4, 3)
    assert sorted(res.outputs) == sorted(push_files(folder)) and res.output == res.outputs[-1]
    assert [file_rank(p.name) for p in res.outputs] == sorted(
        file_rank(p.name) for p in res.outputs
    )


# ------------------------------------------------------------------ random interleavings

# One file: ("push" | "old" | "stream" | "sub", rank step, rows); rank step 0 gives the file the
# rank of the file before it (a tie its path breaks), else it ranks that many ms later. "sub":
# a push-named file in a subfolder, read and ranked like any, never compacted; its sequence 1
# keeps it from sharing a rank with a top-level file, as the order a glob lists a subfolder's
# files in against the top level's is not the oracle's to guess.
_ROWS = st.lists(  # few (key, hour) slots, so files often tie
    st.tuples(st.sampled_from([1, 2]), st.sampled_from([1, 2]), st.sampled_from([1.0, 2.0, 3.0])),
    min_size=1,
    max_size=4,
)
_FILE = st.tuples(
    st.sampled_from(["push", "push", "old", "stream", "span", "sub"]), st.integers(0, 2), _ROWS
)
_BASE_MS = 1_767_000_000_000


def _names(files: list[tuple[str, int, Any]]) -> list[tuple[str, list[int] | None]]:
    """File names carrying the ranks ``files`` ask for (push, older release push, stream), and
    a "span" stream file's rows' times of apply: its row j just after file i + j (so its rows
    rank among the files written after it)."""
    stamps = list(itertools.accumulate((step for _, step, _ in files), initial=_BASE_MS))[1:]
    names: list[tuple[str, list[int] | None]] = []
    for i, ((kind, _, rows), ms) in enumerate(zip(files, stamps, strict=True)):
        if kind == "push":
            names.append((f"push-xv-t-{ms * 1000:016d}-{0:010d}{i:08x}.parquet", None))
        elif kind == "old":  # an older release's name: (us, -1), below a current push's 0
            names.append((f"push-xv-{ms * 1000}-{i:08x}.parquet", None))
        elif kind == "sub":
            names.append((f"a/push-xv-t-{ms * 1000:016d}-{1:010d}{i:08x}.parquet", None))
        elif kind == "span":
            applied = [stamps[min(i + j, len(stamps) - 1)] * 1000 + 1 for j in range(len(rows))]
            names.append((f"stream-xs-{ms}_1-{ms}_{len(rows)}.parquet", applied))
        else:
            names.append((f"stream-xs-{ms}_0-{ms}_0.parquet", None))
    return names


def _row_ranks(path: Path, table: pa.Table) -> list[tuple[int, int]]:
    """Each row's rank as the training set takes it: a stream row's time of apply, else its
    file's name."""
    if APPLIED_US in table.column_names:
        return [(us, 0) for us in table.column(APPLIED_US).to_pylist()]
    return [file_rank(path.name)] * table.num_rows


def _oracle(folder: Path) -> dict[tuple[int, int], Any]:
    """(key, spine hour) -> amount, from the files alone: of one key and event time the row of
    the highest (file rank, path, row) wins; a spine hour takes the latest event at or before."""
    best: dict[tuple[int, int], tuple[tuple[Any, ...], float]] = {}
    for path in folder.rglob("*.parquet"):
        table = pq.read_table(path)
        ranks = _row_ranks(path, table)
        for i, row in enumerate(table.to_pylist()):
            key = (row["user_id"], int((row["event_timestamp"] - T0) / HOUR))
            rank = (ranks[i], path.relative_to(folder).as_posix(), i)
            if key not in best or best[key][0] < rank:
                best[key] = (rank, row["amount"])
    return {(k, h): best[(k, h)][1] for k in KEYS for h in HOURS}


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FeatureStore]:
    with FeatureStore(build_repo(tmp_path_factory.mktemp("interleave"))) as s:
        yield s


@settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(files=st.lists(_FILE, min_size=2, max_size=8))
# push A, a stream event, push B (the bug hunt's case: A's row must stay below the stream's)
@example([("push", 1, [(1, 1, 1.0)]), ("stream", 1, [(1, 1, 2.0)]), ("push", 1, [(2, 1, 3.0)])])
# a stream file of the same rank as the push before it (its path wins the tie) ...
@example([("push", 1, [(1, 1, 1.0)]), ("stream", 0, [(1, 1, 2.0)]), ("push", 1, [(2, 1, 3.0)])])
# ... or as the push after it
@example([("push", 1, [(1, 1, 1.0)]), ("stream", 1, [(1, 1, 2.0)]), ("push", 0, [(2, 1, 3.0)])])
# a subfolder's push-named file ranks among the pushes too
@example([("push", 1, [(1, 1, 1.0)]), ("sub", 1, [(1, 1, 2.0)]), ("push", 1, [(2, 1, 3.0)])])
# a stream file whose rows were applied one after each of the next two pushes: its second row
# (user 1) ranks between them, so they stay apart, and user 1's push keeps losing to it
@example(
    [
        ("push", 1, [(3, 1, 0.5)]),
        ("span", 1, [(2, 1, 5.0), (1, 1, 2.0)]),
        ("push", 1, [(1, 1, 1.0)]),
        ("push", 1, [(2, 1, 3.0)]),
    ]
)
def test_compaction_keeps_every_tie_winner_whatever_the_interleaving(
    shared: FeatureStore, files: list[tuple[str, int, Any]]
) -> None:
    folder = Path(shared.config.resolve("data/xs"))
    shutil.rmtree(folder / "a", ignore_errors=True)
    for p in folder.iterdir():
        if p.name != "seed.parquet":
            p.unlink()
    (folder / "a").mkdir()
    names = _names(files)
    for (name, applied), (_, _, rows) in zip(names, files, strict=True):
        if not (folder / name).exists():  # two stream files of one rank: keep the first
            _write(folder / name, rows, applied)
    expected = _oracle(folder)
    assert _training(shared) == expected
    assert _latest(shared) == expected
    others = sorted(n for n, _ in names if n.startswith(("stream-", "a/")))
    spans = []  # each other file's lowest and highest row rank
    for n in others:
        ranks = _row_ranks(folder / n, pq.read_table(folder / n))
        spans.append((min(ranks), max(ranks)))

    compact_pushes(shared.config, shared.registry)

    assert _training(shared) == expected
    assert _latest(shared) == expected
    assert all((folder / n).exists() for n in others)
    # no two push files left with nothing ranked between them: every mergeable run merged
    left = sorted(file_rank(p.name) for p in push_files(folder))
    for lo, hi in itertools.pairwise(left):
        assert any(a <= hi and lo <= b for a, b in spans), (lo, hi, spans)


def test_a_stream_files_span_comes_from_its_footer_or_its_rows(tmp_path: Path) -> None:
    """A stream file's rows rank from its lowest time of apply to its highest, whether the file
    keeps column statistics or not; a file without the column ranks by its name alone."""
    rows = [(1, 1, 1.0), (2, 1, 2.0), (3, 1, 3.0)]
    applied = [5_000_001, 9_000_001, 7_000_001]
    table = pa.table({"user_id": [1, 2, 3], APPLIED_US: pa.array(applied, pa.int64())})
    pq.write_table(table, tmp_path / "bare.parquet", write_statistics=False)
    _write(tmp_path / "kept.parquet", rows, applied)
    for name in ("bare.parquet", "kept.parquet"):
        assert _applied_span(tmp_path / name) == ((5_000_001, 0), (9_000_001, 0)), name
    _write(tmp_path / "old.parquet", rows)
    assert _applied_span(tmp_path / "old.parquet") is None
