"""Replay a request trace through the real proxy (``warmproxy replay TRACE --live``).

``warmproxy replay`` judges the warmer against a simulated cache and origin
(:mod:`warmer.replay`).  This module measures the product itself on the same
trace, beside the simulation of the same configuration: per strategy, a
:class:`~proxy.app.Warmproxy` on real sockets (handler, Filler, memory store,
the live warmer and its executor) in front of a generated origin, on a
:class:`~warmer.clock.ScaledClock` that runs ``speed`` times faster than real
time, so a day of traffic takes minutes.

- The memory store holds as many responses as the simulated cache
  (``cache.max_entries`` = the replay's capacity; ``max_bytes`` is no limit).
- The origin (aiohttp on 127.0.0.1) answers each key with a body of the
  trace's size for it (:data:`DEFAULT_BODY_BYTES` when the trace gives none),
  ``Cache-Control: max-age=TTL``, ``Vary: Accept-Encoding``, gzipped for
  clients that accept gzip, and a ``Date`` on the scaled clock.  It counts the
  fetches it gets, and tells the warmer's (``X-Warmproxy-Warm: 1``) apart.
- A driver sends each trace request at its time on the scaled clock, as the
  trace's client: each client gets one browser profile (:data:`BROWSERS`:
  ``User-Agent``, ``Accept``, ``Accept-Encoding``, ``Accept-Language``) and its
  label as a client id (``proxy.client_id_header``).  The trace key becomes
  a path as in the simulation (:func:`warmer.trace.key_path`).  Whether the
  proxy answered from the cache is read from each response's ``Cache-Status``.

Figures per strategy: hit ratio (``Cache-Status`` hits over answered
requests), warm fetches per request (as the origin saw them), precision (the
live warmer's effectiveness ledger), and the *landing share*: of the warm
fetches whose key a client of their variant (its ``Accept-Encoding``) asked
for next while the warmed entry was still fresh, the share that client got as
a hit.  A warmed entry that real clients do not hit (another variant, another
key) shows here (DESIGN rule 4); one the store evicted before the client came
is left out (the LRU's doing, not the warm fetch's).

Strategies map to configuration (:data:`LIVE_STRATEGIES`): ``none`` warms
nothing; ``refresh-ahead`` is the reactive strategy with refresh-ahead only;
``predictive`` the predictive strategy alone.  Their other settings come from
the configuration file when one is given.  Warming runs unthrottled
(``execution.rate_limit = 0``: the origin is local) and with enough
parallelism.
"""

from __future__ import annotations

import asyncio
import gzip
import math
import re
import tempfile
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any, Final, TextIO
from urllib.parse import quote

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from proxy.app import Warmproxy
from proxy.config import ConfigError, Settings, load_settings
from proxy.policy import HeaderSource, request_vary_values
from proxy.store.memory import MemoryStore
from proxy.warming import warmer_config
from warmer.clock import Clock, ScaledClock
from warmer.replay import (
    HOUR,
    CacheSize,
    ReplayResult,
    StrategySpec,
    configured_factory,
    replay_file,
)
from warmer.trace import TraceError, key_path, read_trace

#: Strategies with a live configuration, in the order they are reported.
LIVE_STRATEGIES: Final = ("none", "refresh-ahead", "predictive")
#: Body size of a key the trace gives no size for.
DEFAULT_BODY_BYTES: Final = 4096
#: The default speed makes a trace's span take at most this many real seconds.
DEFAULT_REAL_SECONDS: Final = 600.0
#: Trace requests in flight at once, at most.
DEFAULT_CONCURRENCY: Final = 256
#: The client id header the driver sends each trace client's label in.
CLIENT_ID_HEADER: Final = "X-Client-Id"
#: The host clients are told the site is: keys are paths, as in the simulation.
PUBLIC_HOST: Final = "replay.invalid"
#: Real seconds between starting the proxy and the first request.
LEAD_SECONDS: Final = 0.25
#: A warm fetch counts for the landing share only when the next client request
#: came this many (scaled) seconds before the warmed entry's freshness ended,
#: so that timing jitter of the run is not taken for a missed landing.
LANDING_MARGIN: Final = 1.0


