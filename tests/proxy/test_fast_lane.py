"""The hit fast lane (proxy/fast_lane.py) through real sockets.

A raw client speaks HTTP/1.1 to the real proxy in front of a real origin, so
keep-alive, pipelining and framing are what a client sees.  Whether the fast
lane or aiohttp answered is read from the lane's own counter; the answers must
be right either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from proxy.app import Warmproxy
from proxy.config import load_settings
from proxy.fast_lane import FastLane
from proxy.observe import AccessEvent, Outcome
from proxy.policy import format_http_date
from tests.proxy.conftest import Origin, eventually, url
from warmer.clock import ManualClock

READ_TIMEOUT = 5.0


@dataclass
class Answer:
    status: int
    headers: CIMultiDict[str]
    body: bytes
    raw: bytes


class RawClient:
    """One TCP connection to the proxy, written and read byte for byte."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    def send(self, data: bytes | str) -> None:
        self.writer.write(data.encode() if isinstance(data, str) else data)

    async def answer(self, *, head_only: bool = False) -> Answer:
        return await asyncio.wait_for(self._answer(head_only), READ_TIMEOUT)

    async def _answer(self, head_only: bool) -> Answer:
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers: CIMultiDict[str] = CIMultiDict()
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers.add(name.strip(), value.strip())
        raw_body = b""
        if head_only or status in (204, 304):
            body = b""
        elif "Content-Length" in headers:
            body = raw_body = await self.reader.readexactly(int(headers["Content-Length"]))
        elif headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while True:
                size_line = await self.reader.readuntil(b"\r\n")
                chunk = await self.reader.readexactly(int(size_line.split(b";")[0], 16) + 2)
                raw_body += size_line + chunk
                if chunk == b"\r\n":
                    break
                body += chunk[:-2]
        else:
            body = raw_body = await self.reader.read()
        return Answer(status, headers, body, head + raw_body)

    async def closed_by_proxy(self) -> bool:
        """The proxy closed the connection (end of stream, nothing more sent)."""
        return await asyncio.wait_for(self.reader.read(), READ_TIMEOUT) == b""

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


def get(path: str, *fields: str, method: str = "GET", version: str = "1.1") -> str:
    lines = [f"{method} {path} HTTP/{version}", "Host: shop.example", *fields]
    return "\r\n".join(lines) + "\r\n\r\n"


StartProxy = Callable[..., Awaitable[Warmproxy]]


@pytest.fixture
async def start_proxy() -> AsyncIterator[StartProxy]:
    started: list[Warmproxy] = []

    async def start(
        origin_url: str, clock: ManualClock | None = None, **sections: dict[str, Any]
    ) -> Warmproxy:
        overrides: dict[str, dict[str, Any]] = {
            "proxy": {"origin": origin_url, "listen": "127.0.0.1:0"},
            "control": {"listen": "127.0.0.1:0"},
        }
        for name, values in sections.items():
            overrides.setdefault(name, {}).update(values)
        proxy = Warmproxy(load_settings(None, overrides), clock=clock)
        await proxy.start()
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        await proxy.stop()


@pytest.fixture
def clock() -> ManualClock:
    # A whole second: the origin's Date (below) then equals the time of the
    # fill, and ages and TTLs are exact.
    return ManualClock(float(int(time.time())))


def dated(clock: ManualClock, **headers: str) -> dict[str, str]:
    """Cacheable response headers dated at the proxy's clock."""
    return {**CACHEABLE, "Date": format_http_date(clock.now), **headers}


def lane(proxy: Warmproxy) -> FastLane:
    assert proxy.fast_lane is not None, "the fast lane is on by default"
    return proxy.fast_lane


async def fill(proxy: Warmproxy, path: str, **headers: str) -> None:
    """Put ``path`` in the cache through an ordinary client (aiohttp answers)."""
    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        # Only the Accept-Encoding given, if any: the variant filled is the one asked for.
        session.get(
            url(proxy, path), headers=headers, skip_auto_headers=["Accept-Encoding"]
        ) as response,
    ):
        await response.read()
        assert "stored" in response.headers["Cache-Status"], response.headers


