"""The warmer core: one owner of every decision, driven by replay and by the runner."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from proxy.app import Warmproxy
from proxy.config import load_settings
from proxy.warming import warmer_config
from tests.warmer.events import Ev
from warmer.audience import Audience, AudienceConfig
from warmer.clock import ManualClock
from warmer.core import Displacing, WarmerCore, build_strategies, build_tracker
from warmer.ledger import EffectivenessLedger
from warmer.model import FillReport, Observed, WarmRequest
from warmer.replay import ReplayContext, configured_factory, replay
from warmer.strategies import PathFilter, RefreshAhead
from warmer.trace import read_trace

SLICE = Path(__file__).resolve().parents[1] / "data" / "worldcup98_slice.csv"


def settings_for(tmp_path: Path) -> Any:
    return load_settings(
        None,
        {
            "proxy": {"listen": "127.0.0.1:0"},
            "control": {"listen": "127.0.0.1:0"},
            "state": {"dir": str(tmp_path / "state")},
            "tracking": {"analysis": False},
            "strategies": {
                "reactive": {"threshold": 2, "time_window": 1200, "refresh_fraction": 0.1},
                "predictive": {"enabled": True, "prediction_window": 300},
                "exclude": ["/english/images/*"],
            },
        },
    )


def _copy(event: Observed) -> Ev:
    return Ev(
        ts=event.ts,
        key=event.key,
        outcome=event.outcome,
        fresh_until=event.fresh_until,
        warmed=event.warmed,
        url=event.url,
        host=event.host,
        client=event.client,
    )


def test_replay_and_the_live_runner_make_the_same_decisions(tmp_path: Path) -> None:
    """A recorded sequence of events, fills and due rounds from a replay of a
    real trace, played again through the proxy's own warmer (its asyncio
    runner's methods, on a manual clock): every due round asks for exactly
    the same warm requests.  Neither runner decides anything of its own."""
    settings = settings_for(tmp_path)
    log: list[tuple[Any, ...]] = []
    factory = configured_factory(warmer_config(settings))

    def recording(ctx: ReplayContext) -> WarmerCore:
        core = factory(ctx)
        observe, due, completed = core.observe, core.due, core.completed

        def observed(event: Observed) -> None:
            log.append(("observe", _copy(event)))
            observe(event)

        def asked(now: float) -> list[WarmRequest]:
            wanted = due(now)
            log.append(("due", now, list(wanted)))
            return wanted

        def booked(
            request: WarmRequest, report: FillReport, now: float, seconds: float = 0.0
        ) -> str:
            log.append(("completed", request, report, now))
            return completed(request, report, now, seconds)

        core.observe = observed  # type: ignore[method-assign]
        core.due = asked  # type: ignore[method-assign]
        core.completed = booked  # type: ignore[method-assign]
        return core

    rows = list(itertools.islice(read_trace(SLICE), 6000))
    result = replay(rows, ("recorded", recording), capacity=300, ttl=300.0)
    rounds = [entry for entry in log if entry[0] == "due" and entry[2]]
    assert result.warm_fetches > 100 and len(rounds) > 100  # the sequence warms

    clock = ManualClock(rows[0][0])
    proxy = Warmproxy(settings, clock=clock)
    runner = proxy.warmer
    for entry in log:
        kind = entry[0]
        if kind == "observe":
            clock.now = entry[1].ts
            runner.observe(entry[1])
        elif kind == "due":
            _, now, wanted = entry
            clock.now = now
            assert runner.tick(now) == wanted
        else:
            _, request, report, now = entry
            clock.now = now
            runner.on_result(request, report)
    assert runner.ledger is not None
    live = runner.ledger.figures(clock.now)
    assert live.by_label.keys() == result.warm_fetches_by_label.keys()


def test_due_filters_and_expands_what_strategies_ask_for() -> None:
    refresh = RefreshAhead(min_hits=1, fraction=0.5)
    core = WarmerCore(
        [refresh],
        ledger=EffectivenessLedger(),
        path_filter=PathFilter(exclude=("/private/*",)),
        audience=Audience(),
    )
    for url in ("/a", "/private/b"):
        core.observe(Ev(ts=0.0, key=url, outcome="miss", fresh_until=100.0))
        core.observe(Ev(ts=1.0, key=url, outcome="hit", fresh_until=100.0))
    wanted = core.due(60.0)
    assert [(r.url, r.headers) for r in wanted] == [
        ("/a", (("accept-encoding", "br,deflate,gzip"),))
    ]


def test_completed_books_each_variant_as_its_own_entry() -> None:
    """Two variants of one key warmed: a browser's hit on one marks that one
    used; the other, never hit, is unused (precision 1/2)."""
    ledger = EffectivenessLedger()
    core = WarmerCore([], ledger=ledger)
    names = ("accept-encoding",)
    for value in ("gzip", "br"):
        report = FillReport(
            status=200, stored=True, fresh_until=100.0, vary=names, vary_values=(value,)
        )
        core.completed(WarmRequest(url="/a", headers=(("accept-encoding", value),)), report, 0.0)
    core.observe(
        Ev(
            ts=10.0,
            key="/a",
            outcome="hit",
            fresh_until=100.0,
            warmed=True,
            vary=names,
            vary_values=("gzip",),
        )
    )
    ledger.settle(200.0)
    figures = ledger.figures(200.0)
    assert figures.precision == pytest.approx(0.5)
    assert figures.by_label["on-demand"].stored == 2


def test_a_budgeted_strategy_is_charged_per_variant_it_was_fanned_out_to() -> None:
    """Predictive warming asks once for a key its clients use in two variants
    (exact Accept-Encoding matching): the core makes two warm requests, and
    both fetches count against the warm budget, as the origin sees them."""
    from warmer.predictive import PredictiveConfig, Predictor

    predictor = Predictor(PredictiveConfig(enabled=True, prediction_window=300.0, sequences=False))
    core = WarmerCore(
        [predictor], audience=Audience(AudienceConfig(match_coding=False, variant_min_share=0.1))
    )
    names = ("accept-encoding",)
    fresh_until = 0.0
    fanned = 0
    for i in range(2000):
        ts = 1_767_225_600.0 + i * 5.0  # /hot every 5 s, in two variants
        for request in core.due(ts):
            fanned += 1
            value = dict(request.headers)["accept-encoding"]
            report = FillReport(
                status=200, stored=True, fresh_until=ts + 300.0, vary=names, vary_values=(value,)
            )
            core.completed(request, report, ts)
            fresh_until = ts + 300.0
        outcome = "hit" if ts < fresh_until else "miss"
        if outcome == "miss":
            fresh_until = ts + 300.0
        value = "gzip" if i % 2 else "br,gzip"
        core.observe(
            Ev(
                ts,
                "/hot",
                outcome=outcome,
                fresh_until=fresh_until,
                vary=names,
                vary_values=(value,),
            )
        )
    assert fanned >= 20
    assert predictor.warm_fetches == fanned  # every variant fetched is charged


def test_every_strategy_weighs_displacement_by_one_measure_the_core_feeds(
    tmp_path: Path,
) -> None:
    """Refresh-ahead, miss-reactive and predictive share one measure of what
    a warm displaces; the core feeds it once per event and per stored fill,
    so a cache that drops fresh entries raises the cost every one of them
    weighs its warms against."""
    config = warmer_config(settings_for(tmp_path))
    tracker = build_tracker(config)
    strategies = build_strategies(config, tracker)
    measures = {id(s.displacement) for s in strategies if isinstance(s, Displacing)}
    assert len(strategies) == 3 and len(measures) == 1
    measure = next(s.displacement for s in strategies if isinstance(s, Displacing))
    core = WarmerCore(strategies, tracker=tracker)
    # Every key stored for 300 s, then asked for again after 10 s and
    # missed: the cache dropped it while fresh.
    for n in range(50):
        core.observe(Ev(ts=1000.0 + n, key=f"/k{n}", outcome="miss", fresh_until=1300.0 + n))
    for n in range(50):
        core.observe(Ev(ts=1100.0 + n, key=f"/k{n}", outcome="miss", fresh_until=1400.0 + n))
    assert measure.cost == pytest.approx(50 / 100, abs=0.01)
    # A stored warm fill is one more fill displacing an entry, counted once.
    core.completed(
        WarmRequest(url="/warm", host="shop"),
        FillReport(status=200, stored=True, fresh_until=1500.0),
        1200.0,
    )
    assert measure.cost == pytest.approx(50 / 101, abs=0.01)
