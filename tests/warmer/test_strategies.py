"""Reactive strategies and the schedule clock on a virtual clock: no I/O, no waiting."""

from __future__ import annotations

import time

from tests.warmer.events import Ev
from warmer.model import Reason
from warmer.schedule import Schedule
from warmer.scheduler import ScheduleClock
from warmer.strategies import MissReactive, PathFilter, RefreshAhead

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z, a Thursday


# -- refresh-ahead ---------------------------------------------------------------


def test_refresh_ahead_refreshes_a_hot_entry_before_it_expires() -> None:
    s = RefreshAhead(min_hits=2, fraction=0.1)
    s.observe(Ev(T0, "/a", "miss", fresh_until=T0 + 100))
    s.observe(Ev(T0 + 10, "/a", "hit", fresh_until=T0 + 100))
    assert s.due(T0 + 50) == []
    s.observe(Ev(T0 + 20, "/a", "hit", fresh_until=T0 + 100))
    assert s.due(T0 + 89) == []  # more than 10 % of the lifetime left
    (request,) = s.due(T0 + 90)
    assert request.url == "/a"
    assert request.host == "shop"
    assert request.refresh
    assert request.reason is Reason.REFRESH_AHEAD
    assert s.due(T0 + 95) == []  # once per lifetime


def test_refresh_ahead_leaves_cold_entries_alone() -> None:
    s = RefreshAhead(min_hits=2, fraction=0.1)
    s.observe(Ev(T0, "/a", "miss", fresh_until=T0 + 100))
    s.observe(Ev(T0 + 10, "/a", "hit", fresh_until=T0 + 100))
    assert s.due(T0 + 99) == []
    assert s.due(T0 + 1000) == []


def test_hits_count_per_lifetime_and_a_refill_starts_over() -> None:
    s = RefreshAhead(min_hits=2, fraction=0.5)
    s.observe(Ev(T0, "/a", "miss", fresh_until=T0 + 100))
    s.observe(Ev(T0 + 1, "/a", "hit", fresh_until=T0 + 100))
    s.observe(Ev(T0 + 2, "/a", "hit", fresh_until=T0 + 100))
    assert len(s.due(T0 + 50)) == 1
    # The warm fill stored a new lifetime: its own hits decide the next refresh.
    s.filled("/a", "/a", "shop", T0 + 50, T0 + 150)
    assert s.due(T0 + 140) == []
    s.observe(Ev(T0 + 60, "/a", "hit", fresh_until=T0 + 150))
    s.observe(Ev(T0 + 61, "/a", "hit", fresh_until=T0 + 150))
    assert [r.url for r in s.due(T0 + 100)] == ["/a"]


def test_an_entry_that_expired_unseen_is_not_refreshed() -> None:
    s = RefreshAhead(min_hits=1, fraction=0.1)
    s.observe(Ev(T0, "/a", "miss", fresh_until=T0 + 100))
    s.observe(Ev(T0 + 1, "/a", "hit", fresh_until=T0 + 100))
    assert s.due(T0 + 500) == []


def test_refresh_ahead_is_bounded_and_uncacheable_is_ignored() -> None:
    s = RefreshAhead(min_hits=1, fraction=0.1, max_keys=100)
    for n in range(10_000):
        s.observe(Ev(T0 + n, f"/k{n}", "miss", fresh_until=T0 + n + 60))
    assert len(s) == 100
    s.observe(Ev(T0, "/private", "miss", fresh_until=0.0))
    s.observe(Ev(T0, "/bypass", "bypass", fresh_until=T0 + 10))
    assert len(s) == 100


def test_many_keys_come_due_in_order_of_their_time() -> None:
    s = RefreshAhead(min_hits=1, fraction=0.5)
    for n in range(100):
        s.observe(Ev(T0, f"/k{n}", "miss", fresh_until=T0 + 10 + n))
        s.observe(Ev(T0 + 1, f"/k{n}", "hit", fresh_until=T0 + 10 + n))
    seen = []
    for t in range(0, 120):
        seen.extend(r.url for r in s.due(T0 + t))
    assert seen == [f"/k{n}" for n in range(100)]


