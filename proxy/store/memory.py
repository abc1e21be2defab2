"""The embedded store: a byte- (and optionally count-) bounded, LRU-evicting,
per-item-TTL map in this process.

It is the default store (no server needed) and the optional L1 tier in front of
Redis.  The proxy's hit path calls :meth:`MemoryStore.get_nowait` without
awaiting, so that method is one dict lookup, one time comparison and an LRU
touch; the async methods of the :class:`~proxy.store.base.CacheStore` protocol
wrap the synchronous ones.

Items are stored by reference, not copied: callers must not mutate an item after
``put`` or after getting it back.

With ``count_overhead`` (how the proxy builds it) an item counts what it really
occupies in this process, :func:`memory_cost`, so ``max_bytes`` bounds the
store's memory and not just the response bytes it holds.
"""

from __future__ import annotations

import asyncio
import fnmatch
import heapq
import math
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from typing import NamedTuple, Protocol

from proxy.entry import CacheEntry, StoredItem, VaryIndex
from proxy.store.base import StoreStats

# scan() yields to the event loop this often so one big scan cannot stall the
# proxy's hit path.
_SCAN_YIELD_EVERY = 1024

# What an item held here costs beyond ``item.size`` (which counts the body, the
# header characters and 256 bytes), measured with tracemalloc on entries built
# as a fill builds them and hit once (a hit caches the header multidict):
# - per item: the key string's object header, the slot, the expiry-heap record
#   and the OrderedDict's share, net of the 256 bytes ``size`` already counts
#   (measured about 110 bytes plus the key's characters);
# - per stored header field: its (name, value) tuple, the two string objects
#   and its share of the cached multidict (measured 224 bytes with the field
#   names aiohttp shares, 320 with names of the origin's own).
# Rounded up so that a full store holds 0.9 times ``max_bytes`` filled through
# the proxy from an aiohttp origin, and at most 1.15 times it with fields of
# every response's own (see docs/operations.md, "Sizing memory").
ITEM_OVERHEAD = 160
FIELD_OVERHEAD = 280
# A Vary index: each variant key is a string object and a list slot.
VARIANT_KEY_OVERHEAD = 64
# A cache tag: its string object, its slot in the entry's tuple and the key's
# slot in the tag index's set (estimated from object sizes, not measured:
# tags are few per entry).
TAG_OVERHEAD = 120
# Resident memory (RSS) a full store adds to the process, per byte of
# max_bytes: measured 1.23 with 1 KB responses of 7 and of 27 header fields,
# filled three times over (eviction leaves the allocator some fragmentation).
RESIDENT_FACTOR = 1.25


def memory_cost(key: str, item: StoredItem) -> int:
    """Estimated bytes ``item`` stored under ``key`` occupies in this process.

    ``item.size`` plus the Python objects around it (see ``FIELD_OVERHEAD``):
    for 1 KB responses with a handful of header fields the objects cost more
    than the body, so counting ``size`` alone lets the memory grow to about 2.5
    times ``max_bytes``.
    """
    if isinstance(item, VaryIndex):
        per_part = VARIANT_KEY_OVERHEAD * len(item.variant_keys)
    else:
        per_part = FIELD_OVERHEAD * len(item.headers)
        per_part += sum(TAG_OVERHEAD + len(tag) for tag in item.tags)
    return item.size + ITEM_OVERHEAD + len(key) + per_part


class StoreListener(Protocol):
    """Told of every explicit write, delete and touch (not of evictions or expiry):
    how the worker relay (proxy/worker_relay.py) hands them to the other
    workers' stores.  Called synchronously; must never await or raise."""

    def stored(self, key: str, item: StoredItem, deadline: float) -> None:
        """``item`` is held under ``key`` until the clock reaches ``deadline``."""
        ...

    def removed(self, keys: Sequence[str]) -> None:
        """``keys`` hold nothing now (deleted, or overwritten by an item not stored)."""
        ...

    def touched(self, keys: Sequence[str]) -> None:
        """``keys`` were marked used to keep them cached (a warmer's touch)."""
        ...


