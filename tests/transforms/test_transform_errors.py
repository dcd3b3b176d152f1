"""Every definition error of the transform engine: one line naming the object, the line, the fix."""

from __future__ import annotations

import textwrap
from datetime import timedelta

import numpy as np
import pytest

from featurestore.errors import DefinitionError
from featurestore.field import Field
from featurestore.transforms import (
    Aggregation,
    compile_plan,
    load_module_from_path,
    on_demand_feature,
    transform,
)
from featurestore.types import Float64, Int64, String

THIS = __file__


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg, msg
    return msg


def test_function_numba_cannot_compile_names_function_file_line_and_reason(tmp_path):
    src = tmp_path / "defs_bad.py"
    src.write_text(
        textwrap.dedent("""
        def label(amount: float) -> float:
            d = {"a": amount}
            return d.get("a", "no") + object()
    """)
    )
    mod = load_module_from_path(str(src))
    with pytest.raises(DefinitionError) as exc:
        transform(mod.label).compile()
    msg = _one_line(exc)
    assert msg.startswith(f"transform 'label' ({src.resolve()}:4) does not compile with numba")
    assert "float64(float64)" in msg
    assert "Untyped global name 'object'" in msg


def test_return_type_mismatch_is_reported():
    @transform
    def name_of(x: float) -> float:
        return "big" if x > 1 else "small"

    with pytest.raises(DefinitionError) as exc:
        name_of.compile()
    msg = _one_line(exc)
    assert "transform 'name_of'" in msg and THIS in msg
    assert "unicode_type" in msg or "cannot" in msg.lower()


def test_unsupported_output_type_fails_at_compile_not_import():
    @transform
    def as_text(x: float) -> str:
        return str(x)

    with pytest.raises(DefinitionError) as exc:
        as_text.compile()
    msg = _one_line(exc)
    assert "return value has type 'str'" in msg and "use float, int or bool" in msg


def test_missing_annotation():
    @transform
    def untyped(x) -> float:
        return x

    with pytest.raises(DefinitionError, match=r"argument 'x' has no type annotation"):
        untyped.compile()


def test_calling_before_compile_says_how_to_fix():
    @transform
    def double(x: float) -> float:
        return 2 * x

    with pytest.raises(DefinitionError, match=r"is not compiled; call compile\(\)"):
        double(1.0)


def test_column_dtype_mismatch():
    @transform
    def inc(n: int) -> int:
        return n + 1

    inc.compile()
    with pytest.raises(
        DefinitionError, match=r"argument 'n' is int64 but its column has dtype float64"
    ):
        inc.apply_columns({"n": np.array([1.5])})


def test_on_demand_input_type_mismatch():
    @on_demand_feature(inputs=["user:n_txn"], output=Field("out", Int64))
    def bump(n: int) -> int:
        return n + 1

    with pytest.raises(DefinitionError) as exc:
        bump.compile(feature_types={"user:n_txn": Float64})
    msg = _one_line(exc)
    assert "takes 'n' as int64 but input 'user:n_txn' is float64" in msg and THIS in msg


def test_on_demand_output_type_mismatch():
    @on_demand_feature(inputs=["x"], output=Field("out", String))
    def f(x: float) -> float:
        return x

    with pytest.raises(DefinitionError, match=r"returns float64 but the output field is string"):
        f.compile()


def test_on_demand_arity_mismatch():
    with pytest.raises(DefinitionError, match=r"2 inputs \['a', 'b'\] but the function takes 1"):

        @on_demand_feature(inputs=["a", "b"], output=Field("out", Float64))
        def g(a: float) -> float:
            return a


@pytest.mark.parametrize(
    ("windows", "pattern"),
    [
        (["0s"], r"aggregation 'amount_sum' has window '0s'; a window must be a positive"),
        ([timedelta(seconds=-5)], r"aggregation 'amount_sum' has window .* positive"),
        (["ten minutes"], r"aggregation 'amount_sum': window 'ten minutes': bad duration"),
        ([], r"aggregation 'amount_sum' has no windows"),
        (["1h", "60m"], r"aggregation 'amount_sum' lists a window twice"),
    ],
)
def test_bad_windows(windows, pattern):
    with pytest.raises(DefinitionError, match=pattern):
        Aggregation("amount", "sum", windows)


def test_bad_function_and_duplicate_outputs():
    with pytest.raises(DefinitionError, match=r"unknown function 'median'; use one of count"):
        Aggregation("amount", "median", ["1h"])
    a = Aggregation("amount", "sum", ["1h"])
    with pytest.raises(DefinitionError, match=r"'amount_sum_1h' is defined twice"):
        compile_plan([a, Aggregation("amount", "sum", ["1h"])])


def test_output_names():
    assert Aggregation("amount", "sum", ["24h", "7d", "10m"]).feature_names() == [
        "amount_sum_24h", "amount_sum_7d", "amount_sum_10m"
    ]  # fmt: skip
    assert Aggregation("amount", "avg", "1h", name="spend").feature_names() == ["spend_1h"]
