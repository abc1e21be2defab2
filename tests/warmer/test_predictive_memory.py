"""The predictive model's memory: bounded whatever the traffic, and small on a
real catalogue (what ``memory_bound`` reports, in the stats' ``predictive``)."""

from __future__ import annotations

import random
import sys
import tracemalloc

import pytest

from tests.warmer.events import Ev
from warmer.predictive import (
    MAX_CELLS,
    OWN_SEQUENCE_KEYS,
    POLLERS_KEPT,
    ModelFileError,
    PredictiveConfig,
    Predictor,
)

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
DAY = 86_400.0
MB = 1_000_000


def test_a_flood_of_long_names_stays_within_the_bound() -> None:
    # More keys than max_keys, coming back after they were forgotten, names
    # as long as allowed, clients with long ids, events a little out of
    # order, for hours (daily and weekly decisions pile up), and only some
    # warms reported filled (the rest await their report).
    config = PredictiveConfig(
        enabled=True, prediction_window=3600.0, max_keys=1000, min_confidence=0.05
    )
    rng = random.Random(11)
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        predictor = Predictor(config)
        ts = T0
        for i in range(10_000):
            ts += 3.0
            # Hot keys asked for again and again (one a client asks for
            # next), and one-off keys that push them out now and then.
            k = (i // 3 * 3 + i % 3) % 800 if i % 10 else 10_000 + i
            # Key, URL and host together just within max_name_bytes (2048),
            # the key short enough for the sequence model (512).
            key = f"/k/{k}/" + "k" * 400
            url = f"/u/{k}/" + "u" * 380
            host = f"h{k}." + "h" * 1000
            at = ts - rng.uniform(0.0, 60.0)
            for n, request in enumerate(predictor.due(at)):
                if n % 2:
                    warmed = "/k/" + request.url[3:].replace("u", "k")
                    predictor.filled(warmed, request.url, request.host, at, at + 60.0)
            predictor.observe(
                Ev(
                    at,
                    key,
                    outcome="hit" if i % 3 else "miss",
                    fresh_until=at + 60.0,
                    url=url,
                    host=host,
                    client=f"client-{i // 3}-" + "c" * 300,
                )
            )
        peak = tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()
    # Every structure was pushed to its limit.
    assert len(predictor) == 1000
    assert len(predictor._pending) == predictor._max_pending
    assert len(predictor._asked) == 1000
    assert len(predictor._decisions) + predictor._in_lanes > predictor._max_decisions // 2
    assert predictor.sequences is not None and predictor.sequences.sources == 1000
    # The bound with the cells the table has (all 76,800 would hide a miss).
    cells = len(predictor.calibration.cells)
    assert cells < MAX_CELLS
    assert peak <= predictor._memory_bound(cells)


def test_compacting_what_waits_for_forgotten_keys_changes_no_decision() -> None:
    # More keys than max_keys: decisions of forgotten keys are dropped every
    # max_keys forgotten, and the waiting ones are halved when full.  The
    # daily and weekly ones wait in compact lanes; the same model with every
    # decision in its heap must decide the same.
    rng = random.Random(8)
    events = []
    for day in range(3):
        for _ in range(1500):
            ts = T0 + day * DAY + rng.uniform(0, DAY)
            events.append(Ev(ts, f"/bg/{rng.randrange(400)}", client=f"c{rng.randrange(30)}"))
    events.sort(key=lambda e: e.ts)
    for e in events:
        e.ts += rng.uniform(-60.0, 0.0)  # observed a little out of order
        e.outcome = rng.choice(["hit", "miss"])
        e.fresh_until = e.ts + 300.0
    config = PredictiveConfig(enabled=True, prediction_window=3600.0, max_keys=150)
    laned, heaped = Predictor(config), Predictor(config)
    heaped._plant_seasonal = lambda at, key, kind: heaped._plant(at, key, kind, 0)  # type: ignore[method-assign]
    for predictor in (laned, heaped):
        predictor._max_decisions = 400
    asked: list[list[tuple[float, str, bool]]] = [[], []]
    for event in events:
        for out, predictor in zip(asked, (laned, heaped), strict=True):
            out += [(event.ts, r.url, r.refresh) for r in predictor.due(event.ts)]
            predictor.observe(event)
    for out, predictor in zip(asked, (laned, heaped), strict=True):
        out += [(T0 + 11 * DAY, r.url, r.refresh) for r in predictor.due(T0 + 11 * DAY)]
    assert laned._in_lanes == 0 and heaped._in_lanes == 0
    assert len(asked[0]) > 100
    assert asked[0] == asked[1]
    assert laned.calibration.cells == heaped.calibration.cells


def test_names_too_long_are_not_followed() -> None:
    predictor = Predictor(PredictiveConfig(enabled=True, max_name_bytes=300))
    long_url = "/" + "y" * 200
    assert sys.getsizeof(long_url) * 2 + sys.getsizeof("shop") > 300
    for i in range(3):
        predictor.observe(Ev(T0 + i, long_url, fresh_until=T0 + 100))
        predictor.observe(Ev(T0 + i, "/short", fresh_until=T0 + 100))
    assert len(predictor) == 1
    assert predictor.predictions(T0 + 5)[0].url == "/short"
    assert predictor.requests == 6  # still counted in the warm budget


def test_a_model_file_cannot_hold_more_than_the_model_makes() -> None:
    # A saved model is loaded only with cells this model makes and keys it
    # would follow, so a file cannot grow the table or the keys past the bound.
    predictor = Predictor(PredictiveConfig(enabled=True, max_name_bytes=300))
    for i in range(3):
        predictor.observe(Ev(T0 + i, "/short", fresh_until=T0 + 100))
    predictor.due(T0 + 10 * DAY)
    document = predictor.to_document()
    document["keys"].append(["/" + "y" * 300, "/" + "y" * 300, "shop", T0, 1.0, 1.0, T0, 2])
    again = Predictor(PredictiveConfig(enabled=True, max_name_bytes=300))
    again.load_document(document)
    assert len(again) == 1
    document["calibration"].append([["revisit", 99, 0, 0, 0], 1.0, 1.0, 0.0, 0.0])
    with pytest.raises(ModelFileError, match=r"calibration cell \d+ is not one this model makes"):
        again.load_document(document)


def test_the_default_bound_is_reported_and_a_catalogue_fits_well_under_200_mb() -> None:
    predictor = Predictor(PredictiveConfig(enabled=True))
    assert predictor.describe()["memory_bound_bytes"] == predictor.memory_bound()
    default_keys = predictor.config.max_keys
    assert default_keys >= 200_000

    # A catalogue with realistic names (/product/123456/slug, 25-40
    # characters), each key asked for a few times over two days by
    # clients going on to another product: what a followed key costs at
    # the default settings (its state, its waiting and pending decisions) ...
    rng = random.Random(5)
    slugs = ["red-shoe", "blue-lamp-xl", "garden-chair", "usb-cable-2m", "winter-coat-kids"]
    n_keys = 3000
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        predictor = Predictor(PredictiveConfig(enabled=True, sequences=False))
        ts = T0
        for i in range(6_000):
            ts += 28.8
            k = rng.randrange(n_keys)
            client = f"198.51.{i % 97}.{rng.randrange(256)}"
            for step in range(2):
                key = f"/product/{k:06d}/{slugs[k % 5]}"
                at = ts + 2.0 * step
                for request in predictor.due(at):
                    predictor.filled(request.url, request.url, "", at, at + 300.0)
                predictor.observe(Ev(at, key, fresh_until=at + 300.0, host="", client=client))
                k = (k * 7 + 1) % n_keys
        # The clients followed for polling are bounded on their own
        # (POLLERS_KEPT), not per key: measured apart.
        with_pollers = tracemalloc.get_traced_memory()[0]
        pollers = len(predictor._pollers)
        predictor._pollers.clear()
        per_poller = (with_pollers - tracemalloc.get_traced_memory()[0]) / pollers
        # So are the lifetimes followed to measure what a warm displaces
        # (at most OWN_SEQUENCE_KEYS of them).
        with_lifetimes = tracemalloc.get_traced_memory()[0]
        lifetimes = len(predictor.displacement._fresh)
        predictor.displacement._fresh.clear()
        per_lifetime = (with_lifetimes - tracemalloc.get_traced_memory()[0]) / lifetimes
        per_key = (tracemalloc.get_traced_memory()[0] - start) / len(predictor)
    finally:
        tracemalloc.stop()
    assert len(predictor) > 0.95 * n_keys

    # ... and its own sequence model (when the usage analysis has none to
    # share) at its fullest: OWN_SEQUENCE_KEYS clients and source keys.
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        sequences = Predictor(PredictiveConfig(enabled=True)).sequences
        assert sequences is not None
        for i in range(OWN_SEQUENCE_KEYS * 5 // 4):
            client = f"203.0.{i // 256 % 256}.{i % 256}:{i // 65536}"
            sequences.observe(client, f"/product/{i:06d}/{slugs[i % 5]}", T0 + i)
            sequences.observe(client, f"/product/{i + 1:06d}/{slugs[i % 5]}", T0 + i + 1)
        own_sequences = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    assert sequences.sources == sequences.clients == OWN_SEQUENCE_KEYS

    # ... and its model of numbered walks at its fullest: as many clients and
    # templates (a template per key here: its text differs, not its numbers).
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        strides = Predictor(PredictiveConfig(enabled=True)).strides
        assert strides is not None
        letters = "abcdefghijklmnopqrstuvwxyz"
        for i in range(OWN_SEQUENCE_KEYS * 5 // 4):
            client = f"203.0.{i // 256 % 256}.{i % 256}:{i // 65536}"
            name = "".join(letters[i // 26**d % 26] for d in range(4))
            strides.observe(client, f"/catalogue/{name}/{slugs[i % 5]}?page=1", T0 + i)
            strides.observe(client, f"/catalogue/{name}/{slugs[i % 5]}?page=2", T0 + i + 1)
        own_strides = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    assert strides.templates == strides.max_templates

    # Well under 200 MB at the default max_keys (docs/operations.md gives
    # the figure measured on a 300,000-key catalogue: 155 MB).
    assert pollers > 1000 and per_poller < 512
    total = (
        per_key * default_keys
        + POLLERS_KEPT * per_poller
        + OWN_SEQUENCE_KEYS * per_lifetime
        + own_sequences
        + own_strides
    )
    assert total < 185 * MB, (per_key, per_poller, per_lifetime, own_sequences, own_strides)
