"""The fleet on a Redis Cluster: the store, the tag index, the fill lock, the
L1 invalidations, the counts and claims, a warm run's stream, the schedule and
the statistics work as on one server; a slot migrating under load (ASK, then
MOVED), a master killed under load and a cluster that hangs at start cost no
client an error, and caching resumes by itself.

The clusters are local ``redis-server --cluster-enabled yes`` processes
(tests/redis_cluster.py): one of 3 masters shared by the session, and, for
the tests that change the topology, a cluster of their own.  The store's
contract itself runs on the cluster in tests/proxy/store/test_contract.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.client import PubSub
from redis.crc import key_slot

from proxy import fleet_counts
from proxy.app import Warmproxy
from proxy.config import ConfigError, load_settings
from proxy.fill_lock import WaitResult
from proxy.redis_client import REDIS_ERRORS, Subscriptions, is_cluster_url, redis_client
from tests.e2e.test_cli import ROOT, free_port, wait_http
from tests.proxy.conftest import Origin, ProxyFactory, control_url, eventually, key, url
from tests.redis_cluster import LocalCluster, start_cluster

PUBLIC = {"public_host": "shop.example"}
CACHEABLE = {"Cache-Control": "public, max-age=300"}
TOKEN = "cluster-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def cluster_cache(cluster_url: str, prefix: str, **more: Any) -> dict[str, Any]:
    return {"store": "redis", "redis_url": cluster_url, "redis_prefix": prefix, **more}


async def get(client: aiohttp.ClientSession, proxy: Warmproxy, path: str) -> tuple[int, bytes, str]:
    async with client.get(url(proxy, path)) as response:
        return response.status, await response.read(), response.headers.get("Cache-Status", "")


def is_hit(cache_status: str) -> bool:
    return cache_status.startswith("warmproxy; hit") and "stale" not in cache_status


@pytest.fixture
async def raw(redis_cluster_url: str) -> AsyncIterator[RedisCluster]:
    """A cluster client of the test's own, to look at what the proxies wrote."""
    client = redis_client(redis_cluster_url, socket_timeout=5, connect_timeout=5)
    assert isinstance(client, RedisCluster)
    yield client
    await client.aclose()


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """A 3-master cluster of this test alone (it changes the topology)."""
    cluster = start_cluster(tmp_path / "cluster")
    try:
        yield cluster
    finally:
        cluster.stop()


# ----------------------------------------------------------------- config


async def test_a_cluster_url_is_configured_and_bad_ones_are_refused_naming_the_key() -> None:
    base = {"proxy": {"origin": "http://127.0.0.1:9"}}
    for good in ("redis+cluster://10.0.0.1:7000", "rediss+cluster://u:pw@redis.svc:6380/0"):
        settings = load_settings(None, {**base, "cache": {"store": "redis", "redis_url": good}})
        assert is_cluster_url(settings.cache.redis_url)
        # Built without connecting (nothing listens there).
        cluster = redis_client(good, socket_timeout=1, connect_timeout=1)
        assert isinstance(cluster, RedisCluster)
        await cluster.aclose()
    server = redis_client("redis://127.0.0.1:6379/0", socket_timeout=1, connect_timeout=1)
    assert isinstance(server, Redis)
    await server.aclose()
    for bad, why in [
        ("redis+cluster://10.0.0.1:7000/2", "only database 0"),
        ("redis+cluster:///var/run/redis.sock", "host:port"),
        ("unix+cluster:///var/run/redis.sock", "redis+cluster://"),
        ("http://u:secret@10.0.0.1", "redis+cluster://"),
    ]:
        with pytest.raises(ConfigError) as caught:
            load_settings(None, {**base, "cache": {"redis_url": bad}})
        message = str(caught.value)
        assert "cache.redis_url" in message and why in message, message
        assert "secret" not in message


# ---------------------------------------------------- the fleet on a cluster


