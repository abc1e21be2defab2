"""``warmproxy serve --workers 2`` as a process: one port, two worker processes,
one cache as far as clients can tell.

Each request goes on a new connection, and the test asks the kernel which
worker process holds the connection's other end, so "a fill on one worker is
a hit on the other" is checked, not assumed.
"""

from __future__ import annotations

import contextlib
import gzip
import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import pytest

from tests.e2e.test_cli import ROOT, free_port
from tests.e2e.test_warming_cli import TOKEN, get_json, post, wait_run


class CountingOrigin:
    """An origin that counts its fetches per path and says which fetch made
    each body (``<path> #<n>``), cacheable for a minute."""

    def __init__(self) -> None:
        self.fetches: Counter[str] = Counter()
        lock = threading.Lock()
        origin = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with lock:
                    origin.fetches[self.path] += 1
                    body = f"{self.path} #{origin.fetches[self.path]}".encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Cache-Control", "max-age=60")
                if self.path.startswith("/varied/"):
                    # Like a compressing app: gzip when accepted, Vary says so.
                    self.send_header("Vary", "Accept-Encoding")
                    if "gzip" in self.headers.get("Accept-Encoding", ""):
                        body = gzip.compress(body, mtime=0)
                        self.send_header("Content-Encoding", "gzip")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Answer:
    worker: int  # pid of the worker process that answered
    cache_status: str
    body: str

    @property
    def hit(self) -> bool:
        return self.cache_status.startswith("warmproxy; hit")


class Workers:
    """``warmproxy serve --workers 2`` in front of a CountingOrigin."""

    def __init__(
        self,
        tmp_path: Path,
        origin: CountingOrigin,
        store_args: list[str],
        env: dict[str, str] | None = None,
    ) -> None:
        # A configuration file for reloads to read again.
        self.config = tmp_path / "warmproxy.toml"
        self.config.write_text("[cache]\nignore_query_params = []\n")
        self.listen, self.control = free_port(), free_port()
        self.stdout = tmp_path / "stdout"
        self.stderr = tmp_path / "stderr"
        with self.stdout.open("wb") as out, self.stderr.open("wb") as err:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "proxy.cli",
                    "serve",
                    "--workers",
                    "2",
                    "--origin",
                    f"http://127.0.0.1:{origin.port}",
                    "--listen",
                    f"127.0.0.1:{self.listen}",
                    "--control",
                    f"127.0.0.1:{self.control}",
                    "--log-format",
                    "json",
                    "--config",
                    str(self.config),
                    *store_args,
                ],
                cwd=ROOT,
                stdout=out,
                stderr=err,
                env={
                    **os.environ,
                    "WARMPROXY_CONTROL__TOKEN": TOKEN,
                    "WARMPROXY_PROXY__SHUTDOWN_DELAY": "0",
                    "WARMPROXY_STATE__DIR": str(tmp_path / "state"),
                    **(env or {}),
                },
            )
        # The supervisor prints the banner once every worker listens.
        deadline = time.monotonic() + 20
        while "2 workers" not in self.stdout.read_text():
            assert self.process.poll() is None, self.stderr.read_text()
            assert time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.05)
        self.base = f"http://127.0.0.1:{self.control}/cache/warming"

    def worker_pids(self) -> set[int]:
        """The live worker processes (not multiprocessing's resource tracker)."""
        children = psutil.Process(self.process.pid).children()
        return {
            c.pid
            for c in children
            if c.is_running()
            and c.status() != psutil.STATUS_ZOMBIE
            and "spawn_main" in " ".join(c.cmdline())
        }

    def primary(self) -> int:
        """The worker with the control listener."""
        for pid in self.worker_pids():
            for c in psutil.Process(pid).net_connections(kind="tcp"):
                if c.status == psutil.CONN_LISTEN and c.laddr.port == self.control:
                    return pid
        raise AssertionError("no worker listens on the control port")

    def get(self, path: str, headers: dict[str, str] | None = None) -> Answer:
        """GET ``path`` on a new connection (with ``headers``: a browser's
        fields, another Host), and which worker answered it."""
        conn = http.client.HTTPConnection("127.0.0.1", self.listen, timeout=10)
        try:
            conn.connect()
            assert conn.sock is not None
            client = conn.sock.getsockname()
            conn.request("GET", path, headers=headers or {})
            response = conn.getresponse()
            raw = response.read()
            if response.headers.get("Content-Encoding") == "gzip":
                raw = gzip.decompress(raw)
            body = raw.decode()
            return Answer(self._holder(client), response.headers["Cache-Status"], body)
        finally:
            conn.close()

    def _holder(self, client: tuple[str, int]) -> int:
        """The worker holding the server end of the connection from ``client``."""
        for pid in self.worker_pids():
            for c in psutil.Process(pid).net_connections(kind="tcp"):
                if c.raddr and (c.raddr.ip, c.raddr.port) == client:
                    return pid
        raise AssertionError(f"no worker holds the connection from {client}")

    def until_both(self, path: str, within: float = 10.0) -> list[Answer]:
        """GET ``path`` on new connections until both workers answered."""
        answers: list[Answer] = []
        deadline = time.monotonic() + within
        while len({a.worker for a in answers}) < 2:
            assert time.monotonic() < deadline, f"one worker answered everything: {answers}"
            answers.append(self.get(path))
        return answers

    def requests_counted(self) -> int:
        """``warmproxy_requests_total`` summed, as the primary's /metrics shows it."""
        conn = http.client.HTTPConnection("127.0.0.1", self.control, timeout=10)
        conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        text = conn.getresponse().read().decode()
        conn.close()
        return sum(
            int(float(m))
            for m in re.findall(r"^warmproxy_requests_total\{[^}]*\} (\S+)$", text, re.M)
        )

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


