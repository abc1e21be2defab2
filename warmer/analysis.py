"""Usage analysis: the data behind ``GET /cache/warming/hot-data``, live or on a trace.

:class:`Analyzer` watches the same access events as the
:class:`~warmer.tracker.UsageTracker` and, together with it, reports:

- **hot keys** above a threshold that adapts to the traffic level
  (:func:`hot_threshold`), each with its count, share, error bound and a
  priority (:func:`priority_tiers`);
- **access frequency** of the top keys in every tracker window;
- **usage patterns**: mean traffic per UTC hour of the day and day of the
  week, each top key's peak hours and when to warm before them;
- **trends**: keys rising or falling, with a least-squares slope and its
  confidence (:class:`KeyTrends`);
- **seasonality**: daily and weekly cycles, detected from the
  autocorrelation of the hourly traffic, never assumed
  (:func:`detect_seasonality`);
- **segments** of clients (:class:`~warmer.segments.SegmentTracker`) and
  **sequences**: what follows what (:class:`~warmer.sequences.SequenceModel`).

Every part keeps bounded memory (see each ``memory_bound``).  Sans-I/O (DESIGN
rule 2): time is the events' ``ts`` and the ``now`` each query takes.
:func:`analyze_trace` runs the same analysis offline over a recorded trace.

Only cacheable requests count: outcomes ``hit``, ``miss``, ``stale`` and
``revalidated``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from warmer.model import DEFAULT_PRIORITY_LEVELS, Observed
from warmer.segments import HyperLogLog, SegmentTracker
from warmer.sequences import SequenceModel
from warmer.sketch import SpaceSaving
from warmer.tracker import UsageTracker

CACHEABLE: Final = frozenset({"hit", "miss", "stale", "revalidated"})
HOUR: Final = 3600.0
DAY_NAMES: Final = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
HOURS_PER_WEEK: Final = 168
# Hour of the week (Monday 00:00 UTC = 0) of the epoch, as the tracker counts:
# 1970-01-01 was a Thursday.
_EPOCH_HOUR_OF_WEEK: Final = 3 * 24
#: Complete hours of history a key's peak hours (two days) and peak days (two
#: weeks) need: a peak must have had the chance to recur.
PEAK_HOURS_NEEDED: Final = 48
PEAK_DAYS_NEEDED: Final = 2 * HOURS_PER_WEEK
# A peak hour of a key must stand out from a uniform spread of its requests
# by this many Poisson standard deviations, and hold at least this many
# requests, so a few stray requests to a rarely used key are not read as a
# peak (the normal approximation of the Poisson tail is poor for small counts).
_PEAK_Z: Final = 3.0
_PEAK_MIN_COUNT: Final = 10
_STR_HEADER_BYTES: Final = 80  # sys.getsizeof of a str is at most this + 4 per character

Counts = npt.NDArray[np.float64]


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _hour_of_week(hour: int) -> int:
    """Hour of the week (Monday 00:00 UTC = 0) of an absolute hour number."""
    return (hour + _EPOCH_HOUR_OF_WEEK) % HOURS_PER_WEEK


# ===================================================================== trends


def t_confidence(t: float, df: int) -> float:
    """``P(|T| <= |t|)`` for Student's T with ``df`` degrees of freedom.

    That is one minus the two-sided p-value of a t-statistic: the
    confidence that a fitted slope is not zero.  Exact for integer ``df``
    (Abramowitz and Stegun 26.7.3-4, the finite series in
    ``theta = atan(t / sqrt(df))``), so no statistics package is needed.
    """
    if df < 1:
        raise ValueError(f"df must be at least 1, got {df}")
    if math.isnan(t):
        return 0.0
    if math.isinf(t):
        return 1.0
    theta = math.atan(abs(t) / math.sqrt(df))
    sin, cos = math.sin(theta), math.cos(theta)
    cos2 = cos * cos
    if df % 2:
        series = 0.0
        term = cos
        for j in range(1, (df - 1) // 2 + 1):
            series += term
            term *= cos2 * (2 * j) / (2 * j + 1)
        value = 2.0 / math.pi * (theta + sin * series)
    else:
        series = 0.0
        term = 1.0
        for j in range(df // 2):
            series += term
            term *= cos2 * (2 * j + 1) / (2 * j + 2)
        value = sin * series
    return min(1.0, max(0.0, value))


@dataclass(frozen=True, slots=True)
class Trend:
    """A least-squares line through one key's hourly requests."""

    key: str
    #: Change of the hourly request rate: requests/hour per hour.
    slope: float
    #: ``slope`` as a share of the mean hourly requests (None when the mean is 0).
    relative_slope: float | None
    #: ``rising``, ``falling`` or ``flat`` (``adjusted_confidence`` below
    #: the confidence asked).
    direction: str
    #: 1 - the two-sided p-value of the slope's t-statistic (see KeyTrends.trends).
    confidence: float
    #: ``confidence`` adjusted for the number of keys tested together
    #: (Benjamini-Hochberg; see KeyTrends.trends).
    adjusted_confidence: float
    hours: int  # complete hours fitted
    mean: float  # mean requests per hour over them

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "direction": self.direction,
            "slope": round(self.slope, 4),
            "relative_slope": None
            if self.relative_slope is None
            else round(self.relative_slope, 4),
            "confidence": round(self.confidence, 4),
            "adjusted_confidence": round(self.adjusted_confidence, 4),
            "hours": self.hours,
            "mean_per_hour": round(self.mean, 3),
        }


def _fit_lines(y: Counts, valid: npt.NDArray[np.bool_]) -> tuple[Counts, Counts, Counts, Counts]:
    """Least-squares lines through each row of ``y``, over the cells ``valid`` marks.

    Returns (slope, t-statistic, points, mean) per row; rows with fewer
    than three points get NaN slopes and t-statistics.
    """
    w = valid.astype(np.float64)
    x = np.arange(y.shape[1], dtype=np.float64)
    n = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        x_mean = (w * x).sum(axis=1) / n
        y_mean = (w * y).sum(axis=1) / n
        dx = (x[None, :] - x_mean[:, None]) * w
        dy = (y - y_mean[:, None]) * w
        sxx = (dx * dx).sum(axis=1)
        sxy = (dx * dy).sum(axis=1)
        syy = (dy * dy).sum(axis=1)
        slope = sxy / sxx
        residual = np.maximum(syy - slope * sxy, 0.0)
        stderr = np.sqrt(residual / (n - 2) / sxx)
        t = np.where(stderr > 0, slope / stderr, np.where(slope == 0, 0.0, np.inf))
    few = n < 3
    slope[few] = np.nan
    t[few] = np.nan
    return slope, t, n, y_mean


