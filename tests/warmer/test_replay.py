"""The trace replay: its cache model, its trace reader, and agreement with the
traces README's reference model (written plainly below)."""

from __future__ import annotations

import csv
import heapq
import io
import math
import tempfile
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from warmer.core import Displacing
from warmer.model import Observed, Reason, WarmRequest
from warmer.replay import (
    REFRESH_FRACTION,
    STRATEGIES,
    STRATEGY_NAMES,
    CacheSize,
    ReplayContext,
    ReplayResult,
    ReplayStrategy,
    format_table,
    parse_strategies,
    replay,
    replay_file,
)
from warmer.strategies import RefreshAhead
from warmer.trace import TraceError, TraceRow, key_path, read_trace, scan_trace
from warmer.tracker import UsageTracker

TRACES = Path(__file__).resolve().parents[3] / "shared" / "traces"
WORLDCUP = TRACES / "worldcup98_day6_sample.csv"
YOUTUBE = TRACES / "youtube_umass_S1.csv"
needs_traces = pytest.mark.skipif(
    not (WORLDCUP.is_file() and YOUTUBE.is_file()),
    reason=f"the shared request traces are not next to the repository ({TRACES})",
)


def rows(*requests: tuple[float, str]) -> list[TraceRow]:
    return [(ts, key, None, "c1") for ts, key in requests]


class Scripted:
    """A strategy that asks for given warm requests at given times (and wakes then)."""

    def __init__(self, plan: Iterable[tuple[float, WarmRequest]]) -> None:
        self.plan = sorted(plan, key=lambda p: p[0])
        self.events: list[tuple[float, str, str, float, bool]] = []
        self.filled_calls: list[tuple[str, float, float]] = []

    def observe(self, event: Observed) -> None:
        self.events.append((event.ts, event.key, event.outcome, event.fresh_until, event.warmed))

    def due(self, now: float) -> list[WarmRequest]:
        out = [r for t, r in self.plan if t <= now]
        self.plan = [(t, r) for t, r in self.plan if t > now]
        return out

    def filled(self, key: str, url: str, host: str, now: float, fresh_until: float) -> None:
        self.filled_calls.append((key, now, fresh_until))

    def next_wake(self) -> float:
        return self.plan[0][0] if self.plan else math.inf


def run(
    trace: list[TraceRow], plan: Sequence[tuple[float, WarmRequest]] = (), **kw: float
) -> tuple[ReplayResult, Scripted]:
    strategy = Scripted(plan)
    result = replay(
        trace,
        ("scripted", lambda ctx: [strategy]),
        capacity=int(kw.get("capacity", 2)),
        ttl=kw.get("ttl", 10.0),
    )
    return result, strategy


def warm(url: str, refresh: bool = False) -> WarmRequest:
    return WarmRequest(url=url, refresh=refresh, reason=Reason.ON_DEMAND)


def outcomes(strategy: Scripted) -> list[str]:
    return [f"{key}:{outcome}" for _, key, outcome, _, _ in strategy.events]


# -- the cache model -----------------------------------------------------------------


def test_lru_evicts_the_least_recently_used_entry() -> None:
    result, s = run(rows((0, "/a"), (1, "/b"), (2, "/a"), (3, "/c"), (4, "/a"), (5, "/b")))
    # /a was used at 2, so /c evicts /b; /b then evicts /c.
    assert outcomes(s) == ["/a:miss", "/b:miss", "/a:hit", "/c:miss", "/a:hit", "/b:miss"]
    assert (result.requests, result.hits, result.evictions) == (6, 2, 2)


def test_an_entry_expires_at_its_ttl() -> None:
    _, s = run(rows((0, "/a"), (9.5, "/a"), (10, "/a"), (15, "/a")), ttl=10)
    assert outcomes(s) == ["/a:miss", "/a:hit", "/a:miss", "/a:hit"]
    assert [e[3] for e in s.events] == [10, 10, 20, 20]  # fresh_until seen by the strategies


def test_a_warm_fill_is_inserted_as_most_recently_used_and_may_evict() -> None:
    result, s = run(rows((0, "/a"), (1, "/b"), (3, "/c"), (4, "/a")), [(2, warm("/c"))])
    assert outcomes(s) == ["/a:miss", "/b:miss", "/c:hit", "/a:miss"]
    assert s.events[2][4] is True  # the hit was served by a warmed entry
    assert s.filled_calls == [("/c", 2, 12)]
    assert result.warm_fetches == 1
    assert result.warm_used == 1


