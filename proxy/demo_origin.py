"""A built-in demo origin: a small shop whose responses carry realistic caching headers.

It exists so that warmproxy can be tried, demonstrated and tested end to end
without a real backend: every kind of response a shared cache has to get right
is here (fresh, revalidated, heuristically fresh, immutable, private, no-store,
Set-Cookie, Vary, slow, flaky, failing, large, short-lived, and unsafe methods
that should invalidate).  Content is derived from ``seed`` so two origins built
with the same seed serve the same bodies and ETags; the only state is per
application (product edits, per-path request counters) and lives under typed
``web.AppKey``s.

It compresses like a real app's server: text (HTML, JSON, CSS, JavaScript,
XML) is sent gzip-compressed (``Content-Encoding: gzip``) to a request that
accepts gzip (RFC 9110 §12.5.3) and as is to one that does not (curl without
``--compressed``), and every such response, 304s included, carries ``Vary:
Accept-Encoding`` (added to any Vary it has, e.g. ``/search``'s
``Accept-Language``).  So a shared cache in front keeps one variant per
``Accept-Encoding`` its clients send (RFC 9111 §4.1), as it would in front of
most production origins.  The gzip representation has its own strong ETag
(the identity one with ``-gzip`` inside the quotes), since it is another
representation (RFC 9110 §8.8.3).  Images and ``/big`` are not compressed.

Routes (all GET routes answer HEAD too):

========================  ==============================================================
``/``                     index linking to every page; ``max-age=30``, ETag
``/products/{1..200}``    HTML; ``public, max-age=60, stale-while-revalidate=30``,
                          strong ETag, Last-Modified, 304 on If-None-Match/-Modified-Since;
                          POST (204), PUT (200, JSON) bump the revision, DELETE (204)
                          removes the product until the next PUT
``/articles/{1..100}``    HTML; some ``public, max-age=300, s-maxage=600`` with ETag, the
                          others only Last-Modified, so heuristic freshness applies
``/static/app.css|js``    ``public, max-age=31536000, immutable``
``/static/img/{1..50}.png``  as above, real PNGs
``/api/prices``           JSON, ``no-cache`` with ETag, changes every 10 s
``/api/cart``             JSON, ``private``
``/api/session``          JSON, ``public, max-age=60`` but sets a cookie
``/account``              HTML, ``no-store``
``/search?q=``            HTML, ``public, max-age=120``, ``Vary: Accept-Language``
                          (and ``Accept-Encoding``, like every compressible response)
``/live/{1..100}``        HTML, ``public, max-age=5``, ETag; a score that changes every 5 s
``/slow/{n}``             sleeps ``n`` x 100 ms (at most 5 s), ``public, max-age=60``
``/flaky/{n}``            503 on one request in ``k`` (``k`` in 2..5, from ``n`` and the
                          seed); successes carry ``stale-if-error=600``
``/error/{400..599}``     that status, no caching headers
``/big/{mib}``            ``mib`` MiB (at most 64) streamed with Content-Length, ``max-age=60``
``/sitemap.xml``          every page above that a crawler would list
========================  ==============================================================
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import html
import json
import random
import struct
import time
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Final

from aiohttp import web
from multidict import CIMultiDict

from proxy import policy

PRODUCT_COUNT: Final = 200
ARTICLE_COUNT: Final = 100
IMAGE_COUNT: Final = 50
BIG_MAX_MIB: Final = 64
SLOW_STEP_SECONDS: Final = 0.1
SLOW_MAX_SECONDS: Final = 5.0
PRICES_PERIOD_SECONDS: Final = 10
FEATURED_PRICES: Final = 20

PRODUCT_CACHE_CONTROL: Final = "public, max-age=60, stale-while-revalidate=30"
ARTICLE_CACHE_CONTROL: Final = "public, max-age=300, s-maxage=600"
IMMUTABLE_CACHE_CONTROL: Final = "public, max-age=31536000, immutable"
FLAKY_CACHE_CONTROL: Final = "public, max-age=5, stale-if-error=600"
LIVE_CACHE_CONTROL: Final = "public, max-age=5"
LIVE_COUNT: Final = 100
LIVE_PERIOD_SECONDS: Final = 5
#: Media types sent gzip-compressed when the request accepts it, as a web
#: server's default list would have them (images and archives are compressed already).
COMPRESSIBLE_TYPES: Final = frozenset(
    {"text/html", "text/css", "text/javascript", "application/json", "application/xml"}
)

_MIB: Final = 1 << 20
_BIG_CHUNK: Final = 64 * 1024
_DAY: Final = 86400
_LANGUAGES: Final = ("en", "de", "fr")
_SEARCH_HEADINGS: Final = {"en": "Results for", "de": "Ergebnisse für", "fr": "Résultats pour"}
_ADJECTIVES: Final = (
    "amber", "brisk", "cobalt", "dusky", "ember", "frosted", "gilded", "hollow", "ivory",
    "jade", "keen", "lunar", "misty", "noble", "onyx", "plush", "quiet", "rustic", "solar",
    "tidal", "umber", "velvet", "woven", "zesty",
)  # fmt: skip
_NOUNS: Final = (
    "kettle", "lantern", "backpack", "notebook", "teapot", "blanket", "compass", "mug",
    "scarf", "candle", "skillet", "umbrella", "satchel", "clock", "planter", "headphones",
    "bicycle bell", "desk lamp", "water bottle", "chess set",
)  # fmt: skip
_SPECIAL_PAGES: Final = (
    "/api/prices", "/api/cart", "/api/session", "/account", "/search?q=lamp", "/search?q=tea",
    "/slow/5", "/slow/20", "/flaky/1", "/flaky/2", "/error/500", "/big/1", "/big/16",
    "/live/1", "/live/2", "/sitemap.xml",
)  # fmt: skip
_CATEGORIES: Final = ("kitchen", "outdoors", "office", "home", "travel", "audio")
_TOPICS: Final = (
    "caching", "coffee", "hiking", "typography", "latency", "gardening", "bicycles",
    "tea", "maps", "lighting", "sound", "travel",
)  # fmt: skip


@dataclass(slots=True)
class Product:
    """One catalogue entry; ``revision`` and ``modified`` move when it is edited."""

    id: int
    name: str
    category: str
    price_cents: int
    image: int
    related: tuple[int, ...]
    blurb: str
    modified: float
    revision: int = 0
    deleted: bool = False


@dataclass(frozen=True, slots=True)
class Article:
    """A blog post; ``explicit`` says whether it carries its own freshness lifetime."""

    id: int
    title: str
    modified: float
    explicit: bool
    products: tuple[int, ...]
    body: str


@dataclass(slots=True)
class DemoState:
    """Everything one demo origin serves, and its few counters."""

    seed: int
    # Last-Modified values sit before the UTC midnight of the day the app was
    # built: recent enough that heuristic freshness (a fraction of the age) is
    # short and varied, yet the same for every build on that day.
    anchor: float
    products: dict[int, Product]
    articles: dict[int, Article]
    images: dict[int, bytes]
    css: bytes
    js: bytes
    big_chunk: bytes
    flaky_counts: dict[int, int] = field(default_factory=dict)
    sessions_issued: int = 0


DEMO_STATE: Final = web.AppKey("warmproxy_demo_state", DemoState)


def build_demo_origin(*, seed: int = 7) -> web.Application:
    """Return the demo origin application; the same seed gives the same content."""
    app = web.Application()
    app[DEMO_STATE] = _build_state(seed, time.time())
    app.router.add_get("/", _index)
    app.router.add_get("/products/{n:\\d{1,6}}", _product)
    app.router.add_post("/products/{n:\\d{1,6}}", _product_post)
    app.router.add_put("/products/{n:\\d{1,6}}", _product_put)
    app.router.add_delete("/products/{n:\\d{1,6}}", _product_delete)
    app.router.add_get("/articles/{n:\\d{1,6}}", _article)
    app.router.add_get("/static/app.css", _css)
    app.router.add_get("/static/app.js", _js)
    app.router.add_get("/static/img/{n:\\d{1,6}}.png", _image)
    app.router.add_get("/api/prices", _prices)
    app.router.add_get("/api/cart", _cart)
    app.router.add_get("/api/session", _session)
    app.router.add_get("/account", _account)
    app.router.add_get("/search", _search)
    app.router.add_get("/slow/{n:\\d{1,6}}", _slow)
    app.router.add_get("/flaky/{n:\\d{1,6}}", _flaky)
    app.router.add_get("/error/{code:\\d{3}}", _error)
    app.router.add_get("/big/{mib:\\d{1,6}}", _big)
    app.router.add_get("/live/{n:\\d{1,6}}", _live)
    app.router.add_get("/sitemap.xml", _sitemap)
    return app


async def start_demo_origin(host: str, port: int, *, seed: int = 7) -> web.AppRunner:
    """Serve the demo origin on ``host:port``; ``await runner.cleanup()`` stops it."""
    runner = web.AppRunner(build_demo_origin(seed=seed))
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


# --- content ---------------------------------------------------------------------------


def _build_state(seed: int, now: float) -> DemoState:
    rng = random.Random(seed)
    anchor = float(int(now) // _DAY * _DAY)
    products: dict[int, Product] = {}
    for n in range(1, PRODUCT_COUNT + 1):
        products[n] = Product(
            id=n,
            name=f"{rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)}".title(),
            category=rng.choice(_CATEGORIES),
            price_cents=rng.randrange(299, 24999),
            image=rng.randrange(1, IMAGE_COUNT + 1),
            related=tuple(rng.sample(range(1, PRODUCT_COUNT + 1), 4)),
            blurb=_sentence(rng, 24),
            modified=anchor - rng.randrange(3600, 30 * _DAY),
        )
    articles: dict[int, Article] = {}
    for n in range(1, ARTICLE_COUNT + 1):
        articles[n] = Article(
            id=n,
            title=f"Notes on {rng.choice(_TOPICS)} #{n}",
            modified=anchor - rng.randrange(600, 7 * _DAY),
            explicit=rng.random() < 0.6,
            products=tuple(rng.sample(range(1, PRODUCT_COUNT + 1), 3)),
            body=" ".join(_sentence(rng, 40) for _ in range(rng.randrange(3, 9))),
        )
    images = {
        n: _png(rng.choice((16, 24, 32, 48)), (rng.randrange(256), rng.randrange(256), n * 5))
        for n in range(1, IMAGE_COUNT + 1)
    }
    css = "\n".join(
        f".c{i} {{ color: #{rng.randrange(1 << 24):06x}; margin: {i % 7}px; }}" for i in range(400)
    ).encode()
    js = "\n".join(
        f"function f{i}(x) {{ return x * {rng.randrange(1, 99)} + {i}; }}" for i in range(400)
    ).encode()
    return DemoState(
        seed=seed,
        anchor=anchor,
        products=products,
        articles=articles,
        images=images,
        css=css,
        js=js,
        big_chunk=rng.randbytes(_BIG_CHUNK),
    )


def _sentence(rng: random.Random, words: int) -> str:
    vocabulary = _ADJECTIVES + _NOUNS + _TOPICS
    return " ".join(rng.choice(vocabulary) for _ in range(words)).capitalize() + "."


def _png(size: int, rgb: tuple[int, int, int]) -> bytes:
    r, g, b = rgb
    raw = b"".join(
        b"\x00"
        + b"".join(bytes(((r + 4 * x) & 255, (g + 4 * y) & 255, b & 255)) for x in range(size))
        for y in range(size)
    )

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack("!I", len(data)) + tag + data + struct.pack("!I", zlib.crc32(tag + data))

    header = struct.pack("!IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def _page(title: str, body: str) -> bytes:
    return (
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
        f"<title>{html.escape(title)}</title>"
        '<link rel=stylesheet href="/static/app.css"><script src="/static/app.js" defer></script>'
        '</head><body><nav><a href="/">Home</a> <a href="/search?q=">Search</a> '
        '<a href="/account">Account</a></nav>'
        f"<h1>{html.escape(title)}</h1>{body}</body></html>\n"
    ).encode()


def _links(items: Iterable[tuple[str, str]]) -> str:
    return (
        "<ul>" + "".join(f'<li><a href="{u}">{html.escape(t)}</a></li>' for u, t in items) + "</ul>"
    )


def _product_body(p: Product, state: DemoState) -> bytes:
    related = _links((f"/products/{r}", state.products[r].name) for r in p.related)
    body = (
        f'<img src="/static/img/{p.image}.png" alt="">'
        f"<p class=price>€{p.price_cents / 100:.2f}</p><p>{html.escape(p.blurb)}</p>"
        f"<p>Category: {p.category}. Revision {p.revision}.</p><h2>Related</h2>{related}"
    )
    return _page(p.name, body)


def _strong_etag(body: bytes) -> str:
    return '"' + hashlib.blake2b(body, digest_size=10).hexdigest() + '"'


def _int(request: web.Request, name: str) -> int:
    return int(request.match_info[name])


# --- responses ---------------------------------------------------------------------------


def _not_modified(request: web.Request, etag: str | None, last_modified: float | None) -> bool:
    # RFC 9110 §13.2.2: If-None-Match, when present, decides alone; weak
    # comparison applies to it (§13.1.2).
    if_none_match = request.if_none_match
    if if_none_match is not None:
        if etag is None:
            return False
        current = etag.removeprefix("W/").strip('"')
        return any(tag.value in ("*", current) for tag in if_none_match)
    if_modified_since = request.if_modified_since
    if if_modified_since is None or last_modified is None:
        return False
    return int(last_modified) <= if_modified_since.timestamp()


def _respond(
    request: web.Request,
    body: bytes,
    *,
    content_type: str,
    cache_control: str | None,
    etag: str | None = None,
    last_modified: float | None = None,
    status: int = 200,
    extra: Mapping[str, str] | None = None,
) -> web.Response:
    headers: CIMultiDict[str] = CIMultiDict()
    if cache_control is not None:
        headers["Cache-Control"] = cache_control
    if last_modified is not None:
        headers["Last-Modified"] = formatdate(last_modified, usegmt=True)
    if extra:
        headers.update(extra)
    gzipped = False
    if content_type.partition(";")[0].strip() in COMPRESSIBLE_TYPES:
        # The answer depends on Accept-Encoding whichever coding this request
        # gets, so every representation says so (RFC 9110 §12.5.5).
        headers["Vary"] = merge_vary(headers.get("Vary"), "Accept-Encoding")
        gzipped = accepts_gzip(request.headers.get("Accept-Encoding"))
        if gzipped and etag is not None:
            # Another representation, so another strong validator (RFC 9110 §8.8.3).
            etag = etag[:-1] + '-gzip"'
    if etag is not None:
        headers["ETag"] = etag
    if status == 200 and _not_modified(request, etag, last_modified):
        # RFC 9110 §15.4.5: a 304 repeats the fields a 200 would have carried
        # for caching (Vary and ETag included), so a cache can refresh its
        # stored headers from it.
        return web.Response(status=304, headers=headers)
    headers["Content-Type"] = content_type
    if gzipped:
        headers["Content-Encoding"] = "gzip"
        body = _gzip(body)
    return web.Response(status=status, body=body, headers=headers)


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether a request's Accept-Encoding admits gzip (RFC 9110 §12.5.3):
    ``gzip`` or ``x-gzip`` with a q-value above 0, or failing those ``*``."""
    if accept_encoding is None:
        return False
    return policy.coding_acceptable("gzip", accept_encoding.lower())


