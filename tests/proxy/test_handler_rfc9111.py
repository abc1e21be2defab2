"""Shared-cache behaviour through the proxy on a real port, one test per RFC rule.

Each test talks to the proxy over HTTP in front of a real origin that counts
what reaches it; names carry the RFC section they check.
"""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

from proxy.app import Warmproxy
from proxy.policy import format_http_date
from tests.proxy.conftest import Origin, coalesced, eventually, url


async def get(
    client: aiohttp.ClientSession, proxy: Warmproxy, path: str, **headers: str
) -> tuple[aiohttp.ClientResponse, bytes]:
    fields = {k.replace("_", "-"): v for k, v in headers.items()}
    async with client.get(url(proxy, path), headers=fields) as response:
        return response, await response.read()


async def test_s4_miss_then_hit_with_age_and_cache_status(origin, proxy, client) -> None:
    origin.set("/a", headers={"Cache-Control": "max-age=60"}, body=b"A")
    first, body = await get(client, proxy, "/a")
    assert body == b"A" and first.status == 200
    assert first.headers["Cache-Status"].startswith("warmproxy; fwd=uri-miss; fwd-status=200")
    assert "stored" in first.headers["Cache-Status"]
    second, body = await get(client, proxy, "/a")
    assert body == b"A"
    assert second.headers["Cache-Status"].startswith("warmproxy; hit; ttl=")
    assert int(second.headers["Age"]) >= 0
    assert origin.count("/a") == 1


async def test_query_string_is_part_of_the_key(origin, proxy, client) -> None:
    origin.set("/q", headers={"Cache-Control": "max-age=60"})
    await get(client, proxy, "/q?a=1")
    await get(client, proxy, "/q?a=2")
    await get(client, proxy, "/q?a=1")
    assert origin.count("/q?a=1") == 1 and origin.count("/q?a=2") == 1


async def test_s4_2_3_age_includes_the_origins_age(origin, proxy, client) -> None:
    origin.set("/aged", headers={"Cache-Control": "max-age=600", "Age": "100"})
    await get(client, proxy, "/aged")
    response, _ = await get(client, proxy, "/aged")
    assert 100 <= int(response.headers["Age"]) <= 102


async def test_s4_2_1_expired_by_age_header_is_not_served_from_cache(origin, proxy, client) -> None:
    origin.set("/old", headers={"Cache-Control": "max-age=60", "Age": "120"})
    await get(client, proxy, "/old")
    await get(client, proxy, "/old")
    assert origin.count("/old") == 2


async def test_s5_2_2_10_s_maxage_overrides_max_age(origin, proxy, client) -> None:
    origin.set("/s", headers={"Cache-Control": "max-age=0, s-maxage=60"})
    await get(client, proxy, "/s")
    response, _ = await get(client, proxy, "/s")
    assert "hit" in response.headers["Cache-Status"]
    assert origin.count("/s") == 1


async def test_s5_3_expires_gives_freshness(origin, proxy, client) -> None:
    import time

    origin.set("/e", headers={"Expires": format_http_date(time.time() + 60)})
    await get(client, proxy, "/e")
    await get(client, proxy, "/e")
    assert origin.count("/e") == 1


async def test_s4_2_2_heuristic_freshness_from_last_modified(origin, proxy, client) -> None:
    import time

    origin.set("/lm", headers={"Last-Modified": format_http_date(time.time() - 86400)})
    origin.set("/nolm", headers={})
    for path in ("/lm", "/lm", "/nolm", "/nolm"):
        await get(client, proxy, path)
    assert origin.count("/lm") == 1
    assert origin.count("/nolm") == 2


async def test_s5_2_2_5_no_store_is_never_cached(origin, proxy, client) -> None:
    origin.set("/ns", headers={"Cache-Control": "no-store, max-age=60"})
    await get(client, proxy, "/ns")
    response, _ = await get(client, proxy, "/ns")
    assert origin.count("/ns") == 2
    assert "stored" not in response.headers["Cache-Status"]


