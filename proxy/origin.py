"""The connection pool to the one origin, with its timeouts and failure kinds."""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import AsyncIterable
from enum import StrEnum
from types import SimpleNamespace
from urllib.parse import urlsplit

import aiohttp
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from prometheus_client import Histogram
from yarl import URL

from proxy.config import ProxySettings
from proxy.metrics import ProxyMetrics
from proxy.origin_tls import client_context, tls_failure

log = logging.getLogger(__name__)

# Characters the URL parser treats specially in a path (a fragment; tabs and
# line breaks it removes): targets holding them take the parser's own path.
_NEEDS_PARSING = frozenset("#\t\r\n")


class OriginFailure(StrEnum):
    UNREACHABLE = "unreachable"  # answered 502
    TIMEOUT = "timeout"  # answered 504
    # The origin answered, with a status line or header field longer than
    # proxy.max_origin_header_size (or more fields than the client reads):
    # answered 502, named apart so nobody hunts for a network fault.
    HEAD_TOO_LARGE = "head-too-large"
    # Every pooled connection stayed busy for proxy.pool_timeout: the origin
    # was never asked (answered 504, named so the origin is not blamed).
    POOL_WAIT = "pool-wait"
    # An https origin's TLS handshake failed (its certificate did not verify,
    # or it refused ours): answered 502, named apart so the fix is looked for
    # in certificates, not in the network.
    TLS = "tls"


class OriginError(Exception):
    """The origin gave no usable response."""

    def __init__(self, kind: OriginFailure, detail: str) -> None:
        super().__init__(f"origin {kind}: {detail}")
        self.kind = kind
        self.detail = detail


# The same TLS failure is logged at most this often (seconds): with an expired
# certificate every request fails; warmproxy_origin_errors_total{reason="tls"}
# counts each of them.
_TLS_LOG_INTERVAL = 10.0


# aiohttp's message for a head with more header fields than its max_headers;
# it raises the same class for any malformed head, so only the text tells.
_TOO_MANY_FIELDS = "Too many headers"


