"""``/metrics`` of a running proxy follows the Prometheus naming conventions,
every series it exports is listed in docs/operations.md, and every series the
Grafana dashboard queries is exported.

The scrape is taken from a real proxy after client requests (miss, hit, not
stored, bypass), warming by key, by a scheduled source and by the hot set, and
one warmed entry's lifetime resolved: so the ledger's series are present too.
"""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from proxy import __version__
from proxy.observe import Outcome
from tests.proxy.conftest import Origin, ProxyFactory, control_url, eventually, url
from tests.proxy.test_packaging import (
    METRIC_NAME,
    RATE_OF,
    dashboard,
    dashboard_queries,
    exported_series,
)
from tests.proxy.test_warming_api import api, finished, sections
from warmer.model import DEFAULT_PRIORITY_LEVELS, Reason

ROOT = Path(__file__).resolve().parents[2]

# Each concept's values and the one label name that carries them in every series.
CONCEPTS: dict[str, frozenset[str]] = {
    "strategy": frozenset(r.value for r in Reason),
    "outcome": frozenset(o.value for o in Outcome),
    "phase": frozenset({"during_runs", "outside_runs"}),
    "priority": frozenset(DEFAULT_PRIORITY_LEVELS),
}
# Label names that name no concept: a series using one says nothing a user can query by.
VAGUE_LABELS = frozenset({"label", "name", "type", "kind", "value", "tag"})
# Words that say a series measures time or size, and the base unit its name must carry.
TIME_WORDS = re.compile(r"(?:^|_)(?:duration|latency|lag|time|seconds|elapsed|delay)(?:_|$)")
SIZE_WORDS = re.compile(r"(?:^|_)(?:bytes|memory|size)(?:_|$)")
NON_BASE_UNITS = re.compile(
    r"(?:^|_)(?:ms|milliseconds|microseconds|minutes|hours|kb|kilobytes|mb|megabytes|percent)"
    r"(?:_|$)"
)
RATE_WORDS = re.compile(r"(?:^|_)(?:rate|rates|per_second|per_minute|qps|rps)(?:_|$)")
# A row of the metrics table in docs/operations.md: | `name` | type | labels | meaning |
DOC_ROW = re.compile(r"^\|\s*`([a-z_:]+)`\s*\|\s*(\w+)\s*\|([^|]*)\|", re.MULTILINE)


async def busy_scrape(
    origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession, tmp_path: Path
) -> str:
    """A proxy that served and warmed a little, and its ``/metrics`` text."""
    # Fresh long enough for the hit below, short enough for the warmed
    # lifetime to resolve (and precision to be exported) soon after.
    origin.set("/short", headers={"Cache-Control": "public, max-age=3"}, body=b"short")
    origin.set("/long", headers={"Cache-Control": "public, max-age=60"})
    origin.set("/listed", headers={"Cache-Control": "public, max-age=60"})
    origin.set("/private", headers={"Cache-Control": "no-store"})
    # Not stored for a reason written for people ("vary *").
    origin.set("/varies", headers={"Cache-Control": "public, max-age=60", "Vary": "*"})
    proxy = await make_proxy(
        origin.url, **sections(tmp_path, strategies={"predictive": {"enabled": True}})
    )
    for method, path in [
        ("GET", "/long"),
        ("GET", "/long"),
        ("GET", "/private"),
        ("GET", "/varies"),
    ]:
        async with client.request(method, url(proxy, path)) as response:
            await response.read()
    async with client.post(url(proxy, "/long"), data=b"x") as response:
        await response.read()
    _, run = await api(client, proxy, "POST", "warm-key", {"urls": ["/short", "/long"]})
    await finished(client, proxy, run["run_id"])
    async with client.get(url(proxy, "/short")) as response:  # a hit on a warmed entry
        assert "hit" in response.headers["Cache-Status"]
    plan = {"sources": [{"name": "catalogue", "source": {"type": "urls", "paths": ["/listed"]}}]}
    status, body = await api(client, proxy, "POST", "schedule", plan)
    assert status == 200, body
    _, run = await api(client, proxy, "POST", "start", {"strategy": "proactive"})
    await finished(client, proxy, run["run_id"])
    _, run = await api(client, proxy, "POST", "start", {"strategy": "hot"})
    await finished(client, proxy, run["run_id"])

    scrape = ""

    async def resolved() -> bool:
        nonlocal scrape
        async with client.get(control_url(proxy, "/metrics")) as response:
            scrape = await response.text()
        return "\nwarmproxy_warm_precision_ratio " in scrape

    await eventually(resolved, within=15)  # /short's warmed entry expires 3 s on
    return scrape


