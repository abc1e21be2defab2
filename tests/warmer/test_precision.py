"""Measured precision per class of warming decision, its floor, and the watch
that judges each warm: on a virtual clock, no I/O."""

from __future__ import annotations

import math

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from proxy.config import ConfigError, load_settings
from proxy.observe import AccessEvent
from proxy.warming import warmer_config
from warmer.config import ReactiveConfig
from warmer.core import build_strategies, build_tracker
from warmer.precision import (
    DEFAULT_MIN_PRECISION,
    EXPLORE_EVERY,
    LAST_NONE,
    LAST_UNUSED,
    LAST_USED,
    MAX_EXPLORE_EVERY,
    MIN_EVIDENCE,
    PROBATION,
    DisplacementCost,
    PrecisionGate,
    WarmWatch,
    bucket,
    wilson_upper,
)

T0 = 1_767_225_600.0

# -- the gate ----------------------------------------------------------------------


def decide(gate: PrecisionGate, cls: object, used: bool, n: int) -> int:
    """``n`` decisions of ``cls`` whose warms, when made, come out ``used``;
    returns how many warmed."""
    warmed = 0
    for _ in range(n):
        if gate.allows(cls):
            warmed += 1
            gate.record(cls, used)
    return warmed


def test_a_class_below_its_floor_closes_and_others_stay_open() -> None:
    gate = PrecisionGate(0.3)
    assert gate.allows("wasted") and gate.allows("useful")  # nothing known: open
    for n in range(200):
        gate.record("wasted", n % 20 == 0)  # 5 %
        gate.record("useful", n % 2 == 0)  # 50 %
    assert gate.closed("wasted")
    assert not gate.closed("useful")
    assert gate.precision("wasted") == pytest.approx(0.05, abs=0.03)
    assert decide(gate, "useful", True, 100) == 100
    # Closed: one decision in 16 warms, then fewer while they are wasted.
    warmed = decide(gate, "wasted", False, 16 * 100)
    assert warmed == 6  # after 16, 32, 64, 128, 256, 512 decisions (1008), then 1024
    assert gate.refused == 16 * 100 - warmed
    (row,) = [c for c in gate.describe()["classes"] if c["class"] == "wasted"]
    assert row["closed"] and row["refused"] == gate.refused


def test_a_class_is_not_closed_on_little_evidence() -> None:
    gate = PrecisionGate(0.5)
    for _ in range(int(MIN_EVIDENCE) - 1):
        gate.record("new", False)
        assert not gate.closed("new")
    # Evidence is decayed (old outcomes weigh less): a few more to reach it.
    for _ in range(3):
        gate.record("new", False)
    assert gate.closed("new")


def test_exploration_backs_off_while_wasted_and_comes_back_when_used() -> None:
    gate = PrecisionGate(0.5)
    for _ in range(40):
        gate.record("c", False)
    expected = [EXPLORE_EVERY]
    while expected[-1] < MAX_EXPLORE_EVERY:
        expected.append(min(2 * expected[-1], MAX_EXPLORE_EVERY))
    expected.append(MAX_EXPLORE_EVERY)  # and so on, while its warms are wasted
    gaps = []
    refused = 0
    for _ in range(sum(expected)):
        if gate.allows("c"):
            gaps.append(refused + 1)
            refused = 0
        else:
            refused += 1
    assert gaps == expected
    gate.record("c", True)  # an exploration warm was used: sample at 1 in 16 again
    assert decide(gate, "c", False, EXPLORE_EVERY) == 1


def test_a_floor_of_zero_never_refuses() -> None:
    gate = PrecisionGate(0.0)
    assert decide(gate, "c", False, 1000) == 1000


def test_the_floor_applies_as_it_moves() -> None:
    gate = PrecisionGate(0.1)
    for n in range(200):
        gate.record("c", n % 4 == 0)  # 25 %
    assert not gate.closed("c")
    gate.floor = 0.5  # e.g. the measured break-even rose
    assert gate.closed("c")
    assert not gate.allows("c")


