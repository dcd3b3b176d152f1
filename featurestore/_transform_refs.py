"""Transform references: a function is stored as (definitions file, name) and re-imported lazily.

The registry holds JSON only, so a row transform, ``where`` predicate or on-demand function is
recorded as the file it was defined in (relative to the repo when inside it) plus its Python
name. ``resolve_ref`` imports that file with ``transforms.load_module_from_path`` (the stable
module name numba's disk cache needs) the first time a view using it is read.
"""

from __future__ import annotations

import sys
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from featurestore.errors import DefinitionError

# the repo whose definitions files are being imported (so refs are stored repo-relative)
CURRENT_REPO: ContextVar[Path | None] = ContextVar("featurestore_current_repo", default=None)


def function_ref(obj: Any, repo_path: Path | None) -> dict[str, str]:
    """``{"file", "function"}`` for a RowTransform / OnDemandFeature (its source and name)."""
    t = getattr(obj, "transform", obj)  # an OnDemandFeature wraps a RowTransform
    func = getattr(t, "func", None)
    if func is None:
        raise DefinitionError(f"{obj!r} is not a @transform function; decorate it with @transform")
    path = Path(t.source_file).resolve()
    shown = str(path)
    if repo_path is not None:
        try:
            shown = path.relative_to(Path(repo_path).resolve()).as_posix()
        except ValueError:
            pass
    return {"file": shown, "function": func.__name__}


def resolve_ref(ref: dict[str, str], repo_path: Path | None, what: str) -> Any:
    """The live object ``ref`` names (a RowTransform or OnDemandFeature), importing its file."""
    from featurestore.transforms.on_demand import OnDemandFeature
    from featurestore.transforms.row import RowTransform, load_module_from_path

    path = Path(ref["file"])
    if not path.is_absolute() and repo_path is not None:
        path = Path(repo_path) / path
    if not path.is_file():
        raise DefinitionError(
            f"{what}: definitions file {ref['file']} of function '{ref['function']}' is gone; "
            "restore it or re-run `featurestore apply`"
        )
    module = _loaded_module(path) or load_module_from_path(str(path))
    name = ref["function"]
    found = getattr(module, name, None)
    if not isinstance(found, (RowTransform, OnDemandFeature)):
        found = next(
            (
                v
                for v in vars(module).values()
                if isinstance(v, (RowTransform, OnDemandFeature))
                and getattr(getattr(v, "transform", v), "func", None) is not None
                and getattr(v, "transform", v).func.__name__ == name
            ),
            None,
        )
    if found is None:
        raise DefinitionError(
            f"{what}: function '{name}' is no longer defined in {path.name}; restore it or "
            "re-run `featurestore apply`"
        )
    return found


def _loaded_module(path: Path) -> Any:
    """A module already imported from ``path`` (so a repo's file is not executed twice)."""
    target = path.resolve()
    for mod in list(sys.modules.values()):
        f = getattr(mod, "__file__", None)
        if f and mod.__name__.startswith("_fs_defs_") and Path(f).resolve() == target:
            return mod
    return None
