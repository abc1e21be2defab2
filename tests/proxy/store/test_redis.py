"""RedisStore beyond the contract: key layout, TTLs, foreign values, outages, batching."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace

import pytest
import redis.asyncio as aioredis

from proxy.entry import CacheEntry, encode
from proxy.store import RedisStore, StoreError
from proxy.store.redis import escape_glob, redis_superset_glob
from tests.proxy.store.test_contract import make_entry, scan_all
from tests.redis_server import RedisServer, free_port

MAX_ENTRY = 1024 * 1024
# Short timeouts keep the outage tests quick; production defaults are 0.5 s.
TIMEOUT = 0.2


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A plain client on the same Redis, to look behind the store's back."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def store(redis_url: str, redis_prefix: str) -> AsyncIterator[RedisStore]:
    s = RedisStore(redis_url, prefix=redis_prefix, max_entry_bytes=MAX_ENTRY)
    try:
        yield s
    finally:
        await s.close()


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    """Poll ``check`` until it is true, failing after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, f"condition not met within {within}s"
        await asyncio.sleep(0.05)


def patient_store(url: str) -> RedisStore:
    """A store whose timeouts outlast the short CLIENT PAUSEs the tests use."""
    return RedisStore(
        url, prefix="wp:", max_entry_bytes=MAX_ENTRY, socket_timeout=5.0, connect_timeout=5.0
    )


def outage_store(url: str) -> RedisStore:
    return RedisStore(
        url,
        prefix="wp:",
        max_entry_bytes=MAX_ENTRY,
        socket_timeout=TIMEOUT,
        connect_timeout=TIMEOUT,
    )


# -- key layout and TTL --------------------------------------------------------


async def test_item_lives_under_prefix_plus_key_as_encoded_bytes(
    store: RedisStore, raw: aioredis.Redis, redis_prefix: str
) -> None:
    entry = make_entry(body=b"\x00\xff" * 10)
    await store.put("/products/1", entry, 60)
    assert await raw.get(redis_prefix + "/products/1") == encode(entry)
    assert [k async for k in raw.scan_iter(match=redis_prefix + "*")] == [
        (redis_prefix + "/products/1").encode()
    ]


@pytest.mark.parametrize(
    ("ttl", "low_ms", "high_ms"),
    # The lower bounds leave room for a slow, loaded machine between SET and PTTL.
    [(30, 28_000, 30_000), (10.5, 9_000, 10_500), (1.0004, 500, 1_001)],
)
async def test_put_sets_a_millisecond_ttl_rounded_up(
    store: RedisStore,
    raw: aioredis.Redis,
    redis_prefix: str,
    ttl: float,
    low_ms: int,
    high_ms: int,
) -> None:
    await store.put("/k", make_entry(), ttl)
    pttl = await raw.pttl(redis_prefix + "/k")
    assert low_ms < pttl <= high_ms


async def test_tiny_ttl_becomes_one_millisecond_not_forever(
    store: RedisStore, raw: aioredis.Redis, redis_prefix: str
) -> None:
    await store.put("/k", make_entry(), 0.00001)
    # -2: already gone; never -1 (a key without expiry).
    assert await raw.pttl(redis_prefix + "/k") in (-2, 0, 1)


async def test_non_finite_ttl_is_refused(store: RedisStore) -> None:
    with pytest.raises(ValueError):
        await store.put("/k", make_entry(), float("inf"))
    with pytest.raises(ValueError):
        await store.put("/k", make_entry(), float("nan"))


async def test_oversize_item_is_counted_as_rejected(
    store: RedisStore, raw: aioredis.Redis, redis_prefix: str
) -> None:
    await store.put("/big", make_entry(body=b"x" * MAX_ENTRY), 60)
    assert store.rejected == 1
    assert await raw.exists(redis_prefix + "/big") == 0


async def test_stats_bytes_are_the_stored_value_sizes(store: RedisStore) -> None:
    entries = [make_entry(body=bytes([n]) * (100 * n)) for n in range(1, 6)]
    for n, entry in enumerate(entries):
        await store.put(f"/s/{n}", entry, 60)
    stats = await store.stats()
    assert stats.entries == len(entries)
    assert stats.bytes == sum(len(encode(e)) for e in entries)


