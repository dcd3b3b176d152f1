"""Errors of the model registry and runtime (subclasses of the package's one error root)."""

from __future__ import annotations

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
