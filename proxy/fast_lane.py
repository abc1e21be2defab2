"""The hit fast lane: fresh in-process hits answered before aiohttp sees them.

A hit through aiohttp costs a request object, a response object and a header
multidict per request, several times what the cache lookup costs.  The fast
lane is the listener's protocol: it reads each request head with httptools
(llhttp) and, when the request is a plain GET or HEAD that a fresh entry in
the in-process tier answers, writes that entry's precomputed head (with Age
and Cache-Status) and body straight to the transport, counted and observed
exactly as the handler's own hits (:meth:`ProxyHandler.emit_hit`).

Everything else is aiohttp's: the first request the fast lane will not answer,
and every byte after it, is handed to an aiohttp ``RequestHandler`` that owns
the connection from then on.  Answers stay in request order with pipelining,
because the fast lane answers in order, one request at a time, before it hands
over.  When in doubt the fast lane hands over: the handler's answer is always
right, only slower.

With Redis and the L1 tier, an entry drops out of L1 every ``cache.l1_ttl``
seconds; a request for it would hand its connection to aiohttp for good.
Instead the fast lane stops reading the connection, looks the key up once
(``Cache.lookup``, which copies the entry into L1 again), and answers it if it
now can; what is still not in process goes to the handler.

What it leaves to the handler:

- anything but GET/HEAD in HTTP/1.0 or 1.1 with an origin-form target;
- request fields the policy weighs (``handler.SLOW_PATH_FIELDS``: request
  Cache-Control and Pragma, RFC 9111 §5.2.1/§5.4; Authorization, §3.5;
  conditionals and Range, §4.3.2 and RFC 9110 §14.2) and any ``If-*``;
  a body or an expectation (Content-Length, Transfer-Encoding, Expect), an
  Upgrade; a field repeated, non-ASCII, or near aiohttp's size limits (so
  aiohttp's own errors answer what it would refuse);
- an entry that is not fresh, needs validation (``no-cache``), varies on a
  field whose stored variant is not this request's exact one (the handler
  then matches content-codings), or that ``CacheEntry.prepare_wire`` decided
  the fast lane cannot send byte for byte as aiohttp would.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, cast

import httptools
from aiohttp import web
from aiohttp.tcp_helpers import tcp_keepalive, tcp_nodelay
from multidict import CIMultiDict, CIMultiDictProxy

from proxy import policy
from proxy.cache import Cache
from proxy.config import ProxySettings
from proxy.entry import CacheEntry, VaryIndex
from proxy.forwarding import BadHost, ForwardingRules
from proxy.handler import SLOW_PATH_FIELDS, Admission, ProxyHandler

log = logging.getLogger(__name__)

# Request fields that send a request to the handler (lower-case bytes, as
# read); any field starting with "if-" does too.
_HANDLER_FIELDS = frozenset(
    {name.encode() for name in SLOW_PATH_FIELDS}
    | {b"content-length", b"transfer-encoding", b"expect", b"upgrade", b"http2-settings"}
    # aiohttp refuses the old WebSocket handshake: its 400 answers it.
    | {b"sec-websocket-key1"}
)
# Bodies up to this size leave in one write with the head; larger ones are
# written after it, uncopied.
_JOIN_BODY_BYTES = 64 * 1024
# A head still incomplete after this many bytes goes to aiohttp, whose limits
# (proxy.max_request_line, max_header_size, max_headers) then apply.
_MIN_PENDING_HEAD = 16 * 1024


class _Head:
    """A request the fast lane answered, as counting and its access event read it
    (``handler.AccessSource``)."""

    __slots__ = ("headers", "method", "raw_path", "remote")

    def __init__(
        self, method: str, raw_path: str, headers: CIMultiDictProxy[str], remote: str | None
    ) -> None:
        self.method = method
        self.raw_path = raw_path
        self.headers = headers
        self.remote = remote

    def get(self, key: web.RequestKey[str], /) -> str | None:
        # The handler keeps a request id here for requests sent to the
        # origin; a hit never is, so its event keeps the client's own.
        return None


class Refill:
    """The request may be answerable once the store's copy is in L1 again."""

    __slots__ = ("headers", "key")

    def __init__(self, key: str, headers: CIMultiDictProxy[str]) -> None:
        self.key = key
        self.headers = headers


