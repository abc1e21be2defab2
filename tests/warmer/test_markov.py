"""The ``markov`` baseline: first-order successor prefetch, on hand-computed sequences."""

from __future__ import annotations

import pytest

from tests.warmer.events import Ev
from warmer.markov import MarkovPrefetch
from warmer.model import Reason
from warmer.replay import STRATEGY_NAMES, replay
from warmer.trace import TraceRow


def feed(model: MarkovPrefetch, *requests: tuple[float, str, str]) -> list[list[str]]:
    """Observe (ts, key, client) requests in order; what ``due`` returned after each."""
    out = []
    for ts, key, client in requests:
        model.observe(Ev(ts, key, client=client, host=""))
        out.append([r.url for r in model.due(ts)])
    return out


def test_a_successor_is_prefetched_once_seen_three_times() -> None:
    model = MarkovPrefetch()
    asked = feed(
        model,
        (0, "/a", "c1"),
        (10, "/b", "c1"),  # a→b: 1
        (20, "/a", "c2"),
        (30, "/b", "c2"),  # a→b: 2
        (40, "/a", "c3"),  # 2 < 3: nothing yet
        (50, "/b", "c3"),  # a→b: 3
        (60, "/a", "c4"),  # 3 of 3 transitions out of /a
    )
    assert asked == [[], [], [], [], [], [], ["/b"]]
    assert model.count("/a", "/b") == 3
    assert model.successor("/a") == "/b"
    assert model.successor("/b") is None  # no transition out of /b


def test_the_successor_needs_thirty_percent_of_the_transitions() -> None:
    model = MarkovPrefetch()
    requests: list[tuple[float, str, str]] = []
    # a→b, a→c, a→d, a→e three times each: 3/12 = 25 % each.
    for n, successor in enumerate(["/b", "/c", "/d", "/e"] * 3):
        requests += [(100.0 * n, "/a", f"c{n}"), (100.0 * n + 1, successor, f"c{n}")]
    feed(model, *requests)
    assert model.successor("/a") is None
    # A fourth a→b: 4/13 = 30.8 %.
    assert feed(model, (5000, "/a", "x"), (5001, "/b", "x"), (5002, "/a", "y")) == [
        [],
        [],
        ["/b"],
    ]


def test_a_tie_goes_to_the_successor_first_seen() -> None:
    model = MarkovPrefetch()
    requests: list[tuple[float, str, str]] = []
    # a→c first, then a→b three times (b leads 3 to 1), then a→c twice (3 to 3).
    for n, successor in enumerate(["/c", "/b", "/b", "/b", "/c", "/c"]):
        requests += [(100.0 * n, "/a", f"c{n}"), (100.0 * n + 1, successor, f"c{n}")]
    feed(model, *requests[:8])
    assert model.successor("/a") == "/b"
    feed(model, *requests[8:])
    assert (model.count("/a", "/b"), model.count("/a", "/c")) == (3, 3)
    assert model.successor("/a") == "/c"


def test_transitions_are_at_most_1800_s_apart() -> None:
    model = MarkovPrefetch()
    feed(
        model,
        (0, "/a", "c1"),
        (1800, "/b", "c1"),  # 1800 s: a transition
        (2000, "/a", "c1"),
        (3800.5, "/c", "c1"),  # 1800.5 s: none
    )
    assert model.count("/a", "/b") == 1
    assert model.count("/a", "/c") == 0
    assert model.transitions == 2  # a→b, b→a


def test_repeats_make_no_transition_and_the_gap_runs_from_the_latest() -> None:
    model = MarkovPrefetch()
    feed(
        model,
        (0, "/a", "c1"),
        (1000, "/a", "c1"),  # a repeat: no a→a
        (2500, "/b", "c1"),  # 1500 s after the repeat (2500 after the first /a)
    )
    assert model.count("/a", "/a") == 0
    assert model.count("/a", "/b") == 1
    assert model.transitions == 1


