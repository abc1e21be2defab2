"""The operator's dashboard in a real headless Chromium, against a real origin and
the proxy on real ports: what the page shows is what the control API says, and
what the operator does on it reaches the warmer and the origin."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from proxy.app import Warmproxy
from tests.proxy.browser import Browsing, browse
from tests.proxy.conftest import Origin, ProxyFactory, control_url, eventually, url
from tests.proxy.test_warming_api import TOKEN, api, finished, sections

try:
    from playwright.async_api import expect
except ImportError:  # the browsing fixture skips, or fails where a browser is required
    expect = None  # type: ignore[assignment]

CACHEABLE = {"Cache-Control": "public, max-age=60"}
SLOW_PATHS = [f"/slow/{n}" for n in range(60)]


@pytest.fixture
async def browsing() -> AsyncIterator[Browsing]:
    async for seen in browse():
        yield seen


def dashboard_url(proxy: Warmproxy) -> str:
    return control_url(proxy, "/cache/warming/dashboard")


def no_token(tmp_path: Path, **extra: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The warming API test settings, without a control token (loopback)."""
    out = sections(tmp_path, **extra)
    out["control"] = {"token": ""}
    return out


async def number(browsing: Browsing, selector: str) -> int:
    text = await browsing.page.locator(selector).text_content()
    assert text is not None
    return int(text.replace(",", ""))


async def bar_value(browsing: Browsing) -> tuple[int, float]:
    """The progress bar's completed count and the width of its filled part (px)."""
    page = browsing.page
    now = await page.locator("#run-bar").get_attribute("aria-valuenow")
    width = await page.eval_on_selector(
        "#run-bar",
        "bar => [...bar.children].reduce((w, c) => w + c.getBoundingClientRect().width, 0)",
    )
    return int(now or 0), float(width)


async def slow_origin(origin: Origin) -> None:
    for path in SLOW_PATHS:
        origin.set(path, headers=CACHEABLE, delay=0.1)


def slow_settings(tmp_path: Path, batch_size: int = 100) -> dict[str, dict[str, Any]]:
    # One fetch at a time: 60 paths x 0.1 s is a run of about 6 s.
    execution = {"parallelism": 1, "adaptive": False, "batch_size": batch_size}
    return no_token(tmp_path, execution=execution)


async def test_page_loads_clean_and_shows_the_status_the_api_reports(
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
    browsing: Browsing,
    tmp_path: Path,
) -> None:
    for n in range(1, 4):
        origin.set(f"/products/{n}", headers=CACHEABLE)
    proxy = await make_proxy(origin.url, **no_token(tmp_path))
    for n in (1, 1, 2):
        async with client.get(url(proxy, f"/products/{n}")) as response:
            await response.read()
    _, run = await api(
        client, proxy, "POST", "warm-key", {"urls": ["/products/1", "/products/2", "/products/3"]}
    )
    await finished(client, proxy, run["run_id"])
    _, status = await api(client, proxy, "GET", "status")

    page = browsing.page
    response = await page.goto(dashboard_url(proxy))
    assert response is not None and response.status == 200
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    await expect(page.locator("#run-strategy")).to_have_text(
        f"{status['strategy']} run · {status['status']}"
    )
    await expect(page.locator("#run-state")).to_have_text("idle")
    await expect(page.locator("#run-id")).to_have_text(status["run_id"])
    progress = status["progress"]
    assert await number(browsing, "#run-completed") == progress["completed"] == 3
    assert await number(browsing, "#run-total") == progress["total_items"]
    assert await number(browsing, "#run-success") == progress["success"]
    await expect(page.locator("#stop-button")).to_be_disabled()
    # The other panels filled in from the same API.
    await expect(page.locator("#hot-rows")).to_contain_text("/products/1")
    await expect(page.locator("#stats-cost")).to_contain_text("Items warmed")
    await expect(page.locator("#chart canvas")).to_have_count(1)
    await expect(page.locator("#conn")).to_have_text(re.compile(r"^live"))
    # A few polls later, still nothing logged as an error.
    first = len(browsing.requests)
    await eventually(lambda: len(browsing.requests) >= first + 4, within=10)
    assert browsing.errors() == []


