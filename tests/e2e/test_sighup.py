"""Reload without restart as an operator does it: ``warmproxy serve --config FILE``
as a process, the file edited, then SIGHUP, ``warmproxy reload`` or
``POST /cache/warming/reload``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from tests.e2e.test_cli import ROOT, free_port, get, run_cli, wait_http

TOKEN = "e2e-reload-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Serving:
    """``warmproxy serve --config FILE`` in front of the demo origin."""

    config: Path
    stderr: Path
    listen: int
    control: int
    process: subprocess.Popen[bytes]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.control}/cache/warming"

    def write(self, document: dict[str, Any]) -> None:
        self.config.write_text(tomli_w.dumps(document))

    def log_events(self) -> list[dict[str, Any]]:
        lines = self.stderr.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def wait_for_log(self, prefix: str, seen: int, within: float = 15.0) -> dict[str, Any]:
        """The first log event after the first ``seen`` whose message starts with ``prefix``."""
        deadline = time.monotonic() + within
        while True:
            for event in self.log_events()[seen:]:
                if str(event.get("event", "")).startswith(prefix):
                    return event
            assert self.process.poll() is None, self.stderr.read_text()[-2000:]
            assert time.monotonic() < deadline, f"no {prefix!r} logged"
            time.sleep(0.05)

    def schedule(self) -> dict[str, Any]:
        status, _, body = get(f"{self.base}/schedule", AUTH)
        assert status == 200, body
        document: dict[str, Any] = json.loads(body)
        return document


def config_document(origin: int, listen: int, control: int, cron: str) -> dict[str, Any]:
    return {
        "proxy": {"origin": f"http://127.0.0.1:{origin}", "listen": f"127.0.0.1:{listen}"},
        "control": {"listen": f"127.0.0.1:{control}"},
        "logging": {"format": "json"},
        "strategies": {
            "proactive": {
                "schedule": cron,
                "data_sources": [
                    {"name": "products", "source": {"type": "urls", "paths": ["/products/1"]}}
                ],
            }
        },
    }


@pytest.fixture
def serving(tmp_path: Path) -> Iterator[Serving]:
    origin, listen, control = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "WARMPROXY_CONTROL__TOKEN": TOKEN,
        "WARMPROXY_STATE__DIR": str(tmp_path / "state"),
    }
    demo_origin = subprocess.Popen(
        [sys.executable, "-m", "proxy.cli", "demo-origin", "--listen", f"127.0.0.1:{origin}"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    config = tmp_path / "warmproxy.toml"
    config.write_text(tomli_w.dumps(config_document(origin, listen, control, "0 3 * * *")))
    stderr = tmp_path / "stderr"
    try:
        wait_http(f"http://127.0.0.1:{origin}/products/1")
        with stderr.open("ab") as err:
            process = subprocess.Popen(
                [sys.executable, "-m", "proxy.cli", "serve", "--config", str(config)],
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=env,
            )
        served = Serving(config, stderr, listen, control, process)
        try:
            wait_http(f"http://127.0.0.1:{control}/healthz")
            yield served
        finally:
            process.send_signal(signal.SIGTERM)
            code = process.wait(20)
        assert code == 0, stderr.read_text()[-2000:]
    finally:
        demo_origin.send_signal(signal.SIGTERM)
        demo_origin.wait(10)


def _through_proxy(port: int, n: int) -> int:
    """Status of a GET of a demo page through the proxy (0: no answer at all)."""
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/products/{n % 50 + 1}", timeout=10
        ) as r:
            r.read()
            return int(r.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code
    except OSError:
        return 0


def test_sighup_applies_the_new_schedule_under_load_and_keeps_the_rest(
    serving: Serving,
) -> None:
    assert serving.schedule()["schedule"] == "0 3 * * *"
    document = read_toml(serving.config)

    # The file's schedule changes; SIGHUP while a few hundred requests run.
    document["strategies"]["proactive"]["schedule"] = "*/20 * * * *"
    document["strategies"]["proactive"]["data_sources"].append(
        {"name": "articles", "source": {"type": "urls", "paths": ["/articles/1"]}}
    )
    serving.write(document)
    seen = len(serving.log_events())
    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = pool.map(_through_proxy, [serving.listen] * 400, range(400))
        time.sleep(0.05)
        serving.process.send_signal(signal.SIGHUP)
        results = list(statuses)
    assert results.count(200) == 400, sorted(set(results))
    applied = serving.wait_for_log("reload: applied", seen)
    assert "strategies.proactive.schedule" in applied["applied"]
    schedule = serving.schedule()
    assert schedule["schedule"] == "*/20 * * * *"
    assert [s["name"] for s in schedule["sources"]] == ["products", "articles"]
    assert schedule["origin"] == "config"

    # An invalid file: nothing changes, the error is logged, the proxy serves.
    serving.config.write_text(serving.config.read_text() + "\n[execution]\nparallelism = 0\n")
    seen = len(serving.log_events())
    serving.process.send_signal(signal.SIGHUP)
    refused = serving.wait_for_log("reload refused", seen)
    assert "execution.parallelism" in refused["event"]
    assert any("execution.parallelism" in line for line in refused["errors"])
    # The same lines as `warmproxy check-config` prints for the file.
    checked = run_cli("check-config", str(serving.config), env={"WARMPROXY_CONTROL__TOKEN": TOKEN})
    assert checked.returncode == 2
    assert refused["event"].endswith(checked.stderr.strip())
    assert serving.schedule()["schedule"] == "*/20 * * * *"
    assert _through_proxy(serving.listen, 1) == 200

    # The proxy listener moved in the file: logged as needing a restart, and
    # the listener stays where it is.
    moved = free_port()
    document["proxy"]["listen"] = f"127.0.0.1:{moved}"
    document["execution"] = {"parallelism": 4}
    serving.write(document)
    seen = len(serving.log_events())
    serving.process.send_signal(signal.SIGHUP)
    restart = serving.wait_for_log("reload: these settings need a restart", seen)
    assert restart["event"] == (
        "reload: these settings need a restart and were left as they were: proxy.listen"
    )
    assert serving.wait_for_log("reload: applied", seen)["applied"] == ["execution.parallelism"]
    assert _through_proxy(serving.listen, 2) == 200
    assert _through_proxy(moved, 2) == 0
    _, _, body = get(f"{serving.base}/status", AUTH)
    assert json.loads(body)["executor"]["concurrency_limit"] == 4


def test_reload_endpoint_and_command(serving: Serving) -> None:
    document = read_toml(serving.config)
    document["strategies"]["exclude"] = ["/private/*"]
    serving.write(document)

    request = urllib.request.Request(f"{serving.base}/reload", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    refused.value.close()
    assert refused.value.code == 401  # bearer-protected like the rest

    request = urllib.request.Request(f"{serving.base}/reload", method="POST", headers=AUTH)
    with urllib.request.urlopen(request, timeout=30) as response:
        assert json.loads(response.read()) == {
            "applied": ["strategies.exclude"],
            "restart_required": [],
        }
    status, _, _ = get(f"{serving.base}/schedule", AUTH)
    assert status == 200

    env = {"WARMPROXY_CONTROL__TOKEN": TOKEN}
    control = ["--control-url", f"http://127.0.0.1:{serving.control}"]
    document["strategies"]["reactive"] = {"threshold": 3}
    serving.write(document)
    result = run_cli("reload", *control, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "applied: strategies.reactive.threshold\n"

    result = run_cli("reload", *control, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "the configuration has not changed\n"

    document["cache"] = {"max_bytes": "1MiB"}
    serving.write(document)
    result = run_cli("reload", *control, env=env)
    assert result.returncode == 1
    assert result.stdout == "need a restart (left as they were): cache.max_bytes\n"

    # The log level applies at once: the reload's own info line is no longer written.
    document["logging"]["level"] = "warning"
    document["strategies"]["reactive"] = {"threshold": 5}
    serving.write(document)
    seen = len(serving.log_events())
    result = run_cli("reload", *control, env=env)
    assert result.returncode == 1
    assert result.stdout.splitlines()[0] == (
        "applied: logging.level, strategies.reactive.threshold"
    )
    serving.wait_for_log("reload: these settings need a restart", seen)
    assert not [e for e in serving.log_events()[seen:] if e["level"] == "info"]

    serving.config.write_text("[strategies.reactive]\nthreshold = 'many'\n")
    result = run_cli("reload", *control, env=env)
    assert result.returncode == 2
    assert "configuration not reloaded; nothing changed" in result.stderr
    assert "strategies.reactive.threshold" in result.stderr

    result = run_cli("reload", *control, "--token", "wrong-token-0123456789", env=env)
    assert result.returncode == 2
    assert "401" in result.stderr


def read_toml(path: Path) -> dict[str, Any]:
    return tomllib.loads(path.read_text())
