"""DuckDB running out of memory (a real Out of Memory Error, under a tiny
``offline_store.memory_limit``) is one line saying to raise the limit, naming its value, or to
give ``temp_directory`` a disk with room; not to validate the view, which is not at fault."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore.errors import OfflineStoreError
from featurestore.store import FeatureStore

T0 = 1_767_268_800_000_000  # 2026-01-01 12:00 UTC
ROWS = 200_000
FEATURES = [f"f{i}" for i in range(20)]
DEFS = f"""
from featurestore import Entity, FeatureView, Field, Float64, ParquetSource

user = Entity("user", join_keys=["user_id"])
big = FeatureView(name="big", entities=[user], source=ParquetSource("data/big.parquet"),
                  schema=[{", ".join(f'Field("{f}", Float64)' for f in FEATURES)}])
"""
ADVICE = re.compile(
    r"failed: Out of Memory Error: .*; raise offline_store\.memory_limit \(now [0-9.]+ [KMG]iB\) "
    r"in featurestore\.yaml, or set offline_store\.temp_directory to a folder on a disk with "
    r"room to spill to$"
)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200k source rows of 20 floats (100k entities) and a 200k-row spine, at 16MB."""
    repo = tmp_path_factory.mktemp("oom")
    (repo / "data").mkdir()
    (repo / "definitions.py").write_text(DEFS)
    (repo / "featurestore.yaml").write_text(
        "project: oom\noffline_store:\n  memory_limit: 16MB\n"
        "online_store:\n  type: embedded\n  path: data/online\n  map_size: 256MB\n"
    )
    rng = np.random.default_rng(3)
    times = pa.array(T0 + rng.integers(0, 10**9, ROWS), pa.int64())
    times = times.cast(pa.timestamp("us", tz="UTC"))
    cols = {
        "user_id": pa.array(np.arange(ROWS) % (ROWS // 2), pa.int64()),
        "event_timestamp": times,
    }
    cols.update((f, pa.array(rng.random(ROWS))) for f in FEATURES)
    pq.write_table(pa.table(cols), repo / "data" / "big.parquet")
    spine = {
        "user_id": pa.array(rng.integers(0, ROWS // 2, ROWS), pa.int64()),
        "event_timestamp": times,
    }
    pq.write_table(pa.table(spine), repo / "spine.parquet")
    with FeatureStore(repo) as store:
        store.apply()
    return repo


def _cli(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "featurestore.cli", "--repo", str(repo), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def _error_line(stderr: str) -> str:
    """The one error line (progress bars may write to stderr before it)."""
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    assert "Traceback" not in stderr, stderr
    return errors[0]


def test_training_set_out_of_memory_says_raise_the_limit(repo: Path) -> None:
    out = repo / "ts.parquet"
    res = _cli(
        repo, "training-set", "--spine", str(repo / "spine.parquet"), "--features",
        ",".join(f"big:{f}" for f in FEATURES), "--out", str(out),
    )  # fmt: skip
    assert res.returncode == 1
    line = _error_line(res.stderr)
    assert line.startswith("error: point-in-time join of feature view 'big' failed: "), line
    assert ADVICE.search(line), line
    assert "validate_view" not in line and "key types" not in line
    assert not out.exists()


def test_materialize_out_of_memory_says_raise_the_limit(repo: Path) -> None:
    res = _cli(repo, "materialize", "2025-01-01T00:00:00", "2027-01-01T00:00:00")
    assert res.returncode == 1
    line = _error_line(res.stderr)
    assert line.startswith("error: reading the latest rows of feature view 'big' failed: "), line
    assert ADVICE.search(line), line
    assert "validate_view" not in line


def test_the_named_limit_is_the_one_duckdb_runs_with(repo: Path) -> None:
    """The value in the message is the session's limit, as DuckDB's own message counts it."""
    with FeatureStore(repo) as store, pytest.raises(OfflineStoreError) as info:
        store.get_historical_features(str(repo / "spine.parquet"), ["big:f0", "big:f1"])
    msg = str(info.value)
    now = re.search(r"\(now ([0-9.]+ [KMG]iB)\)", msg)
    assert now is not None, msg
    assert f"/{now.group(1)} used)" in msg, msg  # DuckDB's "(x MiB/<limit> used)"


def test_other_failures_keep_the_validate_advice(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another DuckDB error (here a query of a table that does not exist) is no memory
    problem: the advice is unchanged."""
    from featurestore.offline import latest, pit

    bad = "SELECT * FROM no_such_table"
    monkeypatch.setattr(pit, "join_sql", lambda *a, **k: bad)
    monkeypatch.setattr(latest, "latest_sql", lambda *a, **k: bad)
    spine = pa.table(
        {
            "user_id": pa.array([1], pa.int64()),
            "event_timestamp": pa.array([T0], pa.timestamp("us", tz="UTC")),
        }
    )
    with FeatureStore(repo) as store:
        with pytest.raises(OfflineStoreError) as info:
            store.get_historical_features(spine, ["big:f0"])
        msg = str(info.value)
        assert "no_such_table" in msg and msg.endswith(
            "; run validate_view() on it and check the entity dataframe's key types"
        ), msg
        view = store.registry.feature_views["big"]
        with pytest.raises(OfflineStoreError) as info:
            list(latest.iter_latest_rows(store.offline, view, 0, 2**62, batch_rows=10))
        msg = str(info.value)
        assert "no_such_table" in msg and msg.endswith("; run validate_view() on it"), msg
