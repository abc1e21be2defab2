"""Where the predictive model lives between restarts: one JSON file.

The file is written whole to a temporary name and renamed over the old one,
so a crash mid-write leaves the previous model.  A file that cannot be used
(damaged, from another model version, trained for another prediction window)
is never fatal: it is logged, set aside as ``<name>.bad`` for a look, and the
model starts afresh and is saved over it at the next save.  Reading, encoding
and writing run in a thread: a large model takes milliseconds to encode.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import Any

import orjson

from warmer.predictive import ModelFileError, Predictor

log = logging.getLogger(__name__)


class ModelStore:
    """Saves and loads a :class:`Predictor`'s learned state at ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    async def load_into(self, predictor: Predictor) -> bool:
        """Load the saved model into ``predictor``; False when there was none usable."""
        try:
            document = await asyncio.to_thread(self._read)
        except FileNotFoundError:
            return False
        except (OSError, orjson.JSONDecodeError) as exc:
            self._set_aside(f"unreadable: {exc}")
            return False
        try:
            predictor.load_document(document)
        except ModelFileError as exc:
            self._set_aside(str(exc))
            return False
        log.info("predictive model loaded from %s (%d keys)", self.path, len(predictor))
        return True

    async def save(self, predictor: Predictor) -> None:
        document = predictor.to_document()
        try:
            await asyncio.to_thread(self._write, document)
        except OSError as exc:
            log.error("predictive model not saved to %s: %s", self.path, exc)

    def _read(self) -> Any:
        return orjson.loads(self.path.read_bytes())

    def _write(self, document: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_bytes(orjson.dumps(document))
        os.replace(tmp, self.path)

    def _set_aside(self, why: str) -> None:
        bad = self.path.with_name(self.path.name + ".bad")
        log.error("predictive model at %s not used (%s); starting afresh", self.path, why)
        with contextlib.suppress(OSError):
            os.replace(self.path, bad)
