"""The one fill path (DESIGN rule 1): origin fetch -> RFC 9111 decision -> store.

A client's miss, a stale entry's revalidation, a stale-while-revalidate
background refresh and every warm fetch come through :meth:`Filler.fetch`, so
they share the cache key, the storability decision, the TTL and the store
write.  Concurrent fetches of one key are coalesced into one origin request,
and with the Redis store into one across the replicas sharing it
(:mod:`proxy.fill_lock`).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from proxy import policy
from proxy.cache import Cache
from proxy.entry import CacheEntry
from proxy.fill_lock import FillLock
from proxy.forwarding import FORWARDING_FIELDS, ForwardingRules
from proxy.metrics import ProxyMetrics
from proxy.origin import OriginClient, OriginError, read_body
from proxy.policy import (
    CONDITIONAL_REQUEST_FIELDS,
    HOP_BY_HOP,
    CacheControl,
    CachePolicyConfig,
    HeaderSource,
)
from proxy.purge import TagHeader
from proxy.tasks import BackgroundTasks
from warmer.model import NEVER_SENT_BY_WARM, VariantHeaders

log = logging.getLogger(__name__)

# After a response turned out not to be shareable, requests for its key skip
# coalescing for this long (Varnish calls it hit-for-pass), so they do not
# queue behind each other only to fetch one by one anyway.
PASS_MEMORY_SECONDS = 30.0
PASS_MEMORY_KEYS = 10_000
TOO_LARGE = "too large"
# Prepared header sets of warm fetches kept, one per (host, variant): a
# variant is a few values per key, so a handful per host in practice.
WARM_HEADER_SETS = 1024

# Request fields a warm fetch never takes from the variant it is asked for:
# credentials (a warm fetch is nobody's, and RFC 9111 §3.5 would make the
# answer unshareable), hop-by-hop fields, the fields the warm request sets
# itself (Host, the forwarding fields, Via, the warm marker, added per rules),
# and what would turn the plain GET of a fill into something else
# (validators and ranges: the fill adds its own validators; a body).
_NOT_A_VARIANT_FIELD = (
    NEVER_SENT_BY_WARM
    | HOP_BY_HOP
    | FORWARDING_FIELDS
    | CONDITIONAL_REQUEST_FIELDS
    | {"host", "via", "content-length", "content-type", "expect"}
)
# RFC 9110 §5.1 field names (tokens) and §5.5 field values without CR, LF or NUL.
_FIELD_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z]+")
_BAD_VALUE = re.compile(r"[\r\n\x00]")


@dataclass(slots=True)
class Streaming:
    """An origin response too large (or not storable) to buffer: stream it on."""

    response: aiohttp.ClientResponse
    prefix: bytes  # bytes already read from it

    def release(self) -> None:
        self.response.release()


@dataclass(slots=True)
class FillResult:
    """What one fetch produced."""

    status: int = 0
    entry: CacheEntry | None = None  # the full response, stored or not
    stream: Streaming | None = None  # set instead of entry for pass-through
    error: OriginError | None = None
    stored: bool = False
    shareable: bool = False  # other requests may be answered with ``entry``
    revalidated: bool = False  # a 304 refreshed the stale entry
    collapsed: bool = False  # this request waited for another's fetch
    # The origin's header fields as relayed to the client that caused the
    # fetch; the stored entry may lack some (qualified private / no-cache).
    relayed: list[tuple[str, str]] | None = None
    # The response itself can never be stored (private, no-store, too large...),
    # whoever asks: later requests for the key need not wait for each other.
    # Why, when it is so ("too large", "private", "set-cookie", ...).
    uncacheable: str | None = None
    # A warm fill found a fresh entry and fetched nothing.
    already_fresh: bool = False


def variant_fields(variant: VariantHeaders, warm_header: str) -> list[tuple[str, str]]:
    """The fields of ``variant`` a warm fetch may send, in order.

    Anything else is dropped without a word: the warmer never asks for it, so
    it can only be a mistake, and a warm fetch must never carry credentials
    or override what the proxy itself tells the origin.
    """
    marker = warm_header.lower()
    fields: list[tuple[str, str]] = []
    for name, value in variant:
        lower = name.lower()
        if (
            lower in _NOT_A_VARIANT_FIELD
            or lower == marker
            or not _FIELD_NAME.fullmatch(lower)
            or _BAD_VALUE.search(value)
        ):
            continue
        fields.append((lower, value))
    return fields


class Filler:
    """Fetches from the origin and writes what may be stored."""

    def __init__(
        self,
        *,
        origin: OriginClient,
        cache: Cache,
        rules: ForwardingRules,
        config: CachePolicyConfig,
        metrics: ProxyMetrics,
        max_entry_bytes: int,
        tasks: BackgroundTasks,
        clock: Callable[[], float] = time.time,
        tag_header: TagHeader | None = None,
        fill_lock: FillLock | None = None,
    ) -> None:
        self._origin = origin
        # The origin's cache tags: kept with the entry, never stored as a header.
        self._tag_header = tag_header if tag_header is not None else TagHeader("")
        # Replicas sharing a Redis store fetch a key once between them (None: alone).
        self._fill_lock = fill_lock
        self._cache = cache
        self._rules = rules
        self._config = config
        self._metrics = metrics
        self._max_entry_bytes = max_entry_bytes
        self._tasks = tasks
        self._clock = clock
        self._inflight: dict[str, asyncio.Future[FillResult]] = {}
        # key -> (until when, why its response could not be stored)
        self._pass_until: OrderedDict[str, tuple[float, str]] = OrderedDict()
        # (host, variant) -> the warm fetch's request headers, as a list to
        # send and as the multidict the Vary lookup and the stored entry read;
        # the rules are fixed, so they are built once per (host, variant)
        # rather than on every warm fill.
        self._warm_headers: dict[
            tuple[str, VariantHeaders], tuple[list[tuple[str, str]], CIMultiDictProxy[str]]
        ] = {}

    def use_rules(self, rules: ForwardingRules) -> None:
        """Key fills by ``rules`` from now on (a reload that changed the
        ``[cache]`` query rules; the warm headers they build stay valid, but
        are built again rather than trusted)."""
        self._rules = rules
        self._warm_headers = {}

    async def touch(
        self, path_qs: str, host: str | None = None, *, headers: VariantHeaders = ()
    ) -> CacheEntry | None:
        """Look ``path_qs``'s entry up as a warm fill would, fetching nothing:
        what keeps a kept key cached (warmer.retention; see
        :meth:`Cache.touch`).  The entry when it is cached and fresh, else
        None."""
        host = host or self._rules.default_host
        _, proxy_headers = self._warm_request_headers(host, headers)
        key = self._rules.cache_key(path_qs, host)
        entry = await self._cache.touch(key, proxy_headers)
        if entry is not None and policy.fresh_enough(entry, self._clock(), {}):
            return entry
        return None

    async def fill(
        self,
        path_qs: str,
        host: str | None = None,
        *,
        headers: VariantHeaders = (),
        refresh: bool = True,
        ttl: float | None = None,
        before_fetch: Callable[[], Awaitable[None]] | None = None,
    ) -> FillResult:
        """Warm ``path_qs`` (a path on the origin) the way a client miss would.

        ``host`` is the host clients ask for (default: ``proxy.public_host``,
        else the origin's authority); it decides the cache key as it does for
        clients.  ``headers`` select the variant to warm (DESIGN rule 4): they
        are sent with the warm request's own fields, and the cache lookup and
        the stored entry's Vary values are computed from that same set, so
        what is stored is what a client sending those values is answered
        with.  Fields a warm fetch never sends (credentials, hop-by-hop, Host,
        the forwarding fields, the warm marker, validators) are dropped from
        them.  A stale entry with validators is revalidated.  A fresh one
        is refetched only with ``refresh`` (refresh-ahead); otherwise nothing
        is fetched and the result says ``already_fresh``.  ``ttl`` overrides
        the freshness lifetime of what is stored.  ``before_fetch`` is awaited
        only when the origin is about to be asked (the warmer's rate limit).
        Streams are closed.
        """
        host = host or self._rules.default_host
        send_headers, proxy_headers = self._warm_request_headers(host, headers)
        key = self._rules.cache_key(path_qs, host)
        lookup = await self._cache.lookup(key, proxy_headers)
        entry = lookup.entry
        if not refresh and entry is not None and policy.fresh_enough(entry, self._clock(), {}):
            return FillResult(status=entry.status, entry=entry, already_fresh=True)
        if before_fetch is not None:
            await before_fetch()
        result = await self.fetch(
            key=key,
            path_qs=path_qs,
            send_headers=send_headers,
            request_headers=proxy_headers,
            request_cc={},
            stale=entry,
            coalesce=True,
            warm=True,
            ttl=ttl,
        )
        if result.stream is not None:
            result.stream.release()
        return result

    def _warm_request_headers(
        self, host: str, variant: VariantHeaders
    ) -> tuple[list[tuple[str, str]], CIMultiDictProxy[str]]:
        cached = self._warm_headers.get((host, variant))
        if cached is None:
            send_headers = [
                *self._rules.warm_request_headers(host),
                *variant_fields(variant, self._rules.warm_header),
            ]
            cached = (send_headers, CIMultiDictProxy(CIMultiDict(send_headers)))
            if len(self._warm_headers) >= WARM_HEADER_SETS:
                self._warm_headers.clear()
            self._warm_headers[(host, variant)] = cached
        return cached

    async def fetch(
        self,
        *,
        key: str,
        path_qs: str,
        send_headers: list[tuple[str, str]],
        request_headers: HeaderSource,
        request_cc: CacheControl,
        stale: CacheEntry | None,
        coalesce: bool,
        warm: bool = False,
        ttl: float | None = None,
    ) -> FillResult:
        """Fetch ``path_qs``, coalesced with concurrent fetches of ``key``.

        ``ttl`` (warm fills only) overrides the stored freshness lifetime.
        """
        if coalesce and self.known_uncacheable(key):
            coalesce = False
        if not coalesce:
            return await self._fetch(
                key, path_qs, send_headers, request_headers, request_cc, stale, warm, ttl
            )
        leader = self._inflight.get(key)
        if leader is not None:
            self._metrics.coalesced.inc()
            result = await asyncio.shield(leader)
            now = self._clock()
            if result.error is not None:
                # The origin just failed this fetch: share the failure instead
                # of sending every waiter to a struggling origin again.
                return replace(result, collapsed=True)
            if (
                policy.is_error_status(result.status)
                and stale is not None
                and policy.may_serve_stale_on_error(stale, now, request_cc)
            ):
                # Same for an error answer when this waiter has a stale entry
                # to fall back on (RFC 5861 §4).
                return FillResult(status=result.status, collapsed=True)
            entry = result.entry
            if (
                entry is not None
                and result.shareable
                and self._cache.answers(entry, request_headers)
            ):
                # Reuse it only as the rules allow reusing a stored response:
                # a no-cache or already stale one is revalidated for this
                # request (cheaply: with the fresh entry's validators).
                if policy.fresh_enough(entry, now, request_cc):
                    return replace(result, collapsed=True, stream=None, relayed=None)
                stale = entry
            return await self._fetch(
                key, path_qs, send_headers, request_headers, request_cc, stale, warm, ttl
            )
        future: asyncio.Future[FillResult] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        result = FillResult()
        try:
            result = await self._fetch_once_in_fleet(
                key, path_qs, send_headers, request_headers, request_cc, stale, warm, ttl
            )
            return result
        finally:
            del self._inflight[key]
            # Waiters never see the leader's stream: it belongs to one client.
            # (Waiters copy what they return, so without a stream the result
            # itself can be shared; copying it on every fill showed up.)
            future.set_result(result if result.stream is None else replace(result, stream=None))
            if result.uncacheable and not policy.is_error_status(result.status):
                self._remember_pass(key, result.uncacheable)

    async def _fetch_once_in_fleet(
        self,
        key: str,
        path_qs: str,
        send_headers: list[tuple[str, str]],
        request_headers: HeaderSource,
        request_cc: CacheControl,
        stale: CacheEntry | None,
        warm: bool,
        ttl: float | None,
    ) -> FillResult:
        """:meth:`_fetch`, once per key across the replicas sharing the store.

        With a fill lock (the Redis store), the replica that claims the key's
        lock fetches and stores; the others wait for that entry and answer
        from it (collapsed).  Anything else (the response not storable, or not
        for this request's Vary values; the holder gone; Redis failing) ends
        in a fetch of this replica's own: the lock saves origin fetches, it
        never costs a request its answer.
        """

        async def fetch() -> FillResult:
            return await self._fetch(
                key, path_qs, send_headers, request_headers, request_cc, stale, warm, ttl
            )

        lock = self._fill_lock
        # A request's no-cache asks for the origin's own word (RFC 9111
        # §5.2.1.4): another replica's fetch cannot answer it.
        if lock is None or "no-cache" in request_cc:
            return await fetch()

        async def filled() -> CacheEntry | None:
            return await self._filled_since(key, request_headers, request_cc, stale)

        claim = await lock.claim(key)
        if claim is None:
            return await fetch()
        if claim.won:
            try:
                # Filled by another replica between this request's lookup and
                # the claim: nothing to fetch.
                found = await filled()
                return self._collapsed(found, warm) if found is not None else await fetch()
            finally:
                # After the store write: a waiter that sees the lock gone
                # finds the entry.
                await lock.release(claim)
        found, _ = await lock.wait(claim, filled)
        return self._collapsed(found, warm) if found is not None else await fetch()

    async def _filled_since(
        self,
        key: str,
        request_headers: HeaderSource,
        request_cc: CacheControl,
        stale: CacheEntry | None,
    ) -> CacheEntry | None:
        """An entry for this request, fresh enough to answer it, other than
        ``stale`` (the one this request had): what another replica's fetch left."""
        entry = (await self._cache.lookup(key, request_headers, from_store=True)).entry
        # Another write is told apart by its store time, compared for
        # equality only: the replicas' clocks may differ.
        if entry is None or (stale is not None and entry.stored_at == stale.stored_at):
            return None
        return entry if policy.fresh_enough(entry, self._clock(), request_cc) else None

    @staticmethod
    def _collapsed(entry: CacheEntry, warm: bool) -> FillResult:
        """The result of a fill answered by another replica's fetch."""
        if warm:
            # The warm request found its entry fresh: fetched nothing, stored nothing.
            return FillResult(
                status=entry.status, entry=entry, shareable=True, collapsed=True, already_fresh=True
            )
        # As for a request that waited for this process's own fetch: stored by the cache.
        return FillResult(
            status=entry.status, entry=entry, stored=True, shareable=True, collapsed=True
        )

    def refresh_in_background(
        self,
        *,
        key: str,
        path_qs: str,
        send_headers: list[tuple[str, str]],
        request_headers: HeaderSource,
        stale: CacheEntry,
    ) -> None:
        """RFC 5861 §3: revalidate while the stale entry is being served."""
        if key in self._inflight:
            return

        async def refresh() -> None:
            result = await self.fetch(
                key=key,
                path_qs=path_qs,
                send_headers=send_headers,
                request_headers=request_headers,
                request_cc={},
                stale=stale,
                coalesce=True,
            )
            if result.stream is not None:
                result.stream.release()

        self._tasks.spawn(refresh(), name=f"refresh {key}")

    async def _fetch(
        self,
        key: str,
        path_qs: str,
        send_headers: list[tuple[str, str]],
        request_headers: HeaderSource,
        request_cc: CacheControl,
        stale: CacheEntry | None,
        warm: bool,
        ttl: float | None = None,
    ) -> FillResult:
        headers = send_headers  # only read from here on, so not copied
        conditional = stale is not None and policy.has_validators(stale)
        if stale is not None and conditional:
            headers = [*send_headers, *policy.revalidation_headers(stale).items()]
        request_time = self._clock()
        started = time.perf_counter()
        try:
            response = await self._origin.request(
                "GET", path_qs, headers, purpose="warm" if warm else "fill"
            )
        except OriginError as exc:
            return FillResult(error=exc)
        response_time = self._clock()
        # Indexed and parsed once: storability, the entry and the relayed
        # headers all read the same fields.
        fields = policy.response_fields(response.headers)
        # The tag header is taken out here, so neither the stored head nor
        # the head relayed to this client carries it (DESIGN rule 3).
        fields, tags = self._tag_header.take(fields)

        if response.status == 304 and stale is not None and conditional:
            response.release()
            if not policy.not_modified_selects(stale, fields.headers):
                # §4.3.4: the 304 is about another response; get a full one.
                return await self._fetch(
                    key, path_qs, send_headers, request_headers, request_cc, None, warm, ttl
                )
            merged = policy.response_fields(
                policy.merge_not_modified(stale.headers, fields.headers)
            )
            merged_directives = policy.response_directives(merged, self._config)
            entry = policy.build_entry(
                url=path_qs,
                status=stale.status,
                headers=merged,
                directives=merged_directives,
                already_stored=True,
                body=stale.body,
                request_headers=request_headers,
                request_time=request_time,
                response_time=response_time,
                fetch_seconds=time.perf_counter() - started,
                config=self._config,
                warmed=warm,
            )
            # Set before anything shares the entry; a 304 without tags keeps the stored ones.
            entry.tags = tags or stale.tags
            if ttl is not None:
                entry = policy.with_lifetime(entry, ttl)
            decision = self._storability(
                stale.status, merged, merged_directives, request_headers, request_cc
            )
            if not decision.storable:
                # Only this client gets the updated response.  When the 304
                # itself made it unshareable (Set-Cookie, private, no-store...)
                # the stored one goes too; a reason of this request's own
                # (its no-store) leaves the shared entry alone.
                self._metrics.not_stored.labels(decision.reason).inc()
                if decision.reason not in policy.REQUEST_CAUSED_REASONS:
                    await self._cache.invalidate(key)
                return FillResult(status=304, entry=entry, revalidated=True)
            stored = await self._store(key, entry)
            return FillResult(
                status=304, entry=entry, stored=stored, shareable=True, revalidated=True
            )

        directives = policy.response_directives(fields, self._config)
        decision = self._storability(
            response.status, fields, directives, request_headers, request_cc
        )
        if not decision.storable:
            self._metrics.not_stored.labels(decision.reason).inc()
            return FillResult(
                status=response.status,
                stream=Streaming(response, b""),
                uncacheable=(
                    None if decision.reason in policy.REQUEST_CAUSED_REASONS else decision.reason
                ),
            )
        length = response.content_length
        if length is not None and length > self._max_entry_bytes:
            self._metrics.not_stored.labels(TOO_LARGE).inc()
            return FillResult(
                status=response.status,
                stream=Streaming(response, b""),
                uncacheable=TOO_LARGE,
            )
        try:
            body, complete = await read_body(response, self._max_entry_bytes)
        except OriginError as exc:
            response.release()
            return FillResult(error=exc)
        if not complete:
            self._metrics.not_stored.labels(TOO_LARGE).inc()
            return FillResult(
                status=response.status,
                stream=Streaming(response, body),
                uncacheable=TOO_LARGE,
            )
        response.release()
        entry = policy.build_entry(
            url=path_qs,
            status=response.status,
            headers=fields,
            directives=directives,
            body=body,
            request_headers=request_headers,
            request_time=request_time,
            response_time=response_time,
            fetch_seconds=time.perf_counter() - started,
            config=self._config,
            warmed=warm,
        )
        entry.tags = tags  # set before anything shares the entry
        if ttl is not None:
            entry = policy.with_lifetime(entry, ttl)
        stored = await self._store(key, entry)
        relayed = (
            None  # a warm fill relays nothing to anyone
            if warm
            else policy.relayed_headers(fields, response_time=response_time, via=self._config.via)
        )
        return FillResult(
            status=response.status, entry=entry, stored=stored, shareable=True, relayed=relayed
        )

    def _storability(
        self,
        status: int,
        fields: policy.ResponseFields,
        directives: policy.ResponseDirectives,
        request_headers: HeaderSource,
        request_cc: CacheControl,
    ) -> policy.StoreDecision:
        """RFC 9111 §3 for a fill (always a GET) of this request."""
        return policy.storability(
            method="GET",
            status=status,
            request_cc=request_cc,
            request_has_authorization=bool(request_headers.getall("authorization", [])),
            response_headers=fields,
            config=self._config,
            directives=directives,
        )

    async def _store(self, key: str, entry: CacheEntry) -> bool:
        if not policy.worth_storing(entry, self._clock()):
            self._metrics.not_stored.labels("no freshness").inc()
            return False
        if entry.size > self._max_entry_bytes:
            self._metrics.not_stored.labels(TOO_LARGE).inc()
            return False
        return await self._cache.put(key, entry)

    def known_uncacheable(self, key: str) -> str | None:
        """Why the key's last response could not be stored, whoever asked (or None).

        Requests for such a key skip coalescing for a while (hit-for-miss):
        they still fill, since the next response may be storable.
        """
        remembered = self._pass_until.get(key)
        if remembered is None:
            return None
        until, why = remembered
        if until < self._clock():
            del self._pass_until[key]
            return None
        return why

    def _remember_pass(self, key: str, why: str) -> None:
        self._pass_until[key] = (self._clock() + PASS_MEMORY_SECONDS, why)
        self._pass_until.move_to_end(key)
        while len(self._pass_until) > PASS_MEMORY_KEYS:
            self._pass_until.popitem(last=False)
