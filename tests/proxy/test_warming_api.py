"""The warming control API against a real origin, the proxy on real ports, real Redis."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.app import Warmproxy
from proxy.config import ConfigError, load_settings
from tests.proxy.conftest import Origin, ProxyFactory, control_url, eventually, url

TOKEN = "s3cret-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CACHEABLE = {"Cache-Control": "public, max-age=60"}
STATUS_KEYS = {
    "run_id",
    "status",
    "strategy",
    "started_at",
    "finished_at",
    "progress",
    "current_batch",
    "performance",
    "errors",
}


def sections(tmp_path: Path, **extra: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {
        "proxy": {"public_host": "shop.example"},
        "control": {"token": TOKEN},
        "state": {"dir": str(tmp_path / "state")},
        "execution": {"rate_limit": 0, "retry_base_delay": 0.01, "retry_max_delay": 0.05},
    }
    for name, values in extra.items():
        out.setdefault(name, {}).update(values)
    return out


async def api(
    client: aiohttp.ClientSession,
    proxy: Warmproxy,
    method: str,
    path: str,
    body: Any = None,
    *,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> tuple[int, Any]:
    kwargs: dict[str, Any] = {"headers": AUTH if headers is None else headers}
    if raw is not None:
        kwargs["data"] = raw
    elif body is not None:
        kwargs["json"] = body
    async with client.request(
        method, control_url(proxy, f"/cache/warming/{path}"), **kwargs
    ) as response:
        return response.status, await response.json()


async def finished(client: aiohttp.ClientSession, proxy: Warmproxy, run_id: str) -> Any:
    """The run's progress once it is no longer running."""
    result: dict[str, Any] = {}

    async def done() -> bool:
        _, result["body"] = await api(client, proxy, "GET", f"progress?run_id={run_id}")
        return bool(result["body"]["status"] != "running")

    deadline = asyncio.get_running_loop().time() + 15
    while not await done():
        assert asyncio.get_running_loop().time() < deadline, result
        await asyncio.sleep(0.02)
    return result["body"]


@pytest.fixture
async def warm_proxy(origin: Origin, make_proxy: ProxyFactory, tmp_path: Path) -> Warmproxy:
    for n in range(1, 21):
        origin.set(f"/products/{n}", headers=CACHEABLE, body=f"product {n}".encode())
    # Posted file and SQLite sources may read under tmp_path.
    proactive = {"file_source_dir": str(tmp_path)}
    return await make_proxy(origin.url, **sections(tmp_path, strategies={"proactive": proactive}))


async def test_warm_key_fills_through_the_proxy_and_the_next_request_is_a_hit(
    warm_proxy: Warmproxy, origin: Origin, client: aiohttp.ClientSession
) -> None:
    status, body = await api(
        client, warm_proxy, "POST", "warm-key", {"url": "/products/3", "priority": "high"}
    )
    assert status == 202, body
    assert set(body) >= STATUS_KEYS
    done = await finished(client, warm_proxy, body["run_id"])
    assert done["status"] == "completed"
    assert done["progress"]["success"] == 1
    # The origin can tell warm fetches apart.
    assert origin.last("/products/3").headers["X-Warmproxy-Warm"] == "1"
    async with client.get(url(warm_proxy, "/products/3")) as response:
        assert await response.read() == b"product 3"
        assert response.headers["Cache-Status"].startswith("warmproxy; hit")
    assert origin.count("/products/3") == 1
    # A warm fetch is not a user request: only the one client hit is counted.
    await eventually(lambda: warm_proxy.warmer.tracker.totals().requests == 1)
    _, stats = await api(client, warm_proxy, "GET", "stats")
    assert stats["cost_benefit"]["items_warmed"] == 1
    assert stats["cost_benefit"]["cache_hits_prevented"] == 1
    assert warm_proxy.warmer.tracker.totals().requests == 1


async def test_a_fresh_entry_is_not_fetched_again(
    warm_proxy: Warmproxy, origin: Origin, client: aiohttp.ClientSession
) -> None:
    async with client.get(url(warm_proxy, "/products/4")) as response:
        await response.read()
    _, body = await api(client, warm_proxy, "POST", "warm-key", {"url": "/products/4"})
    done = await finished(client, warm_proxy, body["run_id"])
    assert done["progress"]["success"] == 1
    assert origin.count("/products/4") == 1


