"""Where scheduled warming gets its paths: lists, files, sitemaps, SQL, hot keys.

Every source yields paths on the configured origin (path and query, starting
with "/"), ranked in the order they should be warmed.  A source never yields a
URL naming another host: absolute URLs found in a sitemap are kept only for the
allowed hosts and reduced to their path, and values read from a database are
percent-quoted before they go into a path (no SSRF through the warmer).

Sources are built from validated configuration at start-up and on
``POST /cache/warming/schedule``, so constructors check everything that can be
checked without I/O and raise :class:`ValueError`; what fails while producing
paths raises :class:`SourceError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import string
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

from warmer.sitemap import order_key, parse_sitemap

log = logging.getLogger(__name__)

_DEFAULT_PORTS = {"http": 80, "https": 443}
_POSTGRES_HINT = "pip install 'warmproxy[postgres]'"

# A sitemap entry's place in warming order: its order key, then document position.
_Rank = tuple[tuple[float, int, float], int]


class SourceError(Exception):
    """Producing a source's paths failed; the message names the source and why."""


@dataclass(frozen=True, slots=True)
class SourcePath:
    """One path a source asks to warm."""

    url: str  # path and query on the origin, starting with "/"
    rank: int  # 0 = warm first (order within the source)


class Source(Protocol):
    """Something that produces the paths of a scheduled warming run."""

    name: str

    async def paths(self) -> list[SourcePath]: ...


def is_origin_path(value: str) -> bool:
    """Whether ``value`` is a path on the origin: starts with one "/" (two would
    name a host) and holds no whitespace or control characters."""
    return (
        value.startswith("/")
        and not value.startswith("//")
        and "\\" not in value[:2]
        and not any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in value)
    )


def _ranked(paths: Iterable[str]) -> list[SourcePath]:
    """Paths in order, duplicates dropped (the first occurrence keeps its rank)."""
    seen: set[str] = set()
    out: list[SourcePath] = []
    for path in paths:
        if path not in seen:
            seen.add(path)
            out.append(SourcePath(path, len(out)))
    return out


class StaticSource:
    """A fixed list of paths, warmed in the order given."""

    def __init__(self, name: str, paths: Sequence[str]) -> None:
        for path in paths:
            if not is_origin_path(path):
                raise ValueError(f"source {name!r}: {path!r} is not a path starting with '/'")
        self.name = name
        self._paths = _ranked(paths)

    async def paths(self) -> list[SourcePath]:
        return list(self._paths)


class FileSource:
    """A text file with one path per line; blank lines and ``#`` comments skipped.

    The file is read on every run, so editing it changes the next run.  A line
    that is not a path fails the run (naming the line): the file is the
    operator's own, and a silently ignored typo would leave pages cold.
    """

    def __init__(self, name: str, path: Path) -> None:
        self.name = name
        self.path = Path(path)

    async def paths(self) -> list[SourcePath]:
        return await asyncio.to_thread(self._read)

    def _read(self) -> list[SourcePath]:
        try:
            text = self.path.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            raise SourceError(f"source {self.name!r}: file {str(self.path)!r} not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise SourceError(
                f"source {self.name!r}: cannot read {str(self.path)!r}: {exc}"
            ) from None
        found: list[str] = []
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if not is_origin_path(line):
                raise SourceError(
                    f"source {self.name!r}: {str(self.path)!r} line {number}: "
                    f"{line[:100]!r} is not a path starting with '/'"
                )
            found.append(line)
        return _ranked(found)


