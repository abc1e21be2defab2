"""UsageTracker on a virtual clock: every event carries its own time."""

from __future__ import annotations

import calendar
import tracemalloc

import pytest

from tests.warmer.events import HostEv as Ev
from warmer.tracker import HotKey, HourCount, TrackerTotals, UsageTracker

T0 = float(calendar.timegm((2024, 1, 1, 0, 0, 0)))  # a Monday, 00:00 UTC
HOUR = 3600.0


def feed(tracker: UsageTracker, *events: Ev) -> None:
    for event in events:
        tracker.observe(event)


def key(url: str) -> str:
    return f"example.test{url}"


# --------------------------------------------------------------------- windows


def test_count_in_a_minute_window_forgets_events_after_a_minute() -> None:
    t = UsageTracker()
    feed(t, Ev(T0, "/a"), Ev(T0 + 10, "/a"), Ev(T0 + 50, "/b"))
    assert t.count(key("/a"), 60, T0 + 50) == 2
    assert t.count(key("/a"), 60, T0 + 60) == 2
    assert t.count(key("/a"), 60, T0 + 80) == 0  # a minute (and one 5 s slice) later
    assert t.count(key("/b"), 60, T0 + 80) == 1
    assert t.count(key("/a"), 3600, T0 + 80) == 2  # the hour still has them
    assert t.count(key("/a"), 86400, T0 + 2 * HOUR) == 2
    assert t.count(key("/a"), 3600, T0 + 2 * HOUR) == 0


def test_events_are_visible_to_queries_at_once() -> None:
    t = UsageTracker()
    t.observe(Ev(T0, "/a", "miss"))
    assert t.count(key("/a"), 60, T0) == 1
    assert t.misses(key("/a"), 60, T0) == 1
    assert t.url_of(key("/a")) == ("/a", "example.test")
    assert t.totals() == TrackerTotals(requests=1, hits=0, misses=1, bypass=0)


def test_misses_are_counted_per_key() -> None:
    t = UsageTracker()
    feed(
        t,
        Ev(T0, "/a", "miss"),
        Ev(T0 + 1, "/a", "hit"),
        Ev(T0 + 2, "/a", "stale"),  # could not answer fresh: a miss
        Ev(T0 + 3, "/a", "revalidated"),
        Ev(T0 + 4, "/b", "miss"),
    )
    assert t.misses(key("/a"), 60, T0 + 5) == 2
    assert t.count(key("/a"), 60, T0 + 5) == 4
    assert t.misses(key("/b"), 60, T0 + 5) == 1
    assert t.misses(key("/c"), 60, T0 + 5) == 0
    assert t.totals() == TrackerTotals(requests=5, hits=2, misses=3, bypass=0)


def test_unknown_window_names_the_allowed_ones() -> None:
    t = UsageTracker(windows=(60, 300))
    assert t.windows == (60.0, 300.0)
    for query in (t.count, t.misses):
        with pytest.raises(ValueError, match=r"allowed windows are 60, 300 seconds"):
            query(key("/a"), 3600, T0)
    with pytest.raises(ValueError, match="allowed windows"):
        t.hot(5, T0, window=61)


def test_bypass_counts_only_in_the_totals() -> None:
    t = UsageTracker()
    feed(t, Ev(T0, "/private", "bypass"), Ev(T0 + 1, "/private", "bypass"), Ev(T0 + 2, "/a"))
    assert t.totals() == TrackerTotals(requests=3, hits=1, misses=0, bypass=2)
    assert t.count(key("/private"), 60, T0 + 2) == 0
    assert t.url_of(key("/private")) is None
    assert [h.key for h in t.hot(10, T0 + 2)] == [key("/a")]
    assert [h.requests for h in t.hourly(T0 + 2, 1)] == [1]


# --------------------------------------------------------------------- hot keys


def test_hot_keys_come_hottest_first_with_their_url() -> None:
    t = UsageTracker()
    ts = T0
    for url, n in [("/one", 1), ("/three", 3), ("/five", 5), ("/three-too", 3)]:
        for _ in range(n):
            ts += 1
            t.observe(Ev(ts, url))
    hot = t.hot(3, ts)
    assert hot == [
        HotKey(key("/five"), "/five", "example.test", 5, 0),
        HotKey(key("/three"), "/three", "example.test", 3, 0),
        HotKey(key("/three-too"), "/three-too", "example.test", 3, 0),
    ]
    assert t.hot(0, ts) == []
    with pytest.raises(ValueError, match="n must not be negative"):
        t.hot(-1, ts)


