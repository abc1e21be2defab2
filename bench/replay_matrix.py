"""Does ``predictive`` dominate the simple strategies at equal spend, on every kind of traffic?

For each trace (the two public traces in ``../shared/traces`` and every
generated kind of :mod:`warmer.workloads`), each TTL (60 s, 300 s, 3600 s and
never-expiring, once the replay supports it) and each cache size (1 %, 5 %,
20 %, 50 % of the trace's distinct keys), it replays ``none``, ``reactive``,
``refresh-ahead``, ``scheduled-top``, ``markov``, ``predictive`` (its default
configuration) and ``oracle-prefetch`` (held to predictive's default warm
budget); ``markov`` and ``oracle-prefetch`` where the replay has them.  Then,
for each baseline B among ``reactive``, ``refresh-ahead``, ``scheduled-top``
and ``markov`` that spends more warm fetches per request (w_B) than
predictive's default budget, it replays ``predictive`` again with
``max_warm_ratio = w_B`` (:func:`predictive_at`), and judges each cell:

- (i) at equal spend, predictive's hit ratio is at least each baseline's
  less 0.5 points (the default predictive where the baseline spends less);
- (ii) predictive gains at least half of ``oracle-prefetch``'s gain over
  ``none`` at the same budget, wherever that gain is above 2 points;
- (iii) no strategy's hit ratio is below ``none``'s less 0.1 points.

It prints a table per trace (the gain over ``none`` of each strategy, in
points, predictive at each baseline's spend, PASS/FAIL per criterion), then
a summary: cells passing and failing each criterion and the worst deficits.
``--json FILE`` writes every result and verdict, to compare runs.  It
asserts nothing; the exit status is 0 whatever the verdicts.

    .venv/bin/python bench/replay_matrix.py [--quick] [--jobs 2] [--json FILE]
        [--kinds a,b] [--skip-real] [--traces DIR] [--scale N] [--seed S]
        [--ttls 60,300,never] [--caches 1%,20%] [--real-limit N]

The full matrix (about 200 cells, 40,000 requests per generated kind, the
public traces whole) takes 10-20 minutes on one core; ``--quick`` (TTL 300 s
and never, caches 5 % and 20 %, 15,000 requests per kind, the first 50,000
requests of each public trace) about two.  ``--jobs 2`` runs cells in two
processes.  It sets ``PYTHONHASHSEED`` (re-running itself) when it is not
set, so the strategies that read the usage tracker repeat exactly.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import math
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from warmer.predictive import PredictiveConfig, Predictor
from warmer.replay import (
    STRATEGIES,
    CacheSize,
    ReplayContext,
    ReplayResult,
    ReplayStrategy,
    StrategyFactory,
    replay,
)
from warmer.trace import TraceRow, read_trace, scan_trace
from warmer.workloads import WORKLOADS, generate, write_csv

DEFAULT_TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces"
REAL = (("worldcup98", "worldcup98_day6_sample.csv"), ("youtube", "youtube_umass_S1.csv"))

BASELINES = ("reactive", "refresh-ahead", "scheduled-top", "markov")
STRATEGY_ORDER = (
    "none",
    "reactive",
    "refresh-ahead",
    "scheduled-top",
    "markov",
    "predictive",
    "oracle-prefetch",
)
ORACLES = frozenset({"oracle-prefetch"})
SHORT = {
    "reactive": "react",
    "refresh-ahead": "r-ahead",
    "scheduled-top": "top",
    "markov": "markov",
    "predictive": "pred",
    "oracle-prefetch": "o-pf",
}
TTLS = (60.0, 300.0, 3600.0, math.inf)
CACHES = (0.01, 0.05, 0.2, 0.5)
QUICK_TTLS = (300.0, math.inf)
QUICK_CACHES = (0.05, 0.2)
SCALE, QUICK_SCALE = 40_000, 15_000
QUICK_REAL_LIMIT = 50_000

#: (i): predictive may trail a baseline at equal spend by at most this much hit ratio.
EQUAL_SPEND_SLACK = 0.005
#: (ii): the oracle's gain above which predictive must capture ORACLE_SHARE of it.
ORACLE_GAIN_MIN = 0.02
ORACLE_SHARE = 0.5
#: (iii): no strategy below none by more than this.
NONE_SLACK = 0.001
#: Deficits listed per criterion in the summary (--json keeps them all).
WORST_SHOWN = 12
#: Float noise allowed in the comparisons (hit ratios are ratios of counts).
EPS = 1e-9


# ------------------------------------------------------------ what runs


@dataclass(frozen=True, slots=True)
class Features:
    """What the replay in this tree supports (other work lands at its own pace)."""

    markov: bool
    oracle_prefetch: bool
    never: bool
    budget: bool  # replay() takes max_warm_ratio (the oracle's budget)

    @classmethod
    def detect(cls) -> Features:
        try:
            replay([(0.0, "/k", None, "c")], "none", capacity=1, ttl=math.inf)
            never = True
        except ValueError:
            never = False
        return cls(
            markov="markov" in STRATEGIES,
            oracle_prefetch="oracle-prefetch" in STRATEGIES,
            never=never,
            budget="max_warm_ratio" in inspect.signature(replay).parameters,
        )

    def strategies(self) -> list[str]:
        missing = {"markov": not self.markov, "oracle-prefetch": not self.oracle_prefetch}
        return [s for s in STRATEGY_ORDER if not missing.get(s, False)]


def default_budget() -> float:
    """Predictive's default warm budget (warm fetches per request)."""
    return PredictiveConfig().max_warm_ratio