async def test_s5_2_2_7_private_is_never_cached(origin, proxy, client) -> None:
    origin.set("/p", headers={"Cache-Control": "private, max-age=60"})
    await get(client, proxy, "/p")
    await get(client, proxy, "/p")
    assert origin.count("/p") == 2


async def test_set_cookie_responses_are_not_cached(origin, proxy, client) -> None:
    origin.set("/c", headers={"Cache-Control": "max-age=60", "Set-Cookie": "s=1"})
    await get(client, proxy, "/c")
    await get(client, proxy, "/c")
    assert origin.count("/c") == 2


async def test_set_cookie_cached_when_configured(origin, make_proxy, client) -> None:
    proxy = await make_proxy(origin.url, cache={"store_set_cookie": True})
    origin.set("/c", headers={"Cache-Control": "max-age=60", "Set-Cookie": "s=1"})
    await get(client, proxy, "/c")
    await get(client, proxy, "/c")
    assert origin.count("/c") == 1


async def test_s3_5_authorization_requests_not_served_from_shared_cache(
    origin, proxy, client
) -> None:
    origin.set("/auth", headers={"Cache-Control": "max-age=60"})
    await get(client, proxy, "/auth")  # cached for anonymous users
    await get(client, proxy, "/auth", Authorization="Bearer x")
    await get(client, proxy, "/auth", Authorization="Bearer x")
    assert origin.count("/auth") == 3
    origin.set("/pub", headers={"Cache-Control": "public, max-age=60"})
    await get(client, proxy, "/pub", Authorization="Bearer x")
    await get(client, proxy, "/pub", Authorization="Bearer y")
    assert origin.count("/pub") == 1


async def test_s4_1_vary_keeps_one_variant_per_value(origin, proxy, client) -> None:
    async def negotiate(request: web.Request) -> web.Response:
        lang = request.headers.get("Accept-Language", "none")
        return web.Response(
            text=f"lang={lang}", headers={"Cache-Control": "max-age=60", "Vary": "Accept-Language"}
        )

    origin.handle("/v", negotiate)
    _, en = await get(client, proxy, "/v", Accept_Language="en")
    _, de = await get(client, proxy, "/v", Accept_Language="de")
    _, en2 = await get(client, proxy, "/v", Accept_Language="en")
    _, de2 = await get(client, proxy, "/v", Accept_Language="de")
    _, none = await get(client, proxy, "/v")
    assert (en, de, en2, de2, none) == (
        b"lang=en",
        b"lang=de",
        b"lang=en",
        b"lang=de",
        b"lang=none",
    )
    assert origin.count("/v") == 3


async def test_s4_1_vary_star_never_matches(origin, proxy, client) -> None:
    origin.set("/star", headers={"Cache-Control": "max-age=60", "Vary": "*"})
    await get(client, proxy, "/star")
    await get(client, proxy, "/star")
    assert origin.count("/star") == 2


async def test_s4_3_1_stale_entry_revalidated_with_validators_and_304_updates_headers(
    origin, proxy, client
) -> None:
    state = {"calls": 0}

    async def resource(request: web.Request) -> web.Response:
        state["calls"] += 1
        if request.headers.get("If-None-Match") == '"v1"':
            return web.Response(
                status=304, headers={"ETag": '"v1"', "X-Version": "2", "Cache-Control": "max-age=0"}
            )
        return web.Response(
            body=b"payload",
            headers={"ETag": '"v1"', "X-Version": "1", "Cache-Control": "max-age=0"},
        )

    origin.handle("/r", resource)
    await get(client, proxy, "/r")
    response, body = await get(client, proxy, "/r")
    assert body == b"payload"
    assert response.headers["X-Version"] == "2"
    assert "fwd=stale; fwd-status=304" in response.headers["Cache-Status"]
    assert origin.last("/r").headers["If-None-Match"] == '"v1"'


