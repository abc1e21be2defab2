"""Carrying out warm requests: parallel workers over the priority queue.

The executor is one of the warmer's thin I/O runners (DESIGN rule 2): what to
fetch next, how long to back off and how hard to push the origin are decided
by the pure parts (:mod:`warmer.queue`, :mod:`warmer.pacing`), and every fetch
goes through the proxy's fill path (:class:`warmer.model.Fill`, DESIGN rule 1).

A *run* is a set of requests followed to completion with its own progress (a
scheduled firing, ``POST /start``, a warm-pattern or bulk request).  Requests
of no run (reactive, refresh-ahead) share the same queue and workers and are
counted in the metrics only.

Fetches are never cancelled half-way: a fetch that outlives its timeout is
counted as failed, but goes on to its end in the background (bounded by the
proxy's origin read timeout), because it may be the coalescing leader a
client's request is waiting on, and its store write is all-or-nothing anyway.

A *touch* (:attr:`warmer.model.WarmRequest.touch`) is no fetch: it is never
queued, but looked up in order by the dispatcher, between batches, and
counted apart (``kept``, ``gone``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiolimiter import AsyncLimiter

from warmer.model import TOUCH_GONE, Fill, FillReport, WarmIdentity, WarmRequest
from warmer.pacing import AdaptiveConcurrency, ResourceGuard, backoff_delay
from warmer.progress import RunProgress
from warmer.queue import WarmQueue

log = logging.getLogger(__name__)

GUARD_SAMPLE_SECONDS = 1.0
FINISHED_RUNS_KEPT = 20
#: Touches waiting to be looked up, at most (see WarmExecutor._touch_all).
MAX_TOUCHES = 10_000

Identity = WarmIdentity


@dataclass(eq=False)
class Run:
    """A set of warm requests followed to completion."""

    id: str
    strategy: str
    progress: RunProgress
    pending: set[Identity] = field(default_factory=set)
    in_flight: int = 0
    stopping: bool = False
    sealed: bool = False  # every request is submitted: empty pending means done
    done: asyncio.Event = field(default_factory=asyncio.Event)
    # False: not among this executor's runs (status, timeline, run times): a
    # replica's share of a fleet run, or a fleet run's handle (proxy/fleet_runs.py).
    listed: bool = True
    # Told of each item's final outcome (request, report, seconds, retries),
    # also after a stop: a fleet run acknowledges what its workers finished.
    on_item: Callable[[WarmRequest, FillReport, float, int], None] | None = None

    @property
    def running(self) -> bool:
        return not self.done.is_set()


@dataclass
class ExecutorCounters:
    """What the executor did, read by the metrics collector at scrape time."""

    warmed: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    failed: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    retried: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    already_fresh: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    # Touches (warmer.retention): entries kept, and entries found gone.
    kept: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    gone: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    fetch_seconds: float = 0.0  # summed over finished fetches
    fetches: int = 0
    bytes: int = 0
    peak_in_flight: int = 0
    # strategy -> (finished runs, their summed duration in seconds)
    run_seconds: dict[str, tuple[int, float]] = field(default_factory=dict)


class WarmExecutor:
    """Parallel, rate-limited, adaptive, retrying workers for warm requests."""

    def __init__(
        self,
        fill: Fill,
        *,
        levels: tuple[str, ...],
        parallelism: int = 10,
        batch_size: int = 100,
        timeout: float = 30.0,
        retry_attempts: int = 3,
        retry_base_delay: float = 0.5,
        retry_max_delay: float = 30.0,
        rate_limit: float = 0.0,
        adaptive: AdaptiveConcurrency | None = None,
        guard: ResourceGuard | None = None,
        max_queue: int = 100_000,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
        on_result: Callable[[WarmRequest, FillReport, float], None] | None = None,
    ) -> None:
        self._fill = fill
        self.levels = levels
        self.queue = WarmQueue(levels, max_items=max_queue)
        self.parallelism = parallelism
        self.batch_size = batch_size
        self.timeout = timeout
        self.retry_attempts = retry_attempts
        self._retry_base = retry_base_delay
        self._retry_cap = retry_max_delay
        self.rate_limit = rate_limit
        self._limiter = AsyncLimiter(1, 1.0 / rate_limit) if rate_limit > 0 else None
        self.adaptive = adaptive
        self.guard = guard
        self._clock = clock
        # Waits measured on ``clock`` (retry delays, the resource guard's
        # period): a scaled or manual clock's sleep, not the event loop's.
        self._sleep = sleep
        self._rand = rand
        # Told of every final outcome (the warmer's strategies follow lifetimes).
        self.on_result = on_result
        # Paces origin fetches in place of the local limiter while
        # ``rate_limit`` > 0: the fleet's shared bucket (proxy/fleet_runs.py).
        self.rate_gate: Callable[[float], Awaitable[None]] | None = None
        self.counters = ExecutorCounters()
        self.in_flight = 0
        self.paused = False
        self._attempts: dict[Identity, int] = {}
        self._waiting: dict[Identity, list[Run]] = {}
        # Taken off the queue in a batch, not yet started (waiting for a slot).
        self._popped: set[Identity] = set()
        self._runs: dict[str, Run] = {}
        self._finished: list[Run] = []
        self._wakeup = asyncio.Event()
        self._slot_freed = asyncio.Event()
        # Fills running now, each with its timeout timer (None once timed out).
        self._fills: dict[asyncio.Task[FillReport], asyncio.TimerHandle | None] = {}
        self._last_guard_sample = 0.0
        # Touches (warmer.retention) waiting: looked up one after another by
        # the dispatcher, without the queue, task and timer of a fetch (they
        # cost eight times the lookup itself: bench/touch_cost.py).  Past
        # MAX_TOUCHES waiting, the oldest are dropped: a touch due long ago
        # is the least useful.
        self._touches: deque[WarmRequest] = deque(maxlen=MAX_TOUCHES)

    # ----------------------------------------------------------------- runs

    def new_run(self, strategy: str, *, listed: bool = True, run_id: str | None = None) -> Run:
        """A new run; ``listed`` False keeps it off this executor's runs
        (see :attr:`Run.listed`) until :meth:`adopt` takes it."""
        now = self._clock()
        run_id = run_id or uuid.uuid4().hex[:12]
        run = Run(
            run_id,
            strategy,
            RunProgress(run_id, strategy, 0, self.batch_size, now),
            listed=listed,
        )
        if listed:
            self.adopt(run)
        return run

    def adopt(self, run: Run) -> None:
        """List ``run`` among this executor's runs (a fleet run that falls
        back to running here alone)."""
        run.listed = True
        self._runs[run.id] = run
        log.info("warm run started", extra={"run_id": run.id, "strategy": run.strategy})

    def submit(self, requests: Iterable[WarmRequest], run: Run | None = None) -> int:
        """Queue ``requests`` (for ``run``, if given); returns how many were taken.

        A request whose URL is already queued or being fetched is not queued
        twice; the run still waits for it.  A request the full queue refuses
        counts as failed for its run.
        """
        now = self._clock()
        taken = 0
        for request in requests:
            if request.touch:
                # A strategy's touch: never queued or fetched (see _touch_all).
                self._touches.append(request)
                taken += 1
                continue
            identity = request.identity
            if run is not None:
                if run.stopping or identity in run.pending:
                    continue
                run.progress.add_total(1)
            waiting = self._waiting.get(identity)
            if waiting is None or identity not in self.queue:
                busy = waiting is not None  # being fetched right now
                if not busy and not self.queue.push(request, now):
                    if run is not None:
                        run.progress.item_done(request.url, False, 0.0, now, "warm queue is full")
                        self._tell(run, request, FillReport(failure="warm queue is full"), 0.0, 0)
                    continue
                self._waiting.setdefault(identity, [])
            else:
                self.queue.push(request, now)  # may raise its priority
            if run is not None:
                run.pending.add(identity)
                self._waiting[identity].append(run)
            taken += 1
        if run is not None:
            self._maybe_finish(run, now)
        self._wakeup.set()
        return taken

    def seal(self, run: Run) -> None:
        """No more requests will be submitted to ``run``: it may complete."""
        run.sealed = True
        self._maybe_finish(run, self._clock())

    def run(self, run_id: str) -> Run | None:
        return self._runs.get(run_id) or next((r for r in self._finished if r.id == run_id), None)

    def active_runs(self) -> list[Run]:
        return [r for r in self._runs.values() if r.running]

    def latest_run(self) -> Run | None:
        """The most recent running run, else the last finished one."""
        active = self.active_runs()
        if active:
            return active[-1]
        return self._finished[-1] if self._finished else None

    def finished_runs(self) -> list[Run]:
        return list(self._finished)

    async def stop(self, run: Run | None = None) -> list[Run]:
        """Stop ``run`` (all runs when None): drop its queued requests, let its
        in-flight fetches finish (at most ``timeout``), and mark it stopped."""
        runs = [run] if run is not None else self.active_runs()
        now = self._clock()
        for r in runs:
            r.stopping = True
            for identity in list(r.pending):
                if identity not in self.queue and identity not in self._popped:
                    # Being fetched: the run stays among its waiters, so the
                    # fetch's end is counted in its in_flight below.
                    continue
                # Queued, or taken in a batch and waiting for a slot: dropped.
                waiters = self._waiting.get(identity, [])
                if r in waiters:
                    waiters.remove(r)
                if not waiters:
                    self.queue.discard(identity)
                    self._waiting.pop(identity, None)
                    self._attempts.pop(identity, None)
                r.pending.discard(identity)
        deadline = asyncio.get_running_loop().time() + self.timeout
        for r in runs:
            while r.in_flight > 0 and asyncio.get_running_loop().time() < deadline:
                self._slot_freed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.05):
                        await self._slot_freed.wait()
            r.pending.clear()
            self._finish_run(r, self._clock() if r.in_flight == 0 else now, "stopped")
        return runs

    def clear_background(self) -> int:
        """Drop queued requests that belong to no run (e.g. at shutdown)."""
        dropped = 0
        for identity, waiters in list(self._waiting.items()):
            if not waiters and (identity in self.queue or identity in self._popped):
                self.queue.discard(identity)
                del self._waiting[identity]
                dropped += 1
        return dropped

    def apply_limits(
        self,
        *,
        parallelism: int,
        batch_size: int,
        timeout: float,
        retry_attempts: int,
        retry_base_delay: float,
        retry_max_delay: float,
        rate_limit: float,
        adaptive: AdaptiveConcurrency | None,
        guard: ResourceGuard | None,
    ) -> None:
        """New limits from now on (a configuration reload); nothing here can fail.

        Fetches in flight keep the timeout they started with; workers waiting
        for a slot see the new parallelism at once; a changed rate limit
        starts a new token bucket (a fetch already waiting on the old one is
        admitted at the old pace).
        """
        self.parallelism = parallelism
        self.batch_size = batch_size
        self.timeout = timeout
        self.retry_attempts = retry_attempts
        self._retry_base = retry_base_delay
        self._retry_cap = retry_max_delay
        if rate_limit != self.rate_limit:
            self.rate_limit = rate_limit
            self._limiter = AsyncLimiter(1, 1.0 / rate_limit) if rate_limit > 0 else None
        self.adaptive = adaptive
        if guard is None:
            self.paused = False
        self.guard = guard
        self._slot_freed.set()
        self._wakeup.set()

    # ------------------------------------------------------------ dispatch

    @property
    def limit(self) -> int:
        """How many fetches may run at once now."""
        if self.adaptive is None:
            return self.parallelism
        return max(1, min(self.parallelism, self.adaptive.limit))

    async def run_forever(self) -> None:
        """Pop batches and start their fetches as slots free up, until cancelled.

        Fetches already started are left to finish (see the module docstring).
        """
        while True:
            if self._touches:
                await self._touch_all()
            await self._wait_for_resources()
            now = self._clock()
            batch = self.queue.pop_batch(now, self.batch_size)
            if not batch:
                await self._wait_for_work()
                continue
            self._popped.update(request.identity for request in batch)
            self._start_batch(batch, now)
            for request in batch:
                await self._wait_for_slot()
                identity = request.identity
                self._popped.discard(identity)
                if identity not in self._waiting:
                    continue  # dropped while it waited: its runs were stopped
                self._spawn(request)

    async def _touch_all(self) -> None:
        """Look up every touch waiting, in order: each only marks its entry
        used, so none is retried, rate-limited or counted as a fetch."""
        touches = self._touches
        counters = self.counters
        while touches:
            request = touches.popleft()
            try:
                report = await self._fill(request, self._admit)
            except Exception as exc:  # a store fault: the entry is not kept this time
                log.debug("touch of %s failed: %r", request.url, exc)
                report = TOUCH_GONE
            reason = request.reason.value
            (counters.kept if report.already_fresh else counters.gone)[reason] += 1
            if self.on_result is not None:
                try:
                    self.on_result(request, report, 0.0)
                except Exception:
                    log.exception("warm result observer failed")

    async def idle(self) -> None:
        """Wait until nothing is queued or being fetched (for tests and the CLI)."""
        while len(self.queue) or self.in_flight or self._fills:
            self._slot_freed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.05):
                    await self._slot_freed.wait()

    async def idle_in_flight(self, within: float) -> None:
        """Wait (at most ``within`` seconds) for in-flight fetches to end."""
        deadline = asyncio.get_running_loop().time() + within
        while (self.in_flight or self._fills) and asyncio.get_running_loop().time() < deadline:
            self._slot_freed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.05):
                    await self._slot_freed.wait()

    async def _wait_for_work(self) -> None:
        """Until something is pushed, or the first request held back (a retry's
        delay) is ready, on the executor's clock."""
        self._wakeup.clear()
        ready_at = self.queue.next_ready_at()
        if ready_at is None:
            await self._wakeup.wait()
            return
        delay = ready_at - self._clock()
        if delay <= 0:
            return
        woken = asyncio.ensure_future(self._wakeup.wait())
        slept = asyncio.ensure_future(self._sleep(delay))
        try:
            await asyncio.wait((woken, slept), return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
            slept.cancel()

    async def _wait_for_slot(self) -> None:
        while self.in_flight >= self.limit:
            self._slot_freed.clear()
            await self._slot_freed.wait()

    async def _wait_for_resources(self) -> None:
        guard = self.guard
        if guard is None:
            return
        while True:
            now = self._clock()
            if now - self._last_guard_sample >= GUARD_SAMPLE_SECONDS:
                self._last_guard_sample = now
                cpu, rss = guard.sample()
                was = self.paused
                self.paused = guard.should_pause(cpu, rss)
                if self.paused != was:
                    log.warning(
                        "warming %s",
                        "paused: process over its limits" if self.paused else "resumed",
                    )
            if not self.paused:
                return
            await self._sleep(GUARD_SAMPLE_SECONDS)

    def _start_batch(self, batch: list[WarmRequest], now: float) -> None:
        per_run: dict[Run, int] = defaultdict(int)
        for request in batch:
            for run in self._waiting.get(request.identity, []):
                per_run[run] += 1
        for run, count in per_run.items():
            run.progress.batch_started(count, now)

    def _spawn(self, request: WarmRequest) -> None:
        """Start one fill, with a timer that settles it as failed if it overruns.

        One task per fetch and a timer instead of ``wait_for(shield(...))``:
        the same outcome for a third of the event-loop work.
        """
        self.in_flight += 1
        self.counters.peak_in_flight = max(self.counters.peak_in_flight, self.in_flight)
        for run in self._waiting.get(request.identity, []):
            run.in_flight += 1
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        task = loop.create_task(self._fill(request, self._admit))
        self._fills[task] = loop.call_later(self.timeout, self._timed_out, request, task, started)
        task.add_done_callback(lambda t: self._filled(request, t, started))

    def _timed_out(
        self, request: WarmRequest, task: asyncio.Task[FillReport], started: float
    ) -> None:
        self._fills[task] = None  # settled here; its late result is dropped
        report = FillReport(failure=f"timed out after {self.timeout:g}s")
        self._finish_fetch(request, report, time.perf_counter() - started)

    def _filled(self, request: WarmRequest, task: asyncio.Task[FillReport], started: float) -> None:
        timer = self._fills.pop(task, None)
        if timer is None:  # timed out earlier: already settled
            if not task.cancelled() and task.exception() is not None:
                log.debug("abandoned warm fill failed: %r", task.exception())
            self._slot_freed.set()
            return
        timer.cancel()
        if task.cancelled():
            report = FillReport(failure="cancelled")
        elif (exc := task.exception()) is not None:
            # A bug in the fill path must not stop warming.
            log.error("warm fill of %s failed", request.url, exc_info=exc)
            report = FillReport(failure=f"{type(exc).__name__}: {exc}")
        else:
            report = task.result()
        self._finish_fetch(request, report, time.perf_counter() - started)

    def _finish_fetch(self, request: WarmRequest, report: FillReport, seconds: float) -> None:
        self._release(request)
        if self.adaptive is not None and not report.already_fresh:
            self.adaptive.record(seconds, not report.retryable, self._clock())
        self._settle(request, report, seconds)

    async def _admit(self) -> None:
        if self.rate_gate is not None and self.rate_limit > 0:
            await self.rate_gate(self.rate_limit)
        elif self._limiter is not None:
            await self._limiter.acquire()

    def _release(self, request: WarmRequest) -> None:
        self.in_flight -= 1
        for run in self._waiting.get(request.identity, []):
            run.in_flight -= 1
        self._slot_freed.set()

    def _settle(self, request: WarmRequest, report: FillReport, seconds: float) -> None:
        """Retry, or record the final outcome for the counters and the runs."""
        now = self._clock()
        identity = request.identity
        reason = request.reason.value
        waiters = self._waiting.get(identity, [])
        attempts = self._attempts.get(identity, 0)
        wanted = not waiters or any(not r.stopping for r in waiters)
        if report.retryable and attempts < self.retry_attempts and wanted:
            attempts += 1
            self._attempts[identity] = attempts
            delay = backoff_delay(
                attempts, base=self._retry_base, cap=self._retry_cap, rand=self._rand
            )
            self.counters.retried[reason] += 1
            for run in waiters:
                run.progress.item_retrying(request.url, report.error or "", attempts)
            if self.queue.push(request, now, not_before=now + delay):
                self._wakeup.set()
                return
        self._attempts.pop(identity, None)
        self._waiting.pop(identity, None)
        counters = self.counters
        if report.already_fresh:
            counters.already_fresh[reason] += 1
        else:
            counters.fetches += 1
            counters.fetch_seconds += seconds
            counters.bytes += report.bytes
            if report.ok:
                counters.warmed[reason] += 1
            else:
                counters.failed[reason] += 1
        error = report.error
        if not report.ok and not report.already_fresh:
            # Once per request, after its retries: each line names the runs
            # (none for a strategy's background request) it failed for.
            log.warning(
                "warm fetch failed",
                extra={
                    "run_id": ",".join(r.id for r in waiters) or None,
                    "url": request.url,
                    "reason": reason,
                    "error": error,
                    "retries": attempts,
                },
            )
        for run in waiters:
            run.pending.discard(identity)
            if not run.stopping:
                run.progress.item_done(request.url, report.ok, seconds, now, error, attempts)
                self._maybe_finish(run, now)
            self._tell(run, request, report, seconds, attempts)
        if self.on_result is not None:
            try:
                self.on_result(request, report, seconds)
            except Exception:
                log.exception("warm result observer failed")

    def _tell(
        self, run: Run, request: WarmRequest, report: FillReport, seconds: float, attempts: int
    ) -> None:
        if run.on_item is None:
            return
        try:
            run.on_item(request, report, seconds, attempts)
        except Exception:
            log.exception("warm run item observer failed")

    def _maybe_finish(self, run: Run, now: float) -> None:
        if run.pending or run.stopping or not run.sealed:
            return
        p = run.progress
        self._finish_run(run, now, "completed" if p.failed == 0 or p.success else "failed")

    def _finish_run(self, run: Run, now: float, state: str) -> None:
        if run.done.is_set():
            return
        run.progress.finish(now, state)
        run.done.set()
        if not run.listed:
            return
        p = run.progress
        log.info(
            "warm run %s",
            state,
            extra={
                "run_id": run.id,
                "strategy": run.strategy,
                "status": state,
                "total_items": p.total,
                "success": p.success,
                "failed": p.failed,
                "seconds": round(now - p.started_at, 3),
            },
        )
        self._runs.pop(run.id, None)
        self._finished.append(run)
        del self._finished[:-FINISHED_RUNS_KEPT]
        count, total = self.counters.run_seconds.get(run.strategy, (0, 0.0))
        self.counters.run_seconds[run.strategy] = (
            count + 1,
            total + now - run.progress.started_at,
        )

    def state(self) -> dict[str, Any]:
        """Queue and worker figures for status and metrics."""
        return {
            "queue_depth": len(self.queue),
            "queue_by_priority": self.queue.depth_by_level(),
            "in_flight": self.in_flight,
            "concurrency_limit": self.limit,
            "paused": self.paused,
            "adaptive": self.adaptive.state() if self.adaptive is not None else None,
        }
