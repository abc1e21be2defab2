"""Warming sources against real things: an HTTP origin, SQLite files, PostgreSQL."""

from __future__ import annotations

import asyncio
import gzip
import os
import sqlite3
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from warmer.sources import (
    FileSource,
    HotKeysSource,
    SitemapSource,
    Source,
    SourceError,
    SourcePath,
    SqlSource,
    StaticSource,
)

MakeServer = Callable[[web.Application], Awaitable[TestServer]]


def urls(paths: list[SourcePath]) -> list[str]:
    assert [p.rank for p in paths] == list(range(len(paths)))
    return [p.url for p in paths]


# --- static, hot keys, file -------------------------------------------------------------


async def test_static_source_keeps_order_and_drops_duplicates() -> None:
    source: Source = StaticSource("home", ["/", "/b", "/a", "/b"])
    assert urls(await source.paths()) == ["/", "/b", "/a"]
    assert source.name == "home"


@pytest.mark.parametrize("bad", ["products", "//evil.example/x", "https://evil.example/", "/a b"])
def test_static_source_refuses_what_is_not_a_path(bad: str) -> None:
    with pytest.raises(ValueError, match="not a path"):
        StaticSource("s", ["/ok", bad])


async def test_hot_keys_source_asks_for_top_n() -> None:
    asked: list[int] = []

    def top(n: int) -> list[str]:
        asked.append(n)
        return ["/hot", "/warm", "//evil.example/x", "/cool"]

    source = HotKeysSource("hot", top, 3)
    assert urls(await source.paths()) == ["/hot", "/warm"]
    assert asked == [3]
    with pytest.raises(ValueError, match="n must be at least 1"):
        HotKeysSource("hot", top, 0)


async def test_file_source(tmp_path: Path) -> None:
    file = tmp_path / "paths.txt"
    file.write_text(
        "# pages to keep warm\n"
        "/\n"
        "\n"
        "   /products/1   \n"
        "  # indented comment\n"
        "/search?q=shoes&page=2\n"
        "/products/1\n",
        encoding="utf-8",
    )
    source = FileSource("pages", file)
    assert urls(await source.paths()) == ["/", "/products/1", "/search?q=shoes&page=2"]
    # Read on every run: an edit shows up in the next one.
    file.write_text("/new\n", encoding="utf-8")
    assert urls(await source.paths()) == ["/new"]


async def test_file_source_missing_file(tmp_path: Path) -> None:
    source = FileSource("pages", tmp_path / "nope.txt")
    with pytest.raises(SourceError, match=r"source 'pages': file .*nope\.txt' not found"):
        await source.paths()


async def test_file_source_names_a_bad_line(tmp_path: Path) -> None:
    file = tmp_path / "paths.txt"
    file.write_text("/ok\n# fine\nhttps://evil.example/x\n", encoding="utf-8")
    with pytest.raises(SourceError, match=r"source 'pages': .* line 3 is not a path") as info:
        await FileSource("pages", file).paths()
    assert "evil" not in str(info.value)  # the line is named, its content never quoted


# --- sitemaps on a real origin ----------------------------------------------------------


def urlset(*entries: str) -> bytes:
    body = "".join(entries)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{body}</urlset>'
    ).encode()


def url(loc: str, priority: float | None = None, lastmod: str | None = None) -> str:
    extra = f"<priority>{priority}</priority>" if priority is not None else ""
    extra += f"<lastmod>{lastmod}</lastmod>" if lastmod else ""
    return f"<url><loc>{loc}</loc>{extra}</url>"


def index(*locs: str) -> bytes:
    body = "".join(f"<sitemap><loc>{loc}</loc></sitemap>" for loc in locs)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{body}</sitemapindex>'
    ).encode()


class SitemapOrigin:
    """A real HTTP origin serving documents by path and logging what it was asked."""

    def __init__(self, server: TestServer, documents: dict[str, bytes]) -> None:
        self.server = server
        self.documents = documents
        self.requested: list[str] = []
        self.session: aiohttp.ClientSession | None = None

    @property
    def authority(self) -> str:
        return f"{self.server.host}:{self.server.port}"

    @property
    def base(self) -> str:
        return f"http://{self.authority}"

    async def fetch(self, path: str) -> bytes:
        """What the proxy wires ``fetch`` to: GET on the origin, body or an error."""
        assert path.startswith("/") and not path.startswith("//")
        assert self.session is not None
        async with self.session.get(self.server.make_url(path)) as response:
            response.raise_for_status()
            return await response.read()