async def test_s4_3_1_last_modified_used_as_validator(origin, proxy, client) -> None:
    lm = "Mon, 01 Jan 2024 00:00:00 GMT"

    async def resource(request: web.Request) -> web.Response:
        if request.headers.get("If-Modified-Since") == lm:
            return web.Response(status=304, headers={"Cache-Control": "no-cache"})
        return web.Response(body=b"x", headers={"Last-Modified": lm, "Cache-Control": "no-cache"})

    origin.handle("/lmv", resource)
    await get(client, proxy, "/lmv")
    response, body = await get(client, proxy, "/lmv")
    assert body == b"x" and response.status == 200
    assert "fwd-status=304" in response.headers["Cache-Status"]


async def test_s4_3_2_client_conditional_answered_from_cache(origin, proxy, client) -> None:
    origin.set("/cond", headers={"Cache-Control": "max-age=60", "ETag": '"abc"'}, body=b"body")
    await get(client, proxy, "/cond")
    response, body = await get(client, proxy, "/cond", If_None_Match='"abc"')
    assert response.status == 304 and body == b""
    assert response.headers["ETag"] == '"abc"'
    assert "hit" in response.headers["Cache-Status"]
    response, body = await get(client, proxy, "/cond", If_None_Match='"other"')
    assert response.status == 200 and body == b"body"
    assert origin.count("/cond") == 1


async def test_s4_3_2_if_modified_since_answered_from_cache(origin, proxy, client) -> None:
    lm = "Mon, 01 Jan 2024 00:00:00 GMT"
    origin.set("/ims", headers={"Cache-Control": "max-age=60", "Last-Modified": lm})
    await get(client, proxy, "/ims")
    response, _ = await get(client, proxy, "/ims", If_Modified_Since=lm)
    assert response.status == 304
    assert origin.count("/ims") == 1


async def test_client_conditional_on_miss_fills_the_cache(origin, proxy, client) -> None:
    origin.set("/cm", headers={"Cache-Control": "max-age=60", "ETag": '"e"'}, body=b"full")
    response, _ = await get(client, proxy, "/cm", If_None_Match='"e"')
    assert response.status == 304
    assert "If-None-Match" not in origin.last("/cm").headers
    response, body = await get(client, proxy, "/cm")
    assert body == b"full" and "hit" in response.headers["Cache-Status"]


async def test_s5_2_2_4_no_cache_response_revalidated_every_time(origin, proxy, client) -> None:
    origin.set("/nc", headers={"Cache-Control": "no-cache", "ETag": '"n"'})
    for _ in range(3):
        await get(client, proxy, "/nc")
    assert origin.count("/nc") == 3
    assert origin.last("/nc").headers.get("If-None-Match") == '"n"'


async def test_s5_2_1_4_request_no_cache_goes_to_origin(origin, proxy, client) -> None:
    origin.set("/rnc", headers={"Cache-Control": "max-age=60"})
    await get(client, proxy, "/rnc")
    response, _ = await get(client, proxy, "/rnc", Cache_Control="no-cache")
    assert origin.count("/rnc") == 2
    assert "fwd=request" in response.headers["Cache-Status"]
    await get(client, proxy, "/rnc", Pragma="no-cache")
    assert origin.count("/rnc") == 3


async def test_s5_2_1_1_request_max_age_zero_goes_to_origin(origin, proxy, client) -> None:
    origin.set("/rma", headers={"Cache-Control": "max-age=60"})
    await get(client, proxy, "/rma")
    await get(client, proxy, "/rma", Cache_Control="max-age=0")
    assert origin.count("/rma") == 2


async def test_s5_2_1_7_only_if_cached(origin, proxy, client) -> None:
    origin.set("/oic", headers={"Cache-Control": "max-age=60"})
    response, _ = await get(client, proxy, "/oic", Cache_Control="only-if-cached")
    assert response.status == 504 and origin.count("/oic") == 0
    await get(client, proxy, "/oic")
    response, _ = await get(client, proxy, "/oic", Cache_Control="only-if-cached")
    assert response.status == 200 and origin.count("/oic") == 1


