"""Request ids: every request sent to the origin carries one, and the access log
names it with the cache outcome, so the origin's logs and ours can be joined."""

from __future__ import annotations

import io
from typing import Any

import aiohttp
import orjson

from proxy.access_log import AccessLog
from proxy.app import Warmproxy
from tests.proxy.conftest import Origin, ProxyFactory, eventually, url

CACHEABLE = {"Cache-Control": "public, max-age=60"}


def capture(proxy: Warmproxy) -> io.BytesIO:
    assert proxy.access_log is not None
    stream = io.BytesIO()
    proxy.access_log.stream = stream
    return stream


def lines(stream: io.BytesIO) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


async def test_a_miss_sends_a_new_id_to_the_origin_and_logs_it(
    origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    origin.set("/a", headers=CACHEABLE, body=b"a")
    proxy = await make_proxy(origin.url, logging={"access_log": True, "format": "json"})
    stream = capture(proxy)
    for _ in range(2):
        async with client.get(url(proxy, "/a")) as response:
            assert response.status == 200
    await eventually(lambda: len(lines(stream)) == 2)
    sent = origin.last("/a").headers["X-Request-Id"]
    miss, hit = lines(stream)
    assert (miss["event"], miss["logger"]) == ("request", "warmproxy.access")
    assert (miss["cache"], miss["request_id"], miss["status"]) == ("miss", sent, 200)
    assert (miss["method"], miss["path"], miss["bytes"]) == ("GET", "/a", 1)
    assert miss["latency_ms"] > 0 and miss["timestamp"].endswith("Z")
    # The hit never reached the origin: its line has an id of its own.
    assert hit["cache"] == "hit"
    assert hit["request_id"] and hit["request_id"] != sent
    assert origin.count("/a") == 1


async def test_the_clients_id_is_kept_and_an_unusable_one_replaced(
    origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    origin.set("/b", headers={"Cache-Control": "no-store"}, body=b"b")
    proxy = await make_proxy(origin.url, logging={"access_log": True, "format": "json"})
    stream = capture(proxy)
    async with client.get(url(proxy, "/b"), headers={"X-Request-Id": "abc-123"}) as response:
        await response.read()
    assert origin.last("/b").headers.getall("X-Request-Id") == ["abc-123"]
    async with client.get(url(proxy, "/b"), headers={"X-Request-Id": "x" * 500}) as response:
        await response.read()
    replaced = origin.last("/b").headers.getall("X-Request-Id")
    assert len(replaced) == 1 and len(replaced[0]) < 40
    await eventually(lambda: len(lines(stream)) == 2)
    assert [line["request_id"] for line in lines(stream)] == ["abc-123", replaced[0]]


async def test_a_terminal_gets_short_text_lines() -> None:
    from proxy.observe import AccessEvent, Outcome

    stream = io.BytesIO()
    log = AccessLog(stream, as_json=False)
    log(AccessEvent(0.0, "/k", "/k", "GET", Outcome.HIT, 200, 0.0012, 5, "c", request_id="r-1"))
    assert (
        stream.getvalue() == b"1970-01-01T00:00:00Z request GET '/k' 200 cache=hit 1.2ms id=r-1\n"
    )


async def test_no_access_log_unless_asked_for(
    origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    origin.set("/c", headers=CACHEABLE, body=b"c")
    proxy = await make_proxy(origin.url)
    assert proxy.access_log is None
    async with client.get(url(proxy, "/c")) as response:
        await response.read()
    assert "X-Request-Id" in origin.last("/c").headers
