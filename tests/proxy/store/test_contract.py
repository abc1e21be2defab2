"""The CacheStore contract, checked against every backend: memory, Redis, a Redis Cluster."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import pytest

from proxy.entry import CacheEntry, StoredItem, VaryIndex
from proxy.store import CacheStore, MemoryStore, RedisStore

MAX_ENTRY_BYTES = 64 * 1024
# Real-time TTL for Redis: short, but long enough that "still there right after
# put" holds on a loaded machine.
SHORT_TTL = 0.3


class FakeClock:
    """A wall clock the test moves by hand."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Subject:
    """A store under test, plus a second store of another deployment beside it."""

    kind: str
    store: CacheStore
    neighbour: CacheStore
    clock: FakeClock | None

    async def wait_expired(self, key: str, ttl: float) -> None:
        """Let ``ttl`` pass (virtually for memory) and assert ``key`` is gone."""
        if self.clock is not None:
            self.clock.advance(ttl)
            assert await self.store.get(key) is None
            return
        deadline = time.monotonic() + ttl + 3.0
        while await self.store.get(key) is not None:
            assert time.monotonic() < deadline, f"{key} still there {ttl + 3.0}s after put"
            await asyncio.sleep(0.02)


@pytest.fixture(params=["memory", "redis", "redis-cluster"])
async def subject(request: pytest.FixtureRequest) -> AsyncIterator[Subject]:
    if request.param == "memory":
        clock = FakeClock()
        yield Subject(
            "memory",
            MemoryStore(10 * 1024 * 1024, MAX_ENTRY_BYTES, clock=clock),
            MemoryStore(10 * 1024 * 1024, MAX_ENTRY_BYTES, clock=clock),
            clock,
        )
        return
    # A Redis Cluster: the same contract, over keys spread across 3 masters.
    cluster = request.param == "redis-cluster"
    url: str = request.getfixturevalue("redis_cluster_url" if cluster else "redis_url")
    prefix: str = request.getfixturevalue("redis_cluster_prefix" if cluster else "redis_prefix")
    store = RedisStore(url, prefix=prefix + "main:", max_entry_bytes=MAX_ENTRY_BYTES)
    neighbour = RedisStore(url, prefix=prefix + "other:", max_entry_bytes=MAX_ENTRY_BYTES)
    try:
        yield Subject(request.param, store, neighbour, None)
    finally:
        await store.close()
        await neighbour.close()


def make_entry(url: str = "http://origin/products/1", body: bytes = b"hello") -> CacheEntry:
    return CacheEntry(
        url=url,
        status=203,
        headers=[
            ("content-type", "application/octet-stream"),
            ("x-note", "naïve café ✓"),
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
        ],
        body=body,
        born=1_700_000_000.25,
        stored_at=1_700_000_001.5,
        fresh_until=1_700_000_061.5,
        stale_while_revalidate_until=1_700_000_091.5,
        stale_if_error_until=1_700_000_361.5,
        expires_at=1_700_000_961.5,
        etag='W/"abc"',
        last_modified=1_699_999_000.0,
        vary=("accept-encoding", "accept-language"),
        vary_values=("gzip", None),
        must_revalidate=True,
        no_cache=True,
        shareable_with_auth=True,
        fetch_seconds=0.125,
        warmed=True,
    )


async def scan_all(store: CacheStore, pattern: str) -> set[str]:
    return {key async for key in store.scan(pattern)}


async def test_missing_key_is_none(subject: Subject) -> None:
    assert await subject.store.get("/never/stored") is None


async def test_entry_round_trip_keeps_every_field(subject: Subject) -> None:
    entry = make_entry(body=bytes(range(256)) * 8)
    await subject.store.put("/products/1", entry, 60)
    got = await subject.store.get("/products/1")
    assert got == entry
    assert isinstance(got, CacheEntry)
    assert got.body == bytes(range(256)) * 8


async def test_entry_with_defaults_and_empty_body_round_trips(subject: Subject) -> None:
    entry = CacheEntry(
        url="http://origin/empty",
        status=204,
        headers=[],
        body=b"",
        born=1.0,
        stored_at=2.0,
        fresh_until=3.0,
        stale_while_revalidate_until=3.0,
        stale_if_error_until=3.0,
        expires_at=3.0,
    )
    await subject.store.put("/empty", entry, 60)
    assert await subject.store.get("/empty") == entry


