"""What every probe shares: the verdict report, the proxy and Redis as processes,
raw HTTP/1.1 over sockets, and the proxy's metrics.

The proxy always runs as ``python -m proxy.cli serve`` (the real entry point) in
a work directory of the probe's own, with a state directory there, no inherited
``WARMPROXY_*`` variables, and every listener on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import aiohttp
import psutil
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 30.0
TOKEN = "probe-token-0123456789"


# --- verdicts -------------------------------------------------------------------------------


@dataclass
class Check:
    """One verdict: ``ok`` True (PASS), False (FAIL) or None (a NOTE that never fails)."""

    name: str
    ok: bool | None
    detail: str = ""

    @property
    def label(self) -> str:
        return {True: "PASS", False: "FAIL", None: "NOTE"}[self.ok]


@dataclass
class Report:
    """The verdicts and headline figures of one probe run."""

    probe: str
    checks: list[Check] = field(default_factory=list)
    figures: dict[str, str] = field(default_factory=dict)

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append(Check(name, bool(ok), detail))
        return bool(ok)

    def note(self, name: str, detail: str) -> None:
        self.checks.append(Check(name, None, detail))

    def figure(self, name: str, value: str) -> None:
        self.figures[name] = value

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.ok is False]

    @property
    def passed(self) -> list[Check]:
        return [c for c in self.checks if c.ok is True]

    def failures(self) -> str:
        """The failed checks, one a line (for assertion messages)."""
        return "\n".join(f"{c.name}: {c.detail}" for c in self.failed)

    def summary(self) -> str:
        verdict = "FAIL" if self.failed else "PASS"
        counted = f"{len(self.passed)}/{len(self.passed) + len(self.failed)} checks pass"
        figures = "; ".join(f"{k} {v}" for k, v in self.figures.items())
        return f"== {self.probe}: {verdict} ({counted}){'; ' + figures if figures else ''}"

    def print(self, out: TextIO = sys.stdout) -> None:
        width = max((len(c.name) for c in self.checks), default=10)
        for c in self.checks:
            print(f"{c.label}  {c.name:<{width}}  {c.detail}", file=out)
        print(self.summary(), file=out, flush=True)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


def probe_arguments(description: str, *, duration: float | None = None) -> argparse.ArgumentParser:
    """The flags every probe takes: --quick, --keep (the work dir), and --duration when timed."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="the short run (run_all uses it)")
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory (proxy logs) and print it"
    )
    if duration is not None:
        parser.add_argument(
            "--duration",
            type=float,
            default=None,
            help=f"seconds of load (default {duration:g}; --quick: shorter)",
        )
    return parser


@contextlib.contextmanager
def workdir(keep: bool = False, prefix: str = "warmproxy-probe-") -> Iterator[Path]:
    """A private temporary directory, removed afterwards unless ``keep``."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        if keep:
            print(f"work directory kept: {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def run_main(probe: Callable[[Path], Coroutine[Any, Any, Report]], keep: bool) -> int:
    """Run ``probe`` in a fresh work directory (on uvloop when installed: the load
    clients keep up better), print its report, return the exit status."""
    raise_fd_limit()
    # The in-process origins log every malformed request the probes make them see.
    logging.getLogger("aiohttp").setLevel(logging.CRITICAL)
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    with workdir(keep) as path, asyncio.Runner(loop_factory=loop_factory) as runner:
        report = runner.run(probe(path))
    report.print()
    return report.exit_code


def raise_fd_limit(wanted: int = 65536) -> int:
    """Raise this process's (and its children's) open-file limit towards ``wanted``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# --- processes ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def clean_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without ``WARMPROXY_*`` (a developer's shell must
    not change what is probed), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("WARMPROXY_")}
    env.update(extra or {})
    return env


def log_tail(path: Path, lines: int = 12) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join("    " + line[:300] for line in text.splitlines()[-lines:])


