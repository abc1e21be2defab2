"""Probe 1: request smuggling and framing, over raw sockets.

Each case is sent as raw bytes on a fresh connection to ``warmproxy serve``;
most carry a second request (``GET /smuggled/N``) hidden where a parser that
disagrees with the RFC would find it.  A case passes when:

- a case the RFC says to refuse (ambiguous framing, RFC 9112 §6.1/§6.3;
  whitespace before a colon, §5.1; obs-fold, §5.2; bare CR, §2.2; no or two
  Host fields, §3.2; an unsupported version, RFC 9110 §15.6.6; oversized
  lines) gets a 4xx/5xx from the proxy itself or a closed connection, and
  never reaches the origin;
- the hidden request never reaches the origin (no desync between the proxy
  and the origin's pooled connections), whatever the case;
- a clean request made right after on another connection gets its own body;
- nothing the case asked for is cached (``only-if-cached`` answers 504).

    .venv/bin/python -m bench.abuse.framing [--quick] [--count N] [--python-parser] [--keep]

``--count`` rounds over the cases (default 3; --quick: 1); from the second
round on, each attack follows a clean request on the same keep-alive
connection.  ``--python-parser`` runs the proxy on aiohttp's pure-Python HTTP
parser, which aiohttp falls back to where its C extension is missing.  Exit
status 1 when a check fails.
"""

from __future__ import annotations

import sys
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
from bench.abuse.origins import RecordingOrigin, cacheable

CRLF = "\r\n"


@dataclass(frozen=True)
class Case:
    """Raw request bytes; ``refuse``: the RFC says the proxy must not process it."""

    name: str
    refuse: bool
    build: str  # a template: {target}, {smuggled}, {host}, and {len_*} lengths below


def _smuggled(n: str) -> str:
    return f"GET /smuggled/{n} HTTP/1.1{CRLF}Host: 127.0.0.1{CRLF}{CRLF}"


