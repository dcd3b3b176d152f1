"""Shared code for the batch-scoring tests: a small repo (three views, one service), random
source rows with ties / nulls / ttl edges, small models, and an independent scoring oracle."""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .conftest import MISS, python_pit

SEC = 1_000_000
T0 = 1_700_000_000 * SEC
ACCT_TTL_S = 5

DEFS = f"""
from featurestore import (Bool, Entity, FeatureService, FeatureView, Field, Float32, Float64,
                          Int64, ParquetSource, String)

user = Entity("user", join_keys=["user_id"])
merchant = Entity("merchant", join_keys=["merchant_id"])
acct = FeatureView(
    name="acct", entities=[user], ttl="{ACCT_TTL_S}s",
    source=ParquetSource("data/acct.parquet", created_timestamp_field="created"),
    schema=[Field("x", Float64), Field("n", Int64, default=7), Field("flag", Bool, default=False),
            Field("tier", String, default="none")],
)
prof = FeatureView(
    name="prof", entities=[user], source=ParquetSource("data/prof.parquet"),
    schema=[Field("r", Float32, default=0.5)],
)
merch = FeatureView(
    name="merch", entities=[merchant], source=ParquetSource("data/merch.parquet"),
    schema=[Field("risk", Float64, default=0.25)],
)
svc = FeatureService(name="svc", features=["acct:x", "acct:n", "acct:flag", "prof:r",
                                           "merch:risk"])
small = FeatureService(name="small", features=["prof:r", "acct:x"])
"""
# the service without merch:risk: a model registered on the full service can no longer run
DEFS_WITHOUT_RISK = DEFS.replace(
    ', "prof:r",\n                                           "merch:risk"]', ', "prof:r"]'
)

SERVICE_FEATURES = ["x", "n", "flag", "r", "risk"]
MODEL_ORDER = ["risk", "x", "flag", "n", "r"]  # the model's input order differs from the service's
DEFAULTS: dict[str, Any] = {"n": 7, "flag": False, "r": 0.5, "risk": 0.25}  # x has none
VIEW_OF = {"x": "acct", "n": "acct", "flag": "acct", "r": "prof", "risk": "merch"}
TTL_US = {"acct": ACCT_TTL_S * SEC, "prof": None, "merch": None}
USERS = 6  # users 0..5 have rows; the spine also asks for 6 and 7 (never seen)
MERCHANTS = 3


def write_config(repo: Path, *, online: str = "embedded", url: str = "", extra: str = "") -> None:
    """featurestore.yaml: the embedded online store in data/online, or Redis at ``url``."""
    if online == "embedded":
        cfg = "online_store:\n  type: embedded\n  path: data/online\n  map_size: 64MB\n"
    else:
        cfg = f"online_store:\n  type: redis\n  url: {url}\n"
    (repo / "featurestore.yaml").write_text(f"project: bs_{repo.name[-20:]}\n{cfg}{extra}")


def _ts(values: Sequence[int | None]) -> pa.Array:
    return pa.array(values, pa.int64()).cast(pa.timestamp("us", tz="UTC"))


def random_sources(rng: np.random.Generator, n_acct: int = 40) -> dict[str, list[dict]]:
    """Source rows (``key``, ``ev``, ``cr`` in us, and values) with ties on event time broken
    by created time, null created times, null keys and values, rows after every spine time."""
    acct: list[dict] = []
    seen: set[tuple] = set()
    while len(acct) < n_acct:
        key = int(rng.integers(0, USERS)) if rng.random() > 0.05 else None
        ev = T0 + int(rng.integers(0, 20)) * SEC
        cr = None if rng.random() < 0.15 else ev + int(rng.integers(-2, 4)) * SEC
        if (key, ev, cr) in seen:
            continue
        seen.add((key, ev, cr))
        acct.append(
            {
                "key": key,
                "ev": ev,
                "cr": cr,
                "x": None if rng.random() < 0.2 else float(np.round(rng.normal(0, 10), 3)),
                "n": None if rng.random() < 0.1 else int(rng.integers(-5, 50)),
                "flag": None if rng.random() < 0.1 else bool(rng.random() < 0.5),
                "tier": str(rng.choice(["gold", "silver"])),
            }
        )
    # explicit ties: same key and event time, created time decides (null created loses)
    for a in list(acct[:6]):
        if a["key"] is None or a["cr"] is None:
            continue
        tie = {**a, "cr": a["cr"] + SEC, "x": float(np.round(rng.normal(50, 5), 3))}
        if (tie["key"], tie["ev"], tie["cr"]) not in seen:
            seen.add((tie["key"], tie["ev"], tie["cr"]))
            acct.append(tie)
    prof = []
    for u in range(USERS - 1):  # the last user has no profile
        for ev in sorted({int(v) for v in rng.integers(0, 25, 3)}):
            r = None if rng.random() < 0.15 else float(np.float32(rng.random()))
            prof.append({"key": u, "ev": T0 + ev * SEC, "cr": None, "r": r})
    merch = [
        {"key": m, "ev": T0 + int(ev) * SEC, "cr": None, "risk": float(np.round(rng.random(), 4))}
        for m in range(MERCHANTS - 1)  # the last merchant has no rows
        for ev in sorted({int(v) for v in rng.integers(0, 25, 2)})
    ]
    return {"acct": acct, "prof": prof, "merch": merch}


