"""How far warming can go on a trace: warmproxy's strategies beside oracles that see the future.

Replays a trace (default: WorldCup98 at 20 % of keys, TTL 300 s, the traces
README's first row) through ``warmer.replay``'s reference cache model with:

- ``none``, ``refresh-ahead`` and ``predictive``: the built-in strategies;
- ``oracle-refresh``: at each entry's expiry, refreshes it exactly when the
  key's next request comes within one TTL (the README's "refresh-ahead,
  oracle" column: it knows the next request);
- ``rate-oracle H θ``: at each expiry, refreshes when a Poisson process at
  the key's *true* rate would ask within one TTL with probability ≥ θ, the
  rate being the key's requests in the ``H`` seconds centred on the expiry,
  the future half included.  No model that learns a rate from the past can
  know it better, so its curve bounds what any rate-based predictor can
  reach at a given warm-fetch budget;
- ``budget-oracle``: ``oracle-refresh`` with a warm budget (refreshes only
  while warm fetches stay at or under ``--budget`` per request so far).

It prints hit ratio · warm fetches per request · precision for each, and,
for the rate oracles, the hit ratio interpolated at ``--budget`` warm fetches
per request.  Nothing is asserted: these are the bounds that the replay goals
are read against (docs/decisions.md).

    .venv/bin/python bench/replay_bounds.py [--trace FILE] [--cache-size 20%] [--ttl 300]
        [--budget 0.2] [--windows 1800,3600] [--thresholds 0.6,0.65,0.7,0.75,0.8]
"""

from __future__ import annotations

import argparse
import bisect
import heapq
import itertools
import math
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

from warmer.model import Observed, Reason, WarmRequest
from warmer.replay import CacheSize, ReplayContext, ReplayResult, ReplayStrategy, replay
from warmer.trace import key_path, read_trace, scan_trace

DEFAULT_TRACE = (
    Path(__file__).resolve().parents[2] / "shared" / "traces" / "worldcup98_day6_sample.csv"
)

# Decides, at an entry's expiry instant, whether to refresh it: (key, expiry) -> bool.
Decide = Callable[[str, float], bool]


class ExpiryOracle:
    """Follows every entry's expiry (from the access events and its own fills)
    and asks ``decide`` at each expiry instant, the replay's last chance to
    refresh the entry."""

    def __init__(self, decide: Decide) -> None:
        self.decide = decide
        self._fresh_until: dict[str, float] = {}
        self._expiries: list[tuple[float, str]] = []

    def observe(self, event: Observed) -> None:
        self._follow(event.key, event.fresh_until)

    def filled(self, key: str, url: str, host: str, now: float, fresh_until: float) -> None:
        self._follow(key, fresh_until)

    def due(self, now: float) -> list[WarmRequest]:
        out = []
        expiries = self._expiries
        while expiries and expiries[0][0] <= now:
            at, key = heapq.heappop(expiries)
            if self._fresh_until.get(key) != at or at != now:
                continue  # replaced by a newer lifetime, or passed (evicted) unasked
            if self.decide(key, at):
                out.append(
                    WarmRequest(url=key, priority="high", reason=Reason.PREDICTIVE, refresh=True)
                )
        return out

    def _follow(self, key: str, fresh_until: float) -> None:
        if fresh_until > self._fresh_until.get(key, -math.inf):
            self._fresh_until[key] = fresh_until
            heapq.heappush(self._expiries, (fresh_until, key))


class Future:
    """Every key's request times, for the oracles."""

    def __init__(self, trace: Path) -> None:
        times: dict[str, list[float]] = defaultdict(list)
        for ts, key, _size, _client in read_trace(trace):
            times[key_path(key)].append(ts)
        self.times = dict(times)
        self.requests = sum(len(t) for t in times.values())

    def next_within(self, key: str, at: float, horizon: float) -> bool:
        times = self.times.get(key, [])
        i = bisect.bisect_right(times, at)
        return i < len(times) and times[i] <= at + horizon

    def count_between(self, key: str, start: float, end: float) -> int:
        times = self.times.get(key, [])
        return bisect.bisect_right(times, end) - bisect.bisect_right(times, start)


