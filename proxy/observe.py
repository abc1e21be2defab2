"""Access events and their delivery to observers (the warmer is the first).

The proxy emits one :class:`AccessEvent` per request.  Emitting is an append to
a bounded buffer: it never awaits, never calls an observer, and never fails.  A
background task drains the buffer and hands events to each observer; an
observer that raises is logged and counted, and one that is slow only delays
later deliveries, so no response ever depends on an observer (DESIGN rule 3).

An observer takes one event per call, or, subscribed with
:meth:`EventHub.subscribe_batches`, the events of a whole drain in one call,
in order: what it does per call (lookups, checks) is then done once per batch
rather than once per request, which matters on the hit path's core.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

log = logging.getLogger(__name__)


class Outcome(StrEnum):
    """How the cache answered a request."""

    HIT = "hit"  # served from a fresh (or allowed-stale) entry, origin not asked
    MISS = "miss"  # fetched from the origin
    STALE = "stale"  # served stale: while revalidating, or because the origin failed
    REVALIDATED = "revalidated"  # a stale entry confirmed by a 304 from the origin
    BYPASS = "bypass"  # not cacheable by method or request (forwarded as is)


# Not frozen: a frozen dataclass costs several times more to build, and one is
# built per request on the hit path.
@dataclass(slots=True)
class AccessEvent:
    """One proxied request, as the warmer sees it."""

    ts: float  # wall-clock seconds when the request arrived
    key: str  # cache key: the path and query, prefixed by the host with per-host keying
    url: str  # the path and query as requested
    method: str
    # An Outcome's value as a plain str ("hit", ...): observers test it
    # against sets of outcome names several times per event, and only an
    # exact str takes the interpreter's fast path there (a StrEnum member
    # is hashed and compared through slower generic calls).
    outcome: str
    status: int
    latency: float  # seconds until the response was handed over (streamed: relayed whole)
    bytes: int  # body bytes sent (for streamed responses: as far as known)
    client: str  # client id: the configured header's value, else the peer address
    host: str = ""  # the host the origin was told (what a warm fill of ``url`` needs)
    warm: bool = False  # produced by the warmer, not by a user
    # Freshness end of the cached entry this request was answered from or
    # stored (0.0: nothing cached), so the warmer can refresh ahead of expiry.
    fresh_until: float = 0.0
    # The entry answering this request was stored by a warm fetch.
    warmed: bool = False
    # The X-Request-Id the origin was sent, or the client's (hits); "" when none.
    request_id: str = ""
    # The Vary field names (lower-case) of the entry that answered the request
    # or that its fill stored, and this request's normalized values of them
    # (None: the field was absent): which variant clients of the key use.
    # Both are the entry's own tuples, decided when it was stored; empty when
    # no entry is involved (bypass, streamed, not stored) or it does not vary.
    vary: tuple[str, ...] = ()
    vary_values: tuple[str | None, ...] = ()
    # The entry's content-coding ("" none) when it varies on Accept-Encoding:
    # variants that differ only in Accept-Encoding but share a coding are one
    # entry to a cache matching by coding (``cache.vary_accept_encoding``).
    coding: str = ""


Observer = Callable[[AccessEvent], None]
#: Takes the events of one drain, oldest first (a list it must not keep).
BatchObserver = Callable[[Sequence[AccessEvent]], None]


class EventHub:
    """Bounded buffer of events, drained to observers off the request path."""

    def __init__(self, capacity: int = 65536) -> None:
        self._buffer: deque[AccessEvent] = deque(maxlen=capacity)
        self._observers: list[Observer] = []
        self._batch_observers: list[BatchObserver] = []
        self._wakeup = asyncio.Event()
        self.emitted = 0
        self.dropped = 0
        self.observer_errors = 0

    def subscribe(self, observer: Observer) -> None:
        self._observers.append(observer)

    def subscribe_batches(self, observer: BatchObserver) -> None:
        """Hand ``observer`` the events of each drain at once; if it raises,
        that is one error and the rest of that batch is not seen by it."""
        self._batch_observers.append(observer)

    def emit(self, event: AccessEvent) -> None:
        """Record an event; O(1), never awaits, never raises."""
        if len(self._buffer) == self._buffer.maxlen:
            self.dropped += 1  # the oldest is pushed out: observers are behind
        self._buffer.append(event)
        self.emitted += 1
        if not self._wakeup.is_set():
            self._wakeup.set()

    def drain(self, limit: int | None = None) -> int:
        """Deliver up to ``limit`` buffered events (all when None); returns how many."""
        buffer = self._buffer
        count = len(buffer) if limit is None else min(limit, len(buffer))
        if not count:
            return 0
        popleft = buffer.popleft
        batch = [popleft() for _ in range(count)]
        for batch_observer in self._batch_observers:
            try:
                batch_observer(batch)
            except Exception:
                self.observer_errors += 1
                log.exception("observer %r failed", batch_observer)
        for observer in self._observers:
            for event in batch:
                try:
                    observer(event)
                except Exception:
                    self.observer_errors += 1
                    log.exception("observer %r failed", observer)
        return count

    async def run(self) -> None:
        """Deliver events until cancelled, yielding to the loop between batches."""
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            self.drain(limit=256)
            if self._buffer:
                # More than a batch is waiting: let requests run, then go on.
                self._wakeup.set()
                await asyncio.sleep(0)
