"""Who asks: clients, their activity segments and what each segment asks for.

:class:`SegmentTracker` follows clients by an id the caller chooses (a
configured header's value or the peer address: the events' ``client``) and
answers, in bounded memory:

- the heaviest clients, each with requests, hits, misses, first and last
  seen and its most requested keys (a Space-Saving summary of clients, a
  small one of keys per client);
- how clients split into *heavy*, *regular* and *occasional* segments, each
  with its share of requests, hit ratio, distinct clients and top keys.

The segment rule adapts to the traffic: with ``mean`` the requests per
client, a client is *regular* with at least ``regular = max(2, mean)``
requests, *heavy* with at least ``heavy_factor * regular``, *occasional*
below (a client seen once is never more than occasional).  More traffic
from the same clients raises the mean and the thresholds with it, so the
segments describe the shape of the population, not a fixed request count.
Heavy and regular segments are made of tracked clients (Space-Saving keeps
every client above ``requests / max_clients``, so when no more than
``max_clients`` distinct clients are active none is missed); the occasional
segment is everything else: the totals minus the other two.

Counts age: every ``decay_interval`` seconds of event time every count is
halved (Space-Saving's :meth:`~warmer.sketch.SpaceSaving.decay`), so "heavy"
means heavy lately; distinct clients are those seen in the current and the
previous interval.  The mean is aged alike: requests (as halved) over
clients, a client seen only in the previous interval counting one half.

Only cacheable outcomes count (``hit``/``revalidated`` are hits,
``miss``/``stale`` misses); others are ignored.  Sans-I/O (DESIGN rule 2).
"""

from __future__ import annotations

import heapq
import math
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import numpy as np

from warmer.model import Observed
from warmer.sketch import SpaceSaving

_MASK64: Final = (1 << 64) - 1
_HITS: Final = frozenset({"hit", "revalidated"})
_MISSES: Final = frozenset({"miss", "stale"})
#: Segment names, heaviest first.
SEGMENTS: Final = ("heavy", "regular", "occasional")

# Upper estimates of one entry's cost besides its strings (CPython 3.11,
# 64-bit; measured with tracemalloc, rounded up); see SegmentTracker.memory_bound.
_CLIENT_BYTES: Final = 1024  # summary slots and heap entry, record, its key summary
_KEY_COUNTER_BYTES: Final = 256  # one Space-Saving counter: dict slots, heap tuple, ints
_BATCH_ENTRY_BYTES: Final = 768  # a batch list with its key dict, or one more dict slot
_FIXED_BYTES: Final = 16 * 1024
_STR_HEADER_BYTES: Final = 80  # sys.getsizeof of a str is at most this + 4 per character


# ---------------------------------------------------------------- HyperLogLog


class HyperLogLog:
    """How many distinct strings a stream held, in ``2 ** precision`` bytes.

    HyperLogLog (Flajolet, Fusy, Gandouet, Meunier, 2007) with linear
    counting for small cardinalities: relative standard error about
    ``1.04 / sqrt(2 ** precision)`` (1.6 % at the default 12).  Items are
    hashed with ``hash(str)`` (SipHash, cached on the string, seeded per
    process), so estimates are comparable only within one process.

    :meth:`cell` and :meth:`add_cell` let a caller hash an item once for
    several counters of the same precision; :meth:`union` estimates the
    distinct items of several counters together.
    """

    __slots__ = ("_bits", "_mask", "_precision", "_registers")

    def __init__(self, precision: int = 12) -> None:
        if not 4 <= precision <= 16:
            raise ValueError(f"precision must be between 4 and 16, got {precision}")
        self._precision = precision
        self._bits = 64 - precision  # hash bits left after the register index
        self._mask = (1 << self._bits) - 1
        self._registers = bytearray(1 << precision)

    @property
    def precision(self) -> int:
        """log2 of the number of registers."""
        return self._precision

    @property
    def nbytes(self) -> int:
        """Bytes of register storage: fixed at construction."""
        return len(self._registers)

    def cell(self, item: str) -> tuple[int, int]:
        """(register, rank) of ``item``: where and what :meth:`add` would record."""
        return self.cell_of_hash(hash(item))

    def cell_of_hash(self, item_hash: int) -> tuple[int, int]:
        """:meth:`cell` of an item by its ``hash()``, for a caller that keeps hashes."""
        x = item_hash & _MASK64
        bits = self._bits
        return x >> bits, bits + 1 - (x & self._mask).bit_length()

    def add(self, item: str) -> None:
        """Count ``item`` (again: repeats change nothing)."""
        x = hash(item) & _MASK64
        bits = self._bits
        index = x >> bits
        rank = bits + 1 - (x & self._mask).bit_length()
        registers = self._registers
        if registers[index] < rank:
            registers[index] = rank

    def add_cell(self, index: int, rank: int) -> None:
        """:meth:`add` for an item already placed with :meth:`cell`."""
        registers = self._registers
        if registers[index] < rank:
            registers[index] = rank

    def clear(self) -> None:
        """Forget every item."""
        self._registers[:] = bytes(len(self._registers))

    def estimate(self) -> float:
        """Distinct items added since construction or the last :meth:`clear`."""
        return _estimate(np.frombuffer(self._registers, dtype=np.uint8))

    @staticmethod
    def union(counters: Iterable[HyperLogLog]) -> float:
        """Distinct items added to any of ``counters`` (all of one precision); 0 for none."""
        arrays = [np.frombuffer(c._registers, dtype=np.uint8) for c in counters]
        if not arrays:
            return 0.0
        if len({len(a) for a in arrays}) != 1:
            raise ValueError("counters of different precisions cannot be united")
        return _estimate(np.maximum.reduce(arrays))