class BudgetedOracle(ExpiryOracle):
    """The next-request oracle that refreshes only while within a warm budget."""

    def __init__(self, future: Future, ttl: float, budget: float) -> None:
        super().__init__(self._decide)
        self.future = future
        self.ttl = ttl
        self.budget = budget
        self.requests = 0
        self.fetches = 0

    def observe(self, event: Observed) -> None:
        self.requests += 1
        super().observe(event)

    def _decide(self, key: str, at: float) -> bool:
        if not self.future.next_within(key, at, self.ttl):
            return False
        if self.fetches + 1 > self.budget * max(self.requests, 1):
            return False
        self.fetches += 1
        return True


def oracle_with(decide: Decide, ctx: ReplayContext) -> ReplayStrategy:
    return ExpiryOracle(decide)


def factory(
    make: Callable[[ReplayContext], ReplayStrategy],
) -> Callable[[ReplayContext], list[ReplayStrategy]]:
    return lambda ctx: [make(ctx)]


def cell(r: ReplayResult) -> str:
    precision = "-" if r.precision is None else f"{r.precision * 100:.1f} %"
    return f"{r.hit_ratio * 100:6.2f} % · {r.warm_fetches_per_request:.4f} · {precision}"


def at_budget(points: Sequence[tuple[float, float]], budget: float) -> float | None:
    """Hit ratio at ``budget`` warm fetches per request, linear between measured points."""
    ordered = sorted(points)
    for (f0, h0), (f1, h1) in itertools.pairwise(ordered):
        if f0 <= budget <= f1:
            return h0 if f1 == f0 else h0 + (h1 - h0) * (budget - f0) / (f1 - f0)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trace", type=Path, default=DEFAULT_TRACE)
    parser.add_argument("--cache-size", default="20%")
    parser.add_argument("--ttl", type=float, default=300.0)
    parser.add_argument("--budget", type=float, default=0.2)
    parser.add_argument("--windows", default="1800,3600")
    parser.add_argument("--thresholds", default="0.6,0.65,0.7,0.75,0.8")
    args = parser.parse_args(argv)
    if not args.trace.exists():
        print(f"no trace at {args.trace}; pass --trace", file=sys.stderr)
        return 2
    summary = scan_trace(args.trace)
    capacity = CacheSize.parse(args.cache_size).capacity(summary.distinct_keys)
    ttl = args.ttl
    future = Future(args.trace)

    def run(name: str, spec: object) -> ReplayResult:
        strategy = spec if isinstance(spec, str) else (name, spec)
        result = replay(
            read_trace(args.trace),
            strategy,  # type: ignore[arg-type]
            capacity=capacity,
            ttl=ttl,
            distinct_keys=summary.distinct_keys,
        )
        print(f"  {name:<24}{cell(result)}", flush=True)
        return result

    print(
        f"{args.trace.name}: {summary.requests:,} requests, {summary.distinct_keys:,} keys, "
        f"cache {args.cache_size} = {capacity} entries, ttl {ttl:g} s"
    )
    print(f"  {'strategy':<24}hit ratio · warm/req · precision")
    for name in ("none", "refresh-ahead", "predictive"):
        run(name, name)
    run(
        "oracle-refresh",
        factory(lambda ctx: ExpiryOracle(lambda key, at: future.next_within(key, at, ttl))),
    )
    run(
        f"budget-oracle {args.budget:g}",
        factory(lambda ctx: BudgetedOracle(future, ttl, args.budget)),
    )
    for window in (float(w) for w in args.windows.split(",")):
        points = []
        for threshold in (float(t) for t in args.thresholds.split(",")):

            def decide(
                key: str, at: float, window: float = window, threshold: float = threshold
            ) -> bool:
                rate = future.count_between(key, at - window / 2, at + window / 2) / window
                return 1.0 - math.exp(-rate * ttl) >= threshold

            result = run(
                f"rate-oracle {window:g} {threshold:g}",
                factory(partial(oracle_with, decide)),
            )
            points.append((result.warm_fetches_per_request, result.hit_ratio))
        hit = at_budget(points, args.budget)
        text = "outside the measured range" if hit is None else f"{hit * 100:.2f} %"
        print(
            f"  rate-oracle {window:g}: hit ratio at {args.budget:g} warm fetches/request: {text}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