async def test_token_is_required_and_checked(
    warm_proxy: Warmproxy, client: aiohttp.ClientSession
) -> None:
    status, body = await api(client, warm_proxy, "GET", "status", headers={})
    assert status == 401
    assert "token" in body["error"]
    status, _ = await api(
        client, warm_proxy, "GET", "status", headers={"Authorization": "Bearer wrong"}
    )
    assert status == 401
    status, body = await api(client, warm_proxy, "GET", "status")
    assert status == 200
    assert set(body) >= STATUS_KEYS
    # Health and metrics stay open to probes and scrapers.
    async with client.get(control_url(warm_proxy, "/healthz")) as response:
        assert response.status == 200


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("warm-key", {"url": "http://evil.example/x"}, "url"),
        ("warm-key", {"url": "//evil.example/x"}, "url"),
        ("warm-key", {"url": "products/1"}, "url"),
        ("warm-key", {"url": "/a", "priority": "urgent"}, "priority"),
        ("warm-key", {}, "url"),
        ("warm-key", {"url": "/a", "colour": "red"}, "colour"),
        ("warm-key", {"urls": ["/a", "http://evil.example/b"]}, "urls[1]"),
        ("warm-pattern", {"pattern": 7}, "pattern"),
        ("warm-pattern", {}, "pattern"),
        ("start", {"strategy": "telepathy"}, "strategy"),
        ("start", {"strategy": "proactive", "sources": ["nope"]}, "sources"),
        ("schedule", {"schedule": "61 * * * *"}, "schedule"),
        ("schedule", {"sources": [{"name": "x", "source": {"type": "ftp"}}]}, "sources.0.source"),
    ],
)
async def test_bad_bodies_get_400_naming_the_field(
    warm_proxy: Warmproxy,
    origin: Origin,
    client: aiohttp.ClientSession,
    path: str,
    body: Any,
    field: str,
) -> None:
    status, answer = await api(client, warm_proxy, "POST", path, body)
    assert status == 400, answer
    assert answer["field"].startswith(field), answer
    assert not any(s.path.startswith("/a") for s in origin.seen)


