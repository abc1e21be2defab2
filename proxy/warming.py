"""The warmer wired to this proxy: its fill path, origin, store and settings.

The warmer knows the proxy only through the small callables built here
(DESIGN §2): a fill that goes through :meth:`Filler.fill` (rule 1), a fetch
of origin paths for sitemaps, the cache key of a path, and the keys in the
store.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from urllib.parse import quote, urlsplit

from proxy.cache import Cache
from proxy.cache_key import check_path_glob, glob_literal_prefix, path_glob_matcher
from proxy.config import ExecutionSettings, Settings
from proxy.filler import Filler
from proxy.fleet_counts import FleetCounts
from proxy.fleet_runs import FleetRuns
from proxy.fleet_schedule import FleetSchedule
from proxy.forwarding import BadHost, ForwardingRules, normalize_host
from proxy.origin import OriginClient, OriginError, read_body
from proxy.store.base import StoreError
from warmer.alerts import AlertThresholds
from warmer.audience import AudienceConfig
from warmer.clock import Clock, WallClock
from warmer.config import MonitoringConfig, ReactiveConfig, WarmerConfig
from warmer.core import build_tracker
from warmer.executor import WarmExecutor
from warmer.model import TOUCH_GONE, TOUCH_KEPT, Fill, FillReport, WarmRequest
from warmer.pacing import AdaptiveConcurrency, ResourceGuard
from warmer.predictive import PredictiveConfig
from warmer.schedule_store import FileScheduleState, ScheduleState
from warmer.scheduler import SourceDeps
from warmer.service import BadRequest, Warmer
from warmer.sources import is_origin_path
from warmer.state_file import StateFile

SITEMAP_MAX_BYTES = 50 * 1024 * 1024
#: Seconds of glob matching between two turns of the event loop.
MATCH_SLICE = 0.005
#: The longest warm target: the proxy's default bound on a client's request
#: line (``proxy.max_request_line``); a longer path is no client's request.
MAX_TARGET_CHARS = 8190


def _key_of(rules: ForwardingRules, url: str, host: str) -> str:
    """The cache key of a warm target ``url`` for ``host`` ("": the default one)."""
    return rules.cache_key(url, host or rules.default_host)


def adaptive_concurrency(ex: ExecutionSettings) -> AdaptiveConcurrency | None:
    """The executor's limit that adapts to the origin, as ``[execution]`` says (None: fixed)."""
    if not ex.adaptive:
        return None
    return AdaptiveConcurrency(
        max_limit=ex.parallelism,
        latency_target=ex.latency_target,
        error_rate_limit=ex.error_rate_limit,
    )


def resource_guard(ex: ExecutionSettings) -> ResourceGuard | None:
    """The CPU/memory guard ``[execution]`` asks for (None: none)."""
    if not (ex.max_cpu_percent or ex.max_memory):
        return None
    return ResourceGuard(ex.max_cpu_percent or None, ex.max_memory or None)


