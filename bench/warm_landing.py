"""Whether warm fills land: of the paths each warming path filled, the share
whose first client request afterwards was a cache hit.

A warmed entry pays only if the clients of its key hit it (DESIGN rule 4):
the variant they select (the demo origin compresses, ``Vary:
Accept-Encoding``) under the key their requests map to, whatever host name
they use for the proxy.  This measures it on the product as shipped:

- in one process, the demo origin (``proxy.demo_origin`` on 127.0.0.1:0) and
  ``Warmproxy`` with the default configuration (only: listeners on port 0,
  ``state.dir`` in a temporary directory, ``execution.rate_limit = 0``);
- per client population, a fresh origin and proxy: browser-like clients
  (Chrome, Firefox and Safari header sets from ``tests/variants.py``), then
  curl-like ones (no ``Accept-Encoding``); their requests name the proxy as
  ``localhost:PORT``, ``127.0.0.1:PORT`` or a service name in ``Host``;
- per warming path, its own set of paths: ``warm-key`` before any traffic
  and after the population browsed other pages, ``warm-pattern`` over pages
  the clients visited and that were then edited (a POST through the proxy
  invalidates them), a scheduled ``urls`` source started with ``POST
  /cache/warming/start``, refresh-ahead of short-lived ``/live/{n}`` pages
  (``max-age=5``) the clients hit, the predictive model on a second proxy
  (``strategies.predictive.enabled``, refresh-ahead off there so every warm
  fetch is the model's) with clients revisiting live pages,
  ``warm_on_start = "before_ready"`` on a third proxy with a ``urls`` source,
  and ``warmproxy warm --standalone`` into a throw-away Redis read by a
  fourth proxy (when ``redis-server`` is installed);
- a warm fill is known from the origin seeing the fetch with the warmer's
  ``X-Warmproxy-Warm: 1``; once the warmer is idle, each path it filled gets
  one client request (agents and host names taken in turn), and its
  ``Cache-Status`` says whether it was a hit.

    .venv/bin/python bench/warm_landing.py [--paths 12] [--population browsers,curl]

10-20 s; it prints a table per population and asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from proxy.app import Warmproxy  # noqa: E402
from proxy.config import load_settings  # noqa: E402
from proxy.demo_origin import build_demo_origin  # noqa: E402
from tests.variants import CHROME, CURL, FIREFOX, SAFARI, UserAgent  # noqa: E402

WARM_HEADER = "X-Warmproxy-Warm"  # execution.warm_header's default
SERVICE_HOST = "shop.default.svc.cluster.local"
POPULATIONS: dict[str, tuple[UserAgent, ...]] = {
    "browsers": (CHROME, FIREFOX, SAFARI),
    "curl": (CURL,),
}
# Pages every population browses first: what the proxy has seen of its
# clients before an operator warms something new.
BACKGROUND = [
    "/",
    "/static/app.css",
    "/static/app.js",
    *(f"/articles/{n}" for n in range(1, 11)),
    *(f"/products/{n}" for n in range(181, 191)),
]


@dataclass
class Seen:
    """One request the origin answered."""

    at: float
    path: str
    warm: bool
    accept_encoding: str


@dataclass
class Row:
    """What one warming path filled, and how its first client requests fared."""

    name: str
    asked: int = 0
    warm_fetches: int = 0
    warmed: int = 0
    hits: int = 0
    missed: Counter[str] = field(default_factory=Counter)
    note: str = ""

    @property
    def share(self) -> str:
        return f"{100 * self.hits / self.warmed:.1f} %" if self.warmed else "-"


class Bench:
    """One client population against its own demo origin and proxies."""

    def __init__(self, agents: Sequence[UserAgent], tmp: Path, paths: int) -> None:
        self.agents = tuple(agents)
        self.tmp = tmp
        self.n = paths
        self.seen: list[Seen] = []
        self.origin_url = ""
        self.proxies: list[Warmproxy] = []
        self._runner: web.AppRunner | None = None
        self._turn = 0
        self.session: aiohttp.ClientSession | None = None

    # ---------------------------------------------------------- plumbing

    async def start(self) -> None:
        app = build_demo_origin()

        async def record(request: web.BaseRequest, response: web.StreamResponse) -> None:
            self.seen.append(
                Seen(
                    time.monotonic(),
                    request.path_qs,
                    WARM_HEADER in request.headers,
                    request.headers.get("Accept-Encoding", ""),
                )
            )

        app.on_response_prepare.append(record)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.origin_url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        self.session = aiohttp.ClientSession(auto_decompress=False)

    async def close(self) -> None:
        for proxy in self.proxies:
            await proxy.stop()
        if self.session is not None:
            await self.session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def proxy(self, name: str, **sections: dict[str, Any]) -> Warmproxy:
        """A proxy with the default configuration but for ``sections``."""
        overrides: dict[str, dict[str, Any]] = {
            "proxy": {"origin": self.origin_url, "listen": "127.0.0.1:0"},
            "control": {"listen": "127.0.0.1:0"},
            "state": {"dir": str(self.tmp / name)},
            "execution": {"rate_limit": 0},
            "logging": {"level": "warning"},
        }
        for section, values in sections.items():
            overrides.setdefault(section, {}).update(values)
        proxy = Warmproxy(load_settings(None, overrides))
        await proxy.start()
        self.proxies.append(proxy)
        return proxy

    def hosts(self, proxy: Warmproxy) -> list[str]:
        port = proxy.proxy_port
        return [f"localhost:{port}", f"127.0.0.1:{port}", SERVICE_HOST]

    async def get(
        self, proxy: Warmproxy, path: str, agent: UserAgent, host: str
    ) -> tuple[bool, str]:
        """GET ``path`` as ``agent`` naming the proxy ``host``: (hit, Cache-Status)."""
        assert self.session is not None
        kwargs = agent.request_kwargs()
        kwargs["headers"]["Host"] = host
        url = f"http://127.0.0.1:{proxy.proxy_port}{path}"
        async with self.session.get(url, **kwargs) as response:
            await response.read()
            status = response.headers.get("Cache-Status", "")
        return status.split(";")[1:2] == [" hit"], status

    async def browse(self, proxy: Warmproxy, paths: Sequence[str], visits: int = 3) -> None:
        """Each path asked for ``visits`` times, agents and host names in turn
        (the same traffic per path whatever the population's size)."""
        hosts = self.hosts(proxy)
        for path in paths:
            for visit in range(visits):
                self._turn += 1
                agent = self.agents[visit % len(self.agents)]
                await self.get(proxy, path, agent, hosts[self._turn % len(hosts)])

    async def api(self, proxy: Warmproxy, method: str, path: str, body: Any = None) -> Any:
        assert self.session is not None
        url = f"http://127.0.0.1:{proxy.control_port}/cache/warming/{path}"
        async with self.session.request(method, url, json=body) as response:
            answer = await response.json()
            if response.status >= 300:
                raise RuntimeError(f"{method} {path}: {response.status} {answer}")
            return answer

    async def run(self, proxy: Warmproxy, path: str, body: Any) -> None:
        """Start a warming call and wait for its run to end."""
        started = await self.api(proxy, "POST", path, body)
        await until(lambda: self._run_over(proxy, started["run_id"]), within=30, what=f"{path} run")

    async def _run_over(self, proxy: Warmproxy, run_id: str) -> bool:
        progress = await self.api(proxy, "GET", f"progress?run_id={run_id}")
        return bool(progress["status"] != "running")

    def warm_fetches(self, paths: Sequence[str], since: float) -> list[Seen]:
        wanted = set(paths)
        return [s for s in self.seen if s.warm and s.path in wanted and s.at >= since]

    async def landing(
        self, name: str, proxy: Warmproxy, paths: Sequence[str], since: float, note: str = ""
    ) -> Row:
        """Once the warmer is idle: each warm-filled path's first client request."""
        await proxy.warmer.executor.idle()
        fetches = self.warm_fetches(paths, since)
        row = Row(name, asked=len(paths), warm_fetches=len(fetches), note=note)
        warmed = [p for p in paths if any(f.path == p for f in fetches)]
        row.warmed = len(warmed)
        hosts = self.hosts(proxy)
        for i, path in enumerate(warmed):
            agent = self.agents[i % len(self.agents)]
            host = hosts[(i // len(self.agents)) % len(hosts)]
            hit, status = await self.get(proxy, path, agent, host)
            if hit:
                row.hits += 1
            else:
                reason = next(
                    (p.strip() for p in status.split(";") if p.strip().startswith("fwd=")), status
                )
                row.missed[f"{agent.name} {reason}"] += 1
        return row

    # ---------------------------------------------------------- scenarios

    def paths(self, prefix: str, first: int) -> list[str]:
        return [f"{prefix}/{n}" for n in range(first, first + self.n)]

    async def on_main_proxy(self) -> list[Row]:
        """warm-key (cold, then after browsing), warm-pattern, a scheduled
        source and refresh-ahead, one after the other on one default proxy."""
        proxy = await self.proxy("main")
        rows = []

        cold = self.paths("/products", 1)
        t0 = time.monotonic()
        await self.run(proxy, "warm-key", {"urls": cold})
        rows.append(await self.landing("warm-key, before any traffic", proxy, cold, t0))

        await self.browse(proxy, BACKGROUND)

        keyed = self.paths("/products", 21)
        t0 = time.monotonic()
        await self.run(proxy, "warm-key", {"urls": keyed})
        rows.append(await self.landing("warm-key", proxy, keyed, t0))

        # Pages the clients visited, then edited: the POST through the proxy
        # invalidates them (RFC 9111 §4.4); warm-pattern fills them again.
        edited = [f"/products/{n}" for n in range(100, 100 + min(self.n, 10))]
        await self.browse(proxy, edited)
        assert self.session is not None
        for path in edited:
            async with self.session.post(f"http://127.0.0.1:{proxy.proxy_port}{path}") as r:
                await r.read()
        t0 = time.monotonic()
        await self.run(proxy, "warm-pattern", {"pattern": "/products/10?"})
        rows.append(await self.landing("warm-pattern (visited, edited)", proxy, edited, t0))

        scheduled = self.paths("/products", 41)
        plan = {"sources": [{"name": "bench", "source": {"type": "urls", "paths": scheduled}}]}
        await self.api(proxy, "POST", "schedule", plan)
        t0 = time.monotonic()
        await self.run(proxy, "start", {"strategy": "proactive"})
        rows.append(await self.landing("scheduled source (start)", proxy, scheduled, t0))

        live = self.paths("/live", 1)[: max(1, self.n // 2)]
        t0 = time.monotonic()
        # A miss, then hits in the entry's 5 s lifetime (refresh_min_hits = 2).
        await self.browse(proxy, live, visits=9)
        await self.warmed_by(live, t0, within=12)
        row = await self.landing("refresh-ahead (/live, max-age=5)", proxy, live, t0)
        row.note = f"warm fetches by reason: {dict(proxy.warmer.executor.counters.warmed)}"
        rows.append(row)
        return rows

    async def predictive(self) -> Row:
        proxy = await self.proxy(
            "predictive",
            strategies={"predictive": {"enabled": True}, "reactive": {"refresh_ahead": False}},
        )
        await self.browse(proxy, BACKGROUND)
        live = self.paths("/live", 51)[: max(1, self.n // 2)]
        t0 = time.monotonic()
        # Revisits within the lifetime: the model expects more and refreshes
        # each page ahead of its expiry.
        await self.browse(proxy, live, visits=9)
        await self.warmed_by(live, t0, within=12)
        row = await self.landing("predictive (/live revisited)", proxy, live, t0)
        row.note = f"warm fetches by reason: {dict(proxy.warmer.executor.counters.warmed)}"
        return row

    async def warm_on_start(self) -> Row:
        paths = self.paths("/articles", 41)
        proactive = {
            "warm_on_start": "before_ready",
            "data_sources": [{"name": "start", "source": {"type": "urls", "paths": paths}}],
        }
        t0 = time.monotonic()
        proxy = await self.proxy("on-start", strategies={"proactive": proactive})
        assert self.session is not None
        ready = f"http://127.0.0.1:{proxy.control_port}/readyz"

        async def is_ready() -> bool:
            assert self.session is not None
            async with self.session.get(ready) as response:
                return response.status == 200

        await until(is_ready, within=30, what="/readyz")
        return await self.landing('warm_on_start = "before_ready"', proxy, paths, t0)

    async def standalone(self) -> Row:
        name = "warm --standalone (Redis)"
        if shutil.which("redis-server") is None:
            return Row(name, note="skipped: no redis-server on PATH")
        paths = self.paths("/articles", 61)
        redis = await RedisServer.start()
        try:
            url, prefix = redis.url, "warm-landing:"
            t0 = time.monotonic()
            args = ["warm", "--standalone", "--store", "redis", "--redis-url", url]
            args += ["--redis-prefix", prefix, "--origin", self.origin_url, "--no-progress"]
            for path in paths:
                args += ["--url", path]
            env = {**os.environ, "XDG_STATE_HOME": str(self.tmp / "standalone-state")}
            done = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "proxy.cli",
                *args,
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            output, _ = await done.communicate()
            if done.returncode != 0:
                return Row(name, note=f"warm exited {done.returncode}: {output.decode()[-300:]}")
            proxy = await self.proxy(
                "standalone", cache={"store": "redis", "redis_url": url, "redis_prefix": prefix}
            )
            try:
                return await self.landing(name, proxy, paths, t0)
            finally:
                self.proxies.remove(proxy)
                await proxy.stop()  # before its Redis goes
        finally:
            await redis.stop()

    async def warmed_by(self, paths: Sequence[str], since: float, within: float) -> None:
        """Wait (at most ``within`` s) until the origin saw a warm fetch of each path."""

        def all_warmed() -> bool:
            got = {s.path for s in self.warm_fetches(paths, since)}
            return got >= set(paths)

        # Past the deadline, the table shows how many were warmed.
        with contextlib.suppress(TimeoutError):
            await until(all_warmed, within=within, what="warm fetches")

    async def measure(self) -> list[Row]:
        main, predictive, on_start, standalone = await asyncio.gather(
            self.on_main_proxy(), self.predictive(), self.warm_on_start(), self.standalone()
        )
        return [*main, predictive, on_start, standalone]


async def until(
    predicate: Callable[[], bool | Awaitable[bool]], *, within: float, what: str
) -> None:
    """Poll ``predicate`` until it holds; TimeoutError naming ``what`` after ``within`` s."""
    deadline = time.monotonic() + within
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not reached within {within} s")
        await asyncio.sleep(0.05)


@dataclass
class RedisServer:
    """A throw-away ``redis-server`` on a free port, for the standalone row."""

    process: asyncio.subprocess.Process
    url: str

    @classmethod
    async def start(cls) -> RedisServer:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        process = await asyncio.create_subprocess_exec(
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        server = cls(process, f"redis://127.0.0.1:{port}/0")

        async def answers() -> bool:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                return False
            writer.close()
            await writer.wait_closed()
            return True

        try:
            await until(answers, within=10, what="redis-server")
        except BaseException:
            await server.stop()
            raise
        return server

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.terminate()
            await self.process.wait()


def table(title: str, rows: Sequence[Row]) -> str:
    lines = [
        title,
        "",
        "| warming path | warm fetches | paths warmed/targeted | first-request hits "
        "| landing share | first requests missed (client, Cache-Status) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        missed = ", ".join(f"{k} ×{v}" for k, v in sorted(r.missed.items())) or "-"
        if r.note and not r.warmed:
            missed = r.note
        lines.append(
            f"| {r.name} | {r.warm_fetches} | {r.warmed}/{r.asked} | {r.hits} | {r.share} "
            f"| {missed} |"
        )
    notes = [f"- {r.name}: {r.note}" for r in rows if r.note and r.warmed]
    return "\n".join(lines + (["", *notes] if notes else []))


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paths", type=int, default=12, help="paths per warming path")
    parser.add_argument(
        "--population",
        default=",".join(POPULATIONS),
        help=f"client populations, comma-separated, of {', '.join(POPULATIONS)}",
    )
    args = parser.parse_args()
    names = [n.strip() for n in args.population.split(",") if n.strip()]
    unknown = [n for n in names if n not in POPULATIONS]
    if unknown or args.paths < 2:
        parser.error(f"unknown population {unknown}" if unknown else "--paths must be at least 2")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="warm-landing-") as tmp:
        benches = {n: Bench(POPULATIONS[n], Path(tmp) / n, args.paths) for n in names}
        try:
            for bench in benches.values():
                await bench.start()
            results = await asyncio.gather(*(b.measure() for b in benches.values()))
        finally:
            for bench in benches.values():
                await bench.close()
    for name, rows in zip(names, results, strict=True):
        agents = ", ".join(a.name for a in POPULATIONS[name])
        print(
            table(
                f"## {name}: {agents}; Host localhost:PORT, 127.0.0.1:PORT, {SERVICE_HOST}",
                rows,
            )
        )
        print()
    print(f"{time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
