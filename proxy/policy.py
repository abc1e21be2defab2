"""HTTP caching rules for a shared cache: RFC 9111, RFC 5861 and RFC 9211.

Pure functions, no I/O and no clock: the caller passes the times.  Everything
the hit path needs is computed once, in :func:`build_entry`, when a response is
stored (DESIGN rule 3).

hishel's sans-I/O core was evaluated first (see docs/decisions.md): its state
machine works on its own request/response/entry models, recomputes freshness
from headers on every lookup, and does not serve stale-while-revalidate or
stale-if-error, so this module keeps the rules in one place of our own.
"""

from __future__ import annotations

import calendar
import email.utils
import hashlib
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol
from urllib.parse import urlsplit

from multidict import CIMultiDict, CIMultiDictProxy, MultiMapping

from proxy.entry import CacheEntry

# RFC 9111 §1.2.2: a delta-seconds too large to represent is 2^31.
MAX_DELTA_SECONDS = 2147483648

# RFC 9110 §15.1: status codes that are heuristically cacheable.
HEURISTICALLY_CACHEABLE = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501})

# RFC 9111 §3: 206 needs range combination and 304 is only a validation
# answer, so neither is stored as a response of its own.
NOT_STORED_STATUSES = frozenset({206, 304})

# The final status codes RFC 9110 §15 defines: the ones this cache
# "understands" for must-understand (RFC 9111 §5.2.2.3).
UNDERSTOOD_STATUSES = frozenset(
    {200, 201, 202, 203, 204, 205}
    | {300, 301, 302, 303, 304, 305, 307, 308}
    | set(range(400, 418))
    | {421, 422, 426}
    | {500, 501, 502, 503, 504, 505}
)

# RFC 9110 §7.6.1: connection-specific fields never forwarded nor stored.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-authentication-info",
    }
)

# Fields not kept with a stored response: recomputed when served (Age,
# Content-Length) or excluded by RFC 9111 §3.1.
NOT_STORED_FIELDS = HOP_BY_HOP | {"age", "content-length"}


# RFC 9110 §15.4.5: the fields a 304 carries when the 200 would have them.
FIELDS_IN_304 = ("cache-control", "content-location", "date", "etag", "expires", "vary")

# RFC 9110 §9.2.1: methods known to be safe; anything else invalidates (§4.4).
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})

# Request fields the cache evaluates itself: never sent on a fill (RFC 9111 §4.3.1).
CONDITIONAL_REQUEST_FIELDS = frozenset(
    {"if-none-match", "if-modified-since", "if-match", "if-unmodified-since", "if-range", "range"}
)

CacheControl = dict[str, str | None]


# --------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------


def parse_cache_control(values: Iterable[str]) -> CacheControl:
    """Directives of one or more Cache-Control field lines (RFC 9111 §5.2).

    Names are lower-cased; arguments are unquoted.  For a repeated directive
    the first occurrence wins (§4.2.1).
    """
    directives: CacheControl = {}
    for value in values:
        for name, arg in _split_directives(value):
            if name and name not in directives:
                directives[name] = arg
    return directives


def _split_directives(value: str) -> Iterable[tuple[str, str | None]]:
    if '"' not in value:
        # Without quoted strings every comma separates directives, so the
        # split is exact; the character scanner below is only for the rare
        # quoted argument and costs several times as much on every fill.
        for member in value.split(","):
            raw_name, eq, raw_arg = member.partition("=")
            name = raw_name.strip().lower()
            if name:
                yield name, raw_arg.strip() if eq else None
        return
    i, n = 0, len(value)
    while i < n:
        # skip separators and whitespace
        while i < n and value[i] in " \t,":
            i += 1
        start = i
        while i < n and value[i] not in "=,":
            i += 1
        name = value[start:i].strip().lower()
        arg: str | None = None
        if i < n and value[i] == "=":
            i += 1
            while i < n and value[i] in " \t":
                i += 1
            if i < n and value[i] == '"':
                i += 1
                chars: list[str] = []
                while i < n and value[i] != '"':
                    if value[i] == "\\" and i + 1 < n:
                        i += 1
                    chars.append(value[i])
                    i += 1
                i += 1  # closing quote
                arg = "".join(chars)
                while i < n and value[i] != ",":
                    i += 1
            else:
                start = i
                while i < n and value[i] != ",":
                    i += 1
                arg = value[start:i].strip()
        if name:
            yield name, arg


def delta_seconds(arg: str | None) -> int | None:
    """A delta-seconds argument (RFC 9111 §1.2.2), or None when invalid."""
    if arg is None or not arg.isdigit() or not arg.isascii():
        return None
    return min(int(arg), MAX_DELTA_SECONDS)


