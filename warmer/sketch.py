"""Small, bounded summaries of a request stream, for the usage tracker.

- :class:`SpaceSaving`: the heaviest items of an unbounded stream in a fixed
  number of counters (top-k, with aging through :meth:`SpaceSaving.decay`).
- :class:`WindowedCountMin`: how often any key was seen in the last ``window``
  seconds, in memory that does not grow with the number of distinct keys.
- :class:`BoundedLru`: a map that forgets its least recently set keys.

All three are pure data structures (DESIGN rule 2): no clock, no I/O; the
windowed sketch is told the time with every call.
"""

from __future__ import annotations

import heapq
import math
import sys
from array import array
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Iterator, Sequence
from fractions import Fraction
from typing import Final, Generic, TypeVar

import numpy as np

_MASK64: Final = (1 << 64) - 1


def _splitmix64(state: int) -> tuple[int, int]:
    """One step of SplitMix64 (Steele et al.): (next state, output)."""
    state = (state + 0x9E3779B97F4A7C15) & _MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return state, z ^ (z >> 31)


def _row_multipliers(n: int) -> tuple[int, ...]:
    """``n`` fixed, odd, well-mixed 64-bit multipliers, one per sketch row."""
    out: list[int] = []
    state = 0x5EED
    for _ in range(n):
        state, value = _splitmix64(state)
        out.append(value | 1)
    return tuple(out)


#: The most rows a :class:`WindowedCountMin` may have.
MAX_DEPTH: Final = 16
# Fixed (not random) so that every sketch of the same width and depth maps a
# key to the same cells: the tracker hashes a key once for all its sketches.
# The randomness comes from ``hash(str)``, which is SipHash with a per-process
# seed, so an outsider cannot aim keys at one cell.
_MULTIPLIERS: Final = _row_multipliers(MAX_DEPTH)


# --------------------------------------------------------------------- Space-Saving


