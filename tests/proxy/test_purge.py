"""Purges by path, glob and tag, hard and soft, re-warmed, through the control API
and the PURGE method: a real origin, the proxy on real ports, both stores."""

from __future__ import annotations

import asyncio
import gzip
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from multidict import CIMultiDictProxy

from proxy.app import Warmproxy
from proxy.entry import CacheEntry
from proxy.purge import MAX_TAGS, parse_tags
from proxy.store.memory import MemoryStore
from proxy.store.redis import RedisStore
from tests.proxy.conftest import Origin, ProxyFactory, control_url, eventually, url
from tests.variants import CHROME, VaryingOrigin

CACHEABLE = {"Cache-Control": "public, max-age=60"}
IDENTITY = {"Accept-Encoding": "identity"}
GZIP = {"Accept-Encoding": "gzip"}


@pytest.fixture(params=["memory", "redis"])
def cache_section(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The [cache] section of each store; Redis keeps its L1 tier, which a purge must empty."""
    if request.param == "memory":
        return {"store": "memory"}
    redis_url = request.getfixturevalue("redis_url")
    prefix = request.getfixturevalue("redis_prefix")
    return {"store": "redis", "redis_url": redis_url, "redis_prefix": prefix, "l1_ttl": 30}


async def purge(client: aiohttp.ClientSession, proxy: Warmproxy, body: Any) -> tuple[int, Any]:
    async with client.post(control_url(proxy, "/cache/warming/purge"), json=body) as response:
        return response.status, await response.json()


async def get(
    client: aiohttp.ClientSession,
    proxy: Warmproxy,
    path: str,
    headers: dict[str, str] | None = None,
) -> tuple[bytes, str, CIMultiDictProxy[str]]:
    async with client.get(url(proxy, path), headers=headers or IDENTITY) as response:
        assert response.status == 200, path
        return await response.read(), response.headers["Cache-Status"], response.headers


def is_hit(cache_status: str) -> bool:
    return cache_status.startswith("warmproxy; hit") and "stale" not in cache_status


def purged_metric(proxy: Warmproxy, mode: str, by: str) -> float:
    labels = {"mode": mode, "by": by}
    value = proxy.metrics.registry.get_sample_value("warmproxy_purged_entries_total", labels)
    return value or 0.0


def compressing(origin: Origin, path: str, body: bytes, tags: str = "") -> None:
    """``path`` answered gzip to clients that accept it, identity to others."""

    async def handler(request: web.Request) -> web.Response:
        headers = {**CACHEABLE, "Vary": "Accept-Encoding"}
        if tags:
            headers["Surrogate-Key"] = tags
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            return web.Response(
                body=gzip.compress(body, mtime=0), headers={**headers, "Content-Encoding": "gzip"}
            )
        return web.Response(body=body, headers=headers)

    origin.handle(path, handler)


async def test_purge_by_path_drops_every_variant_of_it(
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
    cache_section: dict[str, Any],
) -> None:
    compressing(origin, "/page", b"page")
    origin.set("/other", headers=CACHEABLE, body=b"other")
    proxy = await make_proxy(origin.url, cache=cache_section)
    for headers in (GZIP, IDENTITY):
        await get(client, proxy, "/page", headers)
    await get(client, proxy, "/other")
    assert is_hit((await get(client, proxy, "/page", GZIP))[1])
    assert is_hit((await get(client, proxy, "/page", IDENTITY))[1])
    assert origin.count("/page") == 2

    status, body = await purge(client, proxy, {"path": "/page"})
    assert (status, body) == (200, {"purged": 2, "soft": False, "rewarm": None})

    gzipped, cache_status, _ = await get(client, proxy, "/page", GZIP)
    assert not is_hit(cache_status) and gzip.decompress(gzipped) == b"page"
    plain, cache_status, _ = await get(client, proxy, "/page", IDENTITY)
    assert not is_hit(cache_status) and plain == b"page"
    assert origin.count("/page") == 4
    assert is_hit((await get(client, proxy, "/other"))[1])  # not purged
    assert purged_metric(proxy, "hard", "path") == 2


async def test_purge_by_glob_drops_the_matching_paths_only(
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
    cache_section: dict[str, Any],
) -> None:
    paths = ["/products/1", "/products/2?colour=red", "/products/3", "/productsale", "/about"]
    for path in paths:
        origin.set(path, headers=CACHEABLE, body=path.encode())
    proxy = await make_proxy(origin.url, cache=cache_section)
    for path in paths:
        await get(client, proxy, path)

    status, body = await purge(client, proxy, {"pattern": "/products/*"})
    assert (status, body["purged"]) == (200, 3), body

    for path in paths:
        _, cache_status, _ = await get(client, proxy, path)
        assert is_hit(cache_status) == (not path.startswith("/products/")), path
    status, body = await purge(client, proxy, {"pattern": "/nothing/[a-z]*"})
    assert (status, body) == (200, {"purged": 0, "soft": False, "rewarm": None})
    assert purged_metric(proxy, "hard", "pattern") == 3


async def test_purge_by_tag_and_the_client_never_sees_the_tag_header(
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
    cache_section: dict[str, Any],
) -> None:
    compressing(origin, "/a", b"a", tags="product-42 list")
    origin.set("/b", headers={**CACHEABLE, "Surrogate-Key": "list,  front"}, body=b"b")
    origin.set("/c", headers={**CACHEABLE, "Surrogate-Key": "other"}, body=b"c")
    proxy = await make_proxy(origin.url, cache=cache_section)
    for path, headers in (("/a", GZIP), ("/a", IDENTITY), ("/b", IDENTITY), ("/c", IDENTITY)):
        for _ in range(2):  # a miss, then a hit: neither carries the tags
            _, _, response_headers = await get(client, proxy, path, headers)
            assert "Surrogate-Key" not in response_headers, path

    status, body = await purge(client, proxy, {"tag": "list"})
    assert (status, body["purged"]) == (200, 3), body  # both variants of /a, and /b

    for path in ("/a", "/b"):
        assert not is_hit((await get(client, proxy, path))[1]), path
    assert is_hit((await get(client, proxy, "/c"))[1])
    # /a was stored again (tagged again); a tag nothing carries purges nothing.
    assert (await purge(client, proxy, {"tag": "product-42"}))[1]["purged"] == 1
    assert (await purge(client, proxy, {"tag": "nobody"}))[1]["purged"] == 0
    assert purged_metric(proxy, "hard", "tag") == 4


async def test_a_configured_tag_header_is_the_one_taken(
    origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    origin.set("/t", headers={**CACHEABLE, "Cache-Tag": "blog", "Surrogate-Key": "x"})
    proxy = await make_proxy(origin.url, cache={"purge": {"tag_header": "Cache-Tag"}})
    _, _, headers = await get(client, proxy, "/t")
    assert "Cache-Tag" not in headers
    assert headers["Surrogate-Key"] == "x"  # an ordinary header now
    assert (await purge(client, proxy, {"tag": "x"}))[1]["purged"] == 0
    assert (await purge(client, proxy, {"tag": "blog"}))[1]["purged"] == 1


async def test_soft_purge_serves_stale_while_one_refresh_runs(
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
    cache_section: dict[str, Any],
) -> None:
    release = asyncio.Event()
    version = {"n": 1}

    async def handler(request: web.Request) -> web.Response:
        if version["n"] > 1:
            await release.wait()  # the refresh waits until the test has looked
        return web.Response(
            body=f"v{version['n']}".encode(),
            headers={**CACHEABLE, "ETag": f'"v{version["n"]}"', "Surrogate-Key": "s"},
        )

    origin.handle("/s", handler)
    proxy = await make_proxy(origin.url, cache=cache_section)
    await get(client, proxy, "/s")
    version["n"] = 2

    status, body = await purge(client, proxy, {"tag": "s", "soft": True})
    assert (status, body) == (200, {"purged": 1, "soft": True, "rewarm": None})

    answers = await asyncio.gather(*(get(client, proxy, "/s") for _ in range(5)))
    for content, cache_status, _ in answers:
        assert content == b"v1"
        assert 'detail="stale-while-revalidate"' in cache_status, cache_status
    await eventually(lambda: origin.count("/s") == 2)
    # The refresh was conditional: it carried the stale entry's validator.
    assert origin.last("/s").headers["If-None-Match"] == '"v1"'
    release.set()

    async def refreshed() -> bool:
        content, cache_status, _ = await get(client, proxy, "/s")
        return content == b"v2" and is_hit(cache_status)

    await eventually(refreshed)
    assert origin.count("/s") == 2  # exactly one refresh
    assert purged_metric(proxy, "soft", "tag") == 1


async def test_purge_with_rewarm_leaves_a_browser_a_hit(
    varying_origin: VaryingOrigin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
    cache_section: dict[str, Any],
) -> None:
    paths = ["/assets/site.css", "/assets/print.css"]
    proxy = await make_proxy(
        varying_origin.url,
        cache=cache_section,
        execution={"rate_limit": 0, "retry_base_delay": 0.01},
    )
    for path in paths:
        async with client.get(url(proxy, path), **CHROME.request_kwargs()) as response:
            await response.read()
    before = {path: varying_origin.count(path) for path in paths}

    status, body = await purge(client, proxy, {"pattern": "/assets/*", "rewarm": True})
    assert status == 200, body
    assert body["purged"] == 2
    run = body["rewarm"]
    assert run["strategy"] == "purge" and run["progress"]["total_items"] == 2

    async def done() -> bool:
        address = control_url(proxy, f"/cache/warming/progress?run_id={run['run_id']}")
        async with client.get(address) as response:
            progress = await response.json()
        return bool(progress["status"] == "completed" and progress["progress"]["success"] == 2)

    await eventually(done, within=10)
    for path in paths:
        assert varying_origin.count(path) == before[path] + 1, path  # one warm fetch each
        async with client.get(url(proxy, path), **CHROME.request_kwargs()) as response:
            await response.read()
            assert is_hit(response.headers["Cache-Status"]), response.headers["Cache-Status"]
        assert varying_origin.count(path) == before[path] + 1, path


async def test_purge_method_is_allowed_only_from_listed_networks(
    origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    origin.set("/m", headers=CACHEABLE, body=b"m")
    allowed = await make_proxy(
        origin.url, cache={"purge": {"method": True, "allowed_networks": ["127.0.0.1/32"]}}
    )
    refused = await make_proxy(
        origin.url, cache={"purge": {"method": True, "allowed_networks": ["10.0.0.0/8"]}}
    )
    for proxy in (allowed, refused):
        await get(client, proxy, "/m")

    async with client.request("PURGE", url(refused, "/m")) as response:
        assert response.status == 403
    assert is_hit((await get(client, refused, "/m"))[1])

    async with client.request("PURGE", url(allowed, "/m")) as response:
        assert response.status == 200
        assert await response.json() == {"purged": 1, "soft": False, "rewarm": None}
    assert not is_hit((await get(client, allowed, "/m"))[1])
    assert origin.count("/m", method="PURGE") == 0  # never forwarded


async def test_purge_method_off_is_forwarded_to_the_origin(
    origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    origin.set("/m", headers=CACHEABLE, body=b"m")
    proxy = await make_proxy(origin.url)
    async with client.request("PURGE", url(proxy, "/m")) as response:
        await response.read()
    assert origin.count("/m", method="PURGE") == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"pattern": "/products/[abc"}, "pattern"),
        ({"pattern": "/products/[*]"}, "pattern"),
        ({"pattern": "products/*"}, "pattern"),
        ({"pattern": "/" + "*" * 17}, "pattern"),
        ({"pattern": "/" + "a" * 600}, "pattern"),
        ({"tag": "two words"}, "tag"),
        ({"tag": "t" * 129}, "tag"),
        ({"path": "//elsewhere/x"}, "path"),
        ({"path": "/a", "tag": "x"}, "path"),
        ({}, "path"),
        ({"path": "/a", "soft": "yes"}, "soft"),
        ({"path": "/a", "rewarm": True, "priority": "urgent"}, "priority"),
        ({"path": "/a", "priority": "urgent"}, "priority"),
        ({"path": "/a", "surprise": 1}, "surprise"),
    ],
)
async def test_bad_purges_are_refused_naming_the_field(
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
    body: dict[str, Any],
    field: str,
) -> None:
    origin.set("/a", headers=CACHEABLE)
    proxy = await make_proxy(origin.url)
    await get(client, proxy, "/a")
    status, answer = await purge(client, proxy, body)
    assert status == 400, answer
    assert answer["field"] == field, answer
    assert is_hit((await get(client, proxy, "/a"))[1])  # nothing was purged


def test_tags_are_bounded_in_number_and_length() -> None:
    many = " ".join(f"t{n}" for n in range(MAX_TAGS + 5))
    tags, ignored = parse_tags([many, "t1, x", "y" * 129, "ünicode"])
    assert len(tags) == MAX_TAGS and tags[:2] == ("t0", "t1")
    assert ignored == {"too-many": 6, "too-long": 1, "invalid": 1}


def _entry(tags: tuple[str, ...]) -> CacheEntry:
    return CacheEntry(
        url="/x",
        status=200,
        headers=[],
        body=b"x",
        born=0.0,
        stored_at=0.0,
        fresh_until=100.0,
        stale_while_revalidate_until=100.0,
        stale_if_error_until=100.0,
        expires_at=100.0,
        tags=tags,
    )


async def test_memory_store_tag_index_follows_delete_expiry_and_eviction() -> None:
    now = {"t": 0.0}
    store = MemoryStore(max_bytes=10_000, max_entry_bytes=10_000, clock=lambda: now["t"])
    store.put_nowait("/a", _entry(("t", "u")), 10)
    store.put_nowait("/b", _entry(("t",)), 100)
    store.put_nowait("/c", _entry(("t",)), 100)
    assert sorted([k async for k in store.tagged("t")]) == ["/a", "/b", "/c"]
    await store.delete("/c")
    now["t"] = 20.0  # /a expired
    assert [k async for k in store.tagged("t")] == ["/b"]
    store.purge_expired()
    assert [k async for k in store.tagged("u")] == []
    store.put_nowait("/b", _entry(()), 100)  # overwritten untagged
    assert [k async for k in store.tagged("t")] == []
    small = MemoryStore(max_bytes=400, max_entry_bytes=400, clock=lambda: now["t"])
    small.put_nowait("/old", _entry(("t",)), 100)
    small.put_nowait("/new", _entry(("t",)), 100)  # evicts /old
    assert [k async for k in small.tagged("t")] == ["/new"]


async def test_redis_tag_sets_outlive_their_entries_and_are_not_scanned(
    redis_url: str, redis_prefix: str
) -> None:
    store = RedisStore(redis_url, prefix=redis_prefix, max_entry_bytes=10_000)
    raw = aioredis.from_url(redis_url)
    try:
        await store.put("/long", _entry(("t",)), 100)
        await store.put("/short", _entry(("t",)), 10)
        tag_ttl = await raw.pttl(f"{redis_prefix}tag:t")
        assert 99_000 < tag_ttl <= 100_000
        assert sorted([k async for k in store.tagged("t")]) == ["/long", "/short"]
        assert sorted([k async for k in store.scan("*")]) == ["/long", "/short"]
        assert await store.delete_many(["/long", "/short", "/never"]) == 2
        await store.untag("t", ["/long", "/short"])
        assert [k async for k in store.tagged("t")] == []
    finally:
        await raw.aclose()
        await store.close()


async def test_purge_by_path_reaches_every_host_with_keys_per_host(
    origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    origin.set("/h", headers=CACHEABLE, body=b"h")
    origin.set("/h2", headers=CACHEABLE, body=b"h2")
    proxy = await make_proxy(origin.url, proxy={"host_keying": "per-host"})
    hosts = ("shop.example", "blog.example")
    for host in hosts:
        for path in ("/h", "/h2"):
            await get(client, proxy, path, {**IDENTITY, "Host": host})
    assert origin.count("/h") == 2

    status, body = await purge(client, proxy, {"path": "/h"})
    assert (status, body["purged"]) == (200, 2), body
    for host in hosts:
        headers = {**IDENTITY, "Host": host}
        assert not is_hit((await get(client, proxy, "/h", headers))[1]), host
        assert is_hit((await get(client, proxy, "/h2", headers))[1]), host


async def test_the_tag_header_is_not_relayed_for_responses_never_stored(
    origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    origin.set("/private", headers={"Cache-Control": "private", "Surrogate-Key": "user-7"})
    proxy = await make_proxy(origin.url)
    async with client.get(url(proxy, "/private")) as response:
        assert await response.read() == b"hello"
        assert "Surrogate-Key" not in response.headers
        assert "Cache-Control" in response.headers


async def test_an_entry_revalidated_by_a_304_keeps_its_tags(
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
    cache_section: dict[str, Any],
) -> None:
    async def handler(request: web.Request) -> web.Response:
        headers = {**CACHEABLE, "ETag": '"e1"'}
        if request.headers.get("If-None-Match") == '"e1"':
            return web.Response(status=304, headers=headers)  # without the tag header
        return web.Response(body=b"e1", headers={**headers, "Surrogate-Key": "k"})

    origin.handle("/v", handler)
    proxy = await make_proxy(origin.url, cache=cache_section)
    await get(client, proxy, "/v")
    assert (await purge(client, proxy, {"tag": "k", "soft": True}))[1]["purged"] == 1
    await get(client, proxy, "/v")  # stale, and revalidated in the background

    async def revalidated() -> bool:
        return is_hit((await get(client, proxy, "/v"))[1])

    await eventually(revalidated)
    assert origin.count("/v") == 2
    assert (await purge(client, proxy, {"tag": "k"}))[1]["purged"] == 1
    assert not is_hit((await get(client, proxy, "/v"))[1])


async def test_a_purge_larger_than_a_batch_reaches_every_entry(
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
    cache_section: dict[str, Any],
) -> None:
    paths = [f"/many/{n}" for n in range(600)]
    for path in paths:
        origin.set(path, headers={**CACHEABLE, "Surrogate-Key": "many"}, body=path.encode())
    proxy = await make_proxy(origin.url, cache=cache_section)
    for path in paths:
        await get(client, proxy, path)
    assert (await purge(client, proxy, {"tag": "many", "soft": True}))[1]["purged"] == 600
    assert (await purge(client, proxy, {"pattern": "/many/*"}))[1]["purged"] == 600
    assert (await purge(client, proxy, {"tag": "many"}))[1]["purged"] == 0
    assert not is_hit((await get(client, proxy, paths[-1]))[1])
