"""The warming control API (DESIGN §5): JSON under ``/cache/warming``.

Every body in and out goes through the models of :mod:`proxy.openapi`, the
same ones the OpenAPI document is generated from, so the two cannot drift.
A bad request gets a 400 naming the field; nothing is half-applied.

The listener guards itself against browsers (:func:`guard_middleware`): a
page on another site must not drive a loopback API that has no token, by a
cross-site POST or by DNS rebinding.  When a token is configured every route
here needs ``Authorization: Bearer <token>``, compared in constant time; the
token is never logged.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import math
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import orjson
from aiohttp import hdrs, web
from pydantic import BaseModel, ValidationError

from proxy.cache_report import cache_report
from proxy.openapi import (
    MAX_HOT_N,
    MAX_MISSED_N,
    MAX_RUN_ID_CHARS,
    PREFIX,
    CacheReport,
    HotData,
    PurgeBody,
    Purged,
    Reloaded,
    ReloadRefusal,
    RunProgress,
    RunStatus,
    ScheduleBody,
    ScheduleDocument,
    StartBody,
    Stats,
    Status,
    Stopped,
    Timeline,
    WarmKeyBody,
    WarmPatternBody,
    document,
)
from proxy.purge import By
from proxy.reload import ReloadRefused
from proxy.store.base import StoreError
from warmer.executor import Run
from warmer.schedule_store import ScheduleStateError
from warmer.service import BadRequest, RunConflict, Warmer

__all__ = ["DASHBOARD", "PREFIX", "ROUTES", "add_routes", "auth_middleware", "guard_middleware"]

log = logging.getLogger(__name__)

DASHBOARD = f"{PREFIX}/dashboard"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ShapeError(Exception):
    """A response did not fit its documented model: a bug, answered with a 500."""


def respond(model: type[BaseModel], data: Any, status: int = 200) -> web.Response:
    """``data`` as ``model`` says, as JSON: the document's shape is the answer's."""
    try:
        shaped = model.model_validate(data)
    except ValidationError as exc:
        # Where and what, never the values (a schedule may hold a DSN).
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_input=False)
        )
        raise ShapeError(f"{model.__name__}: {problems}") from None
    body = shaped.model_dump_json(exclude_unset=True)
    return web.Response(text=body, status=status, content_type="application/json")


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _error(status: int, message: str, field: str | None = None) -> web.Response:
    body: dict[str, Any] = {"error": message}
    if field is not None:
        body["field"] = field
    return _json(body, status)


def _validation_error(exc: ValidationError) -> web.Response:
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "body"
    return _error(400, f"{field}: {first['msg']}", field)


class UnsupportedMediaType(Exception):
    """A body that is not declared as JSON."""


async def _json_body(request: web.Request) -> Any:
    """The request's JSON body: required, declared ``application/json``, parsed.

    The media type is required so that a browser cannot send one from
    another site without a CORS preflight (a ``text/plain`` form post needs
    none), and a preflight gets no CORS headers here.
    """
    raw = await request.read()  # 413 beyond client_max_size
    if not raw:
        raise BadRequest("body", "a JSON body is required")
    if request.content_type != "application/json":
        raise UnsupportedMediaType(request.content_type)
    try:
        return _integral_numbers(orjson.loads(raw))
    except orjson.JSONDecodeError as exc:
        raise BadRequest("body", f"body is not valid JSON: {exc}") from None


def _integral_numbers(document: Any) -> Any:
    """``document`` with every number of zero fraction (``5.0``) as an int.

    JSON has one number type: ``5.0`` is the integer 5 (JSON Schema's
    "integer" says so too), while the request models are strict, refusing
    ``"5"`` and ``true``.  Walked without recursion (a body nests up to
    orjson's limit, deeper than Python's stack).
    """
    if isinstance(document, float) and document.is_integer():
        return int(document)
    pending = [document] if isinstance(document, dict | list) else []
    while pending:
        node = pending.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in items:  # replacing a value, never adding a key
            if isinstance(value, float) and value.is_integer():
                node[key] = int(value)
            elif isinstance(value, dict | list):
                pending.append(value)
    return document


def _warmer(request: web.Request) -> Warmer:
    from proxy.control import WARMPROXY_KEY

    return request.app[WARMPROXY_KEY].warmer


async def _run_accepted(warmer: Warmer, run: Run) -> web.Response:
    await warmer.run_settled(run)  # its id is then known to every replica
    return respond(RunStatus, run.progress.to_status(warmer.now()), 202)


# Query parameters as JSON writes numbers (no "inf", "nan", "1_000" or spaces,
# which float() would take).
_INTEGER = re.compile(r"[0-9]{1,9}")
_NUMBER = re.compile(r"-?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")


def _query_int(request: web.Request, name: str, default: int) -> int:
    value = request.query.get(name)
    if value is None:
        return default
    if not _INTEGER.fullmatch(value):
        raise BadRequest(name, f"{name} must be an integer")
    return int(value)


def _query_number(request: web.Request, name: str) -> float | None:
    value = request.query.get(name)
    if value is None:
        return None
    number = float(value) if len(value) <= 64 and _NUMBER.fullmatch(value) else math.nan
    if not math.isfinite(number):
        raise BadRequest(name, f"{name} must be a number (seconds)")
    return number


async def start(request: web.Request) -> web.Response:
    warmer = _warmer(request)
    body = StartBody.model_validate(await _json_body(request))
    await warmer.refresh_runs()  # a run of another replica conflicts too
    run = warmer.start(
        body.strategy, sources=body.sources, priority=body.priority, limit=body.limit
    )
    return await _run_accepted(warmer, run)


async def stop(request: web.Request) -> web.Response:
    if await request.read():
        raise BadRequest("body", "stop takes no body")
    warmer = _warmer(request)
    runs = await warmer.stop()
    return respond(Stopped, {"stopped": [r.id for r in runs], "status": await _status(request)})


async def _status(request: web.Request) -> dict[str, Any]:
    """The warmer's status and the fleet's replicas."""
    from proxy.control import WARMPROXY_KEY

    proxy = request.app[WARMPROXY_KEY]
    await proxy.warmer.refresh_runs()  # the fleet's runs, as of now
    body = proxy.warmer.status()
    body["replicas"] = await proxy.fleet.replicas()
    return body


async def status(request: web.Request) -> web.Response:
    return respond(Status, await _status(request))


async def progress(request: web.Request) -> web.Response:
    warmer = _warmer(request)
    run_id = request.query.get("run_id")
    if run_id is not None and len(run_id) > MAX_RUN_ID_CHARS:
        raise BadRequest("run_id", f"must be at most {MAX_RUN_ID_CHARS} characters")
    await warmer.refresh_runs()  # the fleet's runs, as of now
    if run_id is None:
        return respond(RunProgress, warmer.progress())
    run = warmer.find_run(run_id)
    if run is None:
        return _error(404, f"no run {run_id!r} (only the last runs are kept)", "run_id")
    return respond(RunProgress, run.progress.to_progress(warmer.now()))


async def warm_key(request: web.Request) -> web.Response:
    warmer = _warmer(request)
    body = WarmKeyBody.model_validate(await _json_body(request))
    priority = body.priority or warmer.default_priority
    if body.urls is not None and body.url is None:
        run = warmer.warm_urls(body.urls, priority, "bulk")
    elif body.url is not None and body.urls is None:
        run = warmer.warm_urls([body.url], priority, "key")
    else:
        raise BadRequest("url", "give either url (one path) or urls (a list of paths)")
    return await _run_accepted(warmer, run)


async def warm_pattern(request: web.Request) -> web.Response:
    warmer = _warmer(request)
    body = WarmPatternBody.model_validate(await _json_body(request))
    run = await warmer.warm_pattern(
        body.pattern, body.priority or warmer.default_priority, body.limit
    )
    return await _run_accepted(warmer, run)


async def purge(request: web.Request) -> web.Response:
    """Purge a path, a glob or a tag (proxy/purge.py decides what that reaches)."""
    from proxy.control import WARMPROXY_KEY

    proxy = request.app[WARMPROXY_KEY]
    body = PurgeBody.model_validate(await _json_body(request))
    selectors: tuple[tuple[By, str | None], ...] = (
        ("path", body.path),
        ("pattern", body.pattern),
        ("tag", body.tag),
    )
    given = [(by, value) for by, value in selectors if value is not None]
    if len(given) != 1:
        raise BadRequest("path", "give exactly one of path, pattern or tag")
    (by, value) = given[0]
    try:
        outcome = await proxy.purger.purge(
            by, value, soft=body.soft, rewarm=body.rewarm, priority=body.priority
        )
    except StoreError as exc:
        log.warning("purge failed part-way: %s", exc)
        return _error(503, "the cache store failed part-way: some entries may be purged; retry")
    run = outcome.rewarm
    return respond(
        Purged,
        {
            "purged": outcome.purged,
            "soft": body.soft,
            "rewarm": None if run is None else run.progress.to_status(proxy.warmer.now()),
        },
    )


async def hot_data(request: web.Request) -> web.Response:
    warmer = _warmer(request)
    n = _query_int(request, "n", 20)
    if not 1 <= n <= MAX_HOT_N:
        raise BadRequest("n", f"must be between 1 and {MAX_HOT_N}")
    window = _query_number(request, "window")
    if window is not None and window not in warmer.tracker_windows:
        raise BadRequest("window", f"must be one of {sorted(warmer.tracker_windows)}")
    return respond(HotData, warmer.hot_data(n, window))


async def cache(request: web.Request) -> web.Response:
    """The cache side: latency percentiles, origin health, store fill, top missed."""
    from proxy.control import WARMPROXY_KEY

    proxy = request.app[WARMPROXY_KEY]
    n = _query_int(request, "n", 10)
    if not 1 <= n <= MAX_MISSED_N:
        raise BadRequest("n", f"must be between 1 and {MAX_MISSED_N}")
    window = _query_number(request, "window")
    if window is not None and window not in proxy.warmer.tracker_windows:
        raise BadRequest("window", f"must be one of {sorted(proxy.warmer.tracker_windows)}")
    return respond(CacheReport, await cache_report(proxy, n, window))


async def get_schedule(request: web.Request) -> web.Response:
    return respond(ScheduleDocument, _warmer(request).schedule_document())


async def post_schedule(request: web.Request) -> web.Response:
    warmer = _warmer(request)
    body = ScheduleBody.model_validate(await _json_body(request))
    try:
        await warmer.replace_schedule(body.schedule_only())
    except ScheduleStateError as exc:
        return _error(503, f"schedule not changed: it could not be saved: {exc}")
    return respond(ScheduleDocument, warmer.schedule_document())


async def stats(request: web.Request) -> web.Response:
    """Summed over the fleet's replicas with the Redis store (proxy/fleet_stats.py)."""
    from proxy.control import WARMPROXY_KEY

    return respond(Stats, await request.app[WARMPROXY_KEY].fleet_stats.stats())


