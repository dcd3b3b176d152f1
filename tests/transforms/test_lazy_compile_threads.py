"""A transform apply checked (not compiled) loads its kernels on first use; many threads using
it at once must each get its value, never a half-built transform (row kernel set, column kernel
not yet), on the column path and on the row path's division-by-zero fallback alike."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Any

import numba
import pytest

from featurestore.transforms import load_module_from_path, transform

DEFS = "def ratio(a: float, b: float) -> float:\n    return a / b\n"
EARLY, LATE = 3, 6  # threads calling at once, and threads calling while the kernels load


def _fresh_checked(tmp_path: Path) -> Any:
    """A transform of a file whose compile apply recorded before: checked, nothing loaded."""
    defs = tmp_path / "lazy_defs.py"
    defs.write_text(DEFS)
    module = load_module_from_path(str(defs))
    assert transform(module.ratio).check().compiled  # the first check compiles and records
    fresh = transform(module.ratio).check()
    assert fresh.checked and not fresh.compiled
    return fresh


def test_threads_using_a_checked_transform_at_once_all_get_its_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = _fresh_checked(tmp_path)
    loading = threading.Event()
    real = numba.vectorize

    def slow_vectorize(*args: Any, **kwargs: Any) -> Any:
        # hold the column kernel back a while: threads arriving now must wait for it
        loading.set()
        time.sleep(0.3)
        return real(*args, **kwargs)

    monkeypatch.setattr(numba, "vectorize", slow_vectorize)
    barrier = threading.Barrier(EARLY + LATE)
    errors: list[BaseException] = []
    got: list[tuple[str, Any]] = []

    def use(late: bool, i: int) -> None:
        barrier.wait()
        if late:
            loading.wait(60)
        try:
            if i % 2:
                values, valid = t.apply_columns({"a": [6.0, 1.0], "b": [3.0, 0.0]})
                got.append(("columns", (values.tolist(), valid.tolist())))
            else:
                got.append(("row", (t(6.0, 3.0), t(1.0, 0.0), t(-1.0, 0.0))))
        except BaseException as exc:  # every failure is the finding
            errors.append(exc)

    threads = [threading.Thread(target=use, args=(n >= EARLY, n)) for n in range(EARLY + LATE)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert len(got) == EARLY + LATE
    for kind, value in got:
        if kind == "columns":
            assert value == ([2.0, math.inf], [True, True])
        else:
            assert value == (2.0, math.inf, -math.inf)
    assert t.compiled