def merge_vary(current: str | None, name: str) -> str:
    """``current`` Vary with ``name`` added unless it (or ``*``) is there already."""
    members = [m.strip() for m in (current or "").split(",") if m.strip()]
    if any(m == "*" or m.lower() == name.lower() for m in members):
        return ", ".join(members)
    return ", ".join([*members, name])


def _gzip(body: bytes) -> bytes:
    # mtime=0: the same body always compresses to the same bytes.
    return gzip.compress(body, compresslevel=6, mtime=0)


def _html(
    request: web.Request,
    body: bytes,
    cache_control: str,
    *,
    last_modified: float | None = None,
    extra: Mapping[str, str] | None = None,
) -> web.Response:
    return _respond(
        request,
        body,
        content_type="text/html; charset=utf-8",
        cache_control=cache_control,
        etag=_strong_etag(body),
        last_modified=last_modified,
        extra=extra,
    )


def _json(
    request: web.Request,
    payload: object,
    cache_control: str | None,
    *,
    etag: bool = False,
    extra: Mapping[str, str] | None = None,
) -> web.Response:
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    return _respond(
        request,
        body,
        content_type="application/json",
        cache_control=cache_control,
        etag=_strong_etag(body) if etag else None,
        extra=extra,
    )


# --- handlers ------------------------------------------------------------------------------


