"""The generated kinds of traffic: valid, repeatable traces, each with the property it claims."""

from __future__ import annotations

import itertools
import math
import re
import statistics
from array import array
from collections import Counter, defaultdict
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import orjson
import pytest

from bench.online_bound import used_warm_bound
from warmer.replay import replay
from warmer.trace import TraceRow, read_trace
from warmer.workloads import (
    DAY,
    HOUR,
    MONDAY,
    T0,
    WORKLOADS,
    LongTailHour,
    generate,
    long_tail,
    write_csv,
)

SMALL = 4_000


@cache
def rows(kind: str, scale: int = SMALL, seed: int = 0) -> list[TraceRow]:
    return WORKLOADS[kind](scale, seed=seed)


def by_client(trace: list[TraceRow]) -> dict[str, list[TraceRow]]:
    out: defaultdict[str, list[TraceRow]] = defaultdict(list)
    for row in trace:
        out[row[3]].append(row)
    return out


def pairs(trace: list[TraceRow]) -> Iterator[tuple[TraceRow, TraceRow]]:
    """Each client's consecutive requests."""
    for requests in by_client(trace).values():
        yield from itertools.pairwise(requests)


@pytest.mark.parametrize("kind", list(WORKLOADS))
def test_a_kind_is_a_valid_sorted_trace_of_exactly_scale_requests(
    kind: str, tmp_path: Path
) -> None:
    trace = rows(kind)
    assert len(trace) == SMALL
    times = [r[0] for r in trace]
    assert times == sorted(times)
    for ts, key, size, client in trace:
        assert math.isfinite(ts) and ts == round(ts, 3)
        assert re.fullmatch(r"/[^,\s\"]*", key), key
        assert isinstance(size, int) and size >= 0
        assert client
    # The file reads back as the same rows, and replays.
    path = tmp_path / f"{kind}.csv"
    write_csv(path, trace)
    assert list(read_trace(path)) == trace
    result = replay(trace, "none", capacity=100, ttl=300.0)
    assert result.requests == SMALL


@pytest.mark.parametrize("kind", list(WORKLOADS))
def test_a_kind_repeats_for_its_seed_and_changes_with_it(kind: str) -> None:
    assert WORKLOADS[kind](SMALL, seed=0) == rows(kind)
    assert WORKLOADS[kind](SMALL, seed=1) != rows(kind)


@pytest.mark.parametrize("kind", list(WORKLOADS))
def test_a_kind_spans_its_duration(kind: str) -> None:
    trace = WORKLOADS[kind](SMALL, duration=6 * HOUR)
    assert len(trace) == SMALL
    start = T0 if kind in ("polling", "browsing", "cdn") else MONDAY
    assert start <= trace[0][0] and trace[-1][0] <= start + 6 * HOUR
    if kind != "dashboards":  # its users are at work later in the day
        assert trace[-1][0] > start + 5 * HOUR


def test_generate_names_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="unknown workload 'ftp'"):
        generate("ftp")
    with pytest.raises(ValueError, match="scale"):
        generate("shop", 0)
    with pytest.raises(ValueError, match="duration"):
        generate("shop", 10, duration=-1)
    assert len(generate("tiles", 123, seed=5)) == 123


def test_sequences_mostly_have_one_likely_successor() -> None:
    successors: defaultdict[str, Counter[str]] = defaultdict(Counter)
    for (t1, a, _, _), (t2, b, _, _) in pairs(rows("sequences", 20_000)):
        if a != b and t2 - t1 <= 1800:
            successors[a][b] += 1
    total = sum(sum(c.values()) for c in successors.values())
    to_most_frequent = sum(c.most_common(1)[0][1] for c in successors.values())
    assert to_most_frequent / total > 0.5
    keys = {r[1] for r in rows("sequences", 20_000)}
    assert any("/seg/" in k for k in keys) and any("/flow/" in k for k in keys)
    assert any("/track/" in k for k in keys)


