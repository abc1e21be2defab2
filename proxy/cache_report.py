"""The cache side at a glance (``GET /cache/warming/cache``): what the dashboard's
cache panels show.

- **Client latency**: p50/p90/p99 of ``warmproxy_request_duration_seconds``,
  all outcomes together and per outcome, since the process started.
- **Origin health**: p50/p90/p99 of
  ``warmproxy_origin_request_duration_seconds`` (all purposes and per purpose),
  origin failures and the proxy's own error answers by reason, and how far the
  warmer has backed off (its adaptive concurrency limit, the CPU/memory pause).
- **Store fill**: entries, bytes (against ``cache.max_bytes`` for the memory
  store), evictions, and whether the store answers.
- **Top missed paths**: the tracker's most requested keys ranked by their
  misses in one of its windows.

Percentiles are computed from the histograms' bucket counts as PromQL's
``histogram_quantile()`` does (:func:`proxy.metrics.histogram_quantile`):
linear interpolation inside the bucket holding the rank, so a figure is
accurate to its bucket's width, the same figure a Grafana panel over the
same counts shows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from proxy.metrics import (
    counts_by_label,
    cumulative_by_label,
    histogram_quantile,
)
from proxy.openapi import MAX_MISSED_N
from proxy.store.memory import MemoryStore

if TYPE_CHECKING:
    from proxy.app import Warmproxy
    from warmer.tracker import UsageTracker

QUANTILES: Final = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))

#: How the percentiles are computed, said in every answer.
METHOD: Final = (
    "histogram_quantile: linear interpolation within the histogram bucket holding the "
    "rank (as PromQL), over the counts since the process started"
)

#: The most requested keys (in the window) whose misses are looked up: a key
#: missed often but asked for rarely enough to stay out of these is not listed.
MISSED_CANDIDATES: Final = MAX_MISSED_N

#: The default window of the top missed paths: the tracker's longest not
#: above this (seconds), else its shortest.
DEFAULT_MISSED_WINDOW: Final = 3600.0


def percentiles(buckets: Sequence[tuple[float, float]]) -> dict[str, Any]:
    """Requests counted and p50/p90/p99 (seconds; None without requests)."""
    out: dict[str, Any] = {"requests": int(buckets[-1][1]) if buckets else 0}
    for name, q in QUANTILES:
        out[name] = histogram_quantile(q, buckets) if buckets else None
    return out


def summed(histograms: Iterable[Sequence[tuple[float, float]]]) -> list[tuple[float, float]]:
    """Histograms with the same bounds added bucket by bucket."""
    total: dict[float, float] = {}
    for buckets in histograms:
        for bound, count in buckets:
            total[bound] = total.get(bound, 0.0) + count
    return sorted(total.items())


def latency_report(
    by_label: Mapping[str, Sequence[tuple[float, float]]], label: str
) -> dict[str, Any]:
    """Percentiles over every label value together, and per value."""
    out = percentiles(summed(by_label.values()))
    out[f"by_{label}"] = {value: percentiles(b) for value, b in sorted(by_label.items())}
    return out


def missed_window(windows: Iterable[float]) -> float:
    ordered = sorted(windows)
    within = [w for w in ordered if w <= DEFAULT_MISSED_WINDOW]
    return within[-1] if within else ordered[0]


def top_missed(tracker: UsageTracker, now: float, window: float, n: int) -> list[dict[str, Any]]:
    """The ``n`` keys missed most in ``window``, among the most requested.

    Both counts are Count-Min estimates (never below the truth); misses are
    capped at the key's requests so an estimate never shows more misses
    than requests.
    """
    ranked: list[tuple[int, str, dict[str, Any]]] = []
    for hot in tracker.hot(MISSED_CANDIDATES, now, window):
        misses = min(tracker.misses(hot.key, window, now), hot.count)
        if misses > 0:
            row = {
                "key": hot.key,
                "url": hot.url,
                "host": hot.host,
                "misses": misses,
                "requests": hot.count,
            }
            ranked.append((-misses, hot.key, row))
    ranked.sort(key=lambda r: (r[0], r[1]))
    return [row for _, _, row in ranked[:n]]


async def cache_report(proxy: Warmproxy, n: int, window: float | None) -> dict[str, Any]:
    """The document of ``GET /cache/warming/cache``."""
    await proxy.refresh_store_stats()
    metrics = proxy.metrics
    warmer = proxy.warmer
    now = warmer.now()
    stats = metrics.store_stats
    store = proxy.cache.store
    executor = warmer.executor
    if window is None:
        window = missed_window(warmer.tracker_windows)
    return {
        "now": now,
        "method": METHOD,
        "latency": latency_report(
            {o: d.cumulative() for o, d in metrics.request_durations.items()}, "outcome"
        ),
        "origin": {
            "latency": latency_report(
                cumulative_by_label(metrics.origin_duration, "purpose"), "purpose"
            ),
            "errors": {
                r: int(c) for r, c in counts_by_label(metrics.origin_errors, "reason").items()
            },
            "proxy_errors": {
                r: int(c) for r, c in counts_by_label(metrics.proxy_errors, "reason").items()
            },
        },
        "warming": {
            "concurrency_limit": executor.limit,
            "parallelism": executor.parallelism,
            "in_flight": executor.in_flight,
            "paused": executor.paused,
            "adaptive": executor.adaptive.state() if executor.adaptive is not None else None,
        },
        "store": {
            "backend": proxy.settings.cache.store,
            "healthy": proxy.cache.healthy,
            # Redis is counted in the background: None until the first count.
            "entries": None if stats is None else stats.entries,
            "bytes": None if stats is None else stats.bytes,
            "evictions": None if stats is None else stats.evictions,
            # What bounds the memory store; Redis is bounded by its own maxmemory.
            "max_bytes": store.max_bytes if isinstance(store, MemoryStore) else None,
            "max_entries": (store.max_entries or None) if isinstance(store, MemoryStore) else None,
        },
        "top_missed": {
            "window_seconds": window,
            "keys": top_missed(warmer.tracker, now, window, n),
        },
    }
