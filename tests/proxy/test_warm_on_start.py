"""proactive.warm_on_start: the sources warmed once at start, /readyz held until
then with "before_ready", against a real origin and the proxy on real ports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp

from proxy.app import Warmproxy
from proxy.config import load_settings
from tests.proxy.conftest import Origin, ProxyFactory, control_url, eventually, url

CACHEABLE = {"Cache-Control": "public, max-age=600"}
PATHS = ["/start/1", "/start/2", "/start/3"]


def sections(tmp_path: Path, mode: str, **proactive: Any) -> dict[str, dict[str, Any]]:
    return {
        # Warm fills are keyed by the public host, as client requests are.
        "proxy": {"public_host": "shop.example"},
        "state": {"dir": str(tmp_path / "state")},
        # One fetch at a time, so a slow origin makes the run last.
        "execution": {"rate_limit": 0, "parallelism": 1, "adaptive": False},
        "strategies": {
            "proactive": {
                "warm_on_start": mode,
                "data_sources": [{"name": "catalogue", "source": {"type": "urls", "paths": PATHS}}],
                **proactive,
            }
        },
    }


def serve_slowly(origin: Origin, delay: float) -> None:
    for path in PATHS:
        origin.set(path, headers=CACHEABLE, body=path.encode(), delay=delay)


async def readyz(client: aiohttp.ClientSession, proxy: Warmproxy) -> tuple[int, Any]:
    async with client.get(control_url(proxy, "/readyz")) as response:
        return response.status, await response.json()


async def test_before_ready_holds_readiness_until_every_source_is_warm(
    origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    serve_slowly(origin, 0.4)
    proxy = await make_proxy(origin.url, **sections(tmp_path, "before_ready"))
    status, body = await readyz(client, proxy)
    assert status == 503
    assert body["accepting"] is True
    assert body["warming_on_start"]
    # Not ready, but serving: a request that comes anyway is answered.
    async with client.get(url(proxy, "/elsewhere")) as response:
        assert response.status == 404

    warmed_when_ready: list[int] = []

    async def ready() -> bool:
        status, _ = await readyz(client, proxy)
        if status == 200:
            warmed_when_ready.extend(origin.count(p) for p in PATHS)
        return status == 200

    await eventually(ready, within=10)
    assert warmed_when_ready == [1, 1, 1]
    _, body = await readyz(client, proxy)
    assert body["warming_on_start"] is None
    # The first users find the cache warm.
    for path in PATHS:
        async with client.get(url(proxy, path)) as response:
            assert await response.read() == path.encode()
            assert response.headers["Cache-Status"].startswith("warmproxy; hit")
    assert [origin.count(p) for p in PATHS] == [1, 1, 1]


async def test_before_ready_gives_up_waiting_after_its_timeout(
    origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    serve_slowly(origin, 3.0)
    proxy = await make_proxy(
        origin.url, **sections(tmp_path, "before_ready", warm_on_start_timeout=0.5)
    )
    assert (await readyz(client, proxy))[0] == 503
    await eventually(lambda: readyz_ok(client, proxy), within=3)
    # Ready after the timeout, while the run goes on.
    async with client.get(control_url(proxy, "/cache/warming/status")) as response:
        assert (await response.json())["status"] == "running"


async def readyz_ok(client: aiohttp.ClientSession, proxy: Warmproxy) -> bool:
    return (await readyz(client, proxy))[0] == 200


async def test_background_warms_while_ready(
    origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    serve_slowly(origin, 0.2)
    proxy = await make_proxy(origin.url, **sections(tmp_path, "background"))
    status, body = await readyz(client, proxy)
    assert status == 200
    assert body["warming_on_start"] is None
    await eventually(lambda: all(origin.count(p) == 1 for p in PATHS), within=10)


async def test_off_warms_nothing_at_start(
    origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    serve_slowly(origin, 0.0)
    proxy = await make_proxy(origin.url, **sections(tmp_path, "off"))
    assert (await readyz(client, proxy))[0] == 200
    async with client.get(control_url(proxy, "/cache/warming/status")) as response:
        assert (await response.json())["status"] == "idle"
    assert [origin.count(p) for p in PATHS] == [0, 0, 0]


async def test_a_restart_warms_the_hot_set_of_the_last_stop_before_ready(
    origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    hot = ["/hot/1", "/hot/2", "/hot/3"]
    for path in hot:
        origin.set(path, headers=CACHEABLE, body=path.encode())
    overrides = {
        "proxy": {"origin": origin.url, "listen": "127.0.0.1:0", "public_host": "shop.example"},
        "control": {"listen": "127.0.0.1:0"},
        "state": {"dir": str(tmp_path / "state")},
    }
    first = Warmproxy(load_settings(None, overrides))
    await first.start()
    try:
        for path, times in zip(hot, (5, 3, 1), strict=True):
            for _ in range(times):
                async with client.get(url(first, path)) as response:
                    await response.read()
        await eventually(lambda: first.warmer.tracker.totals().requests == 9)
    finally:
        await first.stop()
    assert [origin.count(p) for p in hot] == [1, 1, 1]

    # A new process, its memory store empty: the two hottest paths of the
    # last stop are warmed before it reports ready.
    second = await make_proxy(
        origin.url,
        proxy={"public_host": "shop.example"},
        state={"dir": str(tmp_path / "state")},
        execution={"rate_limit": 0},
        strategies={
            "proactive": {
                "warm_on_start": "before_ready",
                "data_sources": [{"name": "hot", "source": {"type": "hot", "top_n": 2}}],
            }
        },
    )
    await eventually(lambda: readyz_ok(client, second), within=10)
    assert [origin.count(p) for p in hot] == [2, 2, 1]
    async with client.get(url(second, "/hot/1")) as response:
        assert response.headers["Cache-Status"].startswith("warmproxy; hit")


async def test_a_damaged_hot_set_is_set_aside_and_the_proxy_starts(
    origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "hot.json").write_text('{"format": "warmproxy-hot-set", "paths": ["http://evil/"]}')
    proxy = await make_proxy(origin.url, state={"dir": str(state)})
    assert await readyz_ok(client, proxy)
    assert not (state / "hot.json").exists()
    assert [p.name for p in state.iterdir() if p.name.startswith("hot.json")] == ["hot.json.bad"]
