"""Cache-key rules over the query string (``[cache] ignore_query_params`` /
``sort_query_params``), as a pure function: no event loop."""

from __future__ import annotations

import time
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.cache_key import MAX_GLOB_CHARS, MAX_GLOBS, NO_RULES, KeyRules
from proxy.config import CacheSettings, ConfigError, load_settings

TRACKING = KeyRules(ignore=("utm_*", "fbclid", "gclid"))
SORTING = KeyRules(sort=True)
BOTH = KeyRules(ignore=("utm_*", "fbclid", "gclid"), sort=True)

# Parameter names and values as clients send them: unreserved characters and
# percent-escapes, some empty, some with '=' inside the value.
_chars = st.sampled_from([*"abcxyz_-.~019", "%20", "%3D", "%26", "%5F", "%C3%A9", "+"])
names = st.lists(_chars, max_size=6).map("".join) | st.sampled_from(
    ["utm_source", "utm_medium", "utm%5Fsource", "fbclid", "gclid", "id", "a", "b"]
)
values = st.lists(_chars | st.just("="), max_size=6).map("".join)
params = st.tuples(names, st.one_of(st.none(), values)).map(
    lambda p: p[0] if p[1] is None else f"{p[0]}={p[1]}"
)
paths = st.sampled_from(["/", "/p", "/a/b.html", "//shop.example/p", "/%7Euser/x"])
queries = st.lists(params, max_size=8).map("&".join)
targets = st.tuples(paths, st.one_of(st.none(), queries)).map(
    lambda t: t[0] if t[1] is None else f"{t[0]}?{t[1]}"
)
rule_sets = st.sampled_from([NO_RULES, TRACKING, SORTING, BOTH, KeyRules(ignore=("*",))])


def _split(target: str) -> list[str]:
    """The parameters of ``target``'s query (empty segments are none)."""
    return [p for p in target.partition("?")[2].split("&") if p]


@given(rule_sets, targets)
def test_normalizing_twice_changes_nothing(rules: KeyRules, target: str) -> None:
    once = rules.normalize(target)
    assert rules.normalize(once) == once


@given(rule_sets, paths)
def test_a_target_without_a_query_comes_back_as_the_same_object(rules: KeyRules, path: str) -> None:
    assert rules.normalize(path) is path


@given(targets)
def test_without_rules_every_target_comes_back_as_the_same_object(target: str) -> None:
    assert NO_RULES.normalize(target) is target
    assert NO_RULES.normalizer(target) is target


@given(paths, st.lists(params.filter(bool), min_size=1))
def test_a_rule_that_removes_nothing_returns_the_same_object(path: str, kept: list[str]) -> None:
    target = f"{path}?{'&'.join(kept)}"
    assert KeyRules(ignore=("no-such-name",)).normalize(target) is target


@given(rule_sets, targets)
def test_the_path_and_every_kept_parameter_are_kept_byte_for_byte(
    rules: KeyRules, target: str
) -> None:
    key = rules.normalize(target)
    assert key.partition("?")[0] == target.partition("?")[0]
    kept = _split(key)
    original = _split(target)
    # Each kept parameter is one of the target's, unchanged, and none twice as often.
    for param in set(kept):
        assert kept.count(param) <= original.count(param)


@given(targets)
def test_ignored_names_are_matched_after_percent_decoding(target: str) -> None:
    from urllib.parse import unquote

    kept = _split(TRACKING.normalize(target))
    assert not any(
        unquote(p.partition("=")[0]).startswith("utm_")
        or unquote(p.partition("=")[0]) in ("fbclid", "gclid")
        for p in kept
    )
    removed = [p for p in _split(target) if p not in kept]
    assert all(
        unquote(p.partition("=")[0]).startswith("utm_")
        or unquote(p.partition("=")[0]) in ("fbclid", "gclid")
        for p in removed
    )


