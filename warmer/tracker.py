"""What the traffic looks like: the usage tracker every warming decision reads.

:class:`UsageTracker` watches every access event (through the
:class:`~warmer.model.Observed` protocol) and answers, in bounded memory:

- how often a key was asked for, and how often the cache could not answer it
  fresh, in each configured window (sliding Count-Min sketches);
- which keys are hot (a Space-Saving top-k summary, aged so that "hot" means
  recently hot);
- which URL and host a key stands for (the last ``max_known_urls`` keys seen),
  so warm requests can be built from keys and globs matched against paths;
- requests, hits and misses per hour for the last 8 days, traffic per hour of
  the week, and per hour of the week for each key in the top-k summary.

Sans-I/O (DESIGN rule 2): time is the events' ``ts`` and the ``now`` each
query takes; nothing here reads a clock, sleeps or awaits.

Outcomes: ``hit`` and ``revalidated`` are hits; ``miss`` and ``stale`` are
misses (a stale answer means the cache could not answer fresh); ``bypass``
(not cacheable, never a warm target) counts only in :meth:`~UsageTracker.totals`.
Any other outcome counts as a cacheable request that is neither.

Batching: ``observe`` sits behind the proxy's hit path, so it only counts the
event into a *batch*: a dict of the keys seen since the batch began (a key
new to the batch is also remembered among the known URLs then).  A batch
covers at most one finest time slice (``min(windows) / 12``), one clock hour
and one decay interval; when an event falls past its end, when it holds
``BATCH_KEYS`` keys, or when a query comes, it is folded into the sketches,
the top-k summary and the hourly counters, once per distinct key.  A hot key
seen a thousand times in a slice costs one dict increment per event and one
update per slice.
Queries see every event observed before them.  An event older than the
current batch (a lagging clock) counts as part of it, in its slice and hour.
"""

from __future__ import annotations

import math
import sys
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from warmer.model import Observed
from warmer.sketch import BoundedLru, SpaceSaving, WindowedCountMin, add_to_all

#: Time slices per window: a window's granularity is 1/12 of its length.
SLICES_PER_WINDOW: Final = 12
#: Absolute hours kept by the hourly ring (8 days).
HOURS_KEPT: Final = 192
HOURS_PER_WEEK: Final = 168
#: Every ``decay_interval`` of event time, top-k counts are multiplied by this.
DECAY_FACTOR: Final = 0.5
#: Distinct keys a batch holds before it is folded in early.
BATCH_KEYS: Final = 1024
# Hour of the week (Monday 00:00 UTC = 0) of the epoch: 1970-01-01 was a Thursday.
_EPOCH_HOUR_OF_WEEK: Final = 3 * 24

# Upper estimates of what one entry costs besides its strings (CPython 3.11,
# 64-bit; measured with tracemalloc under churn, rounded up generously); see
# UsageTracker.memory_bound.
_KNOWN_ENTRY_BYTES: Final = 256  # OrderedDict slot and node, (url, host) tuple
_TOP_KEY_BYTES: Final = 3072  # summary slots, heap tuple, ints, cells, 168-counter profile
_BATCH_ENTRY_BYTES: Final = 256  # a dict slot and a [requests, misses] list
_FIXED_BYTES: Final = 64 * 1024  # dict and object headers
_INT_BYTES: Final = 40  # a list slot and an int object beyond the small-int cache
_STR_HEADER_BYTES: Final = 80  # sys.getsizeof of a str is at most this + 4 per character


@dataclass(frozen=True, slots=True)
class HotKey:
    """One hot key, with the URL and host to warm it by."""

    key: str
    url: str
    host: str
    #: Requests counted: the windowed estimate when a window was asked for,
    #: else the aged top-k count.
    count: int
    #: How much ``count`` may over-state the truth: the top-k error (a hard
    #: bound) without a window; with one, the Count-Min bound e·N/width
    #: (exceeded with probability below exp(-depth)), capped at ``count``.
    error: int


@dataclass(frozen=True, slots=True)
class HourCount:
    """Traffic in one clock hour (UTC)."""

    start: float  # epoch seconds of the hour's start
    requests: int  # cacheable requests (bypass excluded)
    hits: int
    misses: int


@dataclass(frozen=True, slots=True)
class TrackerTotals:
    """Counts since the tracker started."""

    requests: int  # every request observed, bypass included
    hits: int
    misses: int
    bypass: int


