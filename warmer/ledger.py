"""The effectiveness ledger: whether warming paid off, in numbers.

Every entry a warm fetch stored is followed as a *lifetime*, identified by
``(key, fresh_until)``, until it is hit, expires, is evicted or is replaced.
From those lifetimes and the users' requests the ledger derives what
``/cache/warming/stats`` and the metrics report (DESIGN §5): precision (warmed
entries used before they went), hits gained and misses prevented, hit rates
before and after warming started and without warming, what warming cost at the
origin and saved users, and how users and the origin fared during warm runs
compared with outside them.

Sans-I/O (DESIGN rule 2): time is the ``now`` each call takes (the events'
``ts`` for :meth:`EffectivenessLedger.observe`); nothing here reads a clock.
Memory is bounded by ``max_tracked`` open lifetimes and :data:`MAX_LABELS`
labels; each call costs O(1), or O(log n) for a lifetime stored or settled.

Lifetime rules (one open lifetime per key; per key and variant where the
response varies, RFC 9111 §4.1):

- a ``hit`` event with ``warmed`` set, on the key and with the lifetime's
  ``fresh_until`` (or 0, unknown), is a hit gained on it; its first such hit
  marks it *used*: that request would have been a miss without warming;
- it is resolved when it expires (:meth:`~EffectivenessLedger.settle`), is
  evicted (:meth:`~EffectivenessLedger.evicted`, or a user ``miss``/``stale``
  arriving while it was still fresh: the store must have dropped it), or is
  replaced (a new warm fill of the key, or an event showing a newer
  ``fresh_until``), as *used* when it had a hit, else *unused*;
- beyond ``max_tracked`` open lifetimes the oldest is resolved as
  *untracked*, whether or not it had hits: counting it as used or unused
  would bias precision towards what happened to be hit early.
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Final, Literal, TypeVar

from warmer.model import Observed, variant_tag

#: Distinct labels counted apart; any further label counts as :data:`OTHER_LABEL`.
MAX_LABELS: Final = 64
OTHER_LABEL: Final = "other"

# As the tracker counts them: a revalidated answer came from the cache, a
# stale one means the cache could not answer fresh.
_HIT_OUTCOMES: Final = frozenset({"hit", "revalidated"})
_MISS_OUTCOMES: Final = frozenset({"miss", "stale"})

_Ending = Literal["expired", "evicted", "replaced", "untracked"]

LEDGER_FORMAT: Final = "warmproxy-effectiveness"
LEDGER_VERSION: Final = 1
# The cumulative user counters of the ledger, saved and restored by name.
_TOTALS: Final = (
    "_hits",
    "_misses",
    "_other",
    "_bypass",
    "_hits_before",
    "_misses_before",
    "_other_before",
    "_unattributed",
    "_user_origin_fetches",
    "_origin_seconds",
)


_C = TypeVar("_C", "_Counts", "_Phase")


class LedgerFileError(ValueError):
    """A saved ledger that cannot be used (damaged, or another format version)."""


@dataclass(slots=True)
class _Lifetime:
    """One warm-stored entry, open until it expires, is evicted or replaced."""

    key: str
    label: str
    stored_at: float
    fresh_until: float
    seq: int  # tells this lifetime's expiry in the heap from earlier ones of the key
    hits: int = 0


@dataclass(slots=True)
class _Counts:
    """What the warm fetches of one label did; the totals are the sums over labels."""

    fetches: int = 0  # origin fetches: stored + not_stored
    stored: int = 0
    not_stored: int = 0
    failures: int = 0  # not stored because no response came
    already_fresh: int = 0
    bytes: int = 0
    fetch_seconds: float = 0.0
    open: int = 0
    used: int = 0
    unused: int = 0
    untracked: int = 0
    expired: int = 0
    evicted: int = 0
    replaced: int = 0
    hits_gained: int = 0
    misses_prevented: int = 0


@dataclass(slots=True)
class _Phase:
    """Traffic and origin load while warm runs were active, or while none was."""

    seconds: float = 0.0
    requests: int = 0  # every user request, bypass included
    latency_samples: int = 0
    latency_sum: float = 0.0
    user_origin_fetches: int = 0
    origin_seconds: float = 0.0
    warm_fetches: int = 0


@dataclass(frozen=True, slots=True)
class LabelFigures:
    """What the warm fetches asked for by one label (a strategy or a source) did."""

    fetches: int
    stored: int
    not_stored: int
    failures: int
    already_fresh: int
    bytes: int
    fetch_seconds: float
    used: int
    unused: int
    open: int
    untracked: int
    expired: int
    evicted: int
    replaced: int
    hits_gained: int
    misses_prevented: int
    precision: float | None  # used / (used + unused); None until one is resolved
    success_rate: float | None  # stored / fetches; None until one is fetched

    def to_stats(self) -> dict[str, Any]:
        return {
            "fetches": self.fetches,
            "stored": self.stored,
            "not_stored": self.not_stored,
            "failed": self.failures,
            "already_fresh": self.already_fresh,
            "bytes": self.bytes,
            "fetch_seconds": _round(self.fetch_seconds),
            "used": self.used,
            "unused": self.unused,
            "open": self.open,
            "untracked": self.untracked,
            "precision": _round(self.precision),
            "success_rate": _round(self.success_rate),
            "hits_gained": self.hits_gained,
            "misses_prevented": self.misses_prevented,
        }


@dataclass(frozen=True, slots=True)
class PhaseFigures:
    """User latency and origin load while warm runs were active, or while none was."""

    seconds: float
    requests: int
    latency_samples: int
    latency_sum: float  # seconds, summed over the latency samples
    mean_latency: float | None  # seconds; None until a latency is measured
    user_origin_fetches: int
    warm_fetches: int
    # (user_origin_fetches + warm_fetches) / seconds; None while no time passed
    origin_fetches_per_second: float | None
    mean_origin_latency: float | None  # of user origin fetches; None until one

    def to_stats(self) -> dict[str, Any]:
        return {
            "seconds": _round(self.seconds),
            "requests": self.requests,
            "mean_latency": _round(self.mean_latency),
            "user_origin_fetches": self.user_origin_fetches,
            "warm_fetches": self.warm_fetches,
            "origin_fetches_per_second": _round(self.origin_fetches_per_second),
            "mean_origin_latency": _round(self.mean_origin_latency),
        }


@dataclass(frozen=True, slots=True)
class MetricFamily:
    """One Prometheus metric family, for the metrics collector to export as it is."""

    name: str  # without the ``_total`` suffix a counter gets on export
    documentation: str
    kind: Literal["gauge", "counter"]
    labels: tuple[str, ...]
    samples: tuple[tuple[tuple[str, ...], float], ...]  # (label values, value)


@dataclass(frozen=True, slots=True)
class LedgerFigures:
    """The ledger's figures at one moment.  ``None``: not measurable yet."""

    at: float
    # Users' cacheable requests (bypass counted apart).
    requests: int
    hits: int
    misses: int
    bypass: int
    hit_rate: float | None
    first_warm_at: float | None  # when a warm fetch first stored an entry
    requests_before: int
    requests_after: int
    hit_rate_before: float | None
    hit_rate_after: float | None
    improvement: float | None  # hit_rate_after - hit_rate_before
    # (hits - misses_prevented) / requests: each used warmed lifetime turned
    # the miss its first hit would have been into a hit.  Its later hits are
    # counted as hits without warming too: that miss would have refilled the
    # entry and they would have hit the refill.  An approximation: the refill
    # would have lived from the miss, not from the warm fetch, so hits near
    # the warmed entry's end might have missed again.
    counterfactual_hit_rate: float | None
    # Warm fetches.
    warm_fetches: int  # origin fetches spent: stored + not stored
    warm_stored: int
    warm_not_stored: int
    warm_failures: int
    warm_bytes: int
    warm_fetch_seconds: float
    already_fresh: int  # hints for entries already fresh: nothing fetched
    success_rate: float | None  # warm_stored / warm_fetches
    # Warmed lifetimes: used + unused + open + untracked == warm_stored.
    warmed_used: int
    warmed_unused: int
    warmed_open: int
    warmed_untracked: int
    ended_expired: int
    ended_evicted: int
    ended_replaced: int
    precision: float | None  # used / (used + unused)
    hits_gained: int  # user hits served by warmed lifetimes
    misses_prevented: int  # warmed lifetimes hit at least once (untracked ones too)
    # Hits on warmed entries the ledger does not follow (stored before it
    # started, by another replica, or untracked): not counted as gained.
    warmed_hits_unattributed: int
    # Cost and benefit.
    user_origin_fetches: int
    mean_origin_latency: float | None  # seconds, of user misses at the origin
    estimated_response_time_saved: float | None  # misses_prevented × mean_origin_latency
    net_origin_fetches: int  # warm_fetches - misses_prevented
    during_runs: PhaseFigures
    outside_runs: PhaseFigures
    by_label: Mapping[str, LabelFigures]

    def to_stats(self) -> dict[str, Any]:
        """The ledger's part of ``/cache/warming/stats`` (DESIGN §5 names first)."""
        return {
            "effectiveness": {
                "hit_rate_before": _round(self.hit_rate_before),
                "hit_rate_after": _round(self.hit_rate_after),
                "improvement": _round(self.improvement),
                "precision": _round(self.precision),
                "counterfactual_hit_rate": _round(self.counterfactual_hit_rate),
                "hits_gained": self.hits_gained,
                "misses_prevented": self.misses_prevented,
                "hit_rate": _round(self.hit_rate),
                "requests": self.requests,
                "hits": self.hits,
                "misses": self.misses,
                "bypass": self.bypass,
                "requests_before": self.requests_before,
                "requests_after": self.requests_after,
                "warmed_entries": {
                    "used": self.warmed_used,
                    "unused": self.warmed_unused,
                    "open": self.warmed_open,
                    "untracked": self.warmed_untracked,
                    "expired": self.ended_expired,
                    "evicted": self.ended_evicted,
                    "replaced": self.ended_replaced,
                },
                "warmed_hits_unattributed": self.warmed_hits_unattributed,
            },
            "cost_benefit": {
                "items_warmed": self.warm_stored,
                # DESIGN §5's name for the misses warming prevented.
                "cache_hits_prevented": self.misses_prevented,
                "estimated_response_time_saved": _round(self.estimated_response_time_saved),
                "origin_fetches": self.warm_fetches,
                "bytes": self.warm_bytes,
                "fetch_seconds": _round(self.warm_fetch_seconds),
                "failed": self.warm_failures,
                "not_stored": self.warm_not_stored,
                "already_fresh": self.already_fresh,
                "success_rate": _round(self.success_rate),
                "net_origin_fetches": self.net_origin_fetches,
                "user_origin_fetches": self.user_origin_fetches,
                "mean_origin_latency": _round(self.mean_origin_latency),
            },
            "performance_impact": {
                "during_runs": self.during_runs.to_stats(),
                "outside_runs": self.outside_runs.to_stats(),
            },
            "by_label": {name: label.to_stats() for name, label in self.by_label.items()},
        }

    def metric_families(self) -> list[MetricFamily]:
        """The figures as Prometheus families; what is not measurable yet is left out.

        Shares in 0..1 are ``_ratio`` gauges; everything that only grows is a
        counter, so rates (per second, mean latency) are taken in PromQL over
        the window a dashboard shows rather than since the process started.
        """
        out: list[MetricFamily] = []

        def gauge(name: str, doc: str, value: float | None) -> None:
            if value is not None:
                out.append(MetricFamily(name, doc, "gauge", (), (((), float(value)),)))

        gauge(
            "warmproxy_hit_before_warming_ratio",
            "Users' hit ratio before the first warm fill.",
            self.hit_rate_before,
        )
        gauge(
            "warmproxy_hit_after_warming_ratio",
            "Users' hit ratio since the first warm fill.",
            self.hit_rate_after,
        )
        gauge(
            "warmproxy_hit_without_warming_ratio",
            "Estimated users' hit ratio had nothing been warmed.",
            self.counterfactual_hit_rate,
        )
        gauge(
            "warmproxy_warm_precision_ratio",
            "Share of resolved warmed entries that were hit before they went.",
            self.precision,
        )
        gauge(
            "warmproxy_warm_success_ratio",
            "Share of warm origin fetches that stored an entry.",
            self.success_rate,
        )
        gauge(
            "warmproxy_warm_response_time_saved_seconds",
            "Misses prevented times the mean origin latency of user misses.",
            self.estimated_response_time_saved,
        )
        labels = [(strategy_and_source(name), f) for name, f in sorted(self.by_label.items())]
        out.append(
            MetricFamily(
                "warmproxy_warm_hits_gained",
                "User hits served by entries a warm fetch stored.",
                "counter",
                ("strategy", "source"),
                tuple((names, float(f.hits_gained)) for names, f in labels),
            )
        )
        out.append(
            MetricFamily(
                "warmproxy_warm_misses_prevented",
                "Warmed entries hit at least once: user misses warming prevented.",
                "counter",
                ("strategy", "source"),
                tuple((names, float(f.misses_prevented)) for names, f in labels),
            )
        )
        out.append(
            MetricFamily(
                "warmproxy_warmed_entries_resolved",
                "Warmed entries gone, by whether they were hit first (untracked: not followed).",
                "counter",
                ("strategy", "source", "result"),
                tuple(
                    ((*names, result), float(value))
                    for names, f in labels
                    for result, value in (
                        ("used", f.used),
                        ("unused", f.unused),
                        ("untracked", f.untracked),
                    )
                ),
            )
        )
        out.append(
            MetricFamily(
                "warmproxy_warmed_entries_open",
                "Warmed entries still fresh and followed.",
                "gauge",
                ("strategy", "source"),
                tuple((names, float(f.open)) for names, f in labels),
            )
        )
        phases = (("during_runs", self.during_runs), ("outside_runs", self.outside_runs))
        for name, doc, values in (
            (
                "warmproxy_phase_seconds",
                "Seconds with a warm run active (during_runs) and with none (outside_runs).",
                tuple(p.seconds for _, p in phases),
            ),
            (
                "warmproxy_phase_user_requests",
                "User requests with a measured latency, during warm runs and outside them.",
                tuple(p.latency_samples for _, p in phases),
            ),
            (
                "warmproxy_phase_user_latency_seconds",
                "Summed user-facing latency, during warm runs and outside them.",
                tuple(p.latency_sum for _, p in phases),
            ),
            (
                "warmproxy_phase_user_origin_fetches",
                "User requests that went to the origin, during warm runs and outside them.",
                tuple(p.user_origin_fetches for _, p in phases),
            ),
            (
                "warmproxy_phase_warm_fetches",
                "Warm origin fetches, during warm runs and outside them.",
                tuple(p.warm_fetches for _, p in phases),
            ),
        ):
            samples = tuple(
                ((phase,), float(v)) for (phase, _), v in zip(phases, values, strict=True)
            )
            out.append(MetricFamily(name, doc, "counter", ("phase",), samples))
        return out