async def _index(request: web.Request) -> web.Response:
    state = request.app[DEMO_STATE]
    sections = [
        ("Products", _links((f"/products/{p.id}", p.name) for p in state.products.values())),
        ("Articles", _links((f"/articles/{a.id}", a.title) for a in state.articles.values())),
        (
            "Assets",
            _links(
                [("/static/app.css", "stylesheet"), ("/static/app.js", "script")]
                + [(f"/static/img/{n}.png", f"image {n}") for n in state.images]
            ),
        ),
        (
            "API and special pages",
            _links((u, u) for u in _SPECIAL_PAGES),
        ),
    ]
    body = "".join(f"<h2>{title}</h2>{links}" for title, links in sections)
    return _html(request, _page("Demo shop", body), "public, max-age=30")


def _live_product(request: web.Request) -> Product:
    product = request.app[DEMO_STATE].products.get(_int(request, "n"))
    if product is None or product.deleted:
        raise web.HTTPNotFound(text="no such product\n")
    return product


async def _product(request: web.Request) -> web.Response:
    product = _live_product(request)
    body = _product_body(product, request.app[DEMO_STATE])
    return _html(request, body, PRODUCT_CACHE_CONTROL, last_modified=product.modified)


def _edit(product: Product) -> None:
    product.revision += 1
    product.price_cents += 100
    # Whole seconds, so If-Modified-Since with the new Last-Modified matches.
    product.modified = max(float(int(time.time())), product.modified + 1)