async def test_tagged_entries_over_the_masters_are_purged_by_tag_and_glob_on_every_replica(
    redis_cluster_url: str,
    redis_cluster_prefix: str,
    raw: RedisCluster,
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
) -> None:
    cache = cluster_cache(redis_cluster_url, redis_cluster_prefix, l1_ttl=30)
    a = await make_proxy(origin.url, cache={**cache, "replica_name": "a"}, proxy=PUBLIC)
    b = await make_proxy(origin.url, cache={**cache, "replica_name": "b"}, proxy=PUBLIC)
    paths = [f"/p/{i}" for i in range(12)]
    for path in paths:
        tag = "even" if int(path.rsplit("/", 1)[1]) % 2 == 0 else "odd"
        origin.set(path, headers={**CACHEABLE, "Surrogate-Key": f"all {tag}"}, body=path.encode())
        assert (await get(client, a, path))[0] == 200
        # b holds it in its L1: only an invalidation from a makes it let go.
        await get(client, b, path)
        assert is_hit((await get(client, b, path))[2])
        assert b.cache.peek(key(b, path)) is not None
    # The entries spread over the masters (a slot each), the tag sets apart.
    await raw.initialize()
    owners = {raw.get_node_from_key(redis_cluster_prefix + key(a, p)) for p in paths}
    assert len(owners) >= 2, owners
    assert await raw.exists(redis_cluster_prefix + "tag:all") == 1

    async with client.post(
        control_url(a, "/cache/warming/purge"), json={"tag": "even"}
    ) as response:
        assert response.status == 200, await response.text()
        assert (await response.json())["purged"] == 6
    async with client.post(
        control_url(a, "/cache/warming/purge"), json={"pattern": "/p/1*"}
    ) as response:
        assert (await response.json())["purged"] == 2  # /p/1 and /p/11; /p/10 went with "even"
    gone = {p for p in paths if int(p.rsplit("/", 1)[1]) % 2 == 0} | {"/p/1", "/p/11"}

    async def b_let_go() -> bool:
        return all(b.cache.peek(key(b, p)) is None for p in gone)

    await eventually(b_let_go)
    before = len(origin.seen)
    for path in paths:
        status, body, cache_status = await get(client, b, path)
        assert (status, body) == (200, path.encode())
        assert is_hit(cache_status) == (path not in gone), (path, cache_status)
    assert len(origin.seen) == before + len(gone)


async def test_three_replicas_fetch_a_key_once_through_the_cluster_fill_lock(
    redis_cluster_url: str,
    redis_cluster_prefix: str,
    origin: Origin,
    make_proxy: ProxyFactory,
) -> None:
    origin.set("/hot", headers=CACHEABLE, body=b"hot", delay=0.2)
    proxies = [
        await make_proxy(
            origin.url, cache=cluster_cache(redis_cluster_url, redis_cluster_prefix), proxy=PUBLIC
        )
        for _ in range(3)
    ]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as many:
        answers = await asyncio.gather(*(get(many, p, "/hot") for _ in range(50) for p in proxies))
    assert {(status, body) for status, body, _ in answers} == {(200, b"hot")}
    assert origin.count("/hot") == 1
    collapsed = sum(
        p.metrics.registry.get_sample_value(
            "warmproxy_fill_lock_waits_total", {"result": WaitResult.COLLAPSED.value}
        )
        or 0
        for p in proxies
    )
    assert collapsed == 2


async def test_counts_claims_heartbeats_and_stats_are_shared_through_the_cluster(
    redis_cluster_url: str,
    redis_cluster_prefix: str,
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fleet_counts, "FLUSH_INTERVAL", 0.1)
    origin.set("/a", headers=CACHEABLE)
    cache = cluster_cache(redis_cluster_url, redis_cluster_prefix, l1_ttl=0)
    a, b = [
        await make_proxy(origin.url, cache={**cache, "replica_name": n}, proxy=PUBLIC) for n in "ab"
    ]
    for _ in range(4):
        assert (await get(client, a, "/a"))[0] == 200

    async def b_sees_the_hot_key() -> bool:
        async with client.get(
            control_url(b, "/cache/warming/hot-data"), params={"window": "60"}
        ) as response:
            hot = (await response.json())["hot_keys"]
        return any(h["url"] == "/a" and h["count"] == 4 and h["source"] == "fleet" for h in hot)

    await eventually(b_sees_the_hot_key)

    # A warm decision is claimed by one replica of the fleet.
    decisions = [("reactive", "/a", time.time() + 60), ("refresh-ahead", "/b", time.time() + 9)]
    assert await a.fleet_counts.claim(decisions) == [True, True]
    assert await b.fleet_counts.claim(decisions) == [False, False]

    # /status on b lists a (heartbeats), /stats on b adds a's figures up
    # (one transaction over keys of one slot).
    async with client.get(control_url(b, "/cache/warming/status")) as response:
        listed = {r["id"] for r in (await response.json())["replicas"]}
    assert listed == {"a", "b"}
    assert await a.fleet_stats.write()
    async with client.get(control_url(b, "/cache/warming/stats")) as response:
        stats = await response.json()
    assert stats["fleet"] == {"scope": "fleet", "replicas": 2, "unavailable": None}
    assert set(stats["replicas"]) == {"a", "b"}


