"""Editing only a helper module (a file beside definitions.py whose ``@numba.njit`` functions the
transforms call) changes every value: training sets, materialized window state and online
lookups compute with the new helper code, although numba's disk cache is keyed on the file of
the decorated function alone. Each apply runs in a fresh process (numba caches per process);
values are checked against plain Python versions of the helpers (the oracle)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore._transform_refs import code_hash
from featurestore.errors import DefinitionError
from featurestore.transforms import load_module_from_path

H = 3_600_000_000
T0 = (int(time.time()) // 3600 - 6) * H  # recent: online window state does not expire
EVENTS = [(1, T0 + H, 2.5), (1, T0 + 2 * H, 1.5), (1, T0 + 3 * H, 4.0), (2, T0 + 2 * H, 3.25)]
QUERY = T0 + 4 * H
REQUEST = {1: 10.5, 2: 7.25}

# both versions have the same size: only the content tells them apart
HELPERS = """\
import numba

FACTOR = {factor}


@numba.njit
def scale(x):
    return x * FACTOR


@numba.njit
def bump(x):
    return x {op} 1.5


@numba.njit
def is_big(x):
    return x > {cut}
"""
V1 = {"factor": "2.0", "op": "+", "cut": "2.0"}
V2 = {"factor": "3.0", "op": "*", "cut": "1.0"}

DEFS = """\
import helpers
from helpers import scale

from featurestore import (Aggregation, Entity, FeatureView, Field, Float64, OnDemandFeatureView,
                          ParquetSource, RequestSource, on_demand_feature, transform)

user = Entity("user", join_keys=["user_id"])


@transform
def bumped(amount: float) -> float:
    return helpers.bump(amount)


@transform
def big(amount: float) -> bool:
    return helpers.is_big(amount)


tx = FeatureView(
    name="tx", entities=[user], source=ParquetSource("data/events.parquet"),
    derived={"amount_b": (bumped, ["amount"])},
    aggregations=[Aggregation("amount_b", "sum", ["24h"], name="b_sum", where=big)],
)
req = RequestSource("req", schema=[Field("amount", Float64)])


@on_demand_feature(inputs=["amount"], output=Field("scaled", Float64), sources=[req])
def scaled(amount: float) -> float:
    return scale(amount)


odf = OnDemandFeatureView(name="odf", sources=[req], features=[scaled])
"""

RUN = """
import json, sys
import pyarrow as pa
from featurestore import FeatureStore

repo, t, request = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
users = sorted(int(u) for u in request)
amounts = [request[str(u)] for u in users]
refs = ["tx:b_sum_24h", "odf:scaled"]
with FeatureStore(repo) as store:
    store.apply()
    store.materialize(t - 48 * 3600 * 10**6, t)
    spine = pa.table({
        "user_id": pa.array(users, pa.int64()),
        "event_timestamp": pa.array([t] * len(users), pa.timestamp("us", tz="UTC")),
        "amount": pa.array(amounts, pa.float64()),
    })
    offline = store.get_historical_features(spine, refs)
    online = store.get_online_features(
        refs, {"user_id": users}, now=t, request_data={"amount": amounts}
    ).to_dict()
print(json.dumps({
    "offline": {c: offline[c].to_list() for c in ("b_sum_24h", "scaled")},
    "online": {c: online[c] for c in ("b_sum_24h", "scaled")},
}))
"""


def _oracle(version: dict[str, str]) -> dict[str, list[float]]:
    """The features computed in plain Python with the helpers of ``version``."""
    factor, cut = float(version["factor"]), float(version["cut"])

    def bump(x: float) -> float:
        return x + 1.5 if version["op"] == "+" else x * 1.5

    users = sorted(REQUEST)
    sums = [
        sum(bump(a) for u2, ts, a in EVENTS if u2 == u and QUERY - 24 * H < ts <= QUERY and a > cut)
        for u in users
    ]
    return {"b_sum_24h": sums, "scaled": [REQUEST[u] * factor for u in users]}


def _make_repo(root: Path) -> Path:
    (root / "data").mkdir(parents=True)
    users, ts, amounts = zip(*EVENTS, strict=True)
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array(users, pa.int64()),
                "event_timestamp": pa.array(ts, pa.timestamp("us", tz="UTC")),
                "amount": pa.array(amounts, pa.float64()),
            }
        ),
        root / "data" / "events.parquet",
    )
    (root / "featurestore.yaml").write_text(
        f"project: hm{abs(hash(str(root))) % 10**8}\nonline_store:\n  type: embedded\n"
        "  map_size: 64MB\n"
    )
    (root / "definitions.py").write_text(DEFS)
    (root / "helpers.py").write_text(HELPERS.format(**V1))
    return root


def _run(repo: Path) -> dict[str, Any]:
    """Apply, materialize, a training set and an online lookup, in a fresh process."""
    req = json.dumps({str(u): a for u, a in REQUEST.items()})
    out = subprocess.run(
        [sys.executable, "-c", RUN, str(repo), str(QUERY), req],
        capture_output=True, text=True, timeout=300, cwd=repo,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _assert_values(got: dict[str, Any], version: dict[str, str]) -> None:
    want = _oracle(version)
    for side in ("offline", "online"):
        for col, values in want.items():
            assert got[side][col] == pytest.approx(values, rel=1e-12, abs=0.0), (side, col)


def test_editing_only_the_helper_module_changes_training_set_and_online_values(tmp_path):
    repo = _make_repo(tmp_path / "repo")
    defs_before = (repo / "definitions.py").read_bytes()
    _assert_values(_run(repo), V1)

    size = (repo / "helpers.py").stat().st_size
    (repo / "helpers.py").write_text(HELPERS.format(**V2))
    assert (repo / "helpers.py").stat().st_size == size  # same size, other code
    assert (repo / "definitions.py").read_bytes() == defs_before
    _assert_values(_run(repo), V2)

    (repo / "helpers.py").write_text(HELPERS.format(**V1))  # and back again
    _assert_values(_run(repo), V1)


CHECK = """
import json, sys
from featurestore.transforms import load_module_from_path
mod = load_module_from_path(sys.argv[1])
t = mod.via_module
t.check()
trusted = not t.compiled
mod.via_name.check()
print(json.dumps({"trusted": trusted, "via_module": t(2.0), "via_name": mod.via_name(2.0)}))
"""

SMALL_DEFS = """\
import hm_small
from hm_small import twice
from featurestore.transforms import transform


