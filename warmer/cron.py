"""Cron schedule arithmetic: when a five-field cron expression fires.

Pure (DESIGN rule 2): every question takes ``now`` as epoch seconds and nothing
here reads the clock, so a week of firings is computed in milliseconds and the
replay simulator can drive schedules on a virtual clock.  The field grammar and
the daylight-saving rules (Debian cron's: a fixed-time job in a skipped hour runs
once right after the gap, once in a repeated hour) are cronsim's.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

#: Longer expressions are refused before parsing: no real schedule needs more,
#: and expressions arrive from ``POST /cache/warming/schedule``.
MAX_EXPR_LENGTH = 200

#: The usual ``@`` shorthands, as Vixie/Debian cron define them.
ALIASES: dict[str, str] = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

# A fixed instant to validate against: parsing must not read the clock.
_REFERENCE = datetime(2000, 1, 1, tzinfo=UTC)


class CronError(ValueError):
    """A cron expression or time zone that cannot be used; the message names it."""


@dataclass(frozen=True, slots=True)
class Cron:
    """A validated cron schedule in a time zone; build it with :meth:`parse`."""

    expr: str
    tz: str = "UTC"
    _fields: str = field(init=False, repr=False, compare=False)
    _zone: tzinfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        fields = _normalise(self.expr)
        zone = _zone(self.tz)
        try:
            CronSim(fields, _REFERENCE.astimezone(zone))
        except CronSimError as exc:
            raise CronError(f"invalid cron expression {self.expr!r}: {exc}") from None
        object.__setattr__(self, "_fields", fields)
        object.__setattr__(self, "_zone", zone)

    @classmethod
    def parse(cls, expr: str, tz: str = "UTC") -> Cron:
        """The schedule ``expr`` (five fields or an ``@`` alias) in time zone ``tz``.

        Raises :class:`CronError` naming the expression or the zone.
        """
        return cls(expr, tz)

    def next_after(self, now: float) -> float:
        """The first firing strictly after ``now`` (epoch seconds)."""
        for at in self._iterate(now):
            return at
        raise CronError(f"cron expression {self.expr!r} never fires after {now}")

    def firings(self, start: float, end: float) -> Iterator[float]:
        """Every firing in ``(start, end]``, in order."""
        for at in self._iterate(start):
            if at > end:
                return
            yield at

    def _iterate(self, after: float) -> Iterator[float]:
        sim = CronSim(self._fields, datetime.fromtimestamp(after, self._zone))
        last = after
        while True:
            try:
                at = next(sim).timestamp()
            except StopIteration:
                # cronsim gives up after 50 years without a match.
                return
            # In a repeated (fall-back) hour cronsim answers with the first
            # occurrence of the wall time, which can lie before ``after``; a
            # schedule must only move forward.
            if at > last:
                last = at
                yield at


def _normalise(expr: str) -> str:
    if len(expr) > MAX_EXPR_LENGTH:
        raise CronError(
            f"invalid cron expression {expr[:40]!r}...: longer than {MAX_EXPR_LENGTH} characters"
        )
    text = expr.strip()
    text = ALIASES.get(text.lower(), text)
    parts = text.split()
    if len(parts) != 5:
        raise CronError(
            f"invalid cron expression {expr!r}: expected 5 fields "
            f"(minute hour day-of-month month day-of-week), got {len(parts)}"
        )
    return " ".join(parts)


def _zone(name: str) -> tzinfo:
    # timezone.utc rather than ZoneInfo("UTC"): cronsim takes its fast path
    # (no daylight-saving fix-ups) only for it.
    if name.upper() in ("UTC", "Z", "ETC/UTC"):
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise CronError(f"unknown time zone {name!r}") from None
