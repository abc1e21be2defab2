"""The warming schedule: which sources are warmed when, as configured or posted.

One set of models validates both ``[[strategies.proactive.data_sources]]`` in
the config file and the body of ``POST /cache/warming/schedule``, so the two
accept exactly the same things and name the offending field the same way.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from warmer.cron import Cron, CronError


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _path(value: str) -> str:
    """A path on the origin: warm targets never name another host (no SSRF)."""
    if not value.startswith("/") or value.startswith("//"):
        raise ValueError(f"must be a path on the origin starting with '/', got {value!r}")
    return value


class UrlsSource(_Model):
    """A fixed list of paths."""

    type: Literal["urls"]
    paths: list[str] = Field(min_length=1)

    @field_validator("paths")
    @classmethod
    def _paths(cls, value: list[str]) -> list[str]:
        return [_path(p) for p in value]


class FileSource(_Model):
    """A file with one path per line (``#`` comments)."""

    type: Literal["file"]
    path: str = Field(min_length=1)


class SitemapSource(_Model):
    """A sitemap (or sitemap index, plain or gzip) on the origin."""

    type: Literal["sitemap"]
    url: str = "/sitemap.xml"
    max_urls: int = Field(50_000, ge=1)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _path(value)


class SqlSource(_Model):
    """Rows of a SQL query formatted into paths (``key_pattern``)."""

    type: Literal["sql"]
    dsn: str = Field(min_length=1)
    query: str = Field(min_length=1)
    key_pattern: str
    max_rows: int = Field(100_000, ge=1)

    @field_validator("dsn")
    @classmethod
    def _dsn(cls, value: str) -> str:
        if not value.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError("must be sqlite:///path.db or postgresql://... ")
        return value

    @field_validator("key_pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        return _path(value)


class HotSource(_Model):
    """The current top-N hot keys (keeps what is popular warm)."""

    type: Literal["hot"]
    top_n: int = Field(100, ge=1, le=100_000)


SourceSpec = Annotated[
    UrlsSource | FileSource | SitemapSource | SqlSource | HotSource, Field(discriminator="type")
]


class ScheduledSource(_Model):
    """One data source and when it is warmed."""

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.\-]+$")
    # Cron expression (5 fields, UTC); empty: the proactive strategy's schedule.
    schedule: str = ""
    enabled: bool = True
    priority: str = "medium"
    # Seconds warmed entries stay fresh, overriding the origin's lifetime.
    ttl: float | None = Field(None, gt=0)
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

    schedule: str = "0 * * * *"
    sources: list[ScheduledSource] = Field(default_factory=list, max_length=1000)

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
