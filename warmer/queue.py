"""The warm queue: which request the executor fetches next.

A priority queue of :class:`~warmer.model.WarmRequest`, de-duplicated by
``request.identity`` (host, URL and variant), highest priority level first and first
come, first served within a level.  A request may be held back until a time
(``not_before``): that is how retries wait out their backoff.

Sans-I/O (DESIGN rule 2): every method that depends on time takes ``now``.
``now`` is expected not to go backwards; if it does, nothing breaks, delayed
items just wait longer.

Merging a push into an already queued request of the same identity:

- priority: the higher of the two.  An upgraded entry moves to its new level
  but keeps its sequence number, so there it is ordered by when it was *first*
  pushed;
- reason: the reason of whichever push set the (higher) priority; on a tie the
  queued one stays;
- ``refresh``: True if either asked for it;
- ``touch``: True only if both asked for a touch (a fetch is never lost);
- ``ttl``: the smaller of the TTLs given; None only when neither gave one;
- ``not_before``: unchanged.  The first push decides when the entry is ready,
  so a request pushed again while it waits out a retry backoff (a reactive
  strategy keeps asking for a hot, failing URL) does not bypass the backoff.

Implementation: one heap of ready entries ordered by (level, sequence), one
heap of delayed entries ordered by ``not_before``, and a dict from identity to
the live entry.  An entry that moves (upgrade) or leaves (discard) leaves its
old heap item behind; items carry the entry's version and stale ones are
skipped when they surface, or swept out when they outnumber the live ones.
Push, pop and discard are O(log n) amortised.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from warmer.model import WarmIdentity, WarmRequest

Identity = WarmIdentity
# A heap item: (level or not_before, sequence, version, identity).
_Item = TypeVar("_Item", bound=tuple[float, int, int, Identity])

# Sweep stale heap items only past this many, so small queues never bother.
_MIN_STALE_TO_COMPACT = 1024


@dataclass(slots=True)
class _Entry:
    """One queued request and where it currently sits."""

    request: WarmRequest
    level: int  # index into the queue's levels, 0 highest
    seq: int  # order of the first push; FIFO within a level
    not_before: float
    version: int  # the version its one live heap item carries
    delayed: bool  # in the delayed heap (else the ready heap)


class WarmQueue:
    """Priority queue of warm requests: de-duplicated, FIFO per level, delayable."""

    def __init__(self, levels: Sequence[str], max_items: int = 100_000) -> None:
        if not levels:
            raise ValueError("levels: at least one priority level is needed")
        if len(set(levels)) != len(levels):
            raise ValueError(f"levels: duplicate priority names in {list(levels)}")
        if max_items < 1:
            raise ValueError(f"max_items must be at least 1, got {max_items}")
        self.levels: tuple[str, ...] = tuple(levels)
        self.max_items = max_items
        #: Pushes refused because the queue was full.
        self.rejected = 0
        self._rank = {name: i for i, name in enumerate(self.levels)}
        self._entries: dict[Identity, _Entry] = {}
        self._ready: list[tuple[int, int, int, Identity]] = []  # (level, seq, version, id)
        self._delayed: list[tuple[float, int, int, Identity]] = []  # (not_before, seq, ver, id)
        self._depth = [0] * len(self.levels)
        self._stale = 0  # heap items that no longer point at their entry
        self._seq = itertools.count()
        self._version = itertools.count()

    # ------------------------------------------------------------- writing

    def push(self, request: WarmRequest, now: float, not_before: float = 0.0) -> bool:
        """Queue ``request``, or merge it into the queued one of the same identity.

        Returns True when the request is queued (new or merged), False when
        the queue is full (counted in :attr:`rejected`).  ``not_before`` holds
        a new entry back until then.  Raises ValueError for an unknown
        priority name.  The merge rules are in the module docstring.
        """
        level = self._level_of(request.priority)
        identity = request.identity
        entry = self._entries.get(identity)
        if entry is not None:
            self._merge(entry, request, level)
            return True
        if len(self._entries) >= self.max_items:
            self.rejected += 1
            return False
        entry = _Entry(
            request=request,
            level=level,
            seq=next(self._seq),
            not_before=not_before,
            version=0,
            delayed=not_before > now,
        )
        self._entries[identity] = entry
        self._depth[level] += 1
        self._place(entry)
        return True

    def discard(self, identity: Identity) -> bool:
        """Remove the queued request of ``identity``; False if none was queued."""
        entry = self._entries.pop(identity, None)
        if entry is None:
            return False
        self._depth[entry.level] -= 1
        self._stale += 1
        self._maybe_compact()
        return True

    def clear(self) -> int:
        """Remove every queued request; returns how many there were."""
        count = len(self._entries)
        self._entries.clear()
        self._ready.clear()
        self._delayed.clear()
        self._depth = [0] * len(self.levels)
        self._stale = 0
        return count

    # ------------------------------------------------------------- reading

    def pop(self, now: float) -> WarmRequest | None:
        """Remove and return the next ready request, or None if none is ready.

        The next one is the highest priority request whose ``not_before`` has
        passed, the first pushed among those of that level.
        """
        self._promote(now)
        while self._ready:
            _, _, version, identity = heapq.heappop(self._ready)
            entry = self._entries.get(identity)
            if entry is None or entry.version != version:
                self._stale -= 1
                continue
            del self._entries[identity]
            self._depth[entry.level] -= 1
            return entry.request
        return None

    def drain(self, requests: Sequence[WarmRequest], now: float) -> list[WarmRequest]:
        """Push ``requests`` (ready at once) and pop every ready request, in
        :meth:`pop` order: what a runner that fetches at once (the replay)
        takes from the queue.

        When nothing is queued, the order is computed without the heaps (the
        replay asks this before every request); the merge rules are the same.
        Raises ValueError for an unknown priority name, as :meth:`push`.
        """
        if self._entries or len(requests) > self.max_items:
            for request in requests:
                self.push(request, now)
            out = []
            while (popped := self.pop(now)) is not None:
                out.append(popped)
            return out
        if len(requests) == 1:
            self._level_of(requests[0].priority)
            return list(requests)
        rank = self._rank
        # identity -> [level, order of the first push, request as merged]
        merged: dict[Identity, list[Any]] = {}
        for order, request in enumerate(requests):
            level = rank.get(request.priority)
            if level is None:
                self._level_of(request.priority)  # raises, naming it
            identity = request.identity
            entry = merged.get(identity)
            if entry is None:
                merged[identity] = [level, order, request]
                continue
            upgraded = level < entry[0]
            entry[2] = _merged(entry[2], request, upgraded)
            if upgraded:
                entry[0] = level
        if len(merged) == 1:
            return [entry[2] for entry in merged.values()]
        return [entry[2] for entry in sorted(merged.values(), key=_LEVEL_ORDER)]

    def pop_batch(self, now: float, n: int) -> list[WarmRequest]:
        """Remove and return up to ``n`` ready requests, in :meth:`pop` order."""
        batch: list[WarmRequest] = []
        while len(batch) < n:
            request = self.pop(now)
            if request is None:
                break
            batch.append(request)
        return batch

    def next_ready_at(self) -> float | None:
        """When :meth:`pop` can next return something, for a runner to sleep until.

        None when the queue is empty.  When a request is ready already, a time
        not after now (its ``not_before``); otherwise the earliest
        ``not_before`` of the delayed requests.
        """
        ready = self._top_live(self._ready)
        if ready is not None:
            return ready.not_before
        delayed = self._top_live(self._delayed)
        return None if delayed is None else delayed.not_before

    def get(self, identity: Identity) -> WarmRequest | None:
        """The queued request of ``identity`` (as merged so far), if any."""
        entry = self._entries.get(identity)
        return None if entry is None else entry.request

    def depth_by_level(self) -> dict[str, int]:
        """How many requests are queued per priority level (delayed ones included)."""
        return dict(zip(self.levels, self._depth, strict=True))

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, identity: object) -> bool:
        return identity in self._entries

    # ------------------------------------------------------------ internals

    def _level_of(self, priority: str) -> int:
        try:
            return self._rank[priority]
        except KeyError:
            allowed = ", ".join(self.levels)
            raise ValueError(f"unknown priority level {priority!r}; allowed: {allowed}") from None

    def _merge(self, entry: _Entry, request: WarmRequest, level: int) -> None:
        upgraded = level < entry.level
        entry.request = _merged(entry.request, request, upgraded)
        if upgraded:
            self._depth[entry.level] -= 1
            self._depth[level] += 1
            entry.level = level
            self._stale += 1
            self._place(entry)
            self._maybe_compact()

    def _place(self, entry: _Entry) -> None:
        """Push the entry's (new) live item onto its heap."""
        entry.version = next(self._version)
        identity = entry.request.identity
        if entry.delayed:
            item = (entry.not_before, entry.seq, entry.version, identity)
            heapq.heappush(self._delayed, item)
        else:
            heapq.heappush(self._ready, (entry.level, entry.seq, entry.version, identity))

    def _promote(self, now: float) -> None:
        """Move delayed entries whose time has come to the ready heap."""
        delayed = self._delayed
        while delayed and delayed[0][0] <= now:
            _, _, version, identity = heapq.heappop(delayed)
            entry = self._entries.get(identity)
            if entry is None or entry.version != version:
                self._stale -= 1
                continue
            entry.delayed = False
            heapq.heappush(self._ready, (entry.level, entry.seq, entry.version, identity))

    def _top_live(self, heap: list[_Item]) -> _Entry | None:
        """The live entry at the top of ``heap``, dropping stale items above it."""
        while heap:
            _, _, version, identity = heap[0]
            entry = self._entries.get(identity)
            if entry is not None and entry.version == version:
                return entry
            heapq.heappop(heap)
            self._stale -= 1
        return None

    def _maybe_compact(self) -> None:
        # Lazy deletion leaves dead items behind; without a sweep a queue that
        # sees many discards or upgrades but few pops would grow without bound.
        if self._stale < _MIN_STALE_TO_COMPACT or self._stale <= len(self._entries):
            return
        self._ready = [
            (e.level, e.seq, e.version, i) for i, e in self._entries.items() if not e.delayed
        ]
        self._delayed = [
            (e.not_before, e.seq, e.version, i) for i, e in self._entries.items() if e.delayed
        ]
        heapq.heapify(self._ready)
        heapq.heapify(self._delayed)
        self._stale = 0


def _merged(old: WarmRequest, new: WarmRequest, upgraded: bool) -> WarmRequest:
    """A queued request merged with another push of its identity (module docstring)."""
    ttls = [t for t in (old.ttl, new.ttl) if t is not None]
    return dataclasses.replace(
        old,
        priority=new.priority if upgraded else old.priority,
        reason=new.reason if upgraded else old.reason,
        refresh=old.refresh or new.refresh,
        touch=old.touch and new.touch,
        ttl=min(ttls) if ttls else None,
    )


_LEVEL_ORDER: Final = operator.itemgetter(0, 1)
