"""The demo origin, on a real port: its caching headers are what its docstring promises."""

from __future__ import annotations

import gzip
import re
import time
from collections.abc import Awaitable, Callable
from email.utils import parsedate_to_datetime
from xml.etree import ElementTree

import aiohttp
import pytest
import time_machine
from aiohttp import web
from aiohttp.test_utils import TestClient

from proxy.demo_origin import (
    ARTICLE_CACHE_CONTROL,
    ARTICLE_COUNT,
    BIG_MAX_MIB,
    FLAKY_CACHE_CONTROL,
    IMMUTABLE_CACHE_CONTROL,
    LIVE_CACHE_CONTROL,
    LIVE_COUNT,
    PRODUCT_CACHE_CONTROL,
    PRODUCT_COUNT,
    accepts_gzip,
    build_demo_origin,
    flaky_period,
    merge_vary,
    start_demo_origin,
)
from tests.variants import CHROME, CURL, FIREFOX, PYTHON_REQUESTS, SAFARI, UserAgent

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]

STRONG_ETAG = re.compile(r'^"[^"]+"$')


@pytest.fixture
async def client(aiohttp_client: MakeClient) -> Client:
    return await aiohttp_client(build_demo_origin())


async def test_product_is_fresh_for_a_minute_with_validators(client: Client) -> None:
    resp = await client.get("/products/17")
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == PRODUCT_CACHE_CONTROL
    assert STRONG_ETAG.match(resp.headers["ETag"])
    assert parsedate_to_datetime(resp.headers["Last-Modified"]).timestamp() <= time.time()
    assert resp.content_type == "text/html"
    assert "/products/" in await resp.text()


async def test_if_none_match_gets_304_with_the_caching_headers(client: Client) -> None:
    first = await client.get("/products/3")
    etag = first.headers["ETag"]

    resp = await client.get("/products/3", headers={"If-None-Match": etag})
    assert resp.status == 304
    assert await resp.read() == b""
    assert resp.headers["ETag"] == etag
    assert resp.headers["Cache-Control"] == PRODUCT_CACHE_CONTROL

    weak = await client.get("/products/3", headers={"If-None-Match": f'"nope", W/{etag}'})
    assert weak.status == 304

    other = await client.get("/products/3", headers={"If-None-Match": '"something-else"'})
    assert other.status == 200


async def test_if_modified_since_gets_304_unless_if_none_match_disagrees(client: Client) -> None:
    last_modified = (await client.get("/products/9")).headers["Last-Modified"]

    resp = await client.get("/products/9", headers={"If-Modified-Since": last_modified})
    assert resp.status == 304

    long_ago = "Thu, 01 Jan 2015 00:00:00 GMT"
    older = await client.get("/products/9", headers={"If-Modified-Since": long_ago})
    assert older.status == 200

    # RFC 9110 §13.2.2: If-None-Match decides alone when present.
    both = await client.get(
        "/products/9", headers={"If-Modified-Since": last_modified, "If-None-Match": '"x"'}
    )
    assert both.status == 200


async def test_articles_come_with_and_without_an_explicit_lifetime(client: Client) -> None:
    explicit: list[aiohttp.ClientResponse] = []
    heuristic: list[aiohttp.ClientResponse] = []
    for n in range(1, 21):
        resp = await client.get(f"/articles/{n}")
        assert resp.status == 200
        assert "Last-Modified" in resp.headers
        (explicit if "Cache-Control" in resp.headers else heuristic).append(resp)
    assert explicit and heuristic
    for resp in explicit:
        assert resp.headers["Cache-Control"] == ARTICLE_CACHE_CONTROL
        assert "ETag" in resp.headers
    for resp in heuristic:
        # Only Last-Modified: a cache has to fall back on heuristic freshness.
        assert not {"Cache-Control", "Expires", "ETag"} & set(resp.headers)


async def test_heuristic_article_answers_if_modified_since(client: Client) -> None:
    for n in range(1, ARTICLE_COUNT + 1):
        resp = await client.get(f"/articles/{n}")
        if "Cache-Control" not in resp.headers:
            break
    last_modified = resp.headers["Last-Modified"]
    again = await client.get(f"/articles/{n}", headers={"If-Modified-Since": last_modified})
    assert again.status == 304


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/static/app.css", "text/css"),
        ("/static/app.js", "text/javascript"),
        ("/static/img/1.png", "image/png"),
        ("/static/img/50.png", "image/png"),
    ],
)
async def test_static_assets_are_immutable(client: Client, path: str, content_type: str) -> None:
    resp = await client.get(path)
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == IMMUTABLE_CACHE_CONTROL
    assert resp.content_type == content_type
    body = await resp.read()
    if content_type == "image/png":
        assert body.startswith(b"\x89PNG\r\n\x1a\n")


