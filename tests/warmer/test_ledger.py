"""The effectiveness ledger on a virtual clock: no I/O, no waiting."""

from __future__ import annotations

import json
import tracemalloc

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.warmer.events import Ev
from warmer.ledger import MAX_LABELS, OTHER_LABEL, EffectivenessLedger, LedgerFigures

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def hit(ts: float, key: str, fresh_until: float, *, warmed: bool = True) -> Ev:
    return Ev(ts, key, "hit", fresh_until, warmed)


def miss(ts: float, key: str, fresh_until: float = 0.0) -> Ev:
    return Ev(ts, key, "miss", fresh_until)


# -- precision ----------------------------------------------------------------------


def test_precision_counts_warmed_entries_hit_before_they_expired() -> None:
    ledger = EffectivenessLedger()
    for key in ("/a", "/b", "/c"):
        ledger.warm_stored(key, T0, T0 + 60, label="scheduled:sitemap")
    ledger.observe(hit(T0 + 10, "/a", T0 + 60))
    ledger.observe(hit(T0 + 20, "/b", T0 + 60))
    before_expiry = ledger.figures(T0 + 59)
    assert before_expiry.precision is None  # nothing resolved yet
    assert before_expiry.warmed_open == 3

    f = ledger.figures(T0 + 60)
    assert (f.warmed_used, f.warmed_unused, f.warmed_open) == (2, 1, 0)
    assert f.ended_expired == 3
    assert f.precision == 2 / 3
    assert f.by_label["scheduled:sitemap"].precision == 2 / 3


def test_precision_is_kept_per_label() -> None:
    ledger = EffectivenessLedger()
    ledger.warm_stored("/a", T0, T0 + 10, label="predictive")
    ledger.warm_stored("/b", T0, T0 + 10, label="refresh-ahead")
    ledger.observe(hit(T0 + 1, "/b", T0 + 10))
    f = ledger.figures(T0 + 10)
    assert f.by_label["predictive"].precision == 0.0
    assert f.by_label["refresh-ahead"].precision == 1.0
    assert f.precision == 0.5


def test_a_hit_after_the_entry_expired_is_not_credited() -> None:
    ledger = EffectivenessLedger()
    ledger.warm_stored("/a", T0, T0 + 10, label="reactive")
    # Served past its freshness (a client's max-stale): it already went unused.
    ledger.observe(hit(T0 + 15, "/a", T0 + 10))
    f = ledger.figures(T0 + 20)
    assert (f.warmed_used, f.warmed_unused, f.hits_gained) == (0, 1, 0)
    assert f.warmed_hits_unattributed == 1


# -- eviction and replacement ----------------------------------------------------------


def test_an_explicit_eviction_resolves_the_lifetime_early() -> None:
    ledger = EffectivenessLedger()
    ledger.warm_stored("/a", T0, T0 + 100, label="on-demand")
    ledger.warm_stored("/b", T0, T0 + 100, label="on-demand")
    ledger.observe(hit(T0 + 1, "/b", T0 + 100))
    ledger.evicted("/a", T0 + 5)
    ledger.evicted("/b", T0 + 5)
    ledger.evicted("/never-warmed", T0 + 5)
    f = ledger.figures(T0 + 6)
    assert (f.warmed_used, f.warmed_unused, f.warmed_open) == (1, 1, 0)
    assert f.ended_evicted == 2
    # A hit arriving after the eviction is on some other entry.
    ledger.observe(hit(T0 + 7, "/b", T0 + 100))
    assert ledger.figures(T0 + 8).hits_gained == 1


def test_a_miss_while_the_warmed_entry_was_fresh_means_it_was_evicted() -> None:
    ledger = EffectivenessLedger()
    ledger.warm_stored("/a", T0, T0 + 100, label="reactive")
    ledger.observe(miss(T0 + 30, "/a", fresh_until=T0 + 130))  # the user's fill
    f = ledger.figures(T0 + 31)
    assert (f.warmed_unused, f.ended_evicted, f.warmed_open) == (1, 1, 0)
    # Hits on the user's fill are not warming's.
    ledger.observe(hit(T0 + 40, "/a", T0 + 130, warmed=False))
    assert ledger.figures(T0 + 41).hits_gained == 0


