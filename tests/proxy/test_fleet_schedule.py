"""The schedule is one document for the fleet: replicas (real proxies on loopback
ports) sharing one Redis prefix put a schedule posted to any of them in force,
also after a Redis outage, a restart or a reload; with the memory store nothing
is shared."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis

from proxy.app import Warmproxy
from proxy.config import Settings, load_settings
from proxy.fleet_schedule import ScheduleKeys
from tests.proxy.conftest import Origin, control_url, eventually
from tests.proxy.test_metrics_conventions import (
    convention_problems,
    exposed_name,
    families,
    undocumented,
)
from tests.redis_server import RedisServer
from warmer.clock import ManualClock

TOKEN = "fleet-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
#: What two replicas' GET /schedule must agree on (errors are each replica's own).
SHARED_FIELDS = ("schedule", "sources", "next_runs", "origin", "posted_at", "persisted_in")

Replica = Callable[..., Awaitable[Warmproxy]]
#: A replica stops well within this, Redis up or down.
STOP_SECONDS = 15.0


def plan(name: str, *paths: str, cron: str = "0 * * * *") -> dict[str, Any]:
    return {
        "sources": [
            {"name": name, "schedule": cron, "source": {"type": "urls", "paths": list(paths)}}
        ]
    }


def settings_for(
    origin: Origin, redis_url: str | None, prefix: str, state: Path, **extra: dict[str, Any]
) -> Settings:
    sections: dict[str, dict[str, Any]] = {
        "proxy": {"origin": origin.url, "listen": "127.0.0.1:0", "public_host": "shop.example"},
        "control": {"listen": "127.0.0.1:0", "token": TOKEN},
        "state": {"dir": str(state)},
        "cache": (
            {"store": "redis", "redis_url": redis_url, "redis_prefix": prefix, "l1_max_bytes": 0}
            if redis_url is not None
            else {"store": "memory"}
        ),
        "execution": {"rate_limit": 0, "retry_attempts": 0},
    }
    for name, values in extra.items():
        sections.setdefault(name, {}).update(values)
    return load_settings(None, sections)


@pytest.fixture
async def replicas(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Warmproxy]]]:
    """Start replicas (each with its own state directory, unless one is named)."""
    started: list[Warmproxy] = []

    async def start(
        origin: Origin,
        redis_url: str | None,
        prefix: str,
        *,
        name: str,
        clock: ManualClock | None = None,
        **extra: dict[str, Any],
    ) -> Warmproxy:
        proxy = Warmproxy(
            settings_for(origin, redis_url, prefix, tmp_path / name, **extra), clock=clock
        )
        await proxy.start()
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        if proxy.ready:
            await stop_within(proxy, STOP_SECONDS)


async def stop_within(proxy: Warmproxy, seconds: float) -> None:
    """Stop ``proxy``; fail naming what still runs (and where) if it hangs."""
    try:
        await asyncio.wait_for(proxy.stop(), seconds)
    except TimeoutError:
        stuck = io.StringIO()
        for task in asyncio.all_tasks():
            print(f"--- {task.get_name()}", file=stuck)
            task.print_stack(limit=8, file=stuck)
        pytest.fail(f"the replica did not stop within {seconds} s:\n{stuck.getvalue()}")


async def api(
    client: aiohttp.ClientSession, proxy: Warmproxy, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    async with client.request(
        method, control_url(proxy, f"/cache/warming/{path}"), headers=AUTH, json=body
    ) as response:
        return response.status, await response.json()


async def schedule_of(client: aiohttp.ClientSession, proxy: Warmproxy) -> dict[str, Any]:
    status, body = await api(client, proxy, "GET", "schedule")
    assert status == 200, body
    return {k: body[k] for k in SHARED_FIELDS}


async def names(client: aiohttp.ClientSession, proxy: Warmproxy) -> list[str]:
    return [s["name"] for s in (await schedule_of(client, proxy))["sources"]]


def sample(proxy: Warmproxy, name: str) -> float | None:
    return proxy.metrics.registry.get_sample_value(name)


async def shows(
    client: aiohttp.ClientSession, proxy: Warmproxy, wanted: list[str], within: float
) -> None:
    async def check() -> bool:
        return await names(client, proxy) == wanted

    await eventually(check, within=within)


async def test_a_post_to_one_replica_is_in_force_on_every_replica_at_once(
    origin: Origin,
    redis_url: str,
    redis_prefix: str,
    replicas: Replica,
    client: aiohttp.ClientSession,
) -> None:
    # Three replicas on virtual clocks at the same time, so their next
    # firings can be compared and moved on by hand.
    clocks = [ManualClock() for _ in range(3)]
    a, b, c = [
        await replicas(origin, redis_url, redis_prefix, name=n, clock=clock)
        for n, clock in zip("abc", clocks, strict=True)
    ]
    # max-age=1: stale on the virtual clock by the next firing, so each
    # firing fetches from the origin.
    origin.set("/fleet/page", headers={"Cache-Control": "max-age=1"})
    status, posted = await api(
        client, a, "POST", "schedule", plan("minutely", "/fleet/page", cron="* * * * *")
    )
    assert status == 200, posted
    expected = {k: posted[k] for k in SHARED_FIELDS}
    assert expected["origin"] == "posted" and expected["posted_at"] is not None

    async def everywhere() -> bool:
        return all([await schedule_of(client, p) == expected for p in (b, c)])

    await eventually(everywhere, within=5.0)
    assert sample(b, "warmproxy_fleet_schedule_adopted_total") == 1
    assert sample(a, "warmproxy_fleet_schedule_adopted_total") == 0  # its own post
    assert sample(b, "warmproxy_fleet_schedule_revision") == sample(
        a, "warmproxy_fleet_schedule_revision"
    )

    # The next minute comes on every replica: the firing is warmed once
    # across the fleet (one SET NX claim per firing).
    for clock in clocks:
        clock.advance(61)
    await eventually(lambda: origin.count("/fleet/page") == 1)

    # B's own scheduler runs the adopted schedule: alone, it fires the next minute.
    await a.stop()
    await c.stop()
    clocks[1].advance(60)
    await eventually(lambda: origin.count("/fleet/page") == 2)


async def test_a_replica_started_after_the_post_gets_it_and_redis_wins_over_its_copy(
    origin: Origin,
    redis_url: str,
    redis_prefix: str,
    replicas: Replica,
    client: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    a = await replicas(origin, redis_url, redis_prefix, name="a")
    status, posted = await api(client, a, "POST", "schedule", plan("catalogue", "/c"))
    assert status == 200, posted
    # A copy left in the new replica's state directory by an older post:
    # Redis wins over it.
    (tmp_path / "late").mkdir()
    (tmp_path / "late" / "schedule.json").write_bytes(orjson.dumps(plan("stale", "/s")))
    late = await replicas(origin, redis_url, redis_prefix, name="late")
    assert await schedule_of(client, late) == {k: posted[k] for k in SHARED_FIELDS}
    # Its copy now holds the fleet's schedule (the fallback for a start without Redis).
    copy = orjson.loads((tmp_path / "late" / "schedule.json").read_bytes())
    assert [s["name"] for s in copy["sources"]] == ["catalogue"]


async def test_the_local_copy_is_the_fallback_when_redis_is_down_at_start(
    origin: Origin,
    throwaway_redis: RedisServer,
    replicas: Replica,
    client: aiohttp.ClientSession,
) -> None:
    prefix = "fleet:"
    a = await replicas(origin, throwaway_redis.url, prefix, name="a")
    status, _ = await api(client, a, "POST", "schedule", plan("catalogue", "/c"))
    assert status == 200
    await a.stop()
    throwaway_redis.stop()
    again = await replicas(origin, throwaway_redis.url, prefix, name="a")
    body = await schedule_of(client, again)
    assert [s["name"] for s in body["sources"]] == ["catalogue"]
    assert body["origin"] == "posted"
    # A post needs Redis: refused whole, the schedule in force stays.
    status, refused = await api(client, again, "POST", "schedule", plan("other", "/o"))
    assert status == 503 and "could not be saved" in refused["error"]
    assert await names(client, again) == ["catalogue"]
    assert sample(again, "warmproxy_fleet_schedule_connected") == 0


async def test_a_replica_that_missed_a_post_while_redis_restarted_converges(
    origin: Origin,
    throwaway_redis: RedisServer,
    replicas: Replica,
    client: aiohttp.ClientSession,
) -> None:
    prefix = "fleet:"
    a = await replicas(origin, throwaway_redis.url, prefix, name="a")
    b = await replicas(origin, throwaway_redis.url, prefix, name="b")
    status, _ = await api(client, a, "POST", "schedule", plan("first", "/1"))
    assert status == 200
    await shows(client, b, ["first"], within=5.0)

    throwaway_redis.stop()
    await eventually(lambda: sample(b, "warmproxy_fleet_schedule_connected") == 0, within=20)
    assert await names(client, b) == ["first"]  # kept through the outage
    throwaway_redis.start()  # empty: a replacement instance

    async def posted() -> bool:
        status, _ = await api(client, a, "POST", "schedule", plan("second", "/2"))
        return status == 200

    await eventually(posted, within=10)
    await shows(client, b, ["second"], within=10)
    assert await schedule_of(client, b) == await schedule_of(client, a)
    await eventually(lambda: sample(b, "warmproxy_fleet_schedule_connected") == 1, within=10)
    assert (sample(b, "warmproxy_fleet_schedule_reconnects_total") or 0) >= 1


async def test_a_post_missed_by_a_dropped_subscription_is_read_on_reconnect(
    origin: Origin,
    throwaway_redis: RedisServer,
    replicas: Replica,
    client: aiohttp.ClientSession,
) -> None:
    prefix = "fleet:"
    a = await replicas(origin, throwaway_redis.url, prefix, name="a")
    b = await replicas(origin, throwaway_redis.url, prefix, name="b")
    await eventually(lambda: sample(b, "warmproxy_fleet_schedule_connected") == 1)
    admin = aioredis.from_url(throwaway_redis.url)
    try:
        # Every subscriber's connection dropped, then a post at once: its
        # message reaches nobody still reconnecting.
        await admin.client_kill_filter(_type="pubsub")
        status, _ = await api(client, a, "POST", "schedule", plan("missed", "/m"))
        assert status == 200
    finally:
        await admin.aclose()
    await shows(client, b, ["missed"], within=10)
    await eventually(lambda: (sample(b, "warmproxy_fleet_schedule_reconnects_total") or 0) >= 1)


async def test_concurrent_posts_on_two_replicas_converge_on_the_later_revision(
    origin: Origin,
    redis_url: str,
    redis_prefix: str,
    replicas: Replica,
    client: aiohttp.ClientSession,
) -> None:
    a, b, c = [await replicas(origin, redis_url, redis_prefix, name=n) for n in "abc"]
    answers = await asyncio.gather(
        api(client, a, "POST", "schedule", plan("from-a", "/a")),
        api(client, b, "POST", "schedule", plan("from-b", "/b")),
    )
    assert [status for status, _ in answers] == [200, 200]
    keys = ScheduleKeys.under(redis_prefix)
    r = aioredis.from_url(redis_url)
    try:
        stored = await r.hgetall(keys.document)
    finally:
        await r.aclose()
    assert int(stored[b"revision"]) == 2  # each post took one revision
    winner = [s["name"] for s in orjson.loads(stored[b"schedule"])["sources"]]
    for proxy in (a, b, c):
        await shows(client, proxy, winner, within=2)
    firsts = [await schedule_of(client, p) for p in (a, b, c)]
    assert firsts[0] == firsts[1] == firsts[2]


async def test_a_reload_that_changes_the_files_schedule_reaches_the_fleet(
    origin: Origin,
    redis_url: str,
    redis_prefix: str,
    replicas: Replica,
    client: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    a = await replicas(origin, redis_url, redis_prefix, name="a")
    b = await replicas(origin, redis_url, redis_prefix, name="b")
    status, _ = await api(client, a, "POST", "schedule", plan("posted", "/p"))
    assert status == 200
    await shows(client, b, ["posted"], within=5.0)

    # The configuration file's schedule changes (a new ConfigMap): A reloads first.
    sources = {"data_sources": plan("from-file", "/f")["sources"]}
    new = {"strategies": {"proactive": sources}}

    def reloaded(proxy: Warmproxy, name: str) -> Settings:
        return settings_for(origin, redis_url, redis_prefix, tmp_path / name, **new)

    a.load_settings = lambda: reloaded(a, "a")
    result = await a.reload()
    assert "strategies.proactive.data_sources" in result.applied
    assert (await schedule_of(client, a))["origin"] == "config"
    # B follows at once, before its own reload ...
    await shows(client, b, ["from-file"], within=5.0)
    # ... and once its file says the same, both show the file's schedule alike.
    b.load_settings = lambda: reloaded(b, "b")
    await b.reload()
    await eventually(
        lambda: (
            sample(a, "warmproxy_fleet_schedule_revision")
            == sample(b, "warmproxy_fleet_schedule_revision")
        )
    )
    shown = [await schedule_of(client, p) for p in (a, b)]
    assert shown[0] == shown[1]
    assert shown[0]["origin"] == "config" and shown[0]["posted_at"] is None


async def test_with_the_memory_store_each_replica_keeps_its_own_schedule(
    origin: Origin, replicas: Replica, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    a = await replicas(origin, None, "", name="a")
    b = await replicas(origin, None, "", name="b")
    status, posted = await api(client, a, "POST", "schedule", plan("only-a", "/a"))
    assert status == 200
    assert posted["persisted_in"].startswith("file ")
    assert (tmp_path / "a" / "schedule.json").exists()
    # Nothing is published for B to follow: its schedule is its configuration's.
    body = await schedule_of(client, b)
    assert body["sources"] == [] and body["origin"] == "config"
    async with client.get(control_url(a, "/metrics")) as response:
        text = await response.text()
    assert "warmproxy_fleet_schedule" not in text


async def test_the_fleet_schedule_metrics_follow_the_conventions_and_are_documented(
    origin: Origin,
    redis_url: str,
    redis_prefix: str,
    replicas: Replica,
    client: aiohttp.ClientSession,
) -> None:
    a = await replicas(origin, redis_url, redis_prefix, name="a")
    await eventually(lambda: sample(a, "warmproxy_fleet_schedule_connected") == 1)
    async with client.get(control_url(a, "/metrics")) as response:
        parsed = families(await response.text())
    fleet = [f for f in parsed if exposed_name(f).startswith("warmproxy_fleet_schedule_")]
    assert sorted(exposed_name(f) for f in fleet) == [
        "warmproxy_fleet_schedule_adopted_total",
        "warmproxy_fleet_schedule_connected",
        "warmproxy_fleet_schedule_reconnects_total",
        "warmproxy_fleet_schedule_refused_total",
        "warmproxy_fleet_schedule_revision",
    ]
    assert convention_problems(fleet) == []
    assert undocumented(fleet) == []


async def test_a_redis_restarted_empty_gets_the_schedule_back_for_later_replicas(
    origin: Origin,
    throwaway_redis: RedisServer,
    replicas: Replica,
    client: aiohttp.ClientSession,
) -> None:
    prefix = "fleet:"
    a = await replicas(origin, throwaway_redis.url, prefix, name="a")
    status, _ = await api(client, a, "POST", "schedule", plan("kept", "/k"))
    assert status == 200
    throwaway_redis.stop()
    await eventually(lambda: sample(a, "warmproxy_fleet_schedule_connected") == 0, within=20)
    throwaway_redis.start()  # a replacement instance: no schedule, no revision
    await eventually(lambda: sample(a, "warmproxy_fleet_schedule_connected") == 1, within=20)
    # A's copy was written again, so a replica started now is on it too.
    late = await replicas(origin, throwaway_redis.url, prefix, name="late")
    assert await names(client, late) == ["kept"]


async def test_a_schedule_saved_by_an_earlier_release_becomes_the_fleets(
    origin: Origin,
    redis_url: str,
    redis_prefix: str,
    replicas: Replica,
    client: aiohttp.ClientSession,
) -> None:
    keys = ScheduleKeys.under(redis_prefix)
    r = aioredis.from_url(redis_url)
    try:
        await r.set(keys.legacy, orjson.dumps(plan("before-upgrade", "/u")))
        a = await replicas(origin, redis_url, redis_prefix, name="a")
        assert await names(client, a) == ["before-upgrade"]
        assert int(await r.hget(keys.document, "revision") or 0) == 1
    finally:
        await r.aclose()
    b = await replicas(origin, redis_url, redis_prefix, name="b")
    assert await schedule_of(client, b) == await schedule_of(client, a)


async def test_a_replica_whose_configuration_refuses_the_fleets_schedule_keeps_its_own(
    origin: Origin,
    redis_url: str,
    redis_prefix: str,
    replicas: Replica,
    client: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    files = tmp_path / "lists"
    files.mkdir()
    (files / "paths.txt").write_text("/listed\n")
    # A may read posted file sources from a directory; B's configuration allows none.
    a = await replicas(
        origin,
        redis_url,
        redis_prefix,
        name="a",
        strategies={"proactive": {"file_source_dir": str(files)}},
    )
    b = await replicas(origin, redis_url, redis_prefix, name="b")
    status, _ = await api(client, a, "POST", "schedule", plan("urls", "/u"))
    assert status == 200
    await shows(client, b, ["urls"], within=5.0)
    listed = {
        "sources": [
            {"name": "listed", "source": {"type": "file", "path": str(files / "paths.txt")}}
        ]
    }
    status, body = await api(client, a, "POST", "schedule", listed)
    assert status == 200, body
    await eventually(lambda: sample(b, "warmproxy_fleet_schedule_refused_total") == 1)
    assert await names(client, b) == ["urls"]  # its schedule in force stays
    assert sample(b, "warmproxy_fleet_schedule_revision") == 1
    assert sample(a, "warmproxy_fleet_schedule_revision") == 2
