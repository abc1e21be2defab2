"""Measured precision of a strategy's own warm fetches, per class of decision,
with a floor below which a class stops warming.

A warm fetch pays for itself when a request hits the entry it stored and would
have missed without it.  It costs an origin fetch either way, and on a full
cache it displaces another entry that might have been hit.  A strategy that
warms on its own judgement (refresh-ahead, miss-reactive, the predictive
model) therefore measures how often its warms are used and stops making the
kinds of decision whose warms mostly are not.

Three sans-I/O parts (DESIGN rule 2), each O(1) per call (amortised) and
bounded in memory:

- :class:`PrecisionGate`: per *class* of decision (a small hashable label the
  strategy chooses, e.g. ``("misses", 2, LAST_UNUSED)``), decayed counts of
  its warms used and judged.  A class whose precision is below the floor, with
  the evidence to say so (the upper end of a Wilson score interval is below
  the floor), is *closed*: its decisions are refused, but for one in 16, then
  fewer while those are wasted too, whose outcomes keep measuring it, so a
  class reopens when the traffic changes.  A class with little evidence of its
  own leans on all classes together; while it is not clearly above its floor,
  it may have only so many warms awaiting their outcome (an unused warm is
  known only when its entry expires).
- :class:`WarmWatch`: follows each warm a strategy asked for to its outcome,
  and tells the gate.  A warm is **used** when a user request hits the
  lifetime its fill stored (``outcome == "hit"`` with that ``fresh_until``)
  at a time the key would not have been fresh without it, and it does not
  take that hit back (see the class); **unused** when that lifetime expires,
  is evicted (a request finds another lifetime or none while it should be
  fresh) or is replaced by another fill first.  A warm never filled (a hint
  for an entry already fresh, a request refused, or one still queued after
  ``fill_grace`` seconds) is not judged.
- :class:`DisplacementCost`: what a warm costs in hits on this cache,
  measured from the events: a warm of a key whose entry is likely evicted
  stores a new entry and displaces another one, which costs a hit when that
  one is asked for while still fresh.  The floor a strategy gives its gate
  for a decision is the larger of its ``min_precision`` (a floor of origin
  spend) and that decision's break-even, so warms stop where they would lose
  hit ratio.

Plugging a strategy in: ask :meth:`PrecisionGate.allows` before each warm;
call :meth:`WarmWatch.asked` with the class when the warm request is
returned, :meth:`WarmWatch.filled` from the strategy's ``filled`` (for every
fill: another's fill of the key replaces its warm), :meth:`WarmWatch.observe`
from its ``observe`` when ``key in watch.open`` (one dict lookup per
request), and :meth:`WarmWatch.settle` at the top of ``due``; feed
:class:`DisplacementCost` every event and fill, and set ``gate.floor`` to
``max(min_precision, cost.break_even(key, now))`` before each decision.
:meth:`WarmWatch.last` (the outcome of the key's previous warm) and whether
the key is likely evicted (:meth:`DisplacementCost.evicted`) are useful parts
of a class.

The evidence of a class is decayed (old outcomes weigh half after
:data:`HALF_LIFE` newer ones), so it never amounts to more than about 90
judged warms: a class can be closed only at floors above about 0.02.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Final

from warmer.audience import one_entry
from warmer.model import Observed

__all__ = [
    "DEFAULT_MIN_PRECISION",
    "LAST_NONE",
    "LAST_UNUSED",
    "LAST_USED",
    "DisplacementCost",
    "PrecisionGate",
    "WarmWatch",
    "bucket",
]

#: The default floor (``[strategies.reactive] min_precision``): of origin
#: spend alone, one warm in ten used.  What a warm costs in hit ratio depends
#: on the cache (with no warming, the share of fills that displace an entry
#: asked for again while still fresh is 0 on WorldCup98 20 %/300 s and YouTube
#: 20 %/3600 s, 3 % on YouTube 5 % and about half on WorldCup98 5 %), so that
#: part is measured as the traffic runs (:class:`DisplacementCost`) and raises
#: the floor on its own.  A higher default cuts gains that cost no hit ratio:
#: refresh-ahead on YouTube 20 %/3600 s gains +0.74 points with no floor (31 %
#: precision), +0.71 with this one, +0.28 and +0.25 with 0.2 and 0.3; lower,
#: keys that are never asked for again (a block scan) go on costing origin
#: fetches.
DEFAULT_MIN_PRECISION: Final = 0.1
#: Judged warms after which a class's old evidence weighs half.
HALF_LIFE: Final = 64.0
#: Judged warms (decayed) a class needs before it may close: the Wilson bound
#: asks for more where the floor is low (15 wasted warms in a row at 0.1, 2 at
#: 0.9).  A first run of bad luck may close a good class; its explorations
#: reopen it with its first used warm or two.
MIN_EVIDENCE: Final = 4.0
#: A class with less evidence than this leans on all classes together, as if
#: it had seen their precision over the rest of these judged warms: on
#: traffic where every kind of decision is wasted, a new kind starts closed.
PRIOR_WEIGHT: Final = 8.0
#: Warms awaiting their outcome a class not clearly above its floor may have,
#: at least (more as its judged warms grow), and all classes together before
#: there is any evidence: an unused warm is known only when its entry
#: expires, and with hour-long lifetimes a class would otherwise spend an hour
#: of decisions before the outcomes that close it come in.
PROBATION: Final = 8
#: One in this many decisions of a closed class still warms, to keep measuring
#: it; the gap doubles after each of them, up to :data:`MAX_EXPLORE_EVERY`,
#: until one of its warms is used: a class that stays useless costs less and
#: less (a warm on a cache short of room costs a hit), and one warm used
#: brings the sampling back to one in 16.
EXPLORE_EVERY: Final = 16
MAX_EXPLORE_EVERY: Final = 1024
#: Normal quantile of the Wilson upper bound: a class closes when its precision
#: is below the floor with about 90 % confidence.
Z: Final = 1.2816

#: :class:`DisplacementCost`: the quantile of (log) seconds from an evicted
#: key's last request to the request finding it dropped taken as the time an
#: entry lasts in the cache unasked, and the step of its streaming estimate.
GAP_QUANTILE: Final = 0.1
GAP_STEP: Final = 0.05

#: :meth:`WarmWatch.last`: the key's previous warm, as judged.
LAST_NONE: Final = 0
LAST_USED: Final = 1
LAST_UNUSED: Final = 2


def bucket(n: int, top: int = 6) -> int:
    """A count as a power-of-two bucket (0, 1, 2-3, 4-7, ...), at most ``top``:
    a few classes whatever the counts."""
    return min(n.bit_length(), top) if n > 0 else 0


def wilson_upper(used: float, total: float, z: float = Z) -> float:
    """Upper end of the Wilson score interval of ``used / total``."""
    if total <= 0 or used >= total:
        return 1.0
    p = used / total
    z2 = z * z
    denominator = 1.0 + z2 / total
    centre = p + z2 / (2.0 * total)
    spread = z * math.sqrt(max(0.0, p * (1.0 - p) / total + z2 / (4.0 * total * total)))
    return min(1.0, (centre + spread) / denominator)


@dataclass(slots=True)
class _Class:
    used: float = 0.0  # decayed count of used warms
    judged: float = 0.0  # decayed count of judged warms
    # The precision it may have, at the confidence of Z (1.0 until enough evidence).
    upper: float = 1.0
    lower: float = 0.0  # the precision it has at least, at that confidence
    decisions: int = 0  # decisions refused since its last exploration
    gap: int = EXPLORE_EVERY  # decisions between two explorations while closed
    refused: int = 0  # decisions refused, ever (a figure for status pages)
    pending: int = 0  # warms allowed whose outcome is not known yet


class PrecisionGate:
    """Per-class precision of judged warms, and whether each class may warm."""

    def __init__(
        self,
        floor: float = DEFAULT_MIN_PRECISION,
        *,
        half_life: float = HALF_LIFE,
        min_evidence: float = MIN_EVIDENCE,
        explore_every: int = EXPLORE_EVERY,
        max_explore_every: int = MAX_EXPLORE_EVERY,
        max_classes: int = 1024,
    ) -> None:
        if not 0.0 <= floor <= 1.0:
            raise ValueError(f"min_precision must be between 0 and 1, got {floor}")
        if (
            half_life <= 0
            or min_evidence < 0
            or not 1 <= explore_every <= max_explore_every
            or max_classes < 1
        ):
            raise ValueError("half_life, min_evidence, explore_every, max_classes out of range")
        self.floor = floor
        self.min_evidence = min_evidence
        self.explore_every = explore_every
        self.max_explore_every = max_explore_every
        self.max_classes = max_classes
        self._keep = 0.5 ** (1.0 / half_life)
        self._classes: OrderedDict[Hashable, _Class] = OrderedDict()
        # All classes together (decayed alike): the prior of a new class.
        self._used = 0.0
        self._judged = 0.0
        self._pending = 0  # warms allowed awaiting their outcome, all classes
        self.refused = 0  # decisions refused, all classes

    def allows(self, cls: Hashable) -> bool:
        """Whether a decision of ``cls`` may warm now (counts the decision;
        a warm allowed awaits :meth:`record` or :meth:`forget`)."""
        c = self._classes.get(cls)
        if c is None:
            c = self._new(cls)
        lower, upper = (c.lower, c.upper) if c.judged >= PRIOR_WEIGHT else self._bounds(c)
        floor = self.floor
        if upper >= floor:
            # Not clearly above the floor: it may have only so many warms
            # awaiting their outcome (more as its evidence grows), and all
            # classes together only so many before there is any evidence.
            if (
                lower < floor
                and floor > 0.0
                and (
                    c.pending >= max(PROBATION, c.judged)
                    or (self._judged < self.min_evidence and self._pending >= PROBATION)
                )
            ):
                c.refused += 1
                self.refused += 1
                return False
            c.pending += 1
            self._pending += 1
            return True
        c.decisions += 1
        if c.decisions >= c.gap:
            # Exploration: its outcome keeps the class measured.
            c.decisions = 0
            c.gap = min(2 * c.gap, self.max_explore_every)
            c.pending += 1
            self._pending += 1
            return True
        c.refused += 1
        self.refused += 1
        return False

    def revise(self, cls: Hashable) -> None:
        """A warm of ``cls`` recorded as used turned out to have cost its hit
        back: count it as unused."""
        c = self._classes.get(cls)
        self._used = max(0.0, self._used - 1.0)
        if c is not None:
            c.used = max(0.0, c.used - 1.0)
            c.lower, c.upper = self._bounds(c)

    def forget(self, cls: Hashable) -> None:
        """A warm allowed will not be judged (never filled, or forgotten)."""
        c = self._classes.get(cls)
        if c is not None and c.pending > 0:
            c.pending -= 1
            self._pending -= 1

    def record(self, cls: Hashable, used: float) -> None:
        """A warm of ``cls`` was judged: ``used`` 1 (``True``) or 0."""
        keep = self._keep
        c = self._classes.get(cls)
        if c is None:
            c = self._new(cls)
        else:
            self._classes.move_to_end(cls)
        if c.pending > 0:
            c.pending -= 1
            self._pending -= 1
        self._used = self._used * keep + used
        self._judged = self._judged * keep + 1.0
        c.used = c.used * keep + used
        c.judged = c.judged * keep + 1.0
        c.lower, c.upper = self._bounds(c)
        if used > 0.0 or c.upper >= self.floor:
            c.gap = self.explore_every  # worth sampling again at the first rate

    def _bounds(self, c: _Class) -> tuple[float, float]:
        """The least and the most precision ``c`` may have (0 and 1 without
        enough evidence).  A class with little evidence of its own leans on
        all classes together, as if it had seen their precision over
        :data:`PRIOR_WEIGHT` warms."""
        used = c.used
        judged = c.judged
        pool = self._judged
        if judged < PRIOR_WEIGHT and pool >= self.min_evidence:
            weight = PRIOR_WEIGHT - judged
            used += weight * self._used / pool
            judged = PRIOR_WEIGHT
        if judged < self.min_evidence:
            return 0.0, 1.0
        return 1.0 - wilson_upper(judged - used, judged), wilson_upper(used, judged)

    def _new(self, cls: Hashable) -> _Class:
        classes = self._classes
        c = classes[cls] = _Class()
        if len(classes) > self.max_classes:
            _, oldest = classes.popitem(last=False)
            self._pending -= oldest.pending
        return c

    def closed(self, cls: Hashable) -> bool:
        """Whether ``cls`` is closed at the current floor: its precision is
        below it, with enough evidence to say so."""
        c = self._classes.get(cls)
        return c is not None and self._bounds(c)[1] < self.floor

    def precision(self, cls: Hashable) -> float | None:
        """The decayed measured precision of ``cls`` (None: nothing judged)."""
        c = self._classes.get(cls)
        if c is None or c.judged <= 0:
            return None
        return c.used / c.judged

    def describe(self) -> dict[str, object]:
        """The classes as a status page shows them."""
        return {
            "floor": self.floor,  # of the latest decision
            "refused": self.refused,
            "classes": [
                {
                    "class": "/".join(str(part) for part in cls)
                    if isinstance(cls, tuple)
                    else str(cls),
                    "precision": round(c.used / c.judged, 4) if c.judged else None,
                    "judged": round(c.judged, 1),
                    "closed": self._bounds(c)[1] < self.floor,
                    "refused": c.refused,
                    "pending": c.pending,
                }
                for cls, c in self._classes.items()
            ],
        }

    def __len__(self) -> int:
        return len(self._classes)


# A followed lifetime: its freshness end, the last request or fill, and the
# variant of that request or fill (Vary names, values, content-coding).
_Followed = tuple[float, float, tuple[str, ...], tuple[str | None, ...], str]


class DisplacementCost:
    """What a warm fetch costs in hits on this cache, measured from the events.

    Every fill stores an entry; on a full cache it displaces another, and that
    costs a hit when the displaced entry is asked for while it would still
    have been fresh.  A strategy cannot see evictions, but it sees their
    effect: a request that misses a key whose last lifetime should still be
    fresh (an *early drop*).  Early drops per fill (user misses and warm
    fills, decayed over the last ``horizon`` or so) is ``cost``, the hit a
    fill costs.  On a cache large enough for its traffic, nothing fresh is
    evicted and the cost is 0.

    Whether a warm displaces anything depends on whether its key is still
    cached (:meth:`break_even`).  ``scale`` estimates how long an entry lasts
    in the cache without being asked for: a low quantile of the time from an
    evicted key's last request to the request that found it dropped.

    Follows up to ``max_keys`` keys' lifetimes (least recently seen
    forgotten first); a drop of a key no longer followed goes unseen, so on
    a catalogue far larger than that the cost is underestimated.
    """

    def __init__(
        self, *, max_keys: int = 10_000, horizon: float = 20_000.0, match_coding: bool = True
    ) -> None:
        self.max_keys = max_keys
        self._keep = 1.0 - 1.0 / horizon
        # Whether the cache answers a request from a variant stored for
        # another Accept-Encoding of an accepted coding (one_entry).
        self._match_coding = match_coding
        # key -> (freshness end, last request or fill, and the variant of
        # that request or fill: the Vary names, values and coding)
        self._fresh: OrderedDict[str, _Followed] = OrderedDict()
        self._fills = 0.0
        self._drops = 0.0
        # Mean (over the last thousand or so) of log(seconds) from an evicted
        # key's last request to the request that found it dropped.
        self._log_gap = 0.0
        self._gaps = 0

    def observe(self, event: Observed) -> None:
        """A user request: a hit, or a miss that stored (or refreshed) an
        entry, of the variant the event names."""
        key = event.key
        outcome = event.outcome
        fresh_until = event.fresh_until
        ts = event.ts
        fresh = self._fresh
        if outcome == "hit":
            if fresh_until > 0.0:
                fresh[key] = (fresh_until, ts, event.vary, event.vary_values, event.coding)
                fresh.move_to_end(key)
            return
        if outcome == "bypass":
            return
        was = fresh.get(key)
        if was is not None and was[0] == fresh_until != math.inf:
            # The lifetime it already follows: a request that waited for the
            # same fill (collapsed), or another variant's (Vary) answered
            # from that fill.  Nothing was dropped, nothing new stored.
            # (Entries that never expire, in the replay, all end at
            # infinity: no lifetime is told apart by its end there, and no
            # request shares another's fill.)
            return
        vary, vary_values, coding = event.vary, event.vary_values, event.coding
        if (
            was is not None
            and was[0] > ts
            and outcome == "miss"
            and one_entry(
                was[2], was[3], was[4], vary, vary_values, coding, match_coding=self._match_coding
            )
        ):
            # Dropped while fresh: evicted (or purged).  A miss of another
            # variant is not (a browser whose Accept-Language no request
            # had before misses while the others' entry is fresh).  Only
            # the variant last asked for is followed, so the eviction of
            # another goes unseen: the cost is underestimated, never made up.
            self._drops += 1.0
            gap = math.log(max(ts - was[1], 1e-3))
            if self._gaps == 0:
                self._log_gap = gap
            self._gaps += 1
            # A streaming GAP_QUANTILE quantile (a step up when above it, a
            # larger one down when below): about where evictions happen.
            self._log_gap += GAP_STEP * (GAP_QUANTILE - (1.0 if gap < self._log_gap else 0.0))
        if fresh_until > 0.0:
            self._fill(key, fresh_until, ts, vary, vary_values, coding)
        elif was is not None:
            del fresh[key]  # not stored: nothing of it is cached

    def filled(
        self,
        key: str,
        fresh_until: float,
        now: float,
        vary: tuple[str, ...] = (),
        vary_values: tuple[str | None, ...] = (),
        coding: str = "",
    ) -> None:
        """A warm fill stored an entry (of that variant)."""
        if fresh_until > 0.0:
            self._fill(key, fresh_until, now, vary, vary_values, coding)

    @property
    def cost(self) -> float:
        """Expected hits one more fill costs (0 to 1)."""
        return self._drops / self._fills if self._fills >= 1.0 else 0.0

    @property
    def scale(self) -> float:
        """Seconds after their last request evicted keys were asked for again
        (``math.inf`` before any was)."""
        return math.exp(self._log_gap) if self._gaps else math.inf

    def evicted(self, key: str, now: float) -> float:
        """How likely ``key``'s entry is no longer cached at ``now`` (0 to 1):
        the time since its last request (or fill) against ``scale``; 1 for a
        key not followed, once anything was evicted."""
        was = self._fresh.get(key)
        if not self._gaps:
            return 0.0
        if was is None:
            return 1.0
        return min(1.0, max(0.0, now - was[1]) / self.scale)

    def break_even(self, key: str, now: float) -> float:
        """The precision below which a warm of ``key`` at ``now`` loses hit
        ratio: ``cost`` times :meth:`evicted`.

        A warm of a key still cached refreshes its entry in place and
        displaces nothing when it is made (the miss it prevents would have
        stored the entry again anyway).  A warm of a key already evicted
        stores a new entry and displaces another one, which costs ``cost``
        whether the warm is used or not: used with probability ``p``, it
        gains ``p - cost``.  (Measured: on a paginated API with hour-long
        lifetimes and a cache of 20 % of its keys, miss-reactive warms used
        54 % of the time lost 0.2-0.5 points against no warming when the
        floor took used warms as free, ``c / (1 + c)``; this one gains.)
        """
        return self.cost * self.evicted(key, now)

    def _fill(
        self,
        key: str,
        fresh_until: float,
        now: float,
        vary: tuple[str, ...],
        vary_values: tuple[str | None, ...],
        coding: str,
    ) -> None:
        keep = self._keep
        self._fills = self._fills * keep + 1.0
        self._drops *= keep
        fresh = self._fresh
        fresh[key] = (fresh_until, now, vary, vary_values, coding)
        fresh.move_to_end(key)
        if len(fresh) > self.max_keys:
            fresh.popitem(last=False)


# The states of a followed warm.
_ASKED: Final = 0  # returned to the runner, its fill not reported yet
_FILLED: Final = 1  # its lifetime is cached, not yet hit when it would have missed
_HIT: Final = 2  # hit when it would have missed: used, unless it costs that hit back


@dataclass(slots=True)
class _Open:
    cls: Hashable
    state: int
    seq: int  # the heap item that is current for it
    covered: float  # before this, the key would have been fresh without the warm
    fresh_until: float = 0.0  # the lifetime the fill stored
    filled_at: float = 0.0
    until: float = 0.0  # _HIT: the end of the lifetime a miss at the hit would have stored


class WarmWatch:
    """Follows each warm a strategy asked for until it is used or not, and
    records the outcome in a :class:`PrecisionGate`.

    *Used* means the warm turned a miss into a hit and did not take it back:

    - a hit counts only from ``covered`` on (:meth:`asked`): a refresh made
      before the old lifetime ended is not used by the hits that old lifetime
      would have answered anyway;
    - a warm stores its lifetime earlier than the miss it prevents would
      have, so that lifetime also ends earlier.  After the hit, until the
      lifetime the miss would have stored would have ended, a miss for the
      key (its entry expired, nothing refreshed it) is a hit the warm cost:
      the warm, recorded as used at its hit (so that good news is not held
      back for a lifetime), is then revised to unused.  A new warm of the key
      in that span (a chain of warms keeping a key fresh) carries the span
      on: its hits within it are not gains of its own.
    """

    def __init__(
        self,
        gate: PrecisionGate,
        *,
        max_open: int = 10_000,
        max_keys: int = 10_000,
        fill_grace: float = 300.0,
    ) -> None:
        self.gate = gate
        self.max_open = max_open
        self.max_keys = max_keys
        self.fill_grace = fill_grace
        #: Keys with a warm awaiting its outcome (a strategy checks ``key in
        #: watch.open`` before calling :meth:`observe`, on every request).
        self.open: dict[str, _Open] = {}
        self._last: OrderedDict[str, int] = OrderedDict()
        # (deadline, seq, key): an ask's grace, a fill's expiry, a hit's span.
        self._heap: list[tuple[float, int, str]] = []
        self._seq = 0
        self.used = 0
        self.unused = 0

    # ------------------------------------------------------------ the strategy

    def asked(self, key: str, cls: Hashable, now: float, covered: float | None = None) -> None:
        """The strategy returned a warm request for ``key``, a decision of
        ``cls`` the gate allowed; ``covered``: until when the key's current
        entry (if any) is fresh anyway (default ``now``)."""
        covered = now if covered is None else covered
        open_ = self.open
        previous = open_.get(key)
        if previous is not None:
            state = previous.state
            if state == _HIT:
                # A chain: this warm keeps the key fresh through the span in
                # which the previous one could have cost its hit back.
                covered = max(covered, previous.until)
                del open_[key]
            elif state == _FILLED:
                self._judge(key, previous, used=False)  # replaced before any gain
            else:
                del open_[key]
                self.gate.forget(previous.cls)
        self._seq += 1
        open_[key] = _Open(cls, _ASKED, self._seq, covered)
        self._push(now + self.fill_grace, key)
        if len(open_) > self.max_open:
            # The oldest open warm is forgotten unjudged (dicts keep insertion order).
            oldest = next(iter(open_))
            self.gate.forget(open_.pop(oldest).cls)

    def withdraw(self, key: str) -> None:
        """The warm just asked for ``key`` will not be made (another replica of
        a fleet makes it): forgotten unjudged, as one never filled."""
        warm = self.open.get(key)
        if warm is not None and warm.state == _ASKED:
            del self.open[key]
            self.gate.forget(warm.cls)

    def filled(self, key: str, fresh_until: float, now: float) -> None:
        """A fill stored a lifetime for ``key`` (whoever asked for it)."""
        warm = self.open.get(key)
        if warm is None or fresh_until <= 0.0:
            return
        state = warm.state
        if state == _ASKED:
            # The fill this warm asked for: judged by its lifetime from now on.
            warm.state = _FILLED
            warm.fresh_until = fresh_until
            warm.filled_at = now
            self._seq += 1
            warm.seq = self._seq
            self._push(fresh_until, key)
        elif fresh_until != warm.fresh_until:
            if state == _HIT:
                del self.open[key]  # the new lifetime keeps the gain
            else:
                self._judge(key, warm, used=False)  # replaced before any gain

    def observe(self, key: str, outcome: str, fresh_until: float, ts: float) -> None:
        """A user request for ``key`` (call only when ``key in self.open``)."""
        warm = self.open.get(key)
        if warm is None or outcome == "bypass":
            return
        state = warm.state
        if state == _FILLED:
            if outcome == "hit" and fresh_until == warm.fresh_until:
                if ts >= warm.covered:
                    # A hit that would have been a miss: used, unless taken back.
                    self._record(key, warm.cls, used=1.0)
                    warm.state = _HIT
                    warm.until = ts + (warm.fresh_until - warm.filled_at)
                    self._seq += 1
                    warm.seq = self._seq
                    self._push(warm.until, key)
            else:
                # Another lifetime or none: the warmed one expired, was evicted
                # or replaced before it gained anything.
                self._judge(key, warm, used=False)
        elif state == _HIT and outcome != "hit":
            del self.open[key]
            if warm.fresh_until <= ts < warm.until:
                # A miss after its lifetime ended, when the lifetime the
                # prevented miss would have stored would still be fresh: the
                # hit is lost again.  (A miss while its own lifetime should
                # be fresh is an eviction, which that lifetime would have met
                # as well.)
                self.gate.revise(warm.cls)
                self.used -= 1
                self.unused += 1
                if key in self._last:
                    self._last[key] = LAST_UNUSED

    def settle(self, now: float) -> None:
        """Judge the warms whose lifetime ended without a gain, and those whose
        gain can no longer be taken back, by ``now``; forget the asks never
        filled within the grace."""
        heap = self._heap
        if not heap or heap[0][0] > now:
            return
        heappop = heapq.heappop
        open_ = self.open
        while heap and heap[0][0] <= now:
            _, seq, key = heappop(heap)
            warm = open_.get(key)
            if warm is None or warm.seq != seq:
                continue
            state = warm.state
            if state == _FILLED:
                self._judge(key, warm, used=False)  # expired: no hit was possible after
            elif state == _HIT:
                del open_[key]  # its gain can no longer be taken back
            else:
                del open_[key]
                self.gate.forget(warm.cls)

    def last(self, key: str) -> int:
        """The key's previous judged warm: :data:`LAST_NONE`, :data:`LAST_USED`
        or :data:`LAST_UNUSED`."""
        return self._last.get(key, LAST_NONE)

    # ---------------------------------------------------------------- internals

    def _judge(self, key: str, warm: _Open, *, used: bool) -> None:
        del self.open[key]
        self._record(key, warm.cls, used=1.0 if used else 0.0)

    def _record(self, key: str, cls: Hashable, *, used: float) -> None:
        self.gate.record(cls, used)
        if used > 0.0:
            self.used += 1
        else:
            self.unused += 1
        last = self._last
        last[key] = LAST_USED if used else LAST_UNUSED
        last.move_to_end(key)
        if len(last) > self.max_keys:
            last.popitem(last=False)

    def _push(self, deadline: float, key: str) -> None:
        heap = self._heap
        heapq.heappush(heap, (deadline, self._seq, key))
        if len(heap) > 4 * max(self.max_open, 256):
            open_ = self.open
            self._heap = [
                item for item in heap if (w := open_.get(item[2])) is not None and w.seq == item[1]
            ]
            heapq.heapify(self._heap)

    @property
    def precision(self) -> float | None:
        """Share of this strategy's judged warms that were used."""
        judged = self.used + self.unused
        return self.used / judged if judged else None

    def memory_items(self) -> int:
        """Items held (open warms, remembered keys, heap): bounded by the limits."""
        return len(self.open) + len(self._last) + len(self._heap)
