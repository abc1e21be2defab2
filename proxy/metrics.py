"""Prometheus metrics of the proxy, on a registry of its own (never the global one).

Request counting and the request latency histogram are on the hit path, so
they are plain dict and list increments read by a collector at scrape time
instead of locked client-library metrics (DESIGN rule 3).

Naming follows the Prometheus conventions (docs/operations.md lists every
series): counters end in ``_total``, units are base units in the name
(``_seconds``, ``_bytes``), shares in 0..1 end in ``_ratio``, rates are left to
PromQL (``rate()`` of a counter, never a gauge of a rate), and one concept has
one label name everywhere (``strategy``, ``source``, ``outcome``, ``reason``).
"""

from __future__ import annotations

import math
import platform
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Final, Self

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from proxy import __version__
from proxy.observe import EventHub
from proxy.store.base import StoreStats
from warmer.ledger import strategy_and_source

if TYPE_CHECKING:
    from proxy.handler import Admission
    from warmer.service import Warmer

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# The client library's own Counters and Histograms would add a ``*_created``
# gauge per series in this text format: a timestamp that looks like a metric of
# its own, doubles the series count, and is missing from the counters this
# module exports through collectors, so the same kind of series would differ by
# how it is implemented.  Process-wide: warmproxy owns its process.
disable_created_metrics()  # type: ignore[no-untyped-call]

#: Upper bounds (seconds) of ``warmproxy_request_duration_seconds``: a hit
#: from memory takes tens of microseconds, a miss the origin's time.
REQUEST_DURATION_BUCKETS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)

# The buckets' ``le`` label values, formatted as the client library formats its own.
_BUCKET_LABELS: Final = tuple(
    floatToGoString(bound)  # type: ignore[no-untyped-call]
    for bound in REQUEST_DURATION_BUCKETS
)