@pytest.fixture
async def sitemap_origin(aiohttp_server: MakeServer) -> AsyncIterator[SitemapOrigin]:
    documents: dict[str, bytes] = {}
    holder: list[SitemapOrigin] = []

    async def serve(request: web.Request) -> web.Response:
        holder[0].requested.append(request.path_qs)
        body = documents.get(request.path_qs)
        if body is None:
            raise web.HTTPNotFound()
        # Gzipped sitemaps are files (sitemap.xml.gz), not a Content-Encoding.
        content_type = "application/gzip" if body[:2] == b"\x1f\x8b" else "application/xml"
        return web.Response(body=body, content_type=content_type)

    app = web.Application()
    app.router.add_get("/{tail:.*}", serve)
    server = await aiohttp_server(app)
    holder.append(SitemapOrigin(server, documents))
    async with aiohttp.ClientSession() as session:
        holder[0].session = session
        yield holder[0]


async def test_sitemap_index_with_plain_and_gzipped_children(sitemap_origin: SitemapOrigin) -> None:
    base = sitemap_origin.base
    sitemap_origin.documents.update(
        {
            "/sitemap.xml": index(
                f"{base}/sitemaps/products.xml",
                f"{base}/sitemaps/articles.xml.gz",
                "http://evil.example/sitemap.xml",  # another host: never fetched
                f"{base}/sitemap.xml",  # itself: no loop
                "/sitemaps/products.xml",  # the same child again, relative
            ),
            "/sitemaps/products.xml": urlset(
                url(f"{base}/products/1", priority=0.8, lastmod="2024-05-01"),
                url(f"{base}/products/2", priority=0.8, lastmod="2024-05-03"),
                url("http://evil.example/steal?token=1", priority=1.0),
                url("https://shop.example/products/3?ref=sitemap#top"),  # the public host
                url("https://shop.example:8443/other-port"),
                url("http://user:pw@shop.example/creds"),
                url("ftp://shop.example/file"),
                url("relative/path"),
            ),
            "/sitemaps/articles.xml.gz": gzip.compress(
                urlset(
                    url(f"{base}/articles/9", priority=0.3),
                    url("/articles/1", priority=0.9),
                    url(f"{base}/products/1", priority=0.1),  # listed twice
                )
            ),
        }
    )
    source = SitemapSource(
        "sitemap",
        "/sitemap.xml",
        sitemap_origin.fetch,
        allowed_hosts=[sitemap_origin.authority, "shop.example"],
    )
    got = urls(await source.paths())
    assert got == [
        "/articles/1",  # priority 0.9
        "/products/2",  # 0.8, newer
        "/products/1",  # 0.8, older
        "/products/3?ref=sitemap",  # default 0.5
        "/articles/9",  # 0.3
    ]
    assert sorted(sitemap_origin.requested) == [
        "/sitemap.xml",
        "/sitemaps/articles.xml.gz",
        "/sitemaps/products.xml",
    ]
    # evil sitemap + evil page + other port + credentials + ftp + relative
    assert source.skipped == 6
    assert source.errors == []


async def test_plain_urlset_with_relative_locs(sitemap_origin: SitemapOrigin) -> None:
    sitemap_origin.documents["/sitemap.xml"] = urlset(url("/a"), url("/b?x=1"), url("/a"))
    source = SitemapSource("s", "/sitemap.xml", sitemap_origin.fetch)
    assert urls(await source.paths()) == ["/a", "/b?x=1"]
    assert source.skipped == 0


async def test_default_port_may_be_left_out_of_allowed_hosts(sitemap_origin: SitemapOrigin) -> None:
    sitemap_origin.documents["/sitemap.xml"] = urlset(
        url("https://shop.example:443/a"),
        url("http://shop.example/b"),
        url("http://shop.example:81/c"),
    )
    source = SitemapSource(
        "s", "/sitemap.xml", sitemap_origin.fetch, allowed_hosts=["SHOP.example"]
    )
    assert urls(await source.paths()) == ["/a", "/b"]
    assert source.skipped == 1


async def test_missing_top_sitemap_fails_naming_the_source(sitemap_origin: SitemapOrigin) -> None:
    source = SitemapSource("catalog", "/sitemap.xml", sitemap_origin.fetch)
    with pytest.raises(SourceError, match=r"source 'catalog': sitemap '/sitemap.xml': .*404"):
        await source.paths()


