"""The fleet's warming statistics: each replica's figures in Redis, summed on read.

With the Redis store every replica writes the counters behind its
``/cache/warming/stats`` (the effectiveness ledger's and the executor's, as
the warmer hands them out as data) every :data:`WRITE_INTERVAL` seconds, and
once more when it stops cleanly, as one hash per replica:

    <prefix>{fleet}:stats:<replica name>
        instance    random per process start (tells a restart apart)
        updated_at  when it was written (Unix seconds)
        warming     the executor's counters and the process's resources (JSON)
        ledger      the ledger's counters (JSON; absent with track_effectiveness off)

and names itself in the index ``<prefix>{fleet}:stats``, a sorted set of
replica names scored by their last write, in the same transaction.  The
index spares a SCAN of the whole keyspace (every cache entry) on each read;
the ``{fleet}`` hash tag keeps index and hashes in one Redis Cluster slot, so
the transaction runs there too.  ``/stats`` on any replica reads the hashes
the index names and adds the counters up, this replica's taken live rather
than from its last write; every ratio is then computed from the sums (summed parts over
summed wholes), never averaged over replicas.  A breakdown per replica comes
with it.

A hash outlives its replica by :data:`STATS_TTL` (10 minutes) rather than
going with the heartbeat (15 s): the fleet's figures are cumulative, and a
replica that is scaled down, replaced in a rolling update or restarting
should not make them drop the moment it goes, as if the warming it did had
been undone.  Ten minutes is long enough for a restart or a rollout and short
enough that a replica gone for good stops counting the same morning.  A
replica that comes back under the same name (``cache.replica_name``, or the
same hostname and pid) replaces its own hash at its first write.

A Redis failure never costs a request, nor a ``/stats`` answer: it answers
with this replica's own figures and says the fleet's are unavailable.  Writes
try again every interval by themselves (``warmproxy_fleet_stats_up`` says
whether the last one worked).  With the memory store there is no fleet: the
answer is this replica's, with a breakdown of one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from proxy.metrics import ProxyMetrics
from proxy.redis_client import REDIS_ERRORS, RedisClient
from warmer.ledger import LedgerCounters
from warmer.service import Warmer

log = logging.getLogger(__name__)

# What a failed Redis command raises (socket errors and timeouts too).
_REDIS_ERRORS = REDIS_ERRORS

#: Seconds between two writes of this replica's figures.
WRITE_INTERVAL = 5.0
#: Seconds a replica's figures outlive its last write (see the module's docstring).
STATS_TTL = 600
#: Replicas summed at most (the most recently written first).
MAX_REPLICAS = 256
#: A field read from Redis longer than this is not one of ours: ignored.
MAX_FIELD_BYTES = 256 * 1024
#: Strategies counted apart in one of the executor's per-strategy counts.
MAX_STRATEGIES = 64
#: What /stats says when the fleet's figures could not be read.
UNAVAILABLE = "the fleet's figures are unavailable (Redis did not answer): this replica's alone"

# The executor's counters that add up across replicas; "peak_concurrent" is
# the highest of them (peaks at different moments do not add).
_SUMMED = (
    "origin_fetches",
    "fetch_seconds",
    "bytes",
    "total_warming_time",
    "schedule_firings_skipped",
    "cpu_utilization",
    "memory_usage",
)
_HIGHEST = ("peak_concurrent",)
_PER_STRATEGY = ("warmed", "failed", "retried", "already_fresh")


@dataclass(frozen=True, slots=True)
class ReplicaFigures:
    """One replica's counters behind /stats, at ``updated_at`` (Unix seconds)."""

    name: str
    instance: str
    updated_at: float
    warming: Mapping[str, Any]
    ledger: LedgerCounters | None


def encode(figures: ReplicaFigures) -> dict[str, bytes]:
    """The hash fields of ``figures``."""
    fields = {
        "instance": figures.instance.encode(),
        "updated_at": repr(figures.updated_at).encode(),
        "warming": orjson.dumps(figures.warming),
    }
    if figures.ledger is not None:
        fields["ledger"] = orjson.dumps(figures.ledger.to_document())
    return fields


