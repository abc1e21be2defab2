"""Replay a request trace through the warmer on a virtual clock (``warmproxy replay``).

The requests of a trace (see :mod:`warmer.trace`) are pushed through the same
usage tracker, strategies, warm queue and effectiveness ledger the live proxy
runs, against a simulated cache and a simulated origin, and each strategy is
judged by the hit ratio it reaches, the warm fetches it costs and their
precision.  DESIGN rule 2 is what makes this possible: the warmer core takes
time from the events and from ``now``, so a day of traffic replays in seconds.

The simulated cache is the reference model of the traces' README, so figures
compare with its table:

- a count-based LRU of ``capacity`` entries (``--cache-size``: entries, or a
  share of the trace's distinct keys, rounded half up, at least 1); an entry
  is fresh for ``ttl`` seconds after it is fetched (``ttl`` may be
  ``math.inf``, ``--ttl never``: entries never expire, only eviction drops
  them, and no strategy is asked at an expiry);
- a user request at ``t`` is a hit when the key is cached with an expiry
  after ``t`` (the entry becomes most recently used), else a miss: the
  origin is asked and the entry is (re)inserted as most recently used,
  fresh until ``t + ttl``, evicting least recently used entries while over
  capacity;
- before a request at ``t`` every expiry up to ``t`` is processed in time
  order: at its expiry instant an entry still counts as present (a refresh
  then keeps it), and unless a warm fetch refreshed it, it is dropped;
- a warm fetch completes at once and is not a request.  For an absent key
  it inserts the entry as most recently used, fresh for ``ttl`` (possibly
  evicting).  For a present entry it re-fetches in place (its LRU position
  kept, fresh until ``now + ttl``) when the request is a refresh or the
  entry is at its expiry instant; a warm request for an entry still fresh
  fetches nothing and makes the entry most recently used, as the proxy's
  lookup does (a free hint); a touch (:mod:`warmer.retention`) does the
  same for a fresh entry and nothing for any other, never fetching;
- precision is the share of warm-fetched lifetimes hit at least once before
  they were evicted, expired or replaced (those alive at the end of the
  trace count by whether they were hit).

Trace keys that are not paths are mapped to ``"/" + key``
(:func:`warmer.trace.key_path`); that path is the cache key, the event's
``key`` and ``url`` (the host is empty).

Driving the warmer: the replay is a second runner of the live warmer's
:class:`~warmer.core.WarmerCore` (DESIGN rule 5), with no orchestration of
its own.  Each request becomes an access event (outcome ``hit``/``miss``,
``fresh_until`` the entry's expiry after the request, ``warmed`` whether a
warm fetch stored the entry) handed to ``core.observe``.  ``core.due(now)``
is asked before each request, at each expiry instant before the entry is
dropped, and at the wake-up times a strategy names (:class:`Waking`, e.g. the
hourly firing of :class:`ScheduledTop`), at most once per instant between
two observations (with ``oracle-prefetch``, once more just before each
request, after the entries expiring at its instant are dropped: see
:attr:`ReplayContext.settled`).  What it returns is pushed into a
:class:`~warmer.queue.WarmQueue` and drained at once (:meth:`WarmQueue.drain`:
the queue's own order and merging); each fetch is booked with
``core.completed``, as the live runner books the executor's results.  The
built-in strategies that do not read the usage tracker (``none``,
``refresh-ahead``, ``predictive``, ``markov``, the oracles) run without it
being fed: nothing else reads it.  ``warmproxy replay --config FILE`` builds
the core from the user's configuration exactly as the proxy does
(:func:`configured_factory`).

The built-in strategies (:data:`STRATEGIES`): ``none``; ``reactive``,
:class:`~warmer.strategies.MissReactive` refilling keys missed more than
:data:`REACTIVE_THRESHOLD` times in :data:`REACTIVE_WINDOW_TTLS` TTLs;
``refresh-ahead``, :class:`~warmer.strategies.RefreshAhead` refreshing entries
hit :data:`REFRESH_MIN_HITS` times in their lifetime at their expiry;
``scheduled-top``, :class:`ScheduledTop`; ``predictive``, the
:class:`~warmer.predictive.Predictor` with a prediction window of one TTL
(an hour, the model's default, when entries never expire);
``all``, all of these together (``markov`` is not part of it).
``markov`` (:mod:`warmer.markov`) is the simplest sequence prefetcher, a
baseline: after a request for A, the successor clients most often asked for
next after A.  ``oracle`` and ``oracle-prefetch`` (:mod:`warmer.oracle`),
replayed only when named, are bounds rather than strategies: they read the
trace's future.  ``oracle`` refreshes an entry at its expiry exactly when
the refreshed entry answers a request; ``oracle-prefetch`` warms a key just
before each repeat request that would miss, within the run's warm budget
(``max_warm_ratio``, ``--max-warm-ratio``: warm fetches per request;
unlimited by default).  The budget also sets ``predictive``'s
``max_warm_ratio`` when it is given (else the model's default, 0.2), so the
model can be replayed at the spend of another strategy.

The one way the replay departs from the reference model's refresh-ahead:
the strategy learns of evictions only through requests, so an entry hit
twice and evicted before it expired is refilled at its expiry (as the live
proxy would do); the reference refreshes only entries still cached.  Where
such evictions are rare the two agree exactly; on a cache small for its
trace the replay's refresh-ahead fetches more.

Repeatability: the usage tracker's sketches hash keys with Python's
``hash()``, salted per process, so figures of strategies that read the
tracker (``reactive``, ``scheduled-top``, ``all``) move slightly from one
run to the next; set ``PYTHONHASHSEED`` to repeat a run exactly.

Plugging a strategy in: a :data:`StrategyFactory` takes the run's
:class:`ReplayContext` (its tracker, TTL, capacity, the trace's distinct
keys) and returns the strategies to drive (objects with ``observe``, ``due``
and ``filled``: :class:`ReplayStrategy`).  :data:`STRATEGIES` holds the
built-in ones by name; :func:`replay` and :func:`replay_file` take a name or
``(name, factory)``, e.g. to tune the predictive model::

    def tuned(ctx: ReplayContext) -> list[ReplayStrategy]:
        config = PredictiveConfig(enabled=True, prediction_window=ctx.ttl, min_confidence=0.5)
        return [Predictor(config)]

    results = replay_file("trace.csv", ["none", ("predictive-0.5", tuned)])
"""

