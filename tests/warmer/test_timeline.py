"""The dashboard's per-bucket traffic counts, on a virtual clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from warmer.timeline import Timeline


def test_counts_land_in_their_bucket_and_hit_rate_ignores_bypass() -> None:
    timeline = Timeline(bucket_seconds=10, buckets=6)
    for outcome in ("hit", "hit", "miss", "bypass", "revalidated"):
        timeline.request(1000.0, outcome)
    timeline.request(1012.0, "stale")
    timeline.warm_fetch(1013.0)
    first, second = timeline.buckets(1019.0, 20)
    assert (first.ts, first.requests, first.hits, first.misses) == (1000.0, 5, 3, 1)
    # The miss, the bypass and the revalidation each asked the origin.
    assert first.origin_requests == 3
    assert first.hit_rate == 0.75
    assert (second.requests, second.misses, second.origin_requests, second.warm_fetches) == (
        1,
        1,
        1,
        1,
    )
    assert second.hit_rate == 0.0


def test_quiet_buckets_are_zeros_not_gaps() -> None:
    timeline = Timeline(bucket_seconds=10, buckets=6)
    timeline.request(1000.0, "hit")
    buckets = timeline.buckets(1035.0, 60)
    assert [b.ts for b in buckets] == [980.0, 990.0, 1000.0, 1010.0, 1020.0, 1030.0]
    assert [b.requests for b in buckets] == [0, 0, 1, 0, 0, 0]
    assert buckets[0].hit_rate is None


def test_a_bucket_reused_after_the_ring_wraps_starts_from_zero() -> None:
    timeline = Timeline(bucket_seconds=10, buckets=3)
    timeline.request(1000.0, "hit")
    timeline.request(1030.0, "miss")  # same slot, three buckets later
    (latest,) = timeline.buckets(1030.0, 10)
    assert (latest.requests, latest.hits, latest.misses) == (1, 0, 1)
    # The bucket at 1000 is older than the ring keeps: asked for, it is empty.
    assert [b.requests for b in timeline.buckets(1030.0, 30)] == [0, 0, 1]


def test_an_event_older_than_the_ring_is_dropped_not_counted_into_a_newer_bucket() -> None:
    timeline = Timeline(bucket_seconds=10, buckets=3)
    timeline.request(1030.0, "miss")
    timeline.request(1000.0, "hit")  # a clock that went back past the ring
    (latest,) = timeline.buckets(1030.0, 10)
    assert (latest.requests, latest.hits) == (1, 0)


def test_asking_for_more_than_is_kept_gives_what_is_kept() -> None:
    timeline = Timeline(bucket_seconds=10, buckets=3)
    assert len(timeline.buckets(1000.0, 3600)) == 3
    assert len(timeline.buckets(1000.0, 1)) == 1


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError):
        Timeline(bucket_seconds=0)
    with pytest.raises(ValueError):
        Timeline(buckets=0)


@given(
    st.lists(
        st.tuples(
            st.floats(min_value=0, max_value=599.99, allow_nan=False),
            st.sampled_from(["hit", "miss", "stale", "revalidated", "bypass"]),
        ),
        max_size=200,
    )
)
def test_in_order_events_are_all_counted_within_the_span(events: list[tuple[float, str]]) -> None:
    timeline = Timeline(bucket_seconds=10, buckets=60)  # 600 s: every event is kept
    events.sort()
    for ts, outcome in events:
        timeline.request(ts, outcome)
    buckets = timeline.buckets(599.99, 600)
    assert sum(b.requests for b in buckets) == len(events)
    assert sum(b.hits for b in buckets) == sum(o in ("hit", "revalidated") for _, o in events)


def test_bytes_and_requests_split_by_where_the_body_came_from_and_statuses_by_class() -> None:
    timeline = Timeline(bucket_seconds=10, buckets=6)
    timeline.request(1000.0, "hit", 200, 100)
    timeline.request(1001.0, "stale", 200, 40)  # a stored body, served while refreshed
    timeline.request(1002.0, "revalidated", 304, 0)
    timeline.request(1003.0, "miss", 404, 13)
    timeline.request(1004.0, "bypass", 503, 7)
    timeline.request(1005.0, "miss", 101, 0)  # a WebSocket upgrade: in no class
    (bucket,) = timeline.buckets(1009.0, 10)
    assert (bucket.requests, bucket.from_cache) == (6, 3)
    assert (bucket.cache_bytes, bucket.origin_bytes) == (140, 20)
    statuses = (bucket.status_2xx, bucket.status_3xx, bucket.status_4xx, bucket.status_5xx)
    assert statuses == (2, 1, 1, 1)
    shown = bucket.to_json()
    assert shown["hit_rate"] == bucket.hit_rate and shown["cache_bytes"] == 140
    # A reused slot starts from zero for these too.
    timeline.request(1060.0, "hit", 200, 5)
    (later,) = timeline.buckets(1060.0, 10)
    assert (later.from_cache, later.cache_bytes, later.origin_bytes, later.status_4xx) == (
        1,
        5,
        0,
        0,
    )
