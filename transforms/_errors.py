"""Errors raised by the transform engine (all under featurestore.errors.FeatureStoreError)."""

from __future__ import annotations

from featurestore.errors import FeatureStoreError


class LateEventError(FeatureStoreError):
    """An event (or a read) is older than the online window state's exact horizon.

    The state keeps events newer than ``watermark - horizon`` (horizon = largest window +
    allowed lateness); anything older can no longer be placed exactly, so it is rejected.
    Raise a larger ``allowed_lateness`` to accept later events, at the cost of memory.
    """
