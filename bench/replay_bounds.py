"""How far warming can go on a trace: warmproxy's strategies beside oracles that see the future.

Replays a trace (default: WorldCup98 at 20 % of keys, TTL 300 s, the traces
README's first row) through ``warmer.replay``'s reference cache model and
prints hit ratio · warm fetches per request · precision, each with the
command that repeats it:

- ``none``, ``refresh-ahead``, ``predictive``: the built-in strategies;
- ``oracle``: at each entry's expiry E, refreshes it exactly when its key is
  asked for in [E, E + TTL) (the README's "refresh-ahead, oracle", no budget);
- ``oracle, first come first served``: the same, refreshing while its warm
  fetches stay within ``--budget`` per request so far.  Not a bound: it
  spends its budget on whichever expiry comes first;
- (a) ``oracle, soonest next request``: of the refreshes ``oracle`` would
  make, the ones whose next request comes soonest, within the budget: a
  refresh at E whose next request comes at E + g is made when g < δ, δ the
  largest (found by bisection) that keeps warm fetches within ``--budget``
  times the trace's requests (an allowance for the whole trace).  A
  refresh whose request comes soon cuts the entry's next lifetime short
  the least, so it is worth the most;
- (b) ``per-key optimum``: the refreshes chosen optimally key by key under
  the budget (see :func:`per_key_optimum`): an upper bound on every
  strategy that only refreshes entries at their expiry, and the hit ratio
  its chosen refreshes reach when replayed in the LRU cache;
- (c) ``oracle-prefetch``: a warm fetch just before each repeat request that
  would miss, held to ``--budget`` (``warmproxy replay --strategies
  oracle-prefetch --max-warm-ratio``).  Each of its warm fetches saves one
  miss and changes nothing else, so it reaches ``none`` plus the whole
  budget: the ceiling for any strategy whose warm fetches save at most one
  miss each;
- (d) with ``--ttl never``, ``keep-only optimum``: Belady's MIN, the
  eviction order that knows the future: the ceiling for any policy that
  only decides which entries stay cached, with no warm fetch (the
  predictive model's touches, warmer.retention);
- ``rate-oracle H θ``: refreshes when a Poisson process at the key's true
  rate (its requests in the ``H`` seconds around the expiry, future half
  included) asks within a TTL with probability ≥ θ: what a rate-based
  predictor could reach at best (interpolated at ``--budget``).

Then, for the goal (``--goal``, default 78 %), the share of each bound's gain
over ``none`` it asks for.  Nothing is asserted: these are the bounds the
replay goals are read against (docs/decisions.md).

    PYTHONHASHSEED=0 .venv/bin/python bench/replay_bounds.py [--trace FILE]
        [--cache-size 20%] [--ttl 300] [--budget 0.2] [--goal 0.78]
        [--windows 1800,3600] [--thresholds 0.6,0.65,0.7,0.75,0.8]
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from warmer.model import Observed
from warmer.oracle import ExpiryOracle, Foresight, refreshes_when_asked_again
from warmer.replay import (
    CacheSize,
    ReplayContext,
    ReplayResult,
    ReplayStrategy,
    StrategySpec,
    format_ttl,
    parse_ttl,
    replay,
)
from warmer.trace import read_trace, scan_trace

DEFAULT_TRACE = (
    Path(__file__).resolve().parents[2] / "shared" / "traces" / "worldcup98_day6_sample.csv"
)
Factory = Callable[[ReplayContext], list[ReplayStrategy]]


class BudgetedOracle(ExpiryOracle):
    """The next-request oracle that refreshes only while within a warm budget,
    first come first served (the budget: warm fetches per request so far)."""

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


def soonest_oracle(foresight: Foresight, gap: float) -> Factory:
    """Refresh a cached entry at its expiry E when its key's next request
    comes in [E, E + min(gap, TTL))."""

    def make(ctx: ReplayContext) -> list[ReplayStrategy]:
        horizon = min(gap, ctx.ttl)
        cached = ctx.cached
        return [
            ExpiryOracle(lambda key, at: cached(key) and foresight.next_within(key, at, horizon))
        ]

    return make


def chosen_refreshes(chosen: dict[str, set[float]]) -> Factory:
    """Refresh a cached entry at its expiry exactly when ``(key, expiry)`` was chosen."""

    def make(ctx: ReplayContext) -> list[ReplayStrategy]:
        cached = ctx.cached
        return [ExpiryOracle(lambda key, at: at in chosen.get(key, ()) and cached(key))]

    return make


def rate_oracle(foresight: Foresight, window: float, threshold: float) -> Factory:
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


# -- (b) the per-key optimum -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PerKey:
    """The per-key relaxation solved at one price ``lam`` of a warm fetch."""

    lam: float
    hits: int  # of the best schedules, summed over keys
    warms: int
    value: float  # hits - lam * warms of the best schedules
    chosen: dict[str, set[float]]  # refresh instants of the best schedules (when asked)


# A schedule's state after a request: (expiry, value, hits, warms, refreshes).
# ``refreshes``: a linked list (instant, rest) of its refresh instants, or None.
_State = tuple[float, float, int, int, "tuple[float, object] | None"]


def _best_schedule(
    times: Sequence[float], ttl: float, lam: float, keep: bool
) -> tuple[float, int, int, set[float]]:
    """One key's best refresh-only schedule at price ``lam`` per warm fetch:
    (value, hits, warms, refresh instants when ``keep``).

    The relaxation (see :func:`per_key_optimum`): no capacity, and the entry
    may be dropped at any request (the miss an eviction would cause).  The
    states after each request form a Pareto front over (expiry, value):
    a later expiry with at least the value is at least as good (from it the
    same requests can be covered with no more refreshes, the refresh instants
    interleaving), so only states whose value rises as their expiry falls
    are kept.
    """
    first = times[0]
    states: list[_State] = [(first + ttl, 0.0, 0, 0, None)]
    for t in times[1:]:
        best = max(states, key=lambda s: s[1])
        nxt: list[_State] = [(t + ttl, best[1], best[2], best[3], best[4])]  # a miss at t
        for e, v, h, w, refreshes in states:
            if e > t:
                nxt.append((e, v + 1.0, h + 1, w, refreshes))  # still fresh: a hit
                continue
            # Refresh at every expiry up to t, so the entry is fresh at t.
            j = math.floor((t - e) / ttl) + 1
            if 1.0 - j * lam <= 0.0:
                continue  # no better than the miss, which ends later
            at = e
            for _ in range(j):
                if keep:
                    refreshes = (at, refreshes)
                at += ttl
            while at <= t:  # float rounding in j
                if keep:
                    refreshes = (at, refreshes)
                at += ttl
                j += 1
            nxt.append((at, v + 1.0 - j * lam, h + 1, w + j, refreshes))
        nxt.sort(key=lambda s: (-s[0], -s[1]))
        states = []
        top = -math.inf
        for state in nxt:
            if state[1] > top:
                states.append(state)
                top = state[1]
    e, v, h, w, refreshes = max(states, key=lambda s: s[1])
    instants: set[float] = set()
    node = refreshes
    while node is not None:
        instants.add(node[0])
        node = node[1]  # type: ignore[assignment]
    return v, h, w, instants


def per_key_optimum(foresight: Foresight, ttl: float, lam: float, keep: bool = False) -> PerKey:
    """Every key's best refresh-only schedule when a warm fetch costs ``lam`` hits.

    The relaxation.  Key by key, with no capacity limit, and the entry
    allowed to be dropped at any time (at the cost of the miss that follows):
    a schedule refreshes the entry at some of its expiry instants; a request
    is a hit when the entry is fresh (expiry after it).  Any run of the
    simulated LRU cache whose warm fetches are refreshes at expiry instants
    is, key by key, such a schedule or is beaten by one (an eviction is a
    drop; refreshes that do not reach the next request are dropped), with the
    same hits and no more warm fetches.  So for every price ``lam`` >= 0,
    ``value + lam * budget`` (the Lagrangian dual) bounds the hits of every
    refresh-only strategy held to ``budget`` warm fetches; the smallest over
    ``lam`` is the bound printed.  It ignores the LRU's capacity, so it
    stays an upper bound wherever refreshes keep more entries alive than
    the cache holds; it is tight where the cache holds what the refreshes
    keep.
    """
    hits = warms = 0
    value = 0.0
    chosen: dict[str, set[float]] = {}
    for key, times in foresight.items():
        v, h, w, instants = _best_schedule(times, ttl, lam, keep)
        value += v
        hits += h
        warms += w
        if instants:
            chosen[key] = instants
    return PerKey(lam, hits, warms, value, chosen)


def per_key_at_budget(
    foresight: Foresight, ttl: float, allowance: float, iterations: int = 20
) -> tuple[float, PerKey, PerKey]:
    """Bisect the price of a warm fetch: (the dual bound on hits, the solution
    just within ``allowance`` warm fetches, the one just over it)."""
    low, high = 0.0, 1.0  # at a price of one hit per warm fetch nothing is refreshed
    under = per_key_optimum(foresight, ttl, high)
    over = per_key_optimum(foresight, ttl, 1e-9)
    bound = min(under.value + high * allowance, over.value + over.lam * allowance)
    if over.warms <= allowance:
        return bound, per_key_optimum(foresight, ttl, over.lam, keep=True), over
    for _ in range(iterations):
        mid = (low + high) / 2
        solved = per_key_optimum(foresight, ttl, mid)
        bound = min(bound, solved.value + mid * allowance)
        if solved.warms <= allowance:
            high, under = mid, solved
        else:
            low, over = mid, solved
    return bound, per_key_optimum(foresight, ttl, under.lam, keep=True), over


# -- printing ------------------------------------------------------------------------


def keep_only_optimum(keys: Sequence[str], capacity: int) -> int:
    """Hits of Belady's MIN on ``keys`` with room for ``capacity`` entries that
    never expire: on a miss with the cache full, evict the entry whose next
    request comes last.  No policy that only decides which entries stay
    cached (the predictive model's touches, any eviction order), without a
    warm fetch, makes more hits on the same cache."""
    following: list[float] = [math.inf] * len(keys)
    seen: dict[str, float] = {}
    for i in range(len(keys) - 1, -1, -1):
        following[i] = seen.get(keys[i], math.inf)
        seen[keys[i]] = i
    cached: dict[str, float] = {}  # key -> its next request
    latest: list[tuple[float, str]] = []  # (-next request, key), stale items skipped
    hits = 0
    for i, key in enumerate(keys):
        if key in cached:
            hits += 1
        elif len(cached) >= capacity:
            while True:
                negated, victim = heapq.heappop(latest)
                if cached.get(victim) == -negated:
                    del cached[victim]
                    break
        cached[key] = following[i]
        heapq.heappush(latest, (-following[i], key))
    return hits


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
    parser.add_argument("--ttl", type=parse_ttl, default=300.0, help="seconds, or never")
    parser.add_argument("--budget", type=float, default=0.2, help="warm fetches per request")
    parser.add_argument("--goal", type=float, default=0.78, help="hit ratio aimed at")
    parser.add_argument("--windows", default="1800,3600", help="rate oracles ('' for none)")
    parser.add_argument("--thresholds", default="0.6,0.65,0.7,0.75,0.8")
    args = parser.parse_args(argv)
    if not args.trace.exists():
        print(f"no trace at {args.trace}; pass --trace", file=sys.stderr)
        return 2
    summary = scan_trace(args.trace)
    capacity = CacheSize.parse(args.cache_size).capacity(summary.distinct_keys)
    foresight = Foresight(read_trace(args.trace))
    ttl: float = args.ttl
    budget: float = args.budget
    allowance = budget * summary.requests
    ttl_flag = "never" if math.isinf(ttl) else f"{ttl:g}"
    trace = os.path.relpath(args.trace)
    replay_cmd = f"warmproxy replay {trace} --cache-size {args.cache_size} --ttl {ttl_flag}"
    bench_cmd = (
        f"PYTHONHASHSEED=0 .venv/bin/python bench/replay_bounds.py --trace {trace} "
        f"--cache-size {args.cache_size} --ttl {ttl_flag} --budget {budget:g}"
    )

    def run(
        name: str,
        spec: StrategySpec | Factory,
        command: str | None = None,
        max_warm_ratio: float = math.inf,
        quiet: bool = False,
    ) -> ReplayResult:
        result = replay(
            read_trace(args.trace),
            spec if isinstance(spec, (str, tuple)) else (name, spec),
            capacity=capacity,
            ttl=ttl,
            distinct_keys=summary.distinct_keys,
            path=args.trace,
            max_warm_ratio=max_warm_ratio,
        )
        if not quiet:
            print(f"  {name:<40}{cell(result)}", flush=True)
            if command:
                print(f"  {'':<40}$ {command}", flush=True)
        return result

    print(
        f"{args.trace.name}: {summary.requests:,} requests, {summary.distinct_keys:,} keys, "
        f"cache {args.cache_size} = {capacity} entries, ttl {format_ttl(ttl)}, "
        f"budget {budget:g} warm fetches/request"
    )
    print(f"every figure: $ {bench_cmd}")
    print("a figure warmproxy replay repeats alone: its command below it")
    print(f"  {'strategy':<40}hit ratio · warm/req · precision")
    none = run("none", "none", f"{replay_cmd} --strategies none")
    run("refresh-ahead", "refresh-ahead", f"{replay_cmd} --strategies refresh-ahead")
    run("predictive", "predictive", f"{replay_cmd} --strategies predictive")
    run("oracle (no budget)", "oracle", f"{replay_cmd} --strategies oracle")
    run(
        "oracle, first come first served",
        lambda ctx: [BudgetedOracle(ctx, foresight, budget)],
    )

    # (a) the soonest next requests within the allowance: bisect the gap.
    low, high = 0.0, (ttl if not math.isinf(ttl) else 86_400.0)
    soonest = run("", soonest_oracle(foresight, high), quiet=True)
    gap = high
    if soonest.warm_fetches > allowance:
        soonest = run("", soonest_oracle(foresight, low), quiet=True)
        gap = low
        for _ in range(12):
            mid = (low + high) / 2
            tried = run("", soonest_oracle(foresight, mid), quiet=True)
            if tried.warm_fetches <= allowance:
                low, soonest, gap = mid, tried, mid
            else:
                high = mid
    print(f"  {'(a) oracle, soonest next request':<40}{cell(soonest)}")
    print(f"  {'':<40}  (refreshes whose next request comes within {gap:.1f} s of the expiry)")

    # (b) the per-key optimum: the dual bound, and its refreshes replayed.
    if math.isinf(ttl):
        print("  (b) per-key optimum: nothing expires, nothing to refresh")
        bound_b = none.hit_ratio
    else:
        dual, under, over = per_key_at_budget(foresight, ttl, allowance)
        bound_b = dual / summary.requests
        realized = run("", chosen_refreshes(under.chosen), quiet=True)
        n = summary.requests
        print(
            f"  {'(b) per-key optimum, upper bound':<40}{bound_b * 100:6.2f} % "
            f"(Lagrangian dual; a warm fetch priced at {under.lam:.4g} hits)"
        )
        print(
            f"  {'':<40}  relaxed schedules: {under.hits / n * 100:.2f} % at "
            f"{under.warms / n:.4f} warm/req, {over.hits / n * 100:.2f} % at {over.warms / n:.4f}"
        )
        print(f"  {'(b) its refreshes, replayed in the LRU':<40}{cell(realized)}")

    # (c) oracle-prefetch held to the budget.
    prefetch = run(
        f"(c) oracle-prefetch held to {budget:g}",
        "oracle-prefetch",
        f"{replay_cmd} --strategies oracle-prefetch --max-warm-ratio {budget:g}",
        max_warm_ratio=budget,
    )

    # (d) what keeping alone can reach: the optimal eviction order.
    if math.isinf(ttl):
        keys = [row[1] for row in read_trace(args.trace)]
        optimum = keep_only_optimum(keys, capacity) / len(keys)
        print(
            f"  {'(d) keep-only optimum (Belady MIN)':<40}{optimum * 100:6.2f} % "
            "(no warm fetch: which entries stay, chosen knowing the future)"
        )

    windows = [float(w) for w in args.windows.split(",") if w.strip()]
    for window in windows:
        points = []
        for threshold in (float(t) for t in args.thresholds.split(",")):
            result = run(
                f"rate-oracle {window:g} {threshold:g}", rate_oracle(foresight, window, threshold)
            )
            points.append((result.warm_fetches_per_request, result.hit_ratio))
        hit = at_budget(points, budget)
        text = "outside the measured range" if hit is None else f"{hit * 100:.2f} %"
        print(f"  rate-oracle {window:g}: hit ratio at {budget:g} warm fetches/request: {text}")

    goal = args.goal
    print(
        f"the goal {goal * 100:g} % is {(goal - none.hit_ratio) * 100:.2f} points over none; "
        "of each bound's gain it asks for:"
    )
    for name, hit_ratio in (
        ("(a) soonest next request", soonest.hit_ratio),
        ("(b) per-key optimum, upper bound", bound_b),
        ("(c) oracle-prefetch", prefetch.hit_ratio),
    ):
        gain = hit_ratio - none.hit_ratio
        asked = goal - none.hit_ratio
        share = "-" if gain <= 0 or asked <= 0 else f"{asked / gain * 100:.1f} %"
        print(f"  {name:<40}{hit_ratio * 100:6.2f} % (+{gain * 100:.2f} points): {share}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
