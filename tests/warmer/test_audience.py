"""The audience: which hosts and variants of a key warm fetches are made for."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from proxy.policy import request_vary_values
from tests.warmer.events import Ev
from warmer.audience import BROWSER_DEFAULTS, VARIANTS_KEPT, Audience, AudienceConfig
from warmer.model import WarmRequest

AE = ("accept-encoding",)
AE_AL = ("accept-encoding", "accept-language")
CHROME = ("br,deflate,gzip,zstd", "en,en-us;q=0.9")
SAFARI = ("br,deflate,gzip", "en-gb,en;q=0.9")


def answered_coding(names: tuple[str, ...], values: tuple[str | None, ...]) -> str:
    """The coding an origin preferring br, then gzip, answers these values with."""
    if "accept-encoding" not in names:
        return ""
    members = {m.split(";")[0] for m in (values[names.index("accept-encoding")] or "").split(",")}
    return "br" if "br" in members else "gzip" if "gzip" in members else ""


def varied(key: str, names: tuple[str, ...], values: tuple[str | None, ...], **kw: object) -> Ev:
    kw.setdefault("coding", answered_coding(names, values))
    return Ev(ts=0.0, key=key, outcome="hit", vary=names, vary_values=values, **kw)  # type: ignore[arg-type]


def test_before_any_traffic_a_warm_fetch_asks_like_a_browser() -> None:
    audience = Audience()
    (request,) = audience.expand([WarmRequest(url="/a")])
    assert request.headers == BROWSER_DEFAULTS == (("accept-encoding", "br,deflate,gzip"),)
    assert request.host == ""


def test_a_key_is_warmed_in_the_variants_its_clients_use() -> None:
    audience = Audience()
    for _ in range(6):
        audience.observe(varied("/a", AE_AL, CHROME))
    for _ in range(3):
        audience.observe(varied("/a", AE_AL, SAFARI))
    audience.observe(varied("/a", AE_AL, (None, "fr")))  # 10 %: kept
    warmed = [r.headers for r in audience.expand([WarmRequest(url="/a")])]
    assert warmed == [
        # Most used first; q-valued lists by preference again (an origin may
        # take the first language as the preferred one).
        (("accept-encoding", "br,deflate,gzip,zstd"), ("accept-language", "en,en-us;q=0.9")),
        (("accept-encoding", "br,deflate,gzip"), ("accept-language", "en-gb,en;q=0.9")),
        (("accept-language", "fr"),),  # Accept-Encoding was absent: not sent
    ]


def test_variants_below_the_share_or_beyond_the_limit_are_not_warmed() -> None:
    audience = Audience(AudienceConfig(variant_min_share=0.2, max_variants=1))
    for _ in range(8):
        audience.observe(varied("/a", AE, ("gzip",)))
    audience.observe(varied("/a", AE, ("br",)))
    audience.observe(varied("/a", AE, ("br",)))
    assert [r.headers for r in audience.expand([WarmRequest(url="/a")])] == [
        (("accept-encoding", "gzip"),)
    ]


def test_spellings_answered_in_one_coding_are_warmed_as_one_entry() -> None:
    """Chrome, Firefox and Safari spell Accept-Encoding differently, but an
    origin answers all three with gzip; a cache matching by coding serves all
    three from one entry, so one warm fetch keeps them warm, not three."""
    audience = Audience()
    for value in ("deflate,gzip,zstd", "deflate,gzip", "gzip") * 4:
        audience.observe(varied("/a", AE, (value,), coding="gzip"))
    for _ in range(4):
        audience.observe(varied("/a", AE, (None,), coding=""))  # curl: identity
    warmed = [r.headers for r in audience.expand([WarmRequest(url="/a")])]
    # One per coding: the latest spelling seen for gzip, and no header for identity.
    assert warmed == [(("accept-encoding", "gzip"),), ()]


def test_matching_by_exact_value_warms_each_spelling() -> None:
    """With ``cache.vary_accept_encoding = "exact"`` each spelling is its own entry."""
    audience = Audience(AudienceConfig(match_coding=False))
    for value in ("deflate,gzip,zstd", "deflate,gzip", "gzip") * 4:
        audience.observe(varied("/a", AE, (value,), coding="gzip"))
    assert len(audience.expand([WarmRequest(url="/a")])) == 3


def test_one_coding_class_keeps_other_vary_fields_apart() -> None:
    audience = Audience()
    for _ in range(3):
        audience.observe(varied("/a", AE_AL, ("deflate,gzip", "fr"), coding="gzip"))
        audience.observe(varied("/a", AE_AL, ("gzip", "de"), coding="gzip"))
    warmed = {r.headers for r in audience.expand([WarmRequest(url="/a")])}
    assert warmed == {
        (("accept-encoding", "deflate,gzip"), ("accept-language", "fr")),
        (("accept-encoding", "gzip"), ("accept-language", "de")),
    }


def test_a_variant_that_needs_a_cookie_or_credentials_is_never_warmed() -> None:
    audience = Audience()
    for _ in range(5):
        audience.observe(varied("/me", ("cookie",), ("session=s3cret",)))
    audience.observe(varied("/me", ("cookie",), (None,)))
    warmed = audience.expand([WarmRequest(url="/me")])
    assert [r.headers for r in warmed] == [()]  # the cookie-less variant only
    for _ in range(5):
        audience.observe(varied("/auth", ("authorization",), ("Bearer t",)))
    # No variant of /auth can be warmed: it falls back to the defaults, which
    # never carry credentials either.
    assert all(
        name not in ("cookie", "authorization")
        for r in audience.expand([WarmRequest(url="/auth")])
        for name, _ in r.headers
    )


def test_a_key_never_seen_takes_what_most_requests_send_across_keys() -> None:
    audience = Audience()
    for i in range(10):
        audience.observe(varied(f"/p{i}", AE, ("gzip",)))
    audience.observe(varied("/q", AE, ("br,gzip",)))
    (request,) = audience.expand([WarmRequest(url="/never-seen")])
    assert request.headers == (("accept-encoding", "gzip"),)


def test_when_most_clients_send_no_accept_encoding_none_is_sent() -> None:
    audience = Audience()
    for i in range(10):
        audience.observe(varied(f"/p{i}", AE, (None,)))  # curl-like clients
    (request,) = audience.expand([WarmRequest(url="/new")])
    assert request.headers == ()


def test_what_the_request_names_is_kept() -> None:
    audience = Audience(AudienceConfig(per_host=True))
    given_headers = (("accept-encoding", "gzip"),)
    request = WarmRequest(url="/a", host="shop.example", headers=given_headers)
    assert audience.expand([request]) == [request]


def test_single_host_keying_warms_for_the_default_host() -> None:
    audience = Audience()
    for _ in range(20):
        audience.observe(Ev(ts=0.0, key="/a", host="evil.example", client="c1"))
    assert {r.host for r in audience.expand([WarmRequest(url="/a")])} == {""}


def test_per_host_keying_warms_the_hosts_distinct_clients_use() -> None:
    audience = Audience(
        AudienceConfig(per_host=True, host_min_share=0.2),
        key_of=lambda url, host: f"//{host}{url}",
    )
    for client in range(8):
        audience.observe(Ev(ts=0.0, key="//shop/a", url="/a", host="shop", client=f"c{client}"))
    for client in range(3):
        audience.observe(Ev(ts=0.0, key="//m.shop/a", url="/a", host="m.shop", client=f"m{client}"))
    hosts = [r.host for r in audience.expand([WarmRequest(url="/a")])]
    assert hosts == ["shop", "m.shop"]


def test_a_host_flood_from_one_client_does_not_move_warm_fetches() -> None:
    """2,000 requests with a made-up Host from one client against 200 real ones
    from 20 clients: warm fetches stay on the real clients' host."""
    audience = Audience(AudienceConfig(per_host=True), key_of=lambda url, host: f"//{host}{url}")
    for i in range(200):
        audience.observe(Ev(ts=0.0, key="//shop/a", url="/a", host="shop", client=f"c{i % 20}"))
    for i in range(2000):
        audience.observe(
            Ev(ts=0.0, key="//evil/a", url="/a", host="evil.example", client="attacker")
        )
        audience.observe(
            Ev(ts=0.0, key=f"//x{i}/b", url="/b", host=f"x{i}.example", client="attacker")
        )
    assert [r.host for r in audience.expand([WarmRequest(url="/a")])] == ["shop"]
    # A path never seen: the host most distinct clients use.
    assert [r.host for r in audience.expand([WarmRequest(url="/new")])] == ["shop"]


