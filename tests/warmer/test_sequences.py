"""SequenceModel: what each client asks for next, in bounded memory."""

from __future__ import annotations

import calendar
import tracemalloc
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from warmer.sequences import SequenceModel, Transition

T0 = float(calendar.timegm((2024, 1, 1, 0, 0, 0)))


def test_a_planted_sequence_is_found_with_confidence_near_one() -> None:
    m = SequenceModel()
    ts = T0
    for i in range(300):
        client = f"10.0.{i // 256}.{i % 256}"
        # Every client goes /a -> /b, then somewhere of its own.
        for key in ("/a", "/b", f"/elsewhere/{i % 17}"):
            ts += 1
            m.observe(client, key, ts)
    [(target, confidence, count)] = m.successors("/a")
    assert (target, count) == ("/b", 300)
    assert confidence == pytest.approx(300 / 301)
    assert m.top_transitions(1) == [Transition("/a", "/b", 300, 300 / 301)]

    m.observe("late-visitor", "/a", ts + 1)
    [(predicted, confidence)] = m.predict_next("late-visitor")
    assert (predicted, confidence) == ("/b", 300 / 301)
    # Idle past max_gap: the next request starts a new visit, nothing to predict.
    assert m.predict_next("late-visitor", now=ts + 1 + 1801) == []
    assert m.predict_next("a-stranger") == []


def test_one_sighting_is_not_certainty() -> None:
    m = SequenceModel()
    m.observe("c", "/a", T0)
    m.observe("c", "/b", T0 + 1)
    assert m.successors("/a") == [("/b", 0.5, 1)]


def test_repeats_gaps_and_other_clients_are_not_transitions() -> None:
    m = SequenceModel(max_gap=60)
    m.observe("c1", "/a", T0)
    m.observe("c1", "/a", T0 + 1)  # the same key again: no step
    m.observe("c2", "/b", T0 + 2)  # another client: no step from c1's /a
    m.observe("c1", "/c", T0 + 100)  # 99 s after c1's last request: a new visit
    m.observe("c1", "/d", T0 + 110)
    assert m.successors("/a") == []
    assert m.successors("/c") == [("/d", 0.5, 1)]
    assert m.sources == 1


def test_successors_rank_by_count_and_limit_n() -> None:
    m = SequenceModel()
    ts = T0
    for target, times in (("/x", 5), ("/y", 3), ("/z", 1)):
        for i in range(times):
            ts += 1
            m.observe(f"{target}-{i}", "/home", ts)
            m.observe(f"{target}-{i}", target, ts + 0.5)
    assert [(t, c) for t, _, c in m.successors("/home", n=2)] == [("/x", 5), ("/y", 3)]
    assert [round(conf, 3) for _, conf, _ in m.successors("/home")] == [0.5, 0.3, 0.1]
    assert m.successors("/home", n=0) == []
    with pytest.raises(ValueError, match="n must not be negative"):
        m.successors("/home", n=-1)


def test_a_key_with_many_successors_keeps_a_bounded_summary() -> None:
    m = SequenceModel(successors_per_key=4)
    ts = T0
    for i in range(1000):
        ts += 1
        m.observe(f"c{i}", "/hub", ts)
        m.observe(f"c{i}", "/popular" if i % 2 else f"/rare/{i}", ts + 0.1)
    found = m.successors("/hub", n=10)
    assert len(found) <= 4
    assert found[0][0] == "/popular"
    # A lower bound: never more than the 500 that really happened.
    assert 400 <= found[0][2] <= 500


def test_least_recent_clients_and_sources_are_forgotten() -> None:
    m = SequenceModel(max_clients=2, max_keys=2)
    m.observe("c1", "/a", T0)
    m.observe("c2", "/a", T0 + 1)
    m.observe("c3", "/a", T0 + 2)  # c1 forgotten
    m.observe("c1", "/b", T0 + 3)  # so this starts c1 afresh
    assert m.clients == 2
    assert m.successors("/a") == []
    for i, source in enumerate(("/s1", "/s2", "/s3")):
        m.observe(f"walker{i}", source, T0 + 10 + i)
        m.observe(f"walker{i}", "/t", T0 + 10.5 + i)
    assert m.sources == 2
    assert m.successors("/s1") == []  # least recently followed
    assert [t for t, _, _ in m.successors("/s3")] == ["/t"]


