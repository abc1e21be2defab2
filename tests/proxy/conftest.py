"""A programmable origin that counts requests, and the proxy in front of it on real ports."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDictProxy

from proxy.app import Warmproxy
from proxy.config import load_settings
from tests.variants import VaryingOrigin

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Seen:
    method: str
    path: str
    headers: CIMultiDictProxy[str]
    body: bytes


@dataclass
class Origin:
    """An origin whose responses each test sets, recording every request it gets."""

    url: str = ""
    routes: dict[str, Handler] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)

    def set(
        self,
        path: str,
        *,
        status: int = 200,
        headers: dict[str, str] | list[tuple[str, str]] | None = None,
        body: bytes = b"hello",
        delay: float = 0.0,
        gate: Callable[[], bool] | None = None,
    ) -> None:
        """Answer ``path`` so; with ``gate``, only once it holds (e.g. all requests arrived)."""

        async def handler(request: web.Request) -> web.StreamResponse:
            if gate is not None:
                await eventually(gate, within=10)
            if delay:
                await asyncio.sleep(delay)
            return web.Response(status=status, body=body, headers=_multi(headers))

        self.routes[path] = handler

    def handle(self, path: str, handler: Handler) -> None:
        self.routes[path] = handler

    def count(self, path: str | None = None, method: str | None = None) -> int:
        return sum(
            1
            for s in self.seen
            if (path is None or s.path == path) and (method is None or s.method == method)
        )

    def last(self, path: str) -> Seen:
        return [s for s in self.seen if s.path == path][-1]


def _multi(headers: dict[str, str] | list[tuple[str, str]] | None) -> Any:
    from multidict import CIMultiDict

    if headers is None:
        return CIMultiDict()
    return CIMultiDict(headers.items() if isinstance(headers, dict) else headers)


@pytest.fixture
async def origin() -> AsyncIterator[Origin]:
    state = Origin()

    async def dispatch(request: web.Request) -> web.StreamResponse:
        small = request.content_length is not None and request.content_length <= 65536
        body = await request.read() if small else b""
        state.seen.append(Seen(request.method, request.path_qs, request.headers, body))
        handler = state.routes.get(request.path_qs) or state.routes.get(request.path)
        if handler is None:
            return web.Response(status=404, text="no such route")
        return await handler(request)

    server = web.Server(dispatch)
    runner = web.ServerRunner(server)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    state.url = f"http://127.0.0.1:{port}"
    yield state
    await runner.cleanup()


ProxyFactory = Callable[..., Awaitable[Warmproxy]]


@pytest.fixture
async def make_proxy() -> AsyncIterator[ProxyFactory]:
    started: list[Warmproxy] = []

    async def factory(origin_url: str, **sections: dict[str, Any]) -> Warmproxy:
        overrides: dict[str, dict[str, Any]] = {
            "proxy": {"origin": origin_url, "listen": "127.0.0.1:0"},
            "control": {"listen": "127.0.0.1:0"},
        }
        for name, values in sections.items():
            overrides.setdefault(name, {}).update(values)
        proxy = Warmproxy(load_settings(None, overrides))
        await proxy.start()
        started.append(proxy)
        return proxy

    yield factory
    for proxy in started:
        await proxy.stop()


@pytest.fixture
async def proxy(origin: Origin, make_proxy: ProxyFactory) -> Warmproxy:
    return await make_proxy(origin.url)


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


def url(proxy: Warmproxy, path: str) -> str:
    return f"http://127.0.0.1:{proxy.proxy_port}{path}"


def client_host(proxy: Warmproxy) -> str:
    """The Host a test client sends to ``proxy`` (keyed only with ``host_keying = "per-host"``)."""
    return f"127.0.0.1:{proxy.proxy_port}"


def key(proxy: Warmproxy, path: str) -> str:
    """The cache key of a test client's request for ``path``: the path (with the
    ``[cache]`` query rules applied) by default, ``//host/path`` per host."""
    return proxy.rules.cache_key(path, client_host(proxy))


def coalesced(proxy: Warmproxy) -> float:
    """How many requests so far waited for another request's origin fetch."""
    value = proxy.metrics.registry.get_sample_value("warmproxy_coalesced_requests_total")
    return value or 0.0


def control_url(proxy: Warmproxy, path: str) -> str:
    return f"http://127.0.0.1:{proxy.control_port}{path}"


async def warming_call(
    client: aiohttp.ClientSession, proxy: Warmproxy, method: str, path: str, body: Any = None
) -> Any:
    """The JSON answer of ``proxy``'s warming API at ``path``, asserting a 2xx."""
    async with client.request(
        method, control_url(proxy, f"/cache/warming/{path}"), json=body
    ) as response:
        assert response.status < 300, await response.text()
        return await response.json()


async def eventually(predicate: Callable[[], bool | Awaitable[bool]], within: float = 5.0) -> None:
    """Poll until ``predicate`` (a function or a coroutine function) holds,
    failing after ``within`` seconds."""
    deadline = asyncio.get_running_loop().time() + within
    while not await _holds(predicate):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def _holds(predicate: Callable[[], bool | Awaitable[bool]]) -> bool:
    result = predicate()
    return bool(await result) if inspect.isawaitable(result) else bool(result)


@pytest.fixture
async def varying_origin() -> AsyncIterator[VaryingOrigin]:
    """An origin answering like a compressing, localized app (``tests.variants``)."""
    state = VaryingOrigin()
    await state.start()
    yield state
    await state.close()
