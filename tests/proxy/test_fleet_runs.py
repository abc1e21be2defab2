"""One warm run, many workers: a run started on one replica is worked by every
replica through a Redis Stream, answered the same by any replica, stopped
from any replica, paced by one fleet-wide rate limit, and survives a replica
that vanishes and a Redis that blips.

Real proxies (in-process apps on loopback ports) share one real Redis under a
prefix of their own, in front of one real origin that counts every fetch.
The replica killed with SIGKILL is in tests/e2e/test_fleet_runs.py.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from proxy.app import Warmproxy
from proxy.fleet_runs import GROUP, decode_item, encode_item, parse_record, reclaim_idle
from tests.proxy.conftest import Origin, ProxyFactory, control_url, eventually, url, warming_call
from tests.redis_server import RedisServer
from warmer.model import Reason, WarmRequest

CACHEABLE = {"Cache-Control": "public, max-age=300"}
# No warming of their own: only what each test asks for is warmed.
STRATEGIES = {"reactive": {"refresh_ahead": False, "auto_warm": False}}
LEVELS = ("high", "medium", "low")


def serve_paths(origin: Origin, prefix: str, count: int, delay: float = 0.0) -> list[str]:
    """``count`` cacheable paths under ``prefix`` on the origin, answered after ``delay``."""
    paths = [f"{prefix}{n}" for n in range(count)]
    for path in paths:
        origin.set(path, headers=CACHEABLE, body=b"ok", delay=delay)
    return paths


async def replica(
    make_proxy: ProxyFactory,
    origin: Origin,
    redis_url: str,
    prefix: str,
    name: str,
    proxy: dict[str, Any] | None = None,
    **execution: Any,
) -> Warmproxy:
    return await make_proxy(
        origin.url,
        cache={
            "store": "redis",
            "redis_url": redis_url,
            "redis_prefix": prefix,
            "replica_name": name,
            "l1_max_bytes": 0,
        },
        proxy={"public_host": "shop.example", **(proxy or {})},
        execution={"adaptive": False, "rate_limit": 0, "retry_attempts": 0, **execution},
        strategies=STRATEGIES,
    )


async def finished(
    client: aiohttp.ClientSession, proxy: Warmproxy, run_id: str, within: float = 20
) -> dict[str, Any]:
    """The run's progress, as ``proxy`` answers it, once it no longer runs."""
    body: dict[str, Any] = {}

    async def ended() -> bool:
        nonlocal body
        body = await warming_call(client, proxy, "GET", f"progress?run_id={run_id}")
        return bool(body["status"] != "running")

    await eventually(ended, within=within)
    return body


def warmed(proxy: Warmproxy) -> int:
    """Warm fetches this replica made and stored."""
    return sum(proxy.warmer.executor.counters.warmed.values())


async def ghost_run(
    ghost: aioredis.Redis, prefix: str, run_id: str, paths: list[str], *, sealed: bool
) -> dict[str, bytes]:
    """A running run that a replica "ghost" started two minutes ago, with
    ``paths`` as its items (written as FleetRuns writes them); their entry ids."""
    tag = f"{prefix}{{run:{run_id}}}"
    started = time.time() - 120
    await ghost.hset(
        f"{tag}:record",
        mapping={
            "strategy": "key",
            "state": "running",
            "total": len(paths),
            "success": 0,
            "failed": 0,
            "seconds": 0,
            "started_at": repr(started),
            "updated_at": repr(started),
            "sealed": int(sealed),
            "origin": "ghost",
        },
    )
    await ghost.xgroup_create(f"{tag}:items", GROUP, id="0", mkstream=True)
    ids = {}
    for path in paths:
        request = WarmRequest(url=path, host="", priority="high", reason=Reason.ON_DEMAND)
        ids[path] = await ghost.xadd(f"{tag}:items", {"w": encode_item(request)})
    await ghost.zadd(f"{prefix}{{fleet}}:runs", {run_id: started})
    return ids


