"""``warmproxy replay`` on the real traces, side by side with the traces' reference figures.

Replays both traces in ``../shared/traces`` (or ``--traces DIR``) at the
configurations of the traces README's table, every strategy, and prints per
configuration a table: hit ratio · warm fetches per request · precision of
each strategy, the README's reference figures beside ``none`` and
``refresh-ahead``, and requests per second of replay.  Then it times a
synthetic trace of ``--synthetic`` requests (Zipf-distributed keys, a few
clients) for ``none`` and ``all``, reading included.

    .venv/bin/python bench/replay_traces.py [--traces DIR] [--strategies a,b] [--skip-real]
        [--synthetic 1000000] [--synthetic-strategies none,all] [--skip-synthetic]
        [--repeat N]

``--repeat N`` replays each real configuration N times and reports each
strategy's best speed (the machine is noisy; the figures must not change from
one repeat to the next, which is checked).

Set ``PYTHONHASHSEED=0`` to repeat the figures of the strategies that read the
usage tracker exactly (its sketches hash with the per-process salted ``hash()``).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from warmer.replay import STRATEGY_NAMES, CacheSize, ReplayReport, ReplayResult, replay_file

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces"

WORLDCUP = "worldcup98_day6_sample.csv"
YOUTUBE = "youtube_umass_S1.csv"

# (file, cache size, ttl, reference: none hit ratio, refresh-ahead (hit ratio,
# warm fetches per request, precision)), from the traces README.
CONFIGS: tuple[tuple[str, str, float, float, tuple[float, float, float]], ...] = (
    (WORLDCUP, "20%", 300.0, 0.627, (0.739, 0.154, 0.89)),
    (WORLDCUP, "5%", 300.0, 0.475, (0.484, 0.024, 0.54)),
    (YOUTUBE, "5%", 3600.0, 0.185, (0.188, 0.013, 0.24)),
    (YOUTUBE, "20%", 3600.0, 0.199, (0.207, 0.028, 0.31)),
)


def cell(result: ReplayResult) -> str:
    precision = "-" if result.precision is None else f"{result.precision * 100:.1f} %"
    return f"{result.hit_ratio * 100:6.2f} % · {result.warm_fetches_per_request:.4f} · {precision}"


def print_report(report: ReplayReport, reference: tuple[float, tuple[float, float, float]]) -> None:
    none_ref, (ra_hit, ra_fetch, ra_prec) = reference
    refs = {
        "none": f"{none_ref * 100:.1f} %",
        "refresh-ahead": f"{ra_hit * 100:.1f} % · {ra_fetch:.3f} · {ra_prec * 100:.0f} %",
    }
    print(
        f"\n{Path(report.path).name}, cache {report.cache_size} = {report.capacity} entries, "
        f"ttl {report.ttl:g} s  ({report.summary.requests:,} requests, "
        f"{report.summary.distinct_keys:,} distinct keys)"
    )
    print(
        f"  {'strategy':<15}{'hit ratio · warm/req · precision':<36}{'gain':>9}"
        f"   {'reference':<26}{'replay req/s':>13}"
    )
    for r in report.results:
        gain = r.gain_over(report.baseline)
        gain_text = "-" if gain is None else f"{gain * 100:+.2f}"
        speed = r.requests_per_second
        print(
            f"  {r.strategy:<15}{cell(r):<36}{gain_text:>9}   {refs.get(r.strategy, ''):<26}"
            f"{'-' if speed is None else f'{speed:,.0f}':>13}"
        )


def best_of(reports: Sequence[ReplayReport]) -> ReplayReport:
    """The first report, each strategy timed at its fastest of ``reports``.

    SystemExit when a figure differs between them (a replay that does not repeat).
    """
    first = reports[0]
    figures = [[r.to_json() | {"seconds": 0} for r in report.results] for report in reports]
    if any(f != figures[0] for f in figures[1:]):
        raise SystemExit(f"{first.path}: the figures changed from one repeat to the next")
    results = tuple(
        dataclasses.replace(r, seconds=min(report.results[i].seconds for report in reports))
        for i, r in enumerate(first.results)
    )
    return dataclasses.replace(first, results=results)


def synthetic_trace(path: Path, requests: int, keys: int, clients: int, seed: int = 1) -> None:
    """A day of ``requests`` requests: Zipf(1.0) over ``keys`` keys, ``clients`` clients."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, keys + 1)
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    ranks = np.searchsorted(cdf, rng.random(requests))
    # Key names are shuffled ranks, so popularity does not follow name order.
    names = rng.permutation(keys)
    ts = np.sort(rng.uniform(0, 86_400.0, requests)) + 1_700_000_000.0
    who = rng.integers(0, clients, requests)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["ts", "key", "size", "client"])
        for t, rank, c in zip(ts.tolist(), ranks.tolist(), who.tolist(), strict=True):
            writer.writerow([f"{t:.3f}", f"/item/{names[rank]}", "", f"c{c}"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--traces", type=Path, default=DEFAULT_TRACES, help="trace directory")
    parser.add_argument(
        "--strategies", default=",".join(STRATEGY_NAMES), help="comma-separated strategies"
    )
    parser.add_argument("--synthetic", type=int, default=1_000_000, help="synthetic requests")
    parser.add_argument("--synthetic-keys", type=int, default=100_000)
    parser.add_argument(
        "--synthetic-strategies", default="none,all", help="strategies timed on the synthetic trace"
    )
    parser.add_argument("--skip-synthetic", action="store_true")
    parser.add_argument("--skip-real", action="store_true")
    parser.add_argument(
        "--repeat", type=int, default=1, help="replays of each real configuration (best speed)"
    )
    args = parser.parse_args(argv)
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]

    if not args.skip_real:
        missing = [n for n in (WORLDCUP, YOUTUBE) if not (args.traces / n).is_file()]
        if missing:
            print(f"traces not found in {args.traces}: {', '.join(missing)}", file=sys.stderr)
            return 2
        print("cells: hit ratio · warm fetches per request · precision; gain: points over none")
        for name, size, ttl, none_ref, ra_ref in CONFIGS:
            report = best_of(
                [
                    replay_file(
                        args.traces / name, strategies, cache_size=CacheSize.parse(size), ttl=ttl
                    )
                    for _ in range(max(1, args.repeat))
                ]
            )
            print_report(report, (none_ref, ra_ref))

    if not args.skip_synthetic:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "synthetic.csv"
            started = time.perf_counter()
            synthetic_trace(path, args.synthetic, args.synthetic_keys, clients=50)
            print(
                f"\nsynthetic: {args.synthetic:,} requests, Zipf(1.0) over "
                f"{args.synthetic_keys:,} keys, 50 clients "
                f"(generated in {time.perf_counter() - started:.1f} s); cache 20 %, ttl 300 s"
            )
            for strategy in [s.strip() for s in args.synthetic_strategies.split(",") if s.strip()]:
                started = time.perf_counter()
                report = replay_file(path, [strategy], cache_size=CacheSize(fraction=0.2))
                total = time.perf_counter() - started
                r = report.results[0]
                print(
                    f"  {strategy:<6} {cell(r)}  replay {r.seconds:6.1f} s "
                    f"({r.requests_per_second or 0:,.0f} req/s; with the checking pass "
                    f"and the none baseline: {total:.1f} s)"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
