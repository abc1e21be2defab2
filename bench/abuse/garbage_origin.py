"""Probe 2: an origin that misbehaves (truncated bodies, wrong lengths, garbage).

A raw-socket origin answers each case's path with broken bytes, every answer
marked cacheable (``public, max-age=600``) so that a proxy that took it for a
whole response would keep it.  For each case:

- the client's own answer is a 5xx from the proxy, or visibly incomplete (the
  connection ends before the length the proxy announced), or the whole body
  the origin's framing declared: never a shorter body passed off as complete;
- nothing but that whole body is stored (``only-if-cached``: 504 or the body);
- a clean request made right after (another path, the same pooled origin
  connections) gets its own whole body;
- once the origin is repaired, a later request for the same path gets a whole
  body (the clean one, or the declared one if that was stored).

    .venv/bin/python -m bench.abuse.garbage_origin [--quick] [--count N] [--python-parser]

The proxy runs with ``proxy.read_timeout = 2`` (stalls end quickly) and
``cache.max_entry_bytes = 64KiB`` (one case is streamed, not buffered).
``--count``: bytes of the slow drip, one each 0.25 s, while another path is
asked for beside it (default 40; --quick: 12).  ``--python-parser`` runs the
proxy on aiohttp's pure-Python HTTP parser, which aiohttp falls back to where
its C extension is missing.  Exit status 1 when a check fails.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import aiohttp

from bench.abuse.common import (
    ProxyProcess,
    RawExchange,
    Report,
    fetch,
    only_if_cached,
    probe_arguments,
    raw_exchange,
    run_main,
    stopping,
)
from bench.abuse.origins import Behaviour, RawOrigin, clean_body

READ_TIMEOUT = 2.0
# Entries above this are streamed to the client, not buffered (cache.max_entry_bytes).
MAX_ENTRY_BYTES = 65536
CACHEABLE = b"Content-Type: text/plain\r\nCache-Control: public, max-age=600\r\n"
BODY = bytes(range(97, 123)) * 154  # 4004 bytes of a-z


def declared(n: int) -> bytes:
    return BODY[:n]


def _answer(head: bytes, body: bytes, *, then: str = "close", hold: float = 0.0) -> Behaviour:
    """Write ``head`` and ``body``; then close, hold the connection open, or keep it."""

    async def behaviour(writer: asyncio.StreamWriter) -> bool:
        writer.write(head + body)
        await writer.drain()
        if then == "hold":
            await asyncio.sleep(hold)
            return False
        return then == "keep"

    return behaviour


def _reset(head: bytes, body: bytes) -> Behaviour:
    async def behaviour(writer: asyncio.StreamWriter) -> bool:
        writer.write(head + body)
        await writer.drain()
        transport = writer.transport
        transport.abort()  # RST instead of FIN
        return False

    return behaviour


def _drip(size: int, interval: float) -> Behaviour:
    async def behaviour(writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\n" + CACHEABLE + b"Content-Length: %d\r\n\r\n" % size)
        await writer.drain()
        for byte in declared(size):
            await asyncio.sleep(interval)
            writer.write(bytes([byte]))
            await writer.drain()
        return True

    return behaviour


def _chunked(chunks: list[bytes], ending: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + ending


@dataclass(frozen=True)
class Case:
    name: str
    behaviour: Callable[[], Behaviour]
    # The one body that may be served as complete and stored (None: none may).
    whole: bytes | None


def cases(drip_size: int, drip_interval: float, hold: float) -> list[Case]:
    ok = b"HTTP/1.1 200 OK\r\n" + CACHEABLE
    half = declared(2000)
    return [
        Case("truncated: Content-Length 4000, 2000 sent, closed",
             lambda: _answer(ok + b"Content-Length: 4000\r\n\r\n", half), None),
        Case("truncated while streamed: 100,000 of 200,000 bytes (over max_entry_bytes)",
             lambda: _answer(ok + b"Content-Length: 200000\r\n\r\n", b"s" * 100_000), None),
        Case("truncated: connection reset after 2000 of 4000",
             lambda: _reset(ok + b"Content-Length: 4000\r\n\r\n", half), None),
        Case("truncated: chunked, no last chunk, closed",
             lambda: _answer(ok + b"Transfer-Encoding: chunked\r\n\r\n",
                             _chunked([half[:1000], half[1000:]], b"")), None),
        Case("stalled: Content-Length 4000, 2000 sent, held open",
             lambda: _answer(ok + b"Content-Length: 4000\r\n\r\n", half, then="hold",
                             hold=hold), None),
        Case("stalled: headers, then nothing",
             lambda: _answer(ok + b"Content-Length: 4000\r\n\r\n", b"", then="hold",
                             hold=hold), None),
        Case("Content-Length 100, 2000 bytes sent (kept alive)",
             lambda: _answer(ok + b"Content-Length: 100\r\n\r\n", half, then="keep"),
             declared(100)),
        Case("two differing Content-Length fields",
             lambda: _answer(ok + b"Content-Length: 2000\r\nContent-Length: 1000\r\n\r\n",
                             half), None),
        Case("Content-Length: -5",
             lambda: _answer(ok + b"Content-Length: -5\r\n\r\n", half), None),
        Case("Content-Length and chunked together",
             lambda: _answer(ok + b"Content-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n",
                             _chunked([half], b"0\r\n\r\n")), half),
        Case("bad chunk size",
             lambda: _answer(ok + b"Transfer-Encoding: chunked\r\n\r\n",
                             b"zz\r\n" + half + b"\r\n0\r\n\r\n"), None),
        Case("garbage status line (2OO)",
             lambda: _answer(b"HTTP/1.1 2OO OK\r\n" + CACHEABLE + b"Content-Length: 2000\r\n\r\n",
                             half), None),
        Case("no status line (an HTTP/0.9 answer)",
             lambda: _answer(b"", b"<html>" + half + b"</html>"), None),
        Case("binary garbage",
             lambda: _answer(b"", bytes((i * 37) % 256 for i in range(3000))), None),
        Case("a header field of 100,000 bytes",
             lambda: _answer(ok + b"X-Big: " + b"a" * 100_000 + b"\r\nContent-Length: 2000\r\n\r\n",
                             half), None),
        Case("20,000 header fields",
             lambda: _answer(ok + b"".join(b"X-H%d: v\r\n" % i for i in range(20_000))
                             + b"Content-Length: 2000\r\n\r\n", half), half),
        Case("obs-fold in a response header",
             lambda: _answer(ok + b"X-Fold: a\r\n b\r\nContent-Length: 2000\r\n\r\n", half), half),
        Case("body delimited by the close (whole)",
             lambda: _answer(ok + b"Connection: close\r\n\r\n", half), half),
        Case(f"slow drip: {drip_size} bytes, one each {drip_interval:g} s",
             lambda: _drip(drip_size, drip_interval), declared(drip_size)),
    ]  # fmt: skip


def client_verdict(exchange: RawExchange, whole: bytes | None) -> str | None:
    """Why the client's answer is wrong, or None."""
    if not exchange.responses:
        return None if exchange.closed else "no answer and the connection left open"
    response = exchange.responses[0]
    if response.status >= 500 or not response.complete:
        return None
    if response.status == 200 and whole is not None and response.body == whole:
        return None
    return f"a complete {response.status} of {len(response.body)} bytes" + (
        f" (the origin declared {len(whole)})" if whole is not None else " from a broken answer"
    )