@settings(max_examples=300, deadline=None)
@given(
    block=st.lists(st.booleans(), min_size=1, max_size=20),
    floor_share=st.floats(min_value=0.01, max_value=1.0),
    repeats=st.integers(min_value=10, max_value=60),
)
def test_never_closes_a_class_at_or_above_its_floor(
    block: list[bool], floor_share: float, repeats: int
) -> None:
    """Outcomes repeating a block whose precision is at least the floor (any
    order within the block, up to 20 long): once it has seen a few blocks
    (a first run of bad luck may close it for a while), the class never
    closes, however long it runs."""
    assume(any(block))
    floor = floor_share * sum(block) / len(block)
    gate = PrecisionGate(floor)
    warm_up = max(40, 3 * len(block))
    n = 0
    for _ in range(repeats):
        for used in block:
            gate.record("c", used)
            n += 1
            assert n < warm_up or not gate.closed("c")


@settings(max_examples=100, deadline=None)
@given(
    floor=st.floats(min_value=0.05, max_value=0.6),
    closed_for=st.integers(min_value=20, max_value=2000),
)
def test_a_closed_class_reopens_when_its_warms_are_used_again(
    floor: float, closed_for: int
) -> None:
    gate = PrecisionGate(floor)
    while not gate.closed("c"):
        decide(gate, "c", False, 1)
    decide(gate, "c", False, closed_for)
    assert gate.closed("c")
    # The traffic changes: every warm of the class would now be used.  The
    # explorations see it, and the class reopens within a few hundred decisions.
    decisions = 0
    while gate.closed("c") and decisions < 2000:
        decisions += 1
        if gate.allows("c"):
            gate.record("c", True)
    assert not gate.closed("c")
    # Within the exploration gap it had backed off to, and a few explorations.
    assert decisions <= MAX_EXPLORE_EVERY + 600


@given(classes=st.lists(st.integers(0, 10_000), max_size=3000))
def test_memory_is_bounded_by_max_classes(classes: list[int]) -> None:
    gate = PrecisionGate(0.3, max_classes=50)
    for cls in classes:
        gate.allows(cls)
        gate.record(cls, cls % 3 == 0)
        assert len(gate) <= 50


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="min_precision"):
        PrecisionGate(1.5)
    with pytest.raises(ValueError):
        PrecisionGate(0.3, explore_every=0)


def test_wilson_upper_and_buckets() -> None:
    assert wilson_upper(0, 0) == 1.0
    assert wilson_upper(0, 100) < 0.03
    assert 0.5 < wilson_upper(50, 100) < 0.6
    assert wilson_upper(100, 100) == pytest.approx(1.0)
    assert [bucket(n) for n in (0, 1, 2, 3, 4, 7, 8, 10**6)] == [0, 1, 2, 2, 3, 3, 4, 6]


# -- the watch ---------------------------------------------------------------------


def watch() -> WarmWatch:
    return WarmWatch(PrecisionGate(0.3), max_open=100, max_keys=100, fill_grace=60.0)


def test_a_warm_hit_in_its_lifetime_is_used() -> None:
    w = watch()
    w.asked("/a", "c", T0)
    w.filled("/a", T0 + 100, T0)
    w.observe("/a", "hit", T0 + 100, T0 + 50)
    assert (w.used, w.unused) == (1, 0)
    assert w.last("/a") == LAST_USED
    assert w.gate.precision("c") == 1.0
    # Followed on until the lifetime the prevented miss would have stored
    # (T0 + 50 + 100) ends: the gain can no longer be taken back.
    w.settle(T0 + 150)
    assert "/a" not in w.open
    assert (w.used, w.unused) == (1, 0)


def test_a_warm_that_costs_its_hit_back_is_unused() -> None:
    """Warmed at T0, hit at T0 + 50: without it that request would have
    missed and stored an entry fresh until T0 + 150.  The warmed entry
    expires at T0 + 100: a miss at T0 + 120 is the hit it took back."""
    w = watch()
    w.asked("/a", "c", T0)
    w.filled("/a", T0 + 100, T0)
    w.observe("/a", "hit", T0 + 100, T0 + 50)
    w.observe("/a", "hit", T0 + 100, T0 + 70)
    assert w.used == 1
    w.observe("/a", "miss", T0 + 220, T0 + 120)
    assert (w.used, w.unused) == (0, 1)
    assert w.gate.precision("c") == 0.0
    assert w.last("/a") == LAST_UNUSED
    # An eviction while its own lifetime lasted, or a miss after that other
    # lifetime would have ended, takes nothing back.
    w.asked("/b", "c", T0)
    w.filled("/b", T0 + 100, T0)
    w.observe("/b", "hit", T0 + 100, T0 + 50)
    w.observe("/b", "miss", T0 + 160, T0 + 60)
    w.asked("/c", "c", T0)
    w.filled("/c", T0 + 100, T0)
    w.observe("/c", "hit", T0 + 100, T0 + 50)
    w.observe("/c", "miss", T0 + 260, T0 + 160)
    assert (w.used, w.unused) == (2, 1)


