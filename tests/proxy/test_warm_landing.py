"""Warmed entries land where clients look: the demo origin (which compresses,
``Vary: Accept-Encoding``) behind a proxy on the default configuration (and
one of two replicas on a Redis store, whose runs the fleet fills); after
``warm-key`` or ``warm-pattern``, every first request of a browser-like client
is a hit, whichever host name it uses for the proxy (DESIGN rule 4).

This is the README's ``make demo`` example run as written: warm
``/products/42`` through the control API, then ask for it with ``curl
--compressed`` via ``localhost`` or ``127.0.0.1``.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.app import Warmproxy
from proxy.demo_origin import build_demo_origin
from tests.proxy.conftest import ProxyFactory, control_url, eventually
from tests.variants import BROWSERS, CURL, Answer, UserAgent, fetch

README = Path(__file__).resolve().parents[2] / "README.md"
#: What ``curl --compressed`` sends (curl 7.88 built with brotli and zstd).
CURL_COMPRESSED = UserAgent(
    "curl --compressed",
    {"User-Agent": "curl/7.88.1", "Accept": "*/*", "Accept-Encoding": "deflate, gzip, br, zstd"},
)


@dataclass
class DemoOrigin:
    """The demo origin on a loopback port, recording whether each request
    was a warm fetch (the warmer marks them ``X-Warmproxy-Warm: 1``)."""

    url: str = ""
    seen: list[tuple[str, str, bool]] = field(default_factory=list)  # method, path, warm

    def count(self, path: str, *, warm: bool) -> int:
        return sum(1 for m, p, w in self.seen if m == "GET" and p == path and w == warm)


@pytest.fixture
async def demo() -> AsyncIterator[DemoOrigin]:
    state = DemoOrigin()
    app = build_demo_origin()

    async def record(request: web.BaseRequest, response: web.StreamResponse) -> None:
        state.seen.append((request.method, request.path_qs, "X-Warmproxy-Warm" in request.headers))

    app.on_response_prepare.append(record)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    state.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield state
    await runner.cleanup()


@pytest.fixture(params=["memory", "redis-fleet"])
async def shop(
    request: pytest.FixtureRequest, demo: DemoOrigin, make_proxy: ProxyFactory
) -> Warmproxy:
    """A proxy on the default configuration (listeners on free ports only);
    and one of two replicas sharing a Redis store, whose warm runs are the
    fleet's (either replica may fill an item: what it stores must be what
    the browsers asking this one select)."""
    if request.param == "memory":
        return await make_proxy(demo.url)
    cache = {
        "store": "redis",
        "redis_url": request.getfixturevalue("redis_url"),
        "redis_prefix": request.getfixturevalue("redis_prefix"),
    }
    first = await make_proxy(demo.url, cache={**cache, "replica_name": "a"})
    await make_proxy(demo.url, cache={**cache, "replica_name": "b"})
    return first


def hosts(proxy: Warmproxy) -> list[str]:
    """The names the README's commands use for the proxy."""
    return [f"localhost:{proxy.proxy_port}", f"127.0.0.1:{proxy.proxy_port}"]


async def get(
    client: aiohttp.ClientSession, proxy: Warmproxy, path: str, agent: UserAgent, host: str
) -> Answer:
    """``agent``'s request for ``path``, naming the proxy ``host``."""
    kwargs = agent.request_kwargs()
    headers = {**kwargs["headers"], "Host": host}
    url = f"http://127.0.0.1:{proxy.proxy_port}{path}"
    async with client.get(url, headers=headers, skip_auto_headers=kwargs["skip_auto_headers"]) as r:
        return Answer(r.status, r.headers, await r.read())


