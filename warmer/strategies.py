"""Reactive strategies: what the traffic itself says should be warmed.

Both are sans-I/O (DESIGN rule 2): they observe access events and, asked with
``due(now)``, return the warm requests whose time has come.  Each follows a
bounded number of keys (least recently seen forgotten first) and keeps a heap
of when each key is due, so ``due`` costs O(log n) per request it returns,
whatever the number of keys followed.

- :class:`RefreshAhead`: an entry hit at least ``min_hits`` times in its
  current lifetime is re-fetched when less than ``fraction`` of that lifetime
  is left, so popular entries never go cold.
- :class:`MissReactive`: a key whose misses in the tracker's window exceed
  ``threshold`` is warmed again as soon as its entry expires, so repeated
  misses stop.  Nothing is asked for while the entry is fresh.

Both pay for themselves (:mod:`warmer.precision`): each follows its own warms
until they are used (hit when the key would have missed) or not (expired,
evicted, replaced), measures the precision of each *class* of its decisions,
and stops warming for a class whose precision stays below its floor (but for
one decision in 16, then fewer, which keep the class measured, so it reopens
when the traffic changes).  The classes: for refresh-ahead, the entry's hits
in its lifetime (1, 2-3, 4-7, ... up to 32 and more); for miss-reactive, the
key's misses in the window (bucketed the same way); each with whether the
key's previous warm was used, not used, or is its first, and whether its
entry is likely evicted.  The floor is ``min_precision``, raised for a key
likely evicted to what displacing another entry costs on this cache.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from warmer.model import Observed, Reason, WarmRequest
from warmer.precision import (
    DEFAULT_MIN_PRECISION,
    DisplacementCost,
    PrecisionGate,
    WarmWatch,
    bucket,
)

_CACHED_OUTCOMES = frozenset({"hit", "miss", "stale", "revalidated"})
_MISS_OUTCOMES = frozenset({"miss", "stale"})


@dataclass(slots=True)
class _Lifetime:
    """One key's current cached entry, as the events showed it."""

    url: str
    host: str
    started: float  # when this lifetime began (the fill), as far as seen
    fresh_until: float
    hits: int = 0
    asked: bool = False  # a warm request was already returned for this lifetime


class _FollowedKeys:
    """Keys with their current lifetime, bounded, with a due-time heap."""

    def __init__(self, max_keys: int) -> None:
        self.max_keys = max_keys
        self.keys: OrderedDict[str, _Lifetime] = OrderedDict()
        # (due, key, fresh_until); pop_due takes those due, in due order.
        self.heap: list[tuple[float, str, float]] = []

    def get(self, key: str) -> _Lifetime | None:
        return self.keys.get(key)

    def put(self, key: str, life: _Lifetime) -> None:
        keys = self.keys
        keys[key] = life
        keys.move_to_end(key)
        while len(keys) > self.max_keys:
            keys.popitem(last=False)

    def touch(self, key: str) -> None:
        self.keys.move_to_end(key)

    def schedule(self, key: str, due: float, fresh_until: float) -> None:
        heapq.heappush(self.heap, (due, key, fresh_until))
        if len(self.heap) > 4 * self.max_keys:
            self._compact()

    def pop_due(self, now: float) -> list[tuple[str, _Lifetime]]:
        """Keys due by ``now`` whose scheduled lifetime is still their current one."""
        out = []
        while self.heap and self.heap[0][0] <= now:
            _, key, fresh_until = heapq.heappop(self.heap)
            life = self.keys.get(key)
            if life is not None and life.fresh_until == fresh_until and not life.asked:
                out.append((key, life))
        return out

    def _compact(self) -> None:
        # Drop heap items of forgotten keys or of lifetimes since replaced.
        self.heap = [
            item
            for item in self.heap
            if (life := self.keys.get(item[1])) is not None and life.fresh_until == item[2]
        ]
        heapq.heapify(self.heap)


