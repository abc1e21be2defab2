"""The operator's web dashboard on the control listener: one page and its assets.

The page is plain HTML, CSS and JavaScript (no build step) that polls the
control API: the cache side (what clients got, latency, store fill, origin
health, purges) and the warming side.  It holds no data and no secret, so it is served without
the bearer token; the API calls it makes carry the token the operator types
in.  Only the files listed in :data:`ASSETS` are served (nothing else under
the directory is reachable, whatever the path), each with a strict
Content-Security-Policy: scripts and styles from this origin only, no inline
code, no framing, no form submissions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from aiohttp import web

from proxy.control_api import DASHBOARD

STATIC: Final = Path(__file__).parent / "dashboard"

#: name under ``/cache/warming/dashboard/`` -> content type; nothing else is served.
ASSETS: Final[dict[str, str]] = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
    "vendor/uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "vendor/uPlot.min.css": "text/css; charset=utf-8",
}

CONTENT_SECURITY_POLICY: Final = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)

HEADERS: Final[dict[str, str]] = {
    # Revalidated on every load (ETag / Last-Modified), so an upgrade shows at once.
    "Cache-Control": "no-cache",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}

#: Placeholder in index.html replaced by the proxy listener's port, so the
#: page's empty states can say where to send traffic.
PORT_PLACEHOLDER: Final = 'data-proxy-port=""'


def add_dashboard_routes(app: web.Application) -> None:
    """``GET /cache/warming/dashboard`` (the page) and its whitelisted assets."""
    page = (STATIC / "index.html").read_text(encoding="utf-8")

    async def index(request: web.Request) -> web.Response:
        from proxy.control import WARMPROXY_KEY

        port = request.app[WARMPROXY_KEY].proxy_port
        body = page.replace(PORT_PLACEHOLDER, f'data-proxy-port="{int(port)}"', 1)
        return web.Response(text=body, content_type="text/html", charset="utf-8", headers=HEADERS)

    async def asset(request: web.Request) -> web.StreamResponse:
        name = request.match_info["file"]
        content_type = ASSETS.get(name)
        if content_type is None:
            raise web.HTTPNotFound(text="no such dashboard file", headers=HEADERS)
        return web.FileResponse(STATIC / name, headers={**HEADERS, "Content-Type": content_type})

    app.router.add_get(DASHBOARD, index)
    app.router.add_get(DASHBOARD + "/{file:.+}", asset)
