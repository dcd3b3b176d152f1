"""On Redis Cluster every primary node keeps a copy of each view's watermark: a node restarted
without its data (which a FLUSHALL on that node alone leaves) is noticed by the next incremental
run, which fills the view afresh; removing the view deletes every copy."""

from __future__ import annotations

import textwrap
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.crc import key_slot

from featurestore import FeatureStore
from featurestore.online.keys import is_watermark_key, node_tags, watermark_key

from ..conftest import online_config

ENTITIES = 300
VIEW = """
stats = FeatureView(
    name="{name}", entities=[user], ttl="30d",
    source=ParquetSource("data/stats.parquet"), schema=[Field("n", Int64)],
)
"""
HEAD = """
from featurestore import Entity, FeatureView, Field, Int64, ParquetSource

user = Entity("user", join_keys=["user_id"])
"""


def write_defs(root: Path, views: list[str]) -> None:
    body = HEAD + "".join(VIEW.format(name=v).replace("stats =", f"{v} =") for v in views)
    (root / "definitions.py").write_text(textwrap.dedent(body))


def make_repo(root: Path, views: list[str]) -> datetime:
    """A repo whose views all read one source of ENTITIES users; returns a time after it."""
    (root / "data").mkdir(parents=True)
    write_defs(root, views)
    t = datetime.now(timezone.utc).replace(microsecond=0)
    t_us = int(t.timestamp()) * 1_000_000
    ids = np.arange(ENTITIES)
    pq.write_table(
        pa.table(
            {
                "user_id": ids,
                "event_timestamp": pa.array(
                    t_us - 1_000_000 * (ids + 1), pa.timestamp("us", "UTC")
                ),
                "n": ids * 7,
            }
        ),
        root / "data" / "stats.parquet",
    )
    return t


def watermark_keys_by_node(cluster) -> list[list[bytes]]:
    """The stored watermark keys on each node, read from the node itself."""
    return [
        sorted(k for k in n.client().scan_iter(count=10_000) if is_watermark_key(k))
        for n in cluster.nodes
    ]


def not_found(store: FeatureStore, view: str) -> int:
    r = store.get_online_features([f"{view}:n"], {"user_id": list(range(ENTITIES))})
    return sum(s.name == "NOT_FOUND" for s in r.statuses["n"])


@pytest.mark.parametrize("lost", [0, 1, 2])
def test_a_node_restarted_empty_gets_its_rows_again(
    lost: int, tmp_path: Path, redis_cluster, redis_cluster_url: str
) -> None:
    """Whichever node loses its data, the next incremental run writes every row again (not
    "0 rows" because another node still holds a copy); without a loss it writes none."""
    t = make_repo(tmp_path, ["stats"])
    config = online_config("redis_cluster", tmp_path, url=redis_cluster_url, project="cw")
    with FeatureStore(config=config) as store:
        store.apply()
        assert store.materialize_incremental(t).rows == {"stats": ENTITIES}
        assert store.materialize_incremental(t).rows == {"stats": 0}  # nothing lost
        assert [len(k) for k in watermark_keys_by_node(redis_cluster)] == [1, 1, 1]
        node = redis_cluster.nodes[lost].client()
        assert node.dbsize() > 1  # it held rows, not only its copy
        node.flushall()  # what a restart without persistence leaves
        assert not_found(store, "stats") > 0
        assert store.materialize_incremental(t).rows == {"stats": ENTITIES}
        assert not_found(store, "stats") == 0
        assert store.materialize_incremental(t).rows == {"stats": 0}


def test_removing_a_view_deletes_its_watermark_on_every_node(
    tmp_path: Path, redis_cluster, redis_cluster_url: str
) -> None:
    t = make_repo(tmp_path, ["stats", "kept"])
    config = online_config("redis_cluster", tmp_path, url=redis_cluster_url, project="cw")
    with FeatureStore(config=config) as store:
        store.apply()
        assert store.materialize_incremental(t).rows == {"stats": ENTITIES, "kept": ENTITIES}
    # an older version's single copy is deleted too
    write_defs(tmp_path, ["kept"])
    with FeatureStore(config=config) as store:
        store.online.write_batch([b"cw:__watermark__:stats"], [b"\0" * 8])
        store.apply()
        assert store.materialize_incremental(t).rows == {"kept": 0}
    by_node = watermark_keys_by_node(redis_cluster)
    assert all(len(keys) == 1 and keys[0].endswith(b":kept") for keys in by_node), by_node


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 16383), min_size=0, max_size=12, unique=True), st.randoms())
def test_node_tags_put_one_key_on_each_node(cuts: list[int], rnd) -> None:
    """Any split of the slots into ranges, owned by nodes in any order (one may hold a single
    slot): each node gets a tag whose watermark key hashes to a slot it serves."""
    bounds = [0, *sorted(cuts), 16384]
    owners = [f"node{i}" for i in range(len(bounds) - 1)]
    rnd.shuffle(owners)
    table = {s: owners[i] for i in range(len(owners)) for s in range(bounds[i], bounds[i + 1])}
    tags = node_tags(table)
    assert set(tags) == set(owners)
    for node, tag in tags.items():
        assert table[key_slot(watermark_key("p", "v", tag))] == node