class RefreshAhead:
    """Refresh popular entries shortly before they expire."""

    def __init__(
        self,
        *,
        min_hits: int = 2,
        fraction: float = 0.1,
        max_keys: int = 10_000,
        priority: str = "high",
        min_precision: float = DEFAULT_MIN_PRECISION,
        lead: float = 0.0,
        displacement: DisplacementCost | None = None,
    ) -> None:
        """``lead``: a refresh is due at least this many seconds before the
        expiry (within the lifetime): a runner asking once a tick needs a
        window of more than a tick to find it.  ``displacement``: the
        measure the warmer core feeds for every strategy (None: one of its
        own, fed here)."""
        if not 0 < fraction < 1:
            raise ValueError("fraction must be between 0 and 1")
        if not lead >= 0:
            raise ValueError(f"lead must be at least 0 seconds, got {lead}")
        self.min_hits = min_hits
        self.fraction = fraction
        self.lead = lead
        self.priority = priority
        self._followed = _FollowedKeys(max_keys)
        self.min_precision = min_precision
        self.gate = PrecisionGate(min_precision)
        self.feeds_displacement = displacement is None
        self.displacement = (
            displacement if displacement is not None else DisplacementCost(max_keys=max_keys)
        )
        self.watch = WarmWatch(self.gate, max_open=max_keys, max_keys=max_keys)

    def observe(self, event: Observed) -> None:
        """Follow the lifetime and hits of the entry that answered ``event``."""
        fresh_until = event.fresh_until
        outcome = event.outcome
        key = event.key
        watch = self.watch
        if key in watch.open:
            watch.observe(key, outcome, fresh_until, event.ts)
        if self.feeds_displacement:
            self.displacement.observe(event)
        if fresh_until <= 0 or outcome not in _CACHED_OUTCOMES:
            return
        life = self._followed.keys.get(key)
        if life is None or life.fresh_until != fresh_until:
            # A new lifetime: a fill (miss/revalidation) or an entry first
            # seen, whose fill was earlier (its hit's time is a lower bound).
            started = event.ts if outcome == "hit" and life is None else min(event.ts, fresh_until)
            life = _Lifetime(event.url, event.host, started, fresh_until)
            self._followed.put(key, life)
            if outcome == "hit":
                life.hits = 1
        elif outcome == "hit":
            # No LRU touch per hit (this runs for every request): a key is put
            # anew at each lifetime, so the oldest lifetimes are forgotten first.
            life.hits += 1
        if life.hits == self.min_hits and not life.asked and fresh_until != math.inf:
            # An entry that never expires (replay --ttl never) is never refreshed.
            self._followed.schedule(key, self._due_at(life), fresh_until)

    def filled(self, key: str, url: str, host: str, now: float, fresh_until: float) -> None:
        """A warm fill stored a new lifetime for ``key`` (hits start again from 0)."""
        if fresh_until <= 0:
            return
        watch = self.watch
        if key in watch.open:
            watch.filled(key, fresh_until, now)
        if self.feeds_displacement:
            self.displacement.filled(key, fresh_until, now)
        self._followed.put(key, _Lifetime(url, host, now, fresh_until))

    def due(self, now: float) -> list[WarmRequest]:
        """Entries whose refresh time has come, once per lifetime, but for
        decisions of a class whose precision is below the floor."""
        out: list[WarmRequest] = []
        watch = self.watch
        watch.settle(now)
        heap = self._followed.heap  # asked before every request: nothing due is the rule
        if not heap or not heap[0][0] <= now:
            return out
        gate = self.gate
        # A warm of a key likely evicted displaces another entry: the floor
        # rises to what that costs (warmer.precision.DisplacementCost).
        evicted = self.displacement.evicted
        cost = self.displacement.cost
        base = self.min_precision
        allows = gate.allows
        for key, life in self._followed.pop_due(now):
            if life.fresh_until < now:
                # Expired before we got to it: a miss will refill it.  At the
                # instant of expiry the entry is still there to refresh.
                continue
            life.asked = True
            gone = evicted(key, now)
            cls = ("hits", bucket(life.hits), watch.last(key), gone >= 0.5)
            gate.floor = max(base, cost * gone) if base > 0.0 else 0.0
            if not allows(cls):
                continue
            # Hits before its old lifetime ends would have been hits anyway.
            watch.asked(key, cls, now, covered=life.fresh_until)
            out.append(
                WarmRequest(
                    url=life.url,
                    host=life.host,
                    priority=self.priority,
                    reason=Reason.REFRESH_AHEAD,
                    refresh=True,
                )
            )
        return out

    def lifetime_end(self, key: str) -> float | None:
        """The end of the lifetime of ``key`` this strategy follows (None: none)."""
        life = self._followed.get(key)
        return None if life is None else life.fresh_until

    def dropped(self, key: str) -> None:
        """The warm ``due`` returned for ``key`` is not made (another replica
        of a fleet claimed the decision): its precision is not judged here."""
        self.watch.withdraw(key)

    def _due_at(self, life: _Lifetime) -> float:
        lifetime = max(0.0, life.fresh_until - life.started)
        return life.fresh_until - min(lifetime, max(self.fraction * lifetime, self.lead))

    def __len__(self) -> int:
        return len(self._followed.keys)


