"""The warming control API (DESIGN §5): JSON under ``/cache/warming``.

Bodies are validated by the pydantic models below, which are also the schemas
of the OpenAPI document (:mod:`proxy.openapi`), so the two cannot drift.  A bad
body gets a 400 naming the field; nothing is half-applied.  When a token is
configured every route here needs ``Authorization: Bearer <token>``, compared
in constant time; the token is never logged.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from warmer.executor import Run
from warmer.schedule_store import ScheduleStateError
from warmer.service import BadRequest, RunConflict, Warmer

if TYPE_CHECKING:
    pass

PREFIX = "/cache/warming"
MAX_BULK = 10_000
DASHBOARD = f"{PREFIX}/dashboard"


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StartBody(_Body):
    """Start a warming run now."""

    strategy: str = Field(description="proactive (scheduled sources), hot, or reactive")
    sources: list[str] | None = Field(None, description="proactive: only these sources")
    priority: str | None = Field(None, description="override the sources' priorities")
    limit: int | None = Field(None, ge=1, le=100_000, description="hot/reactive: how many keys")


class WarmKeyBody(_Body):
    """Warm one path, or a list of paths (bulk), now."""

    url: str | None = Field(None, description="a path on the origin, e.g. /products/42")
    urls: list[str] | None = Field(None, max_length=MAX_BULK, description="bulk: many paths")
    priority: str | None = None


class WarmPatternBody(_Body):
    """Warm every known path matching a glob."""

    pattern: str = Field(min_length=1, description="fnmatch glob over paths, e.g. /products/*")
    priority: str | None = None
    limit: int = Field(10_000, ge=1, le=100_000)


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


async def _body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw:
        return {}
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest("body", f"body is not valid JSON: {exc}") from None


def _warmer(request: web.Request) -> Warmer:
    from proxy.control import WARMPROXY_KEY

    return request.app[WARMPROXY_KEY].warmer


def _run_accepted(warmer: Warmer, run: Run) -> web.Response:
    body = run.progress.to_status(warmer.now())
    return _json(body, 202)


async def start(request: web.Request) -> web.Response:
    warmer = _warmer(request)
    body = StartBody.model_validate(await _body(request))
    run = warmer.start(
        body.strategy, sources=body.sources, priority=body.priority, limit=body.limit
    )
    return _run_accepted(warmer, run)


async def stop(request: web.Request) -> web.Response:
    warmer = _warmer(request)
    runs = await warmer.stop()
    return _json({"stopped": [r.id for r in runs], "status": warmer.status()})


async def status(request: web.Request) -> web.Response:
    return _json(_warmer(request).status())


async def progress(request: web.Request) -> web.Response:
    warmer = _warmer(request)
    run_id = request.query.get("run_id")
    if run_id is None:
        return _json(warmer.progress())
    run = warmer.executor.run(run_id)
    if run is None:
        return _error(404, f"no run {run_id!r} (only the last runs are kept)", "run_id")
    return _json(run.progress.to_progress(warmer.now()))


async def warm_key(request: web.Request) -> web.Response:
    warmer = _warmer(request)
    body = WarmKeyBody.model_validate(await _body(request))
    priority = body.priority or warmer.default_priority
    if (body.url is None) == (body.urls is None):
        raise BadRequest("url", "give either url (one path) or urls (a list of paths)")
    if body.urls is not None:
        if not body.urls:
            raise BadRequest("urls", "must not be empty")
        run = warmer.warm_urls(body.urls, priority, "bulk")
    else:
        assert body.url is not None
        run = warmer.warm_urls([body.url], priority, "key")
    return _run_accepted(warmer, run)


async def warm_pattern(request: web.Request) -> web.Response:
    warmer = _warmer(request)
    body = WarmPatternBody.model_validate(await _body(request))
    if not body.pattern.startswith(("/", "*")):
        raise BadRequest("pattern", "must be a glob over paths, starting with / or *")
    run = await warmer.warm_pattern(
        body.pattern, body.priority or warmer.default_priority, body.limit
    )
    return _run_accepted(warmer, run)


async def hot_data(request: web.Request) -> web.Response:
    warmer = _warmer(request)
    try:
        n = int(request.query.get("n", "20"))
        window = float(request.query["window"]) if "window" in request.query else None
    except ValueError:
        raise BadRequest("n", "n must be an integer and window a number of seconds") from None
    if not 1 <= n <= 10_000:
        raise BadRequest("n", "must be between 1 and 10000")
    if window is not None and window not in warmer.tracker_windows:
        raise BadRequest("window", f"must be one of {sorted(warmer.tracker_windows)}")
    return _json(warmer.hot_data(n, window))


async def get_schedule(request: web.Request) -> web.Response:
    return _json(_warmer(request).schedule_document())


async def post_schedule(request: web.Request) -> web.Response:
    warmer = _warmer(request)
    document = await _body(request)
    try:
        await warmer.replace_schedule(document)
    except ScheduleStateError as exc:
        return _error(503, f"schedule not changed: it could not be saved: {exc}")
    return _json(warmer.schedule_document())


async def stats(request: web.Request) -> web.Response:
    return _json(_warmer(request).stats())


async def timeline(request: web.Request) -> web.Response:
    warmer = _warmer(request)
    span = warmer.timeline.span
    try:
        seconds = float(request.query.get("seconds", str(span)))
    except ValueError:
        raise BadRequest("seconds", "must be a number of seconds") from None
    if not 0 < seconds <= span:
        raise BadRequest("seconds", f"must be > 0 and at most {span:g} (what is kept)")
    return _json(warmer.timeline_data(seconds))


async def openapi(request: web.Request) -> web.Response:
    from proxy.openapi import document

    return _json(document())


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: (method, path, handler): the routes, also read by the OpenAPI test.
ROUTES: list[tuple[str, str, Handler]] = [
    ("POST", f"{PREFIX}/start", start),
    ("POST", f"{PREFIX}/stop", stop),
    ("GET", f"{PREFIX}/status", status),
    ("GET", f"{PREFIX}/progress", progress),
    ("POST", f"{PREFIX}/warm-key", warm_key),
    ("POST", f"{PREFIX}/warm-pattern", warm_pattern),
    ("GET", f"{PREFIX}/hot-data", hot_data),
    ("GET", f"{PREFIX}/schedule", get_schedule),
    ("POST", f"{PREFIX}/schedule", post_schedule),
    ("GET", f"{PREFIX}/stats", stats),
    ("GET", f"{PREFIX}/timeline", timeline),
    ("GET", f"{PREFIX}/openapi.json", openapi),
]


def auth_middleware(token: str) -> Any:
    """Bearer-token check for the control API routes.

    Health, metrics and the dashboard's page and assets stay open: the page
    holds no data and no secret, it asks for the token and sends it with each
    API call it makes.
    """
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if (
            token
            and path.startswith(PREFIX)
            and not (request.method in ("GET", "HEAD") and _is_dashboard(path))
        ):
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                response = _error(401, "missing or wrong bearer token")
                response.headers["WWW-Authenticate"] = 'Bearer realm="warmproxy"'
                return response
        return await handler(request)

    return middleware


def _is_dashboard(path: str) -> bool:
    return path == DASHBOARD or path.startswith(DASHBOARD + "/")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refusals as JSON: 400 with the field, 409 for a run conflict, and the
    router's and the body reader's (404, 405, 413) in the same shape."""
    try:
        return await handler(request)
    except BadRequest as exc:
        return _error(400, str(exc), exc.field)
    except ValidationError as exc:
        return _validation_error(exc)
    except RunConflict as exc:
        return _error(409, str(exc))
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