class SitemapSource:
    """The URLs of a sitemap on the origin, following sitemap indexes.

    ``fetch`` gets a path on the origin and returns the body (raising when there
    is none).  Locations are reduced to paths; those naming a host outside
    ``allowed_hosts`` (authorities such as ``"shop.example"`` or
    ``"127.0.0.1:8080"``; a default port may be left out) are never fetched nor
    warmed, and are counted in :attr:`skipped`.  A child sitemap that cannot be
    fetched or parsed is recorded in :attr:`errors` and the others are still used;
    the top sitemap failing fails the run.
    """

    def __init__(
        self,
        name: str,
        sitemap_path: str,
        fetch: Callable[[str], Awaitable[bytes]],
        max_urls: int = 50_000,
        max_sitemaps: int = 50,
        *,
        allowed_hosts: Collection[str] = (),
    ) -> None:
        if not is_origin_path(sitemap_path):
            raise ValueError(
                f"source {name!r}: sitemap {sitemap_path!r} is not a path starting with '/'"
            )
        if max_urls < 1:
            raise ValueError(f"source {name!r}: max_urls must be at least 1, got {max_urls}")
        if max_sitemaps < 1:
            raise ValueError(
                f"source {name!r}: max_sitemaps must be at least 1, got {max_sitemaps}"
            )
        self.name = name
        self.sitemap_path = sitemap_path
        self.max_urls = max_urls
        self.max_sitemaps = max_sitemaps
        self._fetch = fetch
        self._allowed = frozenset(_authority_key(h) for h in allowed_hosts)
        #: Locations of the last run left out because they name another host
        #: or are not URLs.
        self.skipped = 0
        #: Child sitemaps of the last run that failed or were over the limit.
        self.errors: list[str] = []

    async def paths(self) -> list[SourcePath]:
        self.skipped = 0
        self.errors = []
        queue = deque([self.sitemap_path])
        visited = {self.sitemap_path}
        # Each path's best (order key, document position) so far.  Trimmed to
        # max_urls as sitemaps arrive, since an index may list 50,000 sitemaps of
        # 50,000 URLs each; de-duplicated first, so that the same page listed in
        # several sitemaps cannot crowd others out.
        best: dict[str, _Rank] = {}
        position = 0
        fetched = 0
        while queue:
            sitemap_path = queue.popleft()
            if fetched == self.max_sitemaps:
                self.errors.append(
                    f"{len(queue) + 1} more sitemaps not read (max_sitemaps={self.max_sitemaps})"
                )
                log.warning("source %r: %s", self.name, self.errors[-1])
                break
            fetched += 1
            try:
                sitemap = parse_sitemap(await self._fetch(sitemap_path))
            except Exception as exc:
                message = f"sitemap {sitemap_path!r}: {_describe(exc)}"
                if sitemap_path == self.sitemap_path:
                    raise SourceError(f"source {self.name!r}: {message}") from exc
                log.warning("source %r: %s", self.name, message)
                self.errors.append(message)
                continue
            for loc in sitemap.sitemaps:
                child = self._to_path(loc)
                if child is not None and child not in visited:
                    visited.add(child)
                    queue.append(child)
            for entry in sitemap.urls:
                path = self._to_path(entry.loc)
                if path is None:
                    continue
                rank = (order_key(entry), position)
                position += 1
                if path not in best or rank < best[path]:
                    best[path] = rank
            if len(best) > 2 * self.max_urls:
                best = dict(sorted(best.items(), key=_by_rank)[: self.max_urls])
        ordered = sorted(best.items(), key=_by_rank)[: self.max_urls]
        return [SourcePath(path, i) for i, (path, _) in enumerate(ordered)]

    def _to_path(self, loc: str) -> str | None:
        path = _loc_to_path(loc, self._allowed)
        if path is None:
            self.skipped += 1
        return path


def _by_rank(item: tuple[str, _Rank]) -> _Rank:
    return item[1]


def _authority_key(authority: str) -> tuple[str, int | None]:
    """A host (lower-case) and explicit port, for comparing authorities."""
    parts = urlsplit(f"//{authority.strip()}")
    try:
        port = parts.port
    except ValueError:
        port = None
    return ((parts.hostname or "").lower(), port)


