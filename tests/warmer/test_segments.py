"""SegmentTracker and its distinct counter, on a virtual clock."""

from __future__ import annotations

import calendar
import json
import tracemalloc
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from warmer.segments import SEGMENTS, HyperLogLog, SegmentTracker

T0 = float(calendar.timegm((2024, 1, 1, 0, 0, 0)))
DAY = 86400.0


@dataclass(frozen=True)
class Ev:
    """An access event as the warmer reads it (warmer.model.Observed)."""

    ts: float
    url: str
    client: str
    outcome: str = "hit"
    host: str = "example.test"
    fresh_until: float = 0.0
    warmed: bool = False
    vary: tuple[str, ...] = ()
    vary_values: tuple[str | None, ...] = ()
    coding: str = ""

    @property
    def key(self) -> str:
        return f"{self.host}{self.url}"


def population(
    s: SegmentTracker, heavy: int, occasional: int, *, scale: int = 1, start: float = T0
) -> float:
    """Heavy clients (200 requests each, all hits, of /api/*) and occasional ones
    (2 requests each, all misses, of /landing), interleaved; returns the last time."""
    ts = start
    for round_ in range(200 * scale):
        for h in range(heavy):
            ts += 0.01
            s.observe(Ev(ts, f"/api/{round_ % 3}", f"bot-{h}", "hit"))
        if round_ < 2 * scale:
            for o in range(occasional):
                ts += 0.01
                s.observe(Ev(ts, "/landing", f"visitor-{o}", "miss"))
    return ts


def test_heavy_clients_are_told_from_occasional_ones() -> None:
    s = SegmentTracker(max_clients=400)
    ts = population(s, heavy=5, occasional=300)
    report = s.report(ts, n=5)
    json.dumps(report)
    assert report["requests"] == 5 * 200 + 300 * 2
    assert abs(report["distinct_clients"] - 305) <= 10  # an estimate
    segments = report["segments"]
    assert list(segments) == list(SEGMENTS)
    heavy, regular, occasional = (segments[name] for name in SEGMENTS)
    assert heavy["clients"] == 5
    assert heavy["requests"] == 1000
    assert heavy["share"] == pytest.approx(1000 / 1600, abs=1e-4)
    assert heavy["hit_ratio"] == 1.0
    assert {k["key"] for k in heavy["top_keys"]} == {f"example.test/api/{i}" for i in range(3)}
    assert regular["clients"] == 0
    assert regular["hit_ratio"] is None  # no request: not measurable
    assert abs(occasional["clients"] - 300) <= 10
    assert occasional["requests"] == 600
    assert occasional["hit_ratio"] == 0.0
    assert occasional["top_keys"] == [{"key": "example.test/landing", "count": 600}]
    top = report["top_clients"]
    assert [c["client"] for c in top] == [f"bot-{i}" for i in range(5)]
    assert all(c["segment"] == "heavy" and c["requests"] == 200 for c in top)
    assert top[0]["first_seen"] == "2024-01-01T00:00:00Z"
    assert top[0]["top_keys"][0]["key"].startswith("example.test/api/")


def test_segments_follow_the_shape_not_the_volume() -> None:
    def split(scale: int) -> tuple[dict[str, int], float]:
        s = SegmentTracker(max_clients=500)
        ts = population(s, heavy=5, occasional=300, scale=scale)
        report = s.report(ts)
        clients = {name: seg["clients"] for name, seg in report["segments"].items()}
        return clients, report["thresholds"]["heavy"]

    once, heavy_once = split(1)
    twice, heavy_twice = split(2)
    assert once == twice  # the same people, twice as busy: the same segments
    assert heavy_twice == pytest.approx(2 * heavy_once, rel=1e-3)  # rounded in the report


def test_regular_clients_sit_between() -> None:
    s = SegmentTracker(max_clients=100)
    ts = T0
    # Mean requests per client: (1 * 100 + 10 * 10 + 89 * 1) / 100 = 2.89;
    # heavy from 11.56, regular from 2.89.
    for _ in range(100):
        ts += 1
        s.observe(Ev(ts, "/big", "big", "hit"))
    for c in range(10):
        for _ in range(10):
            ts += 1
            s.observe(Ev(ts, "/mid", f"mid-{c}"))
    for c in range(89):
        ts += 1
        s.observe(Ev(ts, "/small", f"small-{c}"))
    report = s.report(ts)
    by_client = {c["client"]: c["segment"] for c in report["top_clients"]}
    assert by_client["big"] == "heavy"
    assert by_client["mid-0"] == "regular"
    assert report["segments"]["regular"]["clients"] == 10


def test_non_cacheable_outcomes_are_not_counted() -> None:
    s = SegmentTracker()
    s.observe(Ev(T0, "/a", "c1", "bypass"))
    s.observe(Ev(T0, "/a", "c1", "error"))
    report = s.report(T0)
    assert report["requests"] == 0
    assert report["thresholds"] is None
    assert report["hit_ratio"] is None
    assert report["top_clients"] == []


def test_requests_without_a_client_id_count_only_in_the_totals() -> None:
    s = SegmentTracker()
    for i in range(3):
        s.observe(Ev(T0 + i, "/a", ""))
    report = s.report(T0 + 3)
    assert (report["requests"], report["distinct_clients"], report["tracked_clients"]) == (3, 0, 0)
    assert report["segments"]["occasional"]["requests"] == 3


