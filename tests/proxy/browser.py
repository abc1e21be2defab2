"""A real headless Chromium for the dashboard's tests, driven by Playwright.

The browser is the system's (Debian's ``chromium``): ``$WARMPROXY_CHROMIUM``,
else ``chromium`` / ``chromium-browser`` on PATH; Playwright's own browser
download is never used.  Without one the tests skip with the reason, except
where a browser is required (``WARMPROXY_REQUIRE_BROWSER=1`` or ``CI=true``):
there they fail.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

BROWSER_NAMES = ("chromium", "chromium-browser")


def browser_required() -> bool:
    """True when a missing browser must fail the run instead of skipping (CI)."""
    return os.environ.get("WARMPROXY_REQUIRE_BROWSER", "").strip() == "1" or os.environ.get(
        "CI", ""
    ).strip().lower() in ("1", "true")


def _unavailable(reason: str) -> None:
    if browser_required():
        pytest.fail(f"{reason} (a browser is required: WARMPROXY_REQUIRE_BROWSER=1 or CI=true)")
    pytest.skip(reason)


def chromium_path() -> str:
    """The Chromium to drive; skips (fails where required) when there is none."""
    configured = os.environ.get("WARMPROXY_CHROMIUM", "").strip()
    if configured:
        if not (os.path.isfile(configured) and os.access(configured, os.X_OK)):
            _unavailable(f"WARMPROXY_CHROMIUM={configured} is not an executable file")
        return configured
    for name in BROWSER_NAMES:
        found = shutil.which(name)
        if found:
            return found
    _unavailable(
        "no Chromium found (apt-get install chromium, or set WARMPROXY_CHROMIUM to its path)"
    )
    raise AssertionError("unreachable")


@dataclass
class Browsing:
    """One page in a fresh browser context, with what it logged and requested."""

    page: Any  # playwright.async_api.Page
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    requests: list[Any] = field(default_factory=list)  # playwright.async_api.Request

    def errors(self, *, allow_status: tuple[int, ...] = ()) -> list[str]:
        """Script errors and console errors, except the browser's own notes of
        responses with a status in ``allow_status`` (a 400 the page shows, a
        401 that makes it ask for the token)."""
        allowed = tuple(f"status of {s} " for s in allow_status)
        return self.page_errors + [
            text for text in self.console_errors if not any(a in text for a in allowed)
        ]


async def browse() -> AsyncIterator[Browsing]:
    """A page in headless Chromium; the body of the ``browsing`` fixture."""
    executable = chromium_path()
    try:
        from playwright.async_api import async_playwright, expect
    except ImportError:
        _unavailable("the playwright package is not installed (pip install -e '.[dev]')")
        raise
    # The page polls every 1.5 s and the slower panels every 4.5 s.
    expect.set_options(timeout=10_000)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=executable, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            context = await browser.new_context(
                viewport={"width": 1280, "height": 900},
                locale="en-GB",
                reduced_motion="reduce",  # no animated bar widths to wait out
            )
            page = await context.new_page()
            page.set_default_timeout(10_000)
            seen = Browsing(page)
            page.on(
                "console",
                lambda m: seen.console_errors.append(m.text) if m.type == "error" else None,
            )
            page.on("pageerror", lambda e: seen.page_errors.append(str(e)))
            page.on("request", lambda r: seen.requests.append(r))
            yield seen
            await context.close()
        finally:
            await browser.close()