_MONTHS = {m.lower(): i for i, m in enumerate(calendar.month_abbr) if m}
_IMF_FIXDATE = re.compile(
    r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), (\d{2}) ([A-Z][a-z]{2}) (\d{4}) "
    r"(\d{2}):(\d{2}):(\d{2}) GMT",
    re.IGNORECASE,
)
_RFC850_DATE = re.compile(
    r"(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday), "
    r"(\d{2})-([A-Z][a-z]{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2}) GMT",
    re.IGNORECASE,
)
_ASCTIME_DATE = re.compile(
    r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) ([A-Z][a-z]{2}) ([ \d]\d) "
    r"(\d{2}):(\d{2}):(\d{2}) (\d{4})",
    re.IGNORECASE,
)


# IMF-fixdate values already parsed: the responses of one second carry the same
# Date, so a fill usually finds its Date here instead of running the regular
# expression and timegm again.  (Only this format: an rfc850-date's meaning
# depends on the current year.)
_FIXDATE_CACHE: dict[str, float] = {}
_FIXDATE_CACHE_SIZE = 256


def parse_http_date(value: str | None) -> float | None:
    """Seconds since the epoch of an HTTP-date (RFC 9110 §5.6.7), or None.

    Only the three formats the RFC defines are accepted; anything else (other
    time zones, missing commas, one-digit hours, ...) is invalid, which for
    Expires means "already expired" (RFC 9111 §5.3).
    """
    if not value:
        return None
    cached = _FIXDATE_CACHE.get(value)
    if cached is not None:
        return cached
    if match := _IMF_FIXDATE.fullmatch(value):
        day, month, year, hh, mm, ss = match.groups()
        parsed = _date_from_parts(year, month, day, hh, mm, ss)
        if parsed is not None:
            if len(_FIXDATE_CACHE) >= _FIXDATE_CACHE_SIZE:
                _FIXDATE_CACHE.clear()
            _FIXDATE_CACHE[value] = parsed
        return parsed
    if match := _RFC850_DATE.fullmatch(value):
        day, month, yy, hh, mm, ss = match.groups()
        # §5.6.7: a two-digit year more than 50 years in the future is in the past.
        this_year = time.gmtime().tm_year
        year_int = this_year - this_year % 100 + int(yy)
        if year_int > this_year + 50:
            year_int -= 100
        return _date_from_parts(str(year_int), month, day, hh, mm, ss)
    if match := _ASCTIME_DATE.fullmatch(value):
        month, day, hh, mm, ss, year = match.groups()
        return _date_from_parts(year, month, day, hh, mm, ss)
    return None


def _date_from_parts(year: str, month: str, day: str, hh: str, mm: str, ss: str) -> float | None:
    # Names are case-sensitive in the grammar; being lenient about case only
    # keeps a response fresh that the origin meant to be fresh.
    month_number = _MONTHS.get(month.lower())
    if month_number is None:
        return None
    try:
        return float(
            calendar.timegm((int(year), month_number, int(day), int(hh), int(mm), int(ss), 0, 0, 0))
        )
    except (ValueError, OverflowError):
        return None


def format_http_date(ts: float) -> str:
    return email.utils.formatdate(ts, usegmt=True)


def parse_field_names(arg: str | None) -> list[str]:
    """The field-name list of a qualified ``private``/``no-cache`` directive."""
    if not arg:
        return []
    return [name.strip().lower() for name in arg.split(",") if name.strip()]


def parse_age(values: Sequence[str]) -> int:
    """Age field value (RFC 9111 §5.1): first member of a list; invalid is ignored."""
    if not values:
        return 0
    first = values[0].split(",")[0].strip()
    age = delta_seconds(first)
    return age if age is not None else 0


def connection_named(headers: Iterable[tuple[str, str]]) -> set[str]:
    """Field names listed in Connection (RFC 9110 §7.6.1): hop-by-hop too."""
    return _connection_tokens(header_values(headers, "connection"))


def _connection_tokens(values: Iterable[str]) -> set[str]:
    return {
        token.strip().lower() for value in values for token in value.split(",") if token.strip()
    }


def header_values(headers: Iterable[tuple[str, str]], name: str) -> list[str]:
    """All values of ``name`` (lower-case) in a header list."""
    return [v for k, v in headers if k.lower() == name]


def header_value(headers: Iterable[tuple[str, str]], name: str) -> str | None:
    values = header_values(headers, name)
    return ", ".join(values) if values else None


@dataclass(frozen=True, slots=True)
class ResponseFields:
    """A response's header fields with a case-insensitive index, built once per fill.

    Storing a response asks for a dozen fields (Cache-Control, Date, Expires,
    Age, ETag, Vary, ...); scanning and lower-casing the whole list for each
    one was a large part of a fill's CPU, so the decisions share this index.
    """

    headers: list[tuple[str, str]]
    # Lower-cased names, parallel to ``headers``.
    names: list[str]
    index: MultiMapping[str]

    def values(self, name: str) -> Sequence[str]:
        """All values of ``name`` (lower-case), in order."""
        return self.index.getall(name, ())

    def value(self, name: str) -> str | None:
        """The field lines of ``name`` combined (RFC 9110 §5.3), or None."""
        values = self.index.getall(name, ())
        return ", ".join(values) if values else None


