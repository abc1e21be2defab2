"""The channel between the workers of ``warmproxy serve --workers N``.

The primary worker (worker 0) listens on a Unix socket in a directory only
the supervisor's user can enter; every other worker connects to it.  Over it:

- **cache changes** (memory store only): every explicit write and delete in
  any worker's store (a warm fill, a client miss's fill, a soft purge's
  rewrite, an invalidation, a purge) reaches every other worker's store, as
  the Redis store's own byte encoding (:func:`proxy.entry.encode`).  A worker
  sends its changes to the primary, which applies them and passes the same
  frame on to the others.  A newly connected worker (one just restarted) is
  sent everything the primary holds; a restarted primary is sent everything
  each other worker holds.  An item larger than
  :data:`MAX_RELAYED_ITEM_BYTES` is not relayed: the others drop their copy
  of the key and fetch it themselves on a miss.  A purge by glob or tag also
  sends its selector first, so it reaches what only another worker holds.
- **access events**, in batches, from the other workers to the primary,
  whose warmer (tracker, reactive thresholds, ledger) observes every
  worker's requests;
- **metric counts**: every second each other worker sends what its counters
  and histograms grew by, and the primary adds it to its own, so ``/metrics``
  and ``/cache/warming/cache`` count every worker's requests (a second
  behind at most);
- **touches**: keys a warmer's touch marked used (warmer.retention), so
  every worker's copy of the store keeps what the warmer keeps cached;
- **reloads**: the primary, once it has applied a reload, tells the others
  to read the configuration again.

With the Redis store the workers share Redis, and the fleet's pub/sub keeps
their in-process tiers in step (:mod:`proxy.fleet`); only events, counts and
reloads travel here.  Nothing here is on a request's path: a store hook
writes a frame to a socket buffer and returns; when the channel is down,
changes are not relayed (the other workers fetch on a miss) and events are
dropped (counted), never waited for.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import operator
import os
import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import fields
from enum import IntEnum
from typing import TYPE_CHECKING, Any

import orjson
from prometheus_client import Counter, Histogram

from proxy.entry import CacheEntry, DecodeError, StoredItem, decode, encode
from proxy.fleet import L1Drop, apply_drop, decode_drop, encode_drops
from proxy.metrics import ProxyMetrics, RequestDurations
from proxy.observe import AccessEvent, Outcome
from proxy.store.memory import MemoryStore
from proxy.tasks import BackgroundTasks

if TYPE_CHECKING:
    from proxy.app import Warmproxy
    from proxy.workers import WorkerRole

log = logging.getLogger(__name__)

#: Largest item (``StoredItem.size``) relayed to the other workers; a bigger
#: one stays in the worker that fetched it (the others fetch it on a miss).
MAX_RELAYED_ITEM_BYTES = 1024 * 1024
#: Largest frame read: a relayed item with its key and metadata, with room to spare.
MAX_FRAME_BYTES = 2 * MAX_RELAYED_ITEM_BYTES + 64 * 1024
#: Bytes waiting to be sent to one worker beyond which new items are not
#: relayed to it (deletes still are: they are small, and missing one would
#: leave a stale copy).
MAX_PENDING_BYTES = 64 * 1024 * 1024
#: Access events a worker keeps for the primary at most (beyond: dropped, counted).
MAX_PENDING_EVENTS = 65536
#: Events sent in one frame at most, and how often a partial batch goes out.
EVENT_BATCH = 1024
EVENT_INTERVAL = 0.2
#: Seconds between two reports of a worker's metric counts to the primary.
METRICS_INTERVAL = 1.0
#: Seconds a worker that starts waits for the store's contents before it
#: opens the proxy port (a restarted primary: from every other worker).
SYNC_WAIT = 3.0
# Reconnect backoff of a worker whose primary went away (restarting): a
# local socket, tried often, so a restarted primary is not kept waiting.
_RECONNECT_FIRST = 0.02
_RECONNECT_CAP = 0.2

_FRAME = struct.Struct("!IB")  # payload length, kind
_PUT = struct.Struct("!dI")  # deadline, key length (then the key, then the item)


class Kind(IntEnum):
    HELLO = 1
    PUT = 2
    DROP = 3
    EVENTS = 4
    METRICS = 5
    RELOAD = 6
    # An item of a worker's store sent to a primary that restarted (its store
    # is empty): applied there, not passed on (the others hold it already).
    RESTORE = 7
    # Everything the sender holds has been sent (after its PUTs or RESTOREs).
    SYNCED = 8
    # Keys a warmer's touch marked used (warmer.retention): every copy keeps them.
    TOUCH = 9


class FrameError(ValueError):
    """Bytes on the channel that are not a frame of ours."""


def frame(kind: Kind, payload: bytes) -> bytes:
    return _FRAME.pack(len(payload), kind) + payload


async def read_frame(reader: asyncio.StreamReader) -> tuple[Kind, bytes]:
    """The next frame; raises IncompleteReadError at the end, FrameError on garbage."""
    head = await reader.readexactly(_FRAME.size)
    length, kind = _FRAME.unpack(head)
    if length > MAX_FRAME_BYTES:
        raise FrameError(f"frame of {length} bytes is over the {MAX_FRAME_BYTES} byte limit")
    try:
        known = Kind(kind)
    except ValueError:
        raise FrameError(f"unknown frame kind {kind}") from None
    return known, await reader.readexactly(length)


def put_frame(key: str, item: StoredItem, deadline: float) -> bytes | None:
    """A PUT frame for ``item``, or None when it is too big to relay."""
    if item.size > MAX_RELAYED_ITEM_BYTES:
        return None
    raw_key = key.encode("utf-8", "surrogateescape")
    return frame(Kind.PUT, _PUT.pack(deadline, len(raw_key)) + raw_key + encode(item))


def parse_put(payload: bytes) -> tuple[str, StoredItem, float]:
    """(key, item, deadline) of a PUT payload; raises FrameError."""
    try:
        deadline, key_len = _PUT.unpack_from(payload)
        start = _PUT.size
        key = payload[start : start + key_len].decode("utf-8", "surrogateescape")
        item = decode(payload[start + key_len :])
    except (struct.error, UnicodeDecodeError, DecodeError) as exc:
        raise FrameError(f"malformed PUT: {exc}") from None
    return key, item, deadline


#: Most keys one TOUCH frame names (a touch names a key and its variant).
MAX_TOUCHED_KEYS = 64


def touch_frame(keys: Sequence[str]) -> bytes:
    return frame(Kind.TOUCH, orjson.dumps(list(keys[:MAX_TOUCHED_KEYS])))


def parse_touch(payload: bytes) -> list[str]:
    """The keys of a TOUCH payload; raises FrameError."""
    try:
        keys = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise FrameError("malformed TOUCH") from None
    if (
        not isinstance(keys, list)
        or len(keys) > MAX_TOUCHED_KEYS
        or not all(isinstance(k, str) for k in keys)
    ):
        raise FrameError("malformed TOUCH: not a list of at most 64 keys")
    return keys


def drop_frames(sender: str, drop: L1Drop) -> list[bytes]:
    return [frame(Kind.DROP, m) for m in encode_drops(sender, drop)]


# ------------------------------------------------------------------ events

_EVENT_FIELDS = tuple(f.name for f in fields(AccessEvent))
# An event as the tuple of its fields, in one C call.
_event_row = operator.attrgetter(*_EVENT_FIELDS)
_OUTCOMES = {o.value: o for o in Outcome}
_OUTCOME_AT = _EVENT_FIELDS.index("outcome")
_TUPLES_AT = (_EVENT_FIELDS.index("vary"), _EVENT_FIELDS.index("vary_values"))


def encode_events(events: Sequence[AccessEvent]) -> bytes:
    return orjson.dumps([_event_row(e) for e in events])


def decode_events(payload: bytes) -> list[AccessEvent]:
    """The events of an EVENTS payload; raises FrameError."""
    try:
        rows = orjson.loads(payload)
        out = []
        for row in rows:
            row[_OUTCOME_AT] = _OUTCOMES[row[_OUTCOME_AT]]
            for at in _TUPLES_AT:
                row[at] = tuple(row[at])
            out.append(AccessEvent(*row))
    except (orjson.JSONDecodeError, LookupError, TypeError, ValueError) as exc:
        raise FrameError(f"malformed EVENTS: {exc}") from None
    return out


# ----------------------------------------------------------------- metrics

# One counted value: (kind, name, labels as JSON, index).  Kinds: "req" the
# request counter (name: outcome, labels: method), "dur" the request latency
# buckets (name: outcome; index -1: the seconds), "ctr" a client-library
# Counter attribute of ProxyMetrics, "hist" a Histogram one (index -1: sum).
_Slot = tuple[str, str, str, int]


def count_snapshot(metrics: ProxyMetrics) -> dict[_Slot, float]:
    """Every counter and histogram count of ``metrics``, flattened."""
    out: dict[_Slot, float] = {}
    for (outcome, method), n in metrics.requests.items():
        out[("req", outcome, method, 0)] = n
    for outcome, durations in metrics.request_durations.items():
        for i, n in enumerate(durations.counts):
            out[("dur", outcome, "", i)] = n
        out[("dur", outcome, "", -1)] = durations.seconds
    for name, metric in vars(metrics).items():
        if isinstance(metric, Counter):
            for family in metric.collect():
                for sample in family.samples:
                    if sample.name.endswith("_total"):
                        out[("ctr", name, _labels(sample.labels), 0)] = sample.value
        elif isinstance(metric, Histogram):
            for family in metric.collect():
                # Buckets are cumulative in Prometheus samples; per bucket here.
                below: dict[str, tuple[int, float]] = {}
                for sample in family.samples:
                    labels = {k: v for k, v in sample.labels.items() if k != "le"}
                    key = _labels(labels)
                    if sample.name.endswith("_bucket"):
                        index, previous = below.get(key, (0, 0.0))
                        out[("hist", name, key, index)] = sample.value - previous
                        below[key] = (index + 1, sample.value)
                    elif sample.name.endswith("_sum"):
                        out[("hist", name, key, -1)] = sample.value
    return out


def _labels(labels: dict[str, str]) -> str:
    return orjson.dumps(dict(sorted(labels.items()))).decode()


def count_growth(now: dict[_Slot, float], before: dict[_Slot, float]) -> list[list[Any]]:
    """What grew between two snapshots, as rows ``[kind, name, labels, index, by]``."""
    return [
        [*slot, value - before.get(slot, 0)]
        for slot, value in now.items()
        if value != before.get(slot, 0)
    ]


def add_counts(metrics: ProxyMetrics, rows: Sequence[Sequence[Any]]) -> None:
    """Add another worker's growth (:func:`count_growth`) to ``metrics``."""
    for kind, name, labels, index, by in rows:
        if not isinstance(by, int | float) or by <= 0:
            continue  # counts only grow
        if kind == "req":
            metrics.requests[(name, labels)] += int(by)
        elif kind == "dur":
            durations = metrics.request_durations.get(name)
            if durations is None:
                durations = metrics.request_durations[name] = RequestDurations()
            if index == -1:
                durations.seconds += by
            elif 0 <= index < len(durations.counts):
                durations.counts[index] += int(by)
        elif kind in ("ctr", "hist"):
            metric = getattr(metrics, name, None)
            label_values = orjson.loads(labels)
            if kind == "ctr" and isinstance(metric, Counter):
                (metric.labels(**label_values) if label_values else metric).inc(by)
            elif kind == "hist" and isinstance(metric, Histogram):
                child = metric.labels(**label_values) if label_values else metric
                # The client library has no public way to add counts to a
                # bucket; its per-child values are what observe() adds to.
                if index == -1:
                    child._sum.inc(by)
                elif 0 <= index < len(child._buckets):
                    child._buckets[index].inc(by)