def test_hits_the_key_would_have_had_anyway_are_not_gains() -> None:
    w = watch()
    # A refresh at T0 + 90 of an entry fresh until T0 + 100: a hit at T0 + 95
    # would have been one without it.
    w.asked("/a", "c", T0 + 90, covered=T0 + 100)
    w.filled("/a", T0 + 190, T0 + 90)
    w.observe("/a", "hit", T0 + 190, T0 + 95)
    assert (w.used, w.unused) == (0, 0)
    w.observe("/a", "hit", T0 + 190, T0 + 130)
    assert w.used == 1
    # A chain: warmed again at T0 + 190, when the first warm's entry expires,
    # before the lifetime the first one's hit prevented (until T0 + 230)
    # ends; a hit before T0 + 230 is that one's, not this warm's.
    w.asked("/a", "c", T0 + 190)
    w.filled("/a", T0 + 290, T0 + 190)
    w.observe("/a", "hit", T0 + 290, T0 + 200)
    assert w.used == 1
    w.observe("/a", "hit", T0 + 290, T0 + 240)
    assert (w.used, w.unused) == (2, 0)


@pytest.mark.parametrize(
    ("outcome", "fresh_until", "at"),
    [
        ("miss", T0 + 150, T0 + 50),  # evicted: a miss while it should be fresh
        ("hit", T0 + 150, T0 + 50),  # another lifetime answered: replaced first
        ("miss", T0 + 250, T0 + 150),  # asked only after it expired
    ],
)
def test_a_warm_not_hit_in_its_lifetime_is_unused(
    outcome: str, fresh_until: float, at: float
) -> None:
    w = watch()
    w.asked("/a", "c", T0)
    w.filled("/a", T0 + 100, T0)
    w.observe("/a", outcome, fresh_until, at)
    assert (w.used, w.unused) == (0, 1)
    assert w.last("/a") == LAST_UNUSED


def test_a_warm_that_expires_unseen_is_judged_at_its_expiry() -> None:
    w = watch()
    w.asked("/a", "c", T0)
    w.filled("/a", T0 + 100, T0)
    w.settle(T0 + 99)
    assert w.unused == 0
    w.settle(T0 + 100)  # no hit is possible at its expiry instant
    assert w.unused == 1


def test_a_warm_replaced_by_another_fill_or_asked_again_is_unused() -> None:
    w = watch()
    w.asked("/a", "c", T0)
    w.filled("/a", T0 + 100, T0)
    w.filled("/a", T0 + 130, T0 + 30)  # someone else's fill replaced it
    assert w.unused == 1
    w.asked("/b", "c", T0)
    w.filled("/b", T0 + 100, T0)
    w.asked("/b", "c", T0 + 40)  # refreshed before any hit
    assert w.unused == 2
    w.filled("/b", T0 + 140, T0 + 40)
    w.observe("/b", "hit", T0 + 140, T0 + 120)
    assert w.used == 1


def test_a_warm_never_filled_is_forgotten_unjudged() -> None:
    w = watch()
    assert w.gate.allows("c")
    w.asked("/a", "c", T0)  # e.g. a hint for an entry already fresh
    w.observe("/a", "hit", T0 + 500, T0 + 1)  # not its lifetime: says nothing
    w.settle(T0 + 61)
    assert "/a" not in w.open
    assert (w.used, w.unused) == (0, 0)
    assert w.last("/a") == LAST_NONE
    (row,) = w.gate.describe()["classes"]
    assert row["pending"] == 0  # its place is free for another warm of its class


@settings(deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.sampled_from(["ask", "fill", "hit", "miss"]), st.integers(0, 500)),
        max_size=2000,
    )
)
def test_the_watch_is_bounded_and_judges_each_warm_at_most_once(
    ops: list[tuple[str, int]],
) -> None:
    w = WarmWatch(PrecisionGate(0.3), max_open=20, max_keys=30, fill_grace=5.0)
    asked = 0
    now = T0
    for op, k in ops:
        now += 1.0
        key = f"/k{k}"
        if op == "ask":
            w.asked(key, k % 3, now)
            asked += 1
        elif op == "fill":
            w.filled(key, now + 10.0, now)
        elif key in w.open:
            w.observe(key, op, now + 10.0 if op == "miss" else now + 5.0, now)
        w.settle(now)
        assert len(w.open) <= 20
        assert len(w._last) <= 30
        assert len(w._heap) <= 4 * 256 + 1
        assert w.used + w.unused <= asked


