"""The executor against a real origin through the proxy's own fill path."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from proxy.app import Warmproxy
from proxy.warming import fill_through
from tests.proxy.conftest import Origin, ProxyFactory, eventually
from warmer.clock import ManualClock
from warmer.executor import WarmExecutor
from warmer.model import Reason, WarmRequest
from warmer.pacing import AdaptiveConcurrency, ResourceGuard

CACHEABLE = {"Cache-Control": "public, max-age=60"}
LEVELS = ("high", "medium", "low")


@pytest.fixture
async def proxy(origin: Origin, make_proxy: ProxyFactory) -> Warmproxy:
    return await make_proxy(
        origin.url,
        proxy={"public_host": "shop.example"},
        strategies={"reactive": {"enabled": False}},
    )


@pytest.fixture
async def run_executor() -> AsyncIterator[Callable[..., WarmExecutor]]:
    tasks: list[asyncio.Task[None]] = []

    def start(proxy: Warmproxy, **options: Any) -> WarmExecutor:
        executor = WarmExecutor(fill_through(proxy.filler), levels=LEVELS, **options)
        tasks.append(asyncio.get_running_loop().create_task(executor.run_forever()))
        return executor

    yield start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def arrivals(origin: Origin, times: list[float], prefix: str) -> None:
    async def handler(request: web.Request) -> web.Response:
        times.append(time.monotonic())
        return web.Response(body=b"x", headers=CACHEABLE)

    for n in range(100):
        origin.handle(f"{prefix}{n}", handler)


async def test_rate_limit_is_held(
    proxy: Warmproxy, origin: Origin, run_executor: Callable[..., WarmExecutor]
) -> None:
    times: list[float] = []
    arrivals(origin, times, "/r/")
    executor = run_executor(proxy, parallelism=20, rate_limit=20.0)
    run = executor.new_run("test")
    executor.submit([WarmRequest(f"/r/{n}") for n in range(30)], run)
    executor.seal(run)
    await asyncio.wait_for(run.done.wait(), 10)
    assert run.progress.success == 30
    assert len(times) == 30
    # 20 per second: 30 fetches need at least 29 intervals of 50 ms.
    assert times[-1] - times[0] >= 29 * 0.05 * 0.95
    for i in range(len(times) - 21):
        assert times[i + 21] - times[i] >= 0.95  # never 21 within a second


async def test_fresh_entries_cost_no_rate_limit_tokens(
    proxy: Warmproxy, origin: Origin, run_executor: Callable[..., WarmExecutor]
) -> None:
    times: list[float] = []
    arrivals(origin, times, "/f/")
    executor = run_executor(proxy, rate_limit=2.0)
    first = executor.new_run("fill")
    executor.submit([WarmRequest("/f/1")], first)
    executor.seal(first)
    await asyncio.wait_for(first.done.wait(), 5)
    started = time.monotonic()
    again = executor.new_run("again")
    executor.submit([WarmRequest("/f/1")] * 1, again)
    executor.seal(again)
    await asyncio.wait_for(again.done.wait(), 5)
    assert time.monotonic() - started < 0.4  # no 500 ms token wait for a fresh entry
    assert executor.counters.already_fresh["on-demand"] == 1
    assert len(times) == 1


async def test_retries_back_off_exponentially(
    proxy: Warmproxy, origin: Origin, run_executor: Callable[..., WarmExecutor]
) -> None:
    times: list[float] = []

    async def flaky(request: web.Request) -> web.Response:
        times.append(time.monotonic())
        if len(times) <= 3:
            return web.Response(status=503)
        return web.Response(body=b"ok", headers=CACHEABLE)

    origin.handle("/flaky", flaky)
    executor = run_executor(
        proxy, retry_attempts=3, retry_base_delay=0.1, retry_max_delay=5.0, rand=lambda: 0.999
    )
    run = executor.new_run("test")
    executor.submit([WarmRequest("/flaky")], run)
    executor.seal(run)
    await asyncio.wait_for(run.done.wait(), 10)
    assert run.progress.success == 1
    assert executor.counters.retried["on-demand"] == 3
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(gaps) == 3
    for gap, expected in zip(gaps, (0.1, 0.2, 0.4), strict=True):
        assert gap >= expected * 0.95


async def test_retry_delays_are_waited_on_the_executors_clock(
    proxy: Warmproxy, origin: Origin, run_executor: Callable[..., WarmExecutor]
) -> None:
    """A retry 600 s away on a manual clock happens when the clock is moved
    on, not after 600 real seconds (a live replay or a test on virtual time)."""
    clock = ManualClock()
    answers: list[int] = []

    async def flaky(request: web.Request) -> web.Response:
        answers.append(503 if not answers else 200)
        if answers[-1] == 503:
            return web.Response(status=503)
        return web.Response(body=b"ok", headers=CACHEABLE)

    origin.handle("/flaky-clocked", flaky)
    executor = run_executor(
        proxy,
        retry_attempts=1,
        retry_base_delay=600.0,
        retry_max_delay=600.0,
        rand=lambda: 0.999,
        clock=clock,
        sleep=clock.sleep,
    )
    run = executor.new_run("test")
    executor.submit([WarmRequest("/flaky-clocked")], run)
    executor.seal(run)
    await eventually(lambda: answers == [503])
    await asyncio.sleep(0.2)
    assert answers == [503]  # still waiting: 600 s have not passed on the clock
    clock.advance(601.0)
    await asyncio.wait_for(run.done.wait(), 5)
    assert answers == [503, 200] and run.progress.success == 1


async def test_retries_give_up_and_the_error_is_kept(
    proxy: Warmproxy, origin: Origin, run_executor: Callable[..., WarmExecutor]
) -> None:
    origin.set("/down", status=502)
    executor = run_executor(proxy, retry_attempts=2, retry_base_delay=0.01)
    run = executor.new_run("test")
    executor.submit([WarmRequest("/down")], run)
    executor.seal(run)
    await asyncio.wait_for(run.done.wait(), 10)
    status = run.progress.to_status(time.time())
    assert status["status"] == "failed"
    assert status["errors"] == [{"key": "/down", "error": "origin answered 502", "retry_count": 2}]
    assert origin.count("/down") == 3
    assert executor.counters.failed["on-demand"] == 1


async def test_priorities_go_first(
    proxy: Warmproxy, origin: Origin, run_executor: Callable[..., WarmExecutor]
) -> None:
    order: list[str] = []

    async def record(request: web.Request) -> web.Response:
        order.append(request.path)
        return web.Response(body=b"x", headers=CACHEABLE)

    for name in ("low", "medium", "high"):
        origin.handle(f"/{name}", record)
    executor = WarmExecutor(fill_through(proxy.filler), levels=LEVELS, parallelism=1)
    run = executor.new_run("test")
    executor.submit(
        [
            WarmRequest("/low", "low"),
            WarmRequest("/medium", "medium"),
            WarmRequest("/high", "high"),
        ],
        run,
    )
    executor.seal(run)
    task = asyncio.get_running_loop().create_task(executor.run_forever())
    try:
        await asyncio.wait_for(run.done.wait(), 5)
    finally:
        task.cancel()
    assert order == ["/high", "/medium", "/low"]


async def test_concurrency_backs_off_from_a_slow_origin_and_recovers(
    proxy: Warmproxy, origin: Origin, run_executor: Callable[..., WarmExecutor]
) -> None:
    slow = {"on": True}
    in_flight = {"now": 0, "peak_while_slow": 0, "late_peak": 0}

    async def handler(request: web.Request) -> web.Response:
        in_flight["now"] += 1
        try:
            if slow["on"]:
                await asyncio.sleep(0.15)
            else:
                in_flight["late_peak"] = max(in_flight["late_peak"], in_flight["now"])
                await asyncio.sleep(0.005)
            return web.Response(body=b"x", headers=CACHEABLE)
        finally:
            in_flight["now"] -= 1

    for n in range(400):
        origin.handle(f"/a/{n}", handler)
    adaptive = AdaptiveConcurrency(max_limit=8, latency_target=0.05, error_rate_limit=0.5, window=8)
    executor = run_executor(proxy, parallelism=8, adaptive=adaptive)
    executor.submit([WarmRequest(f"/a/{n}") for n in range(60)])
    await eventually(lambda: adaptive.limit <= 2, within=15)
    assert executor.limit <= 2
    slow["on"] = False
    await executor.idle()
    executor.submit([WarmRequest(f"/a/{n}") for n in range(60, 400)])
    await eventually(lambda: adaptive.limit == 8, within=20)
    await executor.idle()
    assert in_flight["late_peak"] > 2
    assert adaptive.state()["decreases"] >= 1
    assert adaptive.state()["increases"] >= 1


async def test_a_timed_out_fetch_fails_the_item_but_its_fill_completes_whole(
    proxy: Warmproxy, origin: Origin, run_executor: Callable[..., WarmExecutor]
) -> None:
    origin.set("/slow", headers=CACHEABLE, body=b"complete body", delay=0.5)
    executor = run_executor(proxy, timeout=0.1, retry_attempts=0)
    run = executor.new_run("test")
    executor.submit([WarmRequest("/slow")], run)
    executor.seal(run)
    await asyncio.wait_for(run.done.wait(), 5)
    assert run.progress.failed == 1
    assert "timed out" in run.progress.errors()[0]["error"]
    # The fetch itself was not cut off half-way: its entry arrives whole.
    from multidict import CIMultiDict, CIMultiDictProxy

    async def stored() -> bool:
        lookup = await proxy.cache.lookup("/slow", CIMultiDictProxy(CIMultiDict()))
        return lookup.entry is not None and lookup.entry.body == b"complete body"

    deadline = time.monotonic() + 5
    while not await stored():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)


async def test_warming_pauses_while_the_process_is_over_its_memory_limit(
    proxy: Warmproxy, origin: Origin, run_executor: Callable[..., WarmExecutor]
) -> None:
    origin.set("/g", headers=CACHEABLE)
    guard = ResourceGuard(None, 1)  # one byte: this process is always over it
    executor = run_executor(proxy, guard=guard)
    run = executor.new_run("test")
    executor.submit([WarmRequest("/g")], run)
    executor.seal(run)
    await eventually(lambda: executor.paused)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(run.done.wait(), 1.5)
    assert origin.count("/g") == 0
    assert executor.state()["paused"] is True
    guard.max_memory_bytes = 1 << 50  # the limit raised: warming resumes by itself
    await asyncio.wait_for(run.done.wait(), 5)
    assert run.progress.success == 1
    assert not executor.paused


async def test_touches_look_entries_up_and_never_fetch(
    proxy: Warmproxy, origin: Origin, run_executor: Callable[..., WarmExecutor]
) -> None:
    """A strategy's touches (warmer.retention) keep what is cached and fetch
    nothing for what is not: counted kept or gone, never as warm fetches,
    and told to the result observer like any finished request."""
    times: list[float] = []
    arrivals(origin, times, "/t/")
    seen: list[tuple[str, bool]] = []
    executor = run_executor(
        proxy, rate_limit=1.0, on_result=lambda r, report, s: seen.append((r.url, report.gone))
    )
    fill = executor.new_run("fill")
    executor.submit([WarmRequest("/t/1")], fill)
    executor.seal(fill)
    await asyncio.wait_for(fill.done.wait(), 5)
    assert len(times) == 1
    touches = [WarmRequest(path, "low", Reason.PREDICTIVE, touch=True) for path in ("/t/1", "/t/2")]
    # Touches take no place in the queue of fetches.
    assert executor.submit(touches) == 2
    assert len(executor.queue) == 0
    await eventually(lambda: len(seen) == 3)
    assert seen[1:] == [("/t/1", False), ("/t/2", True)]
    assert executor.counters.kept == {"predictive": 1}
    assert executor.counters.gone == {"predictive": 1}
    assert len(times) == 1  # nothing fetched, and no rate-limit token waited for
    assert executor.counters.fetches == 1
