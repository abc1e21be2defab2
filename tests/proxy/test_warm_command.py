"""``warmproxy warm`` in scripts: ``--json`` alone on stdout, a progress bar only on a
terminal.  The command runs as a real process against a real proxy in this loop."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import pty
import struct
import sys
import termios
from pathlib import Path

from proxy.app import Warmproxy
from tests.proxy.conftest import Origin, ProxyFactory, control_url

ROOT = Path(__file__).resolve().parents[2]
CACHEABLE = {"Cache-Control": "public, max-age=600"}


async def warm(proxy: Warmproxy, *args: str, stderr: int | None = None) -> tuple[int, str, str]:
    """``warmproxy warm --control-url <proxy> ARGS``: exit status, stdout, stderr
    (empty when ``stderr`` is given: it went there)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy.cli",
        "warm",
        "--control-url",
        control_url(proxy, ""),
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE if stderr is None else stderr,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), (err or b"").decode()


async def test_json_prints_the_final_status_and_nothing_else(
    origin: Origin, make_proxy: ProxyFactory
) -> None:
    for n in range(3):
        origin.set(f"/p/{n}", headers=CACHEABLE)
    origin.set("/broken", status=500)
    proxy = await make_proxy(origin.url, execution={"retry_attempts": 0})
    code, out, err = await warm(proxy, "--json", "--url", "/p/0", "--url", "/p/1", "--url", "/p/2")
    assert code == 0, err
    status = json.loads(out)  # the whole of stdout is one JSON document
    assert status["status"] == "completed"
    assert status["progress"]["success"] == 3 and status["progress"]["total_items"] == 3
    assert origin.count("/p/1") == 1

    code, out, err = await warm(proxy, "--json", "--url", "/broken", "--url", "/p/0")
    assert code == 1  # something failed, as without --json
    status = json.loads(out)
    assert status["progress"]["failed"] == 1
    assert [e["key"] for e in status["errors"]] == ["/broken"]


async def test_no_progress_bar_when_stderr_is_not_a_terminal(
    origin: Origin, make_proxy: ProxyFactory
) -> None:
    origin.set("/p/1", headers=CACHEABLE)
    proxy = await make_proxy(origin.url)
    code, out, err = await warm(proxy, "--url", "/p/1")
    assert code == 0, err
    assert "completed: 1 warmed, 0 failed of 1" in out
    assert "1/1" not in err and "path/s" not in err
    # Asked for, it is drawn anyway.
    code, _, err = await warm(proxy, "--progress", "--url", "/p/1")
    assert code == 0 and "1/1" in err


async def test_a_progress_bar_on_a_terminal(origin: Origin, make_proxy: ProxyFactory) -> None:
    origin.set("/p/1", headers=CACHEABLE)
    proxy = await make_proxy(origin.url)
    controller, terminal = pty.openpty()
    # A terminal 80 columns wide (a new pseudo-terminal has no size: no room for a bar).
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    try:
        code, out, _ = await warm(proxy, "--url", "/p/1", stderr=terminal)
        os.close(terminal)
        terminal = -1
        drawn = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the terminal side is closed: all was read
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        if terminal != -1:
            os.close(terminal)
        os.close(controller)
    assert code == 0
    assert "completed: 1 warmed" in out
    assert b"1/1" in drawn
