"""The warming schedule as one document in Redis, followed by every replica.

With the Redis store, a schedule posted to any replica (or applied by the
optimizer, or a reload's changed configuration file) is written to Redis as
one document with a revision, and announced on a pub/sub channel; every
replica re-reads the document when told and puts it in force, so
``GET /cache/warming/schedule`` answers the same everywhere within a second.

Keys, all under ``cache.redis_prefix``; the two the write script touches
share one hash slot (the ``{schedule}`` hash tag), so Redis Cluster can run it:

- ``<prefix>{schedule}:document``: a hash with ``revision``, ``id`` (random,
  per write), ``posted_at`` and ``schedule`` (the JSON the API shows, DSN
  passwords masked);
- ``<prefix>{schedule}:revision``: the counter every write INCRs.  It is
  never deleted with the document, so revisions only grow while Redis keeps
  its data;
- ``<prefix>schedule:changed``: the channel a write publishes its revision on;
- ``<prefix>warmer:fired:<source>:<unix time>``: the claim of one scheduled
  firing (``SET NX``), so a firing is warmed by one replica of the fleet.

Last writer wins: the write is one Lua script (INCR, HSET, PUBLISH), so the
document always holds the highest revision, and two posts racing on two
replicas end with both on the later one.  A follower never trusts a message's
content: each message (and a periodic look) makes it re-read the document
and adopt it when its ``(revision, id)`` differs from the one in force.  The
``id`` tells two documents apart when a Redis that lost its data counts
revisions from 1 again.

Redis down never costs a request: the replica keeps the schedule in force
(each firing is then warmed by every replica rather than by none, see
:meth:`FleetSchedule.claim`), its follower reconnects with backoff, and it
re-reads the document on reconnect, since it may have missed messages
(pub/sub delivers at most once, to whoever is subscribed).  A post while
Redis is down is refused (503) rather than applied on one replica only.
Each replica keeps a copy of the document in its state directory
(``schedule.json``), read at start only when Redis cannot be reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final
from uuid import uuid4

import orjson
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from proxy.redis_client import REDIS_ERRORS, RedisClient, Subscriptions, redis_client
from warmer.schedule_store import FileScheduleState, ScheduleStateError

log = logging.getLogger(__name__)

#: How long a firing's claim is kept: longer than any firing can be late.
FIRING_CLAIM_SECONDS: Final = 24 * 3600
#: The follower's reconnect delay after a failure: doubled per failure up to
#: the maximum, with jitter so a fleet does not reconnect in step.
RECONNECT_MIN_SECONDS: Final = 0.1
RECONNECT_MAX_SECONDS: Final = 5.0
#: The follower re-reads the document this often even without a message: a
#: safety net for a message lost on a connection that never reported failing.
RESYNC_SECONDS: Final = 15.0
#: The longest schedule document read back (a posted body is bounded far below).
MAX_DOCUMENT_BYTES: Final = 4 * 1024 * 1024

# KEYS[1] the document, KEYS[2] the revision counter; ARGV[1] the schedule
# JSON, ARGV[2] the write's id, ARGV[3] posted_at, ARGV[4] the channel,
# ARGV[5] "seed": write only where Redis holds neither document nor counter
# (it lost its data).  One script: the document can never hold a lower
# revision than the counter gave out, whatever the interleaving of writers.
_WRITE = """
if ARGV[5] == 'seed' and redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then
  return 0
end
local revision = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], 'revision', revision, 'id', ARGV[2], 'posted_at', ARGV[3],
           'schedule', ARGV[1])
redis.call('PUBLISH', ARGV[4], revision)
return revision
"""

Adopt = Callable[[dict[str, Any], float | None], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class ScheduleKeys:
    """Where the fleet's schedule lives under one prefix."""

    document: str
    revision: str
    channel: str
    fired: str
    #: Where a release before the fleet document kept a posted schedule.
    legacy: str

    @classmethod
    def under(cls, prefix: str) -> ScheduleKeys:
        return cls(
            document=f"{prefix}{{schedule}}:document",
            revision=f"{prefix}{{schedule}}:revision",
            channel=f"{prefix}schedule:changed",
            fired=f"{prefix}warmer:fired:",
            legacy=f"{prefix}warmer:schedule",
        )


