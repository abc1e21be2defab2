"""Request ids: every request sent to the origin carries one, and the access log
names it with the cache outcome, so the origin's logs and ours can be joined."""

from __future__ import annotations

import logging

import aiohttp
import pytest

from tests.proxy.conftest import Origin, ProxyFactory, eventually, url

CACHEABLE = {"Cache-Control": "public, max-age=60"}


def access_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "warmproxy.access"]


async def test_a_miss_sends_a_new_id_to_the_origin_and_logs_it(
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="warmproxy.access")
    origin.set("/a", headers=CACHEABLE, body=b"a")
    proxy = await make_proxy(origin.url, logging={"access_log": True})
    for _ in range(2):
        async with client.get(url(proxy, "/a")) as response:
            assert response.status == 200
    await eventually(lambda: len(access_lines(caplog)) == 2)
    sent = origin.last("/a").headers["X-Request-Id"]
    miss, hit = access_lines(caplog)
    assert (miss.cache, miss.request_id, miss.status) == ("miss", sent, 200)  # type: ignore[attr-defined]
    # The hit never reached the origin: its line has an id of its own.
    assert hit.cache == "hit"  # type: ignore[attr-defined]
    assert hit.request_id and hit.request_id != sent  # type: ignore[attr-defined]
    assert origin.count("/a") == 1


async def test_the_clients_id_is_kept_and_an_unusable_one_replaced(
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="warmproxy.access")
    origin.set("/b", headers={"Cache-Control": "no-store"}, body=b"b")
    proxy = await make_proxy(origin.url, logging={"access_log": True})
    async with client.get(url(proxy, "/b"), headers={"X-Request-Id": "abc-123"}) as response:
        await response.read()
    assert origin.last("/b").headers.getall("X-Request-Id") == ["abc-123"]
    async with client.get(url(proxy, "/b"), headers={"X-Request-Id": "x" * 500}) as response:
        await response.read()
    replaced = origin.last("/b").headers.getall("X-Request-Id")
    assert len(replaced) == 1 and len(replaced[0]) < 40
    await eventually(lambda: len(access_lines(caplog)) == 2)
    ids = [r.request_id for r in access_lines(caplog)]  # type: ignore[attr-defined]
    assert ids == ["abc-123", replaced[0]]


async def test_no_access_log_unless_asked_for(
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="warmproxy.access")
    origin.set("/c", headers=CACHEABLE, body=b"c")
    proxy = await make_proxy(origin.url)
    async with client.get(url(proxy, "/c")) as response:
        await response.read()
    await eventually(lambda: proxy.hub.emitted == 1)
    proxy.hub.drain()
    assert access_lines(caplog) == []
    assert "X-Request-Id" in origin.last("/c").headers
