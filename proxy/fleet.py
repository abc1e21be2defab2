"""The fleet on Redis: replicas that know each other, and invalidations that
reach every replica's in-process tier (L1) at once.

Many proxies share one Redis (``cache.store = "redis"``).  Redis is the only
coordinator:

- **L1 invalidations** go over a pub/sub channel, ``<prefix>fleet:l1``.  What
  one replica drops from the shared store (an unsafe method's invalidation,
  RFC 9111 §4.4; a purge, hard or soft) it publishes: the keys, in messages of
  bounded size, or for a purge that reaches many keys the purge's glob or tag,
  or "flush L1".  Every other replica drops the same from its L1 when the
  message arrives, instead of serving its copy for up to ``cache.l1_ttl``.  A
  replica ignores its own messages (it dropped already).
- **Heartbeats**: each replica keeps a key ``<prefix>{fleet}:replica:<name>``
  (``SET ... EX`` of three heartbeat intervals) saying who it is and how busy;
  ``/cache/warming/status`` lists the replicas from those keys.  The ``{fleet}``
  hash tag keeps them in one Redis Cluster slot, so one SCAN finds them all.

A Redis outage never costs a client request: publishing happens in the
background, and the subscriber reconnects with backoff by itself.  With the
memory store there is no fleet: this replica lists itself, nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from proxy import __version__
from proxy.cache_key import path_glob_matcher
from proxy.metrics import ProxyMetrics
from proxy.purge import split_key
from proxy.redis_client import REDIS_ERRORS, RedisClient, Subscriptions, redis_client
from proxy.store.memory import MemoryStore
from proxy.store.redis import escape_glob
from proxy.tasks import BackgroundTasks
from warmer.pacing import backoff_delay

log = logging.getLogger(__name__)

# Errors that mean "Redis failed" (OSError: socket errors and TimeoutError).
_REDIS_ERRORS = REDIS_ERRORS

#: Seconds between heartbeats; a heartbeat key lives three of them.
HEARTBEAT_INTERVAL = 5.0
HEARTBEAT_TTL = 3 * HEARTBEAT_INTERVAL
#: Replicas /status lists at most (the SCAN stops there).
MAX_REPLICAS_LISTED = 256
#: Largest message published, in bytes; keys are split over several.
MAX_MESSAGE_BYTES = 64 * 1024
#: Largest message read; anything bigger is not one of ours and is ignored.
MAX_RECEIVED_BYTES = 4 * MAX_MESSAGE_BYTES
#: Keys one purge publishes one by one; beyond them, it publishes its glob or
#: tag once it is done (one message instead of thousands).
BULK_KEYS = 2048
#: Keys waiting to be published at most; beyond them (Redis slow or away) the
#: replicas are told to flush their whole L1 instead.
MAX_PENDING_KEYS = 10_000
# Reconnect backoff of the subscriber: doubling from the first to the cap,
# with full jitter so replicas do not reconnect in step after an outage.
_BACKOFF_FIRST = 0.1
_BACKOFF_CAP = 5.0
# With nothing received for this long, the subscriber pings Redis; with no
# answer either for twice as long, the connection is taken as dead (a hung
# Redis or a silently cut connection never raises by itself).
_IDLE_PING = 5.0
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
#: Longest replica name (as config.py's check of ``cache.replica_name``).
MAX_NAME_CHARS = 64


def default_replica_name() -> str:
    """``<hostname>-<pid>``: unique per pod and process (a pod's hostname is its name)."""
    host = "".join(c if c in _NAME_CHARS else "-" for c in socket.gethostname())
    return f"{host[: MAX_NAME_CHARS - 8]}-{os.getpid()}"


# ----------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class L1Drop:
    """What an L1 must drop: ``keys``, or every key whose path matches the
    purge glob ``pattern``, or every entry tagged ``tag``, or everything."""

    keys: tuple[str, ...] = ()
    pattern: str | None = None
    tag: str | None = None
    flush: bool = False


def encode_drops(sender: str, drop: L1Drop) -> list[bytes]:
    """``drop`` as messages of at most :data:`MAX_MESSAGE_BYTES` (keys split over several)."""
    if drop.flush:
        return [orjson.dumps({"from": sender, "flush": True})]
    if drop.pattern is not None:
        return [orjson.dumps({"from": sender, "pattern": drop.pattern})]
    if drop.tag is not None:
        return [orjson.dumps({"from": sender, "tag": drop.tag})]
    messages: list[bytes] = []
    chunk: list[str] = []
    size = 64  # the envelope
    for key in drop.keys:
        cost = len(key.encode()) * 2 + 4  # JSON may escape; a generous estimate
        if chunk and size + cost > MAX_MESSAGE_BYTES:
            messages.append(orjson.dumps({"from": sender, "keys": chunk}))
            chunk, size = [], 64
        chunk.append(key)
        size += cost
    if chunk:
        messages.append(orjson.dumps({"from": sender, "keys": chunk}))
    return messages


def decode_drop(data: bytes) -> tuple[str, L1Drop] | None:
    """(sender, drop) of a message, or None when it is not a well-formed one."""
    if len(data) > MAX_RECEIVED_BYTES:
        return None
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict) or not isinstance(sender := body.get("from"), str):
        return None
    if body.get("flush") is True:
        return sender, L1Drop(flush=True)
    if isinstance(pattern := body.get("pattern"), str):
        return sender, L1Drop(pattern=pattern)
    if isinstance(tag := body.get("tag"), str):
        return sender, L1Drop(tag=tag)
    keys = body.get("keys")
    if isinstance(keys, list) and all(isinstance(k, str) for k in keys):
        return sender, L1Drop(keys=tuple(keys))
    return None


