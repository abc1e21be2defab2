"""Header rewriting of a reverse proxy (RFC 9110 §7.6): what crosses, what is added."""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from multidict import CIMultiDictProxy

from proxy.policy import CONDITIONAL_REQUEST_FIELDS, HOP_BY_HOP, connection_named

# Client-supplied forwarding fields: replaced by ours unless the peer is a
# trusted proxy, so one client cannot make the origin build links (that the
# cache then shares with everyone) from a host name of its choosing.
FORWARDING_FIELDS = frozenset(
    {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded"}
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


@dataclass(frozen=True, slots=True)
class ForwardingRules:
    """How requests are rewritten for the origin, and how they are keyed in the cache.

    The origin may build links from the host it is told (``X-Forwarded-Host``,
    or ``Host`` with ``preserve_host``).  Whatever host it is told is part of
    the cache key, so no client can make a shared entry carry a host of its
    choosing.  With ``public_host`` configured the origin is always told that
    one host, and the path and query alone are the key.
    """

    origin_authority: str
    preserve_host: bool
    trusted_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    via: str
    public_host: str = ""
    warm_header: str = "X-Warmproxy-Warm"

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
    ) -> ForwardingRules:
        return cls(
            origin_authority=origin_authority,
            preserve_host=preserve_host,
            trusted_networks=tuple(ipaddress.ip_network(t, strict=False) for t in trusted),
            via=via,
            public_host=public_host,
            warm_header=warm_header,
        )

    @property
    def single_host(self) -> bool:
        """The origin is told one host whatever the client sends: keys are paths."""
        return bool(self.public_host) and not self.preserve_host and not self.trusted_networks

    def forwarded_host(self, headers: CIMultiDictProxy[str], peer: str | None) -> str:
        """The host the origin is told the client asked for, normalized.

        Raises BadHost when the client's (or a trusted proxy's) value is not a
        host[:port]; the request is then refused.
        """
        if self.trusted_networks and self.is_trusted(peer):
            prior = headers.get("X-Forwarded-Host")
            if prior:
                return normalize_host(prior.split(",")[0])
        if self.public_host and not self.preserve_host:
            return self.public_host
        host = headers.get("Host")
        return normalize_host(host) if host else (self.public_host or self.origin_authority)

    def cache_key(self, path_qs: str, host: str) -> str:
        """The cache key of a request for ``path_qs`` told to the origin as ``host``."""
        if self.single_host:
            return path_qs
        return f"//{normalize_host(host)}{path_qs}"

    def key_of(self, headers: CIMultiDictProxy[str], peer: str | None, path_qs: str) -> str:
        """The cache key of a client's request (BadHost for an unusable host)."""
        if self.single_host:
            return path_qs
        return f"//{self.forwarded_host(headers, peer)}{path_qs}"

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
        scheme: str,
        for_fill: bool,
    ) -> list[tuple[str, str]]:
        """Headers to send to the origin for a client's request.

        ``for_fill`` drops the client's conditional and range fields: the
        cache asks for the full response and evaluates those itself.
        """
        trusted = self.is_trusted(peer)
        warm_header = self.warm_header.lower()
        forwarded: list[tuple[str, str]] = []
        prior_for: list[str] = []
        prior_proto: str | None = None
        for k, v in end_to_end(headers.items()):
            lk = k.lower()
            if lk in FORWARDING_FIELDS:
                if trusted:
                    if lk == "x-forwarded-for":
                        prior_for.append(v)
                    elif lk == "x-forwarded-proto":
                        prior_proto = v
                    elif lk == "forwarded":
                        forwarded.append((k, v))
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
        chain = [*prior_for, peer] if peer else prior_for
        if chain:
            forwarded.append(("X-Forwarded-For", ", ".join(chain)))
        forwarded.append(("X-Forwarded-Proto", prior_proto or scheme))
        forwarded.append(("X-Forwarded-Host", self.forwarded_host(headers, peer)))
        vias = headers.getall("Via", [])
        forwarded.append(("Via", ", ".join([*vias, self.via])))
        host = headers.get("Host", self.origin_authority)
        forwarded.append(("Host", host if self.preserve_host else self.origin_authority))
        return forwarded

    def warm_request_headers(self, host: str) -> list[tuple[str, str]]:
        """Headers of a fetch the warmer makes for ``host``: marked so the origin can tell."""
        return [
            ("Host", host if self.preserve_host else self.origin_authority),
            ("X-Forwarded-Host", host),
            ("Via", self.via),
            (self.warm_header, "1"),
        ]

    @property
    def default_host(self) -> str:
        """The host warm fetches are made for when none is named."""
        return self.public_host or self.origin_authority