def predictive_at(ratio: float) -> StrategyFactory:
    """``predictive`` exactly as the replay builds it, but for ``max_warm_ratio = ratio``.

    It calls the replay's own factory (so the window, the never-expiring
    case and anything else it sets stay as they are) with the run's budget
    set to ``ratio``, and re-makes any :class:`Predictor` whose configuration
    still holds another ratio (a replay that does not read the budget).
    """
    base = STRATEGIES["predictive"]

    def factory(ctx: ReplayContext) -> list[ReplayStrategy]:
        if "max_warm_ratio" in {f.name for f in dataclasses.fields(ctx)}:
            ctx = dataclasses.replace(ctx, max_warm_ratio=ratio)
        built = base(ctx)
        if not isinstance(built, Sequence):
            raise TypeError("the predictive factory built a whole core: cannot set its budget")
        return [
            Predictor(dataclasses.replace(s.config, max_warm_ratio=ratio))
            if isinstance(s, Predictor) and s.config.max_warm_ratio != ratio
            else s
            for s in built
        ]

    return factory


@dataclass(frozen=True, slots=True)
class Trace:
    name: str
    path: str
    requests: int
    distinct_keys: int
    span: float
    note: str = ""


@dataclass(frozen=True, slots=True)
class Cell:
    trace: Trace
    ttl: float
    fraction: float

    @property
    def capacity(self) -> int:
        return CacheSize(fraction=self.fraction).capacity(self.trace.distinct_keys)


@dataclass(slots=True)
class CellResult:
    cell: Cell
    results: dict[str, ReplayResult]
    #: Baseline → its warm fetches per request, where predictive was replayed at it.
    budgets: dict[str, float]
    seconds: float


_ROWS: dict[str, list[TraceRow]] = {}


def rows_of(path: str) -> list[TraceRow]:
    """The rows of ``path``, read once per process (the last two traces kept)."""
    rows = _ROWS.get(path)
    if rows is None:
        while len(_ROWS) >= 2:
            del _ROWS[next(iter(_ROWS))]
        rows = _ROWS[path] = list(read_trace(path))
    return rows


def run_cell(cell: Cell, features: Features) -> CellResult:
    """Every strategy of one (trace, TTL, cache size), then predictive at the
    spend of each baseline that spends more than its default budget."""
    started = time.perf_counter()
    rows = rows_of(cell.trace.path)
    budget = default_budget()

    def run(spec: str | tuple[str, StrategyFactory], **options: Any) -> ReplayResult:
        return replay(
            rows,
            spec,
            capacity=cell.capacity,
            ttl=cell.ttl,
            distinct_keys=cell.trace.distinct_keys,
            path=cell.trace.path,
            **options,
        )

    results: dict[str, ReplayResult] = {}
    for name in features.strategies():
        options = {"max_warm_ratio": budget} if name in ORACLES and features.budget else {}
        results[name] = run(name, **options)
    budgets: dict[str, float] = {}
    for baseline in BASELINES:
        if baseline not in results:
            continue
        spend = results[baseline].warm_fetches_per_request
        if spend > budget:
            budgets[baseline] = spend
            label = f"predictive@{baseline}"
            results[label] = run((label, predictive_at(spend)))
    return CellResult(cell, results, budgets, time.perf_counter() - started)


