"""Access events reach observers without touching responses; metrics and health endpoints."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from proxy.observe import AccessEvent, EventHub, Outcome
from tests.proxy.conftest import control_url, eventually, key, url


async def test_every_request_produces_an_access_event(origin, make_proxy, client) -> None:
    proxy = await make_proxy(origin.url, proxy={"client_id_header": "X-User"})
    events: list[AccessEvent] = []
    proxy.hub.subscribe(events.append)
    origin.set("/e", headers={"Cache-Control": "max-age=60"}, body=b"12345")
    for _ in range(2):
        async with client.get(url(proxy, "/e?q=1"), headers={"X-User": "alice"}) as r:
            await r.read()
    async with client.post(url(proxy, "/e?q=1")) as r:
        await r.read()
    await eventually(lambda: len(events) == 3)
    miss, hit, post = events
    assert (miss.outcome, hit.outcome, post.outcome) == (Outcome.MISS, Outcome.HIT, Outcome.BYPASS)
    assert hit.key == key(proxy, "/e?q=1") and hit.url == "/e?q=1" and hit.method == "GET"
    assert hit.client == "alice" and post.client == "127.0.0.1"
    assert hit.host == ""  # keys are paths: a warm fill of the url needs no host
    assert hit.bytes == 5 and hit.status == 200
    assert 0 <= hit.latency < 5 and abs(hit.ts - time.time()) < 60


async def test_a_failing_or_slow_observer_never_changes_responses(origin, proxy, client) -> None:
    calls = {"n": 0}

    def broken(event: AccessEvent) -> None:
        calls["n"] += 1
        raise RuntimeError("observer bug")

    proxy.hub.subscribe(broken)
    origin.set("/o", headers={"Cache-Control": "max-age=60"}, body=b"fine")
    for _ in range(3):
        async with client.get(url(proxy, "/o")) as response:
            assert response.status == 200 and await response.read() == b"fine"
    await eventually(lambda: calls["n"] == 3)
    assert proxy.hub.observer_errors == 3


def test_hub_is_bounded_and_counts_what_it_drops() -> None:
    hub = EventHub(capacity=10)
    seen: list[AccessEvent] = []
    hub.subscribe(seen.append)
    for i in range(25):
        hub.emit(AccessEvent(i, f"/{i}", f"/{i}", "GET", Outcome.HIT, 200, 0.0, 0, "c"))
    assert hub.dropped == 15
    assert hub.drain() == 10
    assert [e.key for e in seen] == [f"/{i}" for i in range(15, 25)]


async def test_metrics_endpoint_reports_outcomes_and_origin_timing(origin, proxy, client) -> None:
    origin.set("/m", headers={"Cache-Control": "max-age=60"})
    for _ in range(3):
        async with client.get(url(proxy, "/m")) as r:
            await r.read()
    async with client.get(control_url(proxy, "/metrics")) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    assert 'warmproxy_requests_total{method="GET",outcome="hit"} 2.0' in text
    assert 'warmproxy_requests_total{method="GET",outcome="miss"} 1.0' in text
    assert 'warmproxy_origin_request_duration_seconds_count{purpose="fill"} 1.0' in text
    assert "warmproxy_store_entries 1.0" in text
    assert "warmproxy_store_up 1.0" in text
    assert "warmproxy_coalesced_requests_total" in text
    assert "warmproxy_store_errors_total" in text


async def test_two_proxies_in_one_process_have_separate_registries(
    origin, make_proxy, client
) -> None:
    first = await make_proxy(origin.url)
    second = await make_proxy(origin.url)
    origin.set("/r", headers={"Cache-Control": "max-age=60"})
    async with client.get(url(first, "/r")) as r:
        await r.read()
    async with client.get(control_url(second, "/metrics")) as response:
        assert 'outcome="miss"' not in await response.text()


async def test_healthz_and_readyz(origin, proxy, client) -> None:
    async with client.get(control_url(proxy, "/healthz")) as response:
        assert response.status == 200
    async with client.get(control_url(proxy, "/readyz")) as response:
        assert response.status == 200
        assert (await response.json())["store_healthy"] is True


async def test_readyz_not_ready_once_stopping(origin, make_proxy, client) -> None:
    proxy = await make_proxy(origin.url)
    proxy.ready = False  # what stop() does first
    async with client.get(control_url(proxy, "/readyz")) as response:
        assert response.status == 503


_ = (asyncio, web)
