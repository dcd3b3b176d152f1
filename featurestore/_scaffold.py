"""``featurestore init``: a new repo with a config, the demo definitions and sample data."""

from __future__ import annotations

import shutil
from pathlib import Path

from featurestore.errors import ConfigError

_CONFIG = """\
# featurestore.yaml: the one config file of this feature repo (paths are relative to it)
project: {project}
registry: data/registry.json
offline_store:
  type: duckdb
  memory_limit: 75%          # DuckDB spills to temp_directory beyond this
  temp_directory: data/.duckdb_tmp
online_store:
{online}
"""

_ONLINE = {
    "embedded": "  # embedded: an LMDB file, no server, safe for several reader processes;\n"
    "  # FEATURESTORE_ONLINE_STORE=redis (docker compose sets it) uses REDIS_URL instead\n"
    "  type: ${{FEATURESTORE_ONLINE_STORE:-embedded}}\n"
    "  path: data/online_store\n"
    "  url: ${{REDIS_URL:-redis://localhost:6379/0}}",
    "redis": "  type: redis\n  url: ${{REDIS_URL:-redis://localhost:6379/0}}\n"
    "  connect_timeout: 1.0\n  socket_timeout: 1.0",
    "redis_cluster": "  type: redis_cluster\n  url: ${{REDIS_URL:-redis://localhost:7000/0}}\n"
    "  connect_timeout: 1.0\n  socket_timeout: 1.0",
}


def config_text(project: str, online_store: str = "embedded") -> str:
    """The featurestore.yaml that ``init`` and the quickstart write for ``project``."""
    return _CONFIG.format(project=project, online=_ONLINE[online_store].format())


def write_config(path: Path, project: str, online_store: str = "embedded") -> None:
    """Write featurestore.yaml for ``project`` with the chosen online store."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "featurestore.yaml").write_text(config_text(project, online_store))


def untouched_demo(path: Path, project: str) -> bool:
    """Whether ``path`` holds a demo repo as the quickstart wrote it: its config and
    definitions byte for byte (so running the quickstart again overwrites nobody's work)."""
    try:
        config = (path / "featurestore.yaml").read_text()
        defs = (path / "definitions.py").read_bytes()
    except OSError:
        return False
    template = (Path(__file__).parent / "templates" / "definitions.py").read_bytes()
    return config == config_text(project) and defs == template


# what `init` and the quickstart write or fill in a repo folder, and the registries they apply
# to: a folder holding any of them is somebody's repo, refused unless --force
DEMO_FILES = (
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


def check_target(path: Path, how: str, *, force: bool = False) -> None:
    """A ConfigError when ``path`` is a file, or (unless ``force``) naming the first of
    DEMO_FILES it already holds; ``how`` says how to get past it."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{path} is a file, not a folder; give a folder")
    for name in () if force else DEMO_FILES:
        if (path / name).exists():
            raise ConfigError(f"{path} already holds {name}; {how}")


def scaffold(
    path: Path,
    *,
    online_store: str = "embedded",
    n_transactions: int = 50_000,
    seed: int = 7,
    force: bool = False,
) -> Path:
    """Create the repo folder with config, definitions and a small generated dataset; a folder
    that already holds any of them (or a registry) is refused unless ``force``."""
    from featurestore.quickstart import generate_data

    path = path.resolve()
    check_target(path, "pick another folder, or pass --force to overwrite it", force=force)
    project = "".join(c if c.isalnum() or c in "_-" else "_" for c in path.name) or "features"
    write_config(path, project, online_store)
    shutil.copy(Path(__file__).parent / "templates" / "definitions.py", path / "definitions.py")
    generate_data(path / "data", n_transactions=n_transactions, seed=seed)
    return path