async def test_a_run_started_on_one_replica_is_worked_by_all_and_answered_by_any(
    redis_url: str,
    redis_prefix: str,
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
) -> None:
    paths = serve_paths(origin, "/p/", 600, delay=0.02)
    a, b, c = [
        await replica(make_proxy, origin, redis_url, redis_prefix, n, parallelism=8)
        for n in ("a", "b", "c")
    ]
    started = await warming_call(client, a, "POST", "warm-key", {"urls": paths})
    assert started["status"] == "running"
    assert started["progress"]["total_items"] == 600

    body = await finished(client, c, started["run_id"])
    assert body["status"] == "completed", body
    assert body["progress"] == {
        "total_items": 600,
        "completed": 600,
        "success": 600,
        "failed": 0,
        "percentage": 100.0,
    }
    # Each path fetched once across the fleet, and every replica did a share.
    fetched = Counter(s.path for s in origin.seen)
    assert set(fetched) == set(paths)
    assert max(fetched.values()) == 1
    shares = [warmed(p) for p in (a, b, c)]
    assert sum(shares) == 600 and min(shares) > 0, shares
    # Every replica answers the same about it, status included.
    for proxy in (a, b):
        again = await warming_call(client, proxy, "GET", f"progress?run_id={started['run_id']}")
        assert again["progress"] == body["progress"]
    status = await warming_call(client, b, "GET", "status")
    assert status["run_id"] == started["run_id"] and status["status"] == "completed"
    # And a client finds the entries warm on any replica.
    async with client.get(url(b, paths[17])) as response:
        assert response.headers["Cache-Status"].startswith("warmproxy; hit")


async def test_failures_are_counted_once_with_their_errors_on_every_replica(
    redis_url: str,
    redis_prefix: str,
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
) -> None:
    good = serve_paths(origin, "/ok/", 20)
    origin.set("/broken", status=500)
    a, b = [await replica(make_proxy, origin, redis_url, redis_prefix, n) for n in ("a", "b")]
    started = await warming_call(client, a, "POST", "warm-key", {"urls": [*good, "/broken"]})
    body = await finished(client, b, started["run_id"])
    assert body["status"] == "completed"  # some succeeded, as a local run says
    assert body["progress"]["success"] == 20 and body["progress"]["failed"] == 1
    assert body["errors"] == [{"key": "/broken", "error": "origin answered 500", "retry_count": 0}]
    assert origin.count("/broken") == 1


async def test_stop_on_any_replica_stops_the_run_everywhere(
    redis_url: str,
    redis_prefix: str,
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
) -> None:
    paths = serve_paths(origin, "/slow/", 400, delay=0.1)
    a, b, c = [
        await replica(make_proxy, origin, redis_url, redis_prefix, n, parallelism=2)
        for n in ("a", "b", "c")
    ]
    started = await warming_call(client, a, "POST", "warm-key", {"urls": paths})
    run_id = started["run_id"]
    # Under way on every replica.
    await eventually(lambda: all(p.warmer.executor.in_flight for p in (a, b, c)), within=5)

    stopped = await warming_call(client, b, "POST", "stop")
    assert run_id in stopped["stopped"]
    body = await warming_call(client, c, "GET", f"progress?run_id={run_id}")
    assert body["status"] == "stopped"
    # Every replica drops what it holds: nothing is fetched any more.
    await eventually(lambda: not any(p.warmer.executor.in_flight for p in (a, b, c)), within=5)
    fetched = len(origin.seen)
    await asyncio.sleep(1.0)
    assert len(origin.seen) == fetched < 100
    assert (await warming_call(client, a, "GET", "status"))["status"] == "stopped"
    # A new run may start on any replica now.
    again = await warming_call(client, c, "POST", "warm-key", {"url": paths[-1]})
    assert (await finished(client, a, again["run_id"]))["status"] == "completed"


async def test_a_second_run_conflicts_on_another_replica(
    redis_url: str,
    redis_prefix: str,
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
) -> None:
    paths = serve_paths(origin, "/s/", 40, delay=0.1)
    a, b = [
        await replica(make_proxy, origin, redis_url, redis_prefix, n, parallelism=2)
        for n in ("a", "b")
    ]

    # Hot paths of A's own traffic, started on A as a fleet run.
    async def get(path: str) -> None:
        async with client.get(url(a, path)) as response:
            assert response.status == 200

    await asyncio.gather(*(get(path) for path in paths))
    await eventually(lambda: a.warmer.tracker.totals().requests == 40)
    started = await warming_call(client, a, "POST", "start", {"strategy": "hot"})
    async with client.post(
        control_url(b, "/cache/warming/start"), json={"strategy": "hot"}
    ) as response:
        assert response.status == 409, await response.text()
    await warming_call(client, b, "POST", "stop")
    assert (await finished(client, a, started["run_id"]))["status"] == "stopped"