def response_fields(
    headers: Iterable[tuple[str, str]] | CIMultiDict[str] | CIMultiDictProxy[str],
) -> ResponseFields:
    """Index a response's header list (kept as given when it is a list).

    A client response's own multidict (aiohttp's ``response.headers``)
    serves as the index as it is.
    """
    if isinstance(headers, CIMultiDict | CIMultiDictProxy):
        index: MultiMapping[str] = headers
        items = list(headers.items())
    else:
        items = headers if isinstance(headers, list) else list(headers)
        index = CIMultiDict(items)
    return ResponseFields(items, [k.lower() for k, _ in items], index)


def _indexed(headers: list[tuple[str, str]] | ResponseFields) -> ResponseFields:
    return headers if isinstance(headers, ResponseFields) else response_fields(headers)


# --------------------------------------------------------------------------
# Storing (RFC 9111 §3)
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CachePolicyConfig:
    """The knobs of the rules that deployments choose."""

    heuristic_fraction: float = 0.1
    heuristic_max_seconds: float = 86400.0
    # Stale entries with validators are kept this long for revalidation.
    revalidation_retention_seconds: float = 3600.0
    store_set_cookie: bool = False
    via: str = "1.1 warmproxy"
    # RFC 9213 targeted fields this cache obeys, in priority order (lower-case).
    targeted_fields: tuple[str, ...] = ("cdn-cache-control",)


_SF_MEMBER = re.compile(
    r'[a-z*][a-z0-9_\-.*]*(?:=(?:-?\d{1,15}(?:\.\d{1,3})?|"(?:[^"\\]|\\.)*"|[A-Za-z*][^,;\s]*))?'
)


_INTEGER_DIRECTIVES = frozenset({"max-age", "s-maxage", "stale-while-revalidate", "stale-if-error"})


def _targeted_directives(values: Sequence[str]) -> CacheControl | None:
    """A targeted field's directives, or None when it is not a valid dictionary.

    RFC 9213 §2.1: targeted fields are Structured Field Dictionaries; an
    invalid one is ignored as if absent.
    """
    members = [m.strip() for m in ",".join(values).split(",")]
    if not any(members) or not all(_SF_MEMBER.fullmatch(m) for m in members if m):
        return None
    for member in members:
        name, _, value = member.partition("=")
        # Delta-seconds directives are Integers there: a String is the wrong
        # type, which makes the whole field invalid.
        if name in _INTEGER_DIRECTIVES and value.startswith('"'):
            return None
    return parse_cache_control(values)


_RESPONSE_CC_CACHE: dict[str, CacheControl] = {}
_RESPONSE_CC_CACHE_SIZE = 256


@dataclass(frozen=True, slots=True)
class ResponseDirectives:
    """The directives that govern how a response is cached."""

    cc: CacheControl
    # From an RFC 9213 targeted field: Cache-Control and Expires are ignored.
    targeted: bool


def response_directives(
    headers: list[tuple[str, str]] | ResponseFields, config: CachePolicyConfig
) -> ResponseDirectives:
    """The first valid targeted field this cache obeys (RFC 9213 §2.1), else Cache-Control."""
    fields = _indexed(headers)
    for name in config.targeted_fields:
        values = fields.values(name)
        if values:
            directives = _targeted_directives(values)
            if directives is not None:
                return ResponseDirectives(directives, targeted=True)
    values = fields.values("cache-control")
    if len(values) != 1:
        return ResponseDirectives(parse_cache_control(values), targeted=False)
    # An origin sends the same few Cache-Control values over and over: parse
    # each once (copied out, so a caller may change its own directives).
    cc = _RESPONSE_CC_CACHE.get(values[0])
    if cc is None:
        cc = parse_cache_control(values)
        if len(_RESPONSE_CC_CACHE) >= _RESPONSE_CC_CACHE_SIZE:
            _RESPONSE_CC_CACHE.clear()
        _RESPONSE_CC_CACHE[values[0]] = cc
    return ResponseDirectives(dict(cc), targeted=False)


def shareable_with_authorization(response_cc: CacheControl) -> bool:
    """§3.5: directives that let a shared cache reuse a response to an authorized request."""
    return "public" in response_cc or "s-maxage" in response_cc or "must-revalidate" in response_cc


# Reasons not to store that come from the request, not the response: another
# request for the same URL may well be stored.
REQUEST_CAUSED_REASONS = frozenset({"request no-store", "authorization", "method"})


@dataclass(frozen=True, slots=True)
class StoreDecision:
    storable: bool
    reason: str


