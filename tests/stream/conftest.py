"""Stream-ingestion test helpers: a repo fed by two StreamSources, raw XADDs, plain-Python oracles.

The repo (``make_repo``) has a window view ``tx`` over ``tx_stream`` (Redis stream ``tx_events``,
batch folder ``data/tx/``) and a plain view ``profile`` with a ttl over ``profile_stream``
(stream ``profile_events``, folder ``data/profile/``, with a created timestamp). Both folders hold
initial events before anything is streamed. The oracles recompute every served value from the
raw events, independently of the library.
"""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore import FeatureStore

H = 3_600_000_000
DAY = 24 * H
LATENESS = 2 * H
MAX_WINDOW = DAY
GROUP = "featurestore"

DEFS = """
from featurestore import (Aggregation, Entity, FeatureView, Field, Float64, Int64, ParquetSource,
                          StreamSource)

user = Entity("user", join_keys=["user_id"])
tx_stream = StreamSource(
    name="tx_stream",
    stream="tx_events",
    batch_source=ParquetSource("data/tx/", timestamp_field="event_timestamp"),
)
profile_stream = StreamSource(
    name="profile_stream",
    stream="profile_events",
    batch_source=ParquetSource(
        "data/profile/", timestamp_field="event_timestamp", created_timestamp_field="created"
    ),
)
tx = FeatureView(
    name="tx",
    entities=[user],
    source=tx_stream,
    allowed_lateness="2h",
    aggregations=[
        Aggregation("amount", "count", ["1h", "1d"]),
        Aggregation("amount", "sum", ["1d"]),
        Aggregation("amount", "mean", ["1h"]),
        Aggregation("amount", "min", ["1h"]),
        Aggregation("amount", "max", ["1d"]),
        Aggregation("merchant_id", "distinct_count", ["1d"]),
    ],
)
profile = FeatureView(
    name="profile",
    entities=[user],
    source=profile_stream,
    ttl="2d",
    schema=[Field("tier", Int64), Field("score", Float64)],
)
"""

# (feature, column, function, window_us)
TX_SPEC = [
    ("amount_count_1h", "amount", "count", H),
    ("amount_count_1d", "amount", "count", DAY),
    ("amount_sum_1d", "amount", "sum", DAY),
    ("amount_mean_1h", "amount", "mean", H),
    ("amount_min_1h", "amount", "min", H),
    ("amount_max_1d", "amount", "max", DAY),
    ("merchant_id_distinct_count_1d", "merchant_id", "distinct_count", DAY),
]
TX_FEATURES = [s[0] for s in TX_SPEC]
TX_REFS = [f"tx:{f}" for f in TX_FEATURES]
EXACT = {"count", "distinct_count", "min", "max"}

TX_TYPES = {
    "user_id": pa.int64(),
    "event_timestamp": pa.timestamp("us", tz="UTC"),
    "amount": pa.float64(),
    "merchant_id": pa.int64(),
}
PROFILE_TYPES = {
    "user_id": pa.int64(),
    "event_timestamp": pa.timestamp("us", tz="UTC"),
    "created": pa.timestamp("us", tz="UTC"),
    "tier": pa.int64(),
    "score": pa.float64(),
}


def hour_floor_now_us() -> int:
    """The current hour (UTC) in microseconds: a round T near the wall clock (key TTLs use it)."""
    t = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    return int(t.timestamp()) * 1_000_000


def write_events(folder: Path, name: str, events: Sequence[dict], types: dict[str, Any]) -> None:
    """One Parquet file of ``events`` (ts in us) with the columns' Arrow types."""
    folder.mkdir(parents=True, exist_ok=True)
    cols = {k: pa.array([e.get(k) for e in events], t) for k, t in types.items()}
    pq.write_table(pa.table(cols), folder / name)


def make_repo(
    root: Path,
    redis_url: str,
    tx_events: Sequence[dict],
    profile_events: Sequence[dict],
    *,
    project: str = "streamtest",
    online: str = "redis",
    stream_yaml: str = "",
    defs: str = DEFS,
) -> Path:
    """A feature repo: featurestore.yaml, definitions.py and the two batch folders' first files."""
    root.mkdir(parents=True, exist_ok=True)
    if online in ("redis", "redis_cluster"):  # the streams live on the same server or cluster
        online_cfg = f"online_store:\n  type: {online}\n  url: {redis_url}\n"
    else:
        online_cfg = "online_store:\n  type: embedded\n  path: data/online\n  map_size: 256MB\n"
    (root / "featurestore.yaml").write_text(
        f"project: {project}\n" + online_cfg + textwrap.dedent(stream_yaml)
    )
    (root / "definitions.py").write_text(textwrap.dedent(defs))
    write_events(root / "data" / "tx", "initial.parquet", tx_events, TX_TYPES)
    write_events(root / "data" / "profile", "initial.parquet", profile_events, PROFILE_TYPES)
    return root