@dataclass(frozen=True, slots=True)
class FleetDocument:
    """One revision of the fleet's schedule as read from Redis."""

    revision: int
    id: str
    posted_at: float | None
    schedule: dict[str, Any]

    @property
    def stamp(self) -> tuple[int, str]:
        """What tells two documents apart (see the module's docstring)."""
        return self.revision, self.id


def _decode_document(raw: dict[Any, Any], where: str) -> FleetDocument:
    """The document from HGETALL; ScheduleStateError naming ``where`` when damaged."""
    try:
        body = raw[b"schedule"]
        if len(body) > MAX_DOCUMENT_BYTES:
            raise ScheduleStateError(f"{where} holds more than {MAX_DOCUMENT_BYTES} bytes")
        revision = int(raw[b"revision"])
        doc_id = raw[b"id"].decode("ascii")
        posted = raw.get(b"posted_at", b"")
        posted_at = float(posted) if posted else None
        schedule = orjson.loads(body)
    except ScheduleStateError:
        raise
    except (KeyError, ValueError, UnicodeDecodeError) as exc:
        raise ScheduleStateError(f"{where} is not a schedule document: {exc}") from exc
    if not isinstance(schedule, dict):
        raise ScheduleStateError(f"{where} does not hold a schedule object")
    return FleetDocument(revision, doc_id, posted_at, schedule)