def decode(name: str, fields: Mapping[bytes, bytes]) -> ReplicaFigures | None:
    """A replica's figures from its hash, or None when it is not a well-formed one."""
    try:
        if any(len(value) > MAX_FIELD_BYTES for value in fields.values()):
            return None
        updated_at = float(fields[b"updated_at"])
        warming = check_warming(orjson.loads(fields[b"warming"]))
        raw = fields.get(b"ledger")
        ledger = None if raw is None else LedgerCounters.from_document(orjson.loads(raw))
        instance = fields[b"instance"].decode()
    except (KeyError, ValueError, TypeError, UnicodeDecodeError, orjson.JSONDecodeError):
        return None
    if not math.isfinite(updated_at):
        return None
    return ReplicaFigures(name, instance, updated_at, warming, ledger)


def check_warming(data: Any) -> dict[str, Any]:
    """``data`` as :meth:`Warmer.warming_counters` writes it; ValueError otherwise."""
    if not isinstance(data, dict):
        raise ValueError("warming counters: not an object")
    out: dict[str, Any] = {}
    for name in (*_SUMMED, *_HIGHEST):
        out[name] = _finite(data.get(name), name)
    for name in _PER_STRATEGY:
        counts = data.get(name)
        if not isinstance(counts, dict) or len(counts) > MAX_STRATEGIES:
            raise ValueError(f"{name}: at most {MAX_STRATEGIES} strategies")
        out[name] = {str(k): _finite(v, name) for k, v in counts.items()}
    return out


def _finite(value: Any, name: str) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name}: not a number")
    return value


