"""Header rewriting of a reverse proxy (RFC 9110 §7.6): what crosses, what is added."""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

from multidict import CIMultiDictProxy

from proxy.cache_key import NO_RULES, KeyRules
from proxy.policy import CONDITIONAL_REQUEST_FIELDS, HOP_BY_HOP, connection_named

if TYPE_CHECKING:  # proxy.config imports this module
    from proxy.config import Settings

# Forwarding fields (RFC 7239 and its X- forerunners) this proxy sets itself:
# a client's are replaced by ours unless the peer is a trusted proxy, so one
# client cannot make the origin build links (that the cache then shares with
# everyone) from a host name or scheme of its choosing.
_OWN_FIELDS = frozenset({"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded"})

# The client's address under other names (nginx's X-Real-IP, CDNs' True-Client-IP,
# ...): passed on from a trusted proxy, as its X-Forwarded-For chain is (the
# address of the client, not a part of the URL); dropped from anyone else, who
# could name any address.
CLIENT_ADDRESS_FIELDS = frozenset(
    {
        "x-real-ip",
        "x-client-ip",
        "true-client-ip",
        "client-ip",
        "x-cluster-client-ip",
        "cf-connecting-ip",
        "fastly-client-ip",
        "x-original-forwarded-for",
        "forwarded-for",
        "x-forwarded",
    }
)

# Parts of the public URL under names other than X-Forwarded-Proto/-Host.
# Frameworks build links and redirects from them when a trusted proxy sends
# them (Werkzeug's ProxyFix x_port/x_prefix, Spring's ForwardedHeaderFilter,
# Symfony's trusted headers), and no cache key carries them: never passed on,
# not even a trusted proxy's.  The origin learns the scheme from our
# X-Forwarded-Proto and the host (with any port) from Host / X-Forwarded-Host.
PUBLIC_URL_FIELDS = frozenset(
    {
        "x-forwarded-port",
        "x-forwarded-prefix",
        "x-forwarded-scheme",
        "x-forwarded-protocol",
        "x-forwarded-server",
        "x-forwarded-ssl",
        "front-end-https",
        "x-url-scheme",
        "x-scheme",
    }
)

# Every forwarding field a client's request may carry: none reaches the origin
# as the client sent it, and a warm fetch never copies one from a variant.
FORWARDING_FIELDS = _OWN_FIELDS | CLIENT_ADDRESS_FIELDS | PUBLIC_URL_FIELDS

# Request fields that make common origins answer a different resource or
# method (IIS/Symfony URL rewriting, method overrides, alternative host
# fields) while the cache keys the request by its own method, target and host:
# dropped by default (``proxy.drop_request_headers``), from every peer.
DEFAULT_DROPPED_REQUEST_FIELDS = (
    "X-Original-URL",
    "X-Rewrite-URL",
    "X-HTTP-Method-Override",
    "X-HTTP-Method",
    "X-Method-Override",
    "X-Host",
    "X-Original-Host",
    "X-Forwarded-Path",
)


PRESERVE_HOST_NEEDS_PER_HOST = (
    'preserve_host = true needs host_keying = "per-host": with "single" keying the '
    "cache key leaves out the Host the origin would be told, so one client could put "
    'a host of its choosing into entries shared by all; set proxy.host_keying = "per-host" '
    "(the client's host becomes part of the key) or proxy.preserve_host = false"
)


class BadHost(ValueError):
    """A Host (or trusted X-Forwarded-Host) that is not a host[:port]."""


_HOST_NAME = re.compile(
    r"[a-z0-9_](?:[a-z0-9_\-]*[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_\-]*[a-z0-9_])?)*"
)
_IP_LITERAL = re.compile(r"\[[0-9a-f:.]+\]")


@functools.lru_cache(maxsize=1024)
def normalize_host(value: str) -> str:
    """``value`` as one canonical host[:port], or BadHost.

    Hosts enter cache keys, so anything that is not a host name or address
    (a "/" or "?" could make two URLs share a key) is refused, and spellings
    of one host (case, a trailing dot, a default port) are made one.
    """
    host = value.strip().lower()
    if host.endswith("]") or ":" not in host:
        name, port = host, ""
    else:
        name, _, port = host.rpartition(":")
        if not port.isdigit() or len(port) > 5:
            raise BadHost(value)
    name = name.removesuffix(".")
    if not (_HOST_NAME.fullmatch(name) or _IP_LITERAL.fullmatch(name)):
        raise BadHost(value)
    return name if port in ("", "80", "443") else f"{name}:{port}"