@pytest.fixture
def origin() -> Iterator[CountingOrigin]:
    o = CountingOrigin()
    yield o
    o.close()


def _check_one_cache(workers: Workers, origin: CountingOrigin) -> int:
    """The checks every store passes; returns the proxy requests made."""
    made = 0
    # Warmed once through the control API: a hit on every worker.
    status, body = post(f"{workers.base}/warm-key", {"url": "/warmed"}, token=TOKEN)
    assert status == 202, body
    assert wait_run(workers.base, body["run_id"])["status"] == "completed"
    answers = [workers.get("/warmed") for _ in range(20)]
    made += len(answers)
    assert all(a.hit for a in answers), [a.cache_status for a in answers]
    assert len({a.worker for a in answers}) == 2, "the kernel gave every connection to one worker"
    assert origin.fetches["/warmed"] == 1

    # Browsers (gzip, their own Accept-Encoding spellings) under either
    # host name hit what one warm fetch stored, on whichever worker: the
    # relay carries the variant and its Vary index to the other worker.
    status, body = post(f"{workers.base}/warm-key", {"url": "/varied/page"}, token=TOKEN)
    assert status == 202, body
    assert wait_run(workers.base, body["run_id"])["status"] == "completed"
    browsers = [
        {"Accept-Encoding": coding, "Host": f"{host}:{workers.listen}", "User-Agent": "Mozilla/5.0"}
        for coding in ("gzip, deflate, br, zstd", "gzip, deflate, br")
        for host in ("localhost", "127.0.0.1")
    ]
    varied = [workers.get("/varied/page", headers) for headers in browsers * 4]
    made += len(varied)
    assert all(a.hit for a in varied), [(a.worker, a.cache_status) for a in varied]
    assert len({a.worker for a in varied}) == 2, "the kernel gave every connection to one worker"
    assert all(a.body == "/varied/page #1" for a in varied)
    assert origin.fetches["/varied/page"] == 1

    # A client's miss on one worker fills the cache the other serves from.
    first = workers.get("/filled")
    made += 1
    assert not first.hit
    later = workers.until_both("/filled")
    made += len(later)
    assert all(a.hit for a in later), [(a.worker, a.cache_status) for a in later]
    assert origin.fetches["/filled"] == 1

    # A purge through the control API reaches every worker: each answers
    # with the body fetched after it, soon (the purge is told to the other
    # worker in the background), and never with the purged one again.
    status, purged = post(f"{workers.base}/purge", {"path": "/warmed"}, token=TOKEN)
    assert status == 200 and purged["purged"] == 1, purged
    refetched: set[int] = set()
    deadline = time.monotonic() + 5
    while len(refetched) < 2:
        assert time.monotonic() < deadline, "a worker still serves the purged entry"
        answer = workers.get("/warmed")
        made += 1
        if answer.body == "/warmed #2":
            refetched.add(answer.worker)
    after = workers.until_both("/warmed")
    made += len(after)
    assert all(a.body == "/warmed #2" for a in after), [(a.worker, a.body) for a in after]
    assert origin.fetches["/warmed"] == 2

    # /metrics counts the requests both workers answered (the other
    # worker's counts arrive within a second or so).
    deadline = time.monotonic() + 10
    while (counted := workers.requests_counted()) != made:
        assert counted < made, (counted, made)
        assert time.monotonic() < deadline, f"/metrics counts {counted} of {made} requests"
        time.sleep(0.1)
    return made


