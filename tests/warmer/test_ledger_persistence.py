"""The effectiveness ledger saved at shutdown and continued after a restart."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from tests.warmer.events import Ev
from warmer.ledger import EffectivenessLedger, LedgerFileError
from warmer.state_file import StateFile

T0 = 1_767_225_600.0


def _busy_ledger() -> EffectivenessLedger:
    ledger = EffectivenessLedger()
    ledger.observe(Ev(T0, "/x", "miss"), latency=0.2)
    ledger.origin_fetch(T0, 0.2)
    ledger.warm_stored("/a", T0 + 1, T0 + 60, label="scheduled:sitemap", bytes=100)
    ledger.warm_stored("/b", T0 + 1, T0 + 30, label="predictive", bytes=50)
    ledger.warm_not_stored("/c", T0 + 1, label="predictive", failed=True)
    ledger.run_active(True, T0 + 1)
    ledger.observe(Ev(T0 + 2, "/a", "hit", T0 + 60, warmed=True), latency=0.001)
    ledger.run_active(False, T0 + 5)
    return ledger


def _round_trip(ledger: EffectivenessLedger) -> EffectivenessLedger:
    again = EffectivenessLedger()
    again.load_document(orjson.loads(orjson.dumps(ledger.to_document())))
    return again


def test_a_restored_ledger_reports_the_same_figures() -> None:
    ledger = _busy_ledger()
    saved = ledger.figures(T0 + 5).to_stats()  # as the shutdown's save settles it
    again = _round_trip(ledger)
    assert again.figures(T0 + 5).to_stats() == saved
    assert len(again) == 2


def test_open_warmed_entries_are_still_followed_after_a_restart() -> None:
    again = _round_trip(_busy_ledger())
    # /b was warmed before the restart and is hit after it: used, not unused.
    again.observe(Ev(T0 + 20, "/b", "hit", T0 + 30, warmed=True))
    f = again.figures(T0 + 61)
    assert (f.warmed_used, f.warmed_unused, f.warmed_open) == (2, 0, 0)
    assert f.by_label["predictive"].misses_prevented == 1
    assert f.precision == 1.0
    # The counters went on from where they were.
    assert (f.requests, f.hits, f.warm_fetches) == (3, 2, 3)


def test_the_downtime_counts_in_no_phase() -> None:
    ledger = _busy_ledger()
    before = ledger.figures(T0 + 10)
    again = _round_trip(ledger)
    again.observe(Ev(T0 + 3600, "/x", "miss"))
    after = again.figures(T0 + 3600)
    seconds = after.outside_runs.seconds + after.during_runs.seconds
    assert seconds == pytest.approx(before.outside_runs.seconds + before.during_runs.seconds)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(format="something else"), "not a warmproxy"),
        (lambda d: d.update(version=99), "version 99"),
        (lambda d: d["totals"].update(hits="many"), "damaged"),
        (lambda d: d["totals"].pop("misses"), "damaged"),
        (lambda d: d["phases"]["during_runs"].update(extra=1), "damaged"),
        (lambda d: d["open"].append(["/z", "nobody", T0, T0 + 1, 0]), "damaged"),
        (lambda d: d["open"].append(["/z"]), "damaged"),
    ],
)
def test_a_damaged_document_is_refused_and_nothing_is_changed(change, message) -> None:  # type: ignore[no-untyped-def]
    ledger = _busy_ledger()
    document = orjson.loads(orjson.dumps(ledger.to_document()))
    change(document)
    target = EffectivenessLedger()
    target.observe(Ev(T0, "/kept", "hit"))
    with pytest.raises(LedgerFileError, match=message):
        target.load_document(document)
    assert target.figures(T0).hits == 1
    assert len(target) == 0


def test_the_file_is_set_aside_when_damaged_and_written_again(tmp_path: Path) -> None:
    path = tmp_path / "effectiveness.json"
    path.write_text('{"format": "warmproxy-effectiveness", "version": 1, "tot')
    file = StateFile(path, "effectiveness ledger")
    ledger = EffectivenessLedger()
    assert asyncio.run(file.load(ledger.load_document)) is False
    assert (tmp_path / "effectiveness.json.bad").exists()
    asyncio.run(file.save(_busy_ledger().to_document()))
    fresh = EffectivenessLedger()
    assert asyncio.run(file.load(fresh.load_document)) is True
    assert fresh.figures(T0 + 10).warm_fetches == 3
