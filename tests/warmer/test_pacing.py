"""Pacing: backoff with full jitter, AIMD concurrency, the CPU/memory guard."""

from __future__ import annotations

import itertools
import os
from fractions import Fraction

import psutil
import pytest
from hypothesis import given
from hypothesis import strategies as st

from warmer.pacing import AdaptiveConcurrency, ResourceGuard, backoff_delay

# ------------------------------------------------------------------- backoff


@pytest.mark.parametrize(
    ("attempt", "rand", "expected"),
    [
        (1, 0.0, 0.0),
        (1, 0.5, 0.25),  # ceiling 0.5
        (2, 0.5, 0.5),  # ceiling 1.0
        (3, 0.5, 1.0),  # ceiling 2.0
        (4, 0.25, 1.0),  # ceiling 4.0
        (7, 0.5, 15.0),  # ceiling 30 (capped from 32)
        (50, 0.5, 15.0),
        (5000, 0.5, 15.0),  # 2**4999 does not fit a float: still the cap
    ],
)
def test_backoff_table(attempt: int, rand: float, expected: float) -> None:
    assert backoff_delay(attempt, rand=lambda: rand) == pytest.approx(expected)


def test_backoff_custom_base_and_cap() -> None:
    assert backoff_delay(3, base=2.0, cap=5.0, rand=lambda: 0.5) == pytest.approx(2.5)
    assert backoff_delay(2, base=2.0, cap=5.0, rand=lambda: 0.5) == pytest.approx(2.0)


def test_backoff_jitter_spreads_delays_over_the_whole_range() -> None:
    draws = iter([0.0, 0.2, 0.4, 0.6, 0.8, 0.999])
    delays = [backoff_delay(3, rand=lambda: next(draws)) for _ in range(6)]
    assert delays == sorted(delays)
    assert delays[0] == 0.0
    assert delays[-1] == pytest.approx(1.998)


@pytest.mark.parametrize("attempt", [0, -1])
def test_backoff_needs_an_attempt_from_one(attempt: int) -> None:
    with pytest.raises(ValueError, match="attempt"):
        backoff_delay(attempt, rand=lambda: 0.5)


@given(
    attempt=st.integers(1, 10_000),
    base=st.floats(0, 100, allow_nan=False),
    cap=st.floats(0, 3600, allow_nan=False),
    r=st.floats(0, 1, exclude_max=True),
)
def test_backoff_bounds(attempt: int, base: float, cap: float, r: float) -> None:
    delay = backoff_delay(attempt, base=base, cap=cap, rand=lambda: r)
    ceiling = float(min(Fraction(cap), Fraction(base) * 2 ** (attempt - 1)))
    assert 0.0 <= delay <= cap
    assert delay <= ceiling
    assert delay == pytest.approx(r * ceiling)


@given(attempt=st.integers(1, 60), r=st.floats(0, 1, exclude_max=True))
def test_backoff_ceiling_grows_with_attempts(attempt: int, r: float) -> None:
    assert backoff_delay(attempt, rand=lambda: r) <= backoff_delay(attempt + 1, rand=lambda: r)


# -------------------------------------------------------- adaptive concurrency


def adaptive(max_limit: int = 16, min_limit: int = 1, window: int = 10) -> AdaptiveConcurrency:
    return AdaptiveConcurrency(
        max_limit, min_limit, latency_target=1.0, error_rate_limit=0.2, window=window
    )


def feed(a: AdaptiveConcurrency, n: int, latency: float, ok: bool = True, t: float = 0.0) -> None:
    for i in range(n):
        a.record(latency, ok, t + i)


def test_starts_at_max_and_stays_there_while_healthy() -> None:
    a = adaptive()
    assert a.limit == 16
    feed(a, 100, 0.2)
    assert a.limit == 16
    assert a.state() == {
        "limit": 16,
        "p50_latency": 0.2,
        "error_rate": 0.0,
        "decreases": 0,
        "increases": 0,
    }


def test_no_figures_before_any_outcome() -> None:
    assert adaptive().state() == {
        "limit": 16,
        "p50_latency": None,
        "error_rate": None,
        "decreases": 0,
        "increases": 0,
    }