@given(targets)
def test_sorting_is_by_name_and_stable_for_repeated_names(target: str) -> None:
    from urllib.parse import unquote

    kept = _split(SORTING.normalize(target))
    assert sorted(kept) == sorted(_split(target))  # the same parameters, reordered
    decoded = [unquote(p.partition("=")[0]) for p in kept]
    assert decoded == sorted(decoded)
    for name in set(decoded):
        # Parameters of one name keep their relative order (?a=2&a=1 is not ?a=1&a=2).
        same = [p for p in _split(target) if unquote(p.partition("=")[0]) == name]
        assert [p for p, n in zip(kept, decoded, strict=True) if n == name] == same


@given(paths, st.lists(st.sampled_from(["utm_source=x", "fbclid=1", "utm_medium="]), min_size=1))
def test_a_query_left_empty_drops_its_question_mark(path: str, tracking: list[str]) -> None:
    assert TRACKING.normalize(f"{path}?{'&'.join(tracking)}") == path


def test_examples_an_operator_would_check() -> None:
    assert TRACKING.normalize("/p?id=1&utm_source=x") == "/p?id=1"
    assert TRACKING.normalize("/p?utm_source=x&id=1&fbclid=abc") == "/p?id=1"
    assert TRACKING.normalize("/p?utm%5Fsource=x&id=1") == "/p?id=1"
    assert TRACKING.normalize("/p?UTM_source=x") == "/p?UTM_source=x"  # case matters
    assert TRACKING.normalize("/p?id=%2F%2f") == "/p?id=%2F%2f"
    assert SORTING.normalize("/p?b=2&a=1&a=0") == "/p?a=1&a=0&b=2"
    assert BOTH.normalize("/s?q=x&utm_campaign=y&page=2") == "/s?page=2&q=x"
    assert BOTH.normalize("//shop.example/s?z=1&a=2") == "//shop.example/s?a=2&z=1"
    assert SORTING.normalize("/p?") == "/p"
    assert TRACKING.normalize("/p?a=1&&b=2&") == "/p?a=1&b=2"
    already = "/p?a=1&b=2"
    assert SORTING.normalize(already) is already


def test_many_stars_match_in_linear_time() -> None:
    # A glob with many stars against a long name that almost matches: a naive
    # backtracking translation takes exponential time here.
    rules = KeyRules(ignore=("*a" * 20 + "*b",))
    name = "a" * 5000
    started = time.perf_counter()
    assert rules.normalize(f"/p?{name}=1") == f"/p?{name}=1"
    assert time.perf_counter() - started < 2.0


def test_the_rules_come_from_the_cache_settings() -> None:
    settings = load_settings(
        None, {"cache": {"ignore_query_params": ["utm_*"], "sort_query_params": True}}
    )
    rules = KeyRules.from_settings(settings.cache)
    assert rules == KeyRules(ignore=("utm_*",), sort=True)
    assert rules.normalize("/p?b=1&utm_x=2&a=3") == "/p?a=3&b=1"
    assert KeyRules.from_settings(CacheSettings()) == NO_RULES
    assert not NO_RULES.active


@pytest.mark.parametrize(
    ("globs", "message"),
    [
        (["x"] * (MAX_GLOBS + 1), f"at most {MAX_GLOBS} globs"),
        (["x" * (MAX_GLOB_CHARS + 1)], f"at most {MAX_GLOB_CHARS} characters"),
        ([""], "non-empty"),
    ],
)
def test_unbounded_globs_are_refused_naming_the_key(globs: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(None, {"cache": {"ignore_query_params": globs}})
    assert "cache.ignore_query_params" in str(refused.value)
    assert message in str(refused.value)
    with pytest.raises(ValueError, match=message):
        KeyRules(ignore=tuple(globs))


def test_the_largest_allowed_rule_set_is_accepted() -> None:
    globs = [quote(f"p{i}") + "*" * (MAX_GLOB_CHARS - 3) for i in range(MAX_GLOBS)]
    rules = KeyRules(ignore=tuple(globs))
    assert rules.normalize("/p?p7=1&q=2") == "/p?q=2"
