"""WebSocket pass-through: an upgrade request becomes two sockets pumped into each other.

``Upgrade`` is hop-by-hop (RFC 9110 §7.8), so the proxy does not forward it;
it opens its own WebSocket to the origin and relays messages both ways.
"""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
from aiohttp import web

# Handshake fields generated afresh for the origin connection (RFC 6455 §4.1).
HANDSHAKE_FIELDS = frozenset(
    {"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions"}
)


def is_upgrade(request: web.BaseRequest) -> bool:
    """A WebSocket opening handshake (RFC 6455 §4.2.1)."""
    return request.headers.get("Upgrade", "").lower() == "websocket"


def requested_protocols(request: web.BaseRequest) -> list[str]:
    value = ",".join(request.headers.getall("Sec-WebSocket-Protocol", []))
    return [p.strip() for p in value.split(",") if p.strip()]


async def _pump(
    source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
) -> None:
    """Copy data messages from ``source`` to ``sink`` until ``source`` closes."""
    async for message in source:
        if message.type is aiohttp.WSMsgType.TEXT:
            await sink.send_str(message.data)
        elif message.type is aiohttp.WSMsgType.BINARY:
            await sink.send_bytes(message.data)
        elif message.type is aiohttp.WSMsgType.CLOSE:
            break


async def relay(
    request: web.BaseRequest, upstream: aiohttp.ClientWebSocketResponse
) -> web.WebSocketResponse:
    """Accept the client's socket and relay messages until either side closes."""
    downstream = web.WebSocketResponse(
        protocols=(upstream.protocol,) if upstream.protocol else (), autoping=True
    )
    await downstream.prepare(request)

    async def client_to_origin() -> None:
        await _pump(downstream, upstream)
        await upstream.close(code=downstream.close_code or aiohttp.WSCloseCode.OK)

    async def origin_to_client() -> None:
        await _pump(upstream, downstream)
        await downstream.close(code=upstream.close_code or aiohttp.WSCloseCode.OK)

    pumps = [asyncio.ensure_future(client_to_origin()), asyncio.ensure_future(origin_to_client())]
    try:
        _, pending = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        # One side is done; give the other a moment to pass the close on.
        if pending:
            await asyncio.wait(pending, timeout=5.0)
    finally:
        for pump in pumps:
            pump.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        with contextlib.suppress(Exception):
            await upstream.close()
        with contextlib.suppress(Exception):
            await downstream.close()
    return downstream