async def test_a_warm_run_started_on_one_replica_is_worked_by_all_through_the_cluster(
    redis_cluster_url: str,
    redis_cluster_prefix: str,
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
) -> None:
    paths = [f"/run/{i}" for i in range(300)]
    for path in paths:
        origin.set(path, headers=CACHEABLE, body=b"ok", delay=0.01)
    replicas = [
        await make_proxy(
            origin.url,
            cache=cluster_cache(
                redis_cluster_url, redis_cluster_prefix, replica_name=name, l1_max_bytes=0
            ),
            proxy=PUBLIC,
            execution={"adaptive": False, "rate_limit": 0, "retry_attempts": 0, "parallelism": 8},
            # Nothing warmed but the run.
            strategies={"reactive": {"refresh_ahead": False, "auto_warm": False}},
        )
        for name in "abc"
    ]
    a, b, c = replicas
    async with client.post(
        control_url(a, "/cache/warming/warm-key"), json={"urls": paths}
    ) as response:
        assert response.status < 300, await response.text()
        run_id = (await response.json())["run_id"]

    progress: dict[str, Any] = {}

    async def ended_on_c() -> bool:
        nonlocal progress
        async with client.get(
            control_url(c, "/cache/warming/progress"), params={"run_id": run_id}
        ) as response:
            progress = await response.json()
        return bool(progress["status"] != "running")

    await eventually(ended_on_c, within=20)
    assert progress["status"] == "completed", progress
    assert progress["progress"]["success"] == 300
    # Each path fetched once across the fleet, every replica taking a share.
    assert sorted(s.path for s in origin.seen) == sorted(paths)
    shares = [sum(p.warmer.executor.counters.warmed.values()) for p in replicas]
    assert sum(shares) == 300 and min(shares) > 0, shares
    assert is_hit((await get(client, b, paths[17]))[2])


async def test_a_schedule_posted_on_one_replica_is_in_force_on_another(
    redis_cluster_url: str,
    redis_cluster_prefix: str,
    origin: Origin,
    client: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    started: list[Warmproxy] = []
    try:
        for name in "ab":
            proxy = Warmproxy(
                load_settings(
                    None,
                    {
                        "proxy": {"origin": origin.url, "listen": "127.0.0.1:0", **PUBLIC},
                        "control": {"listen": "127.0.0.1:0", "token": TOKEN},
                        "state": {"dir": str(tmp_path / name)},
                        "cache": cluster_cache(redis_cluster_url, redis_cluster_prefix),
                    },
                )
            )
            await proxy.start()
            started.append(proxy)
        a, b = started
        plan = {
            "sources": [
                {
                    "name": "nightly",
                    "schedule": "0 3 * * *",
                    "source": {"type": "urls", "paths": ["/x"]},
                }
            ]
        }
        async with client.post(
            control_url(a, "/cache/warming/schedule"), json=plan, headers=AUTH
        ) as response:
            assert response.status == 200, await response.text()

        async def b_has_it() -> bool:
            async with client.get(
                control_url(b, "/cache/warming/schedule"), headers=AUTH
            ) as response:
                body = await response.json()
            return [s["name"] for s in body["sources"]] == ["nightly"]

        # Within a second on an idle machine; loose for a loaded one.
        await eventually(b_has_it, within=5)
        assert b.metrics.registry.get_sample_value("warmproxy_fleet_schedule_adopted_total") == 1
    finally:
        for proxy in started:
            await proxy.stop()


async def test_warmproxy_serve_on_a_cluster_answers_cached_hits(
    redis_cluster_url: str,
    redis_cluster_prefix: str,
    raw: RedisCluster,
    origin: Origin,
    tmp_path: Path,
) -> None:
    listen, control = free_port(), free_port()
    stderr = tmp_path / "stderr"
    origin.set("/served", headers=CACHEABLE, body=b"from the origin")
    with stderr.open("wb") as err:
        # The origin runs in this event loop: the process is awaited, never waited for.
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "proxy.cli",
            "serve",
            "--origin",
            origin.url,
            "--listen",
            f"127.0.0.1:{listen}",
            "--control",
            f"127.0.0.1:{control}",
            "--store",
            "redis",
            "--redis-url",
            redis_cluster_url,
            "--redis-prefix",
            redis_cluster_prefix,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env={**os.environ, "WARMPROXY_STATE__DIR": str(tmp_path / "state")},
        )
    try:
        await asyncio.to_thread(wait_http, f"http://127.0.0.1:{control}/readyz")
        async with aiohttp.ClientSession() as client:
            statuses = []
            for _ in range(3):
                async with client.get(f"http://127.0.0.1:{listen}/served") as response:
                    assert response.status == 200
                    assert await response.read() == b"from the origin"
                    statuses.append(response.headers["Cache-Status"])
        assert "fwd=" in statuses[0] and "stored" in statuses[0]
        assert all(is_hit(s) for s in statuses[1:]), statuses
        assert origin.count("/served") == 1
        assert await raw.exists(redis_cluster_prefix + "/served") == 1
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(15):
                assert await process.wait() == 0, stderr.read_text()
        except TimeoutError:
            process.kill()
            await process.wait()
            raise