@transform
def via_module(x: float) -> float:
    return hm_small.shift(x)


@transform
def via_name(x: float) -> float:
    return twice(x)
"""
SMALL_HELPER = """\
import numba

K = {k}


@numba.njit
def shift(x):
    return x + K


@numba.njit
def twice(x):
    return x * K
"""


def _check(defs: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", CHECK, str(defs)], capture_output=True, text=True, timeout=180
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_apply_check_trusts_its_record_until_the_helper_changes(tmp_path):
    defs = tmp_path / "small_defs.py"
    defs.write_text(SMALL_DEFS)
    (tmp_path / "hm_small.py").write_text(SMALL_HELPER.format(k="3.0"))
    first, warm = _check(defs), _check(defs)
    assert first["trusted"] is False and warm["trusted"] is True  # warm: numba not asked
    assert first["via_module"] == warm["via_module"] == 2.0 + 3.0
    assert first["via_name"] == warm["via_name"] == 2.0 * 3.0
    (tmp_path / "hm_small.py").write_text(SMALL_HELPER.format(k="5.0"))
    edited = _check(defs)
    assert edited["trusted"] is False  # the helper changed: compiled again
    assert (edited["via_module"], edited["via_name"]) == (2.0 + 5.0, 2.0 * 5.0)


def _hash_with_helper(tmp_path: Path, helper: str, name: str) -> str:
    """The code hash of ``via_module`` with the helper module holding ``helper``."""
    (tmp_path / "hm_hash.py").write_text(helper)
    sys.modules.pop("hm_hash", None)  # import the edited helper afresh
    defs = tmp_path / "hash_defs.py"
    defs.write_text(SMALL_DEFS.replace("hm_small", "hm_hash"))
    return code_hash(getattr(load_module_from_path(str(defs)), name))


def test_code_hash_covers_helpers_read_through_their_module(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    a = _hash_with_helper(tmp_path, SMALL_HELPER.format(k="3.0"), "via_module")
    b = _hash_with_helper(tmp_path, SMALL_HELPER.format(k="3.0") + "\n# a comment\n", "via_module")
    c = _hash_with_helper(tmp_path, SMALL_HELPER.format(k="4.0"), "via_module")
    d = _hash_with_helper(tmp_path, SMALL_HELPER.replace("x + K", "x - K").format(k="3.0"),
                          "via_module")  # fmt: skip
    assert a == b  # layout and comments are not code
    assert len({a, c, d}) == 3
    sys.modules.pop("hm_hash", None)


def test_a_plain_python_helper_is_refused_with_a_hint(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "hm_plain.py").write_text("def triple(x):\n    return x * 3.0\n")
    defs = tmp_path / "plain_defs.py"
    defs.write_text(
        textwrap.dedent("""\
            from hm_plain import triple
            from featurestore.transforms import transform


            @transform
            def tripled(x: float) -> float:
                return triple(x)
        """)
    )
    t = load_module_from_path(str(defs)).tripled
    with pytest.raises(DefinitionError) as info:
        t.compile()
    msg = str(info.value)
    assert "\n" not in msg
    assert "'tripled'" in msg and "'triple'" in msg and "@numba.njit" in msg
    sys.modules.pop("hm_plain", None)


LEGACY_DEFS = """\
import hm_legacy
from featurestore.transforms import transform


@transform
def via_module(x: float) -> float:
    return hm_legacy.shift(x)
"""
# what the previous version of ``code_hash`` (helpers read through a module left out) gave
# ``via_module`` above: a registry applied by it must still be served until the next apply
LEGACY_HASH = "21f7c77ad2a775ce"


def test_a_registry_hash_from_before_helpers_were_hashed_still_resolves(tmp_path, monkeypatch):
    from featurestore._transform_refs import resolve_ref

    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "hm_legacy.py").write_text(SMALL_HELPER.format(k="3.0").replace("twice", "_t"))
    (tmp_path / "legacy_defs.py").write_text(LEGACY_DEFS)
    ref = {"file": "legacy_defs.py", "function": "via_module"}
    found = resolve_ref({**ref, "code": LEGACY_HASH}, tmp_path, "test")
    assert found.name == "via_module"
    assert code_hash(found) != LEGACY_HASH  # the hash now covers the helper
    assert resolve_ref({**ref, "code": code_hash(found)}, tmp_path, "test") is found
    with pytest.raises(DefinitionError, match=r"'via_module' in legacy_defs.py was edited"):
        resolve_ref({**ref, "code": "0123456789abcdef"}, tmp_path, "test")
    sys.modules.pop("hm_legacy", None)
