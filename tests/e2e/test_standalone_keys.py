"""``warmproxy warm --standalone`` fills a shared Redis under the keys ``warmproxy
serve`` with the same configuration reads, and says which keying it used."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.e2e.test_cli import ROOT, free_port, get, run_cli, wait_http


@contextmanager
def running(*args: str, stderr: Path) -> Iterator[None]:
    """``warmproxy <args>`` as a process, stopped with SIGTERM; it must exit 0."""
    with stderr.open("ab") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "proxy.cli", *args],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        yield
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr.read_text()


@pytest.mark.parametrize(
    ("proxy_section", "says", "client_headers"),
    [
        # A sidecar in front of one site: any name clients use hits.
        ("", "keys: path only (proxy.host_keying = single)", {"Host": "app.default.svc"}),
        # Behind a trusted ingress that names the site in X-Forwarded-Host.
        (
            'host_keying = "per-host"\npublic_host = "shop.example"\n'
            'trusted_proxies = ["127.0.0.0/8"]\n',
            "keys: per host, warming for host shop.example",
            {"X-Forwarded-Host": "shop.example"},
        ),
    ],
    ids=["single", "per-host"],
)
def test_standalone_warm_lands_where_serve_with_the_same_config_hits(
    tmp_path: Path,
    redis_url: str,
    redis_prefix: str,
    proxy_section: str,
    says: str,
    client_headers: dict[str, str],
) -> None:
    origin, listen, control = free_port(), free_port(), free_port()
    config = tmp_path / "warmproxy.toml"
    config.write_text(
        f'[proxy]\norigin = "http://127.0.0.1:{origin}"\n{proxy_section}'
        f'[cache]\nstore = "redis"\nredis_url = "{redis_url}"\nredis_prefix = "{redis_prefix}"\n'
        'ignore_query_params = ["utm_*"]\n'
        f'[state]\ndir = "{tmp_path / "state"}"\n'
    )
    stderr = tmp_path / "stderr"
    with running("demo-origin", "--listen", f"127.0.0.1:{origin}", stderr=stderr):
        wait_http(f"http://127.0.0.1:{origin}/products/1")
        warmed = run_cli(
            "warm",
            "--standalone",
            "--config",
            str(config),
            "--url",
            "/products/3?utm_source=newsletter",
            "--no-progress",
        )
        assert warmed.returncode == 0, warmed.stderr
        assert "completed: 1 warmed, 0 failed of 1" in warmed.stdout
        assert says in warmed.stderr
        assert "query parameters utm_* left out" in warmed.stderr
        with running(
            "serve",
            "--config",
            str(config),
            "--listen",
            f"127.0.0.1:{listen}",
            "--control",
            f"127.0.0.1:{control}",
            stderr=stderr,
        ):
            wait_http(f"http://127.0.0.1:{control}/healthz")
            # A browser's request: the demo origin varies on Accept-Encoding.
            browser = {"Accept-Encoding": "gzip, deflate, br", **client_headers}
            status, headers, body = get(f"http://127.0.0.1:{listen}/products/3", browser)
            assert status == 200 and body
            assert headers["Cache-Status"].startswith("warmproxy; hit"), headers
