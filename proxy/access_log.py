"""One structured log line per proxied request, written off the request path.

It is an observer of the :class:`~proxy.observe.EventHub`, like the warmer: the
request is answered before its line is written, and a slow log sink delays
lines, never responses.  Off by default (``[logging] access_log``): on a busy
proxy a line per request costs more than serving a hit.
"""

from __future__ import annotations

import logging

from proxy.handler import new_request_id, usable_request_id
from proxy.observe import AccessEvent

log = logging.getLogger("warmproxy.access")


def log_access(event: AccessEvent) -> None:
    """Log ``event`` with its request id, cache outcome and timing."""
    request_id = event.request_id if usable_request_id(event.request_id) else new_request_id()
    log.info(
        "request",
        extra={
            "request_id": request_id,
            "method": event.method,
            "path": event.url[:2048],
            "host": event.host,
            "status": event.status,
            "cache": str(event.outcome),
            "warmed": event.warmed,
            "latency_ms": round(event.latency * 1000, 3),
            "bytes": event.bytes,
            "client": event.client[:256],
        },
    )
