"""Request errors the servers map to 4xx; the message names the offending field."""

from __future__ import annotations

from featurestore.errors import FeatureStoreError


class BadRequestError(FeatureStoreError):
    """The request is malformed: a missing or mistyped field (HTTP 400 / INVALID_ARGUMENT)."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class UnsupportedMediaTypeError(BadRequestError):
    """A POST body that is not declared JSON (HTTP 415): the message names its Content-Type."""


class TooManyEntitiesError(BadRequestError):
    """More entities than ``serving.max_entities`` (HTTP 413 / RESOURCE_EXHAUSTED)."""


class NotReadyError(FeatureStoreError):
    """The engine has not finished loading (HTTP 503 / UNAVAILABLE)."""
