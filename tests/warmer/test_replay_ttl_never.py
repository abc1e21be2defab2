"""``--ttl never``: replays with entries that never expire, only evicted."""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

import pytest

from warmer.model import Observed, WarmRequest
from warmer.replay import (
    STRATEGIES,
    CacheSize,
    ReplayContext,
    ReplayStrategy,
    format_table,
    parse_ttl,
    replay,
    replay_file,
)
from warmer.trace import TraceRow

HEADER = "ts,key,size,client\n"


def churn(n: int = 4000) -> list[TraceRow]:
    """Hot keys, a tail and per-client page sequences through a small cache."""
    out: list[TraceRow] = []
    for i in range(n):
        if i % 4 == 0:
            key = f"/tail/{(i * 7919) % 300}"
        elif i % 4 == 1:
            key = f"/page/{(i // 4) % 5}"
        else:
            key = f"/hot/{i % 9}"
        out.append((1_700_000_000.0 + 1.5 * i, key, None, f"c{i % 6}"))
    return out


def lru_hits(trace: list[TraceRow], capacity: int) -> int:
    """A plain LRU of ``capacity`` entries, nothing ever expiring."""
    cache: OrderedDict[str, None] = OrderedDict()
    hits = 0
    for _, key, _, _ in trace:
        if key in cache:
            hits += 1
            cache.move_to_end(key)
        else:
            cache[key] = None
            if len(cache) > capacity:
                cache.popitem(last=False)
    return hits


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_built_in_strategy_replays_with_entries_that_never_expire(
    name: str, tmp_path: Path
) -> None:
    trace = churn()
    path = tmp_path / "t.csv"
    path.write_text(HEADER + "".join(f"{ts},{k},,{c}\n" for ts, k, _, c in trace))
    result = replay(
        trace, name, capacity=40, ttl=math.inf, distinct_keys=314, path=path, max_warm_ratio=0.1
    )
    none = lru_hits(trace, 40)
    assert result.requests == len(trace)
    assert result.ttl == math.inf
    assert result.ledger_precision == result.precision
    assert sum(result.warm_fetches_by_label.values()) == result.warm_fetches
    assert result.to_json()["ttl"] is None
    if name == "none":
        assert result.hits == none
        assert result.warm_fetches == 0
    if name == "oracle":
        assert result.warm_fetches == 0  # nothing expires: nothing to refresh
    if name == "oracle-prefetch":
        # Only capacity misses are left, and each warm fetch saves one.
        assert result.hits == none + result.warm_fetches
        assert 0 < result.warm_fetches <= 0.1 * len(trace)


def test_no_strategy_is_asked_at_an_expiry() -> None:
    rounds: list[float] = []

    class Recorder:
        def observe(self, event: Observed) -> None:
            assert event.fresh_until == math.inf

        def due(self, now: float) -> list[WarmRequest]:
            rounds.append(now)
            return []

        def filled(self, key: str, url: str, host: str, now: float, fresh_until: float) -> None:
            pass

    def factory(ctx: ReplayContext) -> list[ReplayStrategy]:
        return [Recorder()]

    trace = churn(500)
    result = replay(trace, ("recorder", factory), capacity=20, ttl=math.inf)
    # Once before each request, and never between: no expiry instants.
    assert rounds == [ts for ts, _, _, _ in trace]
    assert result.hits == lru_hits(trace, 20)


def test_a_warm_fill_never_expires_either() -> None:
    class Once:
        def __init__(self) -> None:
            self.asked = False
            self.fills: list[float] = []

        def observe(self, event: Observed) -> None:
            pass

        def due(self, now: float) -> list[WarmRequest]:
            if self.asked:
                return []
            self.asked = True
            return [WarmRequest(url="/later")]

        def filled(self, key: str, url: str, host: str, now: float, fresh_until: float) -> None:
            self.fills.append(fresh_until)

    once = Once()
    trace: list[TraceRow] = [(0.0, "/a", None, "c"), (1e9, "/later", None, "c")]
    result = replay(trace, ("once", lambda ctx: [once]), capacity=5, ttl=math.inf)
    assert once.fills == [math.inf]
    assert (result.hits, result.warm_fetches, result.warm_used) == (1, 1, 1)


def test_the_table_says_never(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text(HEADER + "".join(f"{ts},{k},,{c}\n" for ts, k, _, c in churn(300)))
    report = replay_file(path, ["none"], cache_size=CacheSize(entries=10), ttl=math.inf)
    assert format_table(report).splitlines()[1] == "cache 10 entries, ttl never"


def test_ttl_parsing() -> None:
    assert parse_ttl("300") == 300.0
    assert parse_ttl("never") == math.inf
    assert parse_ttl(" INF ") == math.inf
    for text in ("0", "-5", "nan", "soon"):
        with pytest.raises(ValueError, match="ttl"):
            parse_ttl(text)


def test_refresh_ahead_never_schedules_an_entry_that_never_expires() -> None:
    """An infinite lifetime has no refresh time (inf - fraction * inf is NaN,
    which a heap would order arbitrarily)."""
    from tests.warmer.events import Ev
    from warmer.strategies import RefreshAhead

    strategy = RefreshAhead(min_hits=2)
    strategy.observe(Ev(0.0, "/a", outcome="miss", fresh_until=math.inf))
    for ts in (1.0, 2.0, 3.0):
        strategy.observe(Ev(ts, "/a", outcome="hit", fresh_until=math.inf))
    assert strategy._followed.heap == []
    assert strategy.due(1e12) == []
