"""A feature repo's model registry: where it lives, and registering a model for a service.

Shared by the ``models`` CLI, the quickstart's demo model, batch scoring and the test and
benchmark helpers, so every path registers against the service's features the same way.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from featurestore.types import NUMERIC_TYPES

if TYPE_CHECKING:
    from featurestore.online.models.registry import ModelRegistry, ModelVersion
    from featurestore.store import FeatureStore


def model_registry(store: FeatureStore) -> ModelRegistry:
    """The model registry folder ``models.path`` of the repo names (default data/models)."""
    from featurestore.online.models.registry import ModelRegistry
    from featurestore.online.serving.config import models_config

    return ModelRegistry(store.config.resolve(models_config(store.config).path))


def service_feature_names(store: FeatureStore, service: str) -> list[str]:
    """The features of a feature service, by bare name, in service order (the model's inputs).

    Raises when one is not a number or bool: models take a float matrix.
    """
    from featurestore.online.models.errors import ModelRegistryError

    names: list[str] = []
    for view, feats in store.resolve_features(service):
        for f in feats:
            dtype = view.field(f).dtype.name
            if dtype not in NUMERIC_TYPES:
                raise ModelRegistryError(
                    f"feature service '{service}' has feature '{view.name}:{f}' of type {dtype}; "
                    "a model takes numbers only: serve it through a service of numeric features"
                )
            names.append(f)
    return names


def register_model(
    store: FeatureStore,
    name: str,
    *,
    flavor: str,
    artifact: str | os.PathLike[str],
    service: str,
    description: str = "",
    alias: str | None = None,
) -> ModelVersion:
    """Register ``artifact`` as the next version of model ``name`` reading feature service
    ``service`` (checked against its features), and point ``alias`` at it when given."""
    reg = model_registry(store)
    mv = reg.register(
        name,
        flavor=flavor,
        artifact=artifact,
        feature_service=service,
        service_features=service_feature_names(store, service),
        description=description,
    )
    if alias:
        reg.set_alias(name, mv.version, alias)
    return mv