# -- reactive (misses over a threshold) ------------------------------------------------


class Misses:
    def __init__(self) -> None:
        self.by_key: dict[str, int] = {}

    def __call__(self, key: str, now: float) -> int:
        return self.by_key.get(key, 0)


def test_a_key_missed_more_than_the_threshold_is_warmed_when_it_expires() -> None:
    misses = Misses()
    s = MissReactive(threshold=10, misses=misses)
    misses.by_key["/a"] = 10
    s.observe(Ev(T0, "/a", "miss", fresh_until=T0 + 60))
    assert s.due(T0 + 1000) == []  # not over the threshold
    misses.by_key["/a"] = 11
    s.observe(Ev(T0 + 100, "/a", "miss", fresh_until=T0 + 160))
    assert s.due(T0 + 159) == []  # fresh: nothing is warmed
    (request,) = s.due(T0 + 160)
    assert request.reason is Reason.REACTIVE
    assert not request.refresh
    # The warm fill's lifetime is followed in turn.
    s.filled("/a", "/a", "shop", T0 + 160, T0 + 220)
    assert [r.url for r in s.due(T0 + 220)] == ["/a"]


def test_a_key_that_cooled_down_is_dropped() -> None:
    misses = Misses()
    s = MissReactive(threshold=2, misses=misses)
    misses.by_key["/a"] = 5
    s.observe(Ev(T0, "/a", "miss", fresh_until=T0 + 60))
    misses.by_key["/a"] = 1
    assert s.due(T0 + 60) == []
    assert len(s) == 0


def test_uncacheable_misses_are_never_followed() -> None:
    misses = Misses()
    s = MissReactive(threshold=1, misses=misses)
    misses.by_key["/private"] = 50
    s.observe(Ev(T0, "/private", "miss", fresh_until=0.0))
    assert len(s) == 0


def test_path_filter() -> None:
    f = PathFilter(include=["/products/*", "/articles/*"], exclude=["*?preview=*"])
    assert f.allows("/products/1")
    assert not f.allows("/account")
    assert not f.allows("/products/1?preview=1")
    assert PathFilter().allows("/anything")


# -- schedule clock ------------------------------------------------------------------


def plan(*sources: dict[str, object], schedule: str = "0 * * * *") -> Schedule:
    return Schedule.model_validate({"schedule": schedule, "sources": list(sources)})


def urls(name: str, **extra: object) -> dict[str, object]:
    return {"name": name, "source": {"type": "urls", "paths": ["/"]}, **extra}


def test_a_week_of_hourly_firings_in_milliseconds() -> None:
    clock = ScheduleClock(plan(urls("hourly"), urls("daily", schedule="30 3 * * *")), T0)
    started = time.perf_counter()
    fired: dict[str, list[float]] = {"hourly": [], "daily": []}
    now = T0
    while now < T0 + 7 * 86400:
        next_at = clock.next_at()
        assert next_at is not None and next_at > now
        now = next_at
        for source, firing in clock.due(now):
            fired[source.name].append(firing)
    elapsed = time.perf_counter() - started
    assert len(fired["hourly"]) == 168
    assert fired["hourly"][0] == T0 + 3600
    assert [t - T0 for t in fired["daily"]] == [3.5 * 3600 + d * 86400 for d in range(7)]
    assert elapsed < 1.0  # a week in well under a second, without sleeping


def test_a_late_clock_fires_each_source_once() -> None:
    clock = ScheduleClock(plan(urls("a")), T0)
    due = clock.due(T0 + 5 * 3600 + 10)  # asleep for five hours
    assert [(s.name, t) for s, t in due] == [("a", T0 + 3600)]
    assert clock.next_at() == T0 + 6 * 3600
    assert clock.due(T0 + 5 * 3600 + 20) == []


def test_disabled_sources_never_fire() -> None:
    clock = ScheduleClock(plan(urls("off", enabled=False)), T0)
    assert clock.next_at() is None
    assert clock.due(T0 + 86400) == []