@dataclass(frozen=True, slots=True)
class LedgerCounters:
    """The ledger's counters at one moment: what its figures are computed from.

    Replicas of a fleet each keep a ledger; their counters add up
    (:meth:`__add__`) and the fleet's figures are computed from the sum, so
    every ratio is the fleet's own (summed parts over summed wholes), never
    an average of the replicas' ratios.  Phase ``seconds`` add up to
    replica-seconds.
    """

    hits: int = 0
    misses: int = 0
    other: int = 0
    bypass: int = 0
    hits_before: int = 0
    misses_before: int = 0
    other_before: int = 0
    unattributed: int = 0
    user_origin_fetches: int = 0
    origin_seconds: float = 0.0
    first_warm_at: float | None = None
    during: _Phase = field(default_factory=_Phase)
    outside: _Phase = field(default_factory=_Phase)
    labels: Mapping[str, _Counts] = field(default_factory=dict)

    def __add__(self, other: LedgerCounters) -> LedgerCounters:
        labels = {name: replace(c) for name, c in self.labels.items()}
        for name, counts in other.labels.items():
            if name not in labels and len(labels) >= MAX_LABELS:
                name = OTHER_LABEL  # as one ledger folds labels beyond the bound
            _add_into(labels.setdefault(name, _Counts()), counts)
        firsts = [t for t in (self.first_warm_at, other.first_warm_at) if t is not None]
        return LedgerCounters(
            **{name: getattr(self, name) + getattr(other, name) for name in _TOTAL_NAMES},
            first_warm_at=min(firsts) if firsts else None,
            during=_add_into(replace(self.during), other.during),
            outside=_add_into(replace(self.outside), other.outside),
            labels=labels,
        )

    def to_document(self) -> dict[str, Any]:
        """JSON-ready, as the ledger file keeps them (without its open lifetimes)."""
        return {
            "totals": {name: getattr(self, name) for name in _TOTAL_NAMES},
            "first_warm_at": self.first_warm_at,
            "phases": {"during_runs": asdict(self.during), "outside_runs": asdict(self.outside)},
            "labels": {name: asdict(counts) for name, counts in self.labels.items()},
        }

    @classmethod
    def from_document(cls, document: Any) -> LedgerCounters:
        """What :meth:`to_document` wrote; ValueError naming what does not fit."""
        try:
            totals = {name: _number(document["totals"][name]) for name in _TOTAL_NAMES}
            first = document["first_warm_at"]
            phases = document["phases"]
            labels = document["labels"]
            if not isinstance(labels, dict) or len(labels) > MAX_LABELS:
                raise ValueError(f"labels: at most {MAX_LABELS}")
            return cls(
                **totals,  # type: ignore[arg-type]
                first_warm_at=None if first is None else float(_number(first)),
                during=_restore(_Phase, phases["during_runs"]),
                outside=_restore(_Phase, phases["outside_runs"]),
                labels={str(name): _restore(_Counts, c) for name, c in labels.items()},
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"ledger counters damaged: {exc!r}") from None

    def figures(self, at: float) -> LedgerFigures:
        """The figures of these counters, as of ``at``."""
        total = _Counts()
        for counts in self.labels.values():
            _add_into(total, counts)
        requests = self.hits + self.misses + self.other
        before = self.hits_before + self.misses_before + self.other_before
        after = requests - before
        hits_after = self.hits - self.hits_before
        rate_before = _ratio(self.hits_before, before)
        rate_after = _ratio(hits_after, after) if self.first_warm_at is not None else None
        mean_origin = _ratio(self.origin_seconds, self.user_origin_fetches)
        return LedgerFigures(
            at=at,
            requests=requests,
            hits=self.hits,
            misses=self.misses,
            bypass=self.bypass,
            hit_rate=_ratio(self.hits, requests),
            first_warm_at=self.first_warm_at,
            requests_before=before,
            requests_after=after,
            hit_rate_before=rate_before,
            hit_rate_after=rate_after,
            improvement=(
                None if rate_before is None or rate_after is None else rate_after - rate_before
            ),
            counterfactual_hit_rate=_ratio(self.hits - total.misses_prevented, requests),
            warm_fetches=total.fetches,
            warm_stored=total.stored,
            warm_not_stored=total.not_stored,
            warm_failures=total.failures,
            warm_bytes=total.bytes,
            warm_fetch_seconds=total.fetch_seconds,
            already_fresh=total.already_fresh,
            success_rate=_ratio(total.stored, total.fetches),
            warmed_used=total.used,
            warmed_unused=total.unused,
            warmed_open=total.open,
            warmed_untracked=total.untracked,
            ended_expired=total.expired,
            ended_evicted=total.evicted,
            ended_replaced=total.replaced,
            precision=_ratio(total.used, total.used + total.unused),
            hits_gained=total.hits_gained,
            misses_prevented=total.misses_prevented,
            warmed_hits_unattributed=self.unattributed,
            user_origin_fetches=self.user_origin_fetches,
            mean_origin_latency=mean_origin,
            estimated_response_time_saved=(
                None if mean_origin is None else total.misses_prevented * mean_origin
            ),
            net_origin_fetches=total.fetches - total.misses_prevented,
            during_runs=_phase_figures(self.during),
            outside_runs=_phase_figures(self.outside),
            by_label={name: _label_figures(c) for name, c in self.labels.items()},
        )