def test_a_refresh_keeps_the_lru_position_and_extends_freshness() -> None:
    trace = rows((0, "/a"), (1, "/b"), (6, "/c"), (7, "/b"), (8, "/a"))
    result, s = run(trace, [(5, warm("/a", refresh=True))])
    # Refreshed at 5, /a stayed least recently used: /c evicts it, not /b.
    assert outcomes(s) == ["/a:miss", "/b:miss", "/c:miss", "/b:hit", "/a:miss"]
    assert result.warm_fetches == 1
    assert result.warm_unused == 1  # evicted before it was hit

    result, s = run(rows((0, "/a"), (12, "/a")), [(5, warm("/a", refresh=True))])
    assert outcomes(s) == ["/a:miss", "/a:hit"]
    assert s.events[1][3:] == (15, True)
    assert result.precision == 1.0


def test_a_warm_hint_for_a_fresh_entry_is_free() -> None:
    result, s = run(rows((0, "/a"), (11, "/a")), [(5, warm("/a"))])
    assert outcomes(s) == ["/a:miss", "/a:miss"]  # freshness was not extended
    assert (result.warm_fetches, result.free_hints, result.precision) == (0, 1, None)
    assert s.filled_calls == []


def test_a_warm_hint_marks_a_cached_entry_most_recently_used() -> None:
    # The proxy's warm path looks a cached entry up as a request does, and
    # the store marks it most recently used: hinted at 2, /a outlives /b.
    result, s = run(rows((0, "/a"), (1, "/b"), (3, "/c"), (4, "/a"), (5, "/b")), [(2, warm("/a"))])
    assert outcomes(s) == ["/a:miss", "/b:miss", "/c:miss", "/a:hit", "/b:miss"]
    assert (result.warm_fetches, result.free_hints) == (0, 1)


def test_at_its_expiry_instant_an_entry_can_still_be_refreshed() -> None:
    result, s = run(rows((0, "/a"), (10, "/a")), [(10, warm("/a", refresh=True))])
    assert outcomes(s) == ["/a:miss", "/a:hit"]
    assert s.filled_calls == [("/a", 10, 20)]
    # A plain warm request at that instant re-fetches too: the entry is no longer fresh.
    result, s = run(rows((0, "/a"), (10, "/a")), [(10, warm("/a"))])
    assert outcomes(s) == ["/a:miss", "/a:hit"]
    assert (result.warm_fetches, result.free_hints) == (1, 0)


def test_the_queue_merges_duplicate_requests_of_one_round() -> None:
    result, _ = run(rows((0, "/x"), (9, "/a")), [(5, warm("/a")), (5, warm("/a", refresh=True))])
    assert result.warm_fetches == 1


def test_precision_counts_each_warm_fetched_lifetime_once() -> None:
    trace = rows((0, "/x"), (3, "/a"), (4, "/a"), (40, "/x"))
    plan = [(1, warm("/a")), (2, warm("/b")), (20, warm("/c"))]
    result, _ = run(trace, plan, capacity=10)
    # /a hit twice (one used lifetime), /b and /c expired unused.
    assert (result.warm_used, result.warm_unused) == (1, 2)
    assert result.precision == pytest.approx(1 / 3)
    assert result.ledger_precision == pytest.approx(1 / 3)
    assert result.warm_fetches_per_request == pytest.approx(3 / 4)
    assert result.warm_fetches_by_label == {"on-demand": 3}


def test_a_refresh_ends_one_lifetime_and_starts_another() -> None:
    trace = rows((0, "/a"), (3, "/a"), (8, "/a"))
    plan = [(1, warm("/b")), (2, warm("/b", refresh=True)), (5, warm("/a", refresh=True))]
    result, _ = run(trace, plan, capacity=10)
    # /b: two lifetimes, neither hit; /a: refreshed at 5 (user-filled before), hit at 8.
    assert (result.warm_fetches, result.warm_used, result.warm_unused) == (3, 1, 2)
    assert result.ledger_precision == result.precision


