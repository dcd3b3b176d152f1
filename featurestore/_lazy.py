"""Package attributes imported on first use, so importing a package loads no heavy engine."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any


def lazy_attributes(
    package: str, where: dict[str, str], namespace: dict[str, Any]
) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``name`` is taken from the module
    ``where[name]`` (relative to ``package`` when it starts with a dot) and kept in the
    package's ``namespace``, so later uses cost nothing; any other name is an AttributeError."""

    def attribute(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(module, package), name)
        namespace[name] = value
        return value

    return attribute