class KeyTrends:
    """Hourly request counts of the hottest keys over the last ``hours`` hours.

    Which keys: a Space-Saving summary of ``max_keys`` keys whose counts
    halve every ``half_life_hours`` (so "hottest" means lately, while a key
    that starts falling stays long enough to be seen falling).  A key's
    series starts with the first complete hour after it entered the summary
    and is dropped when it leaves.  Counts are kept in a ``max_keys`` by
    ``hours + 1`` array: a ring of clock hours, the extra one being the hour
    in progress.  Each tracked key also has its requests per UTC hour of the
    week since it entered (:meth:`profile`): what its peak hours are read
    from.  (The tracker keeps such profiles too, but its top-k summary halves
    every hour, so a key asked for once a day leaves it, and loses its
    profile, before the next day's peak.)

    ``observe`` adds to a per-hour batch (one dict update an event); the
    batch is folded in when the clock hour ends, when it holds
    ``batch_keys`` keys, or when a query comes.  Keys longer than
    ``max_name_bytes`` (``sys.getsizeof``) are ignored.
    """

    def __init__(
        self,
        max_keys: int = 2000,
        hours: int = 48,
        *,
        half_life_hours: float = 24.0,
        batch_keys: int = 4096,
        max_name_bytes: int = 2048,
    ) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, got {max_keys}")
        if hours < 3:
            raise ValueError(f"hours must be at least 3, got {hours}")
        if not half_life_hours > 0:
            raise ValueError(f"half_life_hours must be positive, got {half_life_hours}")
        if batch_keys < 1:
            raise ValueError(f"batch_keys must be at least 1, got {batch_keys}")
        self._max_keys = max_keys
        self._hours = hours
        self._ring = hours + 1
        self._half_life = float(half_life_hours)
        self._batch_keys = batch_keys
        self._max_name = max_name_bytes
        self._short = max(0, (max_name_bytes - _STR_HEADER_BYTES) // 4)
        self._summary = SpaceSaving(max_keys)
        self._slots: dict[str, int] = {}  # exactly the keys in the summary
        self._free = list(range(max_keys - 1, -1, -1))
        self._counts = np.zeros((max_keys, self._ring), dtype=np.int64)
        self._start = np.zeros(max_keys, dtype=np.int64)  # first complete hour per slot
        self._week = np.zeros((max_keys, HOURS_PER_WEEK), dtype=np.int64)
        self._ids = np.full(self._ring, -1, dtype=np.int64)  # absolute hour per column
        self._newest = -1  # the newest hour the ring holds
        self._batch: dict[str, int] = {}
        self._batch_hour = -1
        self._batch_end = -math.inf

    @property
    def hours(self) -> int:
        """Complete hours kept per key."""
        return self._hours

    @property
    def tracked(self) -> int:
        """Keys with a series."""
        self._fold()
        return len(self._slots)

    def observe(self, event: Observed) -> None:
        """Count one access event if it is a cacheable request."""
        if event.outcome in CACHEABLE:
            self.add(event.key, event.ts)

    def add(self, key: str, ts: float) -> None:
        """Count one request for ``key`` at ``ts``: usually one dict update."""
        if ts >= self._batch_end:
            self._next_hour(ts)
        batch = self._batch
        count = batch.get(key)
        if count is not None:
            batch[key] = count + 1
            return
        if len(key) > self._short and sys.getsizeof(key) > self._max_name:
            return
        batch[key] = 1
        if len(batch) >= self._batch_keys:
            self._fold()

    def _next_hour(self, ts: float) -> None:
        """Fold the batch into its hour, move the ring to ``ts``'s hour, age the summary."""
        self._fold()
        hour = int(ts // HOUR)
        self._batch_end = (hour + 1) * HOUR
        # ts is past the batch's hour, which is the newest the ring holds.
        previous = self._batch_hour
        self._batch_hour = hour
        for h in range(max(self._newest + 1, hour - self._ring + 1), hour + 1):
            col = h % self._ring
            self._counts[:, col] = 0
            self._ids[col] = h
        self._newest = hour
        if previous >= 0:
            # Past 64 half-lives every count is 0; a larger exponent would
            # underflow the factor to 0.0, which decay() rightly refuses.
            elapsed = min(hour - previous, 64 * self._half_life)
            for dropped in self._summary.decay(0.5 ** (elapsed / self._half_life)):
                self._free.append(self._slots.pop(dropped))

    def _fold(self) -> None:
        """Count the batch into the summary and its keys' hour and hour-of-week cells."""
        batch = self._batch
        if not batch:
            return
        hour = self._batch_hour
        col = hour % self._ring
        how = _hour_of_week(hour)
        summary = self._summary
        slots = self._slots
        counts = self._counts
        week = self._week
        for key, count in batch.items():
            evicted = summary.add(key, count)
            if evicted is not None:
                self._free.append(slots.pop(evicted))
            slot = slots.get(key)
            if slot is None:
                slot = slots[key] = self._free.pop()
                counts[slot, :] = 0
                week[slot, :] = 0
                # Requests before this fold may have gone uncounted (the key
                # was outside the summary), so its series starts next hour.
                self._start[slot] = hour + 1
            counts[slot, col] += count
            week[slot, how] += count
        batch.clear()

    def _window(self, now: float, hours: int) -> tuple[list[str], Counts, npt.NDArray[np.bool_]]:
        """Keys, their counts and validity over the ``hours`` complete hours before ``now``."""
        if not 3 <= hours <= self._hours:
            raise ValueError(f"hours must be between 3 and {self._hours}, got {hours}")
        self._fold()
        last = int(now // HOUR) - 1  # the hour in progress is not complete
        wanted = np.arange(last - hours + 1, last + 1, dtype=np.int64)
        cols = wanted % self._ring
        held = self._ids[cols] == wanted  # other columns: no request in that hour
        keys = list(self._slots)
        rows = np.fromiter(self._slots.values(), dtype=np.int64, count=len(keys))
        y = self._counts[rows][:, cols].astype(np.float64) * held[None, :]
        valid = wanted[None, :] >= self._start[rows][:, None]
        valid &= wanted[None, :] > self._newest - self._ring  # not older than the ring
        return keys, y, valid

    def series(self, key: str, now: float) -> list[int] | None:
        """``key``'s requests in each complete hour before ``now`` since it is tracked."""
        self._fold()
        slot = self._slots.get(key)
        if slot is None:
            return None
        last = int(now // HOUR) - 1
        first = max(int(self._start[slot]), last - self._hours + 1, self._newest - self._ring + 1)
        out: list[int] = []
        for h in range(first, last + 1):
            col = h % self._ring
            out.append(int(self._counts[slot, col]) if self._ids[col] == h else 0)
        return out

    def profile(self, key: str) -> tuple[int, list[int]] | None:
        """(hour it entered, requests per UTC hour of the week since) for a tracked key.

        The hour is an epoch hour number; the profile counts that hour (which
        may be partial) and the one in progress.  Hour of the week 0 is
        Monday 00:00-01:00.
        """
        self._fold()
        slot = self._slots.get(key)
        if slot is None:
            return None
        return int(self._start[slot]) - 1, [int(c) for c in self._week[slot]]

    def trends(self, now: float, hours: int = 24, min_confidence: float = 0.95) -> list[Trend]:
        """A trend for every tracked key with at least 3 complete hours, in no set order.

        The slope is the least-squares fit of requests per hour against the
        hour.  Its confidence is ``1 - p`` for the two-sided t-test of
        "slope = 0" (``t = slope / stderr``, ``n - 2`` degrees of freedom):
        the probability that a key without a trend would *not* show a slope
        this steep just by chance, given the scatter of its own hourly
        counts around the line.  It assumes independent, roughly normal
        scatter; hourly counts of a busy key are close enough, and a key
        with a daily cycle is rightly less certain (its scatter is larger).
        A window shorter than a day can mistake part of a daily cycle for a
        trend: that is what the daily seasonality section is for.

        Thousands of keys are tested at once, and at 95 % one flat key in
        twenty would pass by chance.  So a key's direction is decided by its
        Benjamini-Hochberg adjusted confidence over all the keys fitted:
        among the keys called rising or falling, the expected share of keys
        without a trend is at most ``1 - min_confidence``.
        """
        keys, y, valid = self._window(now, hours)
        if not keys:
            return []
        slope, t, n, mean = _fit_lines(y, valid)
        fitted = [i for i in range(len(keys)) if not math.isnan(slope[i])]
        confidence = np.array(
            [t_confidence(float(t[i]), int(n[i]) - 2) for i in fitted], dtype=np.float64
        )
        adjusted = 1.0 - _benjamini_hochberg(1.0 - confidence)
        out: list[Trend] = []
        for j, i in enumerate(fitted):
            b = float(slope[i])
            sure = adjusted[j] >= min_confidence
            direction = "rising" if sure and b > 0 else "falling" if sure and b < 0 else "flat"
            m = float(mean[i])
            out.append(
                Trend(
                    key=keys[i],
                    slope=b,
                    relative_slope=b / m if m > 0 else None,
                    direction=direction,
                    confidence=float(confidence[j]),
                    adjusted_confidence=float(adjusted[j]),
                    hours=int(n[i]),
                    mean=m,
                )
            )
        return out

    def trend(
        self, key: str, now: float, hours: int = 24, min_confidence: float = 0.95
    ) -> Trend | None:
        """``key``'s trend over the last ``hours`` complete hours, as :meth:`trends` gives it.

        None when the key is not tracked or has fewer than 3 complete hours.
        """
        for found in self.trends(now, hours, min_confidence):
            if found.key == key:
                return found
        return None

    def rising(
        self, n: int, now: float, hours: int = 24, min_confidence: float = 0.95
    ) -> list[Trend]:
        """The ``n`` keys rising fastest (requests/hour per hour) with that confidence."""
        found = [t for t in self.trends(now, hours, min_confidence) if t.direction == "rising"]
        found.sort(key=lambda t: (-t.slope, t.key))
        return found[:n]

    def falling(
        self, n: int, now: float, hours: int = 24, min_confidence: float = 0.95
    ) -> list[Trend]:
        """The ``n`` keys falling fastest with that confidence."""
        found = [t for t in self.trends(now, hours, min_confidence) if t.direction == "falling"]
        found.sort(key=lambda t: (t.slope, t.key))
        return found[:n]

    def memory_bound(self) -> int:
        """An upper estimate, in bytes, of what this can ever hold.

        The count arrays (``max_keys * (hours + 1 + 168) * 8``) and per-slot
        start hours, plus ``max_keys * (TOP + B)`` for the summary and the slot map
        and ``batch_keys * (BATCH + B)`` for the batch, ``B`` being
        ``max_name_bytes``; ``TOP`` = 512 and ``BATCH`` = 256 are CPython
        3.11 64-bit costs measured with tracemalloc, rounded up.
        """
        name = self._max_name
        return (
            self._counts.nbytes
            + self._week.nbytes
            + self._start.nbytes
            + self._ids.nbytes
            + _TREND_FIXED_BYTES
            + self._max_keys * (_TREND_KEY_BYTES + name)
            + self._batch_keys * (_BATCH_ENTRY_BYTES + name)
        )


_TREND_KEY_BYTES: Final = 512  # summary slots and heap entry, slot map entry, ints
_BATCH_ENTRY_BYTES: Final = 256  # a dict slot and an int
_TREND_FIXED_BYTES: Final = 64 * 1024


def _benjamini_hochberg(p: Counts) -> Counts:
    """Benjamini-Hochberg adjusted p-values (step-up, capped at 1), in the input order."""
    m = p.size
    if m == 0:
        return p
    order = np.argsort(p)
    scaled = p[order] * m / np.arange(1, m + 1)
    # The adjusted value of the k-th smallest is the smallest scaled value
    # at rank k or above, which keeps the adjusted values in order.
    stepped = np.minimum.accumulate(scaled[::-1])[::-1]
    out = np.empty(m, dtype=np.float64)
    out[order] = np.minimum(stepped, 1.0)
    return out


# =============================================================== traffic level


class _Ring:
    """One sliding window: per time slice, requests and a distinct-key counter."""

    __slots__ = ("buckets", "distinct", "head", "ids", "requests", "slice", "window")

    def __init__(self, window: float, buckets: int, precision: int) -> None:
        self.window = window
        self.buckets = buckets
        self.slice = window / buckets
        # buckets + 1 slices: the window is read to one slice's precision,
        # never missing anything of the last ``window`` seconds.
        self.ids = [-(1 << 62)] * (buckets + 1)
        self.requests = [0] * (buckets + 1)
        self.distinct = [HyperLogLog(precision) for _ in range(buckets + 1)]
        self.head = -(1 << 62)

    def at(self, ts: float) -> int:
        """The ring position for time ``ts``, advancing (and clearing) as needed."""
        current = max(int(ts // self.slice), self.head)  # a late add counts in the head
        if current > self.head:
            ring = self.buckets + 1
            for slice_id in range(max(self.head + 1, current - ring + 1), current + 1):
                pos = slice_id % ring
                self.ids[pos] = slice_id
                self.requests[pos] = 0
                self.distinct[pos].clear()
            self.head = current
        return current % (self.buckets + 1)

    def live(self, now: float) -> list[int]:
        """Ring positions of the slices the window ending at ``now`` covers."""
        newest = max(int(now // self.slice), self.head)
        oldest = newest - self.buckets
        return [pos for pos, sid in enumerate(self.ids) if oldest <= sid <= newest]


class TrafficLevel:
    """How much traffic there is: what the hot threshold and the patterns read.

    Per sliding window (the tracker's windows): cacheable requests and
    distinct keys asked for (a :class:`~warmer.segments.HyperLogLog` per time
    slice of ``window / 12``, united over the window).  And requests per
    clock hour for the last ``history_hours`` hours (4 weeks by default: a
    weekly cycle needs two weeks to be seen twice, which the tracker's
    8-day ring cannot hold).

    ``add`` collects a batch (a set of the hashes of the keys seen, so no
    key string is held, and a request count) that is folded in when the
    finest slice or the hour ends, when it holds ``batch_keys`` keys, or
    when a query comes.
    """

    def __init__(
        self,
        windows: Sequence[float] = (60, 3600, 86400),
        history_hours: int = 4 * HOURS_PER_WEEK,
        *,
        precision: int = 12,
        batch_keys: int = 4096,
    ) -> None:
        unique = sorted({float(w) for w in windows})
        if not unique or any(not w > 0 or math.isinf(w) for w in unique):
            raise ValueError(f"windows must be positive seconds, got {list(windows)}")
        if history_hours < 1:
            raise ValueError(f"history_hours must be at least 1, got {history_hours}")
        self._rings = {w: _Ring(w, 12, precision) for w in unique}
        self._ring_list = tuple(self._rings.values())
        self._cells = HyperLogLog(precision)  # places keys for every counter
        self._finest = self._ring_list[0].slice
        self._history = history_hours
        self._hour_ids = [-1] * history_hours
        self._hour_requests = [0] * history_hours
        self._first_hour: int | None = None
        self._batch_keys = batch_keys
        self._batch: set[int] = set()
        self._batch_requests = 0
        self._batch_ts = -math.inf
        self._batch_end = -math.inf
        self._batch_hour = -1

    @property
    def windows(self) -> tuple[float, ...]:
        """The windows (seconds, ascending) :meth:`requests` and :meth:`active_keys` accept."""
        return tuple(self._rings)

    @property
    def first_hour(self) -> int | None:
        """The clock hour (epoch hours) of the first request, if any."""
        return self._first_hour

    def add(self, key: str, ts: float) -> None:
        """Count one cacheable request for ``key`` at ``ts``."""
        if ts >= self._batch_end:
            self._next_batch(ts)
        elif ts > self._batch_ts:
            self._batch_ts = ts
        self._batch_requests += 1
        batch = self._batch
        digest = hash(key)  # cached on the string
        if digest not in batch:
            batch.add(digest)
            if len(batch) >= self._batch_keys:
                self._fold_keys()

    def _next_batch(self, ts: float) -> None:
        self._fold()
        hour = int(ts // HOUR)
        if self._first_hour is None:
            self._first_hour = hour
        self._batch_hour = hour
        self._batch_ts = ts
        self._batch_end = min((int(ts // self._finest) + 1) * self._finest, (hour + 1) * HOUR)

    def _fold_keys(self) -> None:
        batch = self._batch
        if not batch:
            return
        place = self._cells.cell_of_hash
        cells = [place(digest) for digest in batch]
        ts = self._batch_ts
        for ring in self._ring_list:
            counter = ring.distinct[ring.at(ts)]
            for index, rank in cells:
                counter.add_cell(index, rank)
        batch.clear()

    def _fold(self) -> None:
        self._fold_keys()
        requests = self._batch_requests
        if not requests:
            return
        self._batch_requests = 0
        ts = self._batch_ts
        for ring in self._ring_list:
            ring.requests[ring.at(ts)] += requests
        hour = self._batch_hour
        pos = hour % self._history
        if self._hour_ids[pos] < hour:
            self._hour_ids[pos] = hour
            self._hour_requests[pos] = 0
        if self._hour_ids[pos] == hour:
            self._hour_requests[pos] += requests

    def _ring(self, window: float) -> _Ring:
        ring = self._rings.get(window)
        if ring is None:
            allowed = ", ".join(f"{w:g}" for w in self._rings)
            raise ValueError(f"unknown window {window!r}: allowed windows are {allowed} seconds")
        return ring

    def requests(self, window: float, now: float) -> int:
        """Cacheable requests in the ``window`` seconds to ``now`` (to one slice)."""
        ring = self._ring(window)
        self._fold()
        return sum(ring.requests[pos] for pos in ring.live(now))

    def active_keys(self, window: float, now: float) -> int:
        """Distinct keys asked for in the ``window`` seconds to ``now`` (estimated)."""
        ring = self._ring(window)
        self._fold()
        return round(HyperLogLog.union(ring.distinct[pos] for pos in ring.live(now)))

    def hourly(self, now: float) -> tuple[int, list[int]]:
        """(first hour, requests per hour) over the complete hours of history before ``now``.

        Hours are epoch hour numbers.  The first hour with traffic is left
        out (it began before the counting did), as is the hour in progress;
        so are hours older than ``history_hours``.  Empty before two clock
        hours have passed.
        """
        self._fold()
        last = int(now // HOUR) - 1
        if self._first_hour is None:
            return last + 1, []
        first = max(self._first_hour + 1, last - self._history + 1)
        out: list[int] = []
        for hour in range(first, last + 1):
            pos = hour % self._history
            out.append(self._hour_requests[pos] if self._hour_ids[pos] == hour else 0)
        return first, out

    def memory_bound(self) -> int:
        """An upper estimate, in bytes: the rings' counters, the hour ring and the batch."""
        registers = sum(c.nbytes + 128 for r in self._ring_list for c in r.distinct)
        slices = sum(len(r.ids) for r in self._ring_list) * 3 * _INT_BYTES
        hours = 2 * self._history * _INT_BYTES
        return (
            registers
            + slices
            + hours
            + _TRAFFIC_FIXED_BYTES
            + self._batch_keys * _SET_ENTRY_BYTES
            + self._cells.nbytes
        )


_INT_BYTES: Final = 40  # a list slot and an int object
_SET_ENTRY_BYTES: Final = 128  # a set slot and the int hash it holds
_TRAFFIC_FIXED_BYTES: Final = 16 * 1024


# ================================================================ seasonality


@dataclass(frozen=True, slots=True)
class Seasonality:
    """Whether an hourly series repeats with a period, and where it peaks.

    ``detected`` is None when the series is too short to tell
    (``hours < hours_needed``).  ``peaks``/``troughs`` are hours of the day
    (0-23 UTC) for a daily period and days of the week (0 = Monday) for a
    weekly one; empty when nothing was detected, None when undecided.
    """

    period_hours: int
    hours: int
    hours_needed: int
    detected: bool | None
    strength: float | None  # autocorrelation at the period
    threshold: float | None  # what strength had to exceed
    peaks: tuple[int, ...] | None
    troughs: tuple[int, ...] | None

    def as_dict(self, now: float | None = None, lead: float = 0.0) -> dict[str, Any]:
        """JSON-ready; with ``now``, a daily result tells when to warm before each peak."""
        out: dict[str, Any] = {
            "period_hours": self.period_hours,
            "detected": self.detected,
            "insufficient_data": self.detected is None,
            "hours_available": self.hours,
            "hours_needed": self.hours_needed,
            "strength": None if self.strength is None else round(self.strength, 4),
            "threshold": None if self.threshold is None else round(self.threshold, 4),
        }
        if self.period_hours == 24:
            out["peak_hours"] = None if self.peaks is None else list(self.peaks)
            out["quiet_hours"] = None if self.troughs is None else list(self.troughs)
            if now is not None:
                out["warm_at"] = None if self.peaks is None else warm_times(self.peaks, now, lead)
        else:
            out["peak_days"] = None if self.peaks is None else [DAY_NAMES[d] for d in self.peaks]
            out["quiet_days"] = (
                None if self.troughs is None else [DAY_NAMES[d] for d in self.troughs]
            )
        return out


def detect_seasonality(
    counts: Sequence[float],
    first_hour: int,
    period: int = 24,
    *,
    z: float = 2.0,
    peak_k: float = 1.0,
) -> Seasonality:
    """Test an hourly series for a daily (``period`` 24) or weekly (168) cycle.

    ``counts``: requests per consecutive clock hour, the first being epoch
    hour ``first_hour`` (so phases map to UTC hours and weekdays).

    The test, in order:

    1. at least two periods of data, else undecided (``detected`` None):
       a cycle must be seen to recur;
    2. the least-squares line is removed (a trend correlates with itself at
       every lag); for a weekly period the mean of each hour of the day is
       removed too, so a daily cycle (which also repeats every 168 hours)
       is not taken for a weekly one;
    3. ``r``, the autocorrelation at lag ``period``, must exceed
       ``z / sqrt(n)``: under white noise ``r`` is about normal with
       standard deviation ``1 / sqrt(n)`` (Bartlett), so ``z = 2`` leaves a
       chance of about 2 % to read noise as a cycle;
    4. and ``r`` must exceed the autocorrelation at half the period: a
       slow, non-periodic wander is correlated at every short lag, most at
       the shortest, while a cycle is out of phase at half its period.

    Peaks (troughs) are the hours of the day, or days of the week, whose
    mean exceeds (falls below) the mean of all of them by more than
    ``peak_k`` standard deviations of those means.
    """
    if period not in (24, HOURS_PER_WEEK):
        raise ValueError(f"period must be 24 or {HOURS_PER_WEEK} hours, got {period}")
    n = len(counts)
    needed = 2 * period
    if n < needed:
        return Seasonality(period, n, needed, None, None, None, None, None)
    raw = np.asarray(counts, dtype=np.float64)
    x = np.arange(n, dtype=np.float64)
    x_centered = x - x.mean()
    slope = float(x_centered @ (raw - raw.mean())) / float(x_centered @ x_centered)
    y = raw - raw.mean() - slope * x_centered
    hour_of_day = (first_hour + np.arange(n)) % 24
    if period == HOURS_PER_WEEK:
        sums = np.bincount(hour_of_day, weights=y, minlength=24)
        seen = np.bincount(hour_of_day, minlength=24)
        y = y - (sums / np.maximum(seen, 1))[hour_of_day]
    energy = float(y @ y)
    threshold = z / math.sqrt(n)
    # Relative to the series' size: what remains of a constant or a straight
    # line after the fit is rounding noise, not variation.
    if energy <= 1e-12 * max(1.0, float(raw @ raw)):
        return Seasonality(period, n, needed, False, 0.0, threshold, (), ())
    strength = float(y[:-period] @ y[period:]) / energy
    half = float(y[: -(period // 2)] @ y[period // 2 :]) / energy
    detected = strength > threshold and strength > half
    if not detected:
        return Seasonality(period, n, needed, False, strength, threshold, (), ())
    if period == 24:
        phase = hour_of_day
        bins = 24
    else:
        phase = ((first_hour + np.arange(n) + _EPOCH_HOUR_OF_WEEK) % HOURS_PER_WEEK) // 24
        bins = 7
    means = np.bincount(phase, weights=raw, minlength=bins) / np.maximum(
        np.bincount(phase, minlength=bins), 1
    )
    center, spread = float(means.mean()), float(means.std())
    peaks = tuple(int(i) for i in np.flatnonzero(means > center + peak_k * spread))
    troughs = tuple(int(i) for i in np.flatnonzero(means < center - peak_k * spread))
    return Seasonality(period, n, needed, True, strength, threshold, peaks, troughs)


# ==================================================================== patterns


def peak_runs(hours: Iterable[int]) -> list[list[int]]:
    """Group hours of the day into runs of consecutive hours (23 and 0 adjoin)."""
    chosen = sorted(set(hours))
    if not chosen:
        return []
    if len(chosen) == 24:
        return [chosen]
    runs: list[list[int]] = []
    for hour in chosen:
        if runs and runs[-1][-1] == hour - 1:
            runs[-1].append(hour)
        else:
            runs.append([hour])
    if len(runs) > 1 and runs[0][0] == 0 and runs[-1][-1] == 23:
        runs[0] = runs.pop() + runs[0]
    return runs


def warm_times(peak_hours: Iterable[int], now: float, lead: float) -> list[dict[str, Any]]:
    """When to warm before each run of peak hours: ``lead`` seconds before it starts.

    Each: ``peak_start`` ("HH:00" UTC), ``hours`` (the run), ``warm_at``
    ("HH:MM" UTC) and ``next_warm_at`` (the first such moment after ``now``).
    """
    out: list[dict[str, Any]] = []
    day = 86400.0
    for run in peak_runs(peak_hours):
        offset = (run[0] * HOUR - lead) % day
        next_at = math.floor((now - offset) / day) * day + offset
        if next_at <= now:
            next_at += day
        minutes = int(offset // 60)
        out.append(
            {
                "peak_start": f"{run[0]:02d}:00",
                "hours": run,
                "warm_at": f"{minutes // 60:02d}:{minutes % 60:02d}",
                "next_warm_at": _iso(next_at),
            }
        )
    return out


def _occurrences(first_hour: int, last_hour: int) -> npt.NDArray[np.float64]:
    """How often each hour of the week occurs from ``first_hour`` to ``last_hour``."""
    out = np.zeros(HOURS_PER_WEEK, dtype=np.float64)
    span = last_hour - first_hour + 1
    if span <= 0:
        return out
    out += span // HOURS_PER_WEEK
    start = _hour_of_week(first_hour)
    for i in range(span % HOURS_PER_WEEK):
        out[(start + i) % HOURS_PER_WEEK] += 1
    return out


def profile_peaks(
    counts: Sequence[float], occurrences: Sequence[float], *, peak_k: float = 1.0
) -> list[int]:
    """Bins (hours of the day, days of the week) where a key is asked for most.

    ``counts``: requests per bin; ``occurrences``: how often each bin was
    observed.  A peak bin's rate (count per occurrence) exceeds the mean
    rate by ``peak_k`` standard deviations of the rates, and its count is at
    least 10 and exceeds what a uniform spread would give by 3 Poisson
    standard deviations, so a handful of requests is never a peak.
    """
    c = np.asarray(counts, dtype=np.float64)
    occ = np.asarray(occurrences, dtype=np.float64)
    seen = occ > 0
    total = float(c[seen].sum())
    if total <= 0 or seen.sum() < 2:
        return []
    rates = np.where(seen, c / np.maximum(occ, 1), 0.0)
    center, spread = float(rates[seen].mean()), float(rates[seen].std())
    expected = total * occ / float(occ[seen].sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(seen, (c - expected) / np.sqrt(expected), 0.0)
    chosen = seen & (rates > center + peak_k * spread) & (z >= _PEAK_Z) & (c >= _PEAK_MIN_COUNT)
    return [int(i) for i in np.flatnonzero(chosen)]


# ==================================================================== hot data


def hot_threshold(
    window_requests: int, active_keys: int, *, min_count: int = 2, multiplier: float = 4.0
) -> float:
    """The count a key needs in a window to be hot.

    ``max(min_count, multiplier * window_requests / active_keys)``: a key is
    hot when it gets ``multiplier`` times the requests of the average key
    asked for in the window.  Twice the traffic over the same keys doubles
    the threshold, so what is hot tracks the traffic level instead of a
    fixed number; ``min_count`` keeps a near-idle proxy from calling a
    single request hot.
    """
    if active_keys <= 0:
        return float(min_count)
    return max(float(min_count), multiplier * window_requests / active_keys)


def priority_tiers(counts: Sequence[int], levels: Sequence[str]) -> list[str]:
    """Priority names for keys ranked by ``counts`` (descending), highest level first.

    Tiers by cumulative traffic: the keys that carry the first
    ``1/len(levels)`` of the listed keys' requests get ``levels[0]``, the
    next share ``levels[1]``, and so on; a key's tier is set by the traffic
    of the keys ranked above it, so the top key is always ``levels[0]``.
    """
    if not levels:
        raise ValueError("levels must name at least one priority")
    total = sum(counts)
    out: list[str] = []
    before = 0
    for count in counts:
        tier = 0 if total <= 0 else min(len(levels) - 1, int(len(levels) * before / total))
        out.append(levels[tier])
        before += count
    return out


# ==================================================================== analyzer


class Analyzer:
    """The usage analysis behind ``/cache/warming/hot-data``: owns and feeds its parts.

    Give it every access event (:meth:`observe`, O(1)) and ask for
    :meth:`report` with the tracker that saw the same events.  The parts
    can be passed in built with other sizes; by default: a
    :class:`TrafficLevel` over ``windows``, :class:`KeyTrends`,
    :class:`~warmer.segments.SegmentTracker` and
    :class:`~warmer.sequences.SequenceModel` with their defaults.  Which
    header identifies a client is the caller's choice: events carry it as
    ``client``.
    """

    def __init__(
        self,
        windows: Sequence[float] = (60, 3600, 86400),
        *,
        traffic: TrafficLevel | None = None,
        trends: KeyTrends | None = None,
        segments: SegmentTracker | None = None,
        sequences: SequenceModel | None = None,
        hot_min_count: int = 2,
        hot_multiplier: float = 4.0,
    ) -> None:
        if hot_min_count < 1:
            raise ValueError(f"hot_min_count must be at least 1, got {hot_min_count}")
        if not hot_multiplier > 0:
            raise ValueError(f"hot_multiplier must be positive, got {hot_multiplier}")
        self.traffic = traffic if traffic is not None else TrafficLevel(windows)
        self.trends = trends if trends is not None else KeyTrends()
        self.segments = segments if segments is not None else SegmentTracker()
        self.sequences = sequences if sequences is not None else SequenceModel()
        self.hot_min_count = hot_min_count
        self.hot_multiplier = float(hot_multiplier)

    def observe(self, event: Observed) -> None:
        """Account for one access event: O(1), no I/O; non-cacheable outcomes are skipped."""
        if event.outcome not in CACHEABLE:
            return
        key = event.key
        ts = event.ts
        self.traffic.add(key, ts)
        self.trends.add(key, ts)
        client = event.client
        if client:  # without an id, requests of different clients cannot be told apart
            self.sequences.observe(client, key, ts)
        self.segments.observe(event)

    def memory_bound(self) -> int:
        """An upper estimate, in bytes, of what the analysis can ever hold (tracker excluded)."""
        return (
            self.traffic.memory_bound()
            + self.trends.memory_bound()
            + self.segments.memory_bound()
            + self.sequences.memory_bound()
        )

    def report(
        self,
        tracker: UsageTracker,
        now: float,
        *,
        n: int = 20,
        window: float | None = None,
        levels: Sequence[str] = DEFAULT_PRIORITY_LEVELS,
        lead: float = 600.0,
        trend_hours: int = 24,
        min_confidence: float = 0.95,
    ) -> dict[str, Any]:
        """The ``/cache/warming/hot-data`` document, JSON-ready.

        ``n``: entries per list; ``window``: seconds, one of the tracker's
        windows (default its longest), for hot keys and their threshold;
        ``levels``: priority names, highest first; ``lead``: seconds to warm
        before a peak; ``trend_hours``: complete hours a trend is fitted
        over.  Values not yet measurable are null.
        """
        if n < 0:
            raise ValueError(f"n must not be negative, got {n}")
        if window is None:
            window = tracker.windows[-1]
        if window not in tracker.windows or window not in self.traffic.windows:
            allowed = ", ".join(f"{w:g}" for w in tracker.windows)
            raise ValueError(f"unknown window {window!r}: allowed windows are {allowed} seconds")
        if not levels:
            raise ValueError("levels must name at least one priority")
        threshold, hot = self._hot(tracker, now, window, n, levels)
        first_hour, hourly = self.traffic.hourly(now)
        return {
            "generated_at": _iso(now),
            "window_seconds": window,
            "threshold": threshold,
            "hot_keys": hot,
            "frequency": self._frequency(tracker, now, n),
            "patterns": self._patterns(tracker, now, n, window, first_hour, hourly, lead),
            "trends": self._trends(tracker, now, n, trend_hours, min_confidence),
            "seasonality": {
                "daily": detect_seasonality(hourly, first_hour, 24).as_dict(now, lead),
                "weekly": detect_seasonality(hourly, first_hour, HOURS_PER_WEEK).as_dict(),
            },
            "segments": self.segments.report(now, n),
            "sequences": {
                "clients": self.sequences.clients,
                "sources": self.sequences.sources,
                "transitions": [
                    {
                        "from": t.source,
                        "to": t.target,
                        "count": t.count,
                        "confidence": round(t.confidence, 4),
                    }
                    for t in self.sequences.top_transitions(n)
                ],
            },
            "memory_bound_bytes": {
                "analysis": self.memory_bound(),
                "tracker": tracker.memory_bound(),
            },
        }

    def _hot(
        self, tracker: UsageTracker, now: float, window: float, n: int, levels: Sequence[str]
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        requests = self.traffic.requests(window, now)
        active = self.traffic.active_keys(window, now)
        value = hot_threshold(
            requests, active, min_count=self.hot_min_count, multiplier=self.hot_multiplier
        )
        threshold = {
            "rule": "count >= max(min_count, multiplier * window_requests / active_keys)",
            "value": round(value, 3),
            "min_count": self.hot_min_count,
            "multiplier": self.hot_multiplier,
            "window_requests": requests,
            "active_keys": active,
            "mean_requests_per_active_key": round(requests / active, 3) if active else None,
        }
        above = [h for h in tracker.hot(tracker.top_k, now, window) if h.count >= value]
        tiers = priority_tiers([h.count for h in above], levels)
        hot = [
            {
                "key": h.key,
                "url": h.url,
                "host": h.host,
                "count": h.count,
                "share": round(h.count / requests, 4) if requests else None,
                "error": h.error,
                "priority": tier,
            }
            for h, tier in zip(above, tiers, strict=True)
        ][:n]
        threshold["keys_above"] = len(above)
        return threshold, hot

    def _frequency(self, tracker: UsageTracker, now: float, n: int) -> dict[str, Any]:
        per_window = {
            w: {h.key: (h.count, h.error) for h in tracker.hot(tracker.top_k, now, w)}
            for w in tracker.windows
        }
        keys = []
        for h in tracker.hot(n, now):
            counts: dict[str, int] = {}
            errors: dict[str, int] = {}
            for w, seen in per_window.items():
                count, error = seen.get(h.key, (0, 0))
                counts[f"{w:g}"] = count
                errors[f"{w:g}"] = error
            keys.append(
                {"key": h.key, "url": h.url, "host": h.host, "counts": counts, "errors": errors}
            )
        return {"windows_seconds": list(tracker.windows), "keys": keys}

    def _patterns(
        self,
        tracker: UsageTracker,
        now: float,
        n: int,
        window: float,
        first_hour: int,
        hourly: list[int],
        lead: float,
    ) -> dict[str, Any]:
        hours = np.arange(first_hour, first_hour + len(hourly))
        values = np.asarray(hourly, dtype=np.float64)
        by_hour = (hours % 24).astype(np.int64)
        by_day = (((hours + _EPOCH_HOUR_OF_WEEK) % HOURS_PER_WEEK) // 24).astype(np.int64)
        hour_seen = np.bincount(by_hour, minlength=24)
        hour_sums = np.bincount(by_hour, weights=values, minlength=24)
        day_seen = np.bincount(by_day, minlength=7)
        day_sums = np.bincount(by_day, weights=values, minlength=7)

        now_hour = int(now // HOUR)
        start = self.traffic.first_hour
        complete = len(hourly)
        keys = []
        for h in tracker.hot(n, now, window):
            entry: dict[str, Any] = {
                "key": h.key,
                "url": h.url,
                # Complete hours the key's profile covers, and its requests
                # per UTC hour of the day and per day of the week in them.
                "hours_observed": None,
                "hour_of_day": None,
                "day_of_week": None,
                "peak_hours": None,
                "peak_days": None,
                "warm_at": None,
            }
            since: int | None
            week: list[int] | None
            found = self.trends.profile(h.key)
            if found is not None:
                since, week = found
            else:
                # Not among the keys followed for trends: the tracker's
                # profile, which counts from when the key entered its top-k.
                since, week = start, tracker.key_hour_of_week(h.key)
            keys.append(entry)
            if week is None or since is None:
                continue
            observed = max(0, now_hour - since - 1)  # the first and current hours are partial
            profile = np.asarray(week, dtype=np.float64).reshape(7, 24)
            occ = _occurrences(since, now_hour).reshape(7, 24)
            entry["hours_observed"] = observed
            entry["hour_of_day"] = [int(c) for c in profile.sum(axis=0)]
            entry["day_of_week"] = {DAY_NAMES[d]: int(c) for d, c in enumerate(profile.sum(axis=1))}
            if observed >= PEAK_HOURS_NEEDED:
                peaks = profile_peaks(profile.sum(axis=0), occ.sum(axis=0))
                entry["peak_hours"] = peaks
                entry["warm_at"] = warm_times(peaks, now, lead)
            if observed >= PEAK_DAYS_NEEDED:
                days = profile_peaks(profile.sum(axis=1), occ.sum(axis=1))
                entry["peak_days"] = [DAY_NAMES[d] for d in days]
        return {
            "hours_observed": complete,
            "hours_needed": {"peak_hours": PEAK_HOURS_NEEDED, "peak_days": PEAK_DAYS_NEEDED},
            "lead_seconds": lead,
            "hour_of_day": [
                {
                    "hour": i,
                    "mean_requests": round(float(hour_sums[i]) / int(hour_seen[i]), 3)
                    if hour_seen[i]
                    else None,
                    "hours_observed": int(hour_seen[i]),
                }
                for i in range(24)
            ],
            "day_of_week": [
                {
                    "day": DAY_NAMES[i],
                    "mean_requests_per_hour": round(float(day_sums[i]) / int(day_seen[i]), 3)
                    if day_seen[i]
                    else None,
                    "hours_observed": int(day_seen[i]),
                }
                for i in range(7)
            ],
            "keys": keys,
        }

    def _trends(
        self, tracker: UsageTracker, now: float, n: int, hours: int, min_confidence: float
    ) -> dict[str, Any]:
        hours = min(hours, self.trends.hours)
        everything = self.trends.trends(now, hours, min_confidence)
        rising = sorted(
            (t for t in everything if t.direction == "rising"), key=lambda t: (-t.slope, t.key)
        )
        falling = sorted(
            (t for t in everything if t.direction == "falling"), key=lambda t: (t.slope, t.key)
        )

        def described(trend: Trend) -> dict[str, Any]:
            out = trend.as_dict()
            where = tracker.url_of(trend.key)
            out["url"] = None if where is None else where[0]
            return out

        return {
            "hours": hours,
            "min_confidence": min_confidence,
            "tracked_keys": self.trends.tracked,
            "keys_with_trend": len(everything),
            "rising": [described(t) for t in rising[:n]],
            "falling": [described(t) for t in falling[:n]],
        }


def analyze_trace(
    events: Iterable[Observed],
    *,
    levels: Sequence[str] = DEFAULT_PRIORITY_LEVELS,
    n: int = 20,
    window: float | None = None,
    lead: float = 600.0,
    tracker: UsageTracker | None = None,
    analyzer: Analyzer | None = None,
) -> dict[str, Any]:
    """The hot-data report for a recorded trace, as of its last event.

    Feeds ``events`` (in time order) through a fresh
    :class:`~warmer.tracker.UsageTracker` and :class:`Analyzer` (or the ones
    given, e.g. built with other sizes) and returns :meth:`Analyzer.report`
    at the last event's time.  Raises ValueError for an empty trace.
    """
    tracker = tracker if tracker is not None else UsageTracker()
    analyzer = analyzer if analyzer is not None else Analyzer(tracker.windows)
    last: float | None = None
    for event in events:
        tracker.observe(event)
        analyzer.observe(event)
        last = event.ts if last is None else max(last, event.ts)
    if last is None:
        raise ValueError("the trace holds no events")
    return analyzer.report(tracker, last, n=n, window=window, levels=levels, lead=lead)
