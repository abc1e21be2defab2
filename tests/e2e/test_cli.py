"""``warmproxy`` as a user runs it: a real process, real ports, real signals."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy.cli", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )


def wait_http(url: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.05)
    raise AssertionError(f"{url} did not answer in {timeout}s")


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@dataclass
class Demo:
    """A running ``warmproxy demo``: its ports and where its stderr goes."""

    listen: int
    control: int
    stderr: Path


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    """``warmproxy demo`` on free ports: the demo origin with the proxy in front.

    It must stop cleanly (exit 0) on SIGTERM.
    """
    origin, listen, control = free_port(), free_port(), free_port()
    stderr = tmp_path / "stderr"
    with stderr.open("wb") as err:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "proxy.cli",
                "demo",
                "--origin-port",
                str(origin),
                "--listen",
                f"127.0.0.1:{listen}",
                "--control",
                f"127.0.0.1:{control}",
                "--log-format",
                "json",
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        try:
            wait_http(f"http://127.0.0.1:{control}/healthz")
            yield Demo(listen, control, stderr)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    assert process.returncode == 0, stderr.read_text()


def test_demo_serves_a_miss_then_a_hit_and_counts_them(demo: Demo) -> None:
    listen, control = demo.listen, demo.control
    status, headers, body = get(f"http://127.0.0.1:{listen}/products/1")
    assert status == 200 and body
    assert "fwd=uri-miss" in headers["Cache-Status"]
    status, headers, _ = get(f"http://127.0.0.1:{listen}/products/1")
    assert headers["Cache-Status"].startswith("warmproxy; hit")
    _, _, metrics = get(f"http://127.0.0.1:{control}/metrics")
    assert b'warmproxy_requests_total{method="GET",outcome="hit"} 1.0' in metrics
    status, _, _ = get(f"http://127.0.0.1:{control}/readyz")
    assert status == 200


def test_serve_with_an_invalid_value_stops_naming_the_key() -> None:
    result = run_cli("serve", "--origin", "ftp://nowhere")
    assert result.returncode == 2
    assert "proxy.origin" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_with_an_invalid_config_file_names_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[cache]\nmax_bytes = "lots"\nunknown_key = 1\n')
    result = run_cli("serve", "--config", str(config))
    assert result.returncode == 2
    assert "cache.max_bytes" in result.stderr and "cache.unknown_key" in result.stderr


def test_environment_variable_names_the_key_too() -> None:
    result = run_cli("serve", env={"WARMPROXY_CACHE__STORE": "disk"})
    assert result.returncode == 2
    assert "cache.store" in result.stderr


def test_invalid_cli_choice_is_refused() -> None:
    result = run_cli("serve", "--store", "disk")
    assert result.returncode == 2
    assert "--store" in result.stderr


def test_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(
            "serve", "--listen", f"127.0.0.1:{port}", "--control", f"127.0.0.1:{free_port()}"
        )
    assert result.returncode == 1
    assert "cannot start" in result.stderr


def test_the_documented_default_config_is_valid_and_complete() -> None:
    """config/warmproxy.toml documents every key with its default value."""
    import tomllib

    from proxy.config import Settings, load_settings

    documented = tomllib.loads((ROOT / "config" / "warmproxy.toml").read_text())
    loaded = load_settings(ROOT / "config" / "warmproxy.toml")
    defaults = Settings().model_dump()
    for section, values in defaults.items():
        assert set(documented[section]) == set(values), section
    assert loaded.model_dump() == defaults


def test_a_malformed_request_is_one_log_line_not_a_traceback(demo: Demo) -> None:
    with socket.create_connection(("127.0.0.1", demo.listen), timeout=5) as sock:
        sock.sendall(b"GET /\x00bad HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(100).split(b" ")[1] == b"400"
    deadline = time.monotonic() + 10
    while "malformed request rejected" not in (log := demo.stderr.read_text()):
        assert time.monotonic() < deadline, log
        time.sleep(0.05)
    assert "Traceback" not in log


def test_the_readme_config_examples_are_valid(tmp_path: Path) -> None:
    import re

    from proxy.config import load_settings

    blocks = re.findall(r"```toml\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    assert blocks
    for n, block in enumerate(blocks):
        path = tmp_path / f"example{n}.toml"
        path.write_text(block)
        load_settings(path)
