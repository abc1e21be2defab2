"""Hardening at the proxy's two edges: what a client may tell the origin
through request fields, how large a head the origin may send, and which
request lines are spoken at all.

Each poisoning case runs the real proxy against an origin that echoes every
request field it got into a cacheable body, as an origin building links or
choosing content from them would: client A sends a field with an evil value,
client B then asks for the same path without it, and B must get what the
origin answers a clean request.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.app import Warmproxy
from proxy.config import ConfigError, load_settings
from tests.proxy.conftest import Origin, ProxyFactory, url

CACHEABLE = {"Cache-Control": "max-age=60"}
EVIL = "poison"
TRUSTED = {"trusted_proxies": ["127.0.0.0/8"]}

# Fields frameworks read the public URL from (Werkzeug ProxyFix, Spring,
# Symfony): never passed on, whoever sends them.
PUBLIC_URL_FIELDS = [
    "X-Forwarded-Port",
    "X-Forwarded-Prefix",
    "X-Forwarded-Scheme",
    "X-Forwarded-Server",
    "X-Forwarded-Ssl",
    "Front-End-Https",
    "X-Url-Scheme",
]
# The client's address under other names: only a trusted proxy's pass.
CLIENT_ADDRESS_FIELDS = [
    "X-Real-IP",
    "X-Client-IP",
    "True-Client-IP",
    "Client-IP",
    "X-Cluster-Client-IP",
]
# proxy.drop_request_headers by default: from nobody.
DROPPED_FIELDS = [
    "X-Original-URL",
    "X-Rewrite-URL",
    "X-HTTP-Method-Override",
    "X-HTTP-Method",
    "X-Method-Override",
    "X-Host",
    "X-Original-Host",
    "X-Forwarded-Path",
]
# CGI, WSGI and PHP servers read these as the fields spelled with "-".
UNDERSCORE_SPELLINGS = ["X_Forwarded_Host", "X_Forwarded_Port", "X_Original_URL", "X_Real_IP"]
# The proxy's own forwarding fields: replaced from an untrusted peer.
OWN_FIELDS = ["X-Forwarded-Host", "X-Forwarded-Proto", "Forwarded"]


def evil_value(name: str) -> str:
    if name.lower() == "forwarded":
        return f"for=6.6.6.6;host={EVIL}.example;proto={EVIL}"
    if "url" in name.lower() or "path" in name.lower() or "prefix" in name.lower():
        return f"/{EVIL}"
    return f"{EVIL}.example"


async def echo(request: web.Request) -> web.Response:
    """A shared answer built from every field the origin was told."""
    fields = "\n".join(f"{name}: {value}" for name, value in request.headers.items())
    return web.Response(text=f"{request.method} {request.path_qs}\n{fields}", headers=CACHEABLE)


async def poisoning_matrix(
    origin: Origin,
    proxy: Warmproxy,
    client: aiohttp.ClientSession,
    names: list[str],
    *,
    origin_may_see: bool = False,
    prefix: str = "/page",
) -> None:
    """For each field: A sends it with an evil value, then B asks clean."""
    for index, name in enumerate(names):
        path = f"{prefix}/{index}"
        origin.handle(path, echo)
        async with client.get(url(proxy, path), headers={name: evil_value(name)}) as a:
            assert a.status == 200, name
            await a.read()
        async with client.get(url(proxy, path)) as b:
            body = await b.text()
        assert EVIL not in body, f"{name}: a clean client got the evil variant:\n{body}"
        assert body.startswith(f"GET {path}\n"), name
        if not origin_may_see:
            for seen in (s for s in origin.seen if s.path == path):
                told = "\n".join(f"{k}: {v}" for k, v in seen.headers.items())
                assert EVIL not in told, f"{name} reached the origin:\n{told}"


@pytest.mark.parametrize("keying", ["single", "per-host"])
async def test_no_client_field_poisons_a_shared_entry_or_reaches_the_origin(
    origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession, keying: str
) -> None:
    proxy = await make_proxy(origin.url, proxy={"host_keying": keying})
    await poisoning_matrix(
        origin,
        proxy,
        client,
        [
            *PUBLIC_URL_FIELDS,
            *CLIENT_ADDRESS_FIELDS,
            *DROPPED_FIELDS,
            *UNDERSCORE_SPELLINGS,
            *OWN_FIELDS,
        ],
    )


async def test_a_trusted_proxy_cannot_pass_unkeyed_url_fields_either(
    origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    proxy = await make_proxy(origin.url, proxy=TRUSTED)
    # X-Forwarded-Host (single keying) and X-Forwarded-Proto may reach the
    # origin from a trusted proxy, but never an entry a clean client is served.
    await poisoning_matrix(
        origin,
        proxy,
        client,
        ["X-Forwarded-Host", "X-Forwarded-Proto", "Forwarded"],
        origin_may_see=True,
        prefix="/told",
    )
    await poisoning_matrix(
        origin, proxy, client, [*PUBLIC_URL_FIELDS, *DROPPED_FIELDS, *UNDERSCORE_SPELLINGS]
    )


async def test_client_address_fields_pass_from_a_trusted_proxy_only(
    origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    origin.set("/who", headers={"Cache-Control": "no-store"})
    sent = {"X-Real-IP": "203.0.113.7", "True-Client-IP": "203.0.113.7"}
    for trusted in (False, True):
        proxy = await make_proxy(origin.url, proxy=TRUSTED if trusted else {})
        async with client.get(url(proxy, "/who"), headers=sent) as response:
            assert response.status == 200
        seen = origin.last("/who").headers
        for name in sent:
            assert seen.get(name) == (sent[name] if trusted else None), (trusted, name)


async def test_an_untrusted_clients_scheme_is_replaced_by_the_public_one(
    origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    origin.handle("/s", echo)
    proxy = await make_proxy(origin.url)
    async with client.get(url(proxy, "/s"), headers={"X-Forwarded-Proto": "https"}) as a:
        assert "X-Forwarded-Proto: http\n" in await a.text()
    assert origin.last("/s").headers.getall("X-Forwarded-Proto") == ["http"]


async def test_a_trusted_proxys_other_scheme_bypasses_the_cache_both_ways(
    origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    """An origin redirecting http to https: neither scheme gets the other's answer."""

    async def redirect_http(request: web.Request) -> web.Response:
        if request.headers.get("X-Forwarded-Proto") == "https":
            return web.Response(text="secure page", headers=CACHEABLE)
        return web.Response(status=301, headers={"Location": "https://shop.example/r", **CACHEABLE})

    origin.handle("/r", redirect_http)
    proxy = await make_proxy(origin.url, proxy={**TRUSTED, "public_scheme": "https"})
    https = {"X-Forwarded-Proto": "https"}
    http = {"X-Forwarded-Proto": "http"}
    for headers, status in ((http, 301), (https, 200), (http, 301), (https, 200), ({}, 200)):
        async with client.get(url(proxy, "/r"), headers=headers, allow_redirects=False) as r:
            assert r.status == status, headers
            if headers == http:
                assert "fwd=bypass" in r.headers["Cache-Status"]
    # https (the public scheme) and a request naming none share one entry;
    # http requests each went to the origin.
    assert origin.count("/r") == 3
    assert [s.headers.get("X-Forwarded-Proto") for s in origin.seen] == ["http", "https", "http"]
    # A warm fetch is told the public scheme, and lands where https clients hit.
    origin.handle("/w", echo)
    assert (await proxy.filler.fill("/w")).stored
    async with client.get(url(proxy, "/w"), headers=https) as r:
        assert r.headers["Cache-Status"].startswith("warmproxy; hit")
        assert "X-Forwarded-Proto: https\n" in await r.text()