async def test_invalid_json_is_a_400(warm_proxy: Warmproxy, client: aiohttp.ClientSession) -> None:
    status, answer = await api(
        client,
        warm_proxy,
        "POST",
        "warm-key",
        raw=b"{nope",
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert status == 400
    assert answer["field"] == "body"


async def test_same_origin_absolute_url_is_accepted(
    warm_proxy: Warmproxy, origin: Origin, client: aiohttp.ClientSession
) -> None:
    _, body = await api(
        client, warm_proxy, "POST", "warm-key", {"url": "http://shop.example/products/5"}
    )
    assert (await finished(client, warm_proxy, body["run_id"]))["progress"]["success"] == 1
    assert origin.count("/products/5") == 1


async def test_bulk_warm_reports_progress_and_errors(
    warm_proxy: Warmproxy, origin: Origin, client: aiohttp.ClientSession
) -> None:
    origin.set("/broken", status=503, body=b"down")
    urls = [f"/products/{n}" for n in range(1, 11)] + ["/broken", "/missing"]
    status, body = await api(client, warm_proxy, "POST", "warm-key", {"urls": urls})
    assert status == 202
    done = await finished(client, warm_proxy, body["run_id"])
    p = done["progress"]
    assert (p["total_items"], p["completed"], p["success"], p["failed"]) == (12, 12, 10, 2)
    assert p["percentage"] == 100.0
    errors = {e["key"]: e for e in done["errors"]}
    # A 503 is retried (retry_attempts = 3); a 404 is not.
    assert errors["/broken"]["retry_count"] == 3
    assert "503" in errors["/broken"]["error"]
    assert errors["/missing"]["retry_count"] == 0
    assert origin.count("/broken") == 4
    assert done["performance"]["items_per_second"] > 0
    assert done["performance"]["average_time_per_item"] > 0


async def test_warm_pattern_covers_history_and_store(
    warm_proxy: Warmproxy, origin: Origin, client: aiohttp.ClientSession
) -> None:
    origin.set("/articles/1", headers={"Cache-Control": "public, max-age=1"})
    # Paths known from traffic: one stays cached, one expires.
    for path in ("/products/1", "/products/2", "/articles/1"):
        async with client.get(url(warm_proxy, path)) as response:
            await response.read()
    await warm_proxy.cache.invalidate("/products/2")
    _, body = await api(client, warm_proxy, "POST", "warm-pattern", {"pattern": "/products/*"})
    done = await finished(client, warm_proxy, body["run_id"])
    assert done["progress"]["total_items"] == 2
    assert origin.count("/products/2") == 2  # refilled
    assert origin.count("/products/1") == 1  # still fresh: not fetched
    assert origin.count("/articles/1") == 1


async def test_start_conflict_stop_and_no_partial_entries(
    origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    release = asyncio.Event()

    async def slow_body(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={**CACHEABLE, "Content-Length": "10"})
        await response.prepare(request)
        await response.write(b"12345")
        await release.wait()
        await response.write(b"67890")
        return response

    for n in range(50):
        origin.handle(f"/slow/{n}", slow_body)
    schedule = {
        "data_sources": [
            {
                "name": "slow",
                "source": {"type": "urls", "paths": [f"/slow/{n}" for n in range(50)]},
            }
        ]
    }
    proxy = await make_proxy(
        origin.url,
        **sections(
            tmp_path,
            strategies={"proactive": schedule},
            execution={"parallelism": 2, "adaptive": False, "timeout": 10},
        ),
    )
    status, body = await api(client, proxy, "POST", "start", {"strategy": "proactive"})
    assert status == 202, body
    await eventually(lambda: origin.count() >= 2)
    status, conflict = await api(client, proxy, "POST", "start", {"strategy": "proactive"})
    assert status == 409
    assert "already" in conflict["error"]

    stopping = asyncio.create_task(api(client, proxy, "POST", "stop"))
    await asyncio.sleep(0.1)
    release.set()  # the in-flight fetches finish
    # Stop answers once they have, not at the end of execution.timeout (10 s).
    status, stopped = await asyncio.wait_for(stopping, 5)
    assert status == 200
    assert stopped["stopped"] == [body["run_id"]]
    _, progress = await api(client, proxy, "GET", f"progress?run_id={body['run_id']}")
    assert progress["status"] == "stopped"
    assert progress["progress"]["completed"] < 50
    fetched = origin.count()
    await asyncio.sleep(0.2)
    assert origin.count() == fetched  # nothing more was fetched
    # What was fetched is whole in the cache; nothing else is there.
    keys = [k async for k in proxy.cache.keys("/slow/*")]
    assert 0 < len(keys) <= fetched
    for key in keys:
        lookup = await proxy.cache.lookup(key, _no_headers())
        assert lookup.entry is not None and lookup.entry.body == b"1234567890"


def _no_headers() -> Any:
    from multidict import CIMultiDict, CIMultiDictProxy

    return CIMultiDictProxy(CIMultiDict())


async def test_schedule_post_validates_applies_and_persists_to_file(
    warm_proxy: Warmproxy,
    origin: Origin,
    client: aiohttp.ClientSession,
    make_proxy: ProxyFactory,
    tmp_path: Path,
) -> None:
    _, before = await api(client, warm_proxy, "GET", "schedule")
    assert before["sources"] == []
    plan = {
        "schedule": "*/5 * * * *",
        "sources": [
            {
                "name": "top-products",
                "schedule": "0 3 * * *",
                "priority": "high",
                "ttl": 600,
                "source": {"type": "urls", "paths": ["/products/1", "/products/2"]},
            }
        ],
    }
    status, after = await api(client, warm_proxy, "POST", "schedule", plan)
    assert status == 200, after
    assert after["sources"][0]["name"] == "top-products"
    assert after["next_runs"]["top-products"].endswith("03:00:00Z")
    # A bad one changes nothing.
    bad = {**plan, "sources": [{**plan["sources"][0], "schedule": "0 25 * * *"}]}
    status, answer = await api(client, warm_proxy, "POST", "schedule", bad)
    assert status == 400
    assert answer["field"] == "sources.0.schedule"
    _, still = await api(client, warm_proxy, "GET", "schedule")
    assert still["sources"][0]["schedule"] == "0 3 * * *"
    assert (tmp_path / "state" / "schedule.json").exists()
    # A restart with the same state directory keeps the posted schedule.
    await warm_proxy.stop()
    again = await make_proxy(origin.url, **sections(tmp_path))
    _, restored = await api(client, again, "GET", "schedule")
    assert restored["schedule"] == "*/5 * * * *"
    assert restored["sources"][0]["ttl"] == 600


async def test_schedule_persists_in_redis_across_a_restart(
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
    tmp_path: Path,
    redis_url: str,
    redis_prefix: str,
) -> None:
    redis = {"store": "redis", "redis_url": redis_url, "redis_prefix": redis_prefix}
    first = await make_proxy(origin.url, **sections(tmp_path / "a", cache=redis))
    plan = {"sources": [{"name": "home", "source": {"type": "urls", "paths": ["/"]}}]}
    status, body = await api(client, first, "POST", "schedule", plan)
    assert status == 200, body
    assert "redis" in body["persisted_in"]
    await first.stop()
    # Another state dir: the schedule can only have come from Redis.
    second = await make_proxy(origin.url, **sections(tmp_path / "b", cache=redis))
    _, restored = await api(client, second, "GET", "schedule")
    assert [s["name"] for s in restored["sources"]] == ["home"]


async def test_source_ttl_overrides_the_origin_lifetime(
    warm_proxy: Warmproxy, origin: Origin, client: aiohttp.ClientSession
) -> None:
    plan = {
        "sources": [
            {
                "name": "long",
                "ttl": 3600,
                "source": {"type": "urls", "paths": ["/products/7"]},
            }
        ]
    }
    await api(client, warm_proxy, "POST", "schedule", plan)
    _, body = await api(client, warm_proxy, "POST", "start", {"strategy": "proactive"})
    await finished(client, warm_proxy, body["run_id"])
    async with client.get(url(warm_proxy, "/products/7")) as response:
        ttl = int(response.headers["Cache-Status"].split("ttl=")[1])
    assert 3500 < ttl <= 3600  # the origin said 60


async def test_hot_data_stats_and_metrics(
    warm_proxy: Warmproxy, client: aiohttp.ClientSession
) -> None:
    for _ in range(20):
        async with client.get(url(warm_proxy, "/products/9")) as response:
            await response.read()
    for n in range(1, 9):
        async with client.get(url(warm_proxy, f"/products/{n}")) as response:
            await response.read()
    async with client.get(url(warm_proxy, "/products/8")) as response:
        await response.read()
    await eventually(lambda: warm_proxy.warmer.tracker.totals().requests == 29)
    status, hot = await api(client, warm_proxy, "GET", "hot-data?n=5&window=60")
    assert status == 200
    # Hot: above a threshold that follows the traffic (4x the mean per active key).
    assert [h["url"] for h in hot["hot_keys"]] == ["/products/9"]
    assert hot["hot_keys"][0]["count"] == 20
    assert hot["hot_keys"][0]["priority"] == "high"
    assert hot["threshold"]["value"] > 2
    # Frequency: the top keys by count, hot or not.
    ranked = [k["url"] for k in hot["frequency"]["keys"]]
    assert ranked[:2] == ["/products/9", "/products/8"]
    assert hot["totals"]["requests"] == 29
    assert {"patterns", "trends", "seasonality", "segments", "sequences"} <= set(hot)
    status, _ = await api(client, warm_proxy, "GET", "hot-data?window=7")
    assert status == 400
    _, body = await api(client, warm_proxy, "POST", "warm-key", {"url": "/products/10"})
    await finished(client, warm_proxy, body["run_id"])
    _, stats = await api(client, warm_proxy, "GET", "stats")
    assert set(stats) >= {"effectiveness", "resource_usage", "timing", "cost_benefit"}
    assert stats["resource_usage"]["memory_usage"] > 0
    assert stats["timing"]["peak_concurrent"] >= 1
    assert stats["timing"]["average_item_time"] > 0
    assert stats["effectiveness"]["hit_rate_before"] == pytest.approx(20 / 29, abs=0.01)
    async with client.get(control_url(warm_proxy, "/metrics")) as response:
        text = await response.text()
    assert 'warmproxy_warm_items_total{strategy="on-demand"} 1.0' in text
    assert "warmproxy_warm_queue_depth" in text
    assert "warmproxy_warm_run_duration_seconds_count" in text


async def test_openapi_document_matches_the_routes(
    warm_proxy: Warmproxy, client: aiohttp.ClientSession
) -> None:
    status, document = await api(client, warm_proxy, "GET", "openapi.json")
    assert status == 200
    documented = {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method in operations
    }
    app = warm_proxy._control_runner.app  # type: ignore[union-attr]
    routed = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    assert routed == documented


def test_control_off_loopback_needs_a_token() -> None:
    with pytest.raises(ConfigError, match=r"control\.token is required"):
        load_settings(None, {"control": {"listen": "0.0.0.0:8081"}})
    settings = load_settings(None, {"control": {"listen": "0.0.0.0:8081", "token": TOKEN}})
    assert settings.control.token.get_secret_value() == TOKEN


def test_config_schedule_errors_name_the_key() -> None:
    bad_cron = {"strategies": {"proactive": {"schedule": "every hour"}}}
    with pytest.raises(ConfigError, match=r"strategies\.proactive\.schedule"):
        load_settings(None, bad_cron)
    bad_priority = {
        "strategies": {
            "proactive": {
                "data_sources": [{"name": "a", "priority": "asap", "source": {"type": "hot"}}]
            }
        }
    }
    with pytest.raises(ConfigError, match="asap"):
        load_settings(None, bad_priority)


# -- strategies on the running proxy ---------------------------------------------------


async def test_refresh_ahead_refills_a_hot_entry_before_it_expires(
    origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    origin.set("/hot", headers={"Cache-Control": "public, max-age=3"}, body=b"hot")
    proxy = await make_proxy(
        origin.url,
        **sections(
            tmp_path,
            strategies={"reactive": {"refresh_min_hits": 2, "refresh_fraction": 0.5}},
        ),
    )
    for _ in range(3):  # a miss, then two hits in this lifetime
        async with client.get(url(proxy, "/hot")) as response:
            await response.read()
    assert origin.count("/hot") == 1
    # Refreshed when half the lifetime is left, while the entry is still fresh.
    counters = proxy.warmer.executor.counters
    await eventually(lambda: counters.warmed["refresh-ahead"] == 1, within=6)
    assert origin.count("/hot") == 2
    assert origin.last("/hot").headers["X-Warmproxy-Warm"] == "1"
    async with client.get(url(proxy, "/hot")) as response:
        assert response.headers["Cache-Status"].startswith("warmproxy; hit")


async def test_a_key_missing_over_the_threshold_is_kept_warm(
    origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    origin.set("/popular", headers={"Cache-Control": "public, max-age=1"}, body=b"p")
    origin.set("/rare", headers={"Cache-Control": "public, max-age=1"}, body=b"r")
    proxy = await make_proxy(
        origin.url,
        **sections(
            tmp_path,
            strategies={"reactive": {"threshold": 2, "time_window": 60, "refresh_ahead": False}},
        ),
    )
    for path in ("/popular", "/popular", "/popular", "/rare"):
        async with client.get(url(proxy, path)) as response:
            await response.read()
        await proxy.cache.invalidate(path)  # every request of this test is a miss
    # Over the threshold: warmed again once its entry expires.
    counters = proxy.warmer.executor.counters
    await eventually(lambda: counters.warmed["reactive"] >= 1, within=6)
    assert origin.count("/popular") >= 4
    assert origin.last("/popular").headers["X-Warmproxy-Warm"] == "1"
    assert origin.count("/rare") == 1  # one miss: left alone


async def test_sql_source_warms_rows_of_a_real_sqlite_database(
    warm_proxy: Warmproxy, origin: Origin, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    import sqlite3

    db = tmp_path / "shop.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE products (id INTEGER, popularity INTEGER)")
        conn.executemany(
            "INSERT INTO products VALUES (?, ?)", [(n, n * 7 % 13) for n in range(1, 21)]
        )
    plan = {
        "sources": [
            {
                "name": "popular",
                "source": {
                    "type": "sql",
                    "dsn": f"sqlite:///{db}",
                    "query": "SELECT id FROM products ORDER BY popularity DESC LIMIT 5",
                    "key_pattern": "/products/{id}",
                },
            }
        ]
    }
    status, body = await api(client, warm_proxy, "POST", "schedule", plan)
    assert status == 200, body
    _, run = await api(client, warm_proxy, "POST", "start", {"strategy": "proactive"})
    done = await finished(client, warm_proxy, run["run_id"])
    assert done["progress"]["success"] == 5
    top5 = sorted(range(1, 21), key=lambda n: -(n * 7 % 13))[:5]
    assert {s.path for s in origin.seen} == {f"/products/{n}" for n in top5}


async def test_a_source_that_fails_is_reported_not_fatal(
    warm_proxy: Warmproxy, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    plan = {
        "sources": [
            {"name": "gone", "source": {"type": "file", "path": str(tmp_path / "nope.txt")}},
            {"name": "ok", "source": {"type": "urls", "paths": ["/products/1"]}},
        ]
    }
    await api(client, warm_proxy, "POST", "schedule", plan)
    _, run = await api(client, warm_proxy, "POST", "start", {"strategy": "proactive"})
    done = await finished(client, warm_proxy, run["run_id"])
    assert done["progress"]["success"] == 1
    assert done["progress"]["failed"] == 1
    assert "nope.txt" in done["errors"][0]["error"]
    _, schedule = await api(client, warm_proxy, "GET", "schedule")
    assert "nope.txt" in schedule["errors"]["gone"]


async def test_two_runs_of_one_schedule_never_overlap(
    origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(body=b"s", headers=CACHEABLE)

    for n in range(3):
        origin.handle(f"/s/{n}", slow)
    source = {"type": "urls", "paths": [f"/s/{n}" for n in range(3)]}
    proxy = await make_proxy(
        origin.url,
        **sections(
            tmp_path,
            strategies={
                "proactive": {
                    "schedule": "* * * * *",
                    "data_sources": [{"name": "every-minute", "source": source}],
                }
            },
        ),
    )
    warmer = proxy.warmer
    now = warmer.now()
    (first,) = await warmer.fire_due(now + 60)
    await eventually(lambda: origin.count() == 3)
    assert await warmer.fire_due(now + 120) == []  # still running: skipped
    assert warmer.schedule_skipped == 1
    release.set()
    await asyncio.wait_for(first.done.wait(), 5)
    (second,) = await warmer.fire_due(now + 180)
    await asyncio.wait_for(second.done.wait(), 5)
    assert second.progress.success == 3  # already fresh: nothing fetched again
    assert origin.count() == 3


@pytest.mark.parametrize("saved", [b"{not json", b"[1, 2]", b'{"schedule": "61 * * * *"}'])
async def test_a_corrupt_saved_schedule_falls_back_to_the_config(
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
    tmp_path: Path,
    saved: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "schedule.json").write_bytes(saved)
    configured = {"schedule": "30 2 * * *"}
    proxy = await make_proxy(origin.url, **sections(tmp_path, strategies={"proactive": configured}))
    status, schedule = await api(client, proxy, "GET", "schedule")
    assert status == 200
    assert schedule["schedule"] == "30 2 * * *"
    assert "using the configured one" in caplog.text


async def test_the_routers_refusals_are_json_too(
    warm_proxy: Warmproxy, client: aiohttp.ClientSession
) -> None:
    status, body = await api(client, warm_proxy, "GET", "no-such-thing")
    assert status == 404
    assert body == {"error": "no such endpoint: GET /cache/warming/no-such-thing"}
    async with client.delete(
        control_url(warm_proxy, "/cache/warming/status"), headers=AUTH
    ) as response:
        assert response.status == 405
        assert response.headers["Allow"] == "GET"
        body = await response.json()
        assert body["error"].startswith("DELETE is not allowed on /cache/warming/status")
    too_large = io.BytesIO(b'{"urls": ["/' + b"x" * (5 * 1024 * 1024) + b'"]}')
    async with client.post(
        control_url(warm_proxy, "/cache/warming/warm-key"), headers=AUTH, data=too_large
    ) as response:
        assert response.status == 413
        body = await response.json()
        assert "Maximum request body size 4194304 exceeded" in body["error"]
    # Still behind the token: an unknown path without it is a 401, not a 404.
    status, body = await api(client, warm_proxy, "GET", "no-such-thing", headers={})
    assert status == 401