async def test_malformed_top_sitemap_fails_naming_the_source(sitemap_origin: SitemapOrigin) -> None:
    sitemap_origin.documents["/sitemap.xml"] = b"<urlset><url>"
    source = SitemapSource("catalog", "/sitemap.xml", sitemap_origin.fetch)
    with pytest.raises(SourceError, match=r"source 'catalog': .*malformed sitemap XML"):
        await source.paths()


async def test_a_failing_child_sitemap_leaves_the_others(sitemap_origin: SitemapOrigin) -> None:
    sitemap_origin.documents["/sitemap.xml"] = index("/gone.xml", "/broken.xml", "/ok.xml")
    sitemap_origin.documents["/broken.xml"] = b"<html>oops</html>"
    sitemap_origin.documents["/ok.xml"] = urlset(url("/page"))
    source = SitemapSource("s", "/sitemap.xml", sitemap_origin.fetch)
    assert urls(await source.paths()) == ["/page"]
    assert len(source.errors) == 2
    assert "'/gone.xml'" in source.errors[0] and "404" in source.errors[0]
    assert "'/broken.xml'" in source.errors[1] and "<html>" in source.errors[1]


async def test_sitemaps_are_bounded(sitemap_origin: SitemapOrigin) -> None:
    # An index of indexes that never ends: each level points one deeper.
    for depth in range(20):
        sitemap_origin.documents[f"/level{depth}.xml"] = index(
            f"/level{depth + 1}.xml", f"/leaf{depth}.xml"
        )
        sitemap_origin.documents[f"/leaf{depth}.xml"] = urlset(url(f"/page{depth}"))
    source = SitemapSource("s", "/level0.xml", sitemap_origin.fetch, max_sitemaps=5)
    got = urls(await source.paths())
    assert len(sitemap_origin.requested) == 5
    assert got == ["/page0", "/page1"]  # level0, level1, leaf0, level2, leaf1
    assert "max_sitemaps=5" in source.errors[-1]


async def test_max_urls_keeps_the_most_important(sitemap_origin: SitemapOrigin) -> None:
    sitemap_origin.documents["/sitemap.xml"] = index("/one.xml", "/two.xml")
    sitemap_origin.documents["/one.xml"] = urlset(
        *(url(f"/low{i}", priority=0.1) for i in range(10))
    )
    sitemap_origin.documents["/two.xml"] = urlset(
        url("/high", priority=1.0), *(url(f"/mid{i}") for i in range(10))
    )
    source = SitemapSource("s", "/sitemap.xml", sitemap_origin.fetch, max_urls=3)
    assert urls(await source.paths()) == ["/high", "/mid0", "/mid1"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sitemap_path": "https://evil.example/sitemap.xml"}, "not a path"),
        ({"max_urls": 0}, "max_urls"),
        ({"max_sitemaps": 0}, "max_sitemaps"),
    ],
)
def test_sitemap_source_validates_at_construction(kwargs: dict[str, Any], message: str) -> None:
    async def fetch(path: str) -> bytes:
        raise AssertionError("not called")

    args: dict[str, Any] = {"sitemap_path": "/sitemap.xml", "fetch": fetch, **kwargs}
    with pytest.raises(ValueError, match=message):
        SitemapSource("s", **args)


# --- SQL: SQLite ------------------------------------------------------------------------


@pytest.fixture
def products_db(tmp_path: Path) -> Path:
    path = tmp_path / "shop.db"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE products (id INTEGER PRIMARY KEY, slug TEXT, lang TEXT, views INT)"
        )
        conn.executemany(
            "INSERT INTO products VALUES (?, ?, ?, ?)",
            [
                (1, "red-shoes", "en", 50),
                (2, "a/b?c=d#e", "de", 900),  # must not change the path's shape
                (3, "blue hat", "en", 300),
                (4, None, "en", 800),  # NULL slug: skipped
                (5, "..", "fr", 10),
                (6, "hidden", "en", 0),
            ],
        )
    conn.close()
    return path


async def test_sqlite_query_formats_rows_into_paths(products_db: Path) -> None:
    source = SqlSource(
        "popular",
        f"sqlite:///{products_db}",  # products_db is absolute: sqlite:////...
        "SELECT id, slug, lang FROM products WHERE views > 0 ORDER BY views DESC LIMIT 4",
        "/products/{slug}?lang={lang}&id={id}",
    )
    assert urls(await source.paths()) == [
        "/products/a%2Fb%3Fc%3Dd%23e?lang=de&id=2",
        "/products/blue%20hat?lang=en&id=3",
        "/products/red-shoes?lang=en&id=1",
    ]
    assert source.skipped == 1  # the NULL slug


