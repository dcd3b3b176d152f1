"""Window and on-demand definitions at apply: every error is one line naming the function, the
file:line and the reason; the registry round trip re-imports functions lazily in a new process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore import FeatureStore
from featurestore.errors import DefinitionError

HEAD = """
from featurestore import (Aggregation, Entity, FeatureView, Field, Float64, Int64, String,
                          OnDemandFeatureView, ParquetSource, RequestSource, on_demand_feature,
                          transform)

user = Entity("user", join_keys=["user_id"])
"""
VIEW = """
tx = FeatureView(name="tx", entities=[user], source=ParquetSource("data/events.parquet"),
                 {body})
"""
H = 3_600_000_000
T0 = (int(time.time()) // 3600 - 5) * H  # recent: online keys expire a window after events


def make_repo(tmp_path: Path, body: str) -> FeatureStore:
    """A repo with one definitions file (``body`` after the common head) and a small event file."""
    (tmp_path / "data").mkdir(exist_ok=True)
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array([1, 1, 2], pa.int64()),
                "event_timestamp": pa.array(
                    [T0 + H, T0 + 2 * H, T0 + 3 * H], pa.timestamp("us", tz="UTC")
                ),
                "amount": pa.array([1.5, None, 3.0], pa.float64()),
                "merchant": pa.array(["a", "b", "a"], pa.string()),
            }
        ),
        tmp_path / "data" / "events.parquet",
    )
    (tmp_path / "featurestore.yaml").write_text(
        f"project: p{abs(hash(str(tmp_path))) % 10**8}\nonline_store:\n  type: embedded\n"
        "  map_size: 64MB\n"
    )
    (tmp_path / "definitions.py").write_text(textwrap.dedent(HEAD) + textwrap.dedent(body))
    return FeatureStore(tmp_path)


def apply_error(tmp_path: Path, body: str) -> str:
    with make_repo(tmp_path, body) as store, pytest.raises(DefinitionError) as info:
        store.apply()
    msg = str(info.value)
    assert "\n" not in msg, msg  # one line
    assert not (tmp_path / "data" / "registry.json").exists()  # nothing applied
    return msg


def line_of(tmp_path: Path, needle: str) -> int:
    lines = (tmp_path / "definitions.py").read_text().splitlines()
    return next(i for i, text in enumerate(lines, 1) if needle in text)


def test_transform_numba_cannot_compile(tmp_path: Path) -> None:
    body = textwrap.dedent("""
    @transform
    def broken(amount: float) -> float:
        return amount + "text"

    """) + VIEW.format(
        body='derived={"b": (broken, ["amount"])}, aggregations=[Aggregation("b", "sum", "1h")]'
    )
    msg = apply_error(tmp_path, body)
    assert "'broken'" in msg and f"definitions.py:{line_of(tmp_path, 'text')}" in msg, msg
    assert "does not compile with numba" in msg and "float64" in msg, msg


def test_where_predicate_without_annotation(tmp_path: Path) -> None:
    body = textwrap.dedent("""
    @transform
    def big(amount) -> bool:
        return amount > 1.0

    """) + VIEW.format(body='aggregations=[Aggregation("amount", "count", "1h", where=big)]')
    msg = apply_error(tmp_path, body)
    assert "'big'" in msg and "no type annotation" in msg and "definitions.py:" in msg, msg


@pytest.mark.parametrize("window", ["0h", "-1h", "0s"])
def test_non_positive_window(tmp_path: Path, window: str) -> None:
    body = VIEW.format(body=f'aggregations=[Aggregation("amount", "sum", ["1h", "{window}"])]')
    msg = apply_error(tmp_path, body)
    line = line_of(tmp_path, "aggregations=")
    assert f"definitions.py:{line}" in msg and repr(window) in msg, msg
    assert "positive duration" in msg or "bad duration" in msg, msg


def test_derived_type_mismatch(tmp_path: Path) -> None:
    body = textwrap.dedent("""
    @transform
    def twice(n: int) -> int:
        return 2 * n

    """) + VIEW.format(
        body='derived={"d": (twice, ["amount"])}, aggregations=[Aggregation("d", "sum", "1h")]'
    )
    msg = apply_error(tmp_path, body)
    assert "'twice'" in msg and "'n' as int64" in msg and "'amount'" in msg, msg


def test_string_column_is_not_aggregated(tmp_path: Path) -> None:
    msg = apply_error(
        tmp_path, VIEW.format(body='aggregations=[Aggregation("merchant", "sum", "1h")]')
    )
    assert "'merchant'" in msg and "string" in msg and "numeric" in msg, msg


def test_missing_event_column(tmp_path: Path) -> None:
    msg = apply_error(tmp_path, VIEW.format(body='aggregations=[Aggregation("nope", "max", "1h")]'))
    assert "column 'nope' is not in source" in msg, msg


def test_on_demand_type_mismatch(tmp_path: Path) -> None:
    body = VIEW.format(body='aggregations=[Aggregation("amount", "mean", "1h")]') + textwrap.dedent("""
    req = RequestSource("req", schema=[Field("code", String)])

    @on_demand_feature(inputs=["code", "tx:amount_mean_1h"], output=Field("r", Float64),
                       sources=[req])
    def ratio(code: float, mean: float) -> float:
        return code / mean

    od = OnDemandFeatureView(name="od", sources=[req, tx], features=[ratio])
    """)
    msg = apply_error(tmp_path, body)
    assert "'ratio'" in msg and "'code' as float64" in msg and "string" in msg, msg


def test_on_demand_input_of_unknown_view(tmp_path: Path) -> None:
    body = VIEW.format(body='aggregations=[Aggregation("amount", "mean", "1h")]') + textwrap.dedent("""
    req = RequestSource("req", schema=[Field("x", Float64)])

    @on_demand_feature(inputs=["x", "tx:amount_mean_9h"], output=Field("r", Float64),
                       sources=[req])
    def ratio(x: float, mean: float) -> float:
        return x / mean

    od = OnDemandFeatureView(name="od", sources=[req, tx], features=[ratio])
    """)
    msg = apply_error(tmp_path, body)
    assert "'tx:amount_mean_9h'" in msg, msg


def test_declared_schema_is_checked(tmp_path: Path) -> None:
    body = VIEW.format(
        body='aggregations=[Aggregation("amount", "count", "1h")], '
        'schema=[Field("amount_count_1h", Float64)]'
    )
    msg = apply_error(tmp_path, body)
    assert "'amount_count_1h' is int64 but declared float64" in msg, msg


GOOD = (
    """
