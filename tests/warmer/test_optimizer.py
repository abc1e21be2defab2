"""Schedule optimization on a virtual clock: peaks, proposed crons, drops, apply."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from warmer.cron import Cron
from warmer.optimizer import (
    Peak,
    PeakReport,
    Proposal,
    ProposedAction,
    SourceUsage,
    StaleProposalError,
    cron_before,
    find_peaks,
    lead_seconds,
    peak_starts,
    propose,
    usage_by_source,
)
from warmer.schedule import (
    HotSource,
    Schedule,
    ScheduledSource,
    SitemapSource,
    UrlsSource,
)

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z, a Thursday
DAY = 86_400.0
HOUR = 3_600.0
NOW = T0 + 14 * DAY  # two weeks of traffic, every hour of the week seen twice
MONDAY = 0  # hour of the week of Monday 00:00 UTC


def how_of(ts: float) -> int:
    """Hour of the week (Monday 00:00 UTC = 0) of epoch seconds."""
    dt = datetime.fromtimestamp(ts, UTC)
    return dt.weekday() * 24 + dt.hour


def profile(rate: Callable[[int], float], start: float = T0, end: float = NOW) -> list[int]:
    """What the tracker's hour_of_week() holds after ``rate(hour_of_week)``
    requests per hour from ``start`` to ``end``."""
    week = [0.0] * 168
    t = start
    while t < end:
        nxt = min(end, (math.floor(t / HOUR) + 1) * HOUR)
        week[how_of(t)] += rate(how_of(t)) * (nxt - t) / HOUR
        t = nxt
    return [round(c) for c in week]


def daily(peak_hours: set[int], base: float = 100, peak: float = 300) -> Callable[[int], float]:
    return lambda how: peak if how % 24 in peak_hours else base


def weekly(peak_hows: set[int], base: float = 100, peak: float = 400) -> Callable[[int], float]:
    return lambda how: peak if how in peak_hows else base


def flat(how: int) -> float:
    return 100.0


def sitemap(name: str = "sitemap", cron: str = "0 6 * * *", **kw: object) -> ScheduledSource:
    return ScheduledSource(name=name, schedule=cron, source=SitemapSource(type="sitemap"), **kw)


def hot(name: str = "hot", cron: str = "0 3 * * *", **kw: object) -> ScheduledSource:
    return ScheduledSource(name=name, schedule=cron, source=HotSource(type="hot"), **kw)


def run(
    schedule: Schedule,
    week: list[int],
    *,
    sizes: dict[str, int] | None = None,
    fill_rate: float = 2.0,
    usage: dict[str, SourceUsage] | None = None,
    observed_from: float | None = T0,
    now: float = NOW,
) -> Proposal:
    return propose(
        schedule,
        hour_of_week=week,
        source_sizes=sizes if sizes is not None else {"sitemap": 600},
        fill_rate=fill_rate,
        usage=usage or {},
        now=now,
        observed_from=observed_from,
    )


def action_of(proposal: Proposal, name: str) -> ProposedAction:
    (action,) = [a for a in proposal.actions if a.source == name]
    return action


def assert_fires_before_every_peak(
    cron_expr: str, report: PeakReport, lead: float, now: float = NOW, days: int = 8
) -> int:
    """Each peak start P in the coming ``days`` has a firing in [P - lead - 1 h, P - lead].

    Returns how many peaks were checked.
    """
    cron = Cron.parse(cron_expr)
    firings = list(cron.firings(now - 2 * DAY, now + (days + 1) * DAY))
    peaks = peak_starts(report, now, now + days * DAY)
    assert peaks
    for p in peaks:
        before = [f for f in firings if f <= p - lead]
        assert before, f"no firing before the peak at {p}"
        assert before[-1] >= p - lead - HOUR, (cron_expr, p, before[-1])
        assert cron.next_after(before[-1]) > p - lead
    return len(peaks)


# -- peaks -----------------------------------------------------------------------


def test_a_daily_peak_is_found_in_the_folded_day() -> None:
    report = find_peaks(profile(daily({18, 19, 20})), now=NOW, observed_from=T0)
    assert report.pattern == "daily"
    (peak,) = report.peaks
    assert (peak.start, peak.end) == (18, 21)
    assert peak.height == pytest.approx(2.4)  # 300 / mean 125
    assert report.day_agreement == pytest.approx(1.0)
    assert report.observed_hours == pytest.approx(336)


def test_a_daily_peak_survives_poisson_noise() -> None:
    rng = np.random.default_rng(7)
    week = [int(rng.poisson(c)) for c in profile(daily({18, 19, 20}))]
    report = find_peaks(week, now=NOW, observed_from=T0)
    assert report.pattern == "daily"
    assert [(p.start, p.end) for p in report.peaks] == [(18, 21)]


def test_a_peak_across_midnight_is_one_run() -> None:
    report = find_peaks(profile(daily({23, 0})), now=NOW, observed_from=T0)
    assert report.pattern == "daily"
    assert [(p.start, p.end) for p in report.peaks] == [(23, 1)]
    assert report.peaks[0].hours(24) == 2


def test_a_peak_only_on_mondays_is_weekly() -> None:
    report = find_peaks(profile(weekly({MONDAY + 9, MONDAY + 10})), now=NOW, observed_from=T0)
    assert report.pattern == "weekly"
    assert [(p.start, p.end) for p in report.peaks] == [(9, 11)]
    assert report.day_agreement is not None
    assert report.day_agreement < 0.5


def test_a_weekly_peak_across_sunday_night_is_one_run() -> None:
    report = find_peaks(profile(weekly({167, 0, 1})), now=NOW, observed_from=T0)
    assert report.pattern == "weekly"
    assert [(p.start, p.end) for p in report.peaks] == [(167, 2)]


def test_flat_traffic_has_no_pattern() -> None:
    report = find_peaks(profile(flat), now=NOW, observed_from=T0)
    assert report.pattern == "none"
    assert report.peaks == ()


def test_noisy_flat_traffic_has_no_pattern() -> None:
    rng = np.random.default_rng(3)
    week = [int(rng.poisson(c)) for c in profile(flat)]
    report = find_peaks(week, now=NOW, observed_from=T0)
    assert report.pattern == "none"


def test_sparse_traffic_noise_is_not_a_peak() -> None:
    rng = np.random.default_rng(11)
    week = [int(rng.poisson(c)) for c in profile(lambda how: 2.0)]
    report = find_peaks(week, now=NOW, observed_from=T0)
    assert report.pattern == "none"


def test_a_gentle_daily_curve_is_daily_without_peaks() -> None:
    # ±10 % around the mean: the days agree but no hour is 1.25× the mean.
    week = profile(lambda how: 1000 + 100 * math.sin(2 * math.pi * (how % 24) / 24))
    report = find_peaks(week, now=NOW, observed_from=T0)
    assert report.pattern == "daily"
    assert report.peaks == ()


def test_a_smooth_daily_curve_has_its_crest_as_the_peak() -> None:
    # A sinusoid never exceeds mean + √2·std: k = 1 still finds its crest.
    week = profile(lambda how: 1000 + 900 * math.cos(2 * math.pi * ((how % 24) - 15) / 24))
    report = find_peaks(week, now=NOW, observed_from=T0)
    assert report.pattern == "daily"
    (peak,) = report.peaks
    assert peak.start <= 15 < peak.start + peak.hours(24)


def test_no_traffic_is_insufficient_data() -> None:
    report = find_peaks([0] * 168, now=NOW, observed_from=T0)
    assert report.pattern == "insufficient_data"


def test_less_than_two_complete_days_is_insufficient_data() -> None:
    start = NOW - 30 * HOUR
    report = find_peaks(profile(daily({18, 19}), start), now=NOW, observed_from=start)
    assert report.pattern == "insufficient_data"
    assert report.observed_hours == pytest.approx(30)
    assert "complete UTC days" in report.detail


def test_two_and_a_half_days_starting_mid_day_are_enough_for_daily() -> None:
    start = NOW - 60.5 * HOUR
    report = find_peaks(profile(daily({18, 19}), start), now=NOW, observed_from=start)
    assert report.pattern == "daily"
    assert [(p.start, p.end) for p in report.peaks] == [(18, 20)]


def test_days_that_disagree_need_a_week_before_weekly() -> None:
    start = NOW - 4 * DAY  # Sunday to Thursday: Monday's peak is seen once
    week = profile(weekly({MONDAY + 9}), start)
    report = find_peaks(week, now=NOW, observed_from=start)
    assert report.pattern == "insufficient_data"
    assert "weekly pattern needs 168 h" in report.detail


def test_the_observed_span_is_inferred_from_the_traffic() -> None:
    short = profile(daily({18, 19}), NOW - 30 * HOUR)
    assert find_peaks(short, now=NOW).pattern == "insufficient_data"
    assert find_peaks(short, now=NOW).observed_hours == pytest.approx(30)
    full = profile(daily({18, 19}))
    assert find_peaks(full, now=NOW).pattern == "daily"


def test_a_profile_must_have_168_hours() -> None:
    with pytest.raises(ValueError, match="168"):
        find_peaks([1] * 24, now=NOW)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 23), st.integers(1, 4))
def test_a_planted_daily_run_is_found_exactly(start: int, length: int) -> None:
    hours = {(start + i) % 24 for i in range(length)}
    report = find_peaks(profile(daily(hours, peak=400)), now=NOW, observed_from=T0)
    assert report.pattern == "daily"
    assert [(p.start, p.end) for p in report.peaks] == [(start, (start + length) % 24)]


# -- leads and crons -------------------------------------------------------------


def test_lead_is_fill_time_plus_a_margin_in_whole_minutes() -> None:
    assert lead_seconds(600, 2.0) == 600  # 300 s fill + the 5 min floor
    assert lead_seconds(36_000, 2.0) == 19_800  # 5 h fill + 10 %
    assert lead_seconds(1, 1000.0) == 360  # 301 ms rounded up to 6 min


def test_cron_before_daily_peaks_shares_the_minute() -> None:
    peaks = [Peak(8, 10, 2.0), Peak(18, 20, 2.0)]
    assert cron_before(peaks, 24, 20 * 60) == "40 7,17 * * *"


def test_cron_before_a_midnight_peak_fires_the_evening_before() -> None:
    assert cron_before([Peak(0, 1, 2.0)], 24, 600) == "50 23 * * *"


def test_cron_before_a_monday_midnight_peak_fires_on_sunday() -> None:
    assert cron_before([Peak(MONDAY, 1, 2.0)], 168, 600) == "50 23 * * 0"


def test_cron_before_the_same_hour_every_day_uses_every_day() -> None:
    peaks = [Peak(d * 24 + 9, d * 24 + 10, 2.0) for d in range(7)]
    assert cron_before(peaks, 168, 3600) == "0 8 * * *"


@settings(max_examples=200, deadline=None)
@given(
    st.sets(st.integers(0, 167), min_size=1, max_size=5),
    st.integers(0, 6 * 60),
    st.sampled_from([24, 168]),
)
def test_cron_before_always_fires_the_lead_before_each_peak(
    starts: set[int], lead_minutes: int, period: int
) -> None:
    peaks = tuple(Peak(s % period, (s + 1) % period, 2.0) for s in sorted(starts))
    peaks = tuple({p.start: p for p in peaks}.values())
    report = PeakReport("daily" if period == 24 else "weekly", peaks, 400.0, None, "")
    expr = cron_before(peaks, period, lead_minutes * 60.0)
    assert_fires_before_every_peak(expr, report, lead_minutes * 60.0)


# -- propose ---------------------------------------------------------------------


def test_a_sitemap_is_moved_before_a_daily_evening_peak() -> None:
    schedule = Schedule(sources=[sitemap(), hot()])
    proposal = run(schedule, profile(daily({18, 19, 20})))
    assert proposal.pattern == "daily"
    action = action_of(proposal, "sitemap")
    assert action.action == "move"
    assert action.current_cron == "0 6 * * *"
    assert action.proposed_cron == "50 17 * * *"
    assert action.figures["fill_seconds"] == 300
    assert action.figures["lead_seconds"] == 600
    assert action.figures["next_peak_at"] == NOW + 18 * HOUR
    assert "18:00" in action.reason
    # Every day of the coming week: after 16:55 and at or before 17:55.
    cron = Cron.parse(action.proposed_cron)
    day0 = NOW
    firings = list(cron.firings(day0, day0 + 7 * DAY))
    assert len(firings) == 7
    for i, f in enumerate(firings):
        peak = day0 + i * DAY + 18 * HOUR
        assert peak - 300 - HOUR < f <= peak - 300
    assert assert_fires_before_every_peak(action.proposed_cron, proposal.report, 600) == 8


def test_a_peak_at_half_past_midnight_is_warmed_the_day_before() -> None:
    # The profile is hourly: a peak at 00:30 is a peak of the 00:00 hour.
    schedule = Schedule(sources=[sitemap(), hot()])
    proposal = run(schedule, profile(daily({0})))
    action = action_of(proposal, "sitemap")
    assert action.proposed_cron == "50 23 * * *"
    for f in Cron.parse("50 23 * * *").firings(NOW, NOW + 7 * DAY):
        assert datetime.fromtimestamp(f + 600, UTC).hour == 0  # the next day's 00:00
    assert_fires_before_every_peak(action.proposed_cron, proposal.report, 600)


def test_a_monday_peak_uses_the_day_of_week_field() -> None:
    schedule = Schedule(sources=[sitemap(), hot()])
    proposal = run(schedule, profile(weekly({MONDAY + 9, MONDAY + 10})))
    assert proposal.pattern == "weekly"
    action = action_of(proposal, "sitemap")
    assert action.proposed_cron == "50 8 * * 1"
    for f in Cron.parse(action.proposed_cron).firings(NOW, NOW + 21 * DAY):
        assert datetime.fromtimestamp(f, UTC).strftime("%a %H:%M") == "Mon 08:50"
    assert_fires_before_every_peak(action.proposed_cron, proposal.report, 600, days=21)


def test_weekly_peaks_at_different_hours_share_one_cron() -> None:
    proposal = run(Schedule(sources=[sitemap()]), profile(weekly({MONDAY + 9, 4 * 24 + 17})))
    action = action_of(proposal, "sitemap")
    assert action.proposed_cron == "50 8,16 * * 1,5"
    assert action.figures["peaks_per_week"] == 2
    assert action.figures["firings_per_week"] == 4  # Mon and Fri at both hours
    assert_fires_before_every_peak(action.proposed_cron, proposal.report, 600, days=21)


def test_a_monday_midnight_peak_is_warmed_on_sunday() -> None:
    schedule = Schedule(sources=[sitemap(), hot()])
    proposal = run(schedule, profile(weekly({MONDAY})))
    action = action_of(proposal, "sitemap")
    assert action.proposed_cron == "50 23 * * 0"
    assert_fires_before_every_peak(action.proposed_cron, proposal.report, 600, days=21)


def test_a_cron_already_in_the_window_is_kept() -> None:
    week = profile(daily({18, 19, 20}))
    for current in ("0 17 * * *", "50 16 * * *", "50 17 * * *", "*/15 * * * *"):
        proposal = run(Schedule(sources=[sitemap(cron=current), hot()]), week)
        action = action_of(proposal, "sitemap")
        assert (action.action, action.proposed_cron) == ("keep", current), current
    for current in ("55 17 * * *", "45 16 * * *", "50 17 * * 1-5"):
        proposal = run(Schedule(sources=[sitemap(cron=current), hot()]), week)
        assert action_of(proposal, "sitemap").action == "move", current


def test_a_source_on_the_default_cron_is_moved_to_its_own() -> None:
    schedule = Schedule(schedule="0 6 * * *", sources=[sitemap(cron=""), hot()])
    proposal = run(schedule, profile(daily({18, 19, 20})))
    action = action_of(proposal, "sitemap")
    assert (action.action, action.current_cron) == ("move", "0 6 * * *")
    applied = proposal.apply_to(schedule)
    assert applied.schedule == "0 6 * * *"
    assert applied.sources[0].schedule == "50 17 * * *"


def test_sizes_come_from_the_caller_the_list_or_top_n() -> None:
    urls = ScheduledSource(
        name="pages", schedule="0 6 * * *", source=UrlsSource(type="urls", paths=["/a"] * 1200)
    )
    schedule = Schedule(sources=[sitemap(), urls, hot(cron="0 6 * * *")])
    proposal = run(schedule, profile(daily({18})), sizes={}, fill_rate=1.0)
    figures = {a.source: a.figures for a in proposal.actions}
    assert (figures["pages"]["paths"], figures["pages"]["size_known"]) == (1200, True)
    assert (figures["hot"]["paths"], figures["hot"]["size_known"]) == (100, True)
    assert (figures["sitemap"]["paths"], figures["sitemap"]["size_known"]) == (100, False)
    assert "size unknown" in action_of(proposal, "sitemap").reason
    # 1200 s fill + the 5 min margin floor = 25 min before 18:00.
    assert action_of(proposal, "pages").proposed_cron == "35 17 * * *"


def test_an_unused_source_is_dropped() -> None:
    schedule = Schedule(sources=[sitemap(), hot()])
    usage = {"sitemap": SourceUsage("sitemap", warmed=230, used=10, unused=190)}
    proposal = run(schedule, profile(daily({18, 19, 20})), usage=usage)
    action = action_of(proposal, "sitemap")
    assert action.action == "drop"
    assert action.proposed_cron is None
    assert action.figures["precision"] == 0.05
    assert action.figures["resolved"] == 200
    assert "0.05" in action.reason
    assert usage["sitemap"].label == "scheduled:sitemap"


@dataclass(frozen=True)
class Figures:
    stored: int
    used: int
    unused: int


def test_usage_is_read_from_the_ledgers_scheduled_labels() -> None:
    by_label = {
        "scheduled:sitemap": Figures(230, 10, 190),
        "reactive": Figures(5, 5, 0),
        "scheduled:": Figures(1, 1, 0),
    }
    assert usage_by_source(by_label) == {"sitemap": SourceUsage("sitemap", 230, 10, 190)}


def test_an_unused_source_is_dropped_without_any_pattern() -> None:
    usage = {"sitemap": SourceUsage("sitemap", warmed=200, used=10, unused=190)}
    proposal = run(Schedule(sources=[sitemap(), hot()]), profile(flat), usage=usage)
    assert action_of(proposal, "sitemap").action == "drop"


def test_few_samples_do_not_drop_a_source() -> None:
    usage = {"sitemap": SourceUsage("sitemap", warmed=40, used=1, unused=20)}
    proposal = run(Schedule(sources=[sitemap(), hot()]), profile(daily({18})), usage=usage)
    action = action_of(proposal, "sitemap")
    assert action.action == "move"
    assert action.figures["resolved"] == 21


def test_a_used_source_is_not_dropped() -> None:
    usage = {"sitemap": SourceUsage("sitemap", warmed=500, used=300, unused=100)}
    proposal = run(Schedule(sources=[sitemap(), hot()]), profile(flat), usage=usage)
    action = action_of(proposal, "sitemap")
    assert action.action == "keep"
    assert action.figures["precision"] == 0.75


def test_flat_traffic_keeps_every_cron() -> None:
    schedule = Schedule(sources=[sitemap()])
    proposal = run(schedule, profile(flat))
    assert proposal.pattern == "none"
    (action,) = proposal.actions  # no hot source added without peaks
    assert action.action == "keep"
    assert action.proposed_cron == action.current_cron == "0 6 * * *"
    assert action.reason.startswith("no recurring peak detected yet")
    assert not proposal.changes
    assert proposal.apply_to(schedule) == schedule


def test_insufficient_data_keeps_every_cron_and_says_so() -> None:
    start = NOW - 20 * HOUR
    proposal = run(Schedule(sources=[sitemap()]), profile(daily({18}), start), observed_from=start)
    assert proposal.pattern == "insufficient_data"
    (action,) = proposal.actions
    assert action.action == "keep"
    assert action.reason.startswith("insufficient data")


def test_disabled_sources_are_left_alone() -> None:
    schedule = Schedule(sources=[sitemap(enabled=False), hot()])
    proposal = run(schedule, profile(daily({18})))
    assert [a.source for a in proposal.actions] == ["hot"]


def test_a_hot_source_is_added_when_none_is_enabled() -> None:
    schedule = Schedule(sources=[sitemap(), hot(name="hot-before-peaks", enabled=False)])
    proposal = run(schedule, profile(daily({18, 19, 20})))
    add = action_of(proposal, "hot-before-peaks-2")
    assert add.action == "add"
    assert add.current_cron is None
    assert add.proposed_cron == "54 17 * * *"  # 100 paths at 2/s: 50 s + 5 min, 6 min
    assert add.new_source is not None
    assert add.new_source.source == HotSource(type="hot", top_n=100)
    assert_fires_before_every_peak(add.proposed_cron, proposal.report, 360)


def test_no_hot_source_is_added_with_one_enabled_or_just_dropped() -> None:
    week = profile(daily({18}))
    assert [a.action for a in run(Schedule(sources=[hot()]), week).actions] == ["move"]
    usage = {"hot": SourceUsage("hot", warmed=100, used=1, unused=99)}
    actions = run(Schedule(sources=[hot()]), week, usage=usage).actions
    assert [a.action for a in actions] == ["drop"]


def test_apply_moves_drops_adds_and_leaves_the_rest_alone() -> None:
    keep = ScheduledSource(
        name="home",
        schedule="0 17 * * *",
        priority="high",
        ttl=7200,
        source=UrlsSource(type="urls", paths=["/"]),
    )
    off = ScheduledSource(
        name="old",
        schedule="5 5 * * *",
        enabled=False,
        source=UrlsSource(type="urls", paths=["/old"]),
    )
    unused = ScheduledSource(
        name="unused", schedule="0 2 * * *", source=UrlsSource(type="urls", paths=["/u"])
    )
    schedule = Schedule(schedule="0 4 * * *", sources=[keep, sitemap(), off, unused])
    usage = {"unused": SourceUsage("unused", warmed=80, used=2, unused=78)}
    proposal = run(schedule, profile(daily({18, 19, 20})), usage=usage)
    assert {a.source: a.action for a in proposal.actions} == {
        "home": "keep",
        "sitemap": "move",
        "unused": "drop",
        "hot-before-peaks": "add",
    }
    applied = proposal.apply_to(schedule)
    assert Schedule.model_validate(applied.model_dump()) == applied
    assert applied.schedule == schedule.schedule
    assert applied.sources[0] == keep
    assert applied.sources[1].schedule == "50 17 * * *"
    assert applied.sources[1].source == schedule.sources[1].source
    assert applied.sources[2] == off
    assert applied.sources[3] == unused.model_copy(update={"enabled": False})
    assert applied.sources[4].name == "hot-before-peaks"
    assert applied.sources[4].schedule == "54 17 * * *"
    assert len(applied.sources) == 5


def test_apply_refuses_a_schedule_changed_since_and_changes_nothing() -> None:
    schedule = Schedule(sources=[sitemap(), hot()])
    proposal = run(schedule, profile(daily({18, 19, 20})))
    changed = Schedule(sources=[sitemap(cron="0 12 * * *"), hot()])
    with pytest.raises(StaleProposalError, match="sitemap"):
        proposal.apply_to(changed)
    with pytest.raises(StaleProposalError, match="sitemap"):
        proposal.apply_to(Schedule(sources=[hot()]))


def test_apply_renames_an_added_source_whose_name_was_taken_since() -> None:
    schedule = Schedule(sources=[sitemap()])
    proposal = run(schedule, profile(daily({18})))
    taken = Schedule(
        sources=[sitemap(), hot(name="hot-before-peaks", cron="0 0 1 1 *", enabled=False)]
    )
    applied = proposal.apply_to(taken)
    assert [s.name for s in applied.sources] == [
        "sitemap",
        "hot-before-peaks",
        "hot-before-peaks-2",
    ]


def test_to_json_shows_pattern_peaks_and_actions() -> None:
    usage = {"sitemap": SourceUsage("sitemap", warmed=300, used=200, unused=50)}
    proposal = run(Schedule(sources=[sitemap()]), profile(daily({18, 19, 20})), usage=usage)
    doc = orjson.loads(orjson.dumps(proposal.to_json()))
    assert doc["pattern"] == "daily"
    assert doc["timezone"] == "UTC"
    assert doc["computed_at"] == NOW
    assert doc["peaks"] == [
        {
            "start": 18,
            "end": 21,
            "hours": 3,
            "height": 2.4,
            "starts_at": "18:00",
            "ends_at": "21:00",
        }
    ]
    move, add = doc["actions"]
    assert move["action"] == "move"
    assert move["proposed_cron"] == "50 17 * * *"
    assert move["figures"]["precision"] == 0.8
    assert move["new_source"] is None
    assert add["action"] == "add"
    assert add["new_source"]["source"] == {"type": "hot", "top_n": 100}


def test_weekly_peaks_are_labelled_with_the_day() -> None:
    proposal = run(Schedule(sources=[sitemap()]), profile(weekly({2 * 24 + 9})))
    doc = orjson.loads(orjson.dumps(proposal.to_json()))
    assert [p["starts_at"] for p in doc["peaks"]] == ["Wed 09:00"]


def test_bad_arguments_are_refused() -> None:
    schedule = Schedule(sources=[sitemap()])
    with pytest.raises(ValueError, match="fill_rate"):
        run(schedule, profile(flat), fill_rate=0)
    with pytest.raises(ValueError, match="fill_rate"):
        run(schedule, profile(flat), fill_rate=math.inf)


# -- properties ------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 23), st.integers(1, 19_000))
def test_any_daily_peak_is_warmed_the_lead_before(peak_hour: int, paths: int) -> None:
    schedule = Schedule(sources=[sitemap()])
    proposal = run(
        schedule, profile(daily({peak_hour}, peak=400)), sizes={"sitemap": paths}, fill_rate=1.0
    )
    action = action_of(proposal, "sitemap")
    lead = action.figures["lead_seconds"]
    assert isinstance(lead, float)
    assert lead <= 6 * HOUR
    assert action.proposed_cron is not None
    if action.action == "move":
        assert Cron.parse(action.proposed_cron).next_after(NOW) == action.figures["next_firing_at"]
    assert_fires_before_every_peak(action.proposed_cron, proposal.report, lead)


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 167), st.integers(1, 19_000))
def test_any_weekly_peak_is_warmed_the_lead_before(peak_how: int, paths: int) -> None:
    schedule = Schedule(sources=[sitemap()])
    proposal = run(schedule, profile(weekly({peak_how})), sizes={"sitemap": paths}, fill_rate=1.0)
    assert proposal.pattern == "weekly"
    action = action_of(proposal, "sitemap")
    lead = action.figures["lead_seconds"]
    assert isinstance(lead, float)
    assert action.proposed_cron is not None
    assert_fires_before_every_peak(action.proposed_cron, proposal.report, lead, days=15)
