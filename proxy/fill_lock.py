"""One origin fetch per key across the fleet: a short lock per key in Redis.

Replicas sharing one Redis store coalesce their misses of a key as one
process coalesces its own (:class:`proxy.filler.Filler`): the replica whose
``SET <prefix>lock:<key> <token> NX PX <ms>`` succeeds fetches and stores,
then deletes the lock if it still holds it (compare-and-delete in Lua, so a
lock that expired and was taken by another replica is left alone).  The
others wait for the entry to appear and answer from it.

Waiting is polling with a short backoff, not a "filled" pub/sub message:

- nothing can be missed: a message published between a waiter's failed SET
  and its SUBSCRIBE is lost, so a subscriber has to poll once anyway; a poll
  of the lock key also tells, with no message at all, that the holder
  released without storing (the response was not storable) or died (the
  lock expired);
- no subscriber connection per replica to keep alive and resubscribe after
  an outage;
- it is cheap: each replica has at most one waiter per key (its other
  requests for the key queue behind it in-process), a poll is two small
  commands, and polls back off from 5 ms to 100 ms over a fetch that takes
  the origin's time.

The lock lives as long as an origin fetch may take (``proxy.connect_timeout +
proxy.read_timeout``, capped at :data:`MAX_LOCK_SECONDS`), and so does a wait:
a holder that died costs the others that long at most, then each fetches for
itself.  A Redis failure never costs a request: the fill goes on without the
lock, and the lock is not tried again for a short while (backing off up to
:data:`MAX_OUTAGE_BACKOFF`) or while the cache knows the store is down.

Only single-key commands are sent (the lock's key alone), so the lock needs
no hash tag to work on a Redis Cluster.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

from proxy.metrics import ProxyMetrics
from proxy.redis_client import REDIS_ERRORS, RedisClient
from proxy.store.redis import FILL_LOCK_NAMESPACE

log = logging.getLogger(__name__)

T = TypeVar("T")

# What a failed Redis command raises (socket errors and timeouts too).
_BACKEND_ERRORS = REDIS_ERRORS

#: Longest a lock lives (and a waiter waits), whatever the origin timeouts:
#: past it a holder that died costs the waiters more than a duplicate fetch.
MAX_LOCK_SECONDS = 15.0
#: Shortest lock: a fetch takes at least a round trip and a store write.
MIN_LOCK_SECONDS = 0.5
# A waiter's first poll comes this soon; each next one twice as late, up to the last.
FIRST_POLL_SECONDS = 0.005
MAX_POLL_SECONDS = 0.1
# A lock seen gone this close to its expiry counts as expired: the expiry is
# reckoned from the claim's reply, a round trip after Redis measured it.
EXPIRY_SLACK_SECONDS = 0.05
# After a Redis failure the lock is left alone this long, doubling up to the max.
FIRST_OUTAGE_BACKOFF = 0.5
MAX_OUTAGE_BACKOFF = 10.0

# Delete the lock only while it holds our token: after it expired another
# replica may hold it, and its lock is not ours to release.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def lock_seconds(connect_timeout: float, read_timeout: float) -> float:
    """How long a fill lock lives: as long as an origin fetch may take, bounded."""
    return min(MAX_LOCK_SECONDS, max(MIN_LOCK_SECONDS, connect_timeout + read_timeout))


class WaitResult(StrEnum):
    """How a wait for another replica's fetch ended (a label of the waits metric)."""

    COLLAPSED = "collapsed"  # its entry answered this request
    RELEASED = "released"  # released with nothing this request can use: fetch here
    TIMEOUT = "timeout"  # the lock expired (or the wait's bound passed) first: fetch here
    ERROR = "error"  # Redis failed while waiting: fetch here


@dataclass(frozen=True, slots=True)
class Claim:
    """One attempt at a key's fill lock: won (this replica fetches) or not."""

    lock_key: str  # the lock's Redis key
    token: str  # this attempt's own value
    holder: str  # the value the lock held right after the attempt
    held_for: float  # seconds the lock lived on from then

    @property
    def won(self) -> bool:
        return self.holder == self.token


