"""The warming schedule: which sources are warmed when, as configured or posted.

One set of models validates both ``[[strategies.proactive.data_sources]]`` in
the config file and the body of ``POST /cache/warming/schedule``, so the two
accept exactly the same things and name the offending field the same way.
The models are strict (``"5"`` and ``true`` are not numbers) and bound every
size and duration, and they run the checks the sources' constructors run, so
a schedule that validates also builds.

Where the two differ is trust, decided by :class:`SourcePolicy` when a source
is built: the configuration file is the operator's, so its sources may read
any file and reach any database; a source posted through the control API may
read files only under ``file_source_dir``, reach PostgreSQL only on allowed
hosts, and carry no password (it would be saved and shown): it names an
environment variable in ``password_env`` instead.  A posted source equal to
one of the configuration file's (as ``GET /schedule`` shows it, password
masked) is that source.

A DSN is shown (``model_dump(mode="json")``: the API, ``check-config``, the
saved schedule) with its password masked; the real one stays in the model.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import unquote_plus, urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_serializer,
    field_validator,
    model_validator,
)

from warmer import sources
from warmer.cron import Cron, CronError

#: The longest a warmed entry may be kept fresh (a year), in seconds.
MAX_TTL = 365 * 86400.0
MAX_PATH_CHARS = 8192
MAX_PATHS = 100_000
MAX_QUERY_CHARS = 100_000
MAX_CRON_CHARS = 200
MAX_SOURCES = 1000
#: ``password_env`` of a posted schedule must start with this, so that a posted
#: source cannot hand another secret of the process (the control token, say)
#: to a database as its password.
POSTED_PASSWORD_ENV_PREFIX = "WARMPROXY_SQL_"
#: Query parameters a posted PostgreSQL DSN may carry.  The others name local
#: files (``sslrootcert``, ``passfile``...), another host (``host``,
#: ``service``) or a password.
POSTED_DSN_PARAMS = frozenset({"sslmode", "target_session_attrs", "application_name"})

_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
_READING_KEYWORDS = frozenset({"select", "with", "values", "table"})


class _Model(BaseModel):
    # Strict: a schedule comes as JSON from the API, where "5" is not a
    # number and true is not 1.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _path(value: str) -> str:
    """A path on the origin: warm targets never name another host (no SSRF)."""
    if not sources.is_origin_path(value):
        raise ValueError(
            "must be a path on the origin starting with one '/' (not '//' or '/\\'), "
            f"without whitespace or control characters, got {value[:200]!r}"
        )
    return value


OriginPath = Annotated[str, Field(min_length=1, max_length=MAX_PATH_CHARS), AfterValidator(_path)]


class UrlsSource(_Model):
    """A fixed list of paths."""

    type: Literal["urls"]
    paths: list[OriginPath] = Field(min_length=1, max_length=MAX_PATHS)


class FileSource(_Model):
    """A file with one path per line (``#`` comments)."""

    type: Literal["file"]
    path: str = Field(min_length=1, max_length=4096)

    @field_validator("path")
    @classmethod
    def _no_control(cls, value: str) -> str:
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            raise ValueError("holds control characters")
        return value


class SitemapSource(_Model):
    """A sitemap (or sitemap index, plain or gzip) on the origin."""

    type: Literal["sitemap"]
    url: OriginPath = "/sitemap.xml"
    max_urls: int = Field(50_000, ge=1, le=sources.MAX_SITEMAP_URLS)


class SqlSource(_Model):
    """Rows of a SQL query formatted into paths (``key_pattern``)."""

    type: Literal["sql"]
    dsn: str = Field(min_length=1, max_length=4096)
    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS)
    key_pattern: str = Field(min_length=1, max_length=MAX_PATH_CHARS)
    max_rows: int = Field(100_000, ge=1, le=sources.MAX_ROWS)
    # Seconds the query (and connecting) may take.
    timeout: float = Field(60.0, gt=0, le=sources.MAX_QUERY_SECONDS, allow_inf_nan=False)
    # The environment variable holding the PostgreSQL password, so that the
    # password is neither in the DSN nor saved with a posted schedule.
    password_env: Annotated[str, Field(pattern=_ENV_NAME)] | None = None

    @field_validator("dsn")
    @classmethod
    def _dsn(cls, value: str) -> str:
        try:
            sources.check_dsn(value)
        except ValueError as exc:
            # The message never quotes the DSN (it may hold a password).
            raise ValueError(str(exc).removeprefix("dsn ")) from None
        return value

    @field_validator("query")
    @classmethod
    def _query(cls, value: str) -> str:
        sources.check_query(value)
        if _first_keyword(value) not in _READING_KEYWORDS:
            raise ValueError("must be one SELECT (or WITH/VALUES) statement: a source only reads")
        return value

    @field_validator("key_pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        sources.pattern_columns(value)
        return value

    @model_validator(mode="after")
    def _password(self) -> SqlSource:
        if self.password_env is not None:
            if self.dsn.startswith("sqlite:"):
                raise ValueError("password_env: SQLite databases take no password")
            if sources.dsn_password(self.dsn):
                raise ValueError("password_env: the dsn holds a password already; give one")
        return self

    @field_serializer("dsn", when_used="json")
    def _masked(self, dsn: str) -> str:
        return sources.mask_url(dsn)


def _first_keyword(query: str) -> str:
    """The first word of a query after comments and opening parentheses, lower-case."""
    rest = query
    while True:
        rest = rest.lstrip().lstrip("(")
        if rest.startswith("--"):
            rest = rest.partition("\n")[2]
        elif rest.startswith("/*"):
            rest = rest.partition("*/")[2]
        else:
            break
    match = re.match(r"[A-Za-z]+", rest)
    return match.group(0).lower() if match else ""


class HotSource(_Model):
    """The current top-N hot keys (keeps what is popular warm)."""

    type: Literal["hot"]
    top_n: int = Field(100, ge=1, le=100_000)


AnySource = UrlsSource | FileSource | SitemapSource | SqlSource | HotSource
SourceSpec = Annotated[AnySource, Field(discriminator="type")]


class ScheduledSource(_Model):
    """One data source and when it is warmed."""

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.\-]+$")
    # Cron expression (5 fields, UTC); empty: the proactive strategy's schedule.
    schedule: str = Field("", max_length=MAX_CRON_CHARS)
    enabled: bool = True
    priority: str = Field("medium", min_length=1, max_length=100)
    # Seconds warmed entries stay fresh, overriding the origin's lifetime.
    ttl: float | None = Field(None, gt=0, le=MAX_TTL, allow_inf_nan=False)
    source: SourceSpec

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        if value:
            try:
                Cron.parse(value)
            except CronError as exc:
                raise ValueError(str(exc)) from None
        return value