def spawn(
    argv: Sequence[str], log: Path, *, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``argv`` with stdout and stderr appended to ``log`` (fork and exec:
    quick enough to call from the event loop)."""
    with log.open("ab") as out:
        return subprocess.Popen(
            argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )


class ProxyProcess:
    """``python -m proxy.cli serve`` in front of ``origin``, on loopback ports of its own.

    ``state`` is the state directory (kept across :meth:`start` calls, so a restart
    finds what the last run saved); ``env`` adds variables (``WARMPROXY_*`` settings).
    """

    def __init__(
        self,
        workdir: Path,
        origin: str,
        *,
        name: str = "proxy",
        store: str = "memory",
        redis_url: str | None = None,
        redis_prefix: str | None = None,
        max_bytes: str | None = None,
        token: str = "",
        config: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.config = config
        self.origin = origin
        self.name = name
        self.store = store
        self.redis_url = redis_url
        self.redis_prefix = redis_prefix
        self.max_bytes = max_bytes
        self.token = token
        self.env = env or {}
        self.state = workdir / f"{name}-state"
        self.log = workdir / f"{name}.log"
        self.port = free_port()
        self.control_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def control_url(self) -> str:
        return f"http://127.0.0.1:{self.control_port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def argv(self) -> list[str]:
        argv = [
            sys.executable, "-m", "proxy.cli", "serve",
            "--origin", self.origin,
            "--listen", f"127.0.0.1:{self.port}",
            "--control", f"127.0.0.1:{self.control_port}",
            "--store", self.store,
            "--log-format", "json",
            "--log-level", "warning",
        ]  # fmt: skip
        if self.redis_url is not None:
            argv += ["--redis-url", self.redis_url]
        if self.redis_prefix is not None:
            argv += ["--redis-prefix", self.redis_prefix]
        if self.max_bytes is not None:
            argv += ["--max-bytes", self.max_bytes]
        if self.config is not None:
            argv += ["--config", str(self.config)]
        return argv

    async def start(self, *, wait: str = "/healthz", within: float = READY_TIMEOUT) -> None:
        """Start the process and wait until ``wait`` on the control listener answers 200."""
        env = {
            "WARMPROXY_STATE__DIR": str(self.state),
            # Stop at SIGTERM at once: the probes restart it and measure, nothing drains.
            "WARMPROXY_PROXY__SHUTDOWN_DELAY": "0",
            **({"WARMPROXY_CONTROL__TOKEN": self.token} if self.token else {}),
            **self.env,
        }
        self.process = spawn(self.argv(), self.log, cwd=self.workdir, env=clean_environment(env))
        await wait_http(f"{self.control_url}{wait}", self.process, self.log, within)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; the exit status (None if never started)."""
        proc = self.process
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL: no shutdown, no state saved, as an OOM killer or a power cut would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def rss(self) -> int:
        """Resident set size of the proxy process, in bytes."""
        return int(psutil.Process(self.pid).memory_info().rss)

    def log_tail(self, lines: int = 12) -> str:
        return log_tail(self.log, lines)

    def headers(self) -> dict[str, str]:
        """Headers of a control API call (JSON body, token when one is set)."""
        out = {"Content-Type": "application/json"}
        if self.token:
            out["Authorization"] = f"Bearer {self.token}"
        return out

    async def control(
        self, session: aiohttp.ClientSession, method: str, path: str, body: Any = None
    ) -> tuple[int, Any]:
        """Call the control API; (status, parsed JSON or the text when not JSON)."""
        kwargs: dict[str, Any] = {"headers": self.headers()}
        if body is not None:
            kwargs["json"] = body
        async with session.request(method, f"{self.control_url}{path}", **kwargs) as response:
            text = await response.text()
            try:
                return response.status, json.loads(text)
            except ValueError:
                return response.status, text

    async def wait_run(
        self, session: aiohttp.ClientSession, run_id: str, within: float = 30.0
    ) -> dict[str, Any]:
        """Poll a warming run's progress until it is no longer running."""
        deadline = time.monotonic() + within
        while True:
            status, body = await self.control(
                session, "GET", f"/cache/warming/progress?run_id={run_id}"
            )
            if status == 200 and isinstance(body, dict) and body.get("status") != "running":
                return body
            if time.monotonic() > deadline:
                raise RuntimeError(f"warm run {run_id} still running after {within:.0f} s")
            await asyncio.sleep(0.05)

    async def metrics(self, session: aiohttp.ClientSession) -> Metrics:
        async with session.get(f"{self.control_url}/metrics") as response:
            return Metrics.parse(await response.text())


@dataclass
class Metrics:
    """Samples of a Prometheus text page: (name, labels) -> value."""

    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]
    families: set[str] = field(default_factory=set)  # names as exported, with _total

    @classmethod
    def parse(cls, text: str) -> Metrics:
        samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        families: set[str] = set()
        for family in text_string_to_metric_families(text):
            families.add(family.name)
            if family.type == "counter":
                families.add(f"{family.name}_total")
            for s in family.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
        return cls(samples, families)

    def total(self, name: str, **labels: str) -> float:
        """Sum of the samples named ``name`` whose labels include ``labels``."""
        return sum(
            v
            for (n, ls), v in self.samples.items()
            if n == name and all((k, val) in ls for k, val in labels.items())
        )

    def matching(self, fragment: str) -> dict[str, float]:
        """Totals of every sample whose name holds ``fragment`` (e.g. "shed")."""
        out: dict[str, float] = {}
        for (n, _), v in self.samples.items():
            if fragment in n and not n.endswith("_created"):
                out[n] = out.get(n, 0.0) + v
        return out


