"""MemoryStore beyond the contract: the byte and count bounds, LRU order, expiry
before eviction."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from proxy.entry import CacheEntry, VaryIndex
from proxy.store import MemoryStore
from tests.proxy.store.test_contract import FakeClock

# CacheEntry.size is len(body) + 256 for an entry without headers.
OVERHEAD = 256


def entry_of_size(size: int, tag: str = "") -> CacheEntry:
    """An entry whose ``size`` is exactly ``size`` (>= OVERHEAD)."""
    entry = CacheEntry(
        url=f"http://origin/{tag}",
        status=200,
        headers=[],
        body=b"x" * (size - OVERHEAD),
        born=0.0,
        stored_at=0.0,
        fresh_until=0.0,
        stale_while_revalidate_until=0.0,
        stale_if_error_until=0.0,
        expires_at=0.0,
    )
    assert entry.size == size
    return entry


def test_reading_an_item_keeps_it_over_older_ones() -> None:
    store = MemoryStore(max_bytes=3000, max_entry_bytes=3000)
    for key in ("/a", "/b", "/c"):
        store.put_nowait(key, entry_of_size(1000, key), 60)
    assert store.get_nowait("/a") is not None  # /a is now the most recently used
    store.put_nowait("/d", entry_of_size(1000, "/d"), 60)
    assert store.get_nowait("/b") is None
    assert all(store.get_nowait(k) is not None for k in ("/a", "/c", "/d"))
    assert store.evictions == 1


def test_overwriting_an_item_marks_it_recently_used() -> None:
    store = MemoryStore(max_bytes=2000, max_entry_bytes=2000)
    store.put_nowait("/a", entry_of_size(1000), 60)
    store.put_nowait("/b", entry_of_size(1000), 60)
    store.put_nowait("/a", entry_of_size(1000), 60)
    store.put_nowait("/c", entry_of_size(1000), 60)
    assert store.get_nowait("/a") is not None
    assert store.get_nowait("/b") is None


def test_eviction_frees_just_enough_for_the_new_item() -> None:
    store = MemoryStore(max_bytes=3000, max_entry_bytes=3000)
    for key in ("/a", "/b", "/c"):
        store.put_nowait(key, entry_of_size(1000), 60)
    store.put_nowait("/big", entry_of_size(2000), 60)
    assert [k for k in ("/a", "/b", "/c", "/big") if store.get_nowait(k)] == ["/c", "/big"]
    assert store.bytes_used == 3000
    assert store.evictions == 2


def test_expired_items_make_room_before_live_ones_are_evicted() -> None:
    clock = FakeClock()
    store = MemoryStore(max_bytes=3000, max_entry_bytes=3000, clock=clock)
    store.put_nowait("/old-live", entry_of_size(1000), 600)
    store.put_nowait("/short-1", entry_of_size(1000), 5)
    store.put_nowait("/short-2", entry_of_size(1000), 5)
    clock.advance(10)
    store.put_nowait("/new", entry_of_size(2000), 600)
    # The least recently used item is live; the expired ones went instead.
    assert store.get_nowait("/old-live") is not None
    assert store.get_nowait("/new") is not None
    assert store.evictions == 0
    assert store.expired == 2


def test_oversize_item_is_rejected_and_counted() -> None:
    store = MemoryStore(max_bytes=10_000, max_entry_bytes=2000)
    store.put_nowait("/ok", entry_of_size(2000), 60)
    store.put_nowait("/big", entry_of_size(2001), 60)
    assert store.get_nowait("/ok") is not None
    assert store.get_nowait("/big") is None
    assert store.rejected == 1
    assert store.evictions == 0
    assert store.bytes_used == 2000


def test_item_bigger_than_the_whole_store_is_rejected_without_evicting() -> None:
    store = MemoryStore(max_bytes=1000, max_entry_bytes=5000)
    store.put_nowait("/a", entry_of_size(1000), 60)
    store.put_nowait("/huge", entry_of_size(1001), 60)
    assert store.get_nowait("/a") is not None
    assert store.rejected == 1


def test_expiry_is_exact_on_the_injected_clock() -> None:
    clock = FakeClock()
    store = MemoryStore(max_bytes=10_000, max_entry_bytes=10_000, clock=clock)
    store.put_nowait("/k", entry_of_size(300), 2.0)
    clock.advance(1.999)
    assert store.get_nowait("/k") is not None
    clock.advance(0.001)
    assert store.get_nowait("/k") is None
    assert len(store) == 0
    assert store.bytes_used == 0


async def test_stats_purges_expired_items() -> None:
    clock = FakeClock()
    store = MemoryStore(max_bytes=10_000, max_entry_bytes=10_000, clock=clock)
    store.put_nowait("/a", entry_of_size(300), 1)
    store.put_nowait("/b", entry_of_size(400), 100)
    clock.advance(5)
    stats = await store.stats()
    assert (stats.entries, stats.bytes) == (1, 400)


def test_churn_does_not_grow_internal_bookkeeping() -> None:
    store = MemoryStore(max_bytes=100_000, max_entry_bytes=100_000)
    for n in range(20_000):
        store.put_nowait(f"/k{n % 10}", entry_of_size(300), 60)
    assert len(store) == 10
    # White-box: the expiry heap is compacted, so overwrites don't leak memory.
    assert len(store._deadlines) <= 2 * len(store) + 64 + 1


def test_nan_ttl_is_refused() -> None:
    store = MemoryStore(max_bytes=1000, max_entry_bytes=1000)
    with pytest.raises(ValueError):
        store.put_nowait("/k", entry_of_size(300), float("nan"))


@pytest.mark.parametrize(("max_bytes", "max_entry_bytes"), [(0, 10), (10, 0), (-1, 10)])
def test_limits_must_be_positive(max_bytes: int, max_entry_bytes: int) -> None:
    with pytest.raises(ValueError):
        MemoryStore(max_bytes=max_bytes, max_entry_bytes=max_entry_bytes)


# -- the count bound (cache.max_entries) ---------------------------------------


def test_count_bound_evicts_the_least_recently_used_response() -> None:
    store = MemoryStore(max_bytes=1_000_000, max_entry_bytes=10_000, max_entries=2)
    store.put_nowait("/a", entry_of_size(300), 60)
    store.put_nowait("/b", entry_of_size(300), 60)
    assert store.get_nowait("/a") is not None  # /b is now the least recently used
    store.put_nowait("/c", entry_of_size(300), 60)
    assert store.get_nowait("/b") is None
    assert store.get_nowait("/a") is not None
    assert store.get_nowait("/c") is not None
    assert (store.entries, store.evictions) == (2, 1)


def test_count_bound_drops_expired_responses_before_live_ones() -> None:
    clock = FakeClock()
    store = MemoryStore(max_bytes=1_000_000, max_entry_bytes=10_000, clock=clock, max_entries=2)
    store.put_nowait("/old-live", entry_of_size(300), 600)
    store.put_nowait("/short", entry_of_size(300), 5)
    clock.advance(10)
    store.put_nowait("/new", entry_of_size(300), 600)
    assert store.get_nowait("/old-live") is not None
    assert store.get_nowait("/new") is not None
    assert (store.evictions, store.expired) == (0, 1)


def test_overwriting_a_response_does_not_count_it_twice() -> None:
    store = MemoryStore(max_bytes=1_000_000, max_entry_bytes=10_000, max_entries=2)
    store.put_nowait("/a", entry_of_size(300), 60)
    store.put_nowait("/b", entry_of_size(300), 60)
    store.put_nowait("/b", entry_of_size(300), 60)
    assert store.get_nowait("/a") is not None
    assert (store.entries, store.evictions) == (2, 0)


def index_of(*variant_keys: str) -> VaryIndex:
    return VaryIndex(
        names=("accept-encoding",), generation="g", expires_at=0.0, variant_keys=list(variant_keys)
    )


def test_a_url_with_one_variant_counts_once() -> None:
    """The Vary index is not a response: with ``Vary`` the bound still counts URLs
    that have one variant, as a cache without ``Vary`` would."""
    store = MemoryStore(max_bytes=1_000_000, max_entry_bytes=10_000, max_entries=2)
    for url in ("/a", "/b"):
        # The cache writes the variant, then the index.
        store.put_nowait(f"{url}#vg:1", entry_of_size(300), 60)
        store.put_nowait(url, index_of(f"{url}#vg:1"), 60)
    assert len(store) == 4
    assert store.entries == 2
    assert all(store.get_nowait(k) is not None for k in ("/a", "/a#vg:1", "/b", "/b#vg:1"))
    # A third URL's response: the least recently used URL (/a) goes, index and variant.
    store.put_nowait("/c#vg:1", entry_of_size(300), 60)
    store.put_nowait("/c", index_of("/c#vg:1"), 60)
    assert store.get_nowait("/a#vg:1") is None
    assert all(store.get_nowait(k) is not None for k in ("/b", "/b#vg:1", "/c", "/c#vg:1"))
    assert store.entries == 2


def test_each_variant_counts() -> None:
    store = MemoryStore(max_bytes=1_000_000, max_entry_bytes=10_000, max_entries=2)
    store.put_nowait("/a#vg:gzip", entry_of_size(300), 60)
    store.put_nowait("/a#vg:br", entry_of_size(300), 60)
    store.put_nowait("/a", index_of("/a#vg:gzip", "/a#vg:br"), 60)
    store.put_nowait("/b", entry_of_size(300), 60)
    assert store.get_nowait("/a#vg:gzip") is None
    assert store.get_nowait("/a#vg:br") is not None
    assert store.entries == 2


def test_no_count_bound_by_default() -> None:
    store = MemoryStore(max_bytes=1_000_000, max_entry_bytes=10_000)
    for n in range(1000):
        store.put_nowait(f"/k{n}", entry_of_size(300), 60)
    assert (store.entries, store.evictions) == (1000, 0)


def test_negative_max_entries_is_refused() -> None:
    with pytest.raises(ValueError, match="max_entries"):
        MemoryStore(max_bytes=1000, max_entry_bytes=1000, max_entries=-1)


# -- model-based test --------------------------------------------------------

MAX_BYTES = 4000
MAX_ENTRY = 2500
MAX_ENTRIES = 3
KEYS = st.sampled_from([f"/k{n}" for n in range(8)])


@dataclass
class ModelItem:
    key: str
    size: int
    deadline: float
    tag: str


@dataclass
class Model:
    """The specified behaviour in the plainest form: a list in recency order."""

    now: float = 1000.0
    max_entries: int = 0
    items: list[ModelItem] = field(default_factory=list)
    evictions: int = 0
    rejected: int = 0

    def find(self, key: str) -> ModelItem | None:
        return next((i for i in self.items if i.key == key), None)

    def used(self) -> int:
        return sum(i.size for i in self.items)

    def put(self, key: str, size: int, ttl: float, tag: str) -> None:
        self.items = [i for i in self.items if i.key != key]
        if size > MAX_ENTRY or size > MAX_BYTES:
            self.rejected += 1
            return
        if self.used() + size > MAX_BYTES or self.full():
            self.items = [i for i in self.items if i.deadline > self.now]
            while self.used() + size > MAX_BYTES or self.full():
                self.items.pop(0)
                self.evictions += 1
        self.items.append(ModelItem(key, size, self.now + ttl, tag))

    def full(self) -> bool:
        return bool(self.max_entries) and len(self.items) >= self.max_entries

    def get(self, key: str) -> str | None:
        item = self.find(key)
        if item is None:
            return None
        self.items.remove(item)
        if item.deadline <= self.now:
            return None
        self.items.append(item)
        return item.tag


class MemoryStoreMachine(RuleBasedStateMachine):
    """Random puts, gets, deletes and clock steps, checked against :class:`Model`."""

    max_entries = 0

    def __init__(self) -> None:
        super().__init__()
        self.model = Model(max_entries=self.max_entries)
        self.clock = FakeClock(self.model.now)
        self.store = MemoryStore(
            MAX_BYTES, MAX_ENTRY, clock=self.clock, max_entries=self.max_entries
        )
        self.counter = 0

    @rule(
        key=KEYS,
        size=st.integers(min_value=OVERHEAD, max_value=MAX_ENTRY + 200),
        ttl=st.sampled_from([0.5, 1.0, 5.0, 100.0]),
    )
    def put(self, key: str, size: int, ttl: float) -> None:
        self.counter += 1
        tag = f"v{self.counter}"
        self.store.put_nowait(key, entry_of_size(size, tag), ttl)
        self.model.put(key, size, ttl, tag)

    @rule(key=KEYS)
    def get(self, key: str) -> None:
        got = self.store.get_nowait(key)
        expected = self.model.get(key)
        if expected is None:
            assert got is None
        else:
            assert isinstance(got, CacheEntry)
            assert got.url == f"http://origin/{expected}"

    @rule(key=KEYS)
    def delete(self, key: str) -> None:
        self.store.delete_nowait(key)
        self.model.items = [i for i in self.model.items if i.key != key]

    @precondition(lambda self: self.model.items)
    @rule(seconds=st.sampled_from([0.25, 1.0, 3.0]))
    def tick(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.model.now += seconds

    @invariant()
    def byte_bound_holds(self) -> None:
        assert self.store.bytes_used <= MAX_BYTES

    @invariant()
    def count_bound_holds(self) -> None:
        assert not self.max_entries or self.store.entries <= self.max_entries

    @invariant()
    def matches_the_model(self) -> None:
        assert self.store.bytes_used == self.model.used()
        assert len(self.store) == len(self.model.items)
        assert self.store.evictions == self.model.evictions
        assert self.store.rejected == self.model.rejected


MemoryStoreMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=60)
TestMemoryStoreAgainstModel = MemoryStoreMachine.TestCase


class CountBoundedMachine(MemoryStoreMachine):
    """The same, with both bounds: bytes and ``max_entries``."""

    max_entries = MAX_ENTRIES


CountBoundedMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=60)
TestCountBoundedStoreAgainstModel = CountBoundedMachine.TestCase


def test_evicted_keys_are_told_expired_ones_are_not() -> None:
    clock = FakeClock()
    store = MemoryStore(max_bytes=1_000_000, max_entry_bytes=10_000, clock=clock, max_entries=2)
    evicted: list[str] = []
    store.on_evict = evicted.append
    store.put_nowait("/short", entry_of_size(300), 5)
    store.put_nowait("/a", entry_of_size(300), 600)
    clock.advance(10)
    store.put_nowait("/b", entry_of_size(300), 600)  # /short expired: dropped, not evicted
    store.put_nowait("/c", entry_of_size(300), 600)
    assert evicted == ["/a"]
