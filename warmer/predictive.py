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

A decision warms when its confidence is at least ``min_confidence``.  The
budget (``max_warm_ratio`` warm fetches per user request) is a token bucket
(:data:`BUDGET_BURST`): when it runs low the threshold rises above that floor,
so the last tokens go to the surest predictions, and over any stretch of
traffic the fetches stay within the budget plus the bucket.  Whether a warmed
entry is still cached when asked for is learned per cell, starting from its
kind's measured rate (a cell new to the table borrows it).  A revisit chain
stops at a step far below the floor (in a cell with enough evidence) until
the key's next request, but for a sample that keeps the table learning: a
long tail of rare URLs costs little.

Sans-I/O (DESIGN rule 2): ``observe``, ``due`` and ``filled`` take time from the
events and the caller; :meth:`Predictor.to_document` / :meth:`Predictor.load_document`
turn the learned state into JSON for :mod:`warmer.state_file` to save and load.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from warmer.model import Observed, Reason, WarmRequest
from warmer.sequences import SequenceModel

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
#: Largest number of open decisions awaiting their outcome.
MAX_PENDING: Final = 200_000
#: Decisions awaiting their time, at most this many per followed key on average.
_HEAP_PER_KEY: Final = 8
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
BUDGET_BURST: Final = 10_000
BUDGET_RESERVE: Final = 500
_CACHED_OUTCOMES = frozenset({"hit", "miss", "stale", "revalidated"})
_HIT_OUTCOMES = frozenset({"hit", "revalidated"})
_SEASONAL = frozenset({"daily", "weekly"})
# The kinds of a revisit chain's steps, and the step of each kind.
_REVISIT_KINDS: Final = ("revisit", *(f"revisit:{i}" for i in range(1, len(REVISIT_AFTER))))
_REVISIT_STEP: Final = {kind: step for step, kind in enumerate(_REVISIT_KINDS)}
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
    #: Keys followed (least recently asked for forgotten first).
    max_keys: int = 50_000
    priority: str = "low"
    sequences: bool = True
    #: Seconds before an entry's expiry its refresh is decided (the live
    #: proxy's tick; the replay decides at the instant of expiry).
    refresh_lead: float = 0.0