class FastLane:
    """What every connection of the listener shares: the decision and the answer."""

    def __init__(
        self,
        *,
        cache: Cache,
        handler: ProxyHandler,
        rules: ForwardingRules,
        settings: ProxySettings,
        clock: Callable[[], float] = time.time,
        admission: Admission | None = None,
    ) -> None:
        self._cache = cache
        self._handler = handler
        self._clock = clock
        self._admission = admission if admission is not None else Admission()
        self.use_rules(rules)
        self._refills = cache.refills_in_process
        # Comfortably inside aiohttp's limits: near them, aiohttp decides.
        self._max_target = settings.max_request_line - 32
        self._max_field = settings.max_header_size - 8
        self._max_fields = settings.max_headers - 1
        self.max_pending_head = max(
            _MIN_PENDING_HEAD, settings.max_request_line + settings.max_header_size
        )
        self.keepalive_timeout = settings.keepalive_timeout
        #: Requests the fast lane answered, and connections it handed to aiohttp.
        self.answered = 0
        self.handed_over = 0
        # RFC 9211 §2: "<cache>; hit; ttl=<seconds>", as policy.cache_status writes it.
        name = settings.via_name
        if not (name.isascii() and name.isprintable()):
            raise ValueError("proxy.via_name must be printable ASCII")
        self._hit_status = f"Cache-Status: {name}; hit; ttl=".encode()

    def use_rules(self, rules: ForwardingRules) -> None:
        """Key by ``rules`` from the next request on (as the handler does)."""
        self._rules = rules
        self._keys_are_paths = rules.keys_are_paths
        self._cache_key = rules.cache_key
        # Only a trusted proxy can tell a scheme other than the uniform one.
        self._scheme_may_vary = bool(rules.trusted_networks)

    def answer(
        self, request: ParsedRequest, remote: str | None, *, may_refill: bool = True
    ) -> list[bytes] | Refill | None:
        """The response to a bodiless request (bytes to write in order), a
        :class:`Refill` to try again after, or None: the handler's."""
        started = time.perf_counter()
        method = request.method
        if method == b"GET":
            head_only = False
        elif method == b"HEAD":
            head_only = True
        else:
            return None
        if request.version == "1.1":
            status_version = b"HTTP/1.1"
        elif request.version == "1.0":
            status_version = b"HTTP/1.0"
        else:
            return None  # the handler refuses other versions (505)
        target = request.target
        if target[:1] != b"/" or len(target) > self._max_target or not target.isascii():
            return None
        fields = request.fields
        if len(fields) > self._max_fields:
            return None
        pairs: list[tuple[str, str]] = []
        seen: set[bytes] = set()
        max_field = self._max_field
        for name, value in fields:
            lower = name.lower()
            if (
                lower in _HANDLER_FIELDS
                or lower.startswith(b"if-")
                or lower in seen
                or len(name) + len(value) > max_field
                or not value.isascii()
            ):
                return None
            seen.add(lower)
            pairs.append((name.decode("ascii"), value.decode("ascii")))
        if status_version == b"HTTP/1.1" and b"host" not in seen:
            return None  # RFC 9112 §3.2: aiohttp answers 400
        headers = CIMultiDictProxy(CIMultiDict(pairs))
        rules = self._rules
        if self._scheme_may_vary and rules.scheme_bypasses_cache(headers, remote):
            return None
        if self._keys_are_paths:
            host = ""
        else:
            try:
                host = rules.forwarded_host(headers, remote)
            except BadHost:
                return None  # the handler answers 400
        raw_path = target.decode("ascii")
        key = self._cache_key(raw_path, host)
        cache = self._cache
        item = cache.peek(key)
        if isinstance(item, VaryIndex):
            # RFC 9111 §4.1: the variant stored for this request's values of
            # the Vary fields, found as Cache.lookup finds it.
            values = policy.request_vary_values(item.names, headers)
            entry = cache.peek(policy.variant_key(key, item.generation, values))
            if entry is None and may_refill and self._may_refill():
                return Refill(key, headers)
            if not isinstance(entry, CacheEntry) or entry.vary_values != values:
                return None
        elif isinstance(item, CacheEntry):
            entry = item
            if entry.vary and not policy.vary_matches(entry, headers):
                return None
        elif item is None and may_refill and self._may_refill():
            return Refill(key, headers)
        else:
            return None
        wire = entry.wire_head
        now = self._clock()
        # policy.fresh_enough without request directives: fresh and not no-cache.
        if wire is None or entry.no_cache or not now < entry.fresh_until:
            return None
        body = entry.body
        parts = [
            status_version,
            wire,
            # RFC 9111 §4.2.3 / §5.1: every answer from the cache carries its Age.
            b"Age: %d\r\n" % int(policy.age_of(entry, now)),
            self._hit_status,
            b"%d\r\n" % int(entry.fresh_until - now),
        ]
        if body or not head_only:
            # As aiohttp: a HEAD gets the length its GET would have, if any.
            parts.append(b"Content-Length: %d\r\n" % len(body))
        if request.keep_alive:
            if status_version == b"HTTP/1.0":
                parts.append(b"Connection: keep-alive\r\n")
        elif status_version == b"HTTP/1.1":
            parts.append(b"Connection: close\r\n")
        parts.append(b"\r\n")
        self.answered += 1
        self._handler.emit_hit(
            _Head(method.decode("ascii"), raw_path, headers, remote),
            entry,
            now,
            started,
            key,
            host,
        )
        if head_only or not body:
            return [b"".join(parts)]
        if len(body) > _JOIN_BODY_BYTES:
            return [b"".join(parts), body]
        parts.append(body)
        return [b"".join(parts)]

    def _may_refill(self) -> bool:
        # A store known to be down answers nothing; an overloaded proxy sheds
        # requests that wait (the handler answers 503).
        return self._refills and self._cache.healthy and not self._admission.overloaded()

    async def refill(self, refill: Refill) -> None:
        """Read ``refill.key`` from the store into L1 (``Cache.lookup`` does)."""
        await self._cache.lookup(refill.key, refill.headers)


