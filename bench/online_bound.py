"""The most any online warming policy can gain on the ``long-tail`` kind, at a budget.

``oracle-prefetch`` knows which key comes back next.  An online policy only
knows the past, and on ``long-tail`` the past tells nothing the generator's own
hourly model does not: given each hour's :class:`~warmer.workloads.LongTailHour`
(the popularity of every item that hour), each request's time and key are drawn
independently of every earlier request.  So a policy told that model exactly
bounds every online policy, and this bench bounds that policy.

The bound, for TTL ``L`` (entries expire; no policy prevents more than this):

- In a cache of unbounded size with no warming, a request misses when no fill
  of its key came in the ``L`` seconds before it: the misses are the fewest
  windows of ``L`` seconds, each starting at a request, that cover all of a
  key's requests.  With warm fills, a policy's fills still cover every request
  (a hit lies in the window of its key's last fill), so its misses are at least
  that number less the warms whose window (until the next fill of the key)
  held a request: the *used* warms.  A bounded cache only adds misses.  So
  ``gain <= (misses of none in the real cache - misses of none unbounded) + used``.
- A warm of item ``k`` made at any time, by any rule that reads only the past,
  is used with probability at most ``v_k``: the most likely that ``k`` is asked
  for within some ``L`` seconds (over every hour, and across an hour's boundary
  never more than the larger hour's).  And a key's used warms own disjoint
  windows, each holding one of its requests: at most ``R_k``, its expected
  requests.  With at most ``budget x requests`` warm fetches in all, the
  expected used warms are at most the greedy fill of
  ``max sum_k min(m_k v_k, R_k)`` subject to ``sum_k m_k <= budget x requests``.

The first term is measured on the trace (``none`` replayed in the real cache and
in one holding every key); the second is an expectation over the generator.
The figures print beside ``none``, ``predictive`` and ``oracle-prefetch`` at the
same budget, for the quick matrix's long-tail (15,000 requests, seed 1) and the
kind's default scale:

    .venv/bin/python bench/online_bound.py [--scales 15000,200000] [--seed 1]
        [--ttl 300] [--cache-sizes 5%,20%] [--budget 0.2]

It prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from warmer.replay import CacheSize, replay
from warmer.workloads import LongTailHour, long_tail, write_csv


def used_warm_bound(model: Sequence[LongTailHour], ttl: float, budget: float) -> float:
    """The most warms any online policy can expect to have used, with at most
    ``budget`` warm fetches (see the module's docstring)."""
    newest = max((item for h in model for item, _, _ in h.new), default=-1)
    ids = max(max(len(h.order) for h in model), newest + 1)
    zipf = np.asarray(model[0].zipf, dtype=np.float64)
    best = np.zeros(ids)  # v_k: the likeliest a warm of k is used
    expected = np.zeros(ids)  # R_k: k's expected requests
    for hour in model:
        share = np.zeros(ids)
        share[np.frombuffer(hour.order, dtype=np.int32)] = zipf
        # Each of the hour's requests is in a window of ttl seconds with
        # probability ttl / span, and is for k with probability share[k].
        window = min(1.0, ttl / hour.span)
        miss_all = (1.0 - share * window) ** hour.count
        np.maximum(best, 1.0 - miss_all, out=best)
        expected += hour.count * share
        end = hour.begin + hour.span
        for item, born, p in hour.new:
            # A new item's requests fall after it is added.
            active = end - max(born, hour.begin)
            x = min(1.0, p * ttl / active) if active > 0 else 1.0
            best[item] = max(best[item], 1.0 - (1.0 - x) ** hour.count)
            expected[item] += hour.count * p
    order = np.argsort(-best, kind="stable")
    left = budget
    used = 0.0
    for k in order:
        v = best[k]
        if v <= 0.0 or left <= 0.0:
            break
        warms = min(left, expected[k] / v)  # past R_k / v_k a warm of k adds nothing
        used += warms * v
        left -= warms
    return used


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scales", default="15000,200000")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--ttl", type=float, default=300.0)
    parser.add_argument("--cache-sizes", default="5%,20%")
    parser.add_argument("--budget", type=float, default=0.2, help="warm fetches per request")
    args = parser.parse_args(argv)
    if not (args.ttl > 0 and math.isfinite(args.ttl)):
        parser.error("--ttl must be positive seconds (never-expiring entries are not bounded here)")
    print(
        f"long-tail, ttl {args.ttl:g} s, budget {args.budget:g} warm fetches per request; "
        "gains over none in points"
    )
    print(
        f"{'requests':>9} {'cache':>6} {'none %':>7} {'capacity':>9} {'used ≤':>7} "
        f"{'bound':>7} {'pred':>7} {'o-pf':>7} {'½ o-pf':>7}"
    )
    # oracle-prefetch reads the trace's future from its file.
    with tempfile.TemporaryDirectory(prefix="online-bound-") as folder:
        for scale in (int(s) for s in args.scales.split(",")):
            model: list[LongTailHour] = []
            rows = long_tail(scale, seed=args.seed, model=model)
            path = Path(folder) / f"long-tail-{scale}.csv"
            write_csv(path, rows)
            distinct = len({r[1] for r in rows})
            used = used_warm_bound(model, args.ttl, args.budget * scale)
            unbounded = replay(rows, "none", capacity=distinct, ttl=args.ttl).hits
            for size in args.cache_sizes.split(","):
                capacity = CacheSize.parse(size).capacity(distinct)
                results = {
                    name: replay(
                        rows,
                        name,
                        capacity=capacity,
                        ttl=args.ttl,
                        distinct_keys=distinct,
                        path=path,
                        max_warm_ratio=args.budget,
                    )
                    for name in ("none", "predictive", "oracle-prefetch")
                }
                none = results["none"]
                capacity_gain = 100.0 * (unbounded - none.hits) / scale
                bound = capacity_gain + 100.0 * used / scale
                pred = 100.0 * (results["predictive"].hits - none.hits) / scale
                opf = 100.0 * (results["oracle-prefetch"].hits - none.hits) / scale
                print(
                    f"{scale:>9,} {size:>6} {100.0 * none.hit_ratio:>7.2f} {capacity_gain:>+9.2f} "
                    f"{100.0 * used / scale:>+7.2f} {bound:>+7.2f} {pred:>+7.2f} {opf:>+7.2f} "
                    f"{opf / 2:>+7.2f}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
