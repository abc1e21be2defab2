"""Cron arithmetic on a virtual clock: no event loop, no waiting."""

from __future__ import annotations

import itertools
import time
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from warmer.cron import Cron, CronError


def ts(text: str) -> float:
    """Epoch seconds of an ISO datetime; naive means UTC."""
    dt = datetime.fromisoformat(text)
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")


# 2024-01-01 is a Monday.
NEXT_AFTER = [
    # expr, now, next firing (UTC)
    ("0 * * * *", "2024-01-01 10:00:00", "2024-01-01 11:00:00"),  # strictly after
    ("0 * * * *", "2024-01-01 10:59:59.900", "2024-01-01 11:00:00"),
    ("0 * * * *", "2024-01-01 23:30:00", "2024-01-02 00:00:00"),
    ("*/15 * * * *", "2024-01-01 10:00:00", "2024-01-01 10:15:00"),
    ("*/15 * * * *", "2024-01-01 10:14:59", "2024-01-01 10:15:00"),
    ("*/15 * * * *", "2024-01-01 10:45:00", "2024-01-01 11:00:00"),
    ("30 3 * * *", "2024-01-01 03:29:00", "2024-01-01 03:30:00"),
    ("30 3 * * *", "2024-01-01 03:30:00", "2024-01-02 03:30:00"),
    ("30 3 * * *", "2024-12-31 12:00:00", "2025-01-01 03:30:00"),
    ("0 9 * * 1-5", "2024-01-05 09:00:00", "2024-01-08 09:00:00"),  # Friday -> Monday
    ("0 9 * * MON-FRI", "2024-01-06 12:00:00", "2024-01-08 09:00:00"),  # Saturday
    ("0 9 * * 1-5", "2024-01-02 08:00:00", "2024-01-02 09:00:00"),
    ("0 0 29 2 *", "2024-03-01 00:00:00", "2028-02-29 00:00:00"),  # leap days only
    ("@hourly", "2024-01-01 10:00:00", "2024-01-01 11:00:00"),
    ("@daily", "2024-01-01 10:00:00", "2024-01-02 00:00:00"),
]


@pytest.mark.parametrize(("expr", "now", "expected"), NEXT_AFTER)
def test_next_after(expr: str, now: str, expected: str) -> None:
    assert iso(Cron.parse(expr).next_after(ts(now))) == expected


FIRINGS = [
    # expr, start, end, firings in (start, end]
    ("0 * * * *", "2024-01-01 10:00", "2024-01-01 13:00", ["11:00", "12:00", "13:00"]),
    ("*/15 * * * *", "2024-01-01 10:00", "2024-01-01 11:00", ["10:15", "10:30", "10:45", "11:00"]),
    ("30 3 * * *", "2024-01-01 00:00", "2024-01-03 00:00", ["03:30", "03:30"]),
    ("0 12 * * 1-5", "2024-01-05 00:00", "2024-01-09 00:00", ["12:00", "12:00"]),  # Fri, Mon
    ("0 * * * *", "2024-01-01 10:00", "2024-01-01 10:59", []),
]


@pytest.mark.parametrize(("expr", "start", "end", "expected"), FIRINGS)
def test_firings(expr: str, start: str, end: str, expected: list[str]) -> None:
    got = [iso(t)[11:16] for t in Cron.parse(expr).firings(ts(start), ts(end))]
    assert got == expected


def test_weekday_firings_skip_the_weekend() -> None:
    days = {
        datetime.fromtimestamp(t, UTC).strftime("%a")
        for t in Cron.parse("0 9 * * 1-5").firings(ts("2024-01-01"), ts("2024-01-15"))
    }
    assert days == {"Mon", "Tue", "Wed", "Thu", "Fri"}


def test_a_week_of_hourly_firings_in_milliseconds() -> None:
    cron = Cron.parse("0 * * * *")
    start = ts("2024-01-01 00:00:00")
    began = time.perf_counter()
    firings = list(cron.firings(start, start + 7 * 86400))
    elapsed = time.perf_counter() - began
    assert len(firings) == 168
    assert firings[0] == start + 3600 and firings[-1] == start + 7 * 86400
    assert all(b - a == 3600 for a, b in itertools.pairwise(firings))
    assert elapsed < 0.5  # generous for a noisy machine; it takes a few ms


