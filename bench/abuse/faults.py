"""Probe 5: faults under load: Redis killed and frozen, the origin killed, the proxy
killed in the middle of a warm run and of a schedule write.

1. **Redis.** ``warmproxy serve --store redis`` in front of a load origin (its own
   process) under a steady load of keep-alive clients (90 % repeated paths, 10 %
   new ones).  Redis is SIGKILLed, restarted empty on its port, then frozen with
   SIGSTOP and resumed.  Every client request must still get a 200 (the proxy
   passes through to the origin while its store is down); figures per phase.
2. **Origin.** Entries with ``max-age=1, stale-if-error=600`` are filled, go
   stale, and the origin is SIGKILLed: each must still be served, stale (RFC 5861
   §4).  A path never cached gets a 502.  The origin comes back on its port: the
   first request after gets a 200.
3. **SIGKILL during a warm run** (memory store, state in files): the proxy restarts
   on its state directory with its posted schedule and its saved figures, every
   state file whole JSON, and warms again.
4. **SIGKILL during schedule writes** (file state, and Redis state): a client
   posts ever newer schedules of 200 sources; the proxy is killed at a random
   moment.  After the restart the schedule is one whole posted version, no older
   than the last one acknowledged.

    .venv/bin/python -m bench.abuse.faults [--quick] [--duration S] [--count N] [--keep]

``--duration``: seconds of load in part 1 (default 60; --quick: 12);
``--count``: kills per store in part 4 (default 10; --quick: 3).  Parts 1 and the
Redis half of 4 need ``redis-server`` (skipped, with a note, without it).
Exit status 1 when a check fails.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import signal
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import aiohttp
from redis.asyncio import Redis

from bench.abuse.common import (
    ChildProcess,
    Load,
    ProxyProcess,
    RedisProcess,
    Report,
    drive,
    fetch,
    free_port,
    probe_arguments,
    run_main,
)

CONCURRENCY = 20
SOURCES_PER_DOCUMENT = 200


def mixed_paths(n: int) -> str:
    """90 % of requests for 500 known paths, 10 % for a new one each."""
    return f"/c/new-{n}" if n % 10 == 9 else f"/c/{random.randrange(500)}"


async def redis_faults(
    report: Report, workdir: Path, origin_url: str, redis: RedisProcess, duration: float
) -> None:
    proxy = ProxyProcess(
        workdir,
        origin_url,
        name="proxy-redis",
        store="redis",
        redis_url=redis.url,
        redis_prefix="probe-faults:",
    )
    await proxy.start(wait="/readyz")
    load = Load()
    # (fraction of the duration, what happens to Redis then, the phase that begins)
    plan = [
        (0.2, lambda: redis.kill(), "Redis SIGKILLed"),
        (0.4, None, "Redis restarted (empty)"),
        (0.6, lambda: redis.signal(signal.SIGSTOP), "Redis frozen (SIGSTOP)"),
        (0.75, lambda: redis.signal(signal.SIGCONT), "Redis resumed (SIGCONT)"),
    ]
    try:
        task = asyncio.ensure_future(
            drive(proxy.url, mixed_paths, concurrency=CONCURRENCY, duration=duration, load=load)
        )
        marks = [(0.0, "steady")]
        started = asyncio.get_running_loop().time()
        for fraction, action, name in plan:
            await asyncio.sleep(
                max(0.0, started + fraction * duration - asyncio.get_running_loop().time())
            )
            if action is not None:
                action()
            else:
                await redis.start()
            marks.append((fraction * duration, name))
        await task
        marks.append((duration, "end"))
        for (start, name), (end, _) in itertools.pairwise(marks):
            report.note(f"redis: {name}", Load.describe(load.window(start, end)))
        errors = load.errors()
        report.check(
            "redis: no client error while Redis was killed, restarted, frozen",
            not errors,
            f"{Load.describe(load.samples)}" + (f"; errors {errors}" if errors else ""),
        )
        report.figure("redis faults", f"{sum(errors.values())} errors/{len(load.samples)}")
        async with aiohttp.ClientSession() as session:
            recovered = False
            for _ in range(100):  # the health check pings every second while failing
                status, _, _ = await fetch(session, f"{proxy.control_url}/readyz")
                if status == 200:
                    recovered = True
                    break
                await asyncio.sleep(0.1)
            # Stored in Redis again, not only in the in-process tier in front of it.
            client = Redis.from_url(redis.url)
            try:
                before = await client.dbsize()
                for i in range(20):
                    await fetch(session, f"{proxy.url}/c/after-{i}")
                added = await client.dbsize() - before
            finally:
                await client.aclose()
            report.check(
                "redis: ready and storing in Redis again after it came back",
                recovered and added >= 20,
                f"readyz {'200' if recovered else 'not 200'}, {added} keys added for 20 fills",
            )
    finally:
        proxy.stop()


async def origin_faults(
    report: Report, workdir: Path, origin: ChildProcess, origin_url: str
) -> None:
    proxy = ProxyProcess(workdir, origin_url, name="proxy-origin")
    await proxy.start()
    n = 50
    try:
        async with aiohttp.ClientSession() as session:
            bodies = {}
            for i in range(n):
                status, _, body = await fetch(session, f"{proxy.url}/sie/{i}")
                bodies[i] = body if status == 200 else None
            await asyncio.sleep(1.5)  # every entry is stale now (max-age=1)
            origin.kill()
            served = marked = 0
            for i in range(n):
                status, headers, body = await fetch(session, f"{proxy.url}/sie/{i}")
                if status == 200 and body == bodies[i]:
                    served += 1
                    marked += "stale-if-error" in headers.get("Cache-Status", "")
            report.check(
                "origin killed: stale-if-error entries served",
                served == n,
                f"{served}/{n} served stale, {marked} with Cache-Status ...stale-if-error",
            )
            report.figure("stale-if-error served", f"{served}/{n}")
            status, _, _ = await fetch(session, f"{proxy.url}/c/never-cached")
            report.check(
                "origin killed: a path never cached gets 502",
                status == 502,
                f"{status}",
            )
            await origin.start(f"{origin_url}/healthz")
            status, _, _ = await fetch(session, f"{proxy.url}/c/after-origin-restart")
            report.check(
                "origin back: the first request after gets 200", status == 200, f"{status}"
            )
    finally:
        proxy.stop()


def state_files_whole(state: Path) -> tuple[bool, str]:
    """Every JSON file of the state directory parses; no temporary file is left."""
    bad, left = [], []
    files = sorted(state.glob("*.json"))
    for path in files:
        try:
            json.loads(path.read_text())
        except (OSError, ValueError):
            bad.append(path.name)
    left = [p.name for p in state.glob("*.tmp")]
    ok = not bad and not left
    detail = f"{len(files)} state files whole" if ok else f"torn {bad}, left over {left}"
    return ok, detail


async def kill_during_warm_run(report: Report, workdir: Path, origin_url: str) -> None:
    proxy = ProxyProcess(workdir, origin_url, name="proxy-warm")
    schedule = {
        "sources": [
            {"name": "kept", "schedule": "0 0 1 1 *",
             "source": {"type": "urls", "paths": ["/c/kept"]}}
        ]
    }  # fmt: skip
    try:
        async with aiohttp.ClientSession() as session:
            await proxy.start()
            status, _ = await proxy.control(session, "POST", "/cache/warming/schedule", schedule)
            _, run = await proxy.control(
                session,
                "POST",
                "/cache/warming/warm-key",
                {"urls": [f"/c/warmed-{i}" for i in range(20)]},
            )
            await proxy.wait_run(session, run["run_id"])
            for i in range(10):  # used: the ledger has hits to keep
                await fetch(session, f"{proxy.url}/c/warmed-{i}")
            proxy.stop()  # a clean stop saves the ledger, the hot set, the model
            await proxy.start()
            _, before = await proxy.control(session, "GET", "/cache/warming/stats")
            _, run = await proxy.control(
                session,
                "POST",
                "/cache/warming/warm-key",
                {"urls": [f"/slow/100/{i}" for i in range(300)]},
            )
            await asyncio.sleep(1.0)
            _, progress = await proxy.control(
                session, "GET", f"/cache/warming/progress?run_id={run['run_id']}"
            )
            proxy.kill()
            report.note(
                "warm run at SIGKILL",
                f"{progress.get('status')}, {progress.get('progress', {}).get('completed')} "
                f"of {progress.get('progress', {}).get('total_items')} done",
            )
            await proxy.start(wait="/readyz")
            ok, detail = state_files_whole(proxy.state)
            report.check("SIGKILL in a warm run: state files whole after restart", ok, detail)
            _, shown = await proxy.control(session, "GET", "/cache/warming/schedule")
            names = [s["name"] for s in shown.get("sources", [])] if isinstance(shown, dict) else []
            report.check(
                "SIGKILL in a warm run: the posted schedule is back",
                status == 200 and names == ["kept"],
                f"sources {names}",
            )
            status, after = await proxy.control(session, "GET", "/cache/warming/stats")
            warmed_before = before["cost_benefit"]["items_warmed"]
            warmed_after = after["cost_benefit"]["items_warmed"] if status == 200 else None
            report.check(
                "SIGKILL in a warm run: the figures saved before are kept",
                warmed_after is not None and warmed_after >= warmed_before,
                f"items_warmed {warmed_before} before, {warmed_after} after",
            )
            status, run = await proxy.control(
                session, "POST", "/cache/warming/warm-key", {"url": "/c/after-kill"}
            )
            done = await proxy.wait_run(session, run["run_id"]) if status == 202 else {}
            report.check(
                "SIGKILL in a warm run: warming works after restart",
                done.get("status") == "completed",
                f"{status}, run {done.get('status')}",
            )
    finally:
        proxy.stop()


def document(version: int) -> dict[str, Any]:
    return {
        "sources": [
            {
                "name": f"v{version}-s{i}",
                "schedule": "0 0 1 1 *",
                "source": {"type": "urls", "paths": [f"/v{version}/{i}"]},
            }
            for i in range(SOURCES_PER_DOCUMENT)
        ]
    }


async def kill_during_schedule_writes(
    report: Report,
    workdir: Path,
    origin_url: str,
    *,
    kills: int,
    redis: RedisProcess | None,
) -> None:
    store = "redis" if redis is not None else "memory"
    proxy = ProxyProcess(
        workdir,
        origin_url,
        name=f"proxy-schedule-{store}",
        store=store,
        redis_url=redis.url if redis else None,
        redis_prefix="probe-schedule:",
    )
    where = "Redis" if redis is not None else "file"
    failures = []
    version = 0
    acknowledged = 0
    rng = random.Random(5)
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(kills):
                await proxy.start(wait="/readyz")

                async def post_forever() -> None:
                    nonlocal version, acknowledged
                    while True:
                        version += 1
                        try:
                            status, _ = await proxy.control(
                                session, "POST", "/cache/warming/schedule", document(version)
                            )
                        except (aiohttp.ClientError, OSError):
                            return
                        if status == 200:
                            acknowledged = version

                writer = asyncio.ensure_future(post_forever())
                await asyncio.sleep(rng.uniform(0.1, 0.8))
                proxy.kill()
                await writer
                await proxy.start(wait="/readyz")
                _, shown = await proxy.control(session, "GET", "/cache/warming/schedule")
                names = [s["name"] for s in shown.get("sources", [])]
                versions = {n.split("-")[0] for n in names}
                got = int(next(iter(versions))[1:]) if len(versions) == 1 else None
                if got is None or len(names) != SOURCES_PER_DOCUMENT:
                    failures.append(f"{len(names)} sources of versions {sorted(versions)[:5]}")
                elif not acknowledged <= got <= version:
                    failures.append(
                        f"version {got} back, {acknowledged} acknowledged, {version} the last sent"
                    )
                proxy.stop()
        report.check(
            f"SIGKILL in schedule writes ({where}): a whole acknowledged version back",
            not failures,
            "; ".join(failures[:3]) or f"{kills} kills, {version} posts, last version intact",
        )
    finally:
        proxy.stop()


async def run(workdir: Path, *, duration: float = 60.0, kills: int = 10) -> Report:
    report = Report("faults")
    port = free_port()
    origin_url = f"http://127.0.0.1:{port}"
    origin = ChildProcess(workdir, "origin", ["-m", "bench.abuse.origins", "--port", str(port)])
    redis = RedisProcess(workdir)
    try:
        await origin.start(f"{origin_url}/healthz")
        if redis.available:
            await redis.start()
            await redis_faults(report, workdir, origin_url, redis, duration)
        else:
            report.note("redis", "no redis-server on PATH: the Redis parts are skipped")
        await origin_faults(report, workdir, origin, origin_url)
        await kill_during_warm_run(report, workdir, origin_url)
        await kill_during_schedule_writes(report, workdir, origin_url, kills=kills, redis=None)
        if redis.available:
            await kill_during_schedule_writes(report, workdir, origin_url, kills=kills, redis=redis)
    finally:
        redis.stop()
        origin.stop()
    return report


def main() -> int:
    parser = probe_arguments(__doc__.split("\n\n")[0], duration=60)
    parser.add_argument("--count", type=int, default=None, help="kills per store (default 10)")
    args = parser.parse_args()
    duration = args.duration or (12.0 if args.quick else 60.0)
    kills = args.count or (3 if args.quick else 10)
    return run_main(lambda path: run(path, duration=duration, kills=kills), args.keep)


if __name__ == "__main__":
    sys.exit(main())
