"""The state directory: one of its own per proxy by default, one process per
directory, and a posted schedule that says it overrides the configuration file."""

from __future__ import annotations

import json
import logging
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.app import Warmproxy
from proxy.config import load_settings
from proxy.state_dir import StateDirBusy, StateLock, identity_name
from tests.proxy.conftest import Origin, ProxyFactory, url
from tests.proxy.test_warming_api import TOKEN, api, sections

CACHEABLE = {"Cache-Control": "public, max-age=60"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def plan(*names: str) -> dict[str, Any]:
    return {
        "sources": [
            {"name": name, "source": {"type": "urls", "paths": [f"/{name}"]}} for name in names
        ]
    }


async def test_two_proxies_on_default_settings_keep_their_state_apart(
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
    state_home: Path,
) -> None:
    ports = free_port(), free_port()
    a, b = [
        await make_proxy(
            origin.url, proxy={"listen": f"127.0.0.1:{port}"}, control={"token": TOKEN}
        )
        for port in ports
    ]
    for proxy, name in ((a, "from-a"), (b, "from-b")):
        status, body = await api(client, proxy, "POST", "schedule", plan(name))
        assert status == 200, body
    dirs = [p.settings.state.path() for p in (a, b)]
    await a.stop()
    await b.stop()

    assert dirs[0] != dirs[1]
    for directory, port in zip(dirs, ports, strict=True):
        assert directory.parent == state_home / "warmproxy"
        assert directory.name.startswith(f"127.0.0.1_{port}-")
        assert {"lock", "schedule.json", "effectiveness.json"} <= {
            p.name for p in directory.iterdir()
        }
    # Nothing else was written, and each holds only its own schedule.
    assert sorted((state_home / "warmproxy").iterdir()) == sorted(dirs)
    saved = [json.loads((d / "schedule.json").read_text()) for d in dirs]
    assert [[s["name"] for s in doc["sources"]] for doc in saved] == [["from-a"], ["from-b"]]


async def test_a_restart_finds_its_own_state_and_another_origin_starts_afresh(
    origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession
) -> None:
    listen = f"127.0.0.1:{free_port()}"
    settings = {"proxy": {"listen": listen}, "control": {"token": TOKEN}}
    first = await make_proxy(origin.url, **settings)
    status, body = await api(client, first, "POST", "schedule", plan("posted-here"))
    assert status == 200, body
    await first.stop()

    again = await make_proxy(origin.url, **settings)
    _, schedule = await api(client, again, "GET", "schedule")
    assert [s["name"] for s in schedule["sources"]] == ["posted-here"]
    assert schedule["origin"] == "posted"
    await again.stop()

    # The same port in front of another origin (here: the same server by
    # another name) is another proxy: it does not adopt that schedule.
    elsewhere = origin.url.replace("127.0.0.1", "localhost")
    other = await make_proxy(elsewhere, **settings)
    _, schedule = await api(client, other, "GET", "schedule")
    assert schedule["sources"] == [] and schedule["origin"] == "config"
    assert other.settings.state.path() != again.settings.state.path()


async def test_a_proxy_on_port_0_gets_a_directory_of_its_own_removed_at_stop(
    origin: Origin, make_proxy: ProxyFactory, state_home: Path
) -> None:
    a = await make_proxy(origin.url)  # both on 127.0.0.1:0, same origin
    b = await make_proxy(origin.url)
    dirs = [a.settings.state.path(), b.settings.state.path()]
    assert dirs[0] != dirs[1]
    assert all(d.is_dir() and d.parent == state_home / "warmproxy" for d in dirs)
    await a.stop()
    await b.stop()
    assert not dirs[0].exists() and not dirs[1].exists()


async def test_a_second_proxy_on_the_same_state_dir_is_refused_and_writes_nothing_there(
    origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    origin.set("/page", headers=CACHEABLE)
    first = await make_proxy(origin.url, state={"dir": str(state)})
    second = Warmproxy(
        load_settings(
            None,
            {
                "proxy": {"origin": origin.url, "listen": "127.0.0.1:0"},
                "control": {"listen": "127.0.0.1:0"},
                "state": {"dir": str(state)},
            },
        )
    )
    with pytest.raises(StateDirBusy) as refused:
        await second.start()
    assert f"state directory {state} is in use" in str(refused.value)
    assert f"(pid {os.getpid()})" in str(refused.value)
    # The refused one saved nothing over the first one's files.
    assert sorted(p.name for p in state.iterdir()) == ["lock"]

    async with client.get(url(first, "/page")) as response:
        assert response.status == 200  # the first one serves on
    await first.stop()
    assert (state / "effectiveness.json").exists()
    assert (state / "lock").exists()  # kept: a lock file is never deleted
    # Released at stop: the next process takes the directory.
    third = await make_proxy(origin.url, state={"dir": str(state)})
    assert third.ready


def test_the_lock_names_no_pid_it_cannot_read(tmp_path: Path) -> None:
    held = StateLock(tmp_path)
    held.acquire()
    try:
        (tmp_path / "lock").write_text("")  # e.g. the holder has not written it yet
        with pytest.raises(StateDirBusy) as refused:
            StateLock(tmp_path).acquire()
        assert refused.value.pid is None
        assert "(pid" not in str(refused.value)
    finally:
        held.release()
    StateLock(tmp_path).acquire()  # free again


def test_the_directory_name_is_readable_and_changes_with_the_identity() -> None:
    base = {
        "origin": "http://app:8000",
        "listen": "0.0.0.0:8080",
        "store": "memory",
        "redis_prefix": "warmproxy:",
    }
    name = identity_name(**base)
    assert name.startswith("0.0.0.0_8080-") and len(name) == len("0.0.0.0_8080-") + 8
    assert identity_name(**base) == name  # stable across restarts
    assert identity_name(**{**base, "redis_prefix": "other:"}) == name  # unused by memory
    changed = [
        {**base, "origin": "http://app:8001"},
        {**base, "store": "redis"},
        {**base, "listen": "0.0.0.0:8090"},
    ]
    assert len({identity_name(**c) for c in changed} | {name}) == 4
    redis = {**base, "store": "redis"}
    assert identity_name(**redis) != identity_name(**{**redis, "redis_prefix": "other:"})
    assert identity_name(**{**base, "listen": "[::1]:8080"}).startswith("__1_8080-")


async def test_a_posted_schedule_over_the_configured_one_is_logged_and_marked(
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    configured = {
        "proactive": {
            "data_sources": [{"name": "configured", "source": {"type": "urls", "paths": ["/"]}}]
        }
    }
    first = await make_proxy(origin.url, **sections(tmp_path, strategies=configured))
    _, shown = await api(client, first, "GET", "schedule")
    assert shown["origin"] == "config" and shown["posted_at"] is None
    status, posted = await api(client, first, "POST", "schedule", plan("one", "two"))
    assert status == 200, posted
    assert posted["origin"] == "posted"
    saved_at = datetime.strptime(posted["posted_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert abs((datetime.now(UTC) - saved_at).total_seconds()) < 60
    # The document as shown can be posted back: the added fields are ignored.
    _, shown = await api(client, first, "GET", "schedule")
    status, body = await api(client, first, "POST", "schedule", shown)
    assert status == 200, body
    await first.stop()

    caplog.set_level(logging.WARNING)
    second = await make_proxy(origin.url, **sections(tmp_path, strategies=configured))
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "overrides the configuration file" in r.getMessage()
    ]
    assert len(warnings) == 1, warnings
    saved_file = tmp_path / "state" / "schedule.json"
    assert f"file {saved_file}" in warnings[0]
    assert "2 saved source(s) in force instead of 1 configured" in warnings[0]
    _, shown = await api(client, second, "GET", "schedule")
    assert [s["name"] for s in shown["sources"]] == ["one", "two"]
    assert shown["origin"] == "posted"
    mtime = datetime.fromtimestamp(saved_file.stat().st_mtime, UTC)
    assert shown["posted_at"] == mtime.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert shown["posted_at"] in warnings[0]


async def test_no_saved_schedule_no_warning(
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    proxy = await make_proxy(origin.url, **sections(tmp_path))
    assert not [r for r in caplog.records if "overrides" in r.getMessage()]
    _, shown = await api(client, proxy, "GET", "schedule")
    assert shown["origin"] == "config"
