"""Predictive warming: forecast which keys will be asked for in the next window
and warm them before they are.

The model (chosen by measurement on the WorldCup98 and YouTube traces; see
docs/decisions.md) has two parts:

- **Per-key features.**  For each followed key: request counts decayed with
  half-lives of one and eight prediction windows (recent rate and trend), the
  time since its last request, how many distinct clients asked for it, and for
  daily/weekly decisions how often its earlier recurrences came true.
- **A calibration table, learned online.**  Features are bucketed into a cell;
  each cell counts how often a decision in it was followed by a request within
  the window, and, of this model's own warm fetches whose key was then asked
  for, how many the request found still cached (each fetch judged on its own:
  one evicted, or replaced by a later fetch, before the request was unused).
  Their product is the confidence: a measured probability that a warm is
  used, not a score.  A cell
  with no history starts from a Poisson estimate of the key's own rate
  (weight :data:`PRIOR_WEIGHT`).

Decisions are taken at moments where warming can change the outcome:

- ``expiry``: just before an entry the events showed expires: refresh it when a
  request within the window is likely (the refresh-ahead that knows when to stop);
- ``revisit``: every quarter window after a key's last request, up to four
  windows, when its entry may have been evicted or have expired: warm it again
  if it is likely to be asked for (a free hint when it is still cached);
- ``daily`` / ``weekly``: a lead time before the same moment one day / one week
  after a request: recurring peaks are learned (the table only trusts them once
  they have recurred), not assumed;
- ``sequence``: after every request for A, what clients asked for next after A
  (the next page, tile or segment), from :class:`~warmer.sequences.SequenceModel`
  sized to follow as many keys as the model (a successor still cached is a
  free hint).

A successor warm (sequence, neighbour) comes seconds before the request it
predicts, the surest moment to warm.  So a refresh, revisit or daily/weekly
warm of a key is worth only the share of its requests that no successor warm
came before (measured per key): its confidence is scaled by it, and the
budget goes to the just-in-time warms instead of refreshing entries ahead of
a request that would be warmed anyway.

A decision warms when its confidence is at least ``min_confidence``.  The
budget (``max_warm_ratio`` warm fetches per user request) is a token bucket
(:data:`BUDGET_BURST`): when it runs low the threshold rises above that floor,
so the last tokens go to the surest predictions (decisions falling due at
one instant share them out surest first, each seeing the tokens those before
it took), and over any stretch of traffic the fetches stay within the budget
plus the bucket.  Whether a warmed entry is still cached when asked for is
learned per cell, starting from its kind's measured rate (a cell new to the
table borrows it).  A revisit chain stops at a step far below the floor (in
a cell with enough evidence) until the key's next request, but for a sample
that keeps the table learning: a long tail of rare URLs costs little.

Bounded memory (:meth:`Predictor.memory_bound`): at most ``max_keys`` keys
are followed (least recently asked for forgotten first), none whose names
take more than ``max_name_bytes``; the decisions waiting for their time and
for their outcome are bounded per followed key, the calibration table by its
cells; a sequence model of its own follows at most :data:`OWN_SEQUENCE_KEYS`
keys and clients.  A followed key costs a few hundred bytes with ordinary
paths (docs/operations.md).

Sans-I/O (DESIGN rule 2): ``observe``, ``due`` and ``filled`` take time from the
events and the caller; :meth:`Predictor.to_document` / :meth:`Predictor.load_document`
turn the learned state into JSON for :mod:`warmer.state_file` to save and load.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
import sys
from array import array
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any, Final

from warmer.model import Observed, Reason, WarmRequest
from warmer.precision import DisplacementCost
from warmer.retention import Retention
from warmer.sequences import SequenceModel
from warmer.strides import StrideModel, carry_step

#: Model file format; a file with another version is rebuilt from scratch.
MODEL_VERSION: Final = 2
MODEL_FORMAT: Final = "warmproxy-predictive"
#: Weight, in observations, of the Poisson estimate a cell starts from.
PRIOR_WEIGHT: Final = 4.0
#: Weight, in warms, of the certainty a kind of decision starts from that its
#: warmed entries are still cached when asked for.
KIND_PRIOR: Final = 2.0
#: Revisit decisions, in prediction windows after a key's last request.
REVISIT_AFTER: Final = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0)
#: How far ahead of a recurring moment a daily/weekly decision is taken, in windows.
SEASONAL_LEAD: Final = 0.25
DAY: Final = 86_400.0
WEEK: Final = 7 * DAY
#: The share of a key's requests that a successor warm came just before: a
#: moving mean over its last few requests (each weighs 2**-FORESEEN_SHIFT),
#: kept in fixed point out of FORESEEN_SCALE (a small int: no object per key).
FORESEEN_SHIFT: Final = 2
FORESEEN_SCALE: Final = 128
#: Keys asked for fewer times than this get no revisit or seasonal decisions:
#: a key seen once is asked again within a window ~1-3 % of the time on the
#: traces measured, far below any useful confidence, and following every
#: one-off URL would cost memory and time on a long tail.
MIN_REQUESTS_TO_FOLLOW: Final = 2
#: Of the revisit chains cut as hopeless, one in this many goes on, to keep learning.
LEARNING_SAMPLE: Final = 16
#: Share of min_confidence below which a revisit chain stops (in a cell with
#: enough evidence) until the key's next request: only well below the floor,
#: where its later, older steps do not come back above it.
CHAIN_CUT: Final = 1 / 3
#: Decisions a cell needs before a revisit chain in it may be cut.
EVIDENCE_TO_SKIP: Final = 50
#: Below this share of early drops (misses of entries believed fresh), revisits
#: within an entry's lifetime are skipped.
EARLY_DROPS_RARE: Final = 0.01
#: Keys scored for the forecast the API shows (the most recently asked for).
FORECAST_SCAN: Final = 5_000
#: Warming predictions kept for the API.
RECENT_KEPT: Final = 200
#: Most keys (and clients) a sequence model of the predictor's own follows.
OWN_SEQUENCE_KEYS: Final = 20_000
#: Decisions awaiting their outcome, at most this many per followed key on
#: average (at least 1024 keys' worth): beyond, the oldest is judged early.
_PENDING_PER_KEY: Final = 1
#: Decisions awaiting their time, at most this many per followed key on average.
_HEAP_PER_KEY: Final = 4
#: A daily or weekly decision planted out of time order waits in its lane
#: (not the heap) when its place is among the lane's last this many.
_LANE_REORDER: Final = 256
#: Per-request decay of the early-drop rate (about the last 20,000 requests).
_RATIO_DECAY: Final = 1.0 - 1.0 / 20_000
#: The warm budget is a token bucket: ``max_warm_ratio`` tokens a user
#: request, one a warm fetch.  It holds at most :data:`BUDGET_BURST` requests'
#: worth (credit saved in quiet times is spent when the traffic comes, within
#: bounds) and starts with :data:`BUDGET_RESERVE` requests' worth.  While at
#: least the reserve is left, every decision at ``min_confidence`` warms;
#: below it the threshold rises towards 1 (nothing warmed with the bucket
#: empty), so the surest decisions get the last tokens.  Over any stretch of
#: traffic, warm fetches stay within the budget plus the bucket.
#: A client asking for the same key again and again at a steady interval (an
#: API poller, a status page): after three intervals whose mean deviation is
#: at most this share of their mean, its next request is forecast one
#: interval on.
POLL_REGULARITY: Final = 0.25
#: Intervals shorter than this (seconds) are retries, not polling.
MIN_POLL_GAP: Final = 2.0
#: How much earlier than forecast a poller's key is fetched: this many
#: seconds plus twice the interval's deviation (its jitter).
POLL_LEAD: Final = 1.0
#: Clients whose interval is followed (the least recently seen forgotten first).
POLLERS_KEPT: Final = 20_000
BUDGET_BURST: Final = 10_000
BUDGET_RESERVE: Final = 500
#: Default of ``PredictiveConfig.max_name_bytes``: the usage tracker's.
MAX_NAME_BYTES: Final = 2048
_STR_HEADER_BYTES: Final = 80  # sys.getsizeof of a str is at most this + 4 per character
# Upper estimates of what one entry costs besides its names (CPython 3.11,
# 64-bit; measured with tracemalloc, rounded up); see Predictor.memory_bound.
_KEY_BYTES: Final = 1024  # map slot and node, _Key, its floats and ints, its two warm requests
_ASKED_BYTES: Final = 256  # map slot and node, (fetches, stored) tuple, an int
_POLLER_BYTES: Final = 512  # map slot and node, its five-item list, two floats, an int
_DECISION_BYTES: Final = 256  # heap slot, (time, seq, key, kind, generation), a float, two ints
_COMPACT_BYTES: Final = 32  # per waiting decision, while a compaction sorts and trims them
_PENDING_BYTES: Final = 256  # deque slot, (at, state, counts, kind, count, act), two ints
_CELL_BYTES: Final = 512  # table slot, the cell tuple, its four counts
_RECENT_BYTES: Final = 256  # (key, url, confidence, at, kind), two floats
# Map slot and node, the (freshness end, last, Vary names, values, coding)
# tuple, two floats, and the variant's values it may keep after the entry
# they came with is gone: 305 bytes measured with two Vary fields.
_LIFETIME_BYTES: Final = 384
_FIXED_BYTES: Final = 64 * 1024
_CACHED_OUTCOMES = frozenset({"hit", "miss", "stale", "revalidated"})
_HIT_OUTCOMES = frozenset({"hit", "revalidated"})
_SEASONAL = frozenset({"daily", "weekly"})
# The kinds of a revisit chain's steps, and the step of each kind.
_REVISIT_KINDS: Final = ("revisit", *(f"revisit:{i}" for i in range(1, len(REVISIT_AFTER))))
_REVISIT_STEP: Final = {kind: step for step, kind in enumerate(_REVISIT_KINDS)}
# A sequence decision's kind names its confidence tenth; one string each,
# shared by every decision of that kind.
_SEQUENCE_KINDS: Final = tuple(f"sequence:{tenth}" for tenth in range(10))
# The same for a numbered neighbour (the next page, block, segment).
_NEIGHBOUR_KINDS: Final = tuple(f"neighbour:{tenth}" for tenth in range(10))
# Where in _Key.recurred each seasonal kind counts (two bits: 0 to 3).
_RECURRED_SHIFT: Final = {"daily": 0, "weekly": 2}
# Bits of a client id's hash kept in _Key.clients.
_CLIENT_BITS: Final = 31
_CLIENT_MASK: Final = (1 << _CLIENT_BITS) - 1
_LN2: Final = math.log(2.0)
#: Warms of a key whose use is remembered (bits of an int).
_JUDGED: Final = 64
_JUDGED_MASK: Final = (1 << _JUDGED) - 1


@dataclass(frozen=True, slots=True)
class PredictiveConfig:
    """``[strategies.predictive]`` as the model sees it."""

    enabled: bool = False
    #: Horizon of a prediction: "asked for within this many seconds".
    prediction_window: float = 3600.0
    #: Lowest calibrated probability a decision must reach to warm.
    min_confidence: float = 0.3
    #: Warm fetches allowed per user request before the threshold rises.
    max_warm_ratio: float = 0.2
    #: Keys followed (least recently asked for forgotten first); a few
    #: hundred bytes each with ordinary paths (docs/operations.md).
    max_keys: int = 200_000
    priority: str = "low"
    sequences: bool = True
    #: With sequences, the next key of numbered walks (warmer.strides):
    #: it may be one no client has asked for yet.
    neighbours: bool = True
    #: Keep the keys worth a cache slot cached (warmer.retention): touches,
    #: which fetch nothing.
    retention: bool = True
    #: Seconds before an entry's expiry its refresh is decided (the live
    #: proxy's tick; the replay decides at the instant of expiry).
    refresh_lead: float = 0.0
    #: A key whose key, URL and host strings together take more bytes
    #: (``sys.getsizeof``) is not followed: what makes
    #: :meth:`Predictor.memory_bound` a bound (the usage tracker's rule).
    max_name_bytes: int = MAX_NAME_BYTES


@dataclass(slots=True)
class _Key:
    # The key as followed: its decisions (and an owned sequence model) hold
    # this one string, not a copy per request.
    key: str
    url: str  # the key's own string when they are equal
    host: str
    updated: float  # when the decayed counts were last brought up to date
    recent: float = 0.0  # decayed count, half-life one window
    trend: float = 0.0  # half-life 8 windows
    last: float = 0.0  # last request
    count: int = 0
    # Distinct clients seen, up to 3 (all the feature tells apart), in the
    # low two bits; above them the 31-bit hashes of the first two: one int,
    # whatever the length of the clients' ids (see add_client).
    clients: int = 0
    fresh_until: float = 0.0  # the cached entry's freshness end, as events showed
    revisit_planned: bool = False  # one revisit chain per key, re-anchored lazily
    # Daily and weekly decisions that came true, up to 3 each (all the cell
    # tells apart), two bits each at _RECURRED_SHIFT.
    recurred: int = 0
    # This model's warms of it, numbered 1, 2, ...; which of the last
    # _JUDGED were fetched and then found by the next request (used), or
    # fetched and gone before it (wasted: evicted, or replaced by another
    # fetch): bit i is warm ``acts - i``.  A warm that was a free hint, or
    # whose key was not asked for, is neither.
    acts: int = 0
    used: int = 0
    wasted: int = 0
    awaiting: int = 0  # the warm whose fetch awaits the next request (0: none)
    # Whether a successor decision (sequence, neighbour) warmed it (a free
    # hint included) since its last request, and the share of its requests
    # that one came before (out of FORESEEN_SCALE): the requests a successor
    # warm catches anyway, which other warms of it need not.
    hinted: bool = False
    foreseen: int = 0
    # Its warm requests as last made (a hint, a refresh): the same each time.
    hint: WarmRequest | None = None
    refresh: WarmRequest | None = None

    def add_client(self, client: str) -> None:
        """Count ``client`` among the distinct ones (while fewer than 3 are).

        Told apart by 31 bits of their hashes: two distinct ids collide once
        in two billion, which at worst reads one client less.
        """
        clients = self.clients
        seen = clients & 3
        if seen >= 3:
            return
        h = hash(client) & _CLIENT_MASK
        first = clients >> 2 & _CLIENT_MASK
        if seen == 0:
            self.clients = h << 2 | 1
        elif h != first:
            if seen == 1:
                self.clients = h << (2 + _CLIENT_BITS) | first << 2 | 2
            elif h != clients >> (2 + _CLIENT_BITS):
                self.clients = 3  # the hashes are not needed any more

    def new_warm(self) -> int:
        """Number a warm of this key (the bits of earlier ones move up)."""
        self.used = (self.used << 1) & _JUDGED_MASK
        self.wasted = (self.wasted << 1) & _JUDGED_MASK
        self.acts += 1
        return self.acts

    def fetched(self) -> None:
        """The latest warm fetched it; a fetch still awaiting a request was wasted."""
        if self.awaiting:
            self._judge(self.awaiting, used=False)
        self.awaiting = self.acts

    def asked(self, hit: bool) -> None:
        """A request for it judges the fetch awaiting one."""
        self._judge(self.awaiting, used=hit)
        self.awaiting = 0

    def outcome(self, act: int) -> int:
        """Warm ``act``: 1 used, 0 wasted, -1 not judged (a free hint, too old,
        or not a warm of this state)."""
        age = self.acts - act
        if not 0 <= age < _JUDGED:
            return -1
        if self.used >> age & 1:
            return 1
        return 0 if self.wasted >> age & 1 else -1

    def _judge(self, act: int, *, used: bool) -> None:
        age = self.acts - act
        if 0 <= age < _JUDGED:
            if used:
                self.used |= 1 << age
            else:
                self.wasted |= 1 << age


class _Lane:
    """Decisions of one kind planted in time order, waiting for their time
    (see ``Predictor._decisions``): their times, sequence numbers and keys
    in three arrays from ``head`` on, 24 bytes a decision instead of a tuple."""

    __slots__ = ("head", "keys", "seqs", "times")

    def __init__(self) -> None:
        self.times = array("d")
        self.seqs = array("q")
        self.keys: list[str] = []
        self.head = 0

    def __len__(self) -> int:
        return len(self.keys) - self.head

    def append(self, at: float, seq: int, key: str) -> None:
        """Add a decision at least as late as every other (``seq`` the largest)."""
        self.times.append(at)
        self.seqs.append(seq)
        self.keys.append(key)

    def insert(self, at: float, seq: int, key: str) -> bool:
        """Add a decision a little out of time order (``seq`` the largest) in
        its place, after the first; False, and not added, when its place is
        not among the last :data:`_LANE_REORDER` (the lane is not empty)."""
        times = self.times
        end = len(times)
        lo = max(self.head, end - _LANE_REORDER)
        if at < times[lo]:
            return False
        place = bisect.bisect_right(times, at, lo, end)
        times.insert(place, at)
        self.seqs.insert(place, seq)
        self.keys.insert(place, key)
        return True

    def first(self) -> float:
        """The time of the next decision (the lane is not empty)."""
        return self.times[self.head]

    def last(self) -> float:
        """The time of the latest decision (the lane is not empty)."""
        return self.times[-1]

    def order(self) -> Iterator[tuple[float, int]]:
        """(time, seq) of each decision, in the order they are taken."""
        return itertools.islice(zip(self.times, self.seqs, strict=True), self.head, None)

    def drain(self, now: float, kind: str, heap: list[tuple[float, int, str, str, int]]) -> int:
        """Push the decisions due by ``now`` onto ``heap``; returns how many."""
        times = self.times
        seqs = self.seqs
        keys = self.keys
        start = i = self.head
        end = len(keys)
        while i < end and times[i] <= now:
            heapq.heappush(heap, (times[i], seqs[i], keys[i], kind, 0))
            i += 1
        if i == end:
            del times[:], seqs[:], keys[:]
            self.head = 0
        elif i >= 1024 and 2 * i >= end:
            # Drop the taken ones once they are the larger part (amortised O(1)).
            del times[:i], seqs[:i], keys[:i]
            self.head = 0
        else:
            self.head = i
        return i - start

    def keep_followed(self, followed: dict[str, _Key]) -> None:
        """Keep the decisions of followed keys, each holding its key's
        followed string; in place."""
        times = self.times
        seqs = self.seqs
        keys = self.keys
        j = 0
        for i in range(self.head, len(keys)):
            state = followed.get(keys[i])
            if state is not None:
                times[j] = times[i]
                seqs[j] = seqs[i]
                keys[j] = state.key
                j += 1
        del times[j:], seqs[j:], keys[j:]
        self.head = 0

    def truncate(self, until: tuple[float, int]) -> None:
        """Drop the decisions after ``(time, seq)`` ``until``."""
        times = self.times
        at, seq = until
        end = bisect.bisect_right(times, at, lo=self.head)
        while end > self.head and times[end - 1] == at and self.seqs[end - 1] > seq:
            end -= 1
        del times[end:], self.seqs[end:], self.keys[end:]


@dataclass(frozen=True, slots=True)
class Prediction:
    """One forecast: a key, how sure, for how long (the API's shape)."""

    key: str
    url: str
    confidence: float
    duration: float  # seconds the forecast covers from ``at``
    at: float
    kind: str


class _Calibration:
    """Per feature cell: decisions, those followed by a request within the
    window, and of this model's own warms whose key was then asked for, how
    many found the warmed entry still cached (a hit).

    A cell is ``[decisions, requested, warmed_and_requested, hit]``.
    """

    def __init__(self) -> None:
        self.cells: dict[tuple[Any, ...], list[float]] = {}
        # Per kind of decision (by its initial: expiry, revisit, daily, weekly,
        # sequence): [warmed and asked for, hit].  Whether a warmed entry is
        # still cached when asked for depends on the cache's pressure more
        # than on the key, so a cell with few warms of its own borrows its
        # kind's rate instead of starting from certainty.
        self.kinds: dict[str, list[float]] = {}

    def still_cached(self, kind: str) -> float:
        """The kind's share of warmed entries found cached: 1 at first (warming
        starts trusted), corrected by its first few warms."""
        seen = self.kinds.get(kind[0])
        return 1.0 if seen is None else (seen[1] + KIND_PRIOR) / (seen[0] + KIND_PRIOR)

    def confidence(self, cell: tuple[Any, ...], prior: float) -> float:
        """P(asked for within the window) x P(still cached then | warmed)."""
        cached = self.still_cached(cell[0])
        seen = self.cells.get(cell)
        if seen is None:
            return prior * cached
        asked = (seen[1] + prior * PRIOR_WEIGHT) / (seen[0] + PRIOR_WEIGHT)
        return asked * (seen[3] + cached * PRIOR_WEIGHT) / (seen[2] + PRIOR_WEIGHT)

    def age(self, factor: float) -> None:
        """Weigh old evidence down (a retrain), so the table follows drift."""
        for seen in self.cells.values():
            for i in range(4):
                seen[i] *= factor
        for kind in self.kinds.values():
            kind[0] *= factor
            kind[1] *= factor

    def decisions(self) -> float:
        return sum(seen[0] for seen in self.cells.values())


class Predictor:
    """Forecasts per-key requests and warms what is likely to be asked for next."""

    def __init__(
        self,
        config: PredictiveConfig,
        *,
        sequences: SequenceModel | None = None,
        feed_sequences: bool = True,
        displacement: DisplacementCost | None = None,
    ) -> None:
        """``sequences``: a model shared with the usage analysis; then
        ``feed_sequences=False`` when the analysis already feeds it every event.
        ``displacement``: the measure the warmer core feeds for every
        strategy (None: one of its own, fed here)."""
        if config.prediction_window <= 0:
            raise ValueError("prediction_window must be positive")
        if config.max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, got {config.max_keys}")
        if config.max_name_bytes < 1:
            raise ValueError(f"max_name_bytes must be positive, got {config.max_name_bytes}")
        self.config = config
        self.window = config.prediction_window
        # Decayed counts: half-lives of one window (recent) and eight (trend);
        # a count decayed with half-life h sums about h / ln 2 seconds of traffic.
        self._recent_rate = -_LN2 / self.window
        self._trend_rate = -_LN2 / (8 * self.window)
        # A decayed count over its mean life is a rate; times the window, the
        # expected requests in it.
        self._trend_per_window = self.window * _LN2 / (8 * self.window)
        self._age_scale = 8.0 / self.window
        # A decayed count (half-life one window) over its mean life: a rate.
        self._rate_per_count = _LN2 / self.window
        # Revisits, in seconds after a key's last request.
        self._revisit_offsets = tuple(after * self.window for after in REVISIT_AFTER)
        # Its own sequence model follows as many keys (and clients) as the
        # model, so what follows what is not forgotten before the keys
        # themselves are; but at most OWN_SEQUENCE_KEYS: a source costs more
        # than a followed key, and the keys that lead somewhere are the
        # recently asked for ones.
        own = min(config.max_keys, OWN_SEQUENCE_KEYS)
        self.sequences = (
            sequences
            if sequences is not None
            else (SequenceModel(max_clients=own, max_keys=own) if config.sequences else None)
        )
        self._feed_sequences = feed_sequences
        # Numbered walks (page, block, segment), learned per template: as
        # many clients as its own sequence model; a site has far fewer
        # templates than keys.
        self.strides = (
            StrideModel(max_clients=own, max_name_bytes=config.max_name_bytes)
            if config.sequences and config.neighbours
            else None
        )
        # What a warm of a key no longer cached costs in hits on this cache
        # (the entry it displaces), measured from the events: a decision
        # warms only when it is likelier to be used than that.  Its own
        # follows the lifetimes of as many keys as the sequence model.
        self.feeds_displacement = displacement is None
        self.displacement = (
            displacement if displacement is not None else DisplacementCost(max_keys=own)
        )
        self.retention = Retention(self.displacement) if config.retention else None
        # Whether self.sequences is this model's own (its memory counted here).
        self._owns_sequences = sequences is None and self.sequences is not None
        # Names of at most this many characters in all fit max_name_bytes
        # whatever their kind (a str takes at most _STR_HEADER_BYTES + 4
        # bytes a character), so most keys are checked with len() alone.
        self._short_names = max(0, (config.max_name_bytes - 3 * _STR_HEADER_BYTES) // 4)
        self.calibration = _Calibration()
        self._keys: OrderedDict[str, _Key] = OrderedDict()
        # Keys forgotten since the last compaction: their waiting decisions
        # still hold their names, so past max_keys of them they are dropped.
        self._forgotten = 0
        self._max_forgotten = config.max_keys
        # (time, seq, key, kind, generation): decisions to take at ``time``,
        # in (time, seq) order; ``generation`` is the key's request count
        # when planted (revisits are void once the key was asked for again).
        # They wait in a heap, but for the daily and weekly ones: planted a
        # day or a week ahead, they would make the heap many times larger for
        # nothing until then, so they wait in a lane per kind, in time order
        # (compact arrays, see _Lane; one planted far out of order goes to
        # the heap), and move to the heap when their time comes.  Where a
        # decision waits never changes the order decisions are taken in.
        self._decisions: list[tuple[float, int, str, str, int]] = []
        self._lanes: dict[str, _Lane] = {kind: _Lane() for kind in sorted(_SEASONAL)}
        self._in_lanes = 0  # decisions waiting in the lanes
        self._lanes_next = math.inf  # the earliest time at the head of a lane
        # (at, state, counts, kind, count_then, act): decisions taken at
        # ``at`` awaiting their outcome, a window later (``counts``: their
        # cell's in the calibration table; ``act``: the number of the warm it
        # made, 0 none).
        # ``state`` is the key's state the decision was taken on: one dropped
        # since (more keys than max_keys) and re-created when the key came
        # back is another, and the decision is discarded, not judged on it.
        # Decisions are taken in time order, so this is a FIFO.
        self._pending: deque[tuple[float, _Key, list[float], str, int, int]] = deque()
        self._max_pending = _PENDING_PER_KEY * max(1024, config.max_keys)
        self._seq = 0
        self._sampled = 0
        # Requests for entries believed fresh, and those that missed (decayed).
        self._fresh_requests = 0.0
        self._early_drops = 0.0
        self._max_decisions = _HEAP_PER_KEY * max(1024, config.max_keys)
        self.requests = 0
        self.warm_fetches = 0  # warm requests returned that were not free hints, as reported
        self.threshold = config.min_confidence
        self._bucket = max(1.0, config.max_warm_ratio * BUDGET_BURST)
        self._reserve = max(1.0, config.max_warm_ratio * BUDGET_RESERVE)
        self._tokens = self._reserve
        # Keys this model asked to warm whose fill has not been reported yet.
        # key -> warm fetches asked for and not yet stored (one per variant
        # the core fans a request out to), and whether one has been stored
        self._asked: OrderedDict[str, tuple[int, bool]] = OrderedDict()
        # The latest warming predictions, newest last: (key, url, confidence, at, kind).
        self._recent: deque[tuple[str, str, float, float, str]] = deque(maxlen=RECENT_KEPT)
        self._now = 0.0
        # client -> [its last key, when, mean interval, mean deviation, intervals
        # seen] while it keeps asking for one key: polling (see POLL_REGULARITY).
        self._pollers: OrderedDict[str, list[Any]] = OrderedDict()

    def retune(self, *, min_confidence: float, max_warm_ratio: float, priority: str) -> None:
        """Take new thresholds and a new budget (a configuration reload),
        keeping what was learned and the tokens saved so far (within the new
        bucket): the bucket and its reserve are sized as when built."""
        self.config = replace(
            self.config,
            min_confidence=min_confidence,
            max_warm_ratio=max_warm_ratio,
            priority=priority,
        )
        self._bucket = max(1.0, max_warm_ratio * BUDGET_BURST)
        self._reserve = max(1.0, max_warm_ratio * BUDGET_RESERVE)
        self._tokens = min(self._tokens, self._bucket)
        self.threshold = self._rationed(self._tokens)

    # ----------------------------------------------------------- observation

    def observe(self, event: Observed) -> None:
        """Update the key's features; plant the decisions its request calls for.

        Runs for every request, so what would be helpers (the threshold's
        step, :meth:`_decay`) is written out here.
        """
        outcome = event.outcome
        if outcome not in _CACHED_OUTCOMES:
            return
        ts = event.ts
        config = self.config
        self._now = ts
        self.requests += 1
        # The budget earns its share of every user request (BUDGET_BURST).
        tokens = self._tokens + config.max_warm_ratio
        if tokens > self._bucket:
            tokens = self._bucket
        self._tokens = tokens
        self.threshold = self._rationed(tokens)
        key = event.key
        client = event.client
        keys = self._keys
        state = keys.get(key)
        if state is None:
            url = event.url
            host = event.host
            if len(key) + len(url) + len(host) > self._short_names and (
                sys.getsizeof(key) + sys.getsizeof(url) + sys.getsizeof(host)
                > config.max_name_bytes
            ):
                # Too long to follow (see max_name_bytes); an owned sequence
                # model still sees it end the client's sequence.
                if self._feed_sequences and self.sequences is not None and client:
                    self.sequences.observe(client, key, ts)
                return
            # One string where the URL is the key (one host string for all).
            state = _Key(key, key if url == key else url, sys.intern(host), ts)
            keys[key] = state
            if len(keys) > config.max_keys:
                keys.popitem(last=False)
                self._forgotten += 1
                if self._forgotten > self._max_forgotten:
                    # Waiting decisions of forgotten keys hold their names:
                    # drop them before they hold more than max_keys of them.
                    self._compact(shrink=False)
        else:
            keys.move_to_end(key)
            key = state.key
            # _decay(state, ts)
            elapsed = ts - state.updated
            if elapsed > 0:
                state.recent *= math.exp(self._recent_rate * elapsed)
                state.trend *= math.exp(self._trend_rate * elapsed)
                state.updated = ts
        if state.awaiting:
            state.asked(outcome in _HIT_OUTCOMES)
        if state.fresh_until > ts:
            # The entry should still be cached: a miss means the cache dropped
            # it early (evicted), which is what revisits within a lifetime catch.
            self._fresh_requests = self._fresh_requests * _RATIO_DECAY + 1.0
            self._early_drops *= _RATIO_DECAY
            if outcome not in _HIT_OUTCOMES:
                self._early_drops += 1.0
        if self.feeds_displacement:
            self.displacement.observe(event)
        retention = self.retention
        if retention is not None:
            retention.observe(
                key,
                self._rate(state.recent, state.trend),
                state.last,
                outcome in _HIT_OUTCOMES,
                event.fresh_until,
                ts,
            )
        state.recent += 1.0
        state.trend += 1.0
        previous = state.last
        # Whether a successor warm came before this request (since the one before).
        foreseen = state.foreseen
        state.foreseen = foreseen + (
            ((FORESEEN_SCALE if state.hinted else 0) - foreseen) >> FORESEEN_SHIFT
        )
        state.hinted = False
        state.last = ts
        count = state.count = state.count + 1
        if state.clients & 3 < 3 and client:
            state.add_client(client)
        fresh_until = event.fresh_until
        new_lifetime = fresh_until > state.fresh_until
        if new_lifetime:
            state.fresh_until = fresh_until
        follow = count >= MIN_REQUESTS_TO_FOLLOW
        if new_lifetime:
            self._plant(fresh_until - config.refresh_lead, key, "expiry", 0)
        if follow:
            if not state.revisit_planned:
                state.revisit_planned = True
                self._plant(ts + self._revisit_offsets[0], key, "revisit", count)
            # Daily and weekly decisions once an hour: at the first request
            # followed, and at one in another hour than the previous (which
            # was followed too, so planted them for its hour).
            if count == MIN_REQUESTS_TO_FOLLOW or ts // 3600 != previous // 3600:
                lead = SEASONAL_LEAD * self.window
                self._plant_seasonal(ts + DAY - lead, key, "daily")
                self._plant_seasonal(ts + WEEK - lead, key, "weekly")
        if client:
            self._poll(client, state.key, ts)
        sequences = self.sequences
        successors: list[str] = []
        if sequences is not None and client:
            if self._feed_sequences:
                sequences.observe(client, key, ts)
            # What tends to follow the key, after every request for it (a
            # successor still cached is a free hint).
            successors = self._sequence_decisions(key, ts)
        strides = self.strides
        if strides is not None and client:
            neighbour = strides.observe(client, key, ts)
            if neighbour is not None and neighbour[0] not in successors:
                self._neighbour_decision(state, *neighbour, ts)

    def filled(self, key: str, url: str, host: str, now: float, fresh_until: float) -> None:
        """A warm fill stored a new lifetime: follow its expiry like any other.

        A fill this model asked for counts against its warm budget (a hint
        for an entry still fresh costs no fetch and never reaches here).
        """
        state = self._keys.get(key)
        asked = self._asked.get(key)
        if asked is not None:
            # Every variant stored is a fetch: the budget is counted after the
            # fan-out to variants and hosts, as the origin sees it.
            left, stored_one = asked
            if left > 1:
                self._asked[key] = (left - 1, True)
            else:
                del self._asked[key]
            self.warm_fetches += 1
            self._tokens -= 1.0
            self.threshold = self._rationed(self._tokens)
            if state is not None and not stored_one:
                state.fetched()
        if self.feeds_displacement:
            self.displacement.filled(key, fresh_until, now)
        if state is None or fresh_until <= state.fresh_until:
            return
        state.fresh_until = fresh_until
        self._plant(fresh_until - self.config.refresh_lead, state.key, "expiry", 0)

    def fanned_out(self, key: str, requests: int) -> None:
        """The core made ``requests`` warm requests (variants, hosts) of the one
        this model asked for ``key``: each that stores is charged."""
        asked = self._asked.get(key)
        if asked is not None:
            self._asked[key] = (requests, asked[1])

    # -------------------------------------------------------------- decisions

    def due(self, now: float) -> list[WarmRequest]:
        """Take every decision whose time has come; return what to warm.

        Asked before every request and more, so what would be helpers (the
        revisit chain's next step, :meth:`_plant`, :meth:`_confidence`) is
        written out here.
        """
        if now > self._now:
            self._now = now
        pending = self._pending
        if pending and pending[0][0] + self.window <= now:
            self._resolve(now)
        if self._lanes_next <= now:
            self._drain_lanes(now)
        out: list[WarmRequest] = self._touches(now) if self.retention is not None else []
        # A compaction replaces self._decisions with a new list holding every
        # decision still waiting: popping goes on from that one, so none is
        # taken twice.  (Each push here follows a pop, so the heap stays
        # within its limit: a compaction here is a safeguard.)
        decisions = self._decisions
        if not decisions or not decisions[0][0] <= now:
            return out
        heappop = heapq.heappop
        heappush = heapq.heappush
        keys_get = self._keys.get
        lead = self.config.refresh_lead
        threshold = self.threshold
        # The round's decisions, in time order, and of those the warms that
        # cost a fetch: whether they are made waits for _share_tokens.
        taken: list[tuple[float, _Key, list[float], str, float, bool]] = []
        fetches: list[tuple[float, int]] = []
        cells_get = self.calibration.cells.get
        kinds_get = self.calibration.kinds.get
        log2 = math.log2
        exp = math.exp
        recent_rate = self._recent_rate
        trend_rate = self._trend_rate
        age_scale = self._age_scale
        trend_per_window = self._trend_per_window
        revisit_steps = _REVISIT_STEP
        revisit_kinds = _REVISIT_KINDS
        revisit_offsets = self._revisit_offsets
        revisits = len(revisit_offsets)
        max_pending = self._max_pending
        cells = self.calibration.cells
        # Whether the cache has (lately) kept entries until they expire: fewer
        # than one in a hundred requests for a believed-fresh entry missed.
        # Then a revisit while the entry is fresh finds it cached, so the
        # chain skips to the steps after expiry.  (Only observe changes it.)
        entries_stay = self._early_drops < EARLY_DROPS_RARE * (self._fresh_requests + 100.0)
        limit = self._max_decisions - self._in_lanes  # of the heap (the lanes do not change here)
        seq = self._seq
        hopeless = CHAIN_CUT * self.config.min_confidence
        evidence_to_skip = EVIDENCE_TO_SKIP
        learning_sample = LEARNING_SAMPLE
        # What a warm displacing another entry costs (DisplacementCost):
        # times how likely the key is not cached any more.
        displaced = self.displacement.cost
        evicted = self.displacement.evicted
        while decisions and decisions[0][0] <= now:
            at, _, key, kind, generation = heappop(decisions)
            chain_next: tuple[float, int, int] | None = None
            state = keys_get(key)
            if state is None:
                continue
            key = state.key  # the followed key's own string, not a forgotten one's
            # Neither seasonal nor a sequence: (a Poisson prior, a plain cell).
            plain = True
            if kind == "expiry":
                if state.fresh_until - lead != at:
                    continue  # a newer lifetime replaced it
            else:
                step = revisit_steps.get(kind)
                if step is None:
                    plain = False
                else:
                    # Plant the next revisit of the chain; this one is void
                    # when the key was asked for since it was planted: one
                    # chain per key, re-anchored on its last request instead
                    # of taking a decision (a request per key would
                    # otherwise plant several).
                    count = state.count
                    if count != generation:
                        step = -1
                        generation = count
                    not_before = state.fresh_until if entries_stay else -math.inf
                    last = state.last
                    nxt_step = step + 1
                    while nxt_step < revisits:
                        nxt = last + revisit_offsets[nxt_step]
                        if nxt >= not_before:
                            chain_next = (nxt, nxt_step, generation)
                            break
                        nxt_step += 1
                    else:
                        chain_next = None
                        state.revisit_planned = False
                    if step < 0:
                        if chain_next is not None:
                            seq += 1
                            heappush(
                                decisions, (nxt, seq, key, revisit_kinds[nxt_step], generation)
                            )
                            if len(decisions) > limit:
                                self._seq = seq
                                decisions = self._compact()
                                limit = self._max_decisions - self._in_lanes
                        continue
                    kind = "revisit"
            # cell, confidence = self._confidence(state, kind, at):
            recent_count = state.recent
            trend_count = state.trend
            elapsed = at - state.updated
            if elapsed > 0:
                recent_count *= exp(recent_rate * elapsed)
                trend_count *= exp(trend_rate * elapsed)
                state.recent = recent_count
                state.trend = trend_count
                state.updated = at
            age = at - state.last
            recent = int(log2(recent_count + 1.0) * 2.0)
            trend = int(log2(trend_count + 1.0) * 2.0)
            aged = int(log2(age * age_scale + 1.0)) if age > 0 else 0
            cell: tuple[Any, ...] = (
                kind,
                recent if recent < 9 else 9,
                trend if trend < 11 else 11,
                aged if aged < 7 else 7,
                state.clients & 3,
            )
            if plain:
                prior = 1.0 - exp(-trend_count * trend_per_window)
            else:
                if kind in _SEASONAL:
                    cell = (*cell, state.recurred >> _RECURRED_SHIFT[kind] & 3)
                if kind[0] == "s":  # "sequence:<confidence tenth>"
                    prior = (int(kind[9:]) + 0.5) / 10
                elif kind[0] == "n":  # "neighbour:<confidence tenth>"
                    prior = (int(kind[10:]) + 0.5) / 10
                else:
                    prior = 1.0 - exp(-trend_count * trend_per_window)
            kind_seen = kinds_get(kind[0])
            cached = (
                1.0
                if kind_seen is None
                else (kind_seen[1] + KIND_PRIOR) / (kind_seen[0] + KIND_PRIOR)
            )
            seen = cells_get(cell)
            if seen is None:
                confidence = prior * cached
                # The cell's counts, which its outcome goes to: the pending
                # decision holds these, not a tuple of its own.  (A cell of
                # zeros gives the same confidences as no cell.)
                counts = cells[cell] = [0.0, 0.0, 0.0, 0.0]
            else:
                counts = seen
                asked = (seen[1] + prior * PRIOR_WEIGHT) / (seen[0] + PRIOR_WEIGHT)
                confidence = asked * (seen[3] + cached * PRIOR_WEIGHT) / (seen[2] + PRIOR_WEIGHT)
            if chain_next is not None:
                # The chain goes on to its next step, unless the key is
                # hopeless now (in a cell with enough evidence; a later step
                # finds it older and less likely still): then it waits for
                # the key's next request, which keeps a long tail of rare
                # keys from costing eleven decisions each; but for a sample
                # that keeps the table learning.
                cut = False
                if confidence < hopeless and seen is not None and seen[0] >= evidence_to_skip:
                    self._sampled += 1
                    cut = self._sampled % learning_sample != 0
                if cut:
                    state.revisit_planned = False
                else:
                    nxt, nxt_step, generation = chain_next
                    seq += 1
                    heappush(decisions, (nxt, seq, key, revisit_kinds[nxt_step], generation))
                    if len(decisions) > limit:
                        self._seq = seq
                        decisions = self._compact()
                        limit = self._max_decisions - self._in_lanes
            successor = not plain and kind[0] in "sn"
            if not successor and kind[0] != "p":
                # Worth only what no later warm would catch: a request that a
                # successor warm (sequence, neighbour) comes just before finds
                # the key warmed then, at the surest moment (a token spent
                # seconds before the request, not a lifetime).  A warm now
                # (a refresh, a revisit, a seasonal one) adds only the share
                # of the key's requests that one did not come before.  On the
                # rest its token buys, less surely and a lifetime early, a
                # hit that warm would buy anyway; when the budget binds, it
                # is a token missing where nothing else would warm.
                confidence *= 1.0 - state.foreseen / FORESEEN_SCALE
            if confidence >= threshold and displaced > 0.0:
                # Unless the key is still cached, the warm displaces another
                # entry, which costs a hit the cache would have made; warm
                # only where it is likelier to be used than that.
                cost = displaced * evicted(key, at)
                if not plain and kind[0] in "snp":
                    # What a client asks for next, or a poller's next poll,
                    # comes within seconds: a warm used then displaces an
                    # entry only until its request (which, missing, would
                    # have stored it anyway), so only the unused ones cost
                    # that hit.
                    cost /= 1.0 + cost
                worth = confidence >= cost
            else:
                worth = confidence >= threshold
            if worth and state.fresh_until <= at:
                # The entry is believed gone (or at its expiry instant): a
                # fetch, which the round's tokens are shared out to below.
                fetches.append((confidence, len(taken)))
            taken.append((at, state, counts, kind, confidence, worth))
        self._seq = seq
        if fetches:
            self._share_tokens(fetches, taken)
        for at, state, counts, kind, confidence, worth in taken:
            if worth:
                if kind[0] in "sn":  # a successor warm (sequence, neighbour)
                    state.hinted = True
                act = state.new_warm()
                out.append(self._request(state.key, state, kind, confidence, at))
            else:
                act = 0
            # Await the outcome (decisions are taken in time order: a FIFO).
            pending.append((at, state, counts, kind, state.count, act))
            if len(pending) > max_pending:
                # Resolve the oldest early rather than grow.
                self._learn(*pending.popleft()[1:])
        return out

    def _touches(self, now: float) -> list[WarmRequest]:
        """The touches the retention asks for at ``now`` (warmer.retention)."""
        assert self.retention is not None
        keys = self._keys
        priority = self.config.priority
        out = []
        for key in self.retention.due(now, self._rate_of):
            state = keys[key]
            out.append(
                WarmRequest(state.url, priority, Reason.PREDICTIVE, host=state.host, touch=True)
            )
        return out

    def _rate_of(self, key: str, now: float) -> tuple[float, float, float] | None:
        """A followed key's rate at ``now`` (requests a second), last request
        and freshness end, for the retention's decisions."""
        state = self._keys.get(key)
        if state is None:
            return None
        elapsed = now - state.updated
        recent = state.recent * math.exp(self._recent_rate * elapsed)
        trend = state.trend * math.exp(self._trend_rate * elapsed)
        return self._rate(recent, trend), state.last, state.fresh_until

    def _rate(self, recent: float, trend: float) -> float:
        """A key's request rate (a second) from its decayed counts: the larger
        of the last window's and the last eight windows'.  The short one
        follows a burst; the long one a key asked for steadily but sparsely
        (a few times a day), which one window alone counts as cooled
        (measured: shop, entries that never expire, 20 % cache, +0.29 to
        +2.05 points with the long one)."""
        return max(recent, trend / 8.0) * self._rate_per_count

    def _share_tokens(
        self,
        fetches: list[tuple[float, int]],
        taken: list[tuple[float, _Key, list[float], str, float, bool]],
    ) -> None:
        """Share the tokens out among one round's warms that cost a fetch:
        the surest first, each seeing the tokens those before it take.

        The threshold is the budget's (:meth:`_rationed`) as tokens are
        committed, not as they were when the round began: many decisions can
        fall due at one instant (entries stored together expire together),
        and judged all against the round's first threshold they would spend
        past the reserve, in time order rather than by how sure they are.
        (A fetch is charged when its fill is reported, after the round.)
        ``fetches``: (confidence, index in ``taken``) of the warms that pass
        the round's first threshold; those that do not get their share are
        marked not worth warming in ``taken``.
        """
        tokens = self._tokens
        threshold = self.threshold
        if tokens - len(fetches) >= self._reserve:
            return  # enough for all: the threshold stays at its floor
        fetches.sort(key=_surest)
        for confidence, i in fetches:
            if confidence >= threshold:
                tokens -= 1.0
                threshold = self._rationed(tokens)
            else:
                taken[i] = (*taken[i][:5], False)

    def _rationed(self, tokens: float) -> float:
        """The confidence threshold with ``tokens`` left (see :data:`BUDGET_BURST`)."""
        floor = self.config.min_confidence
        if tokens >= self._reserve:
            return floor
        if tokens <= 0:
            return 1.0  # confidences stay below it: an empty budget stops warming
        short = 1.0 - tokens / self._reserve
        return floor + (1.0 - floor) * short * short

    @property
    def recent(self) -> list[Prediction]:
        """The latest predictions that were warmed, newest last."""
        return [
            Prediction(key, url, round(confidence, 4), self.window, at, kind)
            for key, url, confidence, at, kind in self._recent
        ]

    def predictions(self, now: float, n: int = 20) -> list[Prediction]:
        """The keys most likely to be asked for within the window from ``now``.

        Scored among the :data:`FORECAST_SCAN` keys asked for most recently,
        so that an API call stays a few milliseconds on the event loop
        whatever ``max_keys`` is.
        """
        scored = []
        for key in itertools.islice(reversed(self._keys), FORECAST_SCAN):
            state = self._keys[key]
            if state.count < MIN_REQUESTS_TO_FOLLOW:
                continue
            _, confidence = self._confidence(state, "revisit", now)
            scored.append((confidence, key, state))
        best = heapq.nlargest(n, scored, key=lambda s: s[0])
        return [
            Prediction(key, s.url, round(p, 4), self.window, now, "forecast") for p, key, s in best
        ]

    def _poll(self, client: str, key: str, ts: float) -> None:
        """Follow ``client``'s interval while it asks for ``key`` again and
        again; once steady, plant a decision just before its next request.

        A forecast from the client's own rhythm catches what the revisit
        chain (whose steps are fractions of the window) cannot: the next poll
        of a key that the cache is too small to keep between polls.
        """
        pollers = self._pollers
        poller = pollers.get(client)
        if poller is None:
            if sys.getsizeof(client) > self.config.max_name_bytes:
                return  # never remembered: what keeps memory_bound() a bound
            pollers[client] = [key, ts, 0.0, 0.0, 0]
            if len(pollers) > POLLERS_KEPT:
                pollers.popitem(last=False)
            return
        pollers.move_to_end(client)
        if poller[0] != key:
            poller[0], poller[1], poller[4] = key, ts, 0
            return
        gap = ts - poller[1]
        poller[1] = ts
        if gap < MIN_POLL_GAP:
            return
        seen = poller[4]
        poller[4] = seen + 1
        if seen == 0:
            poller[2] = gap
            return
        mean = poller[2]
        deviation = abs(gap - mean)
        poller[3] = deviation if seen == 1 else 0.7 * poller[3] + 0.3 * deviation
        poller[2] = mean = (mean + gap) / 2 if seen == 1 else 0.7 * mean + 0.3 * gap
        if seen >= 2 and poller[3] <= POLL_REGULARITY * mean and mean < self.window:
            at = ts + mean - (self.config.refresh_lead + POLL_LEAD + 2.0 * poller[3])
            if at > ts:
                self._plant(at, key, "periodic", 0)

    def _sequence_decisions(self, key: str, ts: float) -> list[str]:
        # Runs inside observe, after the client's request for ``key``: what
        # tends to follow it is planted as decisions due now, so ``due``
        # returns them with the rest.  A transition seen once is no sequence
        # yet; below the floor the calibration could only lower it further.
        assert self.sequences is not None
        keys_get = self._keys.get
        planted = []
        for nxt, confidence, _ in self.sequences.likely_successors(
            key, 3, min_count=2, min_confidence=self.config.min_confidence
        ):
            state = keys_get(nxt)
            if state is not None:
                self._plant(ts, state.key, _SEQUENCE_KINDS[min(int(confidence * 10), 9)], 0)
                planted.append(state.key)
        return planted

    def _neighbour_decision(self, source: _Key, key: str, share: float, ts: float) -> None:
        # Runs inside observe, after a request for ``source``: the numbered
        # neighbour its template's walks usually go on to is planted as a
        # decision due now.  It may be a key nobody asked for yet: then it
        # is followed from now on, named by its URL as the source's was.
        if share < self.config.min_confidence:
            return
        keys = self._keys
        state = keys.get(key)
        if state is None:
            url = key if source.url is source.key else carry_step(source.key, key, source.url)
            if url is None or len(key) + len(url) > self._short_names:
                return
            state = _Key(key, url, source.host, ts)
            keys[key] = state
            if len(keys) > self.config.max_keys:
                keys.popitem(last=False)
                self._forgotten += 1
                if self._forgotten > self._max_forgotten:
                    self._compact(shrink=False)  # as observe does: see there
        self._plant(ts, state.key, _NEIGHBOUR_KINDS[min(int(share * 10), 9)], 0)

    def _request(
        self, key: str, state: _Key, kind: str, confidence: float, at: float
    ) -> WarmRequest:
        self._recent.append((key, state.url, confidence, at, kind))
        self._asked[key] = (1, False)
        if len(self._asked) > self.config.max_keys:
            self._asked.popitem(last=False)
        priority = self.config.priority
        refresh = kind == "expiry"
        request = state.refresh if refresh else state.hint
        if request is None or request.priority != priority:
            request = WarmRequest(
                url=state.url,
                host=state.host,
                priority=priority,
                reason=Reason.PREDICTIVE,
                refresh=refresh,
            )
            if refresh:
                state.refresh = request
            else:
                state.hint = request
        return request

    def _confidence(self, state: _Key, kind: str, at: float) -> tuple[tuple[Any, ...], float]:
        """The feature cell of ``state`` at ``at``, and how likely a warm now is
        to be hit: asked for within the window, and (measured on this model's
        own warms) still cached when it is.  :meth:`due` inlines it."""
        self._decay(state, at)
        age = at - state.last
        log2 = math.log2
        recent = int(log2(state.recent + 1.0) * 2.0)
        trend = int(log2(state.trend + 1.0) * 2.0)
        aged = int(log2(age * self._age_scale + 1.0)) if age > 0 else 0
        cell: tuple[Any, ...] = (
            kind,
            recent if recent < 9 else 9,
            trend if trend < 11 else 11,
            aged if aged < 7 else 7,
            state.clients & 3,
        )
        if kind in _SEASONAL:
            # Whether this key's earlier daily/weekly decisions came true is
            # what tells a recurring peak from a one-off.
            cell = (*cell, state.recurred >> _RECURRED_SHIFT[kind] & 3)
        if kind[0] == "s":  # "sequence:<confidence tenth>"
            prior = (int(kind[9:]) + 0.5) / 10
        elif kind[0] == "n":  # "neighbour:<confidence tenth>"
            prior = (int(kind[10:]) + 0.5) / 10
        else:
            # Poisson estimate from the longer decayed rate.
            prior = 1.0 - math.exp(-state.trend * self._trend_per_window)
        return cell, self.calibration.confidence(cell, prior)

    def _decay(self, state: _Key, now: float) -> None:
        elapsed = now - state.updated
        if elapsed > 0:
            state.recent *= math.exp(self._recent_rate * elapsed)
            state.trend *= math.exp(self._trend_rate * elapsed)
            state.updated = now

    # --------------------------------------------------------------- learning

    def _resolve(self, now: float) -> None:
        """Learn the outcome of every decision whose window ended by ``now``."""
        pending = self._pending
        learn = self._learn
        window = self.window
        while pending and pending[0][0] + window <= now:
            learn(*pending.popleft()[1:])

    def _learn(self, state: _Key, seen: list[float], kind: str, count: int, act: int) -> None:
        """One decision's outcome into its cell's counts ``seen`` (of a cell of
        ``kind``) in the calibration table.

        A key forgotten since (not asked for recently enough to stay
        followed) was not asked for within the window.  A key forgotten and
        followed anew has a state that knows nothing of this decision: the
        decision is discarded.
        """
        current = self._keys.get(state.key)
        if current is not None and current is not state:
            return
        if current is None:
            happened = False
            warm_hit = -1
        else:
            happened = state.count > count
            # Fetched by this warm: did the request find it (used), or was it
            # evicted or replaced first (wasted)?
            warm_hit = state.outcome(act) if act else -1
        seen[0] += 1.0
        if happened:
            seen[1] += 1.0
            if warm_hit >= 0:
                seen[2] += 1.0
                seen[3] += warm_hit
                kinds = self.calibration.kinds
                of_kind = kinds.get(kind[0])
                if of_kind is None:
                    of_kind = kinds[kind[0]] = [0.0, 0.0]
                of_kind[0] += 1.0
                of_kind[1] += warm_hit
            shift = _RECURRED_SHIFT.get(kind)
            if shift is not None and state.recurred >> shift & 3 < 3:
                state.recurred += 1 << shift

    def _plant(self, at: float, key: str, kind: str, generation: int) -> None:
        self._seq += 1
        decisions = self._decisions
        heapq.heappush(decisions, (at, self._seq, key, kind, generation))
        if len(decisions) + self._in_lanes > self._max_decisions:
            self._compact()

    def _plant_seasonal(self, at: float, key: str, kind: str) -> None:
        """:meth:`_plant` for a daily or weekly decision: in its lane when it
        finds its place there at or near the end, else in the heap."""
        self._seq += 1
        lane = self._lanes[kind]
        if not lane:
            lane.append(at, self._seq, key)
            self._in_lanes += 1
            if at < self._lanes_next:
                self._lanes_next = at
        elif at >= lane.last():
            lane.append(at, self._seq, key)
            self._in_lanes += 1
        elif lane.insert(at, self._seq, key):
            # Requests are observed a little out of order (as they complete).
            self._in_lanes += 1
        else:
            heapq.heappush(self._decisions, (at, self._seq, key, kind, 0))
        if len(self._decisions) + self._in_lanes > self._max_decisions:
            self._compact()

    def _drain_lanes(self, now: float) -> None:
        """Move the lanes' decisions due by ``now`` to the heap."""
        decisions = self._decisions
        moved = 0
        heads = math.inf
        for kind, lane in self._lanes.items():
            moved += lane.drain(now, kind, decisions)
            if lane and lane.first() < heads:
                heads = lane.first()
        self._in_lanes -= moved
        self._lanes_next = heads

    def _compact(self, *, shrink: bool = True) -> list[tuple[float, int, str, str, int]]:
        """Shrink the waiting decisions; returns the heap (``self._decisions``).

        Drops the decisions of forgotten keys and replaced expiries, and has
        the others hold their key's followed string (a key forgotten and
        followed anew has a new one).  With ``shrink``, if that is not
        enough, keeps the soonest half (the rest would come too late to
        matter before the keys are re-planted by their next requests).  In
        place: nothing the size of the decisions is copied.
        """
        keys = self._keys
        keys_get = keys.get
        lead = self.config.refresh_lead
        heap = self._decisions
        kept = 0
        for item in heap:
            at, seq, key, kind, generation = item
            state = keys_get(key)
            if state is None:
                continue
            if kind == "expiry" and state.fresh_until - lead != at:
                continue
            if key is not state.key:
                item = (at, seq, state.key, kind, generation)
            heap[kept] = item
            kept += 1
        del heap[kept:]
        self._forgotten = 0
        lanes = self._lanes.values()
        for lane in lanes:
            lane.keep_followed(keys)
        half = self._max_decisions // 2
        if shrink and kept + sum(len(lane) for lane in lanes) > half:
            heap.sort()  # a sorted list is a heap
            # The (time, seq) of the last of the soonest half.
            until = (-math.inf, 0)
            if half > 0:
                merged = heapq.merge(
                    ((item[0], item[1]) for item in heap), *(lane.order() for lane in lanes)
                )
                until = next(itertools.islice(merged, half - 1, None))
            del heap[bisect.bisect_right(heap, until, key=_when) :]
            for lane in lanes:
                lane.truncate(until)
            # A key whose revisit chain was dropped gets a new one at its
            # next request.
            chained = [keys[item[2]] for item in heap if item[3] in _REVISIT_STEP]
            planned = [state.revisit_planned for state in chained]
            for state in keys.values():
                state.revisit_planned = False
            for state, was in zip(chained, planned, strict=True):
                if was:
                    state.revisit_planned = True
        else:
            heapq.heapify(heap)
        self._in_lanes = sum(len(lane) for lane in lanes)
        self._lanes_next = min((lane.first() for lane in lanes if lane), default=math.inf)
        return heap

    # ------------------------------------------------------------ persistence

    def to_document(self) -> dict[str, Any]:
        """The learned state as JSON (the calibration and the followed keys)."""
        return {
            "format": MODEL_FORMAT,
            "version": MODEL_VERSION,
            "prediction_window": self.window,
            "saved_at": self._now,
            "calibration": [[list(cell), *seen] for cell, seen in self.calibration.cells.items()],
            "keys": [
                [key, s.url, s.host, s.updated, s.recent, s.trend, s.last, s.count]
                for key, s in self._keys.items()
            ],
        }

    def load_document(self, document: Any) -> None:
        """Take the state of ``to_document``; ModelFileError when it is not one."""
        if not isinstance(document, dict) or document.get("format") != MODEL_FORMAT:
            raise ModelFileError("not a warmproxy predictive model")
        if document.get("version") != MODEL_VERSION:
            raise ModelFileError(
                f"model version {document.get('version')!r}, this warmproxy reads {MODEL_VERSION}"
            )
        if document.get("prediction_window") != self.window:
            raise ModelFileError("model was trained for another prediction_window")
        calibration = _Calibration()
        keys: OrderedDict[str, _Key] = OrderedDict()
        try:
            for i, (cell, n, asked, warmed, hit) in enumerate(document["calibration"]):
                as_cell = _as_cell(cell)
                if not _is_cell(as_cell):
                    # Only cells this model makes: the table stays within
                    # memory_bound whatever the file holds.
                    raise ValueError(f"calibration cell {i} is not one this model makes")
                calibration.cells[as_cell] = [
                    float(n),
                    float(asked),
                    float(warmed),
                    float(hit),
                ]
            for key, url, host, updated, recent, trend, last, count in document["keys"]:
                key, url, host = str(key), str(url), str(host)
                if sys.getsizeof(key) + sys.getsizeof(url) + sys.getsizeof(host) > (
                    self.config.max_name_bytes
                ):
                    continue  # not followed (see max_name_bytes)
                keys[key] = _Key(
                    key,
                    key if url == key else url,
                    sys.intern(host),
                    float(updated),
                    float(recent),
                    float(trend),
                    float(last),
                    int(count),
                )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"model file damaged: {exc}") from None
        while len(keys) > self.config.max_keys:
            keys.popitem(last=False)
        self.calibration = calibration
        self._keys = keys

    def retrain(self, factor: float = 0.5) -> None:
        """Weigh the evidence so far down so recent behaviour counts more."""
        self.calibration.age(factor)

    # ---------------------------------------------------------------- reports

    def memory_bound(self) -> int:
        """An upper estimate, in bytes, of what this model can ever hold.

        ``fixed + K * (KEY + ASKED + 3B) + D * (DECISION + COMPACT)
        + P * (PENDING + KEY + B) + 200 * (RECENT + B) + CELLS * CELL
        + POLLERS_KEPT * (POLLER + B) + L * (LIFETIME + B)
        + R * (KEPT + B)``, plus
        the sequence model's ``memory_bound()`` when the model owns it (a
        shared one is counted by the usage analysis) and the numbered-walk
        model's (:meth:`warmer.strides.StrideModel.memory_bound`), where:

        - ``K`` = ``max_keys``; ``D`` = 4 * max(1024, K) decisions waiting
          for their time; ``P`` = max(1024, K) awaiting their outcome;
          ``CELLS`` = 115,200, every cell the calibration table can have;
          ``L`` = min(K, 20,000) lifetimes followed to measure what a warm
          displaces; ``R`` = 65,536 keys kept cached with retention on
          (:data:`warmer.retention.MAX_KEPT`), none with it off;
        - ``B`` = ``max_name_bytes``: the most the key, URL and host strings
          of a followed key take (longer ones are not followed).  ``3B`` a
          key: its own names, those of a key forgotten since the last
          compaction that waiting decisions still hold (past ``K`` of them
          the decisions are compacted), and a key awaiting a fill's report;
          a pending decision may hold a forgotten key's state and names;
        - ``KEY`` = 1024 (a followed key: map slot, state, its numbers and
          its two warm requests), ``ASKED`` = 256, ``DECISION`` = 256,
          ``COMPACT`` = 32 (a compaction's passing use), ``PENDING`` = 256,
          ``RECENT`` = 256, ``CELL`` = 512, ``LIFETIME`` = 384, ``KEPT`` = 256,
          ``POLLER`` = 512 (a client
          followed for polling; its id is at most ``B``, its key's name is
          the followed key's): CPython 3.11 64-bit costs
          measured with tracemalloc, rounded up.

        Real use is usually far below: the bound assumes every name is as
        long as allowed, every key forgotten, every limit reached.
        """
        return self._memory_bound(MAX_CELLS)

    def _memory_bound(self, cells: int) -> int:
        """:meth:`memory_bound` with ``cells`` cells in the calibration table."""
        keys = self.config.max_keys
        name = self.config.max_name_bytes
        bound = (
            _FIXED_BYTES
            + keys * (_KEY_BYTES + _ASKED_BYTES + 3 * name)
            + self._max_decisions * (_DECISION_BYTES + _COMPACT_BYTES)
            + self._max_pending * (_PENDING_BYTES + _KEY_BYTES + name)
            + RECENT_KEPT * (_RECENT_BYTES + name)
            + cells * _CELL_BYTES
            + POLLERS_KEPT * (_POLLER_BYTES + name)
        )
        if self._owns_sequences and self.sequences is not None:
            bound += self.sequences.memory_bound()
        if self.strides is not None:
            bound += self.strides.memory_bound()
        # The lifetimes the displacement measure follows: a key's name each.
        bound += self.displacement.max_keys * (_LIFETIME_BYTES + name)
        if self.retention is not None:
            bound += self.retention.memory_bound(name)
        return bound

    def describe(self) -> dict[str, Any]:
        return {
            "followed_keys": len(self._keys),
            "decisions_learned": round(self.calibration.decisions()),
            "cells": len(self.calibration.cells),
            "threshold": round(self.threshold, 4),
            "prediction_window_seconds": self.window,
            "warm_fetches": self.warm_fetches,
            "requests": self.requests,
            "memory_bound_bytes": self.memory_bound(),
            **({"retention": self.retention.describe()} if self.retention is not None else {}),
        }

    def __len__(self) -> int:
        return len(self._keys)


class ModelFileError(ValueError):
    """A saved model that cannot be used (damaged, another version or window)."""


def _surest(fetch: tuple[float, int]) -> tuple[float, int]:
    """The order a round's fetches get tokens in: the surest first, then in time order."""
    return -fetch[0], fetch[1]


def _when(item: tuple[float, int, str, str, int]) -> tuple[float, int]:
    """A waiting decision's place in the order decisions are taken."""
    return item[0], item[1]


def _as_cell(cell: Iterable[Any]) -> tuple[Any, ...]:
    return tuple(cell)


#: The kinds of decision a cell may be of, and the ranges of its features
#: (see Predictor._confidence): what bounds the calibration table.
_CELL_KINDS: Final = frozenset(
    {"expiry", "revisit", *_SEASONAL, *_SEQUENCE_KINDS, *_NEIGHBOUR_KINDS}
)
_CELL_RANGES: Final = (10, 12, 8, 4)  # recent, trend, aged, clients
_RECURRED_RANGE: Final = 4
#: The most cells the calibration table can hold.
MAX_CELLS: Final = len(_CELL_KINDS) * math.prod(_CELL_RANGES) + len(_SEASONAL) * math.prod(
    _CELL_RANGES
) * (_RECURRED_RANGE - 1)


def _is_cell(cell: tuple[Any, ...]) -> bool:
    """Whether ``cell`` is one this model makes (a loaded file may hold anything)."""
    if not cell or cell[0] not in _CELL_KINDS:
        return False
    ranges = (*_CELL_RANGES, _RECURRED_RANGE) if cell[0] in _SEASONAL else _CELL_RANGES
    return len(cell) == 1 + len(ranges) and all(
        type(v) is int and 0 <= v < n for v, n in zip(cell[1:], ranges, strict=True)
    )
