"""Probe 6: a stream of unique URLs: the proxy's memory stays bounded.

``warmproxy serve`` (memory store of ``--max-bytes``, every other setting its
default: tracking, analysis, reactive warming on) in front of a load origin (its
own process, 4 KiB cacheable bodies) gets only URLs it has never seen, from
keep-alive clients, for ``--duration`` seconds.  Every entry is new, so the
store evicts all the time, and the warmer's tracker meets a new key with every
request.  The proxy's resident memory is sampled each second.

Verdict: the resident set grows over its size after start-up by at most
``max_bytes`` times ``--factor`` plus ``--slack`` MiB (what the warmer's
bounded structures take at their default sizes); the store holds at most
``max_bytes`` by its own count; and, in runs of 300 s or more (long enough for
the tracker's bounds to be reached), the last third of the run adds at most a
quarter of what the first two thirds added (a plateau; shorter runs print it).

    .venv/bin/python -m bench.abuse.unique_urls [--quick] [--duration S]
        [--max-bytes 64MiB] [--concurrency 32] [--factor 1.25] [--slack 160] [--keep]

Default 600 s (--quick: 30 s, 32 MiB).  Exit status 1 when a check fails.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import aiohttp

from bench.abuse.common import (
    ChildProcess,
    Load,
    ProxyProcess,
    Report,
    drive,
    free_port,
    probe_arguments,
    run_main,
    stopping,
)

MIB = 1024 * 1024
BODY_BYTES = 4096


def parse_size(text: str) -> int:
    units = {"kib": 1024, "mib": MIB, "gib": 1024 * MIB, "": 1}
    lowered = text.strip().lower()
    for unit in ("kib", "mib", "gib"):
        if lowered.endswith(unit):
            return int(float(lowered[: -len(unit)]) * units[unit])
    return int(lowered)


async def run(
    workdir: Path,
    *,
    duration: float,
    max_bytes: int,
    concurrency: int = 32,
    factor: float = 1.25,
    slack_mib: float = 160.0,
    plateau: float | None = 0.25,
) -> Report:
    """``plateau``: the largest share of the growth the last third may add (None: not judged)."""
    report = Report("unique urls")
    port = free_port()
    origin_url = f"http://127.0.0.1:{port}"
    origin = ChildProcess(
        workdir,
        "origin",
        ["-m", "bench.abuse.origins", "--port", str(port), "--size", str(BODY_BYTES)],
    )
    proxy = ProxyProcess(workdir, origin_url, max_bytes=str(max_bytes))
    async with stopping(origin, proxy):
        await origin.start(f"{origin_url}/healthz")
        await proxy.start(wait="/readyz")
        await asyncio.sleep(0.5)
        start_rss = proxy.rss()
        samples: list[tuple[float, int]] = [(0.0, start_rss)]
        load = Load()
        began = time.monotonic()
        task = asyncio.ensure_future(
            drive(
                proxy.url,
                lambda n: f"/c/u/{n}",
                concurrency=concurrency,
                duration=duration,
                load=load,
            )
        )
        while not task.done():
            await asyncio.sleep(1.0)
            samples.append((time.monotonic() - began, proxy.rss()))
        await task
        samples.append((time.monotonic() - began, proxy.rss()))
        async with aiohttp.ClientSession() as session:
            metrics = await proxy.metrics(session)
    end_rss = samples[-1][1]
    max_rss = max(rss for _, rss in samples)
    growth = max_rss - start_rss
    bound = max_bytes * factor + slack_mib * MIB
    rate = len(load.samples) / duration
    errors = load.errors()
    report.figure(
        "RSS start/end/max", f"{start_rss / MIB:.0f}/{end_rss / MIB:.0f}/{max_rss / MIB:.0f} MiB"
    )
    report.figure("max_bytes", f"{max_bytes / MIB:.0f} MiB")
    report.figure("unique URLs", f"{len(load.samples)} at {rate:.0f}/s")
    store_bytes = metrics.total("warmproxy_store_bytes")
    entries = metrics.total("warmproxy_store_entries")
    evictions = metrics.total("warmproxy_store_evictions_total") or metrics.total(
        "warmproxy_store_evictions"
    )
    report.note(
        "store",
        f"{store_bytes / MIB:.1f} MiB in {entries:.0f} entries, {evictions:.0f} evictions",
    )
    thirds = [
        max((r for t, r in samples if t <= duration * k / 3), default=start_rss) for k in (1, 2, 3)
    ]
    report.note(
        "RSS by third of the run",
        " / ".join(f"{r / MIB:.0f}" for r in thirds) + " MiB",
    )
    report.check(
        "every request answered 200",
        not errors,
        Load.describe(load.samples) + (f"; errors {errors}" if errors else ""),
    )
    report.check(
        "RSS growth within max_bytes x factor + slack",
        growth <= bound,
        f"grew {growth / MIB:.0f} MiB; bound {bound / MIB:.0f} MiB "
        f"({max_bytes / MIB:.0f} x {factor:g} + {slack_mib:g})",
    )
    report.check(
        "the store holds at most max_bytes",
        store_bytes <= max_bytes,
        f"{store_bytes / MIB:.1f} of {max_bytes / MIB:.0f} MiB",
    )
    early = thirds[1] - start_rss
    late = thirds[2] - thirds[1]
    if plateau is None:
        report.note(
            "plateau (not judged: run too short)",
            f"last third +{late / MIB:.0f} MiB after +{early / MIB:.0f} MiB",
        )
    else:
        report.check(
            "the last third grows little (a plateau)",
            late <= max(plateau * early, 8 * MIB),
            f"last third +{late / MIB:.0f} MiB after +{early / MIB:.0f} MiB",
        )
    return report


def main() -> int:
    parser = probe_arguments(__doc__.split("\n\n")[0], duration=600)
    parser.add_argument("--max-bytes", default=None, help="cache.max_bytes (default 64MiB)")
    parser.add_argument("--concurrency", type=int, default=32, help="keep-alive clients")
    parser.add_argument("--factor", type=float, default=1.25, help="times max_bytes allowed")
    parser.add_argument("--slack", type=float, default=160.0, help="MiB allowed besides")
    args = parser.parse_args()
    duration = args.duration or (30.0 if args.quick else 600.0)
    max_bytes = parse_size(args.max_bytes or ("32MiB" if args.quick else "64MiB"))
    return run_main(
        lambda path: run(
            path,
            duration=duration,
            max_bytes=max_bytes,
            concurrency=args.concurrency,
            factor=args.factor,
            slack_mib=args.slack,
            plateau=None if duration < 300 else 0.25,
        ),
        args.keep,
    )


if __name__ == "__main__":
    sys.exit(main())