# -- the displacement cost -------------------------------------------------------


def seen(
    cost: DisplacementCost,
    key: str,
    outcome: str,
    fresh_until: float,
    ts: float,
    vary: tuple[str, ...] = (),
    vary_values: tuple[str | None, ...] = (),
    coding: str = "",
) -> None:
    """``cost`` observes a user request for ``key``, as the proxy's event tells it."""
    cost.observe(
        AccessEvent(
            ts=ts,
            key=key,
            url=key,
            method="GET",
            outcome=outcome,
            status=200,
            latency=0.0,
            bytes=0,
            client="",
            fresh_until=fresh_until,
            vary=vary,
            vary_values=vary_values,
            coding=coding,
        )
    )


def test_no_fresh_entry_dropped_costs_nothing() -> None:
    cost = DisplacementCost()
    for n in range(1000):
        key = f"/k{n % 50}"
        # Each key asked every 50 s, entries fresh 30 s: misses after expiry.
        seen(cost, key, "miss", T0 + n + 30.0, T0 + n)
    assert cost.cost == 0.0
    assert cost.break_even("/k1", T0 + 5000) == 0.0  # nothing was ever evicted


def test_early_drops_per_fill_are_the_cost_of_a_fill() -> None:
    cost = DisplacementCost()
    for n in range(4000):
        key = f"/k{n % 50}"
        # Each key asked every 50 s, and missed each time; every other fill
        # is fresh for 100 s, so the miss after it finds the key dropped
        # while fresh (the cache evicted it): half the fills cost a hit.
        lifetime = 40.0 if (n // 50) % 2 == 0 else 100.0
        seen(cost, key, "miss", T0 + n + lifetime, T0 + n)
    assert cost.cost == pytest.approx(0.5, abs=0.02)
    # Evicted keys were asked for again 50 s after their last request: a key
    # asked for 10 s ago is likely still cached (a warm refreshes it in
    # place), one asked for a minute ago likely not (a warm displaces an
    # entry, which costs a hit half the time).
    assert cost.scale == pytest.approx(50.0, rel=0.05)
    last = T0 + 3999  # /k49's last request
    assert cost.evicted("/k49", last + 10) == pytest.approx(0.2, abs=0.02)
    assert cost.evicted("/k49", last + 60) == 1.0
    assert cost.break_even("/k49", last + 60) == pytest.approx(cost.cost)
    assert cost.evicted("/never-seen", last) == 1.0


def test_requests_that_shared_a_fill_are_not_drops() -> None:
    """Live, several browsers' requests for a key that missed wait for one
    fetch (collapsed) or are answered from the entry it stored under another
    variant: each is a "miss" event carrying that same lifetime.  None of
    them found an entry evicted.  (Counted as drops, they made the eviction
    age seconds long on a live YouTube replay whose evictions came after
    about half an hour, and every displacement decision wrong with it.)"""
    cost = DisplacementCost()
    for n in range(200):
        key = f"/k{n}"
        stored = T0 + n + 3600.0
        seen(cost, key, "miss", stored, T0 + n)
        seen(cost, key, "miss", stored, T0 + n + 0.5)  # waited for that fetch
        seen(cost, key, "hit", stored, T0 + n + 0.7)
    assert cost.cost == 0.0
    assert cost.scale == math.inf  # nothing was ever evicted
    # Entries that never expire (the replay's ``--ttl never``) all end at
    # infinity: a miss after one is a drop, the end tells nothing apart.
    forever = DisplacementCost()
    seen(forever, "/k", "miss", math.inf, T0)
    seen(forever, "/k", "miss", math.inf, T0 + 60.0)
    assert forever.cost == pytest.approx(0.5, rel=1e-3)
    assert forever.scale == pytest.approx(60.0, rel=0.01)


PAGE = ("accept-encoding", "accept-language")
CHROME_EN = ("br,deflate,gzip,zstd", "en-us,en;q=0.9")
SAFARI_EN = ("br,deflate,gzip", "en-us,en;q=0.9")
FIREFOX_DE = ("br,deflate,gzip,zstd", "de,en-us;q=0.7,en;q=0.3")


def test_a_miss_of_another_variant_is_no_drop() -> None:
    """A page that varies on Accept-Language has an entry per language: a
    German browser's first request misses while the English entry is
    fresh, though nothing was evicted.  Counted as drops, such misses (one
    per new Accept-Language, seconds after the first fill) made the
    eviction age about a second and the cost of a fill two thirds of a hit
    on a proxy that had evicted nothing."""
    cost = DisplacementCost()
    for n in range(200):
        key = f"/page/{n}"
        seen(cost, key, "miss", T0 + n + 300.0, T0 + n, PAGE, CHROME_EN, "gzip")
        seen(cost, key, "miss", T0 + n + 302.0, T0 + n + 2.0, PAGE, FIREFOX_DE, "gzip")
        seen(cost, key, "hit", T0 + n + 300.0, T0 + n + 3.0, PAGE, CHROME_EN, "gzip")
    assert cost.cost == 0.0
    assert cost.scale == math.inf
    # Safari's Accept-Encoding differs but accepts the gzip entry: one entry,
    # so its miss while that entry should be fresh is an eviction...
    seen(cost, "/page/0", "miss", T0 + 1000.0, T0 + 200.0, PAGE, SAFARI_EN, "gzip")
    assert cost.cost > 0.0
    assert cost.scale == pytest.approx(197.0, rel=0.01)
    # ...unless the cache matches Accept-Encoding exactly: another entry.
    exact = DisplacementCost(match_coding=False)
    seen(exact, "/page/0", "miss", T0 + 300.0, T0, PAGE, CHROME_EN, "gzip")
    seen(exact, "/page/0", "miss", T0 + 310.0, T0 + 10.0, PAGE, SAFARI_EN, "gzip")
    assert exact.cost == 0.0
    # A warm fill's variant counts as a request's does.
    warm = DisplacementCost()
    warm.filled("/page/0", T0 + 300.0, T0, PAGE, CHROME_EN, "gzip")
    seen(warm, "/page/0", "miss", T0 + 320.0, T0 + 20.0, PAGE, FIREFOX_DE, "gzip")
    assert warm.cost == 0.0
    seen(warm, "/page/0", "miss", T0 + 340.0, T0 + 40.0, PAGE, FIREFOX_DE, "gzip")
    assert warm.cost > 0.0


def test_the_cost_is_bounded_in_memory() -> None:
    cost = DisplacementCost(max_keys=100)
    for n in range(10_000):
        seen(cost, f"/k{n}", "miss", T0 + n + 10, T0 + n)
        cost.filled(f"/w{n}", T0 + n + 10, T0 + n)
    assert len(cost._fresh) == 100


# -- configuration -----------------------------------------------------------------


def test_the_default_floor_is_the_same_everywhere() -> None:
    settings_default = load_settings(None, {}).strategies.reactive.min_precision
    assert settings_default == ReactiveConfig().min_precision == DEFAULT_MIN_PRECISION


@pytest.mark.parametrize("value", [-0.1, 1.5, "high"])
def test_a_bad_min_precision_names_its_key(value: object) -> None:
    with pytest.raises(ConfigError, match=r"strategies\.reactive\.min_precision"):
        load_settings(None, {"strategies": {"reactive": {"min_precision": value}}})


def test_a_new_class_waits_for_outcomes_before_warming_more() -> None:
    """Unused warms are known only when their entries expire: until a class
    has the evidence to be judged, it may have only so many awaiting it."""
    gate = PrecisionGate(0.3)
    allowed = sum(gate.allows("new") for _ in range(1000))
    assert allowed == PROBATION
    for _ in range(PROBATION // 2):
        gate.record("new", True)
    assert sum(gate.allows("new") for _ in range(1000)) == PROBATION // 2
    for _ in range(PROBATION):
        gate.record("new", True)  # enough evidence, all used: no limit now
    assert sum(gate.allows("new") for _ in range(1000)) == 1000
    # A warm that will never be judged frees its place.
    other = PrecisionGate(0.3)
    for _ in range(PROBATION):
        other.allows("c")
    assert not other.allows("c")
    other.forget("c")
    assert other.allows("c")


def test_the_configured_floor_reaches_both_strategies() -> None:
    settings = load_settings(None, {"strategies": {"reactive": {"min_precision": 0.25}}})
    config = warmer_config(settings)
    strategies = build_strategies(config, build_tracker(config))
    floors = {type(s).__name__: s.min_precision for s in strategies if hasattr(s, "gate")}
    assert floors == {"RefreshAhead": 0.25, "MissReactive": 0.25}