@dataclass(frozen=True, slots=True)
class BrowserProfile:
    """The request header fields one browser sends with every request."""

    name: str
    headers: tuple[tuple[str, str], ...]


#: Browser profiles the trace's clients are spread over (by their label).
BROWSERS: Final = (
    BrowserProfile(
        "chrome",
        (
            (
                "User-Agent",
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
                "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
            ),
            (
                "Accept",
                "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,"
                "image/webp,image/apng,*/*;q=0.8",
            ),
            ("Accept-Encoding", "gzip, deflate, br, zstd"),
            ("Accept-Language", "en-US,en;q=0.9"),
        ),
    ),
    BrowserProfile(
        "firefox",
        (
            (
                "User-Agent",
                "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
            ),
            ("Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
            ("Accept-Encoding", "gzip, deflate, br, zstd"),
            ("Accept-Language", "de,en-US;q=0.7,en;q=0.3"),
        ),
    ),
    BrowserProfile(
        "safari",
        (
            (
                "User-Agent",
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 "
                "(KHTML, like Gecko) Version/18.1 Safari/605.1.15",
            ),
            ("Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
            ("Accept-Encoding", "gzip, deflate, br"),
            ("Accept-Language", "en-GB,en;q=0.9"),
        ),
    ),
)


def browser_of(client: str, browsers: Sequence[BrowserProfile] = BROWSERS) -> BrowserProfile:
    """The browser of a trace client: the same one for every request of it,
    and the same from one run to the next."""
    return browsers[zlib.crc32(client.encode()) % len(browsers)]


_PCT_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def target_of(key: str) -> str:
    """The request target the driver sends for a trace key: its path
    (:func:`key_path`), with what may not appear in a request line
    percent-encoded (logs hold spaces, quotes, non-ASCII)."""
    path = _PCT_ESCAPE.sub("%25", key_path(key))
    return quote(path, safe="/:@!$&'()*+,;=?%")


def default_speed(span: float) -> float:
    """How much faster than real time a trace of ``span`` seconds is replayed by
    default: so that it takes at most :data:`DEFAULT_REAL_SECONDS`, and never
    slower than real time."""
    return max(1.0, span / DEFAULT_REAL_SECONDS)


# ----------------------------------------------------------------- the trace


@dataclass(frozen=True, slots=True)
class TracePlan:
    """What one pass over the trace found: enough to size the cache and the origin."""

    requests: int
    distinct_keys: int
    first_ts: float
    last_ts: float
    #: Request target -> body size (the largest the trace gives for the key).
    sizes: dict[str, int]

    @property
    def span(self) -> float:
        return self.last_ts - self.first_ts


def plan_trace(path: str | Path) -> TracePlan:
    """Read the whole trace once, checking it (:class:`TraceError` names a bad line)."""
    given: dict[str, int] = {}
    keys: set[str] = set()
    requests = 0
    first = last = 0.0
    for ts, key, size, _ in read_trace(path):
        if not requests:
            first = ts
        requests += 1
        last = max(last, ts)
        keys.add(key)
        if size is not None and size > given.get(key, -1):
            given[key] = size
    sizes = {target_of(key): given.get(key, DEFAULT_BODY_BYTES) for key in keys}
    return TracePlan(requests, len(keys), first, max(first, last), sizes)


# ----------------------------------------------------------------- the origin


@dataclass
class OriginCounts:
    """What the generated origin served."""

    fetches: int = 0  # every request it got
    warm_fetches: int = 0  # those the warmer made


class TraceOrigin:
    """The origin of a live replay: each trace key answered with a body of its size.

    Responses are fresh for ``ttl`` seconds (``max-age``), vary on
    ``Accept-Encoding`` and are gzipped for clients that accept gzip; their
    ``Date`` is read on the replay's clock, so ages are computed on it as well
    (RFC 9111 §4.2.3).  Warm fetches (``warm_header: 1``) are logged per target
    with the time they were answered, for the landing share.
    """

    def __init__(
        self,
        sizes: dict[str, int],
        *,
        ttl: float,
        clock: Clock,
        warm_header: str = "X-Warmproxy-Warm",
    ) -> None:
        self.sizes = sizes
        self.ttl = ttl
        self.clock = clock
        self.warm_header = warm_header
        self.counts = OriginCounts()
        #: Target -> (time, variant) of the warm fetches of it answered and not
        #: yet followed by a client request for that variant.
        self.warmed: defaultdict[str, list[tuple[float, str | None]]] = defaultdict(list)
        self._plain: dict[int, bytes] = {}
        self._gzipped: dict[int, bytes] = {}
        self._cache_control = f"max-age={int(ttl)}" if ttl == int(ttl) else f"max-age={ttl:g}"
        self._runner: web.ServerRunner | None = None
        self.url = ""

    async def start(self) -> str:
        """Listen on a free loopback port; returns the origin's URL."""
        self._runner = web.ServerRunner(web.Server(self.handle), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def handle(self, request: web.BaseRequest) -> web.Response:
        now = self.clock()
        target = request.raw_path
        self.counts.fetches += 1
        if request.headers.get(self.warm_header) == "1":
            self.counts.warm_fetches += 1
            self.warmed[target].append((now, variant_of(request.headers)))
        size = self.sizes.get(target, DEFAULT_BODY_BYTES)
        headers = {
            "Content-Type": "application/octet-stream",
            "Cache-Control": self._cache_control,
            "Vary": "Accept-Encoding",
            "Date": formatdate(now, usegmt=True),
        }
        if accepts_gzip(request.headers.get("Accept-Encoding", "")):
            headers["Content-Encoding"] = "gzip"
            return web.Response(body=self._gzip_body(size), headers=headers)
        return web.Response(body=self._body(size), headers=headers)

    def _body(self, size: int) -> bytes:
        body = self._plain.get(size)
        if body is None:
            body = self._plain[size] = b"w" * size
        return body

    def _gzip_body(self, size: int) -> bytes:
        body = self._gzipped.get(size)
        if body is None:
            body = self._gzipped[size] = gzip.compress(self._body(size), compresslevel=1, mtime=0)
        return body


def variant_of(headers: HeaderSource) -> str | None:
    """The variant of a response that varies on ``Accept-Encoding`` a request
    selects: its ``Accept-Encoding`` normalized as the cache compares it
    (None: not sent)."""
    return request_vary_values(("accept-encoding",), headers)[0]


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an ``Accept-Encoding`` value accepts gzip (RFC 9110 §12.5.3)."""
    for member in accept_encoding.split(","):
        coding, _, params = member.partition(";")
        if coding.strip().lower() not in ("gzip", "x-gzip", "*"):
            continue
        q = params.strip().lower()
        if q.startswith("q="):
            try:
                return float(q[2:]) > 0
            except ValueError:
                return False
        return True
    return False


# ----------------------------------------------------------------- the driver


@dataclass
class Landing:
    """Warm fetches followed by a client request for their key while fresh."""

    #: Warm fetches whose variant's next client came while they were fresh
    #: (or whose variant no client sends, once a client asked for the key).
    eligible: int = 0
    landed: int = 0  # ...and that client got a hit
    #: Cache-Status of the client requests that did not hit: "fwd=..." -> count.
    missed: Counter[str] = field(default_factory=Counter)
    #: Not counted: the store evicted the key (or a variant of it) between the
    #: warm fetch and the client's request, and the client missed.
    evicted: int = 0


@dataclass
class DriveCounts:
    """What the driver saw."""

    requests: int = 0
    hits: int = 0
    errors: int = 0  # no response, or not a 200
    collapsed: int = 0  # misses that waited for another request's origin fetch
    late_total: float = 0.0  # scaled seconds behind schedule, summed
    late_max: float = 0.0
    landing: Landing = field(default_factory=Landing)


def is_hit(cache_status: str) -> bool:
    """Whether a ``Cache-Status`` value (RFC 9211) says this cache answered."""
    members = cache_status.split(",")
    params = members[-1].split(";")[1:]
    return any(p.strip() == "hit" for p in params)


def _forward_reason(cache_status: str) -> str:
    """What a ``Cache-Status`` says about a request that did not hit: its
    ``fwd`` (and ``collapsed`` when it waited for another fetch)."""
    params = [p.strip() for p in cache_status.split(",")[-1].split(";")[1:]]
    fwd = next((p for p in params if p.startswith("fwd=")), None)
    if fwd is None:
        return cache_status.strip() or "no Cache-Status"
    return f"{fwd} collapsed" if "collapsed" in params else fwd


async def drive(
    path: str | Path,
    *,
    proxy_url: str,
    clock: ScaledClock,
    origin: TraceOrigin,
    ttl: float,
    concurrency: int = DEFAULT_CONCURRENCY,
    browsers: Sequence[BrowserProfile] = BROWSERS,
    evicted_at: Mapping[str, float] | None = None,
) -> DriveCounts:
    """Send every request of the trace at ``path`` to the proxy at its time on ``clock``.

    ``evicted_at``: when the store last evicted each cache key (or a variant
    of it), for telling a warmed entry evicted before its client came from one
    that did not land.
    """
    evictions: Mapping[str, float] = {} if evicted_at is None else evicted_at
    counts = DriveCounts()
    landing = counts.landing
    slots = asyncio.Semaphore(concurrency)
    pending: set[asyncio.Task[None]] = set()
    clients: dict[str, tuple[dict[str, str], str | None]] = {}
    client_variants = {variant_of(CIMultiDict(b.headers)) for b in browsers}
    margin = LANDING_MARGIN

    async def one(target: str, headers: dict[str, str], variant: str | None) -> None:
        sent_at = clock()
        status = ""
        try:
            async with session.get(URL(proxy_url + target, encoded=True), headers=headers) as r:
                await r.read()
                ok = r.status == 200
                status = r.headers.get("Cache-Status", "")
        except (aiohttp.ClientError, OSError, TimeoutError):
            ok = False
        counts.requests += 1
        hit = ok and is_hit(status)
        if not ok:
            counts.errors += 1
        elif hit:
            counts.hits += 1
        elif "collapsed" in status:
            counts.collapsed += 1
        warmed = origin.warmed.get(target)
        if not warmed:
            return
        kept: list[tuple[float, str | None]] = []
        for t, warm_variant in warmed:
            if t >= sent_at:
                kept.append((t, warm_variant))  # fetched after this request left
            elif sent_at >= t + ttl - margin:
                continue  # no client of its variant came while it was fresh
            elif warm_variant == variant:
                if hit:
                    landing.eligible += 1
                    landing.landed += 1
                elif evictions.get(target, -math.inf) > t:
                    landing.evicted += 1
                else:
                    landing.eligible += 1
                    landing.missed[_forward_reason(status) if ok else "error"] += 1
            elif warm_variant not in client_variants:
                # A variant no client sends exactly (DESIGN rule 4): it lands
                # only if the cache serves it to this client anyway.
                landing.eligible += 1
                if hit:
                    landing.landed += 1
                else:
                    landing.missed["variant no client sends"] += 1
            else:
                kept.append((t, warm_variant))  # waits for a client of its variant
        if kept:
            origin.warmed[target] = kept
        else:
            del origin.warmed[target]

    def done(task: asyncio.Task[None]) -> None:
        pending.discard(task)
        slots.release()

    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
    ) as session:
        loop = asyncio.get_running_loop()
        for ts, key, _, client in read_trace(path):
            wait = clock.real_seconds_until(ts)
            if wait > 0:
                await asyncio.sleep(wait)
            await slots.acquire()
            late = clock() - ts
            if late > 0:
                counts.late_total += late
                counts.late_max = max(counts.late_max, late)
            known = clients.get(client)
            if known is None:
                browser = browser_of(client, browsers).headers
                headers = dict(browser)
                if client:
                    headers[CLIENT_ID_HEADER] = client
                known = clients[client] = (headers, variant_of(CIMultiDict(browser)))
            task = loop.create_task(one(target_of(key), *known))
            pending.add(task)
            task.add_done_callback(done)
        while pending:
            await asyncio.gather(*list(pending))
    return counts


# ----------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class LiveResult:
    """What one strategy did in the real proxy over one trace."""

    strategy: str
    requests: int
    hits: int
    errors: int
    collapsed: int  # misses that waited for another request's fetch (not hits)
    origin_fetches: int  # every fetch the origin got (clients' misses and warm fetches)
    warm_fetches: int  # the warmer's, as the origin saw them
    precision: float | None  # the live effectiveness ledger's
    landing_eligible: int
    landing_landed: int
    landing_missed: dict[str, int]
    landing_evicted: int
    speed: float
    seconds: float  # real seconds the trace took
    late_mean: float  # scaled seconds the driver sent behind schedule, on average
    late_max: float
    events_dropped: int  # access events the warmer never saw (its buffer overflowed)
    touches: int = 0  # touches that found their entry and kept it (nothing fetched)
    touches_gone: int = 0  # touches that found their entry gone (evicted or stale)

    @property
    def hit_ratio(self) -> float:
        ok = self.requests - self.errors
        return self.hits / ok if ok else 0.0

    @property
    def warm_fetches_per_request(self) -> float:
        return self.warm_fetches / self.requests if self.requests else 0.0

    @property
    def landing_share(self) -> float | None:
        """Share of landable warm fetches the next client hit; None without any."""
        if not self.landing_eligible:
            return None
        return self.landing_landed / self.landing_eligible

    def to_json(self) -> dict[str, Any]:
        precision = self.precision
        landing = self.landing_share
        return {
            "hit_ratio": round(self.hit_ratio, 6),
            "warm_fetches_per_request": round(self.warm_fetches_per_request, 6),
            "precision": None if precision is None else round(precision, 6),
            "landing_share": None if landing is None else round(landing, 6),
            "requests": self.requests,
            "hits": self.hits,
            "errors": self.errors,
            "collapsed": self.collapsed,
            "origin_fetches": self.origin_fetches,
            "warm_fetches": self.warm_fetches,
            "landing_eligible": self.landing_eligible,
            "landing_landed": self.landing_landed,
            "landing_missed": dict(sorted(self.landing_missed.items())),
            "landing_evicted": self.landing_evicted,
            "speed": round(self.speed, 3),
            "seconds": round(self.seconds, 3),
            "late_mean": round(self.late_mean, 3),
            "late_max": round(self.late_max, 3),
            "events_dropped": self.events_dropped,
            "touches": self.touches,
            "touches_gone": self.touches_gone,
        }


@dataclass(frozen=True, slots=True)
class LiveComparison:
    """One strategy live and simulated, on the same configuration."""

    strategy: str
    live: LiveResult
    simulated: ReplayResult

    def to_json(self, baseline: ReplayResult | None = None) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "live": self.live.to_json(),
            "simulated": self.simulated.to_json(baseline),
        }


@dataclass(frozen=True, slots=True)
class LiveReport:
    """Every strategy's live and simulated figures over one trace."""

    path: str
    plan: TracePlan
    cache_size: CacheSize
    capacity: int
    ttl: float
    speed: float
    rows: tuple[LiveComparison, ...]
    baseline: ReplayResult | None = None

    def json_lines(self) -> list[dict[str, Any]]:
        return [row.to_json(self.baseline) for row in self.rows]


# ----------------------------------------------------------------- configuration


def strategy_overrides(strategy: str) -> dict[str, Any]:
    """The ``[strategies]`` settings that make the live proxy run ``strategy``."""
    off = {"enabled": False}
    if strategy == "none":
        return {"proactive": off, "reactive": off, "predictive": off}
    if strategy == "refresh-ahead":
        return {
            "proactive": off,
            "reactive": {"enabled": True, "refresh_ahead": True, "auto_warm": False},
            "predictive": off,
        }
    if strategy == "predictive":
        return {"proactive": off, "reactive": off, "predictive": {"enabled": True}}
    known = ", ".join(LIVE_STRATEGIES)
    raise ValueError(f"strategy {strategy!r} has no live configuration; live: {known}")


def live_settings(
    strategy: str,
    *,
    config: Path | None,
    origin_url: str,
    capacity: int,
    state_dir: Path,
    max_entry_bytes: int,
) -> Settings:
    """The settings of the proxy that replays ``strategy`` (ConfigError as ``serve``)."""
    file_values = load_settings(config) if config is not None else load_settings()
    parallelism = max(file_values.execution.parallelism, 64)
    overrides: dict[str, dict[str, Any]] = {
        "proxy": {
            "origin": origin_url,
            "listen": "127.0.0.1:0",
            "public_host": PUBLIC_HOST,
            "client_id_header": CLIENT_ID_HEADER,
        },
        "control": {"listen": "127.0.0.1:0"},
        "cache": {
            "store": "memory",
            "max_entries": capacity,
            # The count is the bound, as in the simulated cache.
            "max_bytes": 1 << 50,
            "max_entry_bytes": max(file_values.cache.max_entry_bytes, max_entry_bytes),
        },
        # The origin is local: no rate limit, no adapting to its latency.
        "execution": {"rate_limit": 0, "parallelism": parallelism, "adaptive": False},
        "tracking": {"enabled": True},
        "state": {"dir": str(state_dir)},
        "logging": {"access_log": False},
        "strategies": strategy_overrides(strategy),
    }
    return load_settings(config, overrides)


# ----------------------------------------------------------------- running


async def run_strategy(
    path: str | Path,
    strategy: str,
    *,
    plan: TracePlan,
    capacity: int,
    ttl: float,
    speed: float,
    config: Path | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    browsers: Sequence[BrowserProfile] = BROWSERS,
    settings_out: list[Settings] | None = None,
) -> LiveResult:
    """One strategy through a fresh proxy and origin on a fresh scaled clock."""
    clock = ScaledClock(plan.first_ts - LEAD_SECONDS * speed, speed)
    origin = TraceOrigin(plan.sizes, ttl=ttl, clock=clock)
    origin_url = await origin.start()
    proxy: Warmproxy | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="warmproxy-live-") as state_dir:
            settings = live_settings(
                strategy,
                config=config,
                origin_url=origin_url,
                capacity=capacity,
                state_dir=Path(state_dir),
                max_entry_bytes=max(plan.sizes.values(), default=0) + 64 * 1024,
            )
            if settings_out is not None:
                settings_out.append(settings)
            origin.warm_header = settings.execution.warm_header
            proxy = Warmproxy(settings, clock=clock)
            evicted_at: dict[str, float] = {}
            store = proxy.cache.store
            if isinstance(store, MemoryStore):

                def evicted(key: str) -> None:
                    # A variant's key is its URL's key + "#v...".
                    evicted_at[key.partition("#v")[0]] = clock()

                store.on_evict = evicted
            await proxy.start()
            started = time.perf_counter()
            counts = await drive(
                path,
                proxy_url=f"http://127.0.0.1:{proxy.proxy_port}",
                clock=clock,
                origin=origin,
                ttl=ttl,
                concurrency=concurrency,
                browsers=browsers,
                evicted_at=evicted_at,
            )
            seconds = time.perf_counter() - started
            precision = None
            ledger = proxy.warmer.ledger
            if ledger is not None:
                # Lifetimes still open at the end count by whether they were
                # hit, as the simulation counts them.
                ledger.settle(math.inf)
                precision = ledger.figures(clock()).precision
            dropped = proxy.hub.dropped
            touches = sum(proxy.warmer.executor.counters.kept.values())
            touches_gone = sum(proxy.warmer.executor.counters.gone.values())
            await proxy.stop()
            proxy = None
    finally:
        if proxy is not None:
            await proxy.stop()
        await origin.close()
    landing = counts.landing
    return LiveResult(
        strategy=strategy,
        requests=counts.requests,
        hits=counts.hits,
        errors=counts.errors,
        collapsed=counts.collapsed,
        origin_fetches=origin.counts.fetches,
        warm_fetches=origin.counts.warm_fetches,
        precision=precision,
        landing_eligible=landing.eligible,
        landing_landed=landing.landed,
        landing_missed=dict(landing.missed),
        landing_evicted=landing.evicted,
        speed=speed,
        seconds=seconds,
        late_mean=counts.late_total / counts.requests if counts.requests else 0.0,
        late_max=counts.late_max,
        events_dropped=dropped,
        touches=touches,
        touches_gone=touches_gone,
    )


def live_replay(
    path: str | Path,
    strategies: Sequence[str] = LIVE_STRATEGIES,
    *,
    cache_size: CacheSize | None = None,
    ttl: float = 300.0,
    speed: float | None = None,
    config: Path | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    browsers: Sequence[BrowserProfile] = BROWSERS,
    plan: TracePlan | None = None,
) -> LiveReport:
    """Replay the trace at ``path`` through the real proxy, once per strategy,
    and through the simulation of the same configuration.

    ``plan``: the trace's :func:`plan_trace`, when the caller has read it.
    Raises :class:`TraceError` / OSError for a trace that cannot be read,
    ConfigError for a bad configuration file, ValueError for a strategy without
    a live configuration, before anything runs.
    """
    for name in strategies:
        strategy_overrides(name)
    if not ttl > 0 or math.isinf(ttl):
        raise ValueError(f"ttl must be positive seconds, got {ttl}")
    if speed is not None and not (speed > 0 and math.isfinite(speed)):
        raise ValueError(f"speed must be a positive number, got {speed}")
    if config is not None:
        load_settings(config)
    size = cache_size if cache_size is not None else CacheSize(fraction=0.2)
    if plan is None:
        plan = plan_trace(path)
    capacity = size.capacity(plan.distinct_keys)
    run_speed = speed if speed is not None else default_speed(plan.span)
    lives: list[LiveResult] = []
    specs: list[StrategySpec] = []
    for name in strategies:
        used: list[Settings] = []
        lives.append(
            asyncio.run(
                run_strategy(
                    path,
                    name,
                    plan=plan,
                    capacity=capacity,
                    ttl=ttl,
                    speed=run_speed,
                    config=config,
                    concurrency=concurrency,
                    browsers=browsers,
                    settings_out=used,
                )
            )
        )
        # The simulation of the very configuration the live proxy ran.
        specs.append((name, configured_factory(warmer_config(used[0]))))
    simulated = replay_file(path, specs, cache_size=size, ttl=ttl)
    rows = tuple(
        LiveComparison(name, live, sim)
        for name, live, sim in zip(strategies, lives, simulated.results, strict=True)
    )
    return LiveReport(
        str(path),
        plan,
        size,
        capacity,
        ttl,
        run_speed,
        rows,
        simulated.baseline,
    )


def _percent(value: float | None, width: int) -> str:
    return f"{value * 100:>{width - 2}.2f} %" if value is not None else f"{'-':>{width}}"


def format_live_table(report: LiveReport) -> str:
    """The report as the text table ``warmproxy replay --live`` prints."""
    p = report.plan
    real = p.span / report.speed
    lines = [
        f"trace {Path(report.path).name}: {p.requests:,} requests, "
        f"{p.distinct_keys:,} distinct keys, {p.span / HOUR:.1f} h",
        f"cache {report.capacity:,} entries"
        + (f" ({report.cache_size})" if report.cache_size.fraction else "")
        + f", ttl {report.ttl:g} s",
        f"live: the proxy on real sockets at {report.speed:g}x real time "
        f"({real:.0f} s per strategy) beside the simulation of the same configuration",
        "",
        f"{'':<15}{'hit ratio':^20}{'warm/request':^20}{'precision':^20}{'landing':>9}",
        f"{'strategy':<15}{'live':>10}{'sim':>10}{'live':>10}{'sim':>10}"
        f"{'live':>10}{'sim':>10}{'share':>9}",
    ]
    for row in report.rows:
        live, sim = row.live, row.simulated
        lines.append(
            f"{row.strategy:<15}"
            + _percent(live.hit_ratio, 10)
            + _percent(sim.hit_ratio, 10)
            + f"{live.warm_fetches_per_request:>10.4f}{sim.warm_fetches_per_request:>10.4f}"
            + _percent(live.precision, 10)
            + _percent(sim.precision, 10)
            + (
                f"{live.landing_share * 100:>7.1f} %"
                if live.landing_share is not None
                else f"{'-':>9}"
            )
        )
    notes = []
    for row in report.rows:
        live = row.live
        if live.errors:
            notes.append(f"{row.strategy}: {live.errors:,} requests failed")
        if live.landing_missed:
            missed = ", ".join(f"{n:,} {why}" for why, n in sorted(live.landing_missed.items()))
            notes.append(f"{row.strategy}: warm fetches that did not land: {missed}")
        if live.landing_evicted:
            notes.append(
                f"{row.strategy}: {live.landing_evicted:,} warmed entries evicted before "
                "their next client came (not counted in the landing share)"
            )
        if live.late_max > 1.0:
            notes.append(
                f"{row.strategy}: requests sent up to {live.late_max:.1f} s late "
                f"(mean {live.late_mean:.2f} s, trace time): lower --speed for exact timing"
            )
        if live.events_dropped:
            notes.append(f"{row.strategy}: {live.events_dropped:,} access events dropped")
        if live.touches or row.simulated.touches:
            notes.append(
                f"{row.strategy}: {live.touches:,} touches kept a cached entry live "
                f"({live.touches_gone:,} found it gone), {row.simulated.touches:,} in the "
                "simulation"
            )
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)


def live_replay_command(
    trace: str | Path,
    *,
    cache_size: CacheSize,
    ttl: float,
    strategies: Sequence[str] | None = None,
    speed: float | None = None,
    config: Path | None = None,
    as_json: bool = False,
    out: TextIO,
    err: TextIO,
) -> int:
    """``warmproxy replay --live``: the table (or JSON lines) on ``out``; exit status.

    A trace that cannot be read is reported on ``err`` as ``warmproxy replay``
    reports it (with the line number of a malformed line) and gives 2, as do
    a bad configuration and a strategy without a live configuration.
    """
    names = list(LIVE_STRATEGIES if strategies is None else strategies)
    for name in names:
        if name not in LIVE_STRATEGIES:
            print(
                f"warmproxy replay --live: strategy {name!r} has no live configuration; "
                f"choose from {', '.join(LIVE_STRATEGIES)}",
                file=err,
            )
            return 2
    try:
        plan = plan_trace(trace)
    except TraceError as exc:
        print(f"warmproxy replay: {trace}: {exc}", file=err)
        return 2
    except OSError as exc:
        print(f"warmproxy replay: cannot read {trace}: {exc.strerror or exc}", file=err)
        return 2
    try:
        report = live_replay(
            trace, names, cache_size=cache_size, ttl=ttl, speed=speed, config=config, plan=plan
        )
    except ConfigError as exc:
        print(f"warmproxy replay: {exc}", file=err)
        return 2
    if as_json:
        for line in report.json_lines():
            out.write(orjson.dumps(line).decode() + "\n")
    else:
        out.write(format_live_table(report) + "\n")
    out.flush()
    return 0
