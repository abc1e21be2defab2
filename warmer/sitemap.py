"""Sitemap parsing (https://www.sitemaps.org/protocol.html): bytes in, entries out.

Pure: fetching is the caller's job (:class:`warmer.sources.SitemapSource`).
A sitemap is origin content, and an origin may be compromised or misconfigured,
so parsing refuses entity expansion and external references (no XXE, no
billion laughs) and bounds the decompressed size.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

#: The protocol's limit on a sitemap's uncompressed size.
MAX_SITEMAP_BYTES = 50 * 1024 * 1024

#: The sitemaps.org namespace; documents without a namespace are accepted too.
SITEMAP_NS = "http://www.sitemaps.org/schemas/sitemap/0.9"

#: The priority the protocol assumes when an entry gives none.
DEFAULT_PRIORITY = 0.5

_GZIP_MAGIC = b"\x1f\x8b"

# W3C Datetime (https://www.w3.org/TR/NOTE-datetime), the format <lastmod> uses:
# YYYY, YYYY-MM, YYYY-MM-DD, or a date with hh:mm[:ss[.s]] and a zone designator.
_W3C_DATETIME = re.compile(
    r"(?P<year>\d{4})"
    r"(?:-(?P<month>\d{2})"
    r"(?:-(?P<day>\d{2})"
    r"(?:T(?P<hour>\d{2}):(?P<minute>\d{2})"
    r"(?::(?P<second>\d{2})(?:\.(?P<fraction>\d+))?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?"
    r")?)?)?"
)


class SitemapError(ValueError):
    """A document that is not a usable sitemap; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class SitemapEntry:
    """One ``<url>`` of a ``<urlset>``."""

    loc: str
    lastmod: float | None = None  # epoch seconds
    priority: float | None = None  # 0.0 .. 1.0


@dataclass(slots=True)
class Sitemap:
    """A parsed sitemap: its URLs, or for a ``<sitemapindex>`` its child sitemaps."""

    urls: list[SitemapEntry] = field(default_factory=list)
    sitemaps: list[str] = field(default_factory=list)


def parse_sitemap(data: bytes) -> Sitemap:
    """Parse a ``<urlset>`` or ``<sitemapindex>``, plain or gzip-compressed.

    Raises :class:`SitemapError` for malformed or forbidden XML, an unknown root
    element, a broken gzip stream, or more than :data:`MAX_SITEMAP_BYTES`.
    """
    if data[:2] == _GZIP_MAGIC:
        data = _gunzip(data)
    elif len(data) > MAX_SITEMAP_BYTES:
        raise SitemapError(f"sitemap is larger than {MAX_SITEMAP_BYTES} bytes")
    try:
        root = fromstring(data, forbid_dtd=False, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise SitemapError(f"forbidden XML construct in sitemap: {exc}") from None
    except ParseError as exc:
        raise SitemapError(f"malformed sitemap XML: {exc}") from None

    # Children are looked up in the root's namespace: sitemaps.org's, none, or
    # an older one (Google's 0.84); extensions (image:, xhtml:) live in other
    # namespaces and are ignored that way.
    ns, local = _split(root.tag)
    if local == "urlset":
        return Sitemap(urls=[e for e in (_entry(u, ns) for u in _children(root, ns, "url")) if e])
    if local == "sitemapindex":
        locs = (_text(s, ns, "loc") for s in _children(root, ns, "sitemap"))
        return Sitemap(sitemaps=[loc for loc in locs if loc])
    raise SitemapError(f"root element is <{local}>, expected <urlset> or <sitemapindex>")


def order_entries(entries: Iterable[SitemapEntry]) -> list[SitemapEntry]:
    """Entries in warming order: highest priority first (missing: 0.5, as the
    protocol says), then the most recently modified, then document order."""
    return sorted(entries, key=order_key)


def order_key(entry: SitemapEntry) -> tuple[float, int, float]:
    """The sort key of :func:`order_entries` (a stable sort keeps document order)."""
    priority = DEFAULT_PRIORITY if entry.priority is None else entry.priority
    # Entries without lastmod come after dated ones of the same priority.
    if entry.lastmod is None:
        return (-priority, 1, 0.0)
    return (-priority, 0, -entry.lastmod)


def parse_w3c_datetime(text: str) -> float | None:
    """A W3C Datetime as epoch seconds; None when it is not one.

    A time without a zone designator is taken as UTC (the format requires one,
    but the intent is rarely anything else).
    """
    m = _W3C_DATETIME.fullmatch(text.strip())
    if m is None:
        return None
    g = m.groupdict()
    tz = UTC
    if g["tz"] and g["tz"] != "Z":
        sign = -1 if g["tz"][0] == "-" else 1
        hours, minutes = int(g["tz"][1:3]), int(g["tz"][4:6])
        if hours > 23 or minutes > 59:
            return None
        tz = timezone(sign * timedelta(hours=hours, minutes=minutes))
    try:
        dt = datetime(
            int(g["year"]),
            int(g["month"] or 1),
            int(g["day"] or 1),
            int(g["hour"] or 0),
            int(g["minute"] or 0),
            int(g["second"] or 0),
            int((g["fraction"] or "0")[:6].ljust(6, "0")),
            tzinfo=tz,
        )
    except ValueError:
        return None
    return dt.timestamp()


def _gunzip(data: bytes) -> bytes:
    decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        # One byte more than allowed tells "too large" from "exactly at the limit"
        # without ever holding more than that in memory.
        out = decompressor.decompress(data, MAX_SITEMAP_BYTES + 1)
    except zlib.error as exc:
        raise SitemapError(f"broken gzip data in sitemap: {exc}") from None
    if len(out) > MAX_SITEMAP_BYTES:
        raise SitemapError(f"sitemap decompresses to more than {MAX_SITEMAP_BYTES} bytes")
    if not decompressor.eof:
        raise SitemapError("truncated gzip data in sitemap")
    return out


def _split(tag: str) -> tuple[str, str]:
    if tag.startswith("{"):
        ns, _, local = tag[1:].partition("}")
        return ns, local
    return "", tag


def _qualified(ns: str, local: str) -> str:
    return f"{{{ns}}}{local}" if ns else local


def _children(parent: Element, ns: str, local: str) -> list[Element]:
    return parent.findall(_qualified(ns, local))


def _text(parent: Element, ns: str, local: str) -> str:
    child = parent.find(_qualified(ns, local))
    if child is None or child.text is None:
        return ""
    return child.text.strip()


def _entry(url: Element, ns: str) -> SitemapEntry | None:
    loc = _text(url, ns, "loc")
    if not loc:
        return None
    lastmod_text = _text(url, ns, "lastmod")
    return SitemapEntry(
        loc=loc,
        lastmod=parse_w3c_datetime(lastmod_text) if lastmod_text else None,
        priority=_priority(_text(url, ns, "priority")),
    )


def _priority(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        return None
    return value