async def test_prices_must_be_revalidated_and_change_every_ten_seconds(client: Client) -> None:
    start = 1_900_000_000  # a multiple of 10
    with time_machine.travel(start, tick=False) as traveller:
        first = await client.get("/api/prices")
        assert first.headers["Cache-Control"] == "no-cache"
        etag = first.headers["ETag"]
        revalidated = await client.get("/api/prices", headers={"If-None-Match": etag})
        assert revalidated.status == 304

        traveller.move_to(start + 9)
        assert (await client.get("/api/prices")).headers["ETag"] == etag

        traveller.move_to(start + 10)
        later = await client.get("/api/prices", headers={"If-None-Match": etag})
        assert later.status == 200
        assert later.headers["ETag"] != etag
        assert (await later.json())["as_of"] == start + 10


async def test_cart_is_private(client: Client) -> None:
    resp = await client.get("/api/cart", cookies={"session": "abc"})
    assert resp.headers["Cache-Control"].startswith("private")
    assert (await resp.json())["session"] == "abc"


async def test_session_sets_a_new_cookie_each_time(client: Client) -> None:
    first = await client.get("/api/session")
    second = await client.get("/api/session")
    assert first.headers["Cache-Control"] == "public, max-age=60"
    cookies = [r.headers["Set-Cookie"] for r in (first, second)]
    assert all(c.startswith("session=") for c in cookies)
    assert cookies[0] != cookies[1]


async def test_account_is_no_store(client: Client) -> None:
    resp = await client.get("/account")
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "no-store"


async def test_search_varies_by_query_and_language(client: Client) -> None:
    en = await client.get("/search", params={"q": "lamp"}, headers={"Accept-Language": "en-GB"})
    de = await client.get(
        "/search", params={"q": "lamp"}, headers={"Accept-Language": "de-DE,de;q=0.9"}
    )
    other = await client.get("/search", params={"q": "tea"}, headers={"Accept-Language": "en"})
    for resp in (en, de, other):
        assert resp.status == 200
        assert resp.headers["Vary"] == "Accept-Language, Accept-Encoding"
        assert resp.headers["Cache-Control"] == "public, max-age=120"
    assert en.headers["Content-Language"] == "en"
    assert de.headers["Content-Language"] == "de"
    bodies = {await r.text() for r in (en, de, other)}
    assert len(bodies) == 3
    assert "Ergebnisse" in await de.text()


async def test_slow_takes_its_time_and_is_cacheable(client: Client) -> None:
    started = time.monotonic()
    resp = await client.get("/slow/3")
    assert time.monotonic() - started >= 0.3
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "public, max-age=60"


async def test_flaky_fails_a_fixed_share_and_its_successes_allow_stale(client: Client) -> None:
    period = flaky_period(7, 4)
    statuses = []
    for _ in range(period * 3):
        resp = await client.get("/flaky/4")
        statuses.append(resp.status)
        if resp.status == 200:
            assert resp.headers["Cache-Control"] == FLAKY_CACHE_CONTROL
            assert "stale-if-error=600" in resp.headers["Cache-Control"]
        else:
            assert resp.status == 503
            assert resp.headers["Cache-Control"] == "no-store"
    assert statuses.count(503) == 3
    assert statuses.count(200) == period * 3 - 3


async def test_flaky_counts_each_path_on_its_own(client: Client) -> None:
    assert (await client.get("/flaky/1")).status == 200
    assert (await client.get("/flaky/2")).status == 200


async def test_error_route_answers_the_status_asked_for(client: Client) -> None:
    resp = await client.get("/error/500")
    assert resp.status == 500
    assert "Cache-Control" not in resp.headers
    assert (await client.get("/error/502")).status == 502
    assert (await client.get("/error/200")).status == 404


async def test_big_streams_the_announced_length(client: Client) -> None:
    resp = await client.get("/big/3")
    assert resp.status == 200
    assert resp.headers["Content-Length"] == str(3 << 20)
    assert resp.headers["Cache-Control"] == "public, max-age=60"
    received = 0
    async for chunk in resp.content.iter_any():
        received += len(chunk)
    assert received == 3 << 20


async def test_big_is_capped(client: Client) -> None:
    resp = await client.head("/big/1000")
    assert resp.status == 200
    assert resp.headers["Content-Length"] == str(BIG_MAX_MIB << 20)