def test_ids_and_keys_too_long_to_remember_are_counted_by_number_only() -> None:
    s = SegmentTracker(max_name_bytes=200)
    s.observe(Ev(T0, "/a", "x" * 500))
    s.observe(Ev(T0 + 1, "/" + "k" * 500, "short"))
    report = s.report(T0 + 1)
    assert report["requests"] == 2
    assert [c["client"] for c in report["top_clients"]] == ["short"]
    assert report["top_clients"][0]["top_keys"] == []
    assert all(len(k["key"]) < 200 for seg in report["segments"].values() for k in seg["top_keys"])


def test_counts_halve_each_decay_interval() -> None:
    s = SegmentTracker(decay_interval=DAY, precision=16)  # two clients: no register collision
    for i in range(8):
        s.observe(Ev(T0 + i, "/a", "c1"))
    s.observe(Ev(T0 + DAY + 1, "/a", "c2"))
    report = s.report(T0 + DAY + 1)
    assert report["requests"] == 4 + 1
    assert [(c["client"], c["requests"]) for c in report["top_clients"]] == [("c1", 4), ("c2", 1)]
    # Clients of this interval and the last one are still distinct clients.
    assert report["distinct_clients"] == 2
    s.observe(Ev(T0 + 3 * DAY, "/a", "c3"))
    assert s.distinct_clients() == 1


def test_the_mean_ages_with_the_counts() -> None:
    s = SegmentTracker(max_clients=100, decay_interval=DAY)
    for day in ("monday", "tuesday"):  # one request each, a new crowd every day
        start = T0 if day == "monday" else T0 + DAY
        for i in range(500):
            s.observe(Ev(start + i, "/a", f"{day}-{i}"))
    report = s.report(T0 + DAY + 500)
    # Monday's 500 requests are halved, and so is the weight of its clients.
    assert report["requests"] == 750
    assert report["thresholds"]["mean_requests_per_client"] == pytest.approx(1.0, rel=0.05)
    assert report["thresholds"]["regular"] == 2.0  # a single request is never regular
    assert report["segments"]["heavy"]["clients"] == report["segments"]["regular"]["clients"] == 0
    assert report["segments"]["occasional"]["share"] == 1.0


@pytest.mark.parametrize("batch_events", [1, 1024])
def test_last_seen_and_only_the_heaviest_clients_are_tracked(batch_events: int) -> None:
    s = SegmentTracker(max_clients=3, batch_events=batch_events)
    ts = T0
    for i in range(50):
        ts += 1
        s.observe(Ev(ts, "/a", "steady"))
        s.observe(Ev(ts, "/b", f"passer-by-{i}"))
    [steady] = s.clients(1)
    assert steady.client == "steady"
    assert steady.requests == 50
    assert steady.last_seen == ts
    assert len(s.clients(10)) == 3


def test_bad_arguments() -> None:
    for kwargs in (
        {"max_clients": 0},
        {"top_keys_per_segment": 0},
        {"keys_per_client": 0},
        {"heavy_factor": 1.0},
        {"decay_interval": 0.0},
        {"max_name_bytes": 0},
        {"batch_events": 0},
    ):
        with pytest.raises(ValueError):
            SegmentTracker(**kwargs)
    with pytest.raises(ValueError, match="n must not be negative"):
        SegmentTracker().clients(-1)


def test_memory_stays_bounded_under_a_flood_of_clients() -> None:
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        s = SegmentTracker(max_clients=200, top_keys_per_segment=5, max_name_bytes=400)
        ts = T0
        for i in range(20_000):
            ts += 0.5
            client = f"client-{i // 2}-" + "c" * 100 if i % 5 else "regular"
            s.observe(Ev(ts, f"/k/{i}/" + "x" * 200, client, "miss" if i % 3 else "hit"))
        s.report(ts)
        peak = tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()
    assert len(s.clients(1000)) <= 200
    assert peak <= s.memory_bound()


# ------------------------------------------------------------------ HyperLogLog


@pytest.mark.parametrize("n", [0, 1, 10, 1000, 50_000])
def test_distinct_count_is_close(n: int) -> None:
    h = HyperLogLog()
    for i in range(n):
        h.add(f"item-{i}")
        h.add(f"item-{i}")  # repeats change nothing
    assert abs(h.estimate() - n) <= max(1, 0.06 * n)  # 1.6 % standard error


def test_union_counts_items_of_either() -> None:
    a, b = HyperLogLog(10), HyperLogLog(10)
    for i in range(3000):
        (a if i % 2 else b).add(str(i))
        a.add(str(i // 3))
    assert HyperLogLog.union([a, b]) == pytest.approx(3000, rel=0.15)
    assert HyperLogLog.union([]) == 0.0
    with pytest.raises(ValueError, match="precisions"):
        HyperLogLog.union([a, HyperLogLog(11)])
    a.clear()
    assert a.estimate() == 0.0
    with pytest.raises(ValueError, match="precision"):
        HyperLogLog(3)


@settings(max_examples=50, deadline=None)
@given(st.sets(st.text(min_size=1, max_size=8), max_size=300))
def test_cells_place_items_as_add_does(items: set[str]) -> None:
    direct, placed = HyperLogLog(8), HyperLogLog(8)
    for item in items:
        direct.add(item)
        placed.add_cell(*placed.cell(item))
    assert direct.estimate() == placed.estimate()
    assert abs(direct.estimate() - len(items)) <= max(2, 0.25 * len(items))
