"""Where the schedule posted through the control API outlives a restart.

With the Redis store the schedule lives in Redis under the deployment's
prefix, so every replica sharing it sees the same schedule, and each firing
is claimed with one ``SET NX`` key so several replicas fire it once (as arq
does).  Without Redis it is a JSON file in the state directory, replaced
atomically (write, fsync, rename, fsync the directory): a crash leaves the
old or the new schedule, never half of one, and the temporary file a crash
left behind is removed at the next start.

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
from redis.asyncio import Redis

FIRING_CLAIM_SECONDS = 24 * 3600
_TMP_PREFIX = ".schedule-"
_TMP_SUFFIX = ".tmp"

log = logging.getLogger(__name__)


class ScheduleStateError(Exception):
    """The saved schedule could not be read or written."""


class ScheduleState(Protocol):
    async def load(self) -> dict[str, Any] | None:
        """The saved schedule document, or None when none was saved."""
        ...

    async def save(self, document: dict[str, Any]) -> None:
        """Replace the saved schedule.  Raises ScheduleStateError."""
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

    async def save(self, document: dict[str, Any]) -> None:
        await asyncio.to_thread(self._save, orjson.dumps(document, option=orjson.OPT_INDENT_2))

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


class RedisScheduleState:
    """The schedule under ``<prefix>warmer:schedule`` in Redis."""

    def __init__(self, url: str, prefix: str, timeout: float = 2.0) -> None:
        self._redis: Redis = Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self._key = f"{prefix}warmer:schedule"
        self._claims = f"{prefix}warmer:fired:"

    def describe(self) -> str:
        return f"redis key {self._key}"

    async def load(self) -> dict[str, Any] | None:
        try:
            data = await self._redis.get(self._key)
        except Exception as exc:
            raise ScheduleStateError(f"cannot read {self._key} from Redis: {exc}") from exc
        if data is None:
            return None
        return _decode(data, self._key)

    async def save(self, document: dict[str, Any]) -> None:
        try:
            await self._redis.set(self._key, orjson.dumps(document))
        except Exception as exc:
            raise ScheduleStateError(f"cannot write {self._key} to Redis: {exc}") from exc

    async def claim(self, name: str, firing: float) -> bool:
        key = f"{self._claims}{name}:{int(firing)}"
        try:
            return bool(await self._redis.set(key, b"1", nx=True, ex=FIRING_CLAIM_SECONDS))
        except Exception:
            # Redis down: better a firing twice on two replicas than never.
            return True

    async def close(self) -> None:
        await self._redis.aclose()