class MissReactive:
    """Keep keys with repeated misses warm: refill each as its entry expires."""

    def __init__(
        self,
        *,
        threshold: int,
        misses: Callable[[str, float], int],
        max_keys: int = 10_000,
        priority: str = "medium",
        min_precision: float = DEFAULT_MIN_PRECISION,
        displacement: DisplacementCost | None = None,
    ) -> None:
        """``displacement``: as :class:`RefreshAhead`'s."""
        self.threshold = threshold
        self.priority = priority
        self._misses = misses  # (key, now) -> misses within the window
        self._followed = _FollowedKeys(max_keys)
        self.min_precision = min_precision
        self.gate = PrecisionGate(min_precision)
        self.feeds_displacement = displacement is None
        self.displacement = (
            displacement if displacement is not None else DisplacementCost(max_keys=max_keys)
        )
        self.watch = WarmWatch(self.gate, max_open=max_keys, max_keys=max_keys)

    def observe(self, event: Observed) -> None:
        """Note a key's misses and its entry's expiry."""
        key = event.key
        watch = self.watch
        if key in watch.open:
            watch.observe(key, event.outcome, event.fresh_until, event.ts)
        if self.feeds_displacement:
            self.displacement.observe(event)
        life = self._followed.keys.get(key)
        if event.outcome in _MISS_OUTCOMES:
            if life is None and self._misses(key, event.ts) <= self.threshold:
                return
            if event.fresh_until <= 0:
                # Not stored (uncacheable, too large): warming cannot help.
                self._followed.keys.pop(key, None)
                return
            self._follow(key, event.url, event.host, event.ts, event.fresh_until)
        elif life is not None and event.fresh_until > life.fresh_until:
            self._follow(key, event.url, event.host, event.ts, event.fresh_until)

    def filled(self, key: str, url: str, host: str, now: float, fresh_until: float) -> None:
        """A warm fill stored a new lifetime: warm again when it expires."""
        watch = self.watch
        if key in watch.open:
            watch.filled(key, fresh_until, now)
        if self.feeds_displacement:
            self.displacement.filled(key, fresh_until, now)
        if fresh_until > 0 and key in self._followed.keys:
            self._follow(key, url, host, now, fresh_until)

    def due(self, now: float) -> list[WarmRequest]:
        """Followed keys whose entry has expired and which still miss often,
        but for decisions of a class whose precision is below the floor."""
        out: list[WarmRequest] = []
        watch = self.watch
        watch.settle(now)
        heap = self._followed.heap  # asked before every request: nothing due is the rule
        if not heap or not heap[0][0] <= now:
            return out
        gate = self.gate
        # A warm of a key likely evicted displaces another entry: the floor
        # rises to what that costs (warmer.precision.DisplacementCost).
        evicted = self.displacement.evicted
        cost = self.displacement.cost
        base = self.min_precision
        allows = gate.allows
        for key, life in self._followed.pop_due(now):
            misses = self._misses(key, now)
            if misses <= self.threshold:
                self._followed.keys.pop(key, None)  # cooled down: stop following
                continue
            life.asked = True
            gone = evicted(key, now)
            cls = ("misses", bucket(misses), watch.last(key), gone >= 0.5)
            gate.floor = max(base, cost * gone) if base > 0.0 else 0.0
            if not allows(cls):
                continue
            watch.asked(key, cls, now)
            out.append(
                WarmRequest(
                    url=life.url, host=life.host, priority=self.priority, reason=Reason.REACTIVE
                )
            )
        return out

    def lifetime_end(self, key: str) -> float | None:
        """The end of the lifetime of ``key`` this strategy follows (None: none)."""
        life = self._followed.get(key)
        return None if life is None else life.fresh_until

    def dropped(self, key: str) -> None:
        """The warm ``due`` returned for ``key`` is not made (another replica
        of a fleet claimed the decision): its precision is not judged here."""
        self.watch.withdraw(key)

    def _follow(self, key: str, url: str, host: str, now: float, fresh_until: float) -> None:
        life = self._followed.get(key)
        if life is not None and life.fresh_until == fresh_until:
            self._followed.touch(key)
            return
        self._followed.put(key, _Lifetime(url, host, now, fresh_until))
        self._followed.schedule(key, fresh_until, fresh_until)

    def __len__(self) -> int:
        return len(self._followed.keys)


@dataclass(frozen=True, slots=True)
class PathFilter:
    """The ``[strategies] include/exclude`` globs every strategy's requests pass."""

    include: Sequence[str] = ()
    exclude: Sequence[str] = ()

    def allows(self, url: str) -> bool:
        if self.include and not any(fnmatchcase(url, g) for g in self.include):
            return False
        return not any(fnmatchcase(url, g) for g in self.exclude)
