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

A schedule posted through the control API is less trusted than the
configuration file: its file and SQLite sources are confined to a directory
(``confine_to``) and its PostgreSQL sources to allowed hosts (see
:mod:`warmer.schedule`).  No message ever quotes a file's content or a DSN's
password, and connection failures do not tell a closed port from an open one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import stat
import string
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, unquote, unquote_plus, urlsplit

from warmer.sitemap import order_key, parse_sitemap

log = logging.getLogger(__name__)

_DEFAULT_PORTS = {"http": 80, "https": 443}
_POSTGRES_HINT = "pip install 'warmproxy[postgres]'"
_POSTGRES_PORT = 5432

#: Bounds on what a source reads, so one source cannot exhaust the process.
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_ROWS = 10_000_000
MAX_SITEMAP_URLS = 1_000_000
MAX_SITEMAPS = 50_000  # what one sitemap index may list (sitemaps.org)
MAX_QUERY_SECONDS = 3600.0

#: Query parameters whose value is a credential (in a DSN or a Redis URL).
SECRET_PARAMS = frozenset({"password", "pass", "pwd", "token", "secret", "key", "sslpassword"})
MASK = "***"

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


def mask_url(url: str, mask: str = MASK) -> str:
    """``url`` with its credentials replaced by ``mask``: the userinfo password
    and the values of password-like query parameters (:data:`SECRET_PARAMS`).

    Everything else is kept as written, so a URL without credentials comes
    back unchanged; one that cannot be parsed is hidden whole.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return mask
    masked = url
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        user = userinfo.partition(":")[0]
        masked = masked.replace(f"//{parts.netloc}", f"//{user}:{mask}@{hostport}", 1)
    elif not at and "//" in url:
        # An unencoded "/", "?" or "#" in a password ends the authority early
        # ("redis://:pa?ss@host"): hide all up to the last "@" rather than a part.
        head, _, rest = url.partition("//")
        before, at, after = rest.rpartition("@")
        if at and ":" in before:
            return f"{head}//{mask}@{after}"
    if parts.query:
        query = "&".join(_mask_param(p, mask) for p in parts.query.split("&"))
        # The first "?" starts the query: the authority and path cannot hold one.
        masked = masked.replace(f"?{parts.query}", f"?{query}", 1)
    return masked


def _mask_param(param: str, mask: str) -> str:
    name, eq, _ = param.partition("=")
    if eq and unquote_plus(name).strip().lower() in SECRET_PARAMS:
        return f"{name}={mask}"
    return param


def dsn_password(dsn: str) -> bool:
    """Whether a DSN carries a password (in its userinfo or a query parameter)."""
    parts = urlsplit(dsn)
    userinfo, at, _ = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        return True
    return any(
        unquote_plus(p.partition("=")[0]).strip().lower() in SECRET_PARAMS
        for p in parts.query.split("&")
        if p
    )


def postgres_hosts(dsn: str) -> list[tuple[str, int]]:
    """The (host, port) pairs a ``postgresql://`` DSN's authority names, as
    asyncpg reads it (``h1:5432,h2``; IPv6 in brackets; port 5432 if none).

    Raises :class:`ValueError` for a malformed host list.
    """
    hostspec = urlsplit(dsn).netloc.rpartition("@")[2]
    out: list[tuple[str, int]] = []
    if not hostspec:
        return out
    for item in hostspec.split(","):
        if item.startswith("["):
            host, bracket, rest = item[1:].partition("]")
            if not bracket or (rest and not rest.startswith(":")):
                raise ValueError("dsn names a malformed IPv6 host")
            port = rest[1:]
        else:
            host, _, port = item.partition(":")
        host = unquote(host).lower()
        if not host:
            raise ValueError("dsn names an empty host")
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise ValueError("dsn names a port that is not a number from 1 to 65535")
        out.append((host, int(port) if port else _POSTGRES_PORT))
    return out


def parse_host(value: str) -> tuple[str, int]:
    """``host`` or ``host:port`` (IPv6 in brackets) as (host, port), port 5432 if none."""
    if not value or any(c in "/@?#,%\\" or c.isspace() or not c.isprintable() for c in value):
        raise ValueError(f"{value!r} is not a host or host:port")
    try:
        (host,) = postgres_hosts(f"postgresql://{value}/")
    except ValueError:
        raise ValueError(f"{value!r} is not a host or host:port (port 1 to 65535)") from None
    return host


def confined(path: Path, directory: Path) -> Path:
    """``path`` (relative: to ``directory``) resolved, symlinks followed, if it
    stays inside ``directory``; ValueError otherwise (naming neither the
    directory nor where a symlink leads)."""
    root = directory.resolve()
    resolved = (root / path).resolve()
    if not resolved.is_relative_to(root):
        raise ValueError(f"{str(path)!r} is outside file_source_dir (symlinks are followed)")
    return resolved


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
    that is not a path fails the run (naming the line number, never its
    content: the file may not be what it was meant to be).  With
    ``confine_to`` (a source posted through the control API) the file must
    resolve inside that directory at every read, symlinks included.
    """

    def __init__(
        self,
        name: str,
        path: Path,
        *,
        confine_to: Path | None = None,
        max_bytes: int = MAX_FILE_BYTES,
    ) -> None:
        self.name = name
        self.path = Path(path)
        self.confine_to = confine_to
        self.max_bytes = max_bytes
        if confine_to is not None:
            try:
                confined(self.path, confine_to)
            except ValueError as exc:
                raise ValueError(f"source {name!r}: {exc}") from None

    async def paths(self) -> list[SourcePath]:
        return await asyncio.to_thread(self._read)

    def _read(self) -> list[SourcePath]:
        shown = repr(str(self.path))
        path = self.path
        if self.confine_to is not None:
            try:  # again at each read: a symlink may have been put in since
                path = confined(self.path, self.confine_to)
            except ValueError as exc:
                raise SourceError(f"source {self.name!r}: {exc}") from None
        try:
            # Confined: the path is resolved, so a link now in its place is refused.
            data = _read_regular_file(path, self.max_bytes, nofollow=self.confine_to is not None)
        except FileNotFoundError:
            raise SourceError(f"source {self.name!r}: file {shown} not found") from None
        except OSError as exc:
            why = exc.strerror or type(exc).__name__
            raise SourceError(f"source {self.name!r}: cannot read {shown}: {why}") from None
        except ValueError as exc:
            raise SourceError(f"source {self.name!r}: {shown} {exc}") from None
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise SourceError(f"source {self.name!r}: {shown} is not UTF-8 text") from None
        found: list[str] = []
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if not is_origin_path(line):
                raise SourceError(
                    f"source {self.name!r}: {shown} line {number} is not a path starting with '/'"
                )
            found.append(line)
        return _ranked(found)