async def test_drop_request_headers_is_the_users_list(
    origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    origin.set("/d", headers={"Cache-Control": "no-store"})
    proxy = await make_proxy(origin.url, proxy={"drop_request_headers": ["X-Debug-Tenant"]})
    sent = {"X-Debug-Tenant": "7", "x_debug_tenant": "7", "X-Original-URL": "/admin"}
    async with client.get(url(proxy, "/d"), headers=sent) as response:
        assert response.status == 200
    seen = origin.last("/d").headers
    assert "X-Debug-Tenant" not in seen and "x_debug_tenant" not in seen
    assert seen["X-Original-URL"] == "/admin"  # no longer in the list: sent


@pytest.mark.parametrize(
    ("value", "hint"),
    [
        (["X Original URL"], "not a header field name"),
        (["X-Original-URL:"], "not a header field name"),
        (["X-" + "a" * 200], "at most 128 characters"),
        ([f"X-Field-{i}" for i in range(65)], "at most 64"),
        ("X-Original-URL", "valid list"),
    ],
)
def test_bad_drop_request_headers_are_refused_naming_the_key(value: Any, hint: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(None, {"proxy": {"drop_request_headers": value}})
    message = str(refused.value)
    assert "proxy.drop_request_headers" in message and hint in message


@pytest.mark.parametrize("size", [512, "2MiB", -1])
def test_max_origin_header_size_is_bounded(size: Any) -> None:
    with pytest.raises(ConfigError, match=r"proxy\.max_origin_header_size"):
        load_settings(None, {"proxy": {"max_origin_header_size": size}})
    assert (
        load_settings(
            None, {"proxy": {"max_origin_header_size": "64KiB"}}
        ).proxy.max_origin_header_size
        == 65536
    )


# ------------------------------------------------------------ origin heads


def big_head(kind: str) -> web.Response:
    response = web.Response(text="big", headers={"Cache-Control": "no-store"})
    if kind == "field":
        # A 20 KB Set-Cookie (secret value: never to be logged).
        response.headers["Set-Cookie"] = "session=secret" + "s" * 20_000
    elif kind == "status-line":
        response = web.Response(text="big", reason="R" * 20_000)
    else:
        for i in range(200):
            response.headers.add(f"X-Field-{i}", "v")
    return response


@pytest.mark.parametrize("kind", ["field", "status-line", "fields"])
async def test_an_oversized_origin_head_is_a_502_naming_the_cause(
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
    kind: str,
) -> None:
    async def handler(request: web.Request) -> web.Response:
        return big_head(kind)

    origin.handle("/big", handler)
    caplog.set_level(logging.WARNING)
    proxy = await make_proxy(origin.url, proxy={"max_origin_header_size": "16KiB"})
    async with client.get(url(proxy, "/big")) as response:
        assert response.status == 502
        text = await response.text()
        assert "origin response head too large" in text and "unreachable" not in text
        assert "origin-head-too-large" in response.headers["Cache-Status"]
    registry = proxy.metrics.registry
    errors = "warmproxy_origin_errors_total"
    assert registry.get_sample_value(errors, {"reason": "head-too-large"}) == 1
    assert not registry.get_sample_value(errors, {"reason": "unreachable"})
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "proxy.max_origin_header_size (16384 bytes)" in logged
    assert "secret" not in logged and "secret" not in text


async def test_origin_heads_up_to_the_limit_are_relayed(origin: Origin, proxy: Warmproxy) -> None:
    async def handler(request: web.Request) -> web.Response:
        return big_head("field")

    origin.handle("/big", handler)
    # The test's own client reads heads as large as the proxy's (default) limit.
    async with (
        aiohttp.ClientSession(max_field_size=32 * 1024) as big_client,
        big_client.get(url(proxy, "/big")) as response,
    ):
        assert response.status == 200
        assert len(response.headers["Set-Cookie"]) > 20_000


# ------------------------------------------------------------ request lines


async def raw(proxy: Warmproxy, request: bytes, *, eof: bool = False) -> bytes:
    """What the proxy sends back on a fresh connection for ``request`` (b"" if nothing)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.proxy_port)
    try:
        writer.write(request)
        if eof:
            writer.write_eof()
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer else 0


async def test_other_http_versions_are_refused_never_served_from_the_cache(
    origin: Origin, proxy: Warmproxy, client: aiohttp.ClientSession
) -> None:
    origin.set("/v", headers=CACHEABLE, body=b"cached")
    async with client.get(url(proxy, "/v")) as response:
        assert await response.read() == b"cached"
    answer = await raw(proxy, b"GET /v HTTP/1.0\r\n\r\n")
    assert status_of(answer) == 200 and answer.endswith(b"cached")  # still spoken
    for line in (b"GET /v HTTP/2.0\r\nHost: x", b"GET /v HTTP/0.9"):
        answer = await raw(proxy, line + b"\r\n\r\n")
        # RFC 9110 §15.6.6.
        assert status_of(answer) == 505, (line, answer[:80])
        assert b"cached" not in answer
    # Refused by the handler (505) or by the parser itself (400), depending
    # on whether aiohttp runs with its C extension.
    for request in (b"GET /v\r\n\r\n", b"GET /v HTTP/1.2\r\nHost: x\r\n\r\n"):
        answer = await raw(proxy, request)
        assert status_of(answer) in (400, 505), (request, answer[:80])
        assert b"cached" not in answer
    # A bare HTTP/0.9 request line gets no answer at all, least of all the entry.
    answer = await raw(proxy, b"GET /v\r\n", eof=True)
    assert status_of(answer) in (0, 400, 505) and b"cached" not in answer
    assert origin.count("/v") == 1
