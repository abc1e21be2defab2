"""RunProgress on a virtual clock: counts, rates, ETA, errors, the published shape."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from warmer.progress import MAX_ERROR_CHARS, MAX_ERROR_KEYS, RunProgress, iso_utc

T0 = datetime(2026, 11, 29, 3, 0, 0, tzinfo=UTC).timestamp()

STATUS_KEYS = {
    "run_id",
    "status",
    "strategy",
    "started_at",
    "finished_at",
    "progress",
    "current_batch",
    "performance",
    "errors",
}
PROGRESS_KEYS = {"total_items", "completed", "success", "failed", "percentage"}
BATCH_KEYS = {"batch_size", "processed", "remaining"}
PERFORMANCE_KEYS = {"items_per_second", "average_time_per_item", "estimated_completion"}
ERROR_KEYS = {"key", "error", "retry_count"}


def new(total: int = 10, batch_size: int = 4) -> RunProgress:
    return RunProgress("run1", "scheduled", total, batch_size, started_at=T0)


def assert_shape(body: dict[str, Any]) -> None:
    assert set(body) == STATUS_KEYS
    assert set(body["progress"]) == PROGRESS_KEYS
    assert set(body["current_batch"]) == BATCH_KEYS
    assert set(body["performance"]) == PERFORMANCE_KEYS
    for error in body["errors"]:
        assert set(error) == ERROR_KEYS


def test_fresh_run_status() -> None:
    body = new().to_status(T0)
    assert_shape(body)
    assert body == {
        "run_id": "run1",
        "status": "running",
        "strategy": "scheduled",
        "started_at": "2026-11-29T03:00:00Z",
        "finished_at": None,
        "progress": {
            "total_items": 10,
            "completed": 0,
            "success": 0,
            "failed": 0,
            "percentage": 0.0,
        },
        "current_batch": {"batch_size": 0, "processed": 0, "remaining": 0},
        "performance": {
            "items_per_second": 0.0,
            "average_time_per_item": None,
            "estimated_completion": None,
        },
        "errors": [],
    }


def test_counts_rate_average_and_eta_while_running() -> None:
    p = new(total=10)
    p.batch_started(4, T0)
    p.item_done("/a", True, 0.5, T0 + 1)
    p.item_done("/b", True, 1.5, T0 + 2)
    p.item_done("/c", False, 1.0, T0 + 3, "origin answered 503", retry_count=3)
    p.item_done("/d", True, 2.0, T0 + 4)
    body = p.to_status(T0 + 8)  # 4 items in 8 s
    assert_shape(body)
    assert body["progress"] == {
        "total_items": 10,
        "completed": 4,
        "success": 3,
        "failed": 1,
        "percentage": 40.0,
    }
    assert body["current_batch"] == {"batch_size": 4, "processed": 4, "remaining": 0}
    perf = body["performance"]
    assert perf["items_per_second"] == pytest.approx(0.5)
    assert perf["average_time_per_item"] == pytest.approx(1.25)
    # 6 left at 0.5/s: 12 s after now.
    assert perf["estimated_completion"] == "2026-11-29T03:00:20Z"
    assert body["errors"] == [{"key": "/c", "error": "origin answered 503", "retry_count": 3}]


def test_rate_keeps_falling_while_nothing_completes() -> None:
    p = new(total=4)
    p.item_done("/a", True, 0.1, T0 + 1)
    assert p.to_status(T0 + 2)["performance"]["items_per_second"] == pytest.approx(0.5)
    assert p.to_status(T0 + 10)["performance"]["items_per_second"] == pytest.approx(0.1)
    # 3 left at 0.1/s: 30 s after now.
    assert p.to_status(T0 + 10)["performance"]["estimated_completion"] == "2026-11-29T03:00:40Z"


def test_percentage_rounds_to_one_decimal_and_never_passes_100() -> None:
    p = new(total=3)
    p.item_done("/a", True, 0.1, T0)
    assert p.to_status(T0)["progress"]["percentage"] == 33.3
    p.item_done("/b", True, 0.1, T0)
    assert p.to_status(T0)["progress"]["percentage"] == 66.7
    for key in ("/c", "/d"):
        p.item_done(key, True, 0.1, T0)
    assert p.to_status(T0)["progress"]["percentage"] == 100.0


def test_add_total_grows_the_run() -> None:
    p = new(total=0)
    assert p.to_status(T0)["progress"]["percentage"] == 0.0
    p.add_total(3)
    p.add_total(1)
    p.item_done("/a", True, 0.1, T0 + 1)
    body = p.to_status(T0 + 1)
    assert body["progress"]["total_items"] == 4
    assert body["progress"]["percentage"] == 25.0
    with pytest.raises(ValueError):
        p.add_total(-1)


def test_empty_run_finished_is_100_percent() -> None:
    p = new(total=0)
    p.finish(T0 + 1, "completed")
    body = p.to_status(T0 + 5)
    assert body["progress"]["percentage"] == 100.0
    assert body["status"] == "completed"
    assert body["performance"]["items_per_second"] == 0.0
    assert body["performance"]["estimated_completion"] == "2026-11-29T03:00:01Z"


def test_after_finish_figures_freeze_at_the_finish_time() -> None:
    p = new(total=4)
    for i, key in enumerate(["/a", "/b", "/c", "/d"]):
        p.item_done(key, True, 0.25, T0 + i + 1)
    p.finish(T0 + 4, "completed")
    early, late = p.to_progress(T0 + 4), p.to_progress(T0 + 4000)
    assert early == late
    assert late["status"] == "completed"
    assert late["finished_at"] == "2026-11-29T03:00:04Z"
    assert late["performance"] == {
        "items_per_second": 1.0,
        "average_time_per_item": 0.25,
        "estimated_completion": "2026-11-29T03:00:04Z",
    }
    assert late["elapsed_seconds"] == 4.0


@pytest.mark.parametrize("state", ["completed", "stopped", "failed"])
def test_finish_states(state: str) -> None:
    p = new()
    p.finish(T0 + 1, state)
    assert p.status == state
    assert p.to_status(T0 + 2)["status"] == state


def test_first_finish_wins() -> None:
    p = new()
    p.finish(T0 + 1, "stopped")
    p.finish(T0 + 2, "completed")
    assert p.status == "stopped"
    assert p.finished_at == T0 + 1


def test_finish_rejects_an_unknown_state() -> None:
    p = new()
    with pytest.raises(ValueError, match="completed, stopped, failed"):
        p.finish(T0, "running")
    assert p.status == "running"


def test_stopped_run_without_progress_has_no_rate_and_eta_is_its_end() -> None:
    p = new(total=5)
    p.finish(T0 + 3, "stopped")
    body = p.to_status(T0 + 10)
    assert body["progress"]["percentage"] == 0.0
    assert body["performance"]["items_per_second"] == 0.0
    assert body["performance"]["estimated_completion"] == "2026-11-29T03:00:03Z"


def test_current_batch_counts_and_overlap() -> None:
    p = new(total=10, batch_size=4)
    p.batch_started(3, T0)
    p.item_done("/a", True, 0.1, T0 + 1)
    assert p.to_status(T0 + 1)["current_batch"] == {
        "batch_size": 3,
        "processed": 1,
        "remaining": 2,
    }
    p.batch_started(4, T0 + 2)
    # Late items of the previous batch and this batch's items: never past its size.
    for key in ("/b", "/c", "/d", "/e", "/f", "/g"):
        p.item_done(key, True, 0.1, T0 + 3)
    assert p.to_status(T0 + 3)["current_batch"] == {
        "batch_size": 4,
        "processed": 4,
        "remaining": 0,
    }


def test_retrying_item_shows_its_latest_error_then_clears_on_success() -> None:
    p = new()
    p.item_retrying("/a", "timed out after 30s", 1)
    p.item_retrying("/a", "origin answered 502", 2)
    p.item_retrying("/b", "origin answered 500", 1)
    body = p.to_status(T0)
    assert body["errors"] == [
        {"key": "/b", "error": "origin answered 500", "retry_count": 1},
        {"key": "/a", "error": "origin answered 502", "retry_count": 2},
    ]
    assert body["progress"]["completed"] == 0
    p.item_done("/a", True, 0.3, T0 + 1, retry_count=2)
    assert [e["key"] for e in p.to_status(T0 + 1)["errors"]] == ["/b"]
    p.item_done("/b", False, 0.3, T0 + 1, None, retry_count=3)
    assert p.to_status(T0 + 1)["errors"] == [{"key": "/b", "error": "failed", "retry_count": 3}]


def test_errors_are_bounded_to_the_newest_keys() -> None:
    p = new(total=1000)
    for i in range(MAX_ERROR_KEYS + 50):
        p.item_done(f"/k{i}", False, 0.1, T0 + i, f"error {i}")
    # An old key failing again counts as new.
    p.item_retrying("/k60", "again", 4)
    errors = p.to_status(T0 + 200)["errors"]
    assert len(errors) == MAX_ERROR_KEYS
    assert errors[0] == {"key": "/k60", "error": "again", "retry_count": 4}
    keys = [e["key"] for e in errors]
    assert keys[1] == f"/k{MAX_ERROR_KEYS + 49}"
    assert "/k50" in keys
    assert "/k49" not in keys
    assert len(set(keys)) == len(keys)


def test_long_error_messages_are_cut() -> None:
    p = new()
    p.item_done("/a", False, 0.1, T0, "x" * 10_000)
    assert len(p.to_status(T0)["errors"][0]["error"]) == MAX_ERROR_CHARS


def test_to_progress_is_status_plus_elapsed_seconds() -> None:
    p = new(total=10)
    p.item_done("/a", True, 0.1, T0 + 1)
    body = p.to_progress(T0 + 7.5)
    assert set(body) == STATUS_KEYS | {"elapsed_seconds"}
    assert body["elapsed_seconds"] == 7.5
    del body["elapsed_seconds"]
    assert body == p.to_status(T0 + 7.5)


def test_clock_before_start_gives_no_negative_figures() -> None:
    p = new(total=10)
    body = p.to_progress(T0 - 5)
    assert body["elapsed_seconds"] == 0.0
    assert body["performance"]["items_per_second"] == 0.0


def test_iso_utc() -> None:
    assert iso_utc(None) is None
    assert iso_utc(0.0) == "1970-01-01T00:00:00Z"
    assert iso_utc(T0 + 0.9) == "2026-11-29T03:00:00Z"
    assert iso_utc(1e300) is None


def test_eta_beyond_the_calendar_is_null() -> None:
    p = new(total=10**18)
    p.item_done("/a", True, 0.1, T0 + 1e6)
    assert p.to_status(T0 + 1e6)["performance"]["estimated_completion"] is None


events = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 5)),
        st.tuples(st.just("done"), st.booleans()),
        st.tuples(st.just("retry"), st.integers(1, 5)),
        st.tuples(st.just("batch"), st.integers(0, 8)),
        st.tuples(st.just("tick"), st.floats(0, 100)),
    ),
    max_size=60,
)


@given(events, st.sampled_from([None, "completed", "stopped", "failed"]))
def test_any_history_gives_a_consistent_status(
    script: list[tuple[str, Any]], end: str | None
) -> None:
    p = new(total=0)
    now = T0
    for i, (kind, arg) in enumerate(script):
        if kind == "add":
            p.add_total(int(arg))
        elif kind == "done":
            p.item_done(f"/{i % 7}", bool(arg), 0.5, now, None if arg else "boom")
        elif kind == "retry":
            p.item_retrying(f"/{i % 7}", "boom", int(arg))
        elif kind == "batch":
            p.batch_started(int(arg), now)
        else:
            now += float(arg)
    if end is not None:
        p.finish(now, end)
    body = p.to_progress(now + 1)
    assert set(body) == STATUS_KEYS | {"elapsed_seconds"}
    assert_shape(p.to_status(now + 1))
    prog, batch, perf = body["progress"], body["current_batch"], body["performance"]
    assert prog["completed"] == prog["success"] + prog["failed"]
    assert 0.0 <= prog["percentage"] <= 100.0
    assert 0 <= batch["processed"] <= batch["batch_size"]
    assert batch["remaining"] == batch["batch_size"] - batch["processed"]
    assert perf["items_per_second"] >= 0.0
    if prog["completed"]:
        assert perf["average_time_per_item"] == pytest.approx(0.5)
    assert len(body["errors"]) <= 7
    assert body["elapsed_seconds"] >= 0.0
    assert (body["finished_at"] is None) == (end is None)
    if end is not None:
        assert body["performance"]["estimated_completion"] == body["finished_at"]
