"""Batched delivery: an observer that takes a drain at once sees what per-event
observers see, and the warmer fed in batches ends where it ends fed event by event."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from proxy.app import Warmproxy
from proxy.config import load_settings
from proxy.observe import AccessEvent, EventHub, Outcome
from tests.proxy.conftest import eventually
from warmer.clock import ManualClock

START = 1_700_000_000.0


def event(i: int, key: str = "") -> AccessEvent:
    key = key or f"/{i}"
    return AccessEvent(float(i), key, key, "GET", Outcome.HIT, 200, 0.0, 0, "c")


def test_a_batch_observer_gets_each_drain_in_order_beside_per_event_observers() -> None:
    hub = EventHub()
    batches: list[list[str]] = []
    singles: list[str] = []
    hub.subscribe_batches(lambda events: batches.append([e.key for e in events]))
    hub.subscribe(lambda e: singles.append(e.key))
    for i in range(5):
        hub.emit(event(i))
    assert hub.drain(limit=3) == 3
    assert hub.drain() == 2
    assert hub.drain() == 0  # nothing left: no empty batch is handed over
    assert batches == [["/0", "/1", "/2"], ["/3", "/4"]]
    assert singles == ["/0", "/1", "/2", "/3", "/4"]


def test_a_failing_batch_observer_is_one_error_per_batch_and_harms_no_other() -> None:
    hub = EventHub()
    seen: list[str] = []

    def broken(events: Sequence[AccessEvent]) -> None:
        raise RuntimeError("observer bug")

    hub.subscribe_batches(broken)
    hub.subscribe_batches(lambda events: seen.extend(e.key for e in events))
    for i in range(4):
        hub.emit(event(i))
    hub.drain(limit=2)
    hub.drain(limit=2)
    assert hub.observer_errors == 2
    assert seen == ["/0", "/1", "/2", "/3"]


async def test_the_delivery_task_hands_over_everything_in_bounded_batches() -> None:
    hub = EventHub()
    sizes: list[int] = []
    keys: list[str] = []

    def observe(events: Sequence[AccessEvent]) -> None:
        sizes.append(len(events))
        keys.extend(e.key for e in events)

    hub.subscribe_batches(observe)
    task = asyncio.create_task(hub.run())
    try:
        for i in range(1000):
            hub.emit(event(i))
        await eventually(lambda: len(keys) == 1000)
    finally:
        task.cancel()
    assert keys == [f"/{i}" for i in range(1000)]
    assert max(sizes) <= 256


# ------------------------------------------------------- the warmer, fed both ways


def trace(n: int, seed: int) -> list[AccessEvent]:
    """Mixed traffic over two hours: hot and cold keys, misses and hits of entries
    with lifetimes, stale answers, bypasses, a few clients, variants, warmed entries."""
    rng = random.Random(seed)
    keys = [f"/p/{k}" for k in range(200)]
    weights = [1.0 / (rank + 1) for rank in range(len(keys))]
    fresh_until: dict[str, float] = {}
    events = []
    ts = START
    for _ in range(n):
        ts += rng.expovariate(1.0)  # about one a second: windows and hours rotate
        key = rng.choices(keys, weights)[0]
        client = f"10.0.0.{rng.randrange(5)}"
        if rng.random() < 0.03:
            outcome = Outcome.BYPASS
        elif fresh_until.get(key, 0.0) > ts:
            outcome = Outcome.HIT
        elif key in fresh_until and rng.random() < 0.2:
            outcome = Outcome.STALE
        else:
            outcome = Outcome.MISS
            fresh_until[key] = ts + rng.choice((30.0, 300.0, 900.0))
        vary: tuple[str, ...] = ("accept-encoding",) if key.endswith("7") else ()
        events.append(
            AccessEvent(
                ts=ts,
                key=key,
                url=key,
                method="GET" if outcome != Outcome.BYPASS else "POST",
                outcome=outcome,
                status=200 if rng.random() < 0.95 else 404,
                latency=rng.uniform(0.0001, 0.2),
                bytes=rng.randrange(100, 5000),
                client=client,
                fresh_until=fresh_until.get(key, 0.0) if outcome != Outcome.BYPASS else 0.0,
                warmed=rng.random() < 0.1,
                vary=vary,
                vary_values=("gzip",) if vary else (),
            )
        )
    return events


def build(tmp_path: Path, name: str, clock: ManualClock) -> Warmproxy:
    settings = load_settings(
        None,
        {
            "proxy": {"origin": "http://127.0.0.1:9", "listen": "127.0.0.1:0"},
            "control": {"listen": "127.0.0.1:0"},
            "state": {"dir": str(tmp_path / name)},
            "strategies": {"predictive": {"enabled": True}},
        },
    )
    return Warmproxy(settings, clock=clock)


def figures(proxy: Warmproxy, now: float) -> dict[str, Any]:
    """What the warmer says about the traffic it saw."""
    warmer = proxy.warmer
    assert warmer.ledger is not None
    return {
        "hot_data": warmer.hot_data(20, None),
        "hot_data_60": warmer.hot_data(20, 60.0),
        "timeline": warmer.timeline_data(7200.0),
        "totals": warmer.tracker.totals(),
        "hourly": warmer.tracker.hourly(now, 3),
        "ledger": warmer.ledger.counters(now),
        "due": warmer.core.due(now),
        # The optimizer reads when observation began.
        "proposal": warmer.proposal(now),
    }


@pytest.mark.parametrize("batch", [1, 7, 256])
async def test_the_warmer_fed_in_batches_ends_as_fed_event_by_event(
    tmp_path: Path, batch: int
) -> None:
    events = trace(6000, seed=batch)
    now = events[-1].ts + 1.0
    one_by_one = build(tmp_path, "one", ManualClock(now))
    batched = build(tmp_path, "batched", ManualClock(now))
    for e in events:
        one_by_one.warmer.observe(e)
    for i in range(0, len(events), batch):
        batched.warmer.observe_many(events[i : i + batch])
    expected = figures(one_by_one, now)
    assert expected["totals"].requests == len(events)  # the trace was seen at all
    assert figures(batched, now) == expected