def _check_stop(workers: Workers) -> None:
    pids = workers.worker_pids()
    assert len(pids) == 2
    assert workers.stop() == 0, workers.stderr.read_text()
    assert not any(psutil.pid_exists(pid) for pid in pids), "a worker outlived the supervisor"


def test_memory_store_workers_serve_one_cache(tmp_path: Path, origin: CountingOrigin) -> None:
    workers = Workers(tmp_path, origin, ["--store", "memory"])
    try:
        made = _check_one_cache(workers, origin)

        # The primary's tracker saw the other worker's requests too (sent
        # in batches a fraction of a second apart).
        deadline = time.monotonic() + 10
        while True:
            status, hot = get_json(f"{workers.base}/hot-data")
            assert status == 200
            totals = hot["totals"]
            assert isinstance(totals, dict)
            if totals["requests"] == made:
                break
            assert time.monotonic() < deadline, f"the tracker saw {totals} of {made} requests"
            time.sleep(0.1)

        # SIGHUP to the supervisor: the primary reloads, then has the other
        # worker reload: both key the request without the ignored parameter.
        workers.config.write_text('[cache]\nignore_query_params = ["utm_source"]\n')
        workers.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        hits_by: set[int] = set()
        while len(hits_by) < 2:
            assert time.monotonic() < deadline, f"only {hits_by} reloaded"
            answer = workers.get("/filled?utm_source=mail")
            # The entry of /filled: a worker that did not reload keys the
            # request apart, fetches it and serves its own copy from then on.
            if answer.hit and answer.body == "/filled #1":
                hits_by.add(answer.worker)

        # A worker killed outright is restarted, and serves the cache as it was.
        primary = workers.primary()
        (victim,) = workers.worker_pids() - {primary}
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while len(workers.worker_pids() - {primary}) != 1 or victim in workers.worker_pids():
            assert time.monotonic() < deadline, "the killed worker was not restarted"
            time.sleep(0.05)
        (restarted,) = workers.worker_pids() - {primary}
        answers: list[Answer] = []
        while not any(a.worker == restarted for a in answers):
            assert time.monotonic() < deadline, "the restarted worker took no connection"
            answers.append(workers.get("/filled"))
        assert all(a.hit for a in answers), [(a.worker, a.cache_status) for a in answers]

        # The primary too: restarted, it is sent the other worker's store.
        os.kill(primary, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while True:
            assert time.monotonic() < deadline, "the killed primary was not restarted"
            with contextlib.suppress(AssertionError, psutil.Error):
                if workers.primary() != primary:
                    break
            time.sleep(0.05)
        answers = workers.until_both("/filled")
        assert all(a.hit and a.body == "/filled #1" for a in answers), answers
        assert origin.fetches["/filled"] == 1
        _check_stop(workers)
    finally:
        workers.stop()


def test_redis_store_workers_serve_one_cache(
    tmp_path: Path, origin: CountingOrigin, redis_url: str, redis_prefix: str
) -> None:
    workers = Workers(
        tmp_path,
        origin,
        ["--store", "redis", "--redis-url", redis_url, "--redis-prefix", redis_prefix],
        # Kept in each worker's L1 far longer than the test runs: only the
        # fleet's invalidation messages can make a worker drop its copy.
        {"WARMPROXY_CACHE__L1_TTL": "60"},
    )
    try:
        _check_one_cache(workers, origin)
        _check_stop(workers)
    finally:
        workers.stop()


def test_a_port_in_use_stops_the_start_naming_the_port(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "proxy.cli",
                "serve",
                "--workers",
                "2",
                "--listen",
                f"127.0.0.1:{port}",
                "--control",
                f"127.0.0.1:{free_port()}",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1
    assert f"cannot bind port {port}" in result.stderr


def test_a_worker_count_out_of_range_names_the_setting() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "proxy.cli", "serve", "--workers", "65"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "proxy.workers" in result.stderr and "64" in result.stderr
