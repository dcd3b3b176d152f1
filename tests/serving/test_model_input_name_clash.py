"""A model's inputs are read by bare feature name, by online predict and batch scoring alike: a
feature service with two features of one bare name (``a:x`` and ``b:x``) is refused in one line
by register, promote and batch_score, never scored from a guessed view; a service without such
a clash gives batch_score and predict the same input row."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from featurestore import FeatureStore
from featurestore.errors import FeatureStoreError
from featurestore.online.models import ModelRegistryError
from featurestore.online.models.repo import (
    model_registry,
    models_reading_missing_services,
    promote_model,
    register_model,
)

NOW = datetime.now(timezone.utc).replace(microsecond=0)
DEFS = """
from featurestore import Entity, FeatureService, FeatureView, Field, Float64, ParquetSource

user = Entity("user", join_keys=["user_id"])
a = FeatureView(name="a", entities=[user], source=ParquetSource("data/a.parquet"),
                schema=[Field("x", Float64)])
b = FeatureView(name="b", entities=[user], source=ParquetSource("data/b.parquet"),
                schema=[Field("x", Float64), Field("y", Float64)])
clash = FeatureService(name="clash", features=["a:x", "b:x", "b:y"])
mixed = FeatureService(name="mixed", features=[SVC_MIXED])
"""
MIXED = '"a:x", "b:y"'  # x from view a, y from view b: no clash
# the model names its inputs; its score tells which value reached which input
MODEL = (
    "import numpy as np\n"
    "FEATURE_NAMES = {names!r}\n"
    "def predict(x):\n"
    "    x = np.asarray(x)\n"
    "    return np.nan_to_num(x, nan=-5.0) @ (1000.0 ** np.arange(x.shape[1]))\n"
)
CLASH_LINE = (
    "feature service 'clash' has two features named 'x' ('a:x' and 'b:x'); a model reads "
    "its inputs by bare feature name, so it cannot tell them apart: keep one of them in the "
    "service, or rename one in its view"
)


def _repo(root: Path, mixed: str = MIXED) -> Path:
    """Views a (x: 1, 2, user 3 absent) and b (x: 10, 20, 30; y: 5, null, 7), materialized."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "featurestore.yaml").write_text(
        "project: clash\nonline_store:\n  type: embedded\n  path: data/online\n  map_size: 64MB\n"
    )
    (root / "definitions.py").write_text(DEFS.replace("SVC_MIXED", mixed))
    (root / "data").mkdir(exist_ok=True)
    ts = pa.array([NOW - timedelta(hours=1)] * 3, pa.timestamp("us", tz="UTC"))
    pq.write_table(
        pa.table({"user_id": [1, 2], "event_timestamp": ts[:2], "x": [1.0, 2.0]}),
        root / "data" / "a.parquet",
    )
    y = pa.array([5.0, None, 7.0], pa.float64())
    pq.write_table(
        pa.table({"user_id": [1, 2, 3], "event_timestamp": ts, "x": [10.0, 20.0, 30.0], "y": y}),
        root / "data" / "b.parquet",
    )
    with FeatureStore(root) as store:
        store.apply()
        store.materialize(NOW - timedelta(days=1), NOW)
    return root


def _model(root: Path, names: list[str], file: str = "model.py") -> Path:
    path = root / file
    path.write_text(MODEL.format(names=names))
    return path


def test_register_refuses_a_service_with_two_features_of_one_bare_name(tmp_path: Path) -> None:
    from featurestore.cli import cli

    repo = _repo(tmp_path / "repo")
    _model(repo, ["x", "x", "y"])
    r = CliRunner().invoke(
        cli,
        ["--repo", str(repo), "models", "register", "m", "--flavor", "python",
         "--path", str(repo / "model.py"), "--features", "clash", "--alias", "production"],
    )  # fmt: skip
    assert r.exit_code != 0
    assert r.output.strip().splitlines() == [f"error: model 'm': {CLASH_LINE}"]
    assert "Traceback" not in r.output
    with FeatureStore(repo) as store:
        with pytest.raises(ModelRegistryError) as info:
            register_model(store, "m", flavor="python", artifact=repo / "model.py", service="clash")
        assert str(info.value) == f"model 'm': {CLASH_LINE}"
        # the registry's own check, for callers passing the service's names themselves
        with pytest.raises(ModelRegistryError, match=r"two features named 'x'"):
            model_registry(store).register(
                "m", flavor="python", artifact=repo / "model.py",
                feature_service="clash", service_features=["x", "x", "y"],
            )  # fmt: skip
        assert model_registry(store).names() == []