# per source: its join key, then its value columns and their types
_SOURCE_COLUMNS: dict[str, tuple[str, dict[str, pa.DataType]]] = {
    "acct": (
        "user_id",
        {"x": pa.float64(), "n": pa.int64(), "flag": pa.bool_(), "tier": pa.string()},
    ),
    "prof": ("user_id", {"r": pa.float32()}),
    "merch": ("merchant_id", {"risk": pa.float64()}),
}


def write_sources(repo: Path, src: dict[str, list[dict]]) -> None:
    """One Parquet file per source (``acct`` also has a ``created`` column)."""
    (repo / "data").mkdir(parents=True, exist_ok=True)
    for name, (key, columns) in _SOURCE_COLUMNS.items():
        rows = src[name]
        table: dict[str, pa.Array] = {
            key: pa.array([r["key"] for r in rows], pa.int64()),
            "event_timestamp": _ts([r["ev"] for r in rows]),
        }
        if name == "acct":
            table["created"] = _ts([r["cr"] for r in rows])
        for col, dtype in columns.items():
            table[col] = pa.array([r[col] for r in rows], dtype)
        pq.write_table(pa.table(table), repo / "data" / f"{name}.parquet")


def random_spine(
    rng: np.random.Generator, src: dict[str, list[dict]], n_free: int = 30
) -> dict[str, list]:
    """Spine columns: user_id, merchant_id, event_timestamp (us), label, rid. Rows before any
    data, on event times and ttl edges (+-1 us), unknown keys, a null key and duplicates."""
    rows: list[tuple[Any, Any, int]] = []
    for _ in range(n_free):
        rows.append(
            (
                int(rng.integers(0, USERS + 2)),
                int(rng.integers(0, MERCHANTS)),
                T0 + int(rng.integers(-3 * SEC, 30 * SEC)),
            )
        )
    for r in rng.permutation(np.array(src["acct"], dtype=object))[:12]:
        d = int(rng.choice([-1, 0, 1]))
        rows.append((r["key"], int(rng.integers(0, MERCHANTS)), r["ev"] + d))
        rows.append((r["key"], 0, r["ev"] + ACCT_TTL_S * SEC + d))  # ttl edge of this row
    rows.append((0, 0, T0 - SEC))  # before any data
    rows.append((None, 1, T0 + 10 * SEC))  # a null key
    rows.append((USERS + 1, MERCHANTS - 1, T0 + 10 * SEC))  # no rows anywhere
    rows += [rows[i] for i in rng.integers(0, len(rows), 5)]  # duplicate spine rows
    order = rng.permutation(len(rows))
    rows = [rows[i] for i in order]
    return {
        "user_id": [r[0] for r in rows],
        "merchant_id": [r[1] for r in rows],
        "event_timestamp": [r[2] for r in rows],
        "label": [int(i % 2) for i in range(len(rows))],
        "rid": list(range(len(rows))),
    }


def spine_table(spine: dict[str, list]) -> pa.Table:
    return pa.table(
        {
            "user_id": pa.array(spine["user_id"], pa.int64()),
            "merchant_id": pa.array(spine["merchant_id"], pa.int64()),
            "event_timestamp": _ts(spine["event_timestamp"]),
            "label": pa.array(spine["label"], pa.int64()),
            "rid": pa.array(spine["rid"], pa.int64()),
        }
    )


