"""Request traces: the ``ts,key,size,client`` CSV files ``warmproxy replay`` reads.

One request per line after the header ``ts,key,size,client``:

- ``ts``: seconds since the epoch (a decimal number, before the year 5000:
  milliseconds are refused), non-decreasing; a step
  back of up to :data:`BACKWARDS_TOLERANCE` seconds is accepted (logs merged
  from several writers jitter), a larger one is an error;
- ``key``: what was requested, not empty: a URL path, or an id such as a
  video id.  :func:`key_path` maps a key that is not a path to one ("/" + key),
  so every key can be warmed as a path on the origin;
- ``size``: the response size in bytes, a non-negative integer, or empty;
- ``client``: an anonymous client label, possibly empty.

:func:`read_trace` streams the rows and raises :class:`TraceError` naming the
line of the first malformed one; :func:`scan_trace` reads a whole file to
count its requests and distinct keys.  Blank lines are skipped.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

#: The header every trace starts with.
HEADER: Final = ("ts", "key", "size", "client")
#: Seconds a timestamp may step back from the latest one before it is an error.
BACKWARDS_TOLERANCE: Final = 1.0
#: Larger timestamps (after the year 5000) are taken for milliseconds or
#: microseconds: replayed as seconds, every TTL would be a thousand times too short.
LATEST_SECONDS: Final = 1e11

#: One request: (ts, key, size or None, client).
TraceRow = tuple[float, str, int | None, str]


class TraceError(ValueError):
    """A trace that cannot be read; the message names the line when there is one."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message if line is None else f"line {line}: {message}")
        self.line = line


@dataclass(frozen=True, slots=True)
class TraceSummary:
    """What one pass over a trace found."""

    requests: int
    distinct_keys: int
    first_ts: float
    last_ts: float

    @property
    def span(self) -> float:
        """Seconds from the first request to the last."""
        return self.last_ts - self.first_ts


def key_path(key: str) -> str:
    """The origin path a trace key stands for: the key itself when it is a path,
    else "/" + key (a YouTube video id ``abc`` becomes ``/abc``)."""
    return key if key.startswith("/") else "/" + key


def read_trace(path: str | Path) -> Iterator[TraceRow]:
    """Stream the requests of the trace at ``path``, checking every line.

    Raises :class:`TraceError` for an empty file, a wrong header, a file with
    no request, or a malformed line (with its line number): a wrong number
    of columns, a ``ts`` that is not a finite number or that goes back by
    more than :data:`BACKWARDS_TOLERANCE`, an empty ``key``, a ``size`` that
    is not a non-negative integer.
    """
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        try:
            yield from _rows(reader)
        except UnicodeDecodeError as exc:
            # Text is decoded a block at a time: the bad byte is somewhere after
            # the last line read.
            raise TraceError(f"not UTF-8 text: {exc.reason} after line {reader.line_num}") from None
        except csv.Error as exc:
            raise TraceError(f"not valid CSV: {exc}", reader.line_num) from None


def scan_trace(path: str | Path) -> TraceSummary:
    """Read the whole trace: how many requests, how many distinct keys, what span."""
    keys: set[str] = set()
    add = keys.add
    requests = 0
    first = last = 0.0
    for ts, key, _, _ in read_trace(path):
        if not requests:
            first = ts
        requests += 1
        last = ts
        add(key)
    return TraceSummary(requests, len(keys), first, max(first, last))


def _rows(reader: _Reader) -> Iterator[TraceRow]:
    header = next(reader, None)
    while header == []:
        header = next(reader, None)
    if header is None:
        raise TraceError(f"empty file: expected the header {','.join(HEADER)}")
    if tuple(h.strip() for h in header) != HEADER:
        raise TraceError(
            f"header is {','.join(header)!r}, expected {','.join(HEADER)}",
            _line(reader),
        )
    latest = -math.inf
    latest_text = ""
    floor = -math.inf
    rows = 0
    for row in reader:
        if len(row) != 4:
            if not row:
                continue
            raise TraceError(f"{len(row)} columns, expected 4 ({','.join(HEADER)})", _line(reader))
        ts_text, key, size_text, client = row
        try:
            ts = float(ts_text)
        except ValueError:
            raise TraceError(f"ts {ts_text!r} is not a number", _line(reader)) from None
        if ts < floor or not math.isfinite(ts):
            if not math.isfinite(ts):
                raise TraceError(f"ts {ts_text!r} is not a finite number", _line(reader))
            raise TraceError(
                f"ts {ts_text} goes back {latest - ts:g} s from {latest_text} "
                f"(more than the {BACKWARDS_TOLERANCE:g} s tolerated; sort the trace by ts)",
                _line(reader),
            )
        if ts > latest:
            if ts > LATEST_SECONDS:
                raise TraceError(
                    f"ts {ts_text} is after the year 5000 in seconds since the epoch; "
                    "a trace in milliseconds or microseconds must be converted to seconds",
                    _line(reader),
                )
            latest = ts
            latest_text = ts_text
            floor = ts - BACKWARDS_TOLERANCE
        if not key:
            raise TraceError("empty key", _line(reader))
        size: int | None = None
        if size_text:
            if not (size_text.isascii() and size_text.isdigit()):
                raise TraceError(f"size {size_text!r} is not a non-negative integer", _line(reader))
            size = int(size_text)
        rows += 1
        yield ts, key, size, client
    if not rows:
        raise TraceError("no requests after the header")


class _Reader(Protocol):
    """A ``csv.reader``: rows, and the physical line number of the last one."""

    @property
    def line_num(self) -> int: ...
    def __iter__(self) -> Iterator[list[str]]: ...
    def __next__(self) -> list[str]: ...


def _line(reader: _Reader) -> int:
    return reader.line_num
