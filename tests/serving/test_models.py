"""Model registry and runtime: versions, aliases, feature checks, flavors, warm swaps, shadow."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from featurestore.online.models import (
    ModelLoadError,
    ModelNotFoundError,
    ModelRegistry,
    ModelRegistryError,
    ModelRuntime,
    load_predictor,
)
from tests.serving.conftest import MODEL_FEATURES, train_model

SERVICE = ["tx_count", "amount_mean", "risk"]


@pytest.fixture
def reg(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "models")


def _register(reg: ModelRegistry, tmp_path: Path, seed: int = 1, name: str = "m") -> int:
    art = train_model(tmp_path / f"art{seed}.txt", seed=seed)
    return reg.register(
        name, flavor="lightgbm", artifact=art, feature_service="svc", service_features=SERVICE
    ).version


def test_register_versions_and_aliases_are_written_to_the_index(reg, tmp_path) -> None:
    assert _register(reg, tmp_path, 1) == 1
    assert _register(reg, tmp_path, 2) == 2
    reg.set_alias("m", 2, "production")
    reg.set_alias("m", 1, "canary", share=0.25)
    index = json.loads((reg.root / "m" / "index.json").read_text())
    assert index["aliases"] == {
        "production": {"version": 2},
        "canary": {"version": 1, "share": 0.25},
    }
    assert (reg.root / "m" / "v1" / "art1.txt").is_file()
    assert reg.resolve("m").version == 2
    assert reg.resolve("m@canary").version == 1
    assert reg.resolve("m@v1").version == 1 and reg.resolve("m@2").version == 2
    assert reg.get("m").version(1).feature_names == tuple(MODEL_FEATURES)
    assert not list((reg.root / "m").glob(".index.*"))  # no temp files left behind


def test_register_rejects_a_model_whose_inputs_differ_from_the_service(reg, tmp_path) -> None:
    art = train_model(tmp_path / "a.txt", seed=1, names=["tx_count", "amount_mean", "colour"])
    with pytest.raises(
        ModelRegistryError,
        match=r"not in the service: \['colour'\].*not used by "
        r"the model: \['risk'\]",
    ):
        reg.register(
            "m", flavor="lightgbm", artifact=art, feature_service="svc", service_features=SERVICE
        )
    art = train_model(tmp_path / "b.txt", seed=1, names=["tx_count", "amount_mean"])
    with pytest.raises(ModelRegistryError, match="takes 2 inputs but feature service 'svc' has 3"):
        reg.register(
            "m", flavor="lightgbm", artifact=art, feature_service="svc", service_features=SERVICE
        )
    assert reg.names() == []  # nothing half-registered


def test_model_inputs_in_another_order_are_fed_in_the_model_order(reg, tmp_path) -> None:
    names = ["risk", "tx_count", "amount_mean"]
    art = train_model(tmp_path / "a.txt", seed=3, names=names)
    mv = reg.register(
        "m", flavor="lightgbm", artifact=art, feature_service="svc", service_features=SERVICE
    )
    assert mv.feature_names == tuple(names)


def test_bad_names_aliases_and_shares(reg, tmp_path) -> None:
    _register(reg, tmp_path)
    with pytest.raises(ModelRegistryError, match="canary alias needs a traffic share"):
        reg.set_alias("m", 1, "canary")
    with pytest.raises(ModelRegistryError, match="only the canary"):
        reg.set_alias("m", 1, "production", share=0.5)
    with pytest.raises(ModelRegistryError, match="unknown alias 'beta'"):
        reg.set_alias("m", 1, "beta")
    with pytest.raises(ModelNotFoundError, match="no version 9"):
        reg.set_alias("m", 9, "production")
    with pytest.raises(ModelNotFoundError, match="no 'production' alias"):
        reg.resolve("m")
    with pytest.raises(ModelNotFoundError, match="known models: m"):
        reg.resolve("zz")
    # names register refuses are not looked up on disk: no way out of the registry folder,
    # no OS error for a name longer than a file name may be
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "index.json").write_text("{}")
    for name in ("../outside", "x" * 5000):
        with pytest.raises(ModelNotFoundError, match="known models: m"):
            reg.resolve(name)
    with pytest.raises(ModelRegistryError, match="must be 1-100 letters"):
        reg.register(
            "a b",
            flavor="lightgbm",
            artifact=tmp_path,
            feature_service="s",
            service_features=SERVICE,
        )
    with pytest.raises(ModelRegistryError, match="unknown model flavor 'torch'"):
        reg.register(
            "m", flavor="torch", artifact=tmp_path, feature_service="s", service_features=SERVICE
        )
    with pytest.raises(ModelRegistryError, match="does not exist"):
        reg.register(
            "m",
            flavor="lightgbm",
            artifact=tmp_path / "nope.txt",
            feature_service="s",
            service_features=SERVICE,
        )


PY_MODEL = """
import numpy as np
FEATURE_NAMES = ["tx_count", "amount_mean", "risk"]
def predict(x):
    return x[:, 2] * 2.0
