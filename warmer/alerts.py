"""Alert rules over the effectiveness ledger's figures (``[monitoring] alert_thresholds``).

:class:`AlertMonitor` compares each figure with its threshold and returns only
what changed (an alert raised or cleared), so the caller logs an event once
per change and sets a metric; the monitor itself does no I/O and reads no
clock (DESIGN rule 2).

A rule is evaluated only once its figure rests on ``min_samples``
observations: a fresh start, with a handful of requests or fetches, pages no
one.  Until then an alert keeps the state it had.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from warmer.ledger import LedgerFigures

HIT_RATE_IMPROVEMENT: Final = "hit_rate_improvement"
WARMING_SUCCESS_RATE: Final = "warming_success_rate"
WARMING_PRECISION: Final = "warming_precision"


@dataclass(frozen=True, slots=True)
class AlertThresholds:
    """The lowest acceptable value of each figure; None turns a rule off."""

    min_improvement: float | None = 0.1  # hit rate after warming started minus before
    min_success_rate: float | None = 0.95  # warm fetches that stored an entry
    min_precision: float | None = None  # warmed entries hit before they went
    # Requests in each of the before/after periods, warm fetches, or resolved
    # warmed entries a rule needs before it is evaluated.
    min_samples: int = 100


@dataclass(frozen=True, slots=True)
class AlertChange:
    """An alert raised (``raised``) or cleared."""

    name: str
    raised: bool
    value: float
    threshold: float
    at: float

    def describe(self) -> str:
        """One line for the log."""
        if self.raised:
            return f"alert {self.name}: {self.value:.4g} is below {self.threshold:.4g}"
        return f"alert {self.name} cleared: {self.value:.4g} is at least {self.threshold:.4g}"


@dataclass(frozen=True, slots=True)
class _Rule:
    name: str
    threshold: float
    value: Callable[[LedgerFigures], float | None]
    samples: Callable[[LedgerFigures], int]


def _improvement(f: LedgerFigures) -> float | None:
    return f.improvement


def _periods(f: LedgerFigures) -> int:
    # Both hit rates need enough requests behind them for their difference to mean much.
    return min(f.requests_before, f.requests_after)


def _success_rate(f: LedgerFigures) -> float | None:
    return f.success_rate


def _fetches(f: LedgerFigures) -> int:
    return f.warm_fetches


def _precision(f: LedgerFigures) -> float | None:
    return f.precision


def _resolved(f: LedgerFigures) -> int:
    return f.warmed_used + f.warmed_unused


class AlertMonitor:
    """Which alerts are active, and what changed at each evaluation."""

    def __init__(self, thresholds: AlertThresholds) -> None:
        self.thresholds = thresholds
        rules = []
        t = thresholds
        if t.min_improvement is not None:
            rules.append(_Rule(HIT_RATE_IMPROVEMENT, t.min_improvement, _improvement, _periods))
        if t.min_success_rate is not None:
            rules.append(_Rule(WARMING_SUCCESS_RATE, t.min_success_rate, _success_rate, _fetches))
        if t.min_precision is not None:
            rules.append(_Rule(WARMING_PRECISION, t.min_precision, _precision, _resolved))
        self._rules = tuple(rules)
        # name -> (latest value, threshold, raised at)
        self._active: dict[str, tuple[float, float, float]] = {}

    @property
    def names(self) -> tuple[str, ...]:
        """The alerts configured (a metric can show 0 for each one not active)."""
        return tuple(r.name for r in self._rules)

    def evaluate(self, figures: LedgerFigures, now: float) -> list[AlertChange]:
        """Compare ``figures`` with the thresholds; returns the alerts raised or cleared."""
        changes = []
        for rule in self._rules:
            value = rule.value(figures)
            if value is None or rule.samples(figures) < self.thresholds.min_samples:
                continue
            # Rates are quotients and differences of them: 0.6 - 0.5 must not
            # fall below a 0.1 threshold by a rounding error.
            value = round(value, 9)
            active = self._active.get(rule.name)
            if value < rule.threshold:
                if active is None:
                    self._active[rule.name] = (value, rule.threshold, now)
                    changes.append(AlertChange(rule.name, True, value, rule.threshold, now))
                else:
                    self._active[rule.name] = (value, rule.threshold, active[2])
            elif active is not None:
                del self._active[rule.name]
                changes.append(AlertChange(rule.name, False, value, rule.threshold, now))
        return changes

    def active(self) -> dict[str, dict[str, float]]:
        """Active alerts: name -> {value (latest), threshold, since (when raised)}."""
        return {
            name: {"value": value, "threshold": threshold, "since": since}
            for name, (value, threshold, since) in self._active.items()
        }
