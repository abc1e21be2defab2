"""Reload without restart: the table of live settings, and reloads of a running
proxy (real origin, real ports) read from a real configuration file."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import tomli_w

from proxy.app import Warmproxy
from proxy.config import Settings, load_settings
from proxy.reload import (
    LIVE_SETTINGS,
    ReloadRefused,
    changed_settings,
    is_live,
    setting_values,
    split_changes,
)
from tests.proxy.conftest import Origin, control_url, eventually, url

TOKEN = "reload-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CACHEABLE = {"Cache-Control": "public, max-age=60"}


# ------------------------------------------------------------------ the table


@pytest.mark.parametrize(
    ("name", "live"),
    [
        ("strategies.proactive.schedule", True),
        ("strategies.proactive.data_sources", True),
        ("strategies.reactive.threshold", True),
        ("strategies.predictive.min_confidence", True),
        ("strategies.include", True),
        ("strategies.exclude", True),
        ("execution.parallelism", True),
        ("execution.rate_limit", True),
        ("execution.retry_attempts", True),
        ("execution.timeout", True),
        ("logging.level", True),
        ("logging.format", True),
        ("tracking.enabled", True),
        ("monitoring.alert_thresholds.min_success_rate", True),
        # What holds sockets, stored entries or learned history, or is read once.
        ("proxy.listen", False),
        ("proxy.origin", False),
        ("control.listen", False),
        ("control.token", False),
        ("cache.store", False),
        ("cache.redis_url", False),
        ("cache.redis_prefix", False),
        ("cache.max_bytes", False),
        ("cache.ignore_query_params", True),
        ("cache.sort_query_params", True),
        ("state.dir", False),
        ("execution.priority_levels", False),
        ("execution.max_queue", False),
        ("execution.warm_header", False),
        ("tracking.windows", False),
        ("tracking.top_k", False),
        ("strategies.reactive.time_window", False),
        ("strategies.predictive.prediction_window", False),
        ("strategies.predictive.model_path", False),
        ("logging.access_log", False),
        # A prefix of a live name is not live; an unknown name never is.
        ("strategies", False),
        ("strategies.includes", False),
        ("some.new.setting", False),
    ],
)
def test_which_settings_a_reload_applies(name: str, live: bool) -> None:
    assert is_live(name) is live


def test_every_live_setting_names_a_setting() -> None:
    names = setting_values(Settings())
    for live in LIVE_SETTINGS:
        assert live in names or any(n.startswith(f"{live}.") for n in names), live


def test_changes_are_named_by_dotted_setting_and_split() -> None:
    old = load_settings(None)
    new = load_settings(
        None,
        {
            "proxy": {"listen": "127.0.0.1:9999"},
            "execution": {"parallelism": 3},
            "monitoring": {"alert_thresholds": {"min_samples": 7}},
            "control": {"token": "another-token-0123456789"},
        },
    )
    changed = changed_settings(old, new)
    assert changed == [
        "control.token",
        "execution.parallelism",
        "monitoring.alert_thresholds.min_samples",
        "proxy.listen",
    ]
    assert split_changes(changed) == (
        ["execution.parallelism", "monitoring.alert_thresholds.min_samples"],
        ["control.token", "proxy.listen"],
    )
    assert changed_settings(old, load_settings(None)) == []


# --------------------------------------------------------- a running proxy

Reloadable = Callable[[dict[str, Any]], Awaitable[Warmproxy]]


def document(origin: Origin, **sections: dict[str, Any]) -> dict[str, Any]:
    """A configuration file's content: the origin, a token, fast retries, and ``sections``."""
    out: dict[str, Any] = {
        "proxy": {"origin": origin.url},
        "control": {"token": TOKEN},
        "execution": {"rate_limit": 0, "retry_base_delay": 0.01, "retry_max_delay": 0.05},
        "strategies": {
            "proactive": {
                "schedule": "0 3 * * *",
                "data_sources": [
                    {"name": "products", "source": {"type": "urls", "paths": ["/products/1"]}}
                ],
            }
        },
    }
    for name, values in sections.items():
        out.setdefault(name, {}).update(values)
    return out


