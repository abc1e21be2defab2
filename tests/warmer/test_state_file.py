"""State files: written whole, whatever saves overlap."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import orjson
import pytest

from warmer.state_file import StateFile


async def test_overlapping_saves_each_write_a_whole_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A periodic save still in its thread when the shutdown's starts (its
    task was cancelled; the thread runs on) used to share one temporary
    name: one save found it renamed away and logged an error, and the two
    writers could mix their bytes."""
    path = tmp_path / "state" / "model.json"
    file = StateFile(path, "predictive model")
    documents = [{"n": n, "pad": "x" * (200_000 if n % 2 else 10)} for n in range(8)]
    with caplog.at_level(logging.ERROR):
        await asyncio.gather(*(file.save(d) for d in documents))
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert orjson.loads(path.read_bytes()) in documents
    # Nothing is left behind but the file itself.
    assert [p.name for p in path.parent.iterdir()] == ["model.json"]
    loaded: list[object] = []
    assert await file.load(loaded.append)
    assert loaded[0] in documents