def test_per_host_variants_are_those_of_that_hosts_key() -> None:
    audience = Audience(AudienceConfig(per_host=True), key_of=lambda url, host: f"//{host}{url}")
    for c in range(5):
        audience.observe(
            Ev(
                ts=0.0,
                key="//shop/a",
                url="/a",
                host="shop",
                client=f"c{c}",
                vary=AE,
                vary_values=("gzip",),
            )
        )
    (request,) = audience.expand([WarmRequest(url="/a")])
    assert (request.host, request.headers) == ("shop", (("accept-encoding", "gzip"),))


def test_memory_is_bounded() -> None:
    audience = Audience(AudienceConfig(max_keys=100, match_coding=False))
    for i in range(1000):
        for v in range(VARIANTS_KEPT * 2):
            audience.observe(varied(f"/k{i}", AE, (f"v{v}",)))
    assert len(audience._variants) == 100
    assert all(len(c.counts) <= VARIANTS_KEPT for c in audience._variants.values())
    assert audience._exemplars.keys() == audience._variants.keys()
    assert all(
        audience._exemplars[k].keys() == c.counts.keys() for k, c in audience._variants.items()
    )


@given(
    st.lists(st.sampled_from(["gzip", "br", "deflate", "zstd", "identity;q=0", "*;q=0.1"]))
    .map(lambda members: ", ".join(members))
    .filter(bool),
    st.lists(st.sampled_from(["en", "en-US;q=0.9", "fr;q=0.5", "de;q=0.7", "pt-BR"]))
    .map(lambda members: ",".join(members))
    .filter(bool),
)
def test_the_headers_sent_select_the_variant_they_were_counted_from(ae: str, al: str) -> None:
    """What a warm fetch sends normalizes, in the cache's Vary index, to the
    values of the variant the audience counted: the stored variant is the one
    those clients select."""
    values = request_vary_values(AE_AL, _Headers({"accept-encoding": ae, "accept-language": al}))
    audience = Audience()
    audience.observe(varied("/a", AE_AL, values))
    (request,) = audience.expand([WarmRequest(url="/a")])
    assert request_vary_values(AE_AL, _Headers(dict(request.headers))) == values


class _Headers:
    """The part of a header multidict that request_vary_values reads."""

    def __init__(self, fields: dict[str, str]) -> None:
        self.fields = fields

    def getall(self, name: str, default: list[str]) -> list[str]:
        value = self.fields.get(name.lower())
        return [value] if value is not None else default
