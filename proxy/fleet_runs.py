"""One warm run, many workers: a run's items on a Redis Stream that every replica works.

With the Redis store a warm run started on any replica (``POST /start``,
``warm-key``, ``warm-pattern``, a purge's re-warm, a scheduled firing,
``warmproxy warm``) is the fleet's:

- **Keys.** A run's keys share the hash tag ``{run:<id>}``, so they live in
  one Redis Cluster slot and one script may touch them all:
  ``<prefix>{run:<id>}:items``, a Stream of the run's items with the consumer
  group ``workers``; ``...:record``, a hash with the run's state, totals and
  counts; ``...:errors``, the latest failures (a capped list).  The index
  ``<prefix>{fleet}:runs`` (a sorted set by start time) names recent runs.
- **Feeding.** The replica that starts a run writes its record, then its
  items (``XADD``; the run's total grows in the same ``MULTI``), then marks
  it sealed.  Until then the run cannot end.
- **Working.** Every replica polls the index, and for each running run reads
  items (``XREADGROUP``, consumer = replica name) while its executor holds
  fewer than :data:`HOLD_PER_SLOT` items per fetch slot, fills them through
  the executor (the same fill path as a miss, DESIGN rule 1), and
  acknowledges each with one script that ``XACK``s it and counts it in the
  record only if that acknowledgement was the first: an item reclaimed and
  finished twice counts once.  The acknowledgement that completes a sealed
  run ends it (state, ``finished_at``, the stream deleted).
- **Reclaim.** A replica refreshes the idle time of the items it holds
  (``XCLAIM ... JUSTID`` to itself) every third of :func:`reclaim_idle`; an
  item idle for longer belongs to a replica that stopped working (killed,
  cut off) and is taken over with ``XAUTOCLAIM``.  Only such an item can be
  fetched twice (if its replica was still fetching it), and then the fleet's
  fill lock and the fresh entry make the second fill cheap.
  An item taken over :data:`MAX_DELIVERIES` times without an outcome is
  counted failed, not passed on again.
- **Stop** (from any replica) sets the record's state and deletes the
  stream: nobody takes another item, and each replica drops what it holds at
  its next poll.  A replica that stops cleanly hands back what it held
  (acknowledged and added again) so the others take it at once.
- **Rate limit.** ``execution.rate_limit`` is the fleet's: every warm fetch
  of every replica takes a slot from one GCRA bucket, a Lua script on
  ``<prefix>{fleet}:warm-rate`` measured on Redis' clock (no skew between
  replicas).  While Redis does not answer, each replica paces itself at the
  rate divided by the replicas it last saw.

Status, progress, errors and stop read and write the record, so every
replica answers the same.  Redis failing: a run that cannot be created runs
on the replica that got the request, alone (logged); acknowledgements wait
in a bounded outbox and go when Redis is back; what a replica holds it keeps
filling.  With the memory store none of this exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiolimiter import AsyncLimiter
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ResponseError

from proxy.metrics import ProxyMetrics
from proxy.redis_client import REDIS_ERRORS, RedisClient, redis_client
from proxy.tasks import BackgroundTasks
from warmer.executor import Run, WarmExecutor
from warmer.model import FillReport, Reason, WarmIdentity, WarmRequest
from warmer.pacing import backoff_delay
from warmer.progress import FINAL_STATES, MAX_ERROR_CHARS, RunProgress

log = logging.getLogger(__name__)

GROUP = "workers"
#: Seconds between two reads of the index and the running runs' records.
POLL_INTERVAL = 0.5
#: Milliseconds an XREADGROUP waits for new items.
BLOCK_MS = 500
#: Items a replica holds (queued or being fetched) per fetch slot, at most.
HOLD_PER_SLOT = 2
#: Items one XADD transaction writes.
FEED_CHUNK = 500
#: Finished runs the index keeps (the last ones started), as the executor
#: keeps 20; running runs stay in it whatever their age.
RUNS_KEPT = 20
#: Runs read from the index at most (running ones first in mind: a fleet
#: with more runs running at once than this sees only the newest).
RUNS_READ = 200
#: Failures a run's record keeps (the latest), as RunProgress keeps.
ERRORS_KEPT = 100
#: Seconds a run's keys outlive their last change (a finished run's record
#: stays this long for status; a run whose replicas all vanished goes too).
RUN_KEEP = 86_400
#: Bounds of the reclaim idle time (see :func:`reclaim_idle`).
MIN_RECLAIM_IDLE = 3.0
MAX_RECLAIM_IDLE = 120.0
#: Seconds the rate gate paces alone after Redis failed, before asking again.
GATE_FALLBACK_SECONDS = 2.0
#: Seconds between two counts of the live replicas (for that fallback, and
#: to tell a run whose starting replica died while adding its items).
REPLICA_COUNT_INTERVAL = 10.0
#: A running run that is not sealed, whose starting replica is not live and
#: whose record has not changed for this many seconds lost its feeder: a
#: live replica seals it with what it holds, so it can end.
ORPHAN_AFTER = 60.0
#: Replicas an item is delivered to at most.  Each after the first took it
#: over from one that stopped working while holding it (killed, frozen, cut
#: off); an item that every one of them was holding when it went (a path
#: whose response takes a replica down) is counted failed instead of being
#: passed on to take the next one down too.  A clean stop's hand-back is a
#: new delivery count: it is not held against the item.
MAX_DELIVERIES = 3
#: The longest stream entry read: anything bigger is not one of ours.
MAX_ITEM_BYTES = 64 * 1024
_BACKOFF_FIRST = 0.2
_BACKOFF_CAP = 5.0


def reclaim_idle(fill_timeout: float, fill_lock_seconds: float = 0.0) -> float:
    """Seconds an item may sit unacknowledged and untouched before another
    replica takes it over, between :data:`MIN_RECLAIM_IDLE` and
    :data:`MAX_RECLAIM_IDLE`.

    At least one fill timeout: a live holder touches its items three times
    as often and never lets a fill outlive its timeout.  And one and a half
    fill lock lifetimes (``fill_lock_seconds``, 0 without the fleet's fill
    lock): the holder may have taken the key's lock up to a third of the
    idle time after its last touch, and a replica that takes the item over
    before that lock expired would only wait on a dead replica's lock.
    """
    wanted = max(fill_timeout, 1.5 * fill_lock_seconds)
    return min(MAX_RECLAIM_IDLE, max(MIN_RECLAIM_IDLE, wanted))


# ------------------------------------------------------------------ scripts

# Finishes a sealed run whose items all have an outcome; used by the
# acknowledgement and the seal.  KEYS: items, record, errors; now, keep.
_FINISH = """
local function finish(items, record, errors, now, keep)
  local r = redis.call('HMGET', record, 'state', 'sealed', 'total', 'success', 'failed')
  if r[1] ~= 'running' or r[2] ~= '1' then return 1 end
  local success, failed = tonumber(r[4] or '0'), tonumber(r[5] or '0')
  if success + failed < tonumber(r[3] or '0') then return 1 end
  local state = 'completed'
  if failed > 0 and success == 0 then state = 'failed' end
  redis.call('HSET', record, 'state', state, 'finished_at', now)
  redis.call('DEL', items)
  redis.call('EXPIRE', record, keep)
  redis.call('EXPIRE', errors, keep)
  return 2
