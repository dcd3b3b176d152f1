"""`featurestore ingest --status` in a repo without streams says so and fails, as
`dead-letters` does, instead of printing nothing with success."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from featurestore.cli import cli


def test_ingest_status_without_stream_sources_names_the_problem(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(cli, ["init", str(tmp_path / "r")]).exit_code == 0
    repo = str(tmp_path / "r")
    assert runner.invoke(cli, ["-r", repo, "apply"]).exit_code == 0
    out = runner.invoke(cli, ["-r", repo, "ingest", "--status"])
    assert out.exit_code != 0
    assert "no applied feature view reads a StreamSource" in out.output
    assert "Traceback" not in out.output