def test_hot_in_a_window_ranks_by_recent_requests() -> None:
    t = UsageTracker()
    for i in range(10):
        t.observe(Ev(T0 + i, "/old"))  # hot an hour ago
    late = T0 + HOUR
    for i in range(3):
        t.observe(Ev(late + i, "/new"))
    t.observe(Ev(late + 5, "/newer"))
    assert [h.key for h in t.hot(5, late + 10)] == [key("/old"), key("/new"), key("/newer")]
    recent = t.hot(5, late + 10, window=60)
    assert [(h.url, h.count) for h in recent] == [("/new", 3), ("/newer", 1)]
    assert all(0 <= h.error <= h.count for h in recent)
    assert [h.url for h in t.hot(1, late + 10, window=3600)] == ["/old"]


def test_decay_lets_a_new_hot_key_overtake_an_old_one() -> None:
    def run(decay_interval: float) -> list[str]:
        t = UsageTracker(top_k=10, decay_interval=decay_interval)
        for i in range(100):
            t.observe(Ev(T0 + i, "/earlier"))
        later = T0 + 3 * HOUR  # 100 halved three times: 12
        for i in range(30):
            t.observe(Ev(later + i, "/now"))
        return [h.url for h in t.hot(2, later + 60)]

    assert run(decay_interval=HOUR) == ["/now", "/earlier"]
    # Without aging, all-time counts rule: the old key stays first.
    assert run(decay_interval=1e12) == ["/earlier", "/now"]


def test_an_old_hot_key_decays_out_of_the_summary() -> None:
    t = UsageTracker(top_k=10, decay_interval=HOUR)
    feed(t, Ev(T0, "/once"), Ev(T0 + 1, "/once"))
    assert t.key_hour_of_week(key("/once")) is not None
    t.observe(Ev(T0 + 3 * HOUR, "/other"))  # halved twice: 2 -> 1 -> 0, dropped
    assert [h.url for h in t.hot(5, T0 + 3 * HOUR)] == ["/other"]
    assert t.key_hour_of_week(key("/once")) is None
    assert t.url_of(key("/once")) == ("/once", "example.test")  # still known


# ---------------------------------------------------------------- hourly, weekly


def test_hourly_ring_oldest_first_with_empty_hours_as_zeros() -> None:
    t = UsageTracker()
    feed(
        t,
        Ev(T0 + 10, "/a", "hit"),
        Ev(T0 + 20, "/a", "miss"),
        Ev(T0 + 30, "/a", "revalidated"),
        Ev(T0 + 2 * HOUR + 5, "/b", "stale"),
        Ev(T0 + 2 * HOUR + 6, "/b", "bypass"),
    )
    now = T0 + 2 * HOUR + 100
    assert t.hourly(now, 4) == [
        HourCount(T0 - HOUR, 0, 0, 0),
        HourCount(T0, 3, 2, 1),
        HourCount(T0 + HOUR, 0, 0, 0),
        HourCount(T0 + 2 * HOUR, 1, 0, 1),
    ]
    assert len(t.hourly(now)) == 24
    for bad in (0, 193):
        with pytest.raises(ValueError, match="hours"):
            t.hourly(now, bad)


def test_hourly_ring_keeps_eight_days() -> None:
    t = UsageTracker()
    t.observe(Ev(T0, "/a"))
    t.observe(Ev(T0 + 191 * HOUR, "/a"))
    assert t.hourly(T0 + 191 * HOUR, 192)[0] == HourCount(T0, 1, 1, 0)
    t.observe(Ev(T0 + 192 * HOUR, "/a"))  # reuses the slot of hour 0
    window = t.hourly(T0 + 192 * HOUR, 192)
    assert window[0] == HourCount(T0 + HOUR, 0, 0, 0)
    assert window[-1] == HourCount(T0 + 192 * HOUR, 1, 1, 0)
    assert sum(h.requests for h in window) == 2


def test_hour_of_week_buckets_are_utc_weekday_times_24_plus_hour() -> None:
    t = UsageTracker(decay_interval=1e9)  # no aging: /a stays in the summary all along
    sunday_late = float(calendar.timegm((2024, 1, 7, 23, 59, 0)))
    wednesday_3pm = float(calendar.timegm((2024, 1, 3, 15, 10, 0)))
    feed(
        t,
        Ev(T0 + 1800, "/a"),  # Monday 00:30
        Ev(wednesday_3pm, "/a"),
        Ev(wednesday_3pm + 60, "/b"),
        Ev(sunday_late, "/a"),
        Ev(sunday_late + 7 * 24 * HOUR, "/a"),  # a week later: the same bucket
    )
    week = t.hour_of_week()
    assert len(week) == 168
    assert week[0] == 1
    assert week[2 * 24 + 15] == 2
    assert week[167] == 2
    assert sum(week) == 5
    profile = t.key_hour_of_week(key("/a"))
    assert profile is not None and len(profile) == 168
    assert (profile[0], profile[2 * 24 + 15], profile[167], sum(profile)) == (1, 1, 2, 4)
    assert t.key_hour_of_week(key("/b")) == [1 if i == 2 * 24 + 15 else 0 for i in range(168)]
    assert t.key_hour_of_week(key("/never")) is None