async def warm(client: aiohttp.ClientSession, proxy: Warmproxy, call: str, body: Any) -> Any:
    """POST a warming call as the README does and wait for its run to end."""
    async with client.post(
        control_url(proxy, f"/cache/warming/{call}"),
        data=aiohttp.JsonPayload(body),
        headers={"Content-Type": "application/json"},
    ) as response:
        started = await response.json()
        assert response.status == 202, started
    progress: dict[str, Any] = {}

    async def over() -> bool:
        path = f"/cache/warming/progress?run_id={started['run_id']}"
        async with client.get(control_url(proxy, path)) as response:
            progress["now"] = await response.json()
        return bool(progress["now"]["status"] != "running")

    await eventually(over, within=15)
    return progress["now"]


def clients(proxy: Warmproxy) -> list[tuple[UserAgent, str]]:
    """Every browser under every host name."""
    return list(itertools.product(BROWSERS, hosts(proxy)))


async def test_warm_key_lands_for_every_browser_under_either_host_name(
    demo: DemoOrigin, shop: Warmproxy, client: aiohttp.ClientSession
) -> None:
    first = clients(shop)
    paths = [f"/products/{n}" for n in range(1, len(first) + 1)]
    done = await warm(client, shop, "warm-key", {"urls": paths})
    assert done["progress"]["success"] == len(paths)
    for path, (agent, host) in zip(paths, first, strict=True):
        answer = await get(client, shop, path, agent, host)
        assert answer.hit, (path, agent.name, host, answer.cache_status)
        assert answer.headers["Content-Encoding"] == "gzip"
        assert demo.count(path, warm=True) == 1
        assert demo.count(path, warm=False) == 0


async def test_warm_pattern_lands_for_every_browser_under_either_host_name(
    demo: DemoOrigin, shop: Warmproxy, client: aiohttp.ClientSession
) -> None:
    first = clients(shop)
    paths = [f"/products/{n}" for n in range(100, 100 + len(first))]
    # Browsers visited these pages, under both names; then each was edited,
    # which through the proxy invalidates it (RFC 9111 §4.4).
    for path, (agent, host) in zip(paths, first[1:] + first[:1], strict=True):
        assert (await get(client, shop, path, agent, host)).status == 200
        async with client.post(f"http://127.0.0.1:{shop.proxy_port}{path}") as response:
            assert response.status == 204
    before = {path: demo.count(path, warm=False) for path in paths}

    done = await warm(client, shop, "warm-pattern", {"pattern": "/products/10?"})
    assert done["progress"]["success"] >= len(paths)
    for path, (agent, host) in zip(paths, first, strict=True):
        answer = await get(client, shop, path, agent, host)
        assert answer.hit, (path, agent.name, host, answer.cache_status)
        assert demo.count(path, warm=True) >= 1
        assert demo.count(path, warm=False) == before[path]


@pytest.mark.parametrize("curl_first", [False, True], ids=["no-traffic", "after-plain-curl"])
async def test_readme_example_warm_key_then_curl_compressed_is_a_hit(
    demo: DemoOrigin, shop: Warmproxy, client: aiohttp.ClientSession, curl_first: bool
) -> None:
    if curl_first:
        # The README's first command: a plain curl (no Accept-Encoding), twice.
        for _ in range(2):
            await fetch(client, f"http://127.0.0.1:{shop.proxy_port}/products/1", CURL)
    await warm(client, shop, "warm-key", {"url": "/products/42"})
    for host in hosts(shop):
        answer = await get(client, shop, "/products/42", CURL_COMPRESSED, host)
        assert answer.hit, (host, answer.cache_status)
    assert demo.count("/products/42", warm=False) == 0
    # With plain curl as the only traffic so far, the audience warmed what
    # plain curl asks for; with none, what browsers ask for.
    plain = await get(client, shop, "/products/42", CURL, hosts(shop)[0])
    assert plain.hit is curl_first, plain.cache_status


def test_the_readme_quick_start_shows_these_commands() -> None:
    quick_start = README.read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert (
        "curl -s -X POST localhost:8081/cache/warming/warm-key "
        "-H 'Content-Type: application/json' -d '{\"url\": \"/products/42\"}'"
    ) in quick_start
    assert "curl -si --compressed localhost:8080/products/42" in quick_start
    assert "curl -si --compressed 127.0.0.1:8080/products/42" in quick_start