def sum_warming(all_counters: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The executor's counters of several replicas as one: counts add, peaks take the highest."""
    total: dict[str, Any] = {name: 0 for name in (*_SUMMED, *_HIGHEST)}
    for name in _PER_STRATEGY:
        total[name] = {}
    for counters in all_counters:
        for name in _SUMMED:
            total[name] += counters[name]
        for name in _HIGHEST:
            total[name] = max(total[name], counters[name])
        for name in _PER_STRATEGY:
            into = total[name]
            for strategy, value in counters[name].items():
                into[strategy] = into.get(strategy, 0) + value
    return total


def sum_ledgers(ledgers: Iterable[LedgerCounters | None]) -> LedgerCounters | None:
    """The ledgers' counters added up; None when no replica keeps a ledger."""
    total: LedgerCounters | None = None
    for ledger in ledgers:
        if ledger is not None:
            total = ledger if total is None else total + ledger
    return total


class FleetStats:
    """Writes this replica's figures to Redis and answers /stats for the fleet.

    ``client`` None: the memory store (no fleet).  ``usable`` says whether
    the store answers now (the cache's health), so an outage costs neither a
    write nor a read a Redis timeout.
    """

    def __init__(
        self,
        client: RedisClient | None,
        *,
        prefix: str,
        name: str,
        instance: str,
        warmer: Warmer,
        metrics: ProxyMetrics,
        usable: Callable[[], bool] = lambda: True,
        timeout: float = 0.5,
    ) -> None:
        self._client = client
        self._index = f"{prefix}{{fleet}}:stats"
        self._key_prefix = self._index + ":"
        self.name = name
        self._instance = instance
        self._warmer = warmer
        self._metrics = metrics
        self._usable = usable
        self._timeout = timeout
        self._failing = False

    @property
    def key(self) -> str:
        """This replica's hash."""
        return self._key_prefix + self.name

    def mine(self) -> ReplicaFigures:
        """This replica's figures now."""
        warmer = self._warmer
        ledger = warmer.ledger.counters(warmer.now()) if warmer.ledger is not None else None
        return ReplicaFigures(
            self.name, self._instance, time.time(), warmer.warming_counters(), ledger
        )

    async def write(self) -> bool:
        """Write this replica's figures now; whether it worked (never raises)."""
        if self._client is None:
            return False
        if not self._usable():
            self._written(False)
            return False
        figures = self.mine()
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hset(self.key, mapping=encode(figures))  # type: ignore[arg-type]
                pipe.expire(self.key, STATS_TTL)
                pipe.zadd(self._index, {self.name: figures.updated_at})
                # Names whose hash has expired by now go from the index too.
                pipe.zremrangebyscore(self._index, "-inf", figures.updated_at - STATS_TTL)
                pipe.expire(self._index, STATS_TTL)
                await pipe.execute()
        except _REDIS_ERRORS as exc:
            if not self._failing:
                log.warning("writing this replica's warming figures failed: %s", exc)
            self._written(False)
            return False
        if self._failing:
            log.warning("writing this replica's warming figures works again")
        self._written(True)
        return True

    def _written(self, ok: bool) -> None:
        self._failing = not ok
        self._metrics.fleet_stats_up.set(1 if ok else 0)

    async def run(self) -> None:
        """Write every :data:`WRITE_INTERVAL` seconds until cancelled."""
        if self._client is None:
            return
        while True:
            await self.write()
            await asyncio.sleep(WRITE_INTERVAL)

    async def others(self) -> list[ReplicaFigures]:
        """The other replicas' last written figures.  Raises RedisError/OSError/TimeoutError."""
        if self._client is None:
            return []
        client = self._client
        async with asyncio.timeout(4 * self._timeout):
            listed = await client.zrevrange(self._index, 0, MAX_REPLICAS - 1)
            names = [n.decode(errors="replace") for n in listed if isinstance(n, bytes)]
            if not names:
                return []
            async with client.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.hgetall(self._key_prefix + name)
                hashes = await pipe.execute()
        found: list[ReplicaFigures] = []
        for name, fields in zip(names, hashes, strict=True):
            if name == self.name or not fields:  # this replica's own, or expired meanwhile
                continue
            figures = decode(name, fields)
            if figures is None:
                log.debug("ignored malformed warming figures of replica %r", name)
                continue
            found.append(figures)
        return sorted(found, key=lambda f: f.name)

    async def stats(self) -> dict[str, Any]:
        """``/cache/warming/stats``: summed over the fleet, with a breakdown per replica."""
        me = self.mine()
        others: list[ReplicaFigures] = []
        unavailable: str | None = None
        if self._client is not None:
            if not self._usable():
                unavailable = UNAVAILABLE
            else:
                try:
                    others = await self.others()
                except (*_REDIS_ERRORS, TimeoutError) as exc:
                    log.debug("reading the fleet's warming figures failed: %s", exc)
                    unavailable = UNAVAILABLE
        everyone = [me, *others]
        if others:
            body = self._warmer.stats(
                warming=sum_warming(f.warming for f in everyone),
                ledger=sum_ledgers(f.ledger for f in everyone),
            )
        else:
            body = self._warmer.stats(warming=me.warming, ledger=me.ledger)
        body["fleet"] = {
            "scope": "fleet" if self._client is not None and unavailable is None else "replica",
            "replicas": len(everyone),
            "unavailable": unavailable,
        }
        at = self._warmer.now()
        body["replicas"] = {f.name: _breakdown(f, f is me, at) for f in everyone}
        return body

    async def close(self) -> None:
        """A last write (a clean stop), bounded in time; never raises."""
        if self._client is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(4 * self._timeout):
                await self.write()


def _breakdown(figures: ReplicaFigures, this_replica: bool, at: float) -> dict[str, Any]:
    """One replica's part of the sum, as its own /stats would say it."""
    part: dict[str, Any] = {
        "this_replica": this_replica,
        "updated_at": _iso(figures.updated_at),
        "origin_fetches": figures.warming["origin_fetches"],
    }
    if figures.ledger is not None:
        ledger = figures.ledger.figures(at).to_stats()
        part["effectiveness"] = ledger["effectiveness"]
        part["cost_benefit"] = ledger["cost_benefit"]
    return part


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")
