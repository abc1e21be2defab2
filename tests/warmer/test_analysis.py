"""Usage analysis on a virtual clock: trends, seasonality, patterns, hot data, reports."""

from __future__ import annotations

import calendar
import csv
import itertools
import json
import math
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.warmer.events import HostEv as Ev
from warmer.analysis import (
    Analyzer,
    KeyTrends,
    TrafficLevel,
    analyze_trace,
    detect_seasonality,
    hot_threshold,
    peak_runs,
    priority_tiers,
    profile_peaks,
    t_confidence,
    warm_times,
)
from warmer.segments import SegmentTracker
from warmer.sequences import SequenceModel
from warmer.tracker import UsageTracker

T0 = float(calendar.timegm((2024, 1, 1, 0, 0, 0)))  # a Monday, 00:00 UTC
HOUR = 3600.0
H0 = int(T0 // HOUR)
# The first 30,000 requests of the WorldCup98 trace (see tests/data/README.md).
WORLDCUP = Path(__file__).resolve().parents[1] / "data" / "worldcup98_slice.csv"


@dataclass(frozen=True, slots=True)
class TraceEvent:
    """One line of a trace (``ts,key,size,client``) as an access event."""

    ts: float
    key: str
    client: str
    outcome: str = "miss"
    host: str = ""
    fresh_until: float = 0.0
    warmed: bool = False

    @property
    def url(self) -> str:
        return self.key


def key(url: str) -> str:
    return f"example.test{url}"


def spread(hour: int, url: str, count: int, client: Callable[[int], str] = str) -> Iterator[Ev]:
    """``count`` requests for ``url`` spread evenly over epoch hour ``hour``."""
    for i in range(count):
        yield Ev(hour * HOUR + (i + 0.5) * HOUR / count, url, client=client(i))


def feed_trends(trends: KeyTrends, events: Iterator[Ev]) -> None:
    for event in events:
        trends.observe(event)


# ---------------------------------------------------------------- statistics


@pytest.mark.parametrize(
    ("t", "df", "confidence"),
    [(12.706, 1, 0.95), (4.303, 2, 0.95), (2.571, 5, 0.95), (2.086, 20, 0.95),
     (2.845, 20, 0.99), (1.96, 2000, 0.95), (0.0, 7, 0.0)],
)  # fmt: skip
def test_t_confidence_matches_the_t_table(t: float, df: int, confidence: float) -> None:
    assert t_confidence(t, df) == pytest.approx(confidence, abs=1e-3)
    assert t_confidence(-t, df) == t_confidence(t, df)


def test_t_confidence_edges() -> None:
    assert t_confidence(math.inf, 3) == 1.0
    assert t_confidence(math.nan, 3) == 0.0
    with pytest.raises(ValueError, match="df"):
        t_confidence(1.0, 0)


@settings(max_examples=100)
@given(st.floats(min_value=0, max_value=50), st.integers(min_value=1, max_value=300))
def test_t_confidence_is_a_probability_growing_with_t(t: float, df: int) -> None:
    c = t_confidence(t, df)
    assert 0.0 <= c <= 1.0
    assert t_confidence(t + 0.5, df) >= c - 1e-12  # rounding near 1


# -------------------------------------------------------------------- trends


def test_a_rising_key_is_rising_with_high_confidence_and_a_flat_one_is_not() -> None:
    rng = np.random.default_rng(7)
    trends = KeyTrends()
    for h in range(30):
        feed_trends(trends, spread(H0 + h, "/rising", int(20 + 4 * h + rng.normal(0, 3))))
        feed_trends(trends, spread(H0 + h, "/falling", int(200 - 5 * h + rng.normal(0, 3))))
        for f in range(100):
            feed_trends(trends, spread(H0 + h, f"/flat/{f}", int(rng.poisson(50))))
    now = (H0 + 30) * HOUR + 60
    rising = trends.trend(key("/rising"), now)
    assert rising is not None
    assert rising.direction == "rising"
    assert rising.confidence > 0.999 and rising.adjusted_confidence > 0.999
    assert rising.slope == pytest.approx(4, abs=0.5)
    assert rising.hours == 24
    flat = trends.trend(key("/flat/0"), now)
    assert flat is not None and flat.direction == "flat"
    assert [t.key for t in trends.rising(5, now)] == [key("/rising")]
    [falling] = trends.falling(5, now)
    assert falling.key == key("/falling")
    assert falling.slope == pytest.approx(-5, abs=0.5)
    assert falling.relative_slope is not None and falling.relative_slope < 0


@pytest.mark.parametrize("seed", range(3))
def test_among_many_flat_keys_none_is_called_a_trend(seed: int) -> None:
    rng = np.random.default_rng(seed)
    trends = KeyTrends()
    for h in range(26):
        for f in range(200):
            for i in range(int(rng.poisson(20))):
                trends.add(f"/noise/{f}", (H0 + h) * HOUR + i)
    now = (H0 + 26) * HOUR
    found = trends.trends(now)
    assert len(found) == 200
    # Some flat keys pass 95 % on their own; none after the adjustment.
    assert sum(t.confidence >= 0.95 for t in found) > 0
    assert trends.rising(10, now) == trends.falling(10, now) == []
    assert all(t.adjusted_confidence <= t.confidence + 1e-12 for t in found)


def test_a_trend_needs_complete_hours_since_the_key_is_tracked() -> None:
    trends = KeyTrends()
    feed_trends(trends, spread(H0, "/new", 10))
    feed_trends(trends, spread(H0 + 1, "/new", 20))
    # The entry hour does not count (earlier requests may have been missed)
    # and the hour in progress is not complete: one hour, too few to fit.
    assert trends.series(key("/new"), (H0 + 2) * HOUR) == [20]
    assert trends.trend(key("/new"), (H0 + 2) * HOUR) is None
    assert trends.trend(key("/unknown"), (H0 + 2) * HOUR) is None
    feed_trends(trends, spread(H0 + 2, "/new", 30))
    feed_trends(trends, spread(H0 + 3, "/new", 40))
    # Hours without requests are zeros, not gaps.
    assert trends.series(key("/new"), (H0 + 6) * HOUR) == [20, 30, 40, 0, 0]
    with pytest.raises(ValueError, match="hours"):
        trends.trend(key("/new"), (H0 + 6) * HOUR, hours=49)


def test_keys_tracked_for_trends_are_bounded() -> None:
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        trends = KeyTrends(max_keys=50, hours=12, batch_keys=256, max_name_bytes=400)
        ts = T0
        for i in range(30_000):
            ts += 1.0
            trends.add(f"/hot/{i // 2 % 20}" if i % 2 else f"/tail/{i}/" + "x" * 200, ts)
        assert trends.tracked <= 50
        found = trends.trends(ts, hours=6)
        peak = tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()
    assert peak <= trends.memory_bound()
    assert {f"/hot/{i}" for i in range(20)} <= {t.key for t in found}


def test_non_cacheable_events_are_not_counted_for_trends() -> None:
    trends = KeyTrends()
    trends.observe(Ev(T0, "/a", "bypass"))
    assert trends.tracked == 0


# --------------------------------------------------------------- seasonality


def daily_peak_series(days: int, peak_hour: int, rng: np.random.Generator) -> list[float]:
    hours = np.arange(days * 24)
    base = rng.normal(100, 10, hours.size)
    return list(base + np.where((H0 + hours) % 24 == peak_hour, 200.0, 0.0))


def test_a_daily_peak_at_six_pm_is_detected() -> None:
    found = detect_seasonality(daily_peak_series(8, 18, np.random.default_rng(1)), H0, 24)
    assert found.detected is True
    assert found.peaks == (18,)
    assert found.strength is not None and found.threshold is not None
    assert found.strength > found.threshold
    report = found.as_dict(now=T0 + 8 * 86400 + 3600, lead=600)
    assert report["peak_hours"] == [18]
    assert report["warm_at"][0]["warm_at"] == "17:50"
    assert report["warm_at"][0]["next_warm_at"] == "2024-01-09T17:50:00Z"
    assert report["insufficient_data"] is False


@pytest.mark.parametrize("seed", range(5))
def test_white_noise_is_not_seasonal(seed: int) -> None:
    noise = list(np.random.default_rng(seed).normal(100, 10, 192))
    found = detect_seasonality(noise, H0, 24)
    assert found.detected is False
    assert found.peaks == ()


def test_too_little_data_is_said_so_with_the_hours_needed() -> None:
    found = detect_seasonality([5.0] * 10, H0, 24)
    assert found.detected is None
    assert (found.hours, found.hours_needed) == (10, 48)
    report = found.as_dict()
    assert report["insufficient_data"] is True
    assert report["peak_hours"] is None
    weekly = detect_seasonality([5.0] * 192, H0, 168)
    assert weekly.detected is None and weekly.hours_needed == 336


def test_a_trend_or_a_constant_is_not_a_cycle() -> None:
    assert detect_seasonality([float(h) for h in range(192)], H0, 24).detected is False
    assert detect_seasonality([7.0] * 192, H0, 24).detected is False
    with pytest.raises(ValueError, match="period"):
        detect_seasonality([1.0] * 100, H0, 12)


def test_a_weekend_dip_is_a_weekly_cycle_and_a_daily_cycle_is_not() -> None:
    rng = np.random.default_rng(3)
    hours = np.arange(3 * 168)
    daily = 100 + 50 * np.sin(2 * np.pi * ((H0 + hours) % 24) / 24)
    weekday = ((H0 + hours + 72) % 168) // 24  # 0 = Monday
    noise = rng.normal(0, 5, hours.size)
    weekly = detect_seasonality(list(daily * np.where(weekday >= 5, 0.4, 1.0) + noise), H0, 168)
    assert weekly.detected is True
    assert weekly.troughs == (5, 6)
    assert weekly.as_dict()["quiet_days"] == ["Sat", "Sun"]
    assert detect_seasonality(list(daily + noise), H0, 168).detected is False
    assert detect_seasonality(list(daily + noise), H0, 24).detected is True


# ------------------------------------------------------------------ patterns


def test_peak_runs_join_adjacent_hours_across_midnight() -> None:
    assert peak_runs([23, 0, 1, 5, 6, 12]) == [[23, 0, 1], [5, 6], [12]]
    assert peak_runs([]) == []
    assert peak_runs(range(24)) == [list(range(24))]


def test_warm_times_come_a_lead_before_each_peak() -> None:
    now = T0 + 19 * HOUR  # Monday 19:00
    assert warm_times([18, 19], now, 600) == [
        {
            "peak_start": "18:00",
            "hours": [18, 19],
            "warm_at": "17:50",
            "next_warm_at": "2024-01-02T17:50:00Z",
        }
    ]
    [midnight] = warm_times([0], now, 1800)
    assert (midnight["warm_at"], midnight["next_warm_at"]) == ("23:30", "2024-01-01T23:30:00Z")


def test_profile_peaks_need_rates_and_counts_to_stand_out() -> None:
    flat = [10.0] * 24
    assert profile_peaks(flat, [2.0] * 24) == []
    evening = [10.0] * 24
    evening[18] = 100.0
    assert profile_peaks(evening, [2.0] * 24) == [18]
    few = [0.0] * 24
    few[3] = 2.0  # two requests are no peak
    assert profile_peaks(few, [2.0] * 24) == []
    # An hour observed three times as often is not a peak for having 3x the count.
    assert profile_peaks([30.0] + [10.0] * 23, [3.0] + [1.0] * 23) == []


# ------------------------------------------------------------------ hot data


def test_threshold_rule_and_tiers() -> None:
    assert hot_threshold(1000, 100, min_count=2, multiplier=4) == 40
    assert hot_threshold(2000, 100, min_count=2, multiplier=4) == 80
    assert hot_threshold(10, 100, min_count=2, multiplier=4) == 2
    assert hot_threshold(0, 0) == 2
    assert priority_tiers([90, 5, 3, 2], ["high", "medium", "low"]) == ["high", "low", "low", "low"]
    assert priority_tiers([10] * 6, ["high", "medium", "low"]) == [
        "high", "high", "medium", "medium", "low", "low"
    ]  # fmt: skip
    assert priority_tiers([], ["p"]) == []
    with pytest.raises(ValueError, match="levels"):
        priority_tiers([1], [])


def level_report(scale: int) -> dict[str, object]:
    tracker = UsageTracker()
    analyzer = Analyzer(tracker.windows)
    ts = T0
    # 200 keys asked for twice and 10 asked for about a hundred times, per scale.
    asks = [(f"/cold/{i}", 2) for i in range(200)] + [(f"/hot/{j}", 100 + j) for j in range(10)]
    for url, times in asks:
        for _ in range(times * scale):
            ts += 0.05
            event = Ev(ts, url, client=f"c{int(ts) % 7}")
            tracker.observe(event)
            analyzer.observe(event)
    return analyzer.report(tracker, ts, window=3600, n=100)


def test_doubling_the_traffic_doubles_the_threshold() -> None:
    once, twice = level_report(1), level_report(2)
    t1, t2 = once["threshold"], twice["threshold"]
    assert isinstance(t1, dict) and isinstance(t2, dict)
    assert t1["window_requests"] == 1445
    assert t2["window_requests"] == 2890
    assert t1["active_keys"] == t2["active_keys"]
    assert abs(t1["active_keys"] - 210) <= 6  # an estimate
    assert t1["value"] == pytest.approx(4 * 1445 / t1["active_keys"], abs=1e-3)
    assert t2["value"] == pytest.approx(2 * t1["value"], abs=1e-3)
    # The same keys are hot at either level: the threshold moved with them.
    hot1, hot2 = once["hot_keys"], twice["hot_keys"]
    assert isinstance(hot1, list) and isinstance(hot2, list)
    assert [h["key"] for h in hot1] == [h["key"] for h in hot2]
    assert [h["key"] for h in hot1] == [key(f"/hot/{j}") for j in range(9, -1, -1)]
    assert hot1[0]["priority"] == "high" and hot1[-1]["priority"] == "low"
    assert all(h["count"] >= t1["value"] for h in hot1)
    assert hot1[0]["share"] == pytest.approx(109 / 1445, abs=1e-4)


# ------------------------------------------------------------------ analyzer


def four_days() -> tuple[UsageTracker, Analyzer, float]:
    """Four days: a steady key, a key asked for at 18:00 each day, a rising
    key, a long tail of keys and visitors who go /home -> /news."""
    tracker = UsageTracker()
    analyzer = Analyzer(tracker.windows)
    events: list[Ev] = []
    for h in range(4 * 24):
        hour = H0 + h
        events += spread(hour, "/steady", 30, lambda i: f"s{i % 10}")
        if hour % 24 == 18:
            events += spread(hour, "/evening", 400, lambda i: f"e{i % 50}")
        if h >= 72:
            events += spread(hour, "/rising", 5 * (h - 71), lambda i: f"r{i % 5}")
        events += (Ev(hour * HOUR + 30 * t, f"/tail/{t}", client=f"t{h % 40}") for t in range(50))
        for v in range(3):
            visitor = f"visitor-{h}-{v}"
            events.append(Ev(hour * HOUR + 60 * v, "/home", "miss", client=visitor))
            events.append(Ev(hour * HOUR + 60 * v + 2, "/news", client=visitor))
    events.sort(key=lambda e: e.ts)
    for event in events:
        tracker.observe(event)
        analyzer.observe(event)
    return tracker, analyzer, events[-1].ts


def test_report_on_four_days_of_traffic() -> None:
    tracker, analyzer, now = four_days()
    report = analyzer.report(tracker, now, n=10, lead=900)
    json.dumps(report)
    assert set(report) == {
        "generated_at", "window_seconds", "threshold", "hot_keys", "frequency", "patterns",
        "trends", "seasonality", "segments", "sequences", "memory_bound_bytes",
    }  # fmt: skip
    assert report["window_seconds"] == 86400

    hot = {h["key"]: h for h in report["hot_keys"]}
    assert key("/evening") in hot and key("/steady") in hot
    assert report["hot_keys"][0]["priority"] == "high"

    patterns = report["patterns"]
    assert patterns["hours_observed"] == 4 * 24 - 2  # the first and the current hour are partial
    assert (
        patterns["hour_of_day"][18]["mean_requests"] > patterns["hour_of_day"][3]["mean_requests"]
    )
    evening = next(k for k in patterns["keys"] if k["key"] == key("/evening"))
    assert evening["peak_hours"] == [18]
    assert evening["warm_at"][0]["warm_at"] == "17:45"
    assert evening["peak_days"] is None  # two weeks are needed
    assert evening["hours_observed"] == 4 * 24 - 18 - 2  # since its first peak
    assert evening["hour_of_day"][18] == sum(evening["hour_of_day"]) == 4 * 400
    assert evening["day_of_week"] == {
        "Mon": 400, "Tue": 400, "Wed": 400, "Thu": 400, "Fri": 0, "Sat": 0, "Sun": 0
    }  # fmt: skip
    steady = next(k for k in patterns["keys"] if k["key"] == key("/steady"))
    assert steady["peak_hours"] == []

    daily = report["seasonality"]["daily"]
    assert daily["detected"] is True
    assert daily["peak_hours"] == [18]
    assert report["seasonality"]["weekly"]["insufficient_data"] is True

    trends = report["trends"]
    assert [t["key"] for t in trends["rising"]][:1] == [key("/rising")]
    assert trends["rising"][0]["url"] == "/rising"
    assert trends["rising"][0]["confidence"] > 0.99

    [first] = report["sequences"]["transitions"][:1]
    assert (first["from"], first["to"]) == (key("/home"), key("/news"))
    assert first["count"] == 4 * 24 * 3

    segments = report["segments"]
    # Seen in this day and the one before: the visitors of 48 hours and the rest.
    assert segments["distinct_clients"] == pytest.approx(10 + 50 + 5 + 40 + 48 * 3, abs=10)
    # Aged: halved at each of the three day boundaries.
    assert segments["requests"] < tracker.totals().requests
    assert sum(s["requests"] for s in segments["segments"].values()) == segments["requests"]
    assert report["memory_bound_bytes"]["analysis"] == analyzer.memory_bound()

    counts = report["frequency"]["keys"][0]["counts"]
    assert set(counts) == {"60", "3600", "86400"}


def test_report_before_any_traffic_is_all_nulls_and_empties() -> None:
    tracker = UsageTracker()
    report = Analyzer(tracker.windows).report(tracker, T0)
    json.dumps(report)
    assert report["hot_keys"] == []
    assert report["threshold"]["mean_requests_per_active_key"] is None
    assert report["seasonality"]["daily"]["detected"] is None
    assert report["trends"]["rising"] == []
    assert report["segments"]["thresholds"] is None
    assert all(h["mean_requests"] is None for h in report["patterns"]["hour_of_day"])


def test_only_cacheable_requests_are_analysed() -> None:
    tracker = UsageTracker()
    analyzer = Analyzer(tracker.windows)
    for outcome in ("bypass", "hit", "stale"):
        analyzer.observe(Ev(T0, "/a", outcome))
    assert analyzer.traffic.requests(60, T0) == 2


def test_requests_without_a_client_id_make_no_sequence() -> None:
    analyzer = Analyzer()
    analyzer.observe(Ev(T0, "/a", client=""))
    analyzer.observe(Ev(T0 + 1, "/b", client=""))
    assert analyzer.sequences.clients == 0
    assert analyzer.sequences.top_transitions(5) == []


def test_report_rejects_an_unknown_window_and_empty_levels() -> None:
    tracker = UsageTracker(windows=(60, 300))
    analyzer = Analyzer((60, 300))
    with pytest.raises(ValueError, match="allowed windows are 60, 300 seconds"):
        analyzer.report(tracker, T0, window=3600)
    with pytest.raises(ValueError, match="levels"):
        analyzer.report(tracker, T0, levels=())
    assert analyzer.report(tracker, T0)["window_seconds"] == 300


def test_traffic_level_windows_and_hours() -> None:
    level = TrafficLevel(windows=(60, 3600))
    for i in range(120):
        level.add(f"/k/{i % 30}", T0 + i)  # two minutes, 30 keys
    now = T0 + 119
    assert level.requests(3600, now) == 120
    assert abs(level.active_keys(3600, now) - 30) <= 2  # an estimate
    assert 60 <= level.requests(60, now) <= 65  # the last minute, to one 5 s slice
    assert level.requests(60, now + 600) == 0
    level.add("/late", T0 + 2 * HOUR + 5)
    assert level.hourly(T0 + 3 * HOUR) == (H0 + 1, [0, 1])
    with pytest.raises(ValueError, match="allowed windows"):
        level.requests(61, now)


def test_analysis_memory_stays_bounded_under_a_flood_of_clients_and_keys() -> None:
    tracker = UsageTracker()  # not the analysis: it has a bound of its own
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        analyzer = Analyzer(
            trends=KeyTrends(max_keys=100, hours=12, batch_keys=256, max_name_bytes=600),
            segments=SegmentTracker(max_clients=100, batch_events=256, max_name_bytes=600),
            sequences=SequenceModel(max_clients=100, max_keys=100, max_name_bytes=600),
            traffic=TrafficLevel(history_hours=48, batch_keys=256),
        )
        ts = T0
        for i in range(30_000):
            ts += 0.5
            # Every request a new key, most from a new client, names as long as allowed.
            client = f"client-{i // 2}-" + "c" * 100
            analyzer.observe(Ev(ts, f"/k/{i}/" + "x" * 400, "miss", client=client))
        analyzer.report(tracker, ts)
        peak = tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()
    assert peak <= analyzer.memory_bound()
    assert analyzer.trends.tracked <= 100
    assert analyzer.sequences.clients <= 100 and analyzer.sequences.sources <= 100


def test_analyze_trace_finds_the_most_requested_key_of_a_real_trace() -> None:
    with WORLDCUP.open(newline="") as f:
        rows = list(itertools.islice(csv.DictReader(f), 20_000))
    events = [TraceEvent(float(r["ts"]), r["key"], r["client"]) for r in rows]
    report = analyze_trace(events, n=20)
    json.dumps(report)
    most_requested, count = Counter(r["key"] for r in rows).most_common(1)[0]
    hot = {h["key"]: h for h in report["hot_keys"]}
    assert most_requested in hot
    assert hot[most_requested]["count"] >= count
    assert hot[most_requested]["priority"] == "high"
    assert report["threshold"]["window_requests"] == 20_000
    # About two and a half hours: no cycle can be claimed yet.
    assert report["seasonality"]["daily"]["detected"] is None
    assert report["segments"]["top_clients"][0]["client"] == "c288"
    assert report["sequences"]["transitions"]


def test_analyze_trace_needs_events() -> None:
    with pytest.raises(ValueError, match="no events"):
        analyze_trace([])