def test_a_key_leaving_the_top_k_loses_its_profile() -> None:
    t = UsageTracker(top_k=2)
    feed(t, *[Ev(T0 + i, "/a") for i in range(5)], *[Ev(T0 + 10 + i, "/b") for i in range(3)])
    assert t.key_hour_of_week(key("/b")) is not None
    t.observe(Ev(T0 + 20, "/c"))  # takes over /b's counter
    assert t.key_hour_of_week(key("/b")) is None
    assert t.key_hour_of_week(key("/c")) is not None
    assert t.summary_size == 2


# ------------------------------------------------------------------ known URLs


def test_known_urls_are_remembered_up_to_the_limit() -> None:
    t = UsageTracker(max_known_urls=100)
    for i in range(150):
        t.observe(Ev(T0 + i, f"/p/{i}", host="shop.test"))
    known = t.known()
    assert len(known) == 100
    assert known[0] == ("shop.test/p/50", "/p/50", "shop.test")
    assert known[-1] == ("shop.test/p/149", "/p/149", "shop.test")
    assert t.url_of("shop.test/p/0") is None
    assert t.url_of("shop.test/p/120") == ("/p/120", "shop.test")


def test_overlong_names_are_counted_but_never_remembered() -> None:
    t = UsageTracker(max_name_bytes=1000)
    long = "/q?" + "x" * 1000
    feed(t, Ev(T0, long, "miss"), Ev(T0 + 1, long, "miss"), Ev(T0 + 2, "/short"))
    assert t.count(key(long), 60, T0 + 2) == 2
    assert t.misses(key(long), 60, T0 + 2) == 2
    assert t.url_of(key(long)) is None
    assert [h.url for h in t.hot(5, T0 + 2)] == ["/short"]
    assert t.totals().misses == 2


def test_time_going_backwards_is_counted_not_fatal() -> None:
    t = UsageTracker()
    feed(t, Ev(T0 + 100, "/a"), Ev(T0 + 98, "/a"), Ev(T0 + 3 * HOUR, "/a"), Ev(T0 + 50, "/a"))
    assert t.count(key("/a"), 86400, T0 + 3 * HOUR) == 4
    assert t.count(key("/a"), 60, T0 + 3 * HOUR) == 2  # the late one counts as now
    assert t.totals().requests == 4


def test_constructor_checks() -> None:
    with pytest.raises(ValueError, match="at least one window"):
        UsageTracker(windows=())
    with pytest.raises(ValueError, match="positive"):
        UsageTracker(windows=(60, 0))
    with pytest.raises(ValueError, match="decay_interval"):
        UsageTracker(decay_interval=0)
    with pytest.raises(ValueError, match="top_k"):
        UsageTracker(top_k=0)
    with pytest.raises(ValueError, match="max_known_urls"):
        UsageTracker(max_known_urls=0)
    with pytest.raises(ValueError, match="max_name_bytes"):
        UsageTracker(max_name_bytes=0)


# ------------------------------------------------------------------ bounded memory


def test_memory_stays_bounded_under_a_stream_of_unique_urls() -> None:
    t = UsageTracker(top_k=100, max_known_urls=1000)
    bound = t.memory_bound()
    for i in range(200_000):
        t.observe(Ev(T0 + i * 0.01, f"/u/{i}", "miss"))
    assert len(t.known()) == 1000
    assert t.summary_size == 100
    assert t.memory_bound() == bound
    assert t.url_of(key("/u/0")) is None
    assert t.key_hour_of_week(key("/u/0")) is None
    assert t.count(key("/u/199999"), 60, T0 + 2000) >= 1
    assert t.totals().requests == 200_000


def test_memory_bound_holds_for_what_the_tracker_really_allocates() -> None:
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        t = UsageTracker(
            windows=(60, 600), top_k=300, max_known_urls=2000, sketch_width=256, max_name_bytes=1024
        )
        ts = T0
        # Hot keys seen again and again (full profiles), then a flood of
        # one-off URLs as long as allowed, across hours and decays.
        for i in range(10_000):
            ts += 0.5
            t.observe(Ev(ts, f"/hot/{i % 300}", "miss"))
        for i in range(10_000):
            ts += 0.5
            t.observe(Ev(ts, f"/flood/{i}/" + "x" * 400, "miss" if i % 2 else "hit"))
            t.observe(Ev(ts, f"/hot/{i % 300}"))
        t.hot(10, ts)
        peak = tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()
    assert peak <= t.memory_bound()
    assert len(t.known()) == 2000
