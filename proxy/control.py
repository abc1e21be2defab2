"""The control listener: Prometheus metrics, health, and the warming control API."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from proxy.config import parse_hostport
from proxy.control_api import (
    add_routes,
    auth_middleware,
    error_middleware,
    guard_middleware,
    respond,
)
from proxy.dashboard import add_dashboard_routes
from proxy.metrics import CONTENT_TYPE
from proxy.openapi import MAX_BODY_BYTES, Health, Readiness

if TYPE_CHECKING:
    from proxy.app import Warmproxy

WARMPROXY_KEY: web.AppKey[Warmproxy] = web.AppKey("warmproxy")


async def metrics(request: web.Request) -> web.Response:
    proxy = request.app[WARMPROXY_KEY]
    await proxy.refresh_store_stats()
    return web.Response(body=proxy.metrics.render(), headers={"Content-Type": CONTENT_TYPE})


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process serves requests."""
    return respond(Health, {"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: listening, not shutting down, the warm run at start done
    when ``warm_on_start = "before_ready"``, and the cache store answering
    unless ``cache.ready_without_store`` (the default).

    With the store down the proxy still passes every request through.  Every
    replica shares one Redis, so a Redis outage taking them all out of
    readiness would empty the Service and cost every client request: by
    default they stay ready and report the outage (``store_healthy`` here,
    ``warmproxy_store_up``); ``ready_without_store = false`` makes a load
    balancer prefer replicas whose cache works instead.
    """
    proxy = request.app[WARMPROXY_KEY]
    store_ok = proxy.cache.healthy
    warming = proxy.warming_on_start
    store_gates = not proxy.settings.cache.ready_without_store
    ready = proxy.ready and (store_ok or not store_gates) and warming is None
    body = {
        "status": "ready" if ready else "not ready",
        "accepting": proxy.ready,
        "store": proxy.settings.cache.store,
        "store_healthy": store_ok,
        # The warm run of proactive.warm_on_start = "before_ready" still running.
        "warming_on_start": None if warming is None else warming.id,
    }
    return respond(Readiness, body, status=200 if ready else 503)


def build_control_app(proxy: Warmproxy) -> web.Application:
    token = proxy.settings.control.token.get_secret_value()
    listen_host, _ = parse_hostport(proxy.settings.control.listen, what="control.listen")
    app = web.Application(
        # Room for a bulk warm of 10,000 paths or a large schedule, no more.
        client_max_size=MAX_BODY_BYTES,
        middlewares=[
            guard_middleware(listen_host, token=bool(token)),
            auth_middleware(token),
            error_middleware,
        ],
    )
    app[WARMPROXY_KEY] = proxy
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    add_routes(app)
    add_dashboard_routes(app)
    return app
