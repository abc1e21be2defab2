"""The predictive model on any trace: nothing raises, the budget holds."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from warmer.predictive import PredictiveConfig, Predictor
from warmer.replay import ReplayContext, ReplayStrategy, replay
from warmer.trace import TraceRow

traces = st.lists(
    st.tuples(
        st.floats(min_value=0, max_value=5.0, allow_nan=False),  # gap to the previous request
        st.integers(min_value=0, max_value=400),  # key
        st.integers(min_value=0, max_value=5),  # client
    ),
    min_size=1,
    max_size=1500,
)


def as_rows(steps: list[tuple[float, int, int]]) -> list[TraceRow]:
    rows: list[TraceRow] = []
    ts = 1_700_000_000.0
    for gap, key, client in steps:
        ts += gap
        rows.append((ts, f"/k{key}", None, f"c{client}"))
    return rows


@settings(max_examples=60, deadline=None)
@given(
    traces,
    st.integers(min_value=100, max_value=120),
    st.sampled_from([0.05, 0.2, 1.0]),
    st.sampled_from([1.0, 30.0, 300.0]),
)
def test_any_trace_with_few_followed_keys_replays_within_its_budget(
    steps: list[tuple[float, int, int]], max_keys: int, ratio: float, ttl: float
) -> None:
    """More keys than max_keys, keys that come back after their state was
    dropped (the old ``negative shift count``): nothing raises, and warm fetches
    stay within the budget (plus the slack of the threshold's step size)."""
    rows = as_rows(steps)

    def tiny(ctx: ReplayContext) -> list[ReplayStrategy]:
        config = PredictiveConfig(
            enabled=True, prediction_window=ttl, max_keys=max_keys, max_warm_ratio=ratio
        )
        return [Predictor(config)]

    result = replay(rows, ("tiny", tiny), capacity=20, ttl=ttl)
    assert result.requests == len(rows)
    # The threshold rises per request while over budget: a burst at the very
    # start may overshoot by a bounded number of fetches.
    assert result.warm_fetches <= ratio * len(rows) + 200 * math.log2(len(rows) + 2)


walks = st.lists(
    st.tuples(
        st.floats(min_value=0, max_value=5.0, allow_nan=False),  # gap to the previous request
        st.integers(min_value=-2, max_value=3),  # the client's step from its last number
        st.integers(min_value=0, max_value=5),  # client
    ),
    min_size=1,
    max_size=1500,
)


@settings(max_examples=40, deadline=None)
@given(walks, st.integers(min_value=100, max_value=120), st.sampled_from([0.05, 0.2, 1.0]))
def test_numbered_walks_that_name_keys_nobody_asked_for_stay_within_bounds(
    steps: list[tuple[float, int, int]], max_keys: int, ratio: float
) -> None:
    """Clients walking numbers (the model follows keys it predicts before
    anyone asks for them, past max_keys): nothing raises, the budget holds,
    and the model follows no more keys than it may."""
    ts = 1_700_000_000.0
    at = [0] * 6
    rows: list[TraceRow] = []
    for gap, step, client in steps:
        ts += gap
        at[client] = max(0, at[client] + step)
        rows.append((ts, f"/v{client}/blk/{at[client]}", None, f"c{client}"))
    built: list[Predictor] = []

    def tiny(ctx: ReplayContext) -> list[ReplayStrategy]:
        config = PredictiveConfig(
            enabled=True, prediction_window=30.0, max_keys=max_keys, max_warm_ratio=ratio
        )
        built.append(Predictor(config))
        return [built[-1]]

    result = replay(rows, ("tiny", tiny), capacity=20, ttl=30.0)
    assert result.requests == len(rows)
    assert result.warm_fetches <= ratio * len(rows) + 200 * math.log2(len(rows) + 2)
    assert len(built[0]) <= max_keys
