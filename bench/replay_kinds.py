"""Replay on kinds of traffic the public traces do not cover, generated with a seed.

The predictive model's defaults were chosen on two traces (WorldCup98, YouTube);
this checks them on three other shapes of traffic, so a default tuned to those
two would show here:

- ``polling``: API clients re-asking for one resource each every 30-300 s (a
  dashboard, a status page), a few hours each, Pareto-popular resources;
- ``browsing``: sessions paging through a category (``?page=1``, 2, ... while
  the user goes on) with product pages between, over a day;
- ``cdn``: a Zipf catalogue plus new objects every hour that are hot for a
  while, at a day-shaped rate, over two days.

Each is replayed at two TTLs with ``none``, ``refresh-ahead``, ``predictive``,
``all`` and the ``oracle`` bound, and printed as hit ratio · warm fetches per
request · precision and the gain over ``none``.  It asserts nothing.

    .venv/bin/python bench/replay_kinds.py [--cache-size 10%] [--scale 1.0] [--kinds polling,cdn]
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from warmer.replay import CacheSize, replay_file

T0 = 1_700_000_000.0
HOUR = 3600.0
Rows = list[tuple[float, str, str]]


def polling(rng: random.Random, scale: float) -> Rows:
    rows: Rows = []
    for c in range(int(3000 * scale)):
        resource = f"/api/items/{int(rng.paretovariate(0.8)) % 3000}"
        period = rng.choice([30.0, 60.0, 120.0, 300.0])
        t = T0 + rng.uniform(0, 12 * HOUR)
        end = min(t + rng.uniform(300, 4 * HOUR), T0 + 12 * HOUR)
        while t < end:
            rows.append((t, resource, f"c{c}"))
            t += period + rng.uniform(-2, 2)
    return rows


def browsing(rng: random.Random, scale: float) -> Rows:
    rows: Rows = []
    for s in range(int(40_000 * scale)):
        t = T0 + rng.uniform(0, 24 * HOUR)
        category = int(rng.paretovariate(1.0)) % 50
        page = 1
        while True:
            rows.append((t, f"/cat/{category}?page={page}", f"u{s}"))
            for _ in range(rng.randrange(3)):
                t += rng.uniform(2, 20)
                rows.append((t, f"/product/{int(rng.paretovariate(0.8)) % 20_000}", f"u{s}"))
            if rng.random() > 0.7:
                break
            page += 1
            t += rng.uniform(3, 30)
    return rows


def cdn(rng: random.Random, scale: float) -> Rows:
    rows: Rows = []
    for hour in range(48):
        rate = 2000 * scale * (1.2 + math.sin((hour % 24 - 6) / 24 * 2 * math.pi))
        new = [f"/obj/{hour}/{i}" for i in range(200)]
        for _ in range(int(rate)):
            t = T0 + hour * HOUR + rng.uniform(0, HOUR)
            if rng.random() < 0.3:
                key = new[int(rng.paretovariate(1.0)) % 200]
            else:
                key = f"/static/{int(rng.paretovariate(0.9)) % 50_000}"
            rows.append((t, key, f"c{rng.randrange(3000)}"))
    return rows


KINDS: dict[str, tuple[Callable[[random.Random, float], Rows], tuple[float, float]]] = {
    "polling": (polling, (60.0, 600.0)),
    "browsing": (browsing, (60.0, 600.0)),
    "cdn": (cdn, (60.0, 600.0)),
}
STRATEGIES = ("none", "refresh-ahead", "predictive", "all", "oracle")


def write(path: Path, rows: Rows) -> None:
    rows.sort()
    with path.open("w") as out:
        out.write("ts,key,size,client\n")
        for ts, key, client in rows:
            out.write(f"{ts:.3f},{key},,{client}\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--cache-size", default="10%")
    parser.add_argument("--scale", type=float, default=1.0, help="traffic volume factor")
    parser.add_argument("--kinds", default=",".join(KINDS))
    args = parser.parse_args(argv)
    size = CacheSize.parse(args.cache_size)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.kinds.split(","):
            generate, ttls = KINDS[name]
            path = Path(tmp) / f"{name}.csv"
            write(path, generate(random.Random(1), args.scale))
            for ttl in ttls:
                report = replay_file(path, STRATEGIES, cache_size=size, ttl=ttl)
                s = report.summary
                print(
                    f"\n{name}: {s.requests:,} requests, {s.distinct_keys:,} keys, "
                    f"cache {report.capacity:,} entries, ttl {ttl:g} s"
                )
                for r in report.results:
                    gain = r.gain_over(report.baseline) or 0.0
                    precision = "-" if r.precision is None else f"{r.precision * 100:.1f} %"
                    print(
                        f"  {r.strategy:<14}{r.hit_ratio * 100:6.2f} % · "
                        f"{r.warm_fetches_per_request:.4f} · {precision:<8}{gain * 100:+6.2f}"
                    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