class _Slot(NamedTuple):
    item: StoredItem
    # What the item counts against max_bytes.
    size: int
    # Clock second from which the item is expired (``now >= deadline``).
    deadline: float
    # Counts against ``max_entries``: a response (a Vary index does not).
    counted: bool
    # The entry's cache tags, as indexed (``MemoryStore.tagged``).
    tags: tuple[str, ...] = ()


class MemoryStore:
    """A CacheStore held in process memory, bounded by the sum of ``item.size``
    (with ``count_overhead``: of :func:`memory_cost`) and, when ``max_entries``
    is set, by the number of responses it holds.

    When a new item does not fit, every expired item is dropped first, then the
    least recently used live items until it fits.  Items bigger than
    ``max_entry_bytes`` (or than ``max_bytes``) are not stored; the ``rejected``
    counter says how often that happened.  Expired items are never returned.

    ``max_entries`` counts responses: each variant of a URL is one, while the
    small index of a URL's variants (:class:`~proxy.entry.VaryIndex`) is not
    counted, so a URL with one variant counts once, as a cache that ignores
    ``Vary`` would count it.  An index is read before its variants on every
    lookup, so it is never older than its most recent variant: when it reaches
    the least recently used end it goes with that variant.  ``clock`` is the
    time expiry is measured on (the proxy's clock).

    ``count_overhead``: count each item's estimated Python object overhead
    too (:func:`memory_cost`), so ``max_bytes`` bounds the memory the items
    really take; without it an item counts ``item.size`` exactly.
    ``max_entry_bytes`` always applies to ``item.size`` (the response).
    """

    def __init__(
        self,
        max_bytes: int,
        max_entry_bytes: int,
        clock: Callable[[], float] = time.time,
        *,
        max_entries: int = 0,
        count_overhead: bool = False,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        if max_entry_bytes <= 0:
            raise ValueError(f"max_entry_bytes must be positive, got {max_entry_bytes}")
        if max_entries < 0:
            raise ValueError(f"max_entries must be 0 (no bound) or positive, got {max_entries}")
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_entry_bytes
        #: Most responses held (0: bounded by ``max_bytes`` alone).
        self.max_entries = max_entries
        self.count_overhead = count_overhead
        self._clock = clock
        # Recency order: the first key is the least recently used.
        self._items: OrderedDict[str, _Slot] = OrderedDict()
        # Min-heap of (deadline, key) so making room can find expired items
        # without walking the whole map.  Records go stale when a key is
        # overwritten or dropped; they are recognised by their deadline no
        # longer matching the slot's and skipped.
        self._deadlines: list[tuple[float, str]] = []
        self._bytes = 0
        self._counted = 0  # items that count against max_entries
        # tag -> keys of the live items carrying it, kept exact on every put,
        # delete, eviction and expiry, so a purge by tag reads one set.
        self._tagged: dict[str, set[str]] = {}
        #: Live items dropped to make room for new ones.
        self.evictions = 0
        #: Told the key of each live item dropped to make room (not of expired
        #: ones), e.g. to follow what happened to warmed entries.
        self.on_evict: Callable[[str], None] | None = None
        #: Items not stored because they were bigger than ``max_entry_bytes``.
        self.rejected = 0
        #: Expired items dropped (on access, or to make room).
        self.expired = 0
        #: Told of explicit writes and deletes (the worker relay), if set.
        self.listener: StoreListener | None = None

    # -- synchronous API (the hit path) ------------------------------------

    def get_nowait(self, key: str) -> StoredItem | None:
        """The live item under ``key``, or None; marks it most recently used."""
        slot = self._items.get(key)
        if slot is None:
            return None
        if self._clock() >= slot.deadline:
            self._drop(key, slot)
            self.expired += 1
            return None
        self._items.move_to_end(key)
        return slot.item

    def touch_nowait(self, keys: Sequence[str]) -> None:
        """Mark the live items under ``keys`` most recently used, as a read
        does, and tell the listener: a touch that keeps an entry cached
        (warmer.retention) keeps it in every worker's copy of the store."""
        items = self._items
        for key in keys:
            if key in items:
                items.move_to_end(key)
        if self.listener is not None and keys:
            self.listener.touched(keys)

    def put_nowait(self, key: str, item: StoredItem, ttl: float) -> None:
        """Store ``item`` under ``key`` for ``ttl`` seconds, evicting as needed.

        A ``ttl`` of zero or less (already expired) or an item over
        ``max_entry_bytes`` stores nothing, but still removes what ``key``
        held, as any overwrite would.
        """
        if math.isnan(ttl):
            raise ValueError("ttl is NaN")
        old = self._items.get(key)
        if old is not None:
            # The new item supersedes the old one even when it is not stored
            # itself: serving the old response would serve what the caller
            # just replaced.
            self._drop(key, old)
        listener = self.listener
        if ttl <= 0:
            if listener is not None:
                listener.removed((key,))
            return
        size = memory_cost(key, item) if self.count_overhead else item.size
        if item.size > self.max_entry_bytes or size > self.max_bytes:
            self.rejected += 1
            if listener is not None:
                listener.removed((key,))
            return
        now = self._clock()
        counted = not isinstance(item, VaryIndex)
        if self._bytes + size > self.max_bytes or (
            counted and self.max_entries and self._counted >= self.max_entries
        ):
            self._make_room(size, counted, now)
        deadline = now + ttl
        tags = item.tags if isinstance(item, CacheEntry) else ()
        self._items[key] = _Slot(item, size, deadline, counted, tags)
        self._bytes += size
        self._counted += counted
        for tag in tags:
            self._tagged.setdefault(tag, set()).add(key)
        heapq.heappush(self._deadlines, (deadline, key))
        self._compact_deadlines()
        if listener is not None:
            listener.stored(key, item, deadline)

    def delete_nowait(self, key: str) -> None:
        """Remove ``key`` if present."""
        slot = self._items.get(key)
        if slot is not None:
            self._drop(key, slot)
        if self.listener is not None:
            self.listener.removed((key,))

    def delete_many_nowait(self, keys: Sequence[str]) -> int:
        """Remove every one of ``keys``; how many were held (expired ones included)."""
        removed = 0
        for key in keys:
            slot = self._items.get(key)
            if slot is not None:
                self._drop(key, slot)
                removed += 1
        if self.listener is not None and keys:
            self.listener.removed(keys)
        return removed

    def delete_where(self, selected: Callable[[str], bool]) -> int:
        """Remove every key ``selected`` holds for; how many were held.

        Walks every key (O(items)): for the rare drop by glob that another
        replica's purge publishes, not for a request's path.
        """
        return self.delete_many_nowait([key for key in self._items if selected(key)])

    def clear(self) -> int:
        """Remove everything (expired items too); how many items were held."""
        held = len(self._items)
        self._items.clear()
        self._deadlines.clear()
        self._tagged.clear()
        self._bytes = 0
        self._counted = 0
        return held

    def tagged_nowait(self, tag: str) -> list[str]:
        """Keys of the live items carrying ``tag`` (exact: the index is kept on every change)."""
        keys = self._tagged.get(tag)
        if not keys:
            return []
        now = self._clock()
        return [k for k in keys if now < self._items[k].deadline]

    def purge_expired(self) -> int:
        """Drop every expired item now; returns how many were dropped."""
        return self._drop_expired(self._clock())

    @property
    def bytes_used(self) -> int:
        """What the items held count against ``max_bytes`` (expired ones not yet
        dropped included): their ``size``, or their :func:`memory_cost`."""
        return self._bytes

    def __len__(self) -> int:
        """Items held, expired ones not yet dropped included."""
        return len(self._items)

    @property
    def entries(self) -> int:
        """Responses held (what ``max_entries`` bounds), expired ones not yet dropped included."""
        return self._counted

    # -- CacheStore protocol -----------------------------------------------

    async def get(self, key: str) -> StoredItem | None:
        return self.get_nowait(key)

    async def head(self, key: str) -> StoredItem | None:
        # In process nothing is transferred: the item itself.
        return self.get_nowait(key)

    async def put(self, key: str, item: StoredItem, ttl: float) -> None:
        self.put_nowait(key, item, ttl)

    async def delete(self, key: str) -> None:
        self.delete_nowait(key)

    async def delete_many(self, keys: Sequence[str]) -> int:
        return self.delete_many_nowait(keys)

    async def tagged(self, tag: str) -> AsyncIterator[str]:
        for key in self.tagged_nowait(tag):
            yield key

    async def untag(self, tag: str, keys: Sequence[str]) -> None:
        """Nothing to do: the index never names a key whose item lacks the tag."""

    async def scan(self, pattern: str) -> AsyncIterator[str]:
        """Live keys matching the fnmatch glob ``pattern`` (case-sensitive).

        Iterates over a snapshot, so the store may change while the caller
        consumes it; keys deleted or expired meanwhile are not yielded.
        """
        match = re.compile(fnmatch.translate(pattern)).match
        for n, key in enumerate(list(self._items)):
            if n and n % _SCAN_YIELD_EVERY == 0:
                await asyncio.sleep(0)
            if not match(key):
                continue
            slot = self._items.get(key)
            if slot is not None and self._clock() < slot.deadline:
                yield key

    async def health(self) -> bool:
        return True

    async def stats(self) -> StoreStats:
        """Live entries and their bytes (expired items are purged first)."""
        self.purge_expired()
        return StoreStats(entries=len(self._items), bytes=self._bytes, evictions=self.evictions)

    async def close(self) -> None:
        self.clear()

    # -- internals -----------------------------------------------------------

    def _drop(self, key: str, slot: _Slot) -> None:
        # The key's heap record is left behind on purpose (removing it is
        # O(n)); _compact_deadlines bounds how many such records accumulate.
        del self._items[key]
        self._bytes -= slot.size
        self._counted -= slot.counted
        if slot.tags:
            self._untag(key, slot.tags)

    def _untag(self, key: str, tags: tuple[str, ...]) -> None:
        for tag in tags:
            keys = self._tagged.get(tag)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._tagged[tag]

    def _drop_expired(self, now: float) -> int:
        heap = self._deadlines
        dropped = 0
        while heap and heap[0][0] <= now:
            deadline, key = heapq.heappop(heap)
            slot = self._items.get(key)
            if slot is not None and slot.deadline == deadline:
                self._drop(key, slot)
                dropped += 1
        self.expired += dropped
        return dropped

    def _make_room(self, size: int, counted: bool, now: float) -> None:
        """Drop expired items, then least recently used ones, until an item of
        ``size`` bytes (a response when ``counted``) fits."""
        self._drop_expired(now)
        items = self._items
        limit = self.max_entries - 1 if counted and self.max_entries else -1
        while self._bytes + size > self.max_bytes or self._counted > limit >= 0:
            key, slot = items.popitem(last=False)
            self._bytes -= slot.size
            self._counted -= slot.counted
            if slot.tags:
                self._untag(key, slot.tags)
            self.evictions += 1
            if self.on_evict is not None:
                self.on_evict(key)

    def _compact_deadlines(self) -> None:
        # Stale heap records (from overwrites, deletes and evictions) would
        # otherwise grow without bound under a churning workload.
        if len(self._deadlines) > 2 * len(self._items) + 64:
            self._deadlines = [(s.deadline, k) for k, s in self._items.items()]
            heapq.heapify(self._deadlines)