def apply_drop(l1: MemoryStore, drop: L1Drop) -> int:
    """Drop from ``l1`` what ``drop`` names; how many items went."""
    if drop.flush:
        return l1.clear()
    if drop.tag is not None:
        return l1.delete_many_nowait(l1.tagged_nowait(drop.tag))
    if drop.pattern is not None:
        # As the purge selected keys: by the path of the primary key, so
        # variant keys ("<key>#v...") of a matching path go too.
        matches = path_glob_matcher(drop.pattern)

        def selected(key: str) -> bool:
            parsed = split_key(key)
            return parsed is not None and matches(parsed[1])

        return l1.delete_where(selected)
    return l1.delete_many_nowait(drop.keys)


# ---------------------------------------------------------------- publisher


@dataclass(slots=True)
class _Bulk:
    """One purge by glob or tag, while it runs (see L1Publisher.bulk)."""

    selector: L1Drop
    published: int = 0
    overflowed: bool = False


# The purge the current task runs, if any (the purge's gathered reads copy
# the context and share the object).
_current_bulk: contextvars.ContextVar[_Bulk | None] = contextvars.ContextVar(
    "warmproxy_l1_bulk", default=None
)


class L1Publisher:
    """Publishes what this replica dropped from the shared store, in the background.

    :meth:`dropped` never awaits (it is called on request paths): the keys
    wait in a bounded buffer that one task publishes, batched, as soon as it
    runs.  When publishing fails (Redis away), the keys are not retried one
    by one: once Redis answers again, "flush L1" is published instead, since
    the other replicas may have missed what happened meanwhile.
    """

    def __init__(
        self, client: RedisClient, channel: str, sender: str, metrics: ProxyMetrics
    ) -> None:
        self._client = client
        self._channel = channel
        self._sender = sender
        self._metrics = metrics
        self._keys: dict[str, None] = {}
        self._selectors: list[L1Drop] = []
        self._flush = False
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    def dropped(self, keys: Sequence[str]) -> None:
        """``keys`` were deleted from (or rewritten in) the shared store."""
        bulk = _current_bulk.get()
        if bulk is not None:
            if bulk.overflowed or bulk.published + len(keys) > BULK_KEYS:
                # The purge's selector goes out when it is done instead.
                bulk.overflowed = True
                return
            bulk.published += len(keys)
        if self._flush:
            return
        for key in keys:
            self._keys[key] = None
        if len(self._keys) > MAX_PENDING_KEYS:
            self._keys.clear()
            self._flush = True
        self._wake_up()

    @contextlib.contextmanager
    def bulk(self, *, pattern: str | None = None, tag: str | None = None) -> Iterator[None]:
        """Within: a purge by ``pattern`` or ``tag`` runs in this task.  Its
        first :data:`BULK_KEYS` keys are published as they go; if it drops
        more, its selector is published once it is done instead of the rest."""
        scope = _Bulk(L1Drop(pattern=pattern, tag=tag))
        token = _current_bulk.set(scope)
        try:
            yield
        finally:
            _current_bulk.reset(token)
            if scope.overflowed:
                self._selectors.append(scope.selector)
                if len(self._selectors) > 64:  # many huge purges at once
                    self._selectors.clear()
                    self._flush = True
                self._wake_up()

    def _wake_up(self) -> None:
        self._idle.clear()
        self._wake.set()

    async def settled(self) -> None:
        """Wait until everything dropped so far has been published (or given up)."""
        await self._idle.wait()

    async def run(self) -> None:
        """Publish what is dropped, as it is dropped, until cancelled."""
        failures = 0
        while True:
            if not (self._keys or self._selectors or self._flush):
                self._idle.set()
                await self._wake.wait()
            self._wake.clear()
            drops = self._take()
            try:
                for drop in drops:
                    for message in encode_drops(self._sender, drop):
                        await self._client.publish(self._channel, message)
                        self._metrics.fleet_messages.labels("published").inc()
            except _REDIS_ERRORS as exc:
                if failures == 0:
                    log.warning("publishing L1 invalidations failed: %s", exc)
                failures += 1
                # What did not go out may have reached nobody: flush them all.
                self._flush = True
                self._keys.clear()
                self._selectors.clear()
                await asyncio.sleep(_backoff(failures))
                continue
            if failures:
                log.warning("publishing L1 invalidations works again")
            failures = 0

    def _take(self) -> list[L1Drop]:
        if self._flush:
            self._flush = False
            self._keys.clear()
            self._selectors.clear()
            return [L1Drop(flush=True)]
        drops = [L1Drop(keys=tuple(self._keys))] if self._keys else []
        drops.extend(self._selectors)
        self._keys.clear()
        self._selectors.clear()
        return drops


