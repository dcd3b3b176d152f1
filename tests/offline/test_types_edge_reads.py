"""Declared types a source column's values may not fit: apply refuses Int64 over uint64 (as it
refuses Int32 over int64); a float64 value a Float32 feature would store as infinity stops the
training set and materialize alike with one line naming view, column, entity and value."""

from __future__ import annotations

import math
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featurestore.errors import DefinitionError, OfflineStoreError
from featurestore.field import Field
from featurestore.store import FeatureStore
from featurestore.types import TIME_MAX_US, TIME_MIN_US, UnixTimestamp

UTC = timezone.utc
NOW = datetime.now(UTC).replace(microsecond=0)
EVENT = NOW - timedelta(hours=1)
F32_MAX = float(np.finfo(np.float32).max)
F32_END = 2.0**128 - 2.0**103  # the least magnitude a float32 rounds to infinity


def _repo(root: Path, schema: str, columns: dict[str, pa.Array]) -> Path:
    """A repo with one view ``v`` over ``data/t.parquet`` (keys 0..n-1), not yet applied."""
    repo = root / "repo"
    (repo / "data").mkdir(parents=True, exist_ok=True)
    (repo / "featurestore.yaml").write_text(
        "project: te\nonline_store:\n  type: embedded\n  path: data/online\n"
    )
    (repo / "definitions.py").write_text(
        "from featurestore import *\n"
        "e = Entity('e', join_keys=['k'])\n"
        "v = FeatureView(name='v', entities=[e], source=ParquetSource('data/t.parquet'), "
        f"schema=[{schema}])\n"
    )
    _write(repo, columns)
    return repo


def _write(repo: Path, columns: dict[str, pa.Array]) -> None:
    n = len(next(iter(columns.values())))
    pq.write_table(
        pa.table(
            {
                "k": pa.array(range(n), pa.int64()),
                "event_timestamp": pa.array([EVENT] * n, pa.timestamp("us", tz="UTC")),
                **columns,
            }
        ),
        repo / "data" / "t.parquet",
    )


def _apply(repo: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "featurestore.cli", "-r", str(repo), "apply"],
        capture_output=True,
        text=True,
        timeout=300,
    )


def _spine(n: int) -> pl.DataFrame:
    return pl.DataFrame({"k": list(range(n)), "event_timestamp": [NOW] * n})


# ------------------------------------------------------------------ uint64 under Int64


@pytest.mark.parametrize(
    ("schema", "column"),
    [
        ("Field('u', Int64)", pa.array([1, 2**63], pa.uint64())),
        ("Field('u', Int64)", pa.array([1, 2], pa.uint64())),  # refused by type, not value
        ("Field('u', Array(Int64))", pa.array([[1], [2**64 - 1]], pa.list_(pa.uint64()))),
    ],
)
def test_apply_refuses_int64_over_a_uint64_column_in_one_line(
    tmp_path: Path, schema: str, column: pa.Array
) -> None:
    repo = _repo(tmp_path, schema, {"u": column})
    out = _apply(repo)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    lines = [x for x in out.stderr.splitlines() if "uint64" in x]
    assert len(lines) == 1, out.stderr
    for needle in ("feature view 'v'", "column 'u'", "data/t.parquet", "2**63", "int64"):
        assert needle in lines[0]


@pytest.mark.parametrize(
    ("schema", "column"),
    [
        ("Field('u', Float64)", pa.array([1, 2**63], pa.uint64())),
        ("Field('u', Int64)", pa.array([1, 2**32 - 1], pa.uint32())),
        ("Field('u', Int64)", pa.array([1, -5], pa.int64())),
    ],
)
def test_apply_keeps_taking_columns_every_value_of_which_fits(
    tmp_path: Path, schema: str, column: pa.Array
) -> None:
    repo = _repo(tmp_path, schema, {"u": column})
    out = _apply(repo)
    assert out.returncode == 0, out.stderr
    with FeatureStore(repo) as store:
        got = store.get_historical_features(_spine(2), ["v:u"])["u"].to_list()
        store.materialize(EVENT - timedelta(hours=1), NOW)
        online = store.get_online_features(["v:u"], {"k": [0, 1]}).to_dict()["u"]
    assert got == online == [float(x) if "Float" in schema else x for x in column.to_pylist()]