class ParsedRequest:
    """A complete bodiless request head as llhttp read it."""

    __slots__ = ("fields", "keep_alive", "length", "method", "target", "version")

    def __init__(
        self,
        method: bytes,
        version: str,
        target: bytes,
        fields: list[tuple[bytes, bytes]],
        keep_alive: bool,
        length: int,
    ) -> None:
        self.method = method
        self.version = version
        self.target = target
        self.fields = fields
        self.keep_alive = keep_alive
        self.length = length  # bytes of the head


class FastLaneProtocol(asyncio.Protocol):
    """One client connection: in the fast lane until a request needs aiohttp."""

    def __init__(
        self,
        lane: FastLane,
        web_server: web.Server,
        connections: set[FastLaneProtocol],
    ) -> None:
        self._lane = lane
        self._web_server = web_server
        self._connections = connections
        self._transport: asyncio.Transport | None = None
        self._remote: str | None = None
        self._parser = httptools.HttpRequestParser(self)
        # Bytes received and not answered; the first is the start of a request.
        self._buffer = b""
        # How much of the pending head the parser has already read.
        self._fed = 0
        self._writing_paused = False
        # Reading stopped while a Refill lookup runs (the task, kept referenced).
        self._refilling: asyncio.Task[None] | None = None
        self._idle_since = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        # The request being parsed; method, version and keep-alive are read
        # when its head is complete (llhttp resets them for the next message).
        self._target = b""
        self._fields: list[tuple[bytes, bytes]] = []
        self._head_done = False
        self._complete = False
        self._method = b""
        self._version = ""
        self._keep_alive = False

    # ------------------------------------------------------------ transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's are not asyncio.Transport subclasses).
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        # As aiohttp's RequestHandler: small answers leave at once, and dead
        # peers are noticed.
        tcp_nodelay(transport, True)
        tcp_keepalive(transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, (list, tuple)) and peer:
            self._remote = str(peer[0])
        self._connections.add(self)
        loop = asyncio.get_running_loop()
        self._idle_since = loop.time()
        self._idle_timer = loop.call_at(
            self._idle_since + self._lane.keepalive_timeout, self._close_if_idle
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._left()
        self._transport = None

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False

    def data_received(self, data: bytes) -> None:
        self._buffer = self._buffer + data if self._buffer else data
        self._serve()

    def close(self) -> None:
        """Close the connection (the listener stops): it has no request half
        answered, except one waiting for its Refill lookup."""
        if self._transport is not None:
            self._transport.close()

    # ------------------------------------------------------------- requests

    def _serve(self) -> None:
        """Answer the complete requests at the start of the buffer, in order."""
        transport = self._transport
        if transport is None or self._refilling is not None:
            return
        buffer = self._buffer
        view = memoryview(buffer)  # fed to the parser in slices, never copied
        start = 0
        lane = self._lane
        parser = self._parser
        try:
            while start < len(buffer):
                if self._writing_paused:
                    # The client reads slower than it asks: aiohttp's writer
                    # waits for it, the fast lane does not buffer.
                    self._hand_over(buffer[start:])
                    return
                end = buffer.find(b"\r\n\r\n", start + max(0, self._fed - 3))
                if end < 0:
                    # An incomplete head: parse it now, so a malformed one
                    # goes to aiohttp's error answer at once.
                    parser.feed_data(view[start + self._fed :])
                    self._fed = len(buffer) - start
                    if self._head_done or self._fed > lane.max_pending_head:
                        self._hand_over(buffer[start:])
                        return
                    break
                stop = end + 4
                parser.feed_data(view[start + self._fed : stop])
                self._fed = 0
                if not self._complete:
                    # A body follows, or the head ended before the blank
                    # line the fast lane looked for.
                    self._hand_over(buffer[start:])
                    return
                request = ParsedRequest(
                    self._method,
                    self._version,
                    self._target,
                    self._fields,
                    self._keep_alive,
                    stop - start,
                )
                self._target, self._fields = b"", []
                self._head_done = self._complete = False
                response = self._answer(request, may_refill=True)
                if isinstance(response, Refill):
                    self._buffer = buffer[start:]
                    transport.pause_reading()
                    self._refilling = asyncio.ensure_future(self._refill(response, request))
                    return
                if response is None:
                    self._hand_over(buffer[start:])
                    return
                start += request.length
                if not self._send(transport, response, request.keep_alive):
                    return
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            # Malformed, an upgrade, or a callback refused it: aiohttp decides.
            self._hand_over(buffer[start:])
            return
        self._buffer = buffer[start:] if start else buffer

    def _answer(self, request: ParsedRequest, *, may_refill: bool) -> list[bytes] | Refill | None:
        try:
            return self._lane.answer(request, self._remote, may_refill=may_refill)
        except Exception:
            # A bug here must not cost the client its answer: the handler's.
            log.exception("fast lane failed on a request; handing it to aiohttp")
            return None

    def _send(self, transport: asyncio.Transport, response: list[bytes], keep_alive: bool) -> bool:
        """Write an answer; False when the connection ends with it."""
        for chunk in response:
            transport.write(chunk)
        self._idle_since = asyncio.get_running_loop().time()
        if keep_alive:
            return True
        # Whatever was pipelined after it is not answered (RFC 9112 §9.6), as
        # aiohttp does.
        self._buffer = b""
        transport.close()
        return False

    async def _refill(self, refill: Refill, request: ParsedRequest) -> None:
        """Look the key up in the store, then answer the request or hand over."""
        try:
            await self._lane.refill(refill)
        except Exception:  # Cache.lookup counts store failures; anything else:
            log.exception("fast lane: looking up %s failed", refill.key)
        finally:
            self._refilling = None
        transport = self._transport
        if transport is None or transport.is_closing():
            return  # closed meanwhile
        transport.resume_reading()
        response = self._answer(request, may_refill=False)
        if not isinstance(response, list):
            self._hand_over(self._buffer)
            return
        self._buffer = self._buffer[request.length :]
        if self._send(transport, response, request.keep_alive):
            self._serve()

    def _hand_over(self, pending: bytes) -> None:
        """Give the connection, from the request at the start of ``pending``
        on, to an aiohttp RequestHandler for the rest of its life."""
        transport = self._transport
        self._left()
        self._buffer = b""
        if transport is None or transport.is_closing():
            return
        self._lane.handed_over += 1
        handler = self._web_server()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self._writing_paused:
            handler.pause_writing()  # the transport calls its resume_writing now
        self._transport = None
        if pending:
            handler.data_received(pending)

    def _left(self) -> None:
        """No longer in the fast lane: closed or handed over."""
        self._connections.discard(self)
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _close_if_idle(self) -> None:
        """proxy.keepalive_timeout: as aiohttp, a connection with no answer for
        that long (a partial head included) is closed."""
        self._idle_timer = None
        transport = self._transport
        if transport is None:
            return
        loop = asyncio.get_running_loop()
        deadline = self._idle_since + self._lane.keepalive_timeout
        if loop.time() >= deadline and self._refilling is None:
            transport.close()
        else:
            self._idle_timer = loop.call_at(max(deadline, loop.time() + 1.0), self._close_if_idle)

    # ------------------------------------------------ httptools callbacks

    def on_url(self, url: bytes) -> None:
        self._target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields.append((name, value))

    def on_headers_complete(self) -> None:
        self._head_done = True
        parser = self._parser
        self._method = parser.get_method()
        self._version = parser.get_http_version()
        self._keep_alive = parser.should_keep_alive()

    def on_message_complete(self) -> None:
        self._complete = True


class FastLaneSite(web.TCPSite):
    """The proxy listener with the fast lane in front of the runner's aiohttp server."""

    def __init__(self, lane: FastLane, runner: web.BaseRunner, *args: Any, **kwargs: Any) -> None:
        super().__init__(runner, *args, **kwargs)
        self._lane = lane
        self._connections: set[FastLaneProtocol] = set()

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with the runner
        web_server = self._runner.server
        assert web_server is not None
        lane, connections = self._lane, self._connections
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: FastLaneProtocol(lane, web_server, connections),
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
        if self._server.sockets:
            self._bound_port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        await super().stop()
        # Handed-over connections are the runner's to drain; these are idle.
        for protocol in list(self._connections):
            protocol.close()
