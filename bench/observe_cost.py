"""What observing a request costs: µs per access event for emit + drain + every observer.

Builds the proxy the way ``warmproxy serve`` does with the default settings
(no listener is opened), then pushes fast-lane hits through the same calls a
live hit makes: ``ProxyHandler.emit_hit`` (counting, the event, the append to
the event hub) and the hub's drain, which hands the events to the warmer (the
tracker, the ledger, the strategies, the usage analysis, the timeline).  Each
mix runs with tracking off (the events are emitted and drained, nobody
observes them), with tracking on as the proxy subscribes the warmer, and with
the warmer taking each drain as one batch (``EventHub.subscribe_batches`` and
``Warmer.observe_many``): the difference to tracking off is what observation
adds to a hit.  Then, with ``--attribute``, the warmer's observers one by one
over the same events.

Mixes: ``one-key`` (every request the same URL from one client, as
``bench/hit_path.py`` loads it) and ``zipf`` (URLs drawn from a Zipf law over
``--keys`` paths by ``--clients`` clients).  Event times advance at
``--rate`` requests per virtual second, so windows rotate as often as under
that load.  Times are the process's CPU time (best of ``--repeat``), so other
processes on the machine disturb them less.

    .venv/bin/python bench/observe_cost.py [--events 200000] [--rate 20000] [--keys 1000]
        [--clients 1] [--repeat 3] [--mixes one-key,zipf] [--attribute] [--profile MIX]

``--profile MIX`` prints a cProfile of the tracked run of that mix instead.
It prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import pstats
import random
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from multidict import CIMultiDict, CIMultiDictProxy

from proxy.app import Warmproxy
from proxy.config import load_settings
from proxy.entry import CacheEntry
from proxy.fast_lane import _Head
from proxy.observe import AccessEvent
from warmer.service import Warmer

BODY = b"x" * 1024
ZIPF_EXPONENT = 1.0
#: Events the hub's delivery task drains at a time (``EventHub.run``).
DRAIN_BATCH = 256
MIXES = ("one-key", "zipf")
#: How the warmer is handed the events.
OFF, PER_EVENT, BATCHED = "tracking off", "tracking on", "on, batched"


@dataclass(frozen=True)
class Hit:
    """One fast-lane hit to replay: what ``emit_hit`` is called with."""

    head: _Head
    entry: CacheEntry
    key: str


def entry_for(path: str, now: float) -> CacheEntry:
    return CacheEntry(
        url=path,
        status=200,
        headers=[("content-type", "text/plain"), ("cache-control", "public, max-age=3600")],
        body=BODY,
        born=now,
        stored_at=now,
        fresh_until=now + 3600.0,
        stale_while_revalidate_until=now + 3600.0,
        stale_if_error_until=now + 3600.0,
        expires_at=now + 3600.0,
    )


def hits(args: argparse.Namespace, mix: str, start: float) -> list[Hit]:
    """The mix's requests, the same sequence in every run (a fixed seed)."""
    headers = CIMultiDictProxy(CIMultiDict({"Host": "bench.example", "User-Agent": "wrk"}))
    rng = random.Random(16)
    if mix == "one-key":
        head = _Head("GET", "/bench/1", headers, "127.0.0.1")
        return [Hit(head, entry_for("/bench/1", start), "/bench/1")] * args.events
    paths = [f"/bench/{n}" for n in range(args.keys)]
    entries = {path: entry_for(path, start) for path in paths}
    clients = [f"127.0.0.{n + 1}" for n in range(args.clients)]
    heads = {(p, c): _Head("GET", p, headers, c) for p in paths for c in clients}
    weights = [1.0 / (rank + 1) ** ZIPF_EXPONENT for rank in range(args.keys)]
    drawn = rng.choices(paths, weights=weights, k=args.events)
    return [Hit(heads[p, rng.choice(clients)], entries[p], p) for p in drawn]


def build_proxy(delivery: str, state_dir: str) -> Warmproxy:
    settings = load_settings(
        None,
        {
            "proxy": {"origin": "http://127.0.0.1:9", "listen": "127.0.0.1:0"},
            "control": {"listen": "127.0.0.1:0"},
            "tracking": {"enabled": delivery == PER_EVENT},
            # Never started, so nothing is written there; named so that no
            # state directory of the user's is even looked up.
            "state": {"dir": state_dir},
        },
    )
    proxy = Warmproxy(settings)
    if delivery == BATCHED:
        proxy.warmer.observing = True
        proxy.hub.subscribe_batches(proxy.warmer.observe_many)
    return proxy


def run_once(proxy: Warmproxy, sequence: list[Hit], start: float, rate: float) -> float:
    """CPU seconds to emit and deliver every hit of ``sequence``."""
    emit_hit = proxy.handler.emit_hit
    drain = proxy.hub.drain
    step = 1.0 / rate
    gc.collect()
    # What latencies are measured from (perf_counter, as the fast lane's start).
    started = time.perf_counter()
    began = time.process_time()
    now = start
    pending = 0
    for hit in sequence:
        emit_hit(hit.head, hit.entry, now, started, hit.key, "")
        now += step
        pending += 1
        if pending == DRAIN_BATCH:
            drain(DRAIN_BATCH)
            pending = 0
    drain()
    return time.process_time() - began