class FillLock:
    """Claims, waits for and releases the fill lock of a cache key in Redis.

    ``client`` is the store's own client (its pool and timeouts); ``usable``
    says whether the store answers now (the cache's health), so an outage
    costs no request a Redis timeout here.
    """

    def __init__(
        self,
        client: RedisClient,
        *,
        prefix: str,
        seconds: float,
        metrics: ProxyMetrics,
        usable: Callable[[], bool] = lambda: True,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not seconds > 0:
            raise ValueError(f"seconds must be positive, got {seconds}")
        self._client = client
        self._prefix = prefix + FILL_LOCK_NAMESPACE
        self.seconds = seconds
        self._ttl_ms = max(1, round(seconds * 1000))
        self._metrics = metrics
        self._usable = usable
        self._monotonic = monotonic
        self._release = client.register_script(_RELEASE)
        self._backoff = FIRST_OUTAGE_BACKOFF
        self._retry_at = 0.0
        metrics.fill_lock_up.set_function(lambda: 1.0 if self.available() else 0.0)

    def lock_key(self, key: str) -> str:
        """The Redis key of ``key``'s fill lock (cache keys are paths: never a clash)."""
        return self._prefix + key

    def available(self) -> bool:
        """The lock is in use now: the store answers, and no failure is being waited out."""
        return self._usable() and self._monotonic() >= self._retry_at

    async def claim(self, key: str) -> Claim | None:
        """Try to take ``key``'s lock; None when it cannot be used now (fetch alone)."""
        if not self.available():
            return None
        token = secrets.token_hex(8)
        lock_key = self.lock_key(key)
        try:
            # GET rather than SET's own answer: the client retries a command
            # once after a lost connection, and a retried SET NX whose first
            # try went through fails on our own lock.
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.set(lock_key, token, nx=True, px=self._ttl_ms)
                pipe.get(lock_key)
                pipe.pttl(lock_key)
                _, holder, pttl = await pipe.execute()
        except _BACKEND_ERRORS as exc:
            self._failed("claim", exc)
            return None
        self._succeeded()
        if holder is None:
            # Released or expired between the commands: nobody to wait for.
            return None
        claim = Claim(
            lock_key=lock_key,
            token=token,
            holder=_text(holder),
            held_for=pttl / 1000 if pttl > 0 else self.seconds,
        )
        if claim.won:
            self._metrics.fill_lock_claims.inc()
        return claim

    async def release(self, claim: Claim) -> None:
        """Delete the lock if this claim still holds it; never raises (it expires anyway)."""
        try:
            await self._release(keys=[claim.lock_key], args=[claim.token])
        except _BACKEND_ERRORS as exc:
            self._failed("release", exc)

    async def wait(
        self, claim: Claim, filled: Callable[[], Awaitable[T | None]]
    ) -> tuple[T | None, WaitResult]:
        """Wait until ``filled()`` finds what the lock's holder stored.

        ``filled`` looks in the cache (None: nothing this request can use).
        Ends with None as soon as the holder's lock is gone with nothing
        found (it released without storing, or expired), at the lock's
        expiry (bounded by this replica's own lock time), or when Redis
        fails: the caller then fetches for itself.
        """
        started = self._monotonic()
        expires = started + claim.held_for
        deadline = started + min(claim.held_for, self.seconds)
        delay = FIRST_POLL_SECONDS
        result: WaitResult
        found: T | None = None
        while True:
            await asyncio.sleep(min(delay, max(0.0, deadline - self._monotonic())))
            delay = min(2 * delay, MAX_POLL_SECONDS)
            if not self._usable():
                result = WaitResult.ERROR
                break
            try:
                holder = await self._client.get(claim.lock_key)
            except _BACKEND_ERRORS as exc:
                self._failed("wait", exc)
                result = WaitResult.ERROR
                break
            # Looked up after the lock was read: a holder stores before it
            # releases, so a lock seen gone means its entry can be found.
            found = await filled()
            if found is not None:
                result = WaitResult.COLLAPSED
                break
            now = self._monotonic()
            if holder is None or _text(holder) != claim.holder:
                expired = now >= expires - EXPIRY_SLACK_SECONDS
                result = WaitResult.TIMEOUT if expired else WaitResult.RELEASED
                break
            if now >= deadline:
                result = WaitResult.TIMEOUT
                break
        self._metrics.fill_lock_waits.labels(result.value).inc()
        return found, result

    def _failed(self, operation: str, exc: BaseException) -> None:
        if self._monotonic() >= self._retry_at:
            log.warning(
                "fill lock %s failed, filling without it for %.1f s: %s",
                operation,
                self._backoff,
                exc,
            )
        self._retry_at = self._monotonic() + self._backoff
        self._backoff = min(2 * self._backoff, MAX_OUTAGE_BACKOFF)

    def _succeeded(self) -> None:
        if self._backoff > FIRST_OUTAGE_BACKOFF:
            log.warning("fill lock usable again")
        self._backoff = FIRST_OUTAGE_BACKOFF


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value