from __future__ import annotations

import gc
import heapq
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TextIO, TypeVar

import orjson

from warmer.audience import Audience
from warmer.config import WarmerConfig
from warmer.core import Strategy, Waking, WarmerCore, build_strategies, build_tracker
from warmer.ledger import EffectivenessLedger
from warmer.markov import MarkovPrefetch
from warmer.model import (
    DEFAULT_PRIORITY_LEVELS,
    TOUCH_GONE,
    TOUCH_KEPT,
    FillReport,
    Observed,
    Reason,
    WarmRequest,
)
from warmer.oracle import Foresight, PrefetchOracle, oracle_refresh
from warmer.precision import DisplacementCost
from warmer.predictive import OWN_SEQUENCE_KEYS, PredictiveConfig, Predictor
from warmer.queue import WarmQueue
from warmer.strategies import MissReactive, PathFilter, RefreshAhead
from warmer.trace import TraceError, TraceRow, TraceSummary, key_path, read_trace, scan_trace
from warmer.tracker import UsageTracker

if TYPE_CHECKING:
    # Imported where it is used: it pulls numpy in, which a replay does not need.
    from warmer.analysis import Analyzer

HOUR: Final = 3600.0
T = TypeVar("T")
#: Refresh-ahead: entries hit this often in their lifetime are refreshed...
REFRESH_MIN_HITS: Final = 2
#: ...when less than this share of their lifetime is left.  The replay asks
#: ``due`` at each expiry instant, so a tiny share refreshes at expiry as the
#: reference model does.
REFRESH_FRACTION: Final = 1e-6
#: Miss-reactive: keys missed more than this many times...
REACTIVE_THRESHOLD: Final = 2
#: ...within this many TTLs are refilled as they expire (while they still are).
REACTIVE_WINDOW_TTLS: Final = 4.0
#: Scheduled-top: every hour, the top share of the distinct keys seen so far,
#: ranked by their requests in the past hour.
TOP_SHARE: Final = 0.01
#: Markov: keys with successor counts kept, at least (more on a trace with more keys).
MARKOV_MAX_KEYS: Final = 300_000

_INF: Final = math.inf

#: The built-in strategies, in the order they are reported.
STRATEGY_NAMES: Final = (
    "none",
    "reactive",
    "refresh-ahead",
    "scheduled-top",
    "predictive",
    "markov",
    "all",
)

# An entry of the simulated cache: [expiry, warmed, used].
_EXPIRY: Final = 0
_WARMED: Final = 1
_USED: Final = 2


#: What the replay drives: the live warmer's :class:`~warmer.core.Strategy`.
ReplayStrategy = Strategy
__all__ = ["ReplayStrategy", "Waking"]


@dataclass(frozen=True, slots=True)
class ReplayContext:
    """What a strategy factory may build its strategies from, for one run."""

    tracker: UsageTracker  # observed before the strategies; windows: an hour and reactive_window
    ttl: float
    capacity: int
    distinct_keys: int
    #: The trace file, when the replay reads one (the oracle reads its future).
    path: str | None = None
    #: Whether the simulated cache holds a key now (evicted: no).  Only an
    #: oracle may look: live strategies learn of evictions through requests.
    cached: Callable[[str], bool] = lambda key: False
    #: The simulated entry's expiry (``-math.inf``: not cached); for oracles only.
    fresh_until: Callable[[str], float] = lambda key: -math.inf
    #: The run's warm budget, warm fetches per request (``math.inf``: none given).
    max_warm_ratio: float = math.inf
    #: Whether every expiry up to ``t`` has been processed: true in the due
    #: round just before a request at ``t``, false in the rounds at expiry
    #: instants before it.  (Read by ``oracle-prefetch``, for which the replay
    #: asks the core again before each request once the entries expiring at
    #: its instant are dropped, so its fill evicts what the miss would.)
    settled: Callable[[float], bool] = lambda t: True

    @property
    def reactive_window(self) -> float:
        """The tracker window the miss-reactive strategy counts misses in."""
        return reactive_window(self.ttl)


#: Builds one run's strategies (the replay puts them in a core of its own)
#: or a whole :class:`~warmer.core.WarmerCore` (as :func:`configured_factory`).
StrategyFactory = Callable[[ReplayContext], "Sequence[ReplayStrategy] | WarmerCore"]


