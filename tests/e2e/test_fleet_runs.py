"""One warm run, many workers, as an operator runs them: three ``warmproxy serve``
processes on one Redis (a server, and a local Redis Cluster) share a
10,000-path run started on one of them, one is killed with SIGKILL mid-run,
and the others finish it; a stop sent to any of them stops the run on all.

The origin is a small aiohttp server in the test, counting every fetch and
which replica made it (each replica's ``Via`` name).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
from aiohttp import web

from tests.e2e.test_cli import ROOT, free_port

TOKEN = "e2e-fleet-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
#: The run's size: every path of it warmed once across the three replicas.
PATHS = 10_000
PARALLELISM = 32
#: A warm fetch's timeout, and the origin's: items a killed replica held are
#: taken over once its fill locks (connect + read timeout) would have expired
#: (proxy.fleet_runs.reclaim_idle: 1.5 x 3 s here).
FILL_TIMEOUT = 2.0


@dataclass
class CountingOrigin:
    """Every path answers a small cacheable body after ``delay``; each fetch is
    counted by path and by the replica that made it (its Via name)."""

    delay: float = 0.0
    url: str = ""
    by_path: Counter[str] = field(default_factory=Counter)
    by_replica: Counter[str] = field(default_factory=Counter)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        self.by_path[request.path] += 1
        via = request.headers.get("Via", "")
        self.by_replica[via.rsplit(" ", 1)[-1]] += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        return web.Response(body=b"ok", headers={"Cache-Control": "public, max-age=3600"})

    @property
    def fetches(self) -> int:
        return sum(self.by_path.values())


@pytest.fixture
async def origin() -> AsyncIterator[CountingOrigin]:
    state = CountingOrigin(delay=0.002)
    runner = web.ServerRunner(web.Server(state.handle), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    state.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield state
    await runner.cleanup()


@dataclass
class Replica:
    """One ``warmproxy serve`` process."""

    name: str
    control: int
    listen: int
    stderr: Path
    process: subprocess.Popen[bytes]

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.control}/cache/warming"

    def terminate(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def stop(self) -> int:
        self.terminate()
        try:
            return self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


@dataclass(frozen=True)
class Store:
    """The Redis the fleet shares: its URL (a server's or a cluster's) and the test's prefix."""

    url: str
    prefix: str


@pytest.fixture(params=["server", "cluster"])
def store(request: pytest.FixtureRequest) -> Store:
    """One Redis server, and a local three-master Redis Cluster."""
    if request.param == "cluster":
        return Store(
            request.getfixturevalue("redis_cluster_url"),
            request.getfixturevalue("redis_cluster_prefix"),
        )
    return Store(request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix"))


@pytest.fixture
async def fleet(
    tmp_path: Path, origin: CountingOrigin, store: Store
) -> AsyncIterator[list[Replica]]:
    """Replicas a, b and c of one fleet (one Redis prefix), ready."""
    replicas = [start(tmp_path, name, origin.url, store.url, store.prefix) for name in "abc"]
    try:
        async with aiohttp.ClientSession() as session:
            for replica in replicas:
                await ready(session, replica)
        yield replicas
    finally:
        for replica in replicas:  # all at once: each drains for a moment
            replica.terminate()
        for replica in replicas:
            replica.stop()


def start(tmp_path: Path, name: str, origin: str, redis_url: str, prefix: str) -> Replica:
    control, listen = free_port(), free_port()
    stderr = tmp_path / f"{name}.stderr"
    command = [
        sys.executable, "-m", "proxy.cli", "serve",
        "--origin", origin,
        "--listen", f"127.0.0.1:{listen}",
        "--control", f"127.0.0.1:{control}",
        "--store", "redis",
        "--redis-url", redis_url,
        "--redis-prefix", prefix,
        "--log-format", "json",
        "--log-level", "warning",
    ]  # fmt: skip
    with stderr.open("ab") as err:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env={
                **os.environ,
                "WARMPROXY_CONTROL__TOKEN": TOKEN,
                "WARMPROXY_STATE__DIR": str(tmp_path / f"state-{name}"),
                "WARMPROXY_CACHE__REPLICA_NAME": name,
                "WARMPROXY_PROXY__VIA_NAME": name,
                "WARMPROXY_PROXY__PUBLIC_HOST": "shop.example",
                "WARMPROXY_EXECUTION__PARALLELISM": str(PARALLELISM),
                "WARMPROXY_EXECUTION__ADAPTIVE": "false",
                "WARMPROXY_EXECUTION__RATE_LIMIT": "0",
                "WARMPROXY_EXECUTION__TIMEOUT": str(FILL_TIMEOUT),
                "WARMPROXY_PROXY__CONNECT_TIMEOUT": "1",
                "WARMPROXY_PROXY__READ_TIMEOUT": str(FILL_TIMEOUT),
                "WARMPROXY_STRATEGIES__REACTIVE__AUTO_WARM": "false",
                "WARMPROXY_STRATEGIES__REACTIVE__REFRESH_AHEAD": "false",
            },
        )
    return Replica(name, control, listen, stderr, process)