def observers(warmer: Warmer) -> list[tuple[str, Callable[[AccessEvent], object]]]:
    """Each thing the warmer hands an event to, by name."""
    core = warmer.core
    named: list[tuple[str, Callable[[AccessEvent], object]]] = [("tracker", warmer.tracker.observe)]
    if warmer.analyzer is not None:
        named.append(("usage analysis", warmer.analyzer.observe))
    named += [(f"strategy {type(s).__name__}", s.observe) for s in core.strategies]
    named.append(("audience", core.audience.observe))
    ledger = warmer.ledger
    if ledger is not None:
        named.append(("ledger", lambda e: ledger.observe(e, latency=e.latency)))
    timeline = warmer.timeline
    named.append(("timeline", lambda e: timeline.request(e.ts, e.outcome, e.status, e.bytes)))
    named.append(("all (Warmer.observe)", warmer.observe))
    return named


def attribute(args: argparse.Namespace, mix: str, sequence: list[Hit], start: float) -> None:
    """CPU µs per event of each of the warmer's observers alone, over the mix's events."""
    recorder = build_proxy(OFF, args.state_dir)
    events: list[AccessEvent] = []
    recorder.hub.subscribe(events.append)
    run_once(recorder, sequence, start, args.rate)
    for index, (name, _) in enumerate(observers(build_proxy(PER_EVENT, args.state_dir).warmer)):
        best = float("inf")
        for _ in range(args.repeat):
            # A fresh warmer each time: every observer starts from empty state.
            _, observe = observers(build_proxy(PER_EVENT, args.state_dir).warmer)[index]
            gc.collect()
            began = time.process_time()
            for event in events:
                observe(event)
            best = min(best, time.process_time() - began)
        print(f"  {mix:<8} {name:<32} {best / len(events) * 1e6:6.2f} µs")


async def measure(args: argparse.Namespace) -> None:
    start = time.time()
    print(
        f"{args.events} events per run, {args.rate:.0f} per virtual second; zipf: "
        f"{args.keys} keys, {args.clients} clients; CPU time, best of {args.repeat}; "
        f"Python {sys.version.split()[0]}"
    )
    print(f"{'mix':<8} {OFF:>13} {PER_EVENT:>12} {'observe':>8} {BATCHED:>12} {'observe':>8}")
    sequences = {mix: hits(args, mix, start) for mix in args.mixes}
    for mix in args.mixes:
        best: dict[str, float] = {}
        # Rounds interleave the three, so a slow spell falls on all of them.
        for _ in range(args.repeat):
            for delivery in (OFF, PER_EVENT, BATCHED):
                # A fresh proxy per run: the tracker starts empty every time.
                proxy = build_proxy(delivery, args.state_dir)
                seconds = run_once(proxy, sequences[mix], start, args.rate)
                best[delivery] = min(best.get(delivery, seconds), seconds)
        off, on, batched = (best[d] / args.events * 1e6 for d in (OFF, PER_EVENT, BATCHED))
        print(
            f"{mix:<8} {off:>10.2f} µs {on:>9.2f} µs {on - off:>5.2f} µs "
            f"{batched:>9.2f} µs {batched - off:>5.2f} µs"
        )
    print("µs per event: emit_hit + drain, and the warmer's observe when tracking is on")
    if args.attribute:
        print("\nthe warmer's observers one by one (tracking on):")
        for mix in args.mixes:
            attribute(args, mix, sequences[mix], start)


async def profile(args: argparse.Namespace) -> None:
    start = time.time()
    sequence = hits(args, args.profile, start)
    proxy = build_proxy(BATCHED, args.state_dir)
    profiler = cProfile.Profile()
    profiler.enable()
    run_once(proxy, sequence, start, args.rate)
    profiler.disable()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(30)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000, help="events per run")
    parser.add_argument("--rate", type=float, default=20_000.0, help="events per virtual second")
    parser.add_argument("--keys", type=int, default=1000, help="distinct paths of the zipf mix")
    parser.add_argument("--clients", type=int, default=1, help="clients of the zipf mix")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (the best counts)")
    parser.add_argument(
        "--mixes",
        type=lambda s: s.split(","),
        default=list(MIXES),
        help="comma-separated, of: " + ", ".join(MIXES),
    )
    parser.add_argument(
        "--attribute", action="store_true", help="also time the warmer's observers one by one"
    )
    parser.add_argument("--profile", choices=MIXES, help="profile one mix instead")
    args = parser.parse_args(argv)
    for mix in args.mixes:
        if mix not in MIXES:
            parser.error(f"--mixes: unknown mix {mix!r} (known: {', '.join(MIXES)})")
    for name in ("events", "keys", "clients", "repeat"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if not args.rate > 0:
        parser.error(f"--rate must be positive, got {args.rate}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="warmproxy-observe-cost-") as state_dir:
        args.state_dir = state_dir
        # The proxy's objects expect a running event loop (asyncio.Event and the like).
        asyncio.run(profile(args) if args.profile else measure(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
