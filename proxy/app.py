"""The composition root: the one place that wires settings, stores, proxy and listeners."""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web

from proxy.access_log import AccessLog
from proxy.cache import Cache
from proxy.config import Settings, parse_hostport
from proxy.control import build_control_app
from proxy.fast_lane import FastLane, FastLaneSite
from proxy.fill_lock import FillLock, lock_seconds
from proxy.filler import Filler
from proxy.fleet import MAX_NAME_CHARS, Fleet, default_replica_name
from proxy.fleet_counts import FleetCounts
from proxy.fleet_runs import FleetRuns
from proxy.fleet_schedule import FleetSchedule, FleetScheduleCollector
from proxy.fleet_stats import FleetStats
from proxy.forwarding import ForwardingRules
from proxy.handler import Admission, ProxyHandler
from proxy.logs import writes_json
from proxy.metrics import ProxyMetrics
from proxy.observe import EventHub
from proxy.origin import OriginClient
from proxy.policy import CachePolicyConfig
from proxy.purge import PurgeMethod, Purger, TagHeader
from proxy.redact import mask_url
from proxy.reload import ReloadResult, reload_settings
from proxy.state_dir import StateLock
from proxy.store.base import CacheStore, StoreError
from proxy.store.memory import MemoryStore
from proxy.store.redis import RedisStore
from proxy.tasks import BackgroundTasks
from proxy.warming import build_warmer
from warmer.clock import Clock, WallClock
from warmer.executor import Run
from warmer.service import RunConflict

if TYPE_CHECKING:
    from proxy.worker_relay import RelayClient, RelayHub
    from proxy.workers import WorkerRole

log = logging.getLogger(__name__)

HEALTH_INTERVAL_OK = 5.0
HEALTH_INTERVAL_FAILING = 1.0
#: Pending connections the proxy listener queues (the kernel caps it at
#: net.core.somaxconn).
LISTEN_BACKLOG = 4096


def build_store(
    settings: Settings, clock: Callable[[], float] = time.time
) -> tuple[CacheStore, MemoryStore | None]:
    """The configured store and, in front of Redis, the optional L1 tier.

    ``clock``: the time the memory store measures expiry on (the proxy's).
    """
    cache = settings.cache
    if cache.store == "redis":
        store: CacheStore = RedisStore(
            cache.redis_url,
            prefix=cache.redis_prefix,
            max_entry_bytes=cache.max_entry_bytes,
            socket_timeout=cache.redis_timeout,
            connect_timeout=cache.redis_timeout,
        )
        l1 = None
        if cache.l1_max_bytes > 0 and cache.l1_ttl > 0:
            l1 = MemoryStore(
                max_bytes=cache.l1_max_bytes,
                max_entry_bytes=min(cache.max_entry_bytes, cache.l1_max_bytes),
                clock=clock,
                count_overhead=True,
            )
        return store, l1
    memory = MemoryStore(
        max_bytes=cache.max_bytes,
        max_entry_bytes=cache.max_entry_bytes,
        clock=clock,
        max_entries=cache.max_entries,
        # max_bytes bounds the memory the entries take, not their body bytes.
        count_overhead=True,
    )
    return memory, None


