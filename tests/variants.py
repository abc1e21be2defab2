"""Browser-like clients and an origin that varies its answers like a real app.

Almost every origin that compresses answers with ``Vary: Accept-Encoding``
(and a localized one adds ``Accept-Language``), and every browser sends both
fields, each with its own values.  A warmed entry only pays off when it is the
variant those clients select (RFC 9111 §4.1), so tests of warming use these
header sets instead of a bare HTTP client's defaults.

- :data:`CHROME`, :data:`FIREFOX`, :data:`SAFARI`, :data:`CURL`,
  :data:`PYTHON_REQUESTS`: the request headers of those clients, with
  :meth:`UserAgent.request_kwargs` to send them with aiohttp and
  :meth:`UserAgent.variant` for the variant a warm fetch must ask for;
- :class:`VaryingOrigin`: a real server on a loopback port answering any GET
  like a compressing app (``Cache-Control: max-age=300``, ``Vary:
  Accept-Encoding, Accept-Language``, gzip when accepted, ``Content-Language``
  from the preferred language), counting and recording every request;
  ``/assets/...`` vary on ``Accept-Encoding`` only, like static files.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from proxy import policy

#: The Vary of a localized page, and of a static asset.
PAGE_VARY = "Accept-Encoding, Accept-Language"
ASSET_VARY = "Accept-Encoding"
ASSET_PREFIX = "/assets/"
PAGE_VARY_NAMES = ("accept-encoding", "accept-language")
ASSET_VARY_NAMES = ("accept-encoding",)

_HTML_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,"


@dataclass(frozen=True)
class UserAgent:
    """One kind of client, as its requests look on the wire."""

    name: str
    headers: Mapping[str, str]

    def request_kwargs(self) -> dict[str, Any]:
        """aiohttp request arguments sending exactly these headers: aiohttp's
        own defaults (its Accept-Encoding above all) are left out where the
        client sends no such field."""
        return {
            "headers": dict(self.headers),
            "skip_auto_headers": [
                name for name in ("Accept-Encoding", "Accept", "User-Agent") if name not in self
            ],
        }

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and any(k.lower() == name.lower() for k in self.headers)

    def variant(self, names: tuple[str, ...] = PAGE_VARY_NAMES) -> tuple[tuple[str, str], ...]:
        """The variant these headers select among responses varying on
        ``names``, as a warm request names it: ``(name, normalized value)``
        pairs in name order, absent fields left out."""
        values = policy.request_vary_values(names, CIMultiDictProxy(CIMultiDict(self.headers)))
        return tuple(sorted((n, v) for n, v in zip(names, values, strict=True) if v is not None))


CHROME = UserAgent(
    "chrome",
    {
        "User-Agent": (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
            "(KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36"
        ),
        "Accept": _HTML_ACCEPT + "image/avif,image/webp,image/apng,*/*;q=0.8,"
        "application/signed-exchange;v=b3;q=0.7",
        "Accept-Encoding": "gzip, deflate, br, zstd",
        "Accept-Language": "en-US,en;q=0.9",
    },
)
FIREFOX = UserAgent(
    "firefox",
    {
        "User-Agent": "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        "Accept": _HTML_ACCEPT + "image/avif,image/webp,image/png,image/svg+xml,*/*;q=0.8",
        "Accept-Encoding": "gzip, deflate, br, zstd",
        "Accept-Language": "en-US,en;q=0.5",
    },
)
SAFARI = UserAgent(
    "safari",
    {
        "User-Agent": (
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 "
            "(KHTML, like Gecko) Version/17.5 Safari/605.1.15"
        ),
        "Accept": _HTML_ACCEPT + "*/*;q=0.8",
        "Accept-Encoding": "gzip, deflate, br",
        "Accept-Language": "en-GB,en;q=0.9",
    },
)
CURL = UserAgent("curl", {"User-Agent": "curl/8.8.0", "Accept": "*/*"})
PYTHON_REQUESTS = UserAgent(
    "python-requests",
    {"User-Agent": "python-requests/2.32.3", "Accept": "*/*", "Accept-Encoding": "gzip, deflate"},
)

BROWSERS = (CHROME, FIREFOX, SAFARI)
CLIENTS = (*BROWSERS, CURL, PYTHON_REQUESTS)


@dataclass(frozen=True)
class Answer:
    """A response as the client got it, its body decoded as the client would."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    @property
    def cache_status(self) -> str:
        return self.headers.get("Cache-Status", "")

    @property
    def hit(self) -> bool:
        """Answered from the cache (RFC 9211 ``hit``)."""
        return self.cache_status.split(";")[1:2] == [" hit"]