async def _product_post(request: web.Request) -> web.Response:
    _edit(_live_product(request))
    return web.Response(status=204)


async def _product_put(request: web.Request) -> web.Response:
    product = request.app[DEMO_STATE].products.get(_int(request, "n"))
    if product is None:
        raise web.HTTPNotFound(text="no such product\n")
    product.deleted = False
    _edit(product)
    return _json(request, {"id": product.id, "revision": product.revision}, "no-store")


async def _product_delete(request: web.Request) -> web.Response:
    _live_product(request).deleted = True
    return web.Response(status=204)


async def _article(request: web.Request) -> web.Response:
    state = request.app[DEMO_STATE]
    article = state.articles.get(_int(request, "n"))
    if article is None:
        raise web.HTTPNotFound(text="no such article\n")
    mentioned = _links((f"/products/{n}", state.products[n].name) for n in article.products)
    body = _page(article.title, f"<p>{html.escape(article.body)}</p><h2>Mentioned</h2>{mentioned}")
    if article.explicit:
        return _html(request, body, ARTICLE_CACHE_CONTROL, last_modified=article.modified)
    return _respond(
        request,
        body,
        content_type="text/html; charset=utf-8",
        cache_control=None,
        last_modified=article.modified,
    )


def _asset(request: web.Request, body: bytes, content_type: str) -> web.Response:
    return _respond(
        request,
        body,
        content_type=content_type,
        cache_control=IMMUTABLE_CACHE_CONTROL,
        etag=_strong_etag(body),
        last_modified=request.app[DEMO_STATE].anchor - 90 * _DAY,
    )