end
"""

# Items of one run done.  Each is counted only by its first acknowledgement
# (a retried call, or an item two replicas finished, counts once), and only
# while the run runs.  Returns 2 when the run ended, else 1.
# ARGV: now, keep, errors kept, then per item: entry id, ok, seconds, error JSON.
_DONE = (
    _FINISH
    + """
local running = redis.call('HGET', KEYS[2], 'state') == 'running'
local success, failed, seconds = 0, 0, 0
for i = 4, #ARGV, 4 do
  if redis.call('XACK', KEYS[1], 'workers', ARGV[i]) == 1 and running then
    if ARGV[i + 1] == '1' then
      success = success + 1
    else
      failed = failed + 1
      redis.call('LPUSH', KEYS[3], ARGV[i + 3])
    end
    seconds = seconds + tonumber(ARGV[i + 2])
  end
end
if success + failed == 0 then return 1 end
redis.call('HINCRBY', KEYS[2], 'success', success)
redis.call('HINCRBY', KEYS[2], 'failed', failed)
redis.call('HINCRBYFLOAT', KEYS[2], 'seconds', seconds)
redis.call('HSET', KEYS[2], 'updated_at', ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[2])
if failed > 0 then
  redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[3]) - 1)
  redis.call('EXPIRE', KEYS[3], ARGV[2])
end
return finish(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2])
"""
)

# A failure that never became an item (a scheduled source that could not
# be read): counted in the total and as failed.  ARGV: error JSON, now, keep, kept.
_FAILED = """
if redis.call('HGET', KEYS[2], 'state') ~= 'running' then return 0 end
redis.call('HINCRBY', KEYS[2], 'total', 1)
redis.call('HINCRBY', KEYS[2], 'failed', 1)
redis.call('LPUSH', KEYS[3], ARGV[1])
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[4]) - 1)
redis.call('EXPIRE', KEYS[3], ARGV[3])
redis.call('HSET', KEYS[2], 'updated_at', ARGV[2])
return 1
"""

# Every item is in the stream: the run may end.  ARGV: now, keep.
_SEAL = (
    _FINISH
    + """
redis.call('HSET', KEYS[2], 'sealed', '1', 'updated_at', ARGV[1])
return finish(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2])
"""
)

# Stop a running run: its state, and no more items for anyone.  ARGV: now, keep.
_STOP = """
if redis.call('HGET', KEYS[2], 'state') ~= 'running' then return 0 end
redis.call('HSET', KEYS[2], 'state', 'stopped', 'finished_at', ARGV[1], 'updated_at', ARGV[1])
redis.call('DEL', KEYS[1])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 1
"""

# Hand items back (a replica stopping cleanly): acknowledged, and added
# again for the others to take now rather than after the reclaim idle time.
# ARGV per item: entry id, item.  Returns how many went back.
_RELEASE = """
if redis.call('HGET', KEYS[2], 'state') ~= 'running' then return 0 end
local back = 0
for i = 1, #ARGV, 2 do
  if redis.call('XACK', KEYS[1], 'workers', ARGV[i]) == 1 then
    redis.call('XADD', KEYS[1], '*', 'w', ARGV[i + 1])
    back = back + 1
  end
end
return back
"""

# GCRA: one slot of the fleet's warm fetch rate, reserved; returns the
# microseconds to wait for it (Redis' clock, the same for every replica).
# ARGV: microseconds per fetch.
_RATE = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local after = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', after), 'PX',
  math.ceil((after - now) / 1000) + 1000)
return tat - now
"""


# ------------------------------------------------------------------ records


@dataclass(frozen=True, slots=True)
class RunRecord:
    """A fleet run as its record in Redis says."""

    id: str
    strategy: str
    state: str
    total: int
    success: int
    failed: int
    seconds: float
    started_at: float
    finished_at: float | None
    sealed: bool
    origin: str
    updated_at: float = 0.0
    errors: tuple[tuple[str, str, int], ...] = ()  # (key, error, retries), newest first

    @property
    def running(self) -> bool:
        return self.state == "running"


def parse_record(run_id: str, fields: dict[bytes, bytes], errors: Iterable[bytes]) -> RunRecord:
    """The record of ``run_id`` from its hash and error list; ValueError when
    it is not one of ours."""

    def text(name: str, default: str = "") -> str:
        value = fields.get(name.encode())
        return value.decode("utf-8", "replace") if value is not None else default

    state = text("state")
    if state not in ("running", *FINAL_STATES):
        raise ValueError(f"run {run_id}: unknown state {state!r}")
    finished = text("finished_at")
    kept: list[tuple[str, str, int]] = []
    for raw in errors:
        with contextlib.suppress(orjson.JSONDecodeError, ValueError, TypeError):
            key, error, retries = orjson.loads(raw)
            kept.append((str(key), str(error), int(retries)))
    return RunRecord(
        id=run_id,
        strategy=text("strategy"),
        state=state,
        total=int(text("total", "0")),
        success=int(text("success", "0")),
        failed=int(text("failed", "0")),
        seconds=float(text("seconds", "0")),
        started_at=float(text("started_at", "0")),
        finished_at=float(finished) if finished else None,
        sealed=text("sealed") == "1",
        origin=text("origin"),
        updated_at=float(text("updated_at", "0")),
        errors=tuple(kept),
    )


