"""Test helper for the model registry: register a model for a feature service and serve it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from featurestore.store import FeatureStore


def publish(
    store: FeatureStore,
    name: str,
    *,
    flavor: str,
    artifact: Path,
    service: str,
    alias: str | None = "production",
) -> int:
    """Register ``artifact`` as a new version of model ``name`` reading feature service
    ``service`` and point the model's ``alias`` (production; None: none) at it; the version."""
    from featurestore.online.models.repo import register_model

    mv = register_model(store, name, flavor=flavor, artifact=artifact, service=service, alias=alias)
    return mv.version
