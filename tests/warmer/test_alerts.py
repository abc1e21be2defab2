"""Alert rules over the ledger's figures: raised and cleared once, never on too few samples."""

from __future__ import annotations

from dataclasses import replace

from warmer.alerts import (
    HIT_RATE_IMPROVEMENT,
    WARMING_PRECISION,
    WARMING_SUCCESS_RATE,
    AlertMonitor,
    AlertThresholds,
)
from warmer.ledger import EffectivenessLedger, LedgerFigures

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z

EMPTY = EffectivenessLedger().figures(T0)


def success(rate: float, fetches: int) -> LedgerFigures:
    return replace(EMPTY, success_rate=rate, warm_fetches=fetches)


def test_a_low_success_rate_is_raised_once_and_cleared_once() -> None:
    monitor = AlertMonitor(AlertThresholds())
    (change,) = monitor.evaluate(success(0.9, 200), T0)
    assert change.name == WARMING_SUCCESS_RATE
    assert change.raised
    assert (change.value, change.threshold, change.at) == (0.9, 0.95, T0)
    assert "below" in change.describe()

    assert monitor.evaluate(success(0.8, 300), T0 + 60) == []  # still low: no new change
    assert monitor.active() == {
        WARMING_SUCCESS_RATE: {"value": 0.8, "threshold": 0.95, "since": T0}
    }

    (cleared,) = monitor.evaluate(success(0.97, 400), T0 + 120)
    assert (cleared.name, cleared.raised, cleared.value) == (WARMING_SUCCESS_RATE, False, 0.97)
    assert monitor.active() == {}
    assert monitor.evaluate(success(0.99, 500), T0 + 180) == []


def test_nothing_is_evaluated_before_min_samples() -> None:
    monitor = AlertMonitor(AlertThresholds(min_samples=100))
    assert monitor.evaluate(success(0.0, 99), T0) == []
    assert monitor.active() == {}
    (change,) = monitor.evaluate(success(0.0, 100), T0 + 1)
    assert change.raised


def test_an_alert_holds_while_its_figure_is_not_measurable() -> None:
    monitor = AlertMonitor(AlertThresholds())
    monitor.evaluate(success(0.5, 100), T0)
    assert monitor.evaluate(success(1.0, 10), T0 + 1) == []  # too few samples to judge
    assert monitor.evaluate(replace(EMPTY, success_rate=None), T0 + 2) == []
    assert set(monitor.active()) == {WARMING_SUCCESS_RATE}


def test_hit_rate_improvement_needs_enough_requests_on_both_sides() -> None:
    monitor = AlertMonitor(AlertThresholds(min_samples=50))
    low = replace(EMPTY, improvement=0.02, requests_before=1000, requests_after=49)
    assert monitor.evaluate(low, T0) == []
    (change,) = monitor.evaluate(replace(low, requests_after=50), T0 + 1)
    assert (change.name, change.raised) == (HIT_RATE_IMPROVEMENT, True)


def test_a_threshold_met_exactly_raises_nothing() -> None:
    monitor = AlertMonitor(AlertThresholds(min_samples=1))
    rates = replace(EMPTY, requests_before=10, requests_after=10)
    # 0.6 - 0.5 is 0.09999999999999998 in floating point.
    assert monitor.evaluate(replace(rates, improvement=0.6 - 0.5), T0) == []


def test_precision_is_off_unless_configured_and_rules_can_be_turned_off() -> None:
    poor = replace(
        EMPTY,
        precision=0.1,
        warmed_used=10,
        warmed_unused=90,
        success_rate=0.1,
        warm_fetches=1000,
        improvement=-0.5,
        requests_before=1000,
        requests_after=1000,
    )
    default = AlertMonitor(AlertThresholds())
    assert default.names == (HIT_RATE_IMPROVEMENT, WARMING_SUCCESS_RATE)
    assert {c.name for c in default.evaluate(poor, T0)} == set(default.names)

    only_precision = AlertMonitor(
        AlertThresholds(min_improvement=None, min_success_rate=None, min_precision=0.5)
    )
    (change,) = only_precision.evaluate(poor, T0)
    assert (change.name, change.value, change.threshold) == (WARMING_PRECISION, 0.1, 0.5)


def test_alerts_follow_a_real_ledger() -> None:
    ledger = EffectivenessLedger()
    monitor = AlertMonitor(AlertThresholds(min_samples=10))
    for n in range(9):
        ledger.warm_not_stored(f"/k{n}", T0 + n, label="scheduled:s", failed=True)
    assert monitor.evaluate(ledger.figures(T0 + 10), T0 + 10) == []  # 9 fetches: too few
    ledger.warm_not_stored("/k9", T0 + 10, label="scheduled:s", failed=True)
    (raised,) = monitor.evaluate(ledger.figures(T0 + 11), T0 + 11)
    assert (raised.name, raised.value) == (WARMING_SUCCESS_RATE, 0.0)
    for n in range(300):
        ledger.warm_stored(f"/ok{n}", T0 + 20, T0 + 100, label="scheduled:s")
    (cleared,) = monitor.evaluate(ledger.figures(T0 + 21), T0 + 21)
    assert not cleared.raised
    assert monitor.active() == {}