class _TopKey:
    """What is kept for a key while it is in the top-k summary."""

    __slots__ = ("cells", "first_count", "first_how", "profile")

    def __init__(self, cells: tuple[int, ...], how: int, count: int) -> None:
        self.cells = cells  # its sketch cells, so a hot key is hashed once
        # Requests per hour of the week.  Most keys that enter the summary
        # leave it at the next replacement (a long tail of one-off URLs), so
        # the 168 counters are allocated only when a key is seen again.
        self.profile: array[int] | None = None
        self.first_how = how
        self.first_count = count

    def count(self, how: int, count: int) -> None:
        profile = self.profile
        if profile is None:
            profile = self.profile = array("q", bytes(8 * HOURS_PER_WEEK))
            profile[self.first_how] += self.first_count
        profile[how] += count

    def week(self) -> list[int]:
        if self.profile is not None:
            return list(self.profile)
        week = [0] * HOURS_PER_WEEK
        week[self.first_how] = self.first_count
        return week


class UsageTracker:
    """Bounded statistics of the request stream for the warming strategies.

    ``windows``: the sliding windows (seconds) counts and misses are kept for;
    queries must name one of them.  ``top_k``: keys in the hot-key summary.
    ``max_known_urls``: keys whose URL and host are remembered (least recently
    seen forgotten first).  ``decay_interval``: every this many seconds of
    event time the top-k counts are halved, so a key that was hot long ago
    gives way to one hot now.  ``sketch_width``/``sketch_depth``: Count-Min
    size (over-estimate below e·N/width with probability 1 - exp(-depth)).
    ``max_name_bytes``: an event whose key, URL and host strings together
    take more (``sys.getsizeof``) is counted in the windows and totals but
    never remembered by name, so it can be neither hot nor known; this is what
    makes :meth:`memory_bound` a bound.
    """

    def __init__(
        self,
        windows: Sequence[float] = (60, 3600, 86400),
        top_k: int = 1000,
        max_known_urls: int = 100_000,
        decay_interval: float = 3600.0,
        sketch_width: int = 4096,
        sketch_depth: int = 4,
        *,
        max_name_bytes: int = 2048,
    ) -> None:
        unique = sorted({float(w) for w in windows})
        if not unique:
            raise ValueError("windows must name at least one window")
        if any(not w > 0 or math.isinf(w) for w in unique):
            raise ValueError(f"windows must be positive seconds, got {list(windows)}")
        if not decay_interval > 0 or math.isinf(decay_interval):
            raise ValueError(f"decay_interval must be positive seconds, got {decay_interval}")
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        if max_known_urls < 1:
            raise ValueError(f"max_known_urls must be at least 1, got {max_known_urls}")
        if max_name_bytes < 1:
            raise ValueError(f"max_name_bytes must be positive, got {max_name_bytes}")
        self._windows = tuple(unique)
        self._access = {
            w: WindowedCountMin(w, SLICES_PER_WINDOW, sketch_width, sketch_depth) for w in unique
        }
        self._missed = {
            w: WindowedCountMin(w, SLICES_PER_WINDOW, sketch_width, sketch_depth) for w in unique
        }
        self._access_list = tuple(self._access.values())
        self._missed_list = tuple(self._missed.values())
        # All sketches share width and depth, so any of them hashes for all.
        self._hasher = self._access_list[0]
        self._summary = SpaceSaving(top_k)
        self._known: BoundedLru[str, tuple[str, str]] = BoundedLru(max_known_urls)
        # Exactly the keys in the summary.
        self._top: dict[str, _TopKey] = {}
        self._decay_interval = float(decay_interval)
        self._period: int | None = None
        self._max_name_bytes = max_name_bytes
        # Names of at most this many characters in all fit whatever their
        # kind (a str takes at most _STR_HEADER_BYTES + 4 bytes a character,
        # unless a deprecated C API cached a wchar_t copy in it: not so for
        # the names of requests), so most events are checked with len()
        # instead of sys.getsizeof(), as SequenceModel does.
        self._short_names = max(0, (max_name_bytes - 3 * _STR_HEADER_BYTES) // 4)

        # The batch (see the module docstring): key -> [requests, misses].
        self._slice = self._access_list[0].slice_seconds
        self._batch: dict[str, list[int]] = {}
        self._batch_end = -math.inf  # the first event starts a batch
        self._batch_ts = -math.inf  # the latest event time in the batch
        self._batch_hour = 0
        self._batch_requests = 0
        self._batch_hits = 0
        self._batch_misses = 0

        self._hour_ids = [-1] * HOURS_KEPT
        self._hour_requests = [0] * HOURS_KEPT
        self._hour_hits = [0] * HOURS_KEPT
        self._hour_misses = [0] * HOURS_KEPT
        self._week = [0] * HOURS_PER_WEEK
        self._requests = 0  # cacheable, folded in
        self._hits = 0
        self._misses = 0
        self._bypass = 0

    # ------------------------------------------------------------------ settings

    @property
    def windows(self) -> tuple[float, ...]:
        """The windows (seconds, ascending) that :meth:`count` and :meth:`misses` accept."""
        return self._windows

    @property
    def top_k(self) -> int:
        """The most keys the hot-key summary holds."""
        return self._summary.capacity

    @property
    def max_known_urls(self) -> int:
        """The most keys whose URL and host are remembered."""
        return self._known.max_items

    @property
    def summary_size(self) -> int:
        """Keys currently in the hot-key summary (at most :attr:`top_k`)."""
        self._fold()
        return len(self._summary)

    # ------------------------------------------------------------------- observe

    def observe(self, event: Observed) -> None:
        """Account for one access event: O(1), no I/O, usually one dict update."""
        outcome = event.outcome
        if outcome == "bypass":
            self._bypass += 1
            return
        ts = event.ts
        if ts >= self._batch_end:
            self._next_batch(ts)
        elif ts > self._batch_ts:
            self._batch_ts = ts
        self._batch_requests += 1
        if outcome == "miss" or outcome == "stale":
            miss = 1
            self._batch_misses += 1
        else:
            miss = 0
            if outcome == "hit" or outcome == "revalidated":
                self._batch_hits += 1
        key = event.key
        batch = self._batch
        entry = batch.get(key)
        if entry is not None:
            entry[0] += 1
            entry[1] += miss
            return
        url = event.url
        host = event.host
        if (
            len(key) + len(url) + len(host) > self._short_names
            and sys.getsizeof(key) + sys.getsizeof(url) + sys.getsizeof(host) > self._max_name_bytes
        ):
            # Too long to remember by name: counted in the sketches only.
            cells = self._hasher.cells(key)
            for sketch in self._access_list:
                sketch.add_cells(cells, ts)
            if miss:
                for sketch in self._missed_list:
                    sketch.add_cells(cells, ts)
            return
        batch[key] = [1, miss]
        # Remembered at once (once per batch): url_of answers without a fold.
        self._known.set(key, (url, host))
        if len(batch) >= BATCH_KEYS:
            self._fold_keys()

    def _next_batch(self, ts: float) -> None:
        """Fold the batch in, age the summary if a decay interval passed, start anew."""
        self._fold()
        period = int(ts // self._decay_interval)
        if self._period is None:
            self._period = period
        elif period > self._period:
            elapsed = period - self._period
            self._period = period
            # Past 64 halvings every count is 0; a larger exponent would
            # underflow the factor to 0.0, which decay() rightly refuses.
            for dropped in self._summary.decay(DECAY_FACTOR ** min(elapsed, 64)):
                del self._top[dropped]
        hour = int(ts // 3600.0)
        self._batch_hour = hour
        self._batch_ts = ts
        self._batch_end = min(
            (int(ts // self._slice) + 1) * self._slice,
            (hour + 1) * 3600.0,
            (period + 1) * self._decay_interval,
        )

    def _fold(self) -> None:
        """Fold the whole batch into the lasting state."""
        self._fold_keys()
        requests = self._batch_requests
        if not requests:
            return
        hits = self._batch_hits
        misses = self._batch_misses
        self._batch_requests = self._batch_hits = self._batch_misses = 0
        self._requests += requests
        self._hits += hits
        self._misses += misses
        hour = self._batch_hour
        self._week[(hour + _EPOCH_HOUR_OF_WEEK) % HOURS_PER_WEEK] += requests
        pos = hour % HOURS_KEPT
        held = self._hour_ids[pos]
        if held < hour:
            self._hour_ids[pos] = held = hour
            self._hour_requests[pos] = self._hour_hits[pos] = self._hour_misses[pos] = 0
        # A slot holding a newer hour: a virtual clock went back over 8 days.
        if held == hour:
            self._hour_requests[pos] += requests
            self._hour_hits[pos] += hits
            self._hour_misses[pos] += misses

    def _fold_keys(self) -> None:
        """Fold the batch's keys into the sketches and the top-k summary."""
        batch = self._batch
        if not batch:
            return
        now = self._batch_ts
        how = (self._batch_hour + _EPOCH_HOUR_OF_WEEK) % HOURS_PER_WEEK
        top_keys = self._top
        hasher = self._hasher
        access = self._access_list
        missed = self._missed_list
        summary = self._summary
        adds: list[tuple[tuple[int, ...], int]] = []
        missed_adds: list[tuple[tuple[int, ...], int]] = []
        for key, (count, misses) in batch.items():
            top = top_keys.get(key)
            cells = top.cells if top is not None else hasher.cells(key)
            adds.append((cells, count))
            if misses:
                missed_adds.append((cells, misses))
            evicted = summary.add(key, count)
            if evicted is not None:
                del top_keys[evicted]
            if top is None:
                top_keys[key] = _TopKey(cells, how, count)
            elif top.profile is not None:
                top.profile[how] += count  # what top.count does once it has a profile
            else:
                top.count(how, count)
        add_to_all(access, adds, now)
        add_to_all(missed, missed_adds, now)
        batch.clear()

    # ------------------------------------------------------------------- queries

    def count(self, key: str, window: float, now: float) -> int:
        """Requests for ``key`` (bypass excluded) in the ``window`` seconds to ``now``.

        Never below the truth; see :class:`~warmer.sketch.WindowedCountMin`
        for the over-estimate and the one-slice granularity.
        """
        sketch = self._sketch(self._access, window)
        self._fold_keys()
        return sketch.estimate_cells(self._cells(key), now)

    def misses(self, key: str, window: float, now: float) -> int:
        """Misses (``miss`` or ``stale``) of ``key`` in the ``window`` seconds to ``now``."""
        # A miss-reactive strategy asks at every miss: the helpers are inlined.
        # The batch is not folded for it (a fold per miss would undo the
        # batching): its misses of ``key``, all in the current slice, are
        # added to the sketch's estimate instead.
        sketch = self._missed.get(window)
        if sketch is None:
            sketch = self._sketch(self._missed, window)  # raises
        top = self._top.get(key)
        found = sketch.estimate_cells(
            top.cells if top is not None else self._hasher.cells(key), now
        )
        pending = self._batch.get(key)
        return found + pending[1] if pending is not None else found

    def hot(self, n: int, now: float, window: float | None = None) -> list[HotKey]:
        """The ``n`` hottest keys with a known URL, count descending (ties by key).

        Without ``window``: ranked by the aged top-k count.  With one: the keys
        of the top-k summary ranked by their count in that window (keys not
        asked for in it are left out).  A key hot only within a short window
        but never heavy enough to enter the summary is not seen here.
        """
        if n < 0:
            raise ValueError(f"n must not be negative, got {n}")
        sketch = None if window is None else self._sketch(self._access, window)
        self._fold_keys()
        known = self._known
        if sketch is None:
            out: list[HotKey] = []
            if n == 0:
                return out
            for key, count, error in self._summary.top(len(self._summary)):
                where = known.get(key)
                if where is not None:
                    out.append(HotKey(key, where[0], where[1], count, error))
                    if len(out) == n:
                        break
            return out
        bound = sketch.error_bound(now)
        known_get = known.get
        tops = list(self._top.items())
        counts = sketch.estimate_many([top.cells for _, top in tops], now)
        # (-count, key, url, host): ranked as the keys (unique) break ties,
        # and a HotKey made only for those returned.
        ranked: list[tuple[int, str, str, str]] = []
        for (key, _), count in zip(tops, counts, strict=True):
            where = known_get(key) if count > 0 else None
            if where is not None:
                ranked.append((-count, key, where[0], where[1]))
        ranked.sort()
        return [
            HotKey(key, url, host, -negative, min(bound, -negative))
            for negative, key, url, host in ranked[:n]
        ]

    def known(self) -> list[tuple[str, str, str]]:
        """(key, url, host) of every remembered key, least recently seen first.

        A snapshot: observing while the caller iterates is safe.
        """
        self._fold_keys()
        return [(key, url, host) for key, (url, host) in self._known.items()]

    def url_of(self, key: str) -> tuple[str, str] | None:
        """(url, host) of ``key`` if it is remembered."""
        self._fold_keys()
        return self._known.get(key)

    def hourly(self, now: float, hours: int = 24) -> list[HourCount]:
        """The last ``hours`` clock hours up to the one holding ``now``, oldest first.

        Hours without traffic (or older than the ring keeps) are zeros.
        """
        if not 1 <= hours <= HOURS_KEPT:
            raise ValueError(f"hours must be between 1 and {HOURS_KEPT}, got {hours}")
        self._fold()
        last = int(now // 3600.0)
        out: list[HourCount] = []
        for hour in range(last - hours + 1, last + 1):
            pos = hour % HOURS_KEPT
            if self._hour_ids[pos] == hour:
                requests = self._hour_requests[pos]
                out.append(
                    HourCount(hour * 3600.0, requests, self._hour_hits[pos], self._hour_misses[pos])
                )
            else:
                out.append(HourCount(hour * 3600.0, 0, 0, 0))
        return out

    def hour_of_week(self) -> list[int]:
        """Cacheable requests per UTC hour of the week since start (Monday 00:00 = 0)."""
        self._fold()
        return list(self._week)

    def key_hour_of_week(self, key: str) -> list[int] | None:
        """``key``'s requests per UTC hour of the week, if it is in the top-k summary.

        Counted from when the key last entered the summary (not aged); None
        for a key outside it, whose profile is not kept.
        """
        self._fold_keys()
        top = self._top.get(key)
        return None if top is None else top.week()

    def totals(self) -> TrackerTotals:
        """Requests (bypass included), hits, misses and bypassed requests since start."""
        return TrackerTotals(
            self._requests + self._batch_requests + self._bypass,
            self._hits + self._batch_hits,
            self._misses + self._batch_misses,
            self._bypass,
        )

    def memory_bound(self) -> int:
        """An upper estimate, in bytes, of what this tracker can ever hold.

        ``fixed + top_k * (TOP + B) + max_known_urls * (KNOWN + B)
        + BATCH_KEYS * (BATCH + B)``, where:

        - ``fixed``: the counter tables of the ``2 * len(windows)`` sketches
          (``(12 + 1) * depth * width * 8`` bytes each), the hourly ring and
          week totals (``(4 * 192 + 168) * 40``) and 64 KiB of headers;
        - ``B`` = ``max_name_bytes``: the most the key, URL and host strings of
          one remembered entry take (longer ones are never remembered);
        - ``TOP`` = 3072: one top-k key's summary slots, heap entry, cached
          sketch cells and 168-counter hour-of-week profile; its key string
          is counted in ``B`` again, as it need not be the known map's object;
        - ``KNOWN`` = 256: one known-URL map slot, node and (url, host) tuple;
        - ``BATCH`` = 256: one batch entry (see the module docstring).

        The per-entry constants are CPython 3.11 64-bit costs measured with
        tracemalloc, rounded up.  Real use is usually far below: the bound
        assumes every remembered name is as long as allowed.
        """
        sketches = sum(s.nbytes for s in (*self._access_list, *self._missed_list))
        rings = (4 * HOURS_KEPT + HOURS_PER_WEEK) * _INT_BYTES
        name = self._max_name_bytes
        return (
            sketches
            + rings
            + _FIXED_BYTES
            + self.top_k * (_TOP_KEY_BYTES + name)
            + self.max_known_urls * (_KNOWN_ENTRY_BYTES + name)
            + BATCH_KEYS * (_BATCH_ENTRY_BYTES + name)
        )

    # ------------------------------------------------------------------- helpers

    def _cells(self, key: str) -> tuple[int, ...]:
        top = self._top.get(key)
        return top.cells if top is not None else self._hasher.cells(key)

    def _sketch(self, sketches: dict[float, WindowedCountMin], window: float) -> WindowedCountMin:
        sketch = sketches.get(window)
        if sketch is None:
            allowed = ", ".join(f"{w:g}" for w in self._windows)
            raise ValueError(f"unknown window {window!r}: allowed windows are {allowed} seconds")
        return sketch
