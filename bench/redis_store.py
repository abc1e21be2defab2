"""In-process benchmark of RedisStore.get: one GET per call (before) against batched gets (after).

"Before" is the path RedisStore.get took before gets were batched: one GET
through the store's own redis-py client, then decode.  "After" is
``RedisStore.get`` itself.  Both read the same 1 KiB entries, first from one
caller after another, then from 32 and 256 concurrent callers, each caller
walking its own keys (so no two ask for the same key at once, unless the row
says so).  The figures are gets per second on one core; the script prints them
and asserts nothing.

    .venv/bin/python bench/redis_store.py [--seconds 3] [--keys 1000] [--redis-url URL]

Redis comes from ``--redis-url``, else ``$REDIS_URL``, else
``redis://127.0.0.1:6379/15``.  The keys live under a prefix unique to the run
and only they are deleted afterwards (SCAN + UNLINK; never FLUSHDB).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from uuid import uuid4

import redis.asyncio as aioredis
import uvloop
from redis.exceptions import RedisError

from proxy.entry import CacheEntry, StoredItem, decode
from proxy.store import RedisStore, StoreError
from proxy.store.redis import escape_glob

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/15"
BODY_SIZE = 1024
CONCURRENCY = [1, 32, 256]

Get = Callable[[str], Awaitable[StoredItem | None]]


def entry(n: int) -> CacheEntry:
    now = time.time()
    return CacheEntry(
        url=f"http://origin/bench/{n}",
        status=200,
        headers=[("content-type", "text/plain"), ("cache-control", "public, max-age=3600")],
        body=(f"{n:08d}".encode() * (BODY_SIZE // 8))[:BODY_SIZE],
        born=now,
        stored_at=now,
        fresh_until=now + 3600,
        stale_while_revalidate_until=now + 3600,
        stale_if_error_until=now + 3600,
        expires_at=now + 3600,
    )


def unbatched(store: RedisStore) -> Get:
    """The get of old: one GET per call on the store's client, then decode."""
    client = store._client  # the very client the store uses, minus the batching

    async def get(key: str) -> StoredItem | None:
        data = await client.get(store.prefix + key)
        return None if data is None else decode(data)

    return get


async def rate(get: Get, keys: Sequence[str], callers: int, seconds: float) -> tuple[float, int]:
    """Gets per second from ``callers`` concurrent loops over ``keys``, and failed gets."""
    done = failed = 0
    deadline = time.perf_counter() + seconds

    async def caller(start: int) -> None:
        nonlocal done, failed
        i = start
        while time.perf_counter() < deadline:
            try:
                await get(keys[i % len(keys)])
            except (StoreError, RedisError):
                # Counted, not fatal: e.g. more callers than pooled
                # connections, some waiting longer than the pool timeout.
                failed += 1
            else:
                done += 1
            # Callers stride through the keys, so none asks for another's key.
            i += callers

    started = time.perf_counter()
    await asyncio.gather(*(caller(n) for n in range(callers)))
    return done / (time.perf_counter() - started), failed


def figure(rate_and_failed: tuple[float, int], width: int) -> str:
    per_second, failed = rate_and_failed
    text = f"{per_second:,.0f}" + (f" ({failed} failed)" if failed else "")
    return f"{text:>{width}}"


async def delete_prefix(url: str, prefix: str) -> None:
    client = aioredis.Redis.from_url(url, socket_timeout=5)
    try:
        batch: list[bytes] = []
        async for key in client.scan_iter(match=escape_glob(prefix) + "*", count=500):
            batch.append(key)
            if len(batch) >= 500:
                await client.unlink(*batch)
                batch.clear()
        if batch:
            await client.unlink(*batch)
    finally:
        await client.aclose()


async def run(args: argparse.Namespace) -> int:
    prefix = f"warmproxy-bench-store:{uuid4().hex}:"
    store = RedisStore(args.redis_url, prefix=prefix, max_entry_bytes=1024 * 1024)
    try:
        if not await store.health():
            print(f"no Redis answers at {args.redis_url}", file=sys.stderr)
            return 1
        keys = [f"/bench/{n}" for n in range(args.keys)]
        for n, key in enumerate(keys):
            await store.put(key, entry(n), 3600)
        before, after = unbatched(store), store.get
        await rate(before, keys, 32, 0.5)  # warm up: connections, caches
        await rate(after, keys, 32, 0.5)

        print(f"RedisStore.get, {BODY_SIZE} B bodies, {len(keys)} keys, {args.redis_url}")
        print(f"Python {sys.version.split()[0]}, uvloop; {args.seconds:g} s per figure; gets/s")
        header = f"{'callers':<16} {'before (GET)':>22} {'after (batched)':>16} {'ratio':>7}"
        print()
        print(header)
        print("-" * len(header))
        rows = [(str(c) if c > 1 else "sequential", keys, c) for c in CONCURRENCY]
        rows.append(("256, one key", keys[:1], 256))
        for label, row_keys, callers in rows:
            old = await rate(before, row_keys, callers, args.seconds)
            new = await rate(after, row_keys, callers, args.seconds)
            ratio = new[0] / old[0] if old[0] else float("nan")
            print(f"{label:<16} {figure(old, 22)} {figure(new, 16)} {ratio:>7.2f}")
        return 0
    finally:
        await store.close()
        await delete_prefix(args.redis_url, prefix)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="load per figure")
    parser.add_argument("--keys", type=int, default=1000, help="distinct keys stored")
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL", DEFAULT_REDIS_URL),
        help="Redis to use (default: $REDIS_URL or %(default)s)",
    )
    args = parser.parse_args(argv)
    return uvloop.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
