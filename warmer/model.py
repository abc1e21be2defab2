"""The warmer's vocabulary: what is asked to be warmed, and what a fill reports.

These are the only types the warmer shares with the proxy.  The proxy's
``AccessEvent`` is read through :class:`Observed`, a protocol it satisfies, so
the warmer never imports the proxy and the replay simulator can feed events of
its own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, Protocol

#: Priority names, highest first (``[execution] priority_levels``).
DEFAULT_PRIORITY_LEVELS: tuple[str, ...] = ("high", "medium", "low")

#: Request header fields a warm fetch sends to select one variant of a
#: response that varies (RFC 9111 §4.1): ``(lower-case name, value)`` pairs in
#: name order, values normalized as the cache's Vary index normalizes them.
#: Never ``Cookie`` or ``Authorization``: a warm fetch carries no credentials.
VariantHeaders = tuple[tuple[str, str], ...]

#: What tells warm requests apart (the queue de-duplicates by it): host, path
#: and query, and variant.
WarmIdentity = tuple[str, str, VariantHeaders]

#: Request fields a warm fetch never sends, whatever a stored Vary names.
NEVER_SENT_BY_WARM: frozenset[str] = frozenset({"cookie", "authorization", "proxy-authorization"})


class Reason(StrEnum):
    """Which strategy asked for a warm fetch (a metrics label and a status field)."""

    SCHEDULED = "scheduled"
    REACTIVE = "reactive"
    REFRESH_AHEAD = "refresh-ahead"
    ON_DEMAND = "on-demand"
    PREDICTIVE = "predictive"


@dataclass(frozen=True, slots=True)
class WarmRequest:
    """One path to fill ahead of demand."""

    url: str  # path and query on the origin, starting with "/"
    priority: str = "medium"
    reason: Reason = Reason.ON_DEMAND
    # The host clients ask for: part of the cache key with
    # proxy.host_keying = "per-host"; empty: the proxy's default host.
    host: str = ""
    # Freshness lifetime to store the warmed response with, overriding the
    # origin's (a source's ``ttl``); None keeps what RFC 9111 gives.
    ttl: float | None = None
    # Fetch even when a fresh entry is cached (refresh-ahead).
    refresh: bool = False
    # The scheduled source that asked for it (empty for other strategies):
    # the effectiveness ledger judges each source by whether its entries are used.
    source: str = ""
    # The variant to warm: the Vary'd request fields clients of the key send
    # (empty: the warmer's defaults are sent, see warmer.audience).
    headers: VariantHeaders = ()
    # Only look the cached entry up (which keeps it cached: the store marks
    # it used); never fetch, whether it is cached or not (warmer.retention).
    touch: bool = False

    @property
    def label(self) -> str:
        """What asked for it, as the ledger and the optimizer name it."""
        return f"scheduled:{self.source}" if self.source else self.reason.value

    @property
    def identity(self) -> WarmIdentity:
        """What de-duplicates requests: the same URL for the same host and variant."""
        return (self.host, self.url, self.headers)


@dataclass(frozen=True, slots=True)
class FillReport:
    """What one warm fill did, as the executor needs to know it."""

    status: int = 0  # origin status; 0 when no response came
    stored: bool = False
    already_fresh: bool = False  # nothing fetched: a fresh entry was cached
    gone: bool = False  # a touch found no fresh entry (nothing fetched)
    failure: str | None = None  # no response: the origin was unreachable or timed out
    not_stored: str | None = None  # why a response that came was not stored
    bytes: int = 0
    fresh_until: float = 0.0  # freshness end of what was stored (0: nothing)
    # The stored entry's Vary field names (lower-case) and the request's
    # normalized values of them: which variant the fill stored.
    vary: tuple[str, ...] = ()
    vary_values: tuple[str | None, ...] = ()
    # Its content-coding ("" none) when it varies on Accept-Encoding.
    coding: str = ""

    @property
    def retryable(self) -> bool:
        """Worth another try later: the origin failed, was overloaded or erred."""
        return self.failure is not None or self.status == 429 or self.status >= 500

    @property
    def ok(self) -> bool:
        """The entry is in the cache now."""
        return self.already_fresh or self.stored

    @property
    def error(self) -> str | None:
        """Why the entry is not in the cache (None when it is)."""
        if self.ok:
            return None
        if self.failure is not None:
            return self.failure
        if self.status and not 200 <= self.status < 300:
            return f"origin answered {self.status}"
        return f"not stored: {self.not_stored or 'not cacheable'}"


class Fill(Protocol):
    """The proxy's fill path as the executor calls it (DESIGN rule 1).

    ``admit`` is awaited just before the origin is asked (after the cache
    said the entry is not fresh), so the origin rate limit is spent only on
    real fetches.
    """

    async def __call__(
        self, request: WarmRequest, admit: Callable[[], Awaitable[None]]
    ) -> FillReport: ...


class Observed(Protocol):
    """The fields of an access event the warmer reads."""

    @property
    def ts(self) -> float: ...
    @property
    def key(self) -> str: ...
    @property
    def url(self) -> str: ...
    @property
    def host(self) -> str: ...
    @property
    def outcome(self) -> str: ...  # "hit", "miss", "stale", "revalidated", "bypass"
    @property
    def status(self) -> int: ...  # the status code the client got
    @property
    def bytes(self) -> int: ...  # body bytes sent to the client
    @property
    def client(self) -> str: ...
    @property
    def fresh_until(self) -> float: ...  # freshness end of the entry served/stored; 0 unknown
    @property
    def warmed(self) -> bool: ...  # the entry answering it was stored by a warm fetch
    @property
    def vary(self) -> tuple[str, ...]: ...  # Vary names of the entry served or stored
    @property
    def vary_values(self) -> tuple[str | None, ...]: ...  # this request's values of them
    @property
    def coding(self) -> str: ...  # the entry's content-coding, when it varies on Accept-Encoding


def variant_tag(vary: tuple[str, ...], vary_values: tuple[str | None, ...]) -> str:
    """A short, stable name of one variant, appended to a key where variants are
    told apart (the ledger); "" for a response that does not vary."""
    if not vary:
        return ""
    return "#" + "&".join(
        f"{name}={'' if value is None else value}"
        for name, value in zip(vary, vary_values, strict=True)
    )


#: What a touch reports (:attr:`WarmRequest.touch`): the entry was cached and
#: fresh, so it is kept; or there was nothing fresh to keep.  Nothing fetched.
TOUCH_KEPT: Final = FillReport(already_fresh=True)
TOUCH_GONE: Final = FillReport(gone=True)