async def test_big_answers_if_none_match(client: Client) -> None:
    etag = (await client.head("/big/1")).headers["ETag"]
    assert (await client.get("/big/1", headers={"If-None-Match": etag})).status == 304


@pytest.mark.parametrize(
    "path",
    [
        "/nope",
        "/products/0",
        f"/products/{PRODUCT_COUNT + 1}",
        "/articles/101",
        "/static/img/51.png",
    ],
)
async def test_unknown_paths_are_404(client: Client, path: str) -> None:
    assert (await client.get(path)).status == 404


async def test_unsafe_methods_change_the_product(client: Client) -> None:
    etag = (await client.get("/products/5")).headers["ETag"]

    put = await client.put("/products/5")
    assert put.status == 200
    assert (await put.json()) == {"id": 5, "revision": 1}
    after_put = await client.get("/products/5", headers={"If-None-Match": etag})
    assert after_put.status == 200
    etag = after_put.headers["ETag"]

    post = await client.post("/products/5")
    assert post.status == 204
    assert (await client.get("/products/5")).headers["ETag"] != etag

    delete = await client.delete("/products/5")
    assert delete.status == 204
    assert (await client.get("/products/5")).status == 404
    assert (await client.post("/products/5")).status == 404

    assert (await client.put("/products/5")).status == 200
    assert (await client.get("/products/5")).status == 200


async def test_other_methods_are_refused(client: Client) -> None:
    assert (await client.patch("/products/5")).status == 405
    assert (await client.post("/articles/5")).status == 405


async def test_sitemap_lists_every_page(client: Client) -> None:
    resp = await client.get("/sitemap.xml")
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "public, max-age=300"
    ns = {"sm": "http://www.sitemaps.org/schemas/sitemap/0.9"}
    root = ElementTree.fromstring(await resp.read())
    locs = [loc.text or "" for loc in root.findall("sm:url/sm:loc", ns)]
    assert len(locs) == 1 + PRODUCT_COUNT + ARTICLE_COUNT
    paths = {loc.split(str(client.port), 1)[1] for loc in locs}
    assert "/products/200" in paths
    assert "/articles/100" in paths
    for loc in locs[:5]:
        assert (await client.get(loc.split(str(client.port), 1)[1])).status == 200


async def test_index_links_to_products_articles_and_assets(client: Client) -> None:
    resp = await client.get("/")
    assert resp.headers["Cache-Control"] == "public, max-age=30"
    links = set(re.findall(r'href="([^"]+)"', await resp.text()))
    assert {f"/products/{n}" for n in range(1, PRODUCT_COUNT + 1)} <= links
    assert {f"/articles/{n}" for n in range(1, ARTICLE_COUNT + 1)} <= links
    assert {"/static/app.css", "/static/img/1.png", "/api/prices", "/sitemap.xml"} <= links


async def test_same_seed_same_content(aiohttp_client: MakeClient) -> None:
    a = await aiohttp_client(build_demo_origin(seed=1))
    b = await aiohttp_client(build_demo_origin(seed=1))
    c = await aiohttp_client(build_demo_origin(seed=2))
    etags = [(await x.get("/products/42")).headers["ETag"] for x in (a, b, c)]
    assert etags[0] == etags[1] != etags[2]


async def test_start_demo_origin_serves_until_cleanup() -> None:
    runner = await start_demo_origin("127.0.0.1", 0)
    port = runner.addresses[0][1]
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/products/1") as resp,
        ):
            assert resp.status == 200
    finally:
        await runner.cleanup()
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(f"http://127.0.0.1:{port}/")


# -- compression, as a real app's server does it ---------------------------------------


@pytest.fixture
async def raw(aiohttp_client: MakeClient) -> Client:
    """A client that leaves bodies as sent, so the coding on the wire shows."""
    return await aiohttp_client(build_demo_origin(), auto_decompress=False)


async def fetch_as(client: Client, path: str, agent: UserAgent) -> aiohttp.ClientResponse:
    resp = await client.get(path, **agent.request_kwargs())
    await resp.read()
    return resp


@pytest.mark.parametrize("agent", [CHROME, FIREFOX, SAFARI, PYTHON_REQUESTS], ids=lambda a: a.name)
async def test_a_browser_gets_gzip_with_vary(raw: Client, agent: UserAgent) -> None:
    resp = await fetch_as(raw, "/products/42", agent)
    assert resp.status == 200
    assert resp.headers["Content-Encoding"] == "gzip"
    assert resp.headers["Vary"] == "Accept-Encoding"
    body = gzip.decompress(await resp.read())
    assert b"/products/" in body
    assert resp.headers["Content-Length"] == str(len(await resp.read()))