def test_a_stale_answer_from_the_warmed_entry_itself_is_its_expiry_not_an_eviction() -> None:
    ledger = EffectivenessLedger()
    ledger.warm_stored("/a", T0, T0 + 100, label="reactive")
    ledger.observe(Ev(T0 + 100, "/a", "stale", T0 + 100, warmed=True))
    f = ledger.figures(T0 + 101)
    assert (f.ended_expired, f.ended_evicted) == (1, 0)


def test_a_miss_that_arrived_before_the_warm_fill_does_not_evict_it() -> None:
    ledger = EffectivenessLedger()
    ledger.warm_stored("/a", T0 + 10, T0 + 110, label="reactive")
    # The request arrived before the warm entry was stored and joined its fetch.
    ledger.observe(miss(T0 + 9.9, "/a", fresh_until=T0 + 110))
    # Arrived before, filled before: an older entry, long replaced.
    ledger.observe(miss(T0 + 5, "/a", fresh_until=T0 + 65))
    f = ledger.figures(T0 + 11)
    assert f.warmed_open == 1
    assert f.ended_evicted == 0


def test_a_new_warm_fill_replaces_the_lifetime_of_the_key() -> None:
    ledger = EffectivenessLedger()
    ledger.warm_stored("/a", T0, T0 + 100, label="reactive")
    ledger.observe(hit(T0 + 10, "/a", T0 + 100))
    ledger.warm_stored("/a", T0 + 90, T0 + 190, label="refresh-ahead")
    f = ledger.figures(T0 + 91)
    assert f.by_label["reactive"].used == 1
    assert f.by_label["reactive"].replaced == 1
    assert f.by_label["refresh-ahead"].open == 1
    # A late event about the replaced entry is not credited to the new one.
    ledger.observe(hit(T0 + 89, "/a", T0 + 100))
    f = ledger.figures(T0 + 190)
    assert f.by_label["refresh-ahead"].unused == 1
    assert f.warmed_hits_unattributed == 1


def test_an_event_showing_a_newer_entry_replaces_the_lifetime() -> None:
    ledger = EffectivenessLedger()
    ledger.warm_stored("/a", T0, T0 + 100, label="reactive")
    # A client's no-cache request revalidated the entry early.
    ledger.observe(Ev(T0 + 50, "/a", "revalidated", T0 + 150, warmed=True))
    f = ledger.figures(T0 + 51)
    assert (f.ended_replaced, f.warmed_unused, f.warmed_open) == (1, 1, 0)


# -- hits gained, misses prevented, hit rates -----------------------------------------------


def test_only_the_first_hit_on_a_warmed_entry_is_a_miss_prevented() -> None:
    ledger = EffectivenessLedger()
    ledger.warm_stored("/a", T0, T0 + 100, label="predictive")
    ledger.observe(hit(T0 + 1, "/a", T0 + 100))
    ledger.observe(hit(T0 + 2, "/a", 0.0))  # freshness not told: the recorded one
    ledger.observe(hit(T0 + 3, "/a", T0 + 100))
    ledger.observe(hit(T0 + 4, "/a", T0 + 100, warmed=False))  # not warming's
    f = ledger.figures(T0 + 5)
    assert (f.hits_gained, f.misses_prevented) == (3, 1)
    assert f.by_label["predictive"].hits_gained == 3
    assert f.hits == 4


def test_hit_rates_before_and_after_the_first_warm_fill() -> None:
    ledger = EffectivenessLedger()
    ledger.observe(miss(T0, "/a", T0 + 10))
    ledger.observe(hit(T0 + 1, "/a", T0 + 10, warmed=False))
    ledger.observe(miss(T0 + 2, "/b", T0 + 12))
    ledger.observe(miss(T0 + 3, "/c", T0 + 13))
    ledger.observe(Ev(T0 + 3, "/login", "bypass"))
    f = ledger.figures(T0 + 4)
    assert f.hit_rate_before == 0.25
    assert f.hit_rate_after is None  # warming has not started
    assert f.improvement is None

    ledger.warm_stored("/d", T0 + 5, T0 + 100, label="scheduled:top")
    # Arrived before the warm fill, observed after it: still "before".
    ledger.observe(miss(T0 + 4.5, "/e", T0 + 20))
    ledger.observe(hit(T0 + 6, "/d", T0 + 100))
    ledger.observe(hit(T0 + 7, "/d", T0 + 100))
    ledger.observe(miss(T0 + 8, "/f", T0 + 30))
    ledger.observe(hit(T0 + 9, "/f", T0 + 30, warmed=False))
    f = ledger.figures(T0 + 10)
    assert (f.requests_before, f.requests_after) == (5, 4)
    assert f.hit_rate_before == 0.2
    assert f.hit_rate_after == 0.75
    assert f.improvement is not None
    assert abs(f.improvement - 0.55) < 1e-9
    assert (f.requests, f.bypass) == (9, 1)


