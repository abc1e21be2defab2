"""Duplicate origin fetches across replicas sharing one Redis: the fleet's fill lock.

For 1, 2 and 3 replicas (in-process proxies on loopback ports, one Redis prefix,
one slow origin counting its requests), with ``cache.fleet_fill_lock`` on and off:

1. **Misses.** N concurrent client GETs over K cold keys, spread round-robin
   over the replicas (every replica asks for every key).  Printed: origin
   fetches, duplicates (fetches beyond one per key), and the time until every
   answer was in.
2. **Warming.** The same list of W cold paths warmed on every replica at
   once through its control API (``warm-key``).  Printed: origin fetches,
   duplicates, and warm items per second summed over the replicas' runs.
3. **One fleet run.** 1, 2 and 3 ``warmproxy serve`` processes (not
   in-process: replicas sharing one event loop would share one core): one
   run of R cold paths started on the first (``warm-key``), worked by every
   replica through the run's Redis Stream, under the fleet's rate limit
   (``--run-rate``, one bucket in Redis for all replicas).  Each replica
   fetches at most ``--run-parallelism`` paths at once from an origin
   answering after ``--run-delay``, so one replica alone is held to about
   parallelism / delay paths per second, and the fleet to the rate limit.
   Printed: seconds until the run was completed (as the last replica
   reports it), paths per second, duplicate fetches, and each replica's
   share (the origin tells them apart by their ``Via`` name).

    .venv/bin/python bench/fleet.py [--requests 300] [--keys 10] [--delay 0.2]
        [--warm-paths 200] [--run-paths 10000] [--run-rate 250]
        [--run-delay 0.05] [--run-parallelism 5] [--run-only] [--redis-url URL]

Redis comes from ``--redis-url``, else ``$REDIS_URL``, else
``redis://127.0.0.1:6379/15``; if nothing answers there and ``redis-server`` is
installed, a throw-away one is started on a free port.  Every scenario writes
under a prefix of its own (``warmproxy-bench-fleet:<uuid>:``) and deletes only
those keys afterwards.  State directories live in a temporary directory.
It asserts nothing: it prints what it measured.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import redis
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from proxy.app import Warmproxy
from proxy.config import load_settings

DEFAULT_REDIS = "redis://127.0.0.1:6379/15"
ROOT = Path(__file__).resolve().parents[1]
PREFIX = "warmproxy-bench-fleet:"


@dataclass
class Origin:
    """A slow origin: every path answers after ``delay`` seconds, counted."""

    delay: float
    fetches: int = 0
    url: str = ""
    by_replica: Counter[str] = field(default_factory=Counter)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        self.fetches += 1
        self.by_replica[request.headers.get("Via", "").rsplit(" ", 1)[-1]] += 1
        await asyncio.sleep(self.delay)
        return web.Response(body=b"x" * 1024, headers={"Cache-Control": "public, max-age=3600"})


@asynccontextmanager
async def serving(origin: Origin) -> AsyncIterator[None]:
    runner = web.ServerRunner(web.Server(origin.handle), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    origin.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield
    finally:
        await runner.cleanup()


@asynccontextmanager
async def fleet(
    origin: Origin,
    count: int,
    redis_url: str,
    lock: bool,
    state: Path,
) -> AsyncIterator[list[Warmproxy]]:
    """``count`` replicas on one fresh prefix, stopped and cleaned up after."""
    prefix = f"{PREFIX}{uuid.uuid4().hex}:"
    proxies: list[Warmproxy] = []
    try:
        for n in range(count):
            overrides: dict[str, dict[str, Any]] = {
                "proxy": {
                    "origin": origin.url,
                    "listen": "127.0.0.1:0",
                    "public_host": "bench.example",
                },
                "control": {"listen": "127.0.0.1:0"},
                "cache": {
                    "store": "redis",
                    "redis_url": redis_url,
                    "redis_prefix": prefix,
                    "fleet_fill_lock": lock,
                },
                "state": {"dir": str(state / f"{prefix.rstrip(':')}-{n}")},
                "execution": {"parallelism": 20, "adaptive": False},
            }
            proxy = Warmproxy(load_settings(None, overrides))
            await proxy.start()
            proxies.append(proxy)
        yield proxies
    finally:
        for proxy in proxies:
            await proxy.stop()
        delete_prefix(redis_url, prefix)


async def misses(
    session: aiohttp.ClientSession, proxies: list[Warmproxy], requests: int, keys: int
) -> float:
    """Seconds until ``requests`` concurrent GETs over ``keys`` cold keys were answered."""

    async def get(n: int) -> None:
        proxy = proxies[n % len(proxies)]
        path = f"/miss/{(n // len(proxies)) % keys}"
        async with session.get(f"http://127.0.0.1:{proxy.proxy_port}{path}") as response:
            await response.read()
            if response.status != 200:
                raise RuntimeError(f"{path}: status {response.status}")

    started = time.perf_counter()
    await asyncio.gather(*(get(n) for n in range(requests)))
    return time.perf_counter() - started


async def warm_everywhere(
    session: aiohttp.ClientSession, proxies: list[Warmproxy], paths: int
) -> float:
    """Warm items per second, summed over the replicas each warming ``paths`` paths."""
    urls = [f"/warm/{n}" for n in range(paths)]

    async def run(proxy: Warmproxy) -> float:
        base = f"http://127.0.0.1:{proxy.control_port}/cache/warming"
        async with session.post(
            f"{base}/warm-key", json={"urls": urls, "priority": "high"}
        ) as response:
            run_id = (await response.json())["run_id"]
        while True:
            async with session.get(f"{base}/progress", params={"run_id": run_id}) as response:
                progress = await response.json()
            if progress["status"] != "running":
                return float(progress["performance"]["items_per_second"])
            await asyncio.sleep(0.05)

    rates = await asyncio.gather(*(run(p) for p in proxies))
    return sum(rates)


@asynccontextmanager
async def served_fleet(
    origin: Origin, count: int, redis_url: str, args: argparse.Namespace, state: Path
) -> AsyncIterator[list[int]]:
    """``count`` ``warmproxy serve`` processes on one fresh prefix (replicas
    r0, r1, ...), ready; yields their control ports; stopped and cleaned up after."""
    prefix = f"{PREFIX}{uuid.uuid4().hex}:"
    processes: list[subprocess.Popen[bytes]] = []
    ports: list[int] = []
    try:
        for n in range(count):
            ports.append(free_port())
            processes.append(spawn_replica(f"r{n}", ports[-1], origin, redis_url, prefix, args,
                                           state / f"{prefix.rstrip(':')}-{n}"))  # fmt: skip
        async with aiohttp.ClientSession() as session:
            for port, process in zip(ports, processes, strict=True):
                await _ready(session, port, process)
        yield ports
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
        delete_prefix(redis_url, prefix)


def spawn_replica(
    name: str,
    control: int,
    origin: Origin,
    redis_url: str,
    prefix: str,
    args: argparse.Namespace,
    state: Path,
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "WARMPROXY_STATE__DIR": str(state),
        "WARMPROXY_CACHE__REPLICA_NAME": name,
        "WARMPROXY_PROXY__VIA_NAME": name,
        "WARMPROXY_EXECUTION__PARALLELISM": str(args.run_parallelism),
        "WARMPROXY_EXECUTION__ADAPTIVE": "false",
        "WARMPROXY_EXECUTION__RATE_LIMIT": str(args.run_rate),
        "WARMPROXY_STRATEGIES__REACTIVE__AUTO_WARM": "false",
        "WARMPROXY_STRATEGIES__REACTIVE__REFRESH_AHEAD": "false",
    }
    command = [
        sys.executable, "-m", "proxy.cli", "serve", "--origin", origin.url,
        "--listen", f"127.0.0.1:{free_port()}", "--control", f"127.0.0.1:{control}",
        "--store", "redis", "--redis-url", redis_url, "--redis-prefix", prefix,
        "--log-level", "warning",
    ]  # fmt: skip
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


async def _ready(
    session: aiohttp.ClientSession, port: int, process: subprocess.Popen[bytes]
) -> None:
    deadline = time.monotonic() + 30
    while True:
        if process.poll() is not None:
            raise SystemExit("a warmproxy serve process exited at start")
        try:
            async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("a warmproxy serve process did not get ready in 30 s")
        await asyncio.sleep(0.1)


async def fleet_run(session: aiohttp.ClientSession, ports: list[int], paths: int) -> float:
    """Seconds until one run of ``paths`` paths started on the first replica
    was completed (as the last replica reports it)."""
    urls = [f"/run/{n}" for n in range(paths)]
    first = f"http://127.0.0.1:{ports[0]}/cache/warming"
    last = f"http://127.0.0.1:{ports[-1]}/cache/warming"
    started = time.perf_counter()
    async with session.post(f"{first}/warm-key", json={"urls": urls}) as response:
        run_id = (await response.json())["run_id"]
    while True:
        async with session.get(f"{last}/progress", params={"run_id": run_id}) as response:
            progress = await response.json()
        if progress["status"] != "running":
            break
        await asyncio.sleep(0.05)
    seconds = time.perf_counter() - started
    if progress["progress"]["success"] != paths:
        raise RuntimeError(f"run {run_id} ended {progress['status']}: {progress['progress']}")
    return seconds


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def delete_prefix(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        batch = list(client.scan_iter(match=prefix + "*", count=500))
        for start in range(0, len(batch), 500):
            client.unlink(*batch[start : start + 500])
    finally:
        client.close()


def answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


@contextmanager
def some_redis(url: str | None) -> Iterator[str]:
    """The Redis to use: the given or default one if it answers, else a throw-away one."""
    url = url or os.environ.get("REDIS_URL") or DEFAULT_REDIS
    if answers(url):
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit(f"no Redis at {url} and no redis-server to start")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as workdir:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", workdir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        local = f"redis://127.0.0.1:{port}/0"
        try:
            deadline = time.monotonic() + 10
            while not answers(local):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("the throw-away redis-server did not start")
                time.sleep(0.05)
            yield local
        finally:
            proc.terminate()
            proc.wait(5)


async def measure(args: argparse.Namespace, redis_url: str) -> None:
    if not args.run_only:
        print(
            f"{args.requests} concurrent misses over {args.keys} keys; "
            f"{args.warm_paths} paths warmed on every replica; origin {args.delay * 1000:.0f} ms"
        )
        print(
            f"{'replicas':>8} {'lock':>5} | {'fetches':>7} {'dupes':>6} {'seconds':>8} | "
            f"{'warm fetches':>12} {'dupes':>6} {'items/s, all':>12}"
        )
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        with tempfile.TemporaryDirectory() as state:
            for count in () if args.run_only else (1, 2, 3):
                for lock in (True, False):
                    origin = Origin(args.delay)
                    async with (
                        serving(origin),
                        fleet(origin, count, redis_url, lock, Path(state)) as proxies,
                    ):
                        seconds = await misses(session, proxies, args.requests, args.keys)
                        fetched = origin.fetches
                        rate = await warm_everywhere(session, proxies, args.warm_paths)
                        warm_fetched = origin.fetches - fetched
                    print(
                        f"{count:>8} {'on' if lock else 'off':>5} | {fetched:>7} "
                        f"{fetched - args.keys:>6} {seconds:>8.2f} | {warm_fetched:>12} "
                        f"{warm_fetched - args.warm_paths:>6} {rate:>12.0f}"
                    )
            print()
            alone = args.run_parallelism / args.run_delay
            print(
                f"one run of {args.run_paths} paths started on one replica; fleet rate limit "
                f"{args.run_rate:g}/s; origin {args.run_delay * 1000:.0f} ms; parallelism "
                f"{args.run_parallelism} per replica (one alone: at most {alone:.0f} paths/s)"
            )
            print(
                f"{'replicas':>8} | {'seconds':>8} {'paths/s':>8} {'fetches':>8} {'dupes':>6} | "
                "each replica's share"
            )
            for count in (1, 2, 3):
                origin = Origin(args.run_delay)
                async with (
                    serving(origin),
                    served_fleet(origin, count, redis_url, args, Path(state)) as ports,
                ):
                    seconds = await fleet_run(session, ports, args.run_paths)
                shares = [origin.by_replica[f"r{n}"] for n in range(count)]
                print(
                    f"{count:>8} | {seconds:>8.2f} {args.run_paths / seconds:>8.0f} "
                    f"{origin.fetches:>8} {origin.fetches - args.run_paths:>6} | "
                    + " ".join(str(n) for n in shares)
                )


def main() -> None:
    parser = argparse.ArgumentParser(description="Duplicate origin fetches across replicas.")
    parser.add_argument("--requests", type=int, default=300, help="concurrent misses")
    parser.add_argument("--keys", type=int, default=10, help="cold keys they spread over")
    parser.add_argument("--delay", type=float, default=0.2, help="origin seconds per fetch")
    parser.add_argument("--warm-paths", type=int, default=200, help="paths each replica warms")
    parser.add_argument("--run-paths", type=int, default=10_000, help="paths of the fleet run")
    parser.add_argument(
        "--run-rate", type=float, default=250.0, help="the fleet's warm fetches per second"
    )
    parser.add_argument(
        "--run-parallelism", type=int, default=5, help="warm fetches at once per replica"
    )
    parser.add_argument(
        "--run-delay", type=float, default=0.05, help="origin seconds per fetch in the fleet run"
    )
    parser.add_argument("--run-only", action="store_true", help="only the fleet run (scenario 3)")
    parser.add_argument("--redis-url", default=None)
    args = parser.parse_args()
    with some_redis(args.redis_url) as redis_url:
        asyncio.run(measure(args, redis_url))


if __name__ == "__main__":
    main()
