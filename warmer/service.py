"""The warmer as the control API and the proxy see it: one object that observes
traffic, runs the strategies and the schedule, and answers for all of it.

Every warming decision is the :class:`~warmer.core.WarmerCore`'s (DESIGN
rule 5): this module is its asyncio runner.  It hands the core each access
event, asks it what is due once a tick and queues that with the executor,
books each finished fetch with it, and runs the loops that need a clock (the
tick, the scheduler, alerts, saving state) on an injected
:class:`~warmer.clock.Clock`, so tests and the live replay run it on virtual
time.  The replay drives the same core without this runner.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import math
import re
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol

import psutil
from pydantic import ValidationError

from warmer import schedule as spec
from warmer.alerts import AlertMonitor
from warmer.analysis import Analyzer
from warmer.audience import Audience
from warmer.clock import Clock, WallClock
from warmer.config import WarmerConfig
from warmer.core import TICK_SECONDS, WarmerCore, build_strategies
from warmer.cron import Cron
from warmer.executor import Run, WarmExecutor
from warmer.ledger import EffectivenessLedger, LedgerCounters
from warmer.model import FillReport, Observed, Reason, WarmIdentity, WarmRequest
from warmer.optimizer import Proposal, propose, usage_by_source
from warmer.predictive import Predictor
from warmer.progress import RunProgress
from warmer.schedule_store import ScheduleState, ScheduleStateError
from warmer.scheduler import ScheduleClock, SourceDeps, build_source
from warmer.sources import SourceError, is_origin_path
from warmer.state_file import StateFile
from warmer.strategies import MissReactive, PathFilter, RefreshAhead
from warmer.timeline import Timeline
from warmer.tracker import HotKey, UsageTracker

log = logging.getLogger(__name__)

STATE_SAVE_INTERVAL = 300.0
#: Hot paths saved for the next start's hot sources.
HOT_SET_KEPT = 1000
HOT_SET_FORMAT = "warmproxy-hot-set"
HOT_SET_VERSION = 1
SOURCE_PATHS_KEPT = 100_000
START_STRATEGIES = ("proactive", "hot", "reactive")


class RunConflict(Exception):
    """A run was asked to start while another one runs."""


class BadRequest(ValueError):
    """Input the control API refuses; ``field`` names what is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class FleetView(Protocol):
    """The fleet's usage counts and warm claims, as this runner uses them
    (``proxy/fleet_counts.py`` shares them through Redis)."""

    def observe(self, event: Observed) -> None:
        """Count one access event for the fleet; O(1), never awaits."""
        ...

    def others_misses(self, key: str, window: float) -> int:
        """Misses of ``key`` in ``window`` counted by the other replicas."""
        ...

    def hot(self, n: int, window: float | None) -> list[tuple[str, str, str, int]] | None:
        """The fleet's hot (key, url, host, count); None: no fleet view now."""
        ...

    async def claim(self, decisions: Sequence[tuple[str, str, float]]) -> list[bool] | None:
        """Claim each (kind, key, lifetime end) once across the fleet: True
        where this replica takes it; None when nothing could be claimed."""
        ...


class FleetRunner(Protocol):
    """Runs shared by the fleet's replicas, as this runner starts and reads
    them (``proxy/fleet_runs.py`` puts their items on a Redis Stream)."""

    def available(self) -> bool:
        """Whether a new run should be the fleet's (else it runs here alone)."""
        ...

    def begin(self, run: Run) -> None:
        """Make ``run`` (unlisted, just created) a fleet run."""
        ...

    def owns(self, run: Run) -> bool:
        """``run`` is a fleet run whose requests go to the fleet now."""
        ...

    def add(self, run: Run, requests: Iterable[WarmRequest]) -> int:
        """Hand ``requests`` to the run's workers; how many were new to it."""
        ...

    def fail(self, run: Run, key: str, error: str) -> None:
        """Count a failure of the run that is no request (a source unread)."""
        ...

    def seal(self, run: Run) -> None:
        """No more requests for ``run``."""
        ...

    async def settled(self, run: Run) -> None:
        """Until every replica can find ``run`` (or it runs here alone)."""
        ...

    def runs(self) -> list[Run]:
        """Recent fleet runs, running and finished, by start time."""
        ...

    def find(self, run_id: str) -> Run | None: ...

    async def refresh(self) -> None:
        """Read the fleet's runs now; never raises."""
        ...

    async def stop(self) -> list[Run]:
        """Stop every running fleet run; raises RedisError/OSError."""
        ...


@dataclass(frozen=True, slots=True)
class PreparedSettings:
    """New warmer settings, built and checked but not in force yet
    (:meth:`Warmer.prepare_settings`, then :meth:`Warmer.apply_settings`)."""

    config: WarmerConfig
    core: WarmerCore
    deps: SourceDeps
    retrain: Cron
    alerts: AlertMonitor
    #: The configuration file's schedule.
    configured_schedule: spec.Schedule
    #: The schedule to put in force; None: the one in force stays.
    schedule: spec.Schedule | None
    #: The file's changed schedule replaces a posted one (and is saved over it).
    replaces_posted: bool