# ------------------------------------------------------------------ relay


class _Relay(abc.ABC):
    """What the primary and the other workers share: applying what arrives to
    the store without relaying it back, and the store hooks."""

    def __init__(self, proxy: Warmproxy, name: str) -> None:
        self._proxy = proxy
        self._name = name
        store = proxy.cache.store
        # Cache changes travel here only with the memory store.
        self._store = store if isinstance(store, MemoryStore) else None
        self._applying = False
        # What could not be passed on (warmproxy_worker_relay_skipped_total).
        self._skipped = proxy.metrics.worker_relay_skipped
        self._tasks = BackgroundTasks()

    def install(self) -> None:
        if self._store is not None:
            self._store.listener = self
            self._proxy.cache.drops = self

    # -- the store's listener and the cache's purge hook ---------------------

    def stored(self, key: str, item: StoredItem, deadline: float) -> None:
        if self._applying:
            return
        data = put_frame(key, item, deadline)
        if data is None:
            self._skipped.labels("item").inc()
            self._send_changes(drop_frames(self._name, L1Drop(keys=(key,))))
        else:
            self._send_changes([data], droppable=True)

    def removed(self, keys: Sequence[str]) -> None:
        if not self._applying:
            self._send_changes(drop_frames(self._name, L1Drop(keys=tuple(keys))))

    def touched(self, keys: Sequence[str]) -> None:
        if not self._applying:
            self._send_changes([touch_frame(keys)], droppable=True)

    def dropped(self, keys: Sequence[str]) -> None:
        """The cache's DropListener (shared-store drops): the store hook tells them already."""
        return None

    @contextlib.contextmanager
    def bulk(self, *, pattern: str | None = None, tag: str | None = None) -> Iterator[None]:
        """A purge by glob or tag: its selector first, so it reaches what only
        another worker holds (a soft purge's rewrites follow it)."""
        self._send_changes(drop_frames(self._name, L1Drop(pattern=pattern, tag=tag)))
        yield

    @abc.abstractmethod
    def _send_changes(self, frames: list[bytes], droppable: bool = False) -> None:
        """Pass this worker's store changes on: the hub to every other
        worker, a client to the hub (``droppable``: a put a worker far
        behind may skip, fetching it on a miss instead)."""

    def reloaded(self) -> None:
        """This worker applied a reload (only the primary tells the others)."""
        return None

    # -- applying -------------------------------------------------------------

    async def _send_store(self, writer: asyncio.StreamWriter, kind: Kind = Kind.PUT) -> None:
        """Everything this worker's store holds, a batch at a time, to the
        other end of ``writer``: a worker or a primary that (re)started with
        an empty store.  Items are stored until their own ``expires_at``."""
        store = self._store
        assert store is not None
        sent = 0
        with contextlib.suppress(ConnectionError):
            async for key in store.scan("*"):
                item = store.get_nowait(key)
                if item is None:
                    continue
                data = put_frame(key, item, item.expires_at)
                if data is not None:
                    writer.write(frame(kind, data[_FRAME.size :]) if kind != Kind.PUT else data)
                    sent += 1
                    if sent % 256 == 0:
                        await writer.drain()
            await writer.drain()
        if sent:
            log.info("sent the store to a worker", extra={"items": sent})

    def apply(self, kind: Kind, payload: bytes) -> None:
        """Apply a PUT, DROP or TOUCH from another worker to this one's store."""
        store = self._store
        if store is None:
            return
        self._applying = True
        try:
            if kind == Kind.TOUCH:
                store.touch_nowait(parse_touch(payload))
            elif kind in (Kind.PUT, Kind.RESTORE):
                key, item, deadline = parse_put(payload)
                if isinstance(item, CacheEntry):
                    item.prepare_wire()  # as the in-process tier keeps entries
                store.put_nowait(key, item, deadline - self._proxy.clock())
            else:
                decoded = decode_drop(payload)
                if decoded is None:
                    raise FrameError("malformed DROP")
                apply_drop(store, decoded[1])
        finally:
            self._applying = False


