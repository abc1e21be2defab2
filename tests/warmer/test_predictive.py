"""The predictive model on synthetic traffic, on a virtual clock: it must warm a
planted daily peak and a planted sequence before they are asked for."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import orjson
import pytest

from tests.warmer.events import Ev
from warmer.model import Reason
from warmer.predictive import ModelFileError, PredictiveConfig, Predictor
from warmer.state_file import StateFile

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
HOUR = 3600.0
DAY = 86_400.0
TTL = 300.0


def daily_traffic(days: int, rng: random.Random) -> list[Ev]:
    """Background traffic all day, and /peak asked for only 18:00-18:30 UTC."""
    events = []
    for day in range(days):
        base = T0 + day * DAY
        for _ in range(400):
            ts = base + rng.uniform(0, DAY)
            events.append(Ev(ts, f"/bg/{rng.randrange(300)}", client=f"c{rng.randrange(50)}"))
        for _ in range(30):
            ts = base + 18 * HOUR + rng.uniform(0, 1800)
            events.append(Ev(ts, "/peak", client=f"fan{rng.randrange(50)}"))
    events.sort(key=lambda e: e.ts)
    for e in events:
        e.fresh_until = e.ts + TTL
    return events


def test_a_planted_daily_peak_is_warmed_before_it_starts() -> None:
    predictor = Predictor(PredictiveConfig(enabled=True, prediction_window=HOUR))
    warmed_at: list[float] = []
    for event in daily_traffic(6, random.Random(7)):
        for request in predictor.due(event.ts):
            if request.url == "/peak":
                warmed_at.append(event.ts)
        predictor.observe(event)
    last_day = T0 + 5 * DAY
    # Learned, not assumed: the first days give it no reason to expect the peak ...
    assert not [t for t in warmed_at if T0 + DAY + 17 * HOUR <= t < T0 + DAY + 18 * HOUR]
    # ... after it recurred, it is warmed in the hour before it starts.
    before_peak = [t for t in warmed_at if last_day + 17 * HOUR <= t < last_day + 18 * HOUR]
    assert before_peak, "the recurring 18:00 peak was not warmed ahead of time"
    # Nothing warms /peak in the small hours: the prediction is tied to the peak.
    assert not [t for t in warmed_at if last_day + 2 * HOUR <= t < last_day + 12 * HOUR]


def test_a_planted_sequence_is_prefetched_before_the_client_asks() -> None:
    predictor = Predictor(PredictiveConfig(enabled=True, prediction_window=600.0))
    rng = random.Random(3)
    ts = T0
    # A cache large enough to keep both pages for their lifetime: a request
    # hits while the stored entry is fresh (nothing is evicted early).
    stored: dict[str, float] = {}

    def request(at: float, key: str, client: str) -> Ev:
        if stored.get(key, 0.0) > at:
            return Ev(at, key, outcome="hit", client=client, fresh_until=stored[key])
        stored[key] = at + TTL
        return Ev(at, key, client=client, fresh_until=at + TTL)

    for i in range(300):
        client = f"user{i}"
        ts += rng.uniform(5, 20)
        predictor.observe(request(ts, "/page/1", client))
        predictor.due(ts)
        predictor.observe(request(ts + 2, "/page/2", client))
        predictor.due(ts + 2)
    ts += 700  # both entries expired
    predictor.due(ts)
    predictor.observe(request(ts, "/page/1", "newcomer"))
    wanted = predictor.due(ts)
    assert [r.url for r in wanted if r.url == "/page/2"] == ["/page/2"]
    (request,) = [r for r in wanted if r.url == "/page/2"]
    assert request.reason is Reason.PREDICTIVE
    assert not request.refresh  # a prefetch: free when /page/2 is still cached
    prediction = predictor.recent[-1]
    assert prediction.key == "/page/2"
    assert 0.5 <= prediction.confidence <= 1.0
    assert prediction.duration == 600.0


def test_a_key_asked_for_once_is_not_warmed() -> None:
    predictor = Predictor(PredictiveConfig(enabled=True, prediction_window=HOUR))
    wanted = []
    for i in range(2000):
        ts = T0 + i * 10
        wanted += predictor.due(ts)
        predictor.observe(Ev(ts, f"/once/{i}", client=f"c{i}", fresh_until=ts + TTL))
    wanted += predictor.due(T0 + 5 * DAY)
    assert wanted == []


def test_steady_hot_keys_are_refreshed_at_expiry() -> None:
    predictor = Predictor(PredictiveConfig(enabled=True, prediction_window=TTL))
    fresh_until = 0.0
    refreshed = 0
    for i in range(3000):
        ts = T0 + i * 5.0  # /hot every 5 s: certain to be asked for within the window
        for request in predictor.due(ts):
            assert request.url == "/hot"
            if request.refresh:
                refreshed += 1
                fresh_until = ts + TTL
                predictor.filled("/hot", "/hot", "shop", ts, fresh_until)
        outcome = "hit" if ts < fresh_until else "miss"
        if outcome == "miss":
            fresh_until = ts + TTL
        predictor.observe(Ev(ts, "/hot", outcome=outcome, fresh_until=fresh_until))
    # 15,000 s of traffic, 300 s lifetimes: after the first lifetimes it is
    # refreshed each time instead of missing.
    assert refreshed >= 40


def test_a_key_a_successor_warm_comes_before_is_not_refreshed_ahead() -> None:
    # Each visitor asks for /list, then /item 2 s later: every request for
    # /item comes just after a sequence warm of it, so refreshing it at
    # expiry would spend a fetch on what that warm catches anyway; /list,
    # which nothing comes before, is still refreshed.
    predictor = Predictor(PredictiveConfig(enabled=True, prediction_window=TTL))
    fresh: dict[str, float] = {}
    refreshed = {"/list": 0, "/item": 0}

    def serve(at: float) -> None:
        for request in predictor.due(at):
            if request.refresh or fresh.get(request.url, 0.0) <= at:
                fresh[request.url] = at + TTL
                predictor.filled(request.url, request.url, "shop", at, at + TTL)
                if request.refresh and at > T0 + 10 * TTL:
                    refreshed[request.url] += 1

    def ask(at: float, key: str, client: str) -> None:
        serve(at)
        outcome = "hit" if fresh.get(key, 0.0) > at else "miss"
        if outcome == "miss":
            fresh[key] = at + TTL
        predictor.observe(Ev(at, key, outcome=outcome, client=client, fresh_until=fresh[key]))

    for i in range(1500):
        ts = T0 + i * 20.0
        ask(ts, "/list", f"visitor{i}")
        ask(ts + 2.0, "/item", f"visitor{i}")
    # After the first lifetimes (100 in all): /list refreshed at nearly
    # every expiry, /item not once in ten.
    assert refreshed["/list"] >= 50
    assert refreshed["/item"] * 10 <= refreshed["/list"]


def warm_with_budget(max_warm_ratio: float, retune: tuple[int, float] | None = None) -> Predictor:
    """Zipf-like traffic over 400 keys with 300 s lifetimes; warm fills instant.
    ``retune``: at that request, the budget becomes that ratio (a reload)."""
    config = PredictiveConfig(
        enabled=True, prediction_window=TTL, max_warm_ratio=max_warm_ratio, sequences=False
    )
    predictor = Predictor(config)
    rng = random.Random(1)
    weights = [1 / (rank + 1) for rank in range(400)]
    keys = rng.choices(range(400), weights, k=40_000)
    fresh: dict[str, float] = {}
    for i, k in enumerate(keys):
        ts = T0 + i * 0.5
        if retune is not None and i == retune[0]:
            predictor.retune(
                min_confidence=config.min_confidence,
                max_warm_ratio=retune[1],
                priority=config.priority,
            )
            predictor.warm_fetches = predictor.requests = 0
        for request in predictor.due(ts):
            if request.refresh or fresh.get(request.url, 0) <= ts:
                fresh[request.url] = ts + TTL
                predictor.filled(request.url, request.url, "shop", ts, ts + TTL)
        key = f"/k{k}"
        outcome = "hit" if fresh.get(key, 0) > ts else "miss"
        if outcome == "miss":
            fresh[key] = ts + TTL
        predictor.observe(Ev(ts, key, outcome=outcome, fresh_until=fresh[key]))
    return predictor


def test_the_warm_budget_raises_the_threshold() -> None:
    free = warm_with_budget(1.0)
    tight = warm_with_budget(0.02)
    assert free.threshold == pytest.approx(free.config.min_confidence)
    assert tight.threshold > tight.config.min_confidence
    assert tight.warm_fetches < free.warm_fetches / 2
    assert tight.warm_fetches / tight.requests < 0.04


def test_entries_expiring_together_share_the_tokens_left_surest_first() -> None:
    # 150 keys asked for a few times and one asked for sixty, all stored at
    # once, so all expire at one instant; the busy key was planted last.
    # The decisions of that instant get the tokens left, the surest first,
    # each seeing what those before it took: the busy key's refresh is made,
    # and the round spends no more than the tokens it began with.
    predictor = Predictor(
        PredictiveConfig(enabled=True, prediction_window=TTL, max_warm_ratio=0.02, sequences=False)
    )
    expiry = T0 + TTL
    keys = [f"/few/{i}" for i in range(150)] + ["/busy"]
    for i, key in enumerate(keys):
        for j in range(60 if key == "/busy" else 6):
            ts = T0 + 0.001 * (i + j / 100)
            predictor.observe(Ev(ts, key, outcome="hit" if j else "miss", fresh_until=expiry))
    tokens = predictor._tokens
    assert tokens < len(keys)  # not enough for every refresh
    refreshed = [r.url for r in predictor.due(expiry) if r.refresh]
    assert "/busy" in refreshed
    assert 0 < len(refreshed) <= tokens


def test_a_reload_retunes_the_budget_and_keeps_what_was_learned() -> None:
    # Half the traffic with a free budget, then a reload to a tight one: from
    # then on the warm fetches keep to the new budget (plus its smaller
    # bucket), and the calibration learned before stays.
    predictor = warm_with_budget(1.0, retune=(20_000, 0.02))
    assert predictor.config.max_warm_ratio == 0.02
    assert predictor.calibration.cells  # learned before the reload, kept
    assert predictor.warm_fetches <= 0.02 * predictor.requests + 0.02 * 10_000
    assert predictor.threshold > predictor.config.min_confidence


@pytest.mark.parametrize("limit", [None, 300])
def test_where_daily_and_weekly_decisions_wait_changes_nothing(limit: int | None) -> None:
    # They wait in lanes (a FIFO per kind) while planted in time order; a live
    # clock may go back a little, and a full model compacts what waits.  The
    # same model with every decision in its heap must decide the same.
    rng = random.Random(3)
    events = daily_traffic(3, rng)
    for e in events:
        e.ts += rng.uniform(-60.0, 0.0)  # arrival order, times a little off
        e.outcome = rng.choice(["hit", "miss"])
    laned = Predictor(PredictiveConfig(enabled=True, prediction_window=HOUR))
    heaped = Predictor(PredictiveConfig(enabled=True, prediction_window=HOUR))
    heaped._plant_seasonal = lambda at, key, kind: heaped._plant(at, key, kind, 0)  # type: ignore[method-assign]
    for predictor in (laned, heaped):
        if limit is not None:
            predictor._max_decisions = limit
    asked: list[list[tuple[float, str, bool]]] = [[], []]
    for event in events:
        for out, predictor in zip(asked, (laned, heaped), strict=True):
            out += [(event.ts, r.url, r.refresh) for r in predictor.due(event.ts)]
            predictor.observe(event)
            if event.key.endswith("7"):
                predictor.filled(event.key, event.url, "", event.ts, event.ts + 2 * TTL)
    for out, predictor in zip(asked, (laned, heaped), strict=True):
        out += [(T0 + 9 * DAY, r.url, r.refresh) for r in predictor.due(T0 + 9 * DAY)]
    assert asked[0] == asked[1]
    assert any(kind == "daily" for kind, *_ in laned.calibration.cells)
    assert laned.calibration.cells == heaped.calibration.cells
    assert laned.threshold == heaped.threshold


def test_a_compaction_while_deciding_takes_no_decision_twice() -> None:
    # 200 keys asked for twice: each has a revisit waiting a quarter window
    # after its last request.  With the model one decision short of full,
    # re-planting the first revisit's next step compacts the waiting
    # decisions mid-round; the round must go on from the compacted ones.
    predictor = Predictor(PredictiveConfig(enabled=True, prediction_window=TTL, min_confidence=0.0))
    for i in range(200):
        for repeat in range(2):
            ts = T0 + i * 0.1 + repeat * 0.01
            # One client per key: no walk from key to key to follow.
            predictor.observe(
                Ev(ts, f"/k/{i}", outcome="hit", fresh_until=T0 + TTL, client=f"c{i}")
            )
    predictor._max_decisions = len(predictor._decisions) + predictor._in_lanes - 1
    now = T0 + 0.25 * TTL + 20.0
    first = predictor.due(now)
    assert sorted(r.url for r in first) == sorted(f"/k/{i}" for i in range(200))
    # Asked again at the same instant: every decision due was taken already.
    assert predictor.due(now) == []


def test_a_long_tail_stops_being_revisited_but_keeps_a_learning_sample() -> None:
    # 3,000 keys asked for twice and never again.  Once the table has seen
    # enough of them go unasked, a chain stops at its first step instead of
    # taking all eleven; one chain in LEARNING_SAMPLE goes on, so the later
    # steps' cells keep learning.
    predictor = Predictor(PredictiveConfig(enabled=True, prediction_window=TTL))
    ts = T0
    for i in range(3000):
        for outcome in ("miss", "hit"):
            ts += 0.5
            predictor.due(ts)
            predictor.observe(Ev(ts, f"/tail/{i}", outcome=outcome, fresh_until=ts + TTL))
    predictor.due(ts + 10 * TTL)  # every step of every chain (up to 4 windows) is due
    predictor.due(ts + 20 * TTL)  # and every outcome is learned
    revisits = {
        cell: seen[0] for cell, seen in predictor.calibration.cells.items() if cell[0] == "revisit"
    }
    assert sum(revisits.values()) < 2 * 3000, "hopeless chains were not cut"
    assert any(cell[3] >= 4 for cell in revisits), "no chain reached a late step to learn from"
    assert predictor.due(ts + 30 * TTL) == []


def test_each_warm_is_judged_by_whether_its_own_fetch_was_used() -> None:
    # Two revisits warm /k before it is asked for again: the first fetch was
    # gone (evicted or replaced) by the time the key was asked for, only the
    # second was found.  The table must learn one use in two fetches, not two
    # (crediting every warm with the request's hit overstated the confidence,
    # and with it the precision, on a cache that evicts warms before use).
    predictor = Predictor(PredictiveConfig(enabled=True, prediction_window=TTL, min_confidence=0.0))
    predictor.observe(Ev(T0, "/k", outcome="miss", fresh_until=T0 + 1))
    predictor.observe(Ev(T0 + 1, "/k", outcome="miss", fresh_until=T0 + 2))
    fetched = []
    for now in (T0 + 0.25 * TTL + 1, T0 + 0.5 * TTL + 1):  # the first two revisits
        asked = [r for r in predictor.due(now) if not r.refresh]
        assert [r.url for r in asked] == ["/k"]
        predictor.filled("/k", "/k", "shop", now, now + TTL)
        fetched.append(now)
    predictor.observe(Ev(T0 + 200, "/k", outcome="hit", fresh_until=fetched[-1] + TTL))
    predictor.due(T0 + 2000)  # the revisits' windows are over: their outcomes are learned
    revisits = [seen for cell, seen in predictor.calibration.cells.items() if cell[0] == "revisit"]
    asked_after_warm = sum(seen[2] for seen in revisits)
    found = sum(seen[3] for seen in revisits)
    assert (asked_after_warm, found) == (2, 1)


def test_the_model_survives_a_round_trip_and_refuses_other_versions() -> None:
    predictor = Predictor(PredictiveConfig(enabled=True, prediction_window=HOUR))
    for event in daily_traffic(2, random.Random(5)):
        predictor.due(event.ts)
        predictor.observe(event)
    document = orjson.loads(orjson.dumps(predictor.to_document()))
    again = Predictor(PredictiveConfig(enabled=True, prediction_window=HOUR))
    again.load_document(document)
    assert len(again) == len(predictor)
    assert again.calibration.cells == predictor.calibration.cells
    assert all(len(seen) == 4 for seen in again.calibration.cells.values())
    with pytest.raises(ModelFileError, match="version"):
        again.load_document({**document, "version": 999})
    with pytest.raises(ModelFileError, match="prediction_window"):
        Predictor(PredictiveConfig(enabled=True, prediction_window=60.0)).load_document(document)
    with pytest.raises(ModelFileError, match="damaged"):
        again.load_document({**document, "keys": [["/a", "only three", 1.0]]})


def test_a_corrupt_model_file_is_set_aside_and_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "model.json"
    path.write_bytes(b'{"format": "warmproxy-predictive", "version": 1, "calib')
    store = StateFile(path, "predictive model")
    predictor = Predictor(PredictiveConfig(enabled=True))
    assert asyncio.run(store.load(predictor.load_document)) is False
    assert len(predictor) == 0
    assert (tmp_path / "model.json.bad").exists()
    predictor.observe(Ev(T0, "/a", fresh_until=T0 + TTL))
    asyncio.run(store.save(predictor.to_document()))
    fresh = Predictor(PredictiveConfig(enabled=True))
    assert asyncio.run(store.load(fresh.load_document)) is True
    assert len(fresh) == 1