async def test_curl_gets_identity_with_the_same_vary(raw: Client) -> None:
    browser = await fetch_as(raw, "/products/42", SAFARI)
    curl = await fetch_as(raw, "/products/42", CURL)
    assert curl.status == 200
    assert "Content-Encoding" not in curl.headers
    assert curl.headers["Vary"] == "Accept-Encoding"
    assert await curl.read() == gzip.decompress(await browser.read())
    # Two representations, two strong validators (RFC 9110 §8.8.3).
    assert STRONG_ETAG.match(curl.headers["ETag"])
    assert browser.headers["ETag"] == curl.headers["ETag"][:-1] + '-gzip"'


@pytest.mark.parametrize(
    "path",
    ["/", "/articles/1", "/static/app.css", "/static/app.js", "/api/prices", "/sitemap.xml"],
)
async def test_every_text_response_is_compressed_for_a_browser(raw: Client, path: str) -> None:
    browser = await fetch_as(raw, path, CHROME)
    assert browser.headers["Content-Encoding"] == "gzip"
    assert "Accept-Encoding" in browser.headers["Vary"]
    curl = await fetch_as(raw, path, CURL)
    assert "Content-Encoding" not in curl.headers
    assert gzip.decompress(await browser.read()) == await curl.read()


@pytest.mark.parametrize("path", ["/static/img/1.png", "/big/1", "/error/500"])
async def test_images_and_binaries_are_sent_as_they_are(raw: Client, path: str) -> None:
    resp = await fetch_as(raw, path, CHROME)
    assert "Content-Encoding" not in resp.headers
    assert "Vary" not in resp.headers


async def test_search_keeps_its_own_vary_and_adds_accept_encoding(raw: Client) -> None:
    resp = await fetch_as(raw, "/search?q=lamp", SAFARI)
    assert resp.headers["Vary"] == "Accept-Language, Accept-Encoding"
    assert resp.headers["Content-Language"] == "en"
    assert resp.headers["Content-Encoding"] == "gzip"


async def test_a_304_of_the_gzip_variant_repeats_its_vary_and_etag(raw: Client) -> None:
    first = await fetch_as(raw, "/products/3", CHROME)
    kwargs = CHROME.request_kwargs()
    kwargs["headers"]["If-None-Match"] = first.headers["ETag"]
    again = await raw.get("/products/3", **kwargs)
    assert again.status == 304
    assert again.headers["ETag"] == first.headers["ETag"]
    assert again.headers["Vary"] == "Accept-Encoding"
    # The gzip variant's validator does not validate the identity one.
    identity = CURL.request_kwargs()
    identity["headers"]["If-None-Match"] = first.headers["ETag"]
    assert (await raw.get("/products/3", **identity)).status == 200


@pytest.mark.parametrize(
    ("accept_encoding", "gzip_ok"),
    [
        ("gzip, deflate, br, zstd", True),
        ("br;q=1.0, gzip;q=0.8", True),
        ("x-gzip", True),
        ("*", True),
        ("identity", False),
        ("br, zstd", False),
        ("gzip;q=0", False),
        ("gzip;q=0, *", False),
        ("*;q=0", False),
        ("", False),
        (None, False),
    ],
)
def test_accepts_gzip_follows_rfc_9110(accept_encoding: str | None, gzip_ok: bool) -> None:
    assert accepts_gzip(accept_encoding) is gzip_ok


def test_merge_vary_adds_a_field_once() -> None:
    assert merge_vary(None, "Accept-Encoding") == "Accept-Encoding"
    assert merge_vary("Accept-Language", "Accept-Encoding") == "Accept-Language, Accept-Encoding"
    assert merge_vary("accept-encoding", "Accept-Encoding") == "accept-encoding"
    assert merge_vary("*", "Accept-Encoding") == "*"


async def test_live_pages_are_short_lived_and_change_every_period(client: Client) -> None:
    start = 1_900_000_000  # a multiple of 5
    with time_machine.travel(start, tick=False) as traveller:
        first = await client.get("/live/7")
        assert first.status == 200
        assert first.headers["Cache-Control"] == LIVE_CACHE_CONTROL
        text = await first.text()
        traveller.move_to(start + 4)
        assert await (await client.get("/live/7")).text() == text
        scores = set()
        for step in range(1, 8):
            traveller.move_to(start + 5 * step)
            scores.add(await (await client.get("/live/7")).text())
        assert len(scores) > 1
    assert (await client.get(f"/live/{LIVE_COUNT + 1}")).status == 404
