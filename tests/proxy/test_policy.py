"""The RFC 9111 rules as pure functions, one test per rule, named after its section."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from proxy import policy
from proxy.policy import CachePolicyConfig

CONFIG = CachePolicyConfig()
NOW = 1_700_000_000.0


def hdrs(**fields: str) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict({k.replace("_", "-"): v for k, v in fields.items()}))


def entry(headers: list[tuple[str, str]], *, status: int = 200, request=None, **times: float):
    return policy.build_entry(
        url="/x",
        status=status,
        headers=headers,
        body=b"body",
        request_headers=request or hdrs(),
        request_time=times.get("request_time", NOW),
        response_time=times.get("response_time", NOW),
        fetch_seconds=0.01,
        config=CONFIG,
    )


def storable(headers, *, status=200, method="GET", request_cc=None, auth=False, config=CONFIG):
    return policy.storability(
        method=method,
        status=status,
        request_cc=request_cc or {},
        request_has_authorization=auth,
        response_headers=headers,
        config=config,
    ).storable


DATE = [("Date", policy.format_http_date(NOW))]


# --- §5.2 parsing -------------------------------------------------------------


def test_s5_2_directives_are_case_insensitive_and_unquoted() -> None:
    cc = policy.parse_cache_control(['Max-Age="60", PUBLIC', "s-maxage=10"])
    assert cc == {"max-age": "60", "public": None, "s-maxage": "10"}


def test_s4_2_1_first_of_duplicate_directives_wins() -> None:
    assert policy.parse_cache_control(["max-age=5, max-age=100"])["max-age"] == "5"


def test_s5_2_qualified_private_field_list_in_quotes() -> None:
    cc = policy.parse_cache_control(['private="Set-Cookie, X-Secret", max-age=5'])
    assert policy.parse_field_names(cc["private"]) == ["set-cookie", "x-secret"]
    assert cc["max-age"] == "5"


def test_s1_2_2_delta_seconds_overflow_is_capped_and_invalid_is_none() -> None:
    assert policy.delta_seconds("99999999999999999999") == policy.MAX_DELTA_SECONDS
    assert policy.delta_seconds("-1") is None
    assert policy.delta_seconds("1.5") is None
    assert policy.delta_seconds("") is None


@given(st.text(max_size=80))
def test_parser_never_raises_on_any_input(value: str) -> None:
    parsed = policy.parse_cache_control([value])
    assert all(name == name.lower() for name in parsed)


@given(st.integers(min_value=0, max_value=10**12))
def test_max_age_round_trips(seconds: int) -> None:
    cc = policy.parse_cache_control([f"public, max-age={seconds}"])
    assert policy.delta_seconds(cc["max-age"]) == min(seconds, policy.MAX_DELTA_SECONDS)


# --- §3 storing ---------------------------------------------------------------


def test_s3_only_get_is_stored() -> None:
    assert storable([("Cache-Control", "max-age=60")])
    assert not storable([("Cache-Control", "max-age=60")], method="POST")


def test_s3_no_store_response_and_request() -> None:
    assert not storable([("Cache-Control", "max-age=60, no-store")])
    assert not storable([("Cache-Control", "max-age=60")], request_cc={"no-store": None})


def test_s5_2_2_3_must_understand_overrides_no_store_for_known_status() -> None:
    assert storable([("Cache-Control", "max-age=60, no-store, must-understand")])


def test_s5_2_2_7_private_is_not_stored_by_a_shared_cache() -> None:
    assert not storable([("Cache-Control", "private, max-age=60")])
    # Qualified private only strips the named fields.
    assert storable([("Cache-Control", 'private="X-Secret", max-age=60')])
    e = entry([*DATE, ("Cache-Control", 'private="X-Secret", max-age=60'), ("X-Secret", "1")])
    assert all(k.lower() != "x-secret" for k, _ in e.headers)


def test_s3_5_authorization_needs_explicit_permission() -> None:
    assert not storable([("Cache-Control", "max-age=60")], auth=True)
    for allowed in ("public", "s-maxage=60", "must-revalidate, max-age=60"):
        assert storable([("Cache-Control", allowed)], auth=True)


def test_set_cookie_not_stored_unless_configured() -> None:
    headers = [("Cache-Control", "max-age=60"), ("Set-Cookie", "a=b")]
    assert not storable(headers)
    assert storable(headers, config=CachePolicyConfig(store_set_cookie=True))


def test_s3_status_codes_need_explicit_freshness_unless_heuristically_cacheable() -> None:
    assert storable([("Last-Modified", "Mon, 01 Jan 2024 00:00:00 GMT")], status=404)
    assert not storable([], status=302)
    assert storable([("Cache-Control", "max-age=60")], status=302)
    assert storable([("Cache-Control", "max-age=60")], status=500)
    assert not storable([("Cache-Control", "max-age=60")], status=206)


def test_s4_1_vary_star_is_never_stored() -> None:
    assert not storable([("Cache-Control", "max-age=60"), ("Vary", "Accept, *")])


def test_s3_1_hop_by_hop_and_connection_named_fields_are_not_stored() -> None:
    e = entry(
        [
            *DATE,
            ("Cache-Control", "max-age=60"),
            ("Connection", "X-Hop"),
            ("X-Hop", "1"),
            ("Keep-Alive", "timeout=5"),
            ("X-End", "2"),
            ("Age", "3"),
        ]
    )
    names = {k.lower() for k, _ in e.headers}
    assert "x-hop" not in names and "keep-alive" not in names and "age" not in names
    assert "x-end" in names
    assert ("Via", "1.1 warmproxy") in e.headers


# --- §4.2 freshness -----------------------------------------------------------


def test_s4_2_1_s_maxage_beats_max_age_beats_expires() -> None:
    expires = ("Expires", policy.format_http_date(NOW + 1000))
    assert entry([*DATE, ("Cache-Control", "max-age=10, s-maxage=20"), expires]).fresh_until == (
        NOW + 20
    )
    assert entry([*DATE, ("Cache-Control", "max-age=10"), expires]).fresh_until == NOW + 10
    assert entry([*DATE, expires]).fresh_until == NOW + 1000


def test_s5_3_invalid_expires_means_already_expired() -> None:
    e = entry([*DATE, ("Expires", "0"), ("ETag", '"a"')])
    assert e.fresh_until == NOW


def test_s4_2_2_heuristic_freshness_only_from_last_modified() -> None:
    lm = ("Last-Modified", policy.format_http_date(NOW - 1000))
    assert entry([*DATE, lm]).fresh_until == NOW + 100  # 10 % of 1000 s
    assert entry([*DATE, ("ETag", '"a"')]).fresh_until == NOW


def test_s4_2_2_heuristic_is_capped() -> None:
    lm = ("Last-Modified", policy.format_http_date(NOW - 10 * 365 * 86400))
    assert entry([*DATE, lm]).fresh_until == NOW + CONFIG.heuristic_max_seconds


def test_s4_2_3_age_accounts_for_age_header_and_transit() -> None:
    e = entry(
        [*DATE, ("Cache-Control", "max-age=100"), ("Age", "30")],
        request_time=NOW - 2,
        response_time=NOW,
    )
    assert policy.age_of(e, NOW) == 32
    assert e.fresh_until == NOW - 32 + 100


def test_s4_2_3_apparent_age_from_an_old_date() -> None:
    old_date = [("Date", policy.format_http_date(NOW - 50))]
    e = entry([*old_date, ("Cache-Control", "max-age=100")])
    assert policy.age_of(e, NOW) == 50


def test_s5_1_invalid_age_is_ignored_and_lists_use_first_member() -> None:
    assert policy.parse_age(["abc"]) == 0
    assert policy.parse_age(["10, 20"]) == 10
    assert policy.parse_age(["-5"]) == 0


def test_s4_2_1_invalid_max_age_is_stale() -> None:
    assert entry([*DATE, ("Cache-Control", "max-age=abc"), ("ETag", '"x"')]).fresh_until == NOW


# --- §5.2.1 request directives --------------------------------------------------


def test_s5_2_1_request_max_age_min_fresh_max_stale() -> None:
    e = entry([*DATE, ("Cache-Control", "max-age=100")])
    at = NOW + 50
    assert policy.fresh_enough(e, at, {})
    assert not policy.fresh_enough(e, at, {"max-age": "10"})
    assert not policy.fresh_enough(e, at, {"min-fresh": "60"})
    assert not policy.fresh_enough(e, NOW + 150, {})
    assert policy.fresh_enough(e, NOW + 150, {"max-stale": "60"})
    assert policy.fresh_enough(e, NOW + 150, {"max-stale": None})
    assert not policy.fresh_enough(e, NOW + 150, {"max-stale": "10"})


def test_s5_2_2_2_must_revalidate_forbids_max_stale() -> None:
    e = entry([*DATE, ("Cache-Control", "max-age=100, must-revalidate")])
    assert not policy.fresh_enough(e, NOW + 150, {"max-stale": None})


def test_s5_4_pragma_no_cache_only_without_cache_control() -> None:
    assert "no-cache" in policy.request_directives([], ["no-cache"])
    assert "no-cache" not in policy.request_directives(["max-age=5"], ["no-cache"])


def test_s5_2_2_4_no_cache_response_always_revalidates() -> None:
    e = entry([*DATE, ("Cache-Control", "max-age=100, no-cache"), ("ETag", '"a"')])
    assert not policy.fresh_enough(e, NOW + 1, {})


# --- RFC 5861 -------------------------------------------------------------------


def test_rfc5861_s3_stale_while_revalidate_window() -> None:
    e = entry([*DATE, ("Cache-Control", "max-age=10, stale-while-revalidate=20")])
    assert not policy.may_serve_stale_while_revalidating(e, NOW + 5, {})
    assert policy.may_serve_stale_while_revalidating(e, NOW + 15, {})
    assert not policy.may_serve_stale_while_revalidating(e, NOW + 31, {})
    assert e.expires_at == NOW + 30


def test_rfc5861_s4_stale_if_error_window_and_must_revalidate() -> None:
    e = entry([*DATE, ("Cache-Control", "max-age=10, stale-if-error=60")])
    assert policy.may_serve_stale_on_error(e, NOW + 50, {})
    assert not policy.may_serve_stale_on_error(e, NOW + 80, {})
    strict = entry([*DATE, ("Cache-Control", "max-age=10, stale-if-error=60, must-revalidate")])
    assert not policy.may_serve_stale_on_error(strict, NOW + 50, {})


# --- §4.1 Vary ------------------------------------------------------------------


def test_s4_1_vary_matches_only_same_values() -> None:
    e = entry(
        [*DATE, ("Cache-Control", "max-age=60"), ("Vary", "Accept-Language")],
        request=hdrs(Accept_Language="en"),
    )
    assert e.vary == ("accept-language",)
    assert policy.vary_matches(e, hdrs(Accept_Language="en"))
    assert not policy.vary_matches(e, hdrs(Accept_Language="de"))
    assert not policy.vary_matches(e, hdrs())


def test_s4_1_vary_normalizes_whitespace() -> None:
    e = entry(
        [*DATE, ("Cache-Control", "max-age=60"), ("Vary", "Accept")],
        request=hdrs(Accept="a/b,  c/d"),
    )
    assert policy.vary_matches(e, hdrs(Accept="a/b, c/d"))


# --- §4.3 validation -------------------------------------------------------------


def test_s4_3_2_if_none_match_weak_comparison_and_star() -> None:
    e = entry([*DATE, ("Cache-Control", "max-age=60"), ("ETag", 'W/"v1"')])
    assert policy.client_condition_met(e, '"v1"', None)
    assert policy.client_condition_met(e, '"v0", W/"v1"', None)
    assert policy.client_condition_met(e, "*", None)
    assert not policy.client_condition_met(e, '"v2"', None)


def test_s4_3_2_if_modified_since() -> None:
    lm = policy.format_http_date(NOW - 100)
    e = entry([*DATE, ("Cache-Control", "max-age=60"), ("Last-Modified", lm)])
    assert policy.client_condition_met(e, None, policy.format_http_date(NOW - 50))
    assert not policy.client_condition_met(e, None, policy.format_http_date(NOW - 200))
    assert not policy.client_condition_met(e, None, "garbage")


def test_rfc9110_s13_2_2_if_none_match_takes_precedence() -> None:
    lm = policy.format_http_date(NOW - 100)
    e = entry([*DATE, ("ETag", '"a"'), ("Last-Modified", lm), ("Cache-Control", "max-age=9")])
    assert not policy.client_condition_met(e, '"b"', policy.format_http_date(NOW))


def test_s3_2_304_updates_headers_but_not_content_length() -> None:
    stored = [("Content-Type", "text/plain"), ("X-A", "old"), ("Cache-Control", "max-age=1")]
    merged = policy.merge_not_modified(
        stored, [("X-A", "new"), ("Cache-Control", "max-age=99"), ("Content-Length", "0")]
    )
    assert ("X-A", "new") in merged and ("X-A", "old") not in merged
    assert ("Cache-Control", "max-age=99") in merged
    assert all(k != "Content-Length" for k, _ in merged)


def test_s4_3_4_strong_etag_mismatch_does_not_select() -> None:
    e = entry([*DATE, ("ETag", '"a"'), ("Cache-Control", "max-age=1")])
    assert policy.not_modified_selects(e, [("ETag", '"a"')])
    assert not policy.not_modified_selects(e, [("ETag", '"b"')])
    assert policy.not_modified_selects(e, [])


# --- §4.4 invalidation --------------------------------------------------------------


def test_s4_4_invalidation_targets() -> None:
    paths = policy.invalidated_paths(
        request_path="/a",
        status=201,
        response_headers=[
            ("Location", "http://origin:9000/b?x=1"),
            ("Content-Location", "https://SHOP.example/c"),
        ],
        authorities=("shop.example", "origin:9000"),
    )
    assert paths == ["/a", "/b?x=1", "/c"]


def test_s4_4_other_hosts_and_errors_are_not_invalidated() -> None:
    assert policy.invalidated_paths(
        request_path="/a",
        status=200,
        response_headers=[("Location", "http://evil.example/b")],
        authorities=("shop.example", "origin:9000"),
    ) == ["/a"]
    assert (
        policy.invalidated_paths(
            request_path="/a", status=500, response_headers=[], authorities=("origin:9000",)
        )
        == []
    )


# --- RFC 9211 --------------------------------------------------------------------------


def test_rfc9211_cache_status_members() -> None:
    assert policy.cache_status(hit=True, ttl=12.7) == "warmproxy; hit; ttl=12"
    assert (
        policy.cache_status(fwd="uri-miss", fwd_status=200, stored=True)
        == "warmproxy; fwd=uri-miss; fwd-status=200; stored"
    )
    assert policy.cache_status(fwd="stale", detail="stale-if-error").endswith(
        'detail="stale-if-error"'
    )


# --- RFC 9110 §5.6.7 HTTP-date ----------------------------------------------------------


def test_rfc9110_s5_6_7_the_three_date_formats_are_accepted() -> None:
    expected = 784111777.0
    assert policy.parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT") == expected
    assert policy.parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT") == expected
    assert policy.parse_http_date("Sun Nov  6 08:49:37 1994") == expected


def test_rfc9110_s5_6_7_other_date_forms_are_invalid() -> None:
    for value in (
        "Sun, 06 Nov 1994 8:49:37 GMT",  # one-digit hour
        "Sun, 06 Nov 94 08:49:37 GMT",  # two-digit year in IMF-fixdate
        "Sun, 06 Nov 1994 08:49:37 UTC",
        "Sun, 06 Nov 1994 08:49:37 AEST",
        "Sun 06 Nov 1994 08:49:37 GMT",  # no comma
        "Sun, 06-Nov-1994 08:49:37 GMT",  # dashes
        "Sun, 06 Nov 1994 08.49.37 GMT",
        "Sun,  06 Nov 1994 08:49:37 GMT",
        "0",
        "",
    ):
        assert policy.parse_http_date(value) is None, value


def test_s4_2_1_several_expires_lines_mean_stale() -> None:
    future = policy.format_http_date(NOW + 1000)
    assert entry([*DATE, ("Expires", future), ("Expires", future)]).fresh_until == NOW


def test_s5_2_2_3_must_understand_with_an_unknown_status_is_not_stored() -> None:
    assert not storable([("Cache-Control", "max-age=60, no-store, must-understand")], status=599)
    assert storable([("Cache-Control", "max-age=60")], status=599)


# --- RFC 9213 targeted cache control ------------------------------------------------------


def test_rfc9213_targeted_field_replaces_cache_control_and_expires() -> None:
    expires = ("Expires", policy.format_http_date(NOW + 1000))
    e = entry([*DATE, ("CDN-Cache-Control", "max-age=5"), ("Cache-Control", "max-age=600")])
    assert e.fresh_until == NOW + 5
    e = entry([*DATE, ("CDN-Cache-Control", "max-age=0"), expires, ("ETag", '"a"')])
    assert e.fresh_until == NOW
    assert storable([("CDN-Cache-Control", "max-age=60"), ("Cache-Control", "no-store")])
    assert not storable([("CDN-Cache-Control", "no-store"), ("Cache-Control", "max-age=60")])
    assert not storable([("CDN-Cache-Control", "private"), ("Cache-Control", "max-age=60")])


def test_rfc9213_invalid_targeted_field_is_ignored() -> None:
    e = entry([*DATE, ("CDN-Cache-Control", "max-age=5 garbage"), ("Cache-Control", "max-age=60")])
    assert e.fresh_until == NOW + 60


def test_rfc9213_targeting_can_be_switched_off() -> None:
    off = CachePolicyConfig(targeted_fields=())
    assert not storable(
        [("CDN-Cache-Control", "max-age=60"), ("Cache-Control", "no-store")], config=off
    )


def test_rfc9213_a_string_where_an_integer_belongs_invalidates_the_field() -> None:
    assert not storable([("CDN-Cache-Control", 'max-age="10000"'), ("Cache-Control", "no-store")])


def test_rfc9110_s5_6_7_case_of_names_is_forgiven() -> None:
    assert policy.parse_http_date("sun, 06 NOV 1994 08:49:37 gmt") == 784111777.0


def test_s4_3_2_if_modified_since_uses_date_without_last_modified() -> None:
    e = entry([*DATE, ("Cache-Control", "max-age=60")])
    assert policy.client_condition_met(e, None, policy.format_http_date(NOW + 10))
    assert not policy.client_condition_met(e, None, policy.format_http_date(NOW - 10))


@given(
    st.integers(min_value=0, max_value=5000), st.text(alphabet="bytes=-0123456789, ", max_size=20)
)
def test_byte_range_parser_stays_within_the_representation(length: int, value: str) -> None:
    span = policy.parse_byte_range(value, length)
    if span is not None and span != policy.UNSATISFIABLE:
        first, last = span
        assert 0 <= first <= last < length


@given(st.integers(min_value=1, max_value=5000), st.data())
def test_byte_range_parser_matches_python_slicing(length: int, data: st.DataObject) -> None:
    first = data.draw(st.integers(min_value=0, max_value=length - 1))
    last = data.draw(st.integers(min_value=first, max_value=length + 10))
    body = bytes(range(256)) * (length // 256 + 1)
    body = body[:length]
    span = policy.parse_byte_range(f"bytes={first}-{last}", length)
    assert span is not None and span != policy.UNSATISFIABLE
    assert body[span[0] : span[1] + 1] == body[first : last + 1]
    suffix = data.draw(st.integers(min_value=1, max_value=length + 10))
    span = policy.parse_byte_range(f"bytes=-{suffix}", length)
    assert span is not None and span != policy.UNSATISFIABLE
    assert body[span[0] : span[1] + 1] == body[-suffix:]


@given(st.integers(min_value=0, max_value=4_000_000_000))
def test_http_date_round_trips(ts: int) -> None:
    assert policy.parse_http_date(policy.format_http_date(ts)) == float(ts)


def test_s4_1_accept_language_and_encoding_normalized_by_case_and_order() -> None:
    e = entry(
        [*DATE, ("Cache-Control", "max-age=60"), ("Vary", "Accept-Language, Accept-Encoding")],
        request=hdrs(Accept_Language="en-US, de;q=0.5", Accept_Encoding="gzip, br"),
    )
    assert policy.vary_matches(
        e, hdrs(Accept_Language="de; q=0.5,EN-us", Accept_Encoding="br,gzip")
    )
    assert not policy.vary_matches(e, hdrs(Accept_Language="de", Accept_Encoding="br,gzip"))
    # Other fields keep their order and case.
    e = entry(
        [*DATE, ("Cache-Control", "max-age=60"), ("Vary", "X-Flavour")],
        request=hdrs(X_Flavour="a, B"),
    )
    assert not policy.vary_matches(e, hdrs(X_Flavour="B, a"))


FIELD_NAMES = ["Cache-Control", "cache-control", "Date", "Expires", "Age", "ETag", "Vary"]
FIELD_NAMES += ["vary", "Last-Modified", "Set-Cookie", "Connection", "Keep-Alive", "Via", "X-A"]
FIELD_VALUES = ["public, max-age=60", 'private="X-A"', "no-store", 'no-cache="set-cookie"']
FIELD_VALUES += ["s-maxage=5, stale-while-revalidate=9", "max-age=x", "Accept-Language", "*"]
FIELD_VALUES += ["Tue, 14 Nov 2023 22:13:20 GMT", "Tue, 14 Nov 2023 21:13:20 GMT", '"a"', "7"]
FIELD_VALUES += ["X-A, keep-alive", "1.0 other", "0", ""]
RESPONSE_FIELD_LISTS = st.lists(
    st.tuples(st.sampled_from(FIELD_NAMES), st.sampled_from(FIELD_VALUES)), max_size=8
)


@given(RESPONSE_FIELD_LISTS, st.booleans())
def test_indexed_fields_decide_as_the_header_list_does(
    headers: list[tuple[str, str]], as_multidict: bool
) -> None:
    # A fill parses the response once (ResponseFields, directives) and hands
    # that to every decision: the outcome must be the one the list gives.
    source = CIMultiDictProxy(CIMultiDict(headers)) if as_multidict else headers
    fields = policy.response_fields(source)
    directives = policy.response_directives(fields, CONFIG)
    assert fields.headers == headers
    assert directives == policy.response_directives(headers, CONFIG)
    kwargs = {"method": "GET", "status": 200, "request_cc": {}, "request_has_authorization": False}
    assert policy.storability(
        response_headers=fields, directives=directives, config=CONFIG, **kwargs
    ) == policy.storability(response_headers=headers, config=CONFIG, **kwargs)
    built = policy.build_entry(
        url="/x",
        status=200,
        headers=fields,
        directives=directives,
        body=b"body",
        request_headers=hdrs(accept_language="en"),
        request_time=NOW,
        response_time=NOW,
        fetch_seconds=0.01,
        config=CONFIG,
    )
    assert built == entry(headers, request=hdrs(accept_language="en"))
    assert policy.relayed_headers(fields, response_time=NOW, via="1.1 w") == (
        policy.relayed_headers(headers, response_time=NOW, via="1.1 w")
    )


def test_response_fields_index_is_case_insensitive_and_ordered() -> None:
    fields = policy.response_fields([("Vary", "a"), ("X-B", "1"), ("vary", "b")])
    assert list(fields.values("vary")) == ["a", "b"]
    assert fields.value("vary") == "a, b"
    assert fields.value("etag") is None
    assert fields.names == ["vary", "x-b", "vary"]


def test_s5_2_cache_control_parsing_is_the_same_with_and_without_quotes() -> None:
    # Unquoted values take a fast path; quoted ones the full scanner.
    assert policy.parse_cache_control([" Max-Age = 5 ,, public,no-cache=, =x"]) == {
        "max-age": "5",
        "public": None,
        "no-cache": "",
    }
    assert policy.parse_cache_control(['private="a, b", max-age=5']) == {
        "private": "a, b",
        "max-age": "5",
    }
    # A parsed value reused from the memo is a copy the caller may change.
    first = policy.response_directives([("Cache-Control", "max-age=5")], CONFIG).cc
    first["max-age"] = "0"
    assert policy.response_directives([("Cache-Control", "max-age=5")], CONFIG).cc == {
        "max-age": "5"
    }


# --- Accept-Encoding matched by content-coding (RFC 9110 §12.5.3) -------------


@pytest.mark.parametrize(
    ("coding", "accept_encoding", "acceptable"),
    [
        ("gzip", "br,deflate,gzip,zstd", True),  # Chrome and Firefox
        ("gzip", "br,deflate,gzip", True),  # Safari
        ("br", "deflate,gzip", False),
        ("gzip", "gzip;q=0", False),
        ("gzip", "*", True),
        ("gzip", "*;q=0,identity", False),
        ("", "br,gzip", True),  # identity is acceptable unless refused
        ("", "gzip,identity;q=0", False),
        ("", "*;q=0", False),
        ("", None, True),  # no Accept-Encoding: identity only
        ("gzip", None, False),
        ("gzip", "gzip;q=bad", False),
    ],
)
def test_a_content_coding_is_acceptable_as_accept_encoding_says(
    coding: str, accept_encoding: str | None, acceptable: bool
) -> None:
    assert policy.coding_acceptable(coding, accept_encoding) is acceptable


def test_a_variant_serves_by_coding_only_when_every_other_vary_field_matches() -> None:
    entry = policy.build_entry(
        url="/p",
        status=200,
        headers=[
            ("Cache-Control", "max-age=60"),
            ("Vary", "Accept-Encoding, Accept-Language"),
            ("Content-Encoding", "gzip"),
        ],
        body=b"x",
        request_headers=CIMultiDictProxy(
            CIMultiDict({"Accept-Encoding": "gzip, deflate, br", "Accept-Language": "en"})
        ),
        request_time=0.0,
        response_time=0.0,
        fetch_seconds=0.0,
        config=policy.CachePolicyConfig(),
    )
    assert entry.vary == ("accept-encoding", "accept-language")
    assert policy.serves_by_coding(entry, ("br,deflate,gzip,zstd", "en"), 0)
    assert not policy.serves_by_coding(entry, ("br,deflate,gzip,zstd", "fr"), 0)
    assert not policy.serves_by_coding(entry, (None, "en"), 0)