class Schedule(_Model):
    """The whole schedule: what ``GET /schedule`` shows and ``POST`` replaces."""

    schedule: str = Field("0 * * * *", max_length=MAX_CRON_CHARS)
    # Required: a document without "sources" (an empty body, a typo) must not
    # clear the schedule; {"sources": []} does, on purpose.
    sources: list[ScheduledSource] = Field(max_length=MAX_SOURCES)

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        try:
            Cron.parse(value)
        except CronError as exc:
            raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _unique_names(self) -> Schedule:
        seen: set[str] = set()
        for source in self.sources:
            if source.name in seen:
                raise ValueError(f"two sources are named {source.name!r}")
            seen.add(source.name)
        return self

    def cron_of(self, source: ScheduledSource) -> str:
        return source.schedule or self.schedule

    def check_priorities(self, levels: tuple[str, ...]) -> None:
        """ValueError naming a source whose priority is not a configured level."""
        for i, source in enumerate(self.sources):
            if source.priority not in levels:
                raise ValueError(
                    f"sources.{i}.priority: {source.priority!r} is not one of {list(levels)}"
                )


class SourceFieldError(ValueError):
    """A source cannot be built; ``field`` names the field of its ``source``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class SourcePolicy:
    """What the sources of a posted schedule may read, and which sources are the
    configuration file's own (built as the operator wrote them).

    ``file_source_dir``: where posted file and SQLite sources may read (None:
    nowhere).  ``sql_allowed_hosts``: the PostgreSQL (host, port) pairs
    posted sources may connect to.  ``configured``: the configuration file's
    sources.
    """

    file_source_dir: Path | None = None
    sql_allowed_hosts: frozenset[tuple[str, int]] = frozenset()
    configured: tuple[AnySource, ...] = ()

    def trusts(self, spec: AnySource) -> bool:
        """Whether ``spec`` is one of the configuration file's sources."""
        return any(spec == c for c in self.configured)

    def resolve(self, plan: Schedule) -> Schedule:
        """``plan`` with every source shown as a configured one (its DSN password
        masked, as GET and the saved schedule show it) replaced by that one."""
        shown = [(c.model_dump(mode="json"), c) for c in self.configured]
        items: list[ScheduledSource] = []
        for item in plan.sources:
            if not self.trusts(item.source):
                dumped = item.source.model_dump(mode="json")
                match = next((c for d, c in shown if d == dumped), None)
                if match is not None:
                    item = item.model_copy(update={"source": match})
            items.append(item)
        if all(a is b for a, b in zip(items, plan.sources, strict=True)):
            return plan
        return plan.model_copy(update={"sources": items})

    def file_source(self, name: str, spec: FileSource, base_dir: Path) -> sources.FileSource:
        """The file source of ``spec``; SourceFieldError when it may not be read."""
        path = Path(spec.path)
        if self.trusts(spec):
            return sources.FileSource(name, path if path.is_absolute() else base_dir / path)
        directory = self._posted_dir("file")
        try:
            return sources.FileSource(name, path, confine_to=directory)
        except ValueError as exc:
            raise SourceFieldError("path", _without_source(exc)) from None

    def sql_source(self, name: str, spec: SqlSource) -> sources.SqlSource:
        """The SQL source of ``spec``; SourceFieldError when it may not run."""
        confine_to = None
        if not self.trusts(spec):
            if spec.dsn.startswith("sqlite:"):
                confine_to = self._posted_dir("SQLite")
            else:
                self._check_posted_postgres(spec)
        password = None
        if spec.password_env is not None:
            password = os.environ.get(spec.password_env)
            if password is None:
                raise SourceFieldError(
                    "password_env", f"environment variable {spec.password_env} is not set"
                )
        try:
            return sources.SqlSource(
                name,
                spec.dsn,
                spec.query,
                spec.key_pattern,
                spec.max_rows,
                timeout=spec.timeout,
                password=password,
                confine_to=confine_to,
            )
        except ValueError as exc:
            raise SourceFieldError("dsn", _without_source(exc)) from None

    def _posted_dir(self, kind: str) -> Path:
        if self.file_source_dir is None:
            raise SourceFieldError(
                "path" if kind == "file" else "dsn",
                f"{kind} sources posted through the control API may read only under "
                "strategies.proactive.file_source_dir, and the configuration sets none",
            )
        return self.file_source_dir

    def _check_posted_postgres(self, spec: SqlSource) -> None:
        if sources.dsn_password(spec.dsn):
            raise SourceFieldError(
                "dsn",
                "a schedule posted through the control API is saved and shown, so its dsn "
                "holds no password: put the password in an environment variable named "
                f"{POSTED_PASSWORD_ENV_PREFIX}... and name it in password_env",
            )
        if spec.password_env is not None and not spec.password_env.startswith(
            POSTED_PASSWORD_ENV_PREFIX
        ):
            raise SourceFieldError(
                "password_env",
                f"must start with {POSTED_PASSWORD_ENV_PREFIX} in a schedule posted through "
                "the control API",
            )
        query = urlsplit(spec.dsn).query
        for param in query.split("&") if query else ():
            key = unquote_plus(param.partition("=")[0]).strip().lower()
            if key not in POSTED_DSN_PARAMS:
                raise SourceFieldError(
                    "dsn",
                    f"parameter {key!r} is not allowed in a schedule posted through the "
                    f"control API (allowed: {', '.join(sorted(POSTED_DSN_PARAMS))})",
                )
        hosts = sources.postgres_hosts(spec.dsn)
        if not hosts:
            raise SourceFieldError(
                "dsn", "must name the database host in a schedule posted through the control API"
            )
        for host, port in hosts:
            if (host, port) not in self.sql_allowed_hosts:
                shown = f"[{host}]" if ":" in host else host
                raise SourceFieldError(
                    "dsn",
                    f"host {shown}:{port} is not one a posted source may connect to: list it in "
                    "strategies.proactive.sql_allowed_hosts",
                )


def _without_source(exc: ValueError) -> str:
    """A source constructor's message without its "source 'name': " lead."""
    return re.sub(r"^source '[^']*': ", "", str(exc))
