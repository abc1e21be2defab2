"""WarmQueue: priority then FIFO, de-duplication, delays, capacity."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    precondition,
    rule,
)

from warmer.model import DEFAULT_PRIORITY_LEVELS, Reason, WarmRequest
from warmer.queue import WarmQueue

LEVELS = ("high", "medium", "low")


def req(url: str, priority: str = "medium", **kw: Any) -> WarmRequest:
    return WarmRequest(url=url, priority=priority, **kw)


def urls(requests: list[WarmRequest]) -> list[str]:
    return [r.url for r in requests]


def drain(q: WarmQueue, now: float) -> list[str]:
    return urls(q.pop_batch(now, len(q) + 1))


# ------------------------------------------------------------------ ordering


def test_higher_levels_first_fifo_within_a_level() -> None:
    q = WarmQueue(LEVELS)
    for url, priority in [
        ("/l1", "low"),
        ("/m1", "medium"),
        ("/h1", "high"),
        ("/l2", "low"),
        ("/h2", "high"),
        ("/m2", "medium"),
    ]:
        assert q.push(req(url, priority), now=0.0)
    assert drain(q, 0.0) == ["/h1", "/h2", "/m1", "/m2", "/l1", "/l2"]
    assert q.pop(0.0) is None
    assert len(q) == 0


def test_levels_follow_the_given_order_not_the_names() -> None:
    q = WarmQueue(("urgent", "later"))
    q.push(req("/b", "later"), 0.0)
    q.push(req("/a", "urgent"), 0.0)
    assert drain(q, 0.0) == ["/a", "/b"]


def test_pop_returns_the_request_as_pushed() -> None:
    q = WarmQueue(LEVELS)
    original = WarmRequest("/x", "high", Reason.SCHEDULED, host="shop.example", ttl=60.0)
    q.push(original, 0.0)
    assert q.pop(0.0) == original


def test_pop_batch_takes_at_most_n_in_order() -> None:
    q = WarmQueue(LEVELS)
    for i in range(5):
        q.push(req(f"/{i}", "low"), 0.0)
    q.push(req("/h", "high"), 0.0)
    assert urls(q.pop_batch(0.0, 3)) == ["/h", "/0", "/1"]
    assert urls(q.pop_batch(0.0, 0)) == []
    assert urls(q.pop_batch(0.0, 10)) == ["/2", "/3", "/4"]
    assert q.pop_batch(0.0, 10) == []


# -------------------------------------------------------------- de-duplication


def test_same_identity_is_queued_once() -> None:
    q = WarmQueue(LEVELS)
    assert q.push(req("/a"), 0.0)
    assert q.push(req("/a"), 1.0)
    assert len(q) == 1
    assert drain(q, 1.0) == ["/a"]


def test_identity_includes_the_host() -> None:
    q = WarmQueue(LEVELS)
    q.push(req("/a", host="one.example"), 0.0)
    q.push(req("/a", host="two.example"), 0.0)
    assert len(q) == 2
    assert ("one.example", "/a", ()) in q
    assert ("", "/a", ()) not in q


def test_identity_includes_the_variant() -> None:
    """Two variants of one path are two warm fetches (each is its own entry)."""
    q = WarmQueue(LEVELS)
    q.push(req("/a"), 0.0)
    q.push(WarmRequest(url="/a", headers=(("accept-encoding", "gzip"),)), 0.0)
    assert len(q) == 2


def test_duplicate_upgrades_priority_and_moves_to_the_new_level() -> None:
    q = WarmQueue(LEVELS)
    q.push(req("/h1", "high"), 0.0)
    q.push(req("/a", "low", reason=Reason.PREDICTIVE), 0.0)
    q.push(req("/h2", "high"), 0.0)
    q.push(req("/l", "low"), 0.0)
    q.push(req("/a", "high", reason=Reason.ON_DEMAND), 0.0)
    assert q.depth_by_level() == {"high": 3, "medium": 0, "low": 1}
    popped = q.pop_batch(0.0, 4)
    # In its new level it keeps its first-push order: after /h1, before /h2.
    assert urls(popped) == ["/h1", "/a", "/h2", "/l"]
    assert popped[1].priority == "high"
    assert popped[1].reason is Reason.ON_DEMAND


def test_duplicate_never_downgrades() -> None:
    q = WarmQueue(LEVELS)
    q.push(req("/a", "high", reason=Reason.ON_DEMAND), 0.0)
    q.push(req("/b", "high"), 0.0)
    q.push(req("/a", "low", reason=Reason.PREDICTIVE), 0.0)
    popped = q.pop_batch(0.0, 2)
    assert urls(popped) == ["/a", "/b"]
    assert popped[0].priority == "high"
    assert popped[0].reason is Reason.ON_DEMAND


@pytest.mark.parametrize(
    ("first", "second", "merged"),
    [
        (None, None, None),
        (60.0, None, 60.0),
        (None, 30.0, 30.0),
        (60.0, 30.0, 30.0),
        (10.0, 30.0, 10.0),
    ],
)
def test_duplicate_keeps_the_smaller_ttl(
    first: float | None, second: float | None, merged: float | None
) -> None:
    q = WarmQueue(LEVELS)
    q.push(req("/a", ttl=first), 0.0)
    q.push(req("/a", ttl=second), 0.0)
    popped = q.pop(0.0)
    assert popped is not None
    assert popped.ttl == merged


@pytest.mark.parametrize(("first", "second"), [(True, False), (False, True), (True, True)])
def test_duplicate_refresh_true_wins(first: bool, second: bool) -> None:
    q = WarmQueue(LEVELS)
    q.push(req("/a", refresh=first), 0.0)
    q.push(req("/a", refresh=second), 0.0)
    assert q.get(("", "/a", ())) == req("/a", refresh=True)


def test_duplicate_does_not_change_when_it_is_ready() -> None:
    q = WarmQueue(LEVELS)
    # A retry waiting out its backoff is asked for again: it still waits.
    q.push(req("/retry"), 0.0, not_before=10.0)
    q.push(req("/retry", "high"), 1.0)
    assert q.pop(5.0) is None
    # A ready request pushed again with a delay stays ready.
    q.push(req("/ready"), 0.0)
    q.push(req("/ready"), 1.0, not_before=100.0)
    assert urls(q.pop_batch(5.0, 5)) == ["/ready"]
    popped = q.pop(10.0)
    assert popped is not None
    assert (popped.url, popped.priority) == ("/retry", "high")


# ---------------------------------------------------------------- not_before


def test_not_before_holds_an_item_back_until_then() -> None:
    q = WarmQueue(LEVELS)
    q.push(req("/later", "high"), 0.0, not_before=5.0)
    q.push(req("/now", "low"), 0.0)
    assert len(q) == 2
    assert drain(q, 4.999) == ["/now"]
    assert q.pop(4.999) is None
    assert q.next_ready_at() == 5.0
    assert drain(q, 5.0) == ["/later"]
    assert q.next_ready_at() is None


def test_not_before_at_or_before_now_is_ready_at_once() -> None:
    q = WarmQueue(LEVELS)
    q.push(req("/a"), 10.0, not_before=10.0)
    q.push(req("/b"), 10.0, not_before=3.0)
    assert drain(q, 10.0) == ["/a", "/b"]


def test_ready_delayed_items_compete_by_priority_then_push_order() -> None:
    q = WarmQueue(LEVELS)
    q.push(req("/retry-low", "low"), 0.0, not_before=2.0)
    q.push(req("/retry-high", "high"), 0.0, not_before=3.0)
    q.push(req("/low", "low"), 1.0)
    q.push(req("/medium"), 1.0)
    assert drain(q, 3.0) == ["/retry-high", "/medium", "/retry-low", "/low"]


def test_next_ready_at() -> None:
    q = WarmQueue(LEVELS)
    assert q.next_ready_at() is None
    q.push(req("/b"), 0.0, not_before=20.0)
    q.push(req("/a"), 0.0, not_before=10.0)
    assert q.next_ready_at() == 10.0
    q.discard(("", "/a", ()))
    assert q.next_ready_at() == 20.0
    # A ready item: the answer is not after now, so a runner does not sleep.
    q.push(req("/c"), 30.0, not_before=25.0)
    ready_at = q.next_ready_at()
    assert ready_at is not None
    assert ready_at <= 30.0
    q.clear()
    assert q.next_ready_at() is None


def test_delayed_items_count_in_len_depth_and_contains() -> None:
    q = WarmQueue(LEVELS)
    q.push(req("/a", "low"), 0.0, not_before=50.0)
    assert len(q) == 1
    assert ("", "/a", ()) in q
    assert q.depth_by_level() == {"high": 0, "medium": 0, "low": 1}


# ------------------------------------------------------------- capacity, errors


def test_full_queue_rejects_new_identities_but_merges_queued_ones() -> None:
    q = WarmQueue(LEVELS, max_items=2)
    assert q.push(req("/a", "low"), 0.0)
    assert q.push(req("/b"), 0.0)
    assert not q.push(req("/c", "high"), 0.0)
    assert q.rejected == 1
    assert q.push(req("/a", "high"), 0.0)  # a merge takes no room
    assert q.rejected == 1
    assert len(q) == 2
    assert drain(q, 0.0) == ["/a", "/b"]
    assert q.push(req("/c"), 0.0)


def test_unknown_priority_is_a_value_error_naming_the_levels() -> None:
    q = WarmQueue(LEVELS)
    with pytest.raises(ValueError, match=r"'urgent'.*high, medium, low"):
        q.push(req("/a", "urgent"), 0.0)
    # Also when the identity is already queued: nothing is merged.
    q.push(req("/a", "low"), 0.0)
    with pytest.raises(ValueError, match="urgent"):
        q.push(req("/a", "urgent"), 0.0)
    assert q.get(("", "/a", ())) == req("/a", "low")
    assert q.rejected == 0


@pytest.mark.parametrize(("levels", "max_items"), [((), 10), (("a", "a"), 10), (("a",), 0)])
def test_bad_construction(levels: tuple[str, ...], max_items: int) -> None:
    with pytest.raises(ValueError):
        WarmQueue(levels, max_items=max_items)


# -------------------------------------------------------- discard, clear, depth


def test_discard() -> None:
    q = WarmQueue(LEVELS)
    q.push(req("/a", "high"), 0.0)
    q.push(req("/b", "high"), 0.0)
    q.push(req("/d"), 0.0, not_before=9.0)
    assert q.discard(("", "/a", ()))
    assert not q.discard(("", "/a", ()))
    assert q.discard(("", "/d", ()))
    assert ("", "/a", ()) not in q
    assert q.depth_by_level() == {"high": 1, "medium": 0, "low": 0}
    assert drain(q, 10.0) == ["/b"]


def test_discarded_then_pushed_again_goes_to_the_back() -> None:
    q = WarmQueue(LEVELS)
    q.push(req("/a"), 0.0)
    q.push(req("/b"), 0.0)
    q.discard(("", "/a", ()))
    q.push(req("/a"), 0.0)
    assert drain(q, 0.0) == ["/b", "/a"]


def test_clear_returns_how_many_were_queued() -> None:
    q = WarmQueue(LEVELS)
    q.push(req("/a"), 0.0)
    q.push(req("/b", "low"), 0.0, not_before=5.0)
    assert q.clear() == 2
    assert len(q) == 0
    assert q.depth_by_level() == {"high": 0, "medium": 0, "low": 0}
    assert q.pop(10.0) is None
    assert q.clear() == 0


def test_many_discards_and_upgrades_do_not_grow_the_heaps() -> None:
    q = WarmQueue(LEVELS)
    for i in range(5000):
        q.push(req(f"/{i}", "low"), 0.0, not_before=float(i % 2))
        q.push(req(f"/{i}", "medium"), 0.0)
        q.push(req(f"/{i}", "high"), 0.0)
        if i % 10:
            q.discard(("", f"/{i}", ()))
    assert len(q) == 500
    heap_items = len(q._ready) + len(q._delayed)
    assert heap_items <= 2 * len(q) + 1024 + 2
    assert drain(q, 1.0) == [f"/{i}" for i in range(0, 5000, 10)]


# ------------------------------------------------------------------ properties

ops = st.lists(
    st.tuples(
        st.sampled_from(["push", "pop", "discard", "tick"]),
        st.integers(0, 7),  # identity
        st.sampled_from(LEVELS),
        st.sampled_from([0.0, 0.0, 1.0, 3.0]),  # delay
    ),
    max_size=80,
)


@given(ops)
def test_every_pushed_item_comes_out_once_in_priority_then_fifo_order(
    script: list[tuple[str, int, str, float]],
) -> None:
    q = WarmQueue(LEVELS)
    now = 0.0
    queued: dict[str, tuple[int, int, float]] = {}  # url -> (level, seq, not_before)
    seq = 0
    for op, i, priority, delay in script:
        url = f"/{i}"
        if op == "push":
            q.push(req(url, priority), now, not_before=now + delay if delay else 0.0)
            level = LEVELS.index(priority)
            if url in queued:
                old_level, old_seq, nb = queued[url]
                queued[url] = (min(level, old_level), old_seq, nb)
            else:
                queued[url] = (level, seq, now + delay if delay else 0.0)
                seq += 1
        elif op == "pop":
            ready = {u: (lv, s) for u, (lv, s, nb) in queued.items() if nb <= now}
            popped = q.pop(now)
            if not ready:
                assert popped is None
            else:
                assert popped is not None
                assert popped.url == min(ready, key=ready.__getitem__)
                assert popped.priority == LEVELS[queued.pop(popped.url)[0]]
        elif op == "discard":
            assert q.discard(("", url, ())) == (queued.pop(url, None) is not None)
        else:
            now += 1.0
        assert len(q) == len(queued)
    # Drain: everything comes out once, nothing else does.
    rest = q.pop_batch(now + 10.0, 1000)
    assert sorted(urls(rest)) == sorted(queued)
    assert len(q) == 0


class QueueMachine(RuleBasedStateMachine):
    """Random pushes, pops, discards and clock ticks against a plain model."""

    pushed = Bundle("pushed")

    @initialize()
    def setup(self) -> None:
        self.q = WarmQueue(LEVELS, max_items=6)
        self.now = 0.0
        self.seq = 0
        # identity url -> [level, seq, not_before, refresh]
        self.model: dict[str, list[float | int | bool]] = {}
        self.rejected = 0

    @rule(
        target=pushed,
        i=st.integers(0, 9),
        priority=st.sampled_from(LEVELS),
        delay=st.sampled_from([None, 0.5, 2.0]),
        refresh=st.booleans(),
    )
    def push(self, i: int, priority: str, delay: float | None, refresh: bool) -> str:
        url = f"/{i}"
        not_before = 0.0 if delay is None else self.now + delay
        accepted = self.q.push(req(url, priority, refresh=refresh), self.now, not_before)
        level = LEVELS.index(priority)
        if url in self.model:
            assert accepted
            entry = self.model[url]
            entry[0] = min(level, int(entry[0]))
            entry[3] = bool(entry[3]) or refresh
        elif len(self.model) >= 6:
            assert not accepted
            self.rejected += 1
        else:
            assert accepted
            self.model[url] = [level, self.seq, not_before, refresh]
            self.seq += 1
        return url

    def _expected_next(self) -> str | None:
        ready = [
            (int(lv), int(s), u)
            for u, (lv, s, nb, _) in self.model.items()
            if float(nb) <= self.now
        ]
        return min(ready)[2] if ready else None

    @rule(n=st.integers(1, 4))
    def pop_batch(self, n: int) -> None:
        got = self.q.pop_batch(self.now, n)
        for r in got:
            expected = self._expected_next()
            assert r.url == expected
            level, _, _, refresh = self.model.pop(r.url)
            assert r.priority == LEVELS[int(level)]
            assert r.refresh == refresh
        if len(got) < n:
            assert self._expected_next() is None

    @rule(url=consumes(pushed))
    def discard(self, url: str) -> None:
        assert self.q.discard(("", url, ())) == (self.model.pop(url, None) is not None)

    @rule(dt=st.sampled_from([0.25, 1.0, 5.0]))
    def tick(self, dt: float) -> None:
        self.now += dt

    @precondition(lambda self: len(self.model) > 3)
    @rule()
    def clear(self) -> None:
        assert self.q.clear() == len(self.model)
        self.model.clear()

    @invariant()
    def sizes_agree(self) -> None:
        assert len(self.q) == len(self.model)
        depth = {name: 0 for name in LEVELS}
        for level, *_ in self.model.values():
            depth[LEVELS[int(level)]] += 1
        assert self.q.depth_by_level() == depth
        assert self.q.rejected == self.rejected
        for url in self.model:
            assert ("", url, ()) in self.q

    @invariant()
    def next_ready_at_agrees(self) -> None:
        ready_at = self.q.next_ready_at()
        if not self.model:
            assert ready_at is None
        else:
            assert ready_at is not None
            earliest = min(float(nb) for _, _, nb, _ in self.model.values())
            if earliest <= self.now:
                assert ready_at <= self.now
            else:
                assert ready_at == earliest


TestQueueMachine = QueueMachine.TestCase
TestQueueMachine.settings = settings(max_examples=200, stateful_step_count=60, deadline=None)


requests_in_a_round = st.lists(
    st.builds(
        WarmRequest,
        url=st.sampled_from(["/a", "/b", "/c"]),
        priority=st.sampled_from(["high", "medium", "low"]),
        reason=st.sampled_from(list(Reason)),
        host=st.sampled_from(["", "h"]),
        ttl=st.one_of(st.none(), st.sampled_from([5.0, 60.0])),
        refresh=st.booleans(),
        source=st.sampled_from(["", "top"]),
        headers=st.sampled_from([(), (("accept-encoding", "gzip"),)]),
    ),
    max_size=8,
)


@given(requests_in_a_round, st.booleans())
def test_drain_hands_back_what_push_and_pop_would(
    requests: list[WarmRequest], something_queued: bool
) -> None:
    """The replay's drain (a fast path when nothing is queued) keeps the queue's
    order and merging: one owner of the order."""
    pushed = WarmQueue(DEFAULT_PRIORITY_LEVELS)
    drained = WarmQueue(DEFAULT_PRIORITY_LEVELS)
    if something_queued:
        for queue in (pushed, drained):
            queue.push(WarmRequest(url="/queued", priority="medium"), 100.0)
    for request in requests:
        pushed.push(request, 100.0)
    expected = []
    while (popped := pushed.pop(100.0)) is not None:
        expected.append(popped)
    assert drained.drain(requests, 100.0) == expected
    assert len(drained) == 0


def test_drain_refuses_an_unknown_priority_like_push() -> None:
    queue = WarmQueue(["medium"])
    with pytest.raises(ValueError, match="unknown priority level 'low'"):
        queue.drain([WarmRequest(url="/a"), WarmRequest(url="/b", priority="low")], 0.0)
    with pytest.raises(ValueError, match="unknown priority level 'low'"):
        queue.drain([WarmRequest(url="/b", priority="low")], 0.0)
