"""Pollers: clients asking for one key at a steady interval, on a cache too
small to keep every poller's key between two polls (capacity misses, not
expiries).  The predictive model forecasts each poller's next request from
its own rhythm and fetches the key just before it."""

from __future__ import annotations

import math
import random

from warmer.replay import replay
from warmer.trace import TraceRow

T0 = 1_767_225_600.0


def pollers(n: int, hours: float, seed: int = 7) -> list[TraceRow]:
    """``n`` clients, each polling its own key every 30-120 s (±2 s jitter),
    and a stream of one-off requests between them that pushes keys out."""
    rng = random.Random(seed)
    rows: list[TraceRow] = []
    end = T0 + hours * 3600
    for c in range(n):
        period = rng.choice([30.0, 60.0, 120.0])
        t = T0 + rng.uniform(0, period)
        while t < end:
            rows.append((t, f"/status/{c}", None, f"poller{c}"))
            t += period + rng.uniform(-2, 2)
    t = T0
    while t < end:
        rows.append((t, f"/page/{rng.randrange(100_000)}", None, f"u{rng.randrange(500)}"))
        t += rng.expovariate(1 / 3.0)
    rows.sort()
    return rows


def test_pollers_keys_are_fetched_just_before_their_next_poll() -> None:
    rows = pollers(40, hours=4)
    capacity, ttl = 10, math.inf  # 40 pollers' keys do not fit: LRU drops them
    none = replay(rows, "none", capacity=capacity, ttl=ttl)
    predictive = replay(rows, "predictive", capacity=capacity, ttl=ttl, max_warm_ratio=0.2)
    gain = (predictive.hit_ratio - none.hit_ratio) * 100
    # Within the budget and its starting reserve (warmer.predictive.BUDGET_RESERVE).
    assert predictive.warm_fetches_per_request <= 0.2 + 0.2 * 500 / predictive.requests
    # The pollers' requests are most of what misses; prefetching them lands.
    assert gain >= 10.0, (none.hit_ratio, predictive.hit_ratio)
    assert predictive.precision is not None and predictive.precision >= 0.6


def test_an_irregular_client_is_not_taken_for_a_poller() -> None:
    """A client that asks for one key at random intervals (seconds to half an
    hour apart) plants a periodic decision rarely (only after a run of equal
    intervals), a steady one after nearly every request."""
    from tests.warmer.events import Ev
    from warmer.predictive import PredictiveConfig, Predictor

    predictor = Predictor(PredictiveConfig(enabled=True, prediction_window=3600.0))
    rng = random.Random(2)

    def planted() -> int:
        return sum(kind == "periodic" for *_, kind, _gen in predictor._decisions)

    ts = T0
    for _ in range(200):
        ts += rng.choice([5.0, 40.0, 300.0, 1800.0])
        predictor.observe(Ev(ts, "/a", client="c1", fresh_until=ts + 60.0))
    assert planted() <= 20
    before = planted()
    for _ in range(200):
        ts += 60.0 + rng.uniform(-2, 2)
        predictor.observe(Ev(ts, "/b", client="c2", fresh_until=ts + 60.0))
    assert planted() - before >= 180