def storability(
    *,
    method: str,
    status: int,
    request_cc: CacheControl,
    request_has_authorization: bool,
    response_headers: list[tuple[str, str]] | ResponseFields,
    config: CachePolicyConfig,
    directives: ResponseDirectives | None = None,
) -> StoreDecision:
    """May a shared cache store this response?  (RFC 9111 §3).

    ``directives``: the response's, when the caller has parsed them already.
    """
    fields = _indexed(response_headers)
    if directives is None:
        directives = response_directives(fields, config)
    response_cc = directives.cc
    if method != "GET":
        return StoreDecision(False, "method")
    if status < 200 or status in NOT_STORED_STATUSES:
        return StoreDecision(False, "status")
    if "no-store" in request_cc:
        return StoreDecision(False, "request no-store")
    # §5.2.2.3: with must-understand, a status code the cache does not
    # understand is never stored, and one it does overrides no-store.
    if "must-understand" in response_cc:
        if status not in UNDERSTOOD_STATUSES:
            return StoreDecision(False, "must-understand")
    elif "no-store" in response_cc:
        return StoreDecision(False, "no-store")
    # §5.2.2.7: unqualified private forbids a shared cache to store; the
    # qualified form only excludes the named fields (handled in build_entry).
    if "private" in response_cc and not response_cc["private"]:
        return StoreDecision(False, "private")
    # §3.5: Authorization needs an explicit permission to share the response.
    if request_has_authorization and not shareable_with_authorization(response_cc):
        return StoreDecision(False, "authorization")
    if not config.store_set_cookie and "set-cookie" in fields.index:
        return StoreDecision(False, "set-cookie")
    vary = fields.value("vary")
    if vary is not None and "*" in [v.strip() for v in vary.split(",")]:
        # §4.1: Vary: * never matches, so storing could never pay off.
        return StoreDecision(False, "vary *")
    explicit = (
        "public" in response_cc
        or "max-age" in response_cc
        or "s-maxage" in response_cc
        or (not directives.targeted and "expires" in fields.index)
    )
    if not explicit and status not in HEURISTICALLY_CACHEABLE:
        return StoreDecision(False, "status not heuristically cacheable")
    return StoreDecision(True, "ok")


def freshness_lifetime(
    *,
    status: int,
    response_cc: CacheControl,
    headers: list[tuple[str, str]] | ResponseFields,
    date: float,
    config: CachePolicyConfig,
    ignore_expires: bool = False,
) -> float:
    """Freshness lifetime in seconds (RFC 9111 §4.2.1); 0 when none applies."""
    fields = _indexed(headers)
    # A shared cache prefers s-maxage, then max-age, then Expires.
    for directive in ("s-maxage", "max-age"):
        if directive in response_cc:
            value = delta_seconds(response_cc[directive])
            # §4.2.1: invalid freshness information means stale.
            return float(value) if value is not None else 0.0
    expires_values = () if ignore_expires else fields.values("expires")
    if expires_values:
        # §5.3: an invalid Expires (e.g. "0") means already expired; several
        # field lines count as invalid (§4.2.1 allows treating them as stale).
        if len(expires_values) > 1:
            return 0.0
        expires = parse_http_date(expires_values[0])
        if expires is None:
            return 0.0
        return max(0.0, expires - date)
    # §4.2.2: heuristic freshness, only from Last-Modified and only for
    # heuristically cacheable statuses (or when public allows it).
    if status in HEURISTICALLY_CACHEABLE or "public" in response_cc:
        last_modified = parse_http_date(fields.value("last-modified"))
        if last_modified is not None and last_modified < date:
            return min(
                (date - last_modified) * config.heuristic_fraction, config.heuristic_max_seconds
            )
    return 0.0


def corrected_initial_age(
    *,
    headers: list[tuple[str, str]] | ResponseFields,
    date: float | None,
    request_time: float,
    response_time: float,
) -> float:
    """RFC 9111 §4.2.3: how old the response already is when it arrives."""
    apparent_age = max(0.0, response_time - date) if date is not None else 0.0
    response_delay = max(0.0, response_time - request_time)
    corrected_age_value = parse_age(_indexed(headers).values("age")) + response_delay
    return max(apparent_age, corrected_age_value)


# Never relayed as received: Via gets this proxy appended instead.
_NOT_RELAYED = NOT_STORED_FIELDS | {"via"}


def relayed_headers(
    headers: list[tuple[str, str]] | ResponseFields,
    *,
    response_time: float,
    via: str,
    excluded: frozenset[str] | set[str] = frozenset(),
) -> list[tuple[str, str]]:
    """An origin response's header fields as this proxy passes them on.

    Without hop-by-hop fields (RFC 9110 §7.6.1), Age and Content-Length (set
    when served), and ``excluded``; with a Date (RFC 9110 §6.6.1: a recipient
    caching a response without one adds it) and this proxy appended to Via
    (RFC 9110 §7.6.3).
    """
    fields = _indexed(headers)
    drop: frozenset[str] | set[str] = _NOT_RELAYED
    if "connection" in fields.index or excluded:
        drop = _NOT_RELAYED | _connection_tokens(fields.values("connection")) | excluded
    relayed = [
        field for field, name in zip(fields.headers, fields.names, strict=True) if name not in drop
    ]
    if "date" not in fields.index or "date" in drop:
        relayed.append(("Date", format_http_date(response_time)))
    relayed.append(("Via", ", ".join([*fields.values("via"), via])))
    return relayed


