"""``models register ... --alias`` loads (and trial-scores) the model once: register's checks
cover the version the alias then points at, a copy of the file just checked. A later promote
loads the stored artifact again, as before (it may have changed since)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from featurestore._cli_serve import register_commands
from featurestore.cli import cli
from featurestore.store import FeatureStore

register_commands(cli)

# each import of the module (one load) and each 2-row trial prediction (register's probe)
# appends a line to its counter file
COUNTING = """
import numpy as np
with open({loads!r}, "a") as _fh:
    _fh.write("load\\n")
FEATURE_NAMES = ["tx_count", "amount_mean", "risk"]
def predict(x):
    if len(x) == 2 and not x.any():
        with open({probes!r}, "a") as fh:
            fh.write("probe\\n")
    return x[:, 2] + 0.5
"""


def _counting_model(tmp_path: Path) -> tuple[Path, Path, Path]:
    loads, probes = tmp_path / "loads.txt", tmp_path / "probes.txt"
    code = tmp_path / "counting.py"
    code.write_text(COUNTING.format(loads=str(loads), probes=str(probes)))
    return code, loads, probes


def _count(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def _cli(repo: Path, *args: str) -> Any:
    return CliRunner().invoke(cli, ["-r", str(repo), *args], catch_exceptions=False)


@pytest.fixture
def counted_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The flavors of every model load the registry makes (register's and the alias checks')."""
    from featurestore.online.models import registry

    loads: list[str] = []
    real = registry.load_predictor

    def counting(flavor: str, path: Any, **kw: Any) -> Any:
        loads.append(flavor)
        return real(flavor, path, **kw)

    monkeypatch.setattr(registry, "load_predictor", counting)
    return loads


@pytest.mark.parametrize("alias", ["production", "shadow"])
def test_cli_register_with_an_alias_loads_once(
    fresh_repo: Path, counted_loads: list[str], alias: str
) -> None:
    model = fresh_repo / "model1.txt"  # a LightGBM model over the 'scoring' service's inputs
    r = _cli(
        fresh_repo, "models", "register", "fraud", "--flavor", "lightgbm", "--path", str(model),
        "--features", "scoring", "--alias", alias,
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert r.output.splitlines() == [
        "registered fraud v3 (lightgbm, 3 features from 'scoring')",
        f"fraud@{alias} -> v3",
    ]
    assert counted_loads == ["lightgbm"]
    # a promote of the stored version checks it again (it may have changed since): one more
    r = _cli(fresh_repo, "models", "promote", "fraud", "3", "--alias", "canary", "--share", "0.2")
    assert r.exit_code == 0, r.output
    assert counted_loads == ["lightgbm", "lightgbm"]
    with FeatureStore(fresh_repo) as store:
        from featurestore.online.models.repo import model_registry

        aliases = model_registry(store).get("fraud").aliases
    assert (aliases[alias].version, aliases["canary"].version) == (3, 3)


def test_register_model_with_an_alias_loads_once_in_python(
    fresh_repo: Path, counted_loads: list[str]
) -> None:
    from featurestore.online.models.repo import model_registry, register_model

    with FeatureStore(fresh_repo) as store:
        mv = register_model(
            store, "counted", flavor="lightgbm", artifact=fresh_repo / "model2.txt",
            service="scoring", alias="production",
        )  # fmt: skip
        assert model_registry(store).get("counted").aliases["production"].version == mv.version
    assert counted_loads == ["lightgbm"]


def test_a_python_model_is_loaded_again_from_its_stored_copy(
    fresh_repo: Path, tmp_path: Path
) -> None:
    """A python module may read files beside it (``__file__``): register checks the file
    given, the alias check loads the copy in the registry, which is what servers load."""
    code, loads, probes = _counting_model(tmp_path)
    r = _cli(
        fresh_repo, "models", "register", "fraud", "--flavor", "python", "--path", str(code),
        "--features", "scoring", "--alias", "production",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert (_count(loads), _count(probes)) == (2, 2)


def test_register_alias_keeps_the_alias_checks_and_their_messages(
    fresh_repo: Path, tmp_path: Path
) -> None:
    """The alias's own checks still run (they need no load): a shadow reading a feature its
    production does not read is refused with the line promote gives, after one load."""
    narrow = tmp_path / "narrow.py"
    narrow.write_text("FEATURE_NAMES = ['tx_count', 'risk']\ndef predict(x):\n    return x[:, 0]\n")
    code, loads, probes = _counting_model(tmp_path)
    defs = fresh_repo / "definitions.py"
    defs.write_text(
        defs.read_text() + "\npair = FeatureService(name='pair', features=["
        "'user_stats:tx_count', 'merchant_stats:risk'])\n"
    )
    with FeatureStore(fresh_repo) as store:
        store.apply()
    r = _cli(
        fresh_repo, "models", "register", "narrow", "--flavor", "python", "--path", str(narrow),
        "--features", "pair", "--alias", "production",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    r = _cli(
        fresh_repo, "models", "register", "narrow", "--flavor", "python", "--path", str(code),
        "--features", "scoring", "--alias", "shadow",
    )  # fmt: skip
    assert r.exit_code == 1
    lines = r.output.splitlines()
    assert lines[0] == "registered narrow v2 (python, 3 features from 'scoring')"
    assert lines[1].startswith(
        "error: model 'narrow' v2 reads ['amount_mean'] (feature service 'scoring'), which its "
        "production v1 (feature service 'pair') does not read"
    ), r.output
    assert len(lines) == 2
    assert (_count(loads), _count(probes)) == (1, 1)
