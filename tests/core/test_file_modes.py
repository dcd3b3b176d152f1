"""Files the store writes atomically (registry, pushes, compactions, stream files, model
indexes) get the permissions ``open`` would give under the process's umask, not the
temporary file's owner-only 0600: a server and a training job running as different users
must both read them. A mode asked for (the API keys file's 0600) is kept."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from featurestore._atomic import atomic_write


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_write_follows_the_umask_unless_given_a_mode(tmp_path: Path) -> None:
    from featurestore import _atomic

    atomic_write(tmp_path / "a.json", b"{}")
    assert _mode(tmp_path / "a.json") == 0o666 & ~_atomic._UMASK
    atomic_write(tmp_path / "k.json", b"{}", mode=0o600)
    assert _mode(tmp_path / "k.json") == 0o600


@pytest.mark.parametrize(("umask", "want"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_the_registry_is_readable_as_the_umask_says(tmp_path: Path, umask: int, want: int) -> None:
    """In a fresh process with that umask, apply writes the registry and its history."""
    repo = tmp_path / "repo"
    subprocess.run(
        [sys.executable, "-m", "featurestore.cli", "init", str(repo)],
        check=True,
        capture_output=True,
    )
    script = f"""
import os
os.umask({umask:#o})
from featurestore import FeatureStore
with FeatureStore({str(repo)!r}) as s:
    s.apply()
"""
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    written = [repo / "data" / "registry.json", *sorted((repo / "data").glob("registry*/*.json"))]
    assert written and all(_mode(p) == want for p in written), [
        (p.name, oct(_mode(p))) for p in written
    ]