def test_paginated_clients_walk_pages_in_order_at_several_page_sizes() -> None:
    page = re.compile(r"(/api/t/\d+/\w+)\?page=(\d+)(&per_page=(\d+))?")
    in_order = same_listing = 0
    sizes = set()
    for (_, a, _, _), (_, b, _, _) in pairs(rows("paginated", 20_000)):
        ma, mb = page.fullmatch(a), page.fullmatch(b)
        assert ma and mb
        sizes.add(mb.group(4))
        if (ma.group(1), ma.group(4)) == (mb.group(1), mb.group(4)):
            same_listing += 1
            in_order += int(mb.group(2)) in (int(ma.group(2)) + 1, 1)  # next page, or again
    assert in_order / same_listing > 0.99
    assert sizes == {None, "50", "100"}


def test_tiles_are_loaded_around_a_moving_viewport() -> None:
    tile = re.compile(r"/tiles/(\d+)/(\d+)/(\d+)\.png")
    near = total = 0
    zooms = set()
    for (_, a, _, _), (_, b, _, _) in pairs(rows("tiles", 20_000)):
        za, xa, ya = map(int, tile.fullmatch(a).groups())  # type: ignore[union-attr]
        zb, xb, yb = map(int, tile.fullmatch(b).groups())  # type: ignore[union-attr]
        zooms.add(zb)
        total += 1
        near += za == zb and max(abs(xa - xb), abs(ya - yb)) <= 6
    assert near / total > 0.85
    assert len(zooms) >= 6


