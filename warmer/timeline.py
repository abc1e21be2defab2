"""Recent traffic in fixed time buckets: what the dashboard's hit-rate chart draws.

The tracker keeps hours; an operator watching a warm run needs seconds. This is
a ring of ``buckets`` counters, ``bucket_seconds`` each, indexed by the bucket
number, so recording an event is an index and a few adds (it runs for every
request) and memory is fixed whatever the traffic.

Besides how the cache answered (hit rate, origin load), each bucket keeps what
the clients got: requests and body bytes answered from a stored entry versus
relayed from the origin, and the responses by status class.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

#: Outcomes whose body came from a stored entry: a fresh hit, a stale entry
#: served (while it is refreshed, or because the origin failed: RFC 5861), and
#: one the origin confirmed with a 304 (RFC 9111 §4.3.4).  A miss and a bypass
#: are relayed from the origin.
FROM_CACHE = frozenset({"hit", "stale", "revalidated"})


@dataclass(frozen=True, slots=True)
class Bucket:
    """One bucket's counts; ``ts`` is its start (epoch seconds)."""

    ts: float
    requests: int
    hits: int
    misses: int
    origin_requests: int
    warm_fetches: int
    #: Requests answered with a stored entry's body (:data:`FROM_CACHE`); the
    #: rest of ``requests`` were relayed from the origin.
    from_cache: int = 0
    #: Body bytes sent to clients from stored entries, and relayed from the origin.
    cache_bytes: int = 0
    origin_bytes: int = 0
    #: Responses by status class (a 101 of a WebSocket upgrade is in none).
    status_2xx: int = 0
    status_3xx: int = 0
    status_4xx: int = 0
    status_5xx: int = 0

    def to_json(self) -> dict[str, Any]:
        """The bucket as the control API's timeline shows it."""
        return {**asdict(self), "hit_rate": self.hit_rate}

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
        self._from_cache = [0] * buckets
        self._cache_bytes = [0] * buckets
        self._origin_bytes = [0] * buckets
        # Per status class 2xx..5xx: _statuses[c - 2][slot].
        self._statuses = [[0] * buckets for _ in range(4)]

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
            self._from_cache[slot] = self._cache_bytes[slot] = self._origin_bytes[slot] = 0
            for counts in self._statuses:
                counts[slot] = 0
        return slot

    def request(self, ts: float, outcome: str, status: int = 0, sent_bytes: int = 0) -> None:
        """A user request, how the cache answered it (the tracker's outcomes),
        the status the client got and the body bytes sent to it."""
        slot = self._slot(ts)
        if slot < 0:
            return
        self._requests[slot] += 1
        if outcome in FROM_CACHE:
            self._from_cache[slot] += 1
            self._cache_bytes[slot] += sent_bytes
        else:
            self._origin_bytes[slot] += sent_bytes
        status_class = status // 100
        if 2 <= status_class <= 5:
            self._statuses[status_class - 2][slot] += 1
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
                        self._from_cache[slot],
                        self._cache_bytes[slot],
                        self._origin_bytes[slot],
                        *(counts[slot] for counts in self._statuses),
                    )
                )
            else:
                out.append(Bucket(ts, 0, 0, 0, 0, 0))
        return out
