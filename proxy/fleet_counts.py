"""One view of the traffic: the fleet's usage counts, shared through Redis.

Each replica sees only its slice of the traffic.  With the Redis store it
adds its counts to the fleet's every :data:`FLUSH_INTERVAL` seconds and reads
the fleet's back, so the hot keys (``GET /cache/warming/hot-data``) and the
miss-reactive threshold count every replica's requests, and a warm decision
(reactive threshold, refresh-ahead) is taken once across the fleet:

- **Counts**: for each tracking window ``W``, time is cut in buckets of
  ``W/12`` seconds (the tracker's slices).  A flush adds this replica's
  requests per key to the sorted set ``<prefix>{fleet}:counts:<W>:req:<bucket>``
  (``ZINCRBY``), and for the reactive window its misses per key to
  ``...:miss:<bucket>``; each bucket expires once no window covers it.  Only
  the :data:`TOP_PER_FLUSH` busiest keys of a flush are written, so the write
  load is bounded whatever the traffic; the long tail never decides anything.
- **The view**: after each flush the replica reads the top
  :data:`READ_PER_BUCKET` keys of the buckets covering each window and keeps
  the sums in memory.  The warmer core reads that view synchronously (it
  stays sans-I/O, DESIGN rule 2): the miss-reactive strategy adds the *other*
  replicas' misses of a key to its own live count.
- **Claims**: before the runner queues a decision, it claims it with
  ``SET <prefix>{fleet}:claim:<kind>:<key>:<lifetime> NX EX``; ``<lifetime>``
  is the end of the cached entry's lifetime the decision is about (the same
  on every replica, since they share the entry), so one replica warms it and
  the others drop their copy of the decision.

The ``{fleet}`` hash tag keeps all of it in one Redis Cluster slot.  With
Redis away every replica counts alone and claims nothing (it warms as a
single process does); the loop reconnects with backoff by itself.  With the
memory store none of this runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import logging
import math
import random
import time
from collections.abc import Callable, Sequence

from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from proxy.metrics import ProxyMetrics
from proxy.redis_client import REDIS_ERRORS, RedisClient, redis_client
from warmer.model import Observed
from warmer.pacing import backoff_delay

log = logging.getLogger(__name__)

_REDIS_ERRORS = REDIS_ERRORS

#: Seconds between two flushes (and reads) of the counts.
FLUSH_INTERVAL = 2.0
#: Keys a flush writes at most per count (requests, misses): the write bound.
TOP_PER_FLUSH = 256
#: Keys read at most from each bucket: the read bound.
READ_PER_BUCKET = 1000
#: Keys the view keeps per window.
VIEW_KEYS = 2000
#: Distinct keys counted between two flushes at most; later ones wait for the next.
MAX_PENDING_KEYS = 50_000
#: Buckets per window (the tracker's slices per window).
BUCKETS_PER_WINDOW = 12
#: The view is trusted this many flush intervals after its last read; older,
#: the replica counts alone again.
STALE_AFTER_INTERVALS = 3
#: A claim outlives the lifetime it is about by this long (replicas that saw
#: the lifetime late decide after it ended).
CLAIM_GRACE = 60
#: Longest claim (an entry fresh for a year is claimed for a day at a time).
CLAIM_MAX_SECONDS = 86_400
#: Longest cache key written into a Redis key as is; longer ones are hashed.
MAX_KEY_CHARS = 256
_CLAIM_KINDS = frozenset({"reactive", "refresh-ahead"})
_COUNTED = frozenset({"hit", "miss", "stale", "revalidated"})
_MISSES = frozenset({"miss", "stale"})
_BACKOFF_FIRST = 0.2
_BACKOFF_CAP = 10.0


#: One warm decision to take once across the fleet: (kind: "reactive" or
#: "refresh-ahead", the cache key with its variant tag if any, the end of the
#: entry lifetime the decision is about in epoch seconds).
Claim = tuple[str, str, float]


def split_key(key: str) -> tuple[str, str]:
    """(host, path) of a cache key (``//host/path`` or ``/path``)."""
    if key.startswith("//"):
        host, _, rest = key[2:].partition("/")
        return host, "/" + rest
    return "", key


class FleetCounts:
    """This replica's part in the fleet's counts, and its view of them."""

    def __init__(
        self,
        *,
        redis_url: str | None,
        prefix: str,
        metrics: ProxyMetrics,
        timeout: float = 0.5,
        interval: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``redis_url`` None: no fleet (memory store); nothing is shared.
        ``interval``: seconds between syncs (default :data:`FLUSH_INTERVAL`)."""
        self.interval = interval if interval is not None else FLUSH_INTERVAL
        self._prefix = f"{prefix}{{fleet}}:"
        self._metrics = metrics
        self._clock = clock
        self._client: RedisClient | None = None
        if redis_url is not None:
            self._client = redis_client(
                redis_url,
                socket_timeout=timeout,
                connect_timeout=timeout,
                max_connections=4,
                # Every caller handles a failure and tries later: no silent retries.
                retry=Retry(NoBackoff(), 0),
            )
        self._windows: tuple[float, ...] = ()
        self._reactive_window = 0.0
        self._local_misses: Callable[[str, float, float], int] = lambda key, window, now: 0
        # key -> [requests, misses] since the last flush
        self._pending: dict[str, list[int]] = {}
        # window -> [(key, fleet requests)], count descending
        self._hot: dict[float, list[tuple[str, int]]] = {}
        # key -> misses of the other replicas in the reactive window
        self._others_misses: dict[str, int] = {}
        self._read_at: float | None = None
        self._closed = False

    def bind(
        self,
        windows: Sequence[float],
        reactive_window: float,
        local_misses: Callable[[str, float, float], int],
    ) -> None:
        """The tracker's windows, the reactive window, and this replica's own
        live miss count ``(key, window, now)`` (the tracker's)."""
        self._windows = tuple(sorted(set(windows)))
        self._reactive_window = reactive_window
        self._local_misses = local_misses

    @property
    def enabled(self) -> bool:
        """True with the Redis store (there is a fleet to count with)."""
        return self._client is not None

    @property
    def shared(self) -> bool:
        """True while the fleet's view is recent enough to be used."""
        read_at = self._read_at
        return (
            read_at is not None
            and time.monotonic() - read_at <= STALE_AFTER_INTERVALS * self.interval + 1.0
        )

    # ------------------------------------------------------------- counting

    def observe(self, event: Observed) -> None:
        """Count one access event for the next flush; O(1), never awaits."""
        if self._client is None:
            return
        outcome = event.outcome
        if outcome not in _COUNTED:
            return
        counts = self._pending.get(event.key)
        if counts is None:
            if len(self._pending) >= MAX_PENDING_KEYS:
                return
            counts = self._pending[event.key] = [0, 0]
        counts[0] += 1
        if outcome in _MISSES:
            counts[1] += 1

    # --------------------------------------------------------- reading (sync)

    def others_misses(self, key: str, window: float) -> int:
        """Misses of ``key`` by the other replicas in ``window`` (0 without a view)."""
        if window != self._reactive_window or not self.shared:
            return 0
        return self._others_misses.get(key, 0)

    def hot(self, n: int, window: float | None) -> list[tuple[str, str, str, int]] | None:
        """The fleet's ``n`` hottest keys in ``window`` (default: the longest)
        as (key, url, host, count), count descending; None when there is no
        fleet view (memory store, Redis away): the caller shows this
        replica's own."""
        if not self.shared or not self._windows:
            return None
        chosen = window if window is not None else self._windows[-1]
        out = []
        for key, count in self._hot.get(chosen, [])[:n]:
            host, path = split_key(key)
            out.append((key, path, host, count))
        return out

    # ---------------------------------------------------------------- claims

    def claim_key(self, claim: Claim) -> str:
        """The Redis key of a claim (bounded: a long cache key is hashed)."""
        kind, key, lifetime_end = claim
        if kind not in _CLAIM_KINDS:
            raise ValueError(f"unknown claim kind {kind!r}")
        if len(key) > MAX_KEY_CHARS:
            key = "sha256:" + hashlib.sha256(key.encode()).hexdigest()
        # Milliseconds: every replica read the same stored lifetime.
        return f"{self._prefix}claim:{kind}:{key}:{round(lifetime_end * 1000)}"

    async def claim(self, claims: Sequence[Claim]) -> list[bool] | None:
        """Claim each decision (True: this replica takes it); None when Redis
        does not answer (or with no fleet): nothing is claimed, the caller
        decides alone."""
        if self._client is None or not claims:
            return None
        now = self._clock()
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for claim in claims:
                    left = claim[2] - now
                    seconds = CLAIM_GRACE + (
                        min(CLAIM_MAX_SECONDS, math.ceil(left)) if left > 0 else 0
                    )
                    pipe.set(self.claim_key(claim), b"1", nx=True, ex=seconds)
                answers = await pipe.execute()
        except _REDIS_ERRORS as exc:
            log.debug("claiming warm decisions failed: %s", exc)
            self._metrics.fleet_claims.labels("unclaimed").inc(len(claims))
            return None
        won = [bool(a) for a in answers]
        for ok in won:
            self._metrics.fleet_claims.labels("won" if ok else "lost").inc()
        return won

    # ------------------------------------------------------------------ loop

    async def run(self) -> None:
        """Flush and read every :attr:`interval` seconds until cancelled."""
        if self._client is None:
            return
        failures = 0
        while True:
            try:
                await self.sync()
            except _REDIS_ERRORS as exc:
                if failures == 0:
                    log.warning("sharing usage counts with the fleet failed: %s", exc)
                failures += 1
                self._metrics.fleet_counts_syncs.labels("failed").inc()
                if not self.shared:
                    self._metrics.fleet_counts_shared.set(0)
                delay = backoff_delay(
                    failures, base=_BACKOFF_FIRST, cap=_BACKOFF_CAP, rand=random.random
                )
                await asyncio.sleep(max(self.interval, _BACKOFF_FIRST, delay))
                continue
            if failures:
                log.warning("sharing usage counts with the fleet works again")
            failures = 0
            self._metrics.fleet_counts_syncs.labels("ok").inc()
            self._metrics.fleet_counts_shared.set(1)
            await asyncio.sleep(self.interval)

    async def sync(self) -> None:
        """One flush of this replica's counts, then one read of the fleet's.
        Raises RedisError/OSError (the counts of a failed flush are lost:
        bounded, and a count is a hint)."""
        assert self._client is not None
        now = self._clock()
        pending, self._pending = self._pending, {}
        busiest = heapq.nlargest(TOP_PER_FLUSH, pending.items(), key=lambda kv: kv[1][0])
        missed = heapq.nlargest(
            TOP_PER_FLUSH,
            ((k, c[1]) for k, c in pending.items() if c[1] > 0),
            key=lambda kv: kv[1],
        )
        async with self._client.pipeline(transaction=False) as pipe:
            for window in self._windows:
                name = self._bucket(window, "req", now)
                for key, counts in busiest:
                    pipe.zincrby(name, counts[0], key)
                if busiest:
                    pipe.expire(name, self._keep(window))
            if missed and self._reactive_window:
                name = self._bucket(self._reactive_window, "miss", now)
                for key, misses in missed:
                    pipe.zincrby(name, misses, key)
                pipe.expire(name, self._keep(self._reactive_window))
            for window in self._windows:
                for bucket in self._buckets(window, "req", now):
                    pipe.zrevrange(bucket, 0, READ_PER_BUCKET - 1, withscores=True)
            if self._reactive_window:
                for bucket in self._buckets(self._reactive_window, "miss", now):
                    pipe.zrevrange(bucket, 0, READ_PER_BUCKET - 1, withscores=True)
            answers = await pipe.execute()
        reads = answers[len(answers) - self._reads() :]
        per_window = BUCKETS_PER_WINDOW + 1
        hot: dict[float, list[tuple[str, int]]] = {}
        for i, window in enumerate(self._windows):
            totals = _summed(reads[i * per_window : (i + 1) * per_window])
            hot[window] = heapq.nlargest(VIEW_KEYS, totals.items(), key=lambda kv: (kv[1], kv[0]))
        others: dict[str, int] = {}
        if self._reactive_window:
            missed_totals = _summed(reads[len(self._windows) * per_window :])
            # What the fleet counted less what this replica counted itself
            # (flushed just now): the others' share, added to this replica's
            # live count when the threshold is checked.
            window = self._reactive_window
            for key, total in missed_totals.items():
                rest = total - self._local_misses(key, window, now)
                if rest > 0:
                    others[key] = rest
        self._hot = hot
        self._others_misses = others
        self._read_at = time.monotonic()

    def _reads(self) -> int:
        per_window = BUCKETS_PER_WINDOW + 1
        return per_window * (len(self._windows) + (1 if self._reactive_window else 0))

    def _bucket(self, window: float, what: str, now: float) -> str:
        length = window / BUCKETS_PER_WINDOW
        return f"{self._prefix}counts:{window:g}:{what}:{math.floor(now / length)}"

    def _buckets(self, window: float, what: str, now: float) -> list[str]:
        """The buckets covering the ``window`` seconds to ``now`` (the oldest
        one whole: a slice of over-count, as the tracker's sketches)."""
        length = window / BUCKETS_PER_WINDOW
        last = math.floor(now / length)
        return [
            f"{self._prefix}counts:{window:g}:{what}:{index}"
            for index in range(last - BUCKETS_PER_WINDOW, last + 1)
        ]

    @staticmethod
    def _keep(window: float) -> int:
        """Seconds a bucket lives: until no window to come covers it."""
        return math.ceil(window + 2 * window / BUCKETS_PER_WINDOW) + 1

    async def close(self) -> None:
        """Close the connections (the loop is the caller's task to cancel)."""
        if self._client is not None and not self._closed:
            self._closed = True
            with contextlib.suppress(*_REDIS_ERRORS):
                await self._client.aclose()


def _summed(reads: Sequence[object]) -> dict[str, int]:
    """Sum ``ZREVRANGE ... WITHSCORES`` answers per member."""
    totals: dict[str, int] = {}
    for read in reads:
        if not isinstance(read, list):
            continue
        for member, score in read:
            key = member.decode("utf-8", "replace") if isinstance(member, bytes) else str(member)
            totals[key] = totals.get(key, 0) + int(score)
    return totals
