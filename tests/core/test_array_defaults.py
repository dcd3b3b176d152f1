"""An array field's default holds values of its element type: bools for Array(Bool) (1 / 0
would be served as numbers over REST and in process but as bools over gRPC), ints for int
arrays, numbers (not bools) for float arrays."""

from __future__ import annotations

from typing import Any

import pytest

from featurestore import Array, Bool, Field, Float32, Float64, Int32, Int64
from featurestore.errors import DefinitionError
from featurestore.types import DType


@pytest.mark.parametrize(
    ("dtype", "default"),
    [
        (Array(Bool), [True, False]),
        (Array(Bool), []),
        (Array(Int64), [1, -2]),
        (Array(Int32), (3,)),
        (Array(Float32), [0, 1.5]),
        (Array(Float64), []),
    ],
)
def test_defaults_of_the_element_type_are_accepted(dtype: DType, default: Any) -> None:
    assert Field("x", dtype, default=default).default == default


@pytest.mark.parametrize(
    ("dtype", "default", "holds"),
    [
        (Array(Bool), [1, 0], "a list of int"),
        (Array(Bool), [True, 0.0], "a list of bool, float"),
        (Array(Int64), [1.5], "a list of float"),
        (Array(Int64), [True], "a list of bool"),
        (Array(Float32), [False], "a list of bool"),
        (Array(Float64), ["1"], "a list of str"),
        (Array(Float64), 1.0, "float"),
    ],
)
def test_other_defaults_are_refused_naming_the_field(
    dtype: DType, default: Any, holds: str
) -> None:
    with pytest.raises(DefinitionError) as err:
        Field("emb", dtype, default=default)
    assert str(err.value) == (
        f"field 'emb' is {dtype.name} but its default {default!r} is {holds}; give a default of "
        f"type {dtype.name}"
    )
