"""The fleet's /cache/warming/stats: every replica's figures in Redis, summed on
read, with a breakdown per replica; a stopped replica's figures stay until
their hash expires; a Redis outage leaves each replica its own figures.

Real proxies (in-process apps on loopback ports) share one Redis prefix in
front of one real origin that counts requests.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis

from proxy.app import Warmproxy
from proxy.fleet_stats import (
    MAX_FIELD_BYTES,
    STATS_TTL,
    WRITE_INTERVAL,
    ReplicaFigures,
    decode,
    encode,
    sum_warming,
)
from tests.proxy.conftest import Origin, ProxyFactory, eventually, url, warming_call
from tests.redis_server import RedisServer
from warmer.ledger import EffectivenessLedger, LedgerCounters

CACHEABLE = {"Cache-Control": "public, max-age=300"}
# Replicas behind one load balancer: clients ask for one public host.
PUBLIC = {"public_host": "shop.example"}
# A warm fetch answered 500 is not retried: one origin fetch, nothing stored.
EXECUTION = {"rate_limit": 0, "retry_attempts": 0}
# No warming of their own: only what each test asks for is warmed.
STRATEGIES = {"reactive": {"refresh_ahead": False, "auto_warm": False}}


async def replica(
    make_proxy: ProxyFactory, origin: Origin, redis_url: str, prefix: str, name: str
) -> Warmproxy:
    return await make_proxy(
        origin.url,
        cache={
            "store": "redis",
            "redis_url": redis_url,
            "redis_prefix": prefix,
            "replica_name": name,
        },
        proxy=PUBLIC,
        execution=EXECUTION,
        strategies=STRATEGIES,
    )


async def stats(client: aiohttp.ClientSession, proxy: Warmproxy) -> Any:
    return await warming_call(client, proxy, "GET", "stats")


async def warm(client: aiohttp.ClientSession, proxy: Warmproxy, *paths: str) -> None:
    run = await warming_call(client, proxy, "POST", "warm-key", {"urls": list(paths)})

    async def done() -> bool:
        body = await warming_call(client, proxy, "GET", f"progress?run_id={run['run_id']}")
        return bool(body["status"] != "running")

    await eventually(done, within=10)


async def hit(client: aiohttp.ClientSession, proxy: Warmproxy, path: str) -> None:
    async with client.get(url(proxy, path)) as response:
        assert response.status == 200
        assert response.headers["Cache-Status"].startswith("warmproxy; hit"), path


async def observed(proxy: Warmproxy, requests: int) -> None:
    await eventually(lambda: proxy.warmer.tracker.totals().requests == requests)


def stats_up(proxy: Warmproxy) -> float | None:
    return proxy.metrics.registry.get_sample_value("warmproxy_fleet_stats_up")


async def test_stats_on_any_replica_sum_the_fleet_with_a_breakdown(
    redis_url: str,
    redis_prefix: str,
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
) -> None:
    for path in ("/a/1", "/a/2", "/a/3", "/b/1"):
        origin.set(path, headers=CACHEABLE)
    origin.set("/b/broken", status=500)
    a, b, c = [
        await replica(make_proxy, origin, redis_url, redis_prefix, n) for n in ("a", "b", "c")
    ]
    await warm(client, a, "/a/1", "/a/2", "/a/3")
    await warm(client, b, "/b/1", "/b/broken")
    for path in ("/a/1", "/a/1", "/a/2"):
        await hit(client, a, path)
    await hit(client, b, "/b/1")
    await observed(a, 3)
    await observed(b, 1)

    # C did nothing itself; within a write interval it sees A's and B's work.
    async def summed() -> bool:
        body = await stats(client, c)
        return bool(body["cost_benefit"]["items_warmed"] == 4)

    await eventually(summed, within=2 * WRITE_INTERVAL + 1)
    body = await stats(client, c)
    assert body["fleet"] == {"scope": "fleet", "replicas": 3, "unavailable": None}
    eff, cost = body["effectiveness"], body["cost_benefit"]
    # Hits on warmed entries: 3 on A, 1 on B.  A warm run is the fleet's
    # (any replica fills its items), and a replica's ledger credits a hit
    # to a warm it made itself; another's counts as unattributed.
    assert eff["hits_gained"] + eff["warmed_hits_unattributed"] == 4
    assert eff["requests"] == 4
    assert cost["origin_fetches"] == 5
    # Recomputed from the sums, 4 stored of 5 fetched; the replicas' own
    # rates averaged would say otherwise.
    assert cost["success_rate"] == 0.8
    assert body["counts"]["origin_fetches"] == 5
    assert body["counts"]["warmed"] == {"on-demand": 4}
    assert body["by_label"]["on-demand"]["stored"] == 4

    # The breakdown: one part a replica, summing to the fleet's figures.
    parts = body["replicas"]
    assert sorted(parts) == ["a", "b", "c"]
    assert [n for n, p in parts.items() if p["this_replica"]] == ["c"]
    assert sum(p["cost_benefit"]["items_warmed"] for p in parts.values()) == 4
    assert sum(p["cost_benefit"]["origin_fetches"] for p in parts.values()) == 5
    assert stats_up(a) == 1.0

    # A's own answer is the same sum, A marked as the one answering.
    mine = await stats(client, a)
    assert mine["cost_benefit"]["items_warmed"] == 4
    assert [n for n, p in mine["replicas"].items() if p["this_replica"]] == ["a"]


async def test_a_stopped_replicas_figures_stay_until_they_expire(
    redis_url: str,
    redis_prefix: str,
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
) -> None:
    origin.set("/p", headers=CACHEABLE)
    a, b = [await replica(make_proxy, origin, redis_url, redis_prefix, n) for n in ("a", "b")]
    await warm(client, b, "/p")
    # A clean stop writes B's last figures at once (no write interval to wait).
    await b.stop()
    body = await stats(client, a)
    assert body["fleet"]["replicas"] == 2
    assert body["cost_benefit"]["items_warmed"] == 1
    assert body["replicas"]["b"]["this_replica"] is False
    # B is gone from the live replicas, its figures are not.
    status = await warming_call(client, a, "GET", "status")
    assert [r["id"] for r in status["replicas"]] == ["a"]

    key = f"{redis_prefix}{{fleet}}:stats:b"
    redis = aioredis.from_url(redis_url)
    try:
        assert 0 < await redis.ttl(key) <= STATS_TTL
        assert await redis.zscore(f"{redis_prefix}{{fleet}}:stats", "b") is not None
        # Its expiry comes (sooner here): the fleet counts A alone.
        await redis.pexpire(key, 1)

        async def expired() -> bool:
            return await redis.exists(key) == 0

        await eventually(expired, within=2)
    finally:
        await redis.aclose()
    body = await stats(client, a)
    assert body["fleet"]["replicas"] == 1
    assert sorted(body["replicas"]) == ["a"]
    assert body["cost_benefit"]["items_warmed"] == 0


async def test_with_redis_down_stats_answer_this_replicas_own_figures(
    throwaway_redis: RedisServer,
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
) -> None:
    prefix = "wp-stats:"
    origin.set("/a", headers=CACHEABLE)
    origin.set("/b", headers=CACHEABLE)
    a, b = [await replica(make_proxy, origin, throwaway_redis.url, prefix, n) for n in ("a", "b")]
    await warm(client, a, "/a")
    await warm(client, b, "/b")
    assert await b.fleet_stats.write()
    together = await stats(client, a)
    assert together["cost_benefit"]["items_warmed"] == 2
    # Which replica filled which item is the fleet's business (runs are the
    # fleet's): A's own share is whatever its part says.
    own = together["replicas"]["a"]["cost_benefit"]["items_warmed"]

    throwaway_redis.stop()
    body = await stats(client, a)  # 200: warming_call() checks
    assert body["fleet"]["scope"] == "replica"
    assert "unavailable" in body["fleet"]["unavailable"]
    assert body["fleet"]["replicas"] == 1
    assert body["cost_benefit"]["items_warmed"] == own
    assert list(body["replicas"]) == ["a"]
    assert not await a.fleet_stats.write()
    assert stats_up(a) == 0.0

    # Redis back (empty): each replica writes again by itself, the sum returns.
    throwaway_redis.start()

    async def fleet_again() -> bool:
        body = await stats(client, a)
        return bool(body["fleet"]["scope"] == "fleet" and body["fleet"]["replicas"] == 2)

    await eventually(fleet_again, within=2 * WRITE_INTERVAL + 5)
    assert (await stats(client, a))["cost_benefit"]["items_warmed"] == 2


async def test_with_the_memory_store_stats_are_this_replicas_with_a_breakdown_of_one(
    origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    origin.set("/m", headers=CACHEABLE)
    proxy = await make_proxy(
        origin.url,
        cache={"replica_name": "solo"},
        execution=EXECUTION,
        strategies=STRATEGIES,
    )
    await warm(client, proxy, "/m")
    body = await stats(client, proxy)
    assert body["fleet"] == {"scope": "replica", "replicas": 1, "unavailable": None}
    assert body["cost_benefit"]["items_warmed"] == 1
    assert list(body["replicas"]) == ["solo"]
    assert body["replicas"]["solo"]["this_replica"] is True
    assert body["replicas"]["solo"]["cost_benefit"]["items_warmed"] == 1
    assert stats_up(proxy) == 0.0


# ------------------------------------------------------------------ the sums


def ledger_with(stored: int, failed: int) -> LedgerCounters:
    ledger = EffectivenessLedger()
    for n in range(stored):
        ledger.warm_stored(f"/k{n}", 1.0, 100.0, label="on-demand")
    for n in range(failed):
        ledger.warm_not_stored(f"/f{n}", 1.0, label="on-demand", failed=True)
    return ledger.counters(2.0)


def test_ratios_are_recomputed_from_the_summed_counters() -> None:
    total = ledger_with(3, 0) + ledger_with(1, 1)
    figures = total.figures(3.0)
    assert figures.warm_stored == 4
    assert figures.warm_fetches == 5
    assert figures.success_rate == 0.8  # not (1.0 + 0.5) / 2
    assert figures.by_label["on-demand"].stored == 4


def test_ledger_counters_survive_their_document() -> None:
    counters = ledger_with(2, 1)
    again = LedgerCounters.from_document(orjson.loads(orjson.dumps(counters.to_document())))
    assert again == counters
    with pytest.raises(ValueError, match=r"damaged|labels|number"):
        LedgerCounters.from_document({"totals": {}})


def test_a_malformed_or_oversized_hash_is_ignored() -> None:
    warming = {
        "warmed": {"on-demand": 1},
        "failed": {},
        "retried": {},
        "already_fresh": {},
        "origin_fetches": 1,
        "fetch_seconds": 0.1,
        "bytes": 5,
        "peak_concurrent": 1,
        "total_warming_time": 0.2,
        "schedule_firings_skipped": 0,
        "cpu_utilization": 1.0,
        "memory_usage": 100,
    }
    fields = encode(ReplicaFigures("x", "i", 1.0, warming, ledger_with(1, 0)))
    good = decode("x", {k.encode(): v for k, v in fields.items()})
    assert good is not None and good.warming["bytes"] == 5
    broken = {k.encode(): v for k, v in fields.items()}
    broken[b"warming"] = orjson.dumps({**warming, "bytes": "5"})
    assert decode("x", broken) is None
    assert decode("x", {b"updated_at": b"1", b"warming": b"x" * (MAX_FIELD_BYTES + 1)}) is None
    assert decode("x", {b"foreign": b"1"}) is None


def test_counts_add_and_peaks_take_the_highest() -> None:
    one = {
        "warmed": {"on-demand": 2},
        "failed": {"on-demand": 1},
        "retried": {},
        "already_fresh": {},
        "origin_fetches": 3,
        "fetch_seconds": 1.5,
        "bytes": 10,
        "peak_concurrent": 4,
        "total_warming_time": 2.0,
        "schedule_firings_skipped": 1,
        "cpu_utilization": 5.0,
        "memory_usage": 100,
    }
    two = {**one, "warmed": {"on-demand": 1, "scheduled:home": 5}, "peak_concurrent": 7}
    total = sum_warming([one, two])
    assert total["warmed"] == {"on-demand": 3, "scheduled:home": 5}
    assert total["origin_fetches"] == 6
    assert total["peak_concurrent"] == 7
