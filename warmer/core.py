"""The warmer core: every warming decision, in one place, driven from outside.

``observe(event)``, ``due(now)`` and ``completed(request, report, now)`` are
the whole of it (DESIGN rule 5).  The live warmer's asyncio runner
(:mod:`warmer.service`) and the replay (:mod:`warmer.replay`) both drive one
:class:`WarmerCore`; neither keeps orchestration of its own, so what replay
measures is what the proxy does.  Everything here is sans-I/O (rule 2): time
is the events' ``ts`` and the ``now`` each call takes.

What the core owns:

- the fan-out of each access event to the usage tracker, the strategies, the
  audience (who asks for what) and the effectiveness ledger;
- asking the strategies what is due, the ``[strategies] include/exclude``
  filter, and turning each wanted path into the warm requests that land
  where its clients look (:class:`~warmer.audience.Audience`: host and
  variant);
- booking each finished warm fetch: the ledger (per variant) and every
  strategy's ``filled``;
- the strategies' one measure of what a warm displaces
  (:class:`~warmer.precision.DisplacementCost`), fed once per event and fill.

The queue order is :class:`~warmer.queue.WarmQueue`'s alone; the runners
push what ``due`` returns into one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Protocol, runtime_checkable

from warmer.audience import Audience
from warmer.config import WarmerConfig
from warmer.ledger import EffectivenessLedger
from warmer.model import FillReport, Observed, Reason, WarmRequest, variant_tag
from warmer.precision import DisplacementCost
from warmer.predictive import OWN_SEQUENCE_KEYS, Predictor
from warmer.strategies import MissReactive, PathFilter, RefreshAhead
from warmer.tracker import UsageTracker

#: Seconds between two rounds of the live runner's ``due``; strategies that
#: act before an expiry decide this much ahead of it.
TICK_SECONDS = 1.0

_ORIGIN_OUTCOMES = frozenset({"miss", "stale"})


class Strategy(Protocol):
    """A warming strategy: watches events, says what is due, hears of fills."""

    def observe(self, event: Observed) -> None: ...
    def due(self, now: float) -> list[WarmRequest]: ...
    def filled(self, key: str, url: str, host: str, now: float, fresh_until: float) -> None: ...


@runtime_checkable
class Waking(Protocol):
    """A strategy with times of its own: ``due`` is also asked at :meth:`next_wake`."""

    def next_wake(self) -> float:
        """The next time ``due`` must be asked at (``math.inf``: none)."""
        ...


@runtime_checkable
class Displacing(Protocol):
    """A strategy that weighs what a warm displaces (:class:`DisplacementCost`)."""

    displacement: DisplacementCost
    #: False when the measure is shared and the core feeds it.
    feeds_displacement: bool


@runtime_checkable
class Budgeted(Protocol):
    """A strategy with a warm budget, charged per warm request after the fan-out."""

    def fanned_out(self, key: str, requests: int) -> None:
        """The one request asked for ``key`` became ``requests`` warm requests."""
        ...


def build_tracker(config: WarmerConfig) -> UsageTracker:
    """The usage tracker ``config`` asks for, with the window the miss-reactive
    strategy counts misses in."""
    windows = sorted({*config.windows, config.reactive.time_window})
    return UsageTracker(windows=windows, top_k=config.top_k, max_known_urls=config.max_known_urls)


def build_strategies(
    config: WarmerConfig,
    tracker: UsageTracker,
    *,
    sequences: object | None = None,
    others_misses: Callable[[str, float], int] | None = None,
) -> list[Strategy]:
    """The self-directed strategies ``config`` switches on, as the live proxy
    runs them; ``sequences``: a shared sequence model (the usage analysis's);
    ``others_misses``: ``(key, window)`` -> the misses the other replicas of a
    fleet counted (a view refreshed by a runner), added to this one's."""
    strategies: list[Strategy] = []
    r = config.reactive
    p = config.predictive
    levels = config.levels
    # What a warm displaces is one measure of the cache, whichever strategy
    # asks: one instance for all of them, fed once per event and fill by the
    # core; it follows as many lifetimes as the largest of their own would.
    displacement = DisplacementCost(
        max_keys=max(
            r.max_tracked_keys if r.enabled else 1,
            min(p.max_keys, OWN_SEQUENCE_KEYS) if p.enabled else 1,
        ),
        match_coding=config.audience.match_coding,
    )
    if r.enabled and r.refresh_ahead:
        strategies.append(
            RefreshAhead(
                min_hits=r.refresh_min_hits,
                fraction=r.refresh_fraction,
                max_keys=r.max_tracked_keys,
                priority=levels[0],
                min_precision=r.min_precision,
                # The live runner asks what is due once a tick: a refresh
                # window shorter than that (a short lifetime) would be
                # missed as often as not.
                lead=2 * TICK_SECONDS,
                displacement=displacement,
            )
        )
    if r.enabled and r.auto_warm:
        window = r.time_window
        fleet = others_misses

        def misses(key: str, now: float) -> int:
            local = tracker.misses(key, window, now)
            return local if fleet is None else local + fleet(key, window)

        strategies.append(
            MissReactive(
                threshold=r.threshold,
                misses=misses,
                max_keys=r.max_tracked_keys,
                priority=levels[len(levels) // 2],
                min_precision=r.min_precision,
                displacement=displacement,
            )
        )
    if p.enabled:
        strategies.append(
            Predictor(
                replace(p, refresh_lead=2 * TICK_SECONDS, priority=p.priority or levels[-1]),
                sequences=sequences if p.sequences else None,  # type: ignore[arg-type]
                feed_sequences=sequences is None,
                displacement=displacement,
            )
        )
    return strategies


class WarmerCore:
    """The warmer's decisions over one stream of events, on the caller's clock."""

    def __init__(
        self,
        strategies: Sequence[Strategy],
        *,
        tracker: UsageTracker | None = None,
        ledger: EffectivenessLedger | None = None,
        audience: Audience | None = None,
        path_filter: PathFilter | None = None,
        key_of: Callable[[str, str], str] = lambda url, host: url,
        observers: Sequence[Callable[[Observed], None]] = (),
    ) -> None:
        self.strategies = tuple(strategies)
        self.tracker = tracker
        self.ledger = ledger
        self.audience = audience if audience is not None else Audience(key_of=key_of)
        self.filter = path_filter if path_filter is not None else PathFilter()
        self._filtering = bool(self.filter.include or self.filter.exclude)
        self._key_of = key_of  # (url, host) -> the cache key clients of that host use
        # The observers of every event, in order: the tracker first (strategies
        # read its windows), then what else watches (the usage analysis), the
        # strategies, the audience.  The ledger is called apart: it takes the
        # event's latency.
        self._observers = (
            *([tracker.observe] if tracker is not None else []),
            *observers,
            *(s.observe for s in self.strategies),
            self.audience.observe,
        )
        # The displacement measures shared by strategies, fed here once each
        # (before the strategies read them).
        shared: dict[int, DisplacementCost] = {}
        for s in self.strategies:
            if isinstance(s, Displacing) and not s.feeds_displacement:
                shared.setdefault(id(s.displacement), s.displacement)
        self._displacements = tuple(shared.values())
        # (due, the strategy if its budget is charged after the fan-out)
        self._dues = tuple((s.due, s if isinstance(s, Budgeted) else None) for s in self.strategies)
        self._wakers = tuple(s for s in self.strategies if isinstance(s, Waking))

    # ------------------------------------------------------------ observe

    def observe(self, event: Observed) -> None:
        """One access event; O(1) amortised, never awaits."""
        for measure in self._displacements:
            measure.observe(event)
        for observe in self._observers:
            observe(event)
        ledger = self.ledger
        if ledger is not None:
            latency = getattr(event, "latency", None)
            ledger.observe(event, latency=latency)
            if latency is not None and event.outcome in _ORIGIN_OUTCOMES:
                # A user miss waited for the origin: what a warmed entry saves.
                ledger.origin_fetch(event.ts, latency)

    # ---------------------------------------------------------------- due

    def due(self, now: float) -> list[WarmRequest]:
        """What the strategies want warmed by ``now``: filtered, expanded to
        the hosts and variants clients use, not yet queued."""
        wanted: list[WarmRequest] = []
        prepared: list[WarmRequest] = []
        for due, budgeted in self._dues:
            asked = due(now)
            if not asked:
                continue
            if budgeted is not None:
                # Its budget is spent per warm request the origin sees.
                out = self.prepare(asked)
                if len(out) > len(asked):
                    self._charge_fan_out(budgeted, out)
                prepared.extend(out)
            else:
                wanted.extend(asked)
        if wanted:
            prepared.extend(self.prepare(wanted))
        return prepared

    def _charge_fan_out(self, strategy: Budgeted, requests: list[WarmRequest]) -> None:
        counts: dict[str, int] = {}
        key_of = self._key_of
        for request in requests:
            key = key_of(request.url, request.host)
            counts[key] = counts.get(key, 0) + 1
        for key, count in counts.items():
            if count > 1:
                strategy.fanned_out(key, count)

    def prepare(self, requests: Iterable[WarmRequest]) -> list[WarmRequest]:
        """Requests of any origin (strategies, schedule, the control API) as the
        warm requests to queue: include/exclude applied, each expanded to
        the hosts and variants its clients use."""
        if self._filtering:
            allows = self.filter.allows
            requests = [r for r in requests if allows(r.url)]
        return self.audience.expand(requests)

    def decided_lifetime(self, request: WarmRequest) -> float | None:
        """For a request ``due`` returned from the reactive strategies: the end
        of the cached entry's lifetime its decision was about (what tells one
        decision from the next across a fleet's replicas); else None."""
        strategy = self._reactive(request)
        if strategy is None:
            return None
        return strategy.lifetime_end(self._key_of(request.url, request.host))

    def dropped(self, request: WarmRequest) -> None:
        """A request ``due`` returned is not warmed here: another replica of a
        fleet claimed its decision (see :meth:`decided_lifetime`)."""
        strategy = self._reactive(request)
        if strategy is not None:
            strategy.dropped(self._key_of(request.url, request.host))

    def _reactive(self, request: WarmRequest) -> MissReactive | RefreshAhead | None:
        """The reactive strategy that asked for ``request``, if running."""
        if request.reason is Reason.REACTIVE:
            kind: type[MissReactive | RefreshAhead] = MissReactive
        elif request.reason is Reason.REFRESH_AHEAD:
            kind = RefreshAhead
        else:
            return None
        strategy = self.strategy(kind)
        return strategy if isinstance(strategy, MissReactive | RefreshAhead) else None

    def next_wake(self) -> float:
        """The earliest time a strategy asked to be woken at (``math.inf``: none)."""
        wakers = self._wakers
        if not wakers:
            return math.inf
        if len(wakers) == 1:
            return wakers[0].next_wake()
        return min(s.next_wake() for s in wakers)

    # ----------------------------------------------------------- completed

    def completed(
        self, request: WarmRequest, report: FillReport, now: float, seconds: float = 0.0
    ) -> str:
        """A warm request is finished: book it, and let the strategies follow
        the lifetime it stored.  Returns the request's cache key."""
        key = self._key_of(request.url, request.host)
        if request.touch:
            return key  # nothing fetched, nothing stored: not a warm fill
        ledger = self.ledger
        if ledger is not None:
            # Each variant is its own entry: judged by whether *its* clients hit it.
            booked = key + variant_tag(report.vary, report.vary_values) if report.vary else key
            label = request.label
            if report.already_fresh:
                ledger.warm_already_fresh(booked, now, label=label)
            elif report.stored:
                ledger.warm_stored(
                    booked,
                    now,
                    report.fresh_until,
                    label=label,
                    bytes=report.bytes,
                    fetch_seconds=seconds,
                )
            else:
                ledger.warm_not_stored(
                    booked,
                    now,
                    label=label,
                    failed=report.retryable or report.failure is not None,
                    bytes=report.bytes,
                    fetch_seconds=seconds,
                )
        if report.stored:
            url = request.url
            host = request.host
            fresh_until = report.fresh_until
            for measure in self._displacements:
                measure.filled(
                    key, fresh_until, now, report.vary, report.vary_values, report.coding
                )
            for strategy in self.strategies:
                strategy.filled(key, url, host, now, fresh_until)
        return key

    # ------------------------------------------------------------- lookups

    @property
    def predictor(self) -> Predictor | None:
        for strategy in self.strategies:
            if isinstance(strategy, Predictor):
                return strategy
        return None

    def strategy(self, kind: type[object]) -> object | None:
        """The first strategy of ``kind``, if running."""
        for strategy in self.strategies:
            if isinstance(strategy, kind):
                return strategy
        return None
