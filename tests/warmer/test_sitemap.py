"""Sitemap parsing: bytes in, entries out; hostile documents refused."""

from __future__ import annotations

import contextlib
import gzip
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from warmer.sitemap import (
    MAX_SITEMAP_BYTES,
    SitemapEntry,
    SitemapError,
    order_entries,
    parse_sitemap,
    parse_w3c_datetime,
)


def epoch(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> float:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


URLSET = b"""<?xml version="1.0" encoding="UTF-8"?>
<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9"
        xmlns:image="http://www.google.com/schemas/sitemap-image/1.1">
  <url>
    <loc>https://shop.example/</loc>
    <lastmod>2024-05-01</lastmod>
    <changefreq>daily</changefreq>
    <priority>1.0</priority>
  </url>
  <url>
    <loc> https://shop.example/products/1?color=red&amp;size=m </loc>
    <lastmod>2024-05-02T10:30:00+02:00</lastmod>
    <image:image><image:loc>https://cdn.example/1.png</image:loc></image:image>
  </url>
  <url>
    <loc>https://shop.example/about</loc>
    <lastmod>yesterday</lastmod>
    <priority>7</priority>
  </url>
  <url><lastmod>2024-05-01</lastmod></url>
</urlset>
"""

INDEX = b"""<?xml version="1.0" encoding="UTF-8"?>
<sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">
  <sitemap><loc>https://shop.example/sitemap-products.xml</loc>
    <lastmod>2024-05-01</lastmod></sitemap>
  <sitemap><loc>https://shop.example/sitemap-articles.xml.gz</loc></sitemap>
</sitemapindex>
"""


def test_urlset_with_namespace() -> None:
    sitemap = parse_sitemap(URLSET)
    assert sitemap.sitemaps == []
    assert sitemap.urls == [
        SitemapEntry("https://shop.example/", epoch(2024, 5, 1), 1.0),
        SitemapEntry(
            "https://shop.example/products/1?color=red&size=m", epoch(2024, 5, 2, 8, 30), None
        ),
        # A lastmod that is not a W3C datetime and a priority out of 0..1 are dropped.
        SitemapEntry("https://shop.example/about", None, None),
    ]  # the <url> without <loc> is left out; image:loc is not a page


def test_urlset_without_namespace() -> None:
    data = b"<urlset><url><loc>/a</loc><priority>0.3</priority></url></urlset>"
    assert parse_sitemap(data).urls == [SitemapEntry("/a", None, 0.3)]


def test_sitemap_index() -> None:
    sitemap = parse_sitemap(INDEX)
    assert sitemap.urls == []
    assert sitemap.sitemaps == [
        "https://shop.example/sitemap-products.xml",
        "https://shop.example/sitemap-articles.xml.gz",
    ]


def test_gzip() -> None:
    assert parse_sitemap(gzip.compress(URLSET)) == parse_sitemap(URLSET)
    assert parse_sitemap(gzip.compress(INDEX)).sitemaps == parse_sitemap(INDEX).sitemaps


def test_truncated_gzip() -> None:
    with pytest.raises(SitemapError, match="truncated gzip"):
        parse_sitemap(gzip.compress(URLSET)[:40])


def test_broken_gzip() -> None:
    with pytest.raises(SitemapError, match="broken gzip"):
        parse_sitemap(b"\x1f\x8b" + b"\x00" * 30)


def test_gzip_bomb_is_refused() -> None:
    # 50 MiB + 1 byte of spaces compresses to ~50 KiB.
    bomb = gzip.compress(b"<urlset>" + b" " * MAX_SITEMAP_BYTES + b"</urlset>")
    assert len(bomb) < 1_000_000
    with pytest.raises(SitemapError, match="decompresses to more than"):
        parse_sitemap(bomb)


def test_plain_sitemap_over_the_limit_is_refused() -> None:
    with pytest.raises(SitemapError, match="larger than"):
        parse_sitemap(b"<urlset>" + b" " * MAX_SITEMAP_BYTES + b"</urlset>")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"<urlset><url><loc>/a</loc></url>", "malformed sitemap XML"),
        (b"", "malformed sitemap XML"),
        (b"not xml at all", "malformed sitemap XML"),
        (b"<html><body>Not found</body></html>", "root element is <html>"),
    ],
)
def test_bad_documents(data: bytes, message: str) -> None:
    with pytest.raises(SitemapError, match=message):
        parse_sitemap(data)


