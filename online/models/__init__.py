"""Model registry (versioned artifacts with aliases) and the runtime that serves them warm."""

from __future__ import annotations

from featurestore.online.models.errors import (
    ModelExplainError,
    ModelLoadError,
    ModelNotFoundError,
    ModelPredictError,
    ModelRegistryError,
)
from featurestore.online.models.explain import Explanation
from featurestore.online.models.flavors import FLAVORS, Predictor, load_predictor
from featurestore.online.models.registry import (
    ALIASES,
    Alias,
    ModelEntry,
    ModelRegistry,
    ModelVersion,
    check_features,
    check_scores,
)
from featurestore.online.models.runtime import LoadedModel, ModelRuntime, Route, ShadowRecorder

__all__ = [
    "ALIASES",
    "FLAVORS",
    "Alias",
    "Explanation",
    "LoadedModel",
    "ModelEntry",
    "ModelExplainError",
    "ModelLoadError",
    "ModelNotFoundError",
    "ModelPredictError",
    "ModelRegistry",
    "ModelRegistryError",
    "ModelRuntime",
    "ModelVersion",
    "Predictor",
    "Route",
    "ShadowRecorder",
    "check_features",
    "check_scores",
    "load_predictor",
]