def test_each_client_has_its_own_sequence_and_counts_are_pooled() -> None:
    model = MarkovPrefetch()
    feed(
        model,
        (0, "/a", "c1"),
        (1, "/x", "c2"),
        (2, "/b", "c1"),  # c1: a→b (not x→b)
        (3, "/a", "c2"),  # c2: x→a
        (4, "/b", "c2"),  # c2: a→b
        (5, "/b", ""),  # no client: no transition
        (6, "/a", ""),
    )
    assert model.count("/a", "/b") == 2
    assert model.count("/x", "/b") == 0
    assert model.count("/x", "/a") == 1
    assert model.count("/b", "/a") == 0


def test_the_warm_request_lands_where_the_clients_ask() -> None:
    model = MarkovPrefetch(min_count=1, min_share=0.0)
    model.observe(Ev(0, "shop/a", url="/a", host="shop", client="c1"))
    model.observe(Ev(1, "shop/b", url="/b", host="shop", client="c1"))
    model.due(1)
    model.observe(Ev(2, "shop/a", url="/a", host="shop", client="c2"))
    (request,) = model.due(2)
    assert (request.url, request.host, request.reason) == ("/b", "shop", Reason.PREDICTIVE)


def test_memory_is_bounded() -> None:
    model = MarkovPrefetch(min_count=1, min_share=0.0, max_keys=2, max_clients=1)
    # One client: a→b, b→c, c→d; only the 2 keys updated last keep counts.
    feed(model, (0, "/a", "c1"), (1, "/b", "c1"), (2, "/c", "c1"), (3, "/d", "c1"))
    assert len(model) == 2
    assert model.successor("/a") is None
    assert model.successor("/c") == "/d"
    # A second client pushes the first out: its next request starts afresh.
    feed(model, (4, "/x", "c2"), (5, "/e", "c1"))
    assert model.count("/d", "/e") == 0
    few = MarkovPrefetch(max_successors=1)
    seq: list[tuple[float, str, str]] = []
    for n, successor in enumerate(["/b", "/c", "/c", "/c"]):
        seq += [(10.0 * n, "/a", f"k{n}"), (10.0 * n + 1, successor, f"k{n}")]
    feed(few, *seq)
    # /c came after the one successor /a tracks: counted in c(a→·) only.
    assert (few.count("/a", "/b"), few.count("/a", "/c")) == (1, 0)
    assert few.successor("/a") is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_gap": -1}, "max_gap"),
        ({"min_count": 0}, "min_count"),
        ({"min_share": 1.5}, "min_share"),
        ({"max_keys": 0}, "max_keys"),
        ({"max_clients": 0}, "max_clients"),
    ],
)
def test_bad_settings_are_refused_by_name(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MarkovPrefetch(**kwargs)  # type: ignore[arg-type]


def sessions(n: int) -> list[TraceRow]:
    """``n`` browsing sessions /p/0 → /p/1 → /p/2, one a client, 100 s apart."""
    rows: list[TraceRow] = []
    for s in range(n):
        rows += [(100.0 * s + i, f"/p/{i}", None, f"s{s}") for i in range(3)]
    return rows


def test_markov_prefetches_the_next_page_in_a_replay() -> None:
    # TTL 10 s: without warming every request misses (the last visit was
    # 100 s before).  From the fourth session on, /p/0 prefetches /p/1 and
    # /p/1 prefetches /p/2: two hits a session, every warm fetch used.
    trace = sessions(10)
    none = replay(trace, "none", capacity=100, ttl=10)
    markov = replay(trace, "markov", capacity=100, ttl=10)
    assert none.hits == 0
    assert (markov.hits, markov.warm_fetches, markov.warm_used) == (14, 14, 14)
    assert markov.precision == 1.0
    assert "markov" in STRATEGY_NAMES
    assert STRATEGY_NAMES.index("markov") == STRATEGY_NAMES.index("all") - 1


def test_a_prefetch_of_a_fresh_entry_is_a_free_hint() -> None:
    # TTL 1000 s: the pages are still fresh when the next session comes.
    markov = replay(sessions(10), "markov", capacity=100, ttl=1000)
    assert markov.warm_fetches == 0
    assert markov.free_hints == 14  # asked for anyway, cached or not
