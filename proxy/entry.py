"""What the cache stores: a response with every decision made at store time.

DESIGN rule 3: the hit path is a lookup, a time comparison and a write, so
everything that can be decided when a response is stored (freshness lifetime,
stale windows, Vary names, validators, the header list to send) is decided by
the policy then and kept here.  ``encode``/``decode`` give the byte form used by
stores that live outside the process (Redis).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import orjson
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.web_response import REASON_PHRASES
from multidict import CIMultiDict

# Bump when the encoded layout changes: an entry of another version decodes to
# a miss instead of a wrong response.
FORMAT_VERSION = 1
_MAGIC = b"WP"
_HEAD = struct.Struct("!2sBI")  # magic, version, length of the JSON metadata


@dataclass(slots=True)
class CacheEntry:
    """A stored response plus the times and flags the hit path needs."""

    url: str
    status: int
    # End-to-end response headers as stored (hop-by-hop, Age and excluded
    # fields already removed), in origin order.
    headers: list[tuple[str, str]]
    body: bytes
    # Wall-clock second at which the response's age was zero: the response time
    # minus the corrected initial age of RFC 9111 §4.2.3.  Age = now - born.
    born: float
    # When the response reached us (RFC 9111 §4.2.3 response_time).
    stored_at: float
    fresh_until: float
    # Ends of the RFC 5861 windows; equal to fresh_until when absent.
    stale_while_revalidate_until: float
    stale_if_error_until: float
    # The store may drop the entry after this (fresh + stale windows, plus the
    # retention for revalidation when the entry has validators).
    expires_at: float
    etag: str | None = None
    last_modified: float | None = None
    # Lower-cased names of the Vary header (RFC 9111 §4.1) and the request's
    # values for them when the response was stored.
    vary: tuple[str, ...] = ()
    vary_values: tuple[str | None, ...] = ()
    # must-revalidate / proxy-revalidate / s-maxage (§5.2.2.2, §5.2.2.8,
    # §5.2.2.10): never served stale, not even under stale-if-error.
    must_revalidate: bool = False
    # Response no-cache (§5.2.2.4): every use needs a successful validation.
    no_cache: bool = False
    # May answer a request carrying Authorization (§3.5).
    shareable_with_auth: bool = False
    # How long the origin took to produce it, for "time saved" accounting.
    fetch_seconds: float = 0.0
    # Set when a warm fetch stored it; cleared by nothing (the ledger reads it).
    warmed: bool = False
    # The origin's cache tags (its tag header, e.g. Surrogate-Key), taken out
    # of ``headers`` when stored: what a purge by tag finds the entry by.
    tags: tuple[str, ...] = ()
    # The headers as a multidict, built on first use and copied per hit (a
    # copy costs a quarter of building one); never serialized.
    head: CIMultiDict[str] | None = field(default=None, compare=False, repr=False)
    # ``size``, computed on first use: a fill asks for it twice (the size
    # limit, then the store's byte accounting).  Entries are never changed in
    # place (``dataclasses.replace`` makes a new one, which recomputes it).
    _size: int = field(default=-1, init=False, compare=False, repr=False)
    # ``coding``, found on first use: a hit on a variant names it in its
    # access event, and the Vary lookup compares it.
    _coding: str | None = field(default=None, init=False, compare=False, repr=False)
    # The response head the fast lane sends (proxy/fast_lane.py), after the
    # HTTP version and before Age and Cache-Status; None: only the handler may
    # serve this entry.  Set by :meth:`prepare_wire` when the entry enters the
    # in-process tier; never copied by ``dataclasses.replace``.
    wire_head: bytes | None = field(default=None, init=False, compare=False, repr=False)

    def response_head(self) -> CIMultiDict[str]:
        """A fresh multidict of the stored headers, to add Age and Cache-Status to."""
        head = self.head
        if head is None:
            head = self.head = CIMultiDict(self.headers)
        return head.copy()

    def prepare_wire(self) -> None:
        """Decide once, when stored in process, whether the fast lane may send
        this entry, and precompute the head it would send (DESIGN rule 3)."""
        self.wire_head = _wire_head(self)

    @property
    def coding(self) -> str:
        """The response's content-coding, lower-cased ("" for none)."""
        coding = self._coding
        if coding is None:
            coding = ""
            for name, value in self.headers:
                if name.lower() == "content-encoding":
                    coding = value.strip().lower()
            self._coding = coding
        return coding

    @property
    def size(self) -> int:
        """Approximate bytes the entry occupies, for byte-bounded stores."""
        size = self._size
        if size < 0:
            size = self._size = (
                len(self.body)
                + sum(len(k) + len(v) + 4 for k, v in self.headers)
                + sum(len(t) + 4 for t in self.tags)
                + 256
            )
        return size