def progress_of(record: RunRecord, batch_size: int, share: RunProgress | None) -> RunProgress:
    """The record as the control API's run progress; the current batch is
    this replica's (``share``), the one figure that is not the fleet's."""
    p = RunProgress(record.id, record.strategy, record.total, batch_size, record.started_at)
    p.success, p.failed = record.success, record.failed
    p.seconds_total = record.seconds
    for key, error, retries in reversed(record.errors):  # oldest first: newest ends last
        p.item_retrying(key, error, retries)
    if share is not None:
        p.batch_items, p.batch_processed = share.batch_items, share.batch_processed
    if not record.running:
        p.finish(record.finished_at or record.started_at, record.state)
    return p


def encode_item(request: WarmRequest) -> bytes:
    """A warm request as a stream entry's value."""
    return orjson.dumps(
        [
            request.url,
            request.host,
            request.priority,
            request.reason.value,
            request.ttl,
            request.refresh,
            request.source,
            [list(h) for h in request.headers],
        ]
    )


def decode_item(raw: bytes, levels: tuple[str, ...]) -> WarmRequest:
    """The warm request of a stream entry; ValueError when it is not one.

    A priority this replica does not know (configured differently) becomes
    its middle level.
    """
    if len(raw) > MAX_ITEM_BYTES:
        raise ValueError("item too large")
    try:
        url, host, priority, reason, ttl, refresh, source, headers = orjson.loads(raw)
    except (orjson.JSONDecodeError, ValueError, TypeError) as exc:
        raise ValueError(f"not a warm item: {exc}") from None
    if not (isinstance(url, str) and url.startswith("/") and isinstance(host, str)):
        raise ValueError("not a warm item: url/host")
    if not isinstance(ttl, int | float | None) or not isinstance(refresh, bool):
        raise ValueError("not a warm item: ttl/refresh")
    if not isinstance(headers, list) or not all(
        isinstance(h, list) and len(h) == 2 and all(isinstance(v, str) for v in h) for h in headers
    ):
        raise ValueError("not a warm item: headers")
    return WarmRequest(
        url=url,
        priority=priority if priority in levels else levels[len(levels) // 2],
        reason=Reason(reason),
        host=host,
        ttl=float(ttl) if ttl is not None else None,
        refresh=refresh,
        source=source if isinstance(source, str) else "",
        headers=tuple((h[0], h[1]) for h in headers),
    )


# -------------------------------------------------------------------- parts


@dataclass(eq=False)
class _Feed:
    """A run this replica started, while its items go into the stream."""

    run: Run
    keys: _RunKeys
    # Requests not in the stream yet, and failures to count ("key", error).
    waiting: deque[WarmRequest | tuple[str, str]] = field(default_factory=deque)
    seen: set[WarmIdentity] = field(default_factory=set)
    added: int = 0
    sealed: bool = False
    created: bool = False
    local: bool = False  # fell back to a local run
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    # Set once the run is in Redis (any replica finds it) or fell back.
    settled: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


@dataclass(eq=False)
class _Share:
    """This replica's part of a running fleet run: the items it holds."""

    keys: _RunKeys
    run: Run  # unlisted executor run the items are submitted to
    # entry id -> (identity, the item as it is in the stream)
    held: dict[str, tuple[WarmIdentity, bytes]] = field(default_factory=dict)
    by_identity: dict[WarmIdentity, list[str]] = field(default_factory=dict)
    touched_at: float = 0.0
    reclaimed_at: float = 0.0
    closing: bool = False
    task: asyncio.Task[None] | None = None


@dataclass(frozen=True, slots=True)
class _RunKeys:
    id: str
    items: str
    record: str
    errors: str

    @classmethod
    def of(cls, prefix: str, run_id: str) -> _RunKeys:
        tag = f"{prefix}{{run:{run_id}}}"
        return cls(run_id, f"{tag}:items", f"{tag}:record", f"{tag}:errors")

    @property
    def all(self) -> list[str]:
        return [self.items, self.record, self.errors]


@dataclass(frozen=True, slots=True)
class _Ack:
    keys: _RunKeys
    entry: str
    ok: bool
    seconds: float
    error: bytes  # JSON [key, error, retries], or b"" when ok


class _Gone(Exception):
    """The run's stream is gone (stopped, ended, expired)."""


# -------------------------------------------------------------------- fleet


class FleetRuns:
    """This replica's part in the fleet's warm runs (see the module docstring)."""

    def __init__(
        self,
        *,
        redis_url: str | None,
        prefix: str,
        name: str,
        timeout: float = 0.5,
        clock: Callable[[], float] = time.time,
        live_replicas: Callable[[], Awaitable[list[str]]] | None = None,
        fill_lock_seconds: float = 0.0,
        metrics: ProxyMetrics | None = None,
    ) -> None:
        """``redis_url`` None: no fleet (memory store), every run is local.
        ``name``: this replica's consumer name.  ``live_replicas``: the names
        of the live replicas (heartbeats), for the rate limit while Redis
        fails and to seal a run whose starting replica died feeding it.
        ``fill_lock_seconds``: how long the fleet's fill lock lives (0: off),
        see :func:`reclaim_idle`.  ``metrics``: where the items taken,
        taken over, handed back and given up are counted."""
        self.name = name
        self._metrics = metrics
        self._fill_lock_seconds = fill_lock_seconds
        self._prefix = prefix
        self._index = f"{prefix}{{fleet}}:runs"
        self._rate_key = f"{prefix}{{fleet}}:warm-rate"
        self._clock = clock
        self._live_replicas = live_replicas
        # The live replicas' names at the last count; None before one worked.
        self._live: set[str] | None = None
        self._client: RedisClient | None = None
        if redis_url is not None:
            self._client = redis_client(
                redis_url,
                # A blocked XREADGROUP waits BLOCK_MS before its answer.
                socket_timeout=timeout + BLOCK_MS / 1000,
                connect_timeout=timeout,
                # The poll, a read per running run, the outbox, and the
                # rate gate of every fetch slot: they wait for a connection.
                max_connections=32,
                pool_timeout=timeout,
                retry=Retry(NoBackoff(), 0),
            )
            self._done = self._client.register_script(_DONE)
            self._failed = self._client.register_script(_FAILED)
            self._seal = self._client.register_script(_SEAL)
            self._stop = self._client.register_script(_STOP)
            self._release = self._client.register_script(_RELEASE)
            self._rate = self._client.register_script(_RATE)
        self._executor: WarmExecutor | None = None
        self._healthy = True
        self._feeds: dict[str, _Feed] = {}
        self._shares: dict[str, _Share] = {}
        # Recent fleet runs as Run objects (this replica's own runs are the
        # handles its warmer gave out, so their ``done`` is set here).
        self._view: dict[str, Run] = {}
        self._records: dict[str, RunRecord] = {}
        # Runs that went from Redis while they ran, ended here as failed.
        self._gone: deque[Run] = deque(maxlen=RUNS_KEPT)
        self._outbox: deque[_Ack] = deque()
        self._outbox_wake = asyncio.Event()
        self._outbox_flushed = asyncio.Event()
        self._room_freed = asyncio.Event()
        self._refreshed = asyncio.Event()
        self._tasks = BackgroundTasks()
        self._replicas = 1
        self._local_gate: tuple[float, int, AsyncLimiter] | None = None
        self._gate_alone_until = 0.0
        self._closed = False
        self._poller: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        """True with the Redis store: runs are the fleet's."""
        return self._client is not None

    def bind(self, executor: WarmExecutor) -> None:
        """Work the fleet's runs on ``executor``, and pace its fetches by the
        fleet's rate limit."""
        self._executor = executor
        if self._client is not None:
            executor.rate_gate = self.gate

    # ------------------------------------------------- runs this replica starts

    def available(self) -> bool:
        """Whether a new run should be the fleet's (Redis answered last time)."""
        return self._client is not None and self._healthy and not self._closed

    def owns(self, run: Run) -> bool:
        """``run`` is a fleet run this replica is feeding (not fallen back)."""
        feed = self._feeds.get(run.id)
        return feed is not None and feed.run is run and not feed.local

    def begin(self, run: Run) -> None:
        """Make ``run`` (unlisted, just created) a fleet run: its record and
        group are written in the background, then its items as they come."""
        feed = _Feed(run, _RunKeys.of(self._prefix, run.id))
        self._feeds[run.id] = feed
        self._view[run.id] = run
        feed.task = self._tasks.spawn(self._feed(feed), name=f"fleet run {run.id}: feed")

    def add(self, run: Run, requests: Iterable[WarmRequest]) -> int:
        """Queue ``requests`` for the run's stream; how many were new to it."""
        feed = self._feeds[run.id]
        taken = 0
        for request in requests:
            if run.stopping or request.identity in feed.seen:
                continue
            feed.seen.add(request.identity)
            feed.waiting.append(request)
            taken += 1
        feed.added += taken
        run.progress.add_total(taken)
        feed.wake.set()
        return taken

    def fail(self, run: Run, key: str, error: str) -> None:
        """Count a failure that is no item (a source that could not be read)."""
        feed = self._feeds[run.id]
        feed.waiting.append((key, error))
        feed.added += 1
        run.progress.add_total(1)
        run.progress.item_done(key, False, 0.0, self._clock(), error)
        feed.wake.set()

    async def settled(self, run: Run) -> None:
        """Until ``run`` is in Redis, where every replica finds it (or runs
        here alone): a run id handed out is then known fleet-wide."""
        feed = self._feeds.get(run.id)
        if feed is not None:
            await feed.settled.wait()

    def seal(self, run: Run) -> None:
        """No more requests for ``run``: it ends once every item has an outcome."""
        feed = self._feeds[run.id]
        feed.sealed = True
        feed.wake.set()

    async def _feed(self, feed: _Feed) -> None:
        run, keys = feed.run, feed.keys
        try:
            await self._create(feed)
        except REDIS_ERRORS as exc:
            self._failed_now()
            self._fall_back(feed, exc)
            return
        finally:
            feed.settled.set()
        feed.created = True
        log.info(
            "fleet warm run started",
            extra={"run_id": run.id, "strategy": run.strategy, "replica": self.name},
        )
        self._refreshed.set()
        failures = 0
        while True:
            if not feed.waiting and not feed.sealed and not run.stopping:
                feed.wake.clear()
                await feed.wake.wait()
                continue
            try:
                if run.stopping:
                    # Stopped while its record was being written: stopped
                    # for the fleet too.
                    await self._stop(keys=keys.all, args=[repr(self._clock()), RUN_KEEP])
                    self._feeds.pop(run.id, None)
                    return
                if feed.waiting:
                    await self._write_chunk(feed)
                else:
                    assert self._client is not None
                    now = self._clock()
                    await self._seal(keys=keys.all, args=[repr(now), RUN_KEEP])
                    self._feeds.pop(run.id, None)
                    return
            except REDIS_ERRORS as exc:
                # The run waits for Redis: its items are here, not lost.
                failures += 1
                if failures == 1:
                    log.warning("feeding fleet warm run %s failed, retrying: %s", run.id, exc)
                self._failed_now()
                await asyncio.sleep(_backoff(failures))
                continue
            if failures:
                log.warning("feeding fleet warm run %s works again", run.id)
            failures = 0

    async def _create(self, feed: _Feed) -> None:
        assert self._client is not None
        run, keys = feed.run, feed.keys
        now = self._clock()
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.hset(
                keys.record,
                mapping={
                    "strategy": run.strategy,
                    "state": "running",
                    "total": 0,
                    "success": 0,
                    "failed": 0,
                    "seconds": 0,
                    "started_at": repr(run.progress.started_at),
                    "updated_at": repr(now),
                    "sealed": 0,
                    "origin": self.name,
                },
            )
            pipe.xgroup_create(keys.items, GROUP, id="0", mkstream=True)
            pipe.expire(keys.record, RUN_KEEP)
            pipe.expire(keys.items, RUN_KEEP)
            await pipe.execute()
        # The index names it once its group exists (another slot: apart).
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.zadd(self._index, {run.id: run.progress.started_at})
            pipe.expire(self._index, RUN_KEEP)
            await pipe.execute()

    async def _write_chunk(self, feed: _Feed) -> None:
        """Write the next items (up to :data:`FEED_CHUNK`, one transaction) or
        the next failure; what was written leaves ``feed.waiting``."""
        assert self._client is not None
        keys = feed.keys
        head = feed.waiting[0]
        if isinstance(head, tuple):
            key, error = head
            text = orjson.dumps([key, error[:MAX_ERROR_CHARS], 0])
            await self._failed(
                keys=keys.all, args=[text, repr(self._clock()), RUN_KEEP, ERRORS_KEPT]
            )
            feed.waiting.popleft()
            return
        items: list[WarmRequest] = []
        for waiting in feed.waiting:
            if not isinstance(waiting, WarmRequest) or len(items) >= FEED_CHUNK:
                break
            items.append(waiting)
        async with self._client.pipeline(transaction=True) as pipe:
            # The total first: a worker never sees more done than the total.
            pipe.hincrby(keys.record, "total", len(items))
            # A run being fed is not orphaned (see FleetRuns._orphaned).
            pipe.hset(keys.record, "updated_at", repr(self._clock()))
            for item in items:
                pipe.xadd(keys.items, {"w": encode_item(item)})
            pipe.expire(keys.items, RUN_KEEP)
            pipe.expire(keys.record, RUN_KEEP)
            await pipe.execute()
        for _ in items:
            feed.waiting.popleft()

    def _fall_back(self, feed: _Feed, exc: BaseException) -> None:
        """Redis did not take the run: it runs on this replica alone, whole."""
        executor = self._executor
        assert executor is not None
        run = feed.run
        feed.local = True
        self._feeds.pop(run.id, None)
        self._view.pop(run.id, None)
        log.warning(
            "warm run %s runs on this replica alone: Redis did not take it (%s)",
            run.id,
            exc,
            extra={"run_id": run.id, "strategy": run.strategy},
        )
        executor.adopt(run)
        # The executor counts the items again as it takes them.
        run.progress.total -= feed.added
        requests = [r for r in feed.waiting if isinstance(r, WarmRequest)]
        for failure in feed.waiting:
            if isinstance(failure, tuple):
                run.progress.add_total(1)
        executor.submit(requests, run)
        if feed.sealed:
            executor.seal(run)
        elif not run.stopping:
            # Sealed by the warmer later, through the executor (owns() is False now).
            pass

    # ------------------------------------------------------------------ view

    def runs(self) -> list[Run]:
        """Recent fleet runs (running and finished), by start time."""
        return sorted([*self._gone, *self._view.values()], key=lambda r: r.progress.started_at)

    def find(self, run_id: str) -> Run | None:
        found = self._view.get(run_id)
        return found or next((r for r in self._gone if r.id == run_id), None)

    async def refresh(self) -> None:
        """Read the index and the runs' records now (a control API answer is
        the fleet's); never raises: on failure the last view stays."""
        if self._client is None:
            return
        try:
            await self._poll()
        except REDIS_ERRORS as exc:
            self._failed_now()
            log.debug("reading the fleet's warm runs failed: %s", exc)

    async def _poll(self) -> None:
        assert self._client is not None
        ids = [  # newest first
            i.decode() if isinstance(i, bytes) else str(i)
            for i in await self._client.zrevrange(self._index, 0, RUNS_READ - 1)
        ]
        # Finished runs do not change: their records are read once.
        wanted = [i for i in ids if i not in self._records or self._records[i].running]
        answers: list[Any] = []
        if wanted:
            async with self._client.pipeline(transaction=False) as pipe:
                for run_id in wanted:
                    keys = _RunKeys.of(self._prefix, run_id)
                    pipe.hgetall(keys.record)
                    pipe.lrange(keys.errors, 0, ERRORS_KEPT - 1)
                answers = await pipe.execute()
        self._healthy = True
        listed = set(ids)
        for n, run_id in enumerate(wanted):
            fields, errors = answers[2 * n], answers[2 * n + 1]
            if not fields:
                listed.discard(run_id)  # expired, or not written yet
                continue
            try:
                record = parse_record(run_id, fields, errors or [])
            except ValueError as exc:
                log.debug("ignored a fleet run record: %s", exc)
                listed.discard(run_id)
                continue
            if self._orphaned(record, self._clock()):
                await self._seal_orphan(record, self._clock())
                self._refreshed.set()  # read it again at once
            self._records[run_id] = record
            self._show(record)
        # The index keeps every running run and the last RUNS_KEPT finished
        # ones; any replica prunes it (ZREM of named ids: idempotent).
        finished = [i for i in ids if i in listed and not self._records[i].running]
        pruned = [i for i in ids if i not in listed] + finished[RUNS_KEPT:]
        if pruned:
            await self._client.zrem(self._index, *pruned)
        listed.difference_update(pruned)
        for run_id in list(self._records):
            if run_id not in listed:
                del self._records[run_id]
        for run_id in list(self._view):
            if run_id not in self._records and run_id not in self._feeds:
                self._lost(self._view.pop(run_id))
        self._follow_shares()

    def _lost(self, run: Run) -> None:
        """A run gone from Redis while it ran (a Redis restarted empty, its
        keys expired): it ends here as failed, so nothing waits on it forever."""
        if not run.running:
            return
        log.warning("fleet warm run %s is gone from Redis: ended as failed", run.id)
        run.progress.item_retrying("(run)", "the run's record is gone from Redis", 0)
        run.progress.finish(self._clock(), "failed")
        run.done.set()
        self._gone.append(run)

    def _show(self, record: RunRecord) -> None:
        """Update the run's view (a handle's progress, or a mirror) from its record."""
        executor = self._executor
        batch = executor.batch_size if executor is not None else 0
        share = self._shares.get(record.id)
        progress = progress_of(record, batch, share.run.progress if share else None)
        feed = self._feeds.get(record.id)
        if feed is not None and record.running:
            # Items not in the stream yet are the run's too.
            progress.total = max(progress.total, feed.added)
        run = self._view.get(record.id)
        if run is None:
            run = self._view[record.id] = Run(record.id, record.strategy, progress, listed=False)
        run.progress = progress
        if not record.running:
            run.sealed = True
            run.done.set()

    def _follow_shares(self) -> None:
        """A share for every running run, none for the others."""
        for run_id, record in self._records.items():
            if record.running and run_id not in self._shares and not self._closed:
                self._join(run_id)
        for run_id, share in list(self._shares.items()):
            known = self._records.get(run_id)
            if known is None or not known.running:
                self._leave(share)

    # ------------------------------------------------------------------ work

    def _join(self, run_id: str) -> None:
        executor = self._executor
        assert executor is not None
        record = self._records[run_id]
        run = executor.new_run(record.strategy, listed=False, run_id=run_id)
        share = _Share(_RunKeys.of(self._prefix, run_id), run)
        run.on_item = lambda request, report, seconds, retries: self._item_done(
            share, request, report, seconds, retries
        )
        self._shares[run_id] = share
        share.task = self._tasks.spawn(self._work(share), name=f"fleet run {run_id}: work")

    def _leave(self, share: _Share) -> None:
        """Stop working ``share`` (its run ended or was stopped): what it
        holds is dropped, in the background."""
        if share.closing:
            return
        share.closing = True
        self._shares.pop(share.keys.id, None)
        if share.task is not None:
            share.task.cancel()
        self._tasks.spawn(self._drop(share, False), name=f"fleet run {share.keys.id}: leave")

    async def _drop(self, share: _Share, hand_back: bool) -> None:
        executor = self._executor
        assert executor is not None
        # Queued items dropped, fetches in flight finished (and acknowledged).
        await executor.stop(share.run)
        if not hand_back or not share.held or self._client is None:
            self._room_freed.set()
            return
        args: list[str | bytes] = []
        for entry, (_, item) in share.held.items():
            args += [entry, item]
        try:
            await self._release(keys=[share.keys.items, share.keys.record], args=args)
        except REDIS_ERRORS as exc:
            # They are reclaimed after the idle time instead.
            log.warning("handing back %d warm items failed: %s", len(share.held), exc)
        else:
            self._count("handed_back", len(share.held))
        share.held.clear()
        share.by_identity.clear()
        self._room_freed.set()

    @property
    def reclaim_idle(self) -> float:
        """Seconds after which another replica takes over an untouched item."""
        timeout = self._executor.timeout if self._executor is not None else 30.0
        return reclaim_idle(timeout, self._fill_lock_seconds)

    def _room(self) -> int:
        executor = self._executor
        assert executor is not None
        held = sum(len(s.held) for s in self._shares.values())
        return HOLD_PER_SLOT * executor.limit - held

    async def _work(self, share: _Share) -> None:
        """Take the run's items while this replica has room, until it ends."""
        failures = 0
        idle = self.reclaim_idle
        loop = asyncio.get_running_loop()
        while not share.closing:
            room = self._room()
            if room <= 0:
                self._room_freed.clear()
                await self._room_freed.wait()
                continue
            try:
                now = loop.time()
                if share.held and now - share.touched_at >= idle / 3:
                    await self._touch(share)
                    share.touched_at = now
                entries: list[tuple[bytes, dict[bytes, bytes]]] = []
                if now - share.reclaimed_at >= idle / 2:
                    entries = await self._reclaim(share, room, idle)
                    if len(entries) < room:  # none left idle: look again later
                        share.reclaimed_at = now
                if not entries:
                    entries = await self._read(share, room)
                self._healthy = True
            except _Gone:
                self._refreshed.set()  # the poll ends the share
                await asyncio.sleep(POLL_INTERVAL)
                continue
            except REDIS_ERRORS as exc:
                failures += 1
                if failures == 1:
                    log.warning("taking items of fleet warm run %s failed: %s", share.keys.id, exc)
                self._failed_now()
                await asyncio.sleep(_backoff(failures))
                continue
            if failures:
                log.warning("taking items of fleet warm run %s works again", share.keys.id)
            failures = 0
            self._take(share, entries)

    async def _read(self, share: _Share, count: int) -> list[tuple[bytes, dict[bytes, bytes]]]:
        assert self._client is not None
        try:
            answer = await self._client.xreadgroup(
                GROUP, self.name, {share.keys.items: ">"}, count=count, block=BLOCK_MS
            )
        except ResponseError as exc:
            if "NOGROUP" in str(exc) or "no longer exists" in str(exc):
                raise _Gone from None
            raise
        if not answer:
            return []
        streams: Any = answer  # RESP2: [[stream, [(id, fields), ...]]]
        entries: list[tuple[bytes, dict[bytes, bytes]]] = streams[0][1]
        return entries

    async def _reclaim(
        self, share: _Share, count: int, idle: float
    ) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """Items another replica took and left idle too long: this one's now."""
        assert self._client is not None
        try:
            answer = await self._client.xautoclaim(
                share.keys.items, GROUP, self.name, int(idle * 1000), "0-0", count=count
            )
        except ResponseError as exc:
            if "NOGROUP" in str(exc):
                raise _Gone from None
            raise
        entries: list[tuple[bytes, dict[bytes, bytes]]] = [
            e for e in answer[1] if e is not None and e[1] is not None
        ]
        mine = [e for e in entries if _text(e[0]) not in share.held]
        if not mine:
            return mine
        mine = await self._within_deliveries(share, mine)
        if mine:
            log.info(
                "reclaimed %d warm items another replica left",
                len(mine),
                extra={"run_id": share.keys.id, "items": len(mine)},
            )
            self._count("reclaimed", len(mine))
        return mine

    async def _within_deliveries(
        self, share: _Share, entries: list[tuple[bytes, dict[bytes, bytes]]]
    ) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """``entries`` just taken over, but those delivered more than
        :data:`MAX_DELIVERIES` times: those are counted failed (see there)."""
        assert self._client is not None
        async with self._client.pipeline(transaction=False) as pipe:
            for raw_id, _ in entries:
                pipe.xpending_range(share.keys.items, GROUP, raw_id, raw_id, 1)
            answers = await pipe.execute()
        kept: list[tuple[bytes, dict[bytes, bytes]]] = []
        for (raw_id, fields), pending in zip(entries, answers, strict=True):
            deliveries = int(pending[0]["times_delivered"]) if pending else 0
            if deliveries <= MAX_DELIVERIES:
                kept.append((raw_id, fields))
                continue
            executor = self._executor
            assert executor is not None
            try:
                url = decode_item(fields.get(b"w", b""), executor.levels).url
            except ValueError:
                url = "(item)"
            reason = (
                f"given up after {MAX_DELIVERIES} replicas took it and stopped before finishing it"
            )
            log.warning(
                "warm item %s of fleet run %s %s",
                url,
                share.keys.id,
                reason,
                extra={"run_id": share.keys.id},
            )
            error = orjson.dumps([url, reason[:MAX_ERROR_CHARS], 0])
            self._queue_ack(_Ack(share.keys, _text(raw_id), False, 0.0, error))
            self._count("given_up", 1)
        return kept

    def _count(self, event: str, items: int) -> None:
        if self._metrics is not None and items:
            self._metrics.fleet_run_items.labels(event).inc(items)

    async def _touch(self, share: _Share) -> None:
        """Reset the idle time of what this replica holds: it is alive."""
        assert self._client is not None
        await self._client.xclaim(
            share.keys.items, GROUP, self.name, 0, list(share.held), justid=True
        )

    def _take(self, share: _Share, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        executor = self._executor
        assert executor is not None
        requests: list[WarmRequest] = []
        for raw_id, fields in entries:
            entry = _text(raw_id)
            if entry in share.held:
                continue
            item = fields.get(b"w", b"")
            try:
                request = decode_item(item, executor.levels)
            except ValueError as exc:
                error = orjson.dumps(["(item)", f"not a warm item: {exc}"[:MAX_ERROR_CHARS], 0])
                self._queue_ack(_Ack(share.keys, entry, False, 0.0, error))
                continue
            share.held[entry] = (request.identity, item)
            share.by_identity.setdefault(request.identity, []).append(entry)
            requests.append(request)
        self._count("taken", len(requests))
        if requests:
            share.touched_at = asyncio.get_running_loop().time()
            executor.submit(requests, share.run)

    def _item_done(
        self, share: _Share, request: WarmRequest, report: FillReport, seconds: float, retries: int
    ) -> None:
        """The executor's outcome of one of the share's items: acknowledge it."""
        entries = share.by_identity.pop(request.identity, [])
        error = report.error
        text = b"" if report.ok else orjson.dumps([request.url, (error or "")[:MAX_ERROR_CHARS],
                                                   retries])  # fmt: skip
        for entry in entries:
            share.held.pop(entry, None)
            self._queue_ack(_Ack(share.keys, entry, report.ok, seconds, text))
        self._room_freed.set()

    def _queue_ack(self, ack: _Ack) -> None:
        self._outbox.append(ack)
        self._outbox_wake.set()

    async def _flush_outbox(self) -> None:
        """Acknowledge finished items, batched; kept and retried while Redis fails."""
        assert self._client is not None
        failures = 0
        while True:
            if not self._outbox:
                self._outbox_wake.clear()
                await self._outbox_wake.wait()
            batch = [self._outbox[i] for i in range(min(FEED_CHUNK, len(self._outbox)))]
            per_run: dict[_RunKeys, list[str | bytes | int]] = {}
            for ack in batch:
                args = per_run.setdefault(ack.keys, [repr(self._clock()), RUN_KEEP, ERRORS_KEPT])
                args += [ack.entry, "1" if ack.ok else "0", repr(ack.seconds), ack.error]
            answers: list[Any] = []
            try:
                # One script per run (its keys share a slot): usually one call.
                for keys, args in per_run.items():
                    answers.append(await self._done(keys=keys.all, args=args))
            except REDIS_ERRORS as exc:
                failures += 1
                if failures == 1:
                    log.warning(
                        "acknowledging %d warm items failed, kept for later: %s",
                        len(self._outbox),
                        exc,
                    )
                self._failed_now()
                await asyncio.sleep(_backoff(failures))
                continue
            if failures:
                log.warning("acknowledging warm items works again")
            failures = 0
            for _ in batch:
                self._outbox.popleft()
            self._outbox_flushed.set()
            if any(a == 2 for a in answers):
                self._refreshed.set()  # a run ended: show it now

    # ------------------------------------------------------------------ stop

    async def stop(self) -> list[Run]:
        """Stop every running fleet run, for every replica; the runs stopped.
        Raises RedisError/OSError when Redis does not answer (this replica's
        own feeding stops anyway)."""
        if self._client is None:
            return []
        for feed in list(self._feeds.values()):
            feed.run.stopping = True
            feed.wake.set()
        await self.refresh()
        running = [r for r in self._records.values() if r.running]
        running_ids = {r.id for r in running}
        # A run this replica started whose record is not written yet.
        pending = [f for f in self._feeds.values() if f.run.id not in running_ids]
        now = repr(self._clock())
        stopped = []
        for record in running:
            keys = _RunKeys.of(self._prefix, record.id)
            if await self._stop(keys=keys.all, args=[now, RUN_KEEP]):
                stopped.append(record.id)
        await self.refresh()
        runs = [self._view[i] for i in stopped if i in self._view]
        for feed in pending:
            # Its feed stops it in Redis too, should its record appear.
            feed.run.progress.finish(self._clock(), "stopped")
            feed.run.done.set()
            runs.append(feed.run)
        return runs

    # ------------------------------------------------------------------ rate

    async def gate(self, rate: float) -> None:
        """Wait for a slot of the fleet's warm fetch rate (``rate`` per second)."""
        loop = asyncio.get_running_loop()
        if self._client is not None and loop.time() >= self._gate_alone_until:
            interval = max(1, round(1_000_000 / rate))
            try:
                wait = await self._rate(keys=[self._rate_key], args=[interval])
            except REDIS_ERRORS as exc:
                log.debug("the fleet's rate limit did not answer: %s", exc)
                self._gate_alone_until = loop.time() + GATE_FALLBACK_SECONDS
            else:
                if wait > 0:
                    await asyncio.sleep(int(wait) / 1_000_000)
                return
        await self._alone(rate).acquire()

    def _alone(self, rate: float) -> AsyncLimiter:
        """This replica's share of the rate while Redis is away."""
        replicas = max(1, self._replicas)
        cached = self._local_gate
        if cached is None or cached[0] != rate or cached[1] != replicas:
            limiter = AsyncLimiter(1, replicas / rate)
            self._local_gate = cached = (rate, replicas, limiter)
        return cached[2]

    # ------------------------------------------------------------------ loop

    async def run(self) -> None:
        """Poll the fleet's runs and acknowledge items until cancelled (or
        :meth:`close`, which cancels it before closing the connections)."""
        if self._client is None or self._closed:
            return
        self._poller = asyncio.current_task()
        self._tasks.spawn(self._flush_outbox(), name="fleet runs: acknowledge")
        if self._live_replicas is not None:
            self._tasks.spawn(self._count_loop(), name="fleet runs: count replicas")
        failures = 0
        # Not ``while True``: close() cancels this task, and a cancellation
        # that lands as the awaited thing completes can be lost (Python 3.11's
        # asyncio.wait_for swallows it; hence asyncio.timeout everywhere).
        while not self._closed:
            try:
                await self._poll()
            except REDIS_ERRORS as exc:
                failures += 1
                if failures == 1:
                    log.warning("reading the fleet's warm runs failed: %s", exc)
                self._failed_now()
                await asyncio.sleep(_backoff(failures))
                continue
            if failures:
                log.warning("reading the fleet's warm runs works again")
            failures = 0
            self._refreshed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_INTERVAL):
                    await self._refreshed.wait()

    async def _count_loop(self) -> None:
        assert self._live_replicas is not None
        while True:
            try:
                names = await self._live_replicas()
            except REDIS_ERRORS:
                self._live = None  # unknown: no run is taken for orphaned
            else:
                self._replicas = max(1, len(names))
                self._live = set(names)
            await asyncio.sleep(REPLICA_COUNT_INTERVAL)

    def _orphaned(self, record: RunRecord, now: float) -> bool:
        """Whether ``record`` is a run its starting replica died feeding: not
        sealed, that replica not live at the last count, and no change for
        :data:`ORPHAN_AFTER` seconds (a slow source still feeding its run
        writes its items, and its replica's heartbeat stays)."""
        live = self._live
        return (
            record.running
            and not record.sealed
            and live is not None
            and record.origin != self.name
            and record.origin not in live
            and now - record.updated_at > ORPHAN_AFTER
        )

    async def _seal_orphan(self, record: RunRecord, now: float) -> None:
        """Seal a run whose starting replica died while adding its items: it
        ends once the items it holds have an outcome; the error says why the
        rest was not warmed."""
        assert self._client is not None
        keys = _RunKeys.of(self._prefix, record.id)
        error = orjson.dumps(
            [
                "(run)",
                f"replica {record.origin} stopped while adding the run's items: "
                "the items it had not added were not warmed",
                0,
            ]
        )
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.lpush(keys.errors, error)
            pipe.ltrim(keys.errors, 0, ERRORS_KEPT - 1)
            pipe.expire(keys.errors, RUN_KEEP)
            await pipe.execute()
        await self._seal(keys=keys.all, args=[repr(now), RUN_KEEP])
        log.warning(
            "fleet warm run %s sealed: replica %s stopped while adding its items",
            record.id,
            record.origin,
        )

    def _failed_now(self) -> None:
        self._healthy = False

    async def close(self, within: float = 5.0) -> None:
        """Stop taking items, hand back what is held, acknowledge what is done
        (at most ``within`` seconds for that), and close the connections.

        A run this replica was still feeding is sealed with what went into
        the stream, so the others finish it.
        """
        if self._closed:
            return
        self._closed = True
        if self._client is None:
            return
        shares = list(self._shares.values())
        self._shares.clear()
        for share in shares:
            share.closing = True
            if share.task is not None:
                share.task.cancel()
        feeds = list(self._feeds.values())
        for feed in feeds:
            if feed.task is not None:
                feed.task.cancel()
        with contextlib.suppress(TimeoutError, *REDIS_ERRORS):
            async with asyncio.timeout(within):
                for share in shares:
                    await self._drop(share, True)
                for feed in feeds:
                    if feed.created and not feed.run.stopping:
                        dropped = sum(1 for r in feed.waiting if isinstance(r, WarmRequest))
                        if dropped:
                            log.warning(
                                "fleet warm run %s: %d items not handed to the fleet at stop",
                                feed.run.id,
                                dropped,
                            )
                        await self._seal(keys=feed.keys.all, args=[repr(self._clock()), RUN_KEEP])
                while self._outbox:  # the flush task empties it
                    self._outbox_flushed.clear()
                    await self._outbox_flushed.wait()
        # The poll loop (the caller's task) stops before the connections
        # close: a command after that would open one that nothing closes.
        poller, self._poller = self._poller, None
        if poller is not None and poller is not asyncio.current_task() and not poller.done():
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError, *REDIS_ERRORS):
                await poller
        await self._tasks.close()
        with contextlib.suppress(*REDIS_ERRORS):
            await self._client.aclose()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _backoff(failures: int) -> float:
    delay = backoff_delay(failures, base=_BACKOFF_FIRST, cap=_BACKOFF_CAP, rand=random.random)
    return max(_BACKOFF_FIRST / 2, delay)


__all__ = [
    "FleetRuns",
    "RunRecord",
    "decode_item",
    "encode_item",
    "parse_record",
    "progress_of",
    "reclaim_idle",
]