class RelayHub(_Relay):
    """The primary's end: applies and passes on the others' changes, observes
    their events, adds up their counts."""

    def __init__(self, proxy: Warmproxy, role: WorkerRole) -> None:
        super().__init__(proxy, "w0")
        self._role = role
        self._path = role.relay_path
        self._server: asyncio.Server | None = None
        self._peers: dict[asyncio.StreamWriter, str] = {}
        # Workers that sent everything they hold since this primary started.
        self._synced: set[str] = set()
        self._all_synced = asyncio.Event()

    async def start(self) -> None:
        # A socket file left by a primary that was killed: this one replaces it.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path)
        self._server = await asyncio.start_unix_server(
            self._serve, self._path, limit=MAX_FRAME_BYTES
        )
        os.chmod(self._path, 0o600)
        self.install()
        if self._role.restarted and self._store is not None:
            # The others hold the cache this primary lost: it answers from
            # it as soon as they sent it (or SYNC_WAIT passed).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SYNC_WAIT):
                    await self._all_synced.wait()
            log.info("restarted primary: store received", extra={"from": sorted(self._synced)})

    @property
    def peers(self) -> int:
        return len(self._peers)

    def reloaded(self) -> None:
        """The primary applied a reload: every other worker reads its configuration again."""
        for writer in list(self._peers):
            self._write(writer, frame(Kind.RELOAD, b""))

    def _send_changes(self, frames: list[bytes], droppable: bool = False) -> None:
        self._broadcast(frames, droppable, skip=None)

    def _broadcast(
        self, frames: list[bytes], droppable: bool, skip: asyncio.StreamWriter | None
    ) -> None:
        for writer in list(self._peers):
            if writer is skip:
                continue
            if droppable and writer.transport.get_write_buffer_size() > MAX_PENDING_BYTES:
                self._skipped.labels("item").inc()
                continue
            for data in frames:
                self._write(writer, data)

    def _write(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        if writer.is_closing():
            return
        writer.write(data)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        name = "?"
        try:
            kind, payload = await read_frame(reader)
            if kind != Kind.HELLO:
                raise FrameError("the first frame must be HELLO")
            name = str(orjson.loads(payload).get("worker", "?"))
            self._peers[writer] = name
            log.info("worker connected to the primary", extra={"worker": name})
            if self._store is not None:
                await self._send_store(writer)
            writer.write(frame(Kind.SYNCED, b""))
            while True:
                kind, payload = await read_frame(reader)
                try:
                    self._received(kind, payload, writer)
                except FrameError:
                    raise
                except Exception:  # a bug must not cut the channel: the frame is skipped
                    log.exception("a worker's relay frame failed", extra={"worker": name})
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except (FrameError, orjson.JSONDecodeError, AttributeError) as exc:
            log.warning("closed a worker's relay connection: %s", exc, extra={"worker": name})
        finally:
            self._peers.pop(writer, None)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _received(self, kind: Kind, payload: bytes, writer: asyncio.StreamWriter) -> None:
        if kind in (Kind.PUT, Kind.DROP, Kind.TOUCH):
            self.apply(kind, payload)
            self._broadcast([frame(kind, payload)], kind != Kind.DROP, skip=writer)
        elif kind == Kind.RESTORE:
            self.apply(kind, payload)
        elif kind == Kind.SYNCED:
            self._synced.add(self._peers.get(writer, "?"))
            if len(self._synced) >= self._role.count - 1:
                self._all_synced.set()
        elif kind == Kind.EVENTS:
            self._proxy.warmer.observe_many(decode_events(payload))
        elif kind == Kind.METRICS:
            add_counts(self._proxy.metrics, orjson.loads(payload))

    async def close(self) -> None:
        if self._store is not None:
            self._store.listener = None
        if self._server is not None:
            self._server.close()
            for writer in list(self._peers):
                writer.close()
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path)
        await self._tasks.close()