def test_keys_that_are_not_paths_become_paths() -> None:
    _, s = run([(0, "abc", None, ""), (1, "/abc", None, "")])
    assert outcomes(s) == ["/abc:miss", "/abc:hit"]
    assert key_path("v=1") == "/v=1"
    assert key_path("/p") == "/p"


def test_a_timestamp_slightly_back_is_replayed_at_the_latest_time() -> None:
    _, s = run(rows((10, "/a"), (9.5, "/b")))
    assert [e[0] for e in s.events] == [10, 10]


def test_refresh_ahead_refreshes_at_the_instant_of_expiry() -> None:
    # The replay asks ``due`` at each expiry instant: an entry due then is refreshed.
    strategy = RefreshAhead(min_hits=2, fraction=1e-6)
    result = replay(
        rows((0, "/a"), (1, "/a"), (2, "/a"), (15, "/a")),
        ("ra", lambda ctx: [strategy]),
        capacity=2,
        ttl=10,
    )
    assert (result.hits, result.warm_fetches, result.warm_used) == (3, 1, 1)


def test_refresh_ahead_refills_a_popular_entry_evicted_before_it_expired() -> None:
    # The strategy sees requests, not evictions: at the expiry of an entry hit
    # twice it asks for a refresh even though LRU pressure evicted it, and the
    # replay (like the live proxy) fills it.  The README's reference model
    # refreshes only entries still cached, hence the difference on small caches.
    trace = rows((0, "/a"), (1, "/a"), (2, "/a"), (3, "/b"), (4, "/c"), (10, "/b"), (12, "/a"))
    result = replay(trace, "refresh-ahead", capacity=2, ttl=10)
    # The refill at 10 evicted /b: /b at 10 misses, /a at 12 hits.
    assert (result.hits, result.warm_fetches, result.warm_used) == (3, 1, 1)
    # The reference: /b at 10 hits, /a at 12 misses, nothing fetched.
    assert reference(trace, 2, 10, refresh_ahead=True) == (3, 0, 0, 0)


# -- built-in strategies and the plug-in API ----------------------------------------


def small_trace() -> list[TraceRow]:
    # Two hours of a few hot keys and a tail, for every built-in strategy.
    out: list[TraceRow] = []
    for n in range(6000):
        key = f"/hot/{n % 7}" if n % 3 else f"/tail/{(n * 7919) % 400}"
        out.append((1_700_000_000.0 + n * 1.2, key, None, f"c{n % 5}"))
    return out


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_every_built_in_strategy_replays_and_the_ledger_agrees(name: str) -> None:
    trace = small_trace()
    result = replay(trace, name, capacity=40, ttl=60, distinct_keys=407)
    assert result.strategy == name
    assert result.requests == len(trace)
    assert 0 < result.hits < result.requests
    assert result.ledger_precision == result.precision
    assert sum(result.warm_fetches_by_label.values()) == result.warm_fetches
    if name == "none":
        assert result.warm_fetches == 0
    elif name != "predictive":  # the model decides whether to warm at all
        assert result.warm_fetches + result.free_hints > 0


def test_all_weighs_displacement_by_one_measure_as_the_live_warmer_does() -> None:
    # Replayed as build_strategies builds them live: refresh-ahead,
    # miss-reactive and predictive share one measure, which the core feeds.
    ctx = ReplayContext(
        tracker=UsageTracker(windows=[3600.0]), ttl=60.0, capacity=40, distinct_keys=407
    )
    built = STRATEGIES["all"](ctx)
    measures = {id(s.displacement) for s in built if isinstance(s, Displacing)}
    assert len(measures) == 1
    assert all(not s.feeds_displacement for s in built if isinstance(s, Displacing))
    assert sum(isinstance(s, Displacing) for s in built) == 3


def test_scheduled_top_fires_each_clock_hour() -> None:
    trace = small_trace()  # 2 hours: the first full hour boundary is crossed twice at most
    result = replay(trace, "scheduled-top", capacity=40, ttl=60, distinct_keys=407)
    asked = result.warm_fetches + result.free_hints
    # 1 % of the distinct keys seen (4) per firing, at most 3 firings.
    assert 0 < asked <= 3 * 4