def _stored_headers(
    fields: ResponseFields,
    response_cc: CacheControl,
    response_time: float,
    via: str | None,
) -> list[tuple[str, str]]:
    """The fields kept with a stored response; ``via`` None: already relayed once."""
    # §5.2.2.7 / §5.2.2.4: qualified private and no-cache name fields a shared
    # cache must not reuse; dropping them lets the rest be reused.
    excluded: set[str] = set()
    if "private" in response_cc or "no-cache" in response_cc:
        excluded.update(parse_field_names(response_cc.get("private")))
        excluded.update(parse_field_names(response_cc.get("no-cache")))
    if via is None:
        return [
            field
            for field, name in zip(fields.headers, fields.names, strict=True)
            if name not in excluded
        ]
    return relayed_headers(fields, response_time=response_time, via=via, excluded=excluded)


def vary_names(headers: Iterable[tuple[str, str]] | ResponseFields) -> tuple[str, ...]:
    """Lower-cased field names of Vary (RFC 9111 §4.1), sorted and de-duplicated."""
    values = (
        headers.values("vary")
        if isinstance(headers, ResponseFields)
        else header_values(headers, "vary")
    )
    if not values:
        return ()
    names = {name.strip().lower() for value in values for name in value.split(",")}
    names.discard("")
    return tuple(sorted(names))


class HeaderSource(Protocol):
    """Case-insensitive request headers with repeated fields (a multidict)."""

    def getall(self, key: str, default: list[str], /) -> list[str]: ...


def request_vary_values(
    names: tuple[str, ...], request_headers: HeaderSource
) -> tuple[str | None, ...]:
    """The request's values of the Vary fields, normalized for comparison."""
    values: list[str | None] = []
    for name in names:
        found = request_headers.getall(name, [])
        values.append(_normalize_vary_value(name, ", ".join(found)) if found else None)
    return tuple(values)


# Fields whose members are case-insensitive tokens with q-values, where the
# order of members carries no meaning (RFC 9110 §12.5): two requests that list
# the same members select the same response.
_UNORDERED_TOKEN_LISTS = frozenset({"accept-encoding", "accept-language", "accept-charset"})


def _normalize_vary_value(name: str, value: str) -> str:
    # §4.1 allows normalizing whitespace, combining field lines, and other
    # normalization that the header's semantics permit.
    members = [part.strip() for part in value.split(",")]
    if name in _UNORDERED_TOKEN_LISTS:
        members = sorted({";".join(p.strip() for p in m.lower().split(";")) for m in members if m})
    return ",".join(members)


def coding_acceptable(coding: str, accept_encoding: str | None) -> bool:
    """Whether a response with content-coding ``coding`` ("" for none) is
    acceptable to a request whose normalized Accept-Encoding is ``accept_encoding``
    (RFC 9110 §12.5.3): listed, or covered by ``*``, with a non-zero weight.

    A request without Accept-Encoding is taken to want the identity coding
    only: RFC 9110 would accept any coding, but clients that send none (curl
    without --compressed, scripts) cannot decode what they did not ask for.
    """
    if accept_encoding is None:
        return coding in ("", "identity")
    wanted = coding or "identity"
    star: float | None = None
    for member in accept_encoding.split(","):
        name, _, params = member.partition(";")
        weight = 1.0
        for param in params.split(";"):
            key, _, number = param.partition("=")
            if key.strip() == "q":
                try:
                    weight = float(number)
                except ValueError:
                    weight = 0.0
        name = name.strip()
        if name == wanted or (name == "x-gzip" and wanted == "gzip"):  # §8.4.1.3
            return weight > 0
        if name == "*":
            star = weight
    if star is not None:
        return star > 0
    # Identity is acceptable unless refused (by name, or by "*;q=0" above).
    return wanted == "identity"


def serves_by_coding(
    entry: CacheEntry, values: tuple[str | None, ...], accept_encoding_at: int
) -> bool:
    """Whether a stored variant may answer a request whose Vary values are
    ``values`` though their Accept-Encoding differs (RFC 9111 §4.1 lets a cache
    match fields by their semantics): every other Vary field matches, and the
    variant's content-coding is one the request accepts (RFC 9110 §12.5.3).
    Accept-Encoding only selects a coding, so any acceptable one is a correct
    answer; the exact variant is still preferred when it is stored."""
    stored = entry.vary_values
    for i, value in enumerate(values):
        if i != accept_encoding_at and stored[i] != value:
            return False
    return coding_acceptable(entry.coding, values[accept_encoding_at])