def build_warmer(
    settings: Settings,
    *,
    filler: Filler,
    origin: OriginClient,
    cache: Cache,
    rules: ForwardingRules,
    clock: Clock | None = None,
    current_rules: Callable[[], ForwardingRules] | None = None,
    fleet_counts: FleetCounts | None = None,
    fleet_runs: FleetRuns | None = None,
) -> Warmer:
    """The warmer of this proxy; ``clock`` is the proxy's (default: the wall clock).

    ``current_rules``: the rules in force when a warm target is keyed (a
    reload may change the ``[cache]`` query rules); default: ``rules``.
    ``fleet_counts``: the fleet's usage counts and warm claims (Redis store).
    ``fleet_runs``: warm runs shared by the fleet's replicas, and the fleet's
    rate limit (Redis store).

    The executor's queue and the warmer read the same clock, so "ready at"
    times and the strategies' ``now`` agree.
    """
    now: Clock = clock if clock is not None else WallClock()
    keying = current_rules if current_rules is not None else (lambda: rules)
    ex = settings.execution
    levels = tuple(ex.priority_levels)
    allowed_hosts = {rules.origin_authority.lower()}
    if rules.public_host:
        allowed_hosts.add(rules.public_host)
    executor = WarmExecutor(
        fill_through(filler),
        levels=levels,
        parallelism=ex.parallelism,
        batch_size=ex.batch_size,
        timeout=ex.timeout,
        retry_attempts=ex.retry_attempts,
        retry_base_delay=ex.retry_base_delay,
        retry_max_delay=ex.retry_max_delay,
        rate_limit=ex.rate_limit,
        adaptive=adaptive_concurrency(ex),
        guard=resource_guard(ex),
        max_queue=ex.max_queue,
        clock=now,
        sleep=now.sleep,
    )
    runs = fleet_runs if fleet_runs is not None and fleet_runs.enabled else None
    if runs is not None:
        runs.bind(executor)
    config = warmer_config(settings, per_host=not rules.keys_are_paths)
    tracker = build_tracker(config)
    fleet = fleet_counts if fleet_counts is not None and fleet_counts.enabled else None
    if fleet is not None:
        fleet.bind(tracker.windows, config.reactive.time_window, tracker.misses)

    async def fetch(path: str) -> bytes:
        headers = rules.warm_request_headers(rules.default_host)
        try:
            response = await origin.request("GET", path, headers, purpose="warm")
        except OriginError as exc:
            raise OSError(f"GET {path}: {exc}") from exc
        try:
            if response.status != 200:
                raise OSError(f"GET {path}: origin answered {response.status}")
            body, complete = await read_body(response, SITEMAP_MAX_BYTES)
        finally:
            response.release()
        if not complete:
            raise OSError(f"GET {path}: larger than {SITEMAP_MAX_BYTES} bytes")
        return body

    def hot_paths(n: int) -> list[str]:
        return [h.url for h in tracker.hot(n, now())]

    def to_path(target: str) -> tuple[str, str]:
        return warm_target(target, allowed_hosts)

    async def store_paths(pattern: str) -> AsyncIterator[tuple[str, str]]:
        try:
            check_path_glob(pattern)
        except ValueError as exc:
            raise BadRequest("pattern", str(exc)) from None
        match = path_glob_matcher(pattern)
        # The store is asked only for the glob's literal prefix, which any
        # store matches in one pass over each key; the glob itself is
        # matched here, on the path (with per-host keying, keys are
        # //host/path for any host), giving way to the event loop between
        # slices.  Redis never runs a user's glob either: SCAN MATCH with
        # it would take the shared server's time from every replica.
        prefix = glob_literal_prefix(pattern)
        glob = f"{prefix}*" if rules.keys_are_paths else f"//*{prefix}*"
        loop = asyncio.get_running_loop()
        slice_end = loop.time() + MATCH_SLICE
        try:
            async for key in cache.keys(glob):
                parsed = _split_key(key)
                if parsed is not None and match(parsed[1]):
                    yield parsed
                if loop.time() > slice_end:
                    await asyncio.sleep(0)
                    slice_end = loop.time() + MATCH_SLICE
        except StoreError:  # the store is down: warm from what else is known
            return

    deps = SourceDeps(
        fetch=fetch,
        allowed_hosts=allowed_hosts,
        hot_paths=hot_paths,
        base_dir=Path.cwd(),
        policy=settings.strategies.proactive.source_policy(),
    )
    state: ScheduleState
    if settings.cache.store == "redis":
        # One document for the fleet, with this replica's copy as the fallback.
        state = FleetSchedule(
            settings.cache.redis_url,
            settings.cache.redis_prefix,
            local=FileScheduleState(settings.state.path()),
            timeout=settings.cache.redis_timeout * 4,
        )
    else:
        state = FileScheduleState(settings.state.path())
    p = settings.strategies.predictive
    model_path = Path(p.model_path) if p.model_path else settings.state.path() / "model.json"
    return Warmer(
        config,
        executor=executor,
        tracker=tracker,
        state=state,
        deps=deps,
        schedule=settings.strategies.proactive.as_schedule(),
        key_of=lambda url, host: _key_of(keying(), url, host),
        to_path=to_path,
        store_paths=store_paths,
        model_file=StateFile(model_path, "predictive model"),
        ledger_file=StateFile(settings.state.path() / "effectiveness.json", "effectiveness ledger"),
        # Without tracking there is no hot set to keep.
        hot_file=(
            StateFile(settings.state.path() / "hot.json", "hot set")
            if settings.tracking.enabled
            else None
        ),
        clock=now,
        fleet=fleet,
        fleet_runs=runs,
    )


def fill_through(filler: Filler) -> Fill:
    """The warmer's fill: the proxy's own fill path (DESIGN rule 1)."""

    async def fill(request: WarmRequest, admit: Callable[[], Awaitable[None]]) -> FillReport:
        if request.touch:
            kept = await filler.touch(request.url, request.host or None, headers=request.headers)
            return TOUCH_KEPT if kept is not None else TOUCH_GONE
        result = await filler.fill(
            request.url,
            request.host or None,
            headers=request.headers,
            refresh=request.refresh,
            ttl=request.ttl,
            before_fetch=admit,
        )
        entry = result.entry
        # The variant now in the cache for this request (stored, or found
        # fresh): what a client must send for the warm fill to pay off.
        cached = entry if entry is not None and (result.stored or result.already_fresh) else None
        return FillReport(
            status=result.status,
            stored=result.stored,
            already_fresh=result.already_fresh,
            failure=str(result.error) if result.error is not None else None,
            not_stored=result.uncacheable,
            bytes=len(entry.body) if entry is not None and not result.already_fresh else 0,
            fresh_until=entry.fresh_until if entry is not None and result.stored else 0.0,
            vary=cached.vary if cached is not None else (),
            vary_values=cached.vary_values if cached is not None else (),
            coding=cached.coding if cached is not None and "accept-encoding" in cached.vary else "",
        )

    return fill


