"""Who asks for a key, and so what a warm fetch of it must look like.

A warmed entry pays only if the clients of its key hit it (DESIGN rule 4).
Two things decide that beyond the path:

- **the variant**: a response with ``Vary`` (RFC 9111 §4.1) is stored per set
  of request values of the fields it names.  A warm fetch without the
  browsers' ``Accept-Encoding`` stores the identity variant, which every
  browser then misses.  The audience counts, per key, the variants clients'
  requests were answered with (the ``vary``/``vary_values`` of their access
  events) and warms each variant that carries at least ``variant_min_share``
  of the key's requests, at most ``max_variants`` of them, most used first.
  Where the cache serves a request any stored variant of a coding it
  accepts (``cache.vary_accept_encoding = "coding"``), variants that differ
  only in ``Accept-Encoding`` and were answered in the same content-coding
  are one entry to it, so they are counted, and warmed, as one: a warm fetch
  per coding, not per browser's spelling of its ``Accept-Encoding``;
- **the host**, where keys include it (``proxy.host_keying = "per-host"``):
  each host that at least ``host_min_share`` of the path's *distinct
  clients* use, so one client sending thousands of made-up ``Host`` values
  counts once and cannot pull warm fetches to a host of its choosing.

Before a key has been seen, a warm fetch sends, for each field some stored
``Vary`` has named, the value most requests carried across all keys; with no
traffic at all, a browser's ``Accept-Encoding`` (:data:`BROWSER_DEFAULTS`).
``Cookie`` and ``Authorization`` are never sent: a variant that needs them
is not warmed.

Sans-I/O (DESIGN rule 2): events in, warm requests out; memory is bounded by
``max_keys`` keys, :data:`VARIANTS_KEPT` variants per key and
:data:`CLIENTS_KEPT` clients per host.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from warmer.model import NEVER_SENT_BY_WARM, Observed, VariantHeaders, WarmRequest

#: What a browser sends, normalized as the cache's Vary index normalizes it
#: (members lower-cased and sorted): the variant warmed before any traffic.
BROWSER_DEFAULTS: Final[VariantHeaders] = (("accept-encoding", "br,deflate,gzip"),)
#: Variants counted per key (the least used is replaced by a new one).
VARIANTS_KEPT: Final = 8
#: Distinct values counted per field across all keys.
VALUES_KEPT: Final = 32
#: Distinct clients counted per (path, host) and per host; enough to tell
#: shares apart, bounded against a flood of client ids.
CLIENTS_KEPT: Final = 256
#: Hosts counted per path.
HOSTS_KEPT: Final = 16
#: A key's variant counts are halved past this many requests, so the
#: variants warmed follow what clients send now.
DECAY_AT: Final = 1024

# A variant: the Vary names and this request's values of them.
Variant = tuple[tuple[str, ...], tuple[str | None, ...]]


def variant_class(variant: Variant, coding: str, *, match_coding: bool) -> object:
    """What one entry of the cache serves, for a request whose variant is
    ``variant`` (the Vary names of the entry that answered or stored it and
    this request's values of them) and that entry's content-coding
    ``coding``: the variant itself, or, where the cache matches
    Accept-Encoding by coding (``match_coding``), the variant with its
    Accept-Encoding value replaced by the coding that answered it.
    Requests that do not vary are all one."""
    names, values = variant
    if not match_coding or "accept-encoding" not in names:
        return variant
    at = names.index("accept-encoding")
    return (names, (*values[:at], _Coding(coding), *values[at + 1 :]))


def one_entry(
    vary: tuple[str, ...],
    values: tuple[str | None, ...],
    coding: str,
    other_vary: tuple[str, ...],
    other_values: tuple[str | None, ...],
    other_coding: str,
    *,
    match_coding: bool = True,
) -> bool:
    """Whether two requests' variants are one entry of the cache (of the
    same :func:`variant_class`)."""
    if values == other_values and vary == other_vary:
        return True
    return variant_class((vary, values), coding, match_coding=match_coding) == variant_class(
        (other_vary, other_values), other_coding, match_coding=match_coding
    )


@dataclass(frozen=True, slots=True)
class AudienceConfig:
    """How many variants and hosts of a key are kept warm."""

    variant_min_share: float = 0.1
    max_variants: int = 3
    host_min_share: float = 0.1
    max_hosts: int = 3
    #: Keys include the host (``proxy.host_keying = "per-host"``).
    per_host: bool = False
    #: The cache serves any stored variant whose content-coding a request
    #: accepts (``cache.vary_accept_encoding = "coding"``).
    match_coding: bool = True
    max_keys: int = 100_000

    def __post_init__(self) -> None:
        if not 0 < self.variant_min_share <= 1:
            raise ValueError("variant_min_share must be in (0, 1]")
        if not 0 < self.host_min_share <= 1:
            raise ValueError("host_min_share must be in (0, 1]")
        if self.max_variants < 1 or self.max_hosts < 1:
            raise ValueError("max_variants and max_hosts must be at least 1")


class _Counter:
    """Counts of a few values, bounded: a new value replaces the least counted."""

    __slots__ = ("counts", "limit", "total")

    def __init__(self, limit: int) -> None:
        self.counts: dict[object, int] = {}
        self.limit = limit
        self.total = 0

    def add(self, value: object) -> None:
        counts = self.counts
        counts[value] = counts.get(value, 0) + 1
        self.total += 1
        if len(counts) > self.limit:
            del counts[min(counts, key=counts.__getitem__)]

    def halve(self) -> None:
        self.counts = {v: c // 2 for v, c in self.counts.items() if c > 1}
        self.total = sum(self.counts.values())

    def top(self, min_share: float, most: int) -> list[object]:
        """Values with at least ``min_share`` of the total, most counted first."""
        if not self.total:
            return []
        floor = min_share * self.total
        ranked = sorted(self.counts.items(), key=lambda vc: -vc[1])
        return [v for v, c in ranked if c >= floor][:most]


class _Distinct:
    """Distinct clients per name, each set bounded to :data:`CLIENTS_KEPT`."""

    __slots__ = ("clients", "limit")

    def __init__(self, limit: int) -> None:
        self.clients: dict[str, set[str]] = {}
        self.limit = limit

    def add(self, name: str, client: str) -> None:
        seen = self.clients.get(name)
        if seen is None:
            if len(self.clients) >= self.limit:
                # Forget the name with the fewest clients: made-up names,
                # each used by one client, go first.
                del self.clients[min(self.clients, key=lambda n: len(self.clients[n]))]
            seen = self.clients[name] = set()
        if len(seen) < CLIENTS_KEPT:
            seen.add(client)

    def top(self, min_share: float, most: int) -> list[str]:
        """Names used by at least ``min_share`` of the distinct clients counted."""
        counts = {name: len(seen) for name, seen in self.clients.items()}
        total = sum(counts.values())
        if not total:
            return []
        ranked = sorted(counts.items(), key=lambda nc: (-nc[1], nc[0]))
        return [n for n, c in ranked if c >= min_share * total][:most]


class Audience:
    """Learns what clients of each key send; turns a warm request into the
    warm requests that land where those clients look."""

    def __init__(
        self,
        config: AudienceConfig | None = None,
        *,
        key_of: Callable[[str, str], str] = lambda url, host: url,
    ) -> None:
        self.config = config or AudienceConfig()
        self._key_of = key_of  # (url, host) -> cache key, as the proxy keys it
        self._variants: OrderedDict[str, _Counter] = OrderedDict()
        # key -> variant class -> the variant last seen in it: what to send
        self._exemplars: dict[str, dict[object, Variant]] = {}
        # field name -> counts of the values requests carried, across keys
        self._values: dict[str, _Counter] = {}
        self._defaults: VariantHeaders = BROWSER_DEFAULTS
        self._defaults_stale = False
        # per-host keying only: path -> hosts by distinct clients, and overall
        self._path_hosts: OrderedDict[str, _Distinct] = OrderedDict()
        self._hosts = _Distinct(HOSTS_KEPT * 4)

    # ---------------------------------------------------------- observing

    def observe(self, event: Observed) -> None:
        """Count the variant and (per-host keying) the host of a client's request."""
        vary = event.vary
        if vary:
            self._count_variant(event.key, (vary, event.vary_values), event.coding)
        if self.config.per_host and event.host:
            self._count_host(event.url, event.host, event.client)

    def _count_variant(self, key: str, variant: Variant, coding: str) -> None:
        counters = self._variants
        counter = counters.get(key)
        if counter is None:
            counter = counters[key] = _Counter(VARIANTS_KEPT)
            exemplars = self._exemplars[key] = {}
            if len(counters) > self.config.max_keys:
                gone, _ = counters.popitem(last=False)
                del self._exemplars[gone]
        else:
            counters.move_to_end(key)
            exemplars = self._exemplars[key]
        kind = self._variant_class(variant, coding)
        counter.add(kind)
        exemplars[kind] = variant
        if counter.total >= DECAY_AT:
            counter.halve()
        if len(exemplars) > len(counter.counts):
            for dropped in [k for k in exemplars if k not in counter.counts]:
                del exemplars[dropped]
        names, values = variant
        for name, value in zip(names, values, strict=True):
            field = self._values.get(name)
            if field is None:
                field = self._values[name] = _Counter(VALUES_KEPT)
            field.add(value)
            if field.total >= 64 * DECAY_AT:
                field.halve()
        self._defaults_stale = True

    def _variant_class(self, variant: Variant, coding: str) -> object:
        """What one entry serves: the variant itself, or, where the cache matches
        Accept-Encoding by coding, the variant with its Accept-Encoding value
        replaced by the coding that answered it (:func:`variant_class`)."""
        return variant_class(variant, coding, match_coding=self.config.match_coding)

    def _count_host(self, url: str, host: str, client: str) -> None:
        paths = self._path_hosts
        hosts = paths.get(url)
        if hosts is None:
            hosts = paths[url] = _Distinct(HOSTS_KEPT)
            if len(paths) > self.config.max_keys:
                paths.popitem(last=False)
        else:
            paths.move_to_end(url)
        hosts.add(host, client)
        self._hosts.add(host, client)

    # ------------------------------------------------------------ deciding

    def default_headers(self) -> VariantHeaders:
        """What a warm fetch of a key never seen sends: for each field a stored
        Vary named, the value most requests carried (absent: not sent); with
        no such traffic, a browser's Accept-Encoding."""
        if self._defaults_stale:
            self._defaults_stale = False
            chosen: dict[str, str | None] = dict(BROWSER_DEFAULTS)
            for name, counter in self._values.items():
                if name in NEVER_SENT_BY_WARM:
                    continue
                top = counter.top(0.0, 1)
                if top:
                    chosen[name] = top[0]  # type: ignore[assignment]
            self._defaults = tuple(sorted((n, v) for n, v in chosen.items() if v is not None))
        return self._defaults

    def variants(self, key: str) -> list[VariantHeaders]:
        """The header sets to warm ``key`` with: its clients' variants that carry
        enough of its requests, or the defaults for a key never seen varying."""
        counter = self._variants.get(key)
        if counter is not None:
            chosen: list[VariantHeaders] = []
            c = self.config
            exemplars = self._exemplars[key]
            for kind in counter.top(c.variant_min_share, VARIANTS_KEPT):
                headers = _as_headers(exemplars[kind])
                if headers is not None and headers not in chosen:
                    chosen.append(headers)
                    if len(chosen) == c.max_variants:
                        break
            if chosen:
                return chosen
        return [self.default_headers()]

    def hosts(self, url: str) -> list[str]:
        """Hosts to warm ``url`` for (per-host keying): those enough of its
        distinct clients, and of all distinct clients, use; else the host most
        clients use; "" (the proxy's default host) before any traffic."""
        if not self.config.per_host:
            return [""]
        c = self.config
        # Only hosts enough of all distinct clients use qualify: a path only
        # one client asked for under a made-up host is warmed for the host
        # everyone else uses, not for that one.
        used = self._hosts.top(c.host_min_share, HOSTS_KEPT)
        known = self._path_hosts.get(url)
        found = known.top(c.host_min_share, c.max_hosts) if known is not None else []
        found = [host for host in found if host in used]
        return found or used[:1] or [""]

    def expand(self, requests: Iterable[WarmRequest]) -> list[WarmRequest]:
        """Each request as the warm requests that land where its clients look:
        one per host (when it names none) and variant (when it names none)."""
        out: list[WarmRequest] = []
        for request in requests:
            hosts = [request.host] if request.host else self.hosts(request.url)
            for host in hosts:
                if request.headers:
                    out.append(
                        request if host == request.host else _with(request, host, request.headers)
                    )
                    continue
                key = self._key_of(request.url, host)
                for headers in self.variants(key):
                    out.append(_with(request, host, headers))
        return out

    def describe(self) -> dict[str, object]:
        """What the audience knows, for the status report."""
        return {
            "keys_with_variants": len(self._variants),
            "default_headers": dict(self.default_headers()),
            "hosts": self._hosts.top(self.config.host_min_share, self.config.max_hosts)
            if self.config.per_host
            else [],
        }