def test_counterfactual_hit_rate_takes_back_each_miss_prevented() -> None:
    ledger = EffectivenessLedger()
    ledger.warm_stored("/a", T0, T0 + 100, label="reactive")
    ledger.warm_stored("/b", T0, T0 + 100, label="reactive")
    for n in range(3):
        ledger.observe(hit(T0 + 1 + n, "/a", T0 + 100))
    ledger.observe(hit(T0 + 5, "/b", T0 + 100))
    ledger.observe(miss(T0 + 6, "/c", T0 + 60))
    ledger.observe(hit(T0 + 7, "/c", T0 + 60, warmed=False))
    f = ledger.figures(T0 + 8)
    # 5 hits of 6 requests; without warming /a and /b would each have missed once.
    assert f.hit_rate == 5 / 6
    assert f.counterfactual_hit_rate == 3 / 6


# -- cost and benefit -------------------------------------------------------------------


def test_time_saved_comes_from_measured_origin_latency() -> None:
    ledger = EffectivenessLedger()
    ledger.warm_stored("/a", T0, T0 + 100, label="reactive", bytes=1000, fetch_seconds=0.5)
    ledger.warm_not_stored("/b", T0, label="reactive", failed=True, fetch_seconds=2.0)
    ledger.warm_not_stored("/c", T0, label="reactive", failed=False, bytes=200)
    ledger.warm_already_fresh("/d", T0, label="reactive")
    ledger.observe(hit(T0 + 1, "/a", T0 + 100))
    f = ledger.figures(T0 + 2)
    assert f.mean_origin_latency is None
    assert f.estimated_response_time_saved is None  # no latency measured yet
    assert (f.warm_fetches, f.warm_stored, f.warm_failures) == (3, 1, 1)
    assert (f.warm_bytes, f.warm_fetch_seconds, f.already_fresh) == (1200, 2.5, 1)
    assert f.success_rate == 1 / 3
    assert f.net_origin_fetches == 2

    ledger.origin_fetch(T0 + 3, 0.2)
    ledger.origin_fetch(T0 + 4, 0.4)
    f = ledger.figures(T0 + 5)
    assert f.mean_origin_latency is not None
    assert abs(f.mean_origin_latency - 0.3) < 1e-9
    assert f.estimated_response_time_saved is not None
    assert abs(f.estimated_response_time_saved - 0.3) < 1e-9
    stats = f.to_stats()["cost_benefit"]
    assert stats["items_warmed"] == 1
    assert stats["cache_hits_prevented"] == 1
    assert stats["estimated_response_time_saved"] == 0.3
    assert stats["origin_fetches"] == 3


# -- performance during and outside warm runs ----------------------------------------------


def test_latency_and_origin_load_are_split_by_warm_runs() -> None:
    ledger = EffectivenessLedger()
    ledger.run_active(False, T0)
    ledger.observe(miss(T0 + 1, "/a", T0 + 60), latency=0.1)
    ledger.origin_fetch(T0 + 1, 0.08)
    ledger.observe(hit(T0 + 2, "/a", T0 + 60, warmed=False), latency=0.001)
    ledger.run_active(True, T0 + 10)
    for n in range(4):
        ledger.warm_stored(f"/w{n}", T0 + 11, T0 + 100, label="scheduled:s")
    ledger.observe(miss(T0 + 12, "/b", T0 + 72), latency=0.3)
    ledger.origin_fetch(T0 + 12, 0.25)
    ledger.observe(miss(T0 + 13, "/c", T0 + 73))  # latency unknown
    ledger.run_active(False, T0 + 20)
    # Arrived during the run, observed after it ended.
    ledger.observe(miss(T0 + 19, "/d", T0 + 79), latency=0.5)
    f = ledger.figures(T0 + 40)

    during, outside = f.during_runs, f.outside_runs
    assert (during.seconds, outside.seconds) == (10.0, 30.0)
    assert (during.requests, outside.requests) == (3, 2)
    assert during.mean_latency is not None and abs(during.mean_latency - 0.4) < 1e-9
    assert outside.mean_latency is not None and abs(outside.mean_latency - 0.0505) < 1e-9
    assert (during.user_origin_fetches, during.warm_fetches) == (1, 4)
    assert during.origin_fetches_per_second == 0.5
    assert outside.origin_fetches_per_second is not None
    assert abs(outside.origin_fetches_per_second - 1 / 30) < 1e-9
    stats = f.to_stats()["performance_impact"]
    assert set(stats) == {"during_runs", "outside_runs"}
    assert stats["during_runs"]["mean_latency"] == 0.4


