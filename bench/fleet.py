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

    .venv/bin/python bench/fleet.py [--requests 300] [--keys 10] [--delay 0.2]
        [--warm-paths 200] [--redis-url URL]

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
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import redis
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from proxy.app import Warmproxy
from proxy.config import load_settings

DEFAULT_REDIS = "redis://127.0.0.1:6379/15"
PREFIX = "warmproxy-bench-fleet:"


@dataclass
class Origin:
    """A slow origin: every path answers after ``delay`` seconds, counted."""

    delay: float
    fetches: int = 0
    url: str = ""

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        self.fetches += 1
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
    origin: Origin, count: int, redis_url: str, lock: bool, state: Path
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
            for count in (1, 2, 3):
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


def main() -> None:
    parser = argparse.ArgumentParser(description="Duplicate origin fetches across replicas.")
    parser.add_argument("--requests", type=int, default=300, help="concurrent misses")
    parser.add_argument("--keys", type=int, default=10, help="cold keys they spread over")
    parser.add_argument("--delay", type=float, default=0.2, help="origin seconds per fetch")
    parser.add_argument("--warm-paths", type=int, default=200, help="paths each replica warms")
    parser.add_argument("--redis-url", default=None)
    args = parser.parse_args()
    with some_redis(args.redis_url) as redis_url:
        asyncio.run(measure(args, redis_url))


if __name__ == "__main__":
    main()
