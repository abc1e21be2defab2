"""Take docs/dashboard.png: the dashboard during a real warm run with real traffic.

Starts the demo origin and warmproxy in this process (memory store, a throw-away
state directory, the predictive strategy on), then:

1. sends cold traffic (two clients, about 5 requests/s each: a Zipf head and a
   uniform tail over the demo's 300 products and articles, and a few requests
   for products that do not exist: 404s) for ``--cold`` seconds: the tail
   keeps missing (products are fresh for a minute), the origin takes every miss;
2. warms every product and article (one bulk run) and keeps the traffic going
   for ``--warm`` seconds: the hit rate jumps, origin requests drop;
3. saves a small schedule, starts a slow run (``/error/*``, ``/flaky/*`` and ``/slow/*``
   paths, so it shows progress, retries and errors) and, while it runs, takes
   a full-page screenshot at 1920 px in the system's Chromium (Playwright
   driving ``$WARMPROXY_CHROMIUM`` or ``chromium``; never a downloaded browser),
   the pointer over the hit-rate chart so its tooltip shows.

    .venv/bin/python bench/dashboard_screenshot.py [--out docs/dashboard.png]
        [--cold 120] [--warm 60] [--width 1920]

It takes ``cold + warm`` seconds and about a minute more, and asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from proxy.app import Warmproxy  # noqa: E402
from proxy.config import load_settings  # noqa: E402
from proxy.demo_origin import ARTICLE_COUNT, PRODUCT_COUNT, start_demo_origin  # noqa: E402

RATE = 5.0  # requests per second of each client


def shopper_path(rng: random.Random) -> str:
    """A path the way shoppers ask: a few pages very often (a Zipf head), and a
    long tail of every product and article, each rarely (more paths than the
    traffic alone keeps fresh)."""
    roll = rng.random()
    if roll < 0.02:
        return f"/products/{PRODUCT_COUNT + 1 + rng.randrange(3)}"  # no such product: a 404
    if roll < 0.3:
        return f"/products/{min(PRODUCT_COUNT, int(rng.paretovariate(1.2)))}"
    if roll < 0.35:
        return "/"
    n = rng.randrange(PRODUCT_COUNT + ARTICLE_COUNT)
    return f"/products/{n + 1}" if n < PRODUCT_COUNT else f"/articles/{n - PRODUCT_COUNT + 1}"


async def traffic(base: str, stop: asyncio.Event, seed: int = 11) -> None:
    rng = random.Random(seed)
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            path = shopper_path(rng)
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(base + path) as response:
                    await response.read()
            await asyncio.sleep(rng.expovariate(RATE))


async def control(
    session: aiohttp.ClientSession, base: str, method: str, path: str, body: Any = None
) -> Any:
    async with session.request(method, f"{base}/cache/warming/{path}", json=body) as response:
        return await response.json()


async def wait_run(session: aiohttp.ClientSession, base: str, run_id: str, within: float) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while asyncio.get_running_loop().time() < deadline:
        progress = await control(session, base, "GET", f"progress?run_id={run_id}")
        if progress["status"] != "running":
            return
        await asyncio.sleep(0.25)


def chromium() -> str:
    found = os.environ.get("WARMPROXY_CHROMIUM") or shutil.which("chromium")
    if not found:
        sys.exit("no Chromium: apt-get install chromium, or set WARMPROXY_CHROMIUM")
    return found


async def screenshot(url: str, out: Path, width: int) -> None:
    from playwright.async_api import async_playwright, expect

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium(), args=["--no-sandbox"]
        )
        try:
            page = await browser.new_page(viewport={"width": width, "height": 1080}, locale="en-GB")
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            await page.goto(url)
            await page.locator("#chart-range").select_option("300")
            await expect(page.locator("#run-state")).to_have_text("running", timeout=10_000)
            await expect(page.locator("#hot-rows tr").first).to_be_visible(timeout=10_000)
            await expect(page.locator("#missed-rows tr").first).to_be_visible(timeout=10_000)
            # Two more polls, so every panel has its latest figures.
            await page.wait_for_timeout(3200)
            # The pointer on the chart, at about two thirds: its tooltip shows.
            over = page.locator("#chart .u-over")
            box = await over.bounding_box()
            if box is not None:
                await page.mouse.move(
                    box["x"] + box["width"] * 0.66, box["y"] + box["height"] * 0.4
                )
                await page.wait_for_timeout(200)
            await page.screenshot(path=str(out), full_page=True)
            if errors:
                print("the page logged errors:", *errors, sep="\n  ")
        finally:
            await browser.close()


async def main(args: argparse.Namespace) -> None:
    state = Path(tempfile.mkdtemp(prefix="warmproxy-shot-"))
    origin = await start_demo_origin("127.0.0.1", 0)
    origin_port = origin.addresses[0][1]
    settings = load_settings(
        None,
        {
            "proxy": {"origin": f"http://127.0.0.1:{origin_port}", "listen": "127.0.0.1:0"},
            "control": {"listen": "127.0.0.1:0"},
            "state": {"dir": str(state)},
            "strategies": {"predictive": {"enabled": True}},
            "execution": {"parallelism": 4, "rate_limit": 20.0, "retry_base_delay": 0.5},
            "logging": {"level": "warning"},
        },
    )
    proxy = Warmproxy(settings)
    await proxy.start()
    stop = asyncio.Event()
    base = f"http://127.0.0.1:{proxy.proxy_port}"
    api = f"http://127.0.0.1:{proxy.control_port}"
    clients = [asyncio.create_task(traffic(base, stop, seed)) for seed in (11, 12)]
    try:
        print(f"cold traffic for {args.cold:g} s …", flush=True)
        await asyncio.sleep(args.cold)
        async with aiohttp.ClientSession() as session:
            everything = [f"/products/{n}" for n in range(1, PRODUCT_COUNT + 1)]
            everything += [f"/articles/{n}" for n in range(1, ARTICLE_COUNT + 1)]
            run = await control(
                session, api, "POST", "warm-key", {"urls": everything, "priority": "high"}
            )
            print(
                f"warming {len(everything)} paths, then traffic for {args.warm:g} s …", flush=True
            )
            await wait_run(session, api, run["run_id"], 60)
            await asyncio.sleep(args.warm)
            await control(
                session,
                api,
                "POST",
                "schedule",
                {
                    "schedule": "0 * * * *",
                    "sources": [
                        {"name": "catalogue", "schedule": "*/30 * * * *", "priority": "medium",
                         "source": {"type": "sitemap", "url": "/sitemap.xml"}},
                        {"name": "hot-keys", "schedule": "*/5 * * * *", "priority": "high",
                         "source": {"type": "hot", "top_n": 50}},
                    ],
                },
            )  # fmt: skip
            slow = ["/error/503", "/error/502"] + [f"/flaky/{n}" for n in range(1, 9)]
            slow += [f"/slow/{n}" for n in range(1, 39)]
            await control(session, api, "POST", "warm-key", {"urls": slow, "priority": "low"})
            await screenshot(f"{api}/cache/warming/dashboard", args.out, args.width)
        print(f"wrote {args.out}")
    finally:
        stop.set()
        await asyncio.gather(*clients, return_exceptions=True)
        await proxy.stop()
        await origin.cleanup()
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard.png")
    parser.add_argument(
        "--cold", type=float, default=120.0, help="seconds of traffic before warming"
    )
    parser.add_argument("--warm", type=float, default=60.0, help="seconds of traffic after warming")
    parser.add_argument("--width", type=int, default=1920)
    asyncio.run(main(parser.parse_args()))
