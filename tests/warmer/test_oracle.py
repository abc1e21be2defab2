"""The replay's oracles: the refresh oracle's window and ``oracle-prefetch`` under a budget."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from warmer.oracle import Foresight
from warmer.replay import (
    STRATEGY_NAMES,
    CacheSize,
    ReplayResult,
    parse_warm_ratio,
    replay,
    replay_file,
)
from warmer.trace import TraceRow, read_trace

HEADER = "ts,key,size,client\n"


def write(path: Path, requests: list[tuple[float, str]]) -> Path:
    path.write_text(
        HEADER + "".join(f"{ts:g},{key},,c{n % 3}\n" for n, (ts, key) in enumerate(requests))
    )
    return path


def run(
    path: Path, strategy: str, *, capacity: int, ttl: float, ratio: float = math.inf
) -> ReplayResult:
    return replay(
        read_trace(path), strategy, capacity=capacity, ttl=ttl, path=path, max_warm_ratio=ratio
    )


# -- the refresh oracle's window: [E, E + TTL) --------------------------------------


def test_the_window_holds_the_expiry_instant_and_not_its_end() -> None:
    rows: list[TraceRow] = [(100.0, "/k", None, "c"), (400.0, "/k", None, "c")]
    foresight = Foresight(rows)
    assert foresight.next_within("/k", 100.0, 300.0)  # at E itself
    assert foresight.next_within("/k", 100.5, 300.0)  # 400 in [100.5, 400.5)
    assert not foresight.next_within("/k", 100.0 + 1e-9, 300.0 - 1e-9)
    assert not foresight.next_within("/k", 101.0, 299.0)  # 400 = E + TTL: out
    assert not foresight.next_within("/other", 0.0, 1e9)


def test_the_oracle_refreshes_for_a_request_at_the_expiry_instant_only(tmp_path: Path) -> None:
    # Minute-stamped: /a is asked for at 0 and 60, /b at 0 and 120; TTL 60.
    path = write(tmp_path / "t.csv", [(0, "/a"), (0, "/b"), (60, "/a"), (120, "/b")])
    none = run(path, "none", capacity=10, ttl=60)
    oracle = run(path, "oracle", capacity=10, ttl=60)
    assert none.hits == 0
    # /a's entry expires at 60, the instant it is asked for again: refreshed,
    # a hit.  /b's would be refreshed at 60 for a request at 120, when the
    # refresh has expired: not refreshed (it was, wastefully, before).
    assert (oracle.hits, oracle.warm_fetches, oracle.warm_used) == (1, 1, 1)
    assert oracle.precision == 1.0


# -- oracle-prefetch -------------------------------------------------------------------


def churn(n: int = 3000) -> list[tuple[float, str]]:
    """Hot keys and a tail through a small cache: capacity and expiry misses."""
    return [(1.5 * i, f"/hot/{i % 7}" if i % 3 else f"/tail/{(i * 7919) % 200}") for i in range(n)]


def test_without_a_budget_every_repeat_miss_is_prevented(tmp_path: Path) -> None:
    requests = churn()
    path = write(tmp_path / "t.csv", requests)
    distinct = len({k for _, k in requests})
    none = run(path, "none", capacity=20, ttl=60)
    prefetch = run(path, "oracle-prefetch", capacity=20, ttl=60)
    assert none.misses > distinct
    # Only each key's first request misses; each warm fetch saves one miss.
    assert prefetch.misses == distinct
    assert prefetch.warm_fetches == none.misses - distinct
    assert prefetch.precision == 1.0
    assert prefetch.evictions == none.evictions  # the cache goes as with the misses


def test_the_budget_is_held_on_the_requests_so_far(tmp_path: Path) -> None:
    # /a every 100 s, TTL 10: every request after the first would miss.
    path = write(tmp_path / "t.csv", [(100.0 * i, "/a") for i in range(4)])
    prefetch = run(path, "oracle-prefetch", capacity=5, ttl=10, ratio=0.5)
    # Request 2: 1 warm <= 0.5 * 2; request 3: 2 > 0.5 * 3, a miss;
    # request 4: 2 <= 0.5 * 4.
    assert (prefetch.hits, prefetch.warm_fetches) == (2, 2)


def test_a_budget_buys_one_hit_per_warm_fetch(tmp_path: Path) -> None:
    requests = churn()
    path = write(tmp_path / "t.csv", requests)
    none = run(path, "none", capacity=20, ttl=60)
    prefetch = run(path, "oracle-prefetch", capacity=20, ttl=60, ratio=0.1)
    # Held to a tenth of the requests so far, and spending all of it: repeat
    # misses come far more often than once in ten requests.
    assert 0.1 * len(requests) - 2 <= prefetch.warm_fetches <= 0.1 * len(requests)
    assert prefetch.hits == none.hits + prefetch.warm_fetches
    assert prefetch.precision == 1.0


def test_a_request_at_the_expiry_instant_is_prevented(tmp_path: Path) -> None:
    path = write(tmp_path / "t.csv", [(0, "/a"), (10, "/a")])
    assert run(path, "none", capacity=5, ttl=10).hits == 0
    prefetch = run(path, "oracle-prefetch", capacity=5, ttl=10)
    assert (prefetch.hits, prefetch.warm_fetches) == (1, 1)


def test_with_entries_that_never_expire_it_prevents_capacity_misses(tmp_path: Path) -> None:
    path = write(tmp_path / "t.csv", [(0, "/a"), (1, "/b"), (2, "/a"), (3, "/b"), (4, "/a")])
    none = run(path, "none", capacity=1, ttl=math.inf)
    prefetch = run(path, "oracle-prefetch", capacity=1, ttl=math.inf)
    assert none.hits == 0
    assert (prefetch.hits, prefetch.warm_fetches, prefetch.evictions) == (3, 3, 4)


def test_the_oracles_are_replayed_only_when_named(tmp_path: Path) -> None:
    path = write(tmp_path / "t.csv", churn(600))
    report = replay_file(
        path,
        ["none", "oracle-prefetch"],
        cache_size=CacheSize(entries=20),
        ttl=60.0,
        max_warm_ratio=0.05,
    )
    assert "oracle-prefetch" not in STRATEGY_NAMES
    none, prefetch = report.results
    assert prefetch.warm_fetches_per_request <= 0.05
    assert prefetch.hit_ratio == pytest.approx(none.hit_ratio + prefetch.warm_fetches_per_request)
    with pytest.raises(ValueError, match="oracle-prefetch reads the trace's future"):
        replay([(0.0, "/a", None, "c")], "oracle-prefetch", capacity=1, ttl=1)


def test_bad_budgets_are_refused() -> None:
    assert parse_warm_ratio("0.2") == 0.2
    for text in ("-0.1", "nan", "inf", "lots"):
        with pytest.raises(ValueError, match="max warm ratio"):
            parse_warm_ratio(text)
    with pytest.raises(ValueError, match="max_warm_ratio"):
        replay([(0.0, "/a", None, "c")], "none", capacity=1, ttl=1, max_warm_ratio=-1)