def variant_key(primary: str, generation: str, values: tuple[str | None, ...]) -> str:
    """Secondary cache key of one variant of ``primary``."""
    digest = hashlib.blake2b(repr(values).encode(), digest_size=12).hexdigest()
    return f"{primary}#v{generation}:{digest}"


def build_entry(
    *,
    url: str,
    status: int,
    headers: list[tuple[str, str]] | ResponseFields,
    body: bytes,
    request_headers: HeaderSource,
    request_time: float,
    response_time: float,
    fetch_seconds: float,
    config: CachePolicyConfig,
    warmed: bool = False,
    already_stored: bool = False,
    directives: ResponseDirectives | None = None,
) -> CacheEntry:
    """A storable response turned into an entry with every decision made.

    ``already_stored``: ``headers`` are a stored entry's (updated by a 304), so
    they are kept as they are instead of being relayed once more.
    ``directives``: the response's, when the caller has parsed them already.
    """
    fields = _indexed(headers)
    if directives is None:
        directives = response_directives(fields, config)
    response_cc = directives.cc
    date = parse_http_date(fields.value("date"))
    # RFC 9110 §6.6.1: a response without a (valid) Date is dated when received.
    effective_date = date if date is not None else response_time
    lifetime = freshness_lifetime(
        status=status,
        response_cc=response_cc,
        headers=fields,
        date=effective_date,
        config=config,
        ignore_expires=directives.targeted,
    )
    initial_age = corrected_initial_age(
        headers=fields, date=date, request_time=request_time, response_time=response_time
    )
    born = response_time - initial_age
    fresh_until = born + lifetime
    # §4.2.4: must-revalidate, proxy-revalidate and s-maxage (for a shared
    # cache) forbid serving stale; so does no-cache.
    must_revalidate = (
        "must-revalidate" in response_cc
        or "proxy-revalidate" in response_cc
        or "s-maxage" in response_cc
    )
    no_cache = "no-cache" in response_cc and not response_cc["no-cache"]
    may_serve_stale = not (must_revalidate or no_cache)
    swr = delta_seconds(response_cc.get("stale-while-revalidate")) if may_serve_stale else None
    sie = delta_seconds(response_cc.get("stale-if-error")) if may_serve_stale else None
    swr_until = fresh_until + (swr or 0)
    sie_until = fresh_until + (sie or 0)
    etag = fields.value("etag")
    last_modified = parse_http_date(fields.value("last-modified"))
    has_validators = etag is not None or last_modified is not None
    expires_at = max(fresh_until, swr_until, sie_until)
    if has_validators:
        expires_at += config.revalidation_retention_seconds
    names = vary_names(fields)
    return CacheEntry(
        url=url,
        status=status,
        headers=_stored_headers(
            fields, response_cc, response_time, None if already_stored else config.via
        ),
        body=body,
        born=born,
        stored_at=response_time,
        fresh_until=fresh_until,
        stale_while_revalidate_until=swr_until,
        stale_if_error_until=sie_until,
        expires_at=expires_at,
        etag=etag,
        last_modified=last_modified,
        vary=names,
        vary_values=request_vary_values(names, request_headers),
        must_revalidate=must_revalidate,
        no_cache=no_cache,
        shareable_with_auth=shareable_with_authorization(response_cc),
        fetch_seconds=fetch_seconds,
        warmed=warmed,
    )


def with_lifetime(entry: CacheEntry, ttl: float) -> CacheEntry:
    """``entry`` kept fresh for ``ttl`` seconds from when it was stored.

    The operator's per-source TTL for warmed entries (like a CDN's edge TTL)
    replaces the origin's freshness lifetime; the stale windows and the
    retention move with it.  Never applied to ``no-cache`` responses, which
    must be validated on every use whatever their lifetime (§5.2.2.4).
    """
    if entry.no_cache:
        return entry
    fresh_until = entry.stored_at + ttl
    shift = fresh_until - entry.fresh_until
    return replace(
        entry,
        fresh_until=fresh_until,
        stale_while_revalidate_until=entry.stale_while_revalidate_until + shift,
        stale_if_error_until=entry.stale_if_error_until + shift,
        expires_at=max(fresh_until, entry.expires_at + shift),
        head=None,
    )


def worth_storing(entry: CacheEntry, now: float) -> bool:
    """An entry that is already gone (stale, nothing to revalidate with) is not stored."""
    return entry.expires_at > now


# --------------------------------------------------------------------------
# Reusing (RFC 9111 §4)
# --------------------------------------------------------------------------


def request_directives(cache_control: list[str], pragma: list[str]) -> CacheControl:
    """Request directives; ``Pragma: no-cache`` counts only without Cache-Control (§5.4)."""
    directives = parse_cache_control(cache_control)
    if not cache_control and any("no-cache" in p.lower() for p in pragma):
        directives["no-cache"] = None
    return directives