# Statuses whose answers aiohttp frames specially (no body, no Content-Length;
# RFC 9110 §6.4.1): the handler sends them.
_SPECIAL_FRAMING = frozenset({204, 205, 304})
# Fields the head must not carry already: the fast lane writes framing and
# connection fields per request, as aiohttp does.
_PER_RESPONSE_FIELDS = frozenset(
    {"content-length", "transfer-encoding", "connection", "keep-alive", "age", "cache-status"}
)


def _visible(text: str) -> bool:
    """Printable ASCII only: what aiohttp would send byte for byte, unchanged."""
    return text.isascii() and text.isprintable()


def _wire_head(entry: CacheEntry) -> bytes | None:
    """The head aiohttp would write for ``entry`` on a hit, minus the version,
    Age, Cache-Status, Content-Length and Connection, or None when the fast
    lane must leave the entry to the handler.

    The handler answers a hit with ``web.Response``, which adds Server and (for
    a body) a default Content-Type when the stored fields lack them, and a Date
    (stored entries always carry one, RFC 9110 §6.6.1).  An entry the fast
    lane could not send identically is left to the handler: non-ASCII or
    control characters in a field (aiohttp drops or refuses them), a status
    framed without a body, a response needing validation on every use
    (``no-cache``, RFC 9111 §5.2.2.4).
    """
    status = entry.status
    if entry.no_cache or not 200 <= status <= 599 or status in _SPECIAL_FRAMING:
        return None
    lines = [f" {status} {REASON_PHRASES.get(status, '')}\r\n"]
    seen: set[str] = set()
    for name, value in entry.headers:
        lower = name.lower()
        if lower in _PER_RESPONSE_FIELDS or not (_visible(name) and _visible(value)):
            return None
        seen.add(lower)
        lines.append(f"{name}: {value}\r\n")
    if "date" not in seen:
        return None
    if "content-type" not in seen and entry.body:
        # aiohttp adds application/octet-stream to a GET but not to a HEAD.
        return None
    if "server" not in seen:
        lines.append(f"Server: {SERVER_SOFTWARE}\r\n")
    return "".join(lines).encode("ascii")


@dataclass(slots=True)
class VaryIndex:
    """Marks a primary key whose responses vary: where the variants live.

    Variants are stored under secondary keys derived from the request's values
    of the ``names`` headers.  ``generation`` is part of every secondary key, so
    invalidating the primary key (replacing this record) makes all old variants
    unreachable at once, without scanning for them.
    """

    names: tuple[str, ...]
    generation: str
    expires_at: float
    variant_keys: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return 128 + sum(len(n) for n in self.names) + sum(len(k) for k in self.variant_keys)


StoredItem = CacheEntry | VaryIndex


def _text(value: str) -> str:
    """A header string as JSON-safe text, lossless for any bytes the origin sent.

    aiohttp decodes header bytes as UTF-8 with surrogate escapes; JSON cannot
    hold those surrogates, so the original bytes travel as Latin-1 text.
    """
    if value.isascii():
        return value
    return value.encode("utf-8", "surrogateescape").decode("latin-1")


def _untext(value: str) -> str:
    if value.isascii():
        return value
    return value.encode("latin-1").decode("utf-8", "surrogateescape")


