"""The effectiveness ledger, alerts, schedule proposal and predictive model on
the live proxy: real origin, proxy on real ports."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import orjson

from proxy.app import Warmproxy
from tests.proxy.conftest import Origin, ProxyFactory, control_url, eventually, url
from tests.proxy.test_warming_api import AUTH, api, finished, sections


async def metrics_text(client: aiohttp.ClientSession, proxy: Warmproxy) -> str:
    async with client.get(control_url(proxy, "/metrics")) as response:
        return await response.text()


async def test_a_warmed_entry_hit_before_it_expired_counts_as_used(
    origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    origin.set("/short", headers={"Cache-Control": "public, max-age=2"}, body=b"short")
    origin.set("/unused", headers={"Cache-Control": "public, max-age=2"}, body=b"unused")
    # No refresh-ahead: two hits would otherwise make it warm /short once more
    # shortly before expiry (when the machine is slow enough for its tick to
    # land there), a third warmed entry that this arithmetic does not expect.
    proxy = await make_proxy(
        origin.url, **sections(tmp_path, strategies={"reactive": {"refresh_ahead": False}})
    )
    _, body = await api(client, proxy, "POST", "warm-key", {"urls": ["/short", "/unused"]})
    await finished(client, proxy, body["run_id"])
    for _ in range(2):
        async with client.get(url(proxy, "/short")) as response:
            assert response.headers["Cache-Status"].startswith("warmproxy; hit")
    await eventually(lambda: proxy.warmer.tracker.totals().requests == 2)
    await asyncio.sleep(2.1)  # both warmed entries expire: one was used, one not
    _, stats = await api(client, proxy, "GET", "stats")
    eff = stats["effectiveness"]
    assert eff["precision"] == 0.5
    assert eff["hits_gained"] == 2
    assert eff["misses_prevented"] == 1
    assert eff["warmed_entries"]["used"] == 1
    assert eff["warmed_entries"]["unused"] == 1
    # Without warming the first of the two hits would have been a miss.
    assert eff["counterfactual_hit_rate"] == 0.5
    cost = stats["cost_benefit"]
    assert cost["origin_fetches"] == 2
    assert cost["items_warmed"] == 2
    assert cost["bytes"] == len(b"short") + len(b"unused")
    assert stats["by_label"]["on-demand"]["precision"] == 0.5
    text = await metrics_text(client, proxy)
    assert "warmproxy_warm_precision_ratio 0.5" in text


async def test_a_failing_origin_raises_the_success_rate_alert(
    origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    origin.set("/broken", status=500, body=b"no")
    proxy = await make_proxy(
        origin.url,
        **sections(
            tmp_path,
            execution={"retry_attempts": 0},
            monitoring={
                "metrics_interval": "0.1s",
                "alert_thresholds": {"min_success_rate": 0.95, "min_samples": 1},
            },
        ),
    )
    text = await metrics_text(client, proxy)
    assert 'warmproxy_alert_active{alert="warming_success_rate"} 0.0' in text
    _, body = await api(client, proxy, "POST", "warm-key", {"url": "/broken"})
    await finished(client, proxy, body["run_id"])
    await eventually(lambda: "warming_success_rate" in proxy.warmer.alerts.active(), within=5)
    text = await metrics_text(client, proxy)
    assert 'warmproxy_alert_active{alert="warming_success_rate"} 1.0' in text
    _, stats = await api(client, proxy, "GET", "stats")
    assert stats["alerts"]["warming_success_rate"]["value"] == 0.0


async def test_schedule_shows_the_current_and_the_proposed_schedule(
    origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    proxy = await make_proxy(origin.url, **sections(tmp_path))
    status, schedule = await api(client, proxy, "GET", "schedule")
    assert status == 200
    proposed = schedule["proposed"]
    assert proposed["mode"] == "propose"
    # A fresh proxy has seen no traffic: it says so instead of inventing peaks.
    assert proposed["pattern"] == "insufficient_data"
    assert proposed["schedule"]["sources"] == schedule["sources"]
    # The read-only part of a GET can be posted back as it is.
    status, _ = await api(client, proxy, "POST", "schedule", schedule)
    assert status == 200


async def test_the_predictive_model_is_saved_and_loaded_across_a_restart(
    origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    # Named pages, not a numbered series (whose next number the model would
    # follow too, as a key to warm).
    pages = [f"/p/{name}" for name in ("home", "about", "shop", "cart", "help")]
    for page in pages:
        origin.set(page, headers={"Cache-Control": "public, max-age=60"}, body=b"p")
    config = sections(tmp_path, strategies={"predictive": {"enabled": True}})
    proxy = await make_proxy(origin.url, **config)
    for _ in range(3):
        for page in pages:
            async with client.get(url(proxy, page)) as response:
                await response.read()
    predictor = proxy.warmer.predictor
    assert predictor is not None
    await eventually(lambda: len(predictor) == 5)
    await proxy.stop()
    model = tmp_path / "state" / "model.json"
    document = orjson.loads(model.read_bytes())
    assert document["format"] == "warmproxy-predictive"
    assert len(document["keys"]) == 5
    again = await make_proxy(origin.url, **config)
    assert again.warmer.predictor is not None
    assert len(again.warmer.predictor) == 5
    _, stats = await api(client, again, "GET", "stats", headers=AUTH)
    assert stats["predictive"]["followed_keys"] == 5


async def test_a_damaged_model_file_is_not_fatal(
    origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "model.json").write_text("{ not json")
    proxy = await make_proxy(
        origin.url, **sections(tmp_path, strategies={"predictive": {"enabled": True}})
    )
    assert proxy.warmer.predictor is not None
    assert len(proxy.warmer.predictor) == 0
    assert (state / "model.json.bad").read_text() == "{ not json"
    status, _ = await api(client, proxy, "GET", "status")
    assert status == 200
    # The rebuilt model's memory bound is reported beside the analysis's.
    status, hot = await api(client, proxy, "GET", "hot-data")
    assert status == 200
    assert hot["memory_bound_bytes"]["predictive"] == proxy.warmer.predictor.memory_bound() > 0


async def test_without_the_analysis_hot_data_keeps_the_hot_keys(
    origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    origin.set("/a", headers={"Cache-Control": "public, max-age=60"}, body=b"a")
    proxy = await make_proxy(
        origin.url,
        **sections(
            tmp_path,
            tracking={"analysis": False},
            strategies={"predictive": {"enabled": True}},
        ),
    )
    assert proxy.warmer.analyzer is None
    for _ in range(3):
        async with client.get(url(proxy, "/a")) as response:
            await response.read()
    await eventually(lambda: proxy.warmer.tracker.totals().requests == 3)
    status, hot = await api(client, proxy, "GET", "hot-data")
    assert status == 200
    assert [h["url"] for h in hot["hot_keys"]] == ["/a"]
    assert hot["totals"]["requests"] == 3
    assert "segments" not in hot
    # The predictive model keeps a sequence model of its own.
    assert proxy.warmer.predictor is not None
    assert proxy.warmer.predictor.sequences is not None


async def test_timeline_counts_traffic_and_warm_fetches_and_marks_the_run(
    origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    origin.set("/t", headers={"Cache-Control": "public, max-age=60"}, body=b"t")
    origin.set("/w", headers={"Cache-Control": "public, max-age=60"}, body=b"w")
    proxy = await make_proxy(origin.url, **sections(tmp_path))
    for _ in range(3):  # a miss, then two hits
        async with client.get(url(proxy, "/t")) as response:
            await response.read()
    _, body = await api(client, proxy, "POST", "warm-key", {"url": "/w"})
    await finished(client, proxy, body["run_id"])
    await eventually(lambda: proxy.warmer.tracker.totals().requests == 3)
    status, timeline = await api(client, proxy, "GET", "timeline?seconds=600")
    assert status == 200
    assert timeline["bucket_seconds"] == 10
    buckets = timeline["buckets"]
    assert len(buckets) == 60
    assert sum(b["requests"] for b in buckets) == 3
    assert sum(b["hits"] for b in buckets) == 2
    assert sum(b["origin_requests"] for b in buckets) == 1
    assert sum(b["warm_fetches"] for b in buckets) == 1
    assert buckets[0]["ts"] < buckets[-1]["ts"] <= timeline["now"]
    (run,) = timeline["runs"]
    assert run["run_id"] == body["run_id"]
    assert run["status"] == "completed"
    assert run["started_ts"] <= run["finished_ts"] <= timeline["now"]
    status, error = await api(client, proxy, "GET", "timeline?seconds=99999")
    assert status == 400
    assert error["field"] == "seconds"


async def test_warming_time_counts_a_run_still_running(
    origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    for n in range(3):
        origin.set(f"/slow/{n}", headers={"Cache-Control": "public, max-age=60"}, delay=0.3)
    proxy = await make_proxy(
        origin.url, **sections(tmp_path, execution={"parallelism": 1, "adaptive": False})
    )
    _, body = await api(
        client, proxy, "POST", "warm-key", {"urls": [f"/slow/{n}" for n in range(3)]}
    )
    await eventually(lambda: origin.count() >= 2)
    _, stats = await api(client, proxy, "GET", "stats")
    # The first run is not over, and it has already taken at least one fetch's time.
    assert stats["timing"]["total_warming_time"] >= 0.3
    await finished(client, proxy, body["run_id"])