CACHEABLE = {"Cache-Control": "max-age=60", "Content-Type": "text/plain"}


async def test_a_hit_and_a_miss_share_one_keep_alive_connection(
    origin: Origin, start_proxy: StartProxy
) -> None:
    origin.set("/hit", headers=CACHEABLE, body=b"from the cache")
    origin.set("/miss", headers={"Cache-Control": "no-store"}, body=b"from the origin")
    proxy = await start_proxy(origin.url)
    await fill(proxy, "/hit")
    handed_over = lane(proxy).handed_over  # the fill's connection: a miss
    conn = await RawClient.connect(proxy.proxy_port)

    conn.send(get("/hit"))
    first = await conn.answer()
    assert (first.status, first.body) == (200, b"from the cache")
    assert first.headers["Cache-Status"].startswith("warmproxy; hit; ttl=")
    assert first.headers["Age"] == "0"
    assert first.headers["Via"] == "1.1 warmproxy"
    assert lane(proxy).answered == 1

    conn.send(get("/miss"))  # the fast lane hands the connection to aiohttp
    second = await conn.answer()
    assert (second.status, second.body) == (200, b"from the origin")
    assert origin.count("/miss") == 1

    conn.send(get("/hit"))  # the same connection, now aiohttp's: still a hit
    third = await conn.answer()
    assert (third.status, third.body) == (200, b"from the cache")
    assert third.headers["Cache-Status"].startswith("warmproxy; hit")
    assert origin.count("/hit") == 1
    assert (lane(proxy).answered, lane(proxy).handed_over) == (1, handed_over + 1)
    await conn.close()


async def test_pipelined_hit_miss_hit_are_answered_in_order(
    origin: Origin, start_proxy: StartProxy
) -> None:
    origin.set("/one", headers=CACHEABLE, body=b"one")
    # The miss is slow: a hit answered before it would overtake it.
    origin.set("/two", headers={"Cache-Control": "no-store"}, body=b"two", delay=0.2)
    origin.set("/three", headers=CACHEABLE, body=b"three")
    proxy = await start_proxy(origin.url)
    await fill(proxy, "/one")
    await fill(proxy, "/three")
    conn = await RawClient.connect(proxy.proxy_port)

    conn.send(get("/one") + get("/one") + get("/two") + get("/three") + get("/one"))
    bodies = [(await conn.answer()).body for _ in range(5)]

    assert bodies == [b"one", b"one", b"two", b"three", b"one"]
    assert lane(proxy).answered == 2  # the two before the miss
    await conn.close()


async def test_head_gets_the_get_head_without_a_body(
    origin: Origin, start_proxy: StartProxy
) -> None:
    origin.set("/page", headers=CACHEABLE, body=b"twelve bytes")
    proxy = await start_proxy(origin.url)
    await fill(proxy, "/page")
    conn = await RawClient.connect(proxy.proxy_port)

    conn.send(get("/page", method="HEAD") + get("/page"))
    head = await conn.answer(head_only=True)
    after = await conn.answer()  # framing intact: no body bytes were sent for the HEAD

    assert head.status == 200
    assert head.headers["Content-Length"] == "12"
    assert head.raw.endswith(b"\r\n\r\n")
    assert head.headers["Cache-Status"].startswith("warmproxy; hit")
    assert after.body == b"twelve bytes"
    assert lane(proxy).answered == 2
    await conn.close()


