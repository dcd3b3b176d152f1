"""Serving: one engine shared by the REST and gRPC servers and in-process callers.

The servers live in ``featurestore.online.serving.rest`` (FastAPI) and ``.grpc_server``
(grpc.aio); they import their frameworks, so they are not imported here.
"""

from __future__ import annotations

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