def _run_cell_job(job: tuple[Cell, Features]) -> CellResult:
    return run_cell(*job)


# ------------------------------------------------------------ verdicts


@dataclass(slots=True)
class Verdict:
    """The three criteria on one cell; margins are hit ratio (fractions)."""

    #: (i) baseline → predictive's hit ratio at its spend less the baseline's.
    equal_spend: dict[str, float] = field(default_factory=dict)
    #: (ii) predictive's gain less ORACLE_SHARE of the oracle's; None: not applicable.
    oracle: float | None = None
    oracle_gain: float | None = None
    #: (iii) strategy → its gain over none, for those below none − NONE_SLACK.
    below_none: dict[str, float] = field(default_factory=dict)

    @property
    def i_pass(self) -> bool:
        return all(m >= -EQUAL_SPEND_SLACK - EPS for m in self.equal_spend.values())

    @property
    def ii_pass(self) -> bool | None:
        return None if self.oracle is None else self.oracle >= -EPS

    @property
    def iii_pass(self) -> bool:
        return not self.below_none

    def to_json(self) -> dict[str, Any]:
        return {
            "i": {"pass": self.i_pass, "margins": _rounded(self.equal_spend)},
            "ii": {
                "pass": self.ii_pass,
                "margin": None if self.oracle is None else round(self.oracle, 6),
                "oracle_gain": None if self.oracle_gain is None else round(self.oracle_gain, 6),
            },
            "iii": {"pass": self.iii_pass, "below_none": _rounded(self.below_none)},
        }


def _rounded(d: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 6) for k, v in d.items()}


def predictive_for(result: CellResult, baseline: str) -> ReplayResult:
    """Predictive at ``baseline``'s spend: its own run where one was made, else the default."""
    return result.results.get(f"predictive@{baseline}", result.results["predictive"])


def judge(result: CellResult) -> Verdict:
    r = result.results
    none = r["none"].hit_ratio
    verdict = Verdict()
    for baseline in BASELINES:
        if baseline in r:
            verdict.equal_spend[baseline] = (
                predictive_for(result, baseline).hit_ratio - r[baseline].hit_ratio
            )
    if "oracle-prefetch" in r:
        gain = r["oracle-prefetch"].hit_ratio - none
        verdict.oracle_gain = gain
        if gain > ORACLE_GAIN_MIN + EPS:
            verdict.oracle = (r["predictive"].hit_ratio - none) - ORACLE_SHARE * gain
    for name, res in r.items():
        if name in ORACLES or name == "none":
            continue
        gain = res.hit_ratio - none
        if gain < -NONE_SLACK - EPS:
            verdict.below_none[name] = gain
    return verdict


# ------------------------------------------------------------ printing


def ttl_text(ttl: float) -> str:
    return "never" if math.isinf(ttl) else f"{ttl:g} s"


def cache_text(fraction: float) -> str:
    return f"{fraction * 100:g}%"


def _pts(x: float) -> str:
    return f"{x * 100:+.2f}"