async def wait_http(
    url: str,
    process: subprocess.Popen[bytes] | None,
    log: Path,
    within: float = READY_TIMEOUT,
) -> None:
    """Poll ``url`` until it answers 200; RuntimeError (with the log tail) if the
    process exits or the deadline passes."""
    deadline = time.monotonic() + within
    last = "no answer"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0)) as session:
        while True:
            if process is not None and process.poll() is not None:
                raise RuntimeError(
                    f"process exited with {process.returncode} before {url} answered:\n"
                    f"{log_tail(log)}"
                )
            try:
                async with session.get(url) as response:
                    last = f"HTTP {response.status}"
                    if response.status == 200:
                        return
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                last = type(exc).__name__
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{url} not ready after {within:.0f} s ({last}):\n{log_tail(log)}"
                )
            await asyncio.sleep(0.05)


class RedisProcess:
    """A throw-away ``redis-server`` on loopback, restartable on its port; no persistence."""

    def __init__(self, workdir: Path) -> None:
        self.binary = shutil.which("redis-server")
        self.workdir = workdir
        self.port = free_port()
        self.log = workdir / f"redis-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def available(self) -> bool:
        return self.binary is not None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self, within: float = 10.0) -> None:
        if self.binary is None:
            raise RuntimeError("no redis-server on PATH")
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.workdir)]  # fmt: skip
        self.process = spawn(argv, self.log)
        deadline = time.monotonic() + within
        while not await self.ping():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start:\n{log_tail(self.log)}")
            await asyncio.sleep(0.05)

    async def ping(self) -> bool:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.port), 0.5
            )
        except (OSError, TimeoutError):
            return False
        try:
            writer.write(b"PING\r\n")
            return (await asyncio.wait_for(reader.readline(), 0.5)).startswith(b"+PONG")
        except (OSError, TimeoutError):
            return False
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def signal(self, sig: signal.Signals) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # a stopped process cannot die
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class ChildProcess:
    """A Python helper process (an origin) started from this repository."""

    def __init__(self, workdir: Path, name: str, argv: Sequence[str]) -> None:
        self.workdir = workdir
        self.name = name
        self.argv = [sys.executable, *argv]
        self.log = workdir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self, ready_url: str) -> None:
        self.process = spawn(self.argv, self.log, cwd=REPO, env=clean_environment())
        await wait_http(ready_url, self.process, self.log)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextlib.asynccontextmanager
async def stopping(*things: ProxyProcess | RedisProcess | ChildProcess) -> AsyncIterator[None]:
    """Stop (SIGTERM, then SIGKILL) every process named here on the way out."""
    try:
        yield
    finally:
        for thing in reversed(things):
            thing.stop()


# --- raw HTTP/1.1 ---------------------------------------------------------------------------


@dataclass
class RawResponse:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    complete: bool  # the body arrived as its framing announced

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None


@dataclass
class RawExchange:
    """What came back on one connection after sending raw bytes."""

    responses: list[RawResponse]
    closed: bool  # the server closed the connection (else: idle until the timeout)
    garbage: bytes = b""  # bytes that did not parse as a response

    @property
    def statuses(self) -> list[int]:
        return [r.status for r in self.responses]

    def describe(self) -> str:
        parts = [str(s) for s in self.statuses] or ["no response"]
        parts.append("closed" if self.closed else "left open")
        if self.garbage:
            parts.append(f"{len(self.garbage)} unparsed bytes")
        return ", ".join(parts)


async def raw_exchange(
    port: int,
    data: bytes,
    *,
    host: str = "127.0.0.1",
    idle: float = 1.0,
    limit: int = 4 * 1024 * 1024,
) -> RawExchange:
    """Send ``data`` as is, then read until the server closes or is idle for ``idle`` s."""
    reader, writer = await asyncio.open_connection(host, port)
    received = bytearray()
    closed = False
    try:
        with contextlib.suppress(ConnectionError):
            writer.write(data)
            await writer.drain()
        while len(received) < limit:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), idle)
            except TimeoutError:
                break
            except ConnectionError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            received += chunk
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    responses, rest = parse_responses(bytes(received), eof=closed)
    return RawExchange(responses, closed, rest)


