"""Proactive warming: when each scheduled source fires, and the sources themselves.

:class:`ScheduleClock` is the pure part (DESIGN rule 2): given the schedule and
``now`` it says which sources are due and when the next firing is, so a week
of cron firings can be checked in milliseconds.  :func:`build_source` turns a
validated :class:`~warmer.schedule.ScheduledSource` into the object that
produces its paths; the asyncio loop that sleeps until the next firing lives
in :mod:`warmer.service`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

from warmer import schedule as spec
from warmer import sources
from warmer.cron import Cron


@dataclass(slots=True)
class _Next:
    cron: Cron
    at: float


class ScheduleClock:
    """Next firing of every enabled source of a schedule."""

    def __init__(self, plan: spec.Schedule, now: float) -> None:
        self.plan = plan
        self._next: dict[str, _Next] = {}
        for source in plan.sources:
            if source.enabled:
                cron = Cron.parse(plan.cron_of(source))
                self._next[source.name] = _Next(cron, cron.next_after(now))

    def due(self, now: float) -> list[tuple[spec.ScheduledSource, float]]:
        """Sources whose firing time has come, with that time; each fires once
        however late we are (firings missed while the process slept are not
        made up)."""
        out = []
        for source in self.plan.sources:
            upcoming = self._next.get(source.name)
            if upcoming is not None and upcoming.at <= now:
                out.append((source, upcoming.at))
                upcoming.at = upcoming.cron.next_after(now)
        return out

    def next_at(self) -> float | None:
        """When the earliest next firing is (None: nothing scheduled)."""
        return min((n.at for n in self._next.values()), default=None)

    def next_of(self, name: str) -> float | None:
        upcoming = self._next.get(name)
        return upcoming.at if upcoming is not None else None


@dataclass(frozen=True, slots=True)
class SourceDeps:
    """What building sources needs from the running proxy."""

    fetch: Callable[[str], Awaitable[bytes]]  # GET a path on the origin, body bytes
    allowed_hosts: Collection[str]  # hosts a sitemap's absolute URLs may name
    hot_paths: Callable[[int], list[str]]  # the current top-N hot paths
    base_dir: Path  # relative file paths are resolved from here
    # What posted file and SQL sources may read (the configuration's own may read anything).
    policy: spec.SourcePolicy = field(default_factory=spec.SourcePolicy)


def build_source(item: spec.ScheduledSource, deps: SourceDeps) -> sources.Source:
    """The object that produces the paths of a scheduled source.

    No I/O beyond resolving a path; raises ValueError (a
    :class:`~warmer.schedule.SourceFieldError` naming the field when it can)
    for a source that cannot be built, so building at validation refuses it.
    """
    s = item.source
    if isinstance(s, spec.UrlsSource):
        return sources.StaticSource(item.name, list(s.paths))
    if isinstance(s, spec.FileSource):
        return deps.policy.file_source(item.name, s, deps.base_dir)
    if isinstance(s, spec.SitemapSource):
        return sources.SitemapSource(
            item.name, s.url, deps.fetch, allowed_hosts=deps.allowed_hosts, max_urls=s.max_urls
        )
    if isinstance(s, spec.SqlSource):
        return deps.policy.sql_source(item.name, s)
    return sources.HotKeysSource(item.name, deps.hot_paths, s.top_n)