async def test_vary_index_round_trip(subject: Subject) -> None:
    index = VaryIndex(
        names=("accept-encoding", "accept"),
        generation="g-7f3a",
        expires_at=1_700_000_500.0,
        variant_keys=["/products/1#g-7f3a#gzip", "/products/1#g-7f3a#br"],
    )
    await subject.store.put("/products/1", index, 60)
    got = await subject.store.get("/products/1")
    assert got == index
    assert isinstance(got, VaryIndex)


async def test_head_is_the_item_with_an_entrys_body_left_out_out_of_process(
    subject: Subject,
) -> None:
    entry = make_entry(body=b"x" * (MAX_ENTRY_BYTES // 2))
    await subject.store.put("/big", entry, 60)
    got = await subject.store.head("/big")
    assert isinstance(got, CacheEntry)
    assert replace(got, body=entry.body) == entry
    if subject.kind != "memory":
        assert got.body == b""
    index = VaryIndex(
        names=("accept-encoding",),
        generation="g-1",
        expires_at=1_700_000_500.0,
        variant_keys=["/big#vg-1:0"],
    )
    await subject.store.put("/indexed", index, 60)
    assert await subject.store.head("/indexed") == index
    assert await subject.store.head("/never/stored") is None
    # A head read leaves the item whole for the next get.
    assert await subject.store.get("/big") == entry


async def test_head_of_an_entry_whose_metadata_is_longer_than_a_first_read(
    subject: Subject,
) -> None:
    entry = replace(make_entry(), headers=[("x-long", "v" * 20_000), ("x-after", "end")])
    await subject.store.put("/long", entry, 60)
    got = await subject.store.head("/long")
    assert isinstance(got, CacheEntry)
    assert replace(got, body=entry.body) == entry


async def test_overwrite_replaces_the_item(subject: Subject) -> None:
    await subject.store.put("/k", make_entry(body=b"old"), 60)
    await subject.store.put("/k", make_entry(body=b"new"), 60)
    got = await subject.store.get("/k")
    assert isinstance(got, CacheEntry)
    assert got.body == b"new"
    assert await scan_all(subject.store, "*") == {"/k"}
    assert (await subject.store.stats()).entries == 1


async def test_overwrite_with_another_kind(subject: Subject) -> None:
    await subject.store.put("/k", make_entry(), 60)
    index = VaryIndex(names=("accept",), generation="g1", expires_at=5.0)
    await subject.store.put("/k", index, 60)
    assert await subject.store.get("/k") == index


async def test_delete(subject: Subject) -> None:
    await subject.store.put("/a", make_entry(), 60)
    await subject.store.put("/b", make_entry(), 60)
    await subject.store.delete("/a")
    assert await subject.store.get("/a") is None
    assert await subject.store.get("/b") is not None
    await subject.store.delete("/a")  # deleting what is not there is fine
    await subject.store.delete("/never")


async def test_item_expires_after_its_ttl(subject: Subject) -> None:
    await subject.store.put("/short", make_entry(), SHORT_TTL)
    await subject.store.put("/long", make_entry(), 3600)
    assert await subject.store.get("/short") is not None
    await subject.wait_expired("/short", SHORT_TTL)
    assert await subject.store.get("/long") is not None
    assert await scan_all(subject.store, "*") == {"/long"}
    assert (await subject.store.stats()).entries == 1


async def test_overwrite_resets_the_ttl(subject: Subject) -> None:
    await subject.store.put("/k", make_entry(body=b"old"), SHORT_TTL)
    await subject.store.put("/k", make_entry(body=b"new"), 3600)
    if subject.clock is not None:
        subject.clock.advance(SHORT_TTL * 2)
    else:
        await asyncio.sleep(SHORT_TTL * 2)
    got = await subject.store.get("/k")
    assert isinstance(got, CacheEntry)
    assert got.body == b"new"


async def test_non_positive_ttl_stores_nothing_and_clears_the_key(subject: Subject) -> None:
    await subject.store.put("/k", make_entry(), 60)
    await subject.store.put("/k", make_entry(body=b"new"), 0)
    assert await subject.store.get("/k") is None
    await subject.store.put("/j", make_entry(), -1)
    assert await subject.store.get("/j") is None


async def test_item_over_max_entry_bytes_is_not_stored(subject: Subject) -> None:
    big = make_entry(body=b"x" * MAX_ENTRY_BYTES)
    assert big.size > subject.store.max_entry_bytes
    await subject.store.put("/big", big, 60)
    assert await subject.store.get("/big") is None
    # An oversize replacement still removes the stale response it supersedes.
    await subject.store.put("/k", make_entry(body=b"small"), 60)
    await subject.store.put("/k", big, 60)
    assert await subject.store.get("/k") is None


async def test_health(subject: Subject) -> None:
    assert await subject.store.health() is True


async def test_stats_counts_entries_and_bytes(subject: Subject) -> None:
    empty = await subject.store.stats()
    assert (empty.entries, empty.bytes) == (0, 0)
    bodies = [b"a" * 1000, b"b" * 2000, b"c" * 3000]
    for n, body in enumerate(bodies):
        await subject.store.put(f"/s/{n}", make_entry(body=body), 60)
    stats = await subject.store.stats()
    assert stats.entries == 3
    assert stats.bytes >= sum(len(b) for b in bodies)
    await subject.store.delete("/s/2")
    after = await subject.store.stats()
    assert after.entries == 2
    assert after.bytes < stats.bytes


SCAN_KEYS = [
    "/products/1",
    "/products/2",
    "/products/10",
    "/products/a/b",
    "/products",
    "/product/1",
    "/articles/1",
    "/p[1]",
    "/p[1",
    "/p*",
    "/back\\slash",
    "/ü/é",
    "/ü/ée",
]


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("/products/*", {"/products/1", "/products/2", "/products/10", "/products/a/b"}),
        ("/products/?", {"/products/1", "/products/2"}),
        ("/products/[12]", {"/products/1", "/products/2"}),
        ("/products/[!1]", {"/products/2"}),
        ("/products/[0-9]*", {"/products/1", "/products/2", "/products/10"}),
        ("/product*/1", {"/products/1", "/product/1"}),
        ("/products", {"/products"}),
        ("/nothing*", set()),
        ("/p[[]1]", {"/p[1]"}),
        ("/p[1", {"/p[1"}),
        ("/p[*]", {"/p*"}),
        ("/back\\*", {"/back\\slash"}),
        ("/ü/?", {"/ü/é"}),
        ("/ü/é*", {"/ü/é", "/ü/ée"}),
        ("*", set(SCAN_KEYS)),
    ],
)
async def test_scan_returns_exactly_the_matching_keys(
    subject: Subject, pattern: str, expected: set[str]
) -> None:
    for key in SCAN_KEYS:
        await subject.store.put(key, make_entry(), 60)
    assert await scan_all(subject.store, pattern) == expected


