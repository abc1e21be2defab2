"""Keeping the keys worth a cache slot cached (warmer.retention), in the replay
and in the predictor, on a cache under pressure from one-off keys."""

from __future__ import annotations

import math
import random

from tests.warmer.test_precision import seen
from warmer.model import WarmRequest
from warmer.precision import DisplacementCost
from warmer.predictive import PredictiveConfig, Predictor
from warmer.replay import ReplayContext, replay
from warmer.retention import MAX_TOUCH_RATIO, TOUCH_EVERY, Retention
from warmer.trace import TraceRow


def steady_and_scan(
    *, hot: int = 5, every: float = 60.0, scan_per_second: float = 1.0, hours: float = 3.0
) -> list[TraceRow]:
    """``hot`` keys, each asked for every ``every`` seconds (staggered), among
    one-off keys asked for ``scan_per_second``: an LRU of 40 entries forgets
    each hot key about 40 s after its request."""
    names = random.Random(1)
    rows: list[TraceRow] = []
    end = hours * 3600.0
    t = 0.0
    n = 0
    step = 1.0 / scan_per_second
    while t < end:
        # Names that follow no walk: nothing predicts the next one.
        rows.append((t, f"/scan/{names.getrandbits(64):x}", None, f"crawler-{n % 7}"))
        n += 1
        t += step
    for k in range(hot):
        t = k * every / hot + 0.5
        while t < end:
            rows.append((t, f"/hot/{k}", None, f"visitor-{k}"))
            t += every
    rows.sort(key=lambda r: r[0])
    return rows


def predictive(retention: bool) -> object:
    def factory(ctx: ReplayContext) -> list[Predictor]:
        return [
            Predictor(PredictiveConfig(enabled=True, prediction_window=600.0, retention=retention))
        ]

    return factory


def test_hot_keys_stay_cached_through_a_scan_by_touches_that_fetch_nothing() -> None:
    rows = steady_and_scan()
    kept = replay(rows, ("kept", predictive(True)), capacity=40, ttl=math.inf)
    lru = replay(rows, ("lru", predictive(False)), capacity=40, ttl=math.inf)
    none = replay(rows, "none", capacity=40, ttl=math.inf)
    hot_requests = sum(1 for r in rows if r[1].startswith("/hot/"))
    # Without warming, the LRU forgets every hot key between its requests;
    # the model without keeping catches them by fetching each again (the
    # visitors' rhythm is regular) ...
    assert none.hits == 0
    assert lru.warm_fetches >= 0.9 * lru.hits
    # ... with keeping, as many hits by touches, nearly no warm fetch.
    assert kept.hits >= 0.9 * hot_requests
    assert kept.warm_fetches <= 0.05 * lru.warm_fetches
    assert 0 < kept.touches <= MAX_TOUCH_RATIO * len(rows) + 1000


def test_one_off_keys_are_never_kept_and_a_key_that_cools_is_let_go() -> None:
    measure = DisplacementCost()
    retention = Retention(measure)
    known: dict[str, tuple[float, float, float]] = {}

    def rate_of(key: str, now: float) -> tuple[float, float, float] | None:
        return known.get(key)

    # Evictions seen: requests that found entries dropped after about 40 s.
    t = 0.0
    for i in range(200):
        seen(measure, f"/gone/{i}", "miss", math.inf, t)
        t += 0.5
    for i in range(200):
        seen(measure, f"/gone/{i}", "miss", math.inf, t)
        t += 0.5
    scale = measure.scale
    assert 20.0 < scale < 200.0
    # One-off keys (idle forever), keys back after 1.5 eviction ages (what
    # one more slot would catch) and a steady key every scale / 2.
    for i in range(2000):
        retention.observe(f"/once/{i}", 0.0, 0.0, False, math.inf, t)
        if i % 10 == 0:
            retention.observe(f"/back/{i}", 0.0, t - 1.5 * scale, False, math.inf, t)
        if i % 20 == 0:
            retention.observe("/steady", 2.0 / scale, t - scale / 2, True, math.inf, t)
            known["/steady"] = (2.0 / scale, t, math.inf)
        t += scale / 40
    assert retention.slot_worth < 2.0 / scale
    assert set(retention.kept) == {"/steady"}
    # It is touched TOUCH_EVERY eviction ages after its last request ...
    last = known["/steady"][1]
    assert retention.due(last + TOUCH_EVERY * scale * 0.9, rate_of) == []
    assert retention.due(last + TOUCH_EVERY * scale * 1.01, rate_of) == ["/steady"]
    # ... and, never asked for again, let go once idle for 1 / slot worth.
    let_go = last + 1.0 / retention.slot_worth
    touched_after = [
        now
        for now in (last + k * TOUCH_EVERY * scale for k in range(2, 400))
        if now <= let_go * 2 and retention.due(now, rate_of)
    ]
    assert touched_after and max(touched_after) <= let_go + TOUCH_EVERY * scale
    assert "/steady" not in retention.kept


def test_the_predictor_asks_for_touches_the_queue_never_turns_into_fetches() -> None:
    from warmer.queue import WarmQueue

    touch = WarmRequest("/a", "low", touch=True)
    fetch = WarmRequest("/a", "low")
    queue = WarmQueue(("high", "medium", "low"))
    queue.push(touch, 0.0)
    queue.push(fetch, 0.0)
    (merged,) = queue.drain([], 0.0)
    assert merged.touch is False  # a fetch asked for is never lost to a touch
    queue.push(touch, 0.0)
    queue.push(touch, 0.0)
    (merged,) = queue.drain([], 0.0)
    assert merged.touch is True


def test_retention_off_and_on_are_in_the_memory_bound() -> None:
    on = Predictor(PredictiveConfig(enabled=True))
    off = Predictor(PredictiveConfig(enabled=True, retention=False))
    assert on.memory_bound() > off.memory_bound()
    assert "retention" in on.describe() and "retention" not in off.describe()