class DecodeError(ValueError):
    """Bytes from a store are not an entry of this format version."""


def encode(item: StoredItem) -> bytes:
    """Serialize an item for an out-of-process store."""
    if isinstance(item, VaryIndex):
        meta = {
            "k": "vary",
            "names": list(item.names),
            "generation": item.generation,
            "expires_at": item.expires_at,
            "variant_keys": item.variant_keys,
        }
        body = b""
    else:
        meta = {
            "k": "entry",
            "url": item.url,
            "status": item.status,
            "headers": [(_text(k), _text(v)) for k, v in item.headers],
            "born": item.born,
            "stored_at": item.stored_at,
            "fresh_until": item.fresh_until,
            "swr_until": item.stale_while_revalidate_until,
            "sie_until": item.stale_if_error_until,
            "expires_at": item.expires_at,
            "etag": item.etag,
            "last_modified": item.last_modified,
            "vary": list(item.vary),
            "vary_values": list(item.vary_values),
            "must_revalidate": item.must_revalidate,
            "no_cache": item.no_cache,
            "shareable_with_auth": item.shareable_with_auth,
            "fetch_seconds": item.fetch_seconds,
            "warmed": item.warmed,
            "tags": list(item.tags),
        }
        body = item.body
    meta_bytes = orjson.dumps(meta)
    return _HEAD.pack(_MAGIC, FORMAT_VERSION, len(meta_bytes)) + meta_bytes + body


def head_length(data: bytes) -> int:
    """Bytes of an encoded item before its body: what :func:`decode_head`
    needs (``data`` need only hold the fixed-size head); raises
    :class:`DecodeError` on foreign bytes."""
    if len(data) < _HEAD.size:
        raise DecodeError("too short")
    magic, version, meta_len = _HEAD.unpack_from(data)
    if magic != _MAGIC or version != FORMAT_VERSION:
        raise DecodeError(f"unknown format {magic!r} v{version}")
    return _HEAD.size + int(meta_len)


def decode_head(data: bytes) -> StoredItem:
    """:func:`decode` of an item's first :func:`head_length` bytes or more,
    the body left out: a :class:`CacheEntry`'s ``body`` is empty.  What a
    store reads to learn whether an entry is there and fresh without
    transferring its body; never to be served or stored."""
    return decode(data[: head_length(data)])


def decode(data: bytes) -> StoredItem:
    """Inverse of :func:`encode`; raises :class:`DecodeError` on foreign bytes."""
    if len(data) < _HEAD.size:
        raise DecodeError("too short")
    magic, version, meta_len = _HEAD.unpack_from(data)
    if magic != _MAGIC or version != FORMAT_VERSION:
        raise DecodeError(f"unknown format {magic!r} v{version}")
    start = _HEAD.size
    try:
        meta = orjson.loads(data[start : start + meta_len])
        if meta["k"] == "vary":
            return VaryIndex(
                names=tuple(meta["names"]),
                generation=meta["generation"],
                expires_at=meta["expires_at"],
                variant_keys=list(meta["variant_keys"]),
            )
        return CacheEntry(
            url=meta["url"],
            status=meta["status"],
            headers=[(_untext(k), _untext(v)) for k, v in meta["headers"]],
            body=data[start + meta_len :],
            born=meta["born"],
            stored_at=meta["stored_at"],
            fresh_until=meta["fresh_until"],
            stale_while_revalidate_until=meta["swr_until"],
            stale_if_error_until=meta["sie_until"],
            expires_at=meta["expires_at"],
            etag=meta["etag"],
            last_modified=meta["last_modified"],
            vary=tuple(meta["vary"]),
            vary_values=tuple(meta["vary_values"]),
            must_revalidate=meta["must_revalidate"],
            no_cache=meta["no_cache"],
            shareable_with_auth=meta["shareable_with_auth"],
            fetch_seconds=meta["fetch_seconds"],
            warmed=meta["warmed"],
            # Absent from entries written before tags were kept.
            tags=tuple(meta.get("tags", ())),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise DecodeError(str(exc)) from exc
