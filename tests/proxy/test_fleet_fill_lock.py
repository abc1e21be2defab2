"""One origin fetch per key across replicas sharing one Redis (the fleet's fill lock).

Several real proxies on loopback ports share one Redis prefix in front of one
origin that counts its requests; clients send concurrent misses to all of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from proxy.app import Warmproxy
from proxy.fill_lock import FillLock
from proxy.metrics import ProxyMetrics
from proxy.store.redis import FILL_LOCK_NAMESPACE
from tests.proxy.conftest import Origin, ProxyFactory, eventually, key, url
from tests.redis_server import RedisServer

# Clients of one public host behind a load balancer: every replica keys alike.
PUBLIC = {"public_host": "shop.example"}
SLOW = 0.2  # seconds the origin takes: concurrent misses overlap its fetch


@pytest.fixture
async def many() -> AsyncIterator[aiohttp.ClientSession]:
    """A client without a connection limit: hundreds of requests at once."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        yield session


def redis_cache(redis_url: str, prefix: str, **more: Any) -> dict[str, Any]:
    return {"store": "redis", "redis_url": redis_url, "redis_prefix": prefix, **more}


async def replicas(
    make_proxy: ProxyFactory, origin: Origin, count: int, cache: dict[str, Any]
) -> list[Warmproxy]:
    return [await make_proxy(origin.url, cache=cache, proxy=PUBLIC) for _ in range(count)]


async def get(
    session: aiohttp.ClientSession, proxy: Warmproxy, path: str
) -> tuple[int, bytes, str]:
    async with session.get(url(proxy, path)) as response:
        return response.status, await response.read(), response.headers["Cache-Status"]


async def burst(
    session: aiohttp.ClientSession, proxies: list[Warmproxy], path: str, per_proxy: int
) -> list[tuple[int, bytes, str]]:
    """``per_proxy`` concurrent GETs of ``path`` on every proxy, all at once."""
    return await asyncio.gather(*(get(session, p, path) for _ in range(per_proxy) for p in proxies))


def sample(proxy: Warmproxy, name: str, **labels: str) -> float:
    return proxy.metrics.registry.get_sample_value(name, labels) or 0.0


def waits(proxies: list[Warmproxy], result: str) -> float:
    return sum(sample(p, "warmproxy_fill_lock_waits_total", result=result) for p in proxies)


async def test_three_replicas_fetch_one_key_once_for_300_concurrent_misses(
    redis_url: str,
    redis_prefix: str,
    origin: Origin,
    make_proxy: ProxyFactory,
    many: aiohttp.ClientSession,
) -> None:
    origin.set("/hot", headers={"Cache-Control": "max-age=60"}, body=b"hot", delay=SLOW)
    proxies = await replicas(make_proxy, origin, 3, redis_cache(redis_url, redis_prefix))

    answers = await burst(many, proxies, "/hot", 100)

    assert origin.count("/hot") == 1
    assert {(status, body) for status, body, _ in answers} == {(200, b"hot")}
    # The two replicas that lost the lock answered from the winner's entry.
    assert waits(proxies, "collapsed") == 2
    assert sum(sample(p, "warmproxy_fill_lock_claims_total") for p in proxies) == 1
    collapsed = [status for _, _, status in answers if "collapsed" in status]
    assert len(collapsed) >= 2 * 100
    # The lock is gone once the entry is stored.
    r = aioredis.from_url(redis_url)
    try:
        assert await r.exists(redis_prefix + FILL_LOCK_NAMESPACE + key(proxies[0], "/hot")) == 0
    finally:
        await r.aclose()