async def test_s5_2_2_2_must_revalidate_not_served_stale_on_error(origin, proxy, client) -> None:
    origin.set("/mr", headers={"Cache-Control": "max-age=0, must-revalidate, stale-if-error=60"})
    await get(client, proxy, "/mr")
    origin.set("/mr", status=503, body=b"down")
    response, body = await get(client, proxy, "/mr")
    assert response.status == 503 and body == b"down"


async def test_s4_4_unsafe_method_invalidates(origin, proxy, client) -> None:
    origin.set("/item", headers={"Cache-Control": "max-age=60"})
    origin.set("/other", headers={"Cache-Control": "max-age=60"})
    origin.handle(
        "/item-action",
        lambda r: _respond(201, {"Location": "/other", "Content-Location": "/item"}),
    )
    await get(client, proxy, "/item")
    await get(client, proxy, "/other")
    async with client.post(url(proxy, "/item-action"), data=b"x") as response:
        assert response.status == 201
        assert "fwd=method" in response.headers["Cache-Status"]
    await get(client, proxy, "/item")
    await get(client, proxy, "/other")
    assert origin.count("/item") == 2 and origin.count("/other") == 2


async def test_s4_4_failed_unsafe_request_does_not_invalidate(origin, proxy, client) -> None:
    origin.set("/keep", headers={"Cache-Control": "max-age=60"})
    await get(client, proxy, "/keep")
    origin.handle("/keep", _dispatch_post_error(origin))
    async with client.delete(url(proxy, "/keep")) as response:
        assert response.status == 500
    response, _ = await get(client, proxy, "/keep")
    assert "hit" in response.headers["Cache-Status"]


def _dispatch_post_error(origin: Origin):
    async def handler(request: web.Request) -> web.Response:
        if request.method == "DELETE":
            return web.Response(status=500)
        return web.Response(headers={"Cache-Control": "max-age=60"})

    return handler


async def _respond(status: int, headers: dict[str, str]) -> web.Response:
    return web.Response(status=status, headers=headers)


async def test_s4_4_unsafe_method_invalidates_all_variants(origin, proxy, client) -> None:
    origin.set("/vv", headers={"Cache-Control": "max-age=60", "Vary": "Accept"})
    await get(client, proxy, "/vv", Accept="a/a")
    await get(client, proxy, "/vv", Accept="b/b")
    async with client.put(url(proxy, "/vv"), data=b"x") as response:
        assert response.status == 200
    await get(client, proxy, "/vv", Accept="a/a")
    await get(client, proxy, "/vv", Accept="b/b")
    assert origin.count("/vv", method="GET") == 4


async def test_rfc5861_s3_stale_while_revalidate_serves_stale_and_refreshes_once(
    origin, proxy, client
) -> None:
    state = {"version": 0}

    async def resource(request: web.Request) -> web.Response:
        state["version"] += 1
        await asyncio.sleep(0.2)
        return web.Response(
            text=f"v{state['version']}",
            headers={"Cache-Control": "max-age=1, stale-while-revalidate=60", "Age": "1"},
        )

    origin.handle("/swr", resource)
    _, body = await get(client, proxy, "/swr")
    assert body == b"v1"
    long_running = len(proxy.tasks)  # event delivery, health, the warmer's loops
    results = await asyncio.gather(*(get(client, proxy, "/swr") for _ in range(5)))
    for response, body in results:
        assert body == b"v1"
        assert "stale-while-revalidate" in response.headers["Cache-Status"]
    await eventually(lambda: origin.count("/swr") == 2)
    await eventually(lambda: len(proxy.tasks) <= long_running)  # the refresh ended
    _, body = await get(client, proxy, "/swr")
    assert body == b"v2"
    assert origin.count("/swr") == 2


