"""Probe 3: the cache-poisoning matrix of forwarding and override headers.

The origin echoes every header below (and ``Host``) into its body, as an app
that builds links, redirects or routes from them would, in a response every
cache may keep (``public, max-age=600``, no ``Vary``).  For each header an
attacker asks first, sending a marked value; then a clean client asks for the
same URL.  The clean client must never see the attacker's value: the proxy
replaces the header by its own, drops it, keys the cache by it, or does not
store what the attacker caused.  A header the proxy forwards from an
untrusted client into a shared entry fails.

    .venv/bin/python -m bench.abuse.poisoning [--quick] [--keep]

Exit status 1 when a check fails.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import aiohttp
from aiohttp import web

from bench.abuse.common import ProxyProcess, Report, fetch, probe_arguments, run_main, stopping
from bench.abuse.origins import RecordingOrigin

MARK = "evil-7f3a"

# (header, attacker's value): every value holds MARK, so an echo of it shows.
ATTACKS: list[tuple[str, str]] = [
    ("X-Forwarded-Host", f"{MARK}.example"),
    ("X-Forwarded-Port", "31337"),  # no room for the mark: the number is one
    ("X-Forwarded-Prefix", f"/{MARK}"),
    ("X-Forwarded-Scheme", f"{MARK}"),
    ("X-Forwarded-Proto", f"{MARK}"),
    ("X-Forwarded-Server", f"{MARK}.example"),
    ("X-Forwarded-For", f"{MARK}.example"),
    ("X-Forwarded-Ssl", f"{MARK}"),
    ("Forwarded", f'for=1.2.3.4;host="{MARK}.example";proto=https'),
    ("X-Original-URL", f"/{MARK}"),
    ("X-Rewrite-URL", f"/{MARK}"),
    ("X-Original-Host", f"{MARK}.example"),
    ("X-Host", f"{MARK}.example"),
    ("X-HTTP-Method-Override", f"{MARK}"),
    ("X-HTTP-Method", f"{MARK}"),
    ("X-Method-Override", f"{MARK}"),
    ("X-Real-IP", f"{MARK}"),
    ("X-Client-IP", f"{MARK}"),
    ("True-Client-IP", f"{MARK}"),
    ("Client-IP", f"{MARK}"),
    ("X-Cluster-Client-IP", f"{MARK}"),
    ("X-Forwarded-Path", f"/{MARK}"),
    # CGI, WSGI, PHP and Rack servers read X_Forwarded_Host as X-Forwarded-Host.
    ("X_Forwarded_Host", f"{MARK}.example"),
    ("X_Forwarded_Proto", f"{MARK}"),
    ("X_Original_URL", f"/{MARK}"),
    ("Host", f"{MARK}.example"),
]

ECHOED = sorted({name for name, _ in ATTACKS} | {"Host"})


async def echo(request: web.BaseRequest) -> web.StreamResponse:
    """Every header of ATTACKS as the origin received it (all values, in order)."""
    lines = [
        f"{name}: {' | '.join(request.headers.getall(name, []))}"
        for name in ECHOED
        if name in request.headers
    ]
    return web.Response(
        text=f"page {request.raw_path}\n" + "\n".join(lines) + "\n",
        headers={"Cache-Control": "public, max-age=600"},
    )


def leaked(body: bytes, value: str) -> bool:
    return MARK in body.decode("latin-1") or (value.isdigit() and value in body.decode("latin-1"))


async def run(workdir: Path, *, rounds: int = 1) -> Report:
    report = Report("poisoning")
    origin = RecordingOrigin(echo)
    await origin.start()
    proxy = ProxyProcess(workdir, origin.url)
    poisoned = 0
    try:
        async with stopping(proxy), aiohttp.ClientSession() as session:
            await proxy.start()
            for round_no in range(rounds):
                for i, (name, value) in enumerate(ATTACKS):
                    path = f"/p/{round_no}/{i}"
                    attack = {name: value}
                    if round_no % 2 == 1:  # the same, in another spelling: case, a list
                        attack = {name.lower(): f"{value}, {value}"}
                    status, _, _ = await fetch(session, proxy.url + path, attack)
                    _, _, clean = await fetch(session, proxy.url + path)
                    # Another clean client, on a path first asked for cleanly:
                    # the attacker comes second and must not replace the entry.
                    second = f"/p/{round_no}/{i}/second"
                    await fetch(session, proxy.url + second)
                    await fetch(session, proxy.url + second, attack)
                    _, _, after = await fetch(session, proxy.url + second)
                    problems = []
                    if leaked(clean, value):
                        problems.append("a clean client got the attacker's value")
                    if leaked(after, value):
                        problems.append("the attacker replaced a clean entry")
                    if problems:
                        poisoned += 1
                    report.check(
                        f"[{round_no}] {name}",
                        not problems,
                        "; ".join(problems) or f"attacker got {status}; clean body unmarked",
                    )
            report.figure("headers poisoning the cache", f"{poisoned}/{len(ATTACKS) * rounds}")
    finally:
        await origin.close()
    return report


def main() -> int:
    parser = probe_arguments(__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=None, help="rounds (default 2; --quick: 1)")
    args = parser.parse_args()
    rounds = args.count or (1 if args.quick else 2)
    return run_main(lambda path: run(path, rounds=rounds), args.keep)


if __name__ == "__main__":
    sys.exit(main())