def oracle_features(
    src: dict[str, list[dict]], spine: dict[str, list], *, as_known: bool = False
) -> dict[str, list]:
    """Per service feature, the point-in-time value of each spine row (plain Python loop)."""
    out: dict[str, list] = {f: [] for f in SERVICE_FEATURES}
    keys = {"acct": "user_id", "prof": "user_id", "merch": "merchant_id"}
    for i, t in enumerate(spine["event_timestamp"]):
        for f in SERVICE_FEATURES:
            view = VIEW_OF[f]
            hit = python_pit(src[view], spine[keys[view]][i], t, TTL_US[view], as_known=as_known)
            out[f].append(DEFAULTS.get(f) if hit is MISS else hit[f])
    return out


def matrix(features: dict[str, list], names: Sequence[str]) -> np.ndarray:
    """The model input: columns in ``names`` order as float64, null -> NaN, bool -> 0/1."""
    cols = [[np.nan if v is None else float(v) for v in features[name]] for name in names]
    return np.array(cols, dtype=np.float64).T.reshape(len(features[names[0]]), len(names))


def train_lgb(
    path: Path,
    names: Sequence[str],
    *,
    seed: int,
    objective: str = "binary",
    trees: int = 20,
    centers: Sequence[float] | None = None,
    scales: Sequence[float] | None = None,
) -> Path:
    """A small LightGBM model over ``names`` (NaN in training, so missing values branch);
    each input is centers[i] + scales[i] * N(0, 1) (default 0 + 10) so splits fall in the data."""
    import lightgbm as lgb

    k = len(names)
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1, (400, k))
    x = np.asarray(centers or [0.0] * k) + z * np.asarray(scales or [10.0] * k)
    x[rng.random(x.shape) < 0.1] = np.nan
    signal = np.where(np.isnan(x), 0.0, z) @ rng.normal(0, 1, k) + rng.normal(0, 0.3, 400)
    y = (signal > 0).astype(float) if objective == "binary" else signal
    booster = lgb.train(
        {
            "objective": objective,
            "verbose": -1,
            "num_threads": 1,
            "seed": seed,
            "num_leaves": 7,
            "min_data_in_leaf": 5,
        },
        lgb.Dataset(x, y, feature_name=list(names)),
        trees,
    )
    booster.save_model(str(path))
    return path


def train_logreg(path: Path, names: Sequence[str], *, seed: int) -> Path:
    """A pickled scikit-learn LogisticRegression (it refuses NaN inputs)."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (300, len(names)))
    y = (x[:, 0] - x[:, 1] + rng.normal(0, 0.5, 300) > 0).astype(int)
    model = LogisticRegression().fit(x, y)
    path.write_bytes(pickle.dumps(model))
    return path


def lgb_predict(artifact: Path | str, x: np.ndarray) -> np.ndarray:
    """The model's own predict on ``x`` (the oracle's score)."""
    import lightgbm as lgb

    return lgb.Booster(model_file=str(artifact)).predict(x)


def register(
    repo: Path,
    name: str,
    artifact: Path,
    *,
    flavor: str = "lightgbm",
    alias: str | None = None,
    service: str = "svc",
) -> int:
    """Register ``artifact`` as the next version of ``name`` on ``service``; the version."""
    from featurestore.store import FeatureStore

    from .._models import publish

    with FeatureStore(repo) as store:
        return publish(store, name, flavor=flavor, artifact=artifact, service=service, alias=alias)


def set_alias(repo: Path, name: str, version: int, alias: str) -> None:
    from featurestore.online.models.repo import model_registry
    from featurestore.store import FeatureStore

    with FeatureStore(repo) as store:
        model_registry(store).set_alias(name, version, alias)


def make_repo(
    repo: Path, src: dict[str, list[dict]], *, defs: str = DEFS, extra_config: str = ""
) -> Path:
    """Config + definitions + the source rows, applied."""
    from featurestore.store import FeatureStore

    repo.mkdir(parents=True, exist_ok=True)
    write_config(repo, extra=extra_config)
    (repo / "definitions.py").write_text(defs)
    write_sources(repo, src)
    with FeatureStore(repo) as store:
        store.apply()
    return repo
