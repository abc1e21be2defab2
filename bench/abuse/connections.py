"""Probe 7: a thousand connections at once: no proxy-made 5xx other than counted shedding.

``warmproxy serve`` (memory store, defaults) in front of a load origin (its own
process) is loaded by ``--connections`` keep-alive clients (a Python asyncio
client in this process; ``wrk`` is not needed), in two phases of
``--duration`` seconds each:

- ``mixed``: 5 % of requests for new paths the origin answers after 200 ms;
  of the rest, 85 % for 100 cached paths and 15 % for new paths (a fill each);
- ``slow origin``: the same with 25 % of requests answered after 1 s, so
  that more requests wait for the origin than it has connections for.

When more wait than the proxy takes on at once it may shed: a 503 with
``Retry-After`` and ``Cache-Status: ...; detail=overload``, counted in
``warmproxy_proxy_errors_total{reason="overload"}``.  Verdict per phase: every
answer is a 200 or such a shed 503; the proxy's counter of its own error
answers grew by nothing but ``overload``, and by as many as the clients saw;
no connection failed.  Each phase also prints the host's count of connection
attempts dropped on a full listen queue (Linux), the usual cause of a
connect that takes seconds in such a burst.

    .venv/bin/python -m bench.abuse.connections [--quick] [--duration S] [--connections N]

Default 60 s per phase (--quick: 10 s), 1000 connections.  Exit status 1 when a
check fails.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import aiohttp

from bench.abuse.common import (
    ChildProcess,
    Load,
    Metrics,
    ProxyProcess,
    Report,
    drive,
    fetch,
    free_port,
    probe_arguments,
    raise_fd_limit,
    run_main,
    stopping,
)

PROXY_ERRORS = "warmproxy_proxy_errors_total"


def mix(slow_share: float, slow_ms: int) -> Callable[[int], str]:
    """Paths: ``slow_share`` new paths the origin answers after ``slow_ms``; of the
    rest, 85 % for 100 cached paths and 15 % new paths (a fill each)."""
    slow_every = round(1 / slow_share) if slow_share > 0 else 0

    def paths(n: int) -> str:
        if slow_every and n % slow_every == 0:
            return f"/slow/{slow_ms}/{n}"
        if n % 20 < 17:
            return f"/c/{n % 100}"
        return f"/c/new-{n}"

    return paths


def listen_overflows() -> int | None:
    """Linux's count of connections dropped because a listen queue was full
    (host-wide, from /proc/net/netstat), or None where it cannot be read."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return None
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            return int(table["ListenOverflows"]) if "ListenOverflows" in table else None
    return None


def own_errors(before: Metrics, after: Metrics) -> dict[str, float]:
    """Growth of the proxy's own error answers, by reason."""
    reasons = {
        dict(labels).get("reason", "") for name, labels in after.samples if name == PROXY_ERRORS
    }
    grown = {
        r: after.total(PROXY_ERRORS, reason=r) - before.total(PROXY_ERRORS, reason=r)
        for r in reasons
    }
    return {r: v for r, v in grown.items() if v}


# (name, share of slow new paths, the origin's delay for them in ms)
PHASES: list[tuple[str, float, int]] = [("mixed", 0.05, 200), ("slow origin", 0.25, 1000)]


async def run(
    workdir: Path,
    *,
    duration: float,
    connections: int = 1000,
    phases: list[tuple[str, float, int]] | None = None,
) -> Report:
    """Each phase loads the same proxy for ``duration`` seconds."""
    report = Report("connections")
    limit = raise_fd_limit()
    if limit < connections * 2 + 256:
        report.note("open files", f"limit {limit}: fewer than the connections need")
    port = free_port()
    origin_url = f"http://127.0.0.1:{port}"
    origin = ChildProcess(workdir, "origin", ["-m", "bench.abuse.origins", "--port", str(port)])
    proxy = ProxyProcess(workdir, origin_url)
    async with stopping(origin, proxy):
        await origin.start(f"{origin_url}/healthz")
        await proxy.start(wait="/readyz")
        async with aiohttp.ClientSession() as session:
            for n in range(100):
                await fetch(session, f"{proxy.url}/c/{n}")
            for name, slow_share, slow_ms in phases or PHASES:
                before = await proxy.metrics(session)
                overflows = listen_overflows()
                load = Load()
                await drive(
                    proxy.url,
                    mix(slow_share, slow_ms),
                    concurrency=connections,
                    duration=duration,
                    load=load,
                    within=30.0,
                )
                after = await proxy.metrics(session)
                judge(report, f"[{name}] ", load, before, after, duration, connections)
                now = listen_overflows()
                if overflows is not None and now is not None:
                    # A full listen queue drops connection attempts; the client
                    # retries after 1, 2, 4... s, which can end in its timeout.
                    report.note(
                        f"[{name}] listen queue overflows (host-wide)", str(now - overflows)
                    )
    return report


def judge(
    report: Report,
    phase: str,
    load: Load,
    before: Metrics,
    after: Metrics,
    duration: float,
    connections: int,
) -> None:
    statuses = Counter(s.status for s in load.samples)
    shed = sum(1 for s in load.samples if s.status == 503 and "overload" in s.cache_status)
    other_5xx = sum(1 for s in load.samples if s.status >= 500) - shed
    failed = Counter(s.error for s in load.samples if s.status == 0)
    rate = len(load.samples) / duration
    report.figure(
        f"{phase}requests",
        f"{len(load.samples)} at {rate:.0f}/s ("
        + ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items()))
        + f"; shed {shed})",
    )
    report.note(f"{phase}latency", Load.describe(load.samples))
    report.check(
        f"{phase}no 5xx but shed 503s",
        other_5xx == 0,
        f"{other_5xx} other 5xx" if other_5xx else f"{shed} shed 503s",
    )
    report.check(
        f"{phase}no connection failed",
        not failed,
        ", ".join(f"{k}: {v}" for k, v in failed.items()) or f"{connections} connections",
    )
    if PROXY_ERRORS not in after.families:
        report.note(
            f"{phase}{PROXY_ERRORS}", "not exported by this proxy: only the clients' view is judged"
        )
        return
    grown = own_errors(before, after)
    not_shed = {r: v for r, v in grown.items() if r != "overload"}
    report.check(
        f"{phase}{PROXY_ERRORS} grew by overload only",
        not not_shed,
        f"grew {grown}" if grown else "no growth",
    )
    counted = grown.get("overload", 0.0)
    report.check(
        f"{phase}every shed 503 counted", counted == shed, f"{counted:.0f} counted, {shed} seen"
    )


def main() -> int:
    parser = probe_arguments(__doc__.split("\n\n")[0], duration=60)
    parser.add_argument("--connections", type=int, default=1000, help="keep-alive clients")
    args = parser.parse_args()
    duration = args.duration or (10.0 if args.quick else 60.0)
    return run_main(
        lambda path: run(path, duration=duration, connections=args.connections), args.keep
    )


if __name__ == "__main__":
    sys.exit(main())