"""


def test_python_flavor_from_a_file(reg, tmp_path) -> None:
    (tmp_path / "pm.py").write_text(PY_MODEL)
    mv = reg.register(
        "py",
        flavor="python",
        artifact=tmp_path / "pm.py",
        feature_service="svc",
        service_features=SERVICE,
    )
    pred = load_predictor("python", reg.artifact_path(mv))
    assert pred.predict(np.array([[1.0, 2.0, 0.25]])).tolist() == [0.5]


@pytest.mark.parametrize(
    ("flavor", "package", "name"),
    [
        ("xgboost", "xgboost", "m.json"),
        ("onnx", "onnxruntime", "m.onnx"),
        ("sklearn", "joblib", "m.joblib"),
    ],
)
def test_missing_library_flavors_say_what_to_install(
    tmp_path, monkeypatch, flavor, package, name
) -> None:
    monkeypatch.setitem(sys.modules, package, None)  # importing it now fails, as if not installed
    (tmp_path / name).write_bytes(b"x")
    with pytest.raises(ModelLoadError, match=f"pip install {package}"):
        load_predictor(flavor, tmp_path / name)


def test_corrupt_artifact_is_a_load_error_naming_the_file(tmp_path) -> None:
    (tmp_path / "m.txt").write_text("not a model")
    with pytest.raises(ModelLoadError, match=r"m\.txt"):
        load_predictor("lightgbm", tmp_path / "m.txt")


def _promote_replaced(reg: ModelRegistry, tmp_path: Path, body: str) -> None:
    """Register a good python version of 'm', make it production, then replace its stored
    file by ``body`` (a broken model: register's trial prediction, and promoting's, would
    refuse it)."""
    (tmp_path / "good.py").write_text(PY_MODEL)
    mv = reg.register(
        "m", flavor="python", artifact=tmp_path / "good.py", feature_service="svc",
        service_features=SERVICE,
    )  # fmt: skip
    reg.set_alias("m", mv.version, "production")
    Path(reg.artifact_path(mv)).write_text(
        "import numpy as np\nFEATURE_NAMES = ['tx_count', 'amount_mean', 'risk']\n" + body
    )


def test_runtime_swaps_only_to_warm_versions(reg, tmp_path) -> None:
    _register(reg, tmp_path, 1)
    reg.set_alias("m", 1, "production")
    rt = ModelRuntime(reg)
    rt.refresh()
    assert rt.select("m")[0].version.version == 1
    _promote_replaced(reg, tmp_path, "def predict(x):\n    raise RuntimeError('boom')\n")
    assert rt.refresh() is False
    assert "warm-up" in (rt.last_error or "")
    assert rt.select("m")[0].version.version == 1  # still serving the old, good version
    _register(reg, tmp_path, 2)
    reg.set_alias("m", 3, "production")
    assert rt.refresh() is True
    assert rt.select("m")[0].version.version == 3


def test_runtime_refuses_a_version_scoring_several_numbers_per_row(reg, tmp_path) -> None:
    # e.g. an artifact registered before register checked scores, or replaced on disk since
    _register(reg, tmp_path, 1)
    reg.set_alias("m", 1, "production")
    rt = ModelRuntime(reg)
    rt.refresh()
    _promote_replaced(reg, tmp_path, "def predict(x):\n    return np.column_stack([x, x])[:, :3]\n")
    assert rt.refresh() is False
    assert "(1, 3)" in (rt.last_error or "")
    assert rt.select("m")[0].version.version == 1


def test_canary_share_splits_traffic(reg, tmp_path) -> None:
    _register(reg, tmp_path, 1)
    _register(reg, tmp_path, 2)
    reg.set_alias("m", 1, "production")
    reg.set_alias("m", 2, "canary", share=0.3)
    rt = ModelRuntime(reg)
    rt.refresh()
    picks = [rt.select("m")[0].version.version for _ in range(2000)]
    share = picks.count(2) / len(picks)
    assert 0.24 < share < 0.36
    assert rt.select("m@canary")[0].version.version == 2


def test_shadow_scores_are_recorded_not_returned(reg, tmp_path) -> None:
    _register(reg, tmp_path, 1)
    _register(reg, tmp_path, 2)
    reg.set_alias("m", 1, "production")
    reg.set_alias("m", 2, "shadow")
    log_path = tmp_path / "shadow.jsonl"
    from featurestore.online.models import ShadowRecorder

    rt = ModelRuntime(reg, shadow=ShadowRecorder(buffer=10, log_path=str(log_path)))
    rt.refresh()
    chosen, shadow = rt.select("m")
    assert chosen.version.version == 1 and shadow is not None and shadow.version.version == 2
    x = np.array([[10.0, 20.0, 0.7], [1.0, 2.0, 0.1]])
    scores = chosen.predict(x)
    rt.shadow.submit(shadow, chosen, x, scores)
    rt.shadow.flush()
    rec = rt.shadow.records[-1]
    assert rec["shadow_version"] == 2 and rec["primary_version"] == 1
    assert rec["scores"] == pytest.approx(shadow.predict(x).tolist())
    assert json.loads(log_path.read_text().splitlines()[-1])["shadow_version"] == 2
    rt.close()


def test_concurrent_registers_get_distinct_versions(reg, tmp_path) -> None:
    art = train_model(tmp_path / "a.txt", seed=1)
    out: list[int] = []

    def go() -> None:
        out.append(
            reg.register(
                "m",
                flavor="lightgbm",
                artifact=art,
                feature_service="svc",
                service_features=SERVICE,
            ).version
        )

    threads = [threading.Thread(target=go) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(out) == [1, 2, 3, 4]
    assert sorted(reg.get("m").versions) == [1, 2, 3, 4]