@pytest.mark.parametrize(
    ("expr", "reason"),
    [
        ("61 * * * *", "Bad minute"),
        ("* 24 * * *", "Bad hour"),
        ("* * *", "expected 5 fields"),
        ("abc", "expected 5 fields"),
        ("a b c d e", "Bad minute"),
        ("0 0 * * * *", "expected 5 fields"),  # no seconds field
        ("", "expected 5 fields"),
        ("0 0 30 2 *", "Bad day-of-month"),  # never fires
        ("*/0 * * * *", "Bad minute"),
    ],
)
def test_bad_expressions_are_named(expr: str, reason: str) -> None:
    with pytest.raises(CronError) as info:
        Cron.parse(expr)
    assert f"invalid cron expression {expr!r}" in str(info.value)
    assert reason in str(info.value)


def test_cron_error_is_a_value_error() -> None:
    # pydantic validators turn ValueError into a field error naming the key.
    assert issubclass(CronError, ValueError)


def test_very_long_expressions_are_refused() -> None:
    with pytest.raises(CronError, match="longer than"):
        Cron.parse("0," * 200 + "0 * * * *")


def test_unknown_time_zone() -> None:
    with pytest.raises(CronError, match="unknown time zone 'Mars/Olympus'"):
        Cron.parse("0 * * * *", "Mars/Olympus")
    with pytest.raises(CronError, match="unknown time zone"):
        Cron.parse("0 * * * *", "../../etc/passwd")


def test_time_zone_shifts_firings() -> None:
    # 03:30 in New York (EST, UTC-5) in January is 08:30 UTC.
    cron = Cron.parse("30 3 * * *", "America/New_York")
    assert iso(cron.next_after(ts("2024-01-01 00:00"))) == "2024-01-01 08:30:00"


def test_daily_job_in_skipped_hour_runs_once_after_the_gap() -> None:
    # Europe/Berlin skips 02:00-03:00 on 2024-03-31; 02:30 runs at 03:00 CEST.
    cron = Cron.parse("30 2 * * *", "Europe/Berlin")
    got = [iso(t) for t in cron.firings(ts("2024-03-30 00:00"), ts("2024-04-01 12:00"))]
    assert got == ["2024-03-30 01:30:00", "2024-03-31 01:00:00", "2024-04-01 00:30:00"]


def test_daily_job_in_repeated_hour_runs_once() -> None:
    # Europe/Berlin repeats 02:00-03:00 on 2024-10-27.
    cron = Cron.parse("30 2 * * *", "Europe/Berlin")
    got = [iso(t) for t in cron.firings(ts("2024-10-26 12:00"), ts("2024-10-28 12:00"))]
    assert got == ["2024-10-27 00:30:00", "2024-10-28 01:30:00"]
    # Asked from inside the second 02:xx, the next firing is tomorrow, not the past.
    second_0210 = ts("2024-10-27 01:10")
    assert cron.next_after(second_0210) == ts("2024-10-28 01:30")


def test_equal_and_hashable() -> None:
    assert Cron.parse("0 * * * *") == Cron.parse("0 * * * *")
    assert len({Cron.parse("0 * * * *"), Cron.parse("0 * * * *"), Cron.parse("5 * * * *")}) == 2
    assert Cron.parse("0 * * * *") != Cron.parse("0 * * * *", "Europe/Berlin")
    assert Cron.parse("*/5 * * * *").expr == "*/5 * * * *"


def test_frozen() -> None:
    cron = Cron.parse("0 * * * *")
    with pytest.raises(AttributeError):
        cron.expr = "5 * * * *"  # type: ignore[misc]


EXPRS = st.sampled_from(
    ["0 * * * *", "*/15 * * * *", "30 3 * * *", "0 9 * * 1-5", "5,35 */2 * * *", "0 0 1 * *"]
)
ZONES = st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe"])
NOWS = st.floats(min_value=ts("2000-01-01"), max_value=ts("2040-01-01"))


@given(EXPRS, ZONES, NOWS)
def test_next_after_is_strictly_later_and_agrees_with_firings(
    expr: str, tz: str, now: float
) -> None:
    cron = Cron.parse(expr, tz)
    nxt = cron.next_after(now)
    assert nxt > now
    # Nothing fires in between, and firings() starts at the same instant.
    assert next(iter(cron.firings(now, nxt))) == nxt
    assert list(cron.firings(now, nxt - 0.001)) == []


@given(EXPRS, ZONES, NOWS)
def test_firings_strictly_increase(expr: str, tz: str, now: float) -> None:
    times = list(Cron.parse(expr, tz).firings(now, now + 3 * 86400))
    assert times == sorted(set(times))
    assert all(now < t <= now + 3 * 86400 for t in times)