async def test_an_unstorable_response_is_fetched_by_each_replica_without_waiting_for_expiry(
    redis_url: str,
    redis_prefix: str,
    origin: Origin,
    make_proxy: ProxyFactory,
    many: aiohttp.ClientSession,
) -> None:
    origin.set("/mine", headers={"Cache-Control": "no-store"}, body=b"mine", delay=SLOW)
    # A lock (and a wait) of 15 s: the waiters must not sit that out.
    cache = redis_cache(redis_url, redis_prefix)
    proxies = await replicas(make_proxy, origin, 3, cache)

    answers = await burst(many, proxies, "/mine", 1)

    assert [(status, body) for status, body, _ in answers] == [(200, b"mine")] * 3
    assert origin.count("/mine") == 3
    # The losers saw the holder release without an entry and fetched at once.
    assert waits(proxies, "released") == 2
    assert waits(proxies, "timeout") == 0


async def test_a_waiter_whose_variant_was_not_stored_fetches_its_own(
    redis_url: str,
    redis_prefix: str,
    origin: Origin,
    make_proxy: ProxyFactory,
    many: aiohttp.ClientSession,
) -> None:
    async def by_language(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(SLOW)
        language = request.headers.get("Accept-Language", "none")
        return web.Response(
            body=language.encode(),
            headers={"Cache-Control": "max-age=60", "Vary": "Accept-Language"},
        )

    origin.handle("/page", by_language)
    english, french = await replicas(make_proxy, origin, 2, redis_cache(redis_url, redis_prefix))

    async def page(proxy: Warmproxy, language: str) -> bytes:
        headers = {"Accept-Language": language}
        async with many.get(url(proxy, "/page"), headers=headers) as response:
            assert response.status == 200
            return await response.read()

    # One waits for the other's fetch, which is stored for the other language.
    answers = await asyncio.gather(page(english, "en"), page(french, "fr"))

    assert answers == [b"en", b"fr"]
    assert origin.count("/page") == 2
    assert waits([english, french], "released") == 1


async def test_replicas_fetch_after_a_dead_holders_lock_expires(
    redis_url: str,
    redis_prefix: str,
    origin: Origin,
    make_proxy: ProxyFactory,
    many: aiohttp.ClientSession,
) -> None:
    origin.set("/orphan", headers={"Cache-Control": "max-age=60"}, body=b"ok", delay=SLOW)
    proxies = await replicas(make_proxy, origin, 3, redis_cache(redis_url, redis_prefix))
    r = aioredis.from_url(redis_url)
    lock = redis_prefix + FILL_LOCK_NAMESPACE + key(proxies[0], "/orphan")
    try:
        # A replica took the lock and died before filling.
        await r.set(lock, "a-replica-that-died", px=1000)
        requests = asyncio.ensure_future(burst(many, proxies, "/orphan", 5))
        await asyncio.sleep(0.3)
        # Held: everyone waits, nobody asks the origin.
        assert not requests.done() and origin.count("/orphan") == 0
        answers = await requests
        assert await r.exists(lock) == 0
    finally:
        await r.aclose()
    assert [(status, body) for status, body, _ in answers] == [(200, b"ok")] * 15
    # Expired with nothing stored: each replica fetched for itself (together,
    # so none found another's entry first).
    assert waits(proxies, "timeout") == 3
    assert origin.count("/orphan") == 3


async def test_a_stale_while_revalidate_entry_is_served_at_once_and_refreshed_once(
    redis_url: str,
    redis_prefix: str,
    origin: Origin,
    make_proxy: ProxyFactory,
    many: aiohttp.ClientSession,
) -> None:
    origin.set(
        "/swr", headers={"Cache-Control": "max-age=1, stale-while-revalidate=60"}, delay=SLOW
    )
    proxies = await replicas(make_proxy, origin, 3, redis_cache(redis_url, redis_prefix))
    await get(many, proxies[0], "/swr")

    async def stale_everywhere() -> bool:
        answers = await burst(many, proxies, "/swr", 1)
        return all("stale-while-revalidate" in status for _, _, status in answers)

    # The stale entry answers every replica at once, none waits for the origin.
    await eventually(stale_everywhere, within=5)
    # The background refreshes of the three replicas fetch once between them.
    await eventually(lambda: origin.count("/swr") >= 2, within=5)
    await eventually(lambda: waits(proxies, "collapsed") + waits(proxies, "released") >= 2)
    assert origin.count("/swr") == 2
    status, _, cache_status = await get(many, proxies[2], "/swr")
    assert status == 200 and "hit" in cache_status and "stale" not in cache_status


async def test_warm_fetches_take_the_same_lock(
    redis_url: str, redis_prefix: str, origin: Origin, make_proxy: ProxyFactory
) -> None:
    origin.set("/warm", headers={"Cache-Control": "max-age=60"}, body=b"warm", delay=SLOW)
    proxies = await replicas(make_proxy, origin, 3, redis_cache(redis_url, redis_prefix))

    results = await asyncio.gather(*(p.filler.fill("/warm") for p in proxies))

    assert origin.count("/warm") == 1
    assert sorted((r.stored, r.already_fresh) for r in results) == [
        (False, True),
        (False, True),
        (True, False),
    ]
    assert all(r.entry is not None and r.entry.body == b"warm" for r in results)


async def test_the_lock_can_be_turned_off(
    redis_url: str,
    redis_prefix: str,
    origin: Origin,
    make_proxy: ProxyFactory,
    many: aiohttp.ClientSession,
) -> None:
    origin.set("/alone", headers={"Cache-Control": "max-age=60"}, delay=SLOW)
    cache = redis_cache(redis_url, redis_prefix, fleet_fill_lock=False)
    proxies = await replicas(make_proxy, origin, 2, cache)

    await burst(many, proxies, "/alone", 10)

    # Coalesced within each process, not across them.
    assert origin.count("/alone") == 2
    assert all(sample(p, "warmproxy_fill_lock_up") == 0 for p in proxies)


async def test_with_redis_down_every_request_is_answered_and_the_lock_comes_back(
    origin: Origin,
    make_proxy: ProxyFactory,
    many: aiohttp.ClientSession,
    throwaway_redis: RedisServer,
) -> None:
    origin.set("/down", headers={"Cache-Control": "max-age=60"}, body=b"up", delay=SLOW)
    origin.set("/back", headers={"Cache-Control": "max-age=60"}, body=b"back", delay=SLOW)
    cache = redis_cache(throwaway_redis.url, "wptest:down:", l1_max_bytes=0)
    proxies = await replicas(make_proxy, origin, 3, cache)
    assert all(sample(p, "warmproxy_fill_lock_up") == 1 for p in proxies)

    throwaway_redis.stop()
    answers = await burst(many, proxies, "/down", 20)
    assert [(status, body) for status, body, _ in answers] == [(200, b"up")] * 60
    assert all(sample(p, "warmproxy_fill_lock_up") == 0 for p in proxies)
    # Each replica fetched for itself (at least once: nothing coordinates them).
    assert origin.count("/down") >= 3

    throwaway_redis.start()
    await eventually(
        lambda: all(sample(p, "warmproxy_fill_lock_up") == 1 for p in proxies), within=10
    )
    answers = await burst(many, proxies, "/back", 20)
    assert [(status, body) for status, body, _ in answers] == [(200, b"back")] * 60
    assert origin.count("/back") == 1


async def test_a_release_leaves_a_lock_another_replica_took_after_expiry(
    redis_url: str, redis_prefix: str
) -> None:
    client = aioredis.from_url(redis_url)
    lock = FillLock(client, prefix=redis_prefix, seconds=5.0, metrics=ProxyMetrics())
    try:
        mine = await lock.claim("/k")
        assert mine is not None and mine.won
        other = await lock.claim("/k")  # a second claim loses...
        assert other is not None and not other.won and other.holder == mine.token
        # ...until the lock expired and another replica took it.
        await client.set(mine.lock_key, "another-replica", px=5000)
        await lock.release(mine)
        assert await client.get(mine.lock_key) == b"another-replica"
        await client.set(mine.lock_key, mine.token, px=5000)
        await lock.release(mine)
        assert await client.exists(mine.lock_key) == 0
    finally:
        await client.aclose()
