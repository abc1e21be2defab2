"""Where ``warmproxy`` processes keep their state: a directory of their own, one
process per directory, and a demo that starts fresh."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from proxy.config import load_settings
from tests.e2e.test_cli import ROOT, free_port, get, run_cli, wait_http
from tests.e2e.test_warming_cli import Served, get_json, post, wait_run


def serve(*args: str, stderr: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``warmproxy serve`` as a process (its environment: this test's, plus ``env``)."""
    with stderr.open("ab") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "proxy.cli", "serve", "--log-format", "json", *args],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env={**os.environ, **(env or {})},
        )


def stop(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def test_a_second_serve_on_the_same_state_dir_exits_2_and_the_first_serves_on(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    control = free_port()
    first = serve(
        "--origin",
        f"http://127.0.0.1:{free_port()}",
        "--listen",
        f"127.0.0.1:{free_port()}",
        "--control",
        f"127.0.0.1:{control}",
        stderr=tmp_path / "first.stderr",
        env={"WARMPROXY_STATE__DIR": str(state)},
    )
    try:
        wait_http(f"http://127.0.0.1:{control}/healthz")
        second = run_cli(
            "serve",
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--control",
            f"127.0.0.1:{free_port()}",
            env={"WARMPROXY_STATE__DIR": str(state)},
        )
        assert second.returncode == 2, second.stderr
        assert f"state directory {state} is in use" in second.stderr
        assert f"(pid {first.pid})" in second.stderr
        assert "Traceback" not in second.stderr
        status, _, _ = get(f"http://127.0.0.1:{control}/readyz")
        assert status == 200 and first.poll() is None
    finally:
        code = stop(first)
    assert code == 0, (tmp_path / "first.stderr").read_text()
    assert (state / "effectiveness.json").exists()


def test_serve_on_default_settings_keeps_state_under_xdg_state_home(
    tmp_path: Path, state_home: Path
) -> None:
    origin, listen, control = free_port(), free_port(), free_port()
    config = tmp_path / "warmproxy.toml"
    config.write_text(
        f'[proxy]\norigin = "http://127.0.0.1:{origin}"\nlisten = "127.0.0.1:{listen}"\n'
        f'[control]\nlisten = "127.0.0.1:{control}"\n'
    )
    expected = load_settings(config).state.path()
    assert expected.parent == state_home / "warmproxy"
    checked = run_cli("check-config", str(config))
    assert checked.returncode == 0, checked.stderr
    assert f"# State directory in effect: {expected}\n" in checked.stdout
    as_json = run_cli("check-config", str(config), "--json")
    assert json.loads(as_json.stdout)["effective_state_dir"] == str(expected)

    process = serve("--config", str(config), stderr=tmp_path / "stderr")
    try:
        wait_http(f"http://127.0.0.1:{control}/healthz")
    finally:
        assert stop(process) == 0, (tmp_path / "stderr").read_text()
    assert {"lock", "effectiveness.json"} <= {p.name for p in expected.iterdir()}
    assert list((state_home / "warmproxy").iterdir()) == [expected]
    assert not (Path.home() / ".local" / "state" / "warmproxy" / expected.name).exists()
    logged = [json.loads(line) for line in (tmp_path / "stderr").read_text().splitlines()]
    assert {"event": "state directory", "path": str(expected)}.items() <= next(
        e for e in logged if e["event"] == "state directory"
    ).items()


def warm_fetches(base: str) -> Any:
    """Origin fetches made by warming, as the effectiveness ledger counts them."""
    stats: Any = get_json(f"{base}/stats")[1]
    return stats["cost_benefit"]["origin_fetches"]


def test_the_demo_starts_fresh_and_leaves_no_state_behind(tmp_path: Path, state_home: Path) -> None:
    served = Served(tmp_path)
    # Where `warmproxy serve` with the demo's settings keeps its state: an
    # earlier run's figures and posted schedule are left there.
    earlier = load_settings(
        None,
        {
            "proxy": {
                "origin": f"http://127.0.0.1:{served.origin}",
                "listen": f"127.0.0.1:{served.listen}",
            },
        },
    ).state.path()
    served.env = {"WARMPROXY_STATE__DIR": str(earlier)}
    base = f"{served.control_url}/cache/warming"
    served.start()
    try:
        status, run = post(f"{base}/warm-key", {"url": "/products/1"})
        assert status == 202, run
        assert wait_run(base, run["run_id"])["status"] == "completed"
        assert warm_fetches(base) == 1
        status, body = post(
            f"{base}/schedule",
            {"sources": [{"name": "earlier", "source": {"type": "urls", "paths": ["/"]}}]},
        )
        assert status == 200, body
    finally:
        assert served.stop() == 0
    left = {p.name: p.read_bytes() for p in earlier.iterdir() if p.name != "lock"}
    assert {"effectiveness.json", "schedule.json"} <= set(left)

    served.env = {"WARMPROXY_STATE__DIR": ""}  # the default: no state.dir given
    served.start()
    try:
        assert warm_fetches(base) == 0  # the earlier run's figures are not read
        schedule: Any = get_json(f"{base}/schedule")[1]
        assert schedule["origin"] == "config"
        assert "earlier" not in [s["name"] for s in schedule["sources"]]
        fresh = [p for p in (state_home / "warmproxy").iterdir() if p.name.startswith("demo-")]
        assert len(fresh) == 1
    finally:
        assert served.stop() == 0
    assert not fresh[0].exists()  # removed at exit
    assert sorted((state_home / "warmproxy").iterdir()) == [earlier]
    assert {p.name: p.read_bytes() for p in earlier.iterdir() if p.name != "lock"} == left