async def timeline(request: web.Request) -> web.Response:
    warmer = _warmer(request)
    span = warmer.timeline.span
    seconds = _query_number(request, "seconds")
    if seconds is None:
        seconds = span
    if not 0 < seconds <= span:
        raise BadRequest("seconds", f"must be > 0 and at most {span:g} (what is kept)")
    return respond(Timeline, warmer.timeline_data(seconds))


async def reload(request: web.Request) -> web.Response:
    """Read the configuration again and apply what can change live (proxy/reload.py)."""
    if await request.read():
        raise BadRequest("body", "reload takes no body")
    from proxy.control import WARMPROXY_KEY

    try:
        result = await request.app[WARMPROXY_KEY].reload()
    except ReloadRefused as exc:
        body = {"error": "configuration not reloaded; nothing changed", "errors": exc.errors}
        return respond(ReloadRefusal, body, 400)
    return respond(Reloaded, result.to_json())


async def openapi(request: web.Request) -> web.Response:
    warmer = _warmer(request)
    levels = tuple(warmer.config.levels)
    return _json(document(levels, tuple(sorted(warmer.tracker_windows))))


#: (method, path, handler): the routes, also read by the OpenAPI test.
ROUTES: list[tuple[str, str, Handler]] = [
    ("POST", f"{PREFIX}/start", start),
    ("POST", f"{PREFIX}/stop", stop),
    ("GET", f"{PREFIX}/status", status),
    ("GET", f"{PREFIX}/progress", progress),
    ("POST", f"{PREFIX}/warm-key", warm_key),
    ("POST", f"{PREFIX}/warm-pattern", warm_pattern),
    ("POST", f"{PREFIX}/purge", purge),
    ("GET", f"{PREFIX}/hot-data", hot_data),
    ("GET", f"{PREFIX}/cache", cache),
    ("GET", f"{PREFIX}/schedule", get_schedule),
    ("POST", f"{PREFIX}/schedule", post_schedule),
    ("GET", f"{PREFIX}/stats", stats),
    ("GET", f"{PREFIX}/timeline", timeline),
    ("POST", f"{PREFIX}/reload", reload),
    ("GET", f"{PREFIX}/openapi.json", openapi),
]