def test_slow_origin_halves_once_per_window_of_new_samples() -> None:
    a = adaptive(window=10)
    feed(a, 10, 0.2)
    # The median crosses the target once more than half the window is slow.
    feed(a, 5, 3.0)
    assert a.limit == 16
    feed(a, 1, 3.0)
    assert a.limit == 8
    # A burst of slow samples does not keep halving at every sample...
    feed(a, 9, 3.0)
    assert a.limit == 8
    # ...only each full window of new ones does.
    feed(a, 1, 3.0)
    assert a.limit == 4
    feed(a, 30, 3.0)
    assert a.limit == 1
    assert a.state()["decreases"] == 4
    assert a.last_change_at is not None


def test_never_below_min() -> None:
    a = adaptive(max_limit=10, min_limit=3)
    feed(a, 200, 5.0, ok=False)
    assert a.limit == 3
    assert a.state()["decreases"] == 2  # 10 -> 5 -> 3, then no further change counted


def test_errors_lower_the_limit() -> None:
    a = adaptive(window=10)
    feed(a, 10, 0.1)
    # 2 errors in 10 is the limit (0.2), not over it.
    feed(a, 2, 0.1, ok=False)
    assert a.limit == 16
    feed(a, 1, 0.1, ok=False)
    assert a.limit == 8
    assert a.state()["error_rate"] == pytest.approx(0.3)


def test_recovers_additively_back_to_max() -> None:
    a = adaptive(max_limit=8, window=10)
    feed(a, 40, 4.0)
    assert a.limit == 1
    decreases = a.state()["decreases"]
    limits = []
    for i in range(200):
        a.record(0.1, True, 1000.0 + i)
        limits.append(a.limit)
    # The window turns healthy once half of it is fast (the 5th fast sample);
    # it must then stay healthy for a full window before each +1.
    assert limits[:13] == [1] * 13
    assert limits[13:23] == [2] * 10
    assert limits[23] == 3
    assert a.limit == 8
    assert max(limits) == 8
    assert all(b - c in (0, 1) for c, b in itertools.pairwise(limits))
    assert a.state()["increases"] == 7
    assert a.state()["decreases"] == decreases


def test_no_decision_before_a_full_window() -> None:
    a = adaptive(window=10)
    feed(a, 9, 10.0, ok=False)
    assert a.limit == 16
    feed(a, 1, 10.0, ok=False)
    assert a.limit == 8


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_limit": 0},
        {"max_limit": 4, "min_limit": 5},
        {"max_limit": 4, "min_limit": 0},
        {"max_limit": 4, "window": 0},
        {"max_limit": 4, "latency_target": 0.0},
        {"max_limit": 4, "error_rate_limit": 1.5},
    ],
)
def test_adaptive_rejects_bad_settings(kwargs: dict[str, float]) -> None:
    settings: dict[str, float] = {"latency_target": 1.0, "error_rate_limit": 0.2}
    settings.update(kwargs)
    with pytest.raises(ValueError):
        AdaptiveConcurrency(**settings)  # type: ignore[arg-type]