async def test_gzip_and_identity_clients_get_their_own_variant(
    origin: Origin, start_proxy: StartProxy
) -> None:
    plain = b"a page that compresses " * 20

    async def negotiated(request: web.Request) -> web.Response:
        headers = {"Cache-Control": "max-age=60", "Vary": "Accept-Encoding"}
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            headers["Content-Encoding"] = "gzip"
            return web.Response(
                body=gzip.compress(plain), headers=headers, content_type="text/html"
            )
        return web.Response(body=plain, headers=headers, content_type="text/html")

    origin.handle("/page", negotiated)
    proxy = await start_proxy(origin.url)
    await fill(proxy, "/page", **{"Accept-Encoding": "gzip, deflate"})
    await fill(proxy, "/page")  # no Accept-Encoding: the identity variant

    browser = await RawClient.connect(proxy.proxy_port)
    browser.send(get("/page", "Accept-Encoding: deflate, gzip"))  # same members, other order
    zipped = await browser.answer()
    script = await RawClient.connect(proxy.proxy_port)
    script.send(get("/page"))
    identity = await script.answer()

    assert zipped.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(zipped.body) == plain
    assert "Content-Encoding" not in identity.headers
    assert identity.body == plain
    assert lane(proxy).answered == 2
    assert origin.count("/page") == 2

    # No stored variant for exactly "br": the handler matches it by coding.
    other = await RawClient.connect(proxy.proxy_port)
    other.send(get("/page", "Accept-Encoding: br"))
    by_coding = await other.answer()
    assert by_coding.body == plain and "Content-Encoding" not in by_coding.headers
    assert lane(proxy).answered == 2
    for conn in (browser, script, other):
        await conn.close()


async def test_no_cache_and_if_none_match_go_to_the_handler(
    origin: Origin, start_proxy: StartProxy
) -> None:
    origin.set("/doc", headers={**CACHEABLE, "ETag": '"v1"'}, body=b"document")
    proxy = await start_proxy(origin.url)
    await fill(proxy, "/doc")
    conn = await RawClient.connect(proxy.proxy_port)

    conn.send(get("/doc", 'If-None-Match: "v1"'))
    not_modified = await conn.answer()
    assert not_modified.status == 304  # answered from the cache by the handler
    assert origin.count("/doc") == 1

    conn.send(get("/doc", "Cache-Control: no-cache"))
    validated = await conn.answer()
    assert (validated.status, validated.body) == (200, b"document")
    assert origin.count("/doc") == 2  # RFC 9111 §5.2.1.4: the origin was asked
    assert lane(proxy).answered == 0
    await conn.close()


async def test_age_grows_with_the_clock(
    origin: Origin, start_proxy: StartProxy, clock: ManualClock
) -> None:
    origin.set("/aging", headers=dated(clock), body=b"x")
    proxy = await start_proxy(origin.url, clock)
    await fill(proxy, "/aging")
    conn = await RawClient.connect(proxy.proxy_port)

    clock.advance(7)
    conn.send(get("/aging"))
    answer = await conn.answer()
    clock.advance(10)
    conn.send(get("/aging"))
    later = await conn.answer()

    assert answer.headers["Age"] == "7"
    assert answer.headers["Cache-Status"] == "warmproxy; hit; ttl=53"
    assert later.headers["Age"] == "17"
    assert later.headers["Cache-Status"] == "warmproxy; hit; ttl=43"
    assert lane(proxy).answered == 2
    await conn.close()


async def test_a_stale_entry_goes_to_the_handler_which_revalidates(
    origin: Origin, start_proxy: StartProxy, clock: ManualClock
) -> None:
    origin.set(
        "/news", headers=dated(clock, ETag='"n1"', **{"Cache-Control": "max-age=10"}), body=b"news"
    )
    proxy = await start_proxy(origin.url, clock)
    await fill(proxy, "/news")
    clock.advance(11)
    conn = await RawClient.connect(proxy.proxy_port)

    conn.send(get("/news"))
    answer = await conn.answer()

    assert (answer.status, answer.body) == (200, b"news")
    assert "hit" not in answer.headers["Cache-Status"].split("; ")
    assert origin.count("/news") == 2
    assert origin.last("/news").headers.get("If-None-Match") == '"n1"'
    assert lane(proxy).answered == 0
    await conn.close()