def age_of(entry: CacheEntry, now: float) -> float:
    """Current age (RFC 9111 §4.2.3)."""
    return max(0.0, now - entry.born)


def fresh_enough(entry: CacheEntry, now: float, request_cc: CacheControl) -> bool:
    """May the entry answer this request without contacting the origin?

    Honors the request's max-age, min-fresh and max-stale (§5.2.1).
    """
    if entry.no_cache or "no-cache" in request_cc:
        return False
    age = age_of(entry, now)
    if "max-age" in request_cc:
        limit = delta_seconds(request_cc["max-age"])
        if limit is None or age > limit:
            return False
    remaining = entry.fresh_until - now
    if "min-fresh" in request_cc:
        min_fresh = delta_seconds(request_cc["min-fresh"])
        if min_fresh is not None and remaining < min_fresh:
            return False
    if remaining > 0:
        return True
    if "max-stale" in request_cc and not entry.must_revalidate:
        # §5.2.1.2: without an argument any staleness is accepted.
        max_stale = request_cc["max-stale"]
        if max_stale is None:
            return True
        limit = delta_seconds(max_stale)
        return limit is not None and -remaining <= limit
    return False


def may_serve_stale_while_revalidating(
    entry: CacheEntry, now: float, request_cc: CacheControl
) -> bool:
    """RFC 5861 §3: within the stale-while-revalidate window."""
    if "no-cache" in request_cc or "max-age" in request_cc or "min-fresh" in request_cc:
        return False
    return entry.fresh_until <= now < entry.stale_while_revalidate_until


def may_serve_stale_on_error(entry: CacheEntry, now: float, request_cc: CacheControl) -> bool:
    """RFC 5861 §4: the origin failed and the stale-if-error window allows it."""
    if entry.must_revalidate or entry.no_cache:
        return False
    limit = entry.stale_if_error_until
    if "stale-if-error" in request_cc:
        request_limit = delta_seconds(request_cc["stale-if-error"])
        if request_limit is not None:
            limit = max(limit, entry.fresh_until + request_limit)
    return now < limit


def vary_matches(entry: CacheEntry, request_headers: HeaderSource) -> bool:
    """§4.1: the stored request's Vary fields equal this request's."""
    if not entry.vary:
        return True
    return request_vary_values(entry.vary, request_headers) == entry.vary_values


def is_error_status(status: int) -> bool:
    """Origin answers that make stale-if-error apply (RFC 5861 §4)."""
    return status in (500, 502, 503, 504)


# --------------------------------------------------------------------------
# Validation (RFC 9111 §4.3, RFC 9110 §13)
# --------------------------------------------------------------------------


def _opaque_tag(tag: str) -> str:
    tag = tag.strip()
    return tag[2:] if tag.startswith("W/") else tag


def etag_matches_weak(if_none_match: str, etag: str | None) -> bool:
    """RFC 9110 §13.1.2: If-None-Match uses weak comparison."""
    if if_none_match.strip() == "*":
        return etag is not None
    if etag is None:
        return False
    ours = _opaque_tag(etag)
    return any(_opaque_tag(tag) == ours for tag in if_none_match.split(",") if tag.strip())


def client_condition_met(
    entry: CacheEntry, if_none_match: str | None, if_modified_since: str | None
) -> bool:
    """True when the client's conditional GET/HEAD is answered by a 304 (§4.3.2)."""
    if if_none_match is not None:
        # RFC 9110 §13.2.2: If-None-Match takes precedence over If-Modified-Since.
        return etag_matches_weak(if_none_match, entry.etag)
    if if_modified_since is not None:
        since = parse_http_date(if_modified_since)
        if since is None:
            return False
        # RFC 9111 §4.3.2: without Last-Modified, the stored response's Date.
        modified = entry.last_modified
        if modified is None:
            modified = parse_http_date(header_value(entry.headers, "date"))
        return modified is not None and modified <= since
    return False


def not_modified_headers(entry: CacheEntry) -> list[tuple[str, str]]:
    """The stored fields a 304 built from the entry carries (RFC 9110 §15.4.5)."""
    keep = {*FIELDS_IN_304, "last-modified", "via"}
    return [(k, v) for k, v in entry.headers if k.lower() in keep]


def revalidation_headers(entry: CacheEntry) -> dict[str, str]:
    """Validators for a conditional fill of ``entry`` (§4.3.1)."""
    headers: dict[str, str] = {}
    if entry.etag is not None:
        headers["If-None-Match"] = entry.etag
    last_modified = header_value(entry.headers, "last-modified")
    if last_modified is not None:
        headers["If-Modified-Since"] = last_modified
    return headers


def has_validators(entry: CacheEntry) -> bool:
    return entry.etag is not None or entry.last_modified is not None