def test_names_too_long_to_remember_break_the_sequence() -> None:
    m = SequenceModel(max_name_bytes=200)
    m.observe("c", "/a", T0)
    m.observe("c", "/" + "x" * 500, T0 + 1)
    m.observe("c", "/b", T0 + 2)
    m.observe("c" * 500, "/a", T0 + 3)
    m.observe("c" * 500, "/b", T0 + 4)
    assert m.sources == 0
    assert m.clients == 1


def test_bad_arguments() -> None:
    for kwargs in (
        {"max_clients": 0},
        {"max_keys": 0},
        {"successors_per_key": 0},
        {"max_gap": 0.0},
        {"max_name_bytes": 0},
    ):
        with pytest.raises(ValueError):
            SequenceModel(**kwargs)
    with pytest.raises(ValueError, match="n must not be negative"):
        SequenceModel().top_transitions(-1)


visits = st.lists(
    st.tuples(
        st.sampled_from(["c1", "c2", "c3"]),
        st.sampled_from(["/a", "/b", "/c", "/d", "/e", "/f"]),
        st.floats(min_value=0, max_value=100),
    ),
    max_size=200,
)


@settings(max_examples=200, deadline=None)
@given(visits, st.integers(min_value=1, max_value=6))
def test_confidences_are_probabilities_and_counts_lower_bounds(
    steps: list[tuple[str, str, float]], per_key: int
) -> None:
    m = SequenceModel(successors_per_key=per_key, max_gap=50)
    # The same rules, unbounded: the exact transition counts.
    last: dict[str, tuple[str, float]] = {}
    exact: Counter[tuple[str, str]] = Counter()
    ts = T0
    for client, key, gap in steps:
        ts += gap
        m.observe(client, key, ts)
        prev = last.get(client)
        if prev is not None and prev[0] != key and ts - prev[1] <= 50:
            exact[prev[0], key] += 1
        last[client] = (key, ts)
    for source in {s for s, _ in exact}:
        found = m.successors(source, n=10)
        assert all(0.0 <= conf <= 1.0 for _, conf, _ in found)
        assert sum(conf for _, conf, _ in found) <= 1.0
        for target, _, count in found:
            assert 1 <= count <= exact[source, target]
        outgoing = sum(c for (s, _), c in exact.items() if s == source)
        if len({t for s, t in exact if s == source}) <= per_key:
            assert sorted((t, c) for t, _, c in found) == sorted(
                (t, c) for (s, t), c in exact.items() if s == source
            )
            assert all(conf == c / (outgoing + 1) for _, conf, c in found)
    for t in m.top_transitions(50):
        assert 0.0 <= t.confidence <= 1.0
        assert t.count <= exact[t.source, t.target]
    # likely_successors: successors() filtered, computed without ranking everything.
    for source in {s for s, _ in exact} | {"/nowhere"}:
        for n in (0, 1, 3):
            for min_count, floor in ((1, 0.0), (2, 0.3), (2, 0.05), (3, 0.5)):
                assert m.likely_successors(
                    source, n, min_count=min_count, min_confidence=floor
                ) == [
                    (t, conf, c)
                    for t, conf, c in m.successors(source, n)
                    if c >= min_count and conf >= floor
                ]


def test_memory_stays_bounded_under_a_flood_of_clients_and_keys() -> None:
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        m = SequenceModel(max_clients=500, max_keys=300, successors_per_key=4, max_name_bytes=400)
        ts = T0
        for i in range(20_000):
            ts += 0.01
            # Mostly new clients and keys, with names as long as allowed.
            client = f"client-{i // 3}-" + "c" * 100
            m.observe(client, f"/k/{i}/" + "x" * 200, ts)
        m.top_transitions(10)
        peak = tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()
    assert m.clients <= 500
    assert m.sources <= 300
    assert peak <= m.memory_bound()
