"""A tiny feature repo on disk: config, a definitions file and real Parquet data."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)

DEFS = """
from featurestore import Entity, FeatureService, FeatureView, Field, Float64, Int64, ParquetSource

user = Entity("user", join_keys=["user_id"])
user_stats = FeatureView(
    name="user_stats",
    entities=[user],
    source=ParquetSource("data/users.parquet", created_timestamp_field="created"),
    ttl="1d",
    schema=[Field("clicks", Int64, default=0), Field("spend", Float64)],
)
svc = FeatureService(name="svc", features=[user_stats])
"""


def write_users(path: Path, rows: int = 20, t0: datetime = T0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ts = [t0 + timedelta(hours=i) for i in range(rows)]
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array([i % 5 for i in range(rows)], pa.int64()),
                "event_timestamp": pa.array(ts, pa.timestamp("us", tz="UTC")),
                "created": pa.array(ts, pa.timestamp("us", tz="UTC")),
                "clicks": pa.array(range(rows), pa.int64()),
                "spend": pa.array([i * 1.5 for i in range(rows)], pa.float64()),
            }
        ),
        path,
    )


@pytest.fixture
def make_repo(tmp_path: Path) -> Callable[..., Path]:
    """Build a repo: ``make_repo(defs=..., extra_files={name: text})`` -> repo path."""

    def make(defs: str = DEFS, extra_files: dict[str, str] | None = None, config: str = "") -> Path:
        repo = tmp_path / "repo"
        repo.mkdir(exist_ok=True)
        (repo / "featurestore.yaml").write_text("project: test\n" + config)
        (repo / "definitions.py").write_text(textwrap.dedent(defs))
        for name, text in (extra_files or {}).items():
            (repo / name).write_text(textwrap.dedent(text))
        write_users(repo / "data" / "users.parquet")
        return repo

    return make