async def test_a_proxy_started_while_the_cluster_hangs_serves_and_caches_once_it_answers(
    own_cluster: LocalCluster,
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
) -> None:
    origin.set("/early", headers=CACHEABLE, body=b"early")
    own_cluster.pause()
    try:
        proxy = await make_proxy(
            origin.url, cache=cluster_cache(own_cluster.url, "wptest:late:"), proxy=PUBLIC
        )
        status, body, cache_status = await get(client, proxy, "/early")
        assert (status, body) == (200, b"early") and "stored" not in cache_status
        async with client.get(control_url(proxy, "/readyz")) as response:
            assert response.status == 200
            assert (await response.json())["store_healthy"] is False
    finally:
        own_cluster.resume()

    async def cached() -> bool:
        return is_hit((await get(client, proxy, "/early"))[2])

    await eventually(cached, within=15)


# ------------------------------------------------- topology changes under load


class Load:
    """Clients asking ``paths`` through ``proxy`` without a pause, noting every answer."""

    def __init__(self, proxy: Warmproxy, paths: list[str], workers: int = 4) -> None:
        self.proxy = proxy
        self.paths = paths
        self.workers = workers
        self.answers: list[tuple[str, int, bytes, str]] = []
        self.errors: list[str] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Load:
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        self._tasks = [asyncio.create_task(self._run(i)) for i in range(self.workers)]
        return self

    async def _run(self, offset: int) -> None:
        assert self._session is not None
        i = offset
        while not self._stop.is_set():
            path = self.paths[i % len(self.paths)]
            i += 1
            try:
                status, body, cache_status = await get(self._session, self.proxy, path)
            except (aiohttp.ClientError, OSError) as exc:
                self.errors.append(f"{path}: {exc!r}")
                continue
            self.answers.append((path, status, body, cache_status))

    async def more(self, count: int, within: float = 10.0) -> list[tuple[str, int, bytes, str]]:
        """Wait for ``count`` more answers; those answers."""
        start = len(self.answers)
        await eventually(lambda: len(self.answers) >= start + count, within=within)
        return self.answers[start:]

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        assert self._session is not None
        await self._session.close()


async def next_message(pubsub: PubSub, within: float = 5.0) -> bytes:
    """The data of the next message published on ``pubsub``'s channels."""
    deadline = asyncio.get_running_loop().time() + within
    while asyncio.get_running_loop().time() < deadline:
        # None also for a subscribe confirmation (ignored): read on.
        message = await pubsub.get_message(timeout=0.5)
        if message is not None and message["type"] == "message":
            data: bytes = message["data"]
            return data
    raise AssertionError(f"no message within {within} s")


def path_in_slot(prefix: str, slot: int, stem: str) -> str:
    """A path whose cache key (``prefix + path``) hashes to ``slot``."""
    for i in range(1_000_000):
        path = f"{stem}{i}"
        if key_slot((prefix + path).encode()) == slot:
            return path
    raise AssertionError(f"no path for slot {slot}")


async def test_a_slot_migrating_under_load_is_followed_through_ask_and_moved(
    own_cluster: LocalCluster,
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
) -> None:
    prefix = "wptest:migrate:"
    # No L1: every request reads the entry from the cluster.  Timeouts far
    # above a loaded machine's stalls: a miss here means a redirection failed.
    proxy = await make_proxy(
        origin.url,
        cache=cluster_cache(own_cluster.url, prefix, l1_ttl=0, redis_timeout=5),
        proxy=PUBLIC,
    )
    slot = key_slot(f"{prefix}/moving".encode())
    late = path_in_slot(prefix, slot, "/late-")  # first asked while the slot migrates
    paths = ["/moving", "/still-0", "/still-1", "/still-2", late]
    for path in paths:
        origin.set(path, headers=CACHEABLE, body=path.encode())
    for path in paths[:-1]:
        await get(client, proxy, path)
    source = own_cluster.owner(slot)
    target = next(n for n in own_cluster.nodes if n is not source)

    async with Load(proxy, paths[:-1]) as load:
        await load.more(50)
        own_cluster.begin_migration(slot, source, target)
        asking = await load.more(50)  # the key still on the source
        assert own_cluster.move_keys(slot, source, target) == 1
        asked = await load.more(100)  # the source answers ASK for it
        # A fill while the slot migrates: stored on the target, then a hit.
        assert "stored" in (await get(client, proxy, late))[2]
        assert is_hit((await get(client, proxy, late))[2])
        own_cluster.finish_migration(slot, target)
        moved = await load.more(100)  # MOVED, then the new owner directly

    assert load.errors == []
    assert all(status == 200 and body == p.encode() for p, status, body, _ in load.answers)
    for phase in (asking, asked, moved):
        assert any(p == "/moving" for p, *_ in phase)
        assert all(is_hit(cs) for *_, cs in phase), [cs for *_, cs in phase if not is_hit(cs)]
    # Every answer came from the cache: no redirection fell back to the origin.
    assert origin.count("/moving") == 1
    assert own_cluster.owner(slot) is target