async def _css(request: web.Request) -> web.Response:
    return _asset(request, request.app[DEMO_STATE].css, "text/css; charset=utf-8")


async def _js(request: web.Request) -> web.Response:
    return _asset(request, request.app[DEMO_STATE].js, "text/javascript; charset=utf-8")


async def _image(request: web.Request) -> web.Response:
    image = request.app[DEMO_STATE].images.get(_int(request, "n"))
    if image is None:
        raise web.HTTPNotFound(text="no such image\n")
    return _asset(request, image, "image/png")


async def _prices(request: web.Request) -> web.Response:
    state = request.app[DEMO_STATE]
    period = int(time.time()) // PRICES_PERIOD_SECONDS
    # A string seed hashes the same way in every process, unlike hash(tuple).
    rng = random.Random(f"{state.seed}:{period}")
    prices = {
        str(n): round(state.products[n].price_cents * rng.uniform(0.95, 1.05)) / 100
        for n in range(1, FEATURED_PRICES + 1)
    }
    payload = {"as_of": period * PRICES_PERIOD_SECONDS, "currency": "EUR", "prices": prices}
    return _json(request, payload, "no-cache", etag=True)


def _session_id(request: web.Request) -> str:
    return request.cookies.get("session", "anonymous")


async def _cart(request: web.Request) -> web.Response:
    state = request.app[DEMO_STATE]
    rng = random.Random(f"{state.seed}:cart:{_session_id(request)}")
    items = [
        {"product": n, "quantity": rng.randrange(1, 4)}
        for n in sorted(rng.sample(range(1, PRODUCT_COUNT + 1), rng.randrange(0, 5)))
    ]
    return _json(request, {"session": _session_id(request), "items": items}, "private, max-age=30")


