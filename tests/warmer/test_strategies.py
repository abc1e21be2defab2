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


def test_a_short_lifetime_is_refreshed_a_lead_ahead_for_a_runner_that_ticks() -> None:
    # A 5 s lifetime: 10 % of it is half a second, less than the live
    # runner's one-second tick, which would find the window half the time.
    # With a lead of two ticks the refresh is due 2 s before the expiry.
    ticking = RefreshAhead(min_hits=2, fraction=0.1, lead=2.0)
    plain = RefreshAhead(min_hits=2, fraction=0.1)
    for s in (ticking, plain):
        s.observe(Ev(T0, "/live", "miss", fresh_until=T0 + 5))
        s.observe(Ev(T0 + 1, "/live", "hit", fresh_until=T0 + 5))
        s.observe(Ev(T0 + 2, "/live", "hit", fresh_until=T0 + 5))
    assert ticking.due(T0 + 2.9) == []
    (request,) = ticking.due(T0 + 3.0)
    assert request.refresh
    assert plain.due(T0 + 3.0) == []  # its window opens at 4.5 s
    assert len(plain.due(T0 + 4.5)) == 1
    # A lead longer than the lifetime: due from its start, never before.
    whole = RefreshAhead(min_hits=1, fraction=0.1, lead=30.0)
    whole.observe(Ev(T0, "/x", "miss", fresh_until=T0 + 5))
    whole.observe(Ev(T0 + 1, "/x", "hit", fresh_until=T0 + 5))
    assert len(whole.due(T0 + 1)) == 1


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
    # The floor off: a hundred refreshes at once, none judged yet, would put
    # a new class of decisions on probation (see the tests further down).
    s = RefreshAhead(min_hits=1, fraction=0.5, min_precision=0.0)
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


# -- strategies that pay for themselves ---------------------------------------------


class MissLog:
    """Misses per key within a window, as the usage tracker counts them."""

    def __init__(self, window: float) -> None:
        self.window = window
        self.at: dict[str, list[float]] = {}

    def add(self, key: str, ts: float) -> None:
        self.at.setdefault(key, []).append(ts)

    def __call__(self, key: str, now: float) -> int:
        return sum(1 for ts in self.at.get(key, ()) if ts > now - self.window)


class Run:
    """A strategy driven as the live runner drives it, on a virtual clock: a
    ``due`` round every second, warm requests filled at once into a cache
    with room for everything, entries fresh ``ttl`` seconds."""

    def __init__(self, strategy: MissReactive | RefreshAhead, ttl: float, log: MissLog) -> None:
        self.strategy = strategy
        self.ttl = ttl
        self.log = log
        self.fresh: dict[str, float] = {}  # key -> freshness end
        self.warmed: list[str] = []
        self.hits: list[str] = []

    def play(self, reads: list[tuple[float, str]]) -> None:
        reads = sorted(reads)
        s = self.strategy
        t = reads[0][0]
        i = 0
        while i < len(reads):
            for request in s.due(t):
                fresh_until = t + self.ttl
                self.fresh[request.url] = fresh_until
                self.warmed.append(request.url)
                s.filled(request.url, request.url, "shop", t, fresh_until)
            while i < len(reads) and reads[i][0] < t + 1:
                ts, key = reads[i]
                i += 1
                fresh_until = self.fresh.get(key, 0.0)
                if fresh_until > ts:
                    self.hits.append(key)
                    s.observe(Ev(ts, key, "hit", fresh_until=fresh_until))
                else:
                    self.fresh[key] = ts + self.ttl
                    self.log.add(key, ts)
                    s.observe(Ev(ts, key, "miss", fresh_until=ts + self.ttl))
            t += 1


def reads_of(prefix: str, keys: int, start: float, times: int) -> list[tuple[float, str]]:
    """``keys`` keys, one starting every 20 s, each read ``times`` times 70 s
    apart (entries are fresh 60 s: each read misses unless warmed)."""
    return [(start + 20 * k + 70 * n, f"{prefix}{k}") for k in range(keys) for n in range(times)]


def test_reactive_stops_warming_keys_that_are_never_asked_for_again() -> None:
    log = MissLog(240.0)
    s = MissReactive(threshold=2, misses=log, min_precision=0.1)
    run = Run(s, 60.0, log)
    # A scan: each block read three times, then never again.  Past the third
    # miss the block is warmed when its entry expires: a wasted fetch.
    run.play(reads_of("/scan/", 300, T0, 3))
    first = sum(1 for key in run.warmed if int(key.rsplit("/", 1)[1]) < 100)
    last = sum(1 for key in run.warmed if int(key.rsplit("/", 1)[1]) >= 100)
    assert first >= 15  # until the class of these decisions has enough evidence
    assert last <= 200 // 16  # then only the explorations, fewer and fewer
    assert run.hits == []
    assert s.gate.refused >= 180
    assert s.watch.precision == 0.0


def test_reactive_warms_again_when_the_traffic_comes_back_to_reuse() -> None:
    log = MissLog(240.0)
    s = MissReactive(threshold=2, misses=log, min_precision=0.1)
    run = Run(s, 60.0, log)
    run.play(reads_of("/scan/", 300, T0, 3))
    # 2-3 misses, the key's first warm, likely still cached (nothing is ever
    # evicted here): what a scan's decisions were.
    cls = ("misses", 2, 0, False)
    assert s.gate.closed(cls)
    warmed_in_scan = len(run.warmed)
    # Now each key is read eight times, 70 s apart: the warm at the expiry
    # after the third miss is hit, so are the explorations, and the class
    # reopens.
    run.play(reads_of("/page/", 300, T0 + 10_000, 8))
    assert not s.gate.closed(cls)
    late = [key for key in run.hits if key.startswith("/page/") and int(key[6:]) >= 150]
    # Each key is kept warm while its misses stay over the threshold: two
    # reads in eight become hits (as with no floor at all).
    assert len(late) == 150 * 2
    assert len(run.warmed) - warmed_in_scan >= 300
    assert s.watch.precision is not None and s.watch.precision > 0.4


def test_refresh_ahead_closes_on_one_off_bursts_and_reopens_on_reuse() -> None:
    log = MissLog(240.0)
    s = RefreshAhead(min_hits=2, fraction=0.1, min_precision=0.1)
    run = Run(s, 60.0, log)
    # Bursts: each key read three times in two seconds, never again.
    bursts = [(T0 + 20 * k + n, f"/burst/{k}") for k in range(400) for n in range(3)]
    run.play(bursts)
    refreshed = [key for key in run.warmed if int(key.rsplit("/", 1)[1]) >= 200]
    assert len(refreshed) <= 200 // 16
    cls = ("hits", 2, 0, False)  # hits 2-3, the key's first refresh, entry cached
    assert s.gate.closed(cls)
    # The same decision now pays: after the burst the key is read every 20 s
    # for ten minutes, from the instant its first entry expires.  The
    # explorations find it out, and the class reopens.
    reuse = [
        (T0 + 20_000 + 20 * k + t, f"/hot/{k}")
        for k in range(400)
        for t in (0, 1, 2, *range(60, 600, 20))
    ]
    run.play(reuse)
    assert not s.gate.closed(cls)
    late = [key for key in run.hits if key.startswith("/hot/") and int(key[5:]) >= 300]
    assert len(late) == 100 * 29  # every read of the last hundred keys but the first


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
