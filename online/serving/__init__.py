"""Serving: one engine shared by the REST and gRPC servers and in-process callers.

The servers live in ``featurestore.online.serving.rest`` (FastAPI) and ``.grpc_server``
(grpc.aio); they import their frameworks, so they are not imported here. Names resolve
lazily, so reading the serving config (every command's config load does) loads no engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from featurestore._lazy import lazy_attributes

if TYPE_CHECKING:
    from featurestore.online.serving.breaker import BreakerState, CircuitBreaker
    from featurestore.online.serving.config import (
        BreakerConfig,
        ModelsConfig,
        ServingConfig,
        models_config,
        serving_config,
    )
    from featurestore.online.serving.engine import Engine
    from featurestore.online.serving.errors import (
        BadRequestError,
        NotReadyError,
        TooManyEntitiesError,
    )
    from featurestore.online.serving.results import FeatureResult, PredictResult

_WHERE = {
    "BadRequestError": ".errors",
    "BreakerConfig": ".config",
    "BreakerState": ".breaker",
    "CircuitBreaker": ".breaker",
    "Engine": ".engine",
    "FeatureResult": ".results",
    "ModelsConfig": ".config",
    "NotReadyError": ".errors",
    "PredictResult": ".results",
    "ServingConfig": ".config",
    "TooManyEntitiesError": ".errors",
    "models_config": ".config",
    "serving_config": ".config",
}
__all__ = [
    "BadRequestError",
    "BreakerConfig",
    "BreakerState",
    "CircuitBreaker",
    "Engine",
    "FeatureResult",
    "ModelsConfig",
    "NotReadyError",
    "PredictResult",
    "ServingConfig",
    "TooManyEntitiesError",
    "models_config",
    "serving_config",
]


__getattr__ = lazy_attributes(__name__, _WHERE, globals())
