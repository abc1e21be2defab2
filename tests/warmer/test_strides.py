"""The numbered-walk model: steps learned per template, a never-seen
neighbour named, and the predictor warming it like any other decision."""

from __future__ import annotations

import random

import pytest

from tests.warmer.events import Ev
from warmer.predictive import PredictiveConfig, Predictor
from warmer.strides import MAX_DIGITS, MAX_FIELDS, StrideModel, carry_step, split_numbers, stepped

T0 = 1_767_225_600.0


def walk(model: StrideModel, client: str, keys: list[str], ts: float) -> list[str | None]:
    out = []
    for i, key in enumerate(keys):
        predicted = model.observe(client, key, ts + i)
        out.append(None if predicted is None else predicted[0])
    return out


def test_a_key_splits_into_its_template_and_numbers_and_steps_back() -> None:
    template, numbers = split_numbers("/api/t/17/orders?page=009") or ("", ())
    assert template == "/api/t/\x00/orders?page=\x00"
    assert numbers == ("17", "009")
    # Zero-padded numbers keep their width; a step below zero names nothing.
    assert stepped(template, numbers, 1, 1) == "/api/t/17/orders?page=010"
    assert stepped(template, numbers, 0, -17) == "/api/t/0/orders?page=009"
    assert stepped(template, numbers, 0, -18) is None
    assert split_numbers("/about") is None
    assert split_numbers("/x/" + "1" * (MAX_DIGITS + 1)) is None  # an id, not a position
    assert split_numbers("/" + "/".join("1" * (MAX_FIELDS + 1))) is None


def test_the_same_step_is_carried_to_a_url_that_names_the_key_without_its_host() -> None:
    # Keys that carry the host (and its port) hold more numbers than the URL.
    assert (
        carry_step("shop:8080/vol/2/blk/41", "shop:8080/vol/2/blk/42", "/vol/2/blk/41")
        == "/vol/2/blk/42"
    )
    # A URL that does not end in the key's numbers is not guessed at.
    assert carry_step("/a/1", "/a/2", "/b/7") is None


def test_walks_of_a_few_clients_name_the_next_page_nobody_has_asked_for() -> None:
    model = StrideModel()
    for client in range(3):
        pages = [f"/api/t/{client}/orders?page={n}" for n in range(1, 5)]
        walk(model, f"c{client}", pages, T0 + 100 * client)
    # A new client on a tenant never seen: its page 7 is followed by page 8.
    predicted = model.observe("new", "/api/t/99/orders?page=7", T0 + 1000)
    assert predicted is not None
    assert predicted[0] == "/api/t/99/orders?page=8"
    assert predicted[1] == 1.0  # every step counted from this template went there


def test_no_prediction_before_three_steps_or_when_walks_go_every_way() -> None:
    model = StrideModel()
    assert walk(model, "c", ["/p/1", "/p/2", "/p/3"], T0) == [None, None, None]
    assert model.observe("c", "/p/4", T0 + 10) == ("/p/5", 1.0)  # the third step
    # Steps in every direction: no step makes 30 % of the template's.
    scattered = StrideModel()
    rng = random.Random(1)
    for i in range(200):
        scattered.observe("c", f"/q/{rng.randrange(10_000)}", T0 + i)
    assert scattered.observe("c", "/q/5000", T0 + 300) is None


def test_a_repeat_is_no_step_and_a_long_pause_starts_a_new_walk() -> None:
    model = StrideModel(max_gap=60.0)
    for n in range(1, 6):
        model.observe("c", f"/p/{n}", T0 + n)
        model.observe("c", f"/p/{n}", T0 + n + 0.5)  # a reload
    assert model.observe("c", "/p/6", T0 + 7) == ("/p/7", 1.0)
    model.observe("c", "/p/900", T0 + 7 + 61)  # after a pause: no step of +894
    assert model.observe("c", "/p/901", T0 + 7 + 62) == ("/p/902", 1.0)


def test_memory_stays_within_its_bounds() -> None:
    model = StrideModel(max_clients=50, max_templates=20)
    for i in range(1000):
        letters = "".join(chr(97 + (i >> s) % 26) for s in (0, 5, 10))
        model.observe(f"client-{i}", f"/{letters}/page/{i % 7}", T0 + i)
        model.observe(f"client-{i}", f"/{letters}/page/{i % 7 + 1}", T0 + i + 0.5)
    assert model.templates <= 20
    assert len(model._clients) <= 50
    assert model.memory_bound() > 0
    with pytest.raises(ValueError, match="at least 1"):
        StrideModel(max_clients=0)


@pytest.mark.parametrize("neighbours", [True, False])
def test_the_predictor_warms_the_next_page_and_judges_it_by_the_request(neighbours: bool) -> None:
    # A budget that does not bind: each walk's last page is warmed for
    # nothing (its user stops), so a fifth of the warms are wasted.
    predictor = Predictor(
        PredictiveConfig(
            enabled=True, prediction_window=600.0, max_warm_ratio=1.0, neighbours=neighbours
        )
    )
    stored: dict[str, float] = {}

    def request(at: float, key: str, client: str) -> bool:
        """The request through a cache that keeps everything; whether it hit."""
        for warm in predictor.due(at):
            stored[warm.url] = at + 300.0
            predictor.filled(warm.url, warm.url, warm.host, at, at + 300.0)
        if stored.get(key, 0.0) > at:
            predictor.observe(Ev(at, key, outcome="hit", client=client, fresh_until=stored[key]))
            return True
        stored[key] = at + 300.0
        predictor.observe(Ev(at, key, client=client, fresh_until=at + 300.0))
        return False

    ts = T0
    # Forty tenants' users page through their own orders: no page is asked
    # for twice, so only the template can tell what comes next.
    hits_late = 0
    for tenant in range(40):
        for page in range(1, 6):
            ts += 3.0
            hit = request(ts, f"/api/t/{tenant}/orders?page={page}", f"user{tenant}")
            if tenant >= 30 and page >= 2:
                hits_late += hit
    if not neighbours:
        # Switched off: no page is asked for twice, so nothing is warmed.
        assert hits_late == 0
        assert predictor.strides is None
        return
    # Once learned, the next page is fetched before its user asks for it.
    assert hits_late == 10 * 4
    kinds = {cell[0] for cell in predictor.calibration.cells}
    assert any(kind.startswith("neighbour:") for kind in kinds)
    # Those warms are judged like any other, a window later: found by
    # their request, used.
    predictor.due(ts + 700.0)
    used = [v for c, v in predictor.calibration.cells.items() if c[0].startswith("neighbour:")]
    assert sum(v[3] for v in used) >= 40
