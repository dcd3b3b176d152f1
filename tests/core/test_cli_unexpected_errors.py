"""An unexpected exception in a command (a bug, or an input no check foresaw) is still one line
on stderr and exit 1, naming its type; --debug shows the traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from featurestore.cli import cli
from featurestore.store import FeatureStore


@pytest.mark.parametrize("exc", [TypeError("bad thing"), KeyError("k"), RuntimeError("boom")])
def test_an_unexpected_error_is_one_line_without_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exc: Exception
) -> None:
    runner = CliRunner()
    assert runner.invoke(cli, ["init", str(tmp_path / "r")]).exit_code == 0

    def broken(self: FeatureStore, *a: object, **k: object) -> None:
        raise exc

    monkeypatch.setattr(FeatureStore, "apply", broken)
    out = runner.invoke(cli, ["-r", str(tmp_path / "r"), "apply"])
    assert out.exit_code == 1
    lines = out.output.strip().splitlines()
    assert lines == [f"error: {type(exc).__name__}: {exc} (--debug shows where)"]
    debug = runner.invoke(cli, ["-r", str(tmp_path / "r"), "--debug", "apply"])
    assert debug.exception is exc  # raised as it was, for the traceback
