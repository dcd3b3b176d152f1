"""The offline store: DuckDB over Parquet, point-in-time joins and materialization reads."""

from __future__ import annotations

from featurestore.offline.store import OfflineStore

__all__ = ["OfflineStore"]
