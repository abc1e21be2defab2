"""Recent traffic in fixed time buckets: what the dashboard's hit-rate chart draws.

The tracker keeps hours; an operator watching a warm run needs seconds. This is
a ring of ``buckets`` counters, ``bucket_seconds`` each, indexed by the bucket
number, so recording an event is an index and an add (it runs for every
request) and memory is fixed whatever the traffic.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Bucket:
    """One bucket's counts; ``ts`` is its start (epoch seconds)."""

    ts: float
    requests: int
    hits: int
    misses: int
    origin_requests: int
    warm_fetches: int

    @property
    def hit_rate(self) -> float | None:
        """Hits over hits + misses (bypassed requests are neither), None when idle."""
        judged = self.hits + self.misses
        return round(self.hits / judged, 4) if judged else None


class Timeline:
    """Per-bucket counts of the last ``bucket_seconds * buckets`` seconds."""

    def __init__(self, bucket_seconds: float = 10.0, buckets: int = 360) -> None:
        if bucket_seconds <= 0 or buckets < 1:
            raise ValueError("bucket_seconds must be > 0 and buckets >= 1")
        self.bucket_seconds = bucket_seconds
        self.size = buckets
        self._ids = [-1] * buckets
        self._requests = [0] * buckets
        self._hits = [0] * buckets
        self._misses = [0] * buckets
        self._origin = [0] * buckets
        self._warm = [0] * buckets

    @property
    def span(self) -> float:
        return self.bucket_seconds * self.size

    def _slot(self, ts: float) -> int:
        number = int(ts // self.bucket_seconds)
        slot = number % self.size
        held = self._ids[slot]
        if held != number:
            if held > number:
                return -1  # older than the ring keeps (a clock that went back)
            self._ids[slot] = number
            self._requests[slot] = self._hits[slot] = self._misses[slot] = 0
            self._origin[slot] = self._warm[slot] = 0
        return slot

    def request(self, ts: float, outcome: str) -> None:
        """A user request and how the cache answered it (the tracker's outcomes)."""
        slot = self._slot(ts)
        if slot < 0:
            return
        self._requests[slot] += 1
        if outcome == "hit" or outcome == "revalidated":
            # A revalidated entry was answered without a body from the origin,
            # but the origin was still asked.
            self._hits[slot] += 1
            if outcome == "revalidated":
                self._origin[slot] += 1
        else:
            if outcome != "bypass":
                self._misses[slot] += 1
            self._origin[slot] += 1

    def warm_fetch(self, ts: float) -> None:
        """A fetch of the warmer from the origin."""
        slot = self._slot(ts)
        if slot >= 0:
            self._warm[slot] += 1

    def buckets(self, now: float, seconds: float) -> list[Bucket]:
        """The buckets of the last ``seconds`` up to the one holding ``now``, oldest
        first; empty ones included (a gap in traffic is a zero, not a missing point)."""
        last = int(now // self.bucket_seconds)
        count = max(1, min(self.size, int(-(-seconds // self.bucket_seconds))))
        out: list[Bucket] = []
        for number in range(last - count + 1, last + 1):
            slot = number % self.size
            ts = number * self.bucket_seconds
            if self._ids[slot] == number:
                out.append(
                    Bucket(
                        ts,
                        self._requests[slot],
                        self._hits[slot],
                        self._misses[slot],
                        self._origin[slot],
                        self._warm[slot],
                    )
                )
            else:
                out.append(Bucket(ts, 0, 0, 0, 0, 0))
        return out