def _loc_to_path(loc: str, allowed: frozenset[tuple[str, int | None]]) -> str | None:
    """The origin path of a sitemap location, or None when it must not be used."""
    if is_origin_path(loc):
        return loc.split("#", 1)[0]
    try:
        parts = urlsplit(loc)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname or parts.username is not None:
        return None
    host = parts.hostname.lower()
    effective = port if port is not None else _DEFAULT_PORTS[scheme]
    # An allowed authority without a port stands for the scheme's default port.
    portless = (host, None) if effective == _DEFAULT_PORTS[scheme] else None
    if (host, effective) not in allowed and portless not in allowed:
        return None
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return path if is_origin_path(path) else None


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class SqlSource:
    """Rows of a SQL query formatted into paths by ``key_pattern``.

    ``key_pattern`` names columns in braces (``"/products/{id}?lang={lang}"``);
    each value is percent-quoted (``/`` and ``?`` included) before it is put in,
    so a row cannot change the path's shape or name a host.  Rows with NULL in a
    named column are skipped and counted in :attr:`skipped`.

    ``dsn`` is ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``
    (opened read-only) or ``postgresql://...`` (asyncpg, the ``postgres`` extra;
    run in a read-only transaction).  The DSN may hold a password, so it is never
    put in a message.
    """

    def __init__(
        self,
        name: str,
        dsn: str,
        query: str,
        key_pattern: str,
        max_rows: int = 100_000,
        *,
        timeout: float = 60.0,
    ) -> None:
        try:
            #: The columns ``key_pattern`` names.
            self.columns = self.validate(
                dsn, query, key_pattern, max_rows=max_rows, timeout=timeout
            )
        except ValueError as exc:
            raise ValueError(f"source {name!r}: {exc}") from None
        self.name = name
        self.dsn = dsn
        self.query = query
        self.key_pattern = key_pattern
        self.max_rows = max_rows
        self.timeout = timeout
        #: Rows of the last run left out: NULL in a named column, or a path
        #: that came out empty-segmented into "//".
        self.skipped = 0

    def __repr__(self) -> str:
        return f"SqlSource(name={self.name!r}, key_pattern={self.key_pattern!r})"

    @staticmethod
    def validate(
        dsn: str, query: str, key_pattern: str, *, max_rows: int = 1, timeout: float = 1.0
    ) -> tuple[str, ...]:
        """Check the arguments without I/O; returns the columns ``key_pattern`` names.

        Raises :class:`ValueError` naming what is wrong.
        """
        if not dsn.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError("dsn must be sqlite:///path.db or postgresql://...")
        if dsn.startswith("sqlite:///") and not _sqlite_path(dsn):
            raise ValueError("dsn sqlite:/// names no database file")
        if not query.strip():
            raise ValueError("query is empty")
        if max_rows < 1:
            raise ValueError(f"max_rows must be at least 1, got {max_rows}")
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        return pattern_columns(key_pattern)

    async def paths(self) -> list[SourcePath]:
        if self.dsn.startswith("sqlite:///"):
            columns, rows = await asyncio.to_thread(self._sqlite_rows)
        else:
            columns, rows = await self._postgres_rows()
        missing = [c for c in self.columns if c not in columns]
        if missing:
            raise SourceError(
                f"source {self.name!r}: key_pattern names column {missing[0]!r}, "
                f"which the query does not return (it returns {list(columns)})"
            )
        self.skipped = 0
        found: list[str] = []
        for row in rows:
            path = self._format(dict(zip(columns, row, strict=False)))
            if path is None:
                self.skipped += 1
            else:
                found.append(path)
        return _ranked(found)

    def _format(self, row: Mapping[str, object]) -> str | None:
        values: dict[str, str] = {}
        for column in self.columns:
            value = row[column]
            if value is None:
                return None
            if isinstance(value, bytes | bytearray | memoryview):
                value = bytes(value).decode("utf-8", "replace")
            values[column] = quote(str(value), safe="")
        path = self.key_pattern.format_map(values)
        return path if is_origin_path(path) else None

    def _sqlite_rows(self) -> tuple[tuple[str, ...], list[Sequence[Any]]]:
        uri = f"file:{quote(_sqlite_path(self.dsn))}?mode=ro"
        deadline = time.monotonic() + self.timeout
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=self.timeout)
        except sqlite3.Error as exc:
            raise SourceError(f"source {self.name!r}: cannot open SQLite database: {exc}") from None
        # A query running past the deadline is interrupted by returning
        # non-zero from the progress handler (called every 10,000 VM steps).
        conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
        try:
            cursor = conn.execute(self.query)
            if cursor.description is None:
                raise SourceError(f"source {self.name!r}: the query returns no columns")
            columns = tuple(d[0] for d in cursor.description)
            rows: list[Sequence[Any]] = cursor.fetchmany(self.max_rows)
        except (sqlite3.Error, sqlite3.Warning) as exc:
            if time.monotonic() > deadline:
                raise SourceError(
                    f"source {self.name!r}: query timed out after {self.timeout:g}s"
                ) from None
            raise SourceError(f"source {self.name!r}: query failed: {exc}") from None
        finally:
            conn.close()
        return columns, rows

    async def _postgres_rows(self) -> tuple[tuple[str, ...], list[Sequence[Any]]]:
        try:
            import asyncpg  # type: ignore[import-untyped]
        except ImportError:
            raise SourceError(
                f"source {self.name!r}: PostgreSQL sources need asyncpg: {_POSTGRES_HINT}"
            ) from None
        try:
            conn = await asyncpg.connect(self.dsn, timeout=self.timeout)
        except Exception as exc:  # refused, timed out, rejected, a malformed DSN...
            raise SourceError(
                f"source {self.name!r}: cannot connect to PostgreSQL: {_describe(exc)}"
            ) from None
        try:
            async with asyncio.timeout(self.timeout), conn.transaction(readonly=True):
                statement = await conn.prepare(self.query)
                columns = tuple(a.name for a in statement.get_attributes())
                if not columns:
                    raise SourceError(f"source {self.name!r}: the query returns no columns")
                cursor = await statement.cursor()
                rows: list[Sequence[Any]] = await cursor.fetch(self.max_rows)
        except SourceError:
            raise
        except TimeoutError:
            raise SourceError(
                f"source {self.name!r}: query timed out after {self.timeout:g}s"
            ) from None
        except Exception as exc:
            raise SourceError(f"source {self.name!r}: query failed: {_describe(exc)}") from None
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), timeout=5)
        return columns, rows


