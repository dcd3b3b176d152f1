"""Errors of the model registry and runtime (subclasses of the package's one error root)."""

from __future__ import annotations

import os
import re

from featurestore.errors import FeatureStoreError


class ModelRegistryError(FeatureStoreError):
    """A model artifact, version or alias is missing, invalid or does not fit its features."""


class ModelNotFoundError(ModelRegistryError):
    """A model name, version or alias that the registry does not hold."""


class ModelLoadError(ModelRegistryError):
    """A model artifact could not be loaded or failed its warm-up prediction."""


class ModelExplainError(ModelRegistryError):
    """A request asked a model that cannot explain its scores for feature contributions (400)."""


class ModelPredictError(FeatureStoreError):
    """A loaded model raised while scoring a request's rows (HTTP 500 / INTERNAL, with why)."""


def one_line(exc: BaseException | str) -> str:
    """``exc``'s message on one line, at most 300 characters: what a one-line error quotes.

    A native library's stack trace (XGBoost appends one, frame by frame) is left out."""
    text = str(exc).split("Stack trace:", 1)[0]
    return " ".join(text.split())[:300] or "no message"


# an absolute path's folders: a "/" that starts no word, URL or relative path, then folder names
_FOLDERS = re.compile(r"(?<![\w.~:/-])/(?:[^/\s'\"`()\[\]{},;:]+/)+")
# an absolute path quoted whole, as Python's OSError and repr() show one (spaces and all)
_QUOTED = re.compile(r"(?<![\w.~:/-])(['\"])(/[^'\"\n]*/)([^/'\"\n]*)\1")


def without_paths(text: str, *folders: str | os.PathLike[str]) -> str:
    """``text`` with server paths taken out, for a message clients see (the log keeps the
    full one): first each of ``folders`` dropped from the paths inside it, by its known
    spelling, spaces and all (a path in it becomes relative to it), then any other absolute
    path cut to its last name (a quoted one whole, spaces and all)."""
    named: set[str] = set()
    for folder in folders:
        given = os.fspath(folder)
        if given.strip("/"):  # never "/" (or ""): that would take every path apart
            named.update(
                f.rstrip("/") for f in (given, os.path.abspath(given), os.path.realpath(given))
            )
    for folder in sorted(named, key=len, reverse=True):  # a folder inside another: whole
        # whole: not the end of a longer path, nor cut short in a longer name
        inside = re.compile(r"(?<![\w.~-])" + re.escape(folder) + r"(/|(?![\w.-]))")
        text = inside.sub(lambda m: "" if m.group(1) else ".", text)
    text = _QUOTED.sub(lambda m: m.group(1) + m.group(3) + m.group(1), text)
    return _FOLDERS.sub("", text)
