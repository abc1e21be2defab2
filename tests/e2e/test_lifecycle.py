"""SIGTERM as an orchestrator sends it: not ready first, in-flight requests
finish, the warm run stops, state is saved, and a restart continues from it."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from tests.e2e.test_cli import get
from tests.e2e.test_warming_cli import Served, get_json, post, wait_run


def test_sigterm_drains_stops_the_run_saves_state_and_a_restart_continues(
    tmp_path: Path,
) -> None:
    served = Served(
        tmp_path,
        env={"WARMPROXY_PROXY__SHUTDOWN_DELAY": "1.5", "WARMPROXY_LOGGING__ACCESS_LOG": "true"},
    )
    served.start()
    base = f"{served.control_url}/cache/warming"
    proxy = f"http://127.0.0.1:{served.listen}"
    assert served.process is not None
    try:
        status, body = post(f"{base}/warm-key", {"urls": [f"/products/{n}" for n in range(1, 6)]})
        assert status == 202, body
        assert wait_run(base, body["run_id"])["status"] == "completed"
        for n in range(1, 4):  # three warmed entries used
            # As a browser asks (it accepts the gzip the demo origin sends).
            browser = {"X-Request-Id": f"req-{n}", "Accept-Encoding": "gzip, deflate, br, zstd"}
            _, headers, _ = get(f"{proxy}/products/{n}", browser)
            assert headers["Cache-Status"].startswith("warmproxy; hit")
        # A slow warm run, still running at SIGTERM.
        status, slow_run = post(f"{base}/warm-key", {"urls": [f"/slow/{n}" for n in range(8, 40)]})
        assert status == 202, slow_run
        # A user request in flight at SIGTERM (2 s at the origin).
        in_flight: dict[str, object] = {}

        def slow_request() -> None:
            status, _, body = get(f"{proxy}/slow/20")
            in_flight.update(status=status, body=body)

        thread = threading.Thread(target=slow_request)
        thread.start()
        time.sleep(0.3)
        served.process.send_signal(15)
        deadline = time.monotonic() + 1.0
        while get(f"{served.control_url}/readyz")[0] != 503:
            assert time.monotonic() < deadline, "/readyz did not turn not-ready"
            time.sleep(0.02)
        # Still draining: new requests are served while load balancers notice.
        status, _, _ = get(f"{proxy}/products/4", {"Accept-Encoding": "gzip, deflate, br"})
        assert status == 200
        thread.join(10)
        assert in_flight["status"] == 200
        assert b"Slow page 20" in in_flight["body"]  # type: ignore[operator]
        assert served.process.wait(20) == 0
    finally:
        if served.process.poll() is None:
            served.stop()

    lines = [json.loads(line) for line in served.stderr.read_text().splitlines() if line]
    stopped = [e for e in lines if e.get("event") == "warm run stopped"]
    assert [e["run_id"] for e in stopped] == [slow_run["run_id"]]
    hits = [e for e in lines if e.get("event") == "request" and e.get("cache") == "hit"]
    assert {e["request_id"] for e in hits} >= {"req-1", "req-2", "req-3"}
    events = [e["event"] for e in lines]
    assert events.index("shutting down") < events.index("warm run stopped")
    saved = json.loads((served.state / "effectiveness.json").read_text())
    assert saved["format"] == "warmproxy-effectiveness"

    served.start()
    try:
        status, stats = get_json(f"{base}/stats")
        assert status == 200
        # The counters go on from where they were: the five products and the
        # slow pages warmed before SIGTERM, the four hits on warmed entries
        # (one of them while draining).
        assert stats["cost_benefit"]["origin_fetches"] >= 5
        assert stats["effectiveness"]["hits_gained"] == 4
        assert stats["effectiveness"]["misses_prevented"] == 4
    finally:
        assert served.stop() == 0
