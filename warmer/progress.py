"""Progress of one warming run, in the control API's published shape.

:class:`RunProgress` is fed by the executor (items added, batches started,
items done or retrying, the end of the run) and renders the body of
``GET /cache/warming/status`` and ``/progress`` (DESIGN §5).  Sans-I/O: it
never reads a clock; every figure is computed from the ``now`` it is given.
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any, Final, Literal, cast, get_args

RunState = Literal["running", "completed", "stopped", "failed"]
FinalState = Literal["completed", "stopped", "failed"]
FINAL_STATES: Final[tuple[str, ...]] = get_args(FinalState)

#: Keys whose latest error is kept (the most recently failing ones).
MAX_ERROR_KEYS: Final = 100
#: Error messages are cut to this many characters (origin errors can be long).
MAX_ERROR_CHARS: Final = 500


def iso_utc(ts: float | None) -> str | None:
    """``ts`` (seconds since the epoch) as ISO-8601 UTC to the second, e.g.
    ``"2026-11-29T03:12:00Z"``; None for None or a time no calendar can show."""
    if ts is None:
        return None
    try:
        return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, ValueError, OSError):
        # An ETA from a near-zero rate can lie beyond year 9999.
        return None


class RunProgress:
    """What one warming run has done so far, and how fast.

    ``completed`` counts items whose outcome is final (``success`` +
    ``failed``); an item being retried is not completed yet.
    """

    def __init__(
        self, run_id: str, strategy: str, total: int, batch_size: int, started_at: float
    ) -> None:
        if total < 0:
            raise ValueError(f"total must not be negative, got {total}")
        self.run_id = run_id
        self.strategy = strategy
        self.total = total
        #: The configured batch size (the largest a batch can be).
        self.batch_size = batch_size
        self.started_at = started_at
        self.finished_at: float | None = None
        self.status: RunState = "running"
        self.success = 0
        self.failed = 0
        self.seconds_total = 0.0  # summed over completed items
        self.updated_at = started_at  # when an item last completed
        # The current batch: none has started until batch_started() is called.
        self.batch_items = 0
        self.batch_processed = 0
        # key -> (error, retry_count), oldest first; a key moves to the end
        # when its error is updated.
        self._errors: OrderedDict[str, tuple[str, int]] = OrderedDict()

    # ------------------------------------------------------------- updates

    @property
    def completed(self) -> int:
        """Items with a final outcome, successful or not."""
        return self.success + self.failed

    @property
    def running(self) -> bool:
        return self.status == "running"

    def add_total(self, n: int) -> None:
        """Count ``n`` more items in the run (sources discover them as they go)."""
        if n < 0:
            raise ValueError(f"add_total: n must not be negative, got {n}")
        self.total += n

    def batch_started(self, size: int, now: float) -> None:
        """A batch of ``size`` of this run's items was taken for fetching."""
        if size < 0:
            raise ValueError(f"batch_started: size must not be negative, got {size}")
        self.batch_items = size
        self.batch_processed = 0

    def item_done(
        self,
        key: str,
        ok: bool,
        seconds: float,
        now: float,
        error: str | None = None,
        retry_count: int = 0,
    ) -> None:
        """An item's final outcome; ``seconds`` is what fetching it took.

        A failed item's error (``error``, or ``"failed"`` if none is given)
        becomes its key's latest error; a successful item's earlier error
        (from a retry) is dropped, since the list shows what is wrong now.
        """
        if ok:
            self.success += 1
            self._errors.pop(key, None)
        else:
            self.failed += 1
            self._record_error(key, error or "failed", retry_count)
        self.seconds_total += max(0.0, seconds)
        self.updated_at = now
        # Batches overlap (the next one is taken while the last fetches of
        # this one still run), so a late item must not push the count past
        # the batch.
        if self.batch_processed < self.batch_items:
            self.batch_processed += 1

    def item_retrying(self, key: str, error: str, retry_count: int) -> None:
        """An item failed and will be tried again (``retry_count`` tries so far)."""
        self._record_error(key, error or "failed", retry_count)

    def finish(self, now: float, state: str) -> None:
        """End the run as ``"completed"``, ``"stopped"`` or ``"failed"``.

        Only the first call counts: a run stopped while its last item was
        completing keeps whichever end was reported first.
        """
        if state not in FINAL_STATES:
            raise ValueError(
                f"finish: state must be one of {', '.join(FINAL_STATES)}, got {state!r}"
            )
        if not self.running:
            return
        self.status = cast(FinalState, state)
        self.finished_at = max(now, self.started_at)

    def _record_error(self, key: str, error: str, retry_count: int) -> None:
        self._errors[key] = (error[:MAX_ERROR_CHARS], retry_count)
        self._errors.move_to_end(key)
        while len(self._errors) > MAX_ERROR_KEYS:
            self._errors.popitem(last=False)

    # ------------------------------------------------------------ figures

    def elapsed(self, now: float) -> float:
        """Seconds the run has taken: until ``now`` while running, until its end after."""
        end = self.finished_at if self.finished_at is not None else now
        return max(0.0, end - self.started_at)

    def percentage(self) -> float:
        """Completed share of the items, 0..100, to one decimal."""
        if self.total <= 0:
            return 0.0 if self.running else 100.0
        return min(100.0, round(100.0 * self.completed / self.total, 1))

    def items_per_second(self, now: float) -> float:
        """Completed items per second of the run's elapsed time."""
        elapsed = self.elapsed(now)
        return self.completed / elapsed if elapsed > 0 else 0.0

    def average_time_per_item(self) -> float | None:
        """Mean seconds a completed item took to fetch; None before any completed."""
        return self.seconds_total / self.completed if self.completed else None

    def estimated_completion(self, now: float) -> float | None:
        """When the run is expected to end (its end once it has ended).

        None while running at no measurable rate yet.
        """
        if self.finished_at is not None:
            return self.finished_at
        rate = self.items_per_second(now)
        if rate <= 0:
            return None
        remaining = max(0, self.total - self.completed)
        return now + remaining / rate

    def errors(self) -> list[dict[str, Any]]:
        """The latest error of each recently failing key, newest first."""
        return [
            {"key": key, "error": error, "retry_count": retry_count}
            for key, (error, retry_count) in reversed(self._errors.items())
        ]

    def to_status(self, now: float) -> dict[str, Any]:
        """The body of ``GET /cache/warming/status`` (the published shape)."""
        average = self.average_time_per_item()
        return {
            "run_id": self.run_id,
            "status": self.status,
            "strategy": self.strategy,
            "started_at": iso_utc(self.started_at),
            "finished_at": iso_utc(self.finished_at),
            "progress": {
                "total_items": self.total,
                "completed": self.completed,
                "success": self.success,
                "failed": self.failed,
                "percentage": self.percentage(),
            },
            "current_batch": {
                "batch_size": self.batch_items,
                "processed": self.batch_processed,
                "remaining": self.batch_items - self.batch_processed,
            },
            "performance": {
                "items_per_second": self.items_per_second(now),
                "average_time_per_item": average,
                "estimated_completion": iso_utc(self.estimated_completion(now)),
            },
            "errors": self.errors(),
        }

    def to_progress(self, now: float) -> dict[str, Any]:
        """The body of ``GET /cache/warming/progress``: the status plus ``elapsed_seconds``."""
        body = self.to_status(now)
        body["elapsed_seconds"] = self.elapsed(now)
        return body
