"""Warming throughput, and what observing traffic costs the hit path.

1. **Throughput.** A fast local origin (1 KiB bodies, `max-age=3600`) runs on
   one core.  On the other core, one after another:
   - `raw`: a plain aiohttp client loop fetching N distinct paths from the origin
     at concurrency P (read the body, nothing else): the ceiling.
   - `warmproxy serve` with each store, warming N other distinct paths through
     its control API (`warm-key` with `urls`), parallelism P, no rate limit, no
     adaptive back-off; the rate is the run's own measured `items_per_second`.
   Printed side by side with the ratio to `raw`.
2. **Observation cost.** wrk loads cache hits on `warmproxy serve` with the
   warmer observing every request (`tracking.enabled = true`, the default) and
   with it detached (`false`), alternating, several rounds; printed with the
   ratio.

    .venv/bin/python bench/warm_throughput.py [--paths 5000] [--parallelism 10]
        [--rounds 3] [--duration 5] [--skip-redis] [--skip-hits] [--redis-url URL]

It asserts nothing: the machines are noisy, so read the ratios within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

import hit_path
from hit_path import Failed, Processes, free_port, wait_ready


async def raw_rate(origin: str, paths: Sequence[str], concurrency: int) -> float:
    """Paths per second a plain aiohttp loop fetches at ``concurrency``."""
    queue = list(paths)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            while queue:
                path = queue.pop()
                async with session.get(origin + path) as response:
                    await response.read()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return len(paths) / (time.perf_counter() - started)


def control(url: str, body: object | None = None) -> dict[str, object]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method="GET" if body is None else "POST",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=30) as response:
        result: dict[str, object] = json.loads(response.read())
        return result


def warm_rate(control_url: str, paths: Sequence[str]) -> tuple[float, int]:
    """(items per second, failed) of one warm run of ``paths`` through the control API."""
    base = f"{control_url}/cache/warming"
    run = control(f"{base}/warm-key", {"urls": list(paths), "priority": "high"})
    deadline = time.monotonic() + 600
    while True:
        progress = control(f"{base}/progress?run_id={run['run_id']}")
        if progress["status"] != "running":
            break
        if time.monotonic() > deadline:
            raise Failed("the warm run did not finish in 10 minutes")
        time.sleep(0.05)
    p = progress["progress"]
    perf = progress["performance"]
    assert isinstance(p, dict) and isinstance(perf, dict)
    return float(perf["items_per_second"]), int(p["failed"])


def start_proxy(
    procs: Processes,
    origin_port: int,
    cpu: int | None,
    store: str,
    redis_url: str | None,
    parallelism: int,
    tracking: bool,
    name: str,
) -> tuple[str, str]:
    port, cport = free_port(), free_port()
    argv = [
        sys.executable, "-m", "proxy.cli", "serve",
        "--origin", f"http://127.0.0.1:{origin_port}",
        "--listen", f"127.0.0.1:{port}",
        "--control", f"127.0.0.1:{cport}",
        "--store", store, "--log-level", "warning",
    ]  # fmt: skip
    if redis_url is not None:
        argv += ["--redis-url", redis_url, "--redis-prefix", hit_path.REDIS_PREFIX]
    env = {
        "WARMPROXY_EXECUTION__PARALLELISM": str(parallelism),
        "WARMPROXY_EXECUTION__RATE_LIMIT": "0",
        "WARMPROXY_EXECUTION__ADAPTIVE": "false",
        "WARMPROXY_EXECUTION__BATCH_SIZE": "1000",
        "WARMPROXY_TRACKING__ENABLED": "true" if tracking else "false",
        "WARMPROXY_STATE__DIR": str(procs.workdir / "state"),
    }
    proc = procs.start(name, argv, cpu, env)
    wait_ready(procs, name, proc, [f"http://127.0.0.1:{cport}/readyz"])
    return f"http://127.0.0.1:{port}", f"http://127.0.0.1:{cport}"


def throughput(
    args: argparse.Namespace, procs: Processes, origin_port: int, cpu: int | None
) -> None:
    n, p = args.paths, args.parallelism
    origin = f"http://127.0.0.1:{origin_port}"
    stores = ["memory"] if args.skip_redis else ["memory", "redis"]
    print(f"\nwarming throughput: {n} distinct paths, concurrency {p}, 1 KiB bodies")
    print(f"{'target':<22}{'paths/s':>10}{'vs raw':>9}")
    for round_no in range(args.rounds):
        offset = (round_no + 1) * 1_000_000
        if cpu is not None and procs.pin:
            os.sched_setaffinity(0, {cpu})  # the raw loop on the proxy's core
        raw = asyncio.run(raw_rate(origin, [f"/bench/{offset + i}" for i in range(n)], p))
        print(f"{'raw aiohttp loop':<22}{raw:>10,.0f}{1.0:>9.2f}", flush=True)
        for store in stores:
            redis_url = None
            if store == "redis":
                redis_url = args.redis_url
                hit_path.clear_redis_prefix(redis_url)
            name = f"warm-{store}-{round_no}"
            _, control_url = start_proxy(procs, origin_port, cpu, store, redis_url, p, True, name)
            try:
                paths = [f"/bench/{offset + 500_000 + i}" for i in range(n)]
                rate, failed = warm_rate(control_url, paths)
            finally:
                procs.stop(procs.running[-1][1])
                if redis_url is not None:
                    hit_path.clear_redis_prefix(redis_url)
            note = f"  ({failed} failed)" if failed else ""
            label = f"warmproxy/{store}"
            print(f"{label:<22}{rate:>10,.0f}{rate / raw:>9.2f}{note}", flush=True)


def observation_cost(
    args: argparse.Namespace,
    procs: Processes,
    origin_port: int,
    server_cpu: int | None,
    load_cpu: int | None,
) -> None:
    print(f"\nhit path, warmer attached vs detached: wrk -c{args.connections} -d{args.duration}s")
    print(f"{'round':<7}{'attached req/s':>16}{'detached req/s':>16}{'ratio':>8}")
    ratios = []
    for round_no in range(args.rounds):
        rates = {}
        for tracking in (True, False):
            name = f"hits-{'on' if tracking else 'off'}-{round_no}"
            base, _ = start_proxy(
                procs, origin_port, server_cpu, "memory", None, args.parallelism, tracking, name
            )
            try:
                target = hit_path.Target("warmproxy", "memory", f"{base}{hit_path.BENCH_PATH}")
                hit_path.warm(target)
                output = hit_path.run_wrk(args, target.url, load_cpu, procs.pin)
                rates[tracking] = hit_path.parse_wrk(output)[0]
            finally:
                procs.stop(procs.running[-1][1])
        ratio = rates[True] / rates[False]
        ratios.append(ratio)
        print(f"{round_no + 1:<7}{rates[True]:>16,.0f}{rates[False]:>16,.0f}{ratio:>8.3f}")
    print(f"median ratio attached/detached: {sorted(ratios)[len(ratios) // 2]:.3f}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paths", type=int, default=5000)
    parser.add_argument("--parallelism", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="wrk seconds per target")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-redis", action="store_true")
    parser.add_argument("--skip-hits", action="store_true", help="no observation-cost part")
    parser.add_argument(
        "--redis-url", default=os.environ.get("REDIS_URL", hit_path.DEFAULT_REDIS_URL)
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    server_cpu, load_cpu, pin = hit_path.cpus()
    signal.signal(signal.SIGTERM, hit_path._raise_on_term)
    print(f"{hit_path._cpu_model()}; {os.cpu_count()} cores; Python {sys.version.split()[0]}")
    if not args.skip_redis and not hit_path.redis_ready(args.redis_url):
        print(f"note: no Redis at {args.redis_url}: memory store only")
        args.skip_redis = True
    with tempfile.TemporaryDirectory(prefix="warmproxy-bench-") as tmp:
        procs = Processes(Path(tmp), pin)
        try:
            origin_port = free_port()
            origin = procs.start(
                "origin",
                [sys.executable, hit_path.__file__, "_origin", str(origin_port)],
                load_cpu,
            )
            wait_ready(procs, "origin", origin, [f"http://127.0.0.1:{origin_port}/bench/0"])
            throughput(args, procs, origin_port, server_cpu)
            if args.skip_hits:
                pass
            elif shutil.which("wrk") is None:
                print("\nwrk is not installed (apt-get install wrk): no observation-cost part")
            else:
                observation_cost(args, procs, origin_port, server_cpu, load_cpu)
        except Failed as exc:
            print(f"failed: {exc}", file=sys.stderr)
            return 1
        finally:
            procs.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