async def test_the_progress_bar_advances_during_a_real_run(
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
    browsing: Browsing,
    tmp_path: Path,
) -> None:
    await slow_origin(origin)
    proxy = await make_proxy(origin.url, **slow_settings(tmp_path))
    page = browsing.page
    await page.goto(dashboard_url(proxy))
    await expect(page.locator("#run-empty")).to_be_visible()
    _, run = await api(client, proxy, "POST", "warm-key", {"urls": SLOW_PATHS})
    await expect(page.locator("#run-state")).to_have_text("running")
    await expect(page.locator("#stop-button")).to_be_enabled()

    # A first reading part way through, then a higher one while still running.
    await eventually(lambda: _bar_between(browsing, 1, 59), within=10)
    low, low_width = await bar_value(browsing)
    await eventually(lambda: _bar_between(browsing, low + 1, 59), within=10)
    high, high_width = await bar_value(browsing)
    _, status = await api(client, proxy, "GET", "status")
    assert status["status"] == "running"
    assert 0 < low < high <= status["progress"]["completed"] <= 60
    assert 0 < low_width < high_width
    await expect(page.locator("#chart-caption")).to_contain_text("running")

    done = await finished(client, proxy, run["run_id"])
    assert done["status"] == "completed"
    await expect(page.locator("#run-strategy")).to_have_text("bulk run · completed")
    assert await number(browsing, "#run-completed") == done["progress"]["completed"] == 60
    await expect(page.locator("#run-bar")).to_have_attribute("aria-valuenow", "60")
    _, full_width = await bar_value(browsing)
    bar_width = await page.eval_on_selector("#run-bar", "bar => bar.clientWidth")
    assert full_width == pytest.approx(bar_width, abs=1)
    await expect(page.locator("#chart-caption")).to_contain_text("(60/60, completed)")
    assert browsing.errors() == []


async def _bar_between(browsing: Browsing, low: int, high: int) -> bool:
    value, _ = await bar_value(browsing)
    return low <= value <= high


# batch_size 100: the rest of a batch taken off the queue, waiting for a slot,
# is dropped too (it used to be fetched after Stop).
@pytest.mark.parametrize("batch_size", [1, 100])
async def test_stop_stops_the_run_and_the_origin_stops_getting_requests(
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
    browsing: Browsing,
    tmp_path: Path,
    batch_size: int,
) -> None:
    await slow_origin(origin)
    proxy = await make_proxy(origin.url, **slow_settings(tmp_path, batch_size))
    page = browsing.page
    await page.goto(dashboard_url(proxy))
    _, run = await api(client, proxy, "POST", "warm-key", {"urls": SLOW_PATHS})
    await expect(page.locator("#stop-button")).to_be_enabled()
    await page.locator("#stop-button").click()

    done = await finished(client, proxy, run["run_id"])
    assert done["status"] == "stopped"
    assert done["progress"]["completed"] < 60
    await expect(page.locator("#run-strategy")).to_have_text("bulk run · stopped")
    await expect(page.locator("#stop-result")).to_contain_text(run["run_id"])
    await expect(page.locator("#stop-button")).to_be_disabled()
    # The fetch that was in flight has reached the origin; nothing follows it.
    fetched = origin.count()
    assert fetched < 60
    await asyncio.sleep(0.5)  # five fetches' worth of time
    assert origin.count() == fetched
    assert browsing.errors() == []