class SpaceSaving:
    """The heaviest items of a stream, in at most ``capacity`` counters.

    Space-Saving (Metwally, Agrawal, El Abbadi, "Efficient Computation of
    Frequent and Top-k Elements in Data Streams", ICDT 2005): a monitored item
    has its counter incremented; an unmonitored one takes over the counter
    with the smallest count ``m`` and starts at ``m + count`` with error ``m``.

    Guarantees, where an item's *true count* is how often it was added, with
    every :meth:`decay` applied to it as to the counters (``floor(c * factor)``):

    - a monitored item's :meth:`estimate` is at least its true count;
    - :meth:`guaranteed` (``estimate - error``) is at most its true count;
    - every item whose true count exceeds ``total() / capacity`` is monitored.
      ``total()`` is the sum of the counters; without decay it is ``N``, the
      number of adds, so this is the classic "every item above ``N/k``".
      After a decay the counters carried over still occupy the summary, so
      the bound involves them: only ``N`` since the last decay is *not* enough
      (an old counter of 50 keeps its slot against a new item seen 3 times).

    Replacement finds the smallest counter through a min-heap with lazy
    updates: incrementing a monitored item leaves its heap entry stale (too
    small); a stale entry that surfaces at the top is pushed back with its
    current count.  Each increment causes at most one such repair, so
    :meth:`add` is O(1) for a monitored item and O(log k) amortised for a
    replacement.  The heap holds exactly one entry per monitored item.
    """

    __slots__ = ("_capacity", "_counts", "_errors", "_heap", "_largest", "_total")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self._capacity = capacity
        self._counts: dict[str, int] = {}
        self._errors: dict[str, int] = {}
        # (count when pushed, item); the stored count never exceeds the
        # item's current count.
        self._heap: list[tuple[int, str]] = []
        self._total = 0
        # The largest counter: only ever replaced by a larger one (the
        # smallest goes when one is taken over), so kept as adds come; decay
        # recomputes it.
        self._largest = 0

    @property
    def capacity(self) -> int:
        """The most counters the summary keeps."""
        return self._capacity

    def add(self, item: str, count: int = 1) -> str | None:
        """Count ``count`` (at least 1) more of ``item``; return the item evicted, if any.

        ``item`` is monitored afterwards in every case.
        """
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        self._total += count
        counts = self._counts
        current = counts.get(item)
        if current is not None:
            current += count
            counts[item] = current
            if current > self._largest:
                self._largest = current
            return None
        heap = self._heap
        if len(counts) < self._capacity:
            # A free counter: the item was unmonitored, so its true count was
            # 0 (before the summary first fills, nothing was evicted; after a
            # decay freed counters, everything unmonitored decayed to 0).
            counts[item] = count
            self._errors[item] = 0
            heapq.heappush(heap, (count, item))
            if count > self._largest:
                self._largest = count
            return None
        while True:
            smallest, victim = heap[0]
            actual = counts[victim]
            if actual == smallest:
                break
            heapq.heapreplace(heap, (actual, victim))
        started = smallest + count
        heapq.heapreplace(heap, (started, item))
        del counts[victim]
        del self._errors[victim]
        counts[item] = started
        self._errors[item] = smallest
        if started > self._largest:
            self._largest = started
        return victim

    def estimate(self, item: str) -> int:
        """An upper bound of ``item``'s true count if monitored; 0 if not."""
        return self._counts.get(item, 0)

    def error(self, item: str) -> int:
        """How much :meth:`estimate` may exceed the true count (0 if unmonitored)."""
        return self._errors.get(item, 0)

    def guaranteed(self, item: str) -> int:
        """A lower bound of ``item``'s true count: ``estimate - error``."""
        return self._counts.get(item, 0) - self._errors.get(item, 0)

    def largest(self) -> int:
        """The largest counter (an upper bound of every :meth:`guaranteed`); 0 when empty."""
        return self._largest

    def guaranteed_items(self) -> list[tuple[str, int]]:
        """(item, :meth:`guaranteed`) of every monitored item, in no particular order."""
        errors = self._errors
        return [(item, count - errors[item]) for item, count in self._counts.items()]

    def top(self, n: int) -> list[tuple[str, int, int]]:
        """The ``n`` largest counters as (item, count, error), count descending.

        Ties are ordered by item, so the answer does not depend on history.
        """
        if n <= 0:
            return []
        errors = self._errors
        best = heapq.nsmallest(n, self._counts.items(), key=lambda kv: (-kv[1], kv[0]))
        return [(item, count, errors[item]) for item, count in best]

    def total(self) -> int:
        """The sum of the counters: the number of adds, as decayed."""
        return self._total

    def decay(self, factor: float) -> list[str]:
        """Multiply every count and error by ``factor`` (0 < factor <= 1).

        Counts round down and errors round up (never above the count), so
        both guarantees keep holding for true counts decayed the same way.
        Counters that reach 0 are dropped; returns the items dropped.
        Exact integer arithmetic (``factor`` as a ratio of integers), so
        repeated decays do not drift.  O(k).
        """
        if not 0.0 < factor <= 1.0:
            raise ValueError(f"factor must be in (0, 1], got {factor}")
        if factor == 1.0:
            return []
        num, den = factor.as_integer_ratio()
        counts: dict[str, int] = {}
        errors: dict[str, int] = {}
        dropped: list[str] = []
        total = 0
        old_errors = self._errors
        for item, count in self._counts.items():
            decayed = count * num // den
            if decayed <= 0:
                dropped.append(item)
                continue
            counts[item] = decayed
            errors[item] = min(-(-old_errors[item] * num // den), decayed)
            total += decayed
        self._counts = counts
        self._errors = errors
        self._total = total
        self._largest = max(counts.values(), default=0)
        self._heap = [(count, item) for item, count in counts.items()]
        heapq.heapify(self._heap)
        return dropped

    def __len__(self) -> int:
        return len(self._counts)

    def __contains__(self, item: object) -> bool:
        return item in self._counts

    def __iter__(self) -> Iterator[str]:
        """The monitored items, in no particular order."""
        return iter(self._counts)


# --------------------------------------------------------------- windowed Count-Min


class WindowedCountMin:
    """Approximate per-key counts over the last ``window`` seconds, in fixed memory.

    A Count-Min sketch (Cormode and Muthukrishnan, 2005) per time slice: a
    ring of slices, each ``window / buckets`` seconds long and each a table of
    ``depth`` rows of ``width`` 64-bit counters.  A key adds to one cell per
    row; its estimate is the smallest of its cells.  Over a window, the
    estimate is the sum of the per-slice estimates (tighter than summing the
    rows first, and still never below the truth).

    The window is approximated to one slice: :meth:`estimate` and
    :meth:`total` sum every slice that overlaps ``[end - window, end]``, i.e.
    the slice of ``end`` and the ``buckets`` before it, where ``end`` is the
    later of the query's ``now`` and the greatest time any add was given (the
    sketch's clock only moves forward).  Nothing added in the ``window``
    seconds before ``end`` is ever missed; events up to one slice older than
    that may still be counted.  The ring therefore holds ``buckets + 1``
    slices.  A lagging query (``now`` before the greatest add time) reads the
    window ending at the greatest add time, not the one ending at its
    ``now``: the slices further back have been reused already, and keeping
    them for a clock that may lag by any amount would take unbounded memory.

    Error: with ``N`` adds in the window, an estimate exceeds the truth by
    more than ``e * N / width`` with probability at most ``exp(-depth)``.  (The
    sum of per-slice minimums is at most the minimum over rows of the row
    sums, which is a plain Count-Min estimate over the window's ``N`` adds.)

    Time comes from the caller.  A slice is zeroed lazily when the ring
    advances onto it.  An add with a time before the current slice (clocks
    of several workers, a late event) counts in the current slice.

    Rows are indexed from one ``hash(key)`` (SipHash, cached on the str
    object) multiplied by a fixed odd multiplier per row; the high bits of the
    64-bit product pick the column.  :meth:`cells` exposes the result so a
    caller with several sketches of the same ``width`` and ``depth`` hashes a
    key once and calls :meth:`add_cells`/:meth:`estimate_cells` on each.
    """

    __slots__ = (
        "_buckets",
        "_depth",
        "_head",
        "_head_end",
        "_head_table",
        "_ids",
        "_live",
        "_live_newest",
        "_ring",
        "_rows",
        "_shift",
        "_slice",
        "_tables",
        "_width",
        "_window",
        "_zero",
    )

    def __init__(self, window: float, buckets: int = 12, width: int = 4096, depth: int = 4) -> None:
        if not window > 0 or math.isinf(window):
            raise ValueError(f"window must be a positive number of seconds, got {window}")
        if buckets < 1:
            raise ValueError(f"buckets must be at least 1, got {buckets}")
        if width < 1:
            raise ValueError(f"width must be at least 1, got {width}")
        if not 1 <= depth <= MAX_DEPTH:
            raise ValueError(f"depth must be between 1 and {MAX_DEPTH}, got {depth}")
        self._window = float(window)
        self._buckets = buckets
        self._width = width
        self._depth = depth
        # ``window / buckets``, rounded up if need be: if ``buckets`` slices
        # were a hair shorter than the window, an event exactly a window old
        # could fall in the slice before the oldest one read, and be missed.
        length = self._window / buckets
        while Fraction(length) * buckets < Fraction(self._window):
            length = math.nextafter(length, math.inf)
        self._slice = length
        self._ring = buckets + 1
        self._rows = tuple((_MULTIPLIERS[r], r * width) for r in range(depth))
        # A power-of-two width takes the product's top log2(width) bits (a
        # width of 1 shifts out all 64: column 0); 0 means "not a power of two".
        self._shift = 65 - width.bit_length() if width & (width - 1) == 0 else 0
        self._zero = array("q", bytes(8 * depth * width))
        self._tables = [array("q", self._zero) for _ in range(self._ring)]
        # The absolute slice number (time // slice length) each ring position
        # holds; a position holding an older slice than the window reaches is
        # stale and is skipped until the ring advances onto it and zeroes it.
        self._ids = [-(1 << 62)] * self._ring
        self._head = -(1 << 62)
        # The table of the head slice, and a time at or before the head
        # slice's end: adds before it need no slice arithmetic.
        self._head_table = self._tables[0]
        self._head_end = -math.inf
        # estimate_cells: the tables of the slices the window ending in slice
        # ``_live_newest`` covers (None: not known).
        self._live: tuple[array[int], ...] = ()
        self._live_newest: int | None = None

    @property
    def window(self) -> float:
        """The window length in seconds."""
        return self._window

    @property
    def slice_seconds(self) -> float:
        """The length of one time slice: the window's granularity.

        ``window / buckets``, one ulp longer where the division rounded down,
        so that ``buckets`` slices always span the whole window.
        """
        return self._slice

    @property
    def width(self) -> int:
        """Counters per row."""
        return self._width

    @property
    def depth(self) -> int:
        """Rows per slice."""
        return self._depth

    @property
    def nbytes(self) -> int:
        """Bytes of counter storage: fixed at construction, whatever is added."""
        return sum(t.buffer_info()[1] * t.itemsize for t in self._tables)

    def cells(self, key: str) -> tuple[int, ...]:
        """The flat table index of ``key``'s counter in each row."""
        x = hash(key) & _MASK64
        shift = self._shift
        if shift:  # a power-of-two width: the top bits of the product
            if self._depth == 4:  # the tracker's depth, unrolled
                (m0, b0), (m1, b1), (m2, b2), (m3, b3) = self._rows
                return (
                    ((x * m0) & _MASK64) >> shift | b0,
                    ((x * m1) & _MASK64) >> shift | b1,
                    ((x * m2) & _MASK64) >> shift | b2,
                    ((x * m3) & _MASK64) >> shift | b3,
                )
            return tuple([((x * m) & _MASK64) >> shift | base for m, base in self._rows])
        width = self._width  # else scaled into [0, width) ("fastrange", Lemire)
        return tuple([(((x * m) & _MASK64) * width >> 64) + base for m, base in self._rows])

    def add(self, key: str, now: float, count: int = 1) -> None:
        """Count ``count`` (at least 0) occurrences of ``key`` at time ``now``."""
        if count < 0:
            raise ValueError(f"count must not be negative, got {count}")
        self.add_cells(self.cells(key), now, count)

    def add_cells(self, cells: Sequence[int], now: float, count: int = 1) -> None:
        """:meth:`add` for a key already hashed with :meth:`cells` (``count`` not
        checked: it must not be negative, nor in :meth:`add_many`)."""
        if now >= self._head_end:
            self._advance(int(now // self._slice))
        table = self._head_table
        for cell in cells:
            table[cell] += count

    def add_many(self, adds: Iterable[tuple[Sequence[int], int]], now: float) -> None:
        """:meth:`add_cells` for many (cells, count) pairs at the same time ``now``."""
        if now >= self._head_end:
            self._advance(int(now // self._slice))
        table = self._head_table
        if self._depth == 4:  # the tracker's depth, unrolled
            for (a, b, c, d), count in adds:
                table[a] += count
                table[b] += count
                table[c] += count
                table[d] += count
            return
        for cells, count in adds:
            for cell in cells:
                table[cell] += count

    def estimate(self, key: str, now: float) -> int:
        """How often ``key`` was added in the window ending at ``now`` (never less).

        If ``now`` is before the greatest time an add was given (a lagging
        clock), the window ends at that time instead (see the class docs).
        """
        return self.estimate_cells(self.cells(key), now)

    def estimate_cells(self, cells: Sequence[int], now: float) -> int:
        """:meth:`estimate` for a key already hashed with :meth:`cells`."""
        # self._window_tables(now), inlined: a miss-reactive strategy asks at every miss.
        newest = max(int(now // self._slice), self._head)
        if newest != self._live_newest:
            self._window_tables(now)
        result = 0
        if len(cells) == 4:  # the tracker's depth, unrolled
            # Counters are never negative (counts added are not), so a row
            # at 0 makes the slice's minimum 0: most are, in a sparse slice.
            a, b, c, d = cells
            for table in self._live:
                m = table[a]
                if m:
                    x = table[b]
                    if x < m:
                        m = x
                    if m:
                        x = table[c]
                        if x < m:
                            m = x
                        if m:
                            x = table[d]
                            if x < m:
                                m = x
                            result += m
            return result
        for table in self._live:
            result += min(map(table.__getitem__, cells))
        return result

    def estimate_many(self, cells: Sequence[Sequence[int]], now: float) -> list[int]:
        """:meth:`estimate_cells` of many keys at once (numpy: for a ranking of thousands)."""
        if not cells:
            return []
        rows = np.array(cells, dtype=np.intp)
        result = np.zeros(len(rows), dtype=np.int64)
        for table in self._window_tables(now):
            result += np.frombuffer(table, dtype=np.int64)[rows].min(axis=1)
        counts: list[int] = result.tolist()
        return counts

    def total(self, now: float) -> int:
        """Everything added in the window ending at ``now`` (exact, slice-granular).

        The window ends at the greatest add time if ``now`` is before it, as
        for :meth:`estimate`.
        """
        oldest, newest = self._span(now)
        width = self._width
        # Every add puts its count in exactly one cell of each row, so a
        # slice's first row sums to everything added in that slice.
        return sum(
            sum(memoryview(self._tables[pos])[:width])
            for pos, slice_id in enumerate(self._ids)
            if oldest <= slice_id <= newest
        )

    def error_bound(self, now: float) -> int:
        """``ceil(e * N / width)`` for the window's ``N``: the likely over-estimate limit.

        An estimate exceeds the true count by more than this with probability
        at most ``exp(-depth)``.
        """
        return math.ceil(math.e * self.total(now) / self._width)

    def _window_tables(self, now: float) -> tuple[array[int], ...]:
        """The tables of the slices :meth:`_span` covers, kept between calls:
        they change only when the span or the head moves."""
        newest = max(int(now // self._slice), self._head)
        if newest != self._live_newest:
            oldest = newest - self._buckets
            tables = self._tables
            self._live = tuple(
                tables[pos]
                for pos, slice_id in enumerate(self._ids)
                if oldest <= slice_id <= newest
            )
            self._live_newest = newest
        return self._live

    def _span(self, now: float) -> tuple[int, int]:
        """The oldest and newest slice numbers the window ending at ``now`` covers."""
        # A query time before the newest slice (a lagging clock) reads as the
        # newest slice, the same way a late add counts in it.
        newest = max(int(now // self._slice), self._head)
        return newest - self._buckets, newest

    def _advance(self, current: int) -> None:
        """Move the head to slice ``current``, zeroing the positions it passes."""
        if current > self._head:
            ring = self._ring
            zero = self._zero
            for slice_id in range(max(self._head + 1, current - ring + 1), current + 1):
                pos = slice_id % ring
                self._tables[pos][:] = zero
                self._ids[pos] = slice_id
            self._head = current
            self._head_table = self._tables[current % ring]
            self._live_newest = None  # the slices a window covers moved
        # A few ulps early, so that rounding of the product can only cause a
        # needless call here, never an add past the real slice end.
        boundary = (self._head + 1) * self._slice
        self._head_end = boundary - abs(boundary) * 4 * sys.float_info.epsilon


def add_to_all(
    sketches: Sequence[WindowedCountMin], adds: Sequence[tuple[Sequence[int], int]], now: float
) -> None:
    """:meth:`WindowedCountMin.add_many` of ``adds`` at ``now`` on each of
    ``sketches`` (of one width and depth: the cells are theirs), in one pass."""
    tables = []
    for sketch in sketches:
        if now >= sketch._head_end:
            sketch._advance(int(now // sketch._slice))
        tables.append(sketch._head_table)
    if len(tables) == 2 and sketches[0]._depth == 4:  # the tracker's shape, unrolled
        first, second = tables
        for (a, b, c, d), count in adds:
            first[a] += count
            first[b] += count
            first[c] += count
            first[d] += count
            second[a] += count
            second[b] += count
            second[c] += count
            second[d] += count
        return
    for cells, count in adds:
        for table in tables:
            for cell in cells:
                table[cell] += count


# ----------------------------------------------------------------------- bounded LRU

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedLru(Generic[K, V]):
    """A map of at most ``max_items`` entries that forgets the least recently set.

    Only :meth:`set` makes a key recent; :meth:`get` is a peek, so reading
    (a control API listing, a query) does not change what is kept.
    """

    __slots__ = ("_data", "_max")

    def __init__(self, max_items: int) -> None:
        if max_items < 1:
            raise ValueError(f"max_items must be at least 1, got {max_items}")
        self._max = max_items
        self._data: OrderedDict[K, V] = OrderedDict()

    @property
    def max_items(self) -> int:
        """The most entries kept."""
        return self._max

    def get(self, key: K, default: V | None = None) -> V | None:
        """The value for ``key``, or ``default``; does not make ``key`` recent."""
        return self._data.get(key, default)

    def set(self, key: K, value: V) -> tuple[K, V] | None:
        """Store ``value`` as the most recent entry; return the entry evicted, if any."""
        data = self._data
        if key in data:
            data[key] = value
            data.move_to_end(key)
            return None
        data[key] = value
        if len(data) > self._max:
            return data.popitem(last=False)
        return None

    def pop(self, key: K, default: V | None = None) -> V | None:
        """Remove ``key`` and return its value, or ``default`` if absent."""
        return self._data.pop(key, default)

    def items(self) -> Iterator[tuple[K, V]]:
        """(key, value) pairs, least recently set first."""
        return iter(self._data.items())

    def __len__(self) -> int:
        return len(self._data)

    def __iter__(self) -> Iterator[K]:
        """Keys, least recently set first."""
        return iter(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data
