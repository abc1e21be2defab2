"""The worker relay's encodings: what one worker sends is what the primary reads."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from proxy.app import Warmproxy
from proxy.config import load_settings
from proxy.entry import CacheEntry, VaryIndex
from proxy.metrics import ProxyMetrics
from proxy.observe import AccessEvent, Outcome
from proxy.worker_relay import (
    MAX_RELAYED_ITEM_BYTES,
    FrameError,
    Kind,
    add_counts,
    count_growth,
    count_snapshot,
    decode_events,
    encode_events,
    parse_put,
    parse_touch,
    put_frame,
    touch_frame,
)
from proxy.workers import WorkerRole
from tests.proxy.conftest import Origin, control_url, eventually, key, url

_FRAME_HEADER = 5  # the frame's length (4 bytes) and kind (1 byte)


def _entry(body: bytes) -> CacheEntry:
    now = time.time()
    return CacheEntry(
        url="/a",
        status=200,
        headers=[("Content-Type", "text/plain"), ("X-Bytes", "caf\udcff")],
        body=body,
        born=now,
        stored_at=now,
        fresh_until=now + 60,
        stale_while_revalidate_until=now + 60,
        stale_if_error_until=now + 60,
        expires_at=now + 60,
        vary=("accept-encoding",),
        vary_values=("gzip",),
        tags=("t1",),
        warmed=True,
    )


def test_an_entry_crosses_whole_with_its_deadline() -> None:
    entry = _entry(b"x" * 100)
    data = put_frame("/a#vgen", entry, entry.expires_at)
    assert data is not None and data[4] == Kind.PUT
    key, item, deadline = parse_put(data[5:])
    assert (key, item, deadline) == ("/a#vgen", entry, entry.expires_at)
    index = VaryIndex(("accept-encoding",), "g1", entry.expires_at, ["/a#vg1"])
    data = put_frame("/a", index, index.expires_at)
    assert data is not None and parse_put(data[5:])[1] == index


def test_an_entry_over_the_limit_is_not_relayed() -> None:
    assert put_frame("/big", _entry(b"x" * MAX_RELAYED_ITEM_BYTES), 0.0) is None


def test_a_malformed_put_is_refused() -> None:
    with pytest.raises(FrameError):
        parse_put(b"\x00\x01")


def test_access_events_cross_unchanged() -> None:
    events = [
        AccessEvent(
            ts=1.5,
            key="//h/a",
            url="/a?q=1",
            method="GET",
            outcome=Outcome.STALE,
            status=200,
            latency=0.002,
            bytes=10,
            client="10.0.0.1",
            host="h",
            fresh_until=9.0,
            warmed=True,
            vary=("accept-encoding",),
            vary_values=(None,),
            coding="gzip",
        ),
        AccessEvent(1.0, "/b", "/b", "HEAD", Outcome.MISS, 404, 0.1, 0, "c"),
    ]
    decoded = decode_events(encode_events(events))
    assert decoded == events
    assert decoded[0].outcome is Outcome.STALE


def test_garbage_events_are_refused() -> None:
    with pytest.raises(FrameError):
        decode_events(b'[["not", "an", "event"]]')


def test_another_workers_counts_add_up_in_the_primary() -> None:
    worker, primary = ProxyMetrics(), ProxyMetrics()
    sent = count_snapshot(worker)
    for _ in range(3):
        worker.count_request("hit", "GET", 0.0002)
    worker.count_request("miss", "GET", 0.2)
    worker.origin_errors.labels("timeout").inc()
    worker.origin_duration.labels("client").observe(0.02)
    primary.count_request("hit", "GET", 0.0002)
    primary.origin_duration.labels("client").observe(3.0)

    growth = count_growth(count_snapshot(worker), sent)
    add_counts(primary, growth)

    assert primary.requests[("hit", "GET")] == 4 and primary.requests[("miss", "GET")] == 1
    assert sum(primary.request_durations["hit"].counts) == 4
    assert primary.request_durations["miss"].seconds == pytest.approx(0.2)
    text = primary.render().decode()
    assert 'warmproxy_origin_errors_total{reason="timeout"} 1.0' in text
    assert 'warmproxy_origin_request_duration_seconds_count{purpose="client"} 2.0' in text
    assert 'warmproxy_origin_request_duration_seconds_bucket{le="0.025",purpose="client"} 1.0' in (
        text
    )
    # Sent once: the next report carries only what grew since.
    again = count_snapshot(worker)
    assert count_growth(again, count_snapshot(worker)) == []


@pytest.fixture
async def two_workers(
    origin: Origin, tmp_path: Path
) -> AsyncIterator[Callable[..., Awaitable[tuple[Warmproxy, Warmproxy]]]]:
    """Starts two workers in one loop, each on a port of its own (so a
    request picks its worker), joined by the relay as ``serve --workers 2``
    joins them; ``cache`` settings for both.  Stopped after the test."""
    workers: list[Warmproxy] = []

    async def start(**cache: Any) -> tuple[Warmproxy, Warmproxy]:
        relay = str(tmp_path / "relay.sock")
        for index in (0, 1):
            settings = load_settings(
                None,
                {
                    "proxy": {"origin": origin.url, "listen": "127.0.0.1:0"},
                    "control": {"listen": "127.0.0.1:0"},
                    "state": {"dir": str(tmp_path / "state")},
                    "cache": cache,
                },
            )
            worker = Warmproxy(settings, worker=WorkerRole(index, 2, relay))
            await worker.start()
            workers.append(worker)
        return workers[0], workers[1]

    yield start
    for worker in reversed(workers):
        await worker.stop()


async def test_two_workers_share_fills_counts_and_a_purge_of_what_one_holds(
    origin: Origin,
    client: aiohttp.ClientSession,
    two_workers: Callable[..., Awaitable[tuple[Warmproxy, Warmproxy]]],
) -> None:
    """Fills, counts and a purge reach the other worker."""

    def cached(body: bytes) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            return web.Response(body=body, headers={"Cache-Control": "max-age=60"})

        return handler

    origin.routes["/small"] = cached(b"small")
    origin.routes["/big/1"] = cached(b"x" * (MAX_RELAYED_ITEM_BYTES + 1))
    primary, other = await two_workers()

    for path in ("/small", "/big/1"):
        async with client.get(url(other, path)) as response:
            assert response.status == 200
            await response.read()
    # The small fill reached the primary; the big one stayed where it was
    # fetched, counted as not passed on.
    await eventually(lambda: primary.cache.peek(key(primary, "/small")) is not None)
    assert primary.cache.peek(key(primary, "/big/1")) is None
    assert other.cache.peek(key(other, "/big/1")) is not None
    skipped = other.metrics.registry.get_sample_value(
        "warmproxy_worker_relay_skipped_total", {"what": "item"}
    )
    assert skipped == 1

    # A purge by glob on the primary reaches what only the other holds.
    async with client.post(
        control_url(primary, "/cache/warming/purge"), json={"pattern": "/big/*"}
    ) as response:
        assert response.status == 200
    await eventually(lambda: other.cache.peek(key(other, "/big/1")) is None)

    # The primary's counts and tracker include the other worker's requests.
    def counted() -> bool:
        return sum(primary.metrics.requests.values()) == 2

    await eventually(counted)
    await eventually(lambda: primary.warmer.tracker.totals().requests == 2)


def test_a_touch_names_its_keys_and_garbage_is_refused() -> None:
    data = touch_frame(["/a", "/a#v1"])
    assert data[_FRAME_HEADER:] and parse_touch(data[_FRAME_HEADER:]) == ["/a", "/a#v1"]
    for garbage in (b"{", b'{"a": 1}', b"[1]", orjson.dumps(["k"] * 65)):
        with pytest.raises(FrameError):
            parse_touch(garbage)


async def test_a_touch_in_one_worker_keeps_the_entry_in_every_workers_store(
    origin: Origin,
    client: aiohttp.ClientSession,
    two_workers: Callable[..., Awaitable[tuple[Warmproxy, Warmproxy]]],
) -> None:
    """Two workers with a memory store of three entries each: the primary's
    warmer keeps /a cached by touching it (warmer.retention); the other
    worker, whose own clients never asked for /a again, keeps it too, and
    evicts what was least recently used in every copy instead."""

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=request.path.encode(), headers={"Cache-Control": "max-age=60"})

    for path in ("/a", "/b", "/c", "/d"):
        origin.routes[path] = handler
    primary, other = await two_workers(max_entries=3)
    for path in ("/a", "/b", "/c"):
        async with client.get(url(other, path)) as response:
            await response.read()
    await eventually(lambda: primary.cache.peek(key(primary, "/c")) is not None)
    # The primary's warmer touches /a (a lookup; nothing fetched) ...
    fetched = origin.count("/a")
    assert await primary.filler.touch("/a") is not None
    assert origin.count("/a") == fetched
    # ... so /b is the least recently used everywhere: a fourth
    # entry evicts it, and /a stays in the other worker's store.
    async with client.get(url(primary, "/d")) as response:
        await response.read()
    await eventually(lambda: other.cache.peek(key(other, "/d")) is not None)
    assert other.cache.peek(key(other, "/a")) is not None
    assert other.cache.peek(key(other, "/b")) is None