def end_to_end(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """``headers`` without hop-by-hop fields and the fields Connection names."""
    items = list(headers)
    drop = HOP_BY_HOP | connection_named(items)
    return [(k, v) for k, v in items if k.lower() not in drop]


HostKeying = Literal["single", "per-host"]
Scheme = Literal["http", "https"]


def field_key(name: str) -> str:
    """``name`` as CGI-style servers see it: the same key for ``X_Forwarded_Host``
    and ``X-Forwarded-Host``.

    CGI, WSGI, PHP and Rack servers map both spellings to one
    ``HTTP_X_FORWARDED_HOST`` variable (RFC 3875 §4.1.18), so a field dropped
    under one spelling must be dropped under every one.
    """
    return name.lower().replace("_", "-")


def _path_only(path_qs: str, host: str) -> str:
    return path_qs


@dataclass(frozen=True, slots=True)
class ForwardingRules:
    """How requests are rewritten for the origin, and how they are keyed in the cache.

    The one owner of cache keys: the handler (hit and full path), the
    Filler's warm fetches, invalidations and the warmer all key through it.

    The origin may build links from what it is told about the client's host
    (``Host``, ``X-Forwarded-Host``, ``Forwarded``), so each of those is
    either part of the cache key or the same for every request; never both
    varying and unkeyed, or one client could make a shared entry carry a
    host of its choosing (cache poisoning).

    ``host_keying = "single"`` (a sidecar in front of one site): keys are the
    path and query; the origin is told its own authority in ``Host`` and
    ``public_host`` (if set) in ``X-Forwarded-Host``, whatever the client
    sent.  ``"per-host"`` (an origin serving several hosts): keys are
    ``//host/path`` with the host the origin is told (the client's, a
    trusted proxy's ``X-Forwarded-Host``, or ``public_host``).

    The scheme is treated alike, as one value for every entry: the origin is
    told ``public_scheme`` in ``X-Forwarded-Proto`` (fills and warm fetches
    always; a trusted proxy that says the same, too).  A trusted proxy that
    says another scheme has its value passed on, but that request neither
    reads nor fills the cache (:meth:`scheme_bypasses_cache`).  This is
    simpler than keying by scheme (keys, warm targets and purges stay
    scheme-less) and as correct: no shared entry is built from a scheme other
    than the one all are built from.  Other public-URL fields and the drop
    list never reach the origin.

    ``cache_key(path_qs, host)``: the key of a request for ``path_qs`` told to
    the origin as ``host`` (ignored when keys are paths), with the
    ``[cache]`` query rules applied.  It is a function chosen once here, so
    the hit path pays for neither the keying mode nor unconfigured rules.
    """

    origin_authority: str
    preserve_host: bool
    trusted_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    via: str
    public_host: str = ""
    warm_header: str = "X-Warmproxy-Warm"
    host_keying: HostKeying = "single"
    key_rules: KeyRules = NO_RULES
    public_scheme: Scheme = "http"
    # field_key() spellings of the request fields never sent to the origin.
    dropped_fields: frozenset[str] = frozenset(
        field_key(name) for name in DEFAULT_DROPPED_REQUEST_FIELDS
    )
    keys_are_paths: bool = field(init=False)
    cache_key: Callable[[str, str], str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.preserve_host and self.host_keying == "single":
            raise ValueError(PRESERVE_HOST_NEEDS_PER_HOST)
        # Per-host keying with only public_host ever told to the origin is
        # single-host in effect: the host would be the same in every key.
        paths = self.host_keying == "single" or (
            bool(self.public_host) and not self.preserve_host and not self.trusted_networks
        )
        normalize = self.key_rules.normalizer
        key: Callable[[str, str], str]
        if paths and not self.key_rules.active:
            key = _path_only
        elif paths:

            def key(path_qs: str, host: str) -> str:
                return normalize(path_qs)

        else:

            def key(path_qs: str, host: str) -> str:
                return f"//{normalize_host(host)}{normalize(path_qs)}"

        object.__setattr__(self, "keys_are_paths", paths)
        object.__setattr__(self, "cache_key", key)

    @classmethod
    def build(
        cls,
        *,
        origin_authority: str,
        preserve_host: bool,
        trusted: list[str],
        via: str,
        public_host: str = "",
        warm_header: str = "X-Warmproxy-Warm",
        host_keying: HostKeying = "single",
        key_rules: KeyRules = NO_RULES,
        public_scheme: Scheme = "http",
        drop_request_headers: Iterable[str] = DEFAULT_DROPPED_REQUEST_FIELDS,
    ) -> ForwardingRules:
        return cls(
            origin_authority=origin_authority,
            preserve_host=preserve_host,
            trusted_networks=tuple(ipaddress.ip_network(t, strict=False) for t in trusted),
            via=via,
            public_host=public_host,
            warm_header=warm_header,
            host_keying=host_keying,
            key_rules=key_rules,
            public_scheme=public_scheme,
            dropped_fields=frozenset(field_key(name) for name in drop_request_headers),
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> ForwardingRules:
        """The rules ``settings`` configure: the proxy's, and those ``import-log``
        keys a log with, so both key alike."""
        proxy = settings.proxy
        return cls.build(
            origin_authority=urlsplit(proxy.origin).netloc,
            preserve_host=proxy.preserve_host,
            public_host=proxy.public_host,
            trusted=proxy.trusted_proxies,
            via=f"1.1 {proxy.via_name}",
            warm_header=settings.execution.warm_header,
            host_keying=proxy.host_keying,
            key_rules=KeyRules.from_settings(settings.cache),
            public_scheme=proxy.public_scheme,
            drop_request_headers=proxy.drop_request_headers,
        )

    def with_key_rules(self, key_rules: KeyRules) -> ForwardingRules:
        """These rules with other ``[cache]`` query rules (a reload)."""
        return replace(self, key_rules=key_rules)

    @property
    def keying(self) -> str:
        """How keys are made, in words (what ``warm --standalone`` reports)."""
        if self.host_keying == "single":
            return "path only (proxy.host_keying = single)"
        if self.keys_are_paths:
            return (
                "path only (proxy.host_keying = per-host, but proxy.public_host "
                f"{self.public_host} is the only host the origin is told)"
            )
        return f"per host, warming for host {normalize_host(self.default_host)}"

    def forwarded_host(self, headers: CIMultiDictProxy[str], peer: str | None) -> str:
        """The host the origin is told the client asked for, normalized.

        With single keying: ``public_host``, else the origin's authority,
        whatever the client sent.  Per host, raises BadHost when the client's
        (or a trusted proxy's) value is not a host[:port]; the request is
        then refused.
        """
        if self.host_keying == "single":
            return self.default_host
        if self.trusted_networks and self.is_trusted(peer):
            prior = headers.get("X-Forwarded-Host")
            if prior:
                return normalize_host(prior.split(",")[0])
        if self.public_host and not self.preserve_host:
            return self.public_host
        host = headers.get("Host")
        return normalize_host(host) if host else self.default_host

    def own_authorities(self, headers: CIMultiDictProxy[str], peer: str | None) -> tuple[str, ...]:
        """Authorities that name the requested site, for RFC 9111 §4.4's
        same-origin check of Location / Content-Location after unsafe methods.

        With keys as paths every name a client uses for the proxy is this one
        site, so the client's own Host counts too (``localhost`` and
        ``127.0.0.1`` share entries).
        """
        told = self.forwarded_host(headers, peer)
        if not self.keys_are_paths:
            return (told, self.origin_authority)
        try:
            asked = normalize_host(headers.get("Host", ""))
        except BadHost:
            return (told, self.origin_authority)
        return (told, self.origin_authority, asked)

    def key_of(self, headers: CIMultiDictProxy[str], peer: str | None, path_qs: str) -> str:
        """The cache key of a client's request (BadHost for an unusable host)."""
        if self.keys_are_paths:
            return self.cache_key(path_qs, "")
        return self.cache_key(path_qs, self.forwarded_host(headers, peer))

    def scheme_bypasses_cache(self, headers: CIMultiDictProxy[str], peer: str | None) -> bool:
        """Whether a trusted proxy told a scheme other than ``public_scheme``.

        Such a request is forwarded with that scheme but neither answered
        from nor stored in the cache: every entry is built from
        ``public_scheme`` (an origin redirecting http to https would
        otherwise put its redirect into the entry https clients are served).
        """
        if not self.trusted_networks:
            return False
        told = headers.getall("X-Forwarded-Proto", ())
        if not told:
            return False
        return ", ".join(told).strip().lower() != self.public_scheme and self.is_trusted(peer)

    def is_trusted(self, peer: str | None) -> bool:
        if peer is None or not self.trusted_networks:
            return False
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(address in network for network in self.trusted_networks)

    def request_headers(
        self,
        headers: CIMultiDictProxy[str],
        *,
        peer: str | None,
        for_fill: bool,
    ) -> list[tuple[str, str]]:
        """Headers to send to the origin for a client's request.

        ``for_fill`` drops the client's conditional and range fields: the
        cache asks for the full response and evaluates those itself.  A fill
        builds a shared entry, so it always tells ``public_scheme``.
        """
        trusted = self.is_trusted(peer)
        warm_header = self.warm_header.lower()
        dropped = self.dropped_fields
        forwarded: list[tuple[str, str]] = []
        prior_for: list[str] = []
        prior_forwarded_for: list[str] = []
        prior_proto: list[str] = []
        for k, v in end_to_end(headers.items()):
            lk = k.lower()
            name = field_key(lk)
            if name in FORWARDING_FIELDS:
                # Only the plain spelling of a trusted proxy's field counts:
                # X_Forwarded_For is no field any proxy sets.
                if trusted and name == lk:
                    if lk == "x-forwarded-for":
                        prior_for.append(v)
                    elif lk == "x-forwarded-proto":
                        prior_proto.append(v)
                    elif lk == "forwarded":
                        # Not passed on: its host= is not in the key.  Its
                        # for= chain continues in X-Forwarded-For.
                        prior_forwarded_for.extend(forwarded_for(v))
                    elif lk in CLIENT_ADDRESS_FIELDS:
                        forwarded.append((k, v))
                continue
            if name in dropped:
                continue
            if lk == warm_header:
                continue  # only the warmer's own fetches carry it: clients cannot forge it
            if lk in ("host", "via", "expect"):
                # Host and Via are set below; Expect is answered by this proxy
                # (RFC 9110 §10.1.1).
                continue
            if for_fill and (lk in CONDITIONAL_REQUEST_FIELDS or lk == "content-length"):
                # A fill is a plain GET: no body (RFC 9110 §9.3.1 gives GET
                # content no meaning), no client validators.
                continue
            forwarded.append((k, v))
        prior = prior_for or prior_forwarded_for
        chain = [*prior, peer] if peer else prior
        if chain:
            forwarded.append(("X-Forwarded-For", ", ".join(chain)))
        # A trusted proxy's other scheme reaches the origin only on requests
        # that bypass the cache (scheme_bypasses_cache); a fill is told
        # public_scheme whatever was sent, so no entry is built from another.
        told = ", ".join(prior_proto) if prior_proto and not for_fill else self.public_scheme
        forwarded.append(("X-Forwarded-Proto", told))
        if self.host_keying == "single":
            # The origin hears what it would if called directly (plus the
            # configured public name): the same for every request.
            if self.public_host:
                forwarded.append(("X-Forwarded-Host", self.public_host))
        else:
            forwarded.append(("X-Forwarded-Host", self.forwarded_host(headers, peer)))
        vias = headers.getall("Via", [])
        forwarded.append(("Via", ", ".join([*vias, self.via])))
        host = headers.get("Host", self.origin_authority)
        forwarded.append(("Host", host if self.preserve_host else self.origin_authority))
        return forwarded

    def warm_request_headers(self, host: str) -> list[tuple[str, str]]:
        """Headers of a fetch the warmer makes for ``host``: marked so the origin can tell.

        The origin is told what it is told for a client of ``host`` (with
        single keying: what it is told for every client).
        """
        headers = [
            ("Host", host if self.preserve_host else self.origin_authority),
            ("X-Forwarded-Proto", self.public_scheme),
        ]
        if self.host_keying == "per-host":
            headers.append(("X-Forwarded-Host", host))
        elif self.public_host:
            headers.append(("X-Forwarded-Host", self.public_host))
        headers.append(("Via", self.via))
        headers.append((self.warm_header, "1"))
        return headers

    @property
    def default_host(self) -> str:
        """The host warm fetches are made for when none is named."""
        return self.public_host or self.origin_authority


def forwarded_for(value: str) -> list[str]:
    """The ``for=`` values of a ``Forwarded`` field (RFC 7239 §4), in order, unquoted."""
    found = []
    for element in value.split(","):
        for pair in element.split(";"):
            name, sep, node = pair.strip().partition("=")
            if sep and name.strip().lower() == "for":
                node = node.strip()
                if len(node) >= 2 and node[0] == node[-1] == '"':
                    node = node[1:-1].replace('\\"', '"')
                if node:
                    found.append(node)
    return found
