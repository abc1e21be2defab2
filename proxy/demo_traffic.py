"""``warmproxy demo --traffic``: browser-like visitors for the demo, so the dashboard has
something to show.

A background task sends GETs to the proxy at a modest rate (Poisson arrivals,
5 a second by default), each as one of a few browsers sends it (its own
``Accept-Encoding`` and ``Accept-Language``: the fields the demo origin's
``Vary`` names, so the cache holds the variants real visitors select, RFC 9111
§4.1).  Paths follow a skewed mix over the demo shop (a few products and
articles are popular, most are not; assets on most page views; some live
scores and prices), which gives the tracker hot keys and the reactive warmer
something to keep warm.

Bounded: at most :data:`MAX_RATE` requests a second and :data:`MAX_IN_FLIGHT`
at a time (an arrival while that many are waiting is skipped, never queued),
and it stops with the demo (the task is cancelled).  The paths the demo
banner walks through by hand are never requested, so its "a miss, then a
hit" examples still show a miss first.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import aiohttp

from proxy.config import parse_hostport
from proxy.demo_origin import ARTICLE_COUNT, IMAGE_COUNT, LIVE_COUNT, PRODUCT_COUNT

if TYPE_CHECKING:
    from proxy.app import Warmproxy

log = logging.getLogger("warmproxy.demo")

DEFAULT_RATE: Final = 5.0
MAX_RATE: Final = 100.0
MAX_IN_FLIGHT: Final = 16
REQUEST_TIMEOUT: Final = aiohttp.ClientTimeout(total=10)

#: Paths the demo banner shows by hand; generated traffic leaves them alone.
BANNER_PATHS: Final = frozenset({"/products/1", "/products/42", "/articles/3", "/account"})

_HTML_ACCEPT: Final = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


@dataclass(frozen=True, slots=True)
class Browser:
    """The request headers one kind of visitor sends."""

    name: str
    headers: dict[str, str]


BROWSERS: Final[tuple[Browser, ...]] = (
    Browser(
        "chrome",
        {
            "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 "
            "(KHTML, like Gecko) Chrome/131.0 Safari/537.36 warmproxy-demo",
            "Accept": _HTML_ACCEPT,
            "Accept-Encoding": "gzip, deflate, br, zstd",
            "Accept-Language": "en-US,en;q=0.9",
        },
    ),
    Browser(
        "firefox",
        {
            "User-Agent": "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 "
            "Firefox/133.0 warmproxy-demo",
            "Accept": _HTML_ACCEPT,
            "Accept-Encoding": "gzip, deflate, br, zstd",
            "Accept-Language": "de-DE,de;q=0.8,en-US;q=0.5,en;q=0.3",
        },
    ),
    Browser(
        "safari",
        {
            "User-Agent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) AppleWebKit/605.1.15 "
            "(KHTML, like Gecko) Version/18.1 Safari/605.1.15 warmproxy-demo",
            "Accept": _HTML_ACCEPT,
            "Accept-Encoding": "gzip, deflate, br",
            "Accept-Language": "fr-FR,fr;q=0.9",
        },
    ),
)
#: Share of visitors per browser, in BROWSERS order.
BROWSER_WEIGHTS: Final = (0.6, 0.25, 0.15)


def demo_mix(seed: int = 0) -> list[tuple[str, float]]:
    """(path, weight) of the demo shop's traffic: Zipf-like over products and articles
    (which ones are popular is drawn from ``seed``), plus the home page, assets,
    search, live scores and prices."""
    rng = random.Random(seed)
    mix: list[tuple[str, float]] = [("/", 12.0), ("/static/app.css", 6.0), ("/static/app.js", 6.0)]

    def ranked(prefix: str, count: int, scale: float) -> None:
        paths = [f"{prefix}/{n}" for n in range(1, count + 1)]
        paths = [p for p in paths if p not in BANNER_PATHS]
        rng.shuffle(paths)
        mix.extend((path, scale / rank**1.1) for rank, path in enumerate(paths, 1))

    ranked("/products", PRODUCT_COUNT, 40.0)
    ranked("/articles", ARTICLE_COUNT, 15.0)
    mix.extend((f"/static/img/{n}.png", 4.0 / n) for n in range(1, IMAGE_COUNT + 1))
    mix.extend((f"/live/{n}", 2.0) for n in range(1, min(LIVE_COUNT, 5) + 1))
    mix.extend([("/search?q=lamp", 3.0), ("/search?q=tea", 2.0), ("/api/prices", 2.0)])
    mix.extend([("/flaky/1", 0.5), ("/slow/5", 0.5)])
    return mix


@dataclass
class DemoTraffic:
    """Sends the mix to ``base_url`` until cancelled; counts what it sent."""

    base_url: str
    rate: float = DEFAULT_RATE
    seed: int | None = None
    mix: Sequence[tuple[str, float]] = field(default_factory=demo_mix)
    sent: int = field(default=0, init=False)
    failed: int = field(default=0, init=False)
    skipped: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if not 0 < self.rate <= MAX_RATE:
            raise ValueError(f"traffic rate must be above 0 and at most {MAX_RATE:g} a second")
        self._rng = random.Random(self.seed)
        self._paths = [path for path, _ in self.mix]
        self._cumulative = list(itertools.accumulate(weight for _, weight in self.mix))
        self._browsers = list(itertools.accumulate(BROWSER_WEIGHTS))

    def pick(self) -> tuple[str, Browser]:
        """The next visitor's path and browser."""
        path = self._paths[
            bisect.bisect(self._cumulative, self._rng.random() * self._cumulative[-1])
        ]
        browser = BROWSERS[bisect.bisect(self._browsers, self._rng.random() * self._browsers[-1])]
        return path, browser

    async def run(self) -> None:
        """Send requests at ``rate`` a second until cancelled."""
        in_flight: set[asyncio.Task[None]] = set()
        # No automatic decompression (a browser would; this one only counts),
        # and no automatic headers beyond the browser's own.
        async with aiohttp.ClientSession(
            timeout=REQUEST_TIMEOUT, auto_decompress=False, skip_auto_headers=["User-Agent"]
        ) as session:
            try:
                while True:
                    await asyncio.sleep(self._rng.expovariate(self.rate))
                    if len(in_flight) >= MAX_IN_FLIGHT:
                        self.skipped += 1  # the proxy is slower than the rate: do not pile up
                        continue
                    task = asyncio.create_task(self._visit(session, *self.pick()))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
            finally:
                for task in in_flight:
                    task.cancel()
                await asyncio.gather(*in_flight, return_exceptions=True)

    async def _visit(self, session: aiohttp.ClientSession, path: str, browser: Browser) -> None:
        try:
            async with session.get(self.base_url + path, headers=browser.headers) as response:
                await response.read()
            self.sent += 1
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.failed += 1
            log.debug("demo traffic request failed", extra={"path": path, "error": str(exc)})


async def traffic_for(proxy: Warmproxy, rate: float, *, poll: float = 0.05) -> None:
    """Wait until ``proxy`` listens, then send demo traffic to it until cancelled."""
    # The proxy has no "started" event to wait on; a demo can afford a poll.
    while not proxy.proxy_port:  # noqa: ASYNC110
        await asyncio.sleep(poll)
    host, _ = parse_hostport(proxy.settings.proxy.listen, what="proxy.listen")
    if host in ("0.0.0.0", "::"):  # listening everywhere: loopback is one of them
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    traffic = DemoTraffic(f"http://{host}:{proxy.proxy_port}", rate)
    log.info("sending demo traffic", extra={"rate": rate, "to": traffic.base_url})
    await traffic.run()