def format_trace(trace: Trace, cells: Sequence[CellResult], features: Features) -> str:
    strategies = [s for s in features.strategies() if s != "none"]
    baselines = [b for b in BASELINES if b in features.strategies()]
    head = (
        f"{'ttl':>6} {'cache':>5} {'entries':>8} {'none %':>7} "
        + " ".join(f"{SHORT[s]:>7}" for s in strategies)
        + " |"
        + " ".join(f"{'p@' + SHORT[b]:>9}" for b in baselines)
        + f" | {'(i)':>4} {'(ii)':>4} {'(iii)':>5}  worst"
    )
    out = [
        f"== {trace.name}: {trace.requests:,} requests, {trace.distinct_keys:,} keys, "
        f"{trace.span / 3600:.1f} h{trace.note} ==",
        "gain over none in points; p@B: predictive held to B's warm fetches per request "
        f"(· where B spends at most predictive's default {default_budget():g})",
        head,
    ]
    for cr in sorted(cells, key=lambda c: (c.cell.ttl, c.cell.fraction)):
        r = cr.results
        none = r["none"].hit_ratio
        v = judge(cr)
        row = (
            f"{ttl_text(cr.cell.ttl):>6} {cache_text(cr.cell.fraction):>5} "
            f"{cr.cell.capacity:>8,} {none * 100:>7.2f} "
            + " ".join(f"{_pts(r[s].hit_ratio - none):>7}" for s in strategies)
            + " |"
            + " ".join(
                f"{_pts(r[f'predictive@{b}'].hit_ratio - none):>9}"
                if f"predictive@{b}" in r
                else f"{'·':>9}"
                for b in baselines
            )
        )
        marks = [_mark(v.i_pass), _mark(v.ii_pass), _mark(v.iii_pass)]
        row += f" | {marks[0]:>4} {marks[1]:>4} {marks[2]:>5}  {_worst(v)}"
        out.append(row)
    return "\n".join(out)


def _mark(passed: bool | None) -> str:
    return "n/a" if passed is None else ("PASS" if passed else "FAIL")


def _worst(v: Verdict) -> str:
    notes = []
    failing = {b: m for b, m in v.equal_spend.items() if m < -EQUAL_SPEND_SLACK - EPS}
    if failing:
        b = min(failing, key=failing.__getitem__)
        notes.append(f"i: {SHORT[b]} {_pts(failing[b])}")
    if v.ii_pass is False and v.oracle is not None:
        notes.append(f"ii: {_pts(v.oracle)}")
    if v.below_none:
        s = min(v.below_none, key=v.below_none.__getitem__)
        notes.append(f"iii: {s.replace('predictive@', 'p@')} {_pts(v.below_none[s])}")
    return "; ".join(notes)


def format_summary(done: Sequence[CellResult], features: Features, seconds: float) -> str:
    verdicts = [(cr, judge(cr)) for cr in done]
    n = len(verdicts)
    i_fail = [(cr, v) for cr, v in verdicts if not v.i_pass]
    ii_fail = [(cr, v) for cr, v in verdicts if v.ii_pass is False]
    ii_na = sum(1 for _, v in verdicts if v.ii_pass is None)
    iii_fail = [(cr, v) for cr, v in verdicts if not v.iii_pass]
    iii_pred = sum(1 for _, v in verdicts if any(s.startswith("predictive") for s in v.below_none))
    lines = [
        f"== summary: {n} cells, {seconds:.0f} s "
        f"(markov {'yes' if features.markov else 'n/a'}, oracle-prefetch "
        f"{'yes' if features.oracle_prefetch else 'n/a'}, ttl never "
        f"{'yes' if features.never else 'n/a'}) ==",
        f"(i)   predictive >= each baseline - {EQUAL_SPEND_SLACK * 100:g} pts at equal spend: "
        f"{n - len(i_fail)} pass, {len(i_fail)} fail",
    ]
    for b in BASELINES:
        failed = sum(1 for _, v in verdicts if v.equal_spend.get(b, 0.0) < -EQUAL_SPEND_SLACK - EPS)
        if b in features.strategies():
            lines.append(f"        against {b}: {failed} fail")
    lines += [
        f"(ii)  predictive >= {ORACLE_SHARE:g} x oracle-prefetch's gain where it is > "
        f"{ORACLE_GAIN_MIN * 100:g} pts: {n - ii_na - len(ii_fail)} pass, {len(ii_fail)} fail, "
        f"{ii_na} n/a",
        f"(iii) no strategy below none - {NONE_SLACK * 100:g} pts: {n - len(iii_fail)} pass, "
        f"{len(iii_fail)} fail ({iii_pred} of them predictive's)",
    ]
    for s in [*STRATEGY_ORDER[1:], *(f"predictive@{b}" for b in BASELINES)]:
        count = sum(1 for _, v in verdicts if s in v.below_none)
        if count:
            lines.append(f"        {s}: {count}")
    worst: dict[str, list[tuple[float, str]]] = {"i": [], "ii": [], "iii": []}
    for cr, v in verdicts:
        where = (
            f"{cr.cell.trace.name} ttl {ttl_text(cr.cell.ttl)} cache {cache_text(cr.cell.fraction)}"
        )
        r = cr.results
        if not v.i_pass:  # the baseline it trails most, one line per cell
            b, m = min(v.equal_spend.items(), key=lambda item: item[1])
            p = predictive_for(cr, b)
            spend = cr.budgets.get(b)
            at = f"at {spend:.3f} w/r" if spend is not None else "default budget"
            worst["i"].append(
                (
                    m,
                    f"{where}: predictive {p.hit_ratio * 100:.2f} % ({at}) vs {b} "
                    f"{r[b].hit_ratio * 100:.2f} % ({r[b].warm_fetches_per_request:.3f} w/r): "
                    f"{_pts(m)} pts",
                )
            )
        if v.ii_pass is False and v.oracle is not None and v.oracle_gain is not None:
            worst["ii"].append(
                (
                    v.oracle,
                    f"{where}: predictive gains "
                    f"{_pts(r['predictive'].hit_ratio - r['none'].hit_ratio)} of "
                    f"oracle-prefetch's {_pts(v.oracle_gain)}: {_pts(v.oracle)} pts short",
                )
            )
        for s, g in v.below_none.items():
            worst["iii"].append((g, f"{where}: {s} {_pts(g)} pts against none"))
    for criterion, found in worst.items():
        if found:
            shown = min(len(found), WORST_SHOWN)
            lines.append(f"worst deficits ({criterion}), {shown} of {len(found)}:")
            lines += [f"  {text}" for _, text in sorted(found)[:shown]]
    return "\n".join(lines)