def write(path: Path, content: dict[str, Any] | str) -> None:
    """Write a configuration file: a document as TOML, or a text as it is."""
    path.write_text(content if isinstance(content, str) else tomli_w.dumps(content))


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    return tmp_path / "warmproxy.toml"


@pytest.fixture
async def reloadable(tmp_path: Path, config_file: Path) -> AsyncIterator[Reloadable]:
    """Start a proxy from ``config_file`` holding a document; its flags (free
    ports, the state directory) keep precedence over the file, as `serve`'s."""
    started: list[Warmproxy] = []
    flags = {
        "proxy": {"listen": "127.0.0.1:0"},
        "control": {"listen": "127.0.0.1:0"},
        "state": {"dir": str(tmp_path / "state")},
    }

    async def start(content: dict[str, Any]) -> Warmproxy:
        write(config_file, content)
        proxy = Warmproxy(load_settings(config_file, flags))
        proxy.load_settings = lambda: load_settings(config_file, flags)
        await proxy.start()
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        await proxy.stop()


async def api(
    client: aiohttp.ClientSession, proxy: Warmproxy, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    kwargs: dict[str, Any] = {"headers": AUTH}
    if body is not None:
        kwargs["json"] = body
    async with client.request(
        method, control_url(proxy, f"/cache/warming/{path}"), **kwargs
    ) as response:
        return response.status, await response.json()


async def test_a_reload_applies_schedule_strategies_limits_and_filters(
    origin: Origin, reloadable: Reloadable, config_file: Path, client: aiohttp.ClientSession
) -> None:
    origin.set("/private/1", headers=CACHEABLE, body=b"private")
    origin.set("/products/1", headers=CACHEABLE, body=b"one")
    proxy = await reloadable(document(origin))
    listener = proxy.proxy_port

    edited = document(
        origin,
        execution={"parallelism": 3, "rate_limit": 20, "retry_attempts": 1, "timeout": 5},
        strategies={
            "exclude": ["/private/*"],
            "proactive": {
                "schedule": "*/20 * * * *",
                "data_sources": [
                    {"name": "products", "source": {"type": "urls", "paths": ["/products/1"]}},
                    {"name": "articles", "source": {"type": "urls", "paths": ["/articles/1"]}},
                ],
            },
            "reactive": {"threshold": 4, "refresh_min_hits": 5},
            "predictive": {"enabled": True, "min_confidence": 0.5},
        },
    )
    write(config_file, edited)
    status, body = await api(client, proxy, "POST", "reload")
    assert status == 200, body
    assert body == {
        "applied": [
            "execution.parallelism",
            "execution.rate_limit",
            "execution.retry_attempts",
            "execution.timeout",
            "strategies.exclude",
            "strategies.predictive.enabled",
            "strategies.predictive.min_confidence",
            "strategies.proactive.data_sources",
            "strategies.proactive.schedule",
            "strategies.reactive.refresh_min_hits",
            "strategies.reactive.threshold",
        ],
        "restart_required": [],
    }

    status, schedule = await api(client, proxy, "GET", "schedule")
    assert schedule["schedule"] == "*/20 * * * *"
    assert [s["name"] for s in schedule["sources"]] == ["products", "articles"]
    assert schedule["origin"] == "config"
    status, state = await api(client, proxy, "GET", "status")
    assert state["executor"]["concurrency_limit"] == 3
    # The new filter refuses what it excludes.
    status, refused = await api(client, proxy, "POST", "warm-key", {"url": "/private/1"})
    assert status == 400 and "excluded" in refused["error"]
    # The strategies: retuned, and the predictive one switched on.
    assert proxy.warmer.miss_reactive is not None
    assert proxy.warmer.miss_reactive.threshold == 4  # type: ignore[attr-defined]
    assert proxy.warmer.refresh_ahead.min_hits == 5  # type: ignore[union-attr]
    status, stats = await api(client, proxy, "GET", "stats")
    assert "predictive" in stats
    assert proxy.settings.strategies.predictive.min_confidence == 0.5
    # The listener is the one it was, and serves.
    assert proxy.proxy_port == listener
    async with client.get(url(proxy, "/products/1")) as response:
        assert response.status == 200


async def test_a_reload_of_the_query_rules_keys_requests_warms_and_purges_anew(
    origin: Origin, reloadable: Reloadable, config_file: Path, client: aiohttp.ClientSession
) -> None:
    # A campaign parameter the origin ignores: once the rules leave it out of
    # the key, every tagged link shares the page's entry, in the fast lane, the
    # handler, warm fetches and purges alike; nothing restarts.
    origin.set("/page", headers=CACHEABLE, body=b"page")

    async def get(path: str) -> str:
        async with client.get(url(proxy, path)) as response:
            assert response.status == 200
            return response.headers["Cache-Status"]

    proxy = await reloadable(document(origin))
    await get("/page")
    assert "fwd=uri-miss" in await get("/page?utm_source=mail")  # another key
    assert origin.count() == 2

    write(config_file, document(origin, cache={"ignore_query_params": ["utm_*"]}))
    status, body = await api(client, proxy, "POST", "reload")
    assert status == 200
    assert body["applied"] == ["cache.ignore_query_params"]
    for tagged in ("/page?utm_source=news", "/page?utm_medium=social&utm_source=x"):
        assert "hit" in (await get(tagged)).split(";")[1]
    assert origin.count() == 2
    status, _ = await api(client, proxy, "POST", "warm-key", {"url": "/page?utm_campaign=x"})
    assert status in (200, 202)
    await eventually(lambda: sum(proxy.warmer.executor.counters.already_fresh.values()) > 0)
    assert origin.count() == 2  # the warm target's key is the page's: already fresh
    status, purged = await api(client, proxy, "POST", "purge", {"path": "/page?utm_source=z"})
    assert status == 200 and purged["purged"] >= 1
    assert "fwd=uri-miss" in await get("/page")
    assert origin.count() == 3


async def test_a_warmer_that_stays_on_keeps_what_it_learned(
    origin: Origin, reloadable: Reloadable, config_file: Path, client: aiohttp.ClientSession
) -> None:
    origin.set("/products/1", headers=CACHEABLE, body=b"one")
    proxy = await reloadable(document(origin))
    for _ in range(3):
        async with client.get(url(proxy, "/products/1")) as response:
            await response.read()
    await eventually(lambda: proxy.warmer.tracker.totals().requests == 3)
    strategy = proxy.warmer.refresh_ahead

    write(config_file, document(origin, strategies={"include": ["/p*"]}))
    result = await proxy.reload()
    assert result.applied == ["strategies.include"]
    assert proxy.warmer.refresh_ahead is strategy
    _, hot = await api(client, proxy, "GET", "hot-data")
    assert hot["totals"]["requests"] == 3

    # tracking.enabled = false: requests are no longer counted, what was is kept.
    write(
        config_file,
        (document(origin, strategies={"include": ["/p*"]}, tracking={"enabled": False})),
    )
    assert (await proxy.reload()).applied == ["tracking.enabled"]
    async with client.get(url(proxy, "/products/1")) as response:
        await response.read()
    await eventually(lambda: proxy.hub.emitted == 4 and not proxy.hub._buffer)
    _, hot = await api(client, proxy, "GET", "hot-data")
    assert hot["totals"]["requests"] == 3


async def test_an_invalid_file_changes_nothing_and_says_what_is_wrong(
    origin: Origin, reloadable: Reloadable, config_file: Path, client: aiohttp.ClientSession
) -> None:
    proxy = await reloadable(document(origin))
    before = proxy.settings
    write(
        config_file,
        document(
            origin,
            execution={"parallelism": 0},
            strategies={"proactive": {"schedule": "*/5 * * * *"}},
        ),
    )
    status, body = await api(client, proxy, "POST", "reload")
    assert status == 400
    assert body["error"] == "configuration not reloaded; nothing changed"
    assert body["errors"][0] == f"invalid configuration in {config_file}:"
    assert any(line.startswith("  execution.parallelism: ") for line in body["errors"])
    assert proxy.settings is before
    status, schedule = await api(client, proxy, "GET", "schedule")
    assert schedule["schedule"] == "0 3 * * *"

    write(config_file, "[proxy\n")
    with pytest.raises(ReloadRefused) as refused:
        await proxy.reload()
    assert refused.value.errors[0].startswith(f"{config_file}: invalid TOML")


async def test_a_live_change_that_needs_a_restart_only_change_is_refused_whole(
    origin: Origin, reloadable: Reloadable, config_file: Path
) -> None:
    proxy = await reloadable(document(origin))
    # A predictive priority among priority levels that only a restart brings.
    write(
        config_file,
        document(
            origin,
            execution={"priority_levels": ["now", "later"], "parallelism": 2},
            strategies={
                "predictive": {"priority": "later"},
                "proactive": {"schedule": "0 3 * * *", "data_sources": []},
            },
        ),
    )
    with pytest.raises(ReloadRefused) as refused:
        await proxy.reload()
    assert "strategies.predictive.priority" in str(refused.value)
    assert proxy.warmer.executor.parallelism == 10
    assert proxy.settings.execution.priority_levels == ["high", "medium", "low"]


async def test_settings_that_need_a_restart_are_named_and_left(
    origin: Origin,
    reloadable: Reloadable,
    config_file: Path,
    client: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy = await reloadable(document(origin))
    listener = proxy.proxy_port
    write(
        config_file,
        document(
            origin,
            proxy={"origin": origin.url, "listen": "127.0.0.1:1"},
            cache={"max_bytes": "1MiB"},
            execution={"parallelism": 2},
        ),
    )
    result = await proxy.reload()
    # The flags given at start keep precedence: proxy.listen stays the flag's.
    assert result.restart_required == ["cache.max_bytes"]
    assert result.applied == ["execution.parallelism"]
    assert proxy.settings.cache.max_bytes == 256 * 1024 * 1024
    restart = [r.getMessage() for r in caplog.records if "need a restart" in r.getMessage()]
    assert restart == [
        "reload: these settings need a restart and were left as they were: cache.max_bytes"
    ]
    assert proxy.proxy_port == listener
    async with client.get(url(proxy, "/products/1")) as response:
        assert response.status in (200, 404)


async def test_a_posted_schedule_stays_until_the_files_schedule_changes(
    origin: Origin, reloadable: Reloadable, config_file: Path, client: aiohttp.ClientSession
) -> None:
    proxy = await reloadable(document(origin))
    posted = {
        "schedule": "15 * * * *",
        "sources": [{"name": "posted", "source": {"type": "urls", "paths": ["/posted"]}}],
    }
    status, body = await api(client, proxy, "POST", "schedule", posted)
    assert status == 200, body

    # Another setting changes: the posted schedule stays in force.
    write(config_file, document(origin, execution={"parallelism": 4}))
    assert (await proxy.reload()).applied == ["execution.parallelism"]
    status, schedule = await api(client, proxy, "GET", "schedule")
    assert (schedule["origin"], schedule["schedule"]) == ("posted", "15 * * * *")

    # The file's schedule changes: it replaces the posted one, and is saved
    # over it so that a restart keeps it.
    edited = document(origin, execution={"parallelism": 4})
    edited["strategies"]["proactive"]["schedule"] = "45 * * * *"
    write(config_file, edited)
    assert (await proxy.reload()).applied == ["strategies.proactive.schedule"]
    status, schedule = await api(client, proxy, "GET", "schedule")
    assert (schedule["origin"], schedule["schedule"]) == ("config", "45 * * * *")
    assert [s["name"] for s in schedule["sources"]] == ["products"]
    saved = (proxy.settings.state.path() / "schedule.json").read_text()
    assert "45 * * * *" in saved and "posted" not in saved


async def test_reload_needs_the_token_and_no_body(
    origin: Origin, reloadable: Reloadable, client: aiohttp.ClientSession
) -> None:
    proxy = await reloadable(document(origin))
    async with client.post(control_url(proxy, "/cache/warming/reload")) as response:
        assert response.status == 401
    async with client.post(
        control_url(proxy, "/cache/warming/reload"), headers=AUTH, json={"x": 1}
    ) as response:
        assert response.status == 400
        assert (await response.json())["field"] == "body"
    status, body = await api(client, proxy, "POST", "reload")
    assert (status, body) == (200, {"applied": [], "restart_required": []})
