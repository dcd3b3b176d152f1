"""featurestore.transforms: window aggregations, row transforms and on-demand features.

One definition, one compiled kernel, offline and online. Importing this package does not import
numba; ``compile()`` / ``compile_plan`` consumers load it on first use.

Typical use (the lead wires this into FeatureView / apply / materialization)::

    plan = compile_plan([Aggregation("amount", "sum", ["1h", "24h"])])
    feats = compute_window_features(plan, ev_codes, ev_ts, {"amount": amt}, q_codes, q_ts)
    online = OnlineWindows(plan)
    state = online.new_state(); online.update(state, ts, {"amount": 12.5})
    online.read(state, now_us)   # == feats at the same t, bit for bit
"""

from __future__ import annotations

from featurestore._lazy import lazy_attributes
from featurestore.transforms._errors import LateEventError
from featurestore.transforms.aggregation import (
    Aggregation,
    WindowOutput,
    WindowPlan,
    compile_plan,
    prepare_inputs,
)
from featurestore.transforms.on_demand import OnDemandFeature, RequestSource, on_demand_feature
from featurestore.transforms.row import (
    RowTransform,
    load_module_from_path,
    row_transform,
    transform,
)

# The compute side (numba kernels, numpy) loads on first use, so definitions import fast.
_LAZY = {
    "compute_window_features": "featurestore.transforms.offline",
    "OnlineWindows": "featurestore.transforms.online",
    "WindowState": "featurestore.transforms.online",
}


__getattr__ = lazy_attributes(__name__, _LAZY, globals())

__all__ = [
    "Aggregation",
    "LateEventError",
    "OnDemandFeature",
    "OnlineWindows",
    "RequestSource",
    "RowTransform",
    "WindowOutput",
    "WindowPlan",
    "WindowState",
    "compile_plan",
    "compute_window_features",
    "load_module_from_path",
    "on_demand_feature",
    "prepare_inputs",
    "row_transform",
    "transform",
]