def _bearer(authorization: str) -> bytes:
    """The credentials of a ``Bearer`` Authorization value (b"" if it is not one).

    The auth-scheme is case-insensitive (RFC 9110 §11.1): ``bearer`` and
    ``BEARER`` are Bearer; one or more spaces separate it from the token.
    """
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return b""
    return credentials.strip(" ").encode()


def auth_middleware(token: str) -> Any:
    """Bearer-token check for the control API routes.

    Health, metrics and the dashboard's page and assets stay open: the page
    holds no data and no secret, it asks for the token and sends it with each
    API call it makes.
    """
    expected = token.encode()

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if (
            token
            and path.startswith(PREFIX)
            and not (request.method in ("GET", "HEAD") and _is_dashboard(path))
        ):
            given = _bearer(request.headers.get(hdrs.AUTHORIZATION, ""))
            if not given or not hmac.compare_digest(given, expected):
                response = _error(401, "missing or wrong bearer token")
                response.headers[hdrs.WWW_AUTHENTICATE] = 'Bearer realm="warmproxy"'
                return response
        return await handler(request)

    return middleware


def _is_dashboard(path: str) -> bool:
    return path == DASHBOARD or path.startswith(DASHBOARD + "/")


def _split_host(value: str) -> tuple[str, int | None] | None:
    """(name, port) of a ``Host`` value or an origin's authority; None if malformed."""
    value = value.strip().lower()
    if value.startswith("["):
        name, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return None
        port_text = rest[1:]
    else:
        name, _, port_text = value.partition(":")
    if port_text and not (port_text.isdigit() and len(port_text) <= 5):
        return None
    return name.removesuffix("."), int(port_text) if port_text else None


