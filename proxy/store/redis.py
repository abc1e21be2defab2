"""The shared store: one Redis key per item, on ``redis.asyncio`` (hiredis parser).

Each item lives under ``prefix + key`` holding :func:`proxy.entry.encode` bytes,
with a millisecond TTL (``SET ... PX``), so Redis itself drops what has expired
and several proxy replicas can share one cache.  Every failure of the backend
surfaces as :class:`~proxy.store.base.StoreError`, which the cache layer treats
as a miss: the proxy keeps serving from the origin while Redis is away and picks
Redis up again by itself when it returns (redis-py reconnects on the next
command; nothing here latches a failed state).

Gets are batched (:class:`_GetBatcher`): concurrent gets go to Redis together
as one MGET, because redis-py's per-command overhead, not Redis, was what a hit
cost.

Cache tags are indexed in one set per tag, ``prefix + "tag:" + tag``, whose
members are the keys of the entries carrying it.  A put adds its key to its
tags' sets and extends their expiry to at least the entry's, in one script
with the SET; members whose entry is gone or no longer carries the tag are
removed lazily, by the purge that finds them.

On a Redis Cluster (``redis+cluster://``, :mod:`proxy.redis_client`) the
entries spread over the slots, each key alone; the batched gets go out as one
pipelined GET per key (MGET needs its keys in one slot), a tagged put adds its
key to each tag's set (a script per set, whose slot is the tag's) before it
SETs the entry, so an entry is still never stored without its index, and a
scan or count visits every primary.

Never FLUSHDB, FLUSHALL or KEYS: the database may be shared with other
deployments (other prefixes) and other applications.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import functools
import logging
import math
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from redis.asyncio import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from proxy.entry import (
    CacheEntry,
    DecodeError,
    StoredItem,
    decode,
    decode_head,
    encode,
    head_length,
)
from proxy.redis_client import REDIS_ERRORS, RedisClient, redis_client, scan_batches
from proxy.store.base import StoreError, StoreStats

log = logging.getLogger(__name__)

# Errors from the client that mean "the backend failed".  OSError covers the
# builtin TimeoutError (asyncio.timeout) and socket errors that escape redis-py.
_BACKEND_ERRORS = REDIS_ERRORS

_SCAN_COUNT = 500
#: Bytes a head read (:meth:`RedisStore.head`) asks for first: an entry's
#: metadata is its URL, header fields and a few numbers, rarely past 4 KiB.
_HEAD_READ = 4096
# Most distinct keys per batched GET: big enough to amortize redis-py's
# per-command cost, small enough that one reply never stalls the loop or Redis.
_MAX_BATCH_KEYS = 256
# PING before reusing a connection idle this long (seconds), so a connection
# silently cut by a NAT or load balancer fails on the PING, not on a request.
_HEALTH_CHECK_INTERVAL = 15

# Keys per UNLINK / SREM command of a bulk delete.
_DELETE_CHUNK = 500
#: Where the tag index lives under the prefix: never a cache key (those are
#: paths, "/..." or "//host/...").
TAG_NAMESPACE = "tag:"
#: Where the fleet's fill locks live under the prefix (proxy.fill_lock): one
#: short-lived key per cache key being fetched; never a cache key either.
FILL_LOCK_NAMESPACE = "lock:"
#: Every cache key starts with this (paths: "/..." or "//host/..."); what
#: else lives under the prefix (the tag index, fill locks, the warmer's
#: schedule and firing claims, the fleet's heartbeats) never does, and scans
#: and counts skip it: a purge or warm of pattern "*" must not reach them.
CACHE_KEY_START = "/"
# SET the entry (KEYS[1]) and add its key (ARGV[3]) to each tag's set
# (KEYS[2:]), whose expiry becomes at least the entry's: PTTL is -1 for a new
# set (no expiry yet), so it gets one.  One script: one round trip, and no
# entry is ever stored without its index (a purge by tag would miss it).
_PUT_TAGGED = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local ttl = tonumber(ARGV[2])
for i = 2, #KEYS do
  redis.call('SADD', KEYS[i], ARGV[3])
  if redis.call('PTTL', KEYS[i]) < ttl then
    redis.call('PEXPIRE', KEYS[i], ttl)
  end
end
return 1
"""
# On a cluster, the part of _PUT_TAGGED for one tag's set (KEYS[1]), which
# lives in the tag's slot, not the entry's: run for each tag before the SET.
_TAG_ADD = """
redis.call('SADD', KEYS[1], ARGV[2])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return 1
"""

