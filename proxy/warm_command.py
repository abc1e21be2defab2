"""``warmproxy warm``: warm a pattern, a file of paths or a few paths, with a progress bar.

Against a running proxy it uses the control API like any other client (the
run is started, then its progress polled until it ends).  ``--standalone``
starts the proxy's fill path in this process (no listeners used by anyone)
and warms the configured store directly, e.g. a shared Redis before the
proxies in front of it start, under the keys ``warmproxy serve`` with the
same configuration reads (it says which on stderr).  Exit status: 0 when
every item was warmed, 1 when some failed, 2 for bad input.

Made for scripts too: the progress bar is drawn only on a terminal (or with
``--progress``), and ``--json`` prints the run's final status document (the
shape of ``GET /cache/warming/progress``) as the only thing on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from typing import Any

import aiohttp
from tqdm import tqdm

from proxy.config import Settings
from warmer.service import BadRequest

POLL_SECONDS = 0.25


def _targets(args: argparse.Namespace) -> list[str] | None:
    if args.url:
        return list(args.url)
    if args.file is None:
        return None
    text = sys.stdin.read() if str(args.file) == "-" else args.file.read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def run_warm_command(args: argparse.Namespace, settings: Settings) -> int:
    try:
        targets = _targets(args)
    except OSError as exc:
        print(f"warmproxy: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    if targets is not None and not targets:
        print("warmproxy: no paths to warm", file=sys.stderr)
        return 2
    try:
        if args.standalone:
            return asyncio.run(_standalone(args, settings, targets))
        return asyncio.run(_remote(args, settings, targets))
    except _Refused as exc:
        print(f"warmproxy: {exc}", file=sys.stderr)
        return 2
    except (aiohttp.ClientError, OSError) as exc:
        print(f"warmproxy: cannot reach the control API: {exc}", file=sys.stderr)
        return 1


class _Refused(Exception):
    """The request was refused (bad input, token, conflict)."""


class _Bar:
    """A tqdm bar fed with run status documents."""

    def __init__(self, enabled: bool) -> None:
        self._bar: tqdm[Any] | None = (
            tqdm(total=0, unit="path", file=sys.stderr, dynamic_ncols=True) if enabled else None
        )

    def update(self, status: dict[str, Any]) -> None:
        if self._bar is None:
            return
        p = status["progress"]
        self._bar.total = p["total_items"]
        self._bar.n = p["completed"]
        self._bar.set_postfix(failed=p["failed"], refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _wants_bar(args: argparse.Namespace) -> bool:
    """``--progress``/``--no-progress``, else a bar only where a person watches:
    a bar redrawn into a log file or a CI console is noise."""
    if args.progress is not None:
        return bool(args.progress)
    return sys.stderr.isatty()


def _summary(status: dict[str, Any], *, as_json: bool = False) -> int:
    p = status["progress"]
    ok = p["failed"] == 0 and status["status"] == "completed"
    if as_json:
        print(json.dumps(status, indent=2))
        return 0 if ok else 1
    perf = status["performance"]
    print(
        f"{status['status']}: {p['success']} warmed, {p['failed']} failed of "
        f"{p['total_items']} ({perf['items_per_second']:.1f}/s)"
    )
    for error in status["errors"][:10]:
        print(f"  {error['key']}: {error['error']} (retries: {error['retry_count']})")
    return 0 if ok else 1


async def _remote(args: argparse.Namespace, settings: Settings, targets: list[str] | None) -> int:
    base = (args.control_url or f"http://{settings.control.listen}").rstrip("/")
    token = (
        args.token
        or settings.control.token.get_secret_value()
        or os.environ.get("WARMPROXY_CONTROL__TOKEN", "")
    )
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body: dict[str, Any] = {}
    if args.priority:
        body["priority"] = args.priority
    if targets is None:
        endpoint, body["pattern"] = "warm-pattern", args.pattern
    else:
        endpoint, body["urls"] = "warm-key", targets
    bar = _Bar(_wants_bar(args))
    try:
        async with aiohttp.ClientSession(headers=headers) as session:
            async with session.post(f"{base}/cache/warming/{endpoint}", json=body) as response:
                answer = await response.json()
                if response.status != 202:
                    raise _Refused(f"{response.status}: {answer.get('error', answer)}")
            run_id = answer["run_id"]
            while True:
                async with session.get(
                    f"{base}/cache/warming/progress", params={"run_id": run_id}
                ) as response:
                    status = await response.json()
                    if response.status != 200:
                        raise _Refused(f"{response.status}: {status.get('error', status)}")
                bar.update(status)
                if status["status"] != "running":
                    break
                await asyncio.sleep(POLL_SECONDS)
    finally:
        bar.close()
    return _summary(status, as_json=args.json)


async def _standalone(
    args: argparse.Namespace, settings: Settings, targets: list[str] | None
) -> int:
    from proxy.app import Warmproxy

    overrides = {
        "proxy": {"listen": "127.0.0.1:0"},
        "control": {"listen": "127.0.0.1:0"},
        # The schedule is the serving proxy's business, not this one-off's.
        "strategies": {
            "proactive": {"enabled": False},
            "reactive": {"enabled": False},
            "predictive": {"enabled": False},
        },
        # A one-off keeps no state: with state.dir empty and the listener on
        # port 0 it gets a directory of its own, removed at exit, so it neither
        # overwrites a serving proxy's model and ledger nor waits for its lock.
        "state": {"dir": ""},
    }
    data = settings.model_dump()
    for section, values in overrides.items():
        data[section].update(values)
    if args.origin:
        data["proxy"]["origin"] = args.origin
    proxy = Warmproxy(Settings.model_validate(data))
    # The entries must land under the keys `serve` with this configuration
    # reads; say which, so a mismatch (e.g. another host) is visible.
    rules = proxy.rules
    query = rules.key_rules.describe()
    print(f"keys: {rules.keying}" + (f"; {query}" if query else ""), file=sys.stderr)
    await proxy.start()
    bar = _Bar(_wants_bar(args))
    try:
        warmer = proxy.warmer
        priority = args.priority or warmer.default_priority
        try:
            if targets is None:
                run = await warmer.warm_pattern(args.pattern, priority, 100_000)
            else:
                run = warmer.warm_urls(targets, priority, "bulk")
        except BadRequest as exc:
            raise _Refused(f"{exc.field}: {exc}") from None
        while not run.done.is_set():
            bar.update(run.progress.to_progress(warmer.now()))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_SECONDS):
                    await run.done.wait()
        status = run.progress.to_progress(warmer.now())
        bar.update(status)
    finally:
        bar.close()
        await proxy.stop()
    return _summary(status, as_json=args.json)