async def fetch(session: aiohttp.ClientSession, url: str, agent: UserAgent) -> Answer:
    """GET ``url`` as ``agent`` does; the body decoded from its Content-Encoding."""
    async with session.get(url, **agent.request_kwargs()) as response:
        body = await response.read()
        if response.headers.get("Content-Encoding", "").lower() == "gzip":
            body = gzip.decompress(body)
        return Answer(response.status, response.headers, body)


# -- the origin ----------------------------------------------------------------------


def accepts_gzip(accept_encoding: str | None) -> bool:
    """RFC 9110 §12.5.3: gzip (or ``*``) listed with a q-value above 0."""
    for member in (accept_encoding or "").split(","):
        coding, *params = (part.strip().lower() for part in member.split(";"))
        if coding in ("gzip", "x-gzip", "*") and _q(params) > 0:
            return True
    return False


def preferred_language(accept_language: str | None) -> str:
    """RFC 9110 §12.5.4: the range with the highest q-value, the first among
    equals, in its canonical case (``en-US``); ``en`` when none is given."""
    best, best_q = "en", -1.0
    for member in (accept_language or "").split(","):
        tag, *params = (part.strip() for part in member.split(";"))
        q = _q([p.lower() for p in params])
        if tag and tag != "*" and q > best_q:
            best, best_q = tag, q
    primary, _, region = best.partition("-")
    return f"{primary.lower()}-{region.upper()}" if region else primary.lower()


def _q(params: list[str]) -> float:
    for param in params:
        if param.startswith("q="):
            try:
                return float(param[2:])
            except ValueError:
                return 0.0
    return 1.0


def render(path: str, language: str | None) -> bytes:
    """The page an app renders for ``path`` in ``language`` (None: an asset)."""
    if language is None:
        return f"/* {path} */\n".encode() + b"body { margin: 0 }\n" * 64
    paragraph = f"<p>{path} in {language}</p>\n".encode()
    return f'<!doctype html><html lang="{language}">\n'.encode() + paragraph * 64


@dataclass
class Request:
    """One request the origin got."""

    method: str
    path: str
    headers: CIMultiDictProxy[str]

    @property
    def warm(self) -> bool:
        """Made by the warmer (it marks its fetches)."""
        return "X-Warmproxy-Warm" in self.headers


@dataclass
class VaryingOrigin:
    """An origin answering like a compressing, localized web app."""

    url: str = ""
    seen: list[Request] = field(default_factory=list)
    # Freshness lifetime of every answer, and per path where a test shortens it.
    max_age: int = 300
    max_ages: dict[str, int] = field(default_factory=dict)
    # Seconds the answer to a path takes, where a test needs fetches in flight.
    delays: dict[str, float] = field(default_factory=dict)
    _runner: web.ServerRunner | None = None

    async def start(self) -> None:
        self._runner = web.ServerRunner(web.Server(self._answer))
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _answer(self, request: web.BaseRequest) -> web.StreamResponse:
        self.seen.append(Request(request.method, request.path_qs, request.headers))
        if request.method not in ("GET", "HEAD"):
            return web.Response(status=405, headers={"Allow": "GET, HEAD"})
        delay = self.delays.get(request.path)
        if delay:
            await asyncio.sleep(delay)
        asset = request.path.startswith(ASSET_PREFIX)
        language = None if asset else preferred_language(request.headers.get("Accept-Language"))
        body = render(request.path, language)
        headers = {
            "Cache-Control": f"max-age={self.max_ages.get(request.path, self.max_age)}",
            "Vary": ASSET_VARY if asset else PAGE_VARY,
            "Content-Type": "text/css" if asset else "text/html; charset=utf-8",
        }
        if language is not None:
            headers["Content-Language"] = language
        if accepts_gzip(request.headers.get("Accept-Encoding")):
            body = gzip.compress(body, mtime=0)
            headers["Content-Encoding"] = "gzip"
        return web.Response(body=body, headers=headers)

    def count(self, path: str | None = None, *, warm: bool | None = None) -> int:
        """Requests for ``path`` (all paths when None); only warm or client ones with ``warm``."""
        return sum(
            1
            for r in self.seen
            if (path is None or r.path == path) and (warm is None or r.warm == warm)
        )

    def last(self, path: str, *, warm: bool | None = None) -> Request:
        """The latest request for ``path`` (of the kind ``warm`` names)."""
        return [r for r in self.seen if r.path == path and (warm is None or r.warm == warm)][-1]