class RequestDurations:
    """One outcome's client request latencies as plain counts (no lock).

    ``counts[i]`` counts durations in ``(bound[i-1], bound[i]]`` (Prometheus
    buckets are "less than or equal"), the last one those above every bound;
    the collector makes them cumulative at scrape time.
    """

    __slots__ = ("counts", "seconds")

    def __init__(self) -> None:
        self.counts = [0] * (len(REQUEST_DURATION_BUCKETS) + 1)
        self.seconds = 0.0

    def histogram_buckets(self) -> list[tuple[str, float]]:
        """Cumulative ``(le, count)`` pairs, ``+Inf`` last."""
        out: list[tuple[str, float]] = []
        running = 0
        for le, count in zip(_BUCKET_LABELS, self.counts, strict=False):
            running += count
            out.append((le, running))
        out.append(("+Inf", running + self.counts[-1]))
        return out

    def cumulative(self) -> list[tuple[float, int]]:
        """Cumulative ``(upper bound, count)`` pairs, ``inf`` last (for
        :func:`histogram_quantile`)."""
        out: list[tuple[float, int]] = []
        running = 0
        for bound, count in zip((*REQUEST_DURATION_BUCKETS, math.inf), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """The ``q`` quantile (0..1) of a histogram, computed as PromQL's
    ``histogram_quantile()`` computes it.

    ``buckets``: cumulative ``(upper bound, count)`` pairs, ascending, the
    last one's bound ``inf`` (its count is the total).  The rank ``q × total``
    falls in one bucket; observations are taken as spread evenly inside it,
    so the answer is interpolated linearly between the bucket's bounds (the
    first bucket's lower bound is 0).  A rank in the ``+Inf`` bucket gives the
    highest finite bound, as Prometheus does.  None without observations.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be between 0 and 1, got {q}")
    if len(buckets) < 2 or buckets[-1][0] != math.inf:
        raise ValueError("buckets must end with the +Inf bucket after at least one bound")
    total = buckets[-1][1]
    if total <= 0:
        return None
    rank = q * total
    index = next(i for i, (_, count) in enumerate(buckets) if count >= rank)
    if index == len(buckets) - 1:
        return buckets[-2][0]
    upper, count = buckets[index]
    if index == 0:
        if upper <= 0:
            return upper
        lower, below = 0.0, 0.0
    else:
        lower, below = buckets[index - 1]
    inside = count - below
    if inside <= 0:  # q = 0 on an empty first bucket
        return lower
    return lower + (upper - lower) * (rank - below) / inside


def cumulative_by_label(histogram: Histogram, label: str) -> dict[str, list[tuple[float, float]]]:
    """A client-library Histogram's cumulative ``(upper bound, count)`` pairs
    per value of ``label`` (read from its samples, as a scrape would)."""
    out: dict[str, list[tuple[float, float]]] = {}
    for family in histogram.collect():
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                bound = float(sample.labels["le"])  # "+Inf" parses as inf
                out.setdefault(sample.labels[label], []).append((bound, sample.value))
    for pairs in out.values():
        pairs.sort()
    return out


def counts_by_label(counter: Counter, label: str) -> dict[str, float]:
    """A client-library Counter's totals per value of ``label``."""
    return {
        sample.labels[label]: sample.value
        for family in counter.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
    }


class ReasonCounter(Counter):
    """A labelled Counter whose label values never hold whitespace.

    Callers pass reasons written for people ("no freshness", "vary *"), the
    same text warm errors show; as label values they become tokens
    ("no-freshness", "vary-*") that PromQL matchers and legends take as they are.
    """

    def labels(self, *labelvalues: object, **labelkwargs: object) -> Self:
        return super().labels(
            *(_token(v) for v in labelvalues),
            **{name: _token(v) for name, v in labelkwargs.items()},
        )


def _token(value: object) -> str:
    return "-".join(str(value).split())


class _RequestCollector(Collector):
    def __init__(self, metrics: ProxyMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        requests = CounterMetricFamily(
            "warmproxy_requests",
            "Proxied requests by cache outcome and method.",
            labels=["outcome", "method"],
        )
        for (outcome, method), count in sorted(self._metrics.requests.items()):
            requests.add_metric([outcome, method], count)
        yield requests
        durations = HistogramMetricFamily(
            "warmproxy_request_duration_seconds",
            "Time from the proxy taking a client request until its answer was ready to send "
            "(a body streamed from the origin: until it was sent), by cache outcome.",
            labels=["outcome"],
        )
        for outcome, counts in sorted(self._metrics.request_durations.items()):
            durations.add_metric([outcome], counts.histogram_buckets(), sum_value=counts.seconds)
        yield durations
        hub = self._metrics.hub
        if hub is not None:
            yield CounterMetricFamily(
                "warmproxy_events_dropped",
                "Access events dropped because observers fell behind.",
                value=hub.dropped,
            )
            yield CounterMetricFamily(
                "warmproxy_observer_errors",
                "Exceptions raised by access-event observers.",
                value=hub.observer_errors,
            )
        admission = self._metrics.admission
        if admission is not None:
            yield GaugeMetricFamily(
                "warmproxy_requests_in_flight",
                "Requests being handled that the in-process cache could not answer at once.",
                value=admission.in_flight,
            )
            yield GaugeMetricFamily(
                "warmproxy_event_loop_lag_seconds",
                "How late the event loop ran a timer at the last sample (every 0.1 s).",
                value=admission.lag,
            )
        stats = self._metrics.store_stats
        if stats is not None:
            yield GaugeMetricFamily(
                "warmproxy_store_entries", "Items held by the cache store.", value=stats.entries
            )
            yield GaugeMetricFamily(
                "warmproxy_store_bytes", "Bytes held by the cache store.", value=stats.bytes
            )
            yield CounterMetricFamily(
                "warmproxy_store_evictions",
                "Items the store evicted to make room (memory store).",
                value=stats.evictions,
            )


class _WarmerCollector(Collector):
    """The warmer's counters, read at scrape time (they are plain ints in the executor)."""

    def __init__(self, metrics: ProxyMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        warmer = self._metrics.warmer
        if warmer is None:
            return
        executor = warmer.executor
        c = executor.counters
        for name, doc, values in (
            ("warmproxy_warm_items", "Warm requests that left an entry in the cache.", c.warmed),
            ("warmproxy_warm_failed", "Warm requests that failed after their retries.", c.failed),
            ("warmproxy_warm_retried", "Warm fetches retried after a failure.", c.retried),
            (
                "warmproxy_warm_already_fresh",
                "Warm requests skipped because a fresh entry was cached.",
                c.already_fresh,
            ),
        ):
            family = CounterMetricFamily(name, doc, labels=["strategy"])
            for strategy, count in sorted(values.items()):
                family.add_metric([strategy], count)
            yield family
        touches = CounterMetricFamily(
            "warmproxy_warm_touches",
            "Touches of kept keys (a lookup that keeps the entry cached; nothing fetched).",
            labels=["strategy", "result"],
        )
        for result, values in (("kept", c.kept), ("gone", c.gone)):
            for strategy, count in sorted(values.items()):
                touches.add_metric([strategy, result], count)
        yield touches
        depth = GaugeMetricFamily(
            "warmproxy_warm_queue_depth", "Warm requests waiting, by priority.", labels=["priority"]
        )
        for level, count in executor.queue.depth_by_level().items():
            depth.add_metric([level], count)
        yield depth
        yield GaugeMetricFamily(
            "warmproxy_warm_in_flight", "Warm fetches running now.", value=executor.in_flight
        )
        yield GaugeMetricFamily(
            "warmproxy_warm_concurrency_limit",
            "Warm fetches allowed at once now (lowered while the origin is slow or failing).",
            value=executor.limit,
        )
        yield GaugeMetricFamily(
            "warmproxy_warm_paused",
            "1 while warming is paused by the CPU/memory guard.",
            value=1 if executor.paused else 0,
        )
        yield CounterMetricFamily(
            "warmproxy_warm_bytes", "Body bytes fetched by warming.", value=c.bytes
        )
        runs = SummaryMetricFamily(
            "warmproxy_warm_run_duration_seconds",
            "Duration of finished warming runs, by strategy (and source, of a scheduled firing).",
            labels=["strategy", "source"],
        )
        for strategy, (count, total) in sorted(c.run_seconds.items()):
            runs.add_metric(list(strategy_and_source(strategy)), count_value=count, sum_value=total)
        yield runs
        yield from self._effectiveness(warmer)

    def _effectiveness(self, warmer: Warmer) -> Iterable[Metric]:
        """The ledger's figures, the alerts and the predictive model's state."""
        if warmer.ledger is not None:
            # On the warmer's clock, as every figure the ledger booked.
            for f in warmer.ledger.figures(warmer.now()).metric_families():
                family: Metric
                if f.kind == "counter":
                    family = CounterMetricFamily(f.name, f.documentation, labels=list(f.labels))
                else:
                    family = GaugeMetricFamily(f.name, f.documentation, labels=list(f.labels))
                for values, value in f.samples:
                    family.add_metric(list(values), value)
                yield family
        alerts = GaugeMetricFamily(
            "warmproxy_alert_active",
            "1 while an alert from [monitoring] alert_thresholds is raised.",
            labels=["alert"],
        )
        active = warmer.alerts.active()
        for name in warmer.alerts.names:
            alerts.add_metric([name], 1 if name in active else 0)
        yield alerts
        if warmer.predictor is not None:
            yield GaugeMetricFamily(
                "warmproxy_predictive_threshold_ratio",
                "Confidence (0..1) a prediction needs before it is warmed now (rises over budget).",
                value=warmer.predictor.threshold,
            )
            yield GaugeMetricFamily(
                "warmproxy_predictive_followed_keys",
                "Keys the predictive model follows.",
                value=len(warmer.predictor),
            )


class ProxyMetrics:
    """Every metric the proxy exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.hub: EventHub | None = None
        self.warmer: Warmer | None = None
        # The overload limits' state (in-flight requests, loop lag), read at scrape.
        self.admission: Admission | None = None
        # The store's last counted contents (see Warmproxy.refresh_store_stats).
        self.store_stats: StoreStats | None = None
        # Client request latencies by outcome, counted by count_request().
        self.request_durations: dict[str, RequestDurations] = {}
        r = self.registry
        # The standard process_* and python_* series, on this registry.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        Gauge(
            "warmproxy_build_info",
            "Always 1; the labels name the warmproxy version and the Python running it.",
            ["version", "python"],
            registry=r,
        ).labels(__version__, platform.python_version()).set(1)
        self.origin_duration = Histogram(
            "warmproxy_origin_request_duration_seconds",
            "Time from sending a request to the origin until its response head arrived.",
            ["purpose"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.origin_errors = ReasonCounter(
            "warmproxy_origin_errors_total",
            "Origin requests that failed without a response.",
            ["reason"],
            registry=r,
        )
        self.proxy_errors = ReasonCounter(
            "warmproxy_proxy_errors_total",
            "Error responses the proxy made itself (the origin's own are relayed, not "
            "counted here), by reason: overload, pool-wait, origin-timeout, ...",
            ["reason"],
            registry=r,
        )
        self.store_errors = Counter(
            "warmproxy_store_errors_total",
            "Cache store operations that failed.",
            ["operation"],
            registry=r,
        )
        self.store_up = Gauge(
            "warmproxy_store_up", "1 when the cache store answers, else 0.", registry=r
        )
        self.coalesced = Counter(
            "warmproxy_coalesced_requests_total",
            "Requests that waited for another request's origin fetch instead of their own.",
            registry=r,
        )
        self.stored = Counter(
            "warmproxy_responses_stored_total", "Responses written to the cache.", registry=r
        )
        self.not_stored = ReasonCounter(
            "warmproxy_responses_not_stored_total",
            "Origin responses the cache did not store, by reason.",
            ["reason"],
            registry=r,
        )
        self.invalidations = Counter(
            "warmproxy_invalidations_total",
            "Cache keys invalidated after unsafe requests (RFC 9111 §4.4).",
            registry=r,
        )
        self.purged = Counter(
            "warmproxy_purged_entries_total",
            "Cached responses purged (control API or PURGE method), by mode (hard: "
            "deleted, soft: marked stale) and by what selected them (path, pattern, tag).",
            ["mode", "by"],
            registry=r,
        )
        self.tags_ignored = ReasonCounter(
            "warmproxy_cache_tags_ignored_total",
            "Cache tags of origin responses ignored, by reason (too-many, too-long, invalid).",
            ["reason"],
            registry=r,
        )
        # The fleet on Redis (proxy.fleet): L1 invalidations between replicas.
        self.fleet_subscribed = Gauge(
            "warmproxy_fleet_subscribed",
            "1 while this replica follows the other replicas' L1 invalidations "
            "(Redis store with an L1), else 0.",
            registry=r,
        )
        self.fleet_messages = Counter(
            "warmproxy_fleet_messages_total",
            "L1 invalidation messages, by direction (published by this replica, "
            "received from others).",
            ["direction"],
            registry=r,
        )
        self.fleet_l1_flushes = Counter(
            "warmproxy_fleet_flushes_total",
            "Times the whole L1 was emptied because invalidations may have been missed "
            "(subscribed again after an outage, or told so by another replica).",
            registry=r,
        )
        # The fleet's usage counts and warm claims (proxy.fleet_counts).
        self.fleet_counts_shared = Gauge(
            "warmproxy_fleet_counts_shared",
            "1 while hot keys and reactive thresholds use the fleet's counts from Redis; "
            "0 when this replica counts alone (memory store, Redis failing).",
            registry=r,
        )
        self.fleet_counts_syncs = Counter(
            "warmproxy_fleet_counts_syncs_total",
            "Flushes of this replica's usage counts to Redis with a read of the fleet's, "
            "by result (ok, failed).",
            ["result"],
            registry=r,
        )
        self.fleet_claims = Counter(
            "warmproxy_fleet_claims_total",
            "Warm decisions (reactive, refresh-ahead) claimed across the fleet, by outcome: "
            "won (warmed here), lost (another replica warms it; dropped here), "
            "unclaimed (Redis failing: warmed here alone).",
            ["outcome"],
            registry=r,
        )
        # The fleet's warm runs (proxy.fleet_runs): items of a Redis Stream.
        self.fleet_run_items = Counter(
            "warmproxy_fleet_run_items_total",
            "Items of the fleet's warm runs, by event: taken (by this replica, to fill; "
            "the reclaimed ones included), "
            "reclaimed (taken over from a replica that stopped working while holding them), "
            "handed_back (at a clean stop, for the others to take at once), given_up "
            "(taken over too many times without an outcome: counted failed).",
            ["event"],
            registry=r,
        )
        # The fleet's warming statistics (proxy.fleet_stats), summed on read.
        self.fleet_stats_up = Gauge(
            "warmproxy_fleet_stats_up",
            "1 while this replica's warming figures reach Redis for the fleet's /stats "
            "(its last write worked), else 0 (memory store, Redis failing).",
            registry=r,
        )
        # The fleet's fill lock (proxy.fill_lock): one origin fetch per key across replicas.
        self.fill_lock_up = Gauge(
            "warmproxy_fill_lock_up",
            "1 while fills take the fleet's per-key lock in Redis; 0 when it is off "
            "(memory store, cache.fleet_fill_lock = false) or Redis is failing.",
            registry=r,
        )
        self.fill_lock_claims = Counter(
            "warmproxy_fill_lock_claims_total",
            "Origin fetches this replica made holding the fleet's lock on the key.",
            registry=r,
        )
        self.fill_lock_waits = Counter(
            "warmproxy_fill_lock_waits_total",
            "Fills that waited for another replica's fetch of the key, by result: collapsed "
            "(answered from its entry), released (nothing usable: fetched here), timeout "
            "(the lock expired first: fetched here), error (Redis failed: fetched here).",
            ["result"],
            registry=r,
        )
        # The workers of `serve --workers N` (proxy.worker_relay).
        self.worker_relay_skipped = Counter(
            "warmproxy_worker_relay_skipped_total",
            "What a worker could not pass to the others (serve --workers N), by what: item "
            "(a cache write: too big, or the other worker too far behind; fetched there on a "
            "miss), event (an access event dropped while the primary was away).",
            ["what"],
            registry=r,
        )
        self.registry.register(_RequestCollector(self))
        self.registry.register(_WarmerCollector(self))

    def count_request(self, outcome: str, method: str, seconds: float) -> None:
        """One client request answered with ``outcome`` after ``seconds``.

        On the hit path: a dict increment and a bisect, no lock and no clock
        read (``seconds`` is the latency the access event carries).
        """
        self.requests[(outcome, method)] += 1
        durations = self.request_durations.get(outcome)
        if durations is None:
            durations = self.request_durations[outcome] = RequestDurations()
        durations.counts[bisect_left(REQUEST_DURATION_BUCKETS, seconds)] += 1
        durations.seconds += seconds

    def render(self) -> bytes:
        return generate_latest(self.registry)
