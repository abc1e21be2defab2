"""The cache as the proxy sees it: an optional in-process L1 over the store.

Handles what the stores need not know about: secondary keys for ``Vary``
(RFC 9111 §4.1), invalidation of every variant of a URL, the L1 tier, and
turning store failures into misses (counted, never raised to the request).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from proxy import policy
from proxy.entry import CacheEntry, StoredItem, VaryIndex
from proxy.metrics import ProxyMetrics
from proxy.policy import HeaderSource
from proxy.store.base import CacheStore, StoreError
from proxy.store.memory import MemoryStore

log = logging.getLogger(__name__)

#: Variants of a key looked at for one whose content-coding a request accepts.
CODING_CANDIDATES = 8


def _in_process(item: StoredItem) -> StoredItem:
    """``item`` as the in-process tier keeps it: an entry with its fast-lane
    decision made and its head precomputed (DESIGN rule 3)."""
    if isinstance(item, CacheEntry):
        item.prepare_wire()
    return item


class DropListener(Protocol):
    """Told what this cache dropped from the shared store, so the other
    replicas drop their L1 copies too (proxy.fleet.L1Publisher)."""

    def dropped(self, keys: Sequence[str]) -> None:
        """``keys`` were deleted from or rewritten in the store; never awaits."""
        ...

    def bulk(
        self, *, pattern: str | None = None, tag: str | None = None
    ) -> AbstractContextManager[None]:
        """Within: a purge by ``pattern`` or ``tag`` (it may drop many keys)."""
        ...


@dataclass(slots=True)
class Lookup:
    """What the cache holds for a request."""

    entry: CacheEntry | None
    # The URL is cached, but not for this request's Vary field values.
    vary_miss: bool = False


class Cache:
    """Lookups, writes and invalidation over a store (and an L1 before Redis)."""

    def __init__(
        self,
        store: CacheStore,
        metrics: ProxyMetrics,
        *,
        l1: MemoryStore | None = None,
        l1_ttl: float = 1.0,
        match_coding: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self._metrics = metrics
        self._clock = clock
        # With the memory store, the store itself is the in-process tier.
        self._local: MemoryStore | None = store if isinstance(store, MemoryStore) else l1
        # The store is out of process (Redis): L1, when configured, mirrors it.
        self._remote = self._local is not store
        self._l1_ttl = l1_ttl
        # Answer a request from a variant stored for another Accept-Encoding
        # when its content-coding is one the request accepts.
        self._match_coding = match_coding
        self.healthy = True
        #: Told every key dropped from the shared store (set by the app with Redis).
        self.drops: DropListener | None = None

    @property
    def refills_in_process(self) -> bool:
        """A lookup copies what it reads from the store into the in-process tier
        (Redis with L1), so a ``peek`` after it finds it."""
        return self._remote and self._local is not None and self._l1_ttl > 0

    def peek(self, key: str) -> StoredItem | None:
        """The in-process item under ``key``, without awaiting (the hit path)."""
        if self._local is None:
            return None
        return self._local.get_nowait(key)

    async def _get(self, key: str) -> StoredItem | None:
        item = self.peek(key)
        if item is not None or not self._remote:
            return item
        return await self._get_remote(key)

    async def _get_remote(self, key: str) -> StoredItem | None:
        """``key`` from the out-of-process store, mirrored into L1."""
        item = await self._read_store(self.store.get, key, "get")
        if item is not None and self._local is not None and self._l1_ttl > 0:
            ttl = min(self._l1_ttl, item.expires_at - self._clock())
            if ttl > 0:
                self._local.put_nowait(key, _in_process(item), ttl)
        return item

    async def lookup(
        self, key: str, request_headers: HeaderSource, *, from_store: bool = False
    ) -> Lookup:
        """The entry for this request, following a Vary index to the variant.

        ``from_store``: read past the in-process tier (what another replica
        just stored is not in it yet; a fleet fill waits for that).
        """
        if not self.healthy and self._remote:
            # Known down: pass through at once instead of waiting for a timeout
            # per request; the health watcher notices when it is back.
            return Lookup(None)
        try:
            # The in-process tier answers without awaiting (every warm fill
            # looks up first, most often for nothing).
            past_l1 = from_store and self._remote
            item = None if past_l1 else self.peek(key)
            if item is None and self._remote:
                item = await self._get_remote(key)
            return await self._select(
                key, item, request_headers, self._get_remote if past_l1 else self._get
            )
        except StoreError:
            return Lookup(None)

    async def _select(
        self,
        key: str,
        item: StoredItem | None,
        request_headers: HeaderSource,
        get: Callable[[str], Awaitable[StoredItem | None]],
    ) -> Lookup:
        """What answers this request, given ``item``, what ``key`` holds:
        itself, or through its Vary index the variant ``get`` reads."""
        if isinstance(item, VaryIndex):
            values = policy.request_vary_values(item.names, request_headers)
            variant = await get(policy.variant_key(key, item.generation, values))
            exact = (
                variant
                if isinstance(variant, CacheEntry) and variant.vary_values == values
                else None
            )
            if exact is not None and (not self._match_coding or exact.fresh_until > self._clock()):
                return Lookup(exact)
            if self._match_coding and "accept-encoding" in item.names:
                # The exact variant is missing or stale: another variant
                # of an acceptable coding may be fresh (one a warm fetch
                # or another browser stored), and a fresh answer beats
                # revalidating a stale one.  The stale exact variant is
                # kept for revalidation when none is fresher.
                found = await self._by_coding(item, values, get)
                if found is not None and (exact is None or found.fresh_until > exact.fresh_until):
                    return Lookup(found)
            if exact is not None:
                return Lookup(exact)
            return Lookup(None, vary_miss=True)
        if item is not None and not policy.vary_matches(item, request_headers):
            return Lookup(None, vary_miss=True)
        return Lookup(item)

    def answers(self, entry: CacheEntry, request_headers: HeaderSource) -> bool:
        """Whether ``entry``, once stored, is what a lookup would answer this
        request with by its Vary fields: they match (RFC 9111 §4.1), or, when
        matching by coding, they differ only in an Accept-Encoding that
        accepts the entry's coding (``policy.serves_by_coding``).  A request
        that waited for another's fill shares it on the same terms
        (proxy.filler), instead of fetching a variant the cache already holds."""
        if not entry.vary:
            return True
        values = policy.request_vary_values(entry.vary, request_headers)
        if values == entry.vary_values:
            return True
        if not self._match_coding or "accept-encoding" not in entry.vary:
            return False
        return policy.serves_by_coding(entry, values, entry.vary.index("accept-encoding"))

    async def touch(self, key: str, request_headers: HeaderSource) -> CacheEntry | None:
        """The entry this request would be answered with, fresh or not, looked
        up so that the store counts it used: what keeps a key cached under
        eviction without fetching it (warmer.retention).

        With Redis the lookup reads Redis itself, past the in-process tier
        (under an LRU or LFU ``maxmemory-policy`` a read is what counts as a
        use), and only the heads of the index and the variant: the entry
        returned has its body left out (empty), for its freshness only.
        With the memory store the lookup makes the entry most recently used,
        and the touch goes to the store's listener too, so with
        ``--workers`` every worker's copy keeps it.
        """
        if self._remote:
            if not self.healthy:
                return None
            try:
                item = await self._head_remote(key)
                return (await self._select(key, item, request_headers, self._head_remote)).entry
            except StoreError:
                return None
        entry = (await self.lookup(key, request_headers)).entry
        local = self._local
        if entry is not None and local is not None:
            # The lookup made them most recently used here; the store tells
            # the other workers' copies.  The variant is the one the lookup
            # found (matched by coding, it may be another request's), under
            # the key it was stored by (see put).
            keys = [key]
            index = local.get_nowait(key)
            if isinstance(index, VaryIndex):
                keys.append(policy.variant_key(key, index.generation, entry.vary_values))
            local.touch_nowait(keys)
        return entry

    async def _head_remote(self, key: str) -> StoredItem | None:
        """``key``'s item from the out-of-process store, its body left out
        (``CacheStore.head``); never mirrored into L1."""
        return await self._read_store(self.store.head, key, "head")

    async def _read_store(
        self, read: Callable[[str], Awaitable[StoredItem | None]], key: str, operation: str
    ) -> StoredItem | None:
        """``read(key)``, its failure or success counted in the store's health."""
        try:
            item = await read(key)
        except StoreError as exc:
            self._failed(operation, exc)
            raise
        self._succeeded()
        return item

    async def _by_coding(
        self,
        index: VaryIndex,
        values: tuple[str | None, ...],
        get: Callable[[str], Awaitable[StoredItem | None]],
    ) -> CacheEntry | None:
        """A stored variant that differs from the request only in Accept-Encoding
        and whose content-coding the request accepts (``policy.serves_by_coding``):
        the freshest of the newest :data:`CODING_CANDIDATES` variants."""
        at = index.names.index("accept-encoding")
        best: CacheEntry | None = None
        for vkey in index.variant_keys[-CODING_CANDIDATES:][::-1]:
            variant = await get(vkey)
            if (
                isinstance(variant, CacheEntry)
                and policy.serves_by_coding(variant, values, at)
                and (best is None or variant.fresh_until > best.fresh_until)
            ):
                best = variant
        return best

    async def put(self, key: str, entry: CacheEntry) -> bool:
        """Store ``entry`` under ``key`` (or its variant key); False on failure."""
        now = self._clock()
        ttl = entry.expires_at - now
        if ttl <= 0 or not self.healthy:
            return False
        try:
            if entry.vary:
                await self._put_variant(key, entry, ttl, now)
            else:
                await self._put_item(key, entry, ttl)
        except StoreError as exc:
            self._failed("put", exc)
            return False
        self._succeeded()
        self._metrics.stored.inc()
        return True

    async def _put_item(self, key: str, item: StoredItem, ttl: float) -> None:
        if self._remote:
            await self.store.put(key, item, ttl)
            if self._local is not None:
                self._local.delete_nowait(key)
        elif self._local is not None:
            # The store is the in-process MemoryStore: written without its
            # async wrapper, as peek reads it.
            self._local.put_nowait(key, _in_process(item), ttl)

    async def _put_variant(self, key: str, entry: CacheEntry, ttl: float, now: float) -> None:
        current = await self._get(key)
        if isinstance(current, VaryIndex) and current.names == entry.vary:
            index = current
        else:
            # New or changed Vary: a new generation orphans the old variants.
            index = VaryIndex(names=entry.vary, generation=secrets.token_hex(4), expires_at=0.0)
        vkey = policy.variant_key(key, index.generation, entry.vary_values)
        if vkey not in index.variant_keys:
            index.variant_keys.append(vkey)
            # Bound the index: the oldest variants fall out of reach first.
            del index.variant_keys[:-64]
        index.expires_at = max(index.expires_at, entry.expires_at)
        await self._put_item(vkey, entry, ttl)
        await self._put_item(key, index, index.expires_at - now)

    async def invalidate(self, key: str) -> None:
        """Drop ``key`` and every variant of it (RFC 9111 §4.4)."""
        try:
            item = await self._get(key)
            keys = [key]
            if isinstance(item, VaryIndex):
                keys.extend(item.variant_keys)
            for k in keys:
                await self.store.delete(k)
                if self._remote and self._local is not None:
                    self._local.delete_nowait(k)
        except StoreError as exc:
            self._failed("delete", exc)
            return
        self._announce(keys)
        self._succeeded()
        self._metrics.invalidations.inc()

    async def read(self, key: str) -> StoredItem | None:
        """The item under ``key``, the in-process tier first.  Raises StoreError."""
        return await self._get(key)

    async def remove(self, keys: Sequence[str]) -> int:
        """Delete ``keys`` from the store and from L1 (a purge); how many the
        store held.  Raises StoreError."""
        try:
            removed = await self.store.delete_many(keys)
        except StoreError as exc:
            self._failed("delete", exc)
            raise
        if self._remote and self._local is not None:
            self._local.delete_many_nowait(keys)
        self._announce(keys)
        self._succeeded()
        return removed

    async def rewrite(self, key: str, entry: CacheEntry) -> None:
        """Store ``entry`` again under ``key`` until its ``expires_at`` (a soft
        purge's staled copy), dropping any L1 copy.  Raises StoreError."""
        try:
            await self._put_item(key, entry, entry.expires_at - self._clock())
        except StoreError as exc:
            self._failed("put", exc)
            raise
        self._announce([key])
        self._succeeded()

    def purging(
        self, *, pattern: str | None = None, tag: str | None = None
    ) -> AbstractContextManager[None]:
        """Wrap a purge by ``pattern`` or ``tag``: the other replicas may be
        told the selector rather than every key (a bounded message)."""
        if self.drops is None:
            return contextlib.nullcontext()
        return self.drops.bulk(pattern=pattern, tag=tag)

    def _announce(self, keys: Sequence[str]) -> None:
        # Only the shared store has other readers with an L1 of their own.
        if self.drops is not None and self._remote and keys:
            self.drops.dropped(keys)

    async def keys(self, pattern: str) -> AsyncIterator[str]:
        """Primary keys in the store matching a glob (variant keys left out)."""
        async for key in self.store.scan(pattern):
            if "#v" not in key:
                yield key

    async def check_health(self) -> bool:
        healthy = await self.store.health()
        if healthy != self.healthy:
            log.warning("cache store %s", "recovered" if healthy else "is unreachable")
        self.healthy = healthy
        self._metrics.store_up.set(1 if healthy else 0)
        return healthy

    def _failed(self, operation: str, exc: StoreError) -> None:
        self._metrics.store_errors.labels(operation).inc()
        if self.healthy:
            log.warning("cache store %s failed: %s", operation, exc)
        self.healthy = False
        self._metrics.store_up.set(0)

    def _succeeded(self) -> None:
        if not self.healthy:
            log.warning("cache store recovered")
            self.healthy = True
            self._metrics.store_up.set(1)