# -- foreign values ----------------------------------------------------------


GARBAGE = [
    b"",
    b"garbage",
    b"WP\x00\x00\x00\x00\x02{}",  # another format version
    b"WP\x01\x00\x00\x00\x05{bad}",  # this version, broken metadata
    b"WP\x01\x00\x00\x00\x02{}",  # this version, fields missing
    encode(make_entry())[:20],  # cut short
]


@pytest.mark.parametrize("garbage", GARBAGE)
async def test_undecodable_value_is_a_miss_and_is_deleted(
    store: RedisStore, raw: aioredis.Redis, redis_prefix: str, garbage: bytes
) -> None:
    await raw.set(redis_prefix + "/k", garbage)
    assert await store.get("/k") is None
    assert await raw.exists(redis_prefix + "/k") == 0
    assert store.undecodable == 1


# An empty value reads as no key at all to a head read (GETRANGE): get drops it.
@pytest.mark.parametrize("garbage", [g for g in GARBAGE if g])
async def test_undecodable_value_read_by_its_head_is_a_miss_and_is_deleted(
    store: RedisStore, raw: aioredis.Redis, redis_prefix: str, garbage: bytes
) -> None:
    await raw.set(redis_prefix + "/k", garbage)
    assert await store.head("/k") is None
    assert await raw.exists(redis_prefix + "/k") == 0
    await raw.hset(redis_prefix + "/h", mapping={"a": "1"})
    assert await store.head("/h") is None
    assert await raw.exists(redis_prefix + "/h") == 0


