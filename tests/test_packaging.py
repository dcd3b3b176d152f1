"""The built package holds every module: a wheel (what `pip install .` and the Docker image
install) is checked, since an editable install finds modules in the tree either way."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def _expected_modules() -> set[str]:
    """Installed path of every .py file under the mapped package folders."""
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    out = set()
    for package, folder in cfg["package-dir"].items():
        base = package.replace(".", "/")
        for path in (ROOT / folder).rglob("*.py"):
            if "__pycache__" in path.parts:
                continue
            out.add(f"{base}/{path.relative_to(ROOT / folder).as_posix()}")
    return out


def test_every_package_folder_is_listed() -> None:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    found = {
        m.rsplit("/", 1)[0].replace("/", ".")
        for m in _expected_modules()
        if m.endswith("/__init__.py")
    }
    assert found == listed, f"missing: {sorted(found - listed)}; stale: {sorted(listed - found)}"


def test_the_wheel_holds_every_module(tmp_path: Path) -> None:
    # built from a copy (a build/ folder left in the tree would carry files of earlier builds),
    # as `pip install .` builds it: in an isolated env with the setuptools pyproject.toml names
    src = tmp_path / "src"
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.nbi", "*.nbc")
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for folder in {*cfg["package-dir"].values()}:
        shutil.copytree(ROOT / folder, src / folder, ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
         "-w", str(tmp_path), str(src)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("featurestore-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(_expected_modules() - names)
    assert not missing, missing
    assert "featurestore/templates/definitions.py" in names