def _estimate(registers: np.ndarray[Any, np.dtype[np.uint8]]) -> float:
    m = registers.size
    alpha = 0.7213 / (1.0 + 1.079 / m)
    raw = alpha * m * m / float(np.sum(np.ldexp(1.0, -registers.astype(np.int64))))
    zeros = int(np.count_nonzero(registers == 0))
    # Small cardinalities: the raw estimator is biased; linear counting
    # (the share of still-empty registers) is accurate there.
    if raw <= 2.5 * m and zeros:
        return m * math.log(m / zeros)
    return raw


# ------------------------------------------------------------------- clients


@dataclass(frozen=True, slots=True)
class ClientSummary:
    """One tracked client, as reports show it."""

    client: str
    #: Requests counted since the client was last (re)tracked, as aged.
    requests: int
    #: How many more requests the client may have made before it was tracked
    #: (the Space-Saving error): its true count lies in
    #: ``[requests, requests + error]``, give or take the aging's rounding.
    error: int
    hits: int
    misses: int
    first_seen: float  # when it was last (re)tracked
    last_seen: float
    #: (key, requests at least), most first; counted from when the client
    #: first reached the regular threshold (see _Client.keys).
    top_keys: tuple[tuple[str, int], ...]
    segment: str


class _Client:
    """What is kept for a client while it is in the summary."""

    __slots__ = ("first", "hits", "keys", "last", "requests")

    def __init__(self, ts: float) -> None:
        self.first = ts
        self.last = ts
        self.requests = 0
        self.hits = 0
        # Made when the client first reaches the regular threshold: keys of
        # occasional clients are reported per segment, from the summary of
        # all keys, and most clients are occasional (a long tail of short
        # visits), so they are spared a summary update per request.
        self.keys: SpaceSaving | None = None