# Each template's {body} is the smuggled request; {chunked} is it as one chunk.
CASES: list[Case] = [
    # Content-Length and Transfer-Encoding together (RFC 9112 §6.1: reject, or
    # use TE and close the connection after the response).
    Case("CL+TE (CL covers the hidden request)", True,
         "POST {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len_zero_body}\r\n"
         "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n{body}"),
    Case("TE+CL (CL shorter than the chunks)", True,
         "POST {target} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n"
         "Content-Length: 4\r\n\r\n{chunked}"),
    # Transfer-Encoding obfuscations: chunked must be the final coding (§6.3).
    Case("TE: xchunked", True,
         "POST {target} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: xchunked\r\n"
         "Content-Length: {len_chunked}\r\n\r\n{chunked}"),
    Case("TE: chunked, identity", True,
         "POST {target} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked, identity\r\n"
         "\r\n{chunked}"),
    Case("TE: two fields (chunked, then identity)", True,
         "POST {target} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n"
         "Transfer-Encoding: identity\r\n\r\n{chunked}"),
    Case("TE: chunked, chunked", True,
         "POST {target} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked, chunked\r\n"
         "\r\n{chunked}"),
    Case("TE: identity with CL", True,
         "POST {target} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: identity\r\n"
         "Content-Length: 4\r\n\r\nabcd{body}"),
    Case("TE with space before the colon", True,
         "POST {target} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding : chunked\r\n"
         "Content-Length: {len_chunked}\r\n\r\n{chunked}"),
    Case("TE value led by a vertical tab", True,
         "POST {target} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: \x0bchunked\r\n"
         "Content-Length: {len_chunked}\r\n\r\n{chunked}"),
    Case("TE folded onto a second line (obs-fold)", True,
         "POST {target} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding:\r\n chunked\r\n"
         "Content-Length: {len_chunked}\r\n\r\n{chunked}"),
    Case("TE in an HTTP/1.0 request", True,
         "POST {target} HTTP/1.0\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n"
         "Content-Length: {len_chunked}\r\n\r\n{chunked}"),
    Case("TE line ended by a bare LF", True,
         "POST {target} HTTP/1.1\r\nHost: {host}\r\nX-Pad: 1\nTransfer-Encoding: chunked\r\n"
         "Content-Length: {len_chunked}\r\n\r\n{chunked}"),
    # Content-Length variants (RFC 9110 §8.6: differing values are unrecoverable).
    Case("two differing Content-Length fields", True,
         "POST {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 4\r\n"
         "Content-Length: {len_body_4}\r\n\r\nabcd{body}"),
    Case("Content-Length list of differing values", True,
         "POST {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 4, {len_body_4}\r\n"
         "\r\nabcd{body}"),
    Case("Content-Length: +N", True,
         "POST {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: +4\r\n\r\nabcd{body}"),
    Case("Content-Length: -1", True,
         "POST {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: -1\r\n\r\n{body}"),
    Case("Content-Length in hex", True,
         "POST {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0x4\r\n\r\nabcd{body}"),
    Case("Content-Length that overflows 64 bits", True,
         "POST {target} HTTP/1.1\r\nHost: {host}\r\n"
         "Content-Length: 184467440737095516160\r\n\r\n{body}"),
    # Chunk sizes.
    Case("chunk size that overflows 64 bits", True,
         "POST {target} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n"
         "10000000000000004\r\nabcd\r\n0\r\n\r\n{body}"),
    Case("chunk size with a 0x prefix", True,
         "POST {target} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n"
         "0x4\r\nabcd\r\n0\r\n\r\n{body}"),
    Case("chunk lines ended by bare LF", True,
         "POST {target} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n"
         "4\nabcd\n0\n\n{body}"),
    # Line endings and field syntax.
    Case("request ended by bare LFs", True, "GET {target} HTTP/1.1\nHost: {host}\n\n{body}"),
    Case("bare CR inside a field value", True,
         "GET {target} HTTP/1.1\r\nHost: {host}\r\nX-Probe: a\rb\r\n\r\n{body}"),
    Case("obs-fold in an ordinary field", True,
         "GET {target} HTTP/1.1\r\nHost: {host}\r\nX-Probe: a\r\n  b\r\n\r\n{body}"),
    Case("NUL inside a field value", True,
         "GET {target} HTTP/1.1\r\nHost: {host}\r\nX-Probe: a\x00b\r\n\r\n{body}"),
    Case("space inside a field name", True,
         "GET {target} HTTP/1.1\r\nHost: {host}\r\nX Probe: a\r\n\r\n{body}"),
    Case("HTTP/1.1 request without Host", True, "GET {target} HTTP/1.1\r\n\r\n{body}"),
    Case("two Host fields", True,
         "GET {target} HTTP/1.1\r\nHost: {host}\r\nHost: other.example\r\n\r\n{body}"),
    Case("space inside the request target", True,
         "GET {target}/a b HTTP/1.1\r\nHost: {host}\r\n\r\n{body}"),
    # Oversized lines and counts (proxy.max_request_line / max_header_size / max_headers).
    Case("request line of 70,000 bytes", True,
         "GET {target}?{pad_70k} HTTP/1.1\r\nHost: {host}\r\n\r\n{body}"),
    Case("header field of 70,000 bytes", True,
         "GET {target} HTTP/1.1\r\nHost: {host}\r\nX-Probe: {pad_70k}\r\n\r\n{body}"),
    Case("500 header fields", True,
         "GET {target} HTTP/1.1\r\nHost: {host}\r\n{many_fields}\r\n{body}"),
    # Versions.
    Case("HTTP/0.9 request line", True, "GET {target}\r\n\r\n{body}"),
    Case("HTTP/2.0 request line", True,
         "GET {target} HTTP/2.0\r\nHost: {host}\r\n\r\n{body}"),
    Case("HTTP/2 connection preface", True, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n{body}"),
    Case("HTTP/3.0 request line", True,
         "GET {target} HTTP/3.0\r\nHost: {host}\r\n\r\n{body}"),
    Case("lower-case http/1.1", True, "GET {target} http/1.1\r\nHost: {host}\r\n\r\n{body}"),
    # May be served; the hidden request must still never be.
    Case("GET with a body holding a request", False,
         "GET {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len_body}\r\n\r\n{body}"),
    Case("chunked POST holding a request", False,
         "POST {target} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n"
         "{chunked}"),
]  # fmt: skip


def render(case: Case, n: str, host: str) -> bytes:
    body = _smuggled(n)
    chunked = f"{len(body):x}\r\n{body}\r\n0\r\n\r\n"
    values = {
        "target": f"/f/{n}",
        "host": host,
        "body": body,
        "chunked": chunked,
        "len_body": str(len(body)),
        "len_body_4": str(len(body) + 4),
        "len_zero_body": str(len("0\r\n\r\n") + len(body)),
        "len_chunked": str(len(chunked)),
        "pad_70k": "a" * 70_000,
        "many_fields": "".join(f"X-Probe-{i}: {i}\r\n" for i in range(500)),
    }
    return case.build.format(**values).encode("latin-1")


def refused(exchange: RawExchange) -> bool:
    """Refused: nothing but 4xx/5xx came back (or nothing at all), and no 2xx/3xx."""
    return all(status >= 400 for status in exchange.statuses)


async def run(workdir: Path, *, rounds: int = 1, python_parser: bool = False) -> Report:
    """``python_parser``: the proxy parses with aiohttp's pure-Python HTTP parser (what
    it falls back to where its C extension is not built) instead of llhttp."""
    report = Report("framing (Python parser)" if python_parser else "framing")
    origin = RecordingOrigin(cacheable)
    await origin.start()
    env = {"AIOHTTP_NO_EXTENSIONS": "1"} if python_parser else {}
    proxy = ProxyProcess(workdir, origin.url, env=env)
    host = f"127.0.0.1:{proxy.port}"
    try:
        async with stopping(proxy), aiohttp.ClientSession() as session:
            await proxy.start()
            refused_count = 0
            for round_no in range(rounds):
                for i, case in enumerate(CASES):
                    n = f"{round_no}-{i}"
                    attack = render(case, n, host)
                    if round_no > 0:  # after a clean request on the same connection
                        clean = f"GET /warm/{n} HTTP/1.1\r\nHost: {host}\r\n\r\n"
                        attack = clean.encode() + attack
                    exchange = await raw_exchange(proxy.port, attack, idle=1.0)
                    statuses = exchange.statuses[1:] if round_no > 0 else exchange.statuses
                    answered = RawExchange(
                        exchange.responses[1:] if round_no > 0 else exchange.responses,
                        exchange.closed,
                        exchange.garbage,
                    )
                    name = f"[{n}] {case.name}"
                    smuggled_seen = any(p.startswith(f"/smuggled/{n}") for p in origin.paths())
                    target_seen = any(p.startswith(f"/f/{n}") for p in origin.paths())
                    problems = []
                    if smuggled_seen:
                        problems.append("the hidden request reached the origin")
                    if case.refuse:
                        if not refused(answered):
                            problems.append(f"not refused: {statuses}")
                        if target_seen:
                            problems.append("forwarded to the origin")
                        if refused(answered):
                            refused_count += 1
                    victim = f"/victim/{n}"
                    status, _, body = await fetch(session, proxy.url + victim)
                    if (status, body) != (200, f"origin {victim}\n".encode()):
                        problems.append(f"a clean request after it got {status} {body[:60]!r}")
                    for path in (f"/f/{n}", f"/smuggled/{n}"):
                        status, _, body = await fetch(session, proxy.url + path, only_if_cached())
                        if status != 504:
                            problems.append(f"{path} cached ({status}, {body[:40]!r})")
                    report.check(
                        name,
                        not problems,
                        "; ".join(problems) or answered.describe(),
                    )
            alive, _, _ = await fetch(session, f"{proxy.control_url}/healthz")
            report.check("proxy alive after every case", alive == 200, f"/healthz {alive}")
            must_refuse = sum(c.refuse for c in CASES) * rounds
            report.figure("refused", f"{refused_count}/{must_refuse}")
            report.figure(
                "hidden requests at origin",
                str(sum(p.startswith("/smuggled/") for p in origin.paths())),
            )
    finally:
        await origin.close()
    return report


def main() -> int:
    parser = probe_arguments(__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=None, help="rounds over the cases")
    parser.add_argument(
        "--python-parser",
        action="store_true",
        help="run the proxy on aiohttp's pure-Python parser (AIOHTTP_NO_EXTENSIONS=1)",
    )
    args = parser.parse_args()
    rounds = args.count or (1 if args.quick else 3)
    return run_main(
        lambda path: run(path, rounds=rounds, python_parser=args.python_parser), args.keep
    )


if __name__ == "__main__":
    sys.exit(main())
