"""`featurestore init` and `featurestore quickstart` never write over a repo: a folder holding
any file they would write (or a registry) is refused in one line before anything is written,
unless forced; the quickstart's arguments are checked before anything is written too."""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from featurestore._scaffold import config_text, scaffold
from featurestore.cli import cli
from featurestore.errors import ConfigError
from featurestore.quickstart import MIN_TRANSACTIONS, run_quickstart

# what init and the quickstart write, and the registries and store they would write into
THEIRS = (
    "featurestore.yaml",
    "definitions.py",
    "data/transactions.parquet",
    "data/user_stats.parquet",
    "data/merchant_stats.parquet",
    "data/training_set.parquet",
    "data/scores.parquet",
    "data/registry.json",
    "data/models",
    "data/online_store",
)


def _run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative name -> digest of its bytes)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _one_error_line(res: Result) -> str:
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    return lines[0]


def _holding(folder: Path, name: str) -> Path:
    """A folder whose only content is ``name`` (a folder for the stores, else a file)."""
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if name in ("data/models", "data/online_store"):
        path.mkdir()
        (path / "keep").write_text("mine")
    else:
        path.write_text("# mine\n")
    return folder


def test_the_testers_repro_leaves_the_repo_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert _run("init", "victim").exit_code == 0
    victim = tmp_path / "victim"
    with (victim / "definitions.py").open("a") as f:
        f.write("# MY OWN\n")
    assert _run("-r", "victim", "apply").exit_code == 0
    before = _snapshot(victim)
    line = _one_error_line(_run("quickstart", "--dir", "victim", "--transactions", "20000"))
    assert f"{victim} already holds featurestore.yaml" in line
    assert "--force" in line
    assert _snapshot(victim) == before
    assert (victim / "definitions.py").read_text().splitlines()[-1] == "# MY OWN"
    assert not (victim / "data" / "models").exists()
    assert not (victim / "data" / "training_set.parquet").exists()


@pytest.mark.parametrize("name", THEIRS)
@pytest.mark.parametrize("command", ["init", "quickstart"])
def test_a_folder_holding_any_file_it_would_write_is_refused_naming_it(
    tmp_path: Path, name: str, command: str
) -> None:
    folder = _holding(tmp_path / "repo", name)
    before = _snapshot(folder)
    args = ["init", str(folder)] if command == "init" else ["quickstart", "--dir", str(folder)]
    line = _one_error_line(_run(*args))
    assert f"error: {folder} already holds {name}; " in line
    assert _snapshot(folder) == before
    assert sorted(p.name for p in folder.iterdir()) == [Path(name).parts[0]]


@pytest.mark.parametrize("name", [".", ""])
def test_init_in_the_current_folder_keeps_the_users_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    (tmp_path / "definitions.py").write_text("# MY OWN\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "user_stats.parquet").write_bytes(b"not the demo's")
    monkeypatch.chdir(tmp_path)
    line = _one_error_line(_run("init", name))
    assert f"{tmp_path.resolve()} already holds definitions.py; pick another folder" in line
    assert (tmp_path / "definitions.py").read_text() == "# MY OWN\n"
    assert (tmp_path / "data" / "user_stats.parquet").read_bytes() == b"not the demo's"
    assert not (tmp_path / "featurestore.yaml").exists()


def test_a_file_in_place_of_the_folder_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    assert "is a file, not a folder" in _one_error_line(_run("init", str(tmp_path / "f")))
    line = _one_error_line(_run("quickstart", "--dir", str(tmp_path / "f")))
    assert f"{tmp_path / 'f'} is a file, not a folder" in line


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--transactions", "100"], "'--transactions': 100 is below the minimum of 200"),
        (["--transactions", "199"], "'--transactions': 199 is below the minimum of 200"),
        (["--transactions", "0"], "'--transactions': 0 is below the minimum of 200"),
        (["--transactions", "-5"], "'--transactions': -5 is below the minimum of 200"),
        (["--seed", "-1"], "'--seed': -1 is negative"),
    ],
)
def test_quickstart_arguments_are_usage_errors_before_anything_is_written(
    tmp_path: Path, args: list[str], needle: str
) -> None:
    assert MIN_TRANSACTIONS == 200
    res = _run("quickstart", "--dir", str(tmp_path / "new"), *args)
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    assert f"Error: Invalid value for {needle}" in res.output
    assert not (tmp_path / "new").exists()
    # a bad argument is named first even where the folder would be refused too
    _holding(tmp_path / "old", "definitions.py")
    res = _run("quickstart", "--dir", str(tmp_path / "old"), *args)
    assert res.exit_code == 2 and needle in res.output