async def test_items_a_vanished_replica_held_are_reclaimed_and_filled_once(
    redis_url: str,
    redis_prefix: str,
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
) -> None:
    paths = serve_paths(origin, "/r/", 60, delay=0.05)
    # Origin timeouts short: the fleet's fill lock lives as long, and an item
    # is taken over only once a dead holder's lock would have expired.
    timeouts = {"connect_timeout": 0.5, "read_timeout": 1.0}
    a = await replica(
        make_proxy, origin, redis_url, redis_prefix, "a", timeouts, parallelism=1, timeout=1.0
    )
    assert a.fleet_runs.reclaim_idle == reclaim_idle(1.0, 1.5) == 3.0
    # A replica that takes items and then is gone: it never fetches nor acknowledges.
    ghost = aioredis.Redis.from_url(redis_url)
    try:
        started = await warming_call(client, a, "POST", "warm-key", {"urls": paths})
        run_id = started["run_id"]
        stream = f"{redis_prefix}{{run:{run_id}}}:items"
        taken: list[Any] = []

        async def ghost_took() -> bool:
            try:
                answer = await ghost.xreadgroup(GROUP, "ghost", {stream: ">"}, count=20)
            except ResponseError:  # the run's stream is not written yet
                return False
            streams: Any = answer  # [[stream, [(id, fields), ...]]]
            if streams:
                taken.extend(streams[0][1])
            return len(taken) >= 20

        await eventually(ghost_took, within=5)
        began = time.monotonic()
        body = await finished(client, a, run_id, within=20)
        assert body["status"] == "completed"
        assert body["progress"]["success"] == 60
        # The ghost's items were taken over after the idle time, not before.
        assert time.monotonic() - began >= a.fleet_runs.reclaim_idle - 1.0
        fetched = Counter(s.path for s in origin.seen)
        assert set(fetched) == set(paths) and max(fetched.values()) == 1
        assert await ghost.exists(stream) == 0  # an ended run's items are gone
    finally:
        await ghost.aclose()


async def test_the_rate_limit_is_the_fleets_not_each_replicas(
    redis_url: str,
    redis_prefix: str,
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
) -> None:
    paths = serve_paths(origin, "/rate/", 45)
    a, b, c = [
        await replica(make_proxy, origin, redis_url, redis_prefix, n, rate_limit=15)
        for n in ("a", "b", "c")
    ]
    began = time.monotonic()
    started = await warming_call(client, a, "POST", "warm-key", {"urls": paths})
    body = await finished(client, b, started["run_id"])
    seconds = time.monotonic() - began
    assert body["progress"]["success"] == 45
    assert sum(1 for p in (a, b, c) if warmed(p)) >= 2
    # 45 fetches at 15/s for the fleet take about 3 s; at 15/s per replica,
    # three replicas would be done in about 1 s.
    assert seconds >= 2.0, seconds


async def test_a_run_redis_cannot_take_runs_on_the_replica_alone(
    throwaway_redis: RedisServer,
    redis_prefix: str,
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
) -> None:
    paths = serve_paths(origin, "/alone/", 5)
    a = await replica(make_proxy, origin, throwaway_redis.url, redis_prefix, "a")
    throwaway_redis.stop()
    started = await warming_call(client, a, "POST", "warm-key", {"urls": paths})
    body = await finished(client, a, started["run_id"], within=10)
    # Every path fetched here (with the store down none is stored: failed).
    assert body["progress"]["total_items"] == 5
    assert body["progress"]["completed"] == 5
    assert sorted(s.path for s in origin.seen) == sorted(paths)


async def test_a_run_goes_on_after_redis_blips_with_every_item_counted_once(
    throwaway_redis: RedisServer,
    redis_prefix: str,
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
) -> None:
    paths = serve_paths(origin, "/blip/", 200, delay=0.02)
    a, b = [
        await replica(make_proxy, origin, throwaway_redis.url, redis_prefix, n, parallelism=4)
        for n in ("a", "b")
    ]
    started = await warming_call(client, a, "POST", "warm-key", {"urls": paths})
    await eventually(lambda: len(origin.seen) >= 40, within=10)
    throwaway_redis.pause()  # unanswering, its data kept: a network blip
    try:
        await asyncio.sleep(1.5)
    finally:
        throwaway_redis.resume()
    body = await finished(client, b, started["run_id"], within=25)
    assert body["status"] == "completed", body
    assert body["progress"]["total_items"] == 200
    assert body["progress"]["completed"] == 200
    fetched = Counter(s.path for s in origin.seen)
    assert set(fetched) == set(paths)