def test_batch_score_and_predict_read_each_input_from_the_same_view(tmp_path: Path) -> None:
    """x only from a (user 3 has no row there: NaN), y only from b (user 2's is null)."""
    repo = _repo(tmp_path / "repo")
    with FeatureStore(repo) as store:
        register_model(
            store, "m", flavor="python", artifact=_model(repo, ["y", "x"]), service="mixed",
            alias="production",
        )  # fmt: skip
        users = [1, 2, 3, 4]
        spine = pl.DataFrame({"user_id": users, "event_timestamp": [NOW] * len(users)})
        batch = store.batch_score("m", spine).frame["score"].to_list()
        online = list(store.predict("m", {"user_id": users}).scores)
    # y + 1000 x, a missing value as -5
    assert batch == online == [5.0 + 1000 * 1, -5.0 + 1000 * 2, 7.0 - 5000, -5.0 - 5000]


def test_a_service_that_gains_a_clash_is_refused_by_batch_score_promote_and_apply(
    tmp_path: Path,
) -> None:
    repo = _repo(tmp_path / "repo", mixed='"b:x", "b:y"')
    with FeatureStore(repo) as store:
        register_model(
            store, "m", flavor="python", artifact=_model(repo, ["x", "y"]), service="mixed",
            alias="production",
        )  # fmt: skip
        spine = pl.DataFrame({"user_id": [1], "event_timestamp": [NOW]})
        assert store.batch_score("m", spine).frame["score"].to_list() == [10.0 + 5000]
    # the service now lists a's x as well: which x the model reads can no longer be told
    (repo / "definitions.py").write_text(DEFS.replace("SVC_MIXED", '"a:x", "b:x", "b:y"'))
    with FeatureStore(repo) as store:
        store.apply()
        line = CLASH_LINE.replace("'clash'", "'mixed'")
        with pytest.raises(ModelRegistryError) as info:
            store.batch_score("m", spine)
        assert str(info.value) == f"model 'm' v1: {line}"
        with pytest.raises(ModelRegistryError) as info:
            promote_model(store, "m", 1, "canary", share=0.5)
        assert str(info.value) == f"model 'm' v1 cannot become canary: {line}"
        assert "canary" not in model_registry(store).get("m").aliases
        services = store.registry.feature_services
        assert models_reading_missing_services(store, services) == [
            f"model 'm@production' (v1) cannot be served: {line}"
        ]
        with pytest.raises(
            FeatureStoreError, match=r"^output name 'x' of feature view 'b' clashes"
        ):
            store.predict("m", {"user_id": [1]})


def test_a_version_stored_with_one_input_name_twice_is_refused(tmp_path: Path) -> None:
    """A version registered before the check (its index lists 'x' twice) is neither promoted,
    even through the registry itself, nor batch scored."""
    repo = _repo(tmp_path / "repo", mixed='"b:x", "b:y"')
    with FeatureStore(repo) as store:
        reg = model_registry(store)
        register_model(
            store, "m", flavor="python", artifact=_model(repo, ["x", "y"]), service="mixed"
        )
        # what the old register wrote for a model on the 'clash' service
        (reg.root / "m" / "v1" / "model.py").write_text(MODEL.format(names=["x", "x", "y"]))
        index = json.loads(reg.index_path("m").read_text())
        index["versions"][0].update(feature_service="clash", feature_names=["x", "x", "y"])
        index["aliases"] = {"production": {"version": 1}}
        reg.index_path("m").write_text(json.dumps(index))
        with pytest.raises(ModelRegistryError) as info:
            reg.set_alias("m", 1, "shadow")
        assert str(info.value) == (
            "model 'm' v1 cannot become shadow: feature service 'clash' has two features named "
            "'x'; a model reads its inputs by bare feature name, so it cannot tell them apart: "
            "keep one of them in the service, or rename one in its view"
        )
        spine = pl.DataFrame({"user_id": [1], "event_timestamp": [NOW]})
        with pytest.raises(ModelRegistryError) as info:
            store.batch_score("m", spine)
        assert str(info.value) == f"model 'm' v1: {CLASH_LINE}"


def test_the_batch_input_matrix_has_one_column_per_model_input() -> None:
    """A name given twice is two columns (the model's width), never one."""
    from featurestore.offline.scoring import _input_matrix

    df = pl.DataFrame({"a__x": [1.0, None], "b__y": [3, 4]})
    x = _input_matrix(df, ("a__x", "b__y", "a__x"))
    assert x.shape == (2, 3) and x.dtype == np.float64 and x.flags.c_contiguous
    np.testing.assert_array_equal(x, [[1.0, 3.0, 1.0], [np.nan, 4.0, np.nan]])
