"""``warmproxy check-config`` and ``warmproxy demo-origin`` as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

from proxy.config import load_settings
from tests.e2e.test_cli import ROOT, free_port, get, run_cli, wait_http


def test_a_valid_file_prints_settings_that_read_back_the_same(tmp_path: Path) -> None:
    config = tmp_path / "warmproxy.toml"
    config.write_text(
        '[proxy]\norigin = "http://app:8000"\n'
        '[cache]\nstore = "redis"\nredis_url = "redis://:hunter2@redis:6379/0"\n'
        '[control]\nlisten = "0.0.0.0:8081"\ntoken = "s3cret-0123456789abcdef"\n'
    )
    result = run_cli("check-config", str(config), env={"WARMPROXY_EXECUTION__PARALLELISM": "3"})
    assert result.returncode == 0, result.stderr
    assert "s3cret-0123456789abcdef" not in result.stdout and "hunter2" not in result.stdout
    printed = tomllib.loads(result.stdout)
    assert printed["proxy"]["origin"] == "http://app:8000"
    assert printed["execution"]["parallelism"] == 3  # the environment applies
    assert printed["cache"]["redis_url"] == "redis://:********@redis:6379/0"
    # Apart from the masked secrets, the output is a config meaning the same.
    printed["control"]["token"] = "s3cret-0123456789abcdef"
    printed["cache"]["redis_url"] = "redis://:hunter2@redis:6379/0"
    again = tmp_path / "again.toml"
    again.write_text(result.stdout.replace("********", "x"))
    reread = load_settings(None, printed)
    assert (
        reread.model_dump() == load_settings(config, {"execution": {"parallelism": 3}}).model_dump()
    )


def test_json_output_and_the_shipped_default_config(tmp_path: Path) -> None:
    result = run_cli("check-config", str(ROOT / "config" / "warmproxy.toml"), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["control"]["token"] == ""
    assert data["strategies"]["reactive"]["threshold"] == 10


def test_a_bad_file_names_every_offending_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[proxy]\norigin = "ftp://x"\nbogus = 1\n[execution]\nparallelism = 0\n')
    result = run_cli("check-config", str(config))
    assert result.returncode == 2
    assert result.stdout == ""
    for key in ("proxy.origin", "proxy.bogus", "execution.parallelism"):
        assert key in result.stderr
    missing = run_cli("check-config", str(tmp_path / "nope.toml"))
    assert missing.returncode == 2 and "no config file" in missing.stderr
    broken = tmp_path / "broken.toml"
    broken.write_text("[proxy\n")
    result = run_cli("check-config", str(broken))
    assert result.returncode == 2 and "invalid TOML" in result.stderr


def test_demo_origin_runs_alone() -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "proxy.cli", "demo-origin", "--listen", f"127.0.0.1:{port}"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/products/1")
        status, headers, body = get(f"http://127.0.0.1:{port}/products/1")
        assert status == 200 and b"<title>" in body
        assert "max-age" in headers["Cache-Control"]
    finally:
        process.terminate()
        assert process.wait(10) == 0
