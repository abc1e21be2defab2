"""The proxy with its cache in real Redis: hits, sharing, and surviving Redis outages."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from tests.proxy.conftest import control_url, key, url


async def fetch(client, proxy, path: str) -> tuple[int, bytes, str]:
    async with client.get(url(proxy, path)) as response:
        return response.status, await response.read(), response.headers["Cache-Status"]


async def test_entries_live_in_redis_under_the_prefix_with_a_ttl(
    redis_url, redis_prefix, origin, make_proxy, client
) -> None:
    proxy = await make_proxy(
        origin.url,
        cache={"store": "redis", "redis_url": redis_url, "redis_prefix": redis_prefix},
    )
    origin.set("/r1", headers={"Cache-Control": "max-age=60, stale-while-revalidate=30"})
    await fetch(client, proxy, "/r1")
    status, body, cache_status = await fetch(client, proxy, "/r1")
    assert (status, body) == (200, b"hello") and "hit" in cache_status
    assert origin.count("/r1") == 1
    r = aioredis.from_url(redis_url)
    try:
        ttl = await r.pttl(redis_prefix + key(proxy, "/r1"))
        assert 85_000 < ttl <= 90_000  # fresh 60 s + stale-while-revalidate 30 s
    finally:
        await r.aclose()


async def test_two_proxies_share_one_redis_cache(
    redis_url, redis_prefix, origin, make_proxy, client
) -> None:
    cache = {"store": "redis", "redis_url": redis_url, "redis_prefix": redis_prefix}
    # Replicas behind one load balancer: clients ask for one public host.
    public = {"public_host": "shop.example"}
    first = await make_proxy(origin.url, cache=cache, proxy=public)
    second = await make_proxy(origin.url, cache=cache, proxy=public)
    origin.set("/shared", headers={"Cache-Control": "max-age=60"})
    await fetch(client, first, "/shared")
    _, _, cache_status = await fetch(client, second, "/shared")
    assert "hit" in cache_status
    assert origin.count("/shared") == 1


async def test_invalidation_reaches_redis(
    redis_url, redis_prefix, origin, make_proxy, client
) -> None:
    cache = {"store": "redis", "redis_url": redis_url, "redis_prefix": redis_prefix, "l1_ttl": 0}
    public = {"public_host": "shop.example"}
    first = await make_proxy(origin.url, cache=cache, proxy=public)
    second = await make_proxy(origin.url, cache=cache, proxy=public)
    origin.set("/inv", headers={"Cache-Control": "max-age=60"})
    await fetch(client, first, "/inv")
    async with client.post(url(second, "/inv")) as response:
        assert response.status == 200
    await fetch(client, first, "/inv")
    assert origin.count("/inv", method="GET") == 2


async def test_redis_down_passes_through_reports_not_ready_and_recovers(
    origin, make_proxy, client, throwaway_redis
) -> None:
    proxy = await make_proxy(
        origin.url,
        cache={
            "store": "redis",
            "redis_url": throwaway_redis.url,
            "l1_max_bytes": 0,
            # Not ready while Redis is down (the default stays ready).
            "ready_without_store": False,
        },
    )
    origin.set("/d", headers={"Cache-Control": "max-age=60"})
    await fetch(client, proxy, "/d")
    assert "hit" in (await fetch(client, proxy, "/d"))[2]

    throwaway_redis.stop()
    # Requests keep being answered, from the origin.
    for _ in range(3):
        status, body, _ = await fetch(client, proxy, "/d")
        assert (status, body) == (200, b"hello")
    assert origin.count("/d") >= 2

    async def readiness() -> int:
        async with client.get(control_url(proxy, "/readyz")) as response:
            return response.status

    assert await readiness() == 503
    async with client.get(control_url(proxy, "/metrics")) as response:
        text = await response.text()
    assert "warmproxy_store_up 0.0" in text
    assert 'warmproxy_store_errors_total{operation="get"}' in text

    throwaway_redis.start()
    statuses: list[int] = []

    async def poll_ready() -> None:
        while True:
            statuses.append(await readiness())
            if statuses[-1] == 200:
                return
            await asyncio.sleep(0.1)

    await asyncio.wait_for(poll_ready(), timeout=10)
    # Caching works again without a restart: one fill, then hits.
    before = origin.count("/d")
    await fetch(client, proxy, "/d")
    _, _, cache_status = await fetch(client, proxy, "/d")
    assert "hit" in cache_status
    assert origin.count("/d") == before + 1


async def test_proxy_starts_with_redis_unreachable(origin, make_proxy, client) -> None:
    proxy = await make_proxy(
        origin.url,
        cache={
            "store": "redis",
            "redis_url": "redis://127.0.0.1:9/0",
            "ready_without_store": False,
        },
    )
    origin.set("/up", headers={"Cache-Control": "max-age=60"})
    status, body, _ = await fetch(client, proxy, "/up")
    assert (status, body) == (200, b"hello")
    async with client.get(control_url(proxy, "/readyz")) as response:
        assert response.status == 503


async def test_redis_store_is_counted_in_the_background(
    redis_url, redis_prefix, origin, make_proxy, client
) -> None:
    proxy = await make_proxy(
        origin.url,
        cache={
            "store": "redis",
            "redis_url": redis_url,
            "redis_prefix": redis_prefix,
            "redis_stats_interval": 0.1,
        },
    )
    origin.set("/counted", headers={"Cache-Control": "max-age=60"})
    await fetch(client, proxy, "/counted")

    async def entries() -> str:
        async with client.get(control_url(proxy, "/metrics")) as response:
            text = await response.text()
        return next(
            (ln for ln in text.splitlines() if ln.startswith("warmproxy_store_entries")), ""
        )

    deadline = asyncio.get_running_loop().time() + 5
    while await entries() != "warmproxy_store_entries 1.0":
        assert asyncio.get_running_loop().time() < deadline, await entries()
        await asyncio.sleep(0.05)
