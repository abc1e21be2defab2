"""The control API against its own OpenAPI document, by schemathesis.

Schemathesis reads the document the running proxy serves and sends a few
thousand requests made from it, valid and invalid: every answer must have a
documented status, the documented content type and a body that fits the
documented schema; no 5xx; invalid bodies refused, valid ones not.  The proxy
runs on its own event loop in a thread (schemathesis calls are blocking), in
front of a local origin that answers every path: no warm fetch leaves the
machine.  ``bench/api_fuzz.py`` runs the same for longer.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from proxy.app import Warmproxy
from proxy.config import load_settings

schemathesis = pytest.importorskip("schemathesis")

TOKEN = "fuzz-token-0123456789abcdef"
#: Source types a generated schedule must not use here: a SQL source would
#: connect to whatever DSN was generated, a file source read whatever path.
UNSAFE_SOURCES = frozenset({"sql", "file"})
#: Schema-valid requests the API may still refuse with a 400: what JSON Schema
#: cannot say.  (operation, the refused field, the error), as regular expressions.
SEMANTIC_REFUSALS: tuple[tuple[str, str, str], ...] = (
    # Names of the sources in the schedule in force.
    ("POST /cache/warming/start", r"sources", r"no source named .*"),
    # Hosts other than the configured origin, and names that are not hosts.
    (
        "POST /cache/warming/warm-key",
        r"url|urls\[\d+\]",
        r"(not a valid host|not a URL|.* is not the configured origin).*",
    ),
    # Names of sources, unique in a schedule.
    ("POST /cache/warming/schedule", r"body", r".*two sources are named .*"),
    # Cron expressions.
    ("POST /cache/warming/schedule", r"(sources\.\d+\.)?schedule", r".*cron expression.*"),
    # The schedule model's checks of paths on the origin (its schema has no pattern).
    (
        "POST /cache/warming/schedule",
        r"sources\.\d+\.source\.\w+\.(url|paths(\.\d+)?|key_pattern)",
        r".*must be a path.*",
    ),
)
#: What may answer valid and invalid data: schemathesis' defaults, and 413 for
#: both (no schema bounds a body's bytes, and a body of 10,001 long paths is
#: over the 4 MiB limit before it is invalid).  5xx is the not_a_server_error
#: check's to report.
VALID_DATA_ANSWERS = ["2xx", "3xx", "401", "403", "404", "409", "413", "429", "5xx"]
INVALID_DATA_ANSWERS = [
    *("400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"),
    "5xx",
]


@dataclass
class Served:
    """The proxy and its local origin, running on a thread of their own."""

    control_url: str
    origin_requests: int = 0


@contextmanager
def served(tmp_path: Path) -> Iterator[Served]:
    """Serve a local origin and the proxy in front of it until the block ends."""
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def main() -> None:
        stop = asyncio.Event()
        state["stop"] = stop
        state["loop"] = asyncio.get_running_loop()
        seen = state["served"] = Served("")

        async def answer(request: web.BaseRequest) -> web.StreamResponse:
            seen.origin_requests += 1
            return web.Response(text="warm", headers={"Cache-Control": "public, max-age=60"})

        runner = web.ServerRunner(web.Server(answer))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        origin = f"http://127.0.0.1:{runner.addresses[0][1]}"
        proxy = Warmproxy(
            load_settings(
                None,
                {
                    "proxy": {"origin": origin, "listen": "127.0.0.1:0"},
                    "control": {"listen": "127.0.0.1:0", "token": TOKEN},
                    "state": {"dir": str(tmp_path / "state")},
                    # No scheduled firing: a posted schedule runs only when started.
                    "strategies": {"proactive": {"enabled": False}},
                    "execution": {"rate_limit": 0, "retry_attempts": 0, "timeout": 5},
                },
            )
        )
        await proxy.start()
        try:
            seen.control_url = f"http://127.0.0.1:{proxy.control_port}"
            ready.set()
            await stop.wait()
        finally:
            await proxy.stop()
            await runner.cleanup()

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # reported to the test below
            state["error"] = exc
            ready.set()

    thread = threading.Thread(target=run, name="served-proxy", daemon=True)
    thread.start()
    assert ready.wait(30), "the proxy did not start"
    if "error" in state:
        raise state["error"]
    try:
        yield state["served"]
    finally:
        state["loop"].call_soon_threadsafe(state["stop"].set)
        thread.join(30)
        assert not thread.is_alive(), "the proxy did not stop"


@dataclass
class FuzzResult:
    """What a schemathesis run did."""

    operations: int = 0
    documented_operations: int = 0
    cases: int = 0
    cases_with_failures: int = 0
    errored_cases: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)


def _names_unsafe_source(body: Any) -> bool:
    if isinstance(body, dict):
        if isinstance(body.get("type"), str) and body["type"] in UNSAFE_SOURCES:
            return True
        return any(_names_unsafe_source(v) for v in body.values())
    if isinstance(body, list):
        return any(_names_unsafe_source(v) for v in body)
    return False


def _semantic_refusal(operation: str, response: Any) -> bool:
    """Whether ``response`` is one of :data:`SEMANTIC_REFUSALS`."""
    if response.status_code != 400:
        return False
    try:
        body = json.loads(response.content)
    except ValueError:
        return False
    field_name, error = str(body.get("field", "")), str(body.get("error", ""))
    return any(
        operation == refused
        and re.fullmatch(field_pattern, field_name)
        and re.fullmatch(error_pattern, error, re.DOTALL)
        for refused, field_pattern, error_pattern in SEMANTIC_REFUSALS
    )


def fuzz(control_url: str, *, max_examples: int, seed: int | None = None) -> FuzzResult:
    """Run schemathesis (every phase, valid and invalid data) against the
    document ``control_url`` serves."""
    from schemathesis.config import SchemathesisConfig
    from schemathesis.engine import events, from_schema
    from schemathesis.engine.statistic import Statistic
    from schemathesis.openapi.checks import RejectedPositiveData

    request = urllib.request.Request(
        f"{control_url}/cache/warming/openapi.json",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        document = json.loads(response.read())
    config: dict[str, Any] = {
        "base-url": control_url,
        "headers": {"Authorization": f"Bearer {TOKEN}"},
        # Nothing written outside the test's own directories.
        "cache": {"enabled": False},
        "generation": {"max-examples": max_examples, "database": "none"},
        "checks": {
            "positive_data_acceptance": {"expected-statuses": VALID_DATA_ANSWERS},
            "negative_data_rejection": {"expected-statuses": INVALID_DATA_ANSWERS},
        },
    }
    if seed is not None:
        config["seed"] = seed
    schema = schemathesis.openapi.from_dict(document, config=SchemathesisConfig.from_dict(config))

    def filter_case(context: Any, case: Any) -> bool:
        return not _names_unsafe_source(case.body)

    def filter_failure(context: Any, failure: Any, case: Any, response: Any) -> bool:
        return not (
            isinstance(failure, RejectedPositiveData)
            and _semantic_refusal(case.operation.label, response)
        )

    def after_call(context: Any, case: Any, response: Any) -> None:
        result.statuses[response.status_code] = result.statuses.get(response.status_code, 0) + 1

    for hook in (filter_case, filter_failure, after_call):
        schema.hook(hook)
    result = FuzzResult()
    result.documented_operations = sum(len(methods) for methods in document["paths"].values())
    statistic = Statistic()
    started = time.perf_counter()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished) and event.is_test_scenario:
            statistic.on_scenario_finished(event.recorder)
        elif isinstance(event, events.NonFatalError):
            result.errors.append(f"{event.label}: {event.value!r}"[:2000])
        elif isinstance(event, events.FatalError):
            raise event.exception
    result.seconds = time.perf_counter() - started
    result.operations = len(statistic.tested_operations | statistic.errored_operations)
    result.cases = statistic.total_cases
    result.cases_with_failures = statistic.cases_with_failures
    result.errored_cases = statistic.errored_cases
    for label, grouped in statistic.failures.items():
        for group in grouped.values():
            for failure in group.failures:
                result.failures.append(f"{label}: {failure.title}: {failure.message}"[:2000])
    return result


@pytest.mark.timeout(240)
def test_the_control_api_keeps_to_its_openapi_document(tmp_path: Path) -> None:
    with served(tmp_path) as proxy:
        # About 2,000 cases, 30 to 40 s on one core.
        result = fuzz(proxy.control_url, max_examples=100, seed=1)
    assert result.failures == [], "\n".join(result.failures)
    assert result.errors == [], "\n".join(result.errors)
    assert result.operations == result.documented_operations, result
    assert result.cases >= 1500, result
    assert not any(status >= 500 for status in result.statuses), result.statuses
    assert proxy.origin_requests > 0  # warm runs were made, to the local origin