def _backoff(failures: int) -> float:
    """Seconds to wait after ``failures`` failures in a row: the executor's
    full-jitter backoff, never below half the first step (no busy loop)."""
    delay = backoff_delay(failures, base=_BACKOFF_FIRST, cap=_BACKOFF_CAP, rand=random.random)
    return max(_BACKOFF_FIRST / 2, delay)


# --------------------------------------------------------------- subscriber


class L1Follower:
    """Drops from this replica's L1 what the other replicas publish."""

    def __init__(
        self,
        subscriptions: Subscriptions,
        channel: str,
        sender: str,
        l1: MemoryStore,
        metrics: ProxyMetrics,
    ) -> None:
        self._subscriptions = subscriptions
        self._channel = channel
        self._sender = sender
        self._l1 = l1
        self._metrics = metrics
        #: Set while subscribed.
        self.subscribed = asyncio.Event()
        #: Set once the first attempt to subscribe succeeded or failed.
        self.tried = asyncio.Event()

    async def run(self) -> None:
        """Follow the channel until cancelled, reconnecting with backoff."""
        failures = 0
        while True:
            pubsub: PubSub | None = None
            try:
                # On a cluster, a connection to one node (the next one after a failure).
                pubsub = await self._subscriptions.pubsub()
                await pubsub.subscribe(self._channel)
                # Messages published while this replica was not subscribed
                # (an outage, a cut connection, a restart of Redis) are lost
                # for it: pub/sub keeps nothing for absent subscribers.  Its
                # L1 may hold entries dropped meanwhile, so it starts over
                # from the shared store.  (At start the L1 is empty anyway.)
                flushed = self._l1.clear()
                if flushed:
                    self._metrics.fleet_l1_flushes.inc()
                    log.info("L1 flushed after subscribing again", extra={"entries": flushed})
                if failures:
                    log.warning("L1 invalidations followed again")
                failures = 0
                self._up()
                await self._follow(pubsub)
            except _REDIS_ERRORS as exc:
                if failures == 0:
                    log.warning("following L1 invalidations failed: %s", exc)
                failures += 1
            finally:
                self._down()
                self.tried.set()
                if pubsub is not None:
                    with contextlib.suppress(*_REDIS_ERRORS, asyncio.CancelledError):
                        await pubsub.aclose()
            await asyncio.sleep(_backoff(max(failures, 1)))

    async def _follow(self, pubsub: PubSub) -> None:
        loop = asyncio.get_running_loop()
        heard = loop.time()
        pinged = False
        while True:
            message = await pubsub.get_message(timeout=1.0)
            now = loop.time()
            if message is not None:
                heard, pinged = now, False
                if message.get("type") == "message":
                    self._received(message.get("data"))
                continue
            if now - heard > 2 * _IDLE_PING:
                raise TimeoutError("Redis did not answer the subscriber's PING")
            if now - heard > _IDLE_PING and not pinged:
                await pubsub.ping()
                pinged = True

    def _received(self, data: Any) -> None:
        if not isinstance(data, bytes):
            return
        decoded = decode_drop(data)
        if decoded is None:
            log.debug("ignored a malformed L1 invalidation message")
            return
        sender, drop = decoded
        if sender == self._sender:
            return  # this replica dropped it already
        self._metrics.fleet_messages.labels("received").inc()
        apply_drop(self._l1, drop)
        if drop.flush:
            self._metrics.fleet_l1_flushes.inc()

    def _up(self) -> None:
        self.subscribed.set()
        self.tried.set()
        self._metrics.fleet_subscribed.set(1)

    def _down(self) -> None:
        self.subscribed.clear()
        self._metrics.fleet_subscribed.set(0)