async def test_fast_lane_hits_are_counted_and_observed_like_handler_hits(
    origin: Origin, start_proxy: StartProxy
) -> None:
    origin.set("/seen?b=2&a=1", headers=CACHEABLE, body=b"observed")
    proxy = await start_proxy(origin.url)
    await fill(proxy, "/seen?b=2&a=1")
    events: list[AccessEvent] = []
    proxy.hub.subscribe(events.append)
    samples = proxy.metrics.registry.get_sample_value
    labels = {"method": "GET", "outcome": "hit"}
    hits_before = samples("warmproxy_requests_total", labels) or 0.0
    conn = await RawClient.connect(proxy.proxy_port)

    conn.send(get("/seen?b=2&a=1", "X-Request-Id: trace-42"))
    await conn.answer()
    await eventually(lambda: len(events) == 1)

    assert lane(proxy).answered == 1
    assert samples("warmproxy_requests_total", labels) == hits_before + 1
    event = events[0]
    assert (event.outcome, event.method, event.status) == (Outcome.HIT, "GET", 200)
    assert (event.url, event.key, event.host) == ("/seen?b=2&a=1", "/seen?b=2&a=1", "")
    assert event.bytes == len(b"observed")
    assert event.client == "127.0.0.1"
    assert event.request_id == "trace-42"
    assert event.fresh_until > time.time()
    assert event.latency >= 0
    await conn.close()


async def test_oversized_heads_get_aiohttps_answer(origin: Origin, start_proxy: StartProxy) -> None:
    origin.set("/big", headers=CACHEABLE, body=b"b")
    proxy = await start_proxy(origin.url, proxy={"max_header_size": 1024})
    await fill(proxy, "/big")

    too_long = await RawClient.connect(proxy.proxy_port)
    too_long.send(get("/big", "X-Padding: " + "p" * 2000))
    refused = await too_long.answer()
    many = await RawClient.connect(proxy.proxy_port)
    many.send(get("/big", *(f"X-Field-{i}: v" for i in range(150))))
    too_many = await many.answer()
    # Just under the limit: aiohttp accepts it, and the answer is a hit.
    close = await RawClient.connect(proxy.proxy_port)
    close.send(get("/big", "X-Padding: " + "p" * 1010))
    near = await close.answer()

    assert refused.status in (400, 431)
    assert too_many.status in (400, 431)
    assert (near.status, near.body) == (200, b"b")
    assert near.headers["Cache-Status"].startswith("warmproxy; hit")
    assert lane(proxy).answered == 0
    assert origin.count("/big") == 1
    for conn in (too_long, many, close):
        await conn.close()


async def test_a_head_split_across_packets_is_still_a_fast_hit(
    origin: Origin, start_proxy: StartProxy
) -> None:
    origin.set("/split", headers=CACHEABLE, body=b"joined")
    proxy = await start_proxy(origin.url)
    await fill(proxy, "/split")
    conn = await RawClient.connect(proxy.proxy_port)

    request = get("/split", "Accept: text/plain").encode()
    for i in range(0, len(request), 7):
        conn.send(request[i : i + 7])
        await conn.writer.drain()
        await asyncio.sleep(0.005)
    answer = await conn.answer()

    assert answer.body == b"joined"
    assert lane(proxy).answered == 1
    await conn.close()


async def test_connection_close_and_http_1_0_end_the_connection(
    origin: Origin, start_proxy: StartProxy
) -> None:
    origin.set("/bye", headers=CACHEABLE, body=b"bye")
    proxy = await start_proxy(origin.url)
    await fill(proxy, "/bye")

    closing = await RawClient.connect(proxy.proxy_port)
    closing.send(get("/bye", "Connection: close") + get("/bye"))
    answer = await closing.answer()
    assert answer.headers["Connection"] == "close"
    assert await closing.closed_by_proxy()  # the pipelined second request is not answered

    old = await RawClient.connect(proxy.proxy_port)
    old.send("GET /bye HTTP/1.0\r\n\r\n")
    plain = await old.answer()
    assert plain.raw.startswith(b"HTTP/1.0 200 OK\r\n")
    assert await old.closed_by_proxy()

    kept = await RawClient.connect(proxy.proxy_port)
    kept.send("GET /bye HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" * 2)
    first, second = await kept.answer(), await kept.answer()
    assert first.headers["Connection"] == second.headers["Connection"] == "keep-alive"
    assert lane(proxy).answered == 4
    for conn in (closing, old, kept):
        await conn.close()


