"""The REST answer's JSON: each shared status list is dumped once, and the bytes are exactly
those of dumping ``FeatureResult.to_dict()``."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from featurestore.online.serving.rest import _dumps, _finite, features_dict
from featurestore.online.serving.results import FeatureResult

STATUS = st.sampled_from(["PRESENT", "NOT_FOUND", "EXPIRED", "UNAVAILABLE"])
VALUE = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**63), 2**63 - 1),
    st.text(max_size=5),
    st.booleans(),
)


@st.composite
def results(draw: Any) -> FeatureResult:
    n = draw(st.integers(0, 6))
    n_views = draw(st.integers(0, 3))
    columns: dict[str, list[Any]] = {
        "user_id": draw(st.lists(st.integers(0, 99), min_size=n, max_size=n))
    }
    statuses: dict[str, list[str]] = {}
    names = []
    for v in range(n_views):
        shared = draw(st.lists(STATUS, min_size=n, max_size=n))  # one list per view, shared
        for f in range(draw(st.integers(1, 4))):
            name = f"v{v}_f{f}"
            columns[name] = draw(st.lists(VALUE, min_size=n, max_size=n))
            # mostly the view's shared list; sometimes an equal but separate list
            statuses[name] = shared if draw(st.booleans()) else list(shared)
            names.append(name)
    return FeatureResult(columns, statuses, names, degraded=draw(st.booleans()))


@settings(max_examples=100, deadline=None)
@given(results())
def test_features_dict_dumps_to_the_same_bytes_as_to_dict(res: FeatureResult) -> None:
    """The same bytes as the plain dict with every NaN and infinity as its JSON string."""
    assert _dumps(features_dict(res)) == _dumps(_finite(res.to_dict()))


def test_a_shared_status_list_is_dumped_once() -> None:
    shared = ["PRESENT", "EXPIRED"]
    res = FeatureResult(
        {"k": [1, 2], "a": [1.0, None], "b": [2.0, 3.0]}, {"a": shared, "b": shared}, ["a", "b"]
    )
    out = features_dict(res)["results"]
    assert out[0]["statuses"] is None  # join key: no statuses
    assert out[1]["statuses"] is out[2]["statuses"]  # one fragment for the view


def test_float_arrays_with_infinities_or_huge_values_warn_nothing() -> None:
    """Float64 columns served as arrays: +inf beside -inf (a NaN sum) and values whose sum
    overflows are still written as their JSON strings and numbers, with no numpy warning
    (a server would log one for every such answer's first)."""
    import warnings

    import numpy as np

    cols = {
        "k": [1, 2],
        "a": np.array([np.inf, -np.inf]),
        "b": np.array([1e308, 1e308]),
        "c": np.array([np.nan, 1.5]),
    }
    statuses = {n: ["PRESENT", "PRESENT"] for n in "abc"}
    res = FeatureResult(cols, statuses, list("abc"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = _dumps(features_dict(res))
    plain = FeatureResult({k: list(v) for k, v in cols.items()}, statuses, list("abc"))
    assert out == _dumps(_finite(plain.to_dict()))
    assert b'"Infinity","-Infinity"' in out and b'"NaN",1.5' in out