# ------------------------------------------------------------------ replicas


class Heartbeat:
    """This replica's heartbeat key, and the list of replicas read from all of them."""

    def __init__(
        self,
        client: RedisClient | None,
        key_prefix: str,
        me: Callable[[], dict[str, Any]],
    ) -> None:
        self._client = client
        self._key_prefix = key_prefix
        self._me = me

    def _key(self, name: str) -> str:
        return self._key_prefix + name

    async def beat(self) -> None:
        """Write this replica's heartbeat now.  Raises RedisError/OSError."""
        if self._client is None:
            return
        me = self._me()
        await self._client.set(self._key(me["id"]), orjson.dumps(me), ex=int(HEARTBEAT_TTL))

    async def run(self) -> None:
        """Beat every :data:`HEARTBEAT_INTERVAL` seconds until cancelled."""
        failing = False
        while True:
            try:
                await self.beat()
            except _REDIS_ERRORS as exc:
                if not failing:
                    log.warning("writing the replica heartbeat failed: %s", exc)
                failing = True
            else:
                failing = False
            await asyncio.sleep(HEARTBEAT_INTERVAL)

    async def leave(self) -> None:
        """Delete this replica's heartbeat (a clean stop); never raises."""
        if self._client is None:
            return
        with contextlib.suppress(*_REDIS_ERRORS):
            await self._client.unlink(self._key(self._me()["id"]))

    async def replicas(self, *, strict: bool = False) -> list[dict[str, Any]]:
        """The live replicas, this one first (and alone when Redis is not used
        or does not answer), then the others by name.  ``strict``: raise
        what Redis raised instead of answering this one alone."""
        me = self._me()
        me["this_replica"] = True
        others: list[dict[str, Any]] = []
        if self._client is not None:
            try:
                others = await self._read_others(me["instance"])
            except _REDIS_ERRORS as exc:
                if strict:
                    raise
                log.debug("listing replicas failed: %s", exc)
        return [me, *sorted(others, key=lambda r: str(r["id"]))]

    async def _read_others(self, instance: str) -> list[dict[str, Any]]:
        assert self._client is not None
        keys: list[bytes] = []
        async for key in self._client.scan_iter(
            match=escape_glob(self._key_prefix) + "*", count=500
        ):
            keys.append(key)
            if len(keys) >= MAX_REPLICAS_LISTED:
                break
        if not keys:
            return []
        others: list[dict[str, Any]] = []
        for raw in await self._client.mget(keys):
            replica = _replica(raw)
            if replica is not None and replica["instance"] != instance:
                replica["this_replica"] = False
                others.append(replica)
        return others


_REPLICA_FIELDS: dict[str, tuple[type, ...]] = {
    "id": (str,),
    "instance": (str,),
    "version": (str,),
    "started_at": (str,),
    "last_seen": (str,),
    "requests_per_second": (int, float),
    "warm_in_flight": (int,),
}


def _replica(raw: Any) -> dict[str, Any] | None:
    """A heartbeat's fields, or None when it is not one (expired meanwhile, foreign)."""
    if not isinstance(raw, bytes) or len(raw) > 4096:
        return None
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict):
        return None
    if not all(isinstance(body.get(k), t) for k, t in _REPLICA_FIELDS.items()):
        return None
    return {k: body[k] for k in _REPLICA_FIELDS}


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


