"""Key building: hash tag over project + entity only, unambiguous, deterministic, typed."""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from featurestore.errors import EntityDataError
from featurestore.online.keys import build_key, build_keys, key_prefix, key_suffix


def _hash_tag(key: bytes) -> bytes:
    """What Redis Cluster hashes: between the first '{' and the first '}' after it."""
    start = key.index(b"{")
    end = key.index(b"}", start + 1)
    return key[start + 1 : end]


def test_key_layout_matches_the_documented_form() -> None:
    assert build_keys("shop", "user_stats", ("user_id",), [[42]]) == [
        b"shop:{shop|user_id=42}:user_stats"
    ]


_name = st.text(st.sampled_from("ab%d=|{}_"), min_size=1, max_size=6)


@settings(max_examples=100, deadline=None)
@given(_name, _name, _name, st.lists(st.integers(-(2**63), 2**63 - 1), max_size=20))
def test_int_keys_follow_the_documented_form(
    project: str, view: str, key: str, values: list[int]
) -> None:
    escaped = key.translate(str.maketrans({"%": "%25", "=": "%3D", "|": "%7C", "{": "%7B"}))
    escaped = escaped.replace("}", "%7D")
    want = [f"{project}:{{{project}|{escaped}={v}}}:{view}".encode() for v in values]
    assert build_keys(project, view, (key,), [values]) == want


def test_numpy_and_python_ints_give_the_same_key() -> None:
    a = build_keys("p", "v", ("user_id",), [[42, 7]])
    b = build_keys("p", "v", ("user_id",), [np.array([42, 7], dtype=np.int64)])
    c = build_keys("p", "v", ("user_id",), [[np.int64(42), np.int32(7)]])
    d = build_keys("p", "v", ("user_id",), [pa.array([42, 7], pa.int64())])
    e = build_keys("p", "v", ("user_id",), [pl.Series([42, 7])])
    assert a == b == c == d == e


def test_int_and_string_of_same_digits_differ() -> None:
    assert build_keys("p", "v", ("id",), [[42]]) != build_keys("p", "v", ("id",), [["42"]])


def test_every_view_of_one_entity_shares_the_hash_tag() -> None:
    k1 = build_key("p", "user_stats", {"user_id": 9, "merchant_id": "m|1"})
    k2 = build_key("p", "user_txn", {"user_id": 9, "merchant_id": "m|1"})
    assert k1 != k2
    assert _hash_tag(k1) == _hash_tag(k2)


def test_separators_inside_strings_cannot_close_the_tag_or_fake_a_key() -> None:
    evil = build_keys("p", "v", ("a", "b"), [["x|b=1"], ["}"]])[0]
    plain = build_keys("p", "v", ("a", "b"), [["x"], ["1"]])[0]
    assert evil != plain
    tag = _hash_tag(evil)
    assert tag.startswith(b"p|a=") and tag.count(b"|") == 2


def test_null_key_value_names_the_key() -> None:
    with pytest.raises(EntityDataError, match=r"'user_id'.*null"):
        build_keys("p", "v", ("user_id",), [[1, None]])
    with pytest.raises(EntityDataError, match=r"'user_id'.*null"):
        build_keys("p", "v", ("user_id",), [np.array([1.0, np.nan])])


def test_floats_and_bools_are_rejected() -> None:
    with pytest.raises(EntityDataError, match="ints or strings"):
        build_keys("p", "v", ("user_id",), [[1.5]])
    with pytest.raises(EntityDataError, match="bool"):
        build_keys("p", "v", ("user_id",), [[True]])


def test_column_count_and_length_are_checked() -> None:
    with pytest.raises(EntityDataError, match="join keys"):
        build_keys("p", "v", ("a", "b"), [[1]])
    with pytest.raises(EntityDataError, match="has 1 values, expected 2"):
        build_keys("p", "v", ("a", "b"), [[1, 2], [3]])


def test_prefix_and_suffix_frame_every_key() -> None:
    key = build_keys("proj", "view", ("k",), [["a"]])[0]
    assert key.startswith(key_prefix("proj")) and key.endswith(key_suffix("view"))


_value = st.one_of(st.integers(min_value=-(2**63), max_value=2**63 - 1), st.text(max_size=12))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(_value, _value), min_size=2, max_size=2, unique=True))
def test_distinct_entities_get_distinct_keys(rows: list[tuple[object, object]]) -> None:
    cols = [[r[0] for r in rows], [r[1] for r in rows]]
    keys = build_keys("p", "v", ("a", "b"), cols)
    assert keys[0] != keys[1]
    assert keys == build_keys("p", "v", ("a", "b"), cols)  # deterministic
    for k in keys:  # the tag always closes where the entity ends
        assert k.endswith(b"}:v") and _hash_tag(k).count(b"|") == 2


def test_importing_the_online_package_loads_neither_redis_nor_lmdb() -> None:
    import subprocess
    import sys

    code = (
        "import sys, featurestore.online, featurestore.online.lookup, featurestore.online.writer;"
        "print(sorted(m for m in ('redis', 'lmdb') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
