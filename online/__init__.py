"""Online stores (embedded LMDB, Redis, Redis Cluster), the row codec and online lookups.

Names resolve lazily, so ``import featurestore.online`` loads neither redis nor lmdb.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from featurestore._lazy import lazy_attributes

if TYPE_CHECKING:
    from featurestore.online.base import OnlineStore, Status, open_online_store
    from featurestore.online.codec import DecodedRows, RowCodec
    from featurestore.online.embedded import EmbeddedOnlineStore
    from featurestore.online.keys import build_key, build_keys
    from featurestore.online.lookup import OnlineResponse, get_online_features
    from featurestore.online.redis_store import RedisClusterOnlineStore, RedisOnlineStore
    from featurestore.online.writer import write_table

_WHERE = {
    "DecodedRows": ".codec",
    "EmbeddedOnlineStore": ".embedded",
    "OnlineResponse": ".lookup",
    "OnlineStore": ".base",
    "RedisClusterOnlineStore": ".redis_store",
    "RedisOnlineStore": ".redis_store",
    "RowCodec": ".codec",
    "Status": ".base",
    "build_key": ".keys",
    "build_keys": ".keys",
    "get_online_features": ".lookup",
    "open_online_store": ".base",
    "write_table": ".writer",
}
__all__ = [
    "DecodedRows",
    "EmbeddedOnlineStore",
    "OnlineResponse",
    "OnlineStore",
    "RedisClusterOnlineStore",
    "RedisOnlineStore",
    "RowCodec",
    "Status",
    "build_key",
    "build_keys",
    "get_online_features",
    "open_online_store",
    "write_table",
]


__getattr__ = lazy_attributes(__name__, _WHERE, globals())


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