@given(
    max_limit=st.integers(1, 64),
    min_limit=st.integers(1, 64),
    window=st.integers(1, 12),
    outcomes=st.lists(st.tuples(st.floats(0, 5), st.booleans()), max_size=300),
)
def test_limit_stays_within_bounds_and_moves_by_aimd_steps(
    max_limit: int,
    min_limit: int,
    window: int,
    outcomes: list[tuple[float, bool]],
) -> None:
    min_limit = min(min_limit, max_limit)
    a = adaptive(max_limit=max_limit, min_limit=min_limit, window=window)
    since_change = 0
    for t, (latency, ok) in enumerate(outcomes):
        before = a.limit
        a.record(latency, ok, float(t))
        after = a.limit
        since_change += 1
        assert min_limit <= after <= max_limit
        if after != before:
            # At most one change per window of new samples.
            assert since_change >= window
            since_change = 0
            assert after in (before + 1, max(min_limit, before // 2))
    state = a.state()
    assert state["limit"] == a.limit
    if outcomes:
        assert 0.0 <= state["error_rate"] <= 1.0


# -------------------------------------------------------------- resource guard


def test_guard_without_limits_never_pauses() -> None:
    for guard in (ResourceGuard(None, None), ResourceGuard(0.0, 0)):
        assert not guard.enabled
        assert not guard.should_pause(10_000.0, 10**15)
        assert not guard.paused


def test_guard_pauses_over_the_cpu_limit_with_hysteresis() -> None:
    g = ResourceGuard(max_cpu_percent=80.0, max_memory_bytes=None)
    assert not g.should_pause(80.0, 10**12)  # at the limit is not over it
    assert g.should_pause(80.1, 0)
    assert g.paused
    # Still paused between 90 % of the limit (72) and the limit.
    assert g.should_pause(75.0, 0)
    assert g.should_pause(72.0, 0)
    assert not g.should_pause(71.9, 0)
    assert not g.paused
    # Running again: back in the band does not pause.
    assert not g.should_pause(79.0, 0)


def test_guard_pauses_over_the_memory_limit_with_hysteresis() -> None:
    g = ResourceGuard(max_cpu_percent=None, max_memory_bytes=1000)
    assert not g.should_pause(500.0, 1000)
    assert g.should_pause(0.0, 1001)
    assert g.should_pause(0.0, 900)
    assert not g.should_pause(0.0, 899)


def test_guard_with_both_limits_resumes_only_below_both() -> None:
    g = ResourceGuard(max_cpu_percent=50.0, max_memory_bytes=1000)
    assert g.should_pause(10.0, 2000)  # memory alone pauses
    assert g.should_pause(10.0, 800) is False
    assert g.should_pause(60.0, 100)  # cpu alone pauses
    # Memory is fine, cpu is in its band: stays paused.
    assert g.should_pause(46.0, 100)
    assert g.should_pause(10.0, 950)  # now memory is in its band
    assert not g.should_pause(44.0, 899)


def test_guard_rejects_negative_limits() -> None:
    with pytest.raises(ValueError, match="max_cpu_percent"):
        ResourceGuard(-1.0, None)
    with pytest.raises(ValueError, match="max_memory_bytes"):
        ResourceGuard(None, -1)


@given(
    cpu_limit=st.one_of(st.none(), st.floats(1, 800)),
    mem_limit=st.one_of(st.none(), st.integers(1, 10**12)),
    samples=st.lists(st.tuples(st.floats(0, 1000), st.integers(0, 2 * 10**12)), max_size=50),
)
def test_guard_decision_follows_the_rule(
    cpu_limit: float | None, mem_limit: int | None, samples: list[tuple[float, int]]
) -> None:
    g = ResourceGuard(cpu_limit, mem_limit)
    paused = False
    for cpu, rss in samples:
        over = (cpu_limit is not None and cpu > cpu_limit) or (
            mem_limit is not None and rss > mem_limit
        )
        below_resume = (cpu_limit is None or cpu < 0.9 * cpu_limit) and (
            mem_limit is None or rss < 0.9 * mem_limit
        )
        paused = not below_resume if paused else over
        assert g.should_pause(cpu, rss) == paused == g.paused


def test_sample_reads_this_process() -> None:
    g = ResourceGuard(max_cpu_percent=90.0, max_memory_bytes=None)
    cpu, rss = g.sample()
    assert cpu == 0.0  # psutil's first reading: nothing to compare with yet
    sum(i * i for i in range(200_000))  # spend some CPU between the samples
    cpu, rss = g.sample()
    assert isinstance(cpu, float)
    assert 0.0 <= cpu <= 100.0 * (psutil.cpu_count() or 1) + 1
    assert isinstance(rss, int)
    # Within a factor of the OS's own figure for this process (it moves a little).
    expected = psutil.Process(os.getpid()).memory_info().rss
    assert expected / 2 < rss < expected * 2
    assert rss > 1 << 20
    assert not g.paused  # sampling does not decide
