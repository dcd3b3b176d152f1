"""The error tree: one root, every name ends in ``Error``, messages name the object and the fix."""

from __future__ import annotations


class FeatureStoreError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(FeatureStoreError):
    """featurestore.yaml is missing, unreadable or holds a bad value."""


class DefinitionError(FeatureStoreError):
    """A definition (entity, source, feature view, service) is invalid; raised at plan/apply."""


class RegistryError(FeatureStoreError):
    """The registry is missing, corrupt, or was not applied yet."""


class FeatureNotFoundError(FeatureStoreError):
    """A feature reference names a view or feature that the registry does not hold."""


class EntityDataError(FeatureStoreError):
    """An entity dataframe (spine) or entity row lacks join keys or a usable timestamp."""


class OnlineStoreError(FeatureStoreError):
    """The online store failed to read or write."""


class OnlineStoreUnavailableError(OnlineStoreError):
    """The online store did not answer within the configured time."""


class OfflineStoreError(FeatureStoreError):
    """The offline engine (DuckDB over Parquet) failed on a query."""
