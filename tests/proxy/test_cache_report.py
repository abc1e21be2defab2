"""``GET /cache/warming/cache``: client latency percentiles, origin health, store
fill and the most missed paths, after real traffic through a real proxy."""

from __future__ import annotations

import math
from pathlib import Path

import aiohttp
import pytest

from proxy.metrics import histogram_quantile
from tests.proxy.conftest import Origin, ProxyFactory, eventually, url
from tests.proxy.test_warming_api import api, sections

CACHEABLE = {"Cache-Control": "public, max-age=60"}
INF = math.inf


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        (0.5, 0.3),  # rank 20: 10 below, 20 in (0.1, 0.5] -> halfway
        (0.9, 0.8),  # rank 36: 30 below, 10 in (0.5, 1] -> 6/10 of the way
        (0.2, 0.08),  # rank 8 in the first bucket, whose lower bound is 0
        (1.0, 1.0),
    ],
)
def test_quantiles_interpolate_within_the_bucket_as_promql_does(q: float, expected: float) -> None:
    buckets = [(0.1, 10.0), (0.5, 30.0), (1.0, 40.0), (INF, 40.0)]
    assert histogram_quantile(q, buckets) == pytest.approx(expected)


def test_a_rank_in_the_inf_bucket_gives_the_highest_bound_and_no_data_gives_none() -> None:
    assert histogram_quantile(0.9, [(0.1, 10.0), (INF, 20.0)]) == 0.1
    assert histogram_quantile(0.5, [(0.1, 0.0), (INF, 0.0)]) is None
    with pytest.raises(ValueError, match="between 0 and 1"):
        histogram_quantile(1.5, [(0.1, 1.0), (INF, 1.0)])
    with pytest.raises(ValueError, match=r"\+Inf"):
        histogram_quantile(0.5, [(0.1, 1.0)])


async def test_the_report_shows_latency_origin_health_store_fill_and_missed_paths(
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    # These origin answers take at least 0.3 s: in (0.25, 0.5] or above.
    origin.set("/slow", headers=CACHEABLE, body=b"s" * 1000, delay=0.3)
    origin.set("/fast", headers=CACHEABLE, body=b"f" * 1000, delay=0.3)
    origin.set("/hang", headers=CACHEABLE, delay=5)
    settings = sections(tmp_path, proxy={"read_timeout": 0.5}, cache={"max_bytes": 4 * 1024 * 1024})
    proxy = await make_proxy(origin.url, **settings)
    for path, status in [
        ("/slow", 200),
        ("/slow", 200),  # a hit
        ("/fast", 200),
        ("/missing", 404),
        ("/missing", 404),
        ("/hang", 504),  # the origin timed out
    ]:
        async with client.get(url(proxy, path)) as response:
            assert response.status == status, path
            await response.read()
    await eventually(lambda: proxy.warmer.tracker.totals().requests == 6)

    status, report = await api(client, proxy, "GET", "cache")
    assert status == 200
    assert "histogram_quantile" in report["method"]

    latency = report["latency"]
    assert latency["requests"] == 6
    assert latency["by_outcome"]["hit"]["requests"] == 1
    # Two slow fills and two quick 404s; the timed-out request is answered by the proxy.
    assert latency["by_outcome"]["miss"]["requests"] == 4
    assert latency["by_outcome"]["bypass"]["requests"] == 1
    miss = latency["by_outcome"]["miss"]
    assert 0 < miss["p50"] <= miss["p90"] <= miss["p99"] <= 30
    assert miss["p90"] >= 0.25  # the slow half
    assert latency["by_outcome"]["hit"]["p50"] > 0

    health = report["origin"]
    assert health["latency"]["requests"] >= 4  # two fills and two 404s answered
    assert health["latency"]["p90"] >= 0.25
    assert "fill" in health["latency"]["by_purpose"]
    assert health["errors"] == {"timeout": 1}
    assert health["proxy_errors"].get("origin-timeout") == 1
    warming = report["warming"]
    assert warming["concurrency_limit"] <= warming["parallelism"]
    assert warming["paused"] is False

    store = report["store"]
    assert store["backend"] == "memory" and store["healthy"] is True
    assert store["entries"] == 2  # /slow and /fast; a 404 without freshness is not stored
    assert 2000 < store["bytes"] <= store["max_bytes"] == 4 * 1024 * 1024
    assert store["evictions"] == 0

    missed = report["top_missed"]
    assert missed["window_seconds"] == 3600
    by_path = {k["url"]: (k["misses"], k["requests"]) for k in missed["keys"]}
    assert by_path["/missing"] == (2, 2)
    assert by_path["/slow"] == (1, 2)
    assert missed["keys"][0]["url"] == "/missing"  # missed most

    status, short = await api(client, proxy, "GET", "cache?n=1&window=60")
    assert status == 200
    assert short["top_missed"]["window_seconds"] == 60
    assert len(short["top_missed"]["keys"]) == 1


@pytest.mark.parametrize(
    ("query", "field"), [("n=0", "n"), ("n=201", "n"), ("n=x", "n"), ("window=5", "window")]
)
async def test_bad_parameters_are_refused_naming_them(
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
    tmp_path: Path,
    query: str,
    field: str,
) -> None:
    proxy = await make_proxy(origin.url, **sections(tmp_path))
    status, body = await api(client, proxy, "GET", f"cache?{query}")
    assert status == 400
    assert body["field"] == field