@dataclass(slots=True)
class _Key:
    url: str
    host: str
    updated: float  # when the decayed counts were last brought up to date
    recent: float = 0.0  # decayed count, half-life one window
    trend: float = 0.0  # half-life 8 windows
    last: float = 0.0  # last request
    count: int = 0
    clients: set[str] = field(default_factory=set)  # up to 4 distinct ones
    fresh_until: float = 0.0  # the cached entry's freshness end, as events showed
    seasonal_hour: int = -1  # hour (since epoch) of the last seasonal decision planted
    revisit_planned: bool = False  # one revisit chain per key, re-anchored lazily
    recurred: dict[str, int] = field(default_factory=dict)  # daily/weekly decisions that came true
    # This model's warms of it, numbered 1, 2, ...; which of the last
    # _JUDGED were fetched and then found by the next request (used), or
    # fetched and gone before it (wasted: evicted, or replaced by another
    # fetch): bit i is warm ``acts - i``.  A warm that was a free hint, or
    # whose key was not asked for, is neither.
    acts: int = 0
    used: int = 0
    wasted: int = 0
    awaiting: int = 0  # the warm whose fetch awaits the next request (0: none)
    # Its warm requests as last made (a hint, a refresh): the same each time.
    hint: WarmRequest | None = None
    refresh: WarmRequest | None = None

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
    ) -> None:
        """``sequences``: a model shared with the usage analysis; then
        ``feed_sequences=False`` when the analysis already feeds it every event."""
        if config.prediction_window <= 0:
            raise ValueError("prediction_window must be positive")
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
        # Revisits, in seconds after a key's last request.
        self._revisit_offsets = tuple(after * self.window for after in REVISIT_AFTER)
        self.sequences = (
            sequences
            if sequences is not None
            # As many keys as the model follows, so what follows what is
            # not forgotten before the keys themselves are.
            else (
                SequenceModel(max_clients=config.max_keys, max_keys=config.max_keys)
                if config.sequences
                else None
            )
        )
        self._feed_sequences = feed_sequences
        self.calibration = _Calibration()
        self._keys: OrderedDict[str, _Key] = OrderedDict()
        # (time, seq, key, kind, generation): decisions to take at ``time``,
        # in (time, seq) order; ``generation`` is the key's request count
        # when planted (revisits are void once the key was asked for again).
        # They wait in a heap, but for the daily and weekly ones: planted a
        # day or a week ahead, they would make the heap many times larger for
        # nothing until then, so they wait in a FIFO lane per kind (as long
        # as they come in time order; one out of order goes to the heap) and
        # move to the heap when their time comes.  Where a decision waits
        # never changes the order decisions are taken in.
        self._decisions: list[tuple[float, int, str, str, int]] = []
        self._lanes: dict[str, deque[tuple[float, int, str, str, int]]] = {
            kind: deque() for kind in _SEASONAL
        }
        self._in_lanes = 0  # decisions waiting in the lanes
        self._lanes_next = math.inf  # the earliest time at the head of a lane
        # (resolve_at, key, state, cell, count_then, act): decisions awaiting
        # their outcome (``act``: the number of the warm it made, 0 none).
        # ``state`` is the key's state the decision was taken on: one dropped
        # since (more keys than max_keys) and re-created when the key came
        # back is another, and the decision is discarded, not judged on it.
        # Decisions are taken in time order, so this is a FIFO.
        self._pending: deque[tuple[float, str, _Key, tuple[Any, ...], int, int]] = deque()
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
        keys = self._keys
        state = keys.get(key)
        if state is None:
            state = _Key(event.url, event.host, ts)
            keys[key] = state
            if len(keys) > config.max_keys:
                keys.popitem(last=False)
        else:
            keys.move_to_end(key)
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
        state.recent += 1.0
        state.trend += 1.0
        state.last = ts
        count = state.count = state.count + 1
        client = event.client
        clients = state.clients
        if len(clients) < 4 and client:
            clients.add(client)
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
            hour = int(ts // 3600)
            if hour != state.seasonal_hour:
                state.seasonal_hour = hour
                lead = SEASONAL_LEAD * self.window
                self._plant_seasonal(ts + DAY - lead, key, "daily")
                self._plant_seasonal(ts + WEEK - lead, key, "weekly")
        sequences = self.sequences
        if sequences is not None and client:
            if self._feed_sequences:
                sequences.observe(client, key, ts)
            # What tends to follow the key, after every request for it (a
            # successor still cached is a free hint).
            self._sequence_decisions(key, ts)

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
        if state is None or fresh_until <= state.fresh_until:
            return
        state.fresh_until = fresh_until
        self._plant(fresh_until - self.config.refresh_lead, key, "expiry", 0)

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
        if pending and pending[0][0] <= now:
            self._resolve(now)
        if self._lanes_next <= now:
            self._drain_lanes(now)
        out: list[WarmRequest] = []
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
        window = self.window
        threshold = self.threshold
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
        max_pending = MAX_PENDING
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
        while decisions and decisions[0][0] <= now:
            at, _, key, kind, generation = heappop(decisions)
            chain_next: tuple[float, int, int] | None = None
            state = keys_get(key)
            if state is None:
                continue
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
            clients = len(state.clients)
            cell: tuple[Any, ...] = (
                kind,
                recent if recent < 9 else 9,
                trend if trend < 11 else 11,
                aged if aged < 7 else 7,
                clients if clients < 3 else 3,
            )
            if plain:
                prior = 1.0 - exp(-trend_count * trend_per_window)
            else:
                if kind in _SEASONAL:
                    recurred = state.recurred.get(kind, 0)
                    cell = (*cell, recurred if recurred < 3 else 3)
                if kind[0] == "s":  # "sequence:<confidence tenth>"
                    prior = (int(kind[9:]) + 0.5) / 10
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
            else:
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
            if confidence >= threshold:
                act = state.new_warm()
                out.append(self._request(key, state, kind, confidence, at))
            else:
                act = 0
            # Await the outcome (decisions are taken in time order: a FIFO).
            pending.append((at + window, key, state, cell, state.count, act))
            if len(pending) > max_pending:
                # Resolve the oldest early rather than grow.
                self._learn(*pending.popleft()[1:])
        self._seq = seq
        return out

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

    def _sequence_decisions(self, key: str, ts: float) -> None:
        # Runs inside observe, after the client's request for ``key``: what
        # tends to follow it is planted as decisions due now, so ``due``
        # returns them with the rest.  A transition seen once is no sequence
        # yet; below the floor the calibration could only lower it further.
        assert self.sequences is not None
        keys = self._keys
        for nxt, confidence, _ in self.sequences.likely_successors(
            key, 3, min_count=2, min_confidence=self.config.min_confidence
        ):
            if nxt in keys:
                self._plant(ts, nxt, f"sequence:{min(int(confidence * 10), 9)}", 0)

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
        clients = len(state.clients)
        cell: tuple[Any, ...] = (
            kind,
            recent if recent < 9 else 9,
            trend if trend < 11 else 11,
            aged if aged < 7 else 7,
            clients if clients < 3 else 3,
        )
        if kind in _SEASONAL:
            # Whether this key's earlier daily/weekly decisions came true is
            # what tells a recurring peak from a one-off.
            recurred = state.recurred.get(kind, 0)
            cell = (*cell, recurred if recurred < 3 else 3)
        if kind[0] == "s":  # "sequence:<confidence tenth>"
            prior = (int(kind[9:]) + 0.5) / 10
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
        while pending and pending[0][0] <= now:
            learn(*pending.popleft()[1:])

    def _learn(self, key: str, state: _Key, cell: tuple[Any, ...], count: int, act: int) -> None:
        """One decision's outcome into the calibration table.

        A key forgotten since (not asked for recently enough to stay
        followed) was not asked for within the window.  A key forgotten and
        followed anew has a state that knows nothing of this decision: the
        decision is discarded.
        """
        current = self._keys.get(key)
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
        seen = self.calibration.cells.get(cell)
        if seen is None:
            seen = self.calibration.cells[cell] = [0.0, 0.0, 0.0, 0.0]
        seen[0] += 1.0
        if happened:
            seen[1] += 1.0
            if warm_hit >= 0:
                seen[2] += 1.0
                seen[3] += warm_hit
                kind = self.calibration.kinds.get(cell[0][0])
                if kind is None:
                    kind = self.calibration.kinds[cell[0][0]] = [0.0, 0.0]
                kind[0] += 1.0
                kind[1] += warm_hit
            if cell[0] in _SEASONAL:
                kind = cell[0]
                state.recurred[kind] = state.recurred.get(kind, 0) + 1

    def _plant(self, at: float, key: str, kind: str, generation: int) -> None:
        self._seq += 1
        decisions = self._decisions
        heapq.heappush(decisions, (at, self._seq, key, kind, generation))
        if len(decisions) + self._in_lanes > self._max_decisions:
            self._compact()

    def _plant_seasonal(self, at: float, key: str, kind: str) -> None:
        """:meth:`_plant` for a daily or weekly decision: in its lane when that
        keeps the lane in time order, else in the heap."""
        self._seq += 1
        item = (at, self._seq, key, kind, 0)
        lane = self._lanes[kind]
        if not lane:
            lane.append(item)
            self._in_lanes += 1
            if at < self._lanes_next:
                self._lanes_next = at
        elif at >= lane[-1][0]:
            lane.append(item)
            self._in_lanes += 1
        else:
            heapq.heappush(self._decisions, item)
        if len(self._decisions) + self._in_lanes > self._max_decisions:
            self._compact()

    def _drain_lanes(self, now: float) -> None:
        """Move the lanes' decisions due by ``now`` to the heap."""
        decisions = self._decisions
        moved = 0
        heads = math.inf
        for lane in self._lanes.values():
            while lane and lane[0][0] <= now:
                heapq.heappush(decisions, lane.popleft())
                moved += 1
            if lane and lane[0][0] < heads:
                heads = lane[0][0]
        self._in_lanes -= moved
        self._lanes_next = heads

    def _compact(self) -> list[tuple[float, int, str, str, int]]:
        """Shrink the waiting decisions; returns the new heap (``self._decisions``)."""
        # Drop decisions of forgotten keys and replaced expiries; if that is
        # not enough, keep the soonest half (the rest would come too late to
        # matter before the keys are re-planted by their next requests).
        keep = []
        for item in itertools.chain(self._decisions, *self._lanes.values()):
            at, _, key, kind, _generation = item
            state = self._keys.get(key)
            if state is None:
                continue
            if kind == "expiry" and state.fresh_until - self.config.refresh_lead != at:
                continue
            keep.append(item)
        if len(keep) > self._max_decisions // 2:
            keep = heapq.nsmallest(self._max_decisions // 2, keep)
            kept_revisits = {item[2] for item in keep if item[3].startswith("revisit")}
            for key, state in self._keys.items():
                if key not in kept_revisits:
                    state.revisit_planned = False
        heapq.heapify(keep)
        self._decisions = keep
        for lane in self._lanes.values():
            lane.clear()
        self._in_lanes = 0
        self._lanes_next = math.inf
        return keep

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
            for cell, n, asked, warmed, hit in document["calibration"]:
                calibration.cells[_as_cell(cell)] = [
                    float(n),
                    float(asked),
                    float(warmed),
                    float(hit),
                ]
            for key, url, host, updated, recent, trend, last, count in document["keys"]:
                keys[str(key)] = _Key(
                    str(url),
                    str(host),
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

    def describe(self) -> dict[str, Any]:
        return {
            "followed_keys": len(self._keys),
            "decisions_learned": round(self.calibration.decisions()),
            "cells": len(self.calibration.cells),
            "threshold": round(self.threshold, 4),
            "prediction_window_seconds": self.window,
            "warm_fetches": self.warm_fetches,
            "requests": self.requests,
        }

    def __len__(self) -> int:
        return len(self._keys)


class ModelFileError(ValueError):
    """A saved model that cannot be used (damaged, another version or window)."""


def _as_cell(cell: Iterable[Any]) -> tuple[Any, ...]:
    return tuple(cell)
