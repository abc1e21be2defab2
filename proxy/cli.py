"""The ``warmproxy`` command: serve, demo, warm, reload, replay, analyze, import-log."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from proxy import __version__
from proxy.app import Warmproxy
from proxy.config import ConfigError, Settings, load_settings, parse_hostport
from proxy.demo_traffic import DEFAULT_RATE as DEFAULT_TRAFFIC_RATE
from proxy.demo_traffic import MAX_RATE as MAX_TRAFFIC_RATE
from proxy.import_log import FORMATS, import_log_command
from proxy.logs import configure
from proxy.redact import mask_url
from proxy.reload import ReloadRefused
from proxy.state_dir import StateDirBusy, fresh_dir
from proxy.workers import WorkerRole
from warmer.replay import (
    STRATEGY_NAMES,
    CacheSize,
    analyze_command,
    parse_strategies,
    parse_ttl,
    parse_warm_ratio,
    replay_command,
)
from warmer.workloads import WORKLOADS

log = logging.getLogger("warmproxy")

DEFAULT_CONFIG_ENV = "WARMPROXY_CONFIG"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="warmproxy", description="A caching reverse proxy that keeps its cache warm."
    )
    parser.add_argument("--version", action="version", version=f"warmproxy {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--config",
            type=Path,
            default=None,
            help=f"TOML config file (default: ${DEFAULT_CONFIG_ENV} if set)",
        )
        p.add_argument("--listen", help="proxy listener host:port (proxy.listen)")
        p.add_argument("--control", help="control listener host:port (control.listen)")
        p.add_argument("--store", choices=["memory", "redis"], help="cache store (cache.store)")
        p.add_argument("--redis-url", help="Redis URL (cache.redis_url)")
        p.add_argument("--redis-prefix", help="Redis key prefix (cache.redis_prefix)")
        p.add_argument("--max-bytes", help="memory store size, e.g. 256MiB (cache.max_bytes)")
        p.add_argument(
            "--log-level",
            choices=["debug", "info", "warning", "error"],
            help="least severe log level written (logging.level)",
        )
        p.add_argument(
            "--log-format",
            choices=["auto", "json", "console"],
            help="log line format; auto: readable on a terminal, JSON otherwise (logging.format)",
        )

    serve = commands.add_parser("serve", help="run the proxy in front of an origin")
    serve.add_argument("--origin", help="origin URL, e.g. http://127.0.0.1:9000 (proxy.origin)")
    serve.add_argument(
        "--workers",
        type=int,
        help="proxy processes sharing the listen port, 1 to 64 (proxy.workers)",
    )
    common(serve)
    demo = commands.add_parser("demo", help="run a demo origin with the proxy in front of it")
    demo.add_argument("--origin-port", type=int, default=9000, help="demo origin port")
    demo.add_argument(
        "--state-dir",
        help="keep the demo's state here (state.dir); default: a fresh directory removed at exit",
    )
    demo.add_argument(
        "--traffic",
        nargs="?",
        type=_traffic_rate,
        const=DEFAULT_TRAFFIC_RATE,
        default=None,
        metavar="RATE",
        help=(
            "send browser-like requests to the proxy, RATE a second (default "
            f"{DEFAULT_TRAFFIC_RATE:g}, at most {MAX_TRAFFIC_RATE:g}), so the dashboard has data"
        ),
    )
    common(demo)
    warm = commands.add_parser(
        "warm",
        help="warm paths through a running proxy's control API (or standalone), with progress",
    )
    what = warm.add_mutually_exclusive_group(required=True)
    what.add_argument("--pattern", help="glob over known paths, e.g. '/products/*'")
    what.add_argument("--file", type=Path, help="file of paths, one per line ('-': stdin)")
    what.add_argument("--url", action="append", help="a path to warm (repeatable)")
    warm.add_argument("--priority", help="priority level (default: the middle one)")
    warm.add_argument(
        "--control-url",
        default=None,
        help="control API of the running proxy (default: http://<control.listen>)",
    )
    warm.add_argument("--token", help="bearer token (default: control.token / environment)")
    warm.add_argument(
        "--standalone",
        action="store_true",
        help="no running proxy: warm the configured store directly (e.g. a shared Redis)",
    )
    warm.add_argument("--origin", help="origin URL for --standalone (proxy.origin)")
    warm.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a progress bar on stderr (default: only when stderr is a terminal)",
    )
    warm.add_argument(
        "--json",
        action="store_true",
        help="print the final run status as one JSON document on stdout, nothing else",
    )
    common(warm)
    reload = commands.add_parser(
        "reload",
        help="make a running proxy read its configuration again (as SIGHUP does)",
        description=(
            "Ask the running proxy, through its control API, to read its configuration "
            "again and apply what can change live; prints the settings applied and those "
            "that need a restart. Exit status: 0 applied, 1 some changed settings need a "
            "restart (or the proxy cannot be reached), 2 refused (invalid configuration, "
            "wrong token)."
        ),
    )
    reload.add_argument(
        "--control-url",
        default=None,
        help="control API of the running proxy (default: http://<control.listen>)",
    )
    reload.add_argument("--token", help="bearer token (default: control.token / environment)")
    common(reload)
    replay = commands.add_parser(
        "replay",
        help="replay a request trace through the warmer on a virtual clock, per strategy",
        description=(
            "Replay a ts,key,size,client CSV trace against a simulated LRU cache and "
            "origin, once per warming strategy, and print hit ratio, warm fetches per "
            "request, precision and the gain over no warming. Keys that are not paths "
            "are warmed as '/' + key."
        ),
    )
    replay.add_argument(
        "trace",
        type=Path,
        nargs="?",
        default=None,
        help="CSV trace with the header ts,key,size,client (or --synthetic KIND)",
    )
    replay.add_argument(
        "--synthetic",
        choices=list(WORKLOADS),
        default=None,
        metavar="KIND",
        help=f"replay a generated trace of this kind instead of a file: {', '.join(WORKLOADS)}",
    )
    replay.add_argument(
        "--scale",
        type=_positive_int,
        default=None,
        help="with --synthetic: the number of requests (default: the kind's own)",
    )
    replay.add_argument(
        "--seed", type=int, default=0, help="with --synthetic: the generator's seed (default 0)"
    )
    replay.add_argument(
        "--cache-size",
        type=_cache_size,
        default="20%",
        help="cache entries, or a share of the trace's distinct keys such as 20%% (default)",
    )
    replay.add_argument(
        "--ttl",
        type=_replay_ttl,
        default=300.0,
        help=(
            "seconds an entry is fresh (default 300), or 'never' (also 'inf'): entries "
            "never expire, only eviction drops them"
        ),
    )
    replay.add_argument(
        "--strategies",
        type=_strategies,
        default=list(STRATEGY_NAMES),
        help=(
            f"comma-separated, from {','.join(STRATEGY_NAMES)} (default: all of them), "
            "and the bounds that know the future, replayed only when named: oracle "
            "(refreshes an entry at its expiry exactly when that answers a request) and "
            "oracle-prefetch (a warm fetch just before each repeat request that would "
            "miss, within --max-warm-ratio)"
        ),
    )
    replay.add_argument(
        "--max-warm-ratio",
        type=_warm_ratio,
        default=None,
        metavar="RATIO",
        help=(
            "the run's warm budget, warm fetches per request so far: oracle-prefetch holds "
            "it and predictive uses it as its max_warm_ratio (default: unlimited, and "
            "predictive's own 0.2)"
        ),
    )
    replay.add_argument("--json", action="store_true", help="one JSON object per strategy per line")
    replay.add_argument(
        "--config",
        type=Path,
        default=None,
        help=(
            "replay the warming of this TOML config (strategies, thresholds, include/exclude, "
            "budgets, cache-key rules) as strategy 'config', beside none"
        ),
    )
    replay.add_argument(
        "--live",
        action="store_true",
        help=(
            "run the real proxy (sockets, memory store, live warmer) on the trace against a "
            "generated origin, beside the simulation (strategies none, refresh-ahead, predictive)"
        ),
    )
    replay.add_argument(
        "--speed",
        type=_speed,
        default=None,
        help="with --live: times faster than real time (default: the trace in at most 10 min)",
    )
    analyze = commands.add_parser(
        "analyze",
        help="the usage analysis (what /cache/warming/hot-data shows) of a request trace",
        description=(
            "Replay a ts,key,size,client CSV trace without warming against a simulated "
            "cache and print, as JSON, the usage analysis as of its last request: hot "
            "keys, patterns, trends, seasonality, segments and sequences."
        ),
    )
    analyze.add_argument("trace", type=Path, help="CSV trace with the header ts,key,size,client")
    analyze.add_argument(
        "--cache-size", type=_cache_size, default="20%", help="as for replay (default 20%%)"
    )
    analyze.add_argument("--ttl", type=_ttl, default=300.0, help="as for replay (default 300)")
    analyze.add_argument("-n", type=int, default=20, help="keys per list (default 20)")
    import_log = commands.add_parser(
        "import-log",
        help="turn access logs into a ts,key,size,client trace for replay",
        description=(
            "Read access logs (plain or gzip) and write the trace `warmproxy replay` reads: "
            "GET/HEAD requests answered with a status cacheable by default, keyed as the "
            "proxy keys them (--config: its cache-key rules and host keying), clients "
            "anonymized by a keyed hash, sorted by time. Exit status: 0 written, 1 nothing "
            "usable, 2 bad arguments."
        ),
    )
    import_log.add_argument(
        "files", type=Path, nargs="+", metavar="FILE", help="access log files, plain or gzip"
    )
    import_log.add_argument("--format", required=True, choices=FORMATS, help="the logs' format")
    import_log.add_argument(
        "-o", "--output", type=Path, default=None, help="trace file (default: standard output)"
    )
    import_log.add_argument(
        "--config",
        type=Path,
        default=None,
        help=f"TOML config whose cache keys to use (default: ${DEFAULT_CONFIG_ENV} if set)",
    )
    import_log.add_argument(
        "--client-field",
        default=None,
        metavar="NAME",
        help=(
            "log field the client is read from, e.g. remote_user, http_x_forwarded_for "
            "(default: the remote address)"
        ),
    )
    import_log.add_argument(
        "--salt",
        default=None,
        help="the client hash's key, for the same labels across runs (default: random per run)",
    )
    import_log.add_argument("--no-progress", action="store_true", help="no progress bar")
    check = commands.add_parser(
        "check-config",
        help="validate a config file and print the effective settings",
        description=(
            "Validate FILE as `serve --config FILE` would read it (with WARMPROXY_* "
            "variables applied) and print the effective settings, secrets masked. "
            "Exit status 2 and the offending keys when it is not valid."
        ),
    )
    check.add_argument("file", type=Path, help="TOML config file")
    check.add_argument("--json", action="store_true", help="print JSON instead of TOML")
    origin = commands.add_parser(
        "demo-origin",
        help="run only the demo origin (an example app to put the proxy in front of)",
    )
    origin.add_argument(
        "--listen", default="127.0.0.1:9000", help="host:port (default 127.0.0.1:9000)"
    )
    return parser


T = TypeVar("T")


def _argument(parse: Callable[[str], T]) -> Callable[[str], T]:
    """``parse`` as an argparse type: its ValueError's message becomes the
    usage error (argparse would print only "invalid value")."""

    def argument(text: str) -> T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return argument


def _positive_seconds(what: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{what} {text!r} is not a number") from None
        if not 0 < value < float("inf"):
            raise ValueError(f"{what} {text!r}: must be a positive number")
        return value

    return _argument(parse)


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise ValueError(f"{text!r}: must be at least 1")
    return value


_cache_size = _argument(CacheSize.parse)
_ttl = _positive_seconds("ttl")
_replay_ttl = _argument(parse_ttl)
_warm_ratio = _argument(parse_warm_ratio)
_speed = _positive_seconds("speed")
_positive_int = _argument(_at_least_one)
_strategies = _argument(parse_strategies)


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"rate {text!r} is not a number") from None
    if not 0 < value <= MAX_TRAFFIC_RATE:
        raise ValueError(f"rate {text!r}: must be above 0 and at most {MAX_TRAFFIC_RATE:g}")
    return value


_traffic_rate = _argument(_rate)


def _overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """CLI flags as a settings overlay (only the flags that were given)."""
    mapping = {
        "origin": ("proxy", "origin"),
        "listen": ("proxy", "listen"),
        "control": ("control", "listen"),
        "store": ("cache", "store"),
        "redis_url": ("cache", "redis_url"),
        "redis_prefix": ("cache", "redis_prefix"),
        "max_bytes": ("cache", "max_bytes"),
        "log_level": ("logging", "level"),
        "log_format": ("logging", "format"),
        "state_dir": ("state", "dir"),
        "workers": ("proxy", "workers"),
    }
    out: dict[str, dict[str, Any]] = {}
    for attr, (section, key) in mapping.items():
        value = getattr(args, attr, None)
        if value is not None:
            out.setdefault(section, {})[key] = value
    return out


def _budget(args: argparse.Namespace) -> float:
    """``--max-warm-ratio``, or no budget (``math.inf``) when not given."""
    return float("inf") if args.max_warm_ratio is None else float(args.max_warm_ratio)


def _replay(args: argparse.Namespace) -> int:
    """``warmproxy replay``: the built-in strategies, or with ``--config`` the
    warming of that configuration, built as the proxy builds it."""
    if args.config is None:  # no configuration: the trace and flags are all it reads
        return replay_command(
            args.trace,
            cache_size=args.cache_size,
            ttl=args.ttl,
            strategies=args.strategies,
            max_warm_ratio=_budget(args),
            as_json=args.json,
            out=sys.stdout,
            err=sys.stderr,
        )
    from proxy.cache_key import KeyRules
    from proxy.warming import warmer_config
    from warmer.replay import configured_factory

    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"warmproxy replay: {exc}", file=sys.stderr)
        return 2
    named = args.strategies != list(STRATEGY_NAMES)  # built-ins asked for beside it
    rules = KeyRules.from_settings(settings.cache)
    # A replayed trace has no hosts: keys are paths, whatever the keying.
    config = warmer_config(settings, per_host=False)
    return replay_command(
        args.trace,
        cache_size=args.cache_size,
        ttl=args.ttl,
        strategies=[
            *(args.strategies if named else ["none"]),
            ("config", configured_factory(config)),
        ],
        key_rules=rules.normalizer if rules.active else None,
        max_warm_ratio=_budget(args),
        as_json=args.json,
        out=sys.stdout,
        err=sys.stderr,
    )


def _import_log(args: argparse.Namespace) -> int:
    """``warmproxy import-log``: keys made with the settings ``serve`` would read."""
    try:
        settings = load(args)
    except ConfigError as exc:
        print(f"warmproxy import-log: {exc}", file=sys.stderr)
        return 2
    return import_log_command(
        args.files,
        fmt=args.format,
        settings=settings,
        output=args.output,
        client_field=args.client_field,
        salt=args.salt,
        progress=not args.no_progress,
        out=sys.stdout,
        err=sys.stderr,
    )


def load(args: argparse.Namespace, extra: dict[str, dict[str, Any]] | None = None) -> Settings:
    path = args.config
    if path is None and os.environ.get(DEFAULT_CONFIG_ENV):
        path = Path(os.environ[DEFAULT_CONFIG_ENV])
    overrides = _overrides(args)
    for section, values in (extra or {}).items():
        overrides.setdefault(section, {}).update(values)
    return load_settings(path, overrides)


async def _run_until_signalled(
    proxy: Warmproxy,
    on_started: str | None = None,
    started: Callable[[], None] | None = None,
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    received: list[signal.Signals] = []
    # SIGHUP: read the configuration again (proxy/reload.py); one received
    # while starting is acted on once started, several at once reload once.
    reload_wanted = asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig)
        stop.set()

    if sys.platform != "win32":  # the loop has no signal handlers there
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, reload_wanted.set)
    await proxy.start()
    if on_started:
        print(on_started, flush=True)
    if started is not None:
        started()
    reloading = asyncio.create_task(_reload_on_hangup(proxy, reload_wanted))
    try:
        await stop.wait()
    finally:
        reloading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reloading
        # SIGTERM comes from an orchestrator: give its load balancer time to
        # see /readyz fail.  SIGINT is a person at a terminal: stop now.
        terminated = bool(received) and received[0] == signal.SIGTERM
        drain = proxy.settings.proxy.shutdown_delay if terminated else 0.0
        log.info("shutting down", extra={"signal": received[0].name if received else None})
        await proxy.stop(drain=drain)


async def _reload_on_hangup(proxy: Warmproxy, wanted: asyncio.Event) -> None:
    while True:
        await wanted.wait()
        wanted.clear()
        log.info("reloading the configuration", extra={"signal": "SIGHUP"})
        try:
            await proxy.reload()
        except ReloadRefused:
            pass  # logged with what is wrong; the proxy goes on as it was
        except Exception:  # a bug must not end the process: it goes on as it was
            log.exception("reload failed")


def _serving_banner(settings: Settings) -> str:
    workers = settings.proxy.workers
    return (
        f"warmproxy {__version__}: proxy on http://{settings.proxy.listen} -> "
        f"{mask_url(settings.proxy.origin)}, control on http://{settings.control.listen}, "
        f"store {settings.cache.store}" + (f", {workers} workers" if workers > 1 else "")
    )


async def _serve(settings: Settings, reread: Callable[[], Settings]) -> None:
    proxy = Warmproxy(settings)
    proxy.load_settings = reread
    await _run_until_signalled(proxy, _serving_banner(settings))


async def _serve_as_worker(
    settings: Settings,
    reread: Callable[[], Settings],
    role: WorkerRole,
    started: Callable[[], None],
) -> None:
    from proxy.workers import stop_with_parent

    stop_with_parent(asyncio.get_running_loop())
    proxy = Warmproxy(settings, worker=role)
    proxy.load_settings = reread
    # No banner here: the supervisor prints one once every worker listens.
    await _run_until_signalled(proxy, None, started)


def serve_worker(args: argparse.Namespace, role: WorkerRole, started: Callable[[], None]) -> int:
    """One worker process of ``serve --workers N`` (:mod:`proxy.workers`); its exit status."""
    try:
        settings = load(args)
    except ConfigError as exc:
        print(f"warmproxy: {exc}", file=sys.stderr)
        return 2
    configure(settings.logging.level, settings.logging.format)
    _install_uvloop()
    try:
        asyncio.run(_serve_as_worker(settings, lambda: load(args), role, started))
    except StateDirBusy as exc:
        print(f"warmproxy: cannot start: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"warmproxy: cannot start worker {role.index}: {exc}", file=sys.stderr)
        return 1
    return 0


async def _demo(
    settings: Settings,
    origin_port: int,
    reread: Callable[[], Settings],
    traffic: float | None = None,
) -> None:
    from proxy.demo_origin import start_demo_origin
    from proxy.demo_traffic import traffic_for

    runner = await start_demo_origin("127.0.0.1", origin_port)
    visitors: asyncio.Task[None] | None = None
    try:
        proxy = Warmproxy(settings)
        proxy.load_settings = reread
        if traffic is not None:  # starts sending once the proxy listens; stops with the demo
            visitors = asyncio.create_task(traffic_for(proxy, traffic))
        p, c = settings.proxy.listen, settings.control.listen
        await _run_until_signalled(proxy, _demo_banner(settings.proxy.origin, p, c, traffic))
    finally:
        if visitors is not None:
            visitors.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await visitors
        await runner.cleanup()


def _demo_origin_only(listen: str) -> int:
    from proxy.demo_origin import start_demo_origin

    try:
        host, port = parse_hostport(listen, what="--listen")
    except ValueError as exc:
        print(f"warmproxy: {exc}", file=sys.stderr)
        return 2

    async def run() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        if sys.platform != "win32":
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
        runner = await start_demo_origin(host, port)
        print(f"warmproxy demo origin on http://{listen}", flush=True)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    configure("info", "auto")
    asyncio.run(run())
    return 0


def _demo_banner(origin: str, listen: str, control: str, traffic: float | None = None) -> str:
    base = f"http://{listen}"
    # As the user started it (e.g. .venv/bin/warmproxy from `make demo`), so the
    # warm command below runs as printed.
    command = sys.argv[0] if Path(sys.argv[0]).name == "warmproxy" else "warmproxy"
    visitors = (
        f"{traffic:g} browser-like requests a second (--traffic)"
        if traffic is not None
        else "none; `warmproxy demo --traffic` sends browser-like requests"
    )
    return f"""