def test_a_custom_strategy_factory_gets_the_run_context() -> None:
    seen: list[ReplayContext] = []

    def factory(ctx: ReplayContext) -> list[ReplayStrategy]:
        seen.append(ctx)
        return [RefreshAhead(min_hits=1, fraction=0.5)]

    trace = small_trace()
    result = replay(trace, ("eager", factory), capacity=40, ttl=60, distinct_keys=407)
    assert result.strategy == "eager"
    assert result.warm_fetches > 0
    (ctx,) = seen
    assert (ctx.capacity, ctx.ttl, ctx.distinct_keys) == (40, 60, 407)
    assert 3600.0 in ctx.tracker.windows
    assert ctx.reactive_window in ctx.tracker.windows


def test_unknown_strategy_names_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown strategy 'fast'"):
        replay([], "fast", capacity=1, ttl=1)
    with pytest.raises(ValueError, match="unknown strategy 'x'"):
        parse_strategies("none,x")
    assert parse_strategies(" none, all ,none") == ["none", "all"]
    with pytest.raises(ValueError, match="no strategy"):
        parse_strategies(" , ")


# -- --cache-size -------------------------------------------------------------------


def test_cache_size_parsing() -> None:
    assert CacheSize.parse("20%") == CacheSize(fraction=0.2)
    assert CacheSize.parse("20%").capacity(2731) == 546
    # Rounded half up, as the README's figures were measured: 136.55 -> 137.
    assert CacheSize.parse("5%").capacity(2731) == 137
    assert CacheSize.parse("2.5%").capacity(1000) == 25
    assert CacheSize.parse("1%").capacity(10) == 1  # never below one entry
    assert CacheSize.parse("500").capacity(10) == 500
    assert str(CacheSize.parse("20%")) == "20% of distinct keys"
    assert str(CacheSize.parse(" 500 ")) == "500 entries"
    for bad in ("0%", "150%", "x%", "abc", "0", "-5", "2.5", ""):
        with pytest.raises(ValueError, match="cache size"):
            CacheSize.parse(bad)


# -- reading traces ------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "trace.csv"
    path.write_text(text)
    return path


HEADER = "ts,key,size,client\n"


def test_reading_a_trace(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + "1.5,/a,10,c0\n\n2,abc,,\n2,/a,0,c1\n")
    assert list(read_trace(path)) == [
        (1.5, "/a", 10, "c0"),
        (2.0, "abc", None, ""),
        (2.0, "/a", 0, "c1"),
    ]
    summary = scan_trace(path)
    assert (summary.requests, summary.distinct_keys, summary.span) == (3, 2, 0.5)


@pytest.mark.parametrize(
    ("body", "line", "message"),
    [
        ("1,/a,,c\nsoon,/b,,c\n", 3, "ts 'soon' is not a number"),
        ("1,/a,,c\nnan,/b,,c\n", 3, "not a finite number"),
        ("1,/a,,c\n2,,,c\n", 3, "empty key"),
        ("1,/a,-5,c\n", 2, "size '-5' is not a non-negative integer"),
        ("1,/a,1.5,c\n", 2, "size '1.5' is not a non-negative integer"),
        ("1,/a,,c\n2,/b,c\n", 3, "3 columns, expected 4"),
        ("1,/a,,c\n2,/b,,c,extra\n", 3, "5 columns"),
        ("100,/a,,c\n98.5,/b,,c\n", 3, "ts 98.5 goes back 1.5 s from 100"),
        ("1700000000,/a,,c\n1700000000000,/b,,c\n", 3, "milliseconds or microseconds"),
    ],
)
def test_a_malformed_line_is_reported_with_its_number(
    tmp_path: Path, body: str, line: int, message: str
) -> None:
    path = write(tmp_path, HEADER + body)
    with pytest.raises(TraceError, match=f"^line {line}: .*{message}") as caught:
        list(read_trace(path))
    assert caught.value.line == line


def test_a_small_step_back_in_time_is_tolerated(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + "100,/a,,c\n99.5,/b,,c\n101,/c,,c\n100.2,/d,,c\n")
    assert [r[0] for r in read_trace(path)] == [100, 99.5, 101, 100.2]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty file: expected the header ts,key,size,client"),
        (HEADER, "no requests after the header"),
        ("time,url\n1,/a\n", "line 1: header is 'time,url', expected ts,key,size,client"),
    ],
)
def test_files_without_requests_are_refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(TraceError, match=message):
        list(read_trace(write(tmp_path, text)))


