"""``warmproxy demo --traffic``: browser-like requests through the real proxy in front
of the demo origin, enough for the dashboard to show hits and hot keys."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from proxy.app import Warmproxy
from proxy.cli import _demo_banner, main
from proxy.demo_origin import start_demo_origin
from proxy.demo_traffic import (
    BANNER_PATHS,
    BROWSERS,
    MAX_IN_FLIGHT,
    DemoTraffic,
    demo_mix,
    traffic_for,
)
from tests.proxy.conftest import Origin, ProxyFactory, control_url, eventually


@pytest.fixture
async def demo_origin_url() -> AsyncIterator[str]:
    runner = await start_demo_origin("127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def requests_total(proxy: Warmproxy, outcome: str) -> float:
    async with (
        aiohttp.ClientSession() as session,
        session.get(control_url(proxy, "/metrics")) as response,
    ):
        text = await response.text()
    prefix = f'warmproxy_requests_total{{method="GET",outcome="{outcome}"}} '
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    return float(lines[0].removeprefix(prefix)) if lines else 0.0


async def test_traffic_fills_the_dashboard_until_it_stops(
    demo_origin_url: str, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(demo_origin_url)
    visitors = asyncio.create_task(traffic_for(proxy, 100))
    try:
        # Hits as well as misses: popular pages are asked for again while fresh.
        async def hits() -> bool:
            return await requests_total(proxy, "hit") >= 5

        await eventually(hits, within=30)

        async def hot_keys() -> bool:
            async with (
                aiohttp.ClientSession() as session,
                session.get(control_url(proxy, "/cache/warming/hot-data")) as response,
            ):
                hot = await response.json()
            return hot["totals"]["requests"] > 0 and bool(hot["hot_keys"])

        await eventually(hot_keys, within=30)
    finally:
        visitors.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await visitors
    assert visitors.done()

    # Stopped: nothing more arrives.  Requests the proxy had already taken
    # when their clients went away are still answered (and counted), so the
    # count settles first; then it must stay.
    async def counted() -> float:
        return await requests_total(proxy, "hit") + await requests_total(proxy, "miss")

    settled: list[float] = [await counted()]

    async def still() -> bool:
        await asyncio.sleep(0.2)
        settled.append(await counted())
        # On a loaded machine a request taken before the stop may take longer
        # than a sample's gap: settled means none is left in flight, too.
        return settled[-1] == settled[-2] and proxy.admission.in_flight == 0

    await eventually(still, within=10)
    await asyncio.sleep(0.5)
    assert await counted() == settled[-1]


async def test_requests_look_like_browsers_and_skip_the_banner_paths(origin: Origin) -> None:
    """Every request carries a browser's Accept-Encoding and Accept-Language."""
    traffic = DemoTraffic(origin.url, rate=100, seed=1)
    run = asyncio.create_task(traffic.run())
    try:
        await eventually(lambda: len(origin.seen) >= 40, within=30)
    finally:
        run.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await run
    languages = {s.headers.get("Accept-Language") for s in origin.seen}
    assert languages <= {b.headers["Accept-Language"] for b in BROWSERS}
    assert None not in languages
    assert all(s.headers.get("Accept-Encoding", "").startswith("gzip") for s in origin.seen)
    assert all(s.method == "GET" for s in origin.seen)
    assert not BANNER_PATHS & {s.path for s in origin.seen}


def test_the_mix_is_skewed_and_never_names_the_banner_paths() -> None:
    mix = demo_mix()
    assert not BANNER_PATHS & {path for path, _ in mix}
    traffic = DemoTraffic("http://unused", seed=3)
    picks = Counter(traffic.pick()[0] for _ in range(5000))
    ((_, top_count),) = picks.most_common(1)
    # A few pages are popular; most are asked for rarely.
    assert top_count > 10 * (5000 / len(mix))
    assert len(picks) > len(mix) // 3


async def test_a_slow_proxy_gets_no_pile_up(origin: Origin) -> None:
    """At most MAX_IN_FLIGHT requests wait at once; later arrivals are skipped."""
    release = asyncio.Event()

    async def stuck(request: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.Response(text="late")

    traffic = DemoTraffic(origin.url, rate=100, seed=2, mix=[("/stuck", 1.0)])
    origin.handle("/stuck", stuck)
    run = asyncio.create_task(traffic.run())
    try:
        await eventually(lambda: traffic.skipped > 0, within=30)
        assert origin.count("/stuck") == MAX_IN_FLIGHT
    finally:
        release.set()
        run.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await run


@pytest.mark.parametrize("rate", ["0", "-1", "101", "fast"])
def test_a_bad_rate_is_a_usage_error(rate: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["demo", "--traffic", rate])
    assert exited.value.code == 2
    assert "--traffic" in capsys.readouterr().err


def test_the_banner_names_the_dashboard_and_a_warm_command() -> None:
    banner = _demo_banner("http://127.0.0.1:9000", "127.0.0.1:8080", "127.0.0.1:8081", 5.0)
    assert "dashboard: http://127.0.0.1:8081/cache/warming/dashboard" in banner
    assert "warm --control-url http://127.0.0.1:8081 --url /products/42" in banner
    assert "5 browser-like requests a second" in banner
    quiet = _demo_banner("http://127.0.0.1:9000", "127.0.0.1:8080", "127.0.0.1:8081")
    assert "--traffic" in quiet
