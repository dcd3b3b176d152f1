"""Upgrading from the release whose code hash left out helpers read through a module
(``upg_helpers.big(x)``): the first plan and apply see the same code, record its new hash
without a rebuild (no new code epoch, the watermark and stored window states kept and served),
and a real edit of the helper afterwards is a breaking change as before."""

from __future__ import annotations

import json
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore import FeatureStore
from featurestore._transform_refs import code_hash, older_code_hash
from featurestore.online.base import Status
from featurestore.transforms import load_module_from_path

from ..conftest import online_config

MIN = 60_000_000
NOW = int(time.time()) * 1_000_000  # recent: rows must be inside their ttl when written

HELPERS = """
import numba

CUT = {cut}


@numba.njit
def big(x):
    return x > CUT
"""
DEFS = """
import upg_helpers

from featurestore import Aggregation, Entity, FeatureView, ParquetSource, transform

user = Entity("user", join_keys=["user_id"])


@transform
def is_big(amount: float) -> bool:
    return upg_helpers.big(amount)


w = FeatureView(name="w", entities=[user], source=ParquetSource("data/events.parquet"),
    aggregations=[Aggregation("amount", "count", ["1d"], name="big", where=is_big)])
"""


@pytest.fixture(autouse=True)
def _fresh_helpers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "upg_helpers", raising=False)


def write_repo(repo: Path, cut: str) -> None:
    (repo / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array([1, 1, 1, 1], pa.int64()),
                "amount": pa.array([5.0, 50.0, 150.0, 500.0]),
                "event_timestamp": pa.array(
                    [NOW - m * MIN for m in (40, 30, 20, 10)], pa.timestamp("us", tz="UTC")
                ),
            }
        ),
        repo / "data" / "events.parquet",
    )
    (repo / "upg_helpers.py").write_text(HELPERS.format(cut=cut))
    (repo / "definitions.py").write_text(textwrap.dedent(DEFS))
    sys.modules.pop("upg_helpers", None)  # the next load imports the file as it is now


def now_us() -> int:
    return int(time.time() * 1_000_000)


def is_big_refs(reg: dict[str, Any]) -> list[dict[str, Any]]:
    (view,) = [v for v in reg["feature_views"] if v["name"] == "w"]
    spec = view["window"]
    return [a["where"] for a in spec["aggregations"] if a.get("where")]


def view_change(plan: Any) -> Any:
    found = [c for c in plan.changes if (c.kind, c.name) == ("feature view", "w")]
    return found[0] if found else None


def big_1d(store: FeatureStore) -> Any:
    return store.get_online_features(["w:big_1d"], {"user_id": [1]})


def test_an_older_hash_of_the_same_code_is_recorded_without_a_rebuild(tmp_path: Path) -> None:
    write_repo(tmp_path, "100.0")
    cfg = online_config("embedded", tmp_path)
    with FeatureStore(config=cfg) as store:
        store.apply()
        assert store.materialize_incremental(now_us()).rows["w"] == 1
        version = store.registry.feature_views["w"].schema_version
        assert big_1d(store).to_dict()["big_1d"] == [2]

    # the registry as the previous release wrote it: the helper left out of the hash
    func = load_module_from_path(str(tmp_path / "definitions.py")).is_big.func
    new, old = code_hash(func), older_code_hash(func)
    assert new != old  # the helper read through its module is what tells them apart
    reg_path = tmp_path / "data" / "registry.json"
    reg = json.loads(reg_path.read_text())
    assert [r["code"] for r in is_big_refs(reg)] == [new]
    for ref in is_big_refs(reg):
        ref["code"] = old
    reg_path.write_text(json.dumps(reg))
    write_repo(tmp_path, "100.0")  # a new process: the helper imported afresh

    with FeatureStore(config=cfg) as store:
        change = view_change(store.plan())
        # nothing to rebuild: at most the new hash is recorded (apply writes it)
        assert change is None or not change.breaking, change
        if change is not None:
            assert all("recorded" in d for d in change.details), change.details
        store.apply()
        assert store.registry.feature_views["w"].code_epoch == 0
        assert store.registry.feature_views["w"].schema_version == version
        assert "w" in store.registry.materialization  # the watermark is kept
        online = big_1d(store)
        assert list(online.statuses["big_1d"]) == [Status.PRESENT]
        assert online.to_dict()["big_1d"] == [2]  # the stored window state, served
        assert store.plan().empty
    assert [r["code"] for r in is_big_refs(json.loads(reg_path.read_text()))] == [new]

    write_repo(tmp_path, "10.0")  # a real edit of the helper: a new code epoch
    with FeatureStore(config=cfg) as store:
        change = view_change(store.plan())
        assert change is not None and change.breaking
        assert any("code of function 'is_big'" in d and "changed" in d for d in change.details)
        store.apply()
        assert store.registry.feature_views["w"].code_epoch == 1
        assert "w" not in store.registry.materialization
        assert list(big_1d(store).statuses["big_1d"]) == [Status.NOT_FOUND]
        store.materialize_incremental(now_us())
        assert big_1d(store).to_dict()["big_1d"] == [3]