def test_performance_figures_are_null_until_measured() -> None:
    ledger = EffectivenessLedger()
    ledger.observe(miss(T0, "/a", T0 + 60))
    f = ledger.figures(T0)
    for phase in (f.during_runs, f.outside_runs):
        assert phase.mean_latency is None
        assert phase.origin_fetches_per_second is None
        assert phase.mean_origin_latency is None


# -- bounds ----------------------------------------------------------------------------


def test_memory_stays_bounded_under_a_flood_of_warm_fills() -> None:
    ledger = EffectivenessLedger(max_tracked=100)
    ledger.warm_stored("/first", T0, T0 + 10**6, label="reactive")
    ledger.observe(hit(T0, "/first", T0 + 10**6))  # used, then pushed out

    def flood(start: int, count: int) -> None:
        for n in range(start, start + count):
            ledger.warm_stored(f"/k{n}", T0 + n, T0 + 10**6, label="reactive")

    flood(0, 5_000)
    tracemalloc.start()
    try:
        flood(5_000, 5_000)
        settled, _ = tracemalloc.get_traced_memory()
        flood(10_000, 50_000)
        grown, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert grown - settled < 100_000  # ten times the fills, no more memory
    assert len(ledger) == 100
    f = ledger.figures(T0 + 60_000)
    assert f.warmed_untracked == 60_001 - 100
    assert f.warmed_open == 100
    # Pushed out while open: neither used nor unused, but its hit did prevent a miss.
    assert (f.warmed_used, f.warmed_unused, f.precision) == (0, 0, None)
    assert f.misses_prevented == 1


def test_labels_beyond_the_limit_are_folded_together() -> None:
    ledger = EffectivenessLedger()
    for n in range(MAX_LABELS + 10):
        ledger.warm_stored(f"/k{n}", T0, T0 + 10, label=f"scheduled:s{n}")
    f = ledger.figures(T0)
    assert len(f.by_label) == MAX_LABELS + 1
    assert f.by_label[OTHER_LABEL].stored == 10
    ledger.observe(hit(T0 + 1, f"/k{MAX_LABELS + 5}", T0 + 10))
    assert ledger.figures(T0 + 1).by_label[OTHER_LABEL].hits_gained == 1


# -- reports ----------------------------------------------------------------------------


def test_a_fresh_ledger_reports_nothing_it_has_not_measured() -> None:
    f = EffectivenessLedger().figures(T0)
    stats = f.to_stats()
    json.dumps(stats)
    effectiveness = stats["effectiveness"]
    for name in (
        "hit_rate_before",
        "hit_rate_after",
        "improvement",
        "precision",
        "counterfactual_hit_rate",
    ):
        assert effectiveness[name] is None, name
    assert stats["cost_benefit"]["estimated_response_time_saved"] is None
    assert stats["cost_benefit"]["success_rate"] is None
    assert stats["by_label"] == {}
    names = {m.name for m in f.metric_families()}
    assert "warmproxy_warm_precision_ratio" not in names
    assert "warmproxy_hit_after_warming_ratio" not in names


def test_stats_carry_the_design_names_and_labels() -> None:
    ledger = EffectivenessLedger()
    ledger.observe(miss(T0, "/x", T0 + 5))
    ledger.warm_stored("/a", T0 + 1, T0 + 10, label="on-demand", bytes=10)
    ledger.observe(hit(T0 + 2, "/a", T0 + 10), latency=0.002)
    ledger.origin_fetch(T0 + 2, 0.1)
    stats = ledger.figures(T0 + 10).to_stats()
    json.dumps(stats)
    assert {
        "hit_rate_before",
        "hit_rate_after",
        "improvement",
        "precision",
        "counterfactual_hit_rate",
        "hits_gained",
        "misses_prevented",
    } <= set(stats["effectiveness"])
    assert {
        "items_warmed",
        "cache_hits_prevented",
        "estimated_response_time_saved",
        "origin_fetches",
        "bytes",
    } <= set(stats["cost_benefit"])
    assert stats["effectiveness"]["improvement"] == 1.0
    assert stats["effectiveness"]["precision"] == 1.0
    assert stats["by_label"]["on-demand"]["used"] == 1
    assert stats["by_label"]["on-demand"]["bytes"] == 10