def to_json(done: Sequence[CellResult], features: Features, seconds: float) -> dict[str, Any]:
    traces: dict[str, Any] = {}
    for cr in done:
        t = cr.cell.trace
        entry = traces.setdefault(
            t.name,
            {
                "requests": t.requests,
                "distinct_keys": t.distinct_keys,
                "span_seconds": t.span,
                "note": t.note.strip(" ,"),
                "cells": [],
            },
        )
        baseline = cr.results["none"]
        entry["cells"].append(
            {
                "ttl": None if math.isinf(cr.cell.ttl) else cr.cell.ttl,
                "cache_fraction": cr.cell.fraction,
                "cache_entries": cr.cell.capacity,
                "seconds": round(cr.seconds, 3),
                "budgets": _rounded(cr.budgets),
                "results": {n: r.to_json(baseline) for n, r in cr.results.items()},
                "verdict": judge(cr).to_json(),
            }
        )
    return {
        "features": dataclasses.asdict(features),
        "default_budget": default_budget(),
        "criteria": {
            "equal_spend_slack": EQUAL_SPEND_SLACK,
            "oracle_gain_min": ORACLE_GAIN_MIN,
            "oracle_share": ORACLE_SHARE,
            "none_slack": NONE_SLACK,
        },
        "seconds": round(seconds, 1),
        "traces": traces,
    }


# ------------------------------------------------------------ main


def prepare(args: argparse.Namespace, tmp: Path) -> list[Trace]:
    """The traces to replay: the public ones (cut to ``--real-limit``) and the generated kinds."""
    traces: list[Trace] = []
    if not args.skip_real:
        for name, filename in REAL:
            source = Path(args.traces) / filename
            if not source.exists():
                print(f"note: {source} not found, {name} skipped", file=sys.stderr)
                continue
            path, note = source, ""
            if args.real_limit:
                rows: list[TraceRow] = []
                cut = False
                for row in read_trace(source):
                    if len(rows) >= args.real_limit:
                        cut = True
                        break
                    rows.append(row)
                if cut:
                    path = tmp / filename
                    write_csv(path, rows)
                    note = f", its first {args.real_limit:,} requests"
            traces.append(_trace(name, path, note))
    for kind in args.kinds:
        path = tmp / f"{kind}.csv"
        write_csv(path, generate(kind, args.scale, seed=args.seed))
        traces.append(_trace(kind, path, f", generated (seed {args.seed})"))
    return traces