def _head_too_large(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is the response parser's refusal of
    a head over its size bounds.

    aiohttp wraps the parser's error twice (ClientResponseError from
    HttpProcessingError from LineTooLong), so the chain of causes is walked.
    """
    cause: BaseException | None = exc
    for _ in range(4):
        if cause is None:
            return False
        if isinstance(cause, LineTooLong):
            return True
        if isinstance(cause, BadHttpMessage) and cause.message.startswith(_TOO_MANY_FIELDS):
            return True
        cause = cause.__cause__
    return False


class OriginClient:
    """Pooled keep-alive HTTP client for the configured origin."""

    def __init__(self, settings: ProxySettings, metrics: ProxyMetrics) -> None:
        parts = urlsplit(settings.origin)
        self.origin = settings.origin
        self.authority = parts.netloc
        self._scheme = parts.scheme
        self._metrics = metrics
        self._settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._ws_session: aiohttp.ClientSession | None = None
        # https: one SSL context for every connection (requests, WebSockets,
        # warm and sitemap fetches all come through here), and the name sent
        # in SNI and checked against the certificate when it is not the host.
        self._ssl: ssl.SSLContext | None = None
        self._server_hostname: str | None = None
        if self._scheme == "https":
            self._ssl = client_context(
                verify=settings.origin_verify,
                ca_file=settings.origin_ca_file,
                client_cert=settings.origin_client_cert,
                client_key=settings.origin_client_key,
            )
            self._server_hostname = settings.origin_server_name or None
        self._tls_logged: tuple[str, float] | None = None
        # The duration histogram per purpose: looking a labelled child up
        # costs more than observing, on every request.
        self._durations: dict[str, Histogram] = {}

    def _url(self, path_qs: str) -> URL:
        # Only origin-form targets reach here (the handler rewrites or refuses
        # others); anything else would let a client pick the host we connect to.
        if not path_qs.startswith("/"):
            raise ValueError(f"not an origin-form target: {path_qs!r}")
        if _NEEDS_PARSING.isdisjoint(path_qs):
            # The same URL as parsing origin + path_qs gives, built from the
            # known parts: parsing the whole string again cost more than
            # anything else in building the request.
            path, _, query = path_qs.partition("?")
            return URL.build(
                scheme=self._scheme,
                authority=self.authority,
                path=path,
                query_string=query,
                encoded=True,
            )
        return URL(self.origin + path_qs, encoded=True)

    async def start(self) -> None:
        if self._ssl is not None and not self._settings.origin_verify:
            log.warning(
                "TLS certificate verification is OFF for origin %s (proxy.origin_verify = "
                "false): anyone on the network path can impersonate it",
                self.origin,
            )
        self._session = self._new_session(limit=self._settings.max_origin_connections)
        # WebSockets hold a connection for their whole life: they get their own
        # pool, so open sockets can never starve ordinary requests.
        self._ws_session = self._new_session(limit=0)

    def _new_session(self, *, limit: int) -> aiohttp.ClientSession:
        settings = self._settings
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=limit, ttl_dns_cache=300, ssl=self._ssl if self._ssl is not None else True
            ),
            timeout=aiohttp.ClientTimeout(
                total=None,
                # Waiting for a free pooled connection plus connecting: a full
                # pool ends in a 504 instead of an endless wait.
                connect=settings.pool_timeout + settings.connect_timeout,
                sock_connect=settings.connect_timeout,
                sock_read=settings.read_timeout,
            ),
            # Bodies pass through byte for byte, compressed or not.
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            # Only the client's own headers go to the origin.
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            # aiohttp's 8190-byte default is below what real origins send
            # (long Content-Security-Policy, Link or Set-Cookie fields).
            max_line_size=settings.max_origin_header_size,
            max_field_size=settings.max_origin_header_size,
            trace_configs=[_pool_wait_trace()],
        )

    async def close(self) -> None:
        for session in (self._session, self._ws_session):
            if session is not None:
                await session.close()
        self._session = self._ws_session = None

    async def request(
        self,
        method: str,
        path_qs: str,
        headers: list[tuple[str, str]],
        *,
        body: AsyncIterable[bytes] | bytes | None = None,
        purpose: str,
    ) -> aiohttp.ClientResponse:
        """Send a request; the caller reads the body and releases the response.

        Raises OriginError when no response head arrives.
        """
        assert self._session is not None, "OriginClient.start() was not awaited"
        url = self._url(path_qs)
        started = time.perf_counter()
        queued = _Queued()
        try:
            response = await self._session.request(
                method,
                url,
                headers=headers,
                data=body,
                allow_redirects=False,
                trace_request_ctx=queued,
                server_hostname=self._server_hostname,
            )
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            if queued.waiting:
                self._metrics.origin_errors.labels(OriginFailure.POOL_WAIT).inc()
                raise OriginError(
                    OriginFailure.POOL_WAIT,
                    "no origin connection came free within proxy.pool_timeout",
                ) from exc
            self._metrics.origin_errors.labels(OriginFailure.TIMEOUT).inc()
            raise OriginError(OriginFailure.TIMEOUT, str(exc) or "no response in time") from exc
        except (aiohttp.ClientError, OSError) as exc:
            if _head_too_large(exc):
                raise self._head_too_large(method, path_qs) from exc
            tls = tls_failure(exc)
            if tls is not None:
                raise self._tls_failed(tls) from exc
            self._metrics.origin_errors.labels(OriginFailure.UNREACHABLE).inc()
            raise OriginError(OriginFailure.UNREACHABLE, str(exc) or type(exc).__name__) from exc
        duration = self._durations.get(purpose)
        if duration is None:
            duration = self._durations[purpose] = self._metrics.origin_duration.labels(purpose)
        duration.observe(time.perf_counter() - started)
        return response

    def _tls_failed(self, detail: str) -> OriginError:
        self._metrics.origin_errors.labels(OriginFailure.TLS).inc()
        now = time.monotonic()
        last = self._tls_logged
        if last is None or last[0] != detail or now - last[1] >= _TLS_LOG_INTERVAL:
            self._tls_logged = (detail, now)
            log.warning("%s (origin %s)", detail, self.origin)
        return OriginError(OriginFailure.TLS, detail)

    def _head_too_large(self, method: str, path_qs: str) -> OriginError:
        self._metrics.origin_errors.labels(OriginFailure.HEAD_TOO_LARGE).inc()
        limit = self._settings.max_origin_header_size
        # Neither the parser's own message (it quotes the field's start) nor
        # the query is logged: either may hold a cookie or a token.
        path = path_qs.partition("?")[0][:200]
        detail = (
            f"response head to {method} {path} has a status line or header "
            f"field over proxy.max_origin_header_size ({limit} bytes) or too many fields"
        )
        log.warning("origin response head too large: %s", detail)
        return OriginError(OriginFailure.HEAD_TOO_LARGE, detail)

    async def websocket(
        self, path_qs: str, headers: list[tuple[str, str]], protocols: list[str]
    ) -> aiohttp.ClientWebSocketResponse:
        """A WebSocket to the origin for a client's upgrade request.

        Raises OriginError when the origin cannot be reached or refuses the upgrade.
        """
        assert self._ws_session is not None, "OriginClient.start() was not awaited"
        url = self._url(path_qs)
        try:
            return await self._ws_session.ws_connect(
                url,
                headers=headers,
                protocols=protocols,
                # Idle sockets are normal for WebSockets: no read timeout once open;
                # pings keep dead peers from holding them forever.
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=10.0),
                heartbeat=30.0,
                autoclose=False,
                autoping=True,
                compress=0,
                server_hostname=self._server_hostname,
            )
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise OriginError(OriginFailure.TIMEOUT, "websocket handshake timed out") from exc
        except aiohttp.WSServerHandshakeError as exc:
            raise OriginError(OriginFailure.UNREACHABLE, f"upgrade refused: {exc.status}") from exc
        except (aiohttp.ClientError, OSError) as exc:
            if _head_too_large(exc):
                raise self._head_too_large("GET", path_qs) from exc
            tls = tls_failure(exc)
            if tls is not None:
                raise self._tls_failed(tls) from exc
            raise OriginError(OriginFailure.UNREACHABLE, str(exc) or type(exc).__name__) from exc


async def read_body(response: aiohttp.ClientResponse, limit: int) -> tuple[bytes, bool]:
    """Up to ``limit`` bytes of the body; ``complete`` False when more remain.

    Raises OriginError when the origin stalls past the read timeout or drops
    the connection mid-body.
    """
    length = response.content_length
    chunks: list[bytes] = []
    size = 0
    try:
        if length is not None and length <= limit:
            # The message framing bounds the body: read it whole, without the
            # per-chunk async iteration (a visible cost on every fill).
            return await response.content.read(), True
        async for chunk in response.content.iter_any():
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                return b"".join(chunks), False
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise OriginError(OriginFailure.TIMEOUT, "body read timed out") from exc
    except (aiohttp.ClientError, OSError) as exc:
        tls = tls_failure(exc)
        if tls is not None:
            raise OriginError(OriginFailure.TLS, f"body read failed: {tls}") from exc
        raise OriginError(OriginFailure.UNREACHABLE, f"body read failed: {exc}") from exc
    return b"".join(chunks), True


class _Queued:
    """Whether a request waits for a free pooled connection (told by aiohttp's
    trace signals), so a timeout there is named a pool wait, not the origin's."""

    __slots__ = ("waiting",)

    def __init__(self) -> None:
        self.waiting = False


async def _queued_start(
    _session: aiohttp.ClientSession,
    context: SimpleNamespace,
    _params: aiohttp.TraceConnectionQueuedStartParams,
) -> None:
    if isinstance(context.trace_request_ctx, _Queued):
        context.trace_request_ctx.waiting = True


async def _queued_end(
    _session: aiohttp.ClientSession,
    context: SimpleNamespace,
    _params: aiohttp.TraceConnectionQueuedEndParams,
) -> None:
    if isinstance(context.trace_request_ctx, _Queued):
        context.trace_request_ctx.waiting = False


def _pool_wait_trace() -> aiohttp.TraceConfig:
    trace = aiohttp.TraceConfig()
    trace.on_connection_queued_start.append(_queued_start)
    trace.on_connection_queued_end.append(_queued_end)
    return trace
