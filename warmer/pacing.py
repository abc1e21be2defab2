"""How hard the warmer may push the origin and this process.

Pure decisions the executor consults (DESIGN rule 2): how long a retry waits
(:func:`backoff_delay`), how many fetches may run at once given what the
origin's latency and errors say (:class:`AdaptiveConcurrency`), and whether
warming should pause because this process is using too much CPU or memory
(:class:`ResourceGuard`).  Only :meth:`ResourceGuard.sample` reads anything
from outside: this process's CPU and memory, through psutil.

The origin's request *rate* limit is not here: the executor uses aiolimiter.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Callable
from typing import Any, Final

import psutil

#: A paused :class:`ResourceGuard` resumes only once usage is below this
#: share of every limit, so usage hovering at a limit does not flap.
RESUME_FRACTION: Final = 0.9


def backoff_delay(
    attempt: int, *, base: float = 0.5, cap: float = 30.0, rand: Callable[[], float]
) -> float:
    """Seconds to wait before retry number ``attempt`` (1 for the first retry).

    Exponential backoff with "full jitter" (AWS Architecture Blog, "Exponential
    Backoff and Jitter"): uniform in ``[0, min(cap, base * 2**(attempt-1)))``.
    The jitter spreads retries of many items that failed together, so they
    do not hit a recovering origin at the same instant.  ``rand`` returns a
    float in [0, 1) (``random.random``; tests pass fixed values).
    """
    if attempt < 1:
        raise ValueError(f"attempt must be at least 1, got {attempt}")
    if base < 0 or cap < 0:
        raise ValueError(f"base and cap must not be negative, got base={base}, cap={cap}")
    try:
        ceiling = min(cap, math.ldexp(base, attempt - 1))
    except OverflowError:  # 2**(attempt-1) beyond float range: long past the cap
        ceiling = cap
    return rand() * ceiling


class AdaptiveConcurrency:
    """AIMD limit on concurrent warm fetches, driven by the origin's health.

    Keeps the last ``window`` fetch outcomes and judges the window after each
    new one: unhealthy when its median latency (p50, nearest rank: a latency
    actually seen) is above ``latency_target`` or its error rate is above
    ``error_rate_limit``.  The limit changes only once ``window`` outcomes
    have been seen since it last changed:

    - an unhealthy window halves it (multiplicative decrease, not below
      ``min_limit``);
    - a window judged healthy after each of the last ``window`` outcomes adds
      one (additive increase, not above ``max_limit``).

    Waiting for a full window of new outcomes after each change means one
    slow burst halves the limit once rather than driving it to the floor, and
    that each decision judges outcomes observed under the current limit.
    """

    def __init__(
        self,
        max_limit: int,
        min_limit: int = 1,
        *,
        latency_target: float,
        error_rate_limit: float,
        window: int = 20,
    ) -> None:
        if min_limit < 1 or max_limit < min_limit:
            raise ValueError(
                f"need 1 <= min_limit <= max_limit, got min_limit={min_limit}, "
                f"max_limit={max_limit}"
            )
        if latency_target <= 0:
            raise ValueError(f"latency_target must be positive, got {latency_target}")
        if not 0 <= error_rate_limit <= 1:
            raise ValueError(f"error_rate_limit must be within 0..1, got {error_rate_limit}")
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        self.max_limit = max_limit
        self.min_limit = min_limit
        self.latency_target = latency_target
        self.error_rate_limit = error_rate_limit
        self.window = window
        self.decreases = 0
        self.increases = 0
        self.last_change_at: float | None = None
        self._limit = max_limit
        self._latencies: deque[float] = deque(maxlen=window)
        self._oks: deque[bool] = deque(maxlen=window)
        self._since_change = 0  # outcomes recorded since the limit last changed
        self._healthy_streak = 0  # outcomes after which the window was judged healthy

    @property
    def limit(self) -> int:
        """How many fetches may run at once now."""
        return self._limit

    def record(self, latency: float, ok: bool, now: float) -> None:
        """One fetch outcome: its latency (seconds) and whether the origin coped.

        ``ok`` is False for what says the origin is struggling (no response,
        429, 5xx), not for a response that is merely not cacheable.
        """
        self._latencies.append(latency)
        self._oks.append(ok)
        self._since_change += 1
        unhealthy = self._unhealthy()
        self._healthy_streak = 0 if unhealthy else self._healthy_streak + 1
        if self._since_change < self.window:
            return
        if unhealthy:
            if self._limit > self.min_limit:
                self._limit = max(self.min_limit, self._limit // 2)
                self._changed(now)
                self.decreases += 1
        elif self._healthy_streak >= self.window and self._limit < self.max_limit:
            self._limit += 1
            self._changed(now)
            self.increases += 1

    def p50_latency(self) -> float | None:
        """Median latency over the window (the lower one of an even count, so
        more than half must be slow to exceed a target); None before any outcome."""
        return statistics.median_low(self._latencies) if self._latencies else None

    def error_rate(self) -> float | None:
        """Share of failed outcomes in the window; None before any outcome."""
        if not self._oks:
            return None
        return sum(1 for ok in self._oks if not ok) / len(self._oks)

    def state(self) -> dict[str, Any]:
        """Figures for status and metrics."""
        return {
            "limit": self._limit,
            "p50_latency": self.p50_latency(),
            "error_rate": self.error_rate(),
            "decreases": self.decreases,
            "increases": self.increases,
        }

    def _unhealthy(self) -> bool:
        p50 = self.p50_latency()
        rate = self.error_rate()
        return (p50 is not None and p50 > self.latency_target) or (
            rate is not None and rate > self.error_rate_limit
        )

    def _changed(self, now: float) -> None:
        self._since_change = 0
        self.last_change_at = now


class ResourceGuard:
    """Whether warming should pause because this process uses too much CPU or memory.

    ``max_cpu_percent`` is in psutil's per-process unit: percent of one CPU,
    so above 100 on several cores.  A limit of None (or 0) is no limit.
    Warming pauses when a set limit is exceeded, and once paused resumes only
    when usage is below :data:`RESUME_FRACTION` of every set limit.
    """

    def __init__(self, max_cpu_percent: float | None, max_memory_bytes: int | None) -> None:
        if max_cpu_percent is not None and max_cpu_percent < 0:
            raise ValueError(f"max_cpu_percent must not be negative, got {max_cpu_percent}")
        if max_memory_bytes is not None and max_memory_bytes < 0:
            raise ValueError(f"max_memory_bytes must not be negative, got {max_memory_bytes}")
        # 0 is how the config spells "no limit".
        self.max_cpu_percent = max_cpu_percent or None
        self.max_memory_bytes = max_memory_bytes or None
        self._paused = False
        self._process: psutil.Process | None = None

    @property
    def enabled(self) -> bool:
        """Whether any limit is set (otherwise it never pauses)."""
        return self.max_cpu_percent is not None or self.max_memory_bytes is not None

    @property
    def paused(self) -> bool:
        """The decision of the last :meth:`should_pause`."""
        return self._paused

    def should_pause(self, cpu_percent: float, rss_bytes: int) -> bool:
        """Decide, from the given usage, whether warming is paused now."""
        cpu_limit, mem_limit = self.max_cpu_percent, self.max_memory_bytes
        if self._paused:
            self._paused = (
                cpu_limit is not None and cpu_percent >= RESUME_FRACTION * cpu_limit
            ) or (mem_limit is not None and rss_bytes >= RESUME_FRACTION * mem_limit)
        else:
            self._paused = (cpu_limit is not None and cpu_percent > cpu_limit) or (
                mem_limit is not None and rss_bytes > mem_limit
            )
        return self._paused

    def sample(self) -> tuple[float, int]:
        """This process's CPU percent since the previous sample, and its RSS in bytes.

        The first sample's CPU figure is 0.0: psutil measures CPU between calls
        on the same Process object, which is why it is kept.
        """
        if self._process is None:
            self._process = psutil.Process()
        return self._process.cpu_percent(interval=None), self._process.memory_info().rss
