"""Cache keys as clients see them: ``proxy.host_keying`` and the ``[cache]`` query rules.

A warm fetch made before any traffic must land under the key the first
client's request maps to, whatever name that client uses for the proxy; and
what the origin is told about the client's host is either in the key or the
same for every request (else one client could poison entries shared by all).
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.app import Warmproxy
from proxy.config import ConfigError, load_settings
from tests.proxy.conftest import Origin, ProxyFactory, control_url, eventually, url

CACHEABLE = {"Cache-Control": "max-age=60"}
PER_HOST = {"host_keying": "per-host"}


async def warm_key(client: aiohttp.ClientSession, proxy: Warmproxy, target: str) -> None:
    """Warm ``target`` through the control API, as an operator would, and wait for it."""
    async with client.post(
        control_url(proxy, "/cache/warming/warm-key"), json={"url": target}
    ) as response:
        assert response.status == 202, await response.text()
        run_id = (await response.json())["run_id"]
    progress: dict[str, Any] = {}

    async def done() -> bool:
        async with client.get(
            control_url(proxy, "/cache/warming/progress"), params={"run_id": run_id}
        ) as response:
            progress.update(await response.json())
        return bool(progress["status"] != "running")

    await eventually(done, within=15)
    assert progress["progress"]["success"] == 1, progress


async def get(
    client: aiohttp.ClientSession, proxy: Warmproxy, path: str, **headers: str
) -> tuple[str, bytes]:
    """(Cache-Status, body) of a GET for ``path`` with ``headers``."""
    async with client.get(url(proxy, path), headers=headers) as response:
        assert response.status == 200, await response.text()
        return response.headers["Cache-Status"], await response.read()


def told(request: web.Request) -> str:
    """Everything an origin might build links from."""
    return " | ".join(
        f"{name}={request.headers.get(name, '-')}"
        for name in ("Host", "X-Forwarded-Host", "Forwarded")
    )


async def links(request: web.Request) -> web.Response:
    return web.Response(text=told(request), headers=CACHEABLE)


# ------------------------------------------------------------ single (default)


async def test_a_warm_before_any_traffic_is_hit_under_every_name_of_the_proxy(
    origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    origin.set("/products/7", headers=CACHEABLE, body=b"seven")
    proxy = await make_proxy(origin.url)
    await warm_key(client, proxy, "/products/7")
    port = proxy.proxy_port
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "app.default.svc", "APP.default.svc."):
        status, body = await get(client, proxy, "/products/7", Host=host)
        assert status.startswith("warmproxy; hit"), (host, status)
        assert body == b"seven"
    assert origin.count("/products/7") == 1


async def test_a_warm_before_traffic_is_hit_with_a_public_host_too(
    origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    origin.handle("/links", links)
    proxy = await make_proxy(origin.url, proxy={"public_host": "shop.example"})
    await warm_key(client, proxy, "/links")
    status, body = await get(client, proxy, "/links", Host="localhost")
    assert status.startswith("warmproxy; hit")
    assert b"X-Forwarded-Host=shop.example" in body


@pytest.mark.parametrize("trusted", [False, True], ids=["untrusted-peer", "trusted-peer"])
async def test_single_keying_never_tells_the_origin_a_client_chosen_host(
    origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession, trusted: bool
) -> None:
    origin.handle("/links", links)
    proxy = await make_proxy(
        origin.url, proxy={"trusted_proxies": ["127.0.0.0/8"] if trusted else []}
    )
    floods = [
        {"X-Forwarded-Host": "evil.example"},
        {"Forwarded": "for=6.6.6.6;host=evil.example;proto=https"},
        {"Host": "evil.example", "X-Forwarded-Host": "evil.example, other.example"},
        {},
    ]
    bodies = set()
    for headers in floods:
        async with client.get(url(proxy, "/links"), headers=headers) as response:
            bodies.add(await response.read())
    authority = origin.url.removeprefix("http://")
    # One entry, built from what the origin would hear if called directly.
    assert bodies == {f"Host={authority} | X-Forwarded-Host=- | Forwarded=-".encode()}
    assert origin.count("/links") == 1
    origin.set("/nocache", headers={"Cache-Control": "no-store"})
    for headers in floods:
        async with client.get(url(proxy, "/nocache"), headers=headers) as response:
            await response.read()
        seen = origin.last("/nocache").headers
        assert (seen["Host"], seen.get("X-Forwarded-Host"), seen.get("Forwarded")) == (
            authority,
            None,
            None,
        )


async def test_a_trusted_proxys_client_chain_still_reaches_the_origin(
    origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    origin.set("/chain", headers={"Cache-Control": "no-store"})
    proxy = await make_proxy(origin.url, proxy={"trusted_proxies": ["127.0.0.0/8"]})
    async with client.get(
        url(proxy, "/chain"),
        headers={"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Host": "shop.example"},
    ):
        pass
    assert origin.last("/chain").headers["X-Forwarded-For"] == "203.0.113.7, 127.0.0.1"
    # Only a Forwarded field: its for= chain goes on in X-Forwarded-For.
    async with client.get(
        url(proxy, "/chain"),
        headers={"Forwarded": 'for=198.51.100.1;host=evil.example, for="[2001:db8::1]"'},
    ):
        pass
    seen = origin.last("/chain").headers
    assert seen["X-Forwarded-For"] == "198.51.100.1, [2001:db8::1], 127.0.0.1"
    assert "Forwarded" not in seen and "X-Forwarded-Host" not in seen


async def test_a_location_naming_any_name_of_the_proxy_is_invalidated(
    origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    origin.set("/listing", headers=CACHEABLE)
    proxy = await make_proxy(origin.url)

    async def create(request: web.Request) -> web.Response:
        return web.Response(status=303, headers={"Location": "http://app.default.svc/listing"})

    origin.handle("/create", create)
    await get(client, proxy, "/listing")
    async with client.post(
        url(proxy, "/create"), headers={"Host": "app.default.svc"}, allow_redirects=False
    ) as response:
        assert response.status == 303
    status, _ = await get(client, proxy, "/listing")
    assert "fwd=uri-miss" in status
    assert origin.count("/listing") == 2


# -------------------------------------------------------------------- per host


async def test_per_host_keying_keeps_hosts_apart_and_tells_the_origin_the_clients(
    origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    origin.handle("/links", links)
    proxy = await make_proxy(origin.url, proxy=PER_HOST)
    authority = origin.url.removeprefix("http://")
    a1 = await get(client, proxy, "/links", Host="a.example")
    b1 = await get(client, proxy, "/links", Host="b.example")
    # A client's X-Forwarded-Host is replaced by its own Host (it is not trusted).
    a2 = await get(client, proxy, "/links", Host="a.example", **{"X-Forwarded-Host": "b.example"})
    assert a1[1] == f"Host={authority} | X-Forwarded-Host=a.example | Forwarded=-".encode()
    assert b1[1] == f"Host={authority} | X-Forwarded-Host=b.example | Forwarded=-".encode()
    assert a2[1] == a1[1] and a2[0].startswith("warmproxy; hit")
    assert origin.count("/links") == 2


async def test_per_host_a_warm_for_a_host_is_hit_by_that_hosts_clients_only(
    origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    origin.handle("/links", links)
    proxy = await make_proxy(origin.url, proxy=PER_HOST)
    # What a WarmRequest for host a.example goes through (the warmer's fill).
    result = await proxy.filler.fill("/links", "A.Example")
    assert result.stored
    assert origin.last("/links").headers["X-Forwarded-Host"] == "A.Example"
    status, _ = await get(client, proxy, "/links", Host="a.example")
    assert status.startswith("warmproxy; hit")
    status, _ = await get(client, proxy, "/links", Host="b.example")
    assert "fwd=uri-miss" in status
    # No host named: the default one, which is what clients calling the
    # origin's own name are keyed under.
    await proxy.filler.fill("/links")
    status, _ = await get(client, proxy, "/links", Host=origin.url.removeprefix("http://"))
    assert status.startswith("warmproxy; hit")


async def test_per_host_behind_a_trusted_proxy_keys_by_its_forwarded_host(
    origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    origin.handle("/links", links)
    proxy = await make_proxy(
        origin.url,
        proxy={**PER_HOST, "trusted_proxies": ["127.0.0.0/8"], "public_host": "shop.example"},
    )
    assert not proxy.rules.keys_are_paths
    await warm_key(client, proxy, "/links")  # for the default host: public_host
    status, body = await get(client, proxy, "/links", **{"X-Forwarded-Host": "shop.example"})
    assert status.startswith("warmproxy; hit")
    assert b"X-Forwarded-Host=shop.example" in body
    status, body = await get(client, proxy, "/links", **{"X-Forwarded-Host": "m.shop.example"})
    assert "fwd=uri-miss" in status and b"X-Forwarded-Host=m.shop.example" in body


def test_preserve_host_needs_per_host_keying() -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(None, {"proxy": {"preserve_host": True}})
    message = str(refused.value)
    assert "preserve_host" in message and 'host_keying = "per-host"' in message
    settings = load_settings(None, {"proxy": {"preserve_host": True, **PER_HOST}})
    assert settings.proxy.preserve_host and settings.proxy.host_keying == "per-host"


def test_an_unknown_keying_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"proxy\.host_keying"):
        load_settings(None, {"proxy": {"host_keying": "by-host"}})


# ------------------------------------------------------------ query key rules


async def test_ignored_parameters_share_an_entry_and_still_reach_the_origin(
    origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    origin.set("/p", headers=CACHEABLE, body=b"product")
    proxy = await make_proxy(
        origin.url, cache={"ignore_query_params": ["utm_*", "fbclid", "gclid"]}
    )
    status, _ = await get(client, proxy, "/p?id=1&utm_source=x")
    assert "fwd=uri-miss" in status
    assert [s.path for s in origin.seen] == ["/p?id=1&utm_source=x"]  # the full URL
    for target in ("/p?id=1", "/p?utm_medium=mail&id=1&fbclid=abc", "/p?id=1&gclid=z"):
        status, body = await get(client, proxy, target)
        assert status.startswith("warmproxy; hit"), target
        assert body == b"product"
    status, _ = await get(client, proxy, "/p?id=2&utm_source=x")
    assert "fwd=uri-miss" in status
    assert origin.count() == 2


async def test_warms_and_invalidations_key_by_the_same_rules(
    origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    origin.set("/p", headers=CACHEABLE, body=b"product")
    proxy = await make_proxy(
        origin.url, cache={"ignore_query_params": ["utm_*"], "sort_query_params": True}
    )
    await warm_key(client, proxy, "/p?utm_campaign=spring&b=2&a=1")
    assert origin.seen[-1].path == "/p?utm_campaign=spring&b=2&a=1"
    status, _ = await get(client, proxy, "/p?a=1&b=2", Host="localhost")
    assert status.startswith("warmproxy; hit")
    # RFC 9111 §4.4: an unsafe request to the URL invalidates the entry,
    # whichever spelling of it the request used.
    async with client.post(url(proxy, "/p?b=2&utm_source=x&a=1")) as response:
        assert response.status == 200
    status, _ = await get(client, proxy, "/p?a=1&b=2")
    assert "fwd=uri-miss" in status


async def test_sorted_parameters_share_an_entry_but_repeated_names_keep_their_order(
    origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    origin.set("/s", headers=CACHEABLE)
    proxy = await make_proxy(origin.url, cache={"sort_query_params": True})
    assert "fwd=uri-miss" in (await get(client, proxy, "/s?q=shoes&page=2"))[0]
    assert (await get(client, proxy, "/s?page=2&q=shoes"))[0].startswith("warmproxy; hit")
    assert origin.seen[-1].path == "/s?q=shoes&page=2"
    assert "fwd=uri-miss" in (await get(client, proxy, "/s?tag=b&tag=a"))[0]
    assert "fwd=uri-miss" in (await get(client, proxy, "/s?tag=a&tag=b"))[0]
    assert origin.count() == 3


async def test_without_rules_every_query_is_its_own_entry(
    origin: Origin, proxy: Warmproxy, client: aiohttp.ClientSession
) -> None:
    origin.set("/p", headers=CACHEABLE)
    for target in ("/p?a=1&b=2", "/p?b=2&a=1", "/p?a=1&b=2&utm_source=x"):
        assert "fwd=uri-miss" in (await get(client, proxy, target))[0]
    assert proxy.cache.peek("/p?b=2&a=1") is not None  # the key is the target as sent
