"""The real proxy on the real traces (``warmproxy replay --live``), beside the simulation.

For WorldCup98 (cache 20 % of the distinct keys, TTL 300 s) and YouTube (5 %,
3600 s) from ``../shared/traces`` (or ``--traces DIR``), and the strategies
none, refresh-ahead and predictive: the table of ``warmproxy replay --live``
(hit ratio, warm fetches per request and precision, live beside simulated, and
the live landing share), then the goals: live hit ratio within 1.5 points of
the simulated one, landing share at least 99 %.

The live clients use three browsers (Chrome, Firefox, Safari: two distinct
``Accept-Encoding`` values against an origin that sends ``Vary:
Accept-Encoding``); ``--browsers chrome`` replays with one, as a control.

    .venv/bin/python bench/replay_live.py [--traces DIR] [--strategies none,refresh-ahead]
        [--speed N] [--browsers chrome,firefox,safari] [--only worldcup|youtube]

A run takes about ten minutes per strategy and trace at the default speed
(each trace's day in at most ten minutes); ``--speed`` trades exact timing
for time.  The table notes requests the driver sent late (a loaded machine):
late requests see the cache later than the simulation does.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from proxy.live_replay import BROWSERS, LIVE_STRATEGIES, LiveReport, format_live_table, live_replay
from warmer.replay import CacheSize

DEFAULT_TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces"

# (name, file, cache size, ttl)
CONFIGS: tuple[tuple[str, str, str, float], ...] = (
    ("worldcup", "worldcup98_day6_sample.csv", "20%", 300.0),
    ("youtube", "youtube_umass_S1.csv", "5%", 3600.0),
)
#: The goals: live hit ratio this close to the simulated one (points)...
HIT_RATIO_POINTS = 1.5
#: ...and at least this share of the landable warm fetches landing.
LANDING_SHARE = 0.99


def print_goals(report: LiveReport) -> None:
    print()
    print(f"  {'strategy':<15}{'live - sim':>12}{'':4}{'landing':>9}")
    for row in report.rows:
        diff = (row.live.hit_ratio - row.simulated.hit_ratio) * 100
        landing = row.live.landing_share
        print(
            f"  {row.strategy:<15}{diff:>+8.2f} pts"
            + ("  ok" if abs(diff) <= HIT_RATIO_POINTS else "  --")
            + (f"{landing * 100:>7.1f} %" if landing is not None else f"{'-':>9}")
            + ("" if landing is None else ("  ok" if landing >= LANDING_SHARE else "  --"))
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--traces", type=Path, default=DEFAULT_TRACES)
    parser.add_argument("--strategies", default=",".join(LIVE_STRATEGIES))
    parser.add_argument("--speed", type=float, default=None)
    parser.add_argument("--browsers", default=",".join(b.name for b in BROWSERS))
    parser.add_argument("--only", choices=[c[0] for c in CONFIGS])
    args = parser.parse_args(argv)
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    names = [n.strip() for n in args.browsers.split(",") if n.strip()]
    browsers = [b for b in BROWSERS if b.name in names]
    if not browsers or len(browsers) != len(names):
        parser.error(f"--browsers: choose from {', '.join(b.name for b in BROWSERS)}")
    # The live warmers' alerts (an improvement under target...) are not the point here.
    logging.basicConfig(level=logging.ERROR)
    print(f"browsers: {', '.join(b.name for b in browsers)}")
    for name, file, size, ttl in CONFIGS:
        if args.only and args.only != name:
            continue
        path = args.traces / file
        if not path.exists():
            print(f"\n{path}: missing, skipped", file=sys.stderr)
            continue
        started = time.perf_counter()
        report = live_replay(
            path,
            strategies,
            cache_size=CacheSize.parse(size),
            ttl=ttl,
            speed=args.speed,
            browsers=browsers,
        )
        print()
        print(format_live_table(report))
        print_goals(report)
        print(f"  ({time.perf_counter() - started:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
