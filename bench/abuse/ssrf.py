"""Probe 4: SSRF and file reads through every field that takes a URL, path or DSN.

A canary listener on loopback stands for a host other than the origin (an
internal service, a metadata endpoint): no connection may ever reach it.  The
control API is fed hostile values in every field that names a URL, path, file
or DSN: ``warm-key`` (``url`` and bulk ``urls``), ``warm-pattern``, and the
schedule's sources (URL lists, sitemaps, files, SQL DSNs); the proxy listener
gets absolute-form targets, ``//host`` paths and foreign Host fields; the
origin answers with redirects and sitemaps pointing at the canary; ``serve``
gets bad ``--origin`` values.  Checks:

- a value naming another host, a file outside
  ``strategies.proactive.file_source_dir`` or a database host not allowed is
  refused with a 4xx, and a bulk request holding one is refused whole;
- the canary sees no connection, whatever was accepted or run;
- no response ever quotes a file's content or a DSN's password;
- values the proxy must accept (paths, URLs on the origin) are accepted.

    .venv/bin/python -m bench.abuse.ssrf [--quick] [--keep]

Exit status 1 when a check fails.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import aiohttp
from aiohttp import web

from bench.abuse.common import (
    TOKEN,
    ProxyProcess,
    Report,
    clean_environment,
    probe_arguments,
    raw_exchange,
    run_main,
    stopping,
)
from bench.abuse.origins import Canary, RecordingOrigin

FILE_SECRET = "probe-file-secret-5c1d"
DSN_SECRET = "probe-dsn-password-91e2"
ORIGIN_SECRET = "probe-origin-password-07aa"


@dataclass(frozen=True)
class Call:
    """A control API call and whether the proxy must refuse it (4xx)."""

    name: str
    method: str
    path: str
    body: Any
    refuse: bool | None  # None: either answer is right, only the canary counts


def sitemap(locs: list[str], *, index: bool = False) -> bytes:
    tag, item = ("sitemapindex", "sitemap") if index else ("urlset", "url")
    entries = "".join(f"<{item}><loc>{loc}</loc></{item}>" for loc in locs)
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>'
        f'<{tag} xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{entries}</{tag}>'
    ).encode()


def make_origin(canary: int) -> RecordingOrigin:
    evil = f"127.0.0.1:{canary}"

    async def respond(request: web.BaseRequest) -> web.StreamResponse:
        path = request.raw_path
        if path.startswith("/redirect"):
            return web.Response(status=302, headers={"Location": f"http://{evil}/redirected"})
        if path == "/evil-sitemap.xml":
            origin = request.headers.get("Host", "")
            body = sitemap(
                [
                    f"http://{evil}/a",
                    f"https://{evil}/b",
                    f"//{evil}/c",
                    f"/\\{evil}/d",
                    f"http://user@{origin}/userinfo",
                    f"http://{origin}@{evil}/e",
                    f"http://{origin}/ok-from-sitemap",
                ]
            )
            return web.Response(body=body, content_type="application/xml")
        if path == "/evil-index.xml":
            body = sitemap([f"http://{evil}/child.xml", f"//{evil}/child2.xml"], index=True)
            return web.Response(body=body, content_type="application/xml")
        return web.Response(
            text=f"origin {path}\n", headers={"Cache-Control": "public, max-age=600"}
        )

    return RecordingOrigin(respond)


def calls(canary: int, origin: int, work: Path) -> list[Call]:
    c, o = f"127.0.0.1:{canary}", f"127.0.0.1:{origin}"
    inside, outside = work / "sources", work / "outside"
    warm = "/cache/warming/warm-key"
    out: list[Call] = []
    for name, url in [
        ("http URL of another host", f"http://{c}/x"),
        ("https URL of another host", f"https://{c}/x"),
        ("upper-case scheme", f"HTTP://{c}/x"),
        ("scheme-relative //host", f"//{c}/x"),
        ("/\\host (a backslash)", f"/\\{c}/x"),
        ("\\\\host", f"\\\\{c}/x"),
        ("origin as userinfo, canary as host", f"http://{o}@{c}/x"),
        ("canary, origin after a fragment", f"http://{c}#@{o}/"),
        ("decimal IP of loopback", f"http://2130706433:{canary}/x"),
        ("localhost by name", f"http://localhost:{canary}/x"),
        ("leading space", f" http://{c}/x"),
        ("file URL", "file:///etc/passwd"),
        ("gopher URL", f"gopher://{c}/_x"),
        ("http: without //", f"http:{c}/x"),
        ("CRLF into the request", f"/x\r\nHost: {c}\r\n"),
        ("over-long path", "/" + "a" * 100_000),
    ]:
        out.append(Call(f"warm-key url: {name}", "POST", warm, {"url": url}, True))
    out.append(
        Call(
            "warm-key urls: one bad among good",
            "POST",
            warm,
            {"urls": ["/ok-bulk", f"http://{c}/x"]},
            True,
        )
    )
    out.append(Call("warm-key url: a path", "POST", warm, {"url": "/ok-path"}, False))
    out.append(
        Call("warm-key url: the origin's URL", "POST", warm, {"url": f"http://{o}/ok-abs"}, False)
    )
    out.append(
        Call("warm-key url: a redirect to the canary", "POST", warm, {"url": "/redirect"}, False)
    )
    out.append(
        Call("warm-key url: //host percent-encoded", "POST", warm, {"url": f"/%2F%2F{c}/x"}, None)
    )
    pattern = "/cache/warming/warm-pattern"
    out.append(
        Call(
            "warm-pattern: a URL of another host",
            "POST",
            pattern,
            {"pattern": f"http://{c}/*"},
            True,
        )
    )
    out.append(Call("warm-pattern: every known path", "POST", pattern, {"pattern": "*"}, None))
    out.append(Call("warm-pattern: //host glob", "POST", pattern, {"pattern": f"//{c}/*"}, None))

    def schedule(name: str, source: dict[str, Any], refuse: bool) -> None:
        body = {"sources": [{"name": "probe", "schedule": "0 0 1 1 *", "source": source}]}
        out.append(Call(f"schedule {name}", "POST", "/cache/warming/schedule", body, refuse))

    schedule("urls: another host", {"type": "urls", "paths": [f"http://{c}/x"]}, True)
    schedule("urls: //host", {"type": "urls", "paths": [f"//{c}/x"]}, True)
    schedule("urls: /\\host", {"type": "urls", "paths": [f"/\\{c}/x"]}, True)
    schedule("sitemap: another host", {"type": "sitemap", "url": f"http://{c}/sitemap.xml"}, True)
    schedule("sitemap: //host", {"type": "sitemap", "url": f"//{c}/sitemap.xml"}, True)
    schedule("file: /etc/passwd", {"type": "file", "path": "/etc/passwd"}, True)
    schedule(
        "file: outside file_source_dir", {"type": "file", "path": str(outside / "secret.txt")}, True
    )
    schedule(
        "file: ../ out of file_source_dir",
        {"type": "file", "path": str(inside / ".." / "outside" / "secret.txt")},
        True,
    )
    schedule(
        "file: a symlink out of file_source_dir",
        {"type": "file", "path": str(inside / "link-out.txt")},
        True,
    )
    schedule("file: /proc/self/environ", {"type": "file", "path": "/proc/self/environ"}, True)
    sql = {"type": "sql", "query": "select 1 as id", "key_pattern": "/s/{id}"}
    schedule(
        "sql: sqlite outside file_source_dir",
        {**sql, "dsn": f"sqlite:///{outside / 'db.sqlite'}"},
        True,
    )
    schedule("sql: postgres on another host", {**sql, "dsn": f"postgresql://probe@{c}/db"}, True)
    schedule("sql: postgres with a password", {**sql, "dsn": f"postgresql://probe:pw@{c}/db"}, True)
    schedule(
        "sql: postgres host in a parameter",
        {**sql, "dsn": f"postgresql://probe@/db?host=127.0.0.1&port={canary}"},
        True,
    )
    schedule(
        "sql: password_env naming the control token",
        {**sql, "dsn": f"postgresql://probe@{c}/db", "password_env": "WARMPROXY_CONTROL__TOKEN"},
        True,
    )
    schedule(
        "file: inside file_source_dir", {"type": "file", "path": str(inside / "paths.txt")}, False
    )
    return out


def write_files(work: Path) -> tuple[Path, Path]:
    """The confined directory (with files a posted schedule may read) and a config file."""
    inside, outside = work / "sources", work / "outside"
    inside.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_text(f"{FILE_SECRET}\n")
    with sqlite3.connect(outside / "db.sqlite") as db:
        db.execute("create table t (id text)")
        db.execute("insert into t values (?)", (FILE_SECRET,))
    db.close()
    (inside / "paths.txt").write_text("/ok-from-file\n")
    (inside / "link-out.txt").symlink_to(outside / "secret.txt")
    (inside / "not-paths.txt").write_text(f"{FILE_SECRET} is not a path\n")
    config = work / "probe.toml"
    config.write_text(
        "[strategies.proactive]\n"
        f"file_source_dir = {json.dumps(str(inside))}\n"
        "[[strategies.proactive.data_sources]]\n"
        'name = "config-db"\nenabled = false\n'
        "[strategies.proactive.data_sources.source]\n"
        'type = "sql"\n'
        f'dsn = "postgresql://probe:{DSN_SECRET}@127.0.0.1:1/db"\n'
        'query = "select 1 as id"\nkey_pattern = "/s/{id}"\n'
    )
    return inside, config


def leaks(text: str) -> list[str]:
    return [s for s in (FILE_SECRET, DSN_SECRET, ORIGIN_SECRET, TOKEN) if s in text]


async def run(workdir: Path) -> Report:
    report = Report("ssrf")
    canary = Canary()
    await canary.start()
    origin = make_origin(canary.port)
    await origin.start()
    inside, config = write_files(workdir)
    proxy = ProxyProcess(workdir, origin.url, token=TOKEN, config=config)
    shown: list[str] = []  # every control API answer, searched for secrets at the end
    try:
        async with stopping(proxy), aiohttp.ClientSession() as session:
            await proxy.start()
            for call in calls(canary.port, origin.port, workdir):
                before = canary.connections
                status, body = await proxy.control(session, call.method, call.path, call.body)
                shown.append(json.dumps(body))
                if isinstance(body, dict) and "run_id" in body:
                    await proxy.wait_run(session, body["run_id"])
                problems = []
                if call.refuse is True and not 400 <= status < 500:
                    problems.append(f"accepted ({status})")
                if call.refuse is False and not 200 <= status < 300:
                    problems.append(f"refused ({status}: {str(body)[:120]})")
                if canary.connections > before:
                    problems.append(f"{canary.connections - before} connections to the canary")
                report.check(call.name, not problems, "; ".join(problems) or f"{status}")
            bulk_fetched = "/ok-bulk" in origin.paths()
            report.check(
                "a refused bulk warm-key warmed nothing", not bulk_fetched, "/ok-bulk not fetched"
            )
            for name in ("/ok-path", "/ok-abs"):
                report.check(
                    f"accepted target {name} fetched from the origin",
                    name in origin.paths(),
                    "origin asked",
                )
            await run_sources(report, proxy, session, inside, shown, canary)
            await proxy_listener(report, proxy, canary)
            for path in (
                "/cache/warming/schedule",
                "/cache/warming/status",
                "/cache/warming/progress",
            ):
                _, body = await proxy.control(session, "GET", path)
                shown.append(json.dumps(body))
            found = sorted({s for text in shown for s in leaks(text)})
            report.check(
                "no answer quotes a file, a DSN password or the token",
                not found,
                f"{len(found)} secrets shown" if found else f"{len(shown)} answers searched",
            )
        await origin_flags(report, workdir)
    finally:
        await origin.close()
        await canary.close()
    report.check(
        "the canary was never reached", canary.connections == 0, f"{canary.connections} connections"
    )
    report.figure("canary connections", str(canary.connections))
    return report


async def run_sources(
    report: Report,
    proxy: ProxyProcess,
    session: aiohttp.ClientSession,
    inside: Path,
    shown: list[str],
    canary: Canary,
) -> None:
    """Sitemaps and files that point at the canary: accepted, run, never followed there."""
    sources = [
        {"name": "evil-sitemap", "source": {"type": "sitemap", "url": "/evil-sitemap.xml"}},
        {"name": "evil-index", "source": {"type": "sitemap", "url": "/evil-index.xml"}},
        {"name": "redirect", "source": {"type": "sitemap", "url": "/redirect-sitemap.xml"}},
        {"name": "paths", "source": {"type": "file", "path": str(inside / "paths.txt")}},
        {"name": "not-paths", "source": {"type": "file", "path": str(inside / "not-paths.txt")}},
    ]
    for item in sources:
        item["schedule"] = "0 0 1 1 *"
    status, body = await proxy.control(
        session, "POST", "/cache/warming/schedule", {"sources": sources}
    )
    shown.append(json.dumps(body))
    if not report.check(
        "schedule of sitemaps and files on the origin accepted", status == 200, f"{status}"
    ):
        return
    before = canary.connections
    status, run = await proxy.control(
        session, "POST", "/cache/warming/start", {"strategy": "proactive"}
    )
    shown.append(json.dumps(run))
    if not report.check("scheduled run started", status == 202, f"{status}"):
        return
    done = await proxy.wait_run(session, run["run_id"])
    shown.append(json.dumps(done))
    report.check(
        "sitemaps, an index and a redirect pointing at the canary: not followed",
        canary.connections == before,
        f"run {done.get('status')}, {done.get('progress', {}).get('success')} warmed, "
        f"{canary.connections - before} canary connections",
    )


async def proxy_listener(report: Report, proxy: ProxyProcess, canary: Canary) -> None:
    """Requests to the proxy itself that name the canary: the origin is still asked."""
    c = f"127.0.0.1:{canary.port}"
    h = f"127.0.0.1:{proxy.port}"
    for name, raw in [
        ("absolute-form target", f"GET http://{c}/abs HTTP/1.1\r\nHost: {h}\r\n\r\n"),
        ("//host target", f"GET //{c}/known HTTP/1.1\r\nHost: {h}\r\n\r\n"),
        ("Host of the canary", f"GET /host HTTP/1.1\r\nHost: {c}\r\n\r\n"),
        (
            "X-Forwarded-Host of the canary",
            f"GET /xfh HTTP/1.1\r\nHost: {h}\r\nX-Forwarded-Host: {c}\r\n\r\n",
        ),
        ("CONNECT to the canary", f"CONNECT {c} HTTP/1.1\r\nHost: {c}\r\n\r\n"),
    ]:
        before = canary.connections
        # Connection: close, so the answer ends the exchange.
        request = raw.replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n", 1)
        exchange = await raw_exchange(proxy.port, request.encode(), idle=2.0)
        report.check(
            f"proxy listener: {name}",
            canary.connections == before,
            exchange.describe() + f"; {canary.connections - before} canary connections",
        )


async def origin_flags(report: Report, workdir: Path) -> None:
    """``serve --origin`` with values that are not an origin: refused at start, unquoted."""
    cases = [
        ("with a path and a password", f"http://probe:{ORIGIN_SECRET}@127.0.0.1:1/path"),
        ("a file URL", "file:///etc/passwd"),
        ("a gopher URL", "gopher://127.0.0.1:1/"),
        ("no host", "http:///x"),
    ]

    async def serve(origin: str) -> tuple[int | None, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy.cli", "serve", "--origin", origin,
            "--listen", "127.0.0.1:0", "--control", "127.0.0.1:0",
            cwd=workdir, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env=clean_environment({"WARMPROXY_STATE__DIR": str(workdir / "origin-state")}),
        )  # fmt: skip
        try:
            out, _ = await asyncio.wait_for(process.communicate(), 60)
        except TimeoutError:
            process.kill()
            out, _ = await process.communicate()
        return process.returncode, out.decode(errors="replace")

    results = await asyncio.gather(*(serve(origin) for _, origin in cases))
    for (name, _), (code, said) in zip(cases, results, strict=True):
        problems = []
        if code != 2:
            problems.append(f"exit status {code}")
        if "proxy.origin" not in said:
            problems.append("the message does not name proxy.origin")
        if leaks(said):
            problems.append("the password is quoted")
        report.check(
            f"serve --origin {name}", not problems, "; ".join(problems) or "exit 2, names the key"
        )


def main() -> int:
    args = probe_arguments(__doc__.split("\n\n")[0]).parse_args()
    return run_main(run, args.keep)


if __name__ == "__main__":
    sys.exit(main())