def test_items_and_records_read_back_as_written() -> None:
    request = WarmRequest(
        url="/a?b=1",
        priority="low",
        reason=Reason.SCHEDULED,
        host="shop.example",
        ttl=60.0,
        refresh=True,
        source="sitemap",
        headers=(("accept-language", "de"),),
    )
    assert decode_item(encode_item(request), LEVELS) == request
    # A priority this replica does not know: its middle one.
    other = decode_item(encode_item(WarmRequest(url="/x", priority="urgent")), LEVELS)
    assert other.priority == "medium"
    for bad in (b"", b"[]", b'["x", "", "low", "on-demand", null, false, "", []]'):
        with pytest.raises(ValueError):
            decode_item(bad, LEVELS)
    record = parse_record(
        "r1",
        {b"state": b"stopped", b"total": b"3", b"success": b"1", b"failed": b"1",
         b"started_at": b"10.5", b"finished_at": b"12", b"strategy": b"bulk"},
        [b'["/b", "origin answered 500", 2]', b"not json"],
    )  # fmt: skip
    assert (record.state, record.total, record.finished_at) == ("stopped", 3, 12.0)
    assert record.errors == (("/b", "origin answered 500", 2),)
    with pytest.raises(ValueError, match="unknown state"):
        parse_record("r2", {b"state": b"dancing"}, [])


async def test_a_scheduled_run_counts_a_source_it_could_not_read_once_for_the_fleet(
    redis_url: str,
    redis_prefix: str,
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
) -> None:
    paths = serve_paths(origin, "/listed/", 5)
    a, b = [await replica(make_proxy, origin, redis_url, redis_prefix, n) for n in ("a", "b")]
    plan = {
        "schedule": "0 3 * * *",
        "sources": [
            {"name": "listed", "source": {"type": "urls", "paths": paths}},
            {"name": "gone", "source": {"type": "sitemap", "url": "/no-sitemap.xml"}},
        ],
    }
    await warming_call(client, a, "POST", "schedule", plan)
    started = await warming_call(client, a, "POST", "start", {"strategy": "proactive"})
    body = await finished(client, b, started["run_id"])
    assert body["status"] == "completed"
    assert body["progress"]["total_items"] == 6
    assert (body["progress"]["success"], body["progress"]["failed"]) == (5, 1)
    assert [e["key"] for e in body["errors"]] == ["gone"]
    assert "404" in body["errors"][0]["error"]


async def test_a_run_lost_with_a_redis_restarted_empty_ends_as_failed(
    throwaway_redis: RedisServer,
    redis_prefix: str,
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
) -> None:
    paths = serve_paths(origin, "/lost/", 200, delay=0.05)
    a = await replica(make_proxy, origin, throwaway_redis.url, redis_prefix, "a", parallelism=2)
    started = await warming_call(client, a, "POST", "warm-key", {"urls": paths})
    await eventually(lambda: len(origin.seen) >= 4, within=5)
    throwaway_redis.stop()
    throwaway_redis.start()  # empty: the run's stream and record are gone
    body = await finished(client, a, started["run_id"], within=10)
    assert body["status"] == "failed"
    assert body["errors"][0]["error"] == "the run's record is gone from Redis"
    # Nothing waits on it: a new run starts and completes.
    again = await warming_call(client, a, "POST", "warm-key", {"url": "/lost/199"})
    assert (await finished(client, a, again["run_id"]))["status"] == "completed"


async def test_a_replica_stopping_cleanly_hands_its_items_back_at_once(
    redis_url: str,
    redis_prefix: str,
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
) -> None:
    paths = serve_paths(origin, "/handed/", 300, delay=0.05)
    a, b = [
        await replica(make_proxy, origin, redis_url, redis_prefix, n, parallelism=4)
        for n in ("a", "b")
    ]
    # Items are taken over from a replica that vanished only after this long:
    # far longer than the run has to finish in below.
    assert b.fleet_runs.reclaim_idle >= 20
    started = await warming_call(client, a, "POST", "warm-key", {"urls": paths})
    await eventually(lambda: warmed(b) >= 10, within=10)
    await b.stop()  # what B holds goes back; what it was fetching it finishes
    body = await finished(client, a, started["run_id"], within=15)
    assert body["status"] == "completed"
    assert body["progress"]["success"] == 300
    fetched = Counter(s.path for s in origin.seen)
    assert set(fetched) == set(paths) and max(fetched.values()) == 1


