"""The online store interface, the per-value lookup status, and the store factory."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from enum import IntEnum
from typing import TYPE_CHECKING

from featurestore.errors import ConfigError

if TYPE_CHECKING:
    from featurestore.config import RepoConfig


class Status(IntEnum):
    """Why a value was served: found, no row, or a row older than the view's ttl.

    A null value in a present row is PRESENT with value None.
    """

    PRESENT = 0
    NOT_FOUND = 1
    EXPIRED = 2


class OnlineStore(ABC):
    """Key -> row value storage. Keys come from ``online.keys``, values from ``online.codec``."""

    @abstractmethod
    def write_batch(
        self,
        keys: list[bytes],
        values: list[bytes],
        expire_at_ms: list[int | None] | None = None,
    ) -> None:
        """Store values (all-or-nothing per key); ``expire_at_ms`` is a wall-clock ms deadline."""

    def write_newer(
        self,
        keys: list[bytes],
        values: list[bytes],
        expire_at_ms: list[int | None] | None = None,
    ) -> int:
        """Store each row (``online.codec`` values) unless its key holds a newer one
        (``codec.row_replaces``); returns how many were written.

        The stores of this package check and write in one atomic step, so concurrent writers
        of one key never put an older row over a newer one. This default, for other stores,
        reads and then writes: a writer coming in between can still win."""
        from featurestore.online.codec import row_replaces

        stored = self.read(keys)
        keep = [
            i for i, (v, s) in enumerate(zip(values, stored, strict=True)) if row_replaces(v, s)
        ]
        if len(keep) < len(keys):
            keys = [keys[i] for i in keep]
            values = [values[i] for i in keep]
            expire_at_ms = None if expire_at_ms is None else [expire_at_ms[i] for i in keep]
        if keys:
            self.write_batch(keys, values, expire_at_ms)
        return len(keys)

    @abstractmethod
    def read(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """Values for ``keys`` in order (None: missing or expired), in one round trip."""

    @abstractmethod
    def delete_view(self, project: str, view_name: str) -> int:
        """Delete every key of one view of one project; returns how many were deleted."""

    def delete_prefix(self, project: str, view_name: str) -> int:
        """Alias of :meth:`delete_view`."""
        return self.delete_view(project, view_name)

    def purge_expired(self, *, now_ms: int | None = None, batch: int = 10_000) -> int:
        """Delete values whose expiry is at or before ``now_ms`` (default: now); returns how
        many. This default deletes nothing and returns 0: it is for stores that expire keys by
        themselves (Redis, Redis Cluster); the embedded store overrides it."""
        return 0

    @abstractmethod
    def ping(self) -> None:
        """Raise OnlineStoreUnavailableError unless the store answers."""

    @abstractmethod
    def close(self) -> None:
        """Release connections / file handles; the store may be reopened by using it again."""

    def __enter__(self) -> OnlineStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_online_store(config: RepoConfig) -> OnlineStore:
    """The store ``config.online_store.type`` names; nothing connects until first use."""
    cfg = config.online_store
    if cfg.type == "embedded":
        from featurestore.online.embedded import EmbeddedOnlineStore

        return EmbeddedOnlineStore(config.resolve(cfg.path), map_size=cfg.map_size)
    if cfg.type == "redis":
        from featurestore.online.redis_store import RedisOnlineStore

        return RedisOnlineStore.from_config(cfg)
    if cfg.type == "redis_cluster":
        from featurestore.online.redis_store import RedisClusterOnlineStore

        return RedisClusterOnlineStore.from_config(cfg)
    raise ConfigError(
        f"online_store.type is {cfg.type!r}; expected embedded, redis or redis_cluster"
    )
