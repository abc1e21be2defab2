"""What a touch costs: µs of CPU per kept key touched (warmer.retention).

The predictive model keeps the keys worth a cache slot cached by touching
them: a warm request that only looks the entry up and fetches nothing, held
to one per user request.  The warm executor looks touches up one after
another between batches, without the queue, task and timer of a fetch.
This builds the proxy the way ``warmproxy serve`` does (the memory store; no
listener is opened, no origin is asked), stores ``--keys`` entries, and
then, in the same event loop:

- ``lookup``: ``Filler.touch`` called directly for every key, the least a
  touch can cost;
- ``executor``: the same touches submitted to the running warm executor,
  timed until its counters show every one kept.

Times are the process's CPU time (best of ``--repeat``), printed side by
side with the ratio; beside them the CPU a hit costs on this machine is
what ``bench/hit_path.py`` measures (about 24 µs a hit, wall clock, one core).

With ``--redis-url`` it also stores ``--redis-keys`` entries of
``--body-bytes`` each in that Redis (under a prefix of its own, deleted
afterwards) and touches each through ``Filler.touch``, which reads only the
entry's head, beside a full lookup past the in-process tier (what a touch
read before): the bytes Redis sent per touch (its ``total_net_output_bytes``,
so other clients of that Redis add to it) and the wall time per touch.

    .venv/bin/python bench/touch_cost.py [--keys 20000] [--repeat 3]
        [--redis-url redis://127.0.0.1:6379/0 --redis-keys 1000 --body-bytes 65536]

It prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace

import redis.asyncio
from multidict import CIMultiDict
from observe_cost import entry_for  # the same 1 KiB entry the hits there are served

from proxy.app import Warmproxy
from proxy.config import load_settings
from warmer.executor import WarmExecutor
from warmer.model import FillReport, Reason, WarmRequest


async def through_executor(executor: WarmExecutor, paths: list[str]) -> float:
    """CPU seconds for the running ``executor`` to finish a touch of each path."""
    requests = [WarmRequest(p, "low", Reason.PREDICTIVE, touch=True) for p in paths]
    done = asyncio.Event()
    left = len(requests)

    def finished(request: WarmRequest, report: FillReport, seconds: float) -> None:
        nonlocal left
        left -= 1
        if left == 0:
            done.set()

    executor.on_result = finished
    gc.collect()
    started = time.process_time()
    for i in range(0, len(requests), 256):
        executor.submit(requests[i : i + 256])
        await asyncio.sleep(0)
    await done.wait()
    return time.process_time() - started


async def measure(keys: int, repeat: int, state_dir: str) -> tuple[float, float]:
    settings = load_settings(
        None,
        {
            "proxy": {"origin": "http://127.0.0.1:9", "listen": "127.0.0.1:0"},
            "control": {"listen": "127.0.0.1:0"},
            "state": {"dir": state_dir},
            "execution": {"rate_limit": 0},
        },
    )
    proxy = Warmproxy(settings)
    now = time.time()
    paths = [f"/bench/{n}" for n in range(keys)]
    for path in paths:
        await proxy.cache.put(
            proxy.rules.cache_key(path, proxy.rules.default_host), entry_for(path, now)
        )
    executor = proxy.warmer.executor
    runner = asyncio.create_task(executor.run_forever())
    best_lookup = best_executor = float("inf")
    try:
        for _ in range(repeat):
            gc.collect()
            started = time.process_time()
            for path in paths:
                await proxy.filler.touch(path)
            best_lookup = min(best_lookup, time.process_time() - started)

            seconds = await through_executor(executor, paths)
            best_executor = min(best_executor, seconds)
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
    return best_lookup / keys * 1e6, best_executor / keys * 1e6


async def measure_redis(
    url: str, keys: int, body_bytes: int, state_dir: str
) -> dict[str, tuple[float, float]]:
    """Per touch, (bytes Redis sent, wall µs): by head and by full lookup."""
    prefix = f"warmproxy-touch-bench-{os.getpid()}:"
    settings = load_settings(
        None,
        {
            "proxy": {"origin": "http://127.0.0.1:9", "listen": "127.0.0.1:0"},
            "control": {"listen": "127.0.0.1:0"},
            "state": {"dir": state_dir},
            "cache": {"store": "redis", "redis_url": url, "redis_prefix": prefix},
        },
    )
    proxy = Warmproxy(settings)
    client = redis.asyncio.from_url(url)
    now = time.time()
    paths = [f"/bench/{n}" for n in range(keys)]
    body = b"x" * body_bytes
    headers = CIMultiDict({"Host": proxy.rules.default_host})
    out: dict[str, tuple[float, float]] = {}
    try:
        for path in paths:
            entry = replace(entry_for(path, now), body=body)
            assert await proxy.cache.put(
                proxy.rules.cache_key(path, proxy.rules.default_host), entry
            )

        async def by_head(path: str) -> None:
            assert await proxy.filler.touch(path) is not None

        async def by_lookup(path: str) -> None:
            key = proxy.rules.cache_key(path, proxy.rules.default_host)
            assert (await proxy.cache.lookup(key, headers, from_store=True)).entry is not None

        for name, touch in (("head", by_head), ("lookup", by_lookup)):
            sent = (await client.info("stats"))["total_net_output_bytes"]
            started = time.perf_counter()
            for path in paths:
                await touch(path)
            seconds = time.perf_counter() - started
            sent = (await client.info("stats"))["total_net_output_bytes"] - sent
            out[name] = (sent / keys, seconds / keys * 1e6)
    finally:
        doomed = [k async for k in client.scan_iter(match=prefix + "*", count=1000)]
        for i in range(0, len(doomed), 500):
            await client.unlink(*doomed[i : i + 500])
        await client.aclose()
        await proxy.cache.store.close()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--redis-keys", type=int, default=1000)
    parser.add_argument("--body-bytes", type=int, default=65536)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as state_dir:
        lookup, through_executor = asyncio.run(measure(args.keys, args.repeat, state_dir))
    print(f"touches of {args.keys:,} cached keys (memory store)")
    print(f"CPU µs per touch, best of {args.repeat}")
    print(f"  lookup (Filler.touch)      {lookup:7.2f}")
    print(
        f"  through the warm executor  {through_executor:7.2f}  ({through_executor / lookup:.1f}x)"
    )
    if args.redis_url is not None:
        with tempfile.TemporaryDirectory() as state_dir:
            redis_figures = asyncio.run(
                measure_redis(args.redis_url, args.redis_keys, args.body_bytes, state_dir)
            )
        print(f"touches of {args.redis_keys:,} entries of {args.body_bytes:,} body bytes in Redis")
        for name, label in (("head", "Filler.touch (head read)"), ("lookup", "full lookup")):
            sent, micros = redis_figures[name]
            print(
                f"  {label:<26} {sent:>9,.0f} bytes sent by Redis, {micros:7.1f} µs wall per touch"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
