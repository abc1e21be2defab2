"""The CacheStore protocol every backend implements."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from proxy.entry import StoredItem


class StoreError(Exception):
    """The backend failed (unreachable, timed out, refused).

    Callers treat it as a miss and pass the request through to the origin: a
    broken cache must never break the proxy.
    """


@dataclass(slots=True)
class StoreStats:
    """What a store holds, for metrics and the control API."""

    entries: int
    bytes: int
    evictions: int = 0


class CacheStore(Protocol):
    """Where entries live.  Keys are opaque strings chosen by the cache layer.

    Stores keep an index of the tags of what they hold (``CacheEntry.tags``,
    from the origin's tag header), so a purge by tag finds its keys without
    scanning every key.  The index may name keys that no longer hold an
    entry with that tag (it is cleaned lazily); callers check the entry.
    """

    #: Largest item (``StoredItem.size``) the store accepts; bigger responses
    #: are streamed through, never buffered.
    max_entry_bytes: int

    async def get(self, key: str) -> StoredItem | None:
        """The item under ``key``, or None.  Raises StoreError on failure."""
        ...

    async def head(self, key: str) -> StoredItem | None:
        """The item under ``key``, or None, read like :meth:`get` (it counts
        as a use where the store evicts the least recently used), but a
        store out of process leaves an entry's body out (``body`` empty)
        rather than transfer it.  Raises StoreError."""
        ...

    async def put(self, key: str, item: StoredItem, ttl: float) -> None:
        """Store ``item`` for ``ttl`` seconds (> 0), indexing its tags.  Raises StoreError."""
        ...

    async def delete(self, key: str) -> None:
        """Remove ``key`` if present.  Raises StoreError."""
        ...

    async def delete_many(self, keys: Sequence[str]) -> int:
        """Remove every one of ``keys``; how many were present.  Raises StoreError."""
        ...

    def tagged(self, tag: str) -> AsyncIterator[str]:
        """Keys indexed under ``tag``: every live key whose entry carries it,
        perhaps with keys that no longer do.  Raises StoreError."""
        ...

    async def untag(self, tag: str, keys: Sequence[str]) -> None:
        """Remove ``keys`` from the index of ``tag`` (not the entries).  Raises StoreError."""
        ...

    def scan(self, pattern: str) -> AsyncIterator[str]:
        """Keys matching the glob ``pattern`` (fnmatch syntax: ``*``, ``?``, ``[...]``)."""
        ...

    async def health(self) -> bool:
        """True when the backend answers now."""
        ...

    async def stats(self) -> StoreStats:
        """Entries and bytes held.  Raises StoreError."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