def test_sitemap_error_is_a_value_error() -> None:
    assert issubclass(SitemapError, ValueError)


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
  <!ENTITY lol "lol">
  <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
  <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
  <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
  <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
  <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
  <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
  <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
  <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<urlset><url><loc>/&lol9;</loc></url></urlset>
"""

XXE = b"""<?xml version="1.0"?>
<!DOCTYPE urlset [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<urlset><url><loc>/&xxe;</loc></url></urlset>
"""


@pytest.mark.parametrize("data", [BILLION_LAUGHS, XXE], ids=["billion-laughs", "xxe"])
def test_entity_attacks_are_refused(data: bytes) -> None:
    with pytest.raises(SitemapError, match="forbidden XML construct"):
        parse_sitemap(data)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024", epoch(2024, 1, 1)),
        ("2024-05", epoch(2024, 5, 1)),
        ("2024-05-02", epoch(2024, 5, 2)),
        ("2024-05-02T10:30Z", epoch(2024, 5, 2, 10, 30)),
        ("2024-05-02T10:30:15Z", epoch(2024, 5, 2, 10, 30, 15)),
        ("2024-05-02T10:30:15.5+01:00", epoch(2024, 5, 2, 9, 30, 15) + 0.5),
        ("2024-05-02T10:30:15-05:30", epoch(2024, 5, 2, 16, 0, 15)),
        ("2024-05-02T10:30:15", epoch(2024, 5, 2, 10, 30, 15)),  # no zone: UTC
        (" 2024-05-02 ", epoch(2024, 5, 2)),
        ("2024-13-01", None),
        ("2024-02-30", None),
        ("2024-05-02T25:00Z", None),
        ("2024-05-02T10:30:15+25:00", None),
        ("20240502", None),
        ("2024-05-02 10:30", None),
        ("yesterday", None),
        ("", None),
    ],
)
def test_w3c_datetime(text: str, expected: float | None) -> None:
    assert parse_w3c_datetime(text) == expected


def entry(loc: str, lastmod: float | None = None, priority: float | None = None) -> SitemapEntry:
    return SitemapEntry(loc, lastmod, priority)


def test_ordering() -> None:
    entries = [
        entry("/old-default", lastmod=100),
        entry("/no-date-default"),
        entry("/low", lastmod=900, priority=0.1),
        entry("/new-default", lastmod=200),
        entry("/top", priority=0.9),
        entry("/no-date-default-2"),
        entry("/explicit-half", lastmod=150, priority=0.5),
    ]
    assert [e.loc for e in order_entries(entries)] == [
        "/top",  # highest priority
        "/new-default",  # priority 0.5 (missing), newest first
        "/explicit-half",
        "/old-default",
        "/no-date-default",  # undated after dated, in document order
        "/no-date-default-2",
        "/low",
    ]


@given(
    st.lists(
        st.builds(
            SitemapEntry,
            st.text(max_size=5),
            st.none() | st.floats(0, 2e9),
            st.none() | st.floats(0, 1),
        ),
        max_size=30,
    )
)
def test_ordering_is_a_permutation_by_priority(entries: list[SitemapEntry]) -> None:
    ordered = order_entries(entries)
    assert sorted(ordered, key=repr) == sorted(entries, key=repr)
    priorities = [0.5 if e.priority is None else e.priority for e in ordered]
    assert priorities == sorted(priorities, reverse=True)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_parse_or_raise_sitemap_error(data: bytes) -> None:
    with contextlib.suppress(SitemapError):
        parse_sitemap(data)