def reactive_window(ttl: float) -> float:
    """The window the miss-reactive strategy counts misses in, for entries fresh ``ttl`` s.

    Entries that never expire are never refilled at expiry; the tracker still
    needs a finite window: :data:`REACTIVE_WINDOW_TTLS` hours.
    """
    return REACTIVE_WINDOW_TTLS * (HOUR if math.isinf(ttl) else ttl)


class ScheduledTop:
    """Every clock hour, warm the hottest keys of the past hour.

    ``share`` of the distinct keys seen so far (at least one), ranked by the
    tracker's count in its one-hour window: the "top-N hot" scheduled source.
    """

    def __init__(
        self,
        tracker: UsageTracker,
        *,
        share: float = TOP_SHARE,
        every: float = HOUR,
        priority: str = "low",
    ) -> None:
        if HOUR not in tracker.windows:
            raise ValueError("the tracker needs a one-hour window")
        self.tracker = tracker
        self.share = share
        self.every = every
        self.priority = priority
        self._seen: set[str] = set()
        self._next = math.inf

    def observe(self, event: Observed) -> None:
        self._seen.add(event.key)
        if self._next == _INF:
            self._next = (event.ts // self.every + 1) * self.every

    def due(self, now: float) -> list[WarmRequest]:
        if now < self._next:
            return []
        self._next = (now // self.every + 1) * self.every
        n = max(1, math.floor(self.share * len(self._seen) + 0.5))
        return [
            WarmRequest(
                url=h.url,
                host=h.host,
                priority=self.priority,
                reason=Reason.SCHEDULED,
                source="top",
            )
            for h in self.tracker.hot(n, now, window=HOUR)
        ]

    def filled(self, key: str, url: str, host: str, now: float, fresh_until: float) -> None:
        pass

    def next_wake(self) -> float:
        return self._next


def _none(ctx: ReplayContext) -> list[ReplayStrategy]:
    return []


def _reactive(
    ctx: ReplayContext, displacement: DisplacementCost | None = None
) -> list[ReplayStrategy]:
    tracker = ctx.tracker
    window = ctx.reactive_window
    return [
        MissReactive(
            threshold=REACTIVE_THRESHOLD,
            misses=lambda key, now: tracker.misses(key, window, now),
            max_keys=max(10_000, ctx.distinct_keys),
            priority="medium",
            displacement=displacement,
        )
    ]


def _refresh_ahead(
    ctx: ReplayContext, displacement: DisplacementCost | None = None
) -> list[ReplayStrategy]:
    return [
        RefreshAhead(
            min_hits=REFRESH_MIN_HITS,
            fraction=REFRESH_FRACTION,
            max_keys=max(10_000, ctx.distinct_keys),
            priority="high",
            displacement=displacement,
        )
    ]


def _scheduled_top(ctx: ReplayContext) -> list[ReplayStrategy]:
    return [ScheduledTop(ctx.tracker)]


def _predictive(
    ctx: ReplayContext, displacement: DisplacementCost | None = None
) -> list[ReplayStrategy]:
    defaults = PredictiveConfig()
    return [
        Predictor(
            PredictiveConfig(
                enabled=True,
                # One TTL; entries that never expire: the model's default window.
                prediction_window=(defaults.prediction_window if math.isinf(ctx.ttl) else ctx.ttl),
                max_warm_ratio=(
                    defaults.max_warm_ratio
                    if math.isinf(ctx.max_warm_ratio)
                    else ctx.max_warm_ratio
                ),
            ),
            displacement=displacement,
        )
    ]


def _markov(ctx: ReplayContext) -> list[ReplayStrategy]:
    return [MarkovPrefetch(max_keys=max(MARKOV_MAX_KEYS, ctx.distinct_keys))]


def _all(ctx: ReplayContext) -> list[ReplayStrategy]:
    # As build_strategies builds them live: one measure of what a warm
    # displaces for all of them, which the core feeds.
    shared = DisplacementCost(
        max_keys=max(10_000, ctx.distinct_keys, min(PredictiveConfig().max_keys, OWN_SEQUENCE_KEYS))
    )
    return [
        *_refresh_ahead(ctx, shared),
        *_reactive(ctx, shared),
        *_scheduled_top(ctx),
        *_predictive(ctx, shared),
    ]


def configured_factory(config: WarmerConfig) -> StrategyFactory:
    """Strategies as the live proxy builds them from ``config`` (``warmproxy
    replay --config``): the same strategies, thresholds, include/exclude and
    budgets, in the same :class:`~warmer.core.WarmerCore`.

    Scheduled sources are not replayed (they read files, sitemaps and
    databases, not the trace); the usage analysis is left out (it decides
    nothing; the predictive model keeps its own sequences without it).
    """

    def factory(ctx: ReplayContext) -> WarmerCore:
        tracker = build_tracker(config)
        r = config.reactive
        return WarmerCore(
            build_strategies(config, tracker),
            # Only the miss-reactive strategy reads it (the usage analysis is off).
            tracker=tracker if r.enabled and r.auto_warm else None,
            ledger=EffectivenessLedger(max_tracked=max(100_000, 2 * ctx.capacity)),
            audience=Audience(config.audience),
            path_filter=PathFilter(config.include, config.exclude),
        )

    return factory


def _oracle(ctx: ReplayContext) -> list[ReplayStrategy]:
    if ctx.path is None:
        raise ValueError("the oracle reads the trace's future: replay a file (replay_file)")
    return [oracle_refresh(Foresight(read_trace(ctx.path)), ctx.ttl, ctx.cached)]


def _oracle_prefetch(ctx: ReplayContext) -> list[ReplayStrategy]:
    if ctx.path is None:
        raise ValueError("oracle-prefetch reads the trace's future: replay a file (replay_file)")
    return [PrefetchOracle(read_trace(ctx.path), ctx.fresh_until, ctx.max_warm_ratio, ctx.settled)]


# The built-in factories whose strategies never read the context's tracker.
_WITHOUT_TRACKER: Final[frozenset[StrategyFactory]] = frozenset(
    {_none, _refresh_ahead, _predictive, _markov, _oracle, _oracle_prefetch}
)

#: The built-in strategies by name (``all``: every other one together).
STRATEGIES: Final[dict[str, StrategyFactory]] = {
    "none": _none,
    "reactive": _reactive,
    "refresh-ahead": _refresh_ahead,
    "scheduled-top": _scheduled_top,
    "predictive": _predictive,
    "markov": _markov,
    "all": _all,
    # Not replayed unless asked for: bounds that know the future (warmer.oracle).
    "oracle": _oracle,
    "oracle-prefetch": _oracle_prefetch,
}

#: A strategy as :func:`replay` takes it: a built-in name, or a name and a factory.
StrategySpec = str | tuple[str, StrategyFactory]


@dataclass(frozen=True, slots=True)
class CacheSize:
    """``--cache-size``: a number of entries, or a share of the trace's distinct keys."""

    entries: int = 0
    fraction: float = 0.0

    @classmethod
    def parse(cls, text: str) -> CacheSize:
        """``"500"`` (entries) or ``"20%"`` (of the distinct keys); ValueError otherwise."""
        text = text.strip()
        if text.endswith("%"):
            try:
                percent = float(text[:-1])
            except ValueError:
                raise ValueError(f"cache size {text!r}: not a percentage") from None
            if not 0 < percent <= 100:
                raise ValueError(f"cache size {text!r}: the percentage must be in (0, 100]")
            return cls(fraction=percent / 100)
        try:
            entries = int(text)
        except ValueError:
            raise ValueError(
                f"cache size {text!r}: give a number of entries or a percentage such as 20%"
            ) from None
        if entries < 1:
            raise ValueError(f"cache size {text!r}: at least 1 entry")
        return cls(entries=entries)

    def capacity(self, distinct_keys: int) -> int:
        """Entries the cache holds for a trace of ``distinct_keys`` keys."""
        if self.entries:
            return self.entries
        return max(1, math.floor(distinct_keys * self.fraction + 0.5))

    def __str__(self) -> str:
        if self.entries:
            return f"{self.entries} entries"
        return f"{self.fraction * 100:g}% of distinct keys"


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """What one strategy did over one trace."""

    strategy: str
    capacity: int
    ttl: float
    requests: int
    hits: int
    warm_fetches: int  # origin fetches warming made (stored fills and refreshes)
    warm_used: int  # warm-fetched lifetimes hit at least once
    warm_unused: int
    free_hints: int  # warm requests for entries already fresh: nothing fetched
    evictions: int
    touches: int = 0  # touches that found a fresh entry and kept it (nothing fetched)
    #: Warm fetches per label (the reason, or ``scheduled:<source>``), as the ledger books them.
    warm_fetches_by_label: dict[str, int] = field(default_factory=dict)
    #: The ledger's precision (None without warm fetches); equal to :attr:`precision`.
    ledger_precision: float | None = None
    seconds: float = 0.0  # wall-clock time of the replay, when timed

    @property
    def misses(self) -> int:
        return self.requests - self.hits

    @property
    def hit_ratio(self) -> float:
        return self.hits / self.requests if self.requests else 0.0

    @property
    def warm_fetches_per_request(self) -> float:
        return self.warm_fetches / self.requests if self.requests else 0.0

    @property
    def precision(self) -> float | None:
        """Share of warm-fetched lifetimes used; None when nothing was warm-fetched."""
        resolved = self.warm_used + self.warm_unused
        return self.warm_used / resolved if resolved else None

    @property
    def origin_fetches(self) -> int:
        """What the origin served: every miss and every warm fetch."""
        return self.misses + self.warm_fetches

    @property
    def requests_per_second(self) -> float | None:
        return self.requests / self.seconds if self.seconds > 0 else None

    def gain_over(self, baseline: ReplayResult | None) -> float | None:
        """Hit ratio gained over ``baseline`` (a fraction; None without one)."""
        return None if baseline is None else self.hit_ratio - baseline.hit_ratio

    def to_json(self, baseline: ReplayResult | None = None) -> dict[str, Any]:
        """The ``--json`` object of this strategy; ``baseline``: the ``none`` run."""
        gain = self.gain_over(baseline)
        precision = self.precision
        return {
            "strategy": self.strategy,
            "hit_ratio": round(self.hit_ratio, 6),
            "warm_fetches_per_request": round(self.warm_fetches_per_request, 6),
            "precision": None if precision is None else round(precision, 6),
            "gain_over_none": None if gain is None else round(gain, 6),
            "requests": self.requests,
            "hits": self.hits,
            "misses": self.misses,
            "warm_fetches": self.warm_fetches,
            "warm_used": self.warm_used,
            "warm_unused": self.warm_unused,
            "free_hints": self.free_hints,
            "touches": self.touches,
            "origin_fetches": self.origin_fetches,
            "evictions": self.evictions,
            "warm_fetches_by_label": dict(sorted(self.warm_fetches_by_label.items())),
            "cache_entries": self.capacity,
            "ttl": None if math.isinf(self.ttl) else self.ttl,  # null: never expires
            "seconds": round(self.seconds, 3),
        }


class _Event:
    """The access event of one replayed request; one object, rewritten per request.

    Satisfies :class:`~warmer.model.Observed`.  Nothing the replay drives keeps
    the event itself (the strategies, tracker and ledger copy the fields they
    keep), so one mutable object serves the whole run.
    """

    __slots__ = (
        "bytes",
        "client",
        "coding",
        "fresh_until",
        "host",
        "key",
        "latency",
        "outcome",
        "status",
        "ts",
        "url",
        "vary",
        "vary_values",
        "warmed",
    )

    def __init__(self) -> None:
        self.ts = 0.0
        self.key = ""
        self.url = ""
        self.host = ""
        self.outcome = "miss"
        # The simulated origin answers 200 without a body worth counting.
        self.status = 200
        self.bytes = 0
        self.client = ""
        self.fresh_until = 0.0
        self.warmed = False
        # The simulated origin's responses do not vary, and take no time.
        self.vary: tuple[str, ...] = ()
        self.vary_values: tuple[str | None, ...] = ()
        self.coding = ""
        self.latency: float | None = None


class _Simulation:
    """One strategy's run: the simulated cache and origin, driving one warmer core."""

    def __init__(
        self,
        name: str,
        core: WarmerCore,
        *,
        capacity: int,
        ttl: float,
        cache: OrderedDict[str, list[Any]] | None = None,
        settled: list[float] | None = None,
        settle: bool = False,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1 entry, got {capacity}")
        if not ttl > 0:
            raise ValueError(f"ttl must be positive seconds or math.inf, got {ttl}")
        self.name = name
        self.capacity = capacity
        self.ttl = ttl
        self.core = core
        if core.ledger is None:
            core.ledger = EffectivenessLedger(max_tracked=max(100_000, 2 * capacity))
        self.ledger: EffectivenessLedger = core.ledger
        self.driven = bool(core.strategies)
        self.queue = WarmQueue(DEFAULT_PRIORITY_LEVELS, max_items=1_000_000)
        self.cache: OrderedDict[str, list[Any]] = OrderedDict() if cache is None else cache
        self.expiries: list[tuple[float, str]] = []
        self.now = -math.inf
        self.wake = math.inf
        self.due_at = math.nan  # the instant of the last due round, until the next observation
        # [t]: every expiry up to t is processed (ReplayContext.settled); with
        # ``settle`` the core is asked again just before each request, once the
        # entries expiring at its instant are dropped (oracle-prefetch acts then).
        self.settled = [-math.inf] if settled is None else settled
        self.settle = settle
        self.requests = 0
        self.hits = 0
        self.warm_fetches = 0
        self.warm_used = 0
        self.warm_unused = 0
        self.free_hints = 0
        self.touches = 0
        self.evictions = 0

    # ----------------------------------------------------------------- run

    def run(self, rows: Iterable[TraceRow]) -> None:
        cache = self.cache
        get = cache.get
        to_mru = cache.move_to_end
        expiries = self.expiries
        push = heapq.heappush
        ttl = self.ttl
        capacity = self.capacity
        event = _Event()
        driven = self.driven
        # Without strategies nothing reads the events: the baseline runs on
        # the cache alone.
        observe = self.core.observe if driven else None
        advance = self._advance
        due = self._due
        nan = math.nan
        now = self.now
        settle = self.settle
        settled = self.settled
        requests = hits = 0
        for ts, key, _size, client in rows:
            if ts > now:
                now = ts  # a step back (within the reader's tolerance) replays at the latest time
            if (expiries and expiries[0][0] <= now) or self.wake <= now:
                advance(now)
            if settle:
                settled[0] = now
                due(now)
            elif driven and self.due_at != now:
                due(now)
            if key[0] != "/":
                key = "/" + key
            requests += 1
            entry = get(key)
            if entry is not None and entry[_EXPIRY] > now:
                hits += 1
                entry[_USED] = True
                to_mru(key)
                event.outcome = "hit"
                event.fresh_until = entry[_EXPIRY]
                event.warmed = entry[_WARMED]
            else:
                if entry is not None:
                    if entry[_WARMED]:
                        self._end(entry)
                    del cache[key]
                expiry = now + ttl
                cache[key] = [expiry, False, False]
                if expiry != _INF:  # an entry that never expires is only evicted
                    push(expiries, (expiry, key))
                if len(cache) > capacity:
                    self._evict(now)
                event.outcome = "miss"
                event.fresh_until = expiry
                event.warmed = False
            if observe is not None:
                event.ts = now
                event.key = event.url = key
                event.client = client
                observe(event)
                self.due_at = nan
        self.now = now
        self.requests += requests
        self.hits += hits

    def finish(self, seconds: float = 0.0) -> ReplayResult:
        """End of trace: lifetimes still open count by whether they were hit."""
        for entry in self.cache.values():
            self._end(entry)
        self.cache.clear()
        self.expiries.clear()
        ledger = self.ledger
        ledger.settle(math.inf)
        figures = ledger.figures(self.now if self.requests else 0.0)
        return ReplayResult(
            strategy=self.name,
            capacity=self.capacity,
            ttl=self.ttl,
            requests=self.requests,
            hits=self.hits,
            warm_fetches=self.warm_fetches,
            warm_used=self.warm_used,
            warm_unused=self.warm_unused,
            free_hints=self.free_hints,
            evictions=self.evictions,
            touches=self.touches,
            warm_fetches_by_label={k: v.fetches for k, v in figures.by_label.items()},
            ledger_precision=figures.precision,
            seconds=seconds,
        )

    # ------------------------------------------------------------ internals

    def _advance(self, until: float) -> None:
        """Process expiries and wake-ups up to ``until``, in time order."""
        cache = self.cache
        get = cache.get
        expiries = self.expiries
        heappop = heapq.heappop
        driven = self.driven
        due = self._due
        while True:
            at = expiries[0][0] if expiries else math.inf
            wake = self.wake
            if wake < at and wake <= until:
                due(wake)
                continue
            if at > until:
                return
            _, key = heappop(expiries)
            entry = get(key)
            if entry is None or entry[_EXPIRY] != at:
                continue  # evicted or re-fetched since
            if driven and self.due_at != at:
                due(at)  # the last chance to refresh it
                if get(key) is not entry or entry[_EXPIRY] != at:
                    continue
            if entry[_WARMED]:
                self._end(entry)
            del cache[key]

    def _due(self, now: float) -> None:
        """Ask the core what is due; queue it and fetch it at once."""
        self.due_at = now
        core = self.core
        wanted = core.due(now)
        self.wake = core.next_wake()
        if wanted:
            for request in self.queue.drain(wanted, now):
                self._fetch(request, now)

    def _fetch(self, request: WarmRequest, now: float) -> None:
        """The warm fetch of ``request``, completed at once, booked by the core."""
        key = request.url
        cache = self.cache
        entry = cache.get(key)
        if request.touch:
            # Looked up, never fetched: a fresh entry becomes most recently used.
            if entry is not None and entry[_EXPIRY] > now:
                cache.move_to_end(key)
                self.touches += 1
                self.core.completed(request, TOUCH_KEPT, now)
            else:
                self.core.completed(request, TOUCH_GONE, now)
            return
        if entry is not None and entry[_EXPIRY] > now and not request.refresh:
            # The proxy's warm path looks the entry up, as a request does, and
            # the store marks it most recently used: a hint keeps it cached.
            cache.move_to_end(key)
            self.free_hints += 1
            self.core.completed(request, _ALREADY_FRESH, now)
            return
        fresh_until = now + (self.ttl if request.ttl is None else request.ttl)
        if entry is not None:
            # Re-fetched in place: the LRU position is kept.
            self._end(entry)
            entry[_EXPIRY] = fresh_until
            entry[_WARMED] = True
            entry[_USED] = False
        else:
            cache[key] = [fresh_until, True, False]
            if len(cache) > self.capacity:
                self._evict(now)
        if fresh_until != _INF:
            heapq.heappush(self.expiries, (fresh_until, key))
        self.warm_fetches += 1
        self.core.completed(
            request, FillReport(status=200, stored=True, fresh_until=fresh_until), now
        )

    def _evict(self, now: float) -> None:
        cache = self.cache
        while len(cache) > self.capacity:
            key, entry = cache.popitem(last=False)
            self.evictions += 1
            if entry[_WARMED]:
                self._end(entry)
                self.ledger.evicted(key, now)

    def _end(self, entry: list[Any]) -> None:
        """A lifetime ends (expired, evicted, replaced): judge it if warm-fetched."""
        if entry[_WARMED]:
            if entry[_USED]:
                self.warm_used += 1
            else:
                self.warm_unused += 1


_ALREADY_FRESH: Final = FillReport(already_fresh=True)


def _resolve(spec: StrategySpec) -> tuple[str, StrategyFactory]:
    if isinstance(spec, tuple):
        return spec
    try:
        return spec, STRATEGIES[spec]
    except KeyError:
        known = ", ".join(STRATEGIES)
        raise ValueError(f"unknown strategy {spec!r}; known: {known}") from None


def tracker_for(ttl: float, distinct_keys: int = 0) -> UsageTracker:
    """A fresh usage tracker with the windows the replay's strategies read.

    Its hot-key summary holds well over the top share scheduled-top asks for.
    """
    top_k = max(2000, 4 * math.ceil(TOP_SHARE * distinct_keys))
    return UsageTracker(windows=sorted({HOUR, reactive_window(ttl)}), top_k=top_k)


def replay(
    rows: Iterable[TraceRow],
    strategy: StrategySpec,
    *,
    capacity: int,
    ttl: float,
    distinct_keys: int = 0,
    path: str | Path | None = None,
    max_warm_ratio: float = math.inf,
) -> ReplayResult:
    """Replay ``rows`` (see :func:`warmer.trace.read_trace`) with one strategy.

    ``capacity``: cache entries; ``ttl``: seconds an entry is fresh
    (``math.inf``: never expires); ``distinct_keys``: the trace's, for the
    factories that size by it; ``path``: the file ``rows`` come from, for the
    oracles; ``max_warm_ratio``: the run's warm budget in warm fetches per
    request, held by ``oracle-prefetch`` and given to ``predictive``
    (``math.inf``: none).
    """
    if not max_warm_ratio >= 0:
        raise ValueError(f"max_warm_ratio must be at least 0, got {max_warm_ratio}")
    name, factory = _resolve(strategy)
    tracker = tracker_for(ttl, distinct_keys)
    cache: OrderedDict[str, list[Any]] = OrderedDict()
    get = cache.get

    def fresh_until(key: str) -> float:
        entry = get(key)
        return -math.inf if entry is None else float(entry[_EXPIRY])

    settled_until = [-math.inf]

    context = ReplayContext(
        tracker,
        ttl,
        capacity,
        distinct_keys,
        None if path is None else str(path),
        cache.__contains__,
        fresh_until,
        max_warm_ratio,
        lambda t: settled_until[0] >= t,
    )
    built = factory(context)
    if isinstance(built, WarmerCore):
        core = built
    else:
        core = WarmerCore(
            built,
            # Nothing else reads it: the built-in strategies that do not read it skip it.
            tracker=None if factory in _WITHOUT_TRACKER else tracker,
            ledger=EffectivenessLedger(max_tracked=max(100_000, 2 * capacity)),
        )
    simulation = _Simulation(
        name,
        core,
        capacity=capacity,
        ttl=ttl,
        cache=cache,
        settled=settled_until,
        settle=any(isinstance(s, PrefetchOracle) for s in core.strategies),
    )
    # The run makes no reference cycles (its garbage goes as it is dropped),
    # so the cyclic collector would only walk its live objects again and
    # again (a tenth of a run on a trace of many keys): off while it runs.
    collecting = gc.isenabled()
    gc.disable()
    try:
        started = time.perf_counter()
        simulation.run(rows)
        seconds = time.perf_counter() - started
    finally:
        if collecting:
            gc.enable()
    return simulation.finish(seconds)


@dataclass(frozen=True, slots=True)
class ReplayReport:
    """Every strategy's result over one trace, and the ``none`` baseline."""

    path: str
    summary: TraceSummary
    cache_size: CacheSize
    capacity: int
    ttl: float
    results: tuple[ReplayResult, ...]
    baseline: ReplayResult
    max_warm_ratio: float = math.inf

    def json_lines(self) -> list[dict[str, Any]]:
        return [r.to_json(self.baseline) for r in self.results]


def replay_file(
    path: str | Path,
    strategies: Sequence[StrategySpec] = STRATEGY_NAMES,
    *,
    cache_size: CacheSize | None = None,
    ttl: float = 300.0,
    key_rules: Callable[[str], str] | None = None,
    max_warm_ratio: float = math.inf,
) -> ReplayReport:
    """Replay the trace at ``path`` once per strategy (the file is read again each time).

    The trace is checked in a first pass (its distinct keys size the cache),
    so a malformed line is reported before any replay starts.  ``none`` is
    replayed as the baseline of the gains even when not asked for.
    ``key_rules``: the proxy's cache-key rules (``[cache]
    ignore_query_params`` ...), applied to each key's path as the proxy keys
    requests; the cache is still sized by the trace's distinct raw keys (the
    oracles read the raw keys).  ``ttl``: ``math.inf`` for entries that never
    expire; ``max_warm_ratio``: the run's warm budget (see :func:`replay`).
    """

    def rows() -> Iterable[TraceRow]:
        if key_rules is None:
            return read_trace(path)
        return ((ts, key_rules(key_path(k)), size, c) for ts, k, size, c in read_trace(path))

    size = cache_size if cache_size is not None else CacheSize(fraction=0.2)
    resolved = [_resolve(s) for s in strategies]
    summary = scan_trace(path)
    capacity = size.capacity(summary.distinct_keys)
    results: list[ReplayResult] = []
    baseline: ReplayResult | None = None
    for name, factory in resolved:
        result = replay(
            rows(),
            (name, factory),
            capacity=capacity,
            ttl=ttl,
            distinct_keys=summary.distinct_keys,
            path=path,
            max_warm_ratio=max_warm_ratio,
        )
        results.append(result)
        if name == "none" and factory is _none:
            baseline = result
    if baseline is None:
        baseline = replay(
            rows(),
            "none",
            capacity=capacity,
            ttl=ttl,
            distinct_keys=summary.distinct_keys,
        )
    return ReplayReport(
        str(path), summary, size, capacity, ttl, tuple(results), baseline, max_warm_ratio
    )


def format_table(report: ReplayReport) -> str:
    """The report as the text table ``warmproxy replay`` prints."""
    s = report.summary
    lines = [
        f"trace {Path(report.path).name}: {s.requests:,} requests, "
        f"{s.distinct_keys:,} distinct keys, {s.span / HOUR:.1f} h",
        f"cache {report.capacity:,} entries"
        + (f" ({report.cache_size})" if report.cache_size.fraction else "")
        + f", ttl {format_ttl(report.ttl)}"
        + (
            ""
            if math.isinf(report.max_warm_ratio)
            else f", warm budget {report.max_warm_ratio:g} fetches/request"
        ),
        "",
        f"{'strategy':<16}{'hit ratio':>10}{'warm/request':>14}{'precision':>11}"
        f"{'gain over none':>16}",
    ]
    for r in report.results:
        precision = r.precision
        gain = r.gain_over(report.baseline)
        lines.append(
            f"{r.strategy:<16}{r.hit_ratio * 100:>8.2f} %{r.warm_fetches_per_request:>14.4f}"
            + (f"{precision * 100:>9.1f} %" if precision is not None else f"{'-':>11}")
            + (f"{gain * 100:>+11.2f} pts" if gain is not None else f"{'-':>16}")
        )
    return "\n".join(lines)


def format_ttl(ttl: float) -> str:
    """``"300 s"``, or ``"never"`` (entries never expire)."""
    return "never" if math.isinf(ttl) else f"{ttl:g} s"


def parse_ttl(text: str) -> float:
    """``--ttl``: positive seconds, or ``never`` / ``inf`` (``math.inf``); ValueError otherwise."""
    word = text.strip().lower()
    if word in ("never", "inf", "infinity"):
        return math.inf
    try:
        ttl = float(word)
    except ValueError:
        raise ValueError(
            f"ttl {text!r} is not a number of seconds (or 'never': entries never expire)"
        ) from None
    if not 0 < ttl < math.inf:
        raise ValueError(f"ttl {text!r}: must be positive seconds (or 'never')")
    return ttl


def parse_warm_ratio(text: str) -> float:
    """``--max-warm-ratio``: warm fetches per request, at least 0; ValueError otherwise."""
    try:
        ratio = float(text)
    except ValueError:
        raise ValueError(
            f"max warm ratio {text!r} is not a number of warm fetches per request"
        ) from None
    if not 0 <= ratio < math.inf:
        raise ValueError(f"max warm ratio {text!r}: must be a finite number of at least 0")
    return ratio


def parse_strategies(text: str) -> list[str]:
    """``--strategies``: comma-separated built-in names; ValueError naming an unknown one."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ValueError("no strategy named")
    for name in names:
        if name not in STRATEGIES:
            raise ValueError(f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}")
    return list(dict.fromkeys(names))


def replay_command(
    trace: str | Path,
    *,
    cache_size: CacheSize,
    ttl: float,
    strategies: Sequence[StrategySpec] = STRATEGY_NAMES,
    key_rules: Callable[[str], str] | None = None,
    max_warm_ratio: float = math.inf,
    as_json: bool = False,
    out: TextIO,
    err: TextIO,
) -> int:
    """``warmproxy replay``: the table (or JSON lines) on ``out``; exit status.

    A trace that cannot be read is reported on ``err`` (with the line number
    of a malformed line) and gives 2.
    """
    report = _reading(
        "replay",
        trace,
        err,
        lambda: replay_file(
            trace,
            strategies,
            cache_size=cache_size,
            ttl=ttl,
            key_rules=key_rules,
            max_warm_ratio=max_warm_ratio,
        ),
    )
    if report is None:
        return 2
    if as_json:
        for line in report.json_lines():
            out.write(orjson.dumps(line).decode() + "\n")
    else:
        out.write(format_table(report) + "\n")
    out.flush()
    return 0


class _AnalysisProbe:
    """A strategy that warms nothing and feeds the usage analysis."""

    def __init__(self, analyzer: Analyzer) -> None:
        self.analyzer = analyzer
        self.last = -math.inf

    def observe(self, event: Observed) -> None:
        self.analyzer.observe(event)
        self.last = event.ts

    def due(self, now: float) -> list[WarmRequest]:
        return []

    def filled(self, key: str, url: str, host: str, now: float, fresh_until: float) -> None:
        return None


def analyze_file(
    path: str | Path, *, cache_size: CacheSize | None = None, ttl: float = 300.0, n: int = 20
) -> dict[str, Any]:
    """The ``/cache/warming/hot-data`` report for a recorded trace, offline.

    The trace is replayed without warming against the simulated cache, so the
    analysis sees hits and misses as a cache of ``cache_size`` and ``ttl``
    would have served them; the report is as of the last request.
    """
    from warmer.analysis import Analyzer

    probes: list[tuple[_AnalysisProbe, UsageTracker]] = []

    def probe(ctx: ReplayContext) -> list[ReplayStrategy]:
        p = _AnalysisProbe(Analyzer(ctx.tracker.windows))
        probes.append((p, ctx.tracker))
        return [p]

    replay_file(path, [("analysis", probe)], cache_size=cache_size, ttl=ttl)
    found, tracker = probes[-1]
    if found.last == -math.inf:
        raise TraceError("the trace holds no requests")
    return found.analyzer.report(tracker, found.last, n=n, levels=DEFAULT_PRIORITY_LEVELS)


def analyze_command(
    trace: str | Path, *, cache_size: CacheSize, ttl: float, n: int, out: TextIO, err: TextIO
) -> int:
    """``warmproxy analyze``: the hot-data report of a trace as JSON on ``out``."""
    report = _reading(
        "analyze", trace, err, lambda: analyze_file(trace, cache_size=cache_size, ttl=ttl, n=n)
    )
    if report is None:
        return 2
    out.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    out.flush()
    return 0


def _reading(command: str, trace: str | Path, err: TextIO, work: Callable[[], T]) -> T | None:
    """``work()``, or None after telling ``err`` why the trace could not be read
    (a malformed line names its number)."""
    try:
        return work()
    except TraceError as exc:
        print(f"warmproxy {command}: {trace}: {exc}", file=err)
    except OSError as exc:
        print(f"warmproxy {command}: cannot read {trace}: {exc.strerror or exc}", file=err)
    return None
