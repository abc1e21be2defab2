"""Per-host keying: a warm fetch lands on the host its path's clients use, and a
flood of made-up Host values from one client cannot move it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from proxy.app import Warmproxy
from tests.proxy.conftest import ProxyFactory, control_url, eventually, url
from tests.variants import CHROME, VaryingOrigin

TOKEN = "hosts-token-0123456789"


async def per_host_proxy(
    make_proxy: ProxyFactory, origin: VaryingOrigin, tmp_path: Path
) -> Warmproxy:
    return await make_proxy(
        origin.url,
        proxy={"host_keying": "per-host", "client_id_header": "X-Client-Id"},
        control={"token": TOKEN},
        state={"dir": str(tmp_path / "state")},
        strategies={"reactive": {"enabled": False}},
        execution={"rate_limit": 0},
    )


async def browse(
    client: aiohttp.ClientSession, proxy: Warmproxy, path: str, host: str, who: str
) -> bool:
    headers = {**CHROME.headers, "Host": host, "X-Client-Id": who}
    async with client.get(url(proxy, path), headers=headers, auto_decompress=False) as response:
        await response.read()
        return "; hit" in response.headers.get("Cache-Status", "")


async def test_a_host_flood_from_one_client_leaves_warm_fetches_on_the_real_host(
    varying_origin: VaryingOrigin, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    proxy = await per_host_proxy(make_proxy, varying_origin, tmp_path)
    async with aiohttp.ClientSession(auto_decompress=False) as client:
        # 200 requests of 20 real clients on shop.example...
        for i in range(200):
            await browse(client, proxy, f"/page/{i % 10}", "shop.example", f"user{i % 20}")
        # ...and 2,000 from one client with a made-up host, on the same paths
        # and on the path about to be warmed.
        flood = [
            browse(client, proxy, f"/page/{i % 10}", "evil.example", "attacker")
            for i in range(1000)
        ] + [browse(client, proxy, "/page/new", "evil.example", "attacker") for _ in range(1000)]
        for batch in range(0, len(flood), 100):
            await asyncio.gather(*flood[batch : batch + 100])
        await eventually(lambda: proxy.warmer.tracker.totals().requests >= 2200)

        # Paths the real clients use are warmed for their host only.
        assert proxy.warmer.core.audience.hosts("/page/3") == ["shop.example"]
        # A path only the flooding client asked for: warmed for the real host.
        async with client.post(
            control_url(proxy, "/cache/warming/warm-key"),
            json={"url": "/page/new"},
            headers={"Authorization": f"Bearer {TOKEN}"},
        ) as response:
            assert response.status == 202, await response.text()
        await eventually(lambda: varying_origin.count("/page/new", warm=True) >= 1)
        assert varying_origin.last("/page/new", warm=True).headers["X-Forwarded-Host"] == (
            "shop.example"
        )
        await eventually(lambda: not proxy.warmer.executor.active_runs())
        assert varying_origin.count("/page/new", warm=True) == 1  # not for evil.example
        # A real client of shop.example, the first of /page/new: a hit.
        assert await browse(client, proxy, "/page/new", "shop.example", "user-new")