_TOTAL_NAMES: Final = tuple(name.lstrip("_") for name in _TOTALS)


def _add_into(into: _C, more: _C) -> _C:
    """``into`` with every counter of ``more`` added to it."""
    for f in fields(into):
        setattr(into, f.name, getattr(into, f.name) + getattr(more, f.name))
    return into


class EffectivenessLedger:
    """Follows warmed entries and users' requests; answers with :class:`LedgerFigures`."""

    def __init__(self, *, max_tracked: int = 100_000) -> None:
        if max_tracked < 1:
            raise ValueError("max_tracked must be at least 1")
        self.max_tracked = max_tracked
        # Open lifetimes by key, oldest stored first (the first to go untracked).
        self._open: OrderedDict[str, _Lifetime] = OrderedDict()
        # (fresh_until, seq, key) of every lifetime stored; entries of lifetimes
        # resolved early stay until popped or compacted away.
        self._expiries: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._labels: dict[str, _Counts] = {}
        self._hits = self._misses = self._other = self._bypass = 0
        self._hits_before = self._misses_before = self._other_before = 0
        self._first_warm_at: float | None = None
        self._unattributed = 0
        self._user_origin_fetches = 0
        self._origin_seconds = 0.0
        # Warm-run phases: time is split between them from the first call on.
        self._during = _Phase()
        self._outside = _Phase()
        self._active = False
        self._was_active = False
        self._switched_at = float("-inf")
        self._since: float | None = None

    # --------------------------------------------------------------- warming

    def warm_stored(
        self,
        key: str,
        now: float,
        fresh_until: float,
        *,
        label: str,
        bytes: int = 0,
        fetch_seconds: float = 0.0,
    ) -> None:
        """A warm fetch stored an entry for ``key``, fresh until ``fresh_until``."""
        self._advance(now)
        expiries = self._expiries
        if expiries and expiries[0][0] <= now:
            self.settle(now)
        counts = self._labels.get(label)
        if counts is None:
            label, counts = self._label(label)
        counts.fetches += 1
        counts.stored += 1
        counts.bytes += bytes
        counts.fetch_seconds += fetch_seconds
        self._phase_at(now).warm_fetches += 1
        if self._first_warm_at is None:
            self._first_warm_at = now
        lives = self._open
        previous = lives.get(key)
        if previous is not None:
            self._resolve(previous, "replaced")
        seq = next(self._seq)
        lives[key] = _Lifetime(key, label, now, fresh_until, seq)
        counts.open += 1
        heapq.heappush(expiries, (fresh_until, seq, key))
        if len(lives) > self.max_tracked:
            self._resolve(next(iter(lives.values())), "untracked")
        if len(self._expiries) > 2 * len(lives) + 64:
            self._compact()

    def warm_not_stored(
        self,
        key: str,
        now: float,
        *,
        label: str,
        failed: bool,
        bytes: int = 0,
        fetch_seconds: float = 0.0,
    ) -> None:
        """A warm fetch went to the origin and stored nothing (``failed``: no response).

        An entry of ``key`` already cached stays as it is, so its lifetime goes on.
        """
        self._advance(now)
        _, counts = self._label(label)
        counts.fetches += 1
        counts.not_stored += 1
        counts.failures += failed
        counts.bytes += bytes
        counts.fetch_seconds += fetch_seconds
        self._phase_at(now).warm_fetches += 1

    def warm_already_fresh(self, key: str, now: float, *, label: str) -> None:
        """A warm request found a fresh entry cached: nothing was fetched."""
        self._advance(now)
        self._label(label)[1].already_fresh += 1

    # ----------------------------------------------------------------- users

    def observe(self, event: Observed, *, latency: float | None = None) -> None:
        """One user request; ``latency``: its user-facing seconds, when known."""
        ts = event.ts
        outcome = event.outcome
        # Runs for every request: _advance, settle and _phase_at inlined.
        since = self._since
        if since is None:
            self._since = ts
        elif ts > since:
            (self._during if self._active else self._outside).seconds += ts - since
            self._since = ts
        expiries = self._expiries
        if expiries and expiries[0][0] <= ts:
            self.settle(ts)
        active = self._active if ts >= self._switched_at else self._was_active
        phase = self._during if active else self._outside
        phase.requests += 1
        if latency is not None:
            phase.latency_samples += 1
            phase.latency_sum += latency
        if outcome == "bypass":
            self._bypass += 1
            return
        # A response that varies is followed per variant (RFC 9111 §4.1): the
        # key of its lifetime names the variant, as warm fills book it.
        key = event.key + variant_tag(event.vary, event.vary_values) if event.vary else event.key
        if key in self._open:
            self._follow(event, outcome, key)
        elif outcome == "hit":
            self._unattributed += event.warmed  # what _follow does without a lifetime
        # Entries are warmed only after warming started: an answer from one
        # whose event carries an earlier arrival time (the fill finished while
        # the request was on its way) still belongs to the time after.
        before = self._first_warm_at is None or (ts < self._first_warm_at and not event.warmed)
        if outcome in _HIT_OUTCOMES:
            self._hits += 1
            self._hits_before += before
        elif outcome in _MISS_OUTCOMES:
            self._misses += 1
            self._misses_before += before
        else:
            self._other += 1
            self._other_before += before

    def origin_fetch(self, now: float, seconds: float) -> None:
        """A user's miss went to the origin and took ``seconds`` there."""
        self._advance(now)
        phase = self._phase_at(now)
        phase.user_origin_fetches += 1
        phase.origin_seconds += seconds
        self._user_origin_fetches += 1
        self._origin_seconds += seconds

    def evicted(self, key: str, now: float) -> None:
        """The store dropped ``key`` before its entry expired."""
        self._advance(now)
        self.settle(now)
        life = self._open.get(key)
        if life is not None:
            self._resolve(life, "evicted")

    # ----------------------------------------------------------------- time

    def run_active(self, active: bool, now: float) -> None:
        """Warm runs started (``active``) or all ended: splits the performance figures."""
        self._advance(now)
        if active != self._active:
            self._was_active = self._active
            self._active = active
            self._switched_at = now

    def settle(self, now: float) -> None:
        """Resolve the lifetimes whose freshness ended by ``now`` as expired."""
        heap = self._expiries
        while heap and heap[0][0] <= now:
            _, seq, key = heapq.heappop(heap)
            life = self._open.get(key)
            if life is not None and life.seq == seq:
                self._resolve(life, "expired")

    # --------------------------------------------------------------- figures

    def counters(self, now: float) -> LedgerCounters:
        """A copy of the counters, lifetimes expired by ``now`` settled first."""
        self._advance(now)
        self.settle(now)
        return LedgerCounters(
            **{name.lstrip("_"): getattr(self, name) for name in _TOTALS},
            first_warm_at=self._first_warm_at,
            during=replace(self._during),
            outside=replace(self._outside),
            labels={name: replace(counts) for name, counts in self._labels.items()},
        )

    def figures(self, now: float) -> LedgerFigures:
        """Everything measured so far, lifetimes expired by ``now`` settled first."""
        return self.counters(now).figures(now)

    def __len__(self) -> int:
        """Open lifetimes followed now."""
        return len(self._open)

    # ----------------------------------------------------------- persistence

    def to_document(self) -> dict[str, Any]:
        """Everything counted so far and the open lifetimes, as JSON-ready data.

        A restart continues from it: the counters go on, and warmed entries
        still cached (in Redis, say) are still followed until they go.
        """
        return {
            "format": LEDGER_FORMAT,
            "version": LEDGER_VERSION,
            "totals": {name.lstrip("_"): getattr(self, name) for name in _TOTALS},
            "first_warm_at": self._first_warm_at,
            "phases": {"during_runs": asdict(self._during), "outside_runs": asdict(self._outside)},
            "labels": {name: asdict(counts) for name, counts in self._labels.items()},
            "open": [
                [life.key, life.label, life.stored_at, life.fresh_until, life.hits]
                for life in self._open.values()
            ],
        }

    def load_document(self, document: Any) -> None:
        """Continue from ``to_document``'s state; LedgerFileError (nothing changed)
        when it is not one.  The time the process was down counts in no phase."""
        if not isinstance(document, dict) or document.get("format") != LEDGER_FORMAT:
            raise LedgerFileError("not a warmproxy effectiveness ledger")
        if document.get("version") != LEDGER_VERSION:
            raise LedgerFileError(
                f"ledger version {document.get('version')!r}, this warmproxy reads {LEDGER_VERSION}"
            )
        try:
            totals = {name: _number(document["totals"][name.lstrip("_")]) for name in _TOTALS}
            first = document["first_warm_at"]
            first_warm_at = None if first is None else float(first)
            phases = document["phases"]
            during = _restore(_Phase, phases["during_runs"])
            outside = _restore(_Phase, phases["outside_runs"])
            labels = {str(name): _restore(_Counts, c) for name, c in document["labels"].items()}
            lives = [
                _Lifetime(str(key), str(label), float(at), float(until), -1, int(hits))
                for key, label, at, until, hits in document["open"]
            ]
            if len(labels) > MAX_LABELS or any(life.label not in labels for life in lives):
                raise ValueError("labels do not match the open lifetimes")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise LedgerFileError(f"ledger file damaged: {exc}") from None
        for name, value in totals.items():
            setattr(self, name, value)
        self._first_warm_at = first_warm_at
        self._during, self._outside = during, outside
        self._labels = labels
        for counts in labels.values():
            counts.open = 0
        self._open = OrderedDict()
        self._expiries = []
        for life in lives[-self.max_tracked :]:
            life.seq = next(self._seq)
            self._open[life.key] = life
            labels[life.label].open += 1
            self._expiries.append((life.fresh_until, life.seq, life.key))
        heapq.heapify(self._expiries)
        self._since = None

    # -------------------------------------------------------------- internal

    def _follow(self, event: Observed, outcome: str, key: str) -> None:
        """Apply a user request to the open lifetime of its key (and variant), if any."""
        warmed_hit = outcome == "hit" and event.warmed
        life = self._open.get(key)
        if life is None:
            self._unattributed += warmed_hit
            return
        seen_until = event.fresh_until
        if warmed_hit and (seen_until == life.fresh_until or seen_until == 0.0):
            life.hits += 1
            counts = self._labels[life.label]
            counts.hits_gained += 1
            if life.hits == 1:
                counts.misses_prevented += 1
            return
        self._unattributed += warmed_hit
        if (
            outcome in _MISS_OUTCOMES
            and seen_until != life.fresh_until
            and life.stored_at <= event.ts < life.fresh_until
        ):
            # Missed while the warmed entry should have been fresh, and not
            # answered from it (a stale answer from it carries its fresh_until).
            self._resolve(life, "evicted")
        elif seen_until > life.fresh_until:
            # A newer entry answered: a user's fill or revalidation replaced it.
            self._resolve(life, "replaced")
        # An older fresh_until is a late event about an earlier entry: ignored.

    def _resolve(self, life: _Lifetime, ending: _Ending) -> None:
        del self._open[life.key]
        counts = self._labels[life.label]
        counts.open -= 1
        if ending == "untracked":
            counts.untracked += 1
            return
        if life.hits:
            counts.used += 1
        else:
            counts.unused += 1
        if ending == "expired":
            counts.expired += 1
        elif ending == "evicted":
            counts.evicted += 1
        else:
            counts.replaced += 1

    def _compact(self) -> None:
        # Keep only the expiries of open lifetimes: the heap stays within
        # about twice max_tracked, rebuilt at most once per max_tracked calls.
        self._expiries = [(life.fresh_until, life.seq, key) for key, life in self._open.items()]
        heapq.heapify(self._expiries)

    def _label(self, label: str) -> tuple[str, _Counts]:
        counts = self._labels.get(label)
        if counts is None:
            if len(self._labels) >= MAX_LABELS:
                # Labels come from configuration (source names), but nothing
                # stops a schedule from naming thousands: fold the rest.
                label = OTHER_LABEL
                counts = self._labels.get(label)
            if counts is None:
                counts = self._labels[label] = _Counts()
        return label, counts

    def _advance(self, now: float) -> None:
        """Credit the time since the last call to the current phase."""
        since = self._since
        if since is None:
            self._since = now
        elif now > since:
            (self._during if self._active else self._outside).seconds += now - since
            self._since = now

    def _phase_at(self, ts: float) -> _Phase:
        # An event may reach the ledger after a run switched: it belongs to
        # the phase of its own time.
        active = self._active if ts >= self._switched_at else self._was_active
        return self._during if active else self._outside


