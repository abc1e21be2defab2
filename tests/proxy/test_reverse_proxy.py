"""The proxy as a reverse proxy: methods, bodies, headers, timeouts, failures."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import tracemalloc

import aiohttp
import pytest
from aiohttp import web

from tests.proxy.conftest import Origin, ProxyFactory, eventually, url

# An origin serving several hosts: the host it is told is part of the key.
PER_HOST = {"host_keying": "per-host"}


async def test_every_method_path_and_query_is_forwarded(origin, proxy, client) -> None:
    async def echo(request: web.Request) -> web.Response:
        return web.Response(text=f"{request.method} {request.path_qs} {await request.text()}")

    origin.handle("/echo", echo)
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
        async with client.request(method, url(proxy, "/echo?x=1&y=%20z"), data=b"b") as r:
            text = await r.text()
            if method != "GET":
                assert text == f"{method} /echo?x=1&y=%20z b"
    assert origin.count("/echo?x=1&y=%20z") == 6


async def test_rfc9110_s7_6_1_hop_by_hop_fields_dropped_both_ways(origin, proxy, client) -> None:
    async def resource(request: web.Request) -> web.Response:
        return web.Response(
            text="ok",
            headers={"Connection": "X-Origin-Hop", "X-Origin-Hop": "1", "X-Kept": "1"},
        )

    origin.handle("/hop", resource)
    async with client.get(
        url(proxy, "/hop"),
        headers={"Connection": "keep-alive, X-Client-Hop", "X-Client-Hop": "1", "TE": "trailers"},
    ) as response:
        assert "X-Origin-Hop" not in response.headers
        assert response.headers["X-Kept"] == "1"
    seen = origin.last("/hop").headers
    assert "X-Client-Hop" not in seen
    assert "TE" not in seen


async def test_forwarding_headers_added_and_client_spoofs_replaced(origin, proxy, client) -> None:
    origin.set("/fw", headers={"Cache-Control": "no-store"})
    async with client.get(
        url(proxy, "/fw"),
        headers={"X-Forwarded-For": "6.6.6.6", "X-Forwarded-Host": "evil.example"},
    ) as response:
        assert response.headers["Via"].endswith("1.1 warmproxy")
    seen = origin.last("/fw").headers
    assert seen["X-Forwarded-For"] == "127.0.0.1"
    assert seen["X-Forwarded-Proto"] == "http"
    # Single-host keying (the default): no host the client could choose.
    assert "X-Forwarded-Host" not in seen
    assert seen["Via"] == "1.1 warmproxy"
    assert seen["Host"] == origin.url.removeprefix("http://")


async def test_trusted_proxy_forwarding_chain_is_extended(origin, make_proxy, client) -> None:
    proxy = await make_proxy(origin.url, proxy={"trusted_proxies": ["127.0.0.0/8"]})
    origin.set("/tp", headers={"Cache-Control": "no-store"})
    async with client.get(
        url(proxy, "/tp"),
        headers={"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"},
    ):
        pass
    seen = origin.last("/tp").headers
    assert seen["X-Forwarded-For"] == "203.0.113.7, 127.0.0.1"
    assert seen["X-Forwarded-Proto"] == "https"


async def test_unreachable_origin_answers_502(make_proxy, client) -> None:
    proxy = await make_proxy("http://127.0.0.1:9")  # discard port: nothing listens
    async with client.get(url(proxy, "/x")) as response:
        assert response.status == 502
        assert "origin unreachable" in await response.text()
        assert "origin-unreachable" in response.headers["Cache-Status"]


async def test_slow_origin_answers_504(origin, make_proxy, client) -> None:
    origin.set("/slow", delay=2.0)
    proxy = await make_proxy(origin.url, proxy={"read_timeout": 0.3})
    async with client.get(url(proxy, "/slow")) as response:
        assert response.status == 504
        assert "origin timed out" in await response.text()


async def test_large_response_streams_through_with_flat_memory(origin, make_proxy, client) -> None:
    chunk = bytes(range(256)) * 256  # 64 KiB
    chunks = 512  # 32 MiB

    async def big(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Cache-Control": "max-age=60"})
        response.content_length = len(chunk) * chunks
        await response.prepare(request)
        for _ in range(chunks):
            await response.write(chunk)
        return response

    origin.handle("/big", big)
    proxy = await make_proxy(origin.url, cache={"max_entry_bytes": "1MiB"})
    tracemalloc.start()
    try:
        received = 0
        digest = hashlib.sha256()
        async with client.get(url(proxy, "/big")) as response:
            assert response.status == 200
            async for part in response.content.iter_chunked(65536):
                digest.update(part)
                received += len(part)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert received == len(chunk) * chunks
    assert digest.hexdigest() == hashlib.sha256(chunk * chunks).hexdigest()
    # Origin, proxy and client share this process: 32 MiB went through,
    # yet the peak stays a few buffers deep.
    assert peak < 8 * 1024 * 1024, f"peak {peak} bytes"
    async with client.get(url(proxy, "/big")) as response:
        await response.read()
    assert origin.count("/big") == 2  # too large to store


async def test_chunked_response_without_length_larger_than_entry_limit(
    origin, make_proxy, client
) -> None:
    async def unknown_length(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Cache-Control": "max-age=60"})
        await response.prepare(request)
        for i in range(40):
            await response.write(bytes([i]) * 65536)
        return response

    origin.handle("/chunked", unknown_length)
    proxy = await make_proxy(origin.url, cache={"max_entry_bytes": "1MiB"})
    async with client.get(url(proxy, "/chunked")) as response:
        body = await response.read()
    assert len(body) == 40 * 65536
    assert body[:65536] == b"\x00" * 65536 and body[-1:] == bytes([39])


async def test_request_body_streams_to_origin(origin, proxy, client) -> None:
    async def sink(request: web.Request) -> web.Response:
        size = 0
        async for part in request.content.iter_any():
            size += len(part)
        return web.Response(text=str(size))

    origin.handle("/upload", sink)

    async def body():
        for _ in range(64):
            yield b"x" * 65536

    async with client.post(url(proxy, "/upload"), data=body()) as response:
        assert await response.text() == str(64 * 65536)


async def test_malformed_request_gets_400_not_a_traceback(proxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.proxy_port)
    writer.write(b"GET /\x00bad HTTP/1.1\r\nHost: x\r\nBroken header line\r\n\r\n")
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    assert status_line.split(b" ")[1] == b"400"


async def test_oversized_headers_rejected(proxy, client) -> None:
    async with client.get(url(proxy, "/h"), headers={"X-Big": "a" * 20000}) as response:
        assert response.status in (400, 431)


async def test_origin_keepalive_connections_are_pooled(origin, proxy, client) -> None:
    ports: set[int] = set()

    async def peer(request: web.Request) -> web.Response:
        assert request.transport is not None
        ports.add(request.transport.get_extra_info("peername")[1])
        return web.Response(text="ok", headers={"Cache-Control": "no-store"})

    origin.handle("/pool", peer)
    for _ in range(10):
        async with client.get(url(proxy, "/pool")) as response:
            await response.read()
    assert len(ports) == 1


async def test_origin_errors_pass_through_unchanged(origin, proxy, client) -> None:
    origin.set("/err", status=500, body=b"boom")
    async with client.get(url(proxy, "/err")) as response:
        assert response.status == 500
        assert await response.read() == b"boom"


async def test_compressed_bodies_pass_through_byte_for_byte(origin, proxy, client) -> None:
    import gzip

    payload = gzip.compress(b"hello " * 100)
    origin.set(
        "/gz",
        headers={"Content-Encoding": "gzip", "Cache-Control": "max-age=60"},
        body=payload,
    )
    for _ in range(2):
        async with client.get(url(proxy, "/gz")) as response:
            assert response.headers["Content-Encoding"] == "gzip"
            assert await response.read() == payload


_ = (aiohttp, Origin, ProxyFactory)


async def test_idempotent_request_retried_when_a_pooled_connection_was_closed(
    make_proxy, client
) -> None:
    """An origin that drops a kept-alive connection as it is reused costs no 502."""
    served = 0

    async def read_request(reader: asyncio.StreamReader) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                await reader.readexactly(int(line.split(b":")[1]))

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        # One response per connection; the next request on it finds it closed.
        await read_request(reader)
        served += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nCache-Control: no-store\r\n\r\nok")
        await writer.drain()
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await read_request(reader)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        proxy = await make_proxy(f"http://127.0.0.1:{port}")
        for method in ("GET", "PUT", "DELETE", "GET", "PUT"):
            async with client.request(method, url(proxy, "/k"), data=b"x") as response:
                assert response.status == 200, method
                assert await response.read() == b"ok"
        assert served == 5
    finally:
        server.close()
        await server.wait_closed()


async def test_a_client_dribbling_its_request_head_is_cut_off(origin, make_proxy) -> None:
    proxy = await make_proxy(origin.url, proxy={"keepalive_timeout": 1.0})
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.proxy_port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
    loop = asyncio.get_running_loop()
    started = loop.time()
    # Keep dribbling header lines until the proxy hangs up (or 10 s pass).
    with contextlib.suppress(ConnectionError):
        while loop.time() - started < 10:
            writer.write(b"X-Slow: 1\r\n")
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                if await asyncio.wait_for(reader.read(1024), 0.2) == b"":
                    break
    writer.close()
    assert loop.time() - started < 5, "the proxy kept a dribbling client connected"


async def test_preserve_host_keeps_hosts_apart_in_the_cache(origin, make_proxy, client) -> None:
    async def by_host(request: web.Request) -> web.Response:
        return web.Response(text=request.host, headers={"Cache-Control": "max-age=60"})

    origin.handle("/site", by_host)
    proxy = await make_proxy(origin.url, proxy={"preserve_host": True, "host_keying": "per-host"})
    bodies = []
    for host in ("a.example", "b.example", "a.example", "B.EXAMPLE"):
        async with client.get(url(proxy, "/site"), headers={"Host": host}) as response:
            bodies.append(await response.text())
    assert bodies == ["a.example", "b.example", "a.example", "b.example"]
    assert origin.count("/site") == 2


async def test_a_spoofed_host_cannot_poison_other_clients_entries(
    origin, make_proxy, client
) -> None:
    async def links(request: web.Request) -> web.Response:
        host = request.headers["X-Forwarded-Host"]
        return web.Response(text=f"https://{host}/x", headers={"Cache-Control": "max-age=60"})

    origin.handle("/links", links)
    proxy = await make_proxy(origin.url, proxy=PER_HOST)
    async with client.get(url(proxy, "/links"), headers={"Host": "evil.example"}) as response:
        assert await response.text() == "https://evil.example/x"
    async with client.get(url(proxy, "/links")) as response:
        assert await response.text() == f"https://127.0.0.1:{proxy.proxy_port}/x"
    assert origin.last("/links").headers["Host"] == origin.url.removeprefix("http://")
    assert origin.count("/links") == 2


async def test_public_host_is_all_the_origin_is_told(origin, make_proxy, client) -> None:
    origin.set("/h", headers={"Cache-Control": "max-age=60"})
    proxy = await make_proxy(origin.url, proxy={"public_host": "shop.example"})
    for host in ("a.example", "b.example"):
        async with client.get(url(proxy, "/h"), headers={"Host": host}) as response:
            await response.read()
    assert origin.count("/h") == 1
    assert origin.last("/h").headers["X-Forwarded-Host"] == "shop.example"


async def test_rfc9110_s10_1_1_expect_100_continue_is_answered(origin, proxy) -> None:
    async def sink(request: web.Request) -> web.Response:
        assert "Expect" not in request.headers
        return web.Response(text=str(len(await request.read())))

    origin.handle("/put", sink)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.proxy_port)
    writer.write(
        b"PUT /put HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    )
    await writer.drain()
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert interim.startswith(b"HTTP/1.1 100 Continue")
    writer.write(b"hello")
    await writer.drain()
    final = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert final.startswith(b"HTTP/1.1 200")
    writer.close()


async def _raw(proxy, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.proxy_port)
    writer.write(request)
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    writer.close()
    return head


async def test_rfc9112_s3_2_2_absolute_form_target_is_accepted(origin, make_proxy) -> None:
    proxy = await make_proxy(origin.url, proxy=PER_HOST)
    origin.set("/abs", headers={"Cache-Control": "no-store"}, body=b"abs")
    head = await _raw(proxy, b"GET http://shop.example/abs HTTP/1.1\r\nHost: other\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    seen = origin.last("/abs").headers
    assert seen["X-Forwarded-Host"] == "shop.example"


async def test_other_request_target_forms_are_refused(origin, proxy) -> None:
    for target in (b"t://x/secret", b"x.evil.com://p", b"*", b"example.com:443"):
        head = await _raw(proxy, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert head.split(b" ")[1] == b"400", target
    assert origin.seen == []


async def test_a_full_origin_pool_ends_in_504_not_an_endless_wait(
    origin, make_proxy, client
) -> None:
    release = asyncio.Event()

    async def hold(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="late", headers={"Cache-Control": "no-store"})

    origin.handle("/hold", hold)
    origin.set("/quick", headers={"Cache-Control": "no-store"})
    proxy = await make_proxy(
        origin.url,
        proxy={"max_origin_connections": 1, "pool_timeout": 0.3, "read_timeout": 10},
    )
    held = asyncio.ensure_future(client.get(url(proxy, "/hold")))
    await eventually(lambda: origin.count("/hold") == 1)  # it holds the only connection
    async with client.get(url(proxy, "/quick")) as response:
        assert response.status == 504
    release.set()
    async with await held as response:
        assert await response.text() == "late"


async def test_get_with_a_body_is_forwarded_with_it_and_not_cached(origin, proxy, client) -> None:
    async def search(request: web.Request) -> web.Response:
        query = await request.text()
        return web.Response(text=f"results for {query}", headers={"Cache-Control": "max-age=60"})

    origin.handle("/_search", search)
    for query in ("cats", "dogs"):
        async with client.request("GET", url(proxy, "/_search"), data=query.encode()) as r:
            assert await r.text() == f"results for {query}"
            assert "fwd=bypass" in r.headers["Cache-Status"]


async def test_a_failed_start_closes_what_it_opened(origin) -> None:
    from proxy.app import Warmproxy
    from proxy.config import load_settings

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proxy = Warmproxy(
            load_settings(
                None,
                {
                    "proxy": {"origin": origin.url, "listen": "127.0.0.1:0"},
                    "control": {"listen": f"127.0.0.1:{port}"},
                },
            )
        )
        with pytest.raises(OSError):
            await proxy.start()
    assert proxy.origin._session is None
    assert len(proxy.tasks) == 0
    assert not proxy.ready


async def test_a_host_that_is_not_a_host_is_refused(origin, make_proxy, client) -> None:
    # Per host, the Host enters the key: "/" or "?" in it could make two URLs share one.
    proxy = await make_proxy(origin.url, proxy=PER_HOST)
    origin.set("/b/c", headers={"Cache-Control": "max-age=60"}, body=b"c")
    for bad in (f"127.0.0.1:{proxy.proxy_port}/a", "x?y", "user@host", "host:port"):
        async with client.get(url(proxy, "/b/c"), headers={"Host": bad}) as response:
            assert response.status == 400, bad
    assert origin.count("/b/c") == 0


async def test_spellings_of_one_host_share_entries(origin, make_proxy, client) -> None:
    proxy = await make_proxy(origin.url, proxy=PER_HOST)
    origin.set("/same", headers={"Cache-Control": "max-age=60"})
    for host in ("Shop.Example", "shop.example.", "shop.example:80"):
        async with client.get(url(proxy, "/same"), headers={"Host": host}) as response:
            await response.read()
    assert origin.count("/same") == 1
    assert origin.last("/same").headers["X-Forwarded-Host"] == "shop.example"
