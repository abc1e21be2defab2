"""How far warming can go on a trace: warmproxy's strategies beside oracles that see the future.

Replays a trace (default: WorldCup98 at 20 % of keys, TTL 300 s, the traces
README's first row) through ``warmer.replay``'s reference cache model with:

- ``none``, ``refresh-ahead`` and ``predictive``: the built-in strategies;
- ``oracle``: at each entry's expiry, refreshes it exactly when the key's
  next request comes within one TTL (the README's "refresh-ahead, oracle"
  column: it knows the next request; ``warmproxy replay --strategies oracle``);
- ``rate-oracle H θ``: at each expiry, refreshes when a Poisson process at
  the key's *true* rate would ask within one TTL with probability ≥ θ, the
  rate being the key's requests in the ``H`` seconds centred on the expiry,
  the future half included.  No model that learns a rate from the past can
  know it better, so its curve bounds what any rate-based predictor can
  reach at a given warm-fetch budget;
- ``budget-oracle``: ``oracle`` with a warm budget (refreshes only
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
import itertools
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from warmer.model import Observed
from warmer.oracle import ExpiryOracle, Foresight, refreshes_when_asked_again
from warmer.replay import CacheSize, ReplayContext, ReplayResult, ReplayStrategy, replay
from warmer.trace import read_trace, scan_trace

DEFAULT_TRACE = (
    Path(__file__).resolve().parents[2] / "shared" / "traces" / "worldcup98_day6_sample.csv"
)


class BudgetedOracle(ExpiryOracle):
    """The next-request oracle that refreshes only while within a warm budget."""

    def __init__(self, ctx: ReplayContext, foresight: Foresight, budget: float) -> None:
        super().__init__(self._decide)
        self.wanted = refreshes_when_asked_again(foresight, ctx.ttl, ctx.cached)
        self.budget = budget
        self.requests = 0
        self.fetches = 0

    def observe(self, event: Observed) -> None:
        self.requests += 1
        super().observe(event)

    def _decide(self, key: str, at: float) -> bool:
        if not self.wanted(key, at):
            return False
        if self.fetches + 1 > self.budget * max(self.requests, 1):
            return False
        self.fetches += 1
        return True


def rate_oracle(
    foresight: Foresight, window: float, threshold: float
) -> Callable[[ReplayContext], list[ReplayStrategy]]:
    """Refresh when a Poisson process at the key's true rate (its requests in
    ``window`` seconds centred on the expiry) asks within a TTL with
    probability at least ``threshold``."""

    def make(ctx: ReplayContext) -> list[ReplayStrategy]:
        def decide(key: str, at: float) -> bool:
            if not ctx.cached(key):
                return False
            rate = foresight.count_between(key, at - window / 2, at + window / 2) / window
            return 1.0 - math.exp(-rate * ctx.ttl) >= threshold

        return [ExpiryOracle(decide)]

    return make


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
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
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
    foresight = Foresight(read_trace(args.trace))

    def run(name: str, spec: str | Callable[[ReplayContext], list[ReplayStrategy]]) -> ReplayResult:
        result = replay(
            read_trace(args.trace),
            spec if isinstance(spec, str) else (name, spec),
            capacity=capacity,
            ttl=args.ttl,
            distinct_keys=summary.distinct_keys,
            path=args.trace,
        )
        print(f"  {name:<24}{cell(result)}", flush=True)
        return result

    print(
        f"{args.trace.name}: {summary.requests:,} requests, {summary.distinct_keys:,} keys, "
        f"cache {args.cache_size} = {capacity} entries, ttl {args.ttl:g} s"
    )
    print(f"  {'strategy':<24}hit ratio · warm/req · precision")
    for name in ("none", "refresh-ahead", "predictive", "oracle"):
        run(name, name)
    run(
        f"budget-oracle {args.budget:g}",
        lambda ctx: [BudgetedOracle(ctx, foresight, args.budget)],
    )
    for window in (float(w) for w in args.windows.split(",")):
        points = []
        for threshold in (float(t) for t in args.thresholds.split(",")):
            result = run(
                f"rate-oracle {window:g} {threshold:g}", rate_oracle(foresight, window, threshold)
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