def pattern_columns(key_pattern: str) -> tuple[str, ...]:
    """The columns a ``key_pattern`` names, in order of first use.

    Raises :class:`ValueError` for a pattern that is not a path or uses more of
    the format language than plain ``{column}`` fields.
    """
    if not key_pattern.startswith("/") or key_pattern.startswith("//"):
        raise ValueError(f"key_pattern {key_pattern!r} must be a path starting with '/'")
    columns: list[str] = []
    try:
        parsed = list(string.Formatter().parse(key_pattern))
    except ValueError as exc:
        raise ValueError(f"key_pattern {key_pattern!r}: {exc}") from None
    for _, field_name, spec, conversion in parsed:
        if field_name is None:
            continue
        # Positional fields, attribute/index access and format specs make no
        # sense on quoted strings, and attribute access would reach into objects.
        if not field_name or field_name.isdigit() or any(c in field_name for c in ".[]"):
            raise ValueError(f"key_pattern {key_pattern!r}: {{{field_name}}} is not a column name")
        if spec or conversion:
            raise ValueError(
                f"key_pattern {key_pattern!r}: {{{field_name}}} takes no format spec or conversion"
            )
        if field_name not in columns:
            columns.append(field_name)
    if not is_origin_path(key_pattern.format_map(dict.fromkeys(columns, "x"))):
        raise ValueError(f"key_pattern {key_pattern!r} holds whitespace or control characters")
    return tuple(columns)


def _sqlite_path(dsn: str) -> str:
    # sqlite:///rel/path.db -> rel/path.db; sqlite:////abs/path.db -> /abs/path.db
    return dsn.removeprefix("sqlite:///")


class HotKeysSource:
    """The current top-N hot paths, as the usage tracker ranks them."""

    def __init__(self, name: str, top: Callable[[int], list[str]], n: int) -> None:
        if n < 1:
            raise ValueError(f"source {name!r}: n must be at least 1, got {n}")
        self.name = name
        self.n = n
        self._top = top

    async def paths(self) -> list[SourcePath]:
        return _ranked(p for p in self._top(self.n)[: self.n] if is_origin_path(p))
