"""One view of the traffic: replicas sharing one Redis count usage together.

Three real proxies on loopback ports share one Redis prefix in front of one
origin that counts its requests: hot keys seen on some replicas show on
another, misses spread over the replicas cross the miss-reactive threshold,
and the warm it decides is fetched once across the fleet.  With Redis away,
each replica keeps serving and counts alone.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from proxy import fleet_counts
from proxy.app import Warmproxy
from proxy.fleet_counts import MAX_KEY_CHARS, FleetCounts
from proxy.metrics import ProxyMetrics
from tests.proxy.conftest import Origin, ProxyFactory, control_url, eventually, key, url
from tests.redis_server import RedisServer
from tests.warmer.events import Ev
from warmer.config import ReactiveConfig, WarmerConfig
from warmer.core import WarmerCore, build_strategies, build_tracker
from warmer.model import Reason
from warmer.strategies import MissReactive

# Clients of one public host behind a load balancer: every replica keys alike.
PUBLIC = {"public_host": "shop.example"}
#: Seconds between two syncs of the counts in these tests (2 s in production).
SYNC = 0.1
#: The miss-reactive strategy alone, with a 60 s window (one of the tracker's).
REACTIVE = {
    "reactive": {
        "threshold": 10,
        "time_window": 60,
        "refresh_ahead": False,
        "min_precision": 0,
    }
}


@pytest.fixture(autouse=True)
def fast_sync(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fleet_counts, "FLUSH_INTERVAL", SYNC)


def redis_cache(redis_url: str, prefix: str) -> dict[str, Any]:
    # No L1: each replica reads the shared entry, as it is now, at once.
    return {"store": "redis", "redis_url": redis_url, "redis_prefix": prefix, "l1_ttl": 0}


async def fleet(
    make_proxy: ProxyFactory,
    origin: Origin,
    cache: dict[str, Any],
    count: int = 3,
    **sections: dict[str, Any],
) -> list[Warmproxy]:
    return [
        await make_proxy(origin.url, cache=cache, proxy=PUBLIC, strategies=REACTIVE, **sections)
        for _ in range(count)
    ]


async def get(
    client: aiohttp.ClientSession, proxy: Warmproxy, path: str, *, refetch: bool = False
) -> str:
    """GET ``path``; ``refetch``: ask for a fresh copy (``no-cache``), which the
    proxy fetches from the origin: a miss.  Returns Cache-Status."""
    headers = {"Cache-Control": "no-cache"} if refetch else {}
    async with client.get(url(proxy, path), headers=headers) as response:
        assert response.status == 200
        await response.read()
        return response.headers["Cache-Status"]


async def hot_data(client: aiohttp.ClientSession, proxy: Warmproxy) -> dict[str, Any]:
    async with client.get(
        control_url(proxy, "/cache/warming/hot-data"), params={"window": "60"}
    ) as response:
        assert response.status == 200
        body: dict[str, Any] = await response.json()
        return body


def sample(proxy: Warmproxy, name: str, **labels: str) -> float:
    return proxy.metrics.registry.get_sample_value(name, labels) or 0.0


def claims(proxies: list[Warmproxy], outcome: str) -> float:
    return sum(sample(p, "warmproxy_fleet_claims_total", outcome=outcome) for p in proxies)


async def test_misses_spread_over_replicas_cross_the_threshold_and_warm_once(
    redis_url: str,
    redis_prefix: str,
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
) -> None:
    origin.set("/popular", headers={"Cache-Control": "max-age=3"}, body=b"popular")
    proxies = await fleet(make_proxy, origin, redis_cache(redis_url, redis_prefix))
    a, b, _ = proxies
    popular = key(a, "/popular")

    # 4 misses on each replica: 12 in the fleet, 4 on each alone (threshold 10).
    for _ in range(4):
        for proxy in proxies:
            assert "fwd=" in await get(client, proxy, "/popular", refetch=True)
    assert origin.count("/popular") == 12
    for proxy in proxies:
        assert proxy.warmer.tracker.misses(popular, 60, proxy.clock()) == 4

    async def each_counts_the_others() -> bool:
        return all(p.fleet_counts.others_misses(popular, 60) == 8 for p in proxies)

    await eventually(each_counts_the_others)

    # One more miss on each: every replica now follows the key (13 > 10 and
    # more), and the hits on a and b show them the entry c stored last.
    for proxy in proxies:
        await get(client, proxy, "/popular", refetch=True)
    assert "hit" in await get(client, a, "/popular")
    assert "hit" in await get(client, b, "/popular")
    fetched = origin.count("/popular")
    # What the warm fetch stores stays fresh long after the test.
    origin.set("/popular", headers={"Cache-Control": "max-age=300"}, body=b"popular")

    # When that entry expires, all three decide to warm it; one claims it.
    await eventually(lambda: claims(proxies, "won") + claims(proxies, "lost") == 3, within=10)
    await eventually(lambda: origin.count("/popular") == fetched + 1)
    assert claims(proxies, "won") == 1
    assert claims(proxies, "lost") == 2
    assert claims(proxies, "unclaimed") == 0
    for proxy in proxies:
        assert "hit" in await get(client, proxy, "/popular")
    assert origin.count("/popular") == fetched + 1


async def test_a_refresh_ahead_is_fetched_by_one_replica_of_three(
    redis_url: str,
    redis_prefix: str,
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
) -> None:
    origin.set("/page", headers={"Cache-Control": "max-age=4"}, body=b"page")
    refresh_only = {
        "reactive": {
            "auto_warm": False,
            "refresh_ahead": True,
            "refresh_min_hits": 2,
            "min_precision": 0,
        }
    }
    cache = redis_cache(redis_url, redis_prefix)
    proxies = [
        await make_proxy(origin.url, cache=cache, proxy=PUBLIC, strategies=refresh_only)
        for _ in range(3)
    ]
    await get(client, proxies[0], "/page")
    # Popular on every replica: each would refresh it before it expires.
    for proxy in proxies:
        for _ in range(2):
            assert "hit" in await get(client, proxy, "/page")
    assert origin.count("/page") == 1
    origin.set("/page", headers={"Cache-Control": "max-age=300"}, body=b"page")

    await eventually(lambda: claims(proxies, "won") + claims(proxies, "lost") == 3, within=10)
    await eventually(lambda: origin.count("/page") == 2)
    assert claims(proxies, "won") == 1
    assert claims(proxies, "lost") == 2
    for proxy in proxies:
        assert "hit" in await get(client, proxy, "/page")
    assert origin.count("/page") == 2


def test_the_miss_reactive_threshold_adds_the_other_replicas_misses() -> None:
    """Sans-I/O: the strategy reads the fleet's view through a plain callable."""
    config = WarmerConfig(
        reactive=ReactiveConfig(
            threshold=10, time_window=60.0, refresh_ahead=False, min_precision=0.0
        )
    )
    tracker = build_tracker(config)
    others = {"/k": 8}
    (alone,) = build_strategies(config, tracker)
    (shared,) = build_strategies(
        config,
        tracker,
        others_misses=lambda key, window: others.get(key, 0) if window == 60.0 else 0,
    )
    for i in range(4):
        event = Ev(ts=100.0 + i, key="/k", outcome="miss", fresh_until=130.0)
        tracker.observe(event)
        alone.observe(event)
        shared.observe(event)
    assert isinstance(alone, MissReactive) and isinstance(shared, MissReactive)
    assert len(alone) == 0  # 4 misses of its own: below the threshold
    assert len(shared) == 1  # 4 + 8 from the others: above it, followed
    core = WarmerCore([shared], tracker=tracker)
    # At the entry's expiry, within the window: warmed, for that lifetime.
    (request,) = core.due(130.0)
    assert request.reason is Reason.REACTIVE
    assert core.decided_lifetime(request) == 130.0
    # Another replica claimed it: the decision is not judged here.
    assert "/k" in shared.watch.open
    core.dropped(request)
    assert "/k" not in shared.watch.open