_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


def escape_glob(text: str) -> str:
    """``text`` as a Redis glob matching exactly itself."""
    return _GLOB_SPECIAL.sub(r"\\\1", text)


def redis_superset_glob(pattern: str) -> str:
    """A Redis glob matching at least every key the fnmatch ``pattern`` matches.

    Redis globs differ from fnmatch (``[^...]`` vs ``[!...]``, backslash
    escapes, ``?`` matching one *byte* rather than one character), so only the
    literal parts are passed on; every wildcard and character class becomes
    ``*``, and the exact fnmatch test is done on the keys Redis returns.
    """
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c in "*?":
            wildcard = True
        elif c == "[":
            # Same bracket parsing as fnmatch.translate: "[!" negates, a "]"
            # right after "[" or "[!" is literal, an unclosed "[" is literal.
            j = i
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            wildcard = j < n
            if wildcard:
                i = j + 1
        else:
            wildcard = False
        if wildcard:
            if not out or out[-1] != "*":
                out.append("*")
        else:
            out.append(escape_glob(c))
    return "".join(out)


def _as_bytes(value: bytes | str) -> bytes:
    # redis-py types replies as bytes | str; they are bytes because the client
    # is built without decode_responses.
    return value if isinstance(value, bytes) else value.encode()


# What Redis answered for one key: its value, nothing, or the error a GET of
# that key alone gets (WRONGTYPE for a hash, list... under the key).
_Reply = bytes | ResponseError | None
# Gets of a batch: key -> the futures of the callers waiting for its reply.
_Waiters = dict[str, list[asyncio.Future[_Reply]]]


def _get_failed(exc: BaseException) -> StoreError:
    # One StoreError per caller: they are raised in different tasks.
    error = StoreError(f"redis GET failed: {str(exc) or type(exc).__name__}")
    error.__cause__ = exc
    return error


class _GetBatcher:
    """Sends concurrent gets to Redis together and hands each caller its own reply.

    A get issued while no batch is in flight starts one, which goes out on
    the next event-loop iteration with every get issued until then; gets
    issued while a batch is in flight wait for it to be answered, then go out
    together.  So batches grow with the load, and a burst costs a few round
    trips instead of one per get.  A batch holds at most ``max_keys`` distinct
    keys and goes out as soon as it is full, whatever is in flight.  Callers
    asking for the same key share one slot.

    A get waits for at most the batch ahead of it and then its own, each
    bounded by the timeouts.  When the batch ahead fails for an outage, the
    gets waiting behind it fail with it at once rather than each wait for a
    timeout of their own.
    """

    def __init__(
        self, fetch: Callable[[list[str]], Awaitable[list[_Reply]]], max_keys: int
    ) -> None:
        self._fetch = fetch
        self._max_keys = max_keys
        # Gets not in a batch yet.
        self._waiting: _Waiters = {}
        # Batches started and not done (referenced here: the loop holds tasks weakly).
        self._in_flight: set[asyncio.Task[None]] = set()

    async def get(self, key: str) -> _Reply:
        """The reply for ``key``; StoreError when its batch failed."""
        future: asyncio.Future[_Reply] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append(future)
        if len(self._waiting) >= self._max_keys:
            self._start(self._take())
        elif not self._in_flight:
            self._start({})  # takes what waits when it first runs
        return await future

    def _take(self) -> _Waiters:
        batch, self._waiting = self._waiting, {}
        return batch

    def _start(self, batch: _Waiters) -> None:
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._in_flight.add(task)
        task.add_done_callback(functools.partial(self._sent, batch))

    async def _send(self, batch: _Waiters) -> None:
        if not batch:
            batch.update(self._take())
        # A cancelled caller's future is done: its key is not asked for unless
        # somebody else still waits for it, and its future is never set.
        keys = [key for key, futures in batch.items() if not all(f.done() for f in futures)]
        try:
            replies = await self._fetch(keys) if keys else []
        except Exception as exc:
            _fail(batch, exc)
            if isinstance(exc, _BACKEND_ERRORS):
                _fail(self._take(), exc)
            return
        for key, reply in zip(keys, replies, strict=True):
            for future in batch[key]:
                if not future.done():
                    future.set_result(reply)

    def _sent(self, batch: _Waiters, task: asyncio.Task[None]) -> None:
        # A done callback, so that no caller is left waiting however the task
        # ended: cancelled (the loop shutting down: nothing more goes out) or
        # with a bug's exception.
        self._in_flight.discard(task)
        if task.cancelled():
            _fail(batch, asyncio.CancelledError())
            _fail(self._take(), asyncio.CancelledError())
            return
        if (error := task.exception()) is not None:
            _fail(batch, error)
        if self._waiting and not self._in_flight:
            self._start({})  # the gets that waited for this batch, and any until it runs

    async def drain(self) -> None:
        """Wait until every get issued so far has been answered (or has failed)."""
        # Not cancelled: the timeouts bound this wait.
        while self._in_flight:
            await asyncio.gather(*self._in_flight)