async def run(
    workdir: Path,
    *,
    drip_bytes: int = 40,
    read_timeout: float = READ_TIMEOUT,
    python_parser: bool = False,
) -> Report:
    """``drip_bytes``: the slow drip's length (one byte each 0.25 s); ``read_timeout``:
    the proxy's ``proxy.read_timeout``, which ends the stalls; ``python_parser``:
    the proxy reads responses with aiohttp's pure-Python parser instead of llhttp."""
    report = Report("garbage origin (Python parser)" if python_parser else "garbage origin")
    drip_size, drip_interval = drip_bytes, 0.25
    origin = RawOrigin()
    await origin.start()
    proxy = ProxyProcess(
        workdir,
        origin.url,
        env={
            "WARMPROXY_PROXY__READ_TIMEOUT": str(read_timeout),
            "WARMPROXY_CACHE__MAX_ENTRY_BYTES": str(MAX_ENTRY_BYTES),
            **({"AIOHTTP_NO_EXTENSIONS": "1"} if python_parser else {}),
        },
    )
    all_cases = cases(drip_size, drip_interval, hold=read_timeout * 3)
    try:
        async with stopping(proxy), aiohttp.ClientSession() as session:
            await proxy.start()
            host = f"127.0.0.1:{proxy.port}"
            truncated_served = 0
            for i, case in enumerate(all_cases):
                path = f"/g/{i}"
                origin.routes[path] = case.behaviour()
                request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
                request_bytes = request.encode()
                started = time.monotonic()
                if "drip" in case.name:
                    # While the origin drips, other requests are answered at once.
                    task = asyncio.ensure_future(
                        raw_exchange(proxy.port, request_bytes, idle=read_timeout + 2)
                    )
                    await asyncio.sleep(drip_interval * 2)
                    t0 = time.monotonic()
                    status, _, _ = await fetch(session, f"{proxy.url}/g/beside-drip")
                    beside = time.monotonic() - t0
                    # Not held behind the drip: answered while it still runs.
                    report.check(
                        "another path answered during the drip",
                        status == 200 and not task.done(),
                        f"{status} in {beside * 1000:.0f} ms"
                        + ("" if not task.done() else ", after the drip ended"),
                    )
                    exchange = await task
                else:
                    exchange = await raw_exchange(proxy.port, request_bytes, idle=read_timeout + 2)
                took = time.monotonic() - started
                problems = []
                why = client_verdict(exchange, case.whole)
                if why is not None:
                    problems.append(f"client got {why}")
                    truncated_served += 1
                status, _, body = await fetch(session, proxy.url + path, only_if_cached())
                if status != 504 and (status != 200 or body != case.whole):
                    problems.append(f"stored: {status} with {len(body)} bytes")
                after = f"/g/after/{i}"
                status, _, body = await fetch(session, proxy.url + after)
                if (status, body) != (200, clean_body(after)):
                    problems.append(f"the next clean request got {status}, {len(body)} bytes")
                first = exchange.responses[0] if exchange.responses else None
                seen = (
                    f"{first.status}{'' if first.complete else ' (incomplete)'}"
                    if first
                    else "no response"
                )
                report.check(
                    f"[{i}] {case.name}",
                    not problems,
                    "; ".join(problems) or f"client saw {seen} after {took:.1f} s",
                )
            # The origin is repaired: every path answers cleanly.
            origin.routes.clear()
            for i, case in enumerate(all_cases):
                path = f"/g/{i}"
                status, _, body = await fetch(session, proxy.url + path)
                ok = status == 200 and body in (clean_body(path), case.whole)
                report.check(
                    f"[{i}] a later request gets a whole body",
                    ok,
                    f"{status}, {len(body)} bytes"
                    + ("" if ok else ": neither the clean body nor the declared one"),
                )
            alive, _, _ = await fetch(session, f"{proxy.control_url}/healthz")
            report.check("proxy alive", alive == 200, f"/healthz {alive}")
            report.figure("broken answers served as complete", str(truncated_served))
            report.figure("cases", str(len(all_cases)))
    finally:
        await origin.close()
    return report


def main() -> int:
    parser = probe_arguments(__doc__.split("\n\n")[0])
    parser.add_argument(
        "--count", type=int, default=None, help="bytes of the slow drip (default 40; --quick: 12)"
    )
    parser.add_argument(
        "--python-parser",
        action="store_true",
        help="run the proxy on aiohttp's pure-Python parser (AIOHTTP_NO_EXTENSIONS=1)",
    )
    args = parser.parse_args()
    drip = args.count or (12 if args.quick else 40)
    return run_main(
        lambda path: run(path, drip_bytes=drip, python_parser=args.python_parser), args.keep
    )


if __name__ == "__main__":
    sys.exit(main())
