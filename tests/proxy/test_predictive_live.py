"""Predictive warming on the live proxy, as browsers meet it: visitors from
their own addresses page through a compressing, localized origin, and the
page that comes next (one nobody has asked for yet) is warmed in the
variant their browser selects, so their request for it is a hit."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from proxy.app import Warmproxy
from tests.proxy.conftest import ProxyFactory, eventually, url
from tests.proxy.test_warming_api import sections
from tests.variants import BROWSERS, UserAgent, VaryingOrigin


def visitor(address: str) -> aiohttp.ClientSession:
    """A browser on its own address: the proxy tells clients apart by it."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0)))


async def get(
    session: aiohttp.ClientSession,
    proxy: Warmproxy,
    path: str,
    agent: UserAgent,
    host: str = "127.0.0.1",
) -> str:
    """``agent``'s request for ``path``, naming the proxy ``host``."""
    kwargs = agent.request_kwargs()
    headers = {**kwargs["headers"], "Host": f"{host}:{proxy.proxy_port}"}
    async with session.get(
        url(proxy, path), headers=headers, skip_auto_headers=kwargs["skip_auto_headers"]
    ) as response:
        assert response.status == 200
        await response.read()
        return response.headers["Cache-Status"]


async def test_the_next_page_nobody_asked_for_is_warmed_and_hit_by_the_browser(
    varying_origin: VaryingOrigin, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    proxy = await make_proxy(
        varying_origin.url,
        **sections(
            tmp_path,
            # The defaults, with the model switched on (it is off by default).
            strategies={"predictive": {"enabled": True}},
        ),
    )
    # Three visitors, each paging through its own tenant's orders.
    for n in range(3):
        agent = BROWSERS[n % len(BROWSERS)]
        async with visitor(f"127.0.0.{10 + n}") as session:
            for page in range(1, 6):
                await get(session, proxy, f"/api/t/{n}/orders?page={page}", agent)
    # A fourth, on a tenant nobody has visited: after its page 1, page 2 is
    # fetched by the warmer before the visitor asks for it ...
    agent = BROWSERS[1]
    async with visitor("127.0.0.50") as session:
        assert "fwd=uri-miss" in await get(session, proxy, "/api/t/77/orders?page=1", agent)
        await eventually(
            lambda: varying_origin.count("/api/t/77/orders?page=2", warm=True) == 1, within=10
        )
        # ... in the variant this browser selects: its request is a hit,
        # under another name for the proxy than the one page 1 was asked by.
        status = await get(session, proxy, "/api/t/77/orders?page=2", agent, host="localhost")
        assert status.startswith("warmproxy; hit"), status
    assert varying_origin.count("/api/t/77/orders?page=2", warm=False) == 0
    warmed = varying_origin.last("/api/t/77/orders?page=2", warm=True)
    assert "gzip" in warmed.headers.get("Accept-Encoding", "")
