"""Where the schedule posted through the control API outlives a restart.

With the Redis store the schedule is one document in Redis that every
replica follows, and each firing is claimed with one ``SET NX`` key so
several replicas fire it once (as arq does): that state lives in the proxy
(:mod:`proxy.fleet_schedule`), behind the :class:`ScheduleState` protocol
below, so the warmer stays free of I/O libraries.  Without Redis it is a
JSON file in the state directory, replaced atomically (write, fsync, rename,
fsync the directory): a crash leaves the old or the new schedule, never half
of one, and the temporary file a crash left behind is removed at the next
start.  (With Redis each replica keeps such a file too, as its copy.)

What is saved is the schedule as shown: DSN passwords masked (see
:mod:`warmer.schedule`), so no password is written in clear.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Protocol

import orjson

_TMP_PREFIX = ".schedule-"
_TMP_SUFFIX = ".tmp"

log = logging.getLogger(__name__)


class ScheduleStateError(Exception):
    """The saved schedule could not be read or written."""


class ScheduleState(Protocol):
    #: True when the saved schedule is shared by every replica (Redis): then
    #: a reload's change of the configuration file's schedule is saved too,
    #: like a post, so every replica follows it.
    shared: bool

    async def load(self) -> dict[str, Any] | None:
        """The saved schedule document, or None when none was saved."""
        ...

    async def save(self, document: dict[str, Any], *, at: float | None = None) -> None:
        """Replace the saved schedule, posted at ``at`` (the warmer's clock).
        Raises ScheduleStateError."""
        ...

    async def saved_at(self) -> float | None:
        """When the saved schedule was posted, where known."""
        ...

    async def claim(self, name: str, firing: float) -> bool:
        """True for exactly one caller per (source, firing time)."""
        ...

    async def close(self) -> None: ...

    def describe(self) -> str: ...


def _decode(data: bytes | str, where: str) -> dict[str, Any]:
    """The saved schedule document; ScheduleStateError naming ``where`` if it is not one."""
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ScheduleStateError(f"{where} is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise ScheduleStateError(f"{where} does not hold a schedule object")
    return document


class FileScheduleState:
    """The schedule as ``schedule.json`` in the state directory."""

    shared = False

    def __init__(self, directory: Path) -> None:
        self.path = directory / "schedule.json"

    def describe(self) -> str:
        return f"file {self.path}"

    async def load(self) -> dict[str, Any] | None:
        return await asyncio.to_thread(self._load)

    def _load(self) -> dict[str, Any] | None:
        self._remove_leftovers()
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ScheduleStateError(f"cannot read {self.path}: {exc.strerror}") from exc
        return _decode(data, str(self.path))

    async def save(self, document: dict[str, Any], *, at: float | None = None) -> None:
        # The file is rewritten at every post: its time is the post's.
        await asyncio.to_thread(self._save, orjson.dumps(document, option=orjson.OPT_INDENT_2))

    async def saved_at(self) -> float | None:
        try:
            return (await asyncio.to_thread(self.path.stat)).st_mtime
        except OSError:
            return None

    def _save(self, data: bytes) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=_TMP_PREFIX, suffix=_TMP_SUFFIX)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            _fsync_directory(self.path.parent)
        except OSError as exc:
            raise ScheduleStateError(f"cannot write {self.path}: {exc.strerror}") from exc

    def _remove_leftovers(self) -> None:
        """Remove temporary files of writes a crash interrupted (one process
        owns the state directory, so none is being written now)."""
        with contextlib.suppress(OSError):
            for leftover in self.path.parent.glob(f"{_TMP_PREFIX}*{_TMP_SUFFIX}"):
                try:
                    leftover.unlink()
                    log.info("removed %s, left by an interrupted schedule write", leftover)
                except OSError as exc:
                    log.warning("cannot remove %s: %s", leftover, exc.strerror)

    async def claim(self, name: str, firing: float) -> bool:
        return True  # one process owns its state directory

    async def close(self) -> None:
        return None


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX: the new directory entry
    is on disk only once the directory is synced)."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