@transform
def half(amount: float) -> float:
    return amount / 2.0

req = RequestSource("req", schema=[Field("x", Float64)])

@on_demand_feature(inputs=["x", "tx:h_sum_24h"], output=Field("x_plus", Float64), sources=[req])
def plus(x: float, s: float) -> float:
    return x + s
"""
    + VIEW.format(
        body='derived={"h": (half, ["amount"])}, '
        'aggregations=[Aggregation("h", "sum", ["24h"]), '
        'Aggregation("amount", "count", "24h", name="n")]'
    )
    + """
od = OnDemandFeatureView(name="od", sources=[req, tx], features=[plus])
"""
)

CHILD = """
import json, sys, time
t0 = time.perf_counter()
from featurestore import FeatureStore
s = FeatureStore(sys.argv[1])
reg = s.registry
lazy = not any(m.startswith("_fs_defs_") for m in sys.modules) and "numba" not in sys.modules
r = s.get_online_features(["tx:h_sum_24h", "tx:n_24h", "od:x_plus"],
                          [{"user_id": 1}, {"user_id": 2}, {"user_id": 3}],
                          now=int(sys.argv[2]), request_data={"x": [1.0, 2.0, 3.0]})
print(json.dumps({"lazy": lazy, "values": r.to_dict(), "s": time.perf_counter() - t0}))
"""


def test_registry_round_trip_in_a_new_process(tmp_path: Path) -> None:
    with make_repo(tmp_path, GOOD) as store:
        store.apply()
        reg = json.loads((tmp_path / "data" / "registry.json").read_text())
        tx = next(v for v in reg["feature_views"] if v["name"] == "tx")
        derived = dict(tx["window"]["derived"][0])
        code = derived.pop("code")  # a hash of the function's code: editing it is a change
        assert isinstance(code, str) and len(code) == 16
        assert derived == {
            "name": "h", "args": ["amount"], "file": "definitions.py", "function": "half",
        }  # fmt: skip
        assert reg["on_demand_feature_views"][0]["features"][0]["function"] == "plus"
        # a second apply with the same files changes nothing
        assert store.plan().empty
        store.materialize(T0, T0 + 3 * H)
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path), str(T0 + 3 * H)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    got = json.loads(out.stdout)
    assert got["lazy"], "loading the registry must not import definitions or numba"
    v = got["values"]
    assert v["h_sum_24h"] == [0.75, 1.5, 0.0]
    assert v["n_24h"] == [1, 1, 0]  # the null amount is not counted
    assert v["x_plus"] == [1.75, 3.5, 3.0]