async def test_rfc5861_s4_stale_if_error_on_5xx_and_on_unreachable_origin(
    origin, make_proxy, client
) -> None:
    origin.set("/sie", headers={"Cache-Control": "max-age=0, stale-if-error=60", "Age": "1"})
    proxy = await make_proxy(origin.url)
    await get(client, proxy, "/sie")
    origin.set("/sie", status=503)
    response, body = await get(client, proxy, "/sie")
    assert response.status == 200 and body == b"hello"
    assert "stale-if-error" in response.headers["Cache-Status"]


async def test_stale_if_error_when_origin_is_down(make_proxy, client) -> None:
    from tests.proxy.conftest import Origin as _Origin  # noqa: F401

    state: dict[str, int] = {}

    async def resource(request: web.Request) -> web.Response:
        state["n"] = state.get("n", 0) + 1
        return web.Response(
            text="kept", headers={"Cache-Control": "max-age=0, stale-if-error=60", "Age": "1"}
        )

    app = web.Application()
    app.router.add_get("/down", resource)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    proxy = await make_proxy(f"http://127.0.0.1:{port}")
    _, body = await get(client, proxy, "/down")
    assert body == b"kept"
    await runner.cleanup()  # the origin is gone now
    response, body = await get(client, proxy, "/down")
    assert response.status == 200 and body == b"kept"
    assert "stale-if-error" in response.headers["Cache-Status"]


async def test_request_coalescing_one_origin_fetch_for_concurrent_misses(
    origin, proxy, client
) -> None:
    # The origin answers once all 19 others are waiting on the first fetch.
    origin.set(
        "/slow",
        headers={"Cache-Control": "max-age=60"},
        body=b"S",
        gate=lambda: coalesced(proxy) >= 19,
    )
    results = await asyncio.gather(*(get(client, proxy, "/slow") for _ in range(20)))
    assert all(body == b"S" for _, body in results)
    assert origin.count("/slow") == 1
    collapsed = [r for r, _ in results if "collapsed" in r.headers["Cache-Status"]]
    assert len(collapsed) == 19


async def test_uncacheable_responses_are_not_shared_between_coalesced_requests(
    origin, proxy, client
) -> None:
    async def personal(request: web.Request) -> web.Response:
        await asyncio.sleep(0.1)
        return web.Response(
            text=request.headers.get("X-User", "?"), headers={"Cache-Control": "private"}
        )

    origin.handle("/me", personal)
    results = await asyncio.gather(
        *(get(client, proxy, "/me", **{"X-User": f"u{i}"}) for i in range(5))
    )
    assert sorted(body for _, body in results) == [b"u0", b"u1", b"u2", b"u3", b"u4"]


async def test_head_is_answered_from_a_cached_get(origin, proxy, client) -> None:
    origin.set("/hd", headers={"Cache-Control": "max-age=60"}, body=b"twelve bytes")
    await get(client, proxy, "/hd")
    async with client.head(url(proxy, "/hd")) as response:
        assert response.status == 200
        assert response.headers["Content-Length"] == "12"
        assert await response.read() == b""
        assert "hit" in response.headers["Cache-Status"]
    assert origin.count("/hd") == 1


async def test_head_miss_is_forwarded_as_head(origin, proxy, client) -> None:
    origin.set("/hm", headers={"Cache-Control": "max-age=60"}, body=b"abc")
    async with client.head(url(proxy, "/hm")) as response:
        assert response.status == 200
    assert origin.count("/hm", method="HEAD") == 1


