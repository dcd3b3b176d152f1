"""Request paths trust a registry check up to 0.1 s old (one stat saved per lookup), but see
this process's own writes at once, through any store object."""

from __future__ import annotations

import json
import os
import time

import pytest

from featurestore import FeatureStore, RegistryError
from featurestore.registry import Registry

from .conftest import DEFS

MORE = DEFS.replace("features=[user_stats]", 'features=["user_stats:clicks"]')


def _rewrite_as_another_process(path: os.PathLike[str], version: int) -> None:
    """Write the registry file the way another process would: no Registry of this process."""
    doc = json.loads(open(path).read())
    doc["version"] = version
    data = json.dumps(doc).encode()
    tmp = f"{os.fspath(path)}.other"
    with open(tmp, "wb") as f:
        f.write(data + b" " * 7)  # another size: the mtime-and-size check must see a change
    os.replace(tmp, path)


def test_recent_trusts_a_fresh_check_and_rechecks_an_old_one(make_repo) -> None:
    repo = make_repo()
    FeatureStore(repo).apply()
    reg = Registry(repo / "data" / "registry.json", "test")
    assert reg.recent().version == 1
    _rewrite_as_another_process(reg.path, 7)
    assert reg.recent(max_age_s=60).version == 1  # trusted: the last check is fresh
    assert reg.recent(max_age_s=0).version == 7  # too old: checked again
    _rewrite_as_another_process(reg.path, 8)
    assert reg.load().version == 8  # load always checks


def test_recent_sees_this_processes_writes_through_any_registry_at_once(make_repo) -> None:
    repo = make_repo()
    FeatureStore(repo).apply()
    path = repo / "data" / "registry.json"
    reader, writer = Registry(path, "test"), Registry(path, "test")
    assert reader.recent(max_age_s=60).materialization == {}
    writer.update_materialization("user_stats", 0, 5)
    assert reader.recent(max_age_s=60).materialization["user_stats"] is not None


def test_recent_never_caches_an_unapplied_registry(make_repo) -> None:
    repo = make_repo()
    reg = Registry(repo / "data" / "registry.json", "test")
    with pytest.raises(RegistryError, match="nothing applied yet"):
        reg.recent(max_age_s=60)
    FeatureStore(repo).apply()
    assert reg.recent(max_age_s=60).version == 1


def test_a_lookup_sees_an_apply_by_another_store_object_at_once(make_repo) -> None:
    """A long-lived store keeps serving while a second store object in the same process
    applies new definitions: the very next lookup (well inside 0.1 s) uses them."""
    repo = make_repo()
    reader = FeatureStore(repo)
    reader.apply()
    rows = {"user_id": [1]}
    assert set(reader.get_online_features("svc", rows).to_dict()) == {"user_id", "clicks", "spend"}
    (repo / "definitions.py").write_text(MORE)
    t0 = time.monotonic()
    FeatureStore(repo).apply()
    got = reader.get_online_features("svc", rows).to_dict()
    assert set(got) == {"user_id", "clicks"}, "a stale registry served the old service"
    assert time.monotonic() - t0 < 60  # (the point: no wait for the check to age)