def _trace(name: str, path: Path, note: str) -> Trace:
    s = scan_trace(path)
    return Trace(name, str(path), s.requests, s.distinct_keys, s.span, note)


def _ttl(text: str) -> float:
    return math.inf if text.strip() == "never" else float(text)


def _fraction(text: str) -> float:
    size = CacheSize.parse(text if text.strip().endswith("%") else text + "%")
    return size.fraction


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small matrix, about two minutes")
    parser.add_argument("--jobs", type=int, default=1, help="processes (default 1)")
    parser.add_argument("--json", type=Path, default=None, help="write every result here")
    parser.add_argument("--kinds", default=",".join(WORKLOADS), help="generated kinds ('' none)")
    parser.add_argument("--skip-real", action="store_true", help="no public traces")
    parser.add_argument("--traces", default=str(DEFAULT_TRACES), help="the public traces' dir")
    parser.add_argument("--scale", type=int, default=None, help="requests per generated kind")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--ttls", default=None, help="e.g. 60,300,never")
    parser.add_argument("--caches", default=None, help="e.g. 1%%,20%%")
    parser.add_argument(
        "--real-limit", type=int, default=None, help="replay the first N requests of public traces"
    )
    args = parser.parse_args(argv)
    args.kinds = [k for k in args.kinds.split(",") if k]
    for kind in args.kinds:
        if kind not in WORKLOADS:
            parser.error(f"--kinds: unknown kind {kind!r}; known: {', '.join(WORKLOADS)}")
    if args.scale is None:
        args.scale = QUICK_SCALE if args.quick else SCALE
    if args.real_limit is None and args.quick:
        args.real_limit = QUICK_REAL_LIMIT
    args.ttls = (
        [_ttl(t) for t in args.ttls.split(",")]
        if args.ttls
        else (QUICK_TTLS if args.quick else TTLS)
    )
    args.caches = (
        [_fraction(c) for c in args.caches.split(",")]
        if args.caches
        else (QUICK_CACHES if args.quick else CACHES)
    )
    if args.jobs < 1:
        parser.error("--jobs: at least 1")
    return args


def _results(jobs: Sequence[tuple[Cell, Features]], processes: int) -> Iterator[CellResult]:
    if processes == 1:
        for job in jobs:
            yield _run_cell_job(job)
        return
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        yield from pool.imap_unordered(_run_cell_job, jobs)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    features = Features.detect()
    ttls = [t for t in args.ttls if features.never or not math.isinf(t)]
    if len(ttls) < len(args.ttls):
        print("note: this replay has no never-expiring TTL yet: skipped", file=sys.stderr)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        traces = prepare(args, Path(tmp))
        cells = [Cell(t, ttl, f) for t in traces for ttl in ttls for f in args.caches]
        # Biggest first (the pool's tail stays short), a trace's cells together
        # (each process reads a trace once).
        jobs = sorted(((c, features) for c in cells), key=lambda j: -j[0].trace.requests)
        pending = {t.name: sum(1 for c in cells if c.trace is t) for t in traces}
        by_trace: dict[str, list[CellResult]] = {t.name: [] for t in traces}
        done: list[CellResult] = []
        for k, cr in enumerate(_results(jobs, args.jobs), 1):
            name = cr.cell.trace.name
            print(
                f"[{k}/{len(jobs)}] {name} ttl {ttl_text(cr.cell.ttl)} cache "
                f"{cache_text(cr.cell.fraction)}: {cr.seconds:.1f} s",
                file=sys.stderr,
                flush=True,
            )
            by_trace[name].append(cr)
            done.append(cr)
            pending[name] -= 1
            if not pending[name]:
                trace = next(t for t in traces if t.name == name)
                print("\n" + format_trace(trace, by_trace[name], features), flush=True)
    seconds = time.perf_counter() - started
    print("\n" + format_summary(done, features, seconds), flush=True)
    if args.json is not None:
        args.json.write_bytes(
            orjson.dumps(to_json(done, features, seconds), option=orjson.OPT_INDENT_2)
        )
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    if os.environ.get("PYTHONHASHSEED") is None:
        # The usage tracker's sketches hash with the salted hash(): fix the salt.
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable, *sys.argv])
    sys.exit(main())
