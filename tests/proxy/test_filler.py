"""The one fill path: a warm fill goes where a client miss goes, and lands in the same entry."""

from __future__ import annotations

import asyncio

from aiohttp import web

from proxy.entry import CacheEntry
from proxy.observe import AccessEvent
from tests.proxy.conftest import client_host, key, url


async def test_warm_fill_stores_what_a_client_then_hits(origin, proxy, client) -> None:
    events: list[AccessEvent] = []
    proxy.hub.subscribe(events.append)
    origin.set("/w", headers={"Cache-Control": "max-age=60"}, body=b"warm")
    result = await proxy.filler.fill("/w", client_host(proxy))
    assert result.stored and result.status == 200
    seen = origin.last("/w").headers
    assert seen["X-Warmproxy-Warm"] == "1"
    assert seen["Host"] == origin.url.removeprefix("http://")
    # Single-host keying without public_host: the origin hears what it would
    # if called directly, as for every client request.
    assert "X-Forwarded-Host" not in seen
    async with client.get(url(proxy, "/w")) as response:
        assert await response.read() == b"warm"
        assert "hit" in response.headers["Cache-Status"]
    assert origin.count("/w") == 1
    entry = proxy.cache.peek(key(proxy, "/w"))
    assert isinstance(entry, CacheEntry) and entry.warmed
    proxy.hub.drain()
    assert [e.url for e in events] == ["/w"]  # the client's hit only: warm fetches are not users


async def test_warm_fill_revalidates_a_stale_entry(origin, proxy, client) -> None:
    async def resource(request: web.Request) -> web.Response:
        if request.headers.get("If-None-Match") == '"e1"':
            return web.Response(status=304, headers={"ETag": '"e1"', "Cache-Control": "max-age=60"})
        return web.Response(body=b"v", headers={"ETag": '"e1"', "Cache-Control": "max-age=0"})

    origin.handle("/stale", resource)
    async with client.get(url(proxy, "/stale")) as response:
        await response.read()
    result = await proxy.filler.fill("/stale", client_host(proxy))
    assert result.revalidated and result.stored
    async with client.get(url(proxy, "/stale")) as response:
        assert "hit" in response.headers["Cache-Status"]


async def test_warm_fill_and_client_miss_share_one_origin_fetch(origin, proxy, client) -> None:
    origin.set("/both", headers={"Cache-Control": "max-age=60"}, body=b"B", delay=0.3)

    async def client_get() -> bytes:
        async with client.get(url(proxy, "/both")) as response:
            return await response.read()

    warm, body = await asyncio.gather(proxy.filler.fill("/both", client_host(proxy)), client_get())
    assert body == b"B" and warm.entry is not None
    assert origin.count("/both") == 1


async def test_warm_fill_of_an_uncacheable_url_stores_nothing(origin, proxy, client) -> None:
    origin.set("/private", headers={"Cache-Control": "private, max-age=60"})
    result = await proxy.filler.fill("/private", client_host(proxy))
    assert not result.stored and result.status == 200
    assert proxy.cache.peek(key(proxy, "/private")) is None
    async with client.get(url(proxy, "/private")) as response:
        assert "hit" not in response.headers["Cache-Status"]
    assert origin.count("/private") == 2


async def test_warm_fill_reports_an_unreachable_origin(make_proxy) -> None:
    proxy = await make_proxy("http://127.0.0.1:9")
    result = await proxy.filler.fill("/x")
    assert result.error is not None and not result.stored


async def test_warm_fill_for_the_public_host_is_hit_by_every_client(
    origin, make_proxy, client
) -> None:
    proxy = await make_proxy(origin.url, proxy={"public_host": "shop.example"})
    origin.set("/p", headers={"Cache-Control": "max-age=60"})
    await proxy.filler.fill("/p")
    assert origin.last("/p").headers["X-Forwarded-Host"] == "shop.example"
    for host in ("shop.example", "other.example"):
        async with client.get(url(proxy, "/p"), headers={"Host": host}) as response:
            assert "hit" in response.headers["Cache-Status"]
    assert origin.count("/p") == 1


async def test_a_warm_hint_keeps_a_cached_entry_from_eviction(origin, make_proxy, client) -> None:
    # A warm of an entry still fresh fetches nothing, but its lookup marks
    # the entry most recently used in the memory store, as a request would
    # (the replay models hints the same way): the next fill evicts another.
    proxy = await make_proxy(origin.url, cache={"store": "memory", "max_entries": 2})
    for path in ("/a", "/b", "/c"):
        origin.set(path, headers={"Cache-Control": "max-age=300"}, body=path.encode())
    for path in ("/a", "/b"):
        async with client.get(url(proxy, path)) as response:
            await response.read()
    hint = await proxy.filler.fill("/a", client_host(proxy), refresh=False)
    assert hint.already_fresh
    async with client.get(url(proxy, "/c")) as response:
        await response.read()
    async with client.get(url(proxy, "/a")) as response:
        assert "hit" in response.headers["Cache-Status"]
    async with client.get(url(proxy, "/b")) as response:
        assert "miss" in response.headers["Cache-Status"]
    assert (origin.count("/a"), origin.count("/b")) == (1, 2)