async def ready(session: aiohttp.ClientSession, replica: Replica, within: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        assert replica.process.poll() is None, replica.stderr.read_text()[-2000:]
        try:
            async with session.get(f"http://127.0.0.1:{replica.control}/readyz") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        assert asyncio.get_running_loop().time() < deadline, f"{replica.name} not ready"
        await asyncio.sleep(0.05)


async def api(
    session: aiohttp.ClientSession, replica: Replica, method: str, path: str, body: Any = None
) -> Any:
    async with session.request(
        method, f"{replica.api}/{path}", json=body, headers=AUTH
    ) as response:
        assert response.status < 300, await response.text()
        return await response.json()


async def until(predicate: Any, within: float) -> None:
    """Poll ``predicate`` (sync or async) until it holds; fail after ``within`` seconds."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        held = predicate()
        if asyncio.iscoroutine(held):
            held = await held
        if held:
            return
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


def stored_paths(store: Store) -> int:
    """Entries stored under the run's paths (SCAN of the test's prefix, on
    every master of a cluster)."""
    escaped = "".join("\\" + c if c in "*?[]\\" else c for c in store.prefix)
    client: redis.Redis | redis.RedisCluster
    if store.url.startswith("redis+cluster://"):
        node = "redis://" + store.url.removeprefix("redis+cluster://")
        client = redis.RedisCluster.from_url(node, socket_timeout=5)
    else:
        client = redis.Redis.from_url(store.url, socket_timeout=5)
    try:
        return sum(1 for _ in client.scan_iter(match=f"{escaped}/p/*", count=1000))
    finally:
        client.close()


async def test_a_10000_path_run_is_shared_survives_a_killed_replica_and_fetches_each_once(
    fleet: list[Replica], origin: CountingOrigin, store: Store
) -> None:
    a, b, c = fleet
    paths = [f"/p/{n}" for n in range(PATHS)]
    async with aiohttp.ClientSession() as session:
        started = await api(session, a, "POST", "warm-key", {"urls": paths})
        run_id = started["run_id"]
        # Mid-run, with B at work: B dies without a word.
        await until(lambda: origin.by_replica["b"] >= 200 and origin.fetches >= PATHS // 5, 20)
        b.process.send_signal(signal.SIGKILL)
        b.process.wait(10)
        assert origin.fetches < PATHS, "the run ended before B was killed: make it longer"

        body: dict[str, Any] = {}

        async def ended() -> bool:
            nonlocal body
            body = await api(session, c, "GET", "status")
            return bool(body["run_id"] == run_id and body["status"] != "running")

        await until(ended, 40)  # about 10 s unloaded; a loaded machine is slower
        assert body["status"] == "completed", body
        assert body["progress"] == {
            "total_items": PATHS,
            "completed": PATHS,
            "success": PATHS,
            "failed": 0,
            "percentage": 100.0,
        }, body["errors"][:5]

    # Every path fetched; twice only what B was fetching when it died.
    assert set(origin.by_path) == set(paths)
    twice = sum(n - 1 for n in origin.by_path.values())
    assert twice <= PARALLELISM, twice
    assert all(origin.by_replica[name] > 0 for name in "abc"), origin.by_replica
    assert stored_paths(store) == PATHS


async def test_stop_sent_to_one_replica_stops_the_run_on_all(
    fleet: list[Replica], origin: CountingOrigin
) -> None:
    a, b, _ = fleet
    origin.delay = 0.05  # a run that lasts
    paths = [f"/p/{n}" for n in range(2000)]
    async with aiohttp.ClientSession() as session:
        started = await api(session, a, "POST", "warm-key", {"urls": paths})
        await until(lambda: all(origin.by_replica[name] > 0 for name in "abc"), 10)
        stopped = await api(session, b, "POST", "stop")
        assert stopped["stopped"] == [started["run_id"]]
        for replica in fleet:
            status = await api(session, replica, "GET", "status")
            assert status["status"] == "stopped"
            assert status["run_id"] == started["run_id"]
        # Within a poll every replica has dropped what it held.
        await asyncio.sleep(1.5)
        fetched = origin.fetches
        await asyncio.sleep(1.0)
        assert origin.fetches == fetched < len(paths)
