"""A warm fetch is a client's request, made early (DESIGN rule 4): it asks for
the variant browsers select, against an origin that varies like a real
compressing app, and the access events say which variant answered."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.app import Warmproxy
from proxy.entry import CacheEntry
from proxy.filler import variant_fields
from proxy.observe import AccessEvent, Outcome
from proxy.warming import fill_through
from tests.proxy.conftest import ProxyFactory, control_url, eventually, url
from tests.variants import (
    ASSET_VARY_NAMES,
    CHROME,
    CURL,
    FIREFOX,
    PAGE_VARY_NAMES,
    SAFARI,
    UserAgent,
    VaryingOrigin,
    fetch,
)
from warmer.model import WarmRequest

TOKEN = "variant-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def sections(tmp_path: Path, **extra: dict[str, Any]) -> dict[str, dict[str, Any]]:
    # The default keying (path only): warm fills and clients share keys
    # whatever host name they use.
    out: dict[str, dict[str, Any]] = {
        "control": {"token": TOKEN},
        "state": {"dir": str(tmp_path / "state")},
        "execution": {"rate_limit": 0, "retry_base_delay": 0.01, "retry_max_delay": 0.05},
    }
    for name, values in extra.items():
        out.setdefault(name, {}).update(values)
    return out


@pytest.fixture
async def shop(
    varying_origin: VaryingOrigin, make_proxy: ProxyFactory, tmp_path: Path
) -> Warmproxy:
    return await make_proxy(varying_origin.url, **sections(tmp_path))


async def api(
    client: aiohttp.ClientSession, proxy: Warmproxy, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    async with client.request(
        method, control_url(proxy, f"/cache/warming/{path}"), headers=AUTH, json=body
    ) as response:
        return response.status, await response.json()


async def warm(client: aiohttp.ClientSession, proxy: Warmproxy, path: str, body: Any) -> Any:
    """Start a warming call and wait until its run is over; its final progress."""
    status, started = await api(client, proxy, "POST", path, body)
    assert status == 202, started
    progress: dict[str, Any] = {}

    async def over() -> bool:
        _, progress["now"] = await api(client, proxy, "GET", f"progress?run_id={started['run_id']}")
        return bool(progress["now"]["status"] != "running")

    await eventually(over, within=15)
    return progress["now"]


def tokens(value: str) -> set[str]:
    """The codings or ranges a field value lists, whatever their order and spacing."""
    return {member.strip().lower() for member in value.split(",") if member.strip()}


def as_request(agent: UserAgent) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(agent.headers))


# -- Filler.fill with a variant ------------------------------------------------------


async def test_a_warm_fill_of_a_browsers_variant_is_what_that_browser_hits(
    varying_origin: VaryingOrigin, shop: Warmproxy, client: aiohttp.ClientSession
) -> None:
    result = await shop.filler.fill("/page/1", headers=CHROME.variant())
    assert result.stored
    fetched = varying_origin.last("/page/1")
    assert fetched.warm
    assert fetched.headers["Accept-Encoding"] == "br,deflate,gzip,zstd"
    assert fetched.headers["Accept-Language"] == "en-us,en;q=0.9"

    answer = await fetch(client, url(shop, "/page/1"), CHROME)
    assert answer.hit, answer.cache_status
    assert answer.headers["Content-Encoding"] == "gzip"
    assert answer.headers["Content-Language"] == "en-US"
    assert b"/page/1 in en-US" in answer.body
    assert varying_origin.count("/page/1") == 1


async def test_without_a_variant_a_warm_fill_stores_what_no_browser_asks_for(
    varying_origin: VaryingOrigin, shop: Warmproxy, client: aiohttp.ClientSession
) -> None:
    # What every warm fetch did before it carried a variant: the uncompressed,
    # default-language response, which only a client sending neither field selects.
    assert (await shop.filler.fill("/page/bare")).stored
    answer = await fetch(client, url(shop, "/page/bare"), CHROME)
    assert not answer.hit and "fwd=vary-miss" in answer.cache_status
    assert (await fetch(client, url(shop, "/page/bare"), CURL)).hit
    assert varying_origin.count("/page/bare") == 2


async def test_each_browser_hits_the_variant_warmed_for_it(
    varying_origin: VaryingOrigin, shop: Warmproxy, client: aiohttp.ClientSession
) -> None:
    for agent in (CHROME, SAFARI):
        assert (await shop.filler.fill("/page/2", headers=agent.variant())).stored
    chrome = await fetch(client, url(shop, "/page/2"), CHROME)
    safari = await fetch(client, url(shop, "/page/2"), SAFARI)
    assert chrome.hit and safari.hit, (chrome.cache_status, safari.cache_status)
    assert chrome.headers["Content-Language"] == "en-US"
    assert safari.headers["Content-Language"] == "en-GB"
    assert b"in en-GB" in safari.body
    assert varying_origin.count("/page/2") == 2
    # Firefox prefers English less strongly (q=0.5): another variant, not warmed.
    firefox = await fetch(client, url(shop, "/page/2"), FIREFOX)
    assert "fwd=vary-miss" in firefox.cache_status


async def test_an_asset_warmed_once_serves_every_browser_with_that_encoding(
    varying_origin: VaryingOrigin, shop: Warmproxy, client: aiohttp.ClientSession
) -> None:
    # Vary: Accept-Encoding only: Chrome and Firefox send the same codings.
    assert (
        await shop.filler.fill("/assets/app.css", headers=CHROME.variant(ASSET_VARY_NAMES))
    ).stored
    assert (
        await shop.filler.fill("/assets/app.css", headers=SAFARI.variant(ASSET_VARY_NAMES))
    ).stored
    for agent in (CHROME, FIREFOX, SAFARI):
        answer = await fetch(client, url(shop, "/assets/app.css"), agent)
        assert answer.hit, (agent.name, answer.cache_status)
        assert answer.body.startswith(b"/* /assets/app.css */")
    assert varying_origin.count("/assets/app.css") == 2


async def test_a_browser_waiting_for_another_browsers_fill_shares_it_by_coding(
    varying_origin: VaryingOrigin, shop: Warmproxy, client: aiohttp.ClientSession
) -> None:
    """Safari asks while Chrome's fetch is in flight: the cache would answer
    Safari from Chrome's gzip variant once stored, so the waiting request
    shares that fill instead of fetching the same asset again."""
    varying_origin.delays["/assets/app.css"] = 0.3
    chrome = asyncio.create_task(fetch(client, url(shop, "/assets/app.css"), CHROME))
    await eventually(lambda: varying_origin.count("/assets/app.css") == 1)
    safari = await fetch(client, url(shop, "/assets/app.css"), SAFARI)
    first = await chrome
    assert varying_origin.count("/assets/app.css") == 1
    assert "collapsed" in safari.cache_status, safari.cache_status
    assert safari.headers["Content-Encoding"] == "gzip"
    assert safari.body == first.body
    assert safari.body.startswith(b"/* /assets/app.css */")
    # A client that accepts no coding still gets its own fetch.
    curl = await fetch(client, url(shop, "/assets/app.css"), CURL)
    assert "Content-Encoding" not in curl.headers
    assert varying_origin.count("/assets/app.css") == 2


async def test_fill_through_sends_the_requests_variant_and_reports_it(
    varying_origin: VaryingOrigin, shop: Warmproxy, client: aiohttp.ClientSession
) -> None:
    fill = fill_through(shop.filler)
    admitted: list[str] = []

    async def admit() -> None:
        admitted.append("fetch")

    request = WarmRequest("/page/3", headers=SAFARI.variant())
    report = await fill(request, admit)
    assert report.stored and admitted == ["fetch"]
    assert report.vary == PAGE_VARY_NAMES
    assert report.vary_values == ("br,deflate,gzip", "en-gb,en;q=0.9")
    assert (await fetch(client, url(shop, "/page/3"), SAFARI)).hit
    # Asked again: that variant is fresh, nothing is fetched, the same variant is named.
    again = await fill(request, admit)
    assert again.already_fresh and admitted == ["fetch"]
    assert (again.vary, again.vary_values) == (report.vary, report.vary_values)
    # Another variant of the same key is its own fill.
    chrome = await fill(WarmRequest("/page/3", headers=CHROME.variant()), admit)
    assert chrome.stored and chrome.vary_values == ("br,deflate,gzip,zstd", "en-us,en;q=0.9")
    assert varying_origin.count("/page/3") == 2


@pytest.mark.parametrize(
    "name",
    [
        "Cookie",
        "authorization",
        "Proxy-Authorization",
        "Host",
        "X-Forwarded-Host",
        "X-Forwarded-For",
        "Forwarded",
        "Via",
        "X-Warmproxy-Warm",
        "Connection",
        "Transfer-Encoding",
        "If-None-Match",
        "Range",
        "Content-Length",
        "bad name",
    ],
)
def test_fields_a_warm_fetch_never_sends_are_dropped_from_a_variant(name: str) -> None:
    kept = variant_fields(((name, "x"), ("accept-encoding", "gzip")), "X-Warmproxy-Warm")
    assert kept == [("accept-encoding", "gzip")]


def test_a_variant_value_that_would_split_the_request_is_dropped() -> None:
    variant = (("accept-language", "en\r\nX-Evil: 1"), ("accept-encoding", "gzip"))
    assert variant_fields(variant, "X-Warmproxy-Warm") == [("accept-encoding", "gzip")]


async def test_a_warm_fetch_never_sends_credentials_or_overrides_the_proxys_fields(
    varying_origin: VaryingOrigin, shop: Warmproxy
) -> None:
    asked = (
        ("accept-encoding", "gzip"),
        ("authorization", "Bearer someone"),
        ("cookie", "session=abc"),
        ("proxy-authorization", "Basic eDp5"),
        ("host", "evil.example"),
        ("x-forwarded-host", "evil.example"),
        ("via", "1.1 elsewhere"),
        ("x-warmproxy-warm", "0"),
        ("connection", "close"),
    )
    result = await shop.filler.fill("/page/secret", headers=asked)
    # Credentials would have made the answer unshareable (RFC 9111 §3.5).
    assert result.stored
    seen = varying_origin.last("/page/secret").headers
    for field in ("Authorization", "Cookie", "Proxy-Authorization"):
        assert field not in seen
    assert seen["Host"] == varying_origin.url.removeprefix("http://")
    assert "X-Forwarded-Host" not in seen  # single keying: the origin is told no host
    assert seen.getall("X-Warmproxy-Warm") == ["1"]
    assert "elsewhere" not in seen["Via"]
    assert seen.get("Connection", "").lower() != "close"
    assert seen["Accept-Encoding"] == "gzip"
    assert result.entry is not None and result.entry.vary_values == ("gzip", None)


# -- access events -------------------------------------------------------------------


async def test_events_name_the_variant_that_answered_or_was_stored(
    varying_origin: VaryingOrigin, shop: Warmproxy, client: aiohttp.ClientSession
) -> None:
    events: list[AccessEvent] = []
    shop.hub.subscribe(events.append)
    varying_origin.max_ages["/page/now"] = 0  # not stored: no freshness
    for agent, path in ((CHROME, "/page/4"), (CHROME, "/page/4"), (SAFARI, "/page/4")):
        await fetch(client, url(shop, path), agent)
    await fetch(client, url(shop, "/page/now"), CHROME)
    async with client.post(url(shop, "/page/4"), data=b"x") as response:
        await response.read()
    shop.hub.drain()

    chrome = ("br,deflate,gzip,zstd", "en-us,en;q=0.9")
    safari = ("br,deflate,gzip", "en-gb,en;q=0.9")
    assert [(e.url, e.outcome, e.vary, e.vary_values) for e in events] == [
        ("/page/4", Outcome.MISS, PAGE_VARY_NAMES, chrome),
        ("/page/4", Outcome.HIT, PAGE_VARY_NAMES, chrome),
        ("/page/4", Outcome.MISS, PAGE_VARY_NAMES, safari),
        ("/page/now", Outcome.MISS, (), ()),
        ("/page/4", Outcome.BYPASS, (), ()),
    ]
    # The hit passes the entry's own values on: nothing is computed for the event.
    entry = (await shop.cache.lookup("/page/4", as_request(CHROME))).entry
    assert isinstance(entry, CacheEntry)
    assert events[1].vary_values is entry.vary_values and events[1].vary is entry.vary


async def test_a_not_modified_answer_from_the_cache_names_its_variant_too(
    varying_origin: VaryingOrigin, shop: Warmproxy, client: aiohttp.ClientSession
) -> None:
    events: list[AccessEvent] = []
    shop.hub.subscribe(events.append)
    first = await fetch(client, url(shop, "/page/5"), SAFARI)
    # The browser's conditional request is answered from its variant with a 304
    # (RFC 9111 §4.3.2: without Last-Modified, the stored Date is compared).
    kwargs = SAFARI.request_kwargs()
    kwargs["headers"]["If-Modified-Since"] = first.headers["Date"]
    async with client.get(url(shop, "/page/5"), **kwargs) as response:
        assert response.status == 304
    shop.hub.drain()
    safari = ("br,deflate,gzip", "en-gb,en;q=0.9")
    assert [(e.outcome, e.status, e.vary, e.vary_values) for e in events] == [
        (Outcome.MISS, 200, PAGE_VARY_NAMES, safari),
        (Outcome.HIT, 304, PAGE_VARY_NAMES, safari),
    ]
    assert varying_origin.count("/page/5") == 1


# -- the warmer's strategies, for browser-like clients (wired by warmer.audience) ----


async def test_warm_key_before_any_traffic_asks_for_the_common_codings(
    varying_origin: VaryingOrigin, shop: Warmproxy, client: aiohttp.ClientSession
) -> None:
    done = await warm(client, shop, "warm-key", {"url": "/assets/site.css"})
    assert done["progress"]["success"] == 1
    fetched = varying_origin.last("/assets/site.css", warm=True)
    assert tokens(fetched.headers.get("Accept-Encoding", "")) == {"gzip", "deflate", "br"}
    # One gzip variant serves every browser, whatever else it accepts (zstd).
    for agent in (SAFARI, CHROME, FIREFOX):
        answer = await fetch(client, url(shop, "/assets/site.css"), agent)
        assert answer.hit, (agent.name, answer.cache_status)
        assert answer.headers["Content-Encoding"] == "gzip"
    assert varying_origin.count("/assets/site.css") == 1
    # A client that accepts no coding is not sent gzip: it gets its own variant.
    assert not (await fetch(client, url(shop, "/assets/site.css"), CURL)).hit


async def test_a_fresh_variant_of_an_accepted_coding_beats_a_stale_exact_one(
    varying_origin: VaryingOrigin, shop: Warmproxy, client: aiohttp.ClientSession
) -> None:
    """Safari's own variant has gone stale; Chrome's, gzip too, was just
    stored (by Chrome, or by a warm fetch in Chrome's spelling): Safari is
    served the fresh one, not sent to the origin for its stale one."""
    varying_origin.max_ages["/assets/app.js"] = 1
    assert not (await fetch(client, url(shop, "/assets/app.js"), SAFARI)).hit
    await asyncio.sleep(1.1)  # Safari's variant is stale now
    assert (
        await shop.filler.fill("/assets/app.js", headers=CHROME.variant(ASSET_VARY_NAMES))
    ).stored
    answer = await fetch(client, url(shop, "/assets/app.js"), SAFARI)
    assert answer.hit, answer.cache_status
    assert answer.headers["Content-Encoding"] == "gzip"
    assert varying_origin.count("/assets/app.js") == 2


async def test_events_name_the_coding_that_answered(
    varying_origin: VaryingOrigin, shop: Warmproxy, client: aiohttp.ClientSession
) -> None:
    """The warmer counts variants one entry serves by coding as one: each
    event names the content-coding of the entry that answered it."""
    events: list[AccessEvent] = []
    shop.hub.subscribe(events.append)
    for agent in (CHROME, SAFARI, CURL):
        await fetch(client, url(shop, "/assets/site.js"), agent)
    shop.hub.drain()
    assert [(e.outcome, e.coding) for e in events] == [
        (Outcome.MISS, "gzip"),
        (Outcome.HIT, "gzip"),  # Safari served Chrome's gzip entry
        (Outcome.MISS, ""),  # curl accepts no coding: the identity variant
    ]


async def test_a_browser_missing_its_own_language_is_no_eviction_to_the_warmer(
    varying_origin: VaryingOrigin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """Pages vary on Accept-Language: each browser's first request misses
    while another's entry is fresh, though nothing was evicted.  The
    warmer's measure of what a warm fill displaces (which sets how sure
    refresh-ahead, reactive and predictive must be before they warm, and
    what keeping touches) must not count those misses, and must still
    count an entry evicted while fresh."""
    proxy = await make_proxy(varying_origin.url, **sections(tmp_path, cache={"max_entries": 12}))
    refresh_ahead = proxy.warmer.refresh_ahead
    assert refresh_ahead is not None
    displacement = refresh_ahead.displacement
    pages = [f"/page/{n}" for n in range(4)]
    for agent in (CHROME, SAFARI, FIREFOX):
        # A second apart: each fill's freshness ends at another second.
        await asyncio.sleep(1.05)
        for path in pages:
            assert not (await fetch(client, url(proxy, path), agent)).hit
    assert (await fetch(client, url(proxy, pages[0]), CHROME)).hit
    proxy.hub.drain()
    assert displacement.cost == 0.0
    assert displacement.scale == math.inf
    # Twelve other pages push every entry out of the cache, fresh as they are.
    for n in range(4, 16):
        await fetch(client, url(proxy, f"/page/{n}"), CHROME)
    await asyncio.sleep(1.05)
    assert not (await fetch(client, url(proxy, pages[0]), CHROME)).hit
    proxy.hub.drain()
    assert displacement.cost > 0.0
    assert 1.0 < displacement.scale < 10.0


async def test_exact_accept_encoding_matching_is_a_setting(
    varying_origin: VaryingOrigin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    proxy = await make_proxy(
        varying_origin.url, **sections(tmp_path, cache={"vary_accept_encoding": "exact"})
    )
    assert (
        await proxy.filler.fill("/assets/a.css", headers=SAFARI.variant(ASSET_VARY_NAMES))
    ).stored
    assert (await fetch(client, url(proxy, "/assets/a.css"), SAFARI)).hit
    chrome = await fetch(client, url(proxy, "/assets/a.css"), CHROME)
    assert "fwd=vary-miss" in chrome.cache_status


async def test_warm_key_warms_the_variants_the_clients_of_the_key_use(
    varying_origin: VaryingOrigin, shop: Warmproxy, client: aiohttp.ClientSession
) -> None:
    for agent in (CHROME, SAFARI):
        await fetch(client, url(shop, "/page/10"), agent)
    await shop.cache.invalidate("/page/10")
    await warm(client, shop, "warm-key", {"url": "/page/10"})
    for agent in (CHROME, SAFARI):
        answer = await fetch(client, url(shop, "/page/10"), agent)
        assert answer.hit, (agent.name, answer.cache_status)
    assert varying_origin.count("/page/10", warm=False) == 2


async def test_warm_pattern_warms_the_variant_its_clients_use(
    varying_origin: VaryingOrigin, shop: Warmproxy, client: aiohttp.ClientSession
) -> None:
    paths = ["/page/20", "/page/21"]
    for path in paths:
        await fetch(client, url(shop, path), CHROME)
        await shop.cache.invalidate(path)
    done = await warm(client, shop, "warm-pattern", {"pattern": "/page/2*"})
    assert done["progress"]["success"] == 2
    for path in paths:
        answer = await fetch(client, url(shop, path), CHROME)
        assert answer.hit, (path, answer.cache_status)
        assert varying_origin.count(path, warm=False) == 1


async def test_a_scheduled_source_warms_the_variant_the_sites_clients_use(
    varying_origin: VaryingOrigin, shop: Warmproxy, client: aiohttp.ClientSession
) -> None:
    await fetch(client, url(shop, "/page/home"), FIREFOX)
    paths = ["/page/s1", "/page/s2"]
    plan = {"sources": [{"name": "catalogue", "source": {"type": "urls", "paths": paths}}]}
    status, _ = await api(client, shop, "POST", "schedule", plan)
    assert status == 200
    await warm(client, shop, "start", {"strategy": "proactive"})
    for path in paths:
        answer = await fetch(client, url(shop, path), FIREFOX)
        assert answer.hit, (path, answer.cache_status)
        assert varying_origin.count(path) == 1


async def test_refresh_ahead_refreshes_the_variant_that_is_hit(
    varying_origin: VaryingOrigin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    varying_origin.max_ages["/page/hot"] = 3
    proxy = await make_proxy(
        varying_origin.url,
        **sections(
            tmp_path, strategies={"reactive": {"refresh_min_hits": 2, "refresh_fraction": 0.5}}
        ),
    )
    for _ in range(3):  # a miss, then two hits in this lifetime
        await fetch(client, url(proxy, "/page/hot"), CHROME)
    counters = proxy.warmer.executor.counters
    await eventually(lambda: counters.warmed["refresh-ahead"] == 1, within=6)
    refreshed = varying_origin.last("/page/hot", warm=True).headers
    assert tokens(refreshed.get("Accept-Encoding", "")) == tokens(CHROME.headers["Accept-Encoding"])
    assert tokens(refreshed.get("Accept-Language", "")) == {"en-us", "en;q=0.9"}
    assert (await fetch(client, url(proxy, "/page/hot"), CHROME)).hit
    assert varying_origin.count("/page/hot") == 2


async def test_warm_on_start_warms_what_browsers_hit(
    varying_origin: VaryingOrigin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    paths = ["/assets/a.css", "/assets/b.css"]
    proactive = {
        "warm_on_start": "before_ready",
        "data_sources": [{"name": "assets", "source": {"type": "urls", "paths": paths}}],
    }
    proxy = await make_proxy(
        varying_origin.url, **sections(tmp_path, strategies={"proactive": proactive})
    )

    async def ready() -> bool:
        async with client.get(control_url(proxy, "/readyz")) as response:
            return response.status == 200

    await eventually(ready, within=10)
    for path in paths:
        answer = await fetch(client, url(proxy, path), SAFARI)
        assert answer.hit, (path, answer.cache_status)
        assert varying_origin.count(path) == 1


async def test_readme_scenario_a_warmed_path_is_a_hit_for_the_browser_browsing(
    varying_origin: VaryingOrigin, shop: Warmproxy, client: aiohttp.ClientSession
) -> None:
    for _ in range(3):
        await fetch(client, url(shop, "/products/1"), CHROME)
    await warm(client, shop, "warm-key", {"url": "/products/42"})
    answer = await fetch(client, url(shop, "/products/42"), CHROME)
    assert answer.hit, answer.cache_status
    fetched = varying_origin.last("/products/42", warm=True)
    assert tokens(fetched.headers.get("Accept-Encoding", "")) == tokens(
        CHROME.headers["Accept-Encoding"]
    )
    assert varying_origin.count("/products/42") == 1