def test_a_file_that_is_not_text_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "trace.csv"
    path.write_bytes(HEADER.encode() + b"1,/\xff\xfe,,c\n")
    with pytest.raises(TraceError, match="not UTF-8"):
        list(read_trace(path))
    path.write_bytes(HEADER.encode() + b"1,/a,,c\n2,/" + b"x" * 200_000 + b",,c\n")
    with pytest.raises(TraceError, match=r"^line 3: not valid CSV: field larger"):
        list(read_trace(path))


row_values = st.tuples(
    st.floats(min_value=0, max_value=2e9, allow_nan=False),
    st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r\n\x00"), min_size=1),
    st.none() | st.integers(min_value=0, max_value=2**53),
    st.text(alphabet="abc0123", max_size=4),
)


@given(st.lists(row_values, min_size=1, max_size=20))
def test_written_traces_read_back(rows_in: list[TraceRow]) -> None:
    rows_in = sorted(rows_in, key=lambda r: r[0])
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["ts", "key", "size", "client"])
    for ts, key, size, client in rows_in:
        writer.writerow([repr(ts), key, "" if size is None else size, client])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.csv"
        path.write_text(buffer.getvalue(), encoding="utf-8", newline="")
        assert list(read_trace(path)) == rows_in


# -- agreement with the reference model ----------------------------------------------


def reference(
    trace: Iterable[TraceRow],
    capacity: int,
    ttl: float,
    *,
    refresh_ahead: bool = False,
    oracle: bool = False,
) -> tuple[int, int, int, int]:
    """The traces README's model, plainly: (hits, warm fetches, used, unused).

    At expiry an entry is refreshed with ``refresh_ahead`` when it was hit
    twice in its lifetime, with ``oracle`` when its key is asked for in
    ``[expiry, expiry + ttl)``.
    """
    trace = list(trace)
    times: dict[str, list[float]] = {}
    for t, key, _, _ in trace:
        times.setdefault(key_path(key), []).append(t)
    cache: OrderedDict[str, list[float]] = OrderedDict()  # key -> [expiry, warmed, used, hits]
    expiries: list[tuple[float, str]] = []
    hits = fetches = used = unused = 0

    def end(entry: list[float]) -> None:
        nonlocal used, unused
        if entry[1]:
            used += bool(entry[2])
            unused += not entry[2]

    for t, key, _, _ in trace:
        key = key_path(key)
        while expiries and expiries[0][0] <= t:
            at, k = heapq.heappop(expiries)
            entry = cache.get(k)
            if entry is None or entry[0] != at:
                continue
            end(entry)
            # The oracle's window is [at, at + ttl): a request at the expiry
            # instant comes after it; one at at + ttl finds the refresh expired.
            later = [s for s in times[k] if s >= at] if oracle else []
            if (refresh_ahead and entry[3] >= 2) or (later and later[0] < at + ttl):
                entry[:] = [at + ttl, True, False, 0]
                fetches += 1
                heapq.heappush(expiries, (at + ttl, k))
            else:
                del cache[k]
        entry = cache.get(key)
        if entry is not None and entry[0] > t:
            hits += 1
            entry[2] = True
            entry[3] += 1
            cache.move_to_end(key)
            continue
        if entry is not None:
            end(entry)
            del cache[key]
        cache[key] = [t + ttl, False, False, 0]
        heapq.heappush(expiries, (t + ttl, key))
        while len(cache) > capacity:
            end(cache.popitem(last=False)[1])
    for entry in cache.values():
        end(entry)
    return hits, fetches, used, unused


def _reference_refresh_ahead(ctx: ReplayContext) -> list[ReplayStrategy]:
    """The reference model's refresh-ahead: every entry hit twice, no precision floor."""
    return [
        RefreshAhead(
            min_hits=2,
            fraction=REFRESH_FRACTION,
            max_keys=max(10_000, ctx.distinct_keys),
            priority="high",
            min_precision=0.0,
        )
    ]


def agree(trace: list[TraceRow], capacity: int, ttl: float) -> None:
    """The simulated cache replays exactly as the traces README's reference model."""
    for spec, refresh in (("none", False), (("refresh-ahead", _reference_refresh_ahead), True)):
        result = replay(trace, spec, capacity=capacity, ttl=ttl)
        expected = reference(trace, capacity, ttl, refresh_ahead=refresh)
        got = (result.hits, result.warm_fetches, result.warm_used, result.warm_unused)
        assert got == expected, spec