def strategy_and_source(label: str) -> tuple[str, str]:
    """A label of the ledger or a run's strategy ("scheduled:<source>", or a
    strategy) as the metrics' ``strategy`` and ``source`` label values: one
    label name per concept in every series."""
    strategy, _, source = label.partition(":")
    return strategy, source


def _phase_figures(p: _Phase) -> PhaseFigures:
    fetches = p.user_origin_fetches + p.warm_fetches
    return PhaseFigures(
        seconds=p.seconds,
        requests=p.requests,
        latency_samples=p.latency_samples,
        latency_sum=p.latency_sum,
        mean_latency=_ratio(p.latency_sum, p.latency_samples),
        user_origin_fetches=p.user_origin_fetches,
        warm_fetches=p.warm_fetches,
        origin_fetches_per_second=fetches / p.seconds if p.seconds > 0 else None,
        mean_origin_latency=_ratio(p.origin_seconds, p.user_origin_fetches),
    )


def _label_figures(c: _Counts) -> LabelFigures:
    return LabelFigures(
        fetches=c.fetches,
        stored=c.stored,
        not_stored=c.not_stored,
        failures=c.failures,
        already_fresh=c.already_fresh,
        bytes=c.bytes,
        fetch_seconds=c.fetch_seconds,
        used=c.used,
        unused=c.unused,
        open=c.open,
        untracked=c.untracked,
        expired=c.expired,
        evicted=c.evicted,
        replaced=c.replaced,
        hits_gained=c.hits_gained,
        misses_prevented=c.misses_prevented,
        precision=_ratio(c.used, c.used + c.unused),
        success_rate=_ratio(c.stored, c.fetches),
    )


def _number(value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"not a number: {value!r}")
    return value


def _restore(cls: type[_C], saved: Any) -> _C:
    """A counters dataclass from its saved fields: every field, each a number."""
    names = {f.name for f in fields(cls)}
    if not isinstance(saved, dict) or set(saved) != names:
        raise ValueError(f"{cls.__name__.strip('_').lower()} fields do not match")
    values: dict[str, Any] = {name: _number(value) for name, value in saved.items()}
    return cls(**values)


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole else None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
