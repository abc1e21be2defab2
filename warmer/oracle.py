"""Foresight for replays: oracles that know the trace's future, as bounds.

Nothing live can know when a key will be asked for next, so these are not
warming strategies.  Replayed beside the real ones (``warmproxy replay
--strategies none,predictive,oracle``) they tell how much of the hit ratio
warming could buy at all on a trace, so a strategy's gain reads against what
there was to gain.  ``oracle`` is the traces README's "refresh-ahead, oracle":
at each entry's expiry it refreshes the entry exactly when its key is asked for
again within one TTL, so every warm fetch it makes is used.

:class:`ExpiryOracle` takes any decision at the expiry instant, which is how
``bench/replay_bounds.py`` builds its other bounds (a warm budget, a key's
true rate).
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections import defaultdict
from collections.abc import Callable, Iterable

from warmer.model import Observed, Reason, WarmRequest
from warmer.trace import TraceRow, key_path

#: Decides at an entry's expiry instant whether to refresh it: (key, expiry) -> bool.
Decide = Callable[[str, float], bool]


class Foresight:
    """Every key's request times in a trace, keyed as the replay keys them."""

    def __init__(self, rows: Iterable[TraceRow]) -> None:
        times: defaultdict[str, list[float]] = defaultdict(list)
        latest = -math.inf
        for ts, key, _size, _client in rows:
            # The replay serves a request that steps back in time at the
            # latest time seen; so does this, keeping each list sorted.
            latest = max(latest, ts)
            times[key_path(key)].append(latest)
        self._times = dict(times)

    def next_within(self, key: str, at: float, horizon: float) -> bool:
        """Whether ``key`` is asked for after ``at`` and by ``at + horizon``."""
        times = self._times.get(key, ())
        i = bisect.bisect_right(times, at)
        return i < len(times) and times[i] <= at + horizon

    def count_between(self, key: str, start: float, end: float) -> int:
        """Requests for ``key`` after ``start`` and by ``end``."""
        times = self._times.get(key, ())
        return bisect.bisect_right(times, end) - bisect.bisect_right(times, start)


class ExpiryOracle:
    """Follows every entry's expiry (from the access events and its own
    fills) and asks ``decide`` at each expiry instant, the replay's last
    chance to refresh the entry; refreshes when it says so."""

    def __init__(self, decide: Decide) -> None:
        self.decide = decide
        self._fresh_until: dict[str, float] = {}
        self._expiries: list[tuple[float, str]] = []

    def observe(self, event: Observed) -> None:
        self._follow(event.key, event.fresh_until)

    def filled(self, key: str, url: str, host: str, now: float, fresh_until: float) -> None:
        self._follow(key, fresh_until)

    def due(self, now: float) -> list[WarmRequest]:
        out = []
        expiries = self._expiries
        while expiries and expiries[0][0] <= now:
            at, key = heapq.heappop(expiries)
            # Replaced by a newer lifetime, or passed unasked (the entry was
            # evicted before it expired): nothing to refresh.
            if self._fresh_until.get(key) != at or at != now:
                continue
            if self.decide(key, at):
                out.append(
                    WarmRequest(url=key, priority="high", reason=Reason.REFRESH_AHEAD, refresh=True)
                )
        return out

    def _follow(self, key: str, fresh_until: float) -> None:
        if fresh_until > self._fresh_until.get(key, -math.inf):
            self._fresh_until[key] = fresh_until
            heapq.heappush(self._expiries, (fresh_until, key))


def refreshes_when_asked_again(
    foresight: Foresight, ttl: float, cached: Callable[[str], bool]
) -> Decide:
    """The oracle's decision: refresh a cached entry at its expiry exactly when
    its key is asked for within one TTL.  (``cached``: whether the simulated
    cache holds a key; an entry evicted before its expiry is not refreshed,
    as in the reference.)"""
    return lambda key, at: cached(key) and foresight.next_within(key, at, ttl)


def oracle_refresh(foresight: Foresight, ttl: float, cached: Callable[[str], bool]) -> ExpiryOracle:
    """The ``oracle`` of ``warmproxy replay``: :func:`refreshes_when_asked_again`."""
    return ExpiryOracle(refreshes_when_asked_again(foresight, ttl, cached))
