"""Overload: shed what would only queue (503 + Retry-After), and name pool waits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from proxy.app import Warmproxy
from tests.proxy.conftest import Origin, ProxyFactory, control_url, eventually, url

NO_STORE = {"Cache-Control": "no-store"}


@pytest.fixture
async def release() -> AsyncIterator[asyncio.Event]:
    """Set to let held origin requests answer; set at teardown in any case, so a
    failed test does not leave the origin holding them."""
    event = asyncio.Event()
    yield event
    event.set()


def hold_until(release: asyncio.Event, origin: Origin, prefix: str) -> None:
    """Make every ``prefix<n>`` path answer only once ``release`` is set."""

    async def held(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="late", headers=NO_STORE)

    for n in range(10):
        origin.handle(f"{prefix}{n}", held)


async def metric(client: aiohttp.ClientSession, proxy: Warmproxy, sample: str) -> float:
    """The value of ``sample`` (name and labels) on the control listener's /metrics."""
    async with client.get(control_url(proxy, "/metrics")) as response:
        for line in (await response.text()).splitlines():
            if line.startswith(sample + " "):
                return float(line.split()[-1])
    return 0.0


async def test_the_request_past_the_limit_gets_503_at_once_and_service_recovers(
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
    release: asyncio.Event,
) -> None:
    hold_until(release, origin, "/hold/")
    origin.set("/fresh", headers={"Cache-Control": "max-age=600"}, body=b"from memory")
    origin.set("/after", headers=NO_STORE, body=b"served again")
    proxy = await make_proxy(origin.url, proxy={"max_concurrent_requests": 5})
    async with client.get(url(proxy, "/fresh")) as response:
        assert await response.read() == b"from memory"  # now cached in process

    held = [asyncio.ensure_future(client.get(url(proxy, f"/hold/{n}"))) for n in range(5)]
    await eventually(lambda: origin.count() == 6)  # all five reached the origin
    assert await metric(client, proxy, "warmproxy_requests_in_flight") == 5.0

    async with asyncio.timeout(2):  # queued, it would wait for the release forever
        async with client.get(url(proxy, "/hold/5")) as response:
            assert response.status == 503
            assert response.headers["Retry-After"] == "1"
            assert "detail=overload" in response.headers["Cache-Status"]
            assert "overloaded" in await response.text()
        async with client.post(url(proxy, "/hold/6"), data=b"x") as response:
            assert response.status == 503
        # A fresh entry in process memory costs no wait: still served.
        async with client.get(url(proxy, "/fresh")) as response:
            assert response.status == 200
            assert await response.read() == b"from memory"
    assert origin.count("/hold/5") == origin.count("/hold/6") == 0
    assert await metric(client, proxy, 'warmproxy_proxy_errors_total{reason="overload"}') == 2.0

    release.set()
    for request in held:
        async with await request as response:
            assert response.status == 200
            assert await response.text() == "late"
    async with client.get(url(proxy, "/after")) as response:
        assert response.status == 200
        assert await response.read() == b"served again"
    assert await metric(client, proxy, "warmproxy_requests_in_flight") == 0.0


async def test_a_lagging_event_loop_sheds_misses_until_it_catches_up(
    origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    origin.set("/miss", headers=NO_STORE, body=b"origin")
    proxy = await make_proxy(origin.url, proxy={"max_loop_lag": 0.2})
    async with client.get(url(proxy, "/miss")) as response:
        assert response.status == 200

    # The loop is blocked 0.5 s, as by a burst of work, with requests queued behind it.
    queued = asyncio.ensure_future(client.get(url(proxy, "/miss")))
    await asyncio.sleep(0)  # the request is on its way before the loop blocks
    time.sleep(0.5)  # noqa: ASYNC251 - the point is to stall the loop
    async with await queued as response:
        assert response.status == 503
        assert response.headers["Retry-After"] == "1"
    assert await metric(client, proxy, "warmproxy_event_loop_lag_seconds") > 0.2

    async def served() -> bool:
        async with client.get(url(proxy, "/miss")) as response:
            return response.status == 200

    await eventually(served, within=2)
    assert await metric(client, proxy, 'warmproxy_proxy_errors_total{reason="overload"}') >= 1.0


async def test_no_limits_when_both_are_switched_off(
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
    release: asyncio.Event,
) -> None:
    """0 means no limit, not "refuse everything"."""
    hold_until(release, origin, "/hold/")
    origin.set("/miss", headers=NO_STORE)
    proxy = await make_proxy(origin.url, proxy={"max_concurrent_requests": 0, "max_loop_lag": 0})
    held = [asyncio.ensure_future(client.get(url(proxy, f"/hold/{n}"))) for n in range(8)]
    await eventually(lambda: origin.count() == 8)
    release.set()
    for request in held:
        async with await request as response:
            assert response.status == 200
    queued = asyncio.ensure_future(client.get(url(proxy, "/miss")))
    await asyncio.sleep(0)
    time.sleep(0.3)  # noqa: ASYNC251 - a stalled loop, as in the lag test
    async with await queued as response:
        assert response.status == 200


async def test_a_miss_that_waited_for_a_pooled_connection_says_so(
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
    release: asyncio.Event,
) -> None:
    hold_until(release, origin, "/slow/")
    origin.set("/quick", headers={"Cache-Control": "max-age=60"})
    proxy = await make_proxy(
        origin.url,
        # aiohttp's connect timeout covers the pool wait and the connect.
        proxy={
            "max_origin_connections": 1,
            "pool_timeout": 0.3,
            "connect_timeout": 0.2,
            "read_timeout": 10,
        },
    )
    held = asyncio.ensure_future(client.get(url(proxy, "/slow/0")))
    await eventually(lambda: origin.count("/slow/0") == 1)  # it holds the only connection
    async with client.get(url(proxy, "/quick")) as response:
        assert response.status == 504
        text = await response.text()
        assert "waited for an origin connection" in text
        assert "origin timed out" not in text
        assert 'detail="pool-wait"' in response.headers["Cache-Status"]
    assert origin.count("/quick") == 0  # the origin was never asked
    assert await metric(client, proxy, 'warmproxy_proxy_errors_total{reason="pool-wait"}') == 1.0
    assert await metric(client, proxy, 'warmproxy_origin_errors_total{reason="pool-wait"}') == 1.0
    assert await metric(client, proxy, 'warmproxy_origin_errors_total{reason="timeout"}') == 0.0
    release.set()
    async with await held as response:
        assert await response.text() == "late"
    async with client.get(url(proxy, "/quick")) as response:
        assert response.status == 200  # the connection is free again


async def test_an_origin_slow_to_answer_is_still_named_a_timeout(
    origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    origin.set("/slow", delay=1.0)
    proxy = await make_proxy(origin.url, proxy={"read_timeout": 0.2})
    async with client.get(url(proxy, "/slow")) as response:
        assert response.status == 504
        assert "origin timed out" in await response.text()
        assert 'detail="origin-timeout"' in response.headers["Cache-Status"]
    assert (
        await metric(client, proxy, 'warmproxy_proxy_errors_total{reason="origin-timeout"}') == 1.0
    )
    assert await metric(client, proxy, 'warmproxy_origin_errors_total{reason="pool-wait"}') == 0.0