def _as_headers(variant: Variant) -> VariantHeaders | None:
    """The request fields that select ``variant``; None if a warm fetch cannot
    send them (the variant needs a cookie or credentials)."""
    names, values = variant
    headers = []
    for name, value in zip(names, values, strict=True):
        if value is None:
            continue  # the field was absent: send nothing
        if name in NEVER_SENT_BY_WARM:
            return None
        headers.append((name, _by_preference(value) if name in _WEIGHTED_LISTS else value))
    return tuple(sorted(headers))


class _Coding(str):
    """A content-coding standing for every Accept-Encoding value answered with
    it (never equal to a real value: a variant class, not a variant)."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Coding) and str.__eq__(self, other)

    def __hash__(self) -> int:
        return hash(("coding", str(self)))


# Fields whose members carry q-values (RFC 9110 §12.4.2).  The cache compares
# them as unordered sets, so the values counted are sorted; an origin that
# takes the first member as the preferred one must see them by weight again.
_WEIGHTED_LISTS: Final = frozenset({"accept-encoding", "accept-language", "accept-charset"})


def _by_preference(value: str) -> str:
    """The members of a q-valued list, highest weight first (stable among equals)."""
    members = [m for m in value.split(",") if m]

    def weight(member: str) -> float:
        for param in member.split(";")[1:]:
            name, _, number = param.partition("=")
            if name.strip() == "q":
                try:
                    return float(number)
                except ValueError:
                    return 0.0
        return 1.0

    return ",".join(sorted(members, key=lambda m: -weight(m)))


def _with(request: WarmRequest, host: str, headers: VariantHeaders) -> WarmRequest:
    """``request`` for ``host`` and ``headers``: itself when it already is (a
    strategy reuses its requests), else a copy (written out: this runs for
    every warm request, and ``dataclasses.replace`` costs four times more)."""
    if request.host == host and request.headers == headers:
        return request
    return WarmRequest(
        url=request.url,
        priority=request.priority,
        reason=request.reason,
        host=host,
        ttl=request.ttl,
        refresh=request.refresh,
        source=request.source,
        headers=headers,
        touch=request.touch,
    )