async def test_a_run_whose_starting_replica_died_adding_items_is_sealed_by_another(
    redis_url: str,
    redis_prefix: str,
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
) -> None:
    # A replica "ghost" started a run, added three of its items and died
    # (SIGKILL) before sealing it: without a live feeder the run could never
    # end, and it would hold off every other run (409).
    paths = serve_paths(origin, "/o/", 3)
    run_id = "0123456789ab"
    ghost = aioredis.Redis.from_url(redis_url)
    try:
        await ghost_run(ghost, redis_prefix, run_id, paths, sealed=False)

        b = await replica(make_proxy, origin, redis_url, redis_prefix, "b")
        body = await finished(client, b, run_id, within=10)
        # Sealed with what it held: those items warmed, the run ended, and
        # its errors say why what the ghost never added was not warmed.
        assert body["status"] == "completed", body
        assert body["progress"]["success"] == 3
        assert any("replica ghost stopped" in e["error"] for e in body["errors"]), body
        assert {s.path for s in origin.seen} == set(paths)
        # ... and it no longer holds off another run.
        again = await warming_call(client, b, "POST", "warm-key", {"urls": paths[:1]})
        assert (await finished(client, b, again["run_id"]))["status"] == "completed"
    finally:
        await ghost.aclose()


async def test_the_poller_stops_when_cancelled_as_a_poll_is_asked_for(
    redis_url: str, redis_prefix: str, origin: Origin, make_proxy: ProxyFactory
) -> None:
    # A replica's stop cancels the poller; an acknowledgement that ends a run
    # asks for a poll at the same moment.  A wait that swallowed that
    # cancellation kept the poller (and the stop) going forever.
    a = await replica(make_proxy, origin, redis_url, redis_prefix, "a")
    fleet = a.fleet_runs
    await eventually(lambda: fleet._poller is not None)
    poller = fleet._poller
    assert poller is not None
    await asyncio.sleep(0.1)  # between two polls, waiting to be asked
    fleet._refreshed.set()
    poller.cancel()
    await asyncio.wait({poller}, timeout=5)
    assert poller.cancelled()


async def test_an_item_every_holder_went_down_with_is_given_up_not_passed_on(
    redis_url: str,
    redis_prefix: str,
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
) -> None:
    # Three replicas in turn took /poison and went down holding it (a
    # response that takes a replica down would do that); /fine was held by
    # one that went down once.  The next replica takes /fine over and fills
    # it, and counts /poison failed instead of being the fourth to take it.
    origin.set("/poison", headers=CACHEABLE, body=b"ok")
    origin.set("/fine", headers=CACHEABLE, body=b"ok")
    run_id = "0123456789cd"
    stream = f"{redis_prefix}{{run:{run_id}}}:items"
    ghost = aioredis.Redis.from_url(redis_url)
    try:
        ids = await ghost_run(ghost, redis_prefix, run_id, ["/poison", "/fine"], sealed=True)
        await ghost.xreadgroup(GROUP, "ghost-1", {stream: ">"}, count=2)  # delivery 1
        # Taken over twice more (deliveries 2 and 3), left idle for a minute.
        for holder in ("ghost-2", "ghost-3"):
            await ghost.xclaim(stream, GROUP, holder, 0, [ids["/poison"]], idle=60_000)
        await ghost.xclaim(stream, GROUP, "ghost-1", 0, [ids["/fine"]], idle=60_000)

        b = await replica(make_proxy, origin, redis_url, redis_prefix, "b")
        body = await finished(client, b, run_id, within=10)
        assert body["progress"]["success"] == 1 and body["progress"]["failed"] == 1, body
        assert any(
            e["key"] == "/poison" and "given up after 3 replicas" in e["error"]
            for e in body["errors"]
        ), body
        assert [s.path for s in origin.seen] == ["/fine"]
        items = b.metrics.registry.get_sample_value
        assert items("warmproxy_fleet_run_items_total", {"event": "given_up"}) == 1
        assert items("warmproxy_fleet_run_items_total", {"event": "reclaimed"}) == 1
    finally:
        await ghost.aclose()
