"""The fleet on one Redis: invalidations and purges reach every replica's L1 at
once, the subscriber survives a Redis restart, readiness survives a Redis
outage, and /status lists the live replicas.

Several real proxies (in-process apps on loopback ports) share one Redis
prefix in front of one real origin that counts requests.  L1 entries live 30
seconds here, so a replica answering a miss within a few seconds of another's
purge was told, not timed out (the bound is loose for loaded CI machines; on
an idle one it is well under a second).
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis

from proxy import fleet
from proxy.app import Warmproxy
from proxy.config import ConfigError, load_settings
from proxy.fleet import MAX_MESSAGE_BYTES, L1Drop, apply_drop, decode_drop, encode_drops
from proxy.store.memory import MemoryStore
from tests.proxy.conftest import Origin, ProxyFactory, control_url, eventually, key, url
from tests.redis_server import RedisServer

CACHEABLE = {"Cache-Control": "public, max-age=300"}
L1_TTL = 30.0
# Well under L1_TTL: the other replicas drop their copies when told, not on
# expiry.  Loose for a loaded machine: a timing bound is not what is tested.
PROPAGATION_BOUND = 5.0
# Replicas behind one load balancer: clients ask for one public host.
PUBLIC = {"public_host": "shop.example"}
#: A body large enough that reading it whole shows in Redis's traffic.
BIG = bytes(range(256)) * 1024


def cache_section(redis_url: str, prefix: str, name: str, **more: Any) -> dict[str, Any]:
    return {
        "store": "redis",
        "redis_url": redis_url,
        "redis_prefix": prefix,
        "l1_ttl": L1_TTL,
        "replica_name": name,
        **more,
    }


async def replicas(
    make_proxy: ProxyFactory, origin: Origin, redis_url: str, prefix: str, *names: str
) -> list[Warmproxy]:
    return [
        await make_proxy(origin.url, cache=cache_section(redis_url, prefix, n), proxy=PUBLIC)
        for n in names
    ]


async def get(client: aiohttp.ClientSession, proxy: Warmproxy, path: str) -> tuple[bytes, str]:
    async with client.get(url(proxy, path)) as response:
        assert response.status == 200, path
        return await response.read(), response.headers["Cache-Status"]


def is_fresh_hit(cache_status: str) -> bool:
    return cache_status.startswith("warmproxy; hit") and "stale" not in cache_status


async def held_in_l1(client: aiohttp.ClientSession, proxy: Warmproxy, path: str) -> None:
    """Ask ``proxy`` for ``path`` until it answers a hit from its L1."""
    await get(client, proxy, path)
    _, cache_status = await get(client, proxy, path)
    assert is_fresh_hit(cache_status)
    assert proxy.cache.peek(key(proxy, path)) is not None, "not in the replica's L1"


async def answers_miss_soon(
    client: aiohttp.ClientSession, proxy: Warmproxy, path: str, origin: Origin
) -> None:
    """``proxy`` stops answering ``path`` from its L1 within PROPAGATION_BOUND:
    its next answer is not a fresh hit and went to the origin."""
    before = origin.count(path)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PROPAGATION_BOUND
    while True:
        _, cache_status = await get(client, proxy, path)
        if not is_fresh_hit(cache_status):
            break
        assert loop.time() < deadline, f"{path}: still a hit from L1 ({cache_status})"
        await asyncio.sleep(0.01)
    await eventually(lambda: origin.count(path) == before + 1, within=PROPAGATION_BOUND)


async def purge(client: aiohttp.ClientSession, proxy: Warmproxy, body: Any) -> Any:
    async with client.post(control_url(proxy, "/cache/warming/purge"), json=body) as response:
        assert response.status == 200, await response.text()
        return await response.json()


def messages(proxy: Warmproxy, direction: str) -> float:
    value = proxy.metrics.registry.get_sample_value(
        "warmproxy_fleet_messages_total", {"direction": direction}
    )
    return value or 0.0


def sample(proxy: Warmproxy, name: str) -> float:
    return proxy.metrics.registry.get_sample_value(name) or 0.0


@pytest.mark.parametrize(
    ("selector", "soft"),
    [
        ({"path": "/p/1"}, False),
        ({"pattern": "/p/*"}, False),
        ({"tag": "products"}, False),
        ({"path": "/p/1"}, True),
    ],
)
async def test_a_purge_on_one_replica_empties_every_l1(
    selector: dict[str, str],
    soft: bool,
    redis_url: str,
    redis_prefix: str,
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
) -> None:
    a, b, c = await replicas(make_proxy, origin, redis_url, redis_prefix, "a", "b", "c")
    origin.set("/p/1", headers={**CACHEABLE, "Surrogate-Key": "products"})
    await get(client, a, "/p/1")
    for replica in (b, c):
        await held_in_l1(client, replica, "/p/1")
    assert origin.count("/p/1") == 1

    body = await purge(client, a, {**selector, "soft": soft})
    assert body["purged"] == 1

    # Hard: a miss; soft: the staled copy, refreshed in the background.
    # Either way not the L1 copy, and the origin is asked again.
    await answers_miss_soon(client, b, "/p/1", origin)
    await eventually(lambda: c.cache.peek(key(c, "/p/1")) is None, within=PROPAGATION_BOUND)
    # The replica that purged ignores its own message (it dropped already).
    assert messages(a, "published") >= 1
    assert messages(a, "received") == 0
    assert messages(b, "received") >= 1


async def test_an_unsafe_method_on_one_replica_empties_the_others_l1(
    redis_url: str,
    redis_prefix: str,
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
) -> None:
    a, b = await replicas(make_proxy, origin, redis_url, redis_prefix, "a", "b")
    origin.set("/cart", headers=CACHEABLE)
    await held_in_l1(client, b, "/cart")
    assert origin.count("/cart", method="GET") == 1

    # RFC 9111 §4.4: a non-error answer to an unsafe method invalidates the URI.
    async with client.post(url(a, "/cart"), data=b"add") as response:
        assert response.status == 200

    await answers_miss_soon(client, b, "/cart", origin)
    assert origin.count("/cart", method="GET") == 2


async def test_a_huge_purge_publishes_its_glob_in_bounded_messages(
    redis_url: str,
    redis_prefix: str,
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Three keys stand for "many" (BULK_KEYS): the rest goes as the glob.
    monkeypatch.setattr(fleet, "BULK_KEYS", 3)
    a, b = await replicas(make_proxy, origin, redis_url, redis_prefix, "a", "b")
    paths = [f"/many/{i}" for i in range(12)]
    for path in paths:
        origin.set(path, headers=CACHEABLE)
        await held_in_l1(client, b, path)

    listener = aioredis.from_url(redis_url)
    pubsub = listener.pubsub(ignore_subscribe_messages=True)
    try:
        await pubsub.subscribe(f"{redis_prefix}fleet:l1")
        assert (await purge(client, a, {"pattern": "/many/*"}))["purged"] == len(paths)
        seen: list[dict[str, Any]] = []

        async def pattern_seen() -> bool:
            message = await pubsub.get_message(timeout=0.05)
            if message is not None:
                assert len(message["data"]) <= MAX_MESSAGE_BYTES
                seen.append(orjson.loads(message["data"]))
            return any(m.get("pattern") == "/many/*" for m in seen)

        await eventually(pattern_seen, within=PROPAGATION_BOUND)
    finally:
        await pubsub.aclose()
        await listener.aclose()
    published_keys = sum(len(m.get("keys", ())) for m in seen)
    assert published_keys <= 3

    def all_dropped() -> bool:
        return all(b.cache.peek(key(b, path)) is None for path in paths)

    await eventually(all_dropped, within=PROPAGATION_BOUND)


async def test_the_subscriber_survives_a_redis_restart_and_flushes_its_l1(
    throwaway_redis: RedisServer,
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
) -> None:
    prefix = "wp-restart:"
    a, b = await replicas(make_proxy, origin, throwaway_redis.url, prefix, "a", "b")
    origin.set("/r", headers=CACHEABLE)
    await held_in_l1(client, b, "/r")
    assert sample(b, "warmproxy_fleet_subscribed") == 1

    throwaway_redis.stop()
    await eventually(lambda: sample(b, "warmproxy_fleet_subscribed") == 0, within=5)
    # Requests are still answered meanwhile.
    assert (await get(client, a, "/r"))[0] == b"hello"

    throwaway_redis.start()
    await eventually(lambda: sample(b, "warmproxy_fleet_subscribed") == 1, within=10)
    # It may have missed invalidations while away: its whole L1 went.
    assert sample(b, "warmproxy_fleet_flushes_total") >= 1
    assert b.cache.peek(key(b, "/r")) is None

    # And it follows the others again.
    await eventually(lambda: a.cache.healthy and b.cache.healthy, within=10)
    await held_in_l1(client, b, "/r")
    await purge(client, a, {"path": "/r"})
    await answers_miss_soon(client, b, "/r", origin)


@pytest.mark.parametrize("ready_without_store", [True, False])
async def test_readiness_with_redis_down_follows_ready_without_store(
    ready_without_store: bool,
    throwaway_redis: RedisServer,
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
) -> None:
    proxy = await make_proxy(
        origin.url,
        cache=cache_section(
            throwaway_redis.url, "wp-ready:", "a", ready_without_store=ready_without_store
        ),
    )
    origin.set("/x", headers=CACHEABLE)
    throwaway_redis.stop()
    # Served from the origin, whatever readiness says.
    for _ in range(3):
        assert (await get(client, proxy, "/x"))[0] == b"hello"
    await eventually(lambda: not proxy.cache.healthy, within=10)

    async with client.get(control_url(proxy, "/readyz")) as response:
        status, body = response.status, await response.json()
    assert body["store_healthy"] is False
    assert status == (200 if ready_without_store else 503)
    assert sample(proxy, "warmproxy_store_up") == 0
    # /status answers with this replica alone while Redis is away.
    async with client.get(control_url(proxy, "/cache/warming/status")) as response:
        assert response.status == 200
        listed = (await response.json())["replicas"]
    assert [(r["id"], r["this_replica"]) for r in listed] == [("a", True)]


async def test_status_lists_the_live_replicas_itself_marked(
    redis_url: str,
    redis_prefix: str,
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
) -> None:
    a, b = await replicas(make_proxy, origin, redis_url, redis_prefix, "alpha", "beta")

    async def listed(proxy: Warmproxy) -> list[dict[str, Any]]:
        async with client.get(control_url(proxy, "/cache/warming/status")) as response:
            assert response.status == 200
            replicas: list[dict[str, Any]] = (await response.json())["replicas"]
            return replicas

    on_a = await listed(a)
    assert [(r["id"], r["this_replica"]) for r in on_a] == [("alpha", True), ("beta", False)]
    assert on_a[0]["instance"] != on_a[1]["instance"]
    assert all(r["version"] and r["started_at"].endswith("Z") for r in on_a)
    # Each lists itself first.
    assert [(r["id"], r["this_replica"]) for r in await listed(b)] == [
        ("beta", True),
        ("alpha", False),
    ]
    # A replica that stops takes itself off the list.
    await b.stop()
    assert [r["id"] for r in await listed(a)] == ["alpha"]


async def test_with_the_memory_store_a_proxy_lists_itself_alone(
    origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(origin.url, cache={"replica_name": "solo"})
    async with client.get(control_url(proxy, "/cache/warming/status")) as response:
        listed = (await response.json())["replicas"]
    assert [(r["id"], r["this_replica"]) for r in listed] == [("solo", True)]
    assert proxy.fleet.publisher is None and proxy.fleet.follower is None


def test_a_replica_name_that_cannot_be_a_key_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"cache\.replica_name"):
        load_settings(None, {"cache": {"replica_name": "pod 1/evil"}})


def test_keys_are_published_in_bounded_messages() -> None:
    keys = tuple(f"/very/long/path/{i}/" + "x" * 500 for i in range(2000))
    encoded = encode_drops("me", L1Drop(keys=keys))
    assert len(encoded) > 1
    assert all(len(m) <= MAX_MESSAGE_BYTES for m in encoded)
    decoded = [decode_drop(m) for m in encoded]
    assert all(d is not None and d[0] == "me" for d in decoded)
    assert tuple(k for d in decoded if d is not None for k in d[1].keys) == keys
    assert decode_drop(b"not json") is None
    assert decode_drop(b'{"from": "x", "keys": [1]}') is None


def test_a_glob_drop_takes_every_variant_of_matching_paths() -> None:
    from proxy.entry import VaryIndex

    l1 = MemoryStore(max_bytes=1 << 20, max_entry_bytes=1 << 16)
    for k in ("/a/1", "/a/1#vabc", "//host/a/2", "/b/1"):
        l1.put_nowait(k, VaryIndex(names=("accept",), generation="g", expires_at=1e12), 60)
    assert apply_drop(l1, L1Drop(pattern="/a/*")) == 3
    assert [k for k in ("/a/1", "/a/1#vabc", "//host/a/2", "/b/1") if l1.get_nowait(k)] == ["/b/1"]
    assert apply_drop(l1, L1Drop(flush=True)) == 1


async def test_a_warmers_touch_reaches_redis_past_the_in_process_tier(
    make_proxy: ProxyFactory,
    origin: Origin,
    client: aiohttp.ClientSession,
    redis_url: str,
    redis_prefix: str,
) -> None:
    """Under an LRU ``maxmemory-policy`` Redis evicts by each key's idle
    time; a touch that the in-process tier answered would leave Redis
    thinking the entry unused.  The warmer's touch reads Redis itself."""
    origin.set("/a", headers={"Cache-Control": "max-age=60"}, body=BIG)
    # An in-process tier that holds entries for longer than the wait below.
    proxy = await make_proxy(
        origin.url, cache=cache_section(redis_url, redis_prefix, "a", l1_ttl=30), proxy=PUBLIC
    )
    await get(client, proxy, "/a")
    await get(client, proxy, "/a")  # a hit read from Redis, now in the in-process tier too
    assert proxy.cache.peek(key(proxy, "/a")) is not None
    redis = aioredis.from_url(redis_url)
    try:
        keys = [k async for k in redis.scan_iter(match=f"{redis_prefix}*") if b"/a" in k]
        assert keys
        await asyncio.sleep(2.2)
        assert min([await redis.object("idletime", k) for k in keys]) >= 2
        fetched = origin.count("/a")
        sent_before = (await redis.info("stats"))["total_net_output_bytes"]
        touched = await proxy.filler.touch("/a")
        sent = (await redis.info("stats"))["total_net_output_bytes"] - sent_before
        assert touched is not None
        # Read from Redis (its idle time reset), nothing fetched.
        assert max([await redis.object("idletime", k) for k in keys]) == 0
        assert origin.count("/a") == fetched
        # Only the entry's head came over, not its body.
        assert sent < len(BIG) // 4, sent
        # What clients get is still the whole entry, from the in-process tier
        # and, once it is dropped there, from Redis.
        body, _ = await get(client, proxy, "/a")
        assert body == BIG
        local = proxy.cache._local
        assert local is not None
        apply_drop(local, L1Drop(flush=True))
        body, status = await get(client, proxy, "/a")
        assert body == BIG and "hit" in status
    finally:
        await redis.aclose()
