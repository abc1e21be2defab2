"""Foresight for replays: oracles that know the trace's future, as bounds.

Nothing live can know when a key will be asked for next, so these are not
warming strategies.  Replayed beside the real ones (``warmproxy replay
--strategies none,predictive,oracle``) they tell how much of the hit ratio
warming could buy at all on a trace, so a strategy's gain reads against what
there was to gain.  ``oracle`` is the traces README's "refresh-ahead, oracle":
at each entry's expiry it refreshes the entry exactly when its key is asked for
again within one TTL (in ``[E, E + TTL)`` for an expiry at ``E``), so every
warm fetch it makes is used.  ``oracle-prefetch`` (:class:`PrefetchOracle`)
prevents misses instead: a warm fetch just before each request that would
miss, within the run's warm budget (``--max-warm-ratio``).

:class:`ExpiryOracle` takes any decision at the expiry instant, which is how
``bench/replay_bounds.py`` builds its other bounds (a warm budget, a key's
true rate, the refreshes a per-key optimum chose).
"""

from __future__ import annotations

import bisect
import heapq
import math
from array import array
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence

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
        """Whether ``key`` is asked for in ``[at, at + horizon)``.

        The window of a refresh at an expiry instant ``at``: an entry
        refreshed then is fresh until ``at + horizon`` exclusive, and a
        request at ``at`` itself comes after the expiry is processed (the
        replay handles expiries up to a request's time first), so the refresh
        is what answers it.  A request at ``at + horizon`` finds the refreshed
        entry expired: it does not count.
        """
        times = self._times.get(key, ())
        i = bisect.bisect_left(times, at)
        return i < len(times) and times[i] < at + horizon

    def next_at_or_after(self, key: str, at: float) -> float:
        """The time of ``key``'s first request at or after ``at`` (``math.inf``: none)."""
        times = self._times.get(key, ())
        i = bisect.bisect_left(times, at)
        return times[i] if i < len(times) else math.inf

    def items(self) -> Iterable[tuple[str, Sequence[float]]]:
        """Every key with its request times, ascending."""
        return self._times.items()

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
    """The oracle's decision: refresh a cached entry at its expiry ``E`` exactly
    when its key is asked for in ``[E, E + ttl)``, i.e. when the refreshed
    entry answers a request.  (``cached``: whether the simulated cache holds a
    key; an entry evicted before its expiry is not refreshed, as in the
    reference.)"""
    return lambda key, at: cached(key) and foresight.next_within(key, at, ttl)


def oracle_refresh(foresight: Foresight, ttl: float, cached: Callable[[str], bool]) -> ExpiryOracle:
    """The ``oracle`` of ``warmproxy replay``: :func:`refreshes_when_asked_again`."""
    return ExpiryOracle(refreshes_when_asked_again(foresight, ttl, cached))


class PrefetchOracle:
    """``oracle-prefetch``: a warm fetch just before each request that would miss.

    What it computes, exactly.  It reads the trace in the replay's order (the
    request after the last one observed is the next one; a time that steps
    back is taken at the latest time seen, as the replay serves it).  When
    ``due`` is asked just before that next request (at its instant, once the
    entries expiring then are dropped: ``settled(now)``), and the request
    would miss (its key absent from the simulated cache, evicted or expired:
    ``fresh_until(key) <= now``), and the key was asked for
    before (a *repeat* miss: a key's first request is not prevented, as in
    the traces README's "prefetch, oracle"), it asks for a warm fetch of the
    key, if the budget allows: warm fetches, this one included, at most
    ``max_warm_ratio`` times the requests so far, the coming one included
    (a running budget, not an allowance for the whole trace;
    ``math.inf``: unlimited).  Misses the budget does not allow preventing
    are counted in :attr:`over_budget` and served as misses.

    Why greedy by the soonest request is the best use of the budget: the warm
    fetch lands at the request's own instant, so the cache afterwards is
    exactly what the miss would have left (the key most recently used, fresh
    until ``now + ttl``, the same entries evicted).  Each warm fetch turns
    one miss into one hit and changes nothing else, so with a running budget
    spending it on the next miss that comes prevents at least as many misses
    as saving it for a later one: hits = the ``none`` run's hits + warm
    fetches, and every warm fetch is used (precision 100 %).
    """

    def __init__(
        self,
        rows: Iterable[TraceRow],
        fresh_until: Callable[[str], float],
        max_warm_ratio: float = math.inf,
        settled: Callable[[float], bool] = lambda t: True,
    ) -> None:
        if not max_warm_ratio >= 0:
            raise ValueError(f"max_warm_ratio must be at least 0, got {max_warm_ratio}")
        keys: list[str] = []
        times = array("d")
        interned: dict[str, str] = {}
        latest = -math.inf
        for ts, key, _size, _client in rows:
            latest = max(latest, ts)
            path = key_path(key)
            keys.append(interned.setdefault(path, path))
            times.append(latest)
        self._keys = keys
        self._times = times
        self._fresh_until = fresh_until
        self._settled = settled
        self.max_warm_ratio = max_warm_ratio
        self._seen: set[str] = set()
        self._next = 0  # index of the next request in the trace
        self.fetches = 0
        #: Repeat misses the budget did not allow preventing.
        self.over_budget = 0

    def observe(self, event: Observed) -> None:
        self._seen.add(event.key)
        self._next += 1

    def due(self, now: float) -> list[WarmRequest]:
        i = self._next
        if i >= len(self._keys) or self._times[i] != now or not self._settled(now):
            return []  # not the round just before the next request
        key = self._keys[i]
        if key not in self._seen or self._fresh_until(key) > now:
            return []
        if self.fetches + 1 > self.max_warm_ratio * (i + 1):
            self.over_budget += 1
            return []
        self.fetches += 1
        return [WarmRequest(url=key, priority="high", reason=Reason.PREDICTIVE)]

    def filled(self, key: str, url: str, host: str, now: float, fresh_until: float) -> None:
        pass
