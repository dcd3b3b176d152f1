"""featurestore: one set of feature definitions for training sets and online serving.

Heavy engines (DuckDB, polars, Redis, LMDB) load on first use, so importing this is cheap;
``FeatureStore`` (and numpy under it) loads when first named, so definitions files and
``featurestore --help`` do not pay for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from featurestore._lazy import lazy_attributes
from featurestore.config import RepoConfig, load_config
from featurestore.entity import Entity
from featurestore.errors import (
    ConfigError,
    DefinitionError,
    EntityDataError,
    FeatureNotFoundError,
    FeatureStoreError,
    OfflineStoreError,
    OnlineStoreError,
    OnlineStoreUnavailableError,
    RegistryError,
)
from featurestore.feature_service import FeatureService
from featurestore.feature_view import FeatureView
from featurestore.field import Field
from featurestore.on_demand_view import OnDemandFeatureView
from featurestore.sources import DuckDBSource, ParquetSource, StreamSource
from featurestore.transforms import (
    Aggregation,
    OnDemandFeature,
    RequestSource,
    RowTransform,
    on_demand_feature,
    transform,
)
from featurestore.types import (
    Array,
    Bool,
    Bytes,
    Float32,
    Float64,
    Int32,
    Int64,
    String,
    UnixTimestamp,
)

if TYPE_CHECKING:
    from featurestore.store import FeatureStore, MaterializeResult

_LAZY = {"FeatureStore": "featurestore.store", "MaterializeResult": "featurestore.store"}

__all__ = [
    "Aggregation",
    "Array",
    "Bool",
    "Bytes",
    "ConfigError",
    "DefinitionError",
    "DuckDBSource",
    "Entity",
    "EntityDataError",
    "FeatureNotFoundError",
    "FeatureService",
    "FeatureStore",
    "FeatureStoreError",
    "FeatureView",
    "Field",
    "Float32",
    "Float64",
    "Int32",
    "Int64",
    "MaterializeResult",
    "OfflineStoreError",
    "OnDemandFeature",
    "OnDemandFeatureView",
    "OnlineStoreError",
    "OnlineStoreUnavailableError",
    "ParquetSource",
    "RegistryError",
    "RepoConfig",
    "RequestSource",
    "RowTransform",
    "StreamSource",
    "String",
    "UnixTimestamp",
    "load_config",
    "on_demand_feature",
    "transform",
]


# FeatureStore and MaterializeResult, imported on first use
__getattr__ = lazy_attributes(__name__, _LAZY, globals())


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