async def test_sqlite_relative_path(products_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(products_db.parent)
    source = SqlSource("ids", "sqlite:///shop.db", "SELECT id FROM products ORDER BY id", "/p/{id}")
    assert urls(await source.paths()) == [f"/p/{i}" for i in range(1, 7)]


async def test_sqlite_max_rows(products_db: Path) -> None:
    source = SqlSource(
        "ids", f"sqlite:///{products_db}", "SELECT id FROM products ORDER BY id", "/p/{id}", 2
    )
    assert urls(await source.paths()) == ["/p/1", "/p/2"]


async def test_sqlite_missing_column(products_db: Path) -> None:
    source = SqlSource(
        "popular", f"sqlite:///{products_db}", "SELECT id FROM products", "/products/{slug}"
    )
    with pytest.raises(SourceError, match=r"source 'popular': key_pattern names column 'slug'"):
        await source.paths()


async def test_sqlite_missing_column_with_empty_result(products_db: Path) -> None:
    source = SqlSource(
        "popular",
        f"sqlite:///{products_db}",
        "SELECT id FROM products WHERE 0",
        "/products/{slug}",
    )
    with pytest.raises(SourceError, match="column 'slug'"):
        await source.paths()


async def test_sqlite_bad_sql_names_the_source(products_db: Path) -> None:
    source = SqlSource("popular", f"sqlite:///{products_db}", "SELEC id FROM nowhere", "/p/{id}")
    with pytest.raises(SourceError, match=r"source 'popular': query failed: .*syntax error"):
        await source.paths()


async def test_sqlite_is_read_only(products_db: Path) -> None:
    source = SqlSource(
        "sneaky", f"sqlite:///{products_db}", "DELETE FROM products RETURNING id", "/p/{id}"
    )
    with pytest.raises(SourceError, match=r"source 'sneaky': query failed: .*readonly"):
        await source.paths()
    with sqlite3.connect(products_db) as conn:
        assert conn.execute("SELECT count(*) FROM products").fetchone() == (6,)
    conn.close()


async def test_sqlite_missing_database(tmp_path: Path) -> None:
    source = SqlSource("gone", f"sqlite:///{tmp_path}/nope.db", "SELECT 1 AS id", "/p/{id}")
    with pytest.raises(SourceError, match="source 'gone': cannot open SQLite database"):
        await source.paths()
    assert not (tmp_path / "nope.db").exists()  # read-only: nothing created


async def test_sqlite_query_timeout(products_db: Path) -> None:
    endless = (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
        "SELECT x AS id FROM c WHERE x < 0"
    )
    source = SqlSource("slow", f"sqlite:///{products_db}", endless, "/p/{id}", timeout=0.2)
    with pytest.raises(SourceError, match=r"source 'slow': query timed out after 0\.2s"):
        await asyncio.wait_for(source.paths(), timeout=20)


@pytest.mark.parametrize(
    ("dsn", "pattern", "message"),
    [
        ("sqlite:///x.db", "products/{id}", "must be a path starting with '/'"),
        ("sqlite:///x.db", "//evil.example/{id}", "must be a path starting with '/'"),
        ("sqlite:///x.db", "/p/{}", "is not a column name"),
        ("sqlite:///x.db", "/p/{0}", "is not a column name"),
        ("sqlite:///x.db", "/p/{id.__class__}", "is not a column name"),
        ("sqlite:///x.db", "/p/{id[0]}", "is not a column name"),
        ("sqlite:///x.db", "/p/{id!r}", "no format spec"),
        ("sqlite:///x.db", "/p/{id:>10}", "no format spec"),
        ("sqlite:///x.db", "/p/{id", "key_pattern '/p/{id'"),
        ("sqlite:///x.db", "/p/{id} x", "whitespace or control characters"),
        ("mysql://db/shop", "/p/{id}", "dsn must be"),
        ("sqlite:///", "/p/{id}", "names no database file"),
    ],
)
def test_sql_source_validates_at_construction(dsn: str, pattern: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        SqlSource("bad", dsn, "SELECT 1 AS id", pattern)
    assert "source 'bad'" in str(info.value)


def test_sql_validate_without_constructing() -> None:
    assert SqlSource.validate("sqlite:///x.db", "SELECT 1", "/p/{id}/{lang}/{id}") == ("id", "lang")
    with pytest.raises(ValueError, match="max_rows"):
        SqlSource.validate("sqlite:///x.db", "SELECT 1", "/p/{id}", max_rows=0)
    with pytest.raises(ValueError, match="query is empty"):
        SqlSource.validate("sqlite:///x.db", "  ", "/p/{id}")


def test_sql_source_repr_hides_the_dsn() -> None:
    source = SqlSource("pg", "postgresql://u:s3cret@db/shop", "SELECT 1 AS id", "/p/{id}")
    assert "s3cret" not in repr(source)


# --- SQL: PostgreSQL --------------------------------------------------------------------


def _postgres_dsn() -> str:
    return os.environ.get(
        "WARMPROXY_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
    )


@pytest.fixture
async def pg_table() -> AsyncIterator[tuple[str, str]]:
    """A DSN and a uniquely named products table, dropped afterwards."""
    asyncpg = pytest.importorskip("asyncpg")
    dsn = _postgres_dsn()
    try:
        conn = await asyncpg.connect(dsn, timeout=3)
    except Exception as exc:
        pytest.skip(f"no PostgreSQL answers at {dsn} ({type(exc).__name__}: {exc})")
    table = f"wp_test_{uuid.uuid4().hex[:12]}"
    try:
        await conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, slug text, views int)")
        await conn.executemany(
            f"INSERT INTO {table} VALUES ($1, $2, $3)",
            [(1, "red-shoes", 50), (2, "a/b?c", 900), (3, "x", 300), (4, None, 800)],
        )
        yield dsn, table
    finally:
        await conn.execute(f"DROP TABLE IF EXISTS {table}")
        await conn.close()


async def test_postgres_query(pg_table: tuple[str, str]) -> None:
    dsn, table = pg_table
    source = SqlSource(
        "pg",
        dsn,
        f"SELECT id, slug FROM {table} ORDER BY views DESC LIMIT 3",
        "/products/{slug}?id={id}",
    )
    assert urls(await source.paths()) == ["/products/a%2Fb%3Fc?id=2", "/products/x?id=3"]
    assert source.skipped == 1


async def test_postgres_max_rows_and_postgres_scheme(pg_table: tuple[str, str]) -> None:
    dsn, table = pg_table
    dsn = dsn.replace("postgresql://", "postgres://", 1)
    source = SqlSource("pg", dsn, f"SELECT id FROM {table} ORDER BY id", "/p/{id}", max_rows=2)
    assert urls(await source.paths()) == ["/p/1", "/p/2"]


async def test_postgres_missing_column(pg_table: tuple[str, str]) -> None:
    dsn, table = pg_table
    source = SqlSource("pg", dsn, f"SELECT id FROM {table}", "/p/{slug}")
    with pytest.raises(SourceError, match="source 'pg': key_pattern names column 'slug'"):
        await source.paths()


async def test_postgres_bad_sql(pg_table: tuple[str, str]) -> None:
    dsn, _ = pg_table
    source = SqlSource("pg", dsn, "SELECT id FROM no_such_table_here", "/p/{id}")
    with pytest.raises(SourceError, match=r"source 'pg': query failed: .*no_such_table_here"):
        await source.paths()


async def test_postgres_is_read_only(pg_table: tuple[str, str]) -> None:
    dsn, table = pg_table
    source = SqlSource("pg", dsn, f"DELETE FROM {table} RETURNING id", "/p/{id}")
    with pytest.raises(SourceError, match=r"source 'pg': query failed: .*read-only"):
        await source.paths()
    check = SqlSource("pg", dsn, f"SELECT id FROM {table}", "/p/{id}")
    assert len(await check.paths()) == 4


async def test_postgres_unreachable() -> None:
    pytest.importorskip("asyncpg")
    # Port 1 on loopback: nothing listens, the connection is refused at once.
    source = SqlSource("pg", "postgresql://postgres@127.0.0.1:1/test", "SELECT 1 AS id", "/{id}")
    with pytest.raises(SourceError, match=r"source 'pg': could not connect to the database$"):
        await source.paths()


async def test_postgres_without_asyncpg(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes ``import asyncpg`` raise ImportError.
    monkeypatch.setitem(sys.modules, "asyncpg", None)
    source = SqlSource("pg", "postgresql://db/shop", "SELECT 1 AS id", "/p/{id}")
    with pytest.raises(SourceError, match=r"pip install 'warmproxy\[postgres\]'"):
        await source.paths()
