"""State that outlives a restart, kept as one JSON file: the predictive model and
the effectiveness ledger.

The file is written whole to a temporary name and renamed over the old one,
so a crash mid-write leaves the previous state.  A file that cannot be used
(damaged, from another format version, or refused by the part it belongs to)
is never fatal: it is logged, set aside as ``<name>.bad`` for a look, and that
part starts afresh and is saved over it at the next save.  Reading, encoding
and writing run in a thread: a large model takes milliseconds to encode.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger(__name__)


class StateFile:
    """One part's saved state at ``path``; ``what`` names the part in logs."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what

    async def load(self, restore: Callable[[Any], None]) -> bool:
        """Hand the saved document to ``restore``; False when there was none usable.

        ``restore`` raises ValueError for a document it cannot take, and must
        then leave its part as it was (nothing half-applied).
        """
        try:
            document = await asyncio.to_thread(self._read)
        except FileNotFoundError:
            return False
        except (OSError, orjson.JSONDecodeError) as exc:
            self._set_aside(f"unreadable: {exc}")
            return False
        try:
            restore(document)
        except ValueError as exc:
            self._set_aside(str(exc))
            return False
        log.info("%s loaded from %s", self.what, self.path)
        return True

    async def save(self, document: dict[str, Any]) -> None:
        try:
            await asyncio.to_thread(self._write, document)
        except OSError as exc:
            log.error("%s not saved to %s: %s", self.what, self.path, exc)

    def _read(self) -> Any:
        return orjson.loads(self.path.read_bytes())

    def _write(self, document: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # A temporary name of its own: a save still running in its thread
        # when another starts (a periodic save cancelled by the shutdown's,
        # whose thread cannot be stopped) must neither truncate the other's
        # file nor find it renamed away.
        fd, name = tempfile.mkstemp(
            dir=self.path.parent, prefix=self.path.name + ".", suffix=".tmp"
        )
        try:
            # Synced before the rename: else a crash soon after can leave the
            # new name pointing at an empty or partial file (delayed allocation).
            with open(fd, "wb") as f:
                f.write(orjson.dumps(document))
                f.flush()
                os.fsync(f.fileno())
            os.replace(name, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(name)
            raise

    def _set_aside(self, why: str) -> None:
        bad = self.path.with_name(self.path.name + ".bad")
        log.error("%s at %s not used (%s); starting afresh", self.what, self.path, why)
        with contextlib.suppress(OSError):
            os.replace(self.path, bad)