class Warmer:
    """Observation, strategies, schedule and runs, over one executor."""

    def __init__(
        self,
        config: WarmerConfig,
        *,
        executor: WarmExecutor,
        tracker: UsageTracker,
        state: ScheduleState,
        deps: SourceDeps,
        schedule: spec.Schedule,
        key_of: Callable[[str, str], str],
        to_path: Callable[[str], tuple[str, str]],
        store_paths: Callable[[str], AsyncIterator[tuple[str, str]]],
        model_file: StateFile | None = None,
        ledger_file: StateFile | None = None,
        hot_file: StateFile | None = None,
        clock: Clock | Callable[[], float] | None = None,
        fleet: FleetView | None = None,
        fleet_runs: FleetRunner | None = None,
    ) -> None:
        """``fleet``: the fleet's counts and claims (Redis store); None: alone.
        ``fleet_runs``: runs the fleet's replicas share (Redis store)."""
        self.config = config
        self.fleet = fleet
        self.fleet_runs = fleet_runs
        self.executor = executor
        executor.on_result = self.on_result
        self.tracker = tracker
        self.state = state
        # Hot sources rank by the tracker; before it has seen a request (just
        # after a restart, when warm_on_start runs) by the hot set saved at
        # the last stop.
        self._tracker_hot_paths = deps.hot_paths
        self._deps = replace(deps, hot_paths=self.hot_paths)
        self._hot_file = hot_file
        self._saved_hot: list[str] = []
        self._key_of = key_of  # (url, host) -> cache key
        self._to_path = to_path  # a warm target as given -> (host, path); BadRequest
        self._store_paths = store_paths  # glob -> (host, path) of keys in the store
        clock = clock if clock is not None else WallClock()
        self._clock: Callable[[], float] = clock
        # Loops sleep on the same clock they read (a scaled or manual clock in
        # the live replay and tests); a bare function of time sleeps for real.
        self._sleep = getattr(clock, "sleep", asyncio.sleep)
        self.analyzer = Analyzer(tracker.windows) if config.analysis else None
        # False: access events are ignored (tracking.enabled = false, set on a reload).
        self.observing = True
        m = config.monitoring
        ledger = EffectivenessLedger(max_tracked=m.max_tracked) if m.track_effectiveness else None
        self.core = WarmerCore(
            # One sequence model for the analysis and the predictions, fed by
            # the analysis when there is one.
            build_strategies(
                config,
                tracker,
                sequences=self.analyzer.sequences if self.analyzer else None,
                others_misses=fleet.others_misses if fleet is not None else None,
            ),
            tracker=tracker,
            ledger=ledger,
            audience=Audience(config.audience, key_of=key_of),
            path_filter=PathFilter(config.include, config.exclude),
            key_of=key_of,
            observers=(self.analyzer.observe,) if self.analyzer is not None else (),
        )
        self.filter = self.core.filter
        self.ledger = ledger
        self.refresh_ahead = self.core.strategy(RefreshAhead)
        self.miss_reactive = self.core.strategy(MissReactive)
        self.predictor = self.core.predictor
        self._model_file = model_file
        self._ledger_file = ledger_file
        self._retrain = Cron.parse(config.retrain_schedule)
        self.alerts = AlertMonitor(m.thresholds)
        self.timeline = Timeline()
        self.schedule = schedule
        # The configuration file's schedule, told apart from a posted one.
        self._configured_schedule = schedule
        self._posted_at: float | None = None  # when the schedule in force was posted
        self._clock_of_schedule = ScheduleClock(schedule, clock())
        self._schedule_changed = asyncio.Event()
        # Held while a schedule is saved and put in force (a post, a reload):
        # a post cannot land between a reload's save and its swap.
        self.schedule_lock = asyncio.Lock()
        self._source_runs: dict[str, Run] = {}
        self._source_paths: dict[tuple[str, str], None] = {}
        self._source_sizes: dict[str, int] = {}
        self._first_seen: float | None = None
        self.schedule_skipped = 0
        self.schedule_errors: dict[str, str] = {}
        # Without the ledger: user hits served from entries a warm fetch
        # stored, and (hits, misses) at the first warm fill.
        self.hits_on_warmed = 0
        self._hits_before: tuple[int, int] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._process = psutil.Process()
        self._process.cpu_percent(interval=None)  # the first reading primes it

    def now(self) -> float:
        return self._clock()

    @property
    def default_priority(self) -> str:
        """The priority of on-demand requests that name none (the middle level)."""
        return _middle(self.config.levels)

    @property
    def tracker_windows(self) -> frozenset[float]:
        return frozenset(self.tracker.windows)

    # ---------------------------------------------------------- observation

    def observe(self, event: Observed) -> None:
        """One access event; O(1), never awaits."""
        self.observe_many((event,))

    def observe_many(self, events: Sequence[Observed]) -> None:
        """Access events in the order they came; O(1) each, never awaits (the
        proxy's event hub hands over every request this way, a drain at a time)."""
        if not self.observing or not events:
            return
        if self._first_seen is None:
            self._first_seen = events[0].ts
        # Looked up once per batch: this loop runs for every request.
        core_observe = self.core.observe
        fleet_observe = self.fleet.observe if self.fleet is not None else None
        timeline_request = self.timeline.request
        count_warmed_hits = self.ledger is None
        for event in events:
            core_observe(event)
            if fleet_observe is not None:
                fleet_observe(event)
            timeline_request(event.ts, event.outcome, event.status, event.bytes)
            if count_warmed_hits and event.outcome == "hit" and event.warmed:
                # Without the ledger, the one effectiveness figure kept.
                self.hits_on_warmed += 1

    def _submit(self, requests: list[WarmRequest], run: Run | None = None) -> None:
        """Queue requests as the core prepares them: for the hosts and variants
        their clients use; a fleet run's go to the fleet's workers."""
        prepared = self.core.prepare(requests)
        fleet = self.fleet_runs
        if run is not None and fleet is not None and fleet.owns(run):
            fleet.add(run, prepared)
        else:
            self.executor.submit(prepared, run)

    def _new_run(self, strategy: str) -> Run:
        """A new run: the fleet's when there is one to share it with, else this replica's."""
        fleet = self.fleet_runs
        if fleet is not None and fleet.available():
            run = self.executor.new_run(strategy, listed=False)
            fleet.begin(run)
            return run
        return self.executor.new_run(strategy)

    def _seal(self, run: Run) -> None:
        fleet = self.fleet_runs
        if fleet is not None and fleet.owns(run):
            fleet.seal(run)
        else:
            self.executor.seal(run)

    def active_runs(self) -> list[Run]:
        """Running runs, this replica's and the fleet's, by start time."""
        fleet = self.fleet_runs.runs() if self.fleet_runs is not None else []
        return sorted(
            [*self.executor.active_runs(), *(r for r in fleet if r.running)],
            key=lambda r: r.progress.started_at,
        )

    def finished_runs(self) -> list[Run]:
        """Recent finished runs, this replica's and the fleet's, by end time."""
        fleet = self.fleet_runs.runs() if self.fleet_runs is not None else []
        return sorted(
            [*self.executor.finished_runs(), *(r for r in fleet if not r.running)],
            key=lambda r: r.progress.finished_at or r.progress.started_at,
        )

    def latest_run(self) -> Run | None:
        """The most recent running run, else the last finished one."""
        active = self.active_runs()
        if active:
            return active[-1]
        finished = self.finished_runs()
        return finished[-1] if finished else None

    def find_run(self, run_id: str) -> Run | None:
        """A recent run by id, this replica's or the fleet's."""
        found = self.executor.run(run_id)
        if found is None and self.fleet_runs is not None:
            found = self.fleet_runs.find(run_id)
        return found

    async def run_settled(self, run: Run) -> None:
        """Until any replica answers for ``run`` (a fleet run is written to
        Redis in the background), so its id can be handed out."""
        if self.fleet_runs is not None:
            await self.fleet_runs.settled(run)

    async def refresh_runs(self) -> None:
        """Read the fleet's runs now (before an answer about them); never raises."""
        if self.fleet_runs is not None:
            await self.fleet_runs.refresh()

    def tick(self, now: float) -> list[WarmRequest]:
        """What the core wants warmed now (prepared, not yet queued)."""
        wanted = self.core.due(now)
        if self.ledger is not None:
            self.ledger.run_active(bool(self.active_runs()), now)
        return wanted

    def on_result(self, request: WarmRequest, report: FillReport, seconds: float = 0.0) -> None:
        """The executor finished a warm request: the core books it."""
        if report.stored and self._hits_before is None and self.ledger is None:
            t = self.tracker.totals()
            self._hits_before = (t.hits, t.misses)
        now = self._clock()
        if not (report.already_fresh or request.touch):  # a touch fetches nothing
            self.timeline.warm_fetch(now)
        self.core.completed(request, report, now, seconds)

    # ---------------------------------------------------------------- loops

    async def run(self) -> None:
        """The strategy tick and the scheduler, until cancelled."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._tick_loop())
            group.create_task(self._schedule_loop())
            group.create_task(self._monitor_loop())
            if (self.ledger is not None and self._ledger_file is not None) or self._hot_file:
                group.create_task(self._save_state_loop())
            # Always: a reload may switch the predictive strategy on.
            group.create_task(self._retrain_loop())

    async def _tick_loop(self) -> None:
        while True:
            wanted = self.tick(self._clock())
            if wanted and self.fleet is not None:
                wanted = await self._claimed(wanted)
            if wanted:
                self.executor.submit(wanted)
            await self._sleep(TICK_SECONDS)

    async def _claimed(self, requests: list[WarmRequest]) -> list[WarmRequest]:
        """``requests`` but those whose decision another replica claimed first.

        A reactive or refresh-ahead decision is about one lifetime of a cached
        entry the replicas share: the first replica to claim it warms it, the
        others drop it (``warmproxy_fleet_claims_total``).  When the claim
        cannot be made (Redis away), every request stays: each replica warms
        alone, as a single process does.
        """
        assert self.fleet is not None
        decisions: list[tuple[str, str, float]] = []
        claimed: list[int] = []
        for i, request in enumerate(requests):
            end = self.core.decided_lifetime(request)
            if end is None or not math.isfinite(end):
                continue
            key = self._key_of(request.url, request.host)
            if request.headers:  # each variant is its own entry, its own decision
                key += "#" + "&".join(f"{name}={value}" for name, value in request.headers)
            decisions.append((request.reason.value, key, end))
            claimed.append(i)
        if not decisions:
            return requests
        won = await self.fleet.claim(decisions)
        if won is None:
            return requests
        lost = {i for i, ok in zip(claimed, won, strict=True) if not ok}
        if not lost:
            return requests
        for i in lost:
            self.core.dropped(requests[i])
        return [r for i, r in enumerate(requests) if i not in lost]

    async def _schedule_loop(self) -> None:
        while True:
            self._schedule_changed.clear()
            if self.config.proactive_enabled:
                await self.fire_due(self._clock())
            next_at = self._clock_of_schedule.next_at() if self.config.proactive_enabled else None
            timeout = None if next_at is None else max(0.0, next_at - self._clock())
            await self._changed_or_slept(timeout)

    async def _changed_or_slept(self, seconds: float | None) -> None:
        """Until the schedule changes or ``seconds`` pass on the clock."""
        changed = asyncio.ensure_future(self._schedule_changed.wait())
        if seconds is None:
            await changed
            return
        slept = asyncio.ensure_future(self._sleep(seconds))
        try:
            await asyncio.wait({changed, slept}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (changed, slept):
                waiter.cancel()

    async def _monitor_loop(self) -> None:
        while True:
            await self._sleep(self.config.monitoring.interval)
            self.check_alerts(self._clock())
            if self.config.optimize == "apply":
                await self.apply_optimization()

    def check_alerts(self, now: float) -> None:
        """Evaluate the alert rules; log what was raised or cleared."""
        if self.ledger is None:
            return
        for change in self.alerts.evaluate(self.ledger.figures(now), now):
            level = logging.WARNING if change.raised else logging.INFO
            log.log(
                level,
                change.describe(),
                extra={"alert": change.name, "raised": change.raised, "value": change.value},
            )

    async def _retrain_loop(self) -> None:
        """On ``retrain_schedule``: weigh old evidence down and save the model."""
        while True:
            now = self._clock()
            await self._sleep(max(0.0, self._retrain.next_after(now) - now))
            if self.predictor is not None:
                self.predictor.retrain()
                await self.save_model()

    async def load_state(self) -> None:
        """Continue from the saved predictive model and effectiveness ledger; a
        bad file is logged, set aside and rebuilt."""
        if self.predictor is not None and self._model_file is not None:
            await self._model_file.load(self.predictor.load_document)
        if self.ledger is not None and self._ledger_file is not None:
            await self._ledger_file.load(self.ledger.load_document)
        if self._hot_file is not None:
            await self._hot_file.load(self._load_hot_document)

    def hot_paths(self, n: int) -> list[str]:
        """The top ``n`` hot paths; before any request, those of the last stop."""
        if self._saved_hot and not self.tracker.totals().requests:
            return self._saved_hot[:n]
        return self._tracker_hot_paths(n)

    def _hot_document(self) -> dict[str, Any]:
        return {
            "format": HOT_SET_FORMAT,
            "version": HOT_SET_VERSION,
            "saved_at": self._clock(),
            "paths": self.hot_paths(HOT_SET_KEPT),
        }

    def _load_hot_document(self, document: Any) -> None:
        if not isinstance(document, dict) or document.get("format") != HOT_SET_FORMAT:
            raise ValueError("not a warmproxy hot set")
        if document.get("version") != HOT_SET_VERSION:
            version = document.get("version")
            raise ValueError(f"hot set version {version!r}, this warmproxy reads {HOT_SET_VERSION}")
        paths = document.get("paths")
        if not isinstance(paths, list) or not all(
            isinstance(p, str) and is_origin_path(p) for p in paths
        ):
            raise ValueError("hot set damaged: paths must be a list of paths")
        self._saved_hot = paths[:HOT_SET_KEPT]

    async def save_model(self) -> None:
        if self.predictor is not None and self._model_file is not None:
            await self._model_file.save(self.predictor.to_document())

    async def save_state(self) -> None:
        """Save the effectiveness ledger and the hot set."""
        if self.ledger is not None and self._ledger_file is not None:
            self.ledger.settle(self._clock())
            await self._ledger_file.save(self.ledger.to_document())
        if self._hot_file is not None:
            await self._hot_file.save(self._hot_document())

    async def _save_state_loop(self) -> None:
        """Save the ledger and the hot set now and then, so a crash loses
        minutes, not everything."""
        while True:
            await self._sleep(STATE_SAVE_INTERVAL)
            await self.save_state()

    async def fire_due(self, now: float) -> list[Run]:
        """Start a run for every source whose firing time has come by ``now``.

        A source whose previous run still runs is skipped (two runs of one
        schedule never overlap), and so is a firing another replica claimed.
        """
        started = []
        for source, firing in self._clock_of_schedule.due(now):
            previous = self._source_runs.get(source.name)
            if previous is not None and previous.running:
                self.schedule_skipped += 1
                log.warning("scheduled source %s still warming: firing skipped", source.name)
                continue
            if not await self.state.claim(source.name, firing):
                continue
            run = self._new_run(f"scheduled:{source.name}")
            self._source_runs[source.name] = run
            self._spawn(self._feed(run, [source]))
            started.append(run)
        return started

    async def _feed(self, run: Run, sources: list[spec.ScheduledSource]) -> None:
        """Resolve ``sources`` into paths and submit them to ``run``."""
        try:
            for item in sources:
                try:
                    paths = await build_source(item, self._deps).paths()
                except Exception as exc:  # any failure fails the run, never a silent 0 items
                    error = _source_error(item.name, exc)
                    self.schedule_errors[item.name] = error
                    if self.fleet_runs is not None and self.fleet_runs.owns(run):
                        self.fleet_runs.fail(run, item.name, error)
                    else:
                        run.progress.item_done(item.name, False, 0.0, self._clock(), error)
                    unexpected = not isinstance(exc, SourceError | OSError | ValueError)
                    log.warning(
                        "warming source %s failed: %s", item.name, error, exc_info=unexpected
                    )
                    continue
                self.schedule_errors.pop(item.name, None)
                self._source_sizes[item.name] = len(paths)
                requests = []
                for p in sorted(paths, key=lambda sp: sp.rank):
                    self._remember_source_path(p.url)
                    if self.filter.allows(p.url):
                        requests.append(
                            WarmRequest(
                                url=p.url,
                                priority=item.priority,
                                reason=Reason.SCHEDULED,
                                ttl=item.ttl,
                                source=item.name,
                            )
                        )
                self._submit(requests, run)
        finally:
            self._seal(run)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _remember_source_path(self, url: str) -> None:
        self._source_paths[("", url)] = None
        if len(self._source_paths) > SOURCE_PATHS_KEPT:
            del self._source_paths[next(iter(self._source_paths))]

    # ----------------------------------------------------------------- runs

    def start(
        self,
        strategy: str,
        *,
        sources: list[str] | None = None,
        priority: str | None = None,
        limit: int | None = None,
    ) -> Run:
        """Start a run of ``strategy`` now; RunConflict while another run runs."""
        if strategy not in START_STRATEGIES:
            raise BadRequest("strategy", f"must be one of {list(START_STRATEGIES)}")
        if priority is not None:
            self._check_priority(priority)
        if self.active_runs():
            raise RunConflict("a warming run is already running; stop it first")
        run = self._new_run(strategy)
        if strategy == "proactive":
            chosen = [s for s in self.schedule.sources if s.enabled]
            if sources is not None:
                known = {s.name for s in self.schedule.sources}
                unknown = [n for n in sources if n not in known]
                if unknown:
                    self._seal(run)
                    raise BadRequest("sources", f"no source named {unknown[0]!r}")
                chosen = [s for s in self.schedule.sources if s.name in sources]
            if priority is not None:
                chosen = [s.model_copy(update={"priority": priority}) for s in chosen]
            self._spawn(self._feed(run, chosen))
            return run
        n = limit or self.config.hot_top_n
        hot = self.tracker.hot(n, self._clock())
        if strategy == "hot" and not hot:
            # Just after a restart: the hot set of the last stop.
            hot = [HotKey(self._key_of(url, ""), url, "", 0, 0) for url in self.hot_paths(n)]
        if strategy == "reactive":
            threshold = self.config.reactive.threshold
            window = self.config.reactive.time_window
            now = self._clock()
            hot = [h for h in hot if self.tracker.misses(h.key, window, now) > threshold]
        requests = [
            WarmRequest(
                url=h.url,
                host=h.host,
                priority=priority or self.config.levels[0],
                reason=Reason.REACTIVE if strategy == "reactive" else Reason.SCHEDULED,
            )
            for h in hot
            if self.filter.allows(h.url)
        ]
        self._submit(requests, run)
        self._seal(run)
        return run

    async def stop(self) -> list[Run]:
        """Stop this replica's runs and the fleet's (on every replica)."""
        stopped = await self.executor.stop()
        if self.fleet_runs is not None:
            try:
                stopped += await self.fleet_runs.stop()
            except Exception as exc:  # Redis away: the other replicas go on
                log.error("stopping the fleet's warm runs failed: %s", exc)
        return stopped

    async def shutdown(self) -> None:
        """Stop runs, drop what is queued, save the model and the ledger, and
        release the schedule state (a changed schedule was saved when it changed)."""
        await self.executor.stop()
        self.executor.clear_background()
        await self.executor.idle_in_flight(self.executor.timeout)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.save_model()
        await self.save_state()
        await self.state.close()

    def warm_urls(self, targets: Iterable[str], priority: str, strategy: str) -> Run:
        """Warm the given paths (or same-origin URLs) as one run; BadRequest names a bad one."""
        self._check_priority(priority)
        requests = []
        for i, target in enumerate(targets):
            # The field as the body names it: url, or urls[i] for a bulk list.
            field_name = f"urls[{i}]" if strategy == "bulk" else "url"
            try:
                host, path = self._to_path(target)
            except BadRequest as exc:
                raise BadRequest(field_name, str(exc)) from None
            if not self.filter.allows(path):
                raise BadRequest(field_name, f"{path} is excluded by [strategies] include/exclude")
            requests.append(
                WarmRequest(url=path, host=host, priority=priority, reason=Reason.ON_DEMAND)
            )
        run = self._new_run(strategy)
        self._submit(requests, run)
        self._seal(run)
        return run

    async def warm_pattern(self, pattern: str, priority: str, limit: int) -> Run:
        """Warm every known path matching the glob: history, sources and the store.

        The glob is compiled for this call only (``fnmatchcase`` would keep it
        among up to 32,768 compiled patterns), and matching gives way to the
        event loop every few milliseconds, so a glob over 100,000 known paths
        never holds the proxy's clients.
        """
        self._check_priority(priority)
        match = re.compile(fnmatch.translate(pattern)).match
        loop = asyncio.get_running_loop()
        slice_end = loop.time() + _MATCH_SLICE
        found: dict[tuple[str, str], None] = {}
        known = [(host, url) for _, url, host in self.tracker.known()]
        for host, url in [*known, *self._source_paths]:
            if match(url):
                found.setdefault((host, url), None)
            if loop.time() > slice_end:
                await asyncio.sleep(0)
                slice_end = loop.time() + _MATCH_SLICE
        async for host, url in self._store_paths(pattern):
            found.setdefault((host, url), None)
        requests = [
            WarmRequest(url=url, host=host, priority=priority, reason=Reason.ON_DEMAND)
            for host, url in list(found)[:limit]
            if self.filter.allows(url)
        ]
        run = self._new_run("pattern")
        self._submit(_unique_by_url(requests), run)
        self._seal(run)
        return run

    def _check_priority(self, priority: str) -> None:
        if priority not in self.config.levels:
            raise BadRequest("priority", f"must be one of {list(self.config.levels)}")

    # ------------------------------------------------------------- schedule

    def schedule_document(self) -> dict[str, Any]:
        """The schedule in force as ``GET /schedule`` shows it, and where it came from.

        ``origin`` is "config" while the configuration file's
        ``[strategies.proactive]`` sources are in force, "posted" once a schedule
        posted through the control API (or applied by the optimizer) replaced
        them; a posted one is saved and also wins after a restart.
        ``posted_at`` is when it was saved, where that is known.
        """
        document = self.schedule.model_dump(mode="json")
        document["next_runs"] = {
            s.name: _iso(self._clock_of_schedule.next_of(s.name)) for s in self.schedule.sources
        }
        document["errors"] = dict(self.schedule_errors)
        document["persisted_in"] = self.state.describe()
        posted = self.schedule is not self._configured_schedule
        document["origin"] = "posted" if posted else "config"
        document["posted_at"] = _iso(self._posted_at) if posted else None
        if self.config.optimize != "off":
            proposal = self.proposal(self._clock())
            document["proposed"] = {
                "mode": self.config.optimize,
                **proposal.to_json(),
                "schedule": proposal.apply_to(self.schedule).model_dump(mode="json"),
            }
        return document

    def proposal(self, now: float) -> Proposal:
        """The schedule optimizer's proposal from the traffic's peaks and the ledger."""
        by_label = self.ledger.figures(now).by_label if self.ledger is not None else {}
        return propose(
            self.schedule,
            hour_of_week=self.tracker.hour_of_week(),
            source_sizes=self._source_sizes,
            fill_rate=self._fill_rate(),
            usage=usage_by_source(by_label),
            now=now,
            observed_from=self._first_seen,
            hot_top_n=self.config.hot_top_n,
        )

    def _fill_rate(self) -> float:
        """Paths per second warming achieves: the rate limit, or less if measured so."""
        rate = self.config.fill_rate if self.config.fill_rate > 0 else math.inf
        c = self.executor.counters
        if c.fetches >= 10 and c.fetch_seconds > 0:
            rate = min(rate, self.executor.limit * c.fetches / c.fetch_seconds)
        return rate if math.isfinite(rate) else 100.0

    async def apply_optimization(self) -> bool:
        """Apply the optimizer's proposal when it changes the schedule ("apply" mode)."""
        now = self._clock()
        proposal = self.proposal(now)
        if not proposal.changes:
            return False
        plan = proposal.apply_to(self.schedule)
        try:
            await self.replace_schedule(plan.model_dump(mode="json"))
        except (ScheduleStateError, ValidationError, BadRequest) as exc:
            log.error("optimized schedule not applied: %s", exc)
            return False
        log.info(
            "schedule optimized",
            extra={"actions": [a.to_json() for a in proposal.actions if a.action != "keep"]},
        )
        return True

    async def replace_schedule(self, document: Any) -> spec.Schedule:
        """Validate, persist, then apply; on any error nothing changes.

        Raises ValidationError or BadRequest for a bad document and
        ScheduleStateError when it cannot be saved.
        """
        if isinstance(document, dict):
            document = {k: v for k, v in document.items() if k not in _READ_ONLY_FIELDS}
        plan = self._deps.policy.resolve(spec.Schedule.model_validate(document))
        try:
            plan.check_priorities(self.config.levels)
        except ValueError as exc:
            field_name, _, message = str(exc).partition(": ")
            raise BadRequest(field_name, message) from None
        self._check_buildable(plan)
        async with self.schedule_lock:
            # Saved as shown: DSN passwords masked (a configuration file's
            # source is matched again when the saved schedule is loaded).
            posted_at = self._clock()
            await self.state.save(plan.model_dump(mode="json"), at=posted_at)
            self._posted_at = posted_at
            self._apply(plan)
        return plan

    def _check_buildable(self, plan: spec.Schedule) -> None:
        """Build every source (no I/O): what building refuses, validation refuses.

        BadRequest names the field as validation does, e.g.
        ``sources.0.source.file.path`` (the source's type, then its field).
        """
        for i, item in enumerate(plan.sources):
            where = f"sources.{i}.source.{item.source.type}"
            try:
                build_source(item, self._deps)
            except spec.SourceFieldError as exc:
                raise BadRequest(f"{where}.{exc.field}", exc.message) from None
            except ValueError as exc:
                raise BadRequest(where, str(exc)) from None

    def _apply(self, plan: spec.Schedule) -> None:
        self.schedule = plan
        self._clock_of_schedule = ScheduleClock(plan, self._clock())
        self._schedule_changed.set()

    async def load_saved_schedule(self) -> None:
        """Use the saved (posted) schedule, if any, over the configured one, and say so.

        A schedule posted once outlives every later change of the configuration
        file, so using it is logged as a warning naming where it is saved.
        """
        configured = self._configured_schedule
        try:
            document = await self.state.load()
        except ScheduleStateError as exc:
            log.error("saved schedule unreadable, using the configured one: %s", exc)
            return
        if document is None:
            return
        try:
            plan = self._saved_plan(document)
        except (ValidationError, ValueError) as exc:
            log.error("saved schedule invalid, using the configured one: %s", exc)
            return
        self._apply(plan)
        self._posted_at = await self.state.saved_at()
        posted_at = _iso(self._posted_at)
        where = self.state.describe()
        log.warning(
            "the schedule posted through the control API and saved in %s (at %s) overrides "
            "the configuration file's [strategies.proactive] sources: %d saved source(s) "
            "in force instead of %d configured; POST /cache/warming/schedule to change it, "
            "or delete the saved one to use the configuration file's again",
            where,
            posted_at or "an unknown time",
            len(plan.sources),
            len(configured.sources),
            extra={
                "saved_in": where,
                "posted_at": posted_at,
                "saved_sources": len(plan.sources),
                "configured_sources": len(configured.sources),
            },
        )

    def _saved_plan(self, document: Any) -> spec.Schedule:
        """A saved schedule checked as a post is; ValidationError or ValueError."""
        plan = self._deps.policy.resolve(spec.Schedule.model_validate(document))
        plan.check_priorities(self.config.levels)
        self._check_buildable(plan)
        return plan

    async def adopt_schedule(self, document: Any, posted_at: float | None) -> bool:
        """Put in force a schedule another replica saved (the fleet's, with Redis):
        checked as a post is, not saved again.  False (logged) when this replica
        refuses it, e.g. a source its configuration does not allow; the schedule
        in force then stays."""
        try:
            plan = self._saved_plan(document)
        except (ValidationError, ValueError) as exc:
            log.error("the fleet's schedule is invalid here, the one in force stays: %s", exc)
            return False
        async with self.schedule_lock:
            if posted_at is None and plan == self._configured_schedule:
                # A reload saved it (no post time) and this replica's file
                # says the same: the configuration file's, as on that replica.
                self._posted_at = None
                self._apply(self._configured_schedule)
            else:
                self._posted_at = posted_at
                self._apply(plan)
        return True

    # --------------------------------------------------------------- reload

    def prepare_settings(
        self,
        config: WarmerConfig,
        *,
        schedule: spec.Schedule,
        policy: spec.SourcePolicy,
    ) -> PreparedSettings:
        """Build everything new settings need, changing nothing (a reload's first half).

        The levels, the tracker's windows and sizes, the ledger and the
        audience stay as they are (changing them needs a restart). Strategies
        that stay on are kept, with what they learned, and only retuned;
        one switched on starts afresh. ``schedule`` is the configuration
        file's: it is put in force when it changed, even over a schedule
        posted through the control API (docs/operations.md, "Reload");
        unchanged, the schedule in force stays, posted or not.
        Raises ValueError when something cannot be built.
        """
        sequences = self.analyzer.sequences if self.analyzer else None
        kept = {type(s): s for s in self.core.strategies}
        strategies = [
            kept.get(type(s), s)
            for s in build_strategies(
                config,
                self.tracker,
                sequences=sequences,
                others_misses=self.fleet.others_misses if self.fleet is not None else None,
            )
        ]
        core = WarmerCore(
            strategies,
            tracker=self.tracker,
            ledger=self.ledger,
            audience=self.core.audience,
            path_filter=PathFilter(config.include, config.exclude),
            key_of=self._key_of,
            observers=(self.analyzer.observe,) if self.analyzer is not None else (),
        )
        thresholds = config.monitoring.thresholds
        alerts = self.alerts if thresholds == self.alerts.thresholds else AlertMonitor(thresholds)
        changed = schedule != self._configured_schedule
        posted = self.schedule is not self._configured_schedule
        return PreparedSettings(
            config=config,
            core=core,
            deps=replace(self._deps, policy=policy),
            retrain=Cron.parse(config.retrain_schedule),
            alerts=alerts,
            configured_schedule=schedule if changed else self._configured_schedule,
            schedule=schedule if changed else None,
            replaces_posted=changed and posted,
        )

    async def save_prepared_schedule(self, prepared: PreparedSettings) -> None:
        """Save the file's schedule over a posted one it replaces (before applying,
        so a restart keeps it), and, where the saved schedule is the fleet's, any
        change of the file's (so every replica follows, as after a post); raises
        ScheduleStateError, and then nothing changed."""
        if prepared.schedule is not None and (prepared.replaces_posted or self.state.shared):
            # No post time: the configuration file's (GET shows posted_at null).
            await self.state.save(prepared.schedule.model_dump(mode="json"))

    def apply_settings(self, prepared: PreparedSettings) -> None:
        """Put prepared settings in force (a reload's second half): assignments only."""
        c = prepared.config
        for strategy in prepared.core.strategies:
            if isinstance(strategy, RefreshAhead):
                strategy.min_hits = c.reactive.refresh_min_hits
                strategy.fraction = c.reactive.refresh_fraction
                strategy.min_precision = c.reactive.min_precision
            elif isinstance(strategy, MissReactive):
                strategy.threshold = c.reactive.threshold
                strategy.min_precision = c.reactive.min_precision
            elif isinstance(strategy, Predictor):
                p = c.predictive
                strategy.retune(
                    min_confidence=p.min_confidence,
                    max_warm_ratio=p.max_warm_ratio,
                    priority=p.priority or c.levels[-1],
                )
        self.config = c
        self.core = prepared.core
        self.filter = prepared.core.filter
        self.refresh_ahead = prepared.core.strategy(RefreshAhead)
        self.miss_reactive = prepared.core.strategy(MissReactive)
        self.predictor = prepared.core.predictor
        self._deps = prepared.deps
        self._retrain = prepared.retrain
        self.alerts = prepared.alerts
        self._configured_schedule = prepared.configured_schedule
        if prepared.schedule is not None:
            if prepared.replaces_posted:
                log.warning(
                    "reload: the configuration file's schedule changed and replaces the one "
                    "posted through the control API (saved in %s)",
                    self.state.describe(),
                )
            self._posted_at = None
            self._apply(prepared.schedule)
        else:
            # proactive.enabled may have changed: the schedule loop looks again.
            self._schedule_changed.set()

    async def load_model(self) -> None:
        """Continue a predictive strategy switched on by a reload from its saved model."""
        if self.predictor is not None and self._model_file is not None:
            await self._model_file.load(self.predictor.load_document)

    # --------------------------------------------------------------- reports

    def status(self) -> dict[str, Any]:
        now = self._clock()
        run = self.latest_run()
        if run is None:
            body: dict[str, Any] = _idle_status()
        else:
            body = run.progress.to_status(now)
        body["active_runs"] = [
            {
                "run_id": r.id,
                "strategy": r.strategy,
                "percentage": r.progress.to_status(now)["progress"]["percentage"],
            }
            for r in self.active_runs()
        ]
        body["executor"] = self.executor.state()
        return body

    def progress(self) -> dict[str, Any]:
        run = self.latest_run()
        if run is None:
            return _idle_status()
        return run.progress.to_progress(self._clock())

    def hot_data(self, n: int, window: float | None) -> dict[str, Any]:
        """What is hot, how usage moves, who asks (the usage analysis), plus totals,
        the last 24 hours and, with the predictive strategy, what it forecasts."""
        now = self._clock()
        body: dict[str, Any]
        if self.analyzer is not None:
            body = self.analyzer.report(
                self.tracker, now, n=n, window=window, levels=self.config.levels
            )
        else:
            body = {
                "window_seconds": window,
                "hot_keys": [
                    {"key": h.key, "url": h.url, "host": h.host, "count": h.count, "error": h.error}
                    for h in self.tracker.hot(n, now, window)
                ],
            }
        self._fleet_hot_keys(body, n, window, now)
        totals = self.tracker.totals()
        body["totals"] = {
            "requests": totals.requests,
            "hits": totals.hits,
            "misses": totals.misses,
            "bypass": totals.bypass,
        }
        body["hourly"] = [
            {"start": _iso(h.start), "requests": h.requests, "hits": h.hits, "misses": h.misses}
            for h in self.tracker.hourly(now, 24)
        ]
        if self.predictor is not None:
            bounds = body.get("memory_bound_bytes")
            if isinstance(bounds, dict):
                bounds["predictive"] = self.predictor.memory_bound()
            body["predictions"] = [
                {
                    "key": p.key,
                    "url": p.url,
                    "confidence": p.confidence,
                    "duration": p.duration,
                    "kind": p.kind,
                }
                for p in self.predictor.predictions(now, n)
            ]
            body["recent_predictions"] = [
                {
                    "key": p.key,
                    "confidence": p.confidence,
                    "duration": p.duration,
                    "at": _iso(p.at),
                    "kind": p.kind,
                }
                for p in self.predictor.recent[-n:]
            ]
        return body

    def _fleet_hot_keys(
        self, body: dict[str, Any], n: int, window: float | None, now: float
    ) -> None:
        """The fleet's hot keys in place of this replica's when there is a
        fleet view; each key says whose counts it shows (``source``)."""
        fleet_hot = self.fleet.hot(n, window) if self.fleet is not None else None
        if fleet_hot is None:
            for entry in body["hot_keys"]:
                entry["source"] = "replica"
            return
        counted = window if window is not None else self.tracker.windows[-1]
        hot: list[dict[str, Any]] = []
        for key, url, host, count in fleet_hot:
            known = self.tracker.url_of(key)
            if known is not None:
                url, host = known
            hot.append(
                {
                    "key": key,
                    "url": url,
                    "host": host,
                    "count": count,
                    "source": "fleet",
                    "this_replica": self.tracker.count(key, counted, now),
                }
            )
        body["hot_keys"] = hot

    def timeline_data(self, seconds: float) -> dict[str, Any]:
        """Recent traffic per bucket and the warm runs over it (the dashboard's chart)."""
        now = self._clock()
        since = now - seconds
        runs = [
            run
            for run in [*self.finished_runs(), *self.active_runs()]
            if run.progress.finished_at is None or run.progress.finished_at >= since
        ]
        return {
            "bucket_seconds": self.timeline.bucket_seconds,
            "now": now,
            "buckets": [b.to_json() for b in self.timeline.buckets(now, seconds)],
            "runs": [
                {
                    "run_id": run.id,
                    "strategy": run.strategy,
                    "status": run.progress.status,
                    "started_ts": run.progress.started_at,
                    "finished_ts": run.progress.finished_at,
                    "total_items": run.progress.total,
                    "completed": run.progress.completed,
                    "failed": run.progress.failed,
                }
                for run in sorted(runs, key=lambda r: r.progress.started_at)
            ],
        }

    def warming_counters(self) -> dict[str, Any]:
        """The executor's counters and this process's resources behind /stats,
        as JSON-ready data: what the replicas of a fleet add up
        (``proxy/fleet_stats.py``)."""
        now = self._clock()
        c = self.executor.counters
        # Finished runs, plus the time so far of those still running.
        total_run_time = sum(s[1] for s in c.run_seconds.values()) + sum(
            max(0.0, now - r.progress.started_at) for r in self.executor.active_runs()
        )
        with self._process.oneshot():
            cpu = self._process.cpu_percent(interval=None)
            rss = self._process.memory_info().rss
        return {
            "warmed": dict(c.warmed),
            "failed": dict(c.failed),
            "retried": dict(c.retried),
            "already_fresh": dict(c.already_fresh),
            "origin_fetches": c.fetches,
            "fetch_seconds": c.fetch_seconds,
            "bytes": c.bytes,
            "peak_concurrent": c.peak_in_flight,
            "total_warming_time": total_run_time,
            "schedule_firings_skipped": self.schedule_skipped,
            "cpu_utilization": cpu,
            "memory_usage": rss,
        }

    def stats(
        self,
        *,
        warming: Mapping[str, Any] | None = None,
        ledger: LedgerCounters | None = None,
    ) -> dict[str, Any]:
        """What warming did, measured (DESIGN §5 shape, extended by the ledger).

        ``warming`` (as :meth:`warming_counters`) and ``ledger``: counters to
        report instead of this replica's own, e.g. a fleet's sums.  Without
        the ledger (``track_effectiveness = false``) the effectiveness is
        this replica's whatever ``ledger`` says.
        """
        now = self._clock()
        w = self.warming_counters() if warming is None else warming
        fetches = w["origin_fetches"]
        average = w["fetch_seconds"] / fetches if fetches else None
        body: dict[str, Any]
        if self.ledger is not None:
            counters = ledger if ledger is not None else self.ledger.counters(now)
            body = counters.figures(now).to_stats()
        else:
            body = self._untracked_effectiveness(average)
        body["resource_usage"] = {
            "cpu_utilization": w["cpu_utilization"],
            "memory_usage": w["memory_usage"],
            "network_io": w["bytes"],
        }
        body["timing"] = {
            "total_warming_time": round(w["total_warming_time"], 3),
            "average_item_time": None if average is None else round(average, 4),
            "peak_concurrent": w["peak_concurrent"],
        }
        body["counts"] = {
            "warmed": dict(w["warmed"]),
            "failed": dict(w["failed"]),
            "retried": dict(w["retried"]),
            "already_fresh": dict(w["already_fresh"]),
            "origin_fetches": fetches,
            "schedule_firings_skipped": w["schedule_firings_skipped"],
        }
        body["alerts"] = self.alerts.active()
        if self.predictor is not None:
            body["predictive"] = self.predictor.describe()
        return body

    def _untracked_effectiveness(self, average: float | None) -> dict[str, Any]:
        """The figures kept without the ledger (``track_effectiveness = false``)."""
        totals = self.tracker.totals()
        before = after = improvement = None
        if self._hits_before is not None:
            hb, mb = self._hits_before
            before = _ratio(hb, hb + mb)
            ha, ma = totals.hits - hb, totals.misses - mb
            after = _ratio(ha, ha + ma)
            if before is not None and after is not None:
                improvement = round(after - before, 4)
        return {
            "effectiveness": {
                "hit_rate_before": before,
                "hit_rate_after": after,
                "improvement": improvement,
            },
            "cost_benefit": {
                "items_warmed": sum(self.executor.counters.warmed.values()),
                "cache_hits_prevented": self.hits_on_warmed,
                "estimated_response_time_saved": (
                    None if average is None else round(self.hits_on_warmed * average, 3)
                ),
            },
        }