async def test_a_master_killed_under_load_costs_no_client_an_error_and_caching_resumes(
    tmp_path: Path, origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    async with contextlib.AsyncExitStack() as closing:
        # A dead master is failed over after a second (the default 15 s and
        # the fixture's 5 s would make a slow test).
        cluster = closing.enter_context(
            start_cluster(tmp_path / "cluster", replicas=1, node_timeout_ms=1000)
        )
        prefix = "wptest:failover:"
        proxy = await make_proxy(
            origin.url, cache=cluster_cache(cluster.url, prefix, l1_ttl=0), proxy=PUBLIC
        )
        paths = [f"/f/{i}" for i in range(12)]
        for path in paths:
            origin.set(path, headers=CACHEABLE, body=path.encode())
            await get(client, proxy, path)
        slot = key_slot(f"{prefix}/f/0".encode())
        victim = cluster.owner(slot)
        replica = cluster.replica_of(victim)
        loop = asyncio.get_running_loop()
        # A follower (L1 invalidations, the schedule) subscribed on the victim.
        publisher = redis_client(cluster.url, socket_timeout=1, connect_timeout=1)
        subscriptions = Subscriptions(publisher, cluster.url, timeout=1)
        closing.push_async_callback(publisher.aclose)
        closing.push_async_callback(subscriptions.aclose)
        # Each new PubSub goes to the next node the client lists; a round can
        # miss one when the client reads the topology again in between.
        for _ in range(3 * len(cluster.nodes)):
            pubsub = await subscriptions.pubsub()
            await pubsub.subscribe("wptest:channel")
            if pubsub.connection is not None and pubsub.connection.port == victim.port:
                break
        else:
            raise AssertionError("the subscriptions never went to the victim")

        async with Load(proxy, paths) as load:
            await load.more(50)
            killed_at = loop.time()
            cluster.kill(victim)
            # The follower learns at once that its subscription is gone...
            with pytest.raises(REDIS_ERRORS):
                for _ in range(10):
                    await pubsub.get_message(timeout=0.5)
            await pubsub.aclose()

            def promoted() -> bool:
                return cluster.owner(slot) is replica and cluster.cluster_ok()

            await eventually(promoted, within=20)
            promoted_after = loop.time() - killed_at
            # ... and subscribes again on another node, where what is
            # published (on any node) reaches it.
            pubsub = await subscriptions.pubsub()
            await pubsub.subscribe("wptest:channel")
            assert pubsub.connection is not None and pubsub.connection.port != victim.port
            await publisher.publish("wptest:channel", b"drop /f/0")
            assert await next_message(pubsub) == b"drop /f/0"
            await pubsub.aclose()
            # Caching resumes by itself: a new entry in the promoted node's
            # slots is stored, then served from the cache.
            fresh = path_in_slot(prefix, slot, "/after-")
            origin.set(fresh, headers=CACHEABLE, body=b"after")

            async def cached_again() -> bool:
                return is_hit((await get(client, proxy, fresh))[2])

            await eventually(cached_again, within=15)
            resumed_after = loop.time() - killed_at
            after = await load.more(50)

        assert load.errors == []
        bad = [(p, s) for p, s, b, _ in load.answers if s != 200 or b != p.encode()]
        assert bad == [], bad[:5]
        # The load's keys were stored again as the store came back: hits again.
        assert sum(is_hit(cs) for *_, cs in after) > len(after) // 2
        passed_through = sum(not is_hit(cs) for *_, cs in load.answers)
        print(
            f"failover: replica promoted {promoted_after:.1f} s after the kill, caching "
            f"again {resumed_after:.1f} s after the kill; {passed_through} of "
            f"{len(load.answers)} answers passed through"
        )
