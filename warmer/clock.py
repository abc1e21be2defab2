"""Time as the runners see it: what time it is, and how to wait.

The warmer's decisions take ``now`` as an argument (DESIGN rule 2); only the
thin runners (the asyncio loops of the live warmer, the proxy's handlers)
ask a :class:`Clock`.  The wall clock serves production; a
:class:`ScaledClock` runs a recorded trace through the real proxy faster
than real time (``warmproxy replay --live``); tests drive a
:class:`ManualClock` by hand.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    """Seconds since the epoch, and a sleep measured on the same clock."""

    def __call__(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class WallClock:
    """Real time."""

    def __call__(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class ScaledClock:
    """Time that starts at ``start`` and runs ``speed`` times faster than real time.

    A sleep of ``s`` seconds on it takes ``s / speed`` real seconds, so the
    warmer's tick (one second) keeps its meaning on the scaled clock.
    """

    def __init__(self, start: float, speed: float) -> None:
        if not speed > 0:
            raise ValueError(f"speed must be positive, got {speed}")
        self.start = start
        self.speed = speed
        self._real_start = time.monotonic()

    def __call__(self) -> float:
        return self.start + (time.monotonic() - self._real_start) * self.speed

    def real_seconds_until(self, ts: float) -> float:
        """Real seconds until the scaled clock reads ``ts`` (0 when past)."""
        return max(0.0, (ts - self()) / self.speed)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.speed)


class ManualClock:
    """Time that moves only when told (tests): ``advance`` wakes due sleepers."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.now + seconds, future))
        await future

    def advance(self, seconds: float) -> None:
        """Move time on by ``seconds`` and wake every sleeper whose time has come."""
        self.now += seconds
        still: list[tuple[float, asyncio.Future[None]]] = []
        for until, future in self._sleepers:
            if future.done():
                continue
            if until <= self.now:
                future.set_result(None)
            else:
                still.append((until, future))
        self._sleepers = still