def test_forced_init_writes_over_the_demo_files(tmp_path: Path) -> None:
    folder = _holding(tmp_path / "repo", "definitions.py")
    with pytest.raises(ConfigError, match=r"already holds definitions\.py"):
        scaffold(folder, n_transactions=300)
    scaffold(folder, n_transactions=300, force=True)
    assert "# mine" not in (folder / "definitions.py").read_text()
    assert (folder / "featurestore.yaml").is_file()
    assert (folder / "data" / "transactions.parquet").is_file()


def test_forced_quickstart_runs_over_an_applied_repo_at_the_minimum_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A repo `init` made and applied: its config and its registry (of its own project, which
    the demo's could not apply to) are written over, and the demo runs as in a new folder."""
    from featurestore.store import FeatureStore

    monkeypatch.delenv("FEATURESTORE_ONLINE_STORE", raising=False)
    folder = scaffold(tmp_path / "repo", n_transactions=300)
    with (folder / "definitions.py").open("a") as f:
        f.write("# mine\n")
    with FeatureStore(folder) as store:
        store.apply()
        assert store.registry.project == "repo"
    lines: list[str] = []
    figures = run_quickstart(folder, n_transactions=MIN_TRANSACTIONS, echo=lines.append, force=True)
    text = "\n".join(lines)
    assert "7/7 " in text and "Done." in text
    assert figures["materialized_rows"] > 0
    assert (folder / "featurestore.yaml").read_text() == config_text("fraud")
    assert "# mine" not in (folder / "definitions.py").read_text()
    assert (folder / "data" / "scores.parquet").is_file()
    with FeatureStore(folder) as store:
        assert store.registry.project == "fraud"


def test_forced_quickstart_leaves_the_registry_and_online_store_the_old_config_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The repo's config names a registry and an online store outside the folder (as one
    pointing at production would): --force writes the demo's config, so the demo applies to,
    materializes into and deletes from the folder's own store, never those."""
    from featurestore.store import FeatureStore

    monkeypatch.delenv("FEATURESTORE_ONLINE_STORE", raising=False)
    folder = scaffold(tmp_path / "repo", n_transactions=300)
    theirs = tmp_path / "prod"
    config = (folder / "featurestore.yaml").read_text()
    config = config.replace("registry: data/registry.json", "registry: ../prod/registry.json")
    config = config.replace("  path: data/online_store", "  path: ../prod/online_store")
    config = config.replace("${FEATURESTORE_ONLINE_STORE:-embedded}", "embedded")
    (folder / "featurestore.yaml").write_text(config)
    with FeatureStore(folder) as store:
        store.apply()
        assert store.materialize_incremental(datetime.now(timezone.utc)).total_rows > 0
    assert (theirs / "registry.json").is_file() and (theirs / "online_store").is_dir()
    before = _snapshot(theirs)
    res = _run("quickstart", "--dir", str(folder), "--force", "--transactions", "200")
    assert res.exit_code == 0, res.output
    assert "7/7" in res.output and "Done." in res.output
    assert _snapshot(theirs) == before  # not applied to, materialized into nor cleaned
    assert (folder / "featurestore.yaml").read_text() == config_text("fraud")
    assert (folder / "data" / "registry.json").is_file()
    assert (folder / "data" / "online_store").is_dir()
    with FeatureStore(folder) as store:
        assert store.config.registry_path == (folder / "data" / "registry.json").resolve()


def test_init_force_on_the_command_line_writes_over_a_repo(tmp_path: Path) -> None:
    runner = CliRunner()
    repo = tmp_path / "victim"
    assert runner.invoke(cli, ["init", str(repo)]).exit_code == 0
    with (repo / "definitions.py").open("a") as f:
        f.write("# MY OWN\n")
    refused = runner.invoke(cli, ["init", str(repo)])
    assert refused.exit_code == 1 and "already holds" in refused.output
    assert (repo / "definitions.py").read_text().endswith("# MY OWN\n")
    forced = runner.invoke(cli, ["init", str(repo), "--force"])
    assert forced.exit_code == 0, forced.output
    assert not (repo / "definitions.py").read_text().endswith("# MY OWN\n")


def test_the_quickstart_runs_again_over_its_own_untouched_demo_only(tmp_path: Path) -> None:
    """Its own demo, as it wrote it, is not somebody's repo: the README's command may be run
    twice. An edited definitions.py or config makes it somebody's again."""
    runner = CliRunner()
    repo = str(tmp_path / "demo")
    args = ["quickstart", "--dir", repo, "--transactions", "200"]
    first = runner.invoke(cli, args)
    assert first.exit_code == 0, first.output
    again = runner.invoke(cli, args)
    assert again.exit_code == 0, again.output
    assert "7/7" in again.output
    with (tmp_path / "demo" / "definitions.py").open("a") as f:
        f.write("# MY OWN\n")
    refused = runner.invoke(cli, args)
    assert refused.exit_code == 1 and "already holds" in refused.output
    assert (tmp_path / "demo" / "definitions.py").read_text().endswith("# MY OWN\n")