def iso(us: int) -> str:
    """ISO 8601 with a Z suffix and microseconds."""
    dt = datetime.fromtimestamp(us // 1_000_000, timezone.utc).replace(microsecond=us % 1_000_000)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def wire(event: dict, *, ts_fields: Iterable[str] = ("event_timestamp",), as_iso: bool) -> dict:
    """An event as sent: timestamps as ISO strings or integer microseconds; None -> JSON null."""
    out = dict(event)
    for f in ts_fields:
        if f in out and isinstance(out[f], int):
            out[f] = iso(out[f]) if as_iso else out[f]
    return out


def xadd_json(client: Any, stream: str, events: Iterable[dict]) -> list[str]:
    """XADD each event as one ``data`` field holding a JSON object; returns the entry ids."""
    pipe = client.pipeline(transaction=False)
    for e in events:
        pipe.xadd(stream, {"data": json.dumps(e)})
    return [i.decode() if isinstance(i, bytes) else i for i in pipe.execute()]


def read_folder(folder: Path) -> list[dict]:
    """Every row of every Parquet file under ``folder`` (timestamps as int us)."""
    rows: list[dict] = []
    for path in sorted(folder.rglob("*.parquet")):
        table = pq.read_table(path)
        for name in table.column_names:
            if pa.types.is_timestamp(table.schema.field(name).type):
                i = table.column_names.index(name)
                col = table.column(name).cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
                table = table.set_column(i, name, col)
        rows.extend(table.to_pylist())
    return rows


def stream_files(folder: Path) -> list[Path]:
    """The Parquet files ingest appended (``stream-<source>-<first>-<last>.parquet``)."""
    return sorted(p for p in folder.glob("stream-*.parquet") if not p.name.startswith("."))


def tx_key(e: dict) -> tuple:
    a = e.get("amount")
    return (e["user_id"], e["event_timestamp"], None if a is None else float(a), e["merchant_id"])


def profile_key(e: dict) -> tuple:
    s = e.get("score")
    return (
        e["user_id"],
        e["event_timestamp"],
        e.get("created"),
        e.get("tier"),
        None if s is None else float(s),
    )


# ---- oracles -------------------------------------------------------------------------------------
def tx_oracle(events: Sequence[dict], user: int, t: int, feature: str) -> float | int | None:
    """A window feature at ``t`` over ``(t - w, t]`` from the raw events; None is null."""
    _, column, fn, w = next(s for s in TX_SPEC if s[0] == feature)
    rows = [e for e in events if e["user_id"] == user and t - w < e["event_timestamp"] <= t]
    if fn == "distinct_count":
        return len({e[column] for e in rows if e.get(column) is not None})
    vals = [float(e[column]) for e in rows if e.get(column) is not None]
    if fn == "count":
        return len(vals)
    if fn == "sum":
        return math.fsum(vals)
    if not vals:
        return None
    if fn == "mean":
        return math.fsum(vals) / len(vals)
    if fn == "min":
        return min(vals)
    if fn == "max":
        return max(vals)
    raise AssertionError(fn)


def profile_oracle(
    events: Sequence[dict], user: int, t: int, ttl_us: int
) -> tuple[dict | None, str]:
    """The point-in-time row at ``t`` (latest event time <= t, ties by created) and its status."""
    rows = [e for e in events if e["user_id"] == user and e["event_timestamp"] <= t]
    if not rows:
        return None, "NOT_FOUND"
    best = max(rows, key=lambda e: (e["event_timestamp"], e["created"]))
    if t - best["event_timestamp"] > ttl_us:
        return None, "EXPIRED"
    return best, "PRESENT"


def close(a: Any, b: Any, exact: bool) -> bool:
    """Equal (exact), or within 1e-9 relative; None only equals None."""
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if exact:
        return a == b
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def pending_count(client: Any, stream: str, group: str = GROUP) -> int:
    """XPENDING's count for the consumer group."""
    info = client.xpending(stream, group)
    return int(info["pending"])


def dead_entries(client: Any, stream: str, suffix: str = ":dead") -> list[dict[str, str]]:
    """The dead-letter stream's entries as str -> str dicts."""
    out = []
    for _id, fields in client.xrange(stream + suffix):
        out.append({k.decode(): v.decode() for k, v in fields.items()})
    return out


FAST_STREAM = """
stream:
  batch_size: 100
  block_ms: 20
"""


def small_repo(root: Path, redis_url: str, *, project: str = "small", **kw: Any) -> Path:
    """A repo whose folders hold one old event each (user 0), far from the users tests use."""
    t = hour_floor_now_us() - 40 * H
    tx = [{"user_id": 0, "event_timestamp": t, "amount": 1.0, "merchant_id": 0}]
    prof = [{"user_id": 0, "event_timestamp": t, "created": t, "tier": 0, "score": 0.0}]
    kw.setdefault("stream_yaml", FAST_STREAM)
    return make_repo(root, redis_url, tx, prof, project=project, **kw)


def now_floor_us() -> int:
    """The wall clock truncated to the second, in microseconds."""
    return int(datetime.now(timezone.utc).timestamp()) * 1_000_000


@pytest.fixture
def store(tmp_path: Path, redis_url: str) -> Iterator[FeatureStore]:
    """The store of an applied ``small_repo`` (online store and streams on the test's Redis)."""
    repo = small_repo(tmp_path / "repo", redis_url)
    with FeatureStore(repo) as s:
        s.apply()
        yield s


def client_of(store: FeatureStore) -> Any:
    """A redis-py client of the store's Redis (its online store, which also holds the streams)."""
    return redis_client_for(store.config.online_store.url, store.config.online_store.type)


def redis_client_for(url: str, online: str = "redis") -> Any:
    """A redis-py client of a server, or a cluster client (``online == "redis_cluster"``)."""
    import redis

    if online == "redis_cluster":
        from redis.cluster import RedisCluster

        return RedisCluster.from_url(url)
    return redis.Redis.from_url(url)
