"""Keeping the keys worth a cache slot cached: touches that fetch nothing.

A cache that evicts the entry used least recently (the memory store; Redis
with an LRU ``maxmemory-policy``) forgets a key asked for every few minutes
as soon as an eviction age passes without a request, while keys asked for
once pass through it and push it out.  Under Che's approximation of LRU (a
characteristic time ``T``: a key asked for at rate λ is cached with
probability 1 − exp(−λT)), keeping key *k* cached gains its misses,
λ\\ :sub:`k` exp(−λ\\ :sub:`k`\\ T) hits a second, and holds exp(−λ\\ :sub:`k`\\ T)
more slots.  A slot is worth μ = dH/dC hits a second at the margin.  So a key
is worth keeping iff λ\\ :sub:`k` > μ.

μ is measured from the events, not modelled: one more slot lengthens the
eviction age by dT = 1 / (the rate of requests for keys not asked for in
``T``: each enters the cache anew), and turns into hits the requests whose
key was last asked for between ``T`` and ``T + dT`` ago.  So μ is the rate of
requests with an idle time in [T, 2T) per second of that band, over the rate
of requests with an idle time of ``T`` or more (first requests included).
``T`` is :attr:`~warmer.precision.DisplacementCost.scale`, measured from the
requests that found their entry evicted.  A key's rate comes from its own
decayed request counts (the predictor's: the larger of the last window's and
the last eight windows'), capped by one over the time since its last
request: a key idle for 1/μ is let go, so no key is held for more
than one hit's worth of slot time past its last request, and keys that
cooled are not kept on an old rate.

Keeping is a *touch*: a warm request that only looks the entry up (the store
marks it used) and fetches nothing, cached or not
(:attr:`warmer.model.WarmRequest.touch`).  A kept key is touched
:data:`TOUCH_EVERY` eviction ages after its last request or touch, while its
entry is fresh (an expired entry is fetched again by whatever needs it, and
the refresh decisions judge that) and its rate stays above μ.  Touches cost
no warm fetch; they are held to :data:`MAX_TOUCH_RATIO` per user request.

Measured on the replay matrix (docs/decisions.md): it turns many of the
capacity misses of keys with steady demand into hits (WorldCup98's first
50,000 requests, entries that never expire, a cache of 5 % of the keys: the
predictive model went from +0.13 to +9.49 points over no warming), and on
traffic whose popularity moves (the generated CDN kind) it stays above no
warming.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from typing import Final

from warmer.precision import DisplacementCost

#: A kept key is touched this many eviction ages (``T``) after its last
#: request or touch: ``T`` is a low quantile of the idle times after which
#: requests found their entry evicted, so at 0.3 T the entry is still cached.
#: (With no touch budget, at 0.45 and 0.6 the WorldCup98 cell above gains
#: 7.8 and 4.6 points instead of 10.2, for 40 % and 60 % fewer touches.)
TOUCH_EVERY: Final = 0.3

#: Touches allowed per user request (a burst of a thousand saved up); a
#: touch due when none is left waits for its next turn.
MAX_TOUCH_RATIO: Final = 1.0
TOUCH_BURST: Final = 1000.0

#: At most this many keys are kept at once (a heap item and a map slot each).
MAX_KEPT: Final = 65_536

#: Weight of one request in the decayed counts behind μ (about the last
#: ten thousand requests).
_KEEP: Final = 1.0 - 1.0 / 10_000.0

#: (rate in requests a second, last request, its entry's freshness end) of
#: a followed key at a time; None when it is not followed.
KeyRate = Callable[[str, float], "tuple[float, float, float] | None"]


class Retention:
    """Decides which keys to touch, and when (module docstring)."""

    def __init__(self, displacement: DisplacementCost, *, max_kept: int = MAX_KEPT) -> None:
        self.displacement = displacement
        self.max_kept = max_kept
        # Requests (decayed) whose key was last asked for between T and 2T
        # before, and those whose key was not asked for in T or more.
        self._band = 0.0
        self._beyond = 0.0
        # key -> when it was last touched (-inf: not yet): the keys kept.
        self.kept: dict[str, float] = {}
        # (when its next touch is due, key), one per kept key
        self._due: list[tuple[float, str]] = []
        self._tokens = TOUCH_BURST
        self.touches = 0  # touches asked for
        # Hits on kept keys that were touched since their last request, that
        # request an eviction age or more before: most would have missed.
        self.rescued = 0

    @property
    def slot_worth(self) -> float:
        """μ: hits a second one more cache slot is worth (``math.inf`` until
        anything was evicted)."""
        scale = self.displacement.scale
        if self._beyond < 1.0 or scale == math.inf:
            return math.inf
        return self._band / (scale * self._beyond)

    def observe(
        self, key: str, rate: float, previous: float, hit: bool, fresh_until: float, ts: float
    ) -> None:
        """A user request for ``key``, whose rate (requests a second) before
        it was ``rate`` and last request ``previous`` (0: none followed);
        ``fresh_until``: its entry's freshness end after the request (0: not
        stored)."""
        tokens = self._tokens + MAX_TOUCH_RATIO
        self._tokens = tokens if tokens < TOUCH_BURST else TOUCH_BURST
        scale = self.displacement.scale
        if scale == math.inf:
            return  # nothing evicted: nothing to keep
        idle = ts - previous if previous > 0.0 else math.inf
        self._band *= _KEEP
        self._beyond *= _KEEP
        if idle >= scale:
            self._beyond += 1.0
            if idle < 2.0 * scale:
                self._band += 1.0
        kept = self.kept
        touched = kept.get(key)
        if touched is not None:
            if hit and touched > previous and idle >= scale:
                self.rescued += 1
            return
        if fresh_until > ts and rate > self.slot_worth and len(kept) < self.max_kept:
            kept[key] = -math.inf
            heapq.heappush(self._due, (ts + TOUCH_EVERY * scale, key))

    def due(self, now: float, rate_of: KeyRate) -> list[str]:
        """The keys to touch at ``now``."""
        heap = self._due
        if not heap or heap[0][0] > now:
            return []
        out: list[str] = []
        kept = self.kept
        scale = self.displacement.scale
        every = TOUCH_EVERY * scale
        worth = self.slot_worth
        heappop = heapq.heappop
        heappush = heapq.heappush
        while heap and heap[0][0] <= now:
            _, key = heappop(heap)
            known = rate_of(key, now)
            if known is None or scale == math.inf:
                kept.pop(key, None)
                continue
            rate, last, fresh_until = known
            touched = kept.get(key, -math.inf)
            nxt = (last if last > touched else touched) + every
            if nxt > now:
                heappush(heap, (nxt, key))  # asked for since: touched later
                continue
            idle = now - last
            if rate * idle > 1.0:
                rate = 1.0 / idle
            if rate <= worth * self._rationed() or fresh_until <= now:
                del kept[key]
                continue
            if self._tokens < 1.0:
                heappush(heap, (now + every, key))  # no touch left this turn
                continue
            self._tokens -= 1.0
            kept[key] = now
            self.touches += 1
            out.append(key)
            heappush(heap, (now + every, key))
        return out

    def _rationed(self) -> float:
        """How many times μ a key's rate must be to be kept: 1 while half the
        burst of touches is left, rising to 4 as it runs out, so that when
        touches are short they go to the keys a slot gains most on."""
        short = 1.0 - self._tokens / (TOUCH_BURST / 2.0)
        return 1.0 if short <= 0.0 else 1.0 + 3.0 * short * short

    def memory_bound(self, name_bytes: int) -> int:
        """Bytes the kept keys can take: a map slot, a heap item and a time
        each, and a name of at most ``name_bytes`` (a followed key's, or one
        forgotten since it was kept)."""
        return self.max_kept * (_KEPT_BYTES + name_bytes)

    def describe(self) -> dict[str, float | int]:
        worth = self.slot_worth
        return {
            "kept_keys": len(self.kept),
            "touches": self.touches,
            "rescued_hits": self.rescued,
            "slot_worth_per_hour": round(worth * 3600.0, 4) if worth < math.inf else -1,
        }


_KEPT_BYTES: Final = 256
