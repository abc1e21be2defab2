"""The real proxy on a trace (``warmproxy replay --live``), and the proxy on an injected clock."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import orjson
import pytest

from proxy.app import Warmproxy
from proxy.cli import main
from proxy.config import load_settings
from proxy.live_replay import (
    BROWSERS,
    accepts_gzip,
    browser_of,
    default_speed,
    is_hit,
    live_replay,
    target_of,
)
from tests.proxy.conftest import Origin
from warmer.clock import ManualClock
from warmer.replay import CacheSize

DATA = Path(__file__).resolve().parents[1] / "data"
CHROME = [b for b in BROWSERS if b.name == "chrome"]


def first_rows(tmp_path: Path, n: int, name: str = "worldcup98_slice.csv") -> Path:
    """The first ``n`` requests of a trace slice, as a trace of their own."""
    lines = (DATA / name).read_text().splitlines()
    path = tmp_path / f"first-{n}-{name}"
    path.write_text("\n".join(lines[: n + 1]) + "\n")
    return path


# -- the proxy takes a clock ------------------------------------------------------


def clocked_proxy(origin: Origin, tmp_path: Path, clock: ManualClock) -> Warmproxy:
    """A proxy in front of ``origin`` on ``clock``, on free loopback ports."""
    settings = load_settings(
        None,
        {
            "proxy": {"origin": origin.url, "listen": "127.0.0.1:0"},
            "control": {"listen": "127.0.0.1:0"},
            "state": {"dir": str(tmp_path / "state")},
        },
    )
    return Warmproxy(settings, clock=clock)


async def test_freshness_runs_on_the_injected_clock(origin: Origin, tmp_path: Path) -> None:
    origin.set("/page", headers={"Cache-Control": "max-age=60"}, body=b"v1")
    clock = ManualClock()
    proxy = clocked_proxy(origin, tmp_path, clock)
    await proxy.start()
    try:
        url = f"http://127.0.0.1:{proxy.proxy_port}/page"
        async with aiohttp.ClientSession() as session:

            async def cache_status() -> str:
                async with session.get(url) as response:
                    await response.read()
                    return response.headers["Cache-Status"]

            assert "fwd=uri-miss" in await cache_status()
            clock.advance(59)
            assert is_hit(await cache_status())
            clock.advance(2)  # 61 s after it was stored, without waiting a second
            status = await cache_status()
            assert not is_hit(status)
            assert "fwd=uri-miss" in status  # expired, nothing to revalidate: gone
        assert origin.count("/page") == 2
    finally:
        await proxy.stop()


# -- pieces of the live replay ----------------------------------------------------


@pytest.mark.parametrize(
    ("value", "accepted"),
    [
        ("gzip, deflate, br", True),
        ("br;q=1.0, gzip;q=0.8", True),
        ("br, gzip;q=0", False),
        ("identity", False),
        ("*", True),
        ("", False),
    ],
)
def test_gzip_is_sent_to_whoever_accepts_it(value: str, accepted: bool) -> None:
    assert accepts_gzip(value) is accepted


def test_trace_keys_become_valid_request_targets() -> None:
    assert target_of("/english/index.html") == "/english/index.html"
    assert target_of("bBXyB7niEc0&origin") == "/bBXyB7niEc0&origin"
    assert target_of('/english/player"/') == "/english/player%22/"
    assert target_of("/a b/%zz/%41") == "/a%20b/%25zz/%41"


def test_a_client_keeps_its_browser() -> None:
    assert browser_of("c42") is browser_of("c42")
    assert {browser_of(f"c{n}").name for n in range(50)} == {b.name for b in BROWSERS}


def test_default_speed_plays_a_day_in_ten_minutes() -> None:
    assert default_speed(86_400) == 144
    assert default_speed(60) == 1  # never slower than real time


# -- the live replay --------------------------------------------------------------


def test_none_live_hit_ratio_matches_the_simulation(tmp_path: Path) -> None:
    """Without warming, the real proxy (one browser: one variant per key, as the
    simulation's cache has) hits as often as the simulated cache."""
    trace = first_rows(tmp_path, 1000)
    report = live_replay(
        trace, ["none"], cache_size=CacheSize(fraction=0.2), ttl=300, speed=100, browsers=CHROME
    )
    (row,) = report.rows
    assert row.live.requests == 1000
    assert row.live.errors == 0
    assert row.live.warm_fetches == 0
    assert abs(row.live.hit_ratio - row.simulated.hit_ratio) < 0.015, report


def test_refresh_ahead_warm_fetches_land_for_browsers(tmp_path: Path) -> None:
    """Clients of three browsers: each refresh-ahead fetch stores the variant
    the key's next client asks for, so that client gets a hit."""
    trace = first_rows(tmp_path, 1500)
    # A short TTL: many lifetimes in ten minutes of trace, many refreshes.
    report = live_replay(
        trace, ["refresh-ahead"], cache_size=CacheSize(fraction=0.2), ttl=60, speed=100
    )
    live = report.rows[0].live
    assert live.warm_fetches > 0
    assert live.landing_eligible >= 20, live
    assert live.landing_share is not None and live.landing_share >= 0.99, live.landing_missed


def test_cli_prints_live_beside_simulated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = first_rows(tmp_path, 300)
    code = main(["replay", str(trace), "--live", "--speed", "300", "--strategies", "none"])
    out = capsys.readouterr().out
    assert code == 0
    assert "live: the proxy on real sockets at 300x real time" in out
    table = out.splitlines()
    header, row = [line.split() for line in table if line.startswith(("strategy ", "none "))]
    assert header == ["strategy", "live", "sim", "live", "sim", "live", "sim", "share"]
    assert row[0] == "none" and row[2] == "%" and row[4] == "%"


def test_cli_json_has_both_sides(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = first_rows(tmp_path, 300)
    code = main(
        ["replay", str(trace), "--live", "--speed", "300", "--strategies", "none", "--json"]
    )
    (line,) = capsys.readouterr().out.splitlines()
    assert code == 0
    row = orjson.loads(line)
    assert row["strategy"] == "none"
    assert row["live"]["requests"] == row["simulated"]["requests"] == 300
    assert {"hit_ratio", "warm_fetches_per_request", "precision", "landing_share"} <= set(
        row["live"]
    )


def test_cli_reports_a_malformed_trace_as_the_simulated_replay_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "bad.csv"
    trace.write_text("ts,key,size,client\n1,/a,,c1\nnot-a-time,/b,,c2\n")
    assert main(["replay", str(trace)]) == 2
    simulated = capsys.readouterr().err
    assert main(["replay", str(trace), "--live"]) == 2
    assert capsys.readouterr().err == simulated
    assert "line 3" in simulated


def test_cli_refuses_a_strategy_without_live_configuration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = first_rows(tmp_path, 10)
    assert main(["replay", str(trace), "--live", "--strategies", "reactive"]) == 2
    assert "'reactive' has no live configuration" in capsys.readouterr().err


async def test_metrics_judge_warmed_entries_on_the_injected_clock(
    origin: Origin, tmp_path: Path
) -> None:
    """An entry warmed a second ago on the proxy's clock is still open in
    /metrics, however far the wall clock is from it."""
    origin.set("/page", headers={"Cache-Control": "max-age=60"}, body=b"v1")
    clock = ManualClock(start=1_500_000_000.0)  # years before the wall clock
    proxy = clocked_proxy(origin, tmp_path, clock)
    await proxy.start()
    try:
        assert proxy.warmer is not None
        run = proxy.warmer.warm_urls(["/page"], "high", "key")
        await asyncio.wait_for(run.done.wait(), 10)
        clock.advance(1)
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{proxy.control_port}/metrics") as response,
        ):
            text = await response.text()
        open_entries = [
            line for line in text.splitlines() if line.startswith("warmproxy_warmed_entries_open")
        ]
        assert open_entries and float(open_entries[0].split()[-1]) == 1.0, open_entries
    finally:
        await proxy.stop()
