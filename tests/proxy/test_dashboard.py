"""The operator's dashboard in a real headless Chromium, against a real origin and
the proxy on real ports: what the page shows is what the control API says, and
what the operator does on it reaches the warmer and the origin."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

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