def families(scrape: str) -> list[Metric]:
    return list(text_string_to_metric_families(scrape))


def documented() -> dict[str, tuple[str, frozenset[str]]]:
    """The metrics table of docs/operations.md: exposed name -> (type, label names)."""
    text = (ROOT / "docs" / "operations.md").read_text()
    return {
        name: (kind, frozenset(re.findall(r"`([a-z_]+)`", labels)))
        for name, kind, labels in DOC_ROW.findall(text)
    }


def exposed_name(family: Metric) -> str:
    """The name users query: a counter's with ``_total`` (the parser strips it)."""
    return family.name + "_total" if family.type == "counter" else family.name


def convention_problems(parsed: list[Metric]) -> list[str]:
    """Where the families break the Prometheus naming conventions."""
    problems: list[str] = []
    for family in parsed:
        name = exposed_name(family)
        for sample in family.samples:
            if sample.name.endswith("_created"):
                problems.append(f"{sample.name}: a _created series")
            if family.type == "counter" and not sample.name.endswith("_total"):
                problems.append(f"{sample.name}: a counter not ending in _total")
            if family.type == "gauge" and sample.name.endswith("_total"):
                problems.append(f"{sample.name}: a gauge named like a counter")
            if name.endswith("_ratio") and not 0.0 <= sample.value <= 1.0:
                problems.append(f"{sample.name}={sample.value}: a ratio outside 0..1")
            for label, value in sample.labels.items():
                if re.search(r"\s", value):
                    problems.append(f"{sample.name}{{{label}={value!r}}}: a space in a value")
        if family.type == "gauge" and RATE_WORDS.search(name):
            problems.append(f"{name}: a gauge of a rate (export the counter; rate() it)")
        unit_name = family.name  # a counter's without _total
        if TIME_WORDS.search(unit_name) and not unit_name.endswith("_seconds"):
            problems.append(f"{name}: a time without _seconds as its unit")
        if SIZE_WORDS.search(unit_name) and not unit_name.endswith("_bytes"):
            problems.append(f"{name}: a size without _bytes as its unit")
        if NON_BASE_UNITS.search(unit_name):
            problems.append(f"{name}: not in base units (seconds, bytes, 0..1 ratios)")
    return problems


def concept_problems(parsed: list[Metric]) -> list[str]:
    """Where one concept goes by several label names, or a label names none."""
    carriers: dict[str, set[str]] = {concept: set() for concept in CONCEPTS}
    problems: list[str] = []
    for family in parsed:
        for sample in family.samples:
            for label, value in sample.labels.items():
                if label in VAGUE_LABELS:
                    problems.append(f"{sample.name}: label {label!r} names no concept")
                for concept, values in CONCEPTS.items():
                    if value in values:
                        carriers[concept].add(label)
    for concept, labels in carriers.items():
        if labels - {concept}:
            problems.append(f"{concept} values under {sorted(labels)}")
    return problems


def undocumented(parsed: list[Metric]) -> list[str]:
    """warmproxy's families missing from docs/operations.md, or shown otherwise there."""
    table = documented()
    assert table, "no metrics table in docs/operations.md"
    problems: list[str] = []
    for family in parsed:
        name = exposed_name(family)
        if not name.startswith("warmproxy_"):
            continue  # process_* and python_*: the client library's, documented there
        if name not in table:
            problems.append(f"{name}: not in docs/operations.md")
            continue
        kind, labels = table[name]
        if kind != family.type:
            problems.append(f"{name}: documented as {kind}, exported as {family.type}")
        exported = {k for s in family.samples for k in s.labels} - {"le", "quantile"}
        if exported - labels:
            problems.append(f"{name}: labels {sorted(exported - labels)} not documented")
    return problems