class Warmproxy:
    """A running proxy: the proxy listener, the control listener and what they share.

    ``clock`` is the time everything on the proxy side reads (freshness, expiry
    in the memory store, access events, the warmer and its queue): the wall
    clock in production, a :class:`~warmer.clock.ScaledClock` to replay a trace
    faster than real time, a :class:`~warmer.clock.ManualClock` in tests.
    Real durations (fetch timing, timeouts, health pings) stay in real time.

    ``worker``: this process's part under ``serve --workers N`` (N > 1): the
    primary (worker 0) is a whole proxy; any other serves the proxy port only
    (no warmer, control listener or state directory) and reaches the
    primary through :mod:`proxy.worker_relay`.
    """

    def __init__(
        self, settings: Settings, *, clock: Clock | None = None, worker: WorkerRole | None = None
    ) -> None:
        self.settings = settings
        self.worker = worker
        #: Runs the warmer, the control listener and owns the state directory.
        self.primary = worker is None or worker.primary
        self.relay: RelayHub | RelayClient | None = None
        self.clock: Clock = clock if clock is not None else WallClock()
        self.metrics = ProxyMetrics()
        self.hub = EventHub()
        self.metrics.hub = self.hub
        self.tasks = BackgroundTasks()
        store, l1 = build_store(settings, self.clock)
        self.cache = Cache(
            store,
            self.metrics,
            l1=l1,
            l1_ttl=settings.cache.l1_ttl,
            match_coding=settings.cache.vary_accept_encoding == "coding",
            clock=self.clock,
        )
        self.origin = OriginClient(settings.proxy, self.metrics)
        self.rules = ForwardingRules.from_settings(settings)
        policy_config = CachePolicyConfig(
            heuristic_fraction=settings.cache.heuristic_fraction,
            heuristic_max_seconds=settings.cache.heuristic_max_seconds,
            revalidation_retention_seconds=settings.cache.revalidation_retention,
            store_set_cookie=settings.cache.store_set_cookie,
            via=f"1.1 {settings.proxy.via_name}",
            targeted_fields=tuple(n.lower() for n in settings.cache.targeted_cache_control),
        )
        purge = settings.cache.purge
        # Purges by path, glob and tag: the control API's and the PURGE method's.
        self.purger = Purger(
            self.cache,
            self.rules,
            self.metrics,
            soft_stale_seconds=purge.soft_stale_seconds,
            clock=self.clock,
        )
        self.filler = Filler(
            origin=self.origin,
            cache=self.cache,
            rules=self.rules,
            config=policy_config,
            metrics=self.metrics,
            max_entry_bytes=settings.cache.max_entry_bytes,
            tasks=self.tasks,
            tag_header=TagHeader(purge.tag_header, self.metrics),
            clock=self.clock,
            fill_lock=self._fill_lock(store),
        )
        # Overload shedding (proxy.max_concurrent_requests, proxy.max_loop_lag).
        self.admission = Admission(
            settings.proxy.max_concurrent_requests, settings.proxy.max_loop_lag
        )
        self.metrics.admission = self.admission
        self.handler = ProxyHandler(
            cache=self.cache,
            filler=self.filler,
            origin=self.origin,
            rules=self.rules,
            hub=self.hub,
            metrics=self.metrics,
            client_id_header=settings.proxy.client_id_header,
            cache_name=settings.proxy.via_name,
            clock=self.clock,
            admission=self.admission,
            purge_method=(
                PurgeMethod(self.purger, purge.allowed_networks) if purge.method else None
            ),
            tag_header=purge.tag_header,
        )
        # One view of the traffic: usage counts and warm claims shared through Redis.
        self.fleet_counts = FleetCounts(
            redis_url=settings.cache.redis_url if settings.cache.store == "redis" else None,
            prefix=settings.cache.redis_prefix,
            metrics=self.metrics,
            timeout=settings.cache.redis_timeout,
            clock=self.clock,
        )
        replica_name = _replica_name(settings.cache.replica_name, worker)
        # One warm run, many workers: a run's items on a Redis Stream.
        self.fleet_runs = FleetRuns(
            redis_url=settings.cache.redis_url if settings.cache.store == "redis" else None,
            prefix=settings.cache.redis_prefix,
            name=replica_name,
            timeout=settings.cache.redis_timeout,
            clock=self.clock,
            live_replicas=self._live_replicas,
            metrics=self.metrics,
            fill_lock_seconds=(
                lock_seconds(settings.proxy.connect_timeout, settings.proxy.read_timeout)
                if settings.cache.fleet_fill_lock
                else 0.0
            ),
        )
        self.warmer = build_warmer(
            settings,
            filler=self.filler,
            origin=self.origin,
            cache=self.cache,
            rules=self.rules,
            clock=self.clock,
            current_rules=lambda: self.rules,
            fleet_counts=self.fleet_counts,
            fleet_runs=self.fleet_runs,
        )
        self.metrics.warmer = self.warmer
        if isinstance(self.warmer.state, FleetSchedule):
            self.metrics.registry.register(FleetScheduleCollector(self.warmer.state))
        self.purger.warmer = self.warmer
        # The fleet on Redis: L1 invalidations between replicas, heartbeats.
        self.fleet = Fleet(
            redis_url=settings.cache.redis_url if settings.cache.store == "redis" else None,
            prefix=settings.cache.redis_prefix,
            name=replica_name,
            l1=l1,
            metrics=self.metrics,
            load=lambda: (sum(self.metrics.requests.values()), self.warmer.executor.in_flight),
            timeout=settings.cache.redis_timeout,
        )
        self.cache.drops = self.fleet.publisher
        # /stats summed over the replicas' figures in Redis (proxy.fleet_stats).
        self.fleet_stats = FleetStats(
            store.client if isinstance(store, RedisStore) else None,
            prefix=settings.cache.redis_prefix,
            name=self.fleet.name,
            instance=self.fleet.instance,
            warmer=self.warmer,
            metrics=self.metrics,
            usable=lambda: self.cache.healthy,
            timeout=settings.cache.redis_timeout,
        )
        self.state_lock = StateLock(
            settings.state.path(), remove_at_release=settings.state.ephemeral
        )
        self._observed = False
        self.observe_traffic(settings.tracking.enabled)
        self.access_log: AccessLog | None = None
        if settings.logging.access_log:
            as_json = writes_json(settings.logging.format)
            self.access_log = AccessLog(sys.stderr.buffer, as_json=as_json)
            self.hub.subscribe(self.access_log)
        self.ready = False
        # The start's warm run /readyz waits for (proactive.warm_on_start = "before_ready").
        self.warming_on_start: Run | None = None
        self._proxy_runner: web.ServerRunner | None = None
        self._control_runner: web.AppRunner | None = None
        self.proxy_port = 0
        self.control_port = 0
        # The hit fast lane in front of the proxy listener (proxy.fast_lane).
        self.fast_lane: FastLane | None = None
        # How `reload` reads the configuration again: `serve` sets the same
        # file, environment and flags as at start; built from settings alone,
        # those settings are all there is to read.
        self.load_settings: Callable[[], Settings] = lambda: settings
        self._reload_lock = asyncio.Lock()

    async def _live_replicas(self) -> list[str]:
        """The live replicas' names (heartbeats): the fleet's rate limit is
        shared by so many while Redis does not answer its bucket, and a run
        whose starting replica is gone can be sealed by another."""
        return [str(replica["id"]) for replica in await self.fleet.replicas(strict=True)]

    def _fill_lock(self, store: CacheStore) -> FillLock | None:
        """One origin fetch per key across the replicas sharing a Redis store
        (``cache.fleet_fill_lock``); the memory store fills alone."""
        cache, proxy = self.settings.cache, self.settings.proxy
        if not isinstance(store, RedisStore) or not cache.fleet_fill_lock:
            return None
        return FillLock(
            store.client,
            prefix=cache.redis_prefix,
            seconds=lock_seconds(proxy.connect_timeout, proxy.read_timeout),
            metrics=self.metrics,
            usable=lambda: self.cache.healthy,
        )

    async def reload(self) -> ReloadResult:
        """Read the configuration again and apply what can change live
        (SIGHUP, ``warmproxy reload``, ``POST /cache/warming/reload``).

        Raises proxy.reload.ReloadRefused, and nothing changed, when it is invalid; see
        :mod:`proxy.reload` for which settings need a restart.
        """
        async with self._reload_lock:  # one reload at a time, each applied whole
            if not self.primary:
                from proxy.workers import reload_worker

                return await reload_worker(self, self.load_settings)
            result = await reload_settings(self, self.load_settings)
        if self.relay is not None:
            self.relay.reloaded()
        return result

    def use_rules(self, rules: ForwardingRules) -> None:
        """Key requests, fills, warm targets and purges by ``rules`` from now
        on (a reload that changed the ``[cache]`` query rules): assignments only."""
        self.rules = rules
        self.handler.use_rules(rules)
        self.filler.use_rules(rules)
        self.purger.use_rules(rules)
        if self.fast_lane is not None:
            self.fast_lane.use_rules(rules)

    def observe_traffic(self, enabled: bool) -> None:
        """Let the warmer observe requests or not (``tracking.enabled``); another
        worker's requests reach the primary's warmer through the relay."""
        if enabled and not self._observed and self.primary:
            self.hub.subscribe_batches(self.warmer.observe_many)
            self._observed = True
        self.warmer.observing = enabled

    async def start(self) -> None:
        """Open the listeners; the proxy answers even if the store is down.

        When a listener cannot open, what was started is closed again before
        the error propagates.
        """
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        await self.origin.start()
        self.tasks.spawn(self.hub.run(), name="event delivery")
        self.tasks.spawn(self.admission.watch_lag(), name="event loop lag")
        self.tasks.spawn(self._watch_store(), name="store health")
        interval = self.settings.cache.redis_stats_interval
        if self.settings.cache.store == "redis" and interval > 0:
            self.tasks.spawn(self._count_redis(interval), name="redis stats")
        await self.cache.check_health()
        await self.fleet.start(first_subscribe_within=2 * self.settings.cache.redis_timeout)
        if self.worker is not None:
            from proxy.worker_relay import relay_for

            self.relay = relay_for(self, self.worker)
            await self.relay.start()
        if self.primary:
            await self._start_warming()
        await self._start_proxy_listener()
        if self.primary:
            await self._start_control_listener()
        self.ready = True
        log.info(
            "warmproxy listening",
            extra={
                "proxy": self.settings.proxy.listen,
                "control": self.settings.control.listen if self.primary else None,
                "worker": None if self.worker is None else self.worker.index,
                "origin": mask_url(self.settings.proxy.origin),  # userinfo may hold a password
            },
        )
        if self.primary:
            self._warm_on_start()

    async def _start_warming(self) -> None:
        # Before any state is read: one process per state directory (StateDirBusy).
        self.state_lock.acquire()
        log.info("state directory", extra={"path": str(self.state_lock.directory)})
        await self.warmer.load_saved_schedule()
        if isinstance(self.warmer.state, FleetSchedule):
            # Every replica puts the fleet's schedule in force when it changes.
            self.warmer.state.follow(self.warmer.adopt_schedule)
        await self.warmer.load_state()
        self.tasks.spawn(self.warmer.executor.run_forever(), name="warm executor")
        self.tasks.spawn(self.fleet_runs.run(), name="fleet: warm runs")
        self.tasks.spawn(self.warmer.run(), name="warm strategies and schedule")
        self.tasks.spawn(self.fleet_counts.run(), name="fleet: usage counts")
        self.tasks.spawn(self.fleet_stats.run(), name="fleet: warming figures")

    async def _start_proxy_listener(self) -> None:
        p = self.settings.proxy
        server = web.Server(
            self.handler.handle,
            max_line_size=p.max_request_line,
            max_field_size=p.max_header_size,
            max_headers=p.max_headers,
            keepalive_timeout=p.keepalive_timeout,
            access_log=None,
        )
        self._proxy_runner = web.ServerRunner(
            server, handle_signals=False, shutdown_timeout=p.shutdown_timeout
        )
        await self._proxy_runner.setup()
        host, port = parse_hostport(p.listen, what="proxy.listen")
        # A burst of new connections waits in the listen queue, not refused
        # by the kernel (aiohttp's default backlog is 128).  Workers share
        # the port: the kernel spreads new connections over them.
        make_site: Callable[..., web.TCPSite] = web.TCPSite
        if p.fast_lane:
            # Fresh in-process hits are answered before aiohttp parses them.
            lane = self.fast_lane = FastLane(
                cache=self.cache,
                handler=self.handler,
                rules=self.rules,
                settings=p,
                clock=self.clock,
                admission=self.admission,
            )
            make_site = functools.partial(FastLaneSite, lane)
        site = make_site(
            self._proxy_runner,
            host,
            port,
            reuse_address=True,
            reuse_port=self.worker is not None,
            backlog=LISTEN_BACKLOG,
        )
        await site.start()
        self.proxy_port = _bound_port(self._proxy_runner, port)

    async def _start_control_listener(self) -> None:
        control_app = build_control_app(self)
        self._control_runner = web.AppRunner(control_app, handle_signals=False, access_log=None)
        await self._control_runner.setup()
        chost, cport = parse_hostport(self.settings.control.listen, what="control.listen")
        await web.TCPSite(self._control_runner, chost, cport, reuse_address=True).start()
        self.control_port = _bound_port(self._control_runner, cport)

    def _warm_on_start(self) -> None:
        """Warm every enabled source once, as ``proactive.warm_on_start`` says.

        A restart empties the embedded store; "before_ready" keeps a load
        balancer's traffic away (``/readyz`` 503) until the run is done or
        its timeout passed, so the first users find the cache warm.
        """
        proactive = self.settings.strategies.proactive
        if proactive.warm_on_start == "off" or not proactive.enabled:
            return
        if not any(s.enabled for s in self.warmer.schedule.sources):
            return
        try:
            run = self.warmer.start("proactive")
        except RunConflict:  # a run started first (a schedule firing): it warms
            log.warning("warm on start skipped: a warming run is already running")
            return
        log.info("warming every source at start", extra={"run_id": run.id})
        if proactive.warm_on_start == "before_ready":
            self.warming_on_start = run
            self.tasks.spawn(self._ready_after(run), name="warm on start")

    async def _ready_after(self, run: Run) -> None:
        limit = self.settings.strategies.proactive.warm_on_start_timeout
        try:
            async with asyncio.timeout(limit):
                await run.done.wait()
        except TimeoutError:
            log.warning(
                "warm on start still running after warm_on_start_timeout: ready anyway",
                extra={"run_id": run.id, "seconds": limit},
            )
        else:
            log.info(
                "warmed at start: ready",
                extra={
                    "run_id": run.id,
                    "success": run.progress.success,
                    "failed": run.progress.failed,
                },
            )
        finally:
            self.warming_on_start = None

    async def stop(self, drain: float = 0.0) -> None:
        """Not-ready first (and still serving for ``drain`` seconds), then close the
        listeners (in-flight requests finish), then stop warming and save its state."""
        self.ready = False
        if drain > 0 and self._proxy_runner is not None:
            log.info(
                "draining: /readyz answers 503, requests still served", extra={"seconds": drain}
            )
            await asyncio.sleep(drain)
        if self._proxy_runner is not None:
            await self._proxy_runner.cleanup()
        if self._control_runner is not None:
            await self._control_runner.cleanup()
        if self.relay is not None:
            # Another worker's last events and counts still reach the primary.
            await self.relay.close()
        # The fleet's runs go on without this replica: what it holds goes back.
        await self.fleet_runs.close()
        # A running warm run stops cleanly: queued requests dropped, in-flight
        # fetches finish (each store write is whole or absent).
        if self.state_lock.held:
            await self.warmer.shutdown()
        # Else start was refused (or never reached the state): the warmer never
        # ran, and the files there may be another process's, so nothing is saved.
        await self.tasks.close()
        if self.state_lock.held:
            # The figures after the last warm fetch, for the fleet's /stats.
            await self.fleet_stats.close()
        await self.fleet.close()
        await self.fleet_counts.close()
        self.hub.drain()
        await self.origin.close()
        await self.cache.store.close()
        self.state_lock.release()

    async def refresh_store_stats(self) -> None:
        """Count what the memory store holds (cheap); Redis is counted in the background."""
        if isinstance(self.cache.store, MemoryStore):
            self.metrics.store_stats = await self.cache.store.stats()

    async def _count_redis(self, interval: float) -> None:
        """Count the entries under our Redis prefix now and then (a SCAN: O(keys))."""
        while True:
            try:
                self.metrics.store_stats = await self.cache.store.stats()
            except StoreError as exc:
                log.debug("counting the Redis store failed: %s", exc)
            await asyncio.sleep(interval)

    async def _watch_store(self) -> None:
        """Ping the store so a failed one is noticed, and a recovered one used again."""
        while True:
            healthy = await self.cache.check_health()
            await asyncio.sleep(HEALTH_INTERVAL_OK if healthy else HEALTH_INTERVAL_FAILING)


def _replica_name(configured: str, worker: WorkerRole | None) -> str:
    """This process's name among the replicas: the default is per process; a
    configured name gets the worker's number after it (one heartbeat each)."""
    if not configured:
        return default_replica_name()
    if worker is None or worker.primary:
        return configured
    suffix = f"-w{worker.index}"
    return configured[: MAX_NAME_CHARS - len(suffix)] + suffix


def _bound_port(runner: web.BaseRunner, configured: int) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple):
            return int(address[1])
    return configured