async def test_hot_keys_seen_on_two_replicas_show_on_the_third(
    redis_url: str,
    redis_prefix: str,
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
) -> None:
    origin.set("/a", headers={"Cache-Control": "max-age=60"})
    origin.set("/b", headers={"Cache-Control": "max-age=60"})
    a, b, c = await fleet(make_proxy, origin, redis_cache(redis_url, redis_prefix))
    for _ in range(5):
        await get(client, a, "/a")
    for _ in range(3):
        await get(client, b, "/b")

    async def c_shows_both() -> bool:
        hot = {h["url"]: h["count"] for h in (await hot_data(client, c))["hot_keys"]}
        return bool(hot.get("/a") == 5 and hot.get("/b") == 3)

    await eventually(c_shows_both)
    hot = (await hot_data(client, c))["hot_keys"]
    assert [h["url"] for h in hot[:2]] == ["/a", "/b"]
    assert all(h["source"] == "fleet" for h in hot)
    # c itself never saw them: the counts are the fleet's.
    assert [h["this_replica"] for h in hot[:2]] == [0, 0]
    assert sample(c, "warmproxy_fleet_counts_shared") == 1


async def test_with_redis_down_each_replica_serves_and_counts_alone_then_recovers(
    throwaway_redis: RedisServer,
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
) -> None:
    origin.set("/x", headers={"Cache-Control": "max-age=60"})
    # Without the usage analysis: hot keys as the tracker ranks them, no
    # threshold (one key is not "hot" among one).
    a, b = await fleet(
        make_proxy,
        origin,
        redis_cache(throwaway_redis.url, "wp-counts:"),
        2,
        tracking={"analysis": False},
    )
    await eventually(lambda: sample(a, "warmproxy_fleet_counts_shared") == 1)

    throwaway_redis.stop()
    for _ in range(3):
        await get(client, a, "/x")
        await get(client, b, "/x")
    await eventually(lambda: sample(a, "warmproxy_fleet_counts_shared") == 0, within=10)
    hot = (await hot_data(client, a))["hot_keys"]
    # Its own counts, said to be its own.
    assert [(h["url"], h["count"], h["source"]) for h in hot] == [("/x", 3, "replica")]
    assert a.fleet_counts.others_misses(key(a, "/x"), 60) == 0
    assert sample(a, "warmproxy_fleet_counts_syncs_total", result="failed") > 0

    throwaway_redis.start()
    await eventually(lambda: sample(a, "warmproxy_fleet_counts_shared") == 1, within=15)
    await get(client, a, "/x")
    assert all(h["source"] == "fleet" for h in (await hot_data(client, a))["hot_keys"])