async def test_rfc9211_cache_status_on_every_response(origin, proxy, client) -> None:
    origin.set("/any", headers={"Cache-Control": "no-store"})
    for method in ("GET", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"):
        async with client.request(method, url(proxy, "/any")) as response:
            assert response.headers["Cache-Status"].startswith("warmproxy;"), method


async def test_status_codes_with_explicit_freshness_are_cached(origin, proxy, client) -> None:
    for status in (200, 203, 301, 404, 410, 500):
        origin.set(f"/st{status}", status=status, headers={"Cache-Control": "max-age=60"})
        await get(client, proxy, f"/st{status}")
        response, _ = await get(client, proxy, f"/st{status}")
        assert response.status == status
        assert origin.count(f"/st{status}") == 1, status


async def test_rfc9110_s14_ranges_are_cut_from_a_cached_complete_response(
    origin, proxy, client
) -> None:
    origin.set("/rg", headers={"Cache-Control": "max-age=60", "ETag": '"r1"'}, body=b"0123456789")
    await get(client, proxy, "/rg")
    cases = {
        "bytes=0-1": (206, b"01", "bytes 0-1/10"),
        "bytes=7-": (206, b"789", "bytes 7-9/10"),
        "bytes=-3": (206, b"789", "bytes 7-9/10"),
        "bytes=5-100": (206, b"56789", "bytes 5-9/10"),
    }
    for value, (status, body, content_range) in cases.items():
        response, got = await get(client, proxy, "/rg", Range=value)
        assert (response.status, got, response.headers["Content-Range"]) == (
            status,
            body,
            content_range,
        ), value
        assert "hit" in response.headers["Cache-Status"]
    response, _ = await get(client, proxy, "/rg", Range="bytes=20-")
    assert response.status == 416 and response.headers["Content-Range"] == "bytes */10"
    # Several ranges, or a syntax we do not cut: the whole response.
    response, body = await get(client, proxy, "/rg", Range="bytes=0-1,3-4")
    assert response.status == 200 and body == b"0123456789"
    assert origin.count("/rg") == 1


async def test_rfc9110_s13_1_5_if_range_mismatch_sends_the_whole_response(
    origin, proxy, client
) -> None:
    origin.set("/ir", headers={"Cache-Control": "max-age=60", "ETag": '"new"'}, body=b"abcdef")
    await get(client, proxy, "/ir")
    response, body = await get(client, proxy, "/ir", Range="bytes=0-1", If_Range='"old"')
    assert response.status == 200 and body == b"abcdef"
    response, body = await get(client, proxy, "/ir", Range="bytes=0-1", If_Range='"new"')
    assert response.status == 206 and body == b"ab"


async def test_range_request_on_a_miss_goes_to_the_origin_as_asked(origin, proxy, client) -> None:
    async def ranged(request: web.Request) -> web.Response:
        assert request.headers["Range"] == "bytes=0-1"
        return web.Response(status=206, body=b"01", headers={"Content-Range": "bytes 0-1/10"})

    origin.handle("/rm", ranged)
    response, body = await get(client, proxy, "/rm", Range="bytes=0-1")
    assert response.status == 206 and body == b"01"
    assert "fwd=bypass" in response.headers["Cache-Status"]


async def test_rfc9213_cdn_cache_control_governs_this_cache(origin, proxy, client) -> None:
    origin.set("/cdn", headers={"CDN-Cache-Control": "max-age=60", "Cache-Control": "no-store"})
    await get(client, proxy, "/cdn")
    response, _ = await get(client, proxy, "/cdn")
    assert "hit" in response.headers["Cache-Status"]
    assert response.headers["Cache-Control"] == "no-store"  # passed on for the browser
    origin.set("/cdn2", headers={"CDN-Cache-Control": "no-store", "Cache-Control": "max-age=60"})
    await get(client, proxy, "/cdn2")
    await get(client, proxy, "/cdn2")
    assert origin.count("/cdn") == 1 and origin.count("/cdn2") == 2


async def test_s5_3_invalid_expires_is_not_reused(origin, proxy, client) -> None:
    origin.set("/badexp", headers={"Expires": "Thu, 01 Jan 2099 00:00:00 UTC"})
    await get(client, proxy, "/badexp")
    await get(client, proxy, "/badexp")
    assert origin.count("/badexp") == 2


async def test_s5_2_2_7_qualified_private_fields_reach_the_first_client_but_are_not_stored(
    origin, proxy, client
) -> None:
    origin.set(
        "/qp",
        headers={"Cache-Control": 'max-age=60, private="X-User"', "X-User": "alice"},
    )
    first, _ = await get(client, proxy, "/qp")
    assert first.headers["X-User"] == "alice"
    second, _ = await get(client, proxy, "/qp")
    assert "hit" in second.headers["Cache-Status"]
    assert "X-User" not in second.headers


async def test_s4_3_4_revalidation_keeps_a_single_via(origin, proxy, client) -> None:
    origin.set("/via", headers={"Cache-Control": "no-cache", "ETag": '"v"'})
    await get(client, proxy, "/via")
    origin.set("/via", status=304, headers={"ETag": '"v"'})
    response, _ = await get(client, proxy, "/via")
    assert response.headers["Via"] == "1.1 warmproxy"
    response, _ = await get(client, proxy, "/via")
    assert response.headers["Via"] == "1.1 warmproxy"


async def test_coalesced_requests_share_an_origin_failure(origin, make_proxy, client) -> None:
    proxy = await make_proxy(origin.url, proxy={"read_timeout": 1.0})
    # The origin stays silent past the read timeout once all 10 requests are in.
    origin.set("/timeout", gate=lambda: coalesced(proxy) >= 9, delay=3.0)
    results = await asyncio.gather(*(get(client, proxy, "/timeout") for _ in range(10)))
    assert [r.status for r, _ in results] == [504] * 10
    assert origin.count("/timeout") == 1


async def test_s3_2_a_304_adding_set_cookie_does_not_share_the_cookie(
    origin, proxy, client
) -> None:
    calls = {"n": 0}

    async def resource(request: web.Request) -> web.Response:
        calls["n"] += 1
        if request.headers.get("If-None-Match") == '"s"':
            return web.Response(
                status=304, headers={"ETag": '"s"', "Set-Cookie": f"sid=user{calls['n']}"}
            )
        return web.Response(body=b"page", headers={"ETag": '"s"', "Cache-Control": "no-cache"})

    origin.handle("/sc", resource)
    await get(client, proxy, "/sc")
    response, body = await get(client, proxy, "/sc")
    assert body == b"page" and response.headers["Set-Cookie"] == "sid=user2"
    response, body = await get(client, proxy, "/sc")
    assert body == b"page"
    assert response.headers.get("Set-Cookie") != "sid=user2"


async def test_s3_2_a_304_making_the_response_private_drops_the_entry(
    origin, proxy, client
) -> None:
    async def resource(request: web.Request) -> web.Response:
        if request.headers.get("If-None-Match") == '"p"':
            return web.Response(status=304, headers={"Cache-Control": "private, max-age=60"})
        return web.Response(body=b"x", headers={"ETag": '"p"', "Cache-Control": "max-age=0"})

    origin.handle("/mp", resource)
    await get(client, proxy, "/mp")
    await get(client, proxy, "/mp")
    response, _ = await get(client, proxy, "/mp")
    assert "hit" not in response.headers["Cache-Status"]
    assert origin.count("/mp") == 3


async def test_s5_2_2_4_coalesced_waiters_do_not_share_a_no_cache_response(
    origin, proxy, client
) -> None:
    async def personal(request: web.Request) -> web.Response:
        await eventually(lambda: coalesced(proxy) >= 3, within=10)
        if request.headers.get("If-None-Match") == '"nc"':
            return web.Response(status=304, headers={"ETag": '"nc"'})
        return web.Response(text="full", headers={"Cache-Control": "no-cache", "ETag": '"nc"'})

    origin.handle("/ncw", personal)
    results = await asyncio.gather(*(get(client, proxy, "/ncw") for _ in range(4)))
    assert all(body == b"full" for _, body in results)
    # One full fetch; every other request was validated with the origin.
    assert origin.count("/ncw") == 4
    conditional = [s for s in origin.seen if s.headers.get("If-None-Match") == '"nc"']
    assert len(conditional) == 3


async def test_5xx_does_not_switch_coalescing_off(origin, proxy, client) -> None:
    origin.set("/flap", status=503, gate=lambda: coalesced(proxy) >= 2)
    await asyncio.gather(*(get(client, proxy, "/flap") for _ in range(3)))
    first_burst = origin.count("/flap")
    before = coalesced(proxy)
    origin.set(
        "/flap",
        headers={"Cache-Control": "max-age=60"},
        body=b"ok",
        gate=lambda: coalesced(proxy) >= before + 4,
    )
    results = await asyncio.gather(*(get(client, proxy, "/flap") for _ in range(5)))
    assert all(body == b"ok" for _, body in results)
    assert origin.count("/flap") == first_burst + 1


async def test_rfc5861_s4_waiters_fall_back_to_stale_together(origin, proxy, client) -> None:
    origin.set("/sw", headers={"Cache-Control": "max-age=0, stale-if-error=60", "Age": "1"})
    await get(client, proxy, "/sw")
    origin.set("/sw", status=503, gate=lambda: coalesced(proxy) >= 4)
    results = await asyncio.gather(*(get(client, proxy, "/sw") for _ in range(5)))
    assert all(r.status == 200 and body == b"hello" for r, body in results)
    assert origin.count("/sw") == 2


async def test_known_uncacheable_urls_are_forwarded_as_asked(origin, proxy, client) -> None:
    async def private(request: web.Request) -> web.Response:
        if request.headers.get("If-None-Match") == '"me"':
            return web.Response(status=304, headers={"ETag": '"me"'})
        return web.Response(body=b"mine", headers={"Cache-Control": "private", "ETag": '"me"'})

    origin.handle("/mine", private)
    response, body = await get(client, proxy, "/mine")
    assert body == b"mine"
    # Next time the client's own validator reaches the origin and its 304 comes back.
    response, body = await get(client, proxy, "/mine", If_None_Match='"me"')
    assert response.status == 304 and body == b""
    assert origin.last("/mine").headers["If-None-Match"] == '"me"'


async def test_s4_4_location_naming_the_host_the_client_used_is_invalidated(
    origin, proxy, client
) -> None:
    origin.set("/listing", headers={"Cache-Control": "max-age=60"})
    public = f"http://127.0.0.1:{proxy.proxy_port}"
    origin.handle("/create", lambda r: _respond(303, {"Location": f"{public}/listing"}))
    await get(client, proxy, "/listing")
    async with client.post(url(proxy, "/create"), allow_redirects=False) as response:
        assert response.status == 303
    await get(client, proxy, "/listing")
    assert origin.count("/listing") == 2


async def test_a_requests_own_no_store_does_not_evict_the_shared_entry(
    origin, proxy, client
) -> None:
    async def resource(request: web.Request) -> web.Response:
        if request.headers.get("If-None-Match") == '"k"':
            return web.Response(status=304, headers={"ETag": '"k"'})
        return web.Response(body=b"kept", headers={"ETag": '"k"', "Cache-Control": "max-age=60"})

    origin.handle("/keep304", resource)
    await get(client, proxy, "/keep304")
    response, body = await get(client, proxy, "/keep304", Cache_Control="no-cache, no-store")
    assert body == b"kept"
    response, _ = await get(client, proxy, "/keep304")
    assert "hit" in response.headers["Cache-Status"]


async def test_one_private_answer_does_not_stop_caching_the_public_one(
    origin, proxy, client
) -> None:
    async def page(request: web.Request) -> web.Response:
        if "session" in request.headers.get("Cookie", ""):
            return web.Response(text="yours", headers={"Cache-Control": "private"})
        return web.Response(text="everyone's", headers={"Cache-Control": "public, max-age=60"})

    origin.handle("/home", page)
    await get(client, proxy, "/home", Cookie="session=1")
    for _ in range(5):
        _, body = await get(client, proxy, "/home")
        assert body == b"everyone's"
    assert origin.count("/home") == 2