def warm_target(target: str, allowed_hosts: set[str]) -> tuple[str, str]:
    """(host, path) of a warm target: a path, or a URL on the configured origin.

    Anything naming another host is refused: the warmer only ever fetches
    from the origin, and must not be a way to reach other servers (SSRF).
    """
    if not isinstance(target, str) or not target:
        raise BadRequest("url", "must be a non-empty string")
    if len(target) > MAX_TARGET_CHARS:
        raise BadRequest("url", f"must be at most {MAX_TARGET_CHARS} characters")
    if target.startswith("/") and not target.startswith("//"):
        return "", _origin_path(target)
    try:
        parts = urlsplit(target)
    except ValueError:  # e.g. an unclosed "[" of an IPv6 address
        raise BadRequest("url", f"not a URL: {target[:100]!r}") from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise BadRequest("url", f"must be a path such as /products/42, got {target!r}")
    try:
        host = normalize_host(parts.netloc)
    except BadHost:
        raise BadRequest("url", f"not a valid host in {target!r}") from None
    if host not in allowed_hosts:
        raise BadRequest(
            "url", f"{host} is not the configured origin ({', '.join(sorted(allowed_hosts))})"
        )
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return "", _origin_path(path)


def _origin_path(path: str) -> str:
    """``path`` as it goes into the origin's request line: checked as the
    scheduled sources' paths are (no whitespace, no control characters, not
    ``//``, which would name a host), and with any non-ASCII character
    percent-encoded as UTF-8, as a browser sends it (a request target is
    ASCII, RFC 9112 §3.2), so the warm fill lands under the key of a
    browser's request for it."""
    if not is_origin_path(path):
        raise BadRequest(
            "url", f"must be a path without spaces or control characters, got {path[:100]!r}"
        )
    return path if path.isascii() else quote(path, safe=_ASCII_VISIBLE)


_ASCII_VISIBLE = "".join(chr(c) for c in range(0x21, 0x7F))


def _split_key(key: str) -> tuple[str, str] | None:
    """(host, path) of a cache key (``//host/path`` or ``/path``)."""
    if key.startswith("//"):
        host, sep, rest = key[2:].partition("/")
        return (host, "/" + rest) if sep else None
    return ("", key) if key.startswith("/") else None


def warmer_config(settings: Settings, *, per_host: bool = False) -> WarmerConfig:
    """The warmer's settings from the proxy's configuration: what the live
    warmer runs with, and what ``warmproxy replay --config`` replays.

    ``per_host``: cache keys include the host (``proxy.host_keying``), so warm
    fetches are made for the hosts clients use.
    """
    ex = settings.execution
    levels = tuple(ex.priority_levels)
    r = settings.strategies.reactive
    tr = settings.tracking
    p = settings.strategies.predictive
    s = settings.strategies
    mon = settings.monitoring
    th = mon.alert_thresholds
    return WarmerConfig(
        levels=levels,
        proactive_enabled=settings.strategies.proactive.enabled,
        reactive=ReactiveConfig(**r.model_dump()),
        predictive=PredictiveConfig(
            enabled=p.enabled,
            prediction_window=p.prediction_window,
            min_confidence=p.min_confidence,
            max_warm_ratio=p.max_warm_ratio,
            max_keys=p.max_keys,
            priority=p.priority or levels[-1],
            sequences=p.sequences,
            neighbours=p.neighbours,
            retention=p.retention,
        ),
        retrain_schedule=p.retrain_schedule,
        monitoring=MonitoringConfig(
            track_effectiveness=mon.track_effectiveness,
            interval=mon.metrics_interval,
            max_tracked=mon.max_tracked_entries,
            # 0 switches a rule off.
            thresholds=AlertThresholds(
                min_improvement=th.min_improvement or None,
                min_success_rate=th.min_success_rate or None,
                min_precision=th.min_precision or None,
                min_samples=th.min_samples,
            ),
        ),
        optimize=settings.strategies.proactive.optimize,
        fill_rate=ex.rate_limit,
        include=tuple(s.include),
        exclude=tuple(s.exclude),
        analysis=tr.analysis,
        windows=tuple(tr.windows),
        top_k=tr.top_k,
        max_known_urls=tr.max_known_urls,
        audience=AudienceConfig(
            variant_min_share=s.variant_min_share,
            max_variants=s.max_variants,
            host_min_share=s.host_min_share,
            max_hosts=s.max_hosts,
            per_host=per_host,
            match_coding=settings.cache.vary_accept_encoding == "coding",
            max_keys=tr.max_known_urls,
        ),
    )