async def test_memory_store_shares_nothing(
    origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    origin.set("/m", headers={"Cache-Control": "max-age=60"})
    proxy = await make_proxy(origin.url, strategies=REACTIVE, tracking={"analysis": False})
    assert not proxy.fleet_counts.enabled
    await get(client, proxy, "/m")
    await eventually(lambda: proxy.warmer.tracker.totals().requests == 1)
    hot = (await hot_data(client, proxy))["hot_keys"]
    assert [(h["url"], h["source"]) for h in hot] == [("/m", "replica")]
    assert await proxy.fleet_counts.claim([("reactive", "/m", 1.0)]) is None


def test_claim_keys_are_bounded_and_name_the_lifetime() -> None:
    counts = FleetCounts(redis_url=None, prefix="p:", metrics=ProxyMetrics())
    short = counts.claim_key(("reactive", "/a", 1700000000.25))
    assert short == "p:{fleet}:claim:reactive:/a:1700000000250"
    long = counts.claim_key(("refresh-ahead", "/" + "x" * 5000, 1.0))
    assert len(long) < MAX_KEY_CHARS
    assert long.startswith("p:{fleet}:claim:refresh-ahead:sha256:")
    with pytest.raises(ValueError, match="unknown claim kind"):
        counts.claim_key(("scheduled", "/a", 1.0))