async def _session(request: web.Request) -> web.Response:
    state = request.app[DEMO_STATE]
    state.sessions_issued += 1
    token = f"{state.seed}:{state.sessions_issued}".encode()
    session = hashlib.blake2b(token, digest_size=12).hexdigest()
    # Deliberately "public" next to Set-Cookie: a shared cache must not hand
    # one visitor's cookie to the next.
    return _json(
        request,
        {"session": session},
        "public, max-age=60",
        extra={"Set-Cookie": f"session={session}; Path=/; HttpOnly; SameSite=Lax"},
    )


async def _account(request: web.Request) -> web.Response:
    body = _page("Your account", f"<p>Signed in as {html.escape(_session_id(request))}.</p>")
    return _respond(
        request, body, content_type="text/html; charset=utf-8", cache_control="no-store"
    )


def _language(request: web.Request) -> str:
    for part in request.headers.get("Accept-Language", "").split(","):
        primary = part.split(";")[0].strip().lower()[:2]
        if primary in _LANGUAGES:
            return primary
    return "en"


async def _search(request: web.Request) -> web.Response:
    state = request.app[DEMO_STATE]
    query = request.query.get("q", "").strip()
    language = _language(request)
    needle = query.lower()
    found = [p for p in state.products.values() if needle and needle in p.name.lower()][:20]
    title = f"{_SEARCH_HEADINGS[language]} “{query}”"
    body = _page(title, _links((f"/products/{p.id}", p.name) for p in found))
    return _html(
        request,
        body,
        "public, max-age=120",
        extra={"Vary": "Accept-Language", "Content-Language": language},
    )


