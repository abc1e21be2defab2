"""Keeping a steadily asked-for page cached on the live proxy, as browsers meet it.

A crawler walks through one-off pages fast enough that the memory store (a
few dozen entries) evicts a page within about two seconds of its last use.
A visitor's browser asks for one page every 2.8 seconds: under
LRU alone it would find it evicted every time.  The predictive model learns
that the page is worth a cache slot (warmer.retention) and touches it
between the visitor's requests, so the visitor's requests become hits, with
no warm fetch of the page from the origin (a touch fetches nothing).
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import aiohttp

from tests.proxy.conftest import ProxyFactory
from tests.proxy.test_effectiveness_api import metrics_text
from tests.proxy.test_predictive_live import get, visitor
from tests.proxy.test_warming_api import api, sections
from tests.variants import BROWSERS, VaryingOrigin

HOT = "/en/products/kettle"
#: Seconds between the visitor's requests: longer than the page lasts under
#: the crawl, shorter than it lasts once touched (0.3 of it, plus at most the
#: warmer's one-second tick, after each request).
VISITS = 2.8


async def test_a_page_asked_for_steadily_stays_cached_through_a_crawl(
    varying_origin: VaryingOrigin, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    varying_origin.max_age = 3600
    proxy = await make_proxy(
        varying_origin.url,
        **sections(
            tmp_path,
            # 40 responses (a page's Vary index does not count).
            cache={"max_entries": 40},
            strategies={"predictive": {"enabled": True, "prediction_window": 60}},
        ),
    )
    loop = asyncio.get_running_loop()
    start = loop.time()
    stop = asyncio.Event()

    async def crawl() -> None:
        # 20 new pages a second, on a schedule (not slower when requests
        # take longer): the store evicts a page 2 s after its last use.
        async with visitor("127.0.0.20") as session:
            for page in itertools.count():
                if stop.is_set():
                    return
                await get(session, proxy, f"/en/catalogue/{page}", BROWSERS[2])
                await asyncio.sleep(max(0.0, start + (page + 1) / 20 - loop.time()))

    crawler = asyncio.create_task(crawl())
    statuses: list[str] = []
    try:
        async with visitor("127.0.0.10") as session:
            for n in range(10):
                # Chrome, naming the proxy by address and by name in turn:
                # one cache key, the gzip variant it selects.
                host = ("127.0.0.1", "localhost")[n % 2]
                statuses.append(await get(session, proxy, HOT, BROWSERS[0], host=host))
                await asyncio.sleep(max(0.0, start + (n + 1) * VISITS - loop.time()))
    finally:
        stop.set()
        await crawler
    hits = [s.startswith("warmproxy; hit") for s in statuses]
    # The crawl evicts the page between the visitor's requests at first ...
    assert not any(hits[1:3]), statuses
    # ... until the model keeps it: the visitor's last requests hit.
    assert sum(hits[-4:]) >= 3, statuses
    # (With strategies.predictive.retention = false every request misses.)
    # Kept by touches, never fetched again by the warmer.
    assert varying_origin.count(HOT, warm=True) == 0
    async with aiohttp.ClientSession() as client:
        metrics = await metrics_text(client, proxy)
        status, stats = await api(client, proxy, "GET", "stats")
    assert status == 200
    kept_figures = stats["predictive"]["retention"]
    # The visitor's hits after an eviction age without a request: rescued.
    assert kept_figures["touches"] > 0 and kept_figures["rescued_hits"] >= 3, kept_figures
    kept = [
        line
        for line in metrics.splitlines()
        if line.startswith("warmproxy_warm_touches_total")
        and 'result="kept"' in line
        and 'strategy="predictive"' in line
    ]
    assert kept and float(kept[0].split()[-1]) > 0, kept