async def test_answers_are_the_handlers_byte_for_byte(
    origin: Origin, start_proxy: StartProxy, clock: ManualClock
) -> None:
    origin.set("/same", headers=dated(clock, ETag='"s"', **{"X-Custom": "kept"}), body=b"identical")
    bare = {"Cache-Control": "max-age=60", "Date": format_http_date(clock.now)}
    origin.set("/bare", headers=bare, body=b"")
    zipped = dated(clock, Vary="Accept-Encoding", **{"Content-Encoding": "gzip"})
    origin.set("/zipped", headers=zipped, body=gzip.compress(b"zipped"))
    fast = await start_proxy(origin.url, clock)
    slow = await start_proxy(origin.url, clock, proxy={"fast_lane": False})
    assert slow.fast_lane is None
    requests = [
        get("/same"),
        get("/same", method="HEAD"),
        get("/bare"),
        get("/bare", method="HEAD"),
        "GET /same HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        get("/same", "Connection: close"),
        get("/zipped", "Accept-Encoding: gzip"),  # a Vary variant: the handler's full path
    ]
    answers: dict[str, list[bytes]] = {}
    for name, proxy in (("fast", fast), ("slow", slow)):
        await fill(proxy, "/same")
        await fill(proxy, "/bare")
        await fill(proxy, "/zipped", **{"Accept-Encoding": "gzip"})
        clock.advance(3)
        raw = []
        for request in requests:
            conn = await RawClient.connect(proxy.proxy_port)
            conn.send(request)
            raw.append((await conn.answer(head_only=request.startswith("HEAD"))).raw)
            await conn.close()
        answers[name] = raw
        clock.advance(-3)

    assert answers["fast"] == answers["slow"]
    assert b"Age: 3\r\n" in answers["fast"][0]
    assert lane(fast).answered == len(requests)


async def test_with_the_fast_lane_off_hits_and_pipelining_still_work(
    origin: Origin, start_proxy: StartProxy
) -> None:
    origin.set("/off", headers=CACHEABLE, body=b"off")
    origin.set("/other", headers={"Cache-Control": "no-store"}, body=b"other")
    proxy = await start_proxy(origin.url, proxy={"fast_lane": False})
    await fill(proxy, "/off")
    conn = await RawClient.connect(proxy.proxy_port)

    conn.send(get("/off") + get("/other") + get("/off"))
    answers = [await conn.answer() for _ in range(3)]

    assert proxy.fast_lane is None
    assert [a.body for a in answers] == [b"off", b"other", b"off"]
    assert answers[0].headers["Cache-Status"].startswith("warmproxy; hit")
    await conn.close()


async def test_stopping_the_proxy_closes_idle_fast_lane_connections(
    origin: Origin, start_proxy: StartProxy
) -> None:
    origin.set("/idle", headers=CACHEABLE, body=b"idle")
    proxy = await start_proxy(origin.url)
    await fill(proxy, "/idle")
    conn = await RawClient.connect(proxy.proxy_port)
    conn.send(get("/idle"))
    await conn.answer()

    await proxy.stop()

    assert await conn.closed_by_proxy()
    await conn.close()