def test_dashboards_poll_each_users_widgets_on_weekdays() -> None:
    trace = generate("dashboards", 20_000, duration=7 * DAY)
    per_user = by_client(trace)
    for requests in per_user.values():
        keys = Counter(r[1] for r in requests)
        assert 3 <= len(keys) <= 12
        # Every widget is reloaded with the others: all about equally often.
        assert max(keys.values()) - min(keys.values()) <= 1
    weekday = Counter(int((r[0] - MONDAY) // DAY) % 7 for r in trace)
    weekend = weekday[5] + weekday[6]
    assert weekend < 0.1 * sum(weekday[d] for d in range(5)) / 5
    assert statistics.median(len(r) for r in per_user.values()) >= 20


def test_long_tail_has_many_keys_a_skew_drift_and_new_items() -> None:
    trace = rows("long-tail", 60_000)
    keys = Counter(r[1] for r in trace)
    assert len(keys) > 25_000
    top = sum(c for _, c in keys.most_common(len(keys) // 100))
    assert top / len(trace) > 0.1
    # Catalogue items popular now stay popular a while, then drift away.
    catalogue = [r for r in trace if int(r[1].rsplit("/", 1)[1]) < 250_000]

    def top(begin: float) -> set[str]:
        window = Counter(r[1] for r in catalogue if begin <= r[0] - MONDAY < begin + 12 * HOUR)
        return {k for k, _ in window.most_common(50)}

    first, next_, last = top(0), top(12 * HOUR), top(36 * HOUR)
    assert len(first & last) < len(first & next_)
    assert len(first & next_) >= 10
    new = sum(c for k, c in keys.items() if int(k.rsplit("/", 1)[1]) >= 250_000)
    assert 0.05 < new / len(trace) < 0.3


def test_shop_is_busier_by_day_than_by_night_over_several_days() -> None:
    trace = rows("shop", 40_000)
    assert trace[-1][0] - trace[0][0] > 3 * DAY
    hours = Counter(int((r[0] - MONDAY) // HOUR) % 24 for r in trace)
    day = sum(hours[h] for h in range(10, 22)) / 12
    night = sum(hours[h] for h in range(0, 6)) / 6
    assert day > 3 * night
    # A session goes from a listing to its products.
    from_category = Counter(
        b.split("/")[1] for (_, a, _, _), (_, b, _, _) in pairs(trace) if a.startswith("/c/")
    )
    assert from_category["p"] > from_category["search?q="]
    assert any(r[1].startswith("/promo/") for r in trace)


def test_block_storage_reads_runs_of_blocks_and_rereads() -> None:
    trace = rows("block-storage", 20_000)
    block = re.compile(r"/vol/(\d+)/blk/(\d+)")
    sequential = total = 0
    for (_, a, _, _), (_, b, _, _) in pairs(trace):
        va, na = map(int, block.fullmatch(a).groups())  # type: ignore[union-attr]
        vb, nb = map(int, block.fullmatch(b).groups())  # type: ignore[union-attr]
        total += 1
        sequential += va == vb and nb == na + 1
    assert sequential / total > 0.5
    keys = Counter(r[1] for r in trace)
    assert sum(1 for c in keys.values() if c > 1) / len(keys) > 0.1


def test_polling_clients_ask_one_resource_at_a_steady_period() -> None:
    for requests in by_client(rows("polling")).values():
        assert len({r[1] for r in requests}) == 1
        gaps = [b[0] - a[0] for a, b in itertools.pairwise(requests)]
        if gaps:
            assert max(gaps) - min(gaps) <= 4.01


def test_warmproxy_replay_replays_a_generated_kind(capsys: pytest.CaptureFixture[str]) -> None:
    from proxy.cli import main

    args = ["replay", "--synthetic", "paginated", "--scale", "3000", "--seed", "2"]
    assert main([*args, "--strategies", "none,predictive", "--json"]) == 0
    lines = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["strategy"] for line in lines] == ["none", "predictive"]
    assert all(line["requests"] == 3000 for line in lines)
    # The same trace as the generator's, replayed from memory.
    expected = replay(
        generate("paginated", 3000, seed=2), "none", capacity=lines[0]["cache_entries"], ttl=300.0
    )
    assert lines[0]["hits"] == expected.hits


def test_warmproxy_replay_wants_a_file_or_a_kind(capsys: pytest.CaptureFixture[str]) -> None:
    from proxy.cli import main

    assert main(["replay"]) == 2
    assert "--synthetic" in capsys.readouterr().err
    assert main(["replay", "trace.csv", "--synthetic", "shop"]) == 2
    assert "one of them" in capsys.readouterr().err


def test_long_tail_tells_the_model_that_drew_each_hour_without_changing_the_trace() -> None:
    model: list[LongTailHour] = []
    trace = long_tail(30_000, seed=3, model=model)
    assert trace == rows("long-tail", 30_000, 3)
    assert sum(hour.count for hour in model) == len(trace)
    for hour in model:
        # Every request is for some item: the shares of an hour sum to one.
        assert sum(hour.zipf) + sum(share for _, _, share in hour.new) == pytest.approx(1.0)
        inside = sum(1 for r in trace if hour.begin <= r[0] < hour.begin + hour.span)
        assert inside == hour.count
    # The model's expected requests per item are what the trace holds.
    expected: Counter[str] = Counter()
    for hour in model:
        for rank, item in enumerate(hour.order[:200]):
            expected[f"/item/{item}"] += hour.count * hour.zipf[rank]
        for item, _, share in hour.new:
            expected[f"/item/{item}"] += hour.count * share
    seen = Counter(r[1] for r in trace)
    for key, count in expected.most_common(10):
        assert abs(seen[key] - count) < 4 * math.sqrt(count) + 2, (key, seen[key], count)


def test_the_online_bound_is_the_model_at_its_simplest() -> None:
    one = LongTailHour(0.0, 3600.0, 100, array("i", [0]), [1.0], ())
    used = 1.0 - (1.0 - 300.0 / 3600.0) ** 100  # a warm is used unless no request comes
    assert used_warm_bound([one], 300.0, 10.0) == pytest.approx(10 * used)
    # No more used warms than requests, however many warms.
    assert used_warm_bound([one], 300.0, 1e9) == pytest.approx(100.0)
    assert used_warm_bound([one], 300.0, 0.0) == 0.0


def test_no_online_policy_gains_half_of_oracle_prefetch_on_long_tail_at_300_s() -> None:
    """What bench/online_bound.py shows: the bound is above what predictive
    reaches, and below half of what oracle-prefetch gains at the same budget."""
    model: list[LongTailHour] = []
    trace = long_tail(15_000, seed=1, model=model)
    bound = 100.0 * used_warm_bound(model, 300.0, 0.2 * len(trace)) / len(trace)
    distinct = len({r[1] for r in trace})
    none = replay(trace, "none", capacity=distinct // 20, ttl=300.0)
    unbounded = replay(trace, "none", capacity=distinct, ttl=300.0)
    capacity = 100.0 * (unbounded.hits - none.hits) / len(trace)
    predictive = replay(
        trace, "predictive", capacity=distinct // 20, ttl=300.0, distinct_keys=distinct
    )
    gain = 100.0 * (predictive.hits - none.hits) / len(trace)
    assert gain <= capacity + bound
    # oracle-prefetch gains the whole budget there (20 points): half is 10.
    assert capacity + bound < 10.0
