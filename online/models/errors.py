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


def one_line(exc: BaseException) -> str:
    """``exc``'s message on one line, at most 300 characters: what a one-line error quotes."""
    return " ".join(str(exc).split())[:300] or "no message"


# an absolute path's folders: a "/" that starts no word, URL or relative path, then folder names
_FOLDERS = re.compile(r"(?<![\w.~:/-])/(?:[^/\s'\"`()\[\]{},;:]+/)+")


def without_paths(text: str, *folders: str | os.PathLike[str]) -> str:
    """``text`` with server paths taken out, for a message clients see (the log keeps the
    full one): each of ``folders`` dropped from the paths inside it (a path in it becomes
    relative to it), then any other absolute path cut to its last name."""
    named = {str(f).rstrip("/") for f in folders if str(f).strip("/")}
    for folder in sorted(named, key=len, reverse=True):  # a folder inside another: whole
        inside = re.compile(re.escape(folder) + r"(/|(?![\w.-]))")
        text = inside.sub(lambda m: "" if m.group(1) else ".", text)
    return _FOLDERS.sub("", text)