async def test_with_redis_an_entry_that_left_l1_is_read_back_and_answered_fast(
    origin: Origin,
    start_proxy: StartProxy,
    clock: ManualClock,
    redis_url: str,
    redis_prefix: str,
) -> None:
    origin.set("/shared", headers=dated(clock), body=b"from redis")
    origin.set("/gone", headers={"Cache-Control": "no-store"}, body=b"never stored")
    redis = {"store": "redis", "redis_url": redis_url, "redis_prefix": redis_prefix}
    proxy = await start_proxy(origin.url, clock, cache={**redis, "l1_ttl": 1.0})
    await fill(proxy, "/shared")
    handed_over = lane(proxy).handed_over
    conn = await RawClient.connect(proxy.proxy_port)

    clock.advance(5)  # long past the L1 copy's life, well within max-age
    conn.send(get("/shared") + get("/shared"))
    first, second = await conn.answer(), await conn.answer()

    assert (first.body, second.body) == (b"from redis", b"from redis")
    assert first.headers["Age"] == "5"
    assert first.headers["Cache-Status"] == "warmproxy; hit; ttl=55"
    assert (lane(proxy).answered, lane(proxy).handed_over) == (2, handed_over)
    assert origin.count("/shared") == 1

    # Not in Redis either: the handler answers, in order after the hits.
    conn.send(get("/gone") + get("/shared"))
    missed, hit = await conn.answer(), await conn.answer()
    assert (missed.body, hit.body) == (b"never stored", b"from redis")
    assert lane(proxy).handed_over == handed_over + 1
    await conn.close()


async def test_per_host_keys_keep_each_hosts_entry_its_own(
    origin: Origin, start_proxy: StartProxy
) -> None:
    async def by_host(request: web.Request) -> web.Response:
        return web.Response(text=f"page of {request.headers['Host']}", headers=CACHEABLE)

    origin.handle("/home", by_host)
    proxy = await start_proxy(origin.url, proxy={"host_keying": "per-host", "preserve_host": True})
    async with (
        aiohttp.ClientSession() as session,
        session.get(url(proxy, "/home"), headers={"Host": "a.example"}) as response,
    ):
        assert await response.text() == "page of a.example"

    a = await RawClient.connect(proxy.proxy_port)
    a.send("GET /home HTTP/1.1\r\nHost: A.example\r\n\r\n")
    hit = await a.answer()
    b = await RawClient.connect(proxy.proxy_port)
    b.send("GET /home HTTP/1.1\r\nHost: b.example\r\n\r\n")
    other = await b.answer()

    assert hit.body == b"page of a.example"
    assert hit.headers["Cache-Status"].startswith("warmproxy; hit")
    assert other.body == b"page of b.example"  # never a.example's entry
    assert lane(proxy).answered == 1
    assert origin.count("/home") == 2
    for conn in (a, b):
        await conn.close()


async def test_a_get_with_a_body_goes_to_the_handler(
    origin: Origin, start_proxy: StartProxy
) -> None:
    origin.set("/search", headers=CACHEABLE, body=b"cached results")
    proxy = await start_proxy(origin.url)
    await fill(proxy, "/search")
    conn = await RawClient.connect(proxy.proxy_port)

    # RFC 9110 §9.3.1: the body may select the answer; the cache must not.
    conn.send(get("/search", "Content-Length: 7") + "q=shoes" + get("/search"))
    searched, cached = await conn.answer(), await conn.answer()

    assert origin.count("/search") == 2
    assert origin.last("/search").body == b"q=shoes"
    assert "fwd=bypass" in searched.headers["Cache-Status"]
    assert cached.headers["Cache-Status"].startswith("warmproxy; hit")
    assert lane(proxy).answered == 0
    await conn.close()


async def test_a_client_that_stops_reading_gets_every_answer_in_order(
    origin: Origin, start_proxy: StartProxy
) -> None:
    bodies = {f"/big/{i}": bytes([65 + i]) * 100_000 for i in range(3)}
    for path, body in bodies.items():
        origin.set(path, headers=CACHEABLE, body=body)
    proxy = await start_proxy(origin.url)
    for path in bodies:
        await fill(proxy, path)
    order = [f"/big/{i % 3}" for i in range(120)]
    conn = await RawClient.connect(proxy.proxy_port)

    # 12 MB of answers asked for at once, read only afterwards: the transport
    # pauses writing and the fast lane leaves the rest to aiohttp.
    conn.send("".join(get(path) for path in order))
    await conn.writer.drain()
    await asyncio.sleep(0.2)
    answers = [await conn.answer() for _ in order]

    assert [a.body for a in answers] == [bodies[path] for path in order]
    assert 0 < lane(proxy).answered < len(order)
    await conn.close()
