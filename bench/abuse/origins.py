"""Origins for the probes: recording, echoing, raw-socket (garbage) and a load origin.

The in-process ones run in the probe's event loop; the load origin runs as its
own process (``python -m bench.abuse.origins --port N``), so that a probe can
kill it and so that the load it serves does not compete with the load client.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import CIMultiDictProxy

# --- an origin that records every request it gets -------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    headers: CIMultiDictProxy[str]


Responder = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


@dataclass
class RecordingOrigin:
    """An aiohttp origin on loopback that records each request and answers with ``respond``."""

    respond: Responder
    seen: list[Seen] = field(default_factory=list)
    url: str = ""
    port: int = 0
    _runner: web.ServerRunner | None = None

    async def start(self) -> None:
        async def dispatch(request: web.BaseRequest) -> web.StreamResponse:
            self.seen.append(Seen(request.method, request.raw_path, request.headers))
            if request.raw_path == "/healthz":
                return web.Response(text="ok")
            return await self.respond(request)

        self._runner = web.ServerRunner(web.Server(dispatch, access_log=None))
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        self.url = f"http://127.0.0.1:{self.port}"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def paths(self) -> list[str]:
        return [s.path for s in self.seen]


async def cacheable(request: web.BaseRequest) -> web.StreamResponse:
    """``origin <path>`` for a year: whatever a cache stores of it, it keeps."""
    return web.Response(
        text=f"origin {request.raw_path}\n",
        headers={"Cache-Control": "public, max-age=600"},
    )


# --- a canary: any connection to it is a request that should never have been made ----------


class Canary:
    """A listener that counts connections and what arrived on them (first bytes only).

    It stands for a host other than the origin: an internal service, a cloud
    metadata endpoint.  It answers anything with a small 200, as such a
    service would, so a client that follows redirects or parses bodies goes on.
    """

    def __init__(self) -> None:
        self.connections = 0
        self.received: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self, host: str = "127.0.0.1") -> None:
        self._server = await asyncio.start_server(self._handle, host, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        with contextlib.suppress(OSError, TimeoutError):
            data = await asyncio.wait_for(reader.read(1024), 0.5)
            self.received.append(data)
            body = b"canary\n"
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nCache-Control: max-age=600\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
            )
            await writer.drain()
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None


# --- a raw-socket origin that can answer with anything --------------------------------------

# A behaviour writes whatever it likes for one request; True keeps the connection.
Behaviour = Callable[[asyncio.StreamWriter], Awaitable[bool]]


class RawOrigin:
    """An origin speaking bytes of its choosing: truncated bodies, wrong lengths, garbage.

    ``routes`` maps a request path to a behaviour; unknown paths get a clean
    cacheable answer (``clean <path>``).  ``hits`` counts requests per path.
    """

    def __init__(self) -> None:
        self.routes: dict[str, Behaviour] = {}
        self.hits: Counter[str] = Counter()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            pass  # closed by close(): the connection's end is the answer
        finally:
            self._writers.discard(writer)
            writer.close()
            self._tasks.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
                return
            parts = head.split(b"\r\n", 1)[0].split(b" ")
            path = parts[1].decode("latin-1") if len(parts) > 1 else "/"
            self.hits[path] += 1
            behaviour = self.routes.get(path) or clean_answer(path)
            try:
                keep = await behaviour(writer)
            except OSError:
                return
            if not keep:
                return

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            for task in list(self._tasks):
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None


def clean_body(path: str, size: int = 2000) -> bytes:
    """The body the clean origin sends for ``path``: recognisable, of a known length."""
    line = f"clean {path} ".encode()
    return (line * (size // len(line) + 1))[:size]


def clean_answer(path: str) -> Behaviour:
    body = clean_body(path)

    async def answer(writer: asyncio.StreamWriter) -> bool:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
            b"Cache-Control: public, max-age=600\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body)
        )
        await writer.drain()
        return True

    return answer


# --- the load origin (its own process) ------------------------------------------------------


def _body(path: str, size: int) -> bytes:
    seed = hashlib.blake2b(path.encode(), digest_size=8).hexdigest().encode()
    return (seed * (size // len(seed) + 1))[:size]


def load_origin_app(default_size: int) -> web.Server:
    """Routes: ``/c/*`` cacheable for an hour, ``/sie/*`` fresh 1 s with
    ``stale-if-error=600``, ``/nostore/*`` never stored, ``/slow/{ms}/*`` answered
    after ``ms`` milliseconds (at most 5 s), ``/healthz``.  Bodies are
    ``?size=`` bytes (default ``default_size``), derived from the path."""

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if path == "/healthz":
            return web.Response(text="ok")
        try:
            size = min(int(request.query.get("size", default_size)), 16 * 1024 * 1024)
        except ValueError:
            size = default_size
        cache_control = "public, max-age=3600"
        if path.startswith("/sie/"):
            cache_control = "public, max-age=1, stale-if-error=600"
        elif path.startswith("/nostore/"):
            cache_control = "no-store"
        elif path.startswith("/slow/"):
            with contextlib.suppress(ValueError, IndexError):
                await asyncio.sleep(min(int(path.split("/")[2]), 5000) / 1000)
        return web.Response(
            body=_body(request.raw_path, size),
            content_type="application/octet-stream",
            headers={"Cache-Control": cache_control},
        )

    return web.Server(handle, access_log=None)


def main() -> None:
    parser = argparse.ArgumentParser(description="the probes' load origin")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--size", type=int, default=1024, help="default body bytes")
    args = parser.parse_args()
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()

    async def run() -> None:
        runner = web.ServerRunner(load_origin_app(args.size))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", args.port, backlog=4096).start()
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


if __name__ == "__main__":
    main()