warmproxy demo: origin {origin}, proxy {base}, control http://{control}
  dashboard: http://{control}/cache/warming/dashboard
  traffic:   {visitors}

Try:
  curl -si {base}/products/1 | grep -iE '^(HTTP|age|cache-status|etag)'   # miss, then hit
  ETAG=$(curl -sI {base}/products/1 | grep -i '^etag' | cut -d' ' -f2 | tr -d '\\r')
  curl -si {base}/products/1 -H "If-None-Match: $ETAG" | head -1            # 304 from cache
  curl -si {base}/articles/3 | grep -i cache-status                        # heuristic freshness
  curl -si {base}/account | grep -i cache-status                           # no-store: never cached
  curl -si -X POST {base}/products/1 | head -1                             # invalidates /products/1
  curl -s  {base}/big/32 -o /dev/null -w '%{{size_download}} bytes\\n'      # streamed, not cached
  curl -si {base}/slow/20 | grep -i cache-status                           # slow origin
  curl -s  http://{control}/metrics | grep ^warmproxy_requests              # hits and misses
  curl -s  http://{control}/readyz

Warm a page before anyone asks for it, then ask as a browser would (gzip):
  {command} warm --control-url http://{control} --url /products/42
  curl -si --compressed {base}/products/42 | grep -i cache-status          # a hit