class SegmentTracker:
    """Bounded per-client statistics and the activity segments they form.

    ``max_clients``: clients tracked by name (the heaviest).
    ``top_keys_per_segment``: keys listed per segment in :meth:`report`.
    ``keys_per_client``: the size of each tracked client's key summary (made
    once the client reaches the regular threshold).
    ``heavy_factor``: how many times the regular threshold makes a client
    heavy (see the module docstring).  ``decay_interval``: seconds of
    event time after which every count is halved.  ``max_name_bytes``: a
    key whose string takes more (``sys.getsizeof``) is counted in the
    totals but never remembered by name, and so is a client id (it counts
    as no id), which makes :meth:`memory_bound` a bound.  ``precision``: of the distinct-client
    counters (see :class:`HyperLogLog`).

    Requests without a client id (an empty ``client``) count in the totals
    and the occasional segment only.

    ``observe`` only collects events into a batch, per client (requests,
    hits, first and last time, requests per key); the batch is folded into
    the summaries every ``batch_events`` events, at a decay boundary and
    before a query, so a client or key seen several times in a batch costs
    one summary update.
    """

    def __init__(
        self,
        max_clients: int = 1000,
        top_keys_per_segment: int = 10,
        *,
        keys_per_client: int = 4,
        heavy_factor: float = 4.0,
        decay_interval: float = 86400.0,
        max_name_bytes: int = 512,
        precision: int = 12,
        batch_events: int = 1024,
    ) -> None:
        if max_clients < 1:
            raise ValueError(f"max_clients must be at least 1, got {max_clients}")
        if top_keys_per_segment < 1:
            raise ValueError(f"top_keys_per_segment must be at least 1, got {top_keys_per_segment}")
        if keys_per_client < 1:
            raise ValueError(f"keys_per_client must be at least 1, got {keys_per_client}")
        if not heavy_factor > 1:
            raise ValueError(f"heavy_factor must be above 1, got {heavy_factor}")
        if not decay_interval > 0 or math.isinf(decay_interval):
            raise ValueError(f"decay_interval must be positive seconds, got {decay_interval}")
        if max_name_bytes < 1:
            raise ValueError(f"max_name_bytes must be positive, got {max_name_bytes}")
        if batch_events < 1:
            raise ValueError(f"batch_events must be at least 1, got {batch_events}")
        self._max_clients = max_clients
        self._top_keys = top_keys_per_segment
        self._keys_per_client = keys_per_client
        self._heavy_factor = float(heavy_factor)
        self._decay_interval = float(decay_interval)
        self._max_name = max_name_bytes
        # Strings this short fit whatever their kind (at most 4 bytes a
        # character plus the header), so most names skip sys.getsizeof().
        self._short = max(0, (max_name_bytes - _STR_HEADER_BYTES) // 4)
        self._summary = SpaceSaving(max_clients)
        self._records: dict[str, _Client] = {}  # exactly the clients in the summary
        # Every key, so the occasional segment's keys can be told as what is
        # left when the tracked segments' keys are taken out.  Several times
        # the keys listed, so the listed ones are rarely the summary's noise.
        self._keys = SpaceSaving(8 * top_keys_per_segment)
        self._distinct = HyperLogLog(precision)
        self._distinct_before = HyperLogLog(precision)  # the previous interval's
        self._period: int | None = None
        self._period_end = -math.inf
        self._requests = 0
        self._hits = 0
        # Events not yet counted: client -> [requests, hits, first ts, last
        # ts, {key: requests}], at most ``batch_events`` events in all.
        self._batch: dict[str, list[Any]] = {}
        self._batch_events = 0
        self._batch_size = batch_events

    @property
    def max_clients(self) -> int:
        """The most clients tracked by name."""
        return self._max_clients

    def observe(self, event: Observed) -> None:
        """Account for one access event: O(1), a few dict updates (see :class:`SegmentTracker`)."""
        outcome = event.outcome
        if outcome in _HITS:
            hit = 1
        elif outcome in _MISSES:
            hit = 0
        else:
            return
        ts = event.ts
        if ts >= self._period_end:
            self._next_period(ts)
        client = event.client
        key = event.key
        short = self._short
        # Names too long to remember are dropped here, so that the batch too
        # holds only names within max_name_bytes.
        if len(client) > short and sys.getsizeof(client) > self._max_name:
            client = ""
        remember_key = len(key) <= short or sys.getsizeof(key) <= self._max_name
        entry = self._batch.get(client)
        if entry is None:
            self._batch[client] = [1, hit, ts, ts, {key: 1} if remember_key else {}]
        else:
            entry[0] += 1
            entry[1] += hit
            if ts > entry[3]:
                entry[3] = ts
            if remember_key:
                keys = entry[4]
                keys[key] = keys.get(key, 0) + 1
        self._batch_events += 1
        if self._batch_events >= self._batch_size:
            self._fold()

    def _fold(self) -> None:
        """Count the batch into the totals, the client summary and the key summaries."""
        batch = self._batch
        if not batch:
            return
        self._batch_events = 0
        summary = self._summary
        records = self._records
        distinct = self._distinct
        per_client = self._keys_per_client
        all_keys: dict[str, int] = {}
        for client, (requests, hits, _, _, keys) in batch.items():
            self._requests += requests
            self._hits += hits
            if client:
                distinct.add(client)
            for key, count in keys.items():
                all_keys[key] = all_keys.get(key, 0) + count
        # The regular threshold as of this batch: see _Client.keys.
        regular = max(2.0, self._requests / max(1.0, self._weighted_clients()))
        for client, (requests, hits, first, last, keys) in batch.items():
            if not client:
                continue
            evicted = summary.add(client, requests)
            if evicted is not None:
                del records[evicted]
            record = records.get(client)
            if record is None:
                record = records[client] = _Client(first)
            if last > record.last:
                record.last = last
            record.requests += requests
            record.hits += hits
            if record.keys is None:
                if record.requests < regular:
                    continue
                record.keys = SpaceSaving(per_client)
            for key, count in keys.items():
                record.keys.add(key, count)
        for key, count in all_keys.items():
            self._keys.add(key, count)
        batch.clear()

    def _next_period(self, ts: float) -> None:
        """Age every count if a decay interval ended; rotate the distinct counters."""
        self._fold()
        period = int(ts // self._decay_interval)
        self._period_end = (period + 1) * self._decay_interval
        if self._period is None:
            self._period = period
            return
        elapsed = period - self._period
        if elapsed <= 0:  # a lagging clock: stay in the current interval
            return
        self._period = period
        # Past 64 halvings every count is 0; a larger exponent would underflow
        # the factor to 0.0, which decay() rightly refuses.
        factor = 0.5 ** min(elapsed, 64)
        num, den = factor.as_integer_ratio()
        for dropped in self._summary.decay(factor):
            del self._records[dropped]
        for record in self._records.values():
            record.requests = record.requests * num // den
            record.hits = record.hits * num // den
            if record.keys is not None:
                record.keys.decay(factor)
        self._keys.decay(factor)
        self._requests = self._requests * num // den
        self._hits = self._hits * num // den
        self._distinct, self._distinct_before = self._distinct_before, self._distinct
        self._distinct.clear()
        if elapsed > 1:
            self._distinct_before.clear()

    # ------------------------------------------------------------------ queries

    def distinct_clients(self) -> int:
        """Distinct clients seen in this decay interval and the previous one (estimated)."""
        self._fold()
        return round(HyperLogLog.union((self._distinct, self._distinct_before)))

    def mean_requests(self) -> float | None:
        """Requests per client, as aged (see the module docstring); None before any."""
        self._fold()
        clients = self._weighted_clients()
        if not self._requests or clients <= 0:
            return None
        return self._requests / clients

    def _weighted_clients(self) -> float:
        # Requests of the previous interval were halved once, so the clients
        # seen only then count half: the mean stays a mean of aged counts.
        current = self._distinct.estimate()
        both = HyperLogLog.union((self._distinct, self._distinct_before))
        return current + 0.5 * max(0.0, both - current)

    def thresholds(self) -> tuple[float, float] | None:
        """(regular, heavy): the fewest requests that put a client in each segment.

        None before any request.
        """
        mean = self.mean_requests()
        if mean is None:
            return None
        regular = max(2.0, mean)
        return regular, self._heavy_factor * regular

    def clients(self, n: int) -> list[ClientSummary]:
        """The ``n`` tracked clients with the most requests (ties by id)."""
        if n < 0:
            raise ValueError(f"n must not be negative, got {n}")
        limits = self.thresholds()  # folds the batch
        best = heapq.nsmallest(n, self._records.items(), key=lambda kv: (-kv[1].requests, kv[0]))
        return [self._summarize(client, record, limits) for client, record in best]

    def _summarize(
        self, client: str, record: _Client, limits: tuple[float, float] | None
    ) -> ClientSummary:
        keys = tuple((key, count) for key, count in _guaranteed(record, self._keys_per_client))
        return ClientSummary(
            client=client,
            requests=record.requests,
            error=self._summary.error(client),
            hits=record.hits,
            misses=record.requests - record.hits,
            first_seen=record.first,
            last_seen=record.last,
            top_keys=keys,
            segment=_segment(record.requests, limits),
        )

    def report(self, now: float, n: int = 10) -> dict[str, Any]:
        """The segments and the ``n`` heaviest clients, JSON-ready.

        ``now`` is when the report is made (reported as ``generated_at``);
        counts are as aged up to the last event.
        """
        limits = self.thresholds()  # folds the batch
        mean = self.mean_requests()
        distinct = self.distinct_clients()
        members: dict[str, list[_Client]] = {name: [] for name in SEGMENTS}
        for record in self._records.values():
            members[_segment(record.requests, limits)].append(record)
        segments: dict[str, dict[str, Any]] = {}
        tracked_keys: Counter[str] = Counter()
        tracked_clients = tracked_requests = tracked_hits = 0
        for name in ("heavy", "regular"):
            group = members[name]
            keys: Counter[str] = Counter()
            for record in group:
                for key, count in _guaranteed(record, self._keys_per_client):
                    keys[key] += count
            requests = sum(r.requests for r in group)
            hits = sum(r.hits for r in group)
            segments[name] = self._segment_report(len(group), requests, hits, keys)
            tracked_keys.update(keys)
            tracked_clients += len(group)
            tracked_requests += requests
            tracked_hits += hits
        rest_keys: Counter[str] = Counter()
        for key, count, _ in self._keys.top(len(self._keys)):
            left = count - tracked_keys.get(key, 0)
            if left > 0:
                rest_keys[key] = left
        segments["occasional"] = self._segment_report(
            max(0, distinct - tracked_clients),
            max(0, self._requests - tracked_requests),
            max(0, self._hits - tracked_hits),
            rest_keys,
        )
        return {
            "generated_at": _iso(now),
            "requests": self._requests,
            "hit_ratio": _ratio(self._hits, self._requests),
            "distinct_clients": distinct,
            "tracked_clients": len(self._records),
            "max_clients": self._max_clients,
            "decay_interval_seconds": self._decay_interval,
            "thresholds": None
            if limits is None or mean is None
            else {
                "mean_requests_per_client": round(mean, 3),
                "regular": round(limits[0], 3),
                "heavy": round(limits[1], 3),
            },
            "segments": segments,
            "top_clients": [
                {
                    "client": c.client,
                    "segment": c.segment,
                    "requests": c.requests,
                    "error": c.error,
                    "hits": c.hits,
                    "misses": c.misses,
                    "hit_ratio": _ratio(c.hits, c.requests),
                    "first_seen": _iso(c.first_seen),
                    "last_seen": _iso(c.last_seen),
                    "top_keys": [{"key": k, "count": count} for k, count in c.top_keys],
                }
                for c in self.clients(n)
            ],
        }

    def _segment_report(
        self, clients: int, requests: int, hits: int, keys: Counter[str]
    ) -> dict[str, Any]:
        top = sorted(keys.items(), key=lambda kv: (-kv[1], kv[0]))[: self._top_keys]
        return {
            "clients": clients,
            "requests": requests,
            "share": _ratio(requests, self._requests),
            "hit_ratio": _ratio(hits, requests),
            "top_keys": [{"key": k, "count": count} for k, count in top],
        }

    def memory_bound(self) -> int:
        """An upper estimate, in bytes, of what this tracker can ever hold.

        ``fixed + 2 * 2**precision + max_clients * (CLIENT + k * KEY + (1 + k) * B)
        + 8 * top_keys_per_segment * (KEY + B) + batch_events * (BATCH + 2B)``, where ``k`` is
        ``keys_per_client``, ``B`` = ``max_name_bytes`` (a client id and its
        keys, each possibly its own string), ``CLIENT`` = 1024 (summary slot,
        heap entry, record, its key summary), ``KEY`` = 256 (one key
        counter) and ``BATCH`` = 768 (a batch entry for a new client, or a
        key added to one): CPython 3.11 64-bit costs measured with tracemalloc,
        rounded up.
        """
        name = self._max_name
        k = self._keys_per_client
        return (
            _FIXED_BYTES
            + self._distinct.nbytes
            + self._distinct_before.nbytes
            + self._max_clients * (_CLIENT_BYTES + k * _KEY_COUNTER_BYTES + (1 + k) * name)
            + self._keys.capacity * (_KEY_COUNTER_BYTES + name)
            + self._batch_size * (_BATCH_ENTRY_BYTES + 2 * name)
        )


def _guaranteed(record: _Client, n: int) -> list[tuple[str, int]]:
    """A client's top keys with the requests each surely had, most first."""
    if record.keys is None:
        return []
    return [(key, count - error) for key, count, error in record.keys.top(n) if count > error]


def _segment(requests: int, limits: tuple[float, float] | None) -> str:
    if limits is None or requests < limits[0]:
        return "occasional"
    return "heavy" if requests >= limits[1] else "regular"


def _ratio(part: int, whole: int) -> float | None:
    return None if whole <= 0 else round(part / whole, 4)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