def test_metric_families_follow_the_figures() -> None:
    ledger = EffectivenessLedger()
    ledger.warm_stored("/a", T0, T0 + 10, label="reactive")
    ledger.warm_stored("/b", T0, T0 + 10, label="predictive")
    ledger.observe(hit(T0 + 1, "/a", T0 + 10), latency=0.01)
    families = {m.name: m for m in ledger.figures(T0 + 10).metric_families()}
    assert families["warmproxy_warm_precision_ratio"].samples == (((), 0.5),)
    gained = families["warmproxy_warm_hits_gained"]
    assert gained.kind == "counter"
    assert gained.labels == ("strategy", "source")
    assert dict(gained.samples) == {("predictive", ""): 0.0, ("reactive", ""): 1.0}
    resolved = dict(families["warmproxy_warmed_entries_resolved"].samples)
    assert resolved[("reactive", "", "used")] == 1.0
    assert resolved[("predictive", "", "unused")] == 1.0
    # Running totals, so rates and means are taken over a dashboard's window.
    latency = families["warmproxy_phase_user_latency_seconds"]
    assert latency.kind == "counter"
    assert dict(latency.samples)[("outside_runs",)] == 0.01
    assert dict(families["warmproxy_phase_user_requests"].samples)[("outside_runs",)] == 1.0


def test_metric_families_name_a_scheduled_source_apart_from_its_strategy() -> None:
    ledger = EffectivenessLedger()
    ledger.warm_stored("/a", T0, T0 + 10, label="scheduled:sitemap")
    families = {m.name: m for m in ledger.figures(T0 + 1).metric_families()}
    opened = dict(families["warmproxy_warmed_entries_open"].samples)
    assert opened == {("scheduled", "sitemap"): 1.0}


# -- properties --------------------------------------------------------------------------

KEYS = [f"/k{n}" for n in range(5)]

operation = st.one_of(
    st.tuples(st.just("store"), st.sampled_from(KEYS), st.floats(0, 50)),
    st.tuples(st.just("hit"), st.sampled_from(KEYS), st.sampled_from(["same", "zero", "other"])),
    st.tuples(st.just("miss"), st.sampled_from(KEYS), st.floats(0, 50)),
    st.tuples(st.just("evict"), st.sampled_from(KEYS), st.just(0)),
    st.tuples(st.just("not_stored"), st.sampled_from(KEYS), st.booleans()),
)


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(st.tuples(st.floats(0, 20), operation), max_size=80),
    max_tracked=st.integers(1, 6),
)
def test_every_warmed_lifetime_is_accounted_for_once(
    steps: list[tuple[float, tuple[str, str, object]]], max_tracked: int
) -> None:
    ledger = EffectivenessLedger(max_tracked=max_tracked)
    stored_until: dict[str, float] = {}
    now = T0
    stored = 0

    def check(f: LedgerFigures) -> None:
        assert f.warmed_used + f.warmed_unused + f.warmed_open + f.warmed_untracked == stored
        assert f.warm_stored == stored
        assert f.warmed_open <= max_tracked
        assert f.precision is None or 0.0 <= f.precision <= 1.0
        assert f.misses_prevented <= min(f.hits_gained, stored)
        rate = f.counterfactual_hit_rate
        assert rate is None or 0.0 <= rate <= (f.hit_rate or 0.0)
        assert f.success_rate is None or 0.0 <= f.success_rate <= 1.0

    for dt, (kind, key, arg) in steps:
        now += dt
        if kind == "store":
            assert isinstance(arg, float)
            stored_until[key] = now + arg
            ledger.warm_stored(key, now, now + arg, label=f"label-{key[-1]}")
            stored += 1
        elif kind == "hit":
            until = {"same": stored_until.get(key, 0.0), "zero": 0.0, "other": now + 1}[str(arg)]
            ledger.observe(hit(now, key, until))
        elif kind == "miss":
            assert isinstance(arg, float)
            ledger.observe(miss(now, key, now + arg))
        elif kind == "evict":
            ledger.evicted(key, now)
        else:
            ledger.warm_not_stored(key, now, label="x", failed=bool(arg))
        check(ledger.figures(now))
    f = ledger.figures(now + 100)
    check(f)
    assert f.warmed_open == 0
