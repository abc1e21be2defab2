"""Prometheus metrics of the proxy, on a registry of its own (never the global one).

Request counting is on the hit path, so it is a plain dict increment read by a
collector at scrape time instead of a locked client-library counter.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from proxy.observe import EventHub
from proxy.store.base import StoreStats

if TYPE_CHECKING:
    from proxy.handler import Admission
    from warmer.service import Warmer

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


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
            "Duration of finished warming runs, by strategy.",
            labels=["strategy"],
        )
        for strategy, (count, total) in sorted(c.run_seconds.items()):
            runs.add_metric([strategy], count_value=count, sum_value=total)
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
                "warmproxy_predictive_threshold",
                "Confidence a prediction needs before it is warmed now (rises over budget).",
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
        r = self.registry
        self.origin_duration = Histogram(
            "warmproxy_origin_request_duration_seconds",
            "Time from sending a request to the origin until its response head arrived.",
            ["purpose"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.origin_errors = Counter(
            "warmproxy_origin_errors_total",
            "Origin requests that failed without a response.",
            ["reason"],
            registry=r,
        )
        self.proxy_errors = Counter(
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
        self.not_stored = Counter(
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
        self.registry.register(_RequestCollector(self))
        self.registry.register(_WarmerCollector(self))

    def render(self) -> bytes:
        return generate_latest(self.registry)
