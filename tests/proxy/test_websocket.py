"""WebSockets pass through the proxy: messages both ways, subprotocols, closes, idleness."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

from tests.proxy.conftest import url


def ws_origin(origin, *, protocols: tuple[str, ...] = ()) -> list[str]:
    seen: list[str] = []

    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=protocols)
        await ws.prepare(request)
        seen.append(request.headers.get("X-Forwarded-For", ""))
        async for message in ws:
            if message.type is aiohttp.WSMsgType.TEXT:
                if message.data == "close-please":
                    await ws.close(code=4001)
                    break
                await ws.send_str(f"echo {message.data}")
            elif message.type is aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(message.data[::-1])
        return ws

    origin.handle("/ws", echo)
    return seen


async def test_messages_flow_both_ways(origin, proxy, client) -> None:
    seen = ws_origin(origin)
    async with client.ws_connect(url(proxy, "/ws")) as ws:
        await ws.send_str("hi")
        assert (await ws.receive(timeout=5)).data == "echo hi"
        await ws.send_bytes(b"\x00\x01\x02")
        assert (await ws.receive(timeout=5)).data == b"\x02\x01\x00"
    assert seen == ["127.0.0.1"]


async def test_subprotocol_is_negotiated_with_the_origin(origin, proxy, client) -> None:
    ws_origin(origin, protocols=("chat.v2",))
    async with client.ws_connect(url(proxy, "/ws"), protocols=("chat.v1", "chat.v2")) as ws:
        assert ws.protocol == "chat.v2"


async def test_origin_close_reaches_the_client(origin, proxy, client) -> None:
    ws_origin(origin)
    async with client.ws_connect(url(proxy, "/ws")) as ws:
        await ws.send_str("close-please")
        message = await ws.receive(timeout=5)
        assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.close_code == 4001


async def test_an_idle_socket_outlives_the_origin_read_timeout(origin, make_proxy, client) -> None:
    ws_origin(origin)
    proxy = await make_proxy(origin.url, proxy={"read_timeout": 0.3})
    async with client.ws_connect(url(proxy, "/ws")) as ws:
        await asyncio.sleep(1.0)
        await ws.send_str("still there")
        assert (await ws.receive(timeout=5)).data == "echo still there"


async def test_refused_upgrade_answers_502(origin, proxy, client) -> None:
    origin.set("/ws", body=b"not a websocket")
    try:
        async with client.ws_connect(url(proxy, "/ws")):
            raise AssertionError("the upgrade should have failed")
    except aiohttp.WSServerHandshakeError as exc:
        assert exc.status == 502


async def test_client_close_reaches_the_origin(origin, proxy, client) -> None:
    closed = asyncio.Event()

    async def watcher(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for _ in ws:
            pass
        closed.set()
        return ws

    origin.handle("/ws", watcher)
    ws = await client.ws_connect(url(proxy, "/ws"))
    await ws.close()
    await asyncio.wait_for(closed.wait(), 5)