async def test_the_schedule_editor_shows_a_bad_cron_next_to_its_field_and_saves_a_good_one(
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
    browsing: Browsing,
    tmp_path: Path,
) -> None:
    proxy = await make_proxy(origin.url, **no_token(tmp_path))
    page = browsing.page
    await page.goto(dashboard_url(proxy))
    await expect(page.locator("#schedule-empty")).to_be_visible()
    await expect(page.locator("#schedule-default")).to_have_value("0 * * * *")

    await page.locator("#schedule-default").fill("every hour")
    await page.locator("#schedule-add").click()
    source = page.locator("#schedule-sources fieldset").first
    await source.locator('[name="name"]').fill("catalogue")
    await source.locator('[name="paths"]').fill("/products/1\n/products/2")
    await page.locator("#schedule-save").click()

    error = page.locator('.field-error[data-error-for="schedule"]')
    await expect(error).to_be_visible()
    await expect(error).to_contain_text("invalid cron expression 'every hour'")
    # Next to the field it names: right after the input, which is marked invalid.
    assert (
        await page.eval_on_selector(
            "#schedule-default", "input => input.nextElementSibling.dataset.errorFor"
        )
        == "schedule"
    )
    await expect(page.locator("#schedule-default")).to_have_attribute("aria-invalid", "true")
    _, document = await api(client, proxy, "GET", "schedule")
    assert document["schedule"] == "0 * * * *" and document["sources"] == []

    # A bad cron in a source is shown in that source.
    await page.locator("#schedule-default").fill("*/15 * * * *")
    await source.locator('[name="schedule"]').fill("61 * * * *")
    await page.locator("#schedule-save").click()
    source_error = source.locator('.field-error[data-error-for="sources.0.schedule"]')
    await expect(source_error).to_contain_text("61 * * * *")
    await expect(page.locator('.field-error[data-error-for="schedule"]')).to_have_count(0)

    await source.locator('[name="schedule"]').fill("30 2 * * *")
    await page.locator("#schedule-save").click()
    await expect(page.locator("#schedule-result")).to_contain_text("Saved")
    await expect(page.locator(".field-error[data-generated]")).to_have_count(0)
    _, document = await api(client, proxy, "GET", "schedule")
    assert document["schedule"] == "*/15 * * * *"
    [saved] = document["sources"]
    assert saved["name"] == "catalogue"
    assert saved["schedule"] == "30 2 * * *"
    assert saved["source"] == {"type": "urls", "paths": ["/products/1", "/products/2"]}
    # Shown as saved, with its next run.
    await expect(page.locator("#schedule-sources .source-status")).to_contain_text("Next run")
    await expect(page.locator("#schedule-empty")).to_be_hidden()
    # The 400s the page showed are the only errors the browser noted.
    assert browsing.errors(allow_status=(400,)) == []


async def test_the_warm_forms_reach_the_origin(
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
    browsing: Browsing,
    tmp_path: Path,
) -> None:
    for n in range(1, 6):
        origin.set(f"/products/{n}", headers=CACHEABLE)
    origin.set("/items/1", body=b"not storable")  # known from traffic, never fresh
    proxy = await make_proxy(origin.url, **no_token(tmp_path))
    async with client.get(url(proxy, "/items/1")) as response:
        await response.read()
    page = browsing.page
    await page.goto(dashboard_url(proxy))

    def warm_requests(path: str) -> int:
        return sum(1 for s in origin.seen if s.path == path and "X-Warmproxy-Warm" in s.headers)

    key_form = page.locator("#warm-key-form")
    await key_form.locator("select.priority").select_option("high")
    await page.locator("#warm-key-url").fill("/products/3")
    await key_form.locator("button").click()
    await eventually(lambda: warm_requests("/products/3") == 1, within=10)
    await expect(page.locator("#warm-result")).to_contain_text("Warming /products/3")

    await page.locator("#warm-list-input").fill("/products/4\n\n/products/5\n")
    await page.locator("#warm-list-form button").click()
    await eventually(
        lambda: warm_requests("/products/4") == warm_requests("/products/5") == 1, within=10
    )

    await page.locator("#warm-pattern-input").fill("/items/*")
    await page.locator("#warm-pattern-form button").click()
    await eventually(lambda: warm_requests("/items/1") == 1, within=10)

    # A path on another host is refused, next to the field.
    await page.locator("#warm-key-url").fill("http://elsewhere.example/x")
    await key_form.locator("button").click()
    refusal = page.locator('#warm-key-form .field-error[data-error-for="url"]')
    await expect(refusal).to_contain_text("not the configured origin")
    assert not any("elsewhere" in s.path for s in origin.seen)
    assert browsing.errors(allow_status=(400,)) == []


