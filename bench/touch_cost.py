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

    .venv/bin/python bench/touch_cost.py [--keys 20000] [--repeat 3]

It prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import tempfile
import time
from collections.abc import Sequence

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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as state_dir:
        lookup, through_executor = asyncio.run(measure(args.keys, args.repeat, state_dir))
    print(f"touches of {args.keys:,} cached keys (memory store)")
    print(f"CPU µs per touch, best of {args.repeat}")
    print(f"  lookup (Filler.touch)      {lookup:7.2f}")
    print(
        f"  through the warm executor  {through_executor:7.2f}  ({through_executor / lookup:.1f}x)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
