"""Throw-away ``redis-server`` processes for tests (shared by unit and e2e tests).

Tests never touch a Redis they did not start or were not pointed at with
``REDIS_URL``, and never FLUSHDB: they work under their own key prefix.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import pytest
import redis

START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0


def redis_required() -> bool:
    """True when a missing Redis must fail the run instead of skipping (CI)."""
    return os.environ.get("WARMPROXY_REQUIRE_REDIS", "").strip() == "1" or os.environ.get(
        "CI", ""
    ).strip().lower() in ("true", "1")


def unavailable(reason: str) -> None:
    """Skip the test for ``reason``, or fail it where Redis is required."""
    if redis_required():
        pytest.fail(f"{reason} (Redis is required: WARMPROXY_REQUIRE_REDIS=1 or CI=true)")
    pytest.skip(reason)


def redis_server_binary(context: str = "") -> str:
    """Path of ``redis-server`` (``$WARMPROXY_REDIS_SERVER`` or on PATH), else skip/fail."""
    found = os.environ.get("WARMPROXY_REDIS_SERVER") or shutil.which("redis-server")
    if not found:
        unavailable(f"no redis-server binary on PATH or in $WARMPROXY_REDIS_SERVER{context}")
        raise AssertionError("unreachable")  # unavailable() always raises
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def answers_ping(url: str, timeout: float = 1.0) -> bool:
    """True when the Redis at ``url`` answers PING within ``timeout``."""
    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def delete_prefix(url: str, prefix: str) -> int:
    """UNLINK every key starting with ``prefix`` (SCAN, never KEYS/FLUSHDB)."""
    escaped = "".join("\\" + c if c in "*?[]\\" else c for c in prefix)
    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        removed = 0
        batch: list[bytes] = []
        for key in client.scan_iter(match=escaped + "*", count=500):
            batch.append(key)
            if len(batch) >= 500:
                removed += int(client.unlink(*batch))
                batch.clear()
        if batch:
            removed += int(client.unlink(*batch))
        return removed
    finally:
        client.close()


class RedisServer:
    """A ``redis-server`` on 127.0.0.1 that can be stopped and restarted on its port.

    No persistence (``--save '' --appendonly no``): a restart starts empty,
    like a replacement instance would.
    """

    def __init__(self, workdir: Path, *, binary: str | None = None, port: int | None = None):
        self.binary = binary or redis_server_binary()
        self.workdir = workdir
        self.port = port or free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path = workdir / "redis-server.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the server (again, on the same port) and wait until it answers PING."""
        if self.running:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self._log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [
                    self.binary,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.workdir),
                    "--daemonize",
                    "no",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._reap()
                raise RuntimeError(
                    f"redis-server exited during start on port {self.port}:\n{self.log_tail()}"
                )
            if answers_ping(self.url, timeout=0.2):
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(
            f"redis-server did not answer PING within {timeout}s:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and wait for it to exit."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            # A paused process cannot act on SIGTERM.
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
        self._reap()

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): it accepts connections but never answers."""
        assert self._proc is not None and self.running
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Undo :meth:`pause`."""
        assert self._proc is not None and self.running
        self._proc.send_signal(signal.SIGCONT)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self._log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _reap(self) -> None:
        if self._proc is not None:
            self._proc.wait()
            self._proc = None

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_redis_server(workdir: Path, attempts: int = 3, context: str = "") -> RedisServer:
    """Start a throw-away server on a free port, retrying if the port was taken meanwhile.

    Skips the calling test (fails it under CI) when there is no ``redis-server``;
    ``context`` is appended to that reason.
    """
    binary = redis_server_binary(context)
    error: RuntimeError | None = None
    for _ in range(attempts):
        server = RedisServer(workdir, binary=binary)
        try:
            server.start()
        except RuntimeError as exc:
            error = exc
            continue
        return server
    raise RuntimeError(f"could not start redis-server after {attempts} attempts") from error