async def test_the_token_is_asked_for_kept_in_the_session_and_never_put_in_a_url(
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
    browsing: Browsing,
    tmp_path: Path,
) -> None:
    proxy = await make_proxy(origin.url, **sections(tmp_path))  # with TOKEN
    page = browsing.page
    response = await page.goto(dashboard_url(proxy))
    assert response is not None and response.status == 200  # the page needs no token
    await expect(page.locator("#token-card")).to_be_visible()

    await page.locator("#token-input").fill("wrong-token")
    await page.locator("#token-form button").click()
    await expect(page.locator("#token-error")).to_contain_text("refused")
    await expect(page.locator("#token-card")).to_be_visible()

    await page.locator("#token-input").fill(TOKEN)
    await page.locator("#token-form button").click()
    await expect(page.locator("#token-card")).to_be_hidden()
    await expect(page.locator("#conn")).to_have_text(re.compile(r"^live"))
    await expect(page.locator("#run-empty")).to_be_visible()
    stored = await page.evaluate("sessionStorage.getItem('warmproxy.control-token')")
    assert stored == TOKEN
    assert await page.evaluate("localStorage.length") == 0

    # A reload in the same tab does not ask again.
    await page.reload()
    await expect(page.locator("#conn")).to_have_text(re.compile(r"^live"))
    await expect(page.locator("#token-card")).to_be_hidden()

    assert TOKEN not in page.url
    api_calls = [
        r for r in browsing.requests if "/cache/warming/" in r.url and "dashboard" not in r.url
    ]
    assert api_calls
    assert all(TOKEN not in r.url and "wrong-token" not in r.url for r in browsing.requests)
    authorised = [r for r in api_calls if r.headers.get("authorization") == f"Bearer {TOKEN}"]
    assert authorised
    # The page and its assets were fetched without the token.
    assert all("authorization" not in r.headers for r in browsing.requests if "dashboard" in r.url)
    assert browsing.errors(allow_status=(401,)) == []


async def test_phone_width_does_not_overflow_and_a_fresh_proxy_shows_its_empty_states(
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
    browsing: Browsing,
    tmp_path: Path,
) -> None:
    long_path = "/" + "very-long-segment-" * 12 + "end"
    origin.set(long_path, status=503)
    proxy = await make_proxy(origin.url, **no_token(tmp_path))
    page = browsing.page
    await page.set_viewport_size({"width": 375, "height": 800})
    await page.goto(dashboard_url(proxy))

    port = str(proxy.proxy_port)
    await expect(page.locator("#run-empty")).to_have_text(re.compile("^No warm run yet"))
    await expect(page.locator("#chart-empty")).to_contain_text(
        f"No traffic yet: send requests through the proxy on :{port}"
    )
    await expect(page.locator("#hot-empty")).to_contain_text("No traffic yet")
    await expect(page.locator("#schedule-empty")).to_have_text(
        "No schedule yet: add a source below."
    )
    await expect(page.locator("#stats-empty")).to_contain_text("No warm run yet")
    await expect(page.locator("#conn")).to_have_text(re.compile(r"^live"))
    assert await _overflow(browsing) == []

    # Long, unbreakable keys (in the run's errors, the hot keys) wrap too.
    async with client.get(url(proxy, long_path)) as response:
        await response.read()
    _, run = await api(client, proxy, "POST", "warm-key", {"urls": [long_path]})
    await finished(client, proxy, run["run_id"])
    await expect(page.locator("#errors-body")).to_contain_text("very-long-segment")
    await expect(page.locator("#hot-rows")).to_contain_text("very-long-segment")
    assert await _overflow(browsing) == []
    assert browsing.errors() == []


async def _overflow(browsing: Browsing) -> list[str]:
    """What sticks out at this width: the page, and any element wider than its box
    (text that does not wrap) or reaching past the window's right edge."""
    found: list[str] = await browsing.page.evaluate(
        """() => {
            const width = window.innerWidth;
            const out = [];
            const page = document.scrollingElement.scrollWidth;
            if (page > width) out.push(`the page is ${page} px wide in a ${width} px window`);
            for (const node of document.querySelectorAll("body *")) {
                const box = node.getBoundingClientRect();
                if (box.width === 0) continue;
                const name = `${node.tagName.toLowerCase()}#${node.id}.${node.className}`;
                if (box.right > width + 0.5) out.push(`${name} ends at ${box.right} px`);
                if (node.scrollWidth > node.clientWidth + 1 && node.clientWidth > 0)
                    out.push(`${name} holds ${node.scrollWidth} px in ${node.clientWidth} px`);
            }
            return out;
        }"""
    )
    return found


# ------------------------------------------------------------ the cache side


async def _traffic(client: aiohttp.ClientSession, proxy: Warmproxy, paths: list[str]) -> None:
    for path in paths:
        async with client.get(url(proxy, path)) as response:
            await response.read()
    await eventually(lambda: proxy.warmer.tracker.totals().requests >= len(paths))


def _timeline_sums(timeline: dict[str, Any]) -> dict[str, int]:
    names = ["requests", "from_cache", "cache_bytes", "origin_bytes"]
    names += [f"status_{c}xx" for c in range(2, 6)]
    return {name: sum(b[name] for b in timeline["buckets"]) for name in names}


