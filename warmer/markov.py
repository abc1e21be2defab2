"""``markov``: the simplest sequence prefetcher, a baseline to hold ``predictive`` against.

First-order successor prefetch, learned online, defined exactly so its
figures can be repeated:

- **Transitions** are each client's consecutive requests ``A`` then ``B``
  with ``B`` at most :data:`MAX_GAP` seconds (1800) after ``A``.  A request
  for the key the client asked for last (a repeat) makes no transition; it is
  still the client's latest request, so the gap to its next one is measured
  from it.  Requests without a client label make no transitions.  Counts
  ``c(A→B)`` are pooled over all clients.
- **Prefetch**: after every request for ``A`` (from any client, a repeat
  included), ``B = argmax c(A→B)`` is warmed when ``c(A→B) >= 3`` and
  ``c(A→B) / c(A→·) >= 0.3``, where ``c(A→·)`` counts every transition out
  of ``A``.  Ties go to the successor first seen after ``A``.  It is asked for
  whether or not ``B`` is cached: for a fresh entry the warm request is a
  free hint (nothing fetched), as the warm queue treats it.

The counts take the transition that a request completes before the
prediction it triggers (they never involve the same key: ``A→A`` is no
transition), so a request for ``A`` predicts from every transition seen up to
and including it.

Memory is bounded: at most ``max_keys`` keys keep successor counts (the
least recently updated forgotten first), each with at most
``max_successors`` distinct successors (a successor first seen after that
many others still counts in ``c(A→·)`` but is not tracked itself, so the
model is exact for keys with fewer successors), and the last request of at
most ``max_clients`` clients (least recently active forgotten first).

Sans-I/O (DESIGN rule 2): ``observe`` notes the prefetch, ``due`` returns it.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

from warmer.model import Observed, Reason, WarmRequest

#: Longest gap, in seconds, between a client's two requests that makes a transition.
MAX_GAP: Final = 1800.0
#: Transitions ``A→B`` needed before ``B`` is prefetched after ``A``.
MIN_COUNT: Final = 3
#: Share of ``A``'s transitions that must go to ``B``.
MIN_SHARE: Final = 0.3
#: Keys with successor counts kept by default: a catalogue of a few hundred thousand.
MAX_KEYS: Final = 300_000
#: Distinct successors tracked per key.
MAX_SUCCESSORS: Final = 32
#: Clients whose last request is kept.
MAX_CLIENTS: Final = 100_000
#: Prefetches waiting for ``due`` at most (the oldest dropped first).
MAX_PENDING: Final = 10_000


class _Successors:
    """The transitions out of one key: counts in first-seen order, the argmax."""

    __slots__ = ("best", "best_count", "counts", "total")

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}  # insertion order = first seen
        self.total = 0
        self.best = ""
        self.best_count = 0

    def add(self, successor: str, limit: int) -> None:
        self.total += 1
        counts = self.counts
        count = counts.get(successor)
        if count is None:
            if len(counts) >= limit:
                return  # counted in the total only
            count = 0
        count += 1
        counts[successor] = count
        best = self.best
        if count > self.best_count:
            self.best = successor
            self.best_count = count
        elif count == self.best_count and successor != best:
            # A tie: the successor first seen wins.
            for seen in counts:
                if seen == successor:
                    self.best = successor
                    break
                if seen == best:
                    break


class MarkovPrefetch:
    """First-order successor prefetch over every client's transitions (see the module)."""

    def __init__(
        self,
        *,
        max_gap: float = MAX_GAP,
        min_count: int = MIN_COUNT,
        min_share: float = MIN_SHARE,
        max_keys: int = MAX_KEYS,
        max_successors: int = MAX_SUCCESSORS,
        max_clients: int = MAX_CLIENTS,
        priority: str = "low",
    ) -> None:
        if not max_gap >= 0:
            raise ValueError(f"max_gap must be at least 0 seconds, got {max_gap}")
        if min_count < 1:
            raise ValueError(f"min_count must be at least 1, got {min_count}")
        if not 0 <= min_share <= 1:
            raise ValueError(f"min_share must be between 0 and 1, got {min_share}")
        for name, value in (
            ("max_keys", max_keys),
            ("max_successors", max_successors),
            ("max_clients", max_clients),
        ):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        self.max_gap = max_gap
        self.min_count = min_count
        self.min_share = min_share
        self.max_keys = max_keys
        self.max_successors = max_successors
        self.max_clients = max_clients
        self.priority = priority
        self._successors: OrderedDict[str, _Successors] = OrderedDict()
        # client -> (key, ts) of its latest request
        self._last: OrderedDict[str, tuple[str, float]] = OrderedDict()
        # key -> (url, host), only where they are not (key, ""): the live
        # proxy's keys may carry a host, the replay's never do.
        self._where: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._pending: list[WarmRequest] = []
        self.transitions = 0

    def observe(self, event: Observed) -> None:
        """Count the transition ``event`` completes, then note the prefetch it triggers."""
        key = event.key
        if event.url != key or event.host:
            where = self._where
            where[key] = (event.url, event.host)
            where.move_to_end(key)
            if len(where) > self.max_keys:
                where.popitem(last=False)
        client = event.client
        if client:
            last = self._last
            previous = last.get(client)
            ts = event.ts
            if previous is not None:
                before, at = previous
                if before != key and ts - at <= self.max_gap:
                    self._count(before, key)
                last.move_to_end(client)
            last[client] = (key, ts)
            if len(last) > self.max_clients:
                last.popitem(last=False)
        successors = self._successors.get(key)
        if successors is None:
            return
        count = successors.best_count
        if count >= self.min_count and count >= self.min_share * successors.total:
            self._prefetch(successors.best)

    def due(self, now: float) -> list[WarmRequest]:
        """The prefetches noted since the last call."""
        pending = self._pending
        if not pending:
            return pending
        self._pending = []
        return pending

    def filled(self, key: str, url: str, host: str, now: float, fresh_until: float) -> None:
        pass

    def successor(self, key: str) -> str | None:
        """What a request for ``key`` prefetches now (None: nothing)."""
        successors = self._successors.get(key)
        if successors is None:
            return None
        count = successors.best_count
        if count >= self.min_count and count >= self.min_share * successors.total:
            return successors.best
        return None

    def count(self, key: str, successor: str) -> int:
        """``c(key→successor)`` as kept."""
        successors = self._successors.get(key)
        return 0 if successors is None else successors.counts.get(successor, 0)

    def __len__(self) -> int:
        """Keys with successor counts."""
        return len(self._successors)

    def _count(self, before: str, key: str) -> None:
        self.transitions += 1
        table = self._successors
        successors = table.get(before)
        if successors is None:
            successors = table[before] = _Successors()
            if len(table) > self.max_keys:
                table.popitem(last=False)
        else:
            table.move_to_end(before)
        successors.add(key, self.max_successors)

    def _prefetch(self, key: str) -> None:
        url, host = self._where.get(key, (key, ""))
        pending = self._pending
        pending.append(
            WarmRequest(url=url, host=host, priority=self.priority, reason=Reason.PREDICTIVE)
        )
        if len(pending) > MAX_PENDING:
            del pending[: len(pending) - MAX_PENDING]
