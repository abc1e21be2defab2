"""``warmproxy reload``: make a running proxy read its configuration again.

It calls ``POST /cache/warming/reload`` on the control API (found as
``warmproxy warm`` finds it) and prints what was applied and what needs a
restart.  Exit status: 0 when everything changed was applied, 1 when some
changed settings need a restart (or the control API cannot be reached), 2
when the reload was refused (invalid configuration, wrong token).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

import aiohttp

from proxy.config import Settings

#: Seconds to wait for the answer (the proxy builds the new warmer parts).
TIMEOUT_SECONDS = 60.0


def run_reload_command(args: argparse.Namespace, settings: Settings) -> int:
    base = (args.control_url or f"http://{settings.control.listen}").rstrip("/")
    token = (
        args.token
        or settings.control.token.get_secret_value()
        or os.environ.get("WARMPROXY_CONTROL__TOKEN", "")
    )
    try:
        status, answer = asyncio.run(_post(f"{base}/cache/warming/reload", token))
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        print(f"warmproxy: cannot reach the control API: {exc}", file=sys.stderr)
        return 1
    if status != 200 or not isinstance(answer, dict):
        error = answer.get("error", answer) if isinstance(answer, dict) else answer
        print(f"warmproxy: reload refused ({status}): {error}", file=sys.stderr)
        errors = answer.get("errors", []) if isinstance(answer, dict) else []
        for line in errors:
            print(line, file=sys.stderr)
        return 2
    applied, restart = answer["applied"], answer["restart_required"]
    if not applied and not restart:
        print("the configuration has not changed")
    if applied:
        print(f"applied: {', '.join(applied)}")
    if restart:
        print(f"need a restart (left as they were): {', '.join(restart)}")
    return 1 if restart else 0


async def _post(url: str, token: str) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_SECONDS)
    async with (
        aiohttp.ClientSession(headers=headers, timeout=timeout) as session,
        session.post(url) as response,
    ):
        if response.content_type != "application/json":
            return response.status, (await response.text())[:200]
        return response.status, await response.json()