async def test_the_cache_panels_show_real_figures_after_traffic(
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
    browsing: Browsing,
    tmp_path: Path,
) -> None:
    origin.set("/products/1", headers=CACHEABLE, body=b"p" * 2000)
    proxy = await make_proxy(origin.url, **no_token(tmp_path))
    # A miss, a hit, and a 404 (not stored, so a miss twice).
    await _traffic(client, proxy, ["/products/1", "/products/1", "/missing", "/missing"])
    _, timeline = await api(client, proxy, "GET", "timeline?seconds=900")
    sums = _timeline_sums(timeline)
    assert sums["requests"] == 4 and sums["from_cache"] == 1
    assert sums["status_2xx"] == 2 and sums["status_4xx"] == 2
    assert sums["cache_bytes"] == 2000
    assert sums["origin_bytes"] == 2000 + 2 * len(b"no such route")

    page = browsing.page
    await page.goto(dashboard_url(proxy))
    # Status classes and where the bytes came from, over the chart's span.
    await expect(page.locator("#status-2xx")).to_have_text("2")
    await expect(page.locator("#status-4xx")).to_have_text("2")
    await expect(page.locator("#status-5xx")).to_have_text("0")
    await expect(page.locator("#status-4xx-share")).to_have_text("50 %")
    await expect(page.locator("#traffic-cache-share")).to_have_text("25.0 % of 4")
    await expect(page.locator("#traffic-cache-bytes")).to_have_text("2.0 KiB")
    await expect(page.locator("#traffic-origin-bytes")).to_have_text("2.0 KiB")
    await expect(page.locator("#traffic-chart canvas")).to_have_count(1)

    _, report = await api(client, proxy, "GET", "cache")
    # Client latency: percentiles of every outcome seen, as the API computed them.
    rows = page.locator("#latency-rows tr")
    await expect(rows).to_have_count(len(report["latency"]["by_outcome"]))
    await expect(page.locator("#latency-rows")).to_contain_text("hit")
    await expect(
        page.locator("#latency-rows tr", has_text="miss").locator("td").nth(1)
    ).to_have_text(str(report["latency"]["by_outcome"]["miss"]["requests"]))
    duration = re.compile(r"^\d+(\.\d+)? (ms|s)$")
    for q in ("p50", "p90", "p99"):
        await expect(page.locator(f"#latency-{q}")).to_have_text(duration)
        await expect(page.locator(f"#origin-{q}")).to_have_text(duration)
    # Store fill: the one stored response, its bytes against max_bytes.
    await expect(page.locator("#store-entries")).to_have_text("1")
    await expect(page.locator("#store-evictions")).to_have_text("0")
    await expect(page.locator("#store-state")).to_have_text("memory · up")
    await expect(page.locator("#store-fill-line")).to_contain_text("of 256.0 MiB")
    # Origin health, and the paths missed most: the 404 first.
    await expect(page.locator("#origin-state")).to_have_text("healthy")
    await expect(page.locator("#origin-errors")).to_have_text("No origin errors since start.")
    first = page.locator("#missed-rows tr").first
    await expect(first.locator("td").nth(0)).to_have_text("/missing")
    await expect(first.locator("td").nth(1)).to_have_text("2")
    await expect(page.locator("#missed-rows")).to_contain_text("/products/1")
    assert browsing.errors() == []


