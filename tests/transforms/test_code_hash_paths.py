"""The code hash of a transform covers every helper it reaches, also when one helper module is
reached along two paths (the transform reads ``mathx.a``, its helper ``utils.b`` reads
``mathx.c``): an edit of any of them is a change, comments are not, and the hash is the same in
every process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from featurestore._transform_refs import code_hash
from featurestore.transforms import load_module_from_path

MATHX = """
import numba
{extra}

@numba.njit
def a(x):
    return x + 1.0


@numba.njit
def c(x):
    return x * {factor}
"""
UTILS = """
import numba
import hp_mathx


@numba.njit
def b(x):
    return hp_mathx.c(x)
"""
DEFS = """
import hp_mathx
import hp_utils

from featurestore import transform


@transform
def f(x: float) -> float:
    return hp_mathx.a(x) + hp_utils.b(x)
"""
HELPERS = ("hp_mathx", "hp_utils")


@pytest.fixture(autouse=True)
def _fresh_helpers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each load imports the helper files as they are now (they are cached by name)."""
    for name in HELPERS:
        monkeypatch.delitem(sys.modules, name, raising=False)


def hash_of(repo: Path, *, factor: str = "2.0", extra: str = "") -> str:
    repo.mkdir(exist_ok=True)
    (repo / "hp_mathx.py").write_text(MATHX.format(factor=factor, extra=extra))
    (repo / "hp_utils.py").write_text(textwrap.dedent(UTILS))
    (repo / "defs.py").write_text(textwrap.dedent(DEFS))
    for name in HELPERS:
        sys.modules.pop(name, None)
    return code_hash(load_module_from_path(str(repo / "defs.py")).f)


def test_a_helper_reached_through_a_second_path_is_part_of_the_hash(tmp_path: Path) -> None:
    base = hash_of(tmp_path / "r")
    assert hash_of(tmp_path / "r", factor="3.0") != base  # mathx.c, read only by utils.b
    assert hash_of(tmp_path / "r", factor="2.0  # a comment") == base
    assert hash_of(tmp_path / "r") == base


def test_helper_modules_importing_each_other_hash_and_still_see_edits(tmp_path: Path) -> None:
    extra = "import hp_utils  # each imports the other"
    base = hash_of(tmp_path / "r", extra=extra)
    assert hash_of(tmp_path / "r", extra=extra, factor="3.0") != base
    assert hash_of(tmp_path / "r", extra=extra) == base


def test_the_hash_of_a_helper_reached_twice_is_the_same_in_another_process(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "r"
    here = hash_of(repo)
    script = (
        "import sys\nfrom featurestore._transform_refs import code_hash\n"
        "from featurestore.transforms import load_module_from_path\n"
        "print(code_hash(load_module_from_path(sys.argv[1]).f))"
    )
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", script, str(repo / "defs.py")],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
            check=True,
        )
        assert out.stdout.strip() == here