async def test_an_entry_replaced_between_two_head_reads_is_a_miss_and_is_kept(
    store: RedisStore, raw: aioredis.Redis, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Metadata past the first read takes a second; should another replica
    store the key in between, what came is two items' halves: a miss, not
    a foreign value to delete."""
    first = replace(make_entry(), headers=[("x-long", "v" * 20_000)])
    second = replace(make_entry(), headers=[("x-long", "w" * 30_000)])
    await store.put("/k", first, 60)
    client = store.client
    real = client.getrange
    reads = 0

    async def getrange(name: str, start: int, end: int) -> bytes:
        nonlocal reads
        reads += 1
        if reads == 2:
            await store.put("/k", second, 60)
        return await real(name, start, end)

    monkeypatch.setattr(client, "getrange", getrange)
    assert await store.head("/k") is None
    assert reads == 2
    monkeypatch.setattr(client, "getrange", real)
    got = await store.head("/k")
    assert isinstance(got, CacheEntry)
    assert replace(got, body=second.body) == second
    assert store.undecodable == 0


async def test_value_of_another_type_is_a_miss_and_is_replaced(
    store: RedisStore, raw: aioredis.Redis, redis_prefix: str
) -> None:
    await raw.hset(redis_prefix + "/k", mapping={"a": "1"})
    await raw.rpush(redis_prefix + "/list", "x")
    assert await store.get("/k") is None
    assert await raw.exists(redis_prefix + "/k") == 0
    # stats() skips what is not a string instead of failing.
    await store.put("/ok", make_entry(), 60)
    stats = await store.stats()
    assert stats.entries == 1
    await store.put("/list", make_entry(), 60)
    assert isinstance(await store.get("/list"), CacheEntry)


# -- prefixes and globs ---------------------------------------------------------


async def test_prefix_with_glob_characters_matches_only_itself(
    redis_url: str, redis_prefix: str
) -> None:
    # Unescaped, "[ab]*?\:" as a glob would also match "azz:" below.
    odd = RedisStore(redis_url, prefix=redis_prefix + "[ab]*?\\:", max_entry_bytes=MAX_ENTRY)
    plain = RedisStore(redis_url, prefix=redis_prefix + "azz:", max_entry_bytes=MAX_ENTRY)
    try:
        await odd.put("/mine", make_entry(), 60)
        await plain.put("/theirs", make_entry(), 60)
        assert await scan_all(odd, "*") == {"/mine"}
        assert await scan_all(odd, "/*") == {"/mine"}
        assert (await odd.stats()).entries == 1
        assert await scan_all(plain, "*") == {"/theirs"}
    finally:
        await odd.close()
        await plain.close()


async def test_a_scan_of_everything_yields_cache_keys_only(
    store: RedisStore, raw: aioredis.Redis, redis_prefix: str
) -> None:
    # The warmer's schedule and firing claims and the fleet's heartbeats live
    # under the same prefix: a purge or a warm of pattern "*" must never
    # reach them (a purge would delete the posted schedule).
    await store.put("/page", make_entry(), 60)
    await store.put("//shop.example/page", make_entry(), 60)
    for other in ("warmer:schedule", "warmer:fired:hourly:1", "{fleet}:replica:a", "tag:x"):
        await raw.set(redis_prefix + other, b"not an entry", ex=60)
    assert await scan_all(store, "*") == {"/page", "//shop.example/page"}
    assert (await store.stats()).entries == 2


async def test_scan_walks_every_cursor_page_and_yields_each_key_once(
    redis_url: str, redis_prefix: str
) -> None:
    # Timeouts roomier than production's: a hundred new connections at once
    # on a loaded two-core machine can take longer than half a second.
    store = RedisStore(
        redis_url,
        prefix=redis_prefix,
        max_entry_bytes=MAX_ENTRY,
        socket_timeout=5.0,
        connect_timeout=5.0,
    )
    try:
        await _scan_every_page(store)
    finally:
        await store.close()


async def _scan_every_page(store: RedisStore) -> None:
    keys = {f"/many/{n}" for n in range(1_300)}
    entry = make_entry()
    ordered = sorted(keys)
    # In slices: 1,300 puts at once would queue for the pool's connections.
    for start in range(0, len(ordered), 100):
        await asyncio.gather(*(store.put(k, entry, 60) for k in ordered[start : start + 100]))
    await store.put("/other", entry, 60)
    found = [k async for k in store.scan("/many/*")]
    assert len(found) == len(keys)
    assert set(found) == keys
    assert (await store.stats()).entries == len(keys) + 1


@pytest.mark.parametrize(
    ("pattern", "glob"),
    [
        ("/products/*", "/products/*"),
        ("/a?b", "/a*b"),
        ("/p[!1]x", "/p*x"),
        ("/p[]]x", "/p*x"),
        ("/p[1", "/p\\[1"),
        ("a]b", "a\\]b"),
        ("/x/**?", "/x/*"),
        ("a\\b", "a\\\\b"),
    ],
)
def test_fnmatch_pattern_becomes_a_redis_superset_glob(pattern: str, glob: str) -> None:
    assert redis_superset_glob(pattern) == glob


def test_escape_glob() -> None:
    assert escape_glob("wp:[a]*?\\x") == "wp:\\[a\\]\\*\\?\\\\x"


# -- outages -------------------------------------------------------------------


async def test_redis_down_at_construction_does_not_raise_and_ops_raise_store_error() -> None:
    store = outage_store(f"redis://127.0.0.1:{free_port()}/0")
    try:
        with pytest.raises(StoreError):
            await store.get("/k")
        with pytest.raises(StoreError):
            await store.head("/k")
        with pytest.raises(StoreError):
            await store.put("/k", make_entry(), 60)
        with pytest.raises(StoreError):
            await store.delete("/k")
        with pytest.raises(StoreError):
            await scan_all(store, "*")
        with pytest.raises(StoreError):
            await store.stats()
        assert await store.health() is False
    finally:
        await store.close()


async def test_store_recovers_after_redis_restarts(throwaway_redis: RedisServer) -> None:
    store = outage_store(throwaway_redis.url)
    try:
        await store.put("/k", make_entry(), 60)
        assert await store.get("/k") == make_entry()
        assert await store.health() is True

        throwaway_redis.stop()
        with pytest.raises(StoreError):
            await store.get("/k")
        with pytest.raises(StoreError):
            await store.put("/k", make_entry(), 60)
        assert await store.health() is False

        throwaway_redis.start()
        await eventually(store.health)
        # The restarted server kept nothing (no persistence): a miss, not an error.
        assert await store.get("/k") is None
        await store.put("/k", make_entry(body=b"again"), 60)
        got = await store.get("/k")
        assert isinstance(got, CacheEntry)
        assert got.body == b"again"
    finally:
        await store.close()


async def test_dead_pooled_connections_do_not_fail_requests_after_restart(
    throwaway_redis: RedisServer,
) -> None:
    store = outage_store(throwaway_redis.url)
    try:
        await store.put("/k", make_entry(), 60)
        # Twenty concurrent commands leave twenty connections in the pool.
        await asyncio.gather(*(store.get("/k") for _ in range(20)))
        throwaway_redis.stop()
        throwaway_redis.start()
        # No command ran in between: every pooled connection is dead, yet the
        # first requests after the restart succeed (a miss: nothing persisted).
        results = await asyncio.gather(*(store.get("/k") for _ in range(20)))
        assert results == [None] * 20
    finally:
        await store.close()


async def test_hung_redis_times_out_and_store_recovers(throwaway_redis: RedisServer) -> None:
    store = outage_store(throwaway_redis.url)
    try:
        await store.put("/k", make_entry(), 60)
        throwaway_redis.pause()
        try:
            with pytest.raises(StoreError):
                await store.get("/k")
            assert await store.health() is False
        finally:
            throwaway_redis.resume()
        await eventually(store.health)
        assert await store.get("/k") == make_entry()
    finally:
        await store.close()


# -- batched gets ----------------------------------------------------------------


async def command_calls(client: aioredis.Redis, *commands: str) -> int:
    """How many times the server ran ``commands`` since its stats were reset."""
    stats = await client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in commands)


async def test_concurrent_gets_each_get_their_own_reply(
    store: RedisStore, raw: aioredis.Redis, redis_prefix: str
) -> None:
    present = {f"/p/{n}": make_entry(body=f"body {n}".encode()) for n in range(60)}
    for key, entry in present.items():
        await store.put(key, entry, 60)
    garbage = [f"/g/{n}" for n in range(10)]
    for n, key in enumerate(garbage):
        await raw.set(redis_prefix + key, b"garbage %d" % n)
    foreign = [f"/h/{n}" for n in range(3)]
    for key in foreign:
        await raw.hset(redis_prefix + key, mapping={"a": "1"})
    absent = [f"/a/{n}" for n in range(40)]
    # Every present key asked for three times, in an order mixing the kinds.
    keys = [*present, *absent, *garbage, *present, *foreign, *present]
    keys = keys[::2] + keys[1::2]

    results = await asyncio.gather(*(store.get(key) for key in keys))

    for key, got in zip(keys, results, strict=True):
        assert got == present.get(key), key
    for key in garbage + foreign:
        assert await raw.exists(redis_prefix + key) == 0
    assert store.undecodable == len(garbage) + len(foreign)
    assert set(present) <= await scan_all(store, "*")


async def test_concurrent_gets_go_out_in_few_bounded_batches(
    throwaway_redis: RedisServer,
) -> None:
    store = outage_store(throwaway_redis.url)
    raw = aioredis.Redis.from_url(throwaway_redis.url)
    try:
        for n in range(0, 600, 3):
            await store.put(f"/k/{n}", make_entry(), 60)
        await raw.config_resetstat()
        results = await asyncio.gather(*(store.get(f"/k/{n}") for n in range(600)))
        assert [r is not None for r in results] == [n % 3 == 0 for n in range(600)]
        reads = await command_calls(raw, "mget", "get")
        # At most 256 keys per batch, so at least three batches; one GET each
        # would have been 600.
        assert 3 <= reads <= 10

        # Callers asking for the same key share its slot in the batch.
        await raw.config_resetstat()
        same = await asyncio.gather(*(store.get("/k/0") for _ in range(300)))
        assert same == [make_entry()] * 300
        assert await command_calls(raw, "mget", "get") == 1
    finally:
        await raw.aclose()
        await store.close()


async def test_failed_batch_is_a_store_error_for_every_caller() -> None:
    store = outage_store(f"redis://127.0.0.1:{free_port()}/0")
    try:
        results = await asyncio.gather(
            *(store.get(f"/k/{n % 40}") for n in range(100)), return_exceptions=True
        )
        assert all(isinstance(r, StoreError) for r in results), results
        # One exception object per caller: each is raised in its own task.
        assert len({id(r) for r in results}) == len(results)
    finally:
        await store.close()


async def test_command_error_fails_the_batch_as_store_error(
    throwaway_redis: RedisServer,
) -> None:
    store = outage_store(throwaway_redis.url)
    raw = aioredis.Redis.from_url(throwaway_redis.url)
    try:
        await store.put("/k", make_entry(), 60)
        # Not an outage: Redis answers every batch, with an error.
        reads = ["-get", "-mget"]
        await raw.acl_setuser("default", enabled=True, nopass=True, commands=reads)
        results = await asyncio.gather(
            *(store.get(f"/k{n}") for n in range(20)), return_exceptions=True
        )
        assert all(isinstance(r, StoreError) for r in results), results
        assert "permission" in str(results[0]).lower()
        await raw.acl_setuser("default", enabled=True, nopass=True, commands=["+@all"])
        assert await store.get("/k") == make_entry()
    finally:
        await raw.aclose()
        await store.close()


async def test_gets_queued_behind_a_failing_batch_fail_with_it(
    throwaway_redis: RedisServer,
) -> None:
    store = RedisStore(
        throwaway_redis.url,
        prefix="wp:",
        max_entry_bytes=MAX_ENTRY,
        socket_timeout=0.5,
        connect_timeout=0.5,
    )
    try:
        await store.put("/k", make_entry(), 60)  # a pooled connection, idle
        throwaway_redis.pause()
        try:
            started = time.monotonic()
            first = asyncio.gather(
                *(store.get(f"/a/{n}") for n in range(10)), return_exceptions=True
            )
            await asyncio.sleep(0.1)  # the first batch is in flight now
            second = asyncio.gather(
                *(store.get(f"/b/{n}") for n in range(10)), return_exceptions=True
            )
            results = [*await first, *await second]
            elapsed = time.monotonic() - started
        finally:
            throwaway_redis.resume()
        assert all(isinstance(r, StoreError) for r in results), results
        # One socket timeout (0.5 s) for both groups, not one after the other.
        assert elapsed < 0.9
        await eventually(store.health)
        assert await store.get("/k") == make_entry()
    finally:
        await store.close()


async def test_cancelled_caller_does_not_disturb_the_others(
    throwaway_redis: RedisServer,
) -> None:
    store = patient_store(throwaway_redis.url)
    raw = aioredis.Redis.from_url(throwaway_redis.url)
    try:
        entries = {f"/k/{n}": make_entry(body=b"%d" % n) for n in range(10)}
        for key, entry in entries.items():
            await store.put(key, entry, 60)
        # Hold every command for a moment, so the first batch stays in flight.
        await raw.client_pause(150, all=True)
        in_flight = {key: asyncio.create_task(store.get(key)) for key in entries}
        twin = asyncio.create_task(store.get("/k/0"))
        await asyncio.sleep(0.05)
        queued = {key: asyncio.create_task(store.get(key)) for key in entries}
        await asyncio.sleep(0)  # they wait behind the batch in flight now
        cancelled = [in_flight.pop("/k/1"), twin, queued.pop("/k/2"), queued.pop("/k/0")]
        for task in cancelled:
            task.cancel()

        for tasks in (in_flight, queued):
            for key, task in tasks.items():
                assert await task == entries[key], key
        for task in cancelled:
            assert task.cancelled()
        assert await store.get("/k/1") == entries["/k/1"]
    finally:
        await raw.aclose()
        await store.close()


async def test_close_waits_for_the_gets_in_flight(
    throwaway_redis: RedisServer,
) -> None:
    store = patient_store(throwaway_redis.url)
    raw = aioredis.Redis.from_url(throwaway_redis.url)
    try:
        await store.put("/k", make_entry(), 60)
        await raw.client_pause(100, all=True)
        gets = [asyncio.create_task(store.get("/k")) for _ in range(5)]
        await asyncio.sleep(0)
        await store.close()
        assert [t.result() for t in gets] == [make_entry()] * 5
    finally:
        await raw.aclose()
