"""The request handler: answer from the cache when RFC 9111 allows, else forward.

The hit path (DESIGN rule 3) is the first branch of :meth:`ProxyHandler.handle`:
a GET/HEAD without request directives, conditionals, credentials or ranges,
whose entry is in process and fresh, is answered with one dict lookup, one time
comparison and one write.  Everything else takes the full path below it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import secrets
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from proxy import policy, websocket
from proxy.cache import Cache
from proxy.entry import CacheEntry
from proxy.filler import TOO_LARGE, Filler, FillResult, Streaming
from proxy.forwarding import BadHost, ForwardingRules, end_to_end
from proxy.metrics import ProxyMetrics
from proxy.observe import AccessEvent, EventHub, Outcome
from proxy.origin import OriginClient, OriginError, OriginFailure
from proxy.purge import PurgeMethod
from proxy.store.base import StoreError

log = logging.getLogger(__name__)

# Request fields that send a GET/HEAD off the hit path (the fast lane's too).
SLOW_PATH_FIELDS = (
    "cache-control",
    "pragma",
    "authorization",
    "if-none-match",
    "if-modified-since",
    "range",
)

# Every request sent to the origin carries one, so the origin's logs and ours
# can be joined: the client's own when usable, else one made here.
REQUEST_ID_FIELD = "X-Request-Id"
_REQUEST_ID_KEY: web.RequestKey[str] = web.RequestKey("request_id", str)
_REQUEST_ID_MAX = 128
# A process prefix and a counter: unique per request, far cheaper than a uuid4.
_ID_PREFIX = secrets.token_hex(4)
_ID_COUNTER = itertools.count(1)


class AccessSource(Protocol):
    """What counting a request and its access event read of it: an aiohttp
    request, or the fast lane's parsed head (proxy/fast_lane.py)."""

    @property
    def method(self) -> str: ...
    @property
    def raw_path(self) -> str: ...
    @property
    def headers(self) -> CIMultiDictProxy[str]: ...
    @property
    def remote(self) -> str | None: ...
    def get(self, key: web.RequestKey[str], /) -> str | None: ...


def new_request_id() -> str:
    return f"{_ID_PREFIX}-{next(_ID_COUNTER):x}"


def usable_request_id(value: str) -> bool:
    """Short visible ASCII only: the id lands in logs and in the origin's request."""
    return 0 < len(value) <= _REQUEST_ID_MAX and value.isascii() and value.isprintable()


_STREAM_CHUNK = 64 * 1024
# RFC 9112 §2.3: the versions this proxy speaks.  aiohttp's parser also lets
# HTTP/0.9 and HTTP/2.0 request lines through (without its C extension, any
# 1.x or 3.x too); they are refused with a 505 (RFC 9110 §15.6.6), never
# answered (least of all from the cache) as if they were HTTP/1.1.
_HTTP_VERSIONS = (aiohttp.HttpVersion11, aiohttp.HttpVersion10)
_RETRYABLE_BODY_BYTES = 64 * 1024


# Seconds a shed client is asked to wait before retrying (RFC 9110 §10.2.3):
# the burst that overloads the proxy is usually over by then.
RETRY_AFTER = "1"
# How often the event loop's lag is sampled.
LAG_SAMPLE_INTERVAL = 0.1


class Admission:
    """Overload shedding: whether a request that may wait is taken on now.

    A request the in-process cache cannot answer at once waits: for the
    store, for the origin, for a free origin connection.  With
    ``max_in_flight`` such requests already being handled, or while the event
    loop runs more than ``max_lag`` seconds behind (every callback, timeouts
    included, is that late), one more only waits longer, and ends in a
    timeout that blames the origin; it is refused at once instead (503 with
    Retry-After, RFC 9110 §15.6.4).  0 switches a limit off.

    The handler asks only for requests off the hit path: a fresh hit from
    process memory costs about what a refusal costs, and never waits.
    """

    def __init__(self, max_in_flight: int = 0, max_lag: float = 0.0) -> None:
        self.max_in_flight = max_in_flight if max_in_flight > 0 else sys.maxsize
        self.max_lag = max_lag
        #: Requests taken on and not answered yet.
        self.in_flight = 0
        #: How late the sampler woke up last time, in seconds.
        self.lag = 0.0
        self._lagging = False
        # Monotonic second after which the sampler's next wake-up is already
        # later than max_lag: a loop too busy to run the sampler at all is
        # overloaded before the sampler can measure it.
        self._late_after = math.inf

    def overloaded(self) -> bool:
        return (
            self.in_flight >= self.max_in_flight
            or self._lagging
            or time.monotonic() > self._late_after
        )

    async def watch_lag(self, interval: float = LAG_SAMPLE_INTERVAL) -> None:
        """Measure the event loop's lag forever: how late a timer of ``interval`` fires."""
        try:
            while True:
                expected = time.monotonic() + interval
                if self.max_lag > 0:
                    self._late_after = expected + self.max_lag
                await asyncio.sleep(interval)
                self.lag = max(0.0, time.monotonic() - expected)
                self._lagging = 0 < self.max_lag < self.lag
        finally:
            # Stopped: the wake-up that will not come is no sign of overload.
            self._late_after = math.inf
            self._lagging = False