def merge_not_modified(
    stored: list[tuple[str, str]], not_modified: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    """Stored headers updated with a 304's fields (RFC 9111 §3.2, §4.3.4)."""
    hop_by_hop = connection_named(not_modified)
    # §3.2: every field of the 304 replaces the stored one, except fields
    # never stored (hop-by-hop, Age, Content-Length) and our own Via.
    updates: dict[str, list[tuple[str, str]]] = {}
    for k, v in not_modified:
        lk = k.lower()
        if lk in NOT_STORED_FIELDS or lk in hop_by_hop or lk == "via":
            continue
        updates.setdefault(lk, []).append((k, v))
    merged = [(k, v) for k, v in stored if k.lower() not in updates]
    for fields in updates.values():
        merged.extend(fields)
    return merged


def not_modified_selects(entry: CacheEntry, not_modified: list[tuple[str, str]]) -> bool:
    """§4.3.4: a 304 with a strong ETag updates only a response with that ETag."""
    etag = header_value(not_modified, "etag")
    if etag is None or etag.startswith("W/"):
        return True
    return entry.etag is not None and _opaque_tag(entry.etag) == _opaque_tag(etag)


# --------------------------------------------------------------------------
# Ranges (RFC 9110 §14)
# --------------------------------------------------------------------------

UNSATISFIABLE = (-1, -1)
_BYTE_RANGE = re.compile(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*")


def parse_byte_range(value: str, length: int) -> tuple[int, int] | None:
    """The inclusive span of a single byte range (§14.1.2) within ``length``.

    None when the field is not one syntactically valid bytes range (the cache
    then ignores it and sends the whole response, §14.2); ``UNSATISFIABLE``
    when it does not overlap the representation (answered 416).
    """
    match = _BYTE_RANGE.fullmatch(value)
    if match is None:
        return None
    first_text, last_text = match.groups()
    if not first_text:
        if not last_text:
            return None
        suffix = int(last_text)
        if suffix == 0 or length == 0:
            return UNSATISFIABLE
        return max(0, length - suffix), length - 1
    first = int(first_text)
    last = int(last_text) if last_text else length - 1
    if last_text and last < first:
        return None
    if first >= length:
        return UNSATISFIABLE
    return first, min(last, length - 1)


def if_range_matches(entry: CacheEntry, if_range: str) -> bool:
    """§13.1.5: the stored response is still the one the client's range is about."""
    value = if_range.strip()
    if value.startswith('"') or value.startswith("W/"):
        # A strong comparison: weak tags never match.
        return (
            not value.startswith("W/")
            and entry.etag is not None
            and not entry.etag.startswith("W/")
            and entry.etag == value
        )
    since = parse_http_date(value)
    return since is not None and entry.last_modified == since


# --------------------------------------------------------------------------
# Invalidation (RFC 9111 §4.4)
# --------------------------------------------------------------------------


def invalidated_paths(
    *,
    request_path: str,
    status: int,
    response_headers: list[tuple[str, str]],
    authorities: tuple[str, ...],
) -> list[str]:
    """Paths an unsafe request's non-error response invalidates.

    ``authorities``: the host names that denote the target's own origin (the
    host the client asked for, and the origin's own authority).
    """
    if not 200 <= status < 400:
        return []
    paths = [request_path]
    for name in ("location", "content-location"):
        value = header_value(response_headers, name)
        if value:
            path = same_origin_path(value, authorities)
            if path is not None and path not in paths:
                paths.append(path)
    return paths


def same_origin_path(reference: str, authorities: tuple[str, ...]) -> str | None:
    """Path+query of ``reference`` when it names the target's origin, else None.

    §4.4: a cache MUST NOT invalidate URIs of another host (cache poisoning).
    """
    parts = urlsplit(reference)
    if parts.scheme or parts.netloc:
        if parts.netloc.lower() not in {a.lower() for a in authorities}:
            return None
    elif not reference.startswith("/"):
        return None
    path = parts.path or "/"
    return f"{path}?{parts.query}" if parts.query else path


# --------------------------------------------------------------------------
# Cache-Status (RFC 9211)
# --------------------------------------------------------------------------


def cache_status(
    *,
    hit: bool = False,
    fwd: str | None = None,
    fwd_status: int | None = None,
    ttl: float | None = None,
    stored: bool = False,
    collapsed: bool = False,
    detail: str | None = None,
    name: str = "warmproxy",
) -> str:
    """One Cache-Status member for this cache (RFC 9211 §2)."""
    parts = [name]
    if hit:
        parts.append("hit")
    if fwd is not None:
        parts.append(f"fwd={fwd}")
    if fwd_status is not None:
        parts.append(f"fwd-status={fwd_status}")
    if ttl is not None:
        parts.append(f"ttl={int(ttl)}")
    if stored:
        parts.append("stored")
    if collapsed:
        parts.append("collapsed")
    if detail is not None:
        parts.append(f'detail="{detail}"' if not detail.isalnum() else f"detail={detail}")
    return "; ".join(parts)