async def test_a_purge_through_the_box_removes_the_entry_so_the_next_request_misses(
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
    browsing: Browsing,
    tmp_path: Path,
) -> None:
    for n in (1, 2, 3):
        origin.set(f"/products/{n}", headers={**CACHEABLE, "Surrogate-Key": f"product-{n} list"})
    proxy = await make_proxy(origin.url, **no_token(tmp_path))
    await _traffic(client, proxy, ["/products/1", "/products/2", "/products/3"])
    page = browsing.page
    await page.goto(dashboard_url(proxy))
    await expect(page.locator("#store-entries")).to_have_text("3")

    await page.locator("#purge-path").fill("/products/1")
    await page.locator("#purge-path-form button").click()
    await expect(page.locator("#purge-result")).to_have_text("Purged 1 response for /products/1.")
    await expect(page.locator("#store-entries")).to_have_text("2")
    async with client.get(url(proxy, "/products/1")) as response:
        await response.read()
        cache_status = response.headers["Cache-Status"]
        assert "miss" in cache_status and "hit" not in cache_status, cache_status
    assert origin.count("/products/1") == 2
    async with client.get(url(proxy, "/products/2")) as response:
        assert response.headers["Cache-Status"].startswith("warmproxy; hit")

    # By tag, soft: marked stale, so still held (and answered while refreshed).
    await page.locator("#purge-soft").check()
    await page.locator("#purge-tag").fill("product-2")
    await page.locator("#purge-tag-form button").click()
    await expect(page.locator("#purge-result")).to_have_text(
        "Marked stale 1 response for product-2."
    )
    # Served stale while one refresh goes to the origin (RFC 5861).
    async with client.get(url(proxy, "/products/2")) as response:
        await response.read()
        cache_status = response.headers["Cache-Status"]
        assert 'detail="stale-while-revalidate"' in cache_status, cache_status
    await eventually(lambda: origin.count("/products/2") == 2)

    # By glob, hard, warmed again right after: the origin gets the warm fetch.
    await page.locator("#purge-soft").uncheck()
    await page.locator("#purge-rewarm").check()
    await page.locator("#purge-pattern").fill("/products/3*")
    await page.locator("#purge-pattern-form button").click()
    await expect(page.locator("#purge-result")).to_contain_text(
        "Purged 1 response for /products/3*. Warming again: run "
    )
    await eventually(
        lambda: any(
            s.path == "/products/3" and "X-Warmproxy-Warm" in s.headers for s in origin.seen
        ),
        within=10,
    )

    # A bad glob is shown next to its field; nothing is purged.
    before = (await proxy.cache.store.stats()).entries
    await page.locator("#purge-pattern").fill("products[")
    await page.locator("#purge-pattern-form button").click()
    error = page.locator('#purge-pattern-form .field-error[data-error-for="pattern"]')
    await expect(error).to_be_visible()
    await expect(page.locator("#purge-result")).to_contain_text("Not purged")
    assert (await proxy.cache.store.stats()).entries == before
    assert browsing.errors(allow_status=(400,)) == []


async def test_an_unreachable_api_shows_a_banner_and_dims_the_stale_figures(
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
    browsing: Browsing,
    tmp_path: Path,
) -> None:
    proxy = await make_proxy(origin.url, **no_token(tmp_path))
    page = browsing.page
    await page.goto(dashboard_url(proxy))
    await expect(page.locator("#conn")).to_have_text(re.compile(r"^live"))
    await expect(page.locator("#down-banner")).to_be_hidden()
    await expect(page.locator("#main-grid")).not_to_have_class(re.compile(r"\bstale\b"))

    def api_call(address: str) -> bool:
        return "/cache/warming/" in address and "/cache/warming/dashboard" not in address

    # Every API call fails at the network level, as with the listener gone.
    await page.route(api_call, lambda route: route.abort("connectionrefused"))
    banner = page.locator("#down-banner")
    await expect(banner).to_be_visible()
    await expect(banner).to_contain_text("The control API is unreachable.")
    await expect(banner).to_contain_text("The figures below are from")
    await expect(page.locator("#main-grid")).to_have_class(re.compile(r"\bstale\b"))
    opacity = await page.eval_on_selector("#main-grid", "g => getComputedStyle(g).opacity")
    assert float(opacity) < 1
    await expect(page.locator("#conn")).to_contain_text("cannot reach the control API")

    # Back: the banner goes and the figures are live again.
    await page.unroute(api_call)
    await expect(banner).to_be_hidden()
    await expect(page.locator("#main-grid")).not_to_have_class(re.compile(r"\bstale\b"))
    await expect(page.locator("#conn")).to_have_text(re.compile(r"^live"))
    assert [e for e in browsing.errors() if "ERR_CONNECTION_REFUSED" not in e] == []