def parse_responses(data: bytes, *, eof: bool) -> tuple[list[RawResponse], bytes]:
    """Every HTTP/1.x response in ``data``; the bytes left over that do not parse."""
    out: list[RawResponse] = []
    while data:
        head_end = data.find(b"\r\n\r\n")
        if head_end < 0 or not data.startswith(b"HTTP/1."):
            break
        lines = data[:head_end].decode("latin-1").split("\r\n")
        try:
            _, code, *reason = lines[0].split(" ", 2)
            status = int(code)
        except ValueError:
            break
        headers = [
            (k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])
        ]
        rest = data[head_end + 4 :]
        names = {k.lower(): v for k, v in headers}
        if status in (204, 304) or 100 <= status < 200:
            body, rest, complete = b"", rest, True
        elif "chunked" in names.get("transfer-encoding", "").lower():
            body, rest, complete = _dechunk(rest)
        elif "content-length" in names:
            length = int(names["content-length"])
            body, rest, complete = rest[:length], rest[length:], len(rest) >= length
        else:  # delimited by the close
            body, rest, complete = rest, b"", eof
        out.append(RawResponse(status, reason[0] if reason else "", headers, body, complete))
        data = rest
        if not complete:
            break
    return out, data


def _dechunk(data: bytes) -> tuple[bytes, bytes, bool]:
    body = bytearray()
    while True:
        line_end = data.find(b"\r\n")
        if line_end < 0:
            return bytes(body), b"", False
        try:
            size = int(data[:line_end].split(b";")[0], 16)
        except ValueError:
            return bytes(body), data, False
        data = data[line_end + 2 :]
        if size == 0:
            trailer_end = data.find(b"\r\n")
            while trailer_end > 0:  # skip trailer fields
                data = data[trailer_end + 2 :]
                trailer_end = data.find(b"\r\n")
            return bytes(body), data[2:] if trailer_end == 0 else b"", trailer_end == 0
        if len(data) < size + 2:
            return bytes(body) + data[:size], b"", False
        body += data[:size]
        data = data[size + 2 :]


async def fetch(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str] | None = None,
    within: float = 10.0,
) -> tuple[int, dict[str, str], bytes]:
    """GET ``url``: (status, headers, body); status 0 and the error's name in the
    body when no whole response arrived."""
    try:
        async with session.get(
            url, headers=headers, timeout=aiohttp.ClientTimeout(total=within)
        ) as response:
            body = await response.read()
            return response.status, dict(response.headers), body
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        return 0, {}, type(exc).__name__.encode()


def only_if_cached() -> dict[str, str]:
    """A request that the cache answers from what it stored, or with 504
    (RFC 9111 §5.2.1.7), without asking the origin."""
    return {"Cache-Control": "only-if-cached"}


# --- load -----------------------------------------------------------------------------------


@dataclass
class Sample:
    at: float  # seconds since the load began
    status: int  # 0: no response (the error's name is in ``error``)
    latency: float
    error: str = ""
    cache_status: str = ""


@dataclass
class Load:
    """Every request a load made, for figures per time window."""

    samples: list[Sample] = field(default_factory=list)

    def window(self, start: float, end: float) -> list[Sample]:
        return [s for s in self.samples if start <= s.at < end]

    @staticmethod
    def describe(samples: Sequence[Sample]) -> str:
        if not samples:
            return "no requests"
        latencies = sorted(s.latency for s in samples)
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        failed = [s for s in samples if s.status != 200]
        return (
            f"{len(samples)} requests, {len(failed)} errors, p99 {p99 * 1000:.0f} ms, "
            f"max {latencies[-1] * 1000:.0f} ms"
        )

    def errors(self, samples: Sequence[Sample] | None = None) -> dict[str, int]:
        """Failed requests by status or error name."""
        out: dict[str, int] = {}
        for s in self.samples if samples is None else samples:
            if s.status != 200:
                key = s.error or str(s.status)
                out[key] = out.get(key, 0) + 1
        return out


async def drive(
    base: str,
    paths: Callable[[int], str],
    *,
    concurrency: int,
    duration: float,
    load: Load,
    within: float = 10.0,
) -> None:
    """``concurrency`` keep-alive clients asking for ``paths(n)`` (n counts
    requests) as fast as answered, for ``duration`` seconds, into ``load``."""
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    started = time.monotonic()
    deadline = started + duration
    counter = iter(range(1 << 62))
    client_timeout = aiohttp.ClientTimeout(total=within)
    async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session:

        async def client() -> None:
            while (now := time.monotonic()) < deadline:
                url = base + paths(next(counter))
                try:
                    async with session.get(url) as response:
                        await response.read()
                        status = response.status
                        cache_status = response.headers.get("Cache-Status", "")
                    error = ""
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    status, cache_status, error = 0, "", type(exc).__name__
                load.samples.append(
                    Sample(now - started, status, time.monotonic() - now, error, cache_status)
                )

        await asyncio.gather(*(client() for _ in range(concurrency)))