def _fail(waiters: _Waiters, exc: BaseException) -> None:
    """Hand ``exc`` to every caller in ``waiters`` still waiting."""
    # An outage (or the batch cancelled) is a StoreError for each caller,
    # which the cache takes as a miss; anything else is a bug, and the callers
    # see it as it is.
    outage = isinstance(exc, (*_BACKEND_ERRORS, asyncio.CancelledError))
    for futures in waiters.values():
        for future in futures:
            if not future.done():
                future.set_exception(_get_failed(exc) if outage else exc)


class RedisStore:
    """A CacheStore on Redis; constructing it does not connect.

    ``socket_timeout`` bounds every reply and ``connect_timeout`` every
    connection attempt, so a dead or hung Redis costs a request about their
    sum before it is passed through to the origin (a get queued behind a
    batch fails with that batch, not after a timeout of its own).  At most
    ``max_connections`` commands are in flight; more wait up to that same sum
    for a free connection.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "warmproxy:",
        max_entry_bytes: int,
        socket_timeout: float = 0.5,
        connect_timeout: float = 0.5,
        max_connections: int = 100,
    ) -> None:
        if max_entry_bytes <= 0:
            raise ValueError(f"max_entry_bytes must be positive, got {max_entry_bytes}")
        self.prefix = prefix
        self.max_entry_bytes = max_entry_bytes
        self._prefix_bytes = prefix.encode()
        self._socket_timeout = socket_timeout
        self._connect_timeout = connect_timeout
        #: Items not stored because they were bigger than ``max_entry_bytes``.
        self.rejected = 0
        #: Values under the prefix that did not decode (foreign or old format).
        self.undecodable = 0
        self._client: RedisClient = redis_client(
            url,
            max_connections=max_connections,
            # With every connection busy a command waits for one this long,
            # then fails like a slow Redis would.  (The non-blocking pool
            # would fail at once, turning a burst of traffic into errors.)
            pool_timeout=connect_timeout + socket_timeout,
            socket_timeout=socket_timeout,
            connect_timeout=connect_timeout,
            health_check_interval=_HEALTH_CHECK_INTERVAL,
            # One immediate retry on a connection error (a pooled connection
            # the server closed, e.g. after a Redis restart) and none on a
            # timeout: a hung Redis must cost one timeout, not several.  This
            # is what ``retry_on_timeout=False`` meant; redis-py >= 6
            # deprecates that flag in favour of the Retry object.  All our
            # commands are idempotent, so retrying them is safe.
            # On a cluster this retry reads the topology again first, so a
            # command after a failover goes to the promoted replica.
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
        self._cluster = isinstance(self._client, RedisCluster)
        self._gets = _GetBatcher(self._fetch, _MAX_BATCH_KEYS)
        self._put_tagged = self._client.register_script(_PUT_TAGGED)
        self._tag_add = self._client.register_script(_TAG_ADD)

    @property
    def client(self) -> RedisClient:
        """The Redis client, for fleet coordination beside the entries (fill locks)."""
        return self._client

    def _key(self, key: str) -> str:
        return self.prefix + key

    async def get(self, key: str) -> StoredItem | None:
        """The item under ``key``; undecodable bytes are a miss and are deleted."""
        reply = await self._gets.get(self._key(key))
        if isinstance(reply, ResponseError):
            if not str(reply).startswith("WRONGTYPE"):
                raise StoreError(f"redis GET failed: {reply}") from reply
            # Somebody else's hash/list/... under our prefix: not ours to keep.
            await self._drop_foreign(key, str(reply))
            return None
        if reply is None:
            return None
        try:
            return decode(reply)
        except DecodeError as exc:
            await self._drop_foreign(key, str(exc))
            return None

    async def head(self, key: str) -> StoredItem | None:
        """The item under ``key`` with an entry's body left out, read with
        GETRANGE: its head first (:data:`_HEAD_READ` bytes, where the
        metadata of nearly every entry ends), the rest of the metadata in a
        second read only when it is longer.  Redis counts the read as a use
        of the key (its LRU/LFU), as a GET would; foreign bytes read as a miss."""
        full = self._key(key)
        try:
            data = _as_bytes(await self._client.getrange(full, 0, _HEAD_READ - 1))
            if not data:
                return None  # no such key (Redis reads it as the empty string)
            length = head_length(data)
            if length > len(data):
                first = data
                data = _as_bytes(await self._client.getrange(full, 0, length - 1))
                if data != first and (len(data) < length or head_length(data) != length):
                    # Replaced between the two reads: a miss, and not
                    # foreign (the next read sees the new item whole).  A
                    # value that read the same twice is just cut short.
                    return None
            return decode_head(data)
        except DecodeError as exc:
            await self._drop_foreign(key, str(exc))
            return None
        except ResponseError as exc:
            if not str(exc).startswith("WRONGTYPE"):
                raise StoreError(f"redis GETRANGE failed: {exc}") from exc
            await self._drop_foreign(key, str(exc))
            return None
        except _BACKEND_ERRORS as exc:
            raise StoreError(f"redis GETRANGE failed: {exc}") from exc

    async def _fetch(self, keys: list[str]) -> list[_Reply]:
        """What a GET of each of ``keys`` would answer, in one round trip.

        MGET reads a hash, list... as nil where GET fails with WRONGTYPE, and
        such a value must be dropped (see :meth:`get`).  So EXISTS rides along:
        when it counts more keys than MGET found values, the missing keys are
        read again with one GET each.  That is rare (or a key written between
        the two commands) and costs a second round trip only then.
        """
        if len(keys) == 1:
            # Alone (a light load), a plain GET is cheaper than the pipeline.
            try:
                value = await self._client.get(keys[0])
            except ResponseError as exc:
                return [exc]
            return [None if value is None else _as_bytes(value)]
        if self._cluster:
            return await self._fetch_each(keys)
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.mget(keys)
            pipe.exists(*keys)
            values, existing = await pipe.execute()
        replies: list[_Reply] = [None if v is None else _as_bytes(v) for v in values]
        if existing == len(keys) - replies.count(None):
            return replies
        missing = [i for i, reply in enumerate(replies) if reply is None]
        async with self._client.pipeline(transaction=False) as pipe:
            for i in missing:
                pipe.get(keys[i])
            again = await pipe.execute(raise_on_error=False)
        for i, reply in zip(missing, again, strict=True):
            replies[i] = reply if isinstance(reply, ResponseError | None) else _as_bytes(reply)
        return replies

    async def _fetch_each(self, keys: list[str]) -> list[_Reply]:
        """A GET per key in one pipeline: a cluster's keys are in many slots
        (the pipeline sends each node its keys' GETs and follows redirections)."""
        async with self._client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.get(key)
            answers = await pipe.execute(raise_on_error=False)
        replies: list[_Reply] = []
        for answer in answers:
            if isinstance(answer, ResponseError | None):
                # A ResponseError is this key's own (WRONGTYPE, or a slot
                # down during a failover): get() tells them apart.
                replies.append(answer)
            elif isinstance(answer, BaseException):
                raise answer  # a node unreachable: the batch fails as an outage
            else:
                replies.append(_as_bytes(answer))
        return replies

    async def _drop_foreign(self, key: str, why: str) -> None:
        """Delete a value under ``key`` that is not an item of ours; it reads as a miss."""
        self.undecodable += 1
        log.warning("dropping undecodable cache value", extra={"key": key, "error": why})
        # Still a miss if this fails; the next get or the key's TTL retries it.
        with contextlib.suppress(*_BACKEND_ERRORS):
            await self._client.unlink(self._key(key))

    async def put(self, key: str, item: StoredItem, ttl: float) -> None:
        """Store ``item`` for ``ttl`` seconds, rounded up to whole milliseconds.

        An item bigger than ``max_entry_bytes``, or a ``ttl`` of zero or less,
        is not stored, but what ``key`` held is removed: it was superseded.
        """
        if not math.isfinite(ttl):
            raise ValueError(f"ttl must be finite, got {ttl}")
        if ttl <= 0 or item.size > self.max_entry_bytes:
            if ttl > 0:
                self.rejected += 1
            await self.delete(key)
            return
        ttl_ms = max(1, math.ceil(ttl * 1000))
        data = encode(item)
        tags = item.tags if isinstance(item, CacheEntry) else ()
        try:
            if tags and self._cluster:
                # The index first: should the SET then fail, the index names
                # an absent entry, which the purge that finds it removes.
                for tag in tags:
                    await self._tag_add(keys=[self._tag_key(tag)], args=[ttl_ms, key])
                await self._client.set(self._key(key), data, px=ttl_ms)
            elif tags:
                await self._put_tagged(
                    keys=[self._key(key), *(self._tag_key(t) for t in tags)],
                    args=[data, ttl_ms, key],
                )
            else:
                await self._client.set(self._key(key), data, px=ttl_ms)
        except _BACKEND_ERRORS as exc:
            raise StoreError(f"redis SET failed: {exc}") from exc

    async def delete(self, key: str) -> None:
        try:
            await self._client.unlink(self._key(key))
        except _BACKEND_ERRORS as exc:
            raise StoreError(f"redis UNLINK failed: {exc}") from exc

    async def delete_many(self, keys: Sequence[str]) -> int:
        """Remove ``keys`` (UNLINK, a few hundred per command); how many existed."""
        removed = 0
        try:
            for start in range(0, len(keys), _DELETE_CHUNK):
                chunk = [self._key(k) for k in keys[start : start + _DELETE_CHUNK]]
                removed += int(await self._client.unlink(*chunk))
        except _BACKEND_ERRORS as exc:
            raise StoreError(f"redis UNLINK failed: {exc}") from exc
        return removed

    def _tag_key(self, tag: str) -> str:
        return f"{self.prefix}{TAG_NAMESPACE}{tag}"

    async def tagged(self, tag: str) -> AsyncIterator[str]:
        """Members of the tag's set, by SSCAN (never SMEMBERS: a tag may name
        many keys); each once even if SSCAN reports it twice."""
        seen: set[str] = set()
        cursor = 0
        while True:
            try:
                cursor, members = await self._client.sscan(
                    self._tag_key(tag), cursor, count=_SCAN_COUNT
                )
            except _BACKEND_ERRORS as exc:
                raise StoreError(f"redis SSCAN failed: {exc}") from exc
            for raw in members:
                try:
                    key = _as_bytes(raw).decode()
                except UnicodeDecodeError:
                    continue
                if key not in seen:
                    seen.add(key)
                    yield key
            if cursor == 0:
                return

    async def untag(self, tag: str, keys: Sequence[str]) -> None:
        """SREM ``keys`` from the tag's set (a few hundred per command)."""
        try:
            for start in range(0, len(keys), _DELETE_CHUNK):
                await self._client.srem(self._tag_key(tag), *keys[start : start + _DELETE_CHUNK])
        except _BACKEND_ERRORS as exc:
            raise StoreError(f"redis SREM failed: {exc}") from exc

    async def scan(self, pattern: str) -> AsyncIterator[str]:
        """Keys under this store's prefix matching the fnmatch glob ``pattern``.

        Only cache keys (:data:`CACHE_KEY_START`): the tag index's sets, the
        fill locks and the warmer's and the fleet's keys are never yielded.
        Uses SCAN (never KEYS), so Redis stays responsive on big databases;
        each key is yielded once even if SCAN reports it twice.  Keys added or
        removed during the scan may or may not be seen (SCAN's guarantee).
        """
        match = re.compile(fnmatch.translate(pattern)).match
        redis_match = escape_glob(self.prefix) + redis_superset_glob(pattern)
        plen = len(self._prefix_bytes)
        seen: set[str] = set()
        # Closed with this generator, also when the caller stops early.
        async with contextlib.aclosing(
            scan_batches(self._client, match=redis_match, count=_SCAN_COUNT)
        ) as batches:
            while True:
                try:
                    raw_keys = await anext(batches)
                except StopAsyncIteration:
                    return
                except _BACKEND_ERRORS as exc:
                    raise StoreError(f"redis SCAN failed: {exc}") from exc
                for raw in raw_keys:
                    try:
                        key = _as_bytes(raw)[plen:].decode()
                    except UnicodeDecodeError:
                        # Not written by us: our keys are str, stored as UTF-8.
                        continue
                    if key not in seen and key.startswith(CACHE_KEY_START) and match(key):
                        seen.add(key)
                        yield key

    async def health(self) -> bool:
        """True when Redis answers a PING now; never raises."""
        try:
            # redis-py bounds each step by its own timeouts; this bounds the
            # whole (connect, PING, retry) so a probe cannot hang.
            async with asyncio.timeout(2 * (self._connect_timeout + self._socket_timeout)):
                return bool(await self._client.ping())
        except Exception as exc:  # a health probe reports failure, whatever it is
            log.debug("redis health check failed: %s", exc)
            return False

    async def stats(self) -> StoreStats:
        """Cache entries under the prefix and the bytes of their values.

        O(number of keys): SCAN over the prefix plus a pipelined STRLEN per
        batch.  Meant for the periodic metrics refresh, never the hit path.
        ``evictions`` is 0: Redis counts evictions per server, not per prefix.
        """
        # Cache keys are paths ("/..." or "//host/..."): the fleet's, the
        # schedule's and the tag index's keys under the prefix are not entries.
        match = escape_glob(self.prefix) + "/*"
        entries = 0
        total = 0
        try:
            async for raw_keys in scan_batches(self._client, match=match, count=_SCAN_COUNT):
                if raw_keys:
                    async with self._client.pipeline(transaction=False) as pipe:
                        for raw in raw_keys:
                            pipe.strlen(raw)
                        lengths = await pipe.execute(raise_on_error=False)
                    for length in lengths:
                        # 0: deleted or expired since SCAN saw it; an error:
                        # a non-string value somebody else put under our prefix.
                        if isinstance(length, int) and length > 0:
                            entries += 1
                            total += length
        except _BACKEND_ERRORS as exc:
            raise StoreError(f"redis stats scan failed: {exc}") from exc
        return StoreStats(entries=entries, bytes=total, evictions=0)

    async def close(self) -> None:
        """Close the client and its connection pool, after the gets in flight."""
        await self._gets.drain()
        await self._client.aclose()