async def test_a_1920_px_screen_is_filled_by_the_grid(
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
    browsing: Browsing,
    tmp_path: Path,
) -> None:
    origin.set("/products/1", headers=CACHEABLE)
    proxy = await make_proxy(origin.url, **no_token(tmp_path))
    await _traffic(client, proxy, ["/products/1", "/products/1"])
    page = browsing.page
    await page.set_viewport_size({"width": 1920, "height": 1080})
    await page.goto(dashboard_url(proxy))
    await expect(page.locator("#conn")).to_have_text(re.compile(r"^live"))
    await expect(page.locator("#traffic-chart canvas")).to_have_count(1)
    shot = tmp_path / "dashboard-1920.png"
    await page.screenshot(path=str(shot), full_page=True)
    assert int.from_bytes(shot.read_bytes()[16:20], "big") == 1920  # the PNG's width

    layout = await page.evaluate(
        """() => {
            const grid = document.getElementById("main-grid");
            const box = grid.getBoundingClientRect();
            const style = getComputedStyle(grid);
            const columns = style.gridTemplateColumns.split(" ").map(parseFloat);
            const cards = [...grid.children]
                .map((c) => c.getBoundingClientRect())
                .filter((r) => r.width > 0)
                .map((r) => [r.left, r.right, r.top, r.bottom]);
            return {
                left: box.left + parseFloat(style.paddingLeft),
                right: box.right - parseFloat(style.paddingRight),
                top: box.top + parseFloat(style.paddingTop),
                bottom: box.bottom - parseFloat(style.paddingBottom),
                columns, gap: parseFloat(style.columnGap), cards,
            };
        }"""
    )
    columns = layout["columns"]
    assert len(columns) == 4
    width = layout["right"] - layout["left"]
    assert width > 1920 - 60  # the grid spans the window, less its padding
    assert sum(columns) + 3 * layout["gap"] == pytest.approx(width, abs=2)
    cards = layout["cards"]
    assert max(right for _, right, _, _ in cards) == pytest.approx(layout["right"], abs=2)
    # Each third of the width is covered by cards over most of the page's height:
    # no column left blank.
    height = layout["bottom"] - layout["top"]
    third = width / 3
    for n in range(3):
        x0 = layout["left"] + n * third
        x1 = x0 + third
        covered = sum(
            max(0.0, min(x1, right) - max(x0, left)) * (bottom - top)
            for left, right, top, bottom in cards
        )
        assert covered / (third * height) > 0.85, (
            f"third {n + 1} is {covered / (third * height):.0%} covered"
        )
    assert await _overflow(browsing) == []
    assert browsing.errors() == []


async def test_the_chart_tooltips_show_the_hovered_bucket_time(
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
    browsing: Browsing,
    tmp_path: Path,
) -> None:
    origin.set("/products/1", headers=CACHEABLE)
    proxy = await make_proxy(origin.url, **no_token(tmp_path))
    await _traffic(client, proxy, ["/products/1", "/products/1"])
    page = browsing.page
    await page.goto(dashboard_url(proxy))
    zone = ZoneInfo(await page.evaluate("Intl.DateTimeFormat().resolvedOptions().timeZone"))
    for chart, tip in (("#chart", "#chart-tip"), ("#traffic-chart", "#traffic-tip")):
        over = page.locator(f"{chart} .u-over")
        await expect(over).to_be_visible()
        await over.hover()  # scrolled into view, the pointer at its middle
        await expect(page.locator(tip)).to_be_visible()
        start = float(await page.locator(tip).get_attribute("data-ts") or "nan")
        _, timeline = await api(client, proxy, "GET", "timeline?seconds=900")
        assert start in {b["ts"] for b in timeline["buckets"]}
        when = [
            datetime.fromtimestamp(t, zone).strftime("%H:%M:%S")
            for t in (start, start + timeline["bucket_seconds"])
        ]
        await expect(page.locator(f"{tip} .tip-time")).to_have_text(f"{when[0]}–{when[1]}")
        await page.mouse.move(0, 0)
        await expect(page.locator(tip)).to_be_hidden()
    assert browsing.errors() == []


async def test_origin_failures_show_by_reason_and_the_origin_is_marked_failing(
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
    browsing: Browsing,
    tmp_path: Path,
) -> None:
    origin.set("/hang", headers=CACHEABLE, delay=5)
    proxy = await make_proxy(origin.url, **no_token(tmp_path, proxy={"read_timeout": 0.3}))
    page = browsing.page
    await page.goto(dashboard_url(proxy))
    await expect(page.locator("#origin-state")).to_have_text("healthy")
    async with client.get(url(proxy, "/hang")) as response:
        assert response.status == 504
    errors = page.locator("#origin-errors")
    await expect(errors).to_contain_text("origin timeout: 1")
    await expect(errors).to_contain_text("answered by the proxy, origin-timeout: 1")
    await expect(page.locator("#origin-state")).to_have_text("failing")
    assert browsing.errors() == []