class FleetSchedule:
    """The schedule state of a replica on the Redis store (a ``ScheduleState``).

    ``local`` keeps this replica's copy (the fallback when Redis is down at
    start).  :meth:`follow` starts following the fleet's changes; :meth:`close`
    stops that and closes the connections.
    """

    #: A reload's changed configuration file is saved here too, like a post,
    #: so the fleet follows it (docs/operations.md, "Reload").
    shared = True

    def __init__(
        self,
        url: str,
        prefix: str,
        *,
        local: FileScheduleState,
        timeout: float,
        resync_seconds: float = RESYNC_SECONDS,
    ) -> None:
        self.keys = ScheduleKeys.under(prefix)
        self.local = local
        self._redis: RedisClient = redis_client(
            url, socket_timeout=timeout, connect_timeout=timeout
        )
        # The subscriber's own client, without redis-py's silent retries: a
        # dropped connection must surface here, because after it the
        # document has to be read again (messages may have been missed),
        # which an automatic resubscribe would skip.  (On a cluster it finds
        # the nodes; the subscription is on a plain connection to one.)
        self._subscriber: RedisClient = redis_client(
            url,
            socket_timeout=timeout,
            connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self._subscriptions = Subscriptions(self._subscriber, url, timeout=timeout)
        self._write = self._redis.register_script(_WRITE)
        self._resync_seconds = resync_seconds
        self._timeout = timeout
        #: (revision, id) of the last document this replica took up (put in
        #: force, or refused); None: none (the configuration file's
        #: schedule, or the local copy).
        self.applied: tuple[int, str] | None = None
        #: The revision in force here (0: none); behind ``applied`` after a refusal.
        self.revision = 0
        self._posted_at: float | None = None
        self._follower: asyncio.Task[None] | None = None
        #: 1 while subscribed to the channel (the metrics read it).
        self.connected = False
        self.adopted = 0  # documents of other replicas put in force here
        self.refused = 0  # documents this replica's configuration refused
        self.reconnects = 0  # subscriptions made again after a failure

    def describe(self) -> str:
        # The same on every replica (the local copy is each replica's own).
        return f"redis key {self.keys.document}"

    # ---------------------------------------------------------- ScheduleState

    async def load(self) -> dict[str, Any] | None:
        """The fleet's document at start; this replica's copy if Redis cannot be read.

        Redis wins over the local copy whenever it answers: with no document
        there, the local copy is removed (it would otherwise come back at a
        start while Redis is down).
        """
        try:
            document = await self._read()
            if document is None:
                document = await self._adopt_legacy()
        except ScheduleStateError as exc:
            saved = await self.local.load()
            log.warning(
                "the fleet's schedule cannot be read from Redis at start: %s; using this "
                "replica's copy (%s) until Redis answers",
                exc,
                "saved" if saved is not None else "none saved",
            )
            # When it was posted is in Redis only (the copy's time is the copy's).
            self._posted_at = None
            return saved
        if document is None:
            await self._remove_local_copy()
            return None
        # (Should the warmer refuse it as invalid here, it logs so and
        # uses the configuration file's schedule.)
        self.applied = document.stamp
        self.revision = document.revision
        self._posted_at = document.posted_at
        await self._keep_local_copy(document.schedule)
        return document.schedule

    async def save(self, document: dict[str, Any], *, at: float | None = None) -> None:
        """Write ``document`` as the fleet's next revision and announce it.

        Raises ScheduleStateError when Redis cannot take it (nothing changed there).
        """
        doc_id = uuid4().hex
        revision = await self._run_write(document, doc_id, at, seed=False)
        self.applied = (revision, doc_id)
        self.revision = revision
        self._posted_at = at
        log.info(
            "schedule saved for the fleet",
            extra={"revision": revision, "key": self.keys.document},
        )
        await self._keep_local_copy(document)

    async def saved_at(self) -> float | None:
        return self._posted_at

    async def claim(self, name: str, firing: float) -> bool:
        """True for the one replica that claims this firing first."""
        key = f"{self.keys.fired}{name}:{int(firing)}"
        try:
            return bool(await self._redis.set(key, b"1", nx=True, ex=FIRING_CLAIM_SECONDS))
        except REDIS_ERRORS:
            # Redis down: better a firing warmed on every replica than on none.
            return True

    async def close(self) -> None:
        follower, self._follower = self._follower, None
        if follower is not None:
            follower.cancel()
            # Bounded: a stop never waits on Redis for long.
            await asyncio.wait({follower}, timeout=2 * self._timeout)
        with contextlib.suppress(*REDIS_ERRORS):
            await self._subscriptions.aclose()
        await self._subscriber.aclose()
        await self._redis.aclose()

    # --------------------------------------------------------------- following

    def follow(self, adopt: Adopt) -> None:
        """Follow the fleet's schedule from now on, putting each new revision in
        force with ``adopt(schedule, posted_at)`` (False: refused, logged there)."""
        if self._follower is None:
            self._follower = asyncio.get_running_loop().create_task(
                self._follow(adopt), name="fleet schedule follower"
            )

    async def _follow(self, adopt: Adopt) -> None:
        delay = RECONNECT_MIN_SECONDS
        failed = False
        while True:
            pubsub: PubSub | None = None
            try:
                pubsub = await self._subscriptions.pubsub()
                await pubsub.subscribe(self.keys.channel)
                # Subscribed first, read second: a write between the two is
                # both in what is read and announced, never lost in between.
                await self._resync(adopt)
                if failed:
                    self.reconnects += 1
                    log.info("the fleet's schedule is followed again (Redis answers)")
                self.connected, failed, delay = True, False, RECONNECT_MIN_SECONDS
                while True:
                    await pubsub.get_message(timeout=self._resync_seconds)
                    # A message, or the periodic look: the document says what is new.
                    await self._resync(adopt)
            except asyncio.CancelledError:
                raise
            except (*REDIS_ERRORS, ScheduleStateError) as exc:
                if not failed:
                    log.warning(
                        "cannot follow the fleet's schedule in Redis: %s; the schedule in "
                        "force stays, and is read again when Redis answers",
                        exc,
                    )
                self.connected, failed = False, True
            finally:
                if pubsub is not None:
                    with contextlib.suppress(*REDIS_ERRORS):
                        async with asyncio.timeout(self._timeout):
                            await pubsub.aclose()
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, RECONNECT_MAX_SECONDS)

    async def _resync(self, adopt: Adopt) -> None:
        """Put the document in Redis in force when it is not the one in force here.

        Where Redis lost its data (no document, no counter) while this replica
        knows the fleet's last document, that document is written again (only
        where still absent, so one replica's copy wins), and a replica started
        later finds it.
        """
        document = await self._read()
        if document is None:
            if self.applied is not None:
                await self._seed_from_copy()
            return
        if document.stamp == self.applied:
            return
        adopted = await adopt(document.schedule, document.posted_at)
        # Refused too (invalid here, logged by ``adopt``): not tried again
        # until the next revision.
        self.applied = document.stamp
        if not adopted:
            self.refused += 1
            return
        self.revision = document.revision
        self._posted_at = document.posted_at
        self.adopted += 1
        log.info(
            "schedule of the fleet put in force",
            extra={"revision": document.revision, "key": self.keys.document},
        )
        await self._keep_local_copy(document.schedule)

    async def _seed_from_copy(self) -> None:
        """Write this replica's copy where Redis holds no schedule at all."""
        try:
            saved = await self.local.load()
        except ScheduleStateError as exc:
            log.warning("cannot read this replica's copy of the fleet's schedule: %s", exc)
            return
        if saved is None:
            return
        seeded = await self._run_write(saved, uuid4().hex, self._posted_at, seed=True)
        if seeded:
            log.warning(
                "Redis had lost the fleet's schedule: written again from this replica's copy",
                extra={"revision": seeded},
            )

    # ----------------------------------------------------------------- helpers

    async def _read(self) -> FleetDocument | None:
        try:
            raw = await self._redis.hgetall(self.keys.document)
        except REDIS_ERRORS as exc:
            raise ScheduleStateError(f"cannot read {self.keys.document} from Redis: {exc}") from exc
        if not raw:
            return None
        return _decode_document(raw, self.keys.document)

    async def _run_write(
        self, document: dict[str, Any], doc_id: str, at: float | None, *, seed: bool
    ) -> int:
        body = orjson.dumps(document)
        posted_at = "" if at is None else repr(at)
        try:
            revision = await self._write(
                keys=[self.keys.document, self.keys.revision],
                args=[body, doc_id, posted_at, self.keys.channel, "seed" if seed else "post"],
            )
        except REDIS_ERRORS as exc:
            raise ScheduleStateError(f"cannot write {self.keys.document} to Redis: {exc}") from exc
        return int(revision)

    async def _adopt_legacy(self) -> FleetDocument | None:
        """A schedule an earlier release saved under ``<prefix>warmer:schedule``,
        made the fleet's first revision (where no replica wrote one yet)."""
        try:
            data = await self._redis.get(self.keys.legacy)
        except REDIS_ERRORS as exc:
            raise ScheduleStateError(f"cannot read {self.keys.legacy} from Redis: {exc}") from exc
        if data is None or len(data) > MAX_DOCUMENT_BYTES:
            return None
        try:
            schedule = orjson.loads(data)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(schedule, dict):
            return None
        await self._run_write(schedule, uuid4().hex, None, seed=True)
        log.info("the schedule saved under %s is now the fleet's document", self.keys.legacy)
        return await self._read()

    async def _keep_local_copy(self, schedule: dict[str, Any]) -> None:
        """This replica's copy, for a start while Redis is down (best effort)."""
        try:
            await self.local.save(schedule)
        except ScheduleStateError as exc:
            log.warning("cannot keep a copy of the fleet's schedule: %s", exc)

    async def _remove_local_copy(self) -> None:
        with contextlib.suppress(OSError):
            await asyncio.to_thread(self.local.path.unlink, missing_ok=True)


class FleetScheduleCollector(Collector):
    """The follower's state for ``/metrics`` (see docs/operations.md)."""

    def __init__(self, state: FleetSchedule) -> None:
        self._state = state

    def collect(self) -> Iterable[Metric]:
        s = self._state
        yield GaugeMetricFamily(
            "warmproxy_fleet_schedule_connected",
            "1 while this replica follows the fleet's schedule in Redis (subscribed).",
            value=1 if s.connected else 0,
        )
        yield GaugeMetricFamily(
            "warmproxy_fleet_schedule_revision",
            "Revision of the fleet's schedule document in force here (0: none or not known).",
            value=s.revision,
        )
        yield CounterMetricFamily(
            "warmproxy_fleet_schedule_adopted",
            "Schedules another replica wrote that this replica put in force.",
            value=s.adopted,
        )
        yield CounterMetricFamily(
            "warmproxy_fleet_schedule_refused",
            "Schedules of the fleet this replica's configuration refused (it keeps its own).",
            value=s.refused,
        )
        yield CounterMetricFamily(
            "warmproxy_fleet_schedule_reconnects",
            "Times the schedule follower subscribed again after losing Redis.",
            value=s.reconnects,
        )
