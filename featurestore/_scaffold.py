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


def write_config(path: Path, project: str, online_store: str = "embedded") -> None:
    """Write featurestore.yaml for ``project`` with the chosen online store."""
    path.mkdir(parents=True, exist_ok=True)
    text = _CONFIG.format(project=project, online=_ONLINE[online_store].format())
    (path / "featurestore.yaml").write_text(text)


def scaffold(
    path: Path, *, online_store: str = "embedded", n_transactions: int = 50_000, seed: int = 7
) -> Path:
    """Create the repo folder with config, definitions and a small generated dataset."""
    from featurestore.quickstart import generate_data

    path = path.resolve()
    if (path / "featurestore.yaml").exists():
        raise ConfigError(f"{path} already holds a featurestore.yaml; pick another folder")
    project = "".join(c if c.isalnum() or c in "_-" else "_" for c in path.name) or "features"
    write_config(path, project, online_store)
    shutil.copy(Path(__file__).parent / "templates" / "definitions.py", path / "definitions.py")
    generate_data(path / "data", n_transactions=n_transactions, seed=seed)
    return path
