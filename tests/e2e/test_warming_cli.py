"""Warming as an operator drives it: ``warmproxy serve`` with a token, the control
API over HTTP, ``warmproxy warm`` with its progress, and a restart that keeps the
posted schedule."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_cli import ROOT, free_port, get, run_cli, wait_http

TOKEN = "e2e-token-0123456789"


BROWSER = {"Accept-Encoding": "gzip, deflate, br, zstd", "Accept-Language": "en-US,en;q=0.9"}


def post(url: str, body: object, token: str | None = TOKEN) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"}
        | ({"Authorization": f"Bearer {token}"} if token else {}),
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def get_json(url: str) -> tuple[int, dict[str, object]]:
    status, _, body = get(url, {"Authorization": f"Bearer {TOKEN}"})
    return status, json.loads(body)


def wait_run(base: str, run_id: object, within: float = 30.0) -> dict[str, object]:
    """The run's progress once it is no longer running."""
    deadline = time.monotonic() + within
    while True:
        _, progress = get_json(f"{base}/progress?run_id={run_id}")
        if progress["status"] != "running":
            return progress
        assert time.monotonic() < deadline, progress
        time.sleep(0.05)


class Served:
    """``warmproxy demo`` (the demo origin with the proxy) as a process, with a token."""

    def __init__(self, tmp_path: Path, env: dict[str, str] | None = None) -> None:
        self.origin, self.listen, self.control = free_port(), free_port(), free_port()
        self.env = env or {}
        self.state = tmp_path / "state"
        self.stderr = tmp_path / "stderr"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def control_url(self) -> str:
        return f"http://127.0.0.1:{self.control}"

    def start(self) -> None:
        with self.stderr.open("ab") as err:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "proxy.cli",
                    "demo",
                    "--origin-port",
                    str(self.origin),
                    "--listen",
                    f"127.0.0.1:{self.listen}",
                    "--control",
                    f"127.0.0.1:{self.control}",
                    "--log-format",
                    "json",
                ],
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env={
                    **os.environ,
                    "WARMPROXY_CONTROL__TOKEN": TOKEN,
                    "WARMPROXY_STATE__DIR": str(self.state),
                    "WARMPROXY_PROXY__PUBLIC_HOST": "shop.example",
                    **self.env,
                },
            )
        wait_http(f"{self.control_url}/healthz")

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    s = Served(tmp_path)
    s.start()
    try:
        yield s
    finally:
        code = s.stop()
    assert code == 0, s.stderr.read_text()


def test_control_api_end_to_end_with_a_token(served: Served) -> None:
    base = f"{served.control_url}/cache/warming"
    status, body = post(f"{base}/warm-key", {"url": "/products/42"}, token=None)
    assert status == 401
    status, body = post(f"{base}/warm-key", {"url": "/products/42", "priority": "high"})
    assert status == 202, body
    progress = wait_run(base, body["run_id"])
    assert progress["status"] == "completed", progress
    # A browser's request (it accepts the gzip the demo origin sends).
    status, headers, _ = get(f"http://127.0.0.1:{served.listen}/products/42", BROWSER)
    assert headers["Cache-Status"].startswith("warmproxy; hit")
    status, body = post(f"{base}/warm-key", {"url": "http://elsewhere.example/x"})
    assert status == 400 and body["field"] == "url"
    status, stats = get_json(f"{base}/stats")
    assert status == 200 and stats["cost_benefit"]["items_warmed"] == 1


def test_warm_command_shows_progress_and_warms_a_file_of_paths(
    served: Served, tmp_path: Path
) -> None:
    paths = tmp_path / "paths.txt"
    paths.write_text("# products\n" + "\n".join(f"/products/{n}" for n in range(1, 31)) + "\n")
    result = run_cli(
        "warm",
        "--file",
        str(paths),
        "--control-url",
        served.control_url,
        "--token",
        TOKEN,
        "--progress",  # stderr is a pipe here: no bar unless asked for
    )
    assert result.returncode == 0, result.stderr
    assert "completed: 30 warmed, 0 failed of 30" in result.stdout
    assert "30/30" in result.stderr  # the progress bar reached the end
    _, headers, _ = get(f"http://127.0.0.1:{served.listen}/products/17", BROWSER)
    assert headers["Cache-Status"].startswith("warmproxy; hit")


def test_warm_command_reports_failures_and_refusals(served: Served) -> None:
    result = run_cli(
        "warm",
        "--url",
        "/error/500",
        "--url",
        "/products/1",
        "--control-url",
        served.control_url,
        "--token",
        TOKEN,
        "--no-progress",
    )
    assert result.returncode == 1
    assert "1 warmed, 1 failed of 2" in result.stdout
    assert "/error/500: origin answered 500" in result.stdout
    refused = run_cli(
        "warm", "--url", "/x", "--control-url", served.control_url, "--token", "wrong"
    )
    assert refused.returncode == 2
    assert "401" in refused.stderr


def test_posted_schedule_survives_a_restart(tmp_path: Path) -> None:
    served = Served(tmp_path)
    served.start()
    base = f"{served.control_url}/cache/warming"
    try:
        plan = {
            "schedule": "15 * * * *",
            "sources": [
                {"name": "sitemap", "source": {"type": "sitemap", "url": "/sitemap.xml"}},
            ],
        }
        status, body = post(f"{base}/schedule", plan)
        assert status == 200, body
        status, started = post(f"{base}/start", {"strategy": "proactive"})
        assert status == 202, started
        progress = wait_run(base, started["run_id"], within=60)
        # The demo sitemap lists the pages a crawler would see.
        assert progress["progress"]["success"] > 300, progress
    finally:
        assert served.stop() == 0
    served.start()
    try:
        status, restored = get_json(f"{base}/schedule")
        assert status == 200
        assert restored["schedule"] == "15 * * * *"
        assert [s["name"] for s in restored["sources"]] == ["sitemap"]
    finally:
        assert served.stop() == 0


def test_standalone_warm_fills_a_shared_redis(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    """No proxy running: ``warm --standalone`` fills the Redis the proxies will share."""
    import redis

    served = Served(tmp_path)  # only for its demo origin
    served.start()
    try:
        result = run_cli(
            "warm",
            "--standalone",
            "--origin",
            f"http://127.0.0.1:{served.origin}",
            "--store",
            "redis",
            "--redis-url",
            redis_url,
            "--redis-prefix",
            redis_prefix,
            "--url",
            "/products/1",
            "--url",
            "/products/2",
            env={"WARMPROXY_PROXY__PUBLIC_HOST": "shop.example"},
        )
    finally:
        assert served.stop() == 0
    assert result.returncode == 0, result.stderr
    assert "completed: 2 warmed, 0 failed of 2" in result.stdout
    client = redis.Redis.from_url(redis_url)
    try:
        keys = {k.decode() for k in client.scan_iter(f"{redis_prefix}*")}
    finally:
        client.close()
    assert {f"{redis_prefix}/products/1", f"{redis_prefix}/products/2"} <= keys
