"""Where cached responses live: the CacheStore protocol and its backends."""

from proxy.store.base import CacheStore, StoreError, StoreStats
from proxy.store.memory import MemoryStore
from proxy.store.redis import RedisStore

__all__ = ["CacheStore", "MemoryStore", "RedisStore", "StoreError", "StoreStats"]
