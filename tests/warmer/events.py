"""Access events for the warmer's tests: objects satisfying warmer.model.Observed."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Ev:
    """An access event named by its cache key (the URL defaults to the key)."""

    ts: float
    key: str
    outcome: str = "miss"
    fresh_until: float = 0.0
    warmed: bool = False
    url: str = ""
    host: str = "shop"
    client: str = "c1"
    vary: tuple[str, ...] = ()
    vary_values: tuple[str | None, ...] = ()
    coding: str = ""
    status: int = 200
    bytes: int = 0

    def __post_init__(self) -> None:
        self.url = self.url or self.key


@dataclass(frozen=True)
class HostEv:
    """An access event named by host and URL (the key is the two together)."""

    ts: float
    url: str
    outcome: str = "hit"
    host: str = "example.test"
    client: str = "10.0.0.1"
    fresh_until: float = 0.0
    warmed: bool = False
    vary: tuple[str, ...] = ()
    vary_values: tuple[str | None, ...] = ()
    coding: str = ""
    status: int = 200
    bytes: int = 0

    @property
    def key(self) -> str:
        return f"{self.host}{self.url}"