The same through the control API:
  curl -s  -X POST http://{control}/cache/warming/warm-key \\
       -H 'Content-Type: application/json' -d '{{"url": "/products/42"}}'

Ctrl-C stops it.
"""


def _install_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _replay_synthetic(args: argparse.Namespace) -> int:
    """``warmproxy replay --synthetic KIND``: the kind's trace (:mod:`warmer.workloads`)
    written to a temporary file and replayed as a trace file is."""
    from warmer.workloads import generate, write_csv

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{args.synthetic}.csv"
        write_csv(path, generate(args.synthetic, args.scale, seed=args.seed))
        return _run(argparse.Namespace(**{**vars(args), "trace": path, "synthetic": None}))


def main(argv: Sequence[str] | None = None) -> int:
    return _run(_parser().parse_args(argv))


def _run(args: argparse.Namespace) -> int:
    if args.command == "replay" and (args.trace is None) == (args.synthetic is None):
        print(
            "warmproxy replay: give a trace file or --synthetic KIND (one of them)", file=sys.stderr
        )
        return 2
    if args.command == "replay" and args.synthetic is not None:
        return _replay_synthetic(args)
    if args.command == "import-log":
        return _import_log(args)
    if args.command == "check-config":
        from proxy.check_config import check_config

        return check_config(args.file, as_json=args.json, out=sys.stdout, err=sys.stderr)
    if args.command == "demo-origin":
        return _demo_origin_only(args.listen)
    if args.command == "analyze":
        return analyze_command(
            args.trace,
            cache_size=args.cache_size,
            ttl=args.ttl,
            n=args.n,
            out=sys.stdout,
            err=sys.stderr,
        )
    if args.command == "replay" and args.live:
        from proxy.live_replay import live_replay_command

        # The live run's origin answers with a max-age and its warmer keeps its
        # own budget: neither flag has a live meaning.
        if args.ttl == float("inf") or args.max_warm_ratio is not None:
            flag = "--ttl never" if args.ttl == float("inf") else "--max-warm-ratio"
            print(
                f"warmproxy replay --live: {flag} is for the simulated replay only", file=sys.stderr
            )
            return 2

        configure("warning", "auto")
        return live_replay_command(
            args.trace,
            cache_size=args.cache_size,
            ttl=args.ttl,
            # Not named: the strategies that have a live configuration.
            strategies=None if args.strategies == list(STRATEGY_NAMES) else args.strategies,
            speed=args.speed,
            config=getattr(args, "config", None),
            as_json=args.json,
            out=sys.stdout,
            err=sys.stderr,
        )
    if args.command == "replay":
        return _replay(args)
    port = getattr(args, "origin_port", None)
    demo_origin = {"proxy": {"origin": f"http://127.0.0.1:{port}"}} if port is not None else {}
    try:
        settings = load(args, demo_origin)
    except ConfigError as exc:
        print(f"warmproxy: {exc}", file=sys.stderr)
        return 2
    configure(settings.logging.level, settings.logging.format)
    _install_uvloop()
    if args.command == "warm":
        from proxy.warm_command import run_warm_command

        return run_warm_command(args, settings)
    if args.command == "reload":
        from proxy.reload_command import run_reload_command

        return run_reload_command(args, settings)
    demo_state: Path | None = None
    try:
        if args.command == "demo":
            if not settings.state.dir:
                # A fresh state directory, removed at exit: a demo never shows
                # an earlier run's figures nor adopts its posted schedule.
                demo_state = fresh_dir("demo-")
                settings.state.dir = str(demo_state)
            state_dir = settings.state.dir

            def reread_demo() -> Settings:
                again = load(args, demo_origin)
                again.state.dir = again.state.dir or state_dir
                return again

            asyncio.run(_demo(settings, args.origin_port, reread_demo, args.traffic))
        elif settings.proxy.workers > 1:
            from proxy.workers import supervise

            def started(listen: str) -> None:
                settings.proxy.listen = listen  # the port chosen, when it was 0
                print(_serving_banner(settings), flush=True)

            return supervise(args, settings, started)
        else:
            asyncio.run(_serve(settings, lambda: load(args)))
    except StateDirBusy as exc:
        print(f"warmproxy: cannot start: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"warmproxy: cannot start: {exc}", file=sys.stderr)
        return 1
    finally:
        if demo_state is not None:
            shutil.rmtree(demo_state, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