async def _slow(request: web.Request) -> web.Response:
    n = _int(request, "n")
    delay = min(n * SLOW_STEP_SECONDS, SLOW_MAX_SECONDS)
    await asyncio.sleep(delay)
    body = _page(f"Slow page {n}", f"<p>This page took {delay:.1f} s to make.</p>")
    return _html(request, body, "public, max-age=60")


async def _live(request: web.Request) -> web.Response:
    n = _int(request, "n")
    if not 1 <= n <= LIVE_COUNT:
        raise web.HTTPNotFound(text="no such live page\n")
    # A score that moves every period: short-lived, like a live ticker or a
    # match page, the kind of page refresh-ahead keeps warm.
    period = int(time.time()) // LIVE_PERIOD_SECONDS
    rng = random.Random(f"{request.app[DEMO_STATE].seed}:live:{n}:{period}")
    score = f"{rng.randrange(6)} : {rng.randrange(6)}"
    body = _page(f"Live match {n}", f"<p class=score>{score}</p><p>Updated every 5 s.</p>")
    return _html(request, body, LIVE_CACHE_CONTROL)


def flaky_period(seed: int, n: int) -> int:
    """How many requests to ``/flaky/{n}`` it takes to see exactly one 503."""
    return 2 + (n * 7 + seed) % 4


async def _flaky(request: web.Request) -> web.Response:
    state = request.app[DEMO_STATE]
    n = _int(request, "n")
    count = state.flaky_counts.get(n, 0) + 1
    state.flaky_counts[n] = count
    if count % flaky_period(state.seed, n) == 0:
        return web.Response(
            status=503,
            text="temporarily unavailable\n",
            headers={"Retry-After": "1", "Cache-Control": "no-store"},
        )
    body = _page(f"Flaky page {n}", "<p>This time it worked.</p>")
    return _html(request, body, FLAKY_CACHE_CONTROL)


async def _error(request: web.Request) -> web.Response:
    code = _int(request, "code")
    if not 400 <= code <= 599:
        raise web.HTTPNotFound(text="only 4xx and 5xx can be asked for\n")
    return web.Response(status=code, text=f"error {code}, as asked\n")


async def _big(request: web.Request) -> web.StreamResponse:
    state = request.app[DEMO_STATE]
    mib = min(_int(request, "mib"), BIG_MAX_MIB)
    etag = f'"big-{state.seed}-{mib}"'
    last_modified = state.anchor - _DAY
    headers: CIMultiDict[str] = CIMultiDict(
        {
            "Cache-Control": "public, max-age=60",
            "ETag": etag,
            "Last-Modified": formatdate(last_modified, usegmt=True),
        }
    )
    if _not_modified(request, etag, last_modified):
        return web.Response(status=304, headers=headers)
    headers["Content-Type"] = "application/octet-stream"
    response = web.StreamResponse(headers=headers)
    # Streamed rather than built in memory, yet with a length, so a proxy can
    # decide up front whether the body fits its store.
    response.content_length = mib * _MIB
    await response.prepare(request)
    if request.method != "HEAD":
        for _ in range(mib * _MIB // _BIG_CHUNK):
            await response.write(state.big_chunk)
    await response.write_eof()
    return response


async def _sitemap(request: web.Request) -> web.Response:
    state = request.app[DEMO_STATE]
    base = f"{request.scheme}://{request.host}"
    pages: list[tuple[str, float]] = [("/", state.anchor)]
    pages += [(f"/products/{p.id}", p.modified) for p in state.products.values() if not p.deleted]
    pages += [(f"/articles/{a.id}", a.modified) for a in state.articles.values()]
    entries = "".join(
        f"<url><loc>{html.escape(base + path)}</loc>"
        f"<lastmod>{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(modified))}</lastmod></url>\n"
        for path, modified in pages
    )
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">\n'
        f"{entries}</urlset>\n"
    ).encode()
    return _respond(
        request,
        body,
        content_type="application/xml",
        cache_control="public, max-age=300",
        etag=_strong_etag(body),
    )
