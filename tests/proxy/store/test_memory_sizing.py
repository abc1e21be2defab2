"""``cache.max_bytes`` bounds the memory the store's entries really take.

Measured with tracemalloc (what Python allocated and still holds, deterministic),
not RSS, on entries built the way a fill builds them and hit once.
"""

from __future__ import annotations

import gc
import io
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from proxy import policy
from proxy.app import build_store
from proxy.check_config import check_config
from proxy.config import load_settings
from proxy.entry import CacheEntry, VaryIndex
from proxy.store.memory import MemoryStore, memory_cost

MAX_BYTES = 2 * 1024 * 1024
CONFIG = policy.CachePolicyConfig()


def filled_entry(n: int, body_size: int, extra_fields: int = 0) -> tuple[str, CacheEntry]:
    """A response as an origin sends it, stored the way a fill stores it, hit once."""
    fields = [
        ("Content-Type", "text/html; charset=utf-8"),
        ("Content-Length", str(body_size)),
        ("Date", "Sun, 06 Dec 2026 04:05:25 GMT"),
        ("Server", "Python/3.11 aiohttp/3.14"),
        ("Cache-Control", "max-age=600"),
        ("ETag", f'"{n:08x}"'),
        ("Last-Modified", "Wed, 21 Oct 2015 07:28:00 GMT"),
        # Fields of the origin's own: a new name and value string per response.
        *((f"X-Origin-Field-{i}", f"value {i} of {n}") for i in range(extra_fields)),
    ]
    path = f"/products/item-{n}?page=1"
    now = time.time()
    entry = policy.build_entry(
        url=path,
        status=200,
        headers=policy.response_fields(CIMultiDictProxy(CIMultiDict(fields))),
        body=str(n).encode().ljust(body_size, b"x"),
        request_headers=CIMultiDict(),
        request_time=now,
        response_time=now,
        fetch_seconds=0.01,
        config=CONFIG,
    )
    entry.response_head()  # what a hit caches on the entry
    return path, entry


def held_by_store(make: Callable[[], MemoryStore], body_size: int, extra_fields: int) -> int:
    """Bytes a store from ``make`` holds once filled about twice over."""
    store = make()
    tracemalloc.start()
    try:
        n = 0
        while store.evictions < max(len(store), 1):
            key, entry = filled_entry(n, body_size, extra_fields)
            store.put_nowait(key, entry, 600)
            n += 1
        del entry
        gc.collect()
        with_entries = tracemalloc.get_traced_memory()[0]
        del store  # the store and everything only it holds
        gc.collect()
        return with_entries - tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()


def configured_store(max_bytes: int = MAX_BYTES) -> MemoryStore:
    """The memory store as the proxy builds it from the configuration."""
    store, l1 = build_store(load_settings(None, {"cache": {"max_bytes": max_bytes}}))
    assert isinstance(store, MemoryStore) and l1 is None
    return store


@pytest.mark.parametrize(
    ("body_size", "extra_fields"),
    [(1024, 0), (1024, 20), (100, 0), (16 * 1024, 0)],
    ids=["1KB", "1KB-27-fields", "100B", "16KB"],
)
def test_a_full_store_holds_about_max_bytes_of_memory(body_size: int, extra_fields: int) -> None:
    held = held_by_store(configured_store, body_size, extra_fields)
    # Counting body bytes alone, 1 KB responses took about 2.6 times max_bytes.
    assert held < 1.3 * MAX_BYTES, f"{held / MAX_BYTES:.2f} x max_bytes"
    # ... and the estimate is not so cautious that the cache holds far less.
    assert held > 0.75 * MAX_BYTES, f"{held / MAX_BYTES:.2f} x max_bytes"


def test_the_l1_tier_in_front_of_redis_counts_the_same_way() -> None:
    settings = load_settings(None, {"cache": {"store": "redis", "l1_max_bytes": MAX_BYTES}})

    def l1_tier() -> MemoryStore:
        _, l1 = build_store(settings)
        assert l1 is not None
        return l1

    held = held_by_store(l1_tier, 1024, 0)
    assert 0.75 * MAX_BYTES < held < 1.3 * MAX_BYTES, f"{held / MAX_BYTES:.2f} x max_bytes"


def test_max_entry_bytes_still_bounds_the_response_not_its_overhead() -> None:
    _, entry = filled_entry(1, 1024)
    store = MemoryStore(max_bytes=1_000_000, max_entry_bytes=entry.size, count_overhead=True)
    store.put_nowait("/a", entry, 60)
    assert store.get_nowait("/a") is entry
    assert store.bytes_used == memory_cost("/a", entry) > entry.size
    assert store.rejected == 0


def test_a_vary_index_counts_its_variant_keys() -> None:
    one = VaryIndex(names=("accept-encoding",), generation="g", expires_at=0.0, variant_keys=["k"])
    many = VaryIndex(
        names=("accept-encoding",),
        generation="g",
        expires_at=0.0,
        variant_keys=[f"/a#vg:{i}" for i in range(10)],
    )
    assert memory_cost("/a", many) - many.size > memory_cost("/a", one) - one.size


def test_check_config_shows_what_max_bytes_costs(tmp_path: Path) -> None:
    config = tmp_path / "warmproxy.toml"
    config.write_text('[cache]\nmax_bytes = "128MiB"\n', encoding="utf-8")
    out, err = io.StringIO(), io.StringIO()
    assert check_config(config, as_json=False, out=out, err=err) == 0
    line = next(x for x in out.getvalue().splitlines() if x.startswith("max_bytes = "))
    assert line.startswith("max_bytes = 134217728  # 128 MiB")
    assert "160 MiB resident" in line