def _read_regular_file(path: Path, max_bytes: int, *, nofollow: bool = False) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``; ValueError otherwise.

    Opened without blocking, so a FIFO or a device cannot hang the run, and
    checked on the open descriptor (what is read is what was checked).
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    if nofollow:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise ValueError("is not a regular file")
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"is larger than {max_bytes} bytes")
    return data


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
        if not 1 <= max_urls <= MAX_SITEMAP_URLS:
            raise ValueError(
                f"source {name!r}: max_urls must be from 1 to {MAX_SITEMAP_URLS}, got {max_urls}"
            )
        if not 1 <= max_sitemaps <= MAX_SITEMAPS:
            raise ValueError(
                f"source {name!r}: max_sitemaps must be from 1 to {MAX_SITEMAPS}, "
                f"got {max_sitemaps}"
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
    or ``postgresql://...`` (asyncpg, the ``postgres`` extra).  The query is one
    statement and may only read: SQLite databases are opened read-only and an
    authorizer refuses everything but reading (no ATTACH, no VACUUM INTO, no
    PRAGMA); PostgreSQL runs it in a read-only transaction.  ``password`` is
    given apart from the DSN (from an environment variable); the DSN may hold
    one too, so it is never put in a message.  ``confine_to``: a SQLite file
    must resolve inside that directory (relative paths are taken from it).
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
        password: str | None = None,
        confine_to: Path | None = None,
    ) -> None:
        try:
            #: The columns ``key_pattern`` names.
            self.columns = self.validate(
                dsn, query, key_pattern, max_rows=max_rows, timeout=timeout
            )
            if confine_to is not None and dsn.startswith("sqlite:///"):
                confined(Path(_sqlite_path(dsn)), confine_to)
        except ValueError as exc:
            raise ValueError(f"source {name!r}: {exc}") from None
        self.name = name
        self.dsn = dsn
        self.query = query
        self.key_pattern = key_pattern
        self.max_rows = max_rows
        self.timeout = timeout
        self.confine_to = confine_to
        self._password = password
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

        Raises :class:`ValueError` naming what is wrong (never quoting the DSN).
        """
        check_dsn(dsn)
        check_query(query)
        if not 1 <= max_rows <= MAX_ROWS:
            raise ValueError(f"max_rows must be from 1 to {MAX_ROWS}, got {max_rows}")
        if not 0 < timeout <= MAX_QUERY_SECONDS:
            raise ValueError(
                f"timeout must be > 0 and at most {MAX_QUERY_SECONDS:g}, got {timeout}"
            )
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

    def _sqlite_file(self) -> str:
        path = _sqlite_path(self.dsn)
        if self.confine_to is None:
            return path
        try:  # again at each run: a symlink may have been put in since
            return str(confined(Path(path), self.confine_to))
        except ValueError as exc:
            raise SourceError(f"source {self.name!r}: dsn: {exc}") from None

    def _sqlite_rows(self) -> tuple[tuple[str, ...], list[Sequence[Any]]]:
        # mode=ro: never created nor written.  The authorizer does the rest:
        # ATTACH and VACUUM INTO write files even on a read-only connection.
        uri = f"file:{quote(self._sqlite_file())}?mode=ro"
        deadline = time.monotonic() + self.timeout
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=self.timeout)
        except sqlite3.Error as exc:
            raise SourceError(f"source {self.name!r}: cannot open SQLite database: {exc}") from None
        refused: list[str] = []
        conn.set_authorizer(_read_only_authorizer(refused))
        conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
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
            if refused:
                raise SourceError(
                    f"source {self.name!r}: query failed: the database is opened readonly and "
                    f"a SQL source may only read ({refused[0]} refused)"
                ) from None
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
            conn = await asyncpg.connect(self.dsn, password=self._password, timeout=self.timeout)
        except Exception as exc:  # refused, timed out, rejected, a malformed DSN...
            # One message for all of them: told apart, they would let whoever
            # posts a schedule probe which ports answer.  The log has the detail.
            log.info("source %r: connecting to the database failed: %s", self.name, _describe(exc))
            raise SourceError(f"source {self.name!r}: could not connect to the database") from None
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
                async with asyncio.timeout(5):
                    await conn.close()
        return columns, rows


# Authorizer actions a plain SELECT needs; everything else is refused.
_SQLITE_ALLOWED = frozenset(
    {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
)
_SQLITE_ACTIONS = {
    getattr(sqlite3, f"SQLITE_{name}"): name
    for name in [
        "ALTER_TABLE",
        "ANALYZE",
        "ATTACH",
        "CREATE_INDEX",
        "CREATE_TABLE",
        "CREATE_TEMP_INDEX",
        "CREATE_TEMP_TABLE",
        "CREATE_TEMP_TRIGGER",
        "CREATE_TEMP_VIEW",
        "CREATE_TRIGGER",
        "CREATE_VIEW",
        "CREATE_VTABLE",
        "DELETE",
        "DETACH",
        "DROP_INDEX",
        "DROP_TABLE",
        "DROP_TEMP_INDEX",
        "DROP_TEMP_TABLE",
        "DROP_TEMP_TRIGGER",
        "DROP_TEMP_VIEW",
        "DROP_TRIGGER",
        "DROP_VIEW",
        "DROP_VTABLE",
        "INSERT",
        "PRAGMA",
        "REINDEX",
        "SAVEPOINT",
        "TRANSACTION",
        "UPDATE",
    ]
}


def _read_only_authorizer(refused: list[str]) -> Callable[..., int]:
    """An authorizer allowing what reading needs; what it refuses is appended
    to ``refused`` (for the message)."""

    def authorize(
        action: int, arg1: str | None, arg2: str | None, db: str | None, _trigger: str | None
    ) -> int:
        if action in _SQLITE_ALLOWED:
            # Reading the main database only (None: a rowid alias read by the
            # sorter); load_extension() would run code.
            if action == sqlite3.SQLITE_READ and db not in ("main", None):
                refused.append(f"reading database {db!r}")
                return sqlite3.SQLITE_DENY
            if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() == "load_extension":
                refused.append("load_extension()")
                return sqlite3.SQLITE_DENY
            return sqlite3.SQLITE_OK
        refused.append(_SQLITE_ACTIONS.get(action, f"action {action}"))
        return sqlite3.SQLITE_DENY

    return authorize


def check_dsn(dsn: str) -> None:
    """A DSN of a supported kind, well-formed; ValueError never quoting it."""
    if not dsn.startswith(("sqlite:///", "postgresql://", "postgres://")):
        raise ValueError("dsn must be sqlite:///path.db or postgresql://...")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in dsn):
        raise ValueError("dsn holds control characters")
    if dsn.startswith("sqlite:///"):
        path = _sqlite_path(dsn)
        if not path:
            raise ValueError("dsn sqlite:/// names no database file")
        return
    postgres_hosts(dsn)


def check_query(query: str) -> None:
    """One SQL statement (comments and a final ";" allowed); ValueError otherwise.

    Both drivers refuse a second statement too (sqlite3 and asyncpg's
    prepared statements); this says so before anything runs.
    """
    if not query.strip():
        raise ValueError("query is empty")
    for i, char in enumerate(query):
        # The first ";" that ends a complete statement (not one in a string
        # literal, a quoted name or a comment) must end the query.
        if char == ";" and sqlite3.complete_statement(query[: i + 1]):
            if _has_tokens(query[i + 1 :]):
                raise ValueError("query must be one statement")
            return


def _has_tokens(sql: str) -> bool:
    """Whether ``sql`` holds anything but whitespace, comments and ";"."""
    rest = sql
    while True:
        rest = rest.lstrip(string.whitespace + ";")
        if not rest:
            return False
        if rest.startswith("--"):
            rest = rest.partition("\n")[2]
        elif rest.startswith("/*"):
            end = rest.find("*/", 2)
            if end < 0:
                return False
            rest = rest[end + 2 :]
        else:
            return True


def pattern_columns(key_pattern: str) -> tuple[str, ...]:
    """The columns a ``key_pattern`` names, in order of first use.

    Raises :class:`ValueError` for a pattern that is not a path or uses more of
    the format language than plain ``{column}`` fields.
    """
    # "//x" and "/\\x" name a host to a browser (a protocol-relative URL).
    if not key_pattern.startswith("/") or key_pattern[1:2] in ("/", "\\"):
        raise ValueError(
            f"key_pattern {key_pattern!r} must be a path starting with '/' (not '//' or '/\\')"
        )
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