async def test_a_busy_proxys_scrape_follows_the_conventions_and_the_docs(
    origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    scrape = await busy_scrape(origin, make_proxy, client, tmp_path)
    parsed = families(scrape)
    names = {exposed_name(f) for f in parsed}
    # What the scenario must have produced for the checks below to mean something.
    for expected in (
        "warmproxy_requests_total",
        "warmproxy_request_duration_seconds",
        "warmproxy_warm_precision_ratio",
        "warmproxy_warm_success_ratio",
        "warmproxy_hit_after_warming_ratio",
        "warmproxy_warm_hits_gained_total",
        "warmproxy_phase_user_latency_seconds_total",
        "warmproxy_build_info",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "python_info",
        "python_gc_collections_total",
    ):
        assert expected in names, expected
    assert convention_problems(parsed) == []
    assert concept_problems(parsed) == []
    assert undocumented(parsed) == []
    exported, monotonic = exported_series(scrape)
    queries = dashboard_queries(dashboard())
    queried = {name for q in queries for name in METRIC_NAME.findall(q)}
    assert "warmproxy_request_duration_seconds_bucket" in queried
    assert sorted(queried - exported) == [], "the dashboard queries series not exported"
    rated = {name for q in queries for name in RATE_OF.findall(q)}
    assert sorted(rated - monotonic) == [], "rate()/increase() of a series that is not a counter"
    # The ledger's series name the strategy as the executor's do, and the
    # scheduled source apart.
    assert 'warmproxy_warm_items_total{strategy="scheduled"}' in scrape
    assert 'warmproxy_responses_not_stored_total{reason="vary-*"}' in scrape
    [open_entries] = [f for f in parsed if f.name == "warmproxy_warmed_entries_open"]
    assert {"strategy": "scheduled", "source": "catalogue"} in [
        s.labels for s in open_entries.samples
    ]


async def test_request_latency_histogram_counts_every_request_by_outcome(
    origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    origin.set("/page", headers={"Cache-Control": "public, max-age=60"}, body=b"page", delay=0.05)
    proxy = await make_proxy(origin.url, **sections(tmp_path))
    for _ in range(3):  # a miss, then two hits
        async with client.get(url(proxy, "/page")) as response:
            assert await response.read() == b"page"
    async with client.post(url(proxy, "/page"), data=b"x") as response:  # bypass
        await response.read()
    async with client.get(control_url(proxy, "/metrics")) as response:
        scrape = await response.text()
    [requests] = [f for f in families(scrape) if f.name == "warmproxy_requests"]
    [durations] = [f for f in families(scrape) if f.name == "warmproxy_request_duration_seconds"]
    assert durations.type == "histogram"
    by_outcome: dict[str, float] = {}
    for sample in requests.samples:
        outcome = sample.labels["outcome"]
        by_outcome[outcome] = by_outcome.get(outcome, 0) + sample.value
    assert by_outcome == {"miss": 1, "hit": 2, "bypass": 1}
    for outcome, count in by_outcome.items():
        samples = [s for s in durations.samples if s.labels["outcome"] == outcome]
        buckets = [s.value for s in samples if s.name.endswith("_bucket")]
        assert buckets == sorted(buckets), "buckets are cumulative"
        [total] = [s.value for s in samples if s.name.endswith("_count")]
        inf = [s.value for s in samples if s.labels.get("le") == "+Inf"]
        assert total == count and inf == [count], outcome
        [seconds] = [s.value for s in samples if s.name.endswith("_sum")]
        assert seconds > 0
    # The miss waited for the origin's 50 ms: it is not in a bucket below that.
    miss_below = [
        s.value
        for s in durations.samples
        if s.name.endswith("_bucket")
        and s.labels["outcome"] == "miss"
        and s.labels["le"] != "+Inf"
        and float(s.labels["le"]) < 0.05
    ]
    assert set(miss_below) == {0.0}
    [build] = [f for f in families(scrape) if f.name == "warmproxy_build_info"]
    assert [(s.labels["version"], s.value) for s in build.samples] == [(__version__, 1.0)]