class RequestRate:
    """Client requests per second between two readings of a request counter."""

    def __init__(self, count: Callable[[], int]) -> None:
        self._count = count
        self._last = (time.monotonic(), count())
        self.per_second = 0.0

    def read(self) -> float:
        """The rate since the last reading at least a second ago."""
        now, count = time.monotonic(), self._count()
        then, before = self._last
        if now - then >= 1.0:
            self.per_second = round((count - before) / (now - then), 3)
            self._last = (now, count)
        return self.per_second


# --------------------------------------------------------------------- fleet


class Fleet:
    """This replica's part in the fleet: heartbeat, L1 publisher and follower.

    Built by the app for every store; with the memory store it only answers
    :meth:`replicas` with this replica.
    """

    def __init__(
        self,
        *,
        redis_url: str | None,
        prefix: str,
        name: str,
        l1: MemoryStore | None,
        metrics: ProxyMetrics,
        load: Callable[[], tuple[int, int]],
        timeout: float = 0.5,
    ) -> None:
        """``redis_url`` None: no fleet (memory store).  ``load``: (client
        requests so far, warm fetches in flight), for the heartbeat."""
        self.name = name
        # Tells this process's messages from another's, even when two
        # replicas were given the same name by mistake.
        self.instance = secrets.token_hex(8)
        self.started_at = time.time()
        self._load = load
        self._rate = RequestRate(lambda: load()[0])
        self._client: RedisClient | None = None
        self._subscriptions: Subscriptions | None = None
        self.publisher: L1Publisher | None = None
        self.follower: L1Follower | None = None
        if redis_url is not None:
            self._client = redis_client(
                redis_url,
                socket_timeout=timeout,
                connect_timeout=timeout,
                # The subscriber's connection, the heartbeat and publishing.
                max_connections=8,
                # No silent retries: a pub/sub connection that redis-py
                # re-established by itself would have lost messages unseen
                # (the follower must know, to flush its L1), and every caller
                # here handles a failure and tries again later anyway.
                retry=Retry(NoBackoff(), 0),
            )
            channel = f"{prefix}fleet:l1"
            self.publisher = L1Publisher(self._client, channel, self.instance, metrics)
            if l1 is not None:
                self._subscriptions = Subscriptions(self._client, redis_url, timeout=timeout)
                self.follower = L1Follower(self._subscriptions, channel, self.instance, l1, metrics)
        self.heartbeat = Heartbeat(self._client, f"{prefix}{{fleet}}:replica:", self._me)
        self._tasks = BackgroundTasks()
        self._closed = False

    def _me(self) -> dict[str, Any]:
        _, warm_in_flight = self._load()
        return {
            "id": self.name,
            "instance": self.instance,
            "version": __version__,
            "started_at": _iso(self.started_at),
            "last_seen": _iso(time.time()),
            "requests_per_second": self._rate.read(),
            "warm_in_flight": warm_in_flight,
        }

    async def start(self, first_subscribe_within: float) -> None:
        """Start the background tasks; wait for the first subscription attempt
        (at most ``first_subscribe_within`` seconds), so that a replica that
        answers follows the others' invalidations from its first request."""
        if self._client is None:
            return
        assert self.publisher is not None
        self._tasks.spawn(self.publisher.run(), name="fleet: publish L1 drops")
        self._tasks.spawn(self.heartbeat.run(), name="fleet: heartbeat")
        if self.follower is not None:
            self._tasks.spawn(self.follower.run(), name="fleet: follow L1 drops")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(first_subscribe_within):
                    await self.follower.tried.wait()

    async def replicas(self, *, strict: bool = False) -> list[dict[str, Any]]:
        """The live replicas (see :meth:`Heartbeat.replicas`)."""
        return await self.heartbeat.replicas(strict=strict)

    async def close(self) -> None:
        """Stop the tasks, take this replica off the list, close the connections."""
        if self.publisher is not None:
            # What this replica dropped last still reaches the others.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self.publisher.settled()
        await self._tasks.close()
        if self._client is not None and not self._closed:
            self._closed = True
            await self.heartbeat.leave()
            if self._subscriptions is not None:
                with contextlib.suppress(*_REDIS_ERRORS):
                    await self._subscriptions.aclose()
            await self._client.aclose()