async def test_scan_on_an_empty_store(subject: Subject) -> None:
    assert await scan_all(subject.store, "*") == set()


async def test_another_deployment_is_invisible(subject: Subject) -> None:
    mine = ["/products/1", "/products/2"]
    theirs = ["/products/1", "/products/3", "/articles/9"]
    for key in mine:
        await subject.store.put(key, make_entry(body=b"mine"), 60)
    for key in theirs:
        await subject.neighbour.put(key, make_entry(body=b"theirs"), 60)

    assert await scan_all(subject.store, "/products/*") == set(mine)
    assert await scan_all(subject.store, "*") == set(mine)
    assert (await subject.store.stats()).entries == len(mine)
    assert await subject.store.get("/products/3") is None

    await subject.store.delete("/products/1")
    await subject.store.delete("/articles/9")
    got: StoredItem | None = await subject.neighbour.get("/products/1")
    assert isinstance(got, CacheEntry)
    assert got.body == b"theirs"
    assert await scan_all(subject.neighbour, "*") == set(theirs)


async def test_header_bytes_that_are_not_utf8_round_trip(subject: Subject) -> None:
    store = subject.store
    odd = b"attachment; filename=caf\xe9.txt".decode("utf-8", "surrogateescape")
    entry = CacheEntry(
        url="/odd",
        status=200,
        headers=[("Content-Disposition", odd), ("X-Utf8", "café")],
        body=b"x",
        born=0.0,
        stored_at=0.0,
        fresh_until=9e9,
        stale_while_revalidate_until=9e9,
        stale_if_error_until=9e9,
        expires_at=9e9,
    )
    await store.put("/odd", entry, 60)
    got = await store.get("/odd")
    assert isinstance(got, CacheEntry)
    assert got.headers == [("Content-Disposition", odd), ("X-Utf8", "café")]