SLICES = Path(__file__).resolve().parents[1] / "data"


def test_worldcup_slice_replays_exactly_as_the_reference_model() -> None:
    trace = list(read_trace(SLICES / "worldcup98_slice.csv"))
    distinct = len({key for _, key, _, _ in trace})
    agree(trace, CacheSize(fraction=0.2).capacity(distinct), 300.0)


def test_youtube_slice_replays_exactly_as_the_reference_model() -> None:
    trace = list(read_trace(SLICES / "youtube_slice.csv"))
    distinct = len({key for _, key, _, _ in trace})
    agree(trace, CacheSize(fraction=0.05).capacity(distinct), 3600.0)


def test_predictive_gains_on_a_real_slice_within_its_budget() -> None:
    path = SLICES / "worldcup98_slice.csv"
    report = replay_file(
        path, ["none", "predictive"], cache_size=CacheSize(fraction=0.2), ttl=300.0
    )
    none, predictive = report.results
    assert predictive.hit_ratio > none.hit_ratio + 0.05
    assert predictive.precision is not None and predictive.precision > 0.7
    # The warm budget (max_warm_ratio 0.2) holds, give or take its controller.
    assert predictive.warm_fetches_per_request < 0.25


@needs_traces
def test_youtube_without_warming_matches_the_readme() -> None:
    summary = scan_trace(YOUTUBE)
    assert (summary.requests, summary.distinct_keys) == (37_499, 23_164)
    capacity = CacheSize(fraction=0.05).capacity(summary.distinct_keys)
    result = replay(read_trace(YOUTUBE), "none", capacity=capacity, ttl=3600.0)
    assert f"{result.hit_ratio * 100:.2f} %" == "18.54 %"
    assert result.hits == reference(read_trace(YOUTUBE), capacity, 3600.0, refresh_ahead=False)[0]


# -- the report ------------------------------------------------------------------------


def test_report_table_and_json(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text(HEADER + "".join(f"{ts},{key},,c\n" for ts, key, _, _ in small_trace()[:3000]))
    report = replay_file(path, ["refresh-ahead", "all"], cache_size=CacheSize(entries=40), ttl=60.0)
    assert [r.strategy for r in report.results] == ["refresh-ahead", "all"]
    assert report.baseline.strategy == "none"  # replayed for the gains though not asked for
    lines = report.json_lines()
    first = lines[0]
    assert first["strategy"] == "refresh-ahead"
    assert first["gain_over_none"] == pytest.approx(
        report.results[0].hit_ratio - report.baseline.hit_ratio, abs=1e-6
    )
    for field in ("hit_ratio", "warm_fetches_per_request", "precision", "requests", "hits"):
        assert field in first
    table = format_table(report).splitlines()
    assert table[0].startswith("trace t.csv: 3,000 requests, 407 distinct keys")
    assert table[1] == "cache 40 entries, ttl 60 s"
    assert table[4].split()[0] == "refresh-ahead"
    assert table[4].endswith("pts")


# -- the oracle ------------------------------------------------------------------------


def test_the_oracle_refreshes_exactly_what_is_asked_for_again_within_a_ttl() -> None:
    path = SLICES / "worldcup98_slice.csv"
    trace = list(read_trace(path))
    report = replay_file(
        path, ["none", "refresh-ahead", "oracle"], cache_size=CacheSize(fraction=0.2), ttl=300.0
    )
    none, refresh_ahead, oracle = report.results
    got = (oracle.hits, oracle.warm_fetches, oracle.warm_used, oracle.warm_unused)
    assert got == reference(trace, report.capacity, 300.0, oracle=True)
    # A bound: every refresh it makes is used (unless evicted first), and it
    # beats the refresh-ahead that does not know the future.
    assert oracle.precision is not None and oracle.precision > 0.98
    assert oracle.hit_ratio > refresh_ahead.hit_ratio > none.hit_ratio
    assert "oracle" not in STRATEGY_NAMES  # replayed only when asked for
    assert format_table(report).splitlines()[-1].split()[0] == "oracle"


def test_the_oracle_needs_the_trace_file() -> None:
    with pytest.raises(ValueError, match="the oracle reads the trace's future"):
        replay(small_trace(), "oracle", capacity=40, ttl=60)
