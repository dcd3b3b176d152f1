"""The public API is the sorted ``__all__`` of featurestore, and importing it stays light."""

from __future__ import annotations

import subprocess
import sys

import featurestore


def test_all_is_sorted_and_importable() -> None:
    assert featurestore.__all__ == sorted(featurestore.__all__)
    for name in featurestore.__all__:
        assert getattr(featurestore, name) is not None


def test_import_does_not_load_heavy_engines() -> None:
    code = (
        "import sys, featurestore, featurestore.cli; "
        "print(sorted(m for m in ('duckdb','polars','numba','redis','lmdb','pyarrow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
