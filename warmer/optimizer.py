"""Schedule optimization: warm times proposed from the traffic's recurring peaks.

Two pure steps (DESIGN rule 2: ``now`` is an argument, nothing here reads the
clock, sleeps or does I/O):

1. :func:`find_peaks` reads the tracker's 168-hour profile
   (:meth:`~warmer.tracker.UsageTracker.hour_of_week`) and says whether the
   traffic repeats every day, every week, neither, or whether there is not
   enough of it to tell yet, and where its peaks are.
2. :func:`propose` turns that, the size of each scheduled source, the rate the
   warmer fills at and the effectiveness ledger's counts into a
   :class:`Proposal`: for every enabled source, keep its cron, move it so the
   fill ends before each peak, or drop (disable) it because what it warms is
   not used; plus, when peaks exist and nothing warms the hot keys, add a
   ``hot`` source.  :meth:`Proposal.apply_to` makes the new schedule;
   whether it is applied is the caller's configuration.

All times are UTC: the tracker's hour of the week is UTC (Monday 00:00 = 0),
and the cron expressions produced are meant for the UTC schedule clock.

Peaks are found to the hour (the profile's resolution), so a peak starting
at 18:30 is a peak of the 18:00 hour and warming is timed before 18:00.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, Protocol

import numpy as np
from numpy.typing import NDArray

from warmer.cron import Cron
from warmer.schedule import HotSource, Schedule, ScheduledSource, UrlsSource
from warmer.tracker import HOURS_PER_WEEK

Pattern = Literal["daily", "weekly", "none", "insufficient_data"]
Action = Literal["keep", "move", "drop", "add"]
Figure = int | float | str | bool | None

#: A peak hour's traffic exceeds mean + PEAK_K · std of the profile.  One
#: standard deviation, not two: a smooth daily curve (close to a sinusoid)
#: never rises above mean + √2 · std, so a larger k would find no peak in the
#: most common shape of web traffic.
PEAK_K: Final = 1.0
#: ... and is at least this many times the mean: the guard against small
#: wiggles in nearly flat traffic, where std is tiny and mean + k·std is
#: within noise of the mean.
MIN_PEAK_RATIO: Final = 1.25
#: Every complete day must correlate at least this well with the average of
#: the other days for the traffic to count as repeating daily.
DAILY_MIN_CORRELATION: Final = 0.5
#: Complete UTC days needed before a daily pattern is claimed: agreement
#: between days needs at least two of them (about 48 h of traffic).
MIN_COMPLETE_DAYS: Final = 2
#: Hours of traffic needed before a weekly pattern is claimed: every hour of
#: the week seen at least once.
MIN_WEEKLY_HOURS: Final = float(HOURS_PER_WEEK)
#: An hour of the week seen for less than this fraction of an hour in total
#: counts as not observed (its rate would be mostly noise).
MIN_BUCKET_COVERAGE: Final = 0.5
#: ... and its request count exceeds what the mean rate would give by this
#: many Poisson standard deviations: with little traffic, chance alone makes
#: some of 168 hours look high (4 σ keeps the chance of one false peak among
#: them small).
NOISE_Z: Final = 4.0

#: The lead before a peak is the fill time plus this fraction of it ...
SAFETY_MARGIN_FRACTION: Final = 0.10
#: ... but at least this many seconds (origin latency varies; runs start late).
MIN_SAFETY_MARGIN: Final = 300.0
#: A cron is good enough (``keep``) when it fires no earlier than this before
#: ``peak - lead``: warming much earlier spends TTL before the peak.
KEEP_TOLERANCE: Final = 3600.0
#: Name of the ``hot`` source an ``add`` action proposes (made unique).
HOT_SOURCE_NAME: Final = "hot-before-peaks"

_HOUR: Final = 3600.0
_DAY_HOURS: Final = 24
_DAYS: Final = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
# Hour of the week (Monday 00:00 UTC = 0) of the epoch: 1970-01-01 was a Thursday.
_EPOCH_HOUR_OF_WEEK: Final = 3 * 24


# --------------------------------------------------------------------- peaks


@dataclass(frozen=True, slots=True)
class Peak:
    """A maximal run of hours whose traffic is above the peak threshold.

    Hours are of the day (daily pattern, 0-23) or of the week (weekly pattern,
    0-167, Monday 00:00 UTC = 0), UTC.  A run may wrap around midnight or
    Sunday→Monday, so ``end`` can be smaller than ``start``.
    """

    start: int  # first hour of the run
    end: int  # the hour after the last one (modulo the period)
    height: float  # the run's highest hourly traffic / the profile's mean

    def hours(self, period: int) -> int:
        """How many hours the run lasts, in a profile of ``period`` hours."""
        return (self.end - self.start) % period or period


@dataclass(frozen=True, slots=True)
class PeakReport:
    """What :func:`find_peaks` found, with the figures behind it."""

    pattern: Pattern
    peaks: tuple[Peak, ...]
    observed_hours: float  # hours of traffic the profile covers
    # The least correlation of a complete day with the other days; None when
    # fewer than MIN_COMPLETE_DAYS days are complete.
    day_agreement: float | None
    detail: str  # why this pattern, in a sentence

    @property
    def period(self) -> int:
        """Hours in the cycle the peaks repeat over (24 or 168)."""
        return _DAY_HOURS if self.pattern == "daily" else HOURS_PER_WEEK


def find_peaks(
    hour_of_week: Sequence[float],
    *,
    now: float,
    observed_from: float | None = None,
    k: float = PEAK_K,
    min_ratio: float = MIN_PEAK_RATIO,
) -> PeakReport:
    """The recurring peaks of a 168-hour traffic profile (UTC, Monday 00:00 = 0).

    ``hour_of_week`` counts requests per hour of the week since
    ``observed_from`` (epoch seconds, when counting began: the tracker's
    start) up to ``now``.  Dividing by how often each hour of the week
    occurred in that span turns the counts into rates, so a partial first day
    or an extra week of some hours does not bend the shape.  Without
    ``observed_from`` the span is assumed to be the shortest one ending at
    ``now`` that holds all the traffic (at most a week), which can only
    under-state it.

    The pattern is ``daily`` when at least :data:`MIN_COMPLETE_DAYS` complete
    UTC days were observed and each correlates with the average of the others
    at least :data:`DAILY_MIN_CORRELATION`; the peaks are then found in the
    profile folded to 24 hours.  Otherwise, with :data:`MIN_WEEKLY_HOURS` of
    traffic, peaks are looked for in the 168 hours: ``weekly`` if any, else
    ``none``.  With less traffic than either needs: ``insufficient_data``.

    A peak is a maximal run of hours whose rate exceeds both
    ``mean + k·std`` and ``min_ratio·mean`` of the profile it is found in,
    and whose request count is more than chance (:data:`NOISE_Z`).
    """
    counts = np.asarray(hour_of_week, dtype=np.float64)
    if counts.shape != (HOURS_PER_WEEK,):
        raise ValueError(f"hour_of_week must hold {HOURS_PER_WEEK} counts, got {counts.size}")
    if not np.all(np.isfinite(counts)) or np.any(counts < 0):
        raise ValueError("hour_of_week counts must be finite and not negative")
    if counts.sum() <= 0:
        return PeakReport("insufficient_data", (), 0.0, None, "no traffic observed yet")

    start = _inferred_start(counts, now) if observed_from is None else observed_from
    observed_hours = max(0.0, (now - start) / _HOUR)
    coverage = _coverage(start, now)
    seen = coverage >= MIN_BUCKET_COVERAGE
    rates = np.full(HOURS_PER_WEEK, np.nan)
    rates[seen] = counts[seen] / coverage[seen]

    by_day = rates.reshape(7, _DAY_HOURS)
    complete = [d for d in range(7) if not np.isnan(by_day[d]).any()]
    agreement: float | None = None
    if len(complete) >= MIN_COMPLETE_DAYS:
        agreement = min(_loo_correlation(by_day, complete, d) for d in complete)
        if agreement >= DAILY_MIN_CORRELATION:
            # Folded by total counts over total coverage: each hour of the day
            # weighted by how long it was watched.
            c = np.where(seen, counts, 0.0).reshape(7, _DAY_HOURS).sum(axis=0)
            w = np.where(seen, coverage, 0.0).reshape(7, _DAY_HOURS).sum(axis=0)
            daily = c / w
            peaks = _peaks_in(daily, w, k, min_ratio)
            detail = (
                f"the {len(complete)} complete days agree (least correlation "
                f"{agreement:.2f} ≥ {DAILY_MIN_CORRELATION})"
            )
            if not peaks:
                detail += f", but no hour stands out ({_criteria(k, min_ratio)})"
            return PeakReport("daily", tuple(peaks), observed_hours, agreement, detail)

    if observed_hours < MIN_WEEKLY_HOURS:
        if agreement is None:
            why = (
                f"{observed_hours:.1f} h of traffic: a daily pattern needs "
                f"{MIN_COMPLETE_DAYS} complete UTC days"
            )
        else:
            why = (
                f"the days do not agree (least correlation {agreement:.2f} < "
                f"{DAILY_MIN_CORRELATION}) and a weekly pattern needs "
                f"{MIN_WEEKLY_HOURS:.0f} h of traffic, have {observed_hours:.1f} h"
            )
        return PeakReport("insufficient_data", (), observed_hours, agreement, why)

    # A week or more of traffic covers every hour of the week at least once.
    peaks = _peaks_in(np.where(seen, rates, 0.0), np.where(seen, coverage, 0.0), k, min_ratio)
    day_note = (
        "the days do not agree"
        if agreement is None
        else f"the days do not agree (least correlation {agreement:.2f})"
    )
    if peaks:
        return PeakReport(
            "weekly", tuple(peaks), observed_hours, agreement, f"{day_note}; peaks recur weekly"
        )
    return PeakReport(
        "none",
        (),
        observed_hours,
        agreement,
        f"{day_note} and no hour of the week stands out ({_criteria(k, min_ratio)})",
    )


def _criteria(k: float, min_ratio: float) -> str:
    return f"above mean + {k:g}·std, {min_ratio:g}× the mean and chance"


def _how(hour: int) -> int:
    """Hour of the week of an absolute hour since the epoch."""
    return (hour + _EPOCH_HOUR_OF_WEEK) % HOURS_PER_WEEK


def _coverage(start: float, end: float) -> NDArray[np.float64]:
    """Hours each hour of the week was observed in ``[start, end]`` (fractions at the ends)."""
    cover = np.zeros(HOURS_PER_WEEK)
    if end <= start:
        return cover
    first = math.floor(start / _HOUR)
    stop = math.ceil(end / _HOUR)  # exclusive
    full, rest = divmod(stop - first, HOURS_PER_WEEK)
    cover += full
    for hour in range(stop - rest, stop):
        cover[_how(hour)] += 1.0
    cover[_how(first)] -= (start - first * _HOUR) / _HOUR
    cover[_how(stop - 1)] -= (stop * _HOUR - end) / _HOUR
    return cover


def _inferred_start(counts: NDArray[np.float64], now: float) -> float:
    """The latest start of a span ending at ``now`` that holds all the traffic."""
    hour_now = math.floor(now / _HOUR)
    how_now = _how(hour_now)
    # The oldest hour of the week with traffic, counting back from now, is
    # where the span begins; if even the hour a week ago has traffic, the
    # span is a week or more and how much more is unknown: assume a week
    # (every hour of the week observed once).
    if counts[(how_now + 1) % HOURS_PER_WEEK] == 0:
        for back in range(HOURS_PER_WEEK - 2, -1, -1):
            if counts[(how_now - back) % HOURS_PER_WEEK] > 0:
                return (hour_now - back) * _HOUR
    return now - HOURS_PER_WEEK * _HOUR


def _loo_correlation(by_day: NDArray[np.float64], days: list[int], day: int) -> float:
    """Correlation of ``day`` with the mean of the other complete days (0 if undefined)."""
    others = np.mean(by_day[[d for d in days if d != day]], axis=0)
    mine = by_day[day]
    if np.std(mine) == 0 or np.std(others) == 0:
        # A flat day (or flat rest) has no shape to agree with.
        return 0.0
    return float(np.corrcoef(mine, others)[0, 1])


def _peaks_in(
    profile: NDArray[np.float64], hours: NDArray[np.float64], k: float, min_ratio: float
) -> list[Peak]:
    """Maximal runs above the threshold in a circular profile of rates, by start hour.

    ``hours``: how long each hour of the profile was observed, so its rate
    can be turned back into a request count for the noise test.
    """
    mean = float(profile.mean())
    std = float(profile.std())
    if mean <= 0 or std == 0:
        return []
    threshold = max(mean + k * std, min_ratio * mean)
    expected = mean * hours
    significant = (profile - mean) * hours > NOISE_Z * np.sqrt(expected)
    above = (profile > threshold) & significant
    if not above.any():
        return []
    n = len(profile)
    # Start scanning at an hour below the threshold so a run that wraps
    # around the end of the period is seen whole.
    origin = int(np.argmin(above))
    peaks: list[Peak] = []
    i = 0
    while i < n:
        if not above[(origin + i) % n]:
            i += 1
            continue
        j = i
        while j < n and above[(origin + j) % n]:
            j += 1
        run = [(origin + t) % n for t in range(i, j)]
        peaks.append(Peak(run[0], (run[-1] + 1) % n, float(profile[run].max()) / mean))
        i = j
    return sorted(peaks, key=lambda p: p.start)


# ------------------------------------------------------------------ crons


def lead_seconds(paths: int, fill_rate: float) -> float:
    """How long before a peak warming must start to have ``paths`` warm by then.

    The fill time (``paths / fill_rate``) plus a safety margin of
    :data:`SAFETY_MARGIN_FRACTION` of it, at least :data:`MIN_SAFETY_MARGIN`,
    rounded up to whole minutes (cron's resolution).
    """
    fill = paths / fill_rate
    return math.ceil((fill + max(SAFETY_MARGIN_FRACTION * fill, MIN_SAFETY_MARGIN)) / 60.0) * 60.0


def cron_before(peaks: Sequence[Peak], period: int, lead: float) -> str:
    """A cron expression (UTC) that fires ``lead`` seconds before each peak starts.

    ``period`` is 24 (peaks by hour of the day) or 168 (by hour of the week).
    One expression is a product of its minute, hour and day-of-week lists, so
    weekly peaks at different hours on different days also fire at the other
    listed hours of the listed days: never later than needed, sometimes
    more often.  ``lead`` is rounded up to whole minutes.
    """
    if period not in (_DAY_HOURS, HOURS_PER_WEEK):
        raise ValueError(f"period must be 24 or {HOURS_PER_WEEK} hours, got {period}")
    if not peaks:
        raise ValueError("no peak to warm before")
    lead_minutes = math.ceil(lead / 60.0)
    span = period * 60
    fires = sorted({(p.start * 60 - lead_minutes) % span for p in peaks})
    minutes = _cron_list({f % 60 for f in fires}, 60)
    hours = _cron_list({f // 60 % 24 for f in fires}, 24)
    if period == _DAY_HOURS:
        return f"{minutes} {hours} * * *"
    # Cron numbers days of the week from Sunday = 0; ours start on Monday.
    days = _cron_list({(f // 1440 + 1) % 7 for f in fires}, 7)
    return f"{minutes} {hours} * * {days}"


def _cron_list(values: set[int], size: int) -> str:
    return "*" if len(values) == size else ",".join(str(v) for v in sorted(values))


def peak_starts(report: PeakReport, start: float, end: float) -> list[float]:
    """Epoch seconds (UTC) of every peak start of ``report`` in ``(start, end]``."""
    if not report.peaks:
        return []
    period = report.period * _HOUR
    # Hour 0 of the cycle that holds ``start``: midnight, or Monday midnight.
    first_hour = math.floor(start / _HOUR)
    offset = first_hour % 24 if report.pattern == "daily" else _how(first_hour)
    cycle = (first_hour - offset) * _HOUR
    out: list[float] = []
    while cycle <= end:
        out.extend(at for p in report.peaks if start < (at := cycle + p.start * _HOUR) <= end)
        cycle += period
    return sorted(out)


def fires_in_time(cron: Cron, report: PeakReport, lead: float, now: float) -> bool:
    """Whether ``cron`` fires within ``[peak - lead - KEEP_TOLERANCE, peak - lead]``
    before every peak of the coming week (after ``now``)."""
    horizon = now + (HOURS_PER_WEEK + report.period) * _HOUR
    for peak in peak_starts(report, now, horizon):
        latest = peak - lead
        # Firings fall on whole minutes and the window's ends do too, so
        # asking from half a second before its start includes the start.
        if cron.next_after(latest - KEEP_TOLERANCE - 0.5) > latest:
            return False
    return True


# ---------------------------------------------------------------- proposal


@dataclass(frozen=True, slots=True)
class SourceUsage:
    """The effectiveness ledger's counts for one scheduled source.

    The ledger labels the runs of source ``name`` ``scheduled:<name>``
    (:func:`usage_by_source` reads them).  ``warmed`` counts entries stored
    by its warm fills; ``used`` those hit
    before they expired or were evicted; ``unused`` those that expired or
    were evicted unhit.  Entries still in the cache are in neither.
    """

    name: str
    warmed: int
    used: int
    unused: int

    @property
    def label(self) -> str:
        """The ledger's label for the source's runs."""
        return f"scheduled:{self.name}"

    @property
    def resolved(self) -> int:
        """Warmed entries whose fate is known."""
        return self.used + self.unused

    @property
    def precision(self) -> float | None:
        """Share of resolved warmed entries that were used (None: none resolved)."""
        return self.used / self.resolved if self.resolved else None


class LabelCounts(Protocol):
    """The part of the ledger's per-label figures a :class:`SourceUsage` is made from."""

    @property
    def stored(self) -> int: ...
    @property
    def used(self) -> int: ...
    @property
    def unused(self) -> int: ...


def usage_by_source(by_label: Mapping[str, LabelCounts]) -> dict[str, SourceUsage]:
    """:class:`SourceUsage` by source name, from the ledger's figures by label.

    Only ``scheduled:<name>`` labels are scheduled sources; the others
    (strategies) are left out.
    """
    out: dict[str, SourceUsage] = {}
    for label, figures in by_label.items():
        kind, _, name = label.partition(":")
        if kind == "scheduled" and name:
            out[name] = SourceUsage(name, figures.stored, figures.used, figures.unused)
    return out


@dataclass(frozen=True, slots=True)
class ProposedAction:
    """What the proposal does with one source, why, and the figures behind it."""

    source: str  # the source's name
    action: Action
    current_cron: str | None  # None for ``add``
    proposed_cron: str | None  # None for ``drop``; the current one for ``keep``
    reason: str
    figures: Mapping[str, Figure] = field(default_factory=dict)
    new_source: ScheduledSource | None = None  # the source an ``add`` appends

    def to_json(self) -> dict[str, object]:
        return {
            "source": self.source,
            "action": self.action,
            "current_cron": self.current_cron,
            "proposed_cron": self.proposed_cron,
            "reason": self.reason,
            "figures": dict(self.figures),
            "new_source": None
            if self.new_source is None
            else self.new_source.model_dump(mode="json"),
        }


class StaleProposalError(ValueError):
    """The schedule changed since the proposal was made; the message names the source."""


@dataclass(frozen=True, slots=True)
class Proposal:
    """A proposed schedule change: one action per enabled source, plus any ``add``."""

    actions: tuple[ProposedAction, ...]
    report: PeakReport
    computed_at: float  # the ``now`` it was computed for (epoch seconds)

    @property
    def pattern(self) -> Pattern:
        return self.report.pattern

    @property
    def peaks(self) -> tuple[Peak, ...]:
        return self.report.peaks

    @property
    def changes(self) -> bool:
        """Whether applying it changes anything."""
        return any(a.action != "keep" for a in self.actions)

    def apply_to(self, schedule: Schedule) -> Schedule:
        """The schedule with the actions applied, validated.

        Moved sources get their proposed cron, dropped ones ``enabled =
        false``, an added source is appended (renamed if its name was taken
        meanwhile); every other source is left as it is.  Raises
        :class:`StaleProposalError`, changing nothing, when a source the
        proposal moves or drops is gone, disabled or on another cron now.
        """
        sources = [s.model_dump() for s in schedule.sources]
        index = {s.name: i for i, s in enumerate(schedule.sources)}
        for action in self.actions:
            if action.action == "add":
                if action.new_source is None:
                    raise ValueError(f"add action for {action.source!r} has no source")
                new = action.new_source.model_dump()
                new["name"] = _unique_name(new["name"], {s["name"] for s in sources})
                sources.append(new)
                continue
            if action.action == "keep":
                continue
            i = index.get(action.source)
            current = None if i is None else schedule.sources[i]
            if (
                current is None
                or not current.enabled
                or schedule.cron_of(current) != action.current_cron
            ):
                raise StaleProposalError(
                    f"source {action.source!r} changed since the proposal; propose again"
                )
            assert i is not None
            if action.action == "move":
                sources[i]["schedule"] = action.proposed_cron
            else:
                sources[i]["enabled"] = False
        return Schedule.model_validate({"schedule": schedule.schedule, "sources": sources})

    def to_json(self) -> dict[str, object]:
        """The proposal as ``GET /cache/warming/schedule`` shows it under ``proposed``."""
        report = self.report
        period = report.period
        return {
            "computed_at": self.computed_at,
            "timezone": "UTC",
            "pattern": report.pattern,
            "detail": report.detail,
            "observed_hours": round(report.observed_hours, 2),
            "day_agreement": None
            if report.day_agreement is None
            else round(report.day_agreement, 3),
            "peaks": [
                {
                    "start": p.start,
                    "end": p.end,
                    "hours": p.hours(period),
                    "height": round(p.height, 3),
                    "starts_at": _label(p.start, report.pattern),
                    "ends_at": _label(p.end, report.pattern),
                }
                for p in report.peaks
            ],
            "actions": [a.to_json() for a in self.actions],
        }


def propose(
    schedule: Schedule,
    *,
    hour_of_week: Sequence[float],
    source_sizes: Mapping[str, int],
    fill_rate: float,
    usage: Mapping[str, SourceUsage],
    now: float,
    observed_from: float | None = None,
    min_precision: float = 0.2,
    min_samples: int = 50,
    hot_top_n: int = 100,
) -> Proposal:
    """A proposed change of ``schedule`` from the traffic profile and the ledger.

    ``hour_of_week``/``observed_from``/``now``: as :func:`find_peaks` takes
    them.  ``source_sizes``: paths each source produced last time, by source
    name; a ``urls`` source's size is its list's length and a ``hot`` one's
    its ``top_n``; any other source of unknown size is assumed to hold
    ``hot_top_n`` paths (said so in its figures).  ``fill_rate``: paths per
    second the warmer achieves (the caller passes the smaller of the origin
    rate limit and the measured throughput).  ``usage``: the ledger's counts
    by source name.

    Per enabled source (disabled ones are left alone): ``drop`` when at least
    ``min_samples`` of its warmed entries are resolved and fewer than
    ``min_precision`` of them were used; else, with peaks, ``move`` to a cron
    firing the lead (:func:`lead_seconds`) before each peak start, or
    ``keep`` if the current cron already fires within
    ``[peak - lead - 1 h, peak - lead]`` before every peak; without peaks,
    ``keep``.  With peaks and no enabled ``hot`` source left (none dropped
    either), ``add`` one warming the ``hot_top_n`` hottest keys.
    """
    if not (math.isfinite(fill_rate) and fill_rate > 0):
        raise ValueError(f"fill_rate must be a positive number of paths per second: {fill_rate}")
    if not 0.0 <= min_precision <= 1.0:
        raise ValueError(f"min_precision must be between 0 and 1, got {min_precision}")
    if min_samples < 1:
        raise ValueError(f"min_samples must be at least 1, got {min_samples}")
    if hot_top_n < 1:
        raise ValueError(f"hot_top_n must be at least 1, got {hot_top_n}")

    report = find_peaks(hour_of_week, now=now, observed_from=observed_from)
    actions: list[ProposedAction] = []
    hot_kept = False
    hot_dropped = False
    for source in schedule.sources:
        if not source.enabled:
            continue
        action = _source_action(
            schedule,
            source,
            report,
            source_sizes=source_sizes,
            fill_rate=fill_rate,
            usage=usage.get(source.name),
            now=now,
            min_precision=min_precision,
            min_samples=min_samples,
            hot_top_n=hot_top_n,
        )
        actions.append(action)
        if isinstance(source.source, HotSource):
            if action.action == "drop":
                hot_dropped = True
            else:
                hot_kept = True

    if report.peaks and not hot_kept and not hot_dropped:
        lead = lead_seconds(hot_top_n, fill_rate)
        cron = cron_before(report.peaks, report.period, lead)
        name = _unique_name(HOT_SOURCE_NAME, {s.name for s in schedule.sources})
        new = ScheduledSource(
            name=name, schedule=cron, source=HotSource(type="hot", top_n=hot_top_n)
        )
        actions.append(
            ProposedAction(
                source=name,
                action="add",
                current_cron=None,
                proposed_cron=cron,
                reason=(
                    f"no enabled hot source: warm the {hot_top_n} hottest keys "
                    f"{_duration(lead)} before each {report.pattern} peak (UTC)"
                ),
                figures=_timing_figures(hot_top_n, True, fill_rate, lead, cron, report, now),
                new_source=new,
            )
        )
    return Proposal(tuple(actions), report, now)


def _source_action(
    schedule: Schedule,
    source: ScheduledSource,
    report: PeakReport,
    *,
    source_sizes: Mapping[str, int],
    fill_rate: float,
    usage: SourceUsage | None,
    now: float,
    min_precision: float,
    min_samples: int,
    hot_top_n: int,
) -> ProposedAction:
    current = schedule.cron_of(source)
    ledger = _usage_figures(usage)
    precision = usage.precision if usage is not None else None
    if (
        usage is not None
        and usage.resolved >= min_samples
        and precision is not None
        and precision < min_precision
    ):
        return ProposedAction(
            source.name,
            "drop",
            current,
            None,
            (
                f"unused: {usage.used} of {usage.resolved} resolved warmed entries "
                f"were hit (precision {precision:.2f} < {min_precision:g})"
            ),
            {**ledger, "min_precision": min_precision, "min_samples": min_samples},
        )

    if not report.peaks:
        why = (
            f"insufficient data: {report.detail}"
            if report.pattern == "insufficient_data"
            else f"no recurring peak detected yet: {report.detail}"
        )
        return ProposedAction(source.name, "keep", current, current, why, ledger)

    size, known = _size_of(source, source_sizes, hot_top_n)
    lead = lead_seconds(size, fill_rate)
    proposed = cron_before(report.peaks, report.period, lead)
    figures = {**_timing_figures(size, known, fill_rate, lead, proposed, report, now), **ledger}
    notes = _notes(source, size, known, lead, report)
    if fires_in_time(Cron.parse(current), report, lead, now):
        return ProposedAction(
            source.name,
            "keep",
            current,
            current,
            (
                f"already fires {_duration(lead)} to {_duration(lead + KEEP_TOLERANCE)} "
                f"before every {report.pattern} peak (UTC){notes}"
            ),
            figures,
        )
    # The proposed cron fires exactly ``lead`` before every peak, so it is
    # never the current one here.
    return ProposedAction(
        source.name,
        "move",
        current,
        proposed,
        (
            f"fire {_duration(lead)} before each {report.pattern} peak (UTC) at "
            f"{_peak_list(report)}: {size} paths at {fill_rate:g}/s take "
            f"{_duration(size / fill_rate)}, plus a safety margin{notes}"
        ),
        figures,
    )


def _size_of(
    source: ScheduledSource, source_sizes: Mapping[str, int], hot_top_n: int
) -> tuple[int, bool]:
    """Paths a run of ``source`` warms, and whether that is known rather than assumed."""
    if source.name in source_sizes:
        return max(1, source_sizes[source.name]), True
    spec = source.source
    if isinstance(spec, UrlsSource):
        return len(spec.paths), True
    if isinstance(spec, HotSource):
        return spec.top_n, True
    return hot_top_n, False


def _notes(source: ScheduledSource, size: int, known: bool, lead: float, report: PeakReport) -> str:
    """Caveats worth a user's attention, appended to a reason."""
    notes = []
    if not known:
        notes.append(f"size unknown, assumed {size} paths")
    if source.ttl is not None and source.ttl < lead:
        # The first entries warmed would expire before the peak begins.
        notes.append(f"ttl {source.ttl:g} s is shorter than the lead")
    starts = sorted(p.start for p in report.peaks)
    gaps = [
        (b - a) % report.period or report.period
        for a, b in zip(starts, starts[1:] + starts[:1], strict=True)
    ]
    if lead > min(gaps) * _HOUR:
        notes.append("filling takes longer than the time between peaks")
    return "".join(f"; {n}" for n in notes)


def _usage_figures(usage: SourceUsage | None) -> dict[str, Figure]:
    if usage is None:
        return {}
    precision = usage.precision
    return {
        "warmed": usage.warmed,
        "used": usage.used,
        "unused": usage.unused,
        "resolved": usage.resolved,
        "precision": None if precision is None else round(precision, 4),
    }


def _timing_figures(
    size: int, known: bool, fill_rate: float, lead: float, cron: str, report: PeakReport, now: float
) -> dict[str, Figure]:
    horizon = now + (HOURS_PER_WEEK + report.period) * _HOUR
    upcoming = peak_starts(report, now, horizon)
    week = HOURS_PER_WEEK * _HOUR
    firings = sum(1 for _ in Cron.parse(cron).firings(now, now + week))
    return {
        "paths": size,
        "size_known": known,
        "fill_rate": fill_rate,
        "fill_seconds": round(size / fill_rate, 3),
        "lead_seconds": lead,
        "next_peak_at": upcoming[0] if upcoming else None,
        "next_firing_at": Cron.parse(cron).next_after(now),
        # More firings than peaks: weekly peaks at different hours on
        # different days, which one cron expression can only cover together.
        "peaks_per_week": len(peak_starts(report, now, now + week)),
        "firings_per_week": firings,
    }


def _unique_name(name: str, taken: set[str]) -> str:
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}-{n}"
    return candidate


def _label(hour: int, pattern: Pattern) -> str:
    if pattern == "daily":
        return f"{hour:02d}:00"
    return f"{_DAYS[hour // 24]} {hour % 24:02d}:00"


def _peak_list(report: PeakReport) -> str:
    return ", ".join(_label(p.start, report.pattern) for p in report.peaks)


def _duration(seconds: float) -> str:
    minutes = math.ceil(seconds / 60.0)
    hours, minutes = divmod(minutes, 60)
    if hours and minutes:
        return f"{hours} h {minutes} min"
    return f"{hours} h" if hours else f"{minutes} min"