def _is_loopback_name(name: str, own: frozenset[str]) -> bool:
    if name in own:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _same_origin(origin: str, host: str | None) -> bool:
    """Whether the ``Origin`` (RFC 6454 §7) names the host and port the
    request was sent to (its ``Host``)."""
    if host is None or origin == "null":
        return False
    parts = urlsplit(origin)
    expected = _split_host(host)
    if parts.scheme not in _DEFAULT_PORTS or parts.hostname is None or expected is None:
        return False
    try:
        origin_port = parts.port or _DEFAULT_PORTS[parts.scheme]
    except ValueError:
        return False
    name, port = expected
    # A Host without a port (behind a TLS proxy, say) is the origin's default port.
    return parts.hostname.removesuffix(".") == name and (
        port == origin_port or (port is None and origin_port == _DEFAULT_PORTS[parts.scheme])
    )


def guard_middleware(listen_host: str, *, token: bool) -> Any:
    """The listener's defence against browsers, on every route it serves.

    - An ``Origin`` other than the listener's own (the request's ``Host``) is
      a page of another site: 403, token or not.
    - Without a token (the listener is then on loopback, the configuration
      makes sure), ``Host`` must be one of the listener's names: its listen
      address, ``localhost`` or a loopback address.  A page on a name that an
      attacker's DNS points at 127.0.0.1 (DNS rebinding) sends its own name
      and is refused.  With a token, any ``Host`` is accepted (behind a load
      balancer or in a pod it is whatever the clients call the listener): the
      token is what a page cannot have.
    """
    own = frozenset({"localhost", listen_host.strip("[]").lower()})

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        host = request.headers.get(hdrs.HOST)
        if not token and host is not None:
            parsed = _split_host(host)
            if parsed is None or not _is_loopback_name(parsed[0], own):
                return _error(
                    403,
                    f"Host {host[:100]!r} is not a name of this control listener "
                    "(without a token it answers only to its own loopback names)",
                )
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is not None and not _same_origin(origin, host):
            return _error(403, f"cross-origin request from {origin[:100]!r} refused")
        return await handler(request)

    return middleware


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refusals as JSON: 400 with the field, 409 for a run conflict, 415 for a
    body not declared JSON, and the router's and the body reader's (404, 405,
    413) in the same shape."""
    try:
        return await handler(request)
    except BadRequest as exc:
        return _error(400, str(exc), exc.field)
    except ValidationError as exc:
        return _validation_error(exc)
    except UnsupportedMediaType as exc:
        return _error(
            415, f"the body must be sent as Content-Type: application/json, not {exc!s:.100}"
        )
    except RunConflict as exc:
        return _error(409, str(exc))
    except ShapeError as exc:
        log.error("control API answer to %s does not fit its model: %s", request.path, exc)
        return _error(500, "internal error: the answer did not fit its documented shape")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _http_error(request, exc)


def _http_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    if isinstance(exc, web.HTTPNotFound):
        message = f"no such endpoint: {request.method} {request.path}"
    elif isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        message = f"{request.method} is not allowed on {request.path}; allowed: {allowed}"
    else:  # e.g. 413: "Maximum request body size N exceeded, actual body size M"
        message = exc.text or exc.reason
    response = _error(exc.status, message)
    for name in ("Allow", "WWW-Authenticate", "Retry-After"):
        if name in exc.headers:
            response.headers[name] = exc.headers[name]
    return response


def add_routes(app: web.Application) -> None:
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