class RelayClient(_Relay):
    """The end of every other worker: sends its changes, events and counts to
    the primary, applies what the primary passes on, reloads when told."""

    def __init__(self, proxy: Warmproxy, role: WorkerRole) -> None:
        super().__init__(proxy, f"w{role.index}")
        self._path = role.relay_path
        self._index = role.index
        self._writer: asyncio.StreamWriter | None = None
        self.connected = asyncio.Event()
        #: Set once the primary sent everything it holds.
        self.synced = asyncio.Event()
        self._events: list[AccessEvent] = []
        self._counts_sent: dict[_Slot, float] = {}

    async def start(self) -> None:
        self.install()
        self._proxy.hub.subscribe(self.observe)
        self._tasks.spawn(self._run(), name="worker relay")
        self._tasks.spawn(self._report(), name="worker relay: events and counts")
        # A worker that answered before it holds the cache would miss what
        # was warmed (DESIGN rule 4); the primary being away does not hold
        # the start up for long.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SYNC_WAIT):
                await self.synced.wait()

    def observe(self, event: AccessEvent) -> None:
        """An access event of this worker, for the primary's warmer (never awaits)."""
        if not self._proxy.settings.tracking.enabled:
            return
        if len(self._events) >= MAX_PENDING_EVENTS:
            self._skipped.labels("event").inc()
            return
        self._events.append(event)

    def _send_changes(self, frames: list[bytes], droppable: bool = False) -> None:
        writer = self._writer
        if writer is None or writer.is_closing():
            if droppable:
                self._skipped.labels("item").inc()
            return
        if droppable and writer.transport.get_write_buffer_size() > MAX_PENDING_BYTES:
            self._skipped.labels("item").inc()
            return
        for data in frames:
            writer.write(data)

    async def _run(self) -> None:
        """Stay connected to the primary, reconnecting with backoff."""
        delay = _RECONNECT_FIRST
        connections = 0
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(
                    self._path, limit=MAX_FRAME_BYTES
                )
            except OSError:
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RECONNECT_CAP)
                continue
            delay = _RECONNECT_FIRST
            connections += 1
            writer.write(frame(Kind.HELLO, orjson.dumps({"worker": self._index})))
            self._writer = writer
            self.connected.set()
            if connections > 1:
                # A new primary: it may have reloaded while this one was cut
                # off, and it starts with an empty store.
                log.info("connected to the primary again")
                self._tasks.spawn(self._reload(), name="worker reload")
            self._tasks.spawn(self._sync(writer, again=connections > 1), name="worker relay: sync")
            try:
                while True:
                    kind, payload = await read_frame(reader)
                    try:
                        if kind in (Kind.PUT, Kind.DROP, Kind.TOUCH):
                            self.apply(kind, payload)
                        elif kind == Kind.SYNCED:
                            self.synced.set()
                        elif kind == Kind.RELOAD:
                            self._tasks.spawn(self._reload(), name="worker reload")
                    except FrameError:
                        raise
                    except Exception:  # a bug must not cut the channel: the frame is skipped
                        log.exception("a relay frame from the primary failed")
            except (asyncio.IncompleteReadError, ConnectionError):
                log.info("the primary worker went away; reconnecting")
            except FrameError as exc:
                log.warning("closed the relay connection to the primary: %s", exc)
            finally:
                self.connected.clear()
                self._writer = None
                writer.close()

    async def _sync(self, writer: asyncio.StreamWriter, again: bool) -> None:
        """Tell the primary this worker is in step; connected again (to a
        restarted primary, whose store is empty), send it the store first."""
        if again and self._store is not None:
            await self._send_store(writer, Kind.RESTORE)
        if not writer.is_closing():
            writer.write(frame(Kind.SYNCED, b""))

    async def _reload(self) -> None:
        from proxy.reload import ReloadRefused

        try:
            await self._proxy.reload()
        except ReloadRefused:
            pass  # logged with what is wrong
        except Exception:
            log.exception("reload failed")

    async def _report(self) -> None:
        """Send the events and the counts' growth to the primary, now and then."""
        last_counts = time.monotonic()
        while True:
            await asyncio.sleep(EVENT_INTERVAL)
            writer = self._writer
            if writer is None or writer.is_closing():
                # The primary is away: its warmer cannot take them now.
                if self._events:
                    self._skipped.labels("event").inc(len(self._events))
                self._events.clear()
                continue
            events, self._events = self._events, []
            for start in range(0, len(events), EVENT_BATCH):
                writer.write(frame(Kind.EVENTS, encode_events(events[start : start + EVENT_BATCH])))
            if time.monotonic() - last_counts >= METRICS_INTERVAL:
                last_counts = time.monotonic()
                counts = count_snapshot(self._proxy.metrics)
                growth = count_growth(counts, self._counts_sent)
                if growth:
                    writer.write(frame(Kind.METRICS, orjson.dumps(growth)))
                self._counts_sent = counts
            with contextlib.suppress(ConnectionError):
                await writer.drain()

    async def close(self) -> None:
        """Send what is left, then disconnect."""
        if self._store is not None:
            self._store.listener = None
        writer = self._writer
        if writer is not None and not writer.is_closing():
            self._proxy.hub.drain()
            if self._events:
                writer.write(frame(Kind.EVENTS, encode_events(self._events)))
                self._events.clear()
            growth = count_growth(count_snapshot(self._proxy.metrics), self._counts_sent)
            if growth:
                writer.write(frame(Kind.METRICS, orjson.dumps(growth)))
            with contextlib.suppress(ConnectionError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await writer.drain()
        await self._tasks.close()
        if writer is not None:
            writer.close()


def relay_for(proxy: Warmproxy, role: WorkerRole) -> RelayHub | RelayClient:
    """The primary's hub (worker 0) or another worker's client."""
    return RelayHub(proxy, role) if role.primary else RelayClient(proxy, role)