def _to_origin_form(request: web.BaseRequest) -> web.BaseRequest | None:
    """The request with an absolute-form target rewritten to origin-form.

    RFC 9112 §3.2.2: a server must accept absolute-form; its authority
    replaces Host.  Any other form (asterisk, authority, garbage) is refused,
    and no target is ever pasted onto the origin URL as it came.
    """
    parts = urlsplit(request.raw_path)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return None
    path = parts.path if parts.path.startswith("/") else "/" + parts.path
    target = f"{path}?{parts.query}" if parts.query else path
    headers = CIMultiDict(request.headers)
    headers["Host"] = parts.netloc.rpartition("@")[2]  # never userinfo
    return request.clone(rel_url=URL(target, encoded=True), headers=headers)


class ProxyHandler:
    """Serves every request that reaches the proxy listener."""

    def __init__(
        self,
        *,
        cache: Cache,
        filler: Filler,
        origin: OriginClient,
        rules: ForwardingRules,
        hub: EventHub,
        metrics: ProxyMetrics,
        client_id_header: str = "",
        cache_name: str = "warmproxy",
        clock: Callable[[], float] = time.time,
        admission: Admission | None = None,
        purge_method: PurgeMethod | None = None,
        tag_header: str = "",
    ) -> None:
        self._cache = cache
        # PURGE /path ([cache.purge] method); None: forwarded like any method.
        self._purge_method = purge_method
        # The origin's cache-tag header, never relayed (stored entries lack it already).
        self._tag_header = tag_header
        self._admission = admission if admission is not None else Admission()
        self._filler = filler
        self._origin = origin
        self._hub = hub
        self._metrics = metrics
        self._client_id_header = client_id_header
        self._name = cache_name
        self._clock = clock
        self.use_rules(rules)
        # With keys as paths, requests (and their events) name no host: ""
        # is the default one, as for a WarmRequest and a key read back from
        # the store, so the warmer sees one (host, url) per path.
        self._path_host = ""

    def use_rules(self, rules: ForwardingRules) -> None:
        """Key and forward by ``rules`` from the next request on (at start, and
        on a reload that changed the ``[cache]`` query rules)."""
        self._rules = rules
        # Chosen once: keys are paths (any name clients use for the proxy
        # shares entries) or carry the host; the key function already has
        # the [cache] query rules in it, or nothing when none is configured.
        self._keys_are_paths = rules.keys_are_paths
        self._cache_key = rules.cache_key
        # Only a trusted proxy can tell a scheme other than the uniform one.
        self._scheme_may_vary = bool(rules.trusted_networks)

    def _key(self, request: AccessSource) -> str:
        if self._keys_are_paths:
            return self._cache_key(request.raw_path, self._path_host)
        return self._rules.key_of(request.headers, request.remote, request.raw_path)

    def _event_key(self, request: AccessSource) -> str:
        try:
            return self._key(request)
        except BadHost:
            return request.raw_path  # a refused request: it has no cache key

    def _event_host(self, request: AccessSource) -> str:
        if self._keys_are_paths:
            return self._path_host
        try:
            return self._rules.forwarded_host(request.headers, request.remote)
        except BadHost:
            return ""

    # ------------------------------------------------------------------ entry

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        if request.version not in _HTTP_VERSIONS:
            status = policy.cache_status(fwd="bypass", detail="bad-version", name=self._name)
            refused = self._plain(
                request, 505, "warmproxy: HTTP version not supported\n", status, started
            )
            refused.force_close()
            return refused
        if request.raw_path[:1] != "/":
            origin_form = _to_origin_form(request)
            if origin_form is None:
                status = policy.cache_status(fwd="bypass", detail="bad-target", name=self._name)
                return self._plain(request, 400, "warmproxy: bad request target\n", status, started)
            request = origin_form
        if self._keys_are_paths:
            host = self._path_host
        else:
            try:
                host = self._rules.forwarded_host(request.headers, request.remote)
            except BadHost:
                status = policy.cache_status(fwd="bypass", detail="bad-host", name=self._name)
                return self._plain(request, 400, "warmproxy: bad Host\n", status, started)
        method = request.method
        if method == "GET" or method == "HEAD":
            headers = request.headers
            if "upgrade" in headers and websocket.is_upgrade(request):
                if self._admission.overloaded():
                    return self._shed(request, started)
                # Not counted in flight: a WebSocket may stay open for hours.
                return await self._websocket(request, started)
            if request.body_exists:
                # The body may select the response (search APIs): a cache
                # keyed by URL must not answer it (RFC 9110 §9.3.1).
                return await self._admit(
                    self._forward(request, started, fwd="bypass"), request, started
                )
            if self._scheme_may_vary and self._rules.scheme_bypasses_cache(headers, request.remote):
                return await self._admit(
                    self._forward(request, started, fwd="bypass"), request, started
                )
            for name in SLOW_PATH_FIELDS:
                if name in headers:
                    break
            else:
                key = self._cache_key(request.raw_path, host)
                entry = self._cache.peek(key)
                if isinstance(entry, CacheEntry):
                    now = self._clock()
                    if now < entry.fresh_until and not entry.no_cache:
                        return self._respond_hit(request, entry, now, started, key, host)
            return await self._admit(self._handle_cacheable(request, started), request, started)
        if method == "PURGE" and self._purge_method is not None:
            return await self._purge(request, host, started)
        return await self._admit(self._forward(request, started), request, started)

    async def _purge(self, request: web.BaseRequest, host: str, started: float) -> web.Response:
        """PURGE /path: drop the path's entry and its variants, from allowed networks only."""
        purge = self._purge_method
        assert purge is not None
        status = policy.cache_status(fwd="bypass", detail="purge", name=self._name)
        if not purge.allows(request.remote):
            return self._plain(
                request,
                403,
                "warmproxy: PURGE is not allowed from this address\n",
                status,
                started,
                reason="purge-refused",
            )
        try:
            outcome = await purge.purger.purge_key(self._cache_key(request.raw_path, host))
        except StoreError:
            return self._plain(
                request,
                503,
                "warmproxy: the cache store failed; purge again\n",
                status,
                started,
                reason="purge-failed",
            )
        text = f'{{"purged": {outcome.purged}, "soft": false, "rewarm": null}}\n'
        self._emit(request, Outcome.BYPASS, 200, started, len(text))
        return web.Response(
            text=text,
            content_type="application/json",
            headers={"Cache-Status": status, "Cache-Control": "no-store"},
        )

    async def _admit(
        self,
        handling: Coroutine[Any, Any, web.StreamResponse],
        request: web.BaseRequest,
        started: float,
    ) -> web.StreamResponse:
        """Run ``handling`` (a request that may wait) unless overloaded, counted in flight."""
        admission = self._admission
        if admission.overloaded():
            handling.close()  # never started: nothing to undo
            return self._shed(request, started)
        admission.in_flight += 1
        try:
            return await handling
        finally:
            admission.in_flight -= 1

    def _shed(self, request: web.BaseRequest, started: float) -> web.Response:
        status = policy.cache_status(fwd="bypass", detail="overload", name=self._name)
        response = self._plain(
            request, 503, "warmproxy: overloaded, retry later\n", status, started, reason="overload"
        )
        response.headers["Retry-After"] = RETRY_AFTER
        return response

    def _respond_hit(
        self,
        request: web.BaseRequest,
        entry: CacheEntry,
        now: float,
        started: float,
        key: str,
        host: str,
    ) -> web.Response:
        headers = entry.response_head()
        headers["Age"] = str(int(now - entry.born))
        headers["Cache-Status"] = f"{self._name}; hit; ttl={int(entry.fresh_until - now)}"
        response = web.Response(status=entry.status, body=entry.body, headers=headers)
        self._emit(
            request,
            Outcome.HIT,
            entry.status,
            started,
            len(entry.body),
            now,
            key,
            host,
            entry,
        )
        return response

    # ------------------------------------------------------------- full path

    async def _handle_cacheable(
        self, request: web.BaseRequest, started: float
    ) -> web.StreamResponse:
        headers = request.headers
        key = self._key(request)
        request_cc = policy.request_directives(
            headers.getall("cache-control", []), headers.getall("pragma", [])
        )
        has_auth = "authorization" in headers
        lookup = await self._cache.lookup(key, headers)
        entry = lookup.entry
        if entry is not None and has_auth and not entry.shareable_with_auth:
            entry = None  # RFC 9111 §3.5
        now = self._clock()
        if entry is not None:
            if policy.fresh_enough(entry, now, request_cc):
                ttl = entry.fresh_until - now
                status = policy.cache_status(hit=True, ttl=ttl, name=self._name)
                return self._serve(request, entry, now, Outcome.HIT, status, started)
            if policy.may_serve_stale_while_revalidating(entry, now, request_cc):
                self._filler.refresh_in_background(
                    key=key,
                    path_qs=request.raw_path,
                    send_headers=self._fill_headers(request),
                    request_headers=headers,
                    stale=entry,
                )
                status = policy.cache_status(
                    hit=True,
                    ttl=entry.fresh_until - now,
                    detail="stale-while-revalidate",
                    name=self._name,
                )
                return self._serve(request, entry, now, Outcome.STALE, status, started)
        if "only-if-cached" in request_cc:
            # §5.2.1.7: nothing usable is stored; do not contact the origin.
            status = policy.cache_status(fwd="miss", detail="only-if-cached", name=self._name)
            return self._plain(
                request,
                504,
                "warmproxy: not in cache (only-if-cached)\n",
                status,
                started,
                reason="only-if-cached",
            )
        if request.method == "HEAD" and entry is None:
            return await self._forward(request, started, fwd="miss")
        if "range" in headers:
            # Ranges are cut from fresh complete entries (above); anything
            # else goes to the origin as asked, without filling the cache.
            return await self._forward(request, started, fwd="bypass")
        why = self._filler.known_uncacheable(key) if entry is None else None
        if why is not None and (
            why == TOO_LARGE or "if-none-match" in headers or "if-modified-since" in headers
        ):
            # The last answer could not be stored: forward this request as it
            # came (its validators too) and stream from the first byte.  Other
            # requests still fill, since the next answer may be storable.
            return await self._forward(request, started, fwd="miss")
        if entry is not None:
            fwd = "request" if entry.fresh_until > now else "stale"
        elif lookup.vary_miss:
            fwd = "vary-miss"
        else:
            fwd = "uri-miss"
        result = await self._filler.fetch(
            key=key,
            path_qs=request.raw_path,
            send_headers=self._fill_headers(request),
            request_headers=headers,
            request_cc=request_cc,
            stale=entry,
            # A request with credentials gets its own fetch (RFC 9111 §3.5).
            coalesce=not has_auth,
        )
        return await self._answer_fill(request, result, entry, request_cc, fwd, started)

    async def _answer_fill(
        self,
        request: web.BaseRequest,
        result: FillResult,
        stale: CacheEntry | None,
        request_cc: policy.CacheControl,
        fwd: str,
        started: float,
    ) -> web.StreamResponse:
        now = self._clock()
        failed = result.error is not None or policy.is_error_status(result.status)
        if failed and stale is not None and policy.may_serve_stale_on_error(stale, now, request_cc):
            # RFC 5861 §4: stale-if-error.
            if result.stream is not None:
                result.stream.release()
            status = policy.cache_status(
                fwd="stale",
                fwd_status=result.status or None,
                ttl=stale.fresh_until - now,
                detail="stale-if-error",
                name=self._name,
            )
            return self._serve(request, stale, now, Outcome.STALE, status, started)
        if result.error is not None:
            return self._origin_failed(request, result.error, fwd, started)
        status = policy.cache_status(
            fwd=fwd,
            fwd_status=result.status,
            stored=result.stored,
            collapsed=result.collapsed,
            name=self._name,
        )
        if result.stream is not None:
            return await self._stream(request, result.stream, status, Outcome.MISS, started)
        if result.entry is None:
            # A shared error answer this request cannot fall back from after
            # all (its stale window just closed): fetch for it alone.
            result = await self._filler.fetch(
                key=self._key(request),
                path_qs=request.raw_path,
                send_headers=self._fill_headers(request),
                request_headers=request.headers,
                request_cc=request_cc,
                stale=stale,
                coalesce=False,
            )
            return await self._answer_fill(request, result, None, request_cc, fwd, started)
        outcome = Outcome.REVALIDATED if result.revalidated else Outcome.MISS
        return self._serve(
            request, result.entry, now, outcome, status, started, result.relayed, result.stored
        )

    def _serve(
        self,
        request: web.BaseRequest,
        entry: CacheEntry,
        now: float,
        outcome: Outcome,
        cache_status: str,
        started: float,
        relayed: list[tuple[str, str]] | None = None,
        cached: bool = True,
    ) -> web.Response:
        """Answer from ``entry``, with a 304 when the client's validators match.

        ``relayed``: the origin's own header fields, when this request caused
        the fetch (they may include fields the stored entry leaves out).
        ``cached``: ``entry`` is (now) in the cache.
        """
        # The entry that answered: only one in the cache is one clients share.
        answered = entry if cached else None
        headers = request.headers
        if 200 <= entry.status < 300:
            inm = ", ".join(headers.getall("if-none-match", [])) or None
            ims = headers.get("if-modified-since")
            if (inm is not None or ims is not None) and policy.client_condition_met(
                entry, inm, ims
            ):
                not_modified = CIMultiDict(policy.not_modified_headers(entry))
                not_modified["Age"] = str(int(policy.age_of(entry, now)))
                not_modified["Cache-Status"] = cache_status
                self._emit(
                    request,
                    outcome,
                    304,
                    started,
                    0,
                    now,
                    None,
                    None,
                    answered,
                )
                return web.Response(status=304, headers=not_modified)
        out = CIMultiDict(relayed) if relayed is not None else entry.response_head()
        out["Age"] = str(int(policy.age_of(entry, now)))
        out["Cache-Status"] = cache_status
        status, body = entry.status, entry.body
        range_value = headers.get("range")
        if range_value is not None and status == 200:
            status, body = self._cut_range(entry, range_value, headers.get("if-range"), out)
        self._emit(
            request,
            outcome,
            status,
            started,
            len(body),
            now,
            None,
            None,
            answered,
        )
        return web.Response(status=status, body=body, headers=out)

    @staticmethod
    def _cut_range(
        entry: CacheEntry, range_value: str, if_range: str | None, out: CIMultiDict[str]
    ) -> tuple[int, bytes]:
        """RFC 9110 §14.2: a single byte range of a stored complete response."""
        if if_range is not None and not policy.if_range_matches(entry, if_range):
            return entry.status, entry.body
        length = len(entry.body)
        span = policy.parse_byte_range(range_value, length)
        if span is None:
            return entry.status, entry.body  # not a single bytes range: ignore it
        if span == policy.UNSATISFIABLE:
            out["Content-Range"] = f"bytes */{length}"
            return 416, b""
        first, last = span
        out["Content-Range"] = f"bytes {first}-{last}/{length}"
        return 206, entry.body[first : last + 1]

    # --------------------------------------------------------- pass-through

    async def _forward(
        self, request: web.BaseRequest, started: float, *, fwd: str = "method"
    ) -> web.StreamResponse:
        """Forward a request the cache cannot answer; invalidate after unsafe ones."""
        method = request.method
        send_headers = self._with_request_id(
            request,
            self._rules.request_headers(request.headers, peer=request.remote, for_fill=False),
        )
        body: bytes | aiohttp.StreamReader | None = None
        if request.body_exists:
            await self._continue(request)
            length = request.content_length
            # Small bodies are read first: the origin client retries an
            # idempotent request once when a pooled keep-alive connection turns
            # out closed (RFC 9110 §9.2.2), which needs a body it can resend.
            # Larger bodies stream.
            small = length is not None and length <= _RETRYABLE_BODY_BYTES
            body = await request.read() if small else request.content
        try:
            upstream = await self._origin.request(
                method, request.raw_path, send_headers, body=body, purpose="forward"
            )
        except OriginError as exc:
            return self._origin_failed(request, exc, fwd, started)
        if method not in policy.SAFE_METHODS:
            # RFC 9111 §4.4: a non-error answer to an unsafe method invalidates
            # the target URI and same-origin Location / Content-Location.
            host = self._rules.forwarded_host(request.headers, request.remote)
            for path in policy.invalidated_paths(
                request_path=request.raw_path,
                status=upstream.status,
                response_headers=list(upstream.headers.items()),
                authorities=self._rules.own_authorities(request.headers, request.remote),
            ):
                await self._cache.invalidate(self._rules.cache_key(path, host))
        status = policy.cache_status(fwd=fwd, fwd_status=upstream.status, name=self._name)
        outcome = Outcome.BYPASS if fwd in ("method", "bypass") else Outcome.MISS
        return await self._stream(request, Streaming(upstream, b""), status, outcome, started)

    async def _stream(
        self,
        request: web.BaseRequest,
        stream: Streaming,
        cache_status: str,
        outcome: Outcome,
        started: float,
    ) -> web.StreamResponse:
        """Relay an origin response chunk by chunk: memory stays flat."""
        upstream = stream.response
        headers = CIMultiDict(end_to_end(upstream.headers.items()))
        if self._tag_header:
            headers.popall(self._tag_header, None)
        vias = headers.getall("Via", [])
        headers.popall("Via", None)
        headers["Via"] = ", ".join([*vias, self._rules.via])
        headers["Cache-Status"] = cache_status
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        response.headers.extend(headers)
        sent = 0
        try:
            await response.prepare(request)
            if stream.prefix:
                await response.write(stream.prefix)
                sent += len(stream.prefix)
            async for chunk in upstream.content.iter_chunked(_STREAM_CHUNK):
                await response.write(chunk)
                sent += len(chunk)
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client went away (aiohttp's reset error is also a ClientError)
        except (aiohttp.ClientError, TimeoutError) as exc:
            # The head is already sent: the only honest signal left is to cut
            # the connection so the client sees a truncated body.
            log.warning("origin failed mid-body for %s: %s", request.raw_path, exc)
            if request.transport is not None:
                request.transport.close()
        finally:
            upstream.release()
        self._emit(request, outcome, upstream.status, started, sent)
        return response

    async def _websocket(self, request: web.BaseRequest, started: float) -> web.StreamResponse:
        """Relay a WebSocket to the origin (never cached)."""
        send_headers = self._with_request_id(
            request,
            [
                (k, v)
                for k, v in self._rules.request_headers(
                    request.headers, peer=request.remote, for_fill=False
                )
                if k.lower() not in websocket.HANDSHAKE_FIELDS
                and k.lower() != "sec-websocket-protocol"
            ],
        )
        try:
            upstream = await self._origin.websocket(
                request.raw_path, send_headers, websocket.requested_protocols(request)
            )
        except OriginError as exc:
            return self._origin_failed(request, exc, "bypass", started)
        self._emit(request, Outcome.BYPASS, 101, started, 0)
        return await websocket.relay(request, upstream)

    # ---------------------------------------------------------------- helpers

    @staticmethod
    async def _continue(request: web.BaseRequest) -> None:
        """RFC 9110 §10.1.1: tell a client waiting on ``Expect: 100-continue`` to send.

        The proxy answers the expectation itself (it forwards the body as it
        arrives), so the client does not stall waiting for it.
        """
        if (
            request.version >= aiohttp.HttpVersion11
            and request.headers.get("Expect", "").lower() == "100-continue"
        ):
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            # The interim response is not part of the final one's size.
            request.writer.output_size = 0

    def _fill_headers(self, request: web.BaseRequest) -> list[tuple[str, str]]:
        return self._with_request_id(
            request,
            self._rules.request_headers(request.headers, peer=request.remote, for_fill=True),
        )

    @staticmethod
    def _with_request_id(
        request: web.BaseRequest, headers: list[tuple[str, str]]
    ) -> list[tuple[str, str]]:
        """``headers`` carrying the request's id (the client's, else a new one),
        which is also remembered for its access event."""
        given = request.headers.get(REQUEST_ID_FIELD, "")
        if usable_request_id(given):
            request[_REQUEST_ID_KEY] = given
            return headers
        request_id = new_request_id()
        request[_REQUEST_ID_KEY] = request_id
        name = REQUEST_ID_FIELD.lower()
        return [(k, v) for k, v in headers if k.lower() != name] + [(REQUEST_ID_FIELD, request_id)]

    def _origin_failed(
        self, request: web.BaseRequest, error: OriginError, fwd: str, started: float
    ) -> web.Response:
        detail = f"origin-{error.kind}"
        if error.kind is OriginFailure.TIMEOUT:
            code, text = 504, "warmproxy: origin timed out\n"
        elif error.kind is OriginFailure.POOL_WAIT:
            # The origin was never asked: every pooled connection stayed busy
            # (a slow origin, or more load than proxy.max_origin_connections).
            code, text = 504, "warmproxy: waited for an origin connection, none came free\n"
            detail = "pool-wait"
        elif error.kind is OriginFailure.HEAD_TOO_LARGE:
            code, text = 502, "warmproxy: origin response head too large\n"
        elif error.kind is OriginFailure.TLS:
            # The certificate's fault is in the proxy's log, not told to clients.
            code, text = 502, "warmproxy: TLS to the origin failed\n"
        else:
            code, text = 502, "warmproxy: origin unreachable\n"
        status = policy.cache_status(fwd=fwd, detail=detail, name=self._name)
        return self._plain(request, code, text, status, started, reason=detail)

    def _plain(
        self,
        request: web.BaseRequest,
        code: int,
        text: str,
        cache_status: str,
        started: float,
        *,
        reason: str = "bad-request",
    ) -> web.Response:
        """An error response the proxy makes itself, counted by ``reason``."""
        self._metrics.proxy_errors.labels(reason).inc()
        self._emit(request, Outcome.BYPASS, code, started, len(text))
        return web.Response(
            status=code,
            text=text,
            headers={"Cache-Status": cache_status, "Cache-Control": "no-store"},
        )

    def emit_hit(
        self,
        request: AccessSource,
        entry: CacheEntry,
        now: float,
        started: float,
        key: str,
        host: str,
    ) -> None:
        """Count a fresh hit the fast lane answered and emit its access event,
        exactly as for one :meth:`_respond_hit` answers."""
        self._emit(
            request, Outcome.HIT, entry.status, started, len(entry.body), now, key, host, entry
        )

    def _emit(
        self,
        request: AccessSource,
        outcome: Outcome,
        status: int,
        started: float,
        size: int,
        now: float | None = None,
        key: str | None = None,
        host: str | None = None,
        entry: CacheEntry | None = None,
    ) -> None:
        """Count the request and emit its access event; ``entry``: the cached
        entry that answered it or that its fill stored."""
        latency = time.perf_counter() - started
        self._metrics.count_request(outcome, request.method, latency)
        vary: tuple[str, ...]
        vary_values: tuple[str | None, ...]
        if entry is None:
            fresh_until, warmed, vary, vary_values, coding = 0.0, False, (), (), ""
        else:
            fresh_until, warmed = entry.fresh_until, entry.warmed
            vary, vary_values = entry.vary, entry.vary_values
            # Which coding answered tells variants one entry serves by coding
            # (cache.vary_accept_encoding) apart from real ones, for the warmer.
            coding = entry.coding if "accept-encoding" in vary else ""
        client = (
            request.headers.get(self._client_id_header, "") if self._client_id_header else ""
        ) or (request.remote or "")
        path = request.raw_path
        self._hub.emit(
            AccessEvent(
                ts=now if now is not None else self._clock(),
                key=key if key is not None else self._event_key(request),
                url=path,
                method=request.method,
                outcome=outcome._value_,  # the plain str (see AccessEvent.outcome)
                status=status,
                latency=latency,
                bytes=size,
                client=client,
                host=host if host is not None else self._event_host(request),
                fresh_until=fresh_until,
                warmed=warmed,
                vary=vary,
                vary_values=vary_values,
                coding=coding,
                # Hits never reach the origin: they keep the client's id, if any.
                request_id=str(
                    request.get(_REQUEST_ID_KEY) or request.headers.get(REQUEST_ID_FIELD, "")
                ),
            )
        )