#: Seconds of glob matching between two turns of the event loop.
_MATCH_SLICE = 0.005
_READ_ONLY_FIELDS = ("next_runs", "errors", "persisted_in", "proposed", "origin", "posted_at")
_ORIGIN_OUTCOMES = frozenset({"miss", "stale"})


def _unique_by_url(requests: list[WarmRequest]) -> list[WarmRequest]:
    seen: set[WarmIdentity] = set()
    out = []
    for r in requests:
        if r.identity not in seen:
            seen.add(r.identity)
            out.append(r)
    return out


def _middle(levels: tuple[str, ...]) -> str:
    return levels[len(levels) // 2]


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _source_error(name: str, exc: Exception) -> str:
    """What a failed source shows in the run's errors and GET /schedule."""
    if isinstance(exc, SourceError | OSError | ValueError):
        text = str(exc)
        return text if text.startswith(f"source {name!r}") else f"source {name!r}: {text}"
    return f"source {name!r}: {type(exc).__name__}"


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _idle_status() -> dict[str, Any]:
    """The status shape when no run has happened yet."""
    body = RunProgress("", "", 0, 0, 0.0).to_status(0.0)
    body.update(run_id=None, status="idle", strategy=None, started_at=None, finished_at=None)
    body["progress"]["percentage"] = 0.0
    return body
