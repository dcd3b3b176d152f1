"""Compiled kernels are cached on disk: a second process loads them instead of compiling."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import json, sys, time
    t0 = time.perf_counter()
    from featurestore.transforms import load_module_from_path, transform
    mod = load_module_from_path(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
    tr = transform(mod.score).compile()
    print(json.dumps({"hits": sum(tr._scalar.stats.cache_hits.values()),
                      "misses": sum(tr._scalar.stats.cache_misses.values()),
                      "value": tr(2.0, 3), "s": time.perf_counter() - t0}))
""")


def test_user_file_kernels_load_from_disk_cache_in_a_new_process(tmp_path):
    defs = tmp_path / "my_defs.py"
    defs.write_text("import math\n\ndef score(x: float, n: int) -> float:\n"
                    "    return math.sqrt(x) * n if x > 0 else 0.0\n")  # fmt: skip
    runs = []
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", SCRIPT, str(defs)], capture_output=True,
                             text=True, check=True, timeout=120)  # fmt: skip
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    cold, warm = runs
    assert cold["misses"] == 1 and cold["hits"] == 0
    assert warm["hits"] == 1 and warm["misses"] == 0
    assert cold["value"] == warm["value"] == 2.0**0.5 * 3
    assert list((tmp_path / "__pycache__").glob("my_defs.score-*.nbi"))


def test_a_cache_written_under_another_module_name_is_replaced_not_fatal(tmp_path):
    defs = tmp_path / "renamed_defs.py"
    defs.write_text("def score(x: float, n: int) -> float:\n    return x * n\n")
    for name in ("first_name", "second_name", "second_name"):
        out = subprocess.run([sys.executable, "-c", SCRIPT, str(defs), name], capture_output=True,
                             text=True, timeout=120)  # fmt: skip
        assert out.returncode == 0, out.stderr[-2000:]
        assert json.loads(out.stdout.strip().splitlines()[-1])["value"] == 6.0
    assert json.loads(out.stdout.strip().splitlines()[-1])["hits"] == 1  # cached again