def test_a_uint64_file_landing_after_apply_is_named_by_every_read(tmp_path: Path) -> None:
    """The same rule at read time: the training set and materialize refuse the view with the
    apply message, not a DuckDB conversion error."""
    repo = _repo(tmp_path, "Field('u', Int64)", {"u": pa.array([1, 2], pa.int64())})
    assert _apply(repo).returncode == 0
    _write(repo, {"u": pa.array([1, 2**63 + 5], pa.uint64())})
    with FeatureStore(repo) as store:
        for read in (
            lambda: store.get_historical_features(_spine(2), ["v:u"]),
            lambda: store.materialize(EVENT - timedelta(hours=1), NOW),
        ):
            with pytest.raises(OfflineStoreError) as err:
                read()
            msg = str(err.value)
            assert "\n" not in msg and "Conversion Error" not in msg
            assert "column 'u'" in msg and "uint64" in msg and "2**63" in msg


# ------------------------------------------------------------------ float64 under Float32


_doubles = st.one_of(
    st.floats(allow_nan=False, allow_infinity=True),
    st.sampled_from(
        [F32_MAX, -F32_MAX, F32_END, -F32_END, 3.5e38, float(np.nextafter(F32_END, 0))]
    ),
    st.floats(F32_MAX * 0.999, F32_END * 1.001),
)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(values=st.lists(_doubles, min_size=1, max_size=6), as_known=st.booleans())
def test_float32_over_float64_reads_alike_or_names_the_value(
    tmp_path_factory: pytest.TempPathFactory, values: list[float], as_known: bool
) -> None:
    """A value float32 holds (rounded, infinity included) reads the same in the training set and
    online; a finite one it would store as infinity stops the training set and materialize with
    the same one-line message naming it."""
    root = tmp_path_factory.mktemp("f32")
    repo = _repo(
        root,
        "Field('f', Float32), Field('a', Array(Float32))",
        {
            "f": pa.array(values, pa.float64()),
            "a": pa.array([[0.5, v] for v in values], pa.list_(pa.float64())),
        },
    )
    assert _apply(repo).returncode == 0
    n = len(values)
    bad = [i for i, v in enumerate(values) if math.isfinite(v) and abs(v) >= F32_END]
    with FeatureStore(repo) as store:
        if bad:
            messages = []
            for read in (
                lambda: store.get_historical_features(_spine(n), ["v:f", "v:a"], as_known=as_known),
                lambda: store.materialize(EVENT - timedelta(hours=1), NOW),
            ):
                with pytest.raises(OfflineStoreError) as err:
                    read()
                messages.append(str(err.value))
            assert messages[0] == messages[1]
            msg = messages[0]
            assert "\n" not in msg and "Conversion Error" not in msg
            assert "feature view 'v'" in msg and "float32" in msg and "Float64" in msg
            named = next(i for i in bad if f"(entity k={i})" in msg)
            assert "column 'f'" in msg and repr(values[named]) in msg
            return
        off = store.get_historical_features(_spine(n), ["v:f", "v:a"], as_known=as_known)
        store.materialize(EVENT - timedelta(hours=1), NOW)
        on = store.get_online_features(["v:f", "v:a"], {"k": list(range(n))}).to_dict()
    want = [float(np.float32(v)) for v in values]
    assert off["f"].to_list() == on["f"] == want
    assert off["a"].to_list() == [list(x) for x in on["a"]] == [[0.5, w] for w in want]


def test_the_array_element_is_named_when_only_the_array_overflows(tmp_path: Path) -> None:
    repo = _repo(
        tmp_path,
        "Field('a', Array(Float32))",
        {"a": pa.array([[1.0], [2.0, -1e39]], pa.list_(pa.float64()))},
    )
    assert _apply(repo).returncode == 0
    with FeatureStore(repo) as store:
        with pytest.raises(OfflineStoreError) as err:
            store.get_historical_features(_spine(2), ["v:a"])
    msg = str(err.value)
    assert "column 'a'" in msg and "-1e+39" in msg and "(entity k=1)" in msg, msg
    assert "array<float32>" in msg


# ------------------------------------------------------------------ time defaults


@pytest.mark.parametrize("default", [TIME_MAX_US + 1, TIME_MIN_US - 1, 2**62])
def test_a_time_default_outside_the_years_1_to_9999_is_refused(default: int) -> None:
    with pytest.raises(DefinitionError, match="outside the years 1-9999"):
        Field("seen", UnixTimestamp, default=default)


def test_time_defaults_at_the_ends_of_the_range_serve_as_datetimes() -> None:
    lo = Field("seen", UnixTimestamp, default=TIME_MIN_US).served_default
    hi = Field("seen", UnixTimestamp, default=TIME_MAX_US).served_default
    assert (lo.year, hi.year, hi.microsecond) == (1, 9999, 999_999)
