"""Cold vs warm kernel start (not collected by pytest): python tests/transforms/bench_compile.py.

Runs a typical set of kernels (offline window pass, online update/read, codec, a row transform
and an on-demand feature from a user file) in fresh processes sharing one empty NUMBA_CACHE_DIR:
the first process compiles everything, the next ones load the disk cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

CHILD = textwrap.dedent("""
    import json, sys, time
    t0 = time.perf_counter()
    import numpy as np
    from featurestore.field import Field
    from featurestore.types import Float64
    from featurestore.transforms import (Aggregation, OnDemandFeature, OnlineWindows,
        compile_plan, compute_window_features, load_module_from_path, transform)
    t1 = time.perf_counter()
    mod = load_module_from_path(sys.argv[1])
    risk = transform(mod.risk).compile()
    odf = OnDemandFeature(mod.ratio, inputs=["amount", "mean"], output=Field("r", Float64))
    odf.compile()
    t2 = time.perf_counter()
    plan = compile_plan([Aggregation("a", f, ["1h", "1d"]) for f in
                         ("count", "sum", "mean", "min", "max", "last", "stddev")]
                        + [Aggregation("k", "distinct_count", ["1d"])])
    n = 1000
    e = np.arange(n) % 10; ts = np.arange(n) * 10**6
    cols = {"a": np.random.rand(n), "k": np.arange(n) % 7}
    compute_window_features(plan, e, ts, cols, e[:100], ts[:100], parallel=1)
    t3 = time.perf_counter()
    on = OnlineWindows(plan); st = on.new_state()
    on.update(st, 5, {"a": 1.0, "k": 3}); on.read(on.decode(on.encode(st)), 10)
    on.ingest(st, ts[:10], {"a": cols["a"][:10], "k": cols["k"][:10]})
    t4 = time.perf_counter()
    print(json.dumps({"import": t1 - t0, "row+on_demand": t2 - t1, "offline": t3 - t2,
                      "online": t4 - t3, "total": t4 - t0}))
""")

USER = textwrap.dedent("""
    import math

    def risk(amount: float, mean: float) -> float:
        z = (amount - mean) / (abs(mean) + 1.0)
        return math.tanh(z) * math.log1p(abs(amount)) if z > 0 else 0.0

    def ratio(amount: float, mean: float) -> float:
        return amount / (mean + 1.0)
""")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        defs = Path(tmp) / "user_defs.py"
        defs.write_text(USER)
        env = dict(os.environ, NUMBA_CACHE_DIR=str(Path(tmp) / "numba_cache"))
        for label in ("cold", "warm", "warm"):
            out = subprocess.run([sys.executable, "-c", CHILD, str(defs)], env=env,
                                 capture_output=True, text=True, check=True)  # fmt: skip
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{label}: " + ", ".join(f"{k} {v:.2f} s" for k, v in r.items()))


if __name__ == "__main__":
    main()
