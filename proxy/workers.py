"""``warmproxy serve --workers N``: N proxy processes on one port, under a supervisor.

The supervisor (the process ``serve`` started as) starts N worker processes
(``spawn``: fresh interpreters, never a fork of a process running asyncio).
Each binds the proxy port with ``SO_REUSEPORT``, so the kernel spreads new
connections over them.  Worker 0, the primary, is a whole proxy: the warmer,
the control listener (API, dashboard, ``/metrics``) and the state directory
are its alone; the others serve the proxy port only and reach the primary
through :mod:`proxy.worker_relay` (cache changes of the memory store, access
events, metric counts, reloads).

The supervisor:

- checks first that the port can be bound, so a port in use fails the start
  with one message naming it (exit status 1);
- forwards SIGTERM and SIGINT to every worker (each shuts down gracefully as
  one process would) and SIGHUP to the primary (it reloads, then has every
  other worker reload);
- restarts a worker that dies, after a delay that doubles while it keeps
  dying soon after its start (logged each time);
- exits non-zero when a worker cannot start at all (its own message says why).

Workers notice when the supervisor is gone (killed with SIGKILL) and stop,
so none outlives it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event
from typing import TYPE_CHECKING

from proxy.config import Settings, parse_hostport

if TYPE_CHECKING:
    from proxy.app import Warmproxy
    from proxy.reload import ReloadResult

log = logging.getLogger("warmproxy.workers")

#: Seconds a worker is given to open its listeners at the start.
START_TIMEOUT = 60.0
#: A worker that ran at least this long before dying is restarted at once;
#: one that died sooner waits, twice as long each time, up to RESTART_CAP.
STABLE_SECONDS = 30.0
RESTART_FIRST = 0.5
RESTART_CAP = 30.0
#: Seconds beyond the configured shutdown delay and timeout that workers get
#: to stop before they are killed.
STOP_GRACE = 10.0
# How often the supervisor looks at its workers and at signals received.
_TICK = 0.1


@dataclass(frozen=True, slots=True)
class WorkerRole:
    """One worker's place among ``count``: its number and the relay's socket."""

    index: int
    count: int
    relay_path: str
    #: Started again after it died: the cache it served is in the others.
    restarted: bool = False

    @property
    def primary(self) -> bool:
        return self.index == 0


class PortUnavailable(OSError):
    """The proxy port cannot be bound (in use, or not ours to bind)."""


def check_port(listen: str) -> str:
    """``listen`` with its port chosen when it is 0 (every worker must bind the
    same one).  Raises PortUnavailable naming the address."""
    host, port = parse_hostport(listen, what="proxy.listen")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # Bound and closed again, never kept: a bound socket in the port's
    # SO_REUSEPORT group would be handed connections it never accepts.
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise PortUnavailable(
                exc.errno, f"proxy.listen {listen}: cannot bind port {port}: {exc.strerror}"
            ) from None
        port = probe.getsockname()[1]
    return f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"


# ------------------------------------------------------------------ workers


def _worker_main(args: argparse.Namespace, role: WorkerRole, started: Event) -> None:
    """A worker process: ``serve`` as one process runs it, with its role."""
    from proxy import cli

    sys.exit(cli.serve_worker(args, role, started.set))


def stop_with_parent(loop: asyncio.AbstractEventLoop) -> None:
    """Stop this worker (as SIGTERM would) once the supervisor has exited
    (killed with SIGKILL: it could not pass a signal on)."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return
    sentinel = parent.sentinel  # readable (at its end) once the parent is gone

    def gone() -> None:
        loop.remove_reader(sentinel)
        log.warning("the supervisor is gone: stopping")
        os.kill(os.getpid(), signal.SIGTERM)

    loop.add_reader(sentinel, gone)


async def reload_worker(proxy: Warmproxy, load: Callable[[], Settings]) -> ReloadResult:
    """A reload in a worker other than the primary: the settings its proxy
    port uses (cache keys, logging); the warmer's are the primary's."""
    from proxy.cache_key import KeyRules
    from proxy.reload import ReloadRefused, ReloadResult, read_changes, reconfigure_logging

    try:
        changes = read_changes(proxy, load)
    except ReloadRefused as exc:
        log.error("reload refused, nothing changed: warmproxy: %s", exc)
        raise
    if not changes.applied:
        return ReloadResult([], changes.restart_required)
    old, effective = changes.old, changes.effective
    key_rules = KeyRules.from_settings(effective.cache)
    if key_rules != KeyRules.from_settings(old.cache):
        proxy.use_rules(proxy.rules.with_key_rules(key_rules))
    reconfigure_logging(old, effective)
    proxy.settings = effective
    log.info("reload: applied %s", ", ".join(changes.applied))
    return ReloadResult(changes.applied, changes.restart_required)


# --------------------------------------------------------------- supervisor


@dataclass(slots=True)
class _Slot:
    """One worker's place: its process now, and how its restarts go."""

    role: WorkerRole
    process: BaseProcess | None = None
    started: Event | None = None
    started_at: float = 0.0
    restart_at: float | None = None
    failures: int = 0


class Supervisor:
    """Starts the workers, forwards signals, restarts the ones that die."""

    def __init__(
        self,
        args: argparse.Namespace,
        settings: Settings,
        started: Callable[[str], None] | None = None,
    ) -> None:
        self._args = args
        self._on_started = started
        self._settings = settings
        self._count = settings.proxy.workers
        self._context = multiprocessing.get_context("spawn")
        self._received: list[signal.Signals] = []
        self._slots: list[_Slot] = []
        self._directory = ""

    def run(self) -> int:
        try:
            listen = check_port(self._settings.proxy.listen)
        except (PortUnavailable, ValueError) as exc:
            print(f"warmproxy: cannot start: {exc}", file=sys.stderr)
            return 1
        # Every worker binds the port the check found (port 0: one chosen now).
        self._args.listen = listen
        # The relay's socket, in a directory only this user may enter.
        self._directory = tempfile.mkdtemp(prefix="warmproxy-")
        relay_path = os.path.join(self._directory, "relay.sock")
        self._slots = [_Slot(WorkerRole(i, self._count, relay_path)) for i in range(self._count)]
        previous = {
            sig: signal.signal(sig, self._on_signal)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        }
        try:
            status = self._start_all()
            if status == 0 and not self._stopping():
                if self._on_started is not None:
                    self._on_started(listen)
                log.info(
                    "workers started",
                    extra={"workers": self._count, "proxy": listen, "pid": os.getpid()},
                )
                self._watch()
            if status == 0:
                status = self._stop_all()
            return status
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            shutil.rmtree(self._directory, ignore_errors=True)

    def _on_signal(self, signum: int, frame: object) -> None:
        self._received.append(signal.Signals(signum))

    def _spawn(self, slot: _Slot) -> None:
        started = self._context.Event()
        role = replace(slot.role, restarted=slot.process is not None or slot.restart_at is not None)
        process = self._context.Process(
            target=_worker_main,
            args=(self._args, role, started),
            name=f"warmproxy-worker-{slot.role.index}",
        )
        process.start()
        slot.process, slot.started, slot.started_at = process, started, time.monotonic()
        slot.restart_at = None

    def _start_all(self) -> int:
        """Start every worker and wait until each listens; non-zero when one
        cannot start.  The primary first (the others connect to it and are
        sent its store before they open the port), then the others at once."""
        primary, *others = self._slots
        batches = [[primary], others]
        for batch in batches:
            if self._stopping():  # told to stop while starting: start no more
                return 0
            for slot in batch:
                self._spawn(slot)
            for slot in batch:
                status = self._await_start(slot)
                if status != 0:
                    self._stop_all()
                    return status
        return 0

    def _await_start(self, slot: _Slot) -> int:
        assert slot.process is not None and slot.started is not None
        deadline = time.monotonic() + START_TIMEOUT
        while not slot.started.is_set():
            if self._stopping():
                return 0
            if not slot.process.is_alive():
                slot.process.join()
                code = slot.process.exitcode or 1
                log.error(
                    "worker could not start",
                    extra={"worker": slot.role.index, "exit_status": code},
                )
                return code if code > 0 else 1
            if time.monotonic() > deadline:
                log.error(
                    "worker did not start in time",
                    extra={"worker": slot.role.index, "seconds": START_TIMEOUT},
                )
                return 1
            slot.started.wait(_TICK)
        return 0

    def _stopping(self) -> bool:
        return any(s in (signal.SIGTERM, signal.SIGINT) for s in self._received)

    def _watch(self) -> None:
        """Until SIGTERM or SIGINT: forward SIGHUP, restart workers that died."""
        while not self._stopping():
            if signal.SIGHUP in self._received:
                self._received.remove(signal.SIGHUP)
                self._signal(self._slots[0], signal.SIGHUP)
            now = time.monotonic()
            for slot in self._slots:
                self._tend(slot, now)
            sentinels = [s.process.sentinel for s in self._slots if s.process is not None]
            multiprocessing.connection.wait(sentinels, timeout=_TICK)

    def _tend(self, slot: _Slot, now: float) -> None:
        process = slot.process
        if process is not None and not process.is_alive():
            process.join()
            ran = now - slot.started_at
            slot.failures = 0 if ran >= STABLE_SECONDS else slot.failures + 1
            delay = 0.0 if slot.failures == 0 else RESTART_FIRST * 2 ** (slot.failures - 1)
            delay = min(delay, RESTART_CAP)
            log.warning(
                "worker died; restarting it",
                extra={
                    "worker": slot.role.index,
                    "exit_status": process.exitcode,
                    "ran_seconds": round(ran, 1),
                    "restart_in_seconds": delay,
                },
            )
            slot.process = None
            slot.restart_at = now + delay
        if slot.process is None and slot.restart_at is not None and now >= slot.restart_at:
            self._spawn(slot)

    def _signal(self, slot: _Slot, sig: signal.Signals) -> None:
        if slot.process is not None and slot.process.pid is not None and slot.process.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(slot.process.pid, sig)

    def _stop_all(self) -> int:
        """Pass the stop on (SIGTERM, or SIGINT if that was received) and wait
        for every worker; 0 when each stopped cleanly."""
        sig = signal.SIGINT if signal.SIGINT in self._received else signal.SIGTERM
        log.info("stopping the workers", extra={"signal": sig.name})
        for slot in self._slots:
            self._signal(slot, sig)
        p = self._settings.proxy
        deadline = time.monotonic() + p.shutdown_delay + p.shutdown_timeout + STOP_GRACE
        status = 0
        for slot in self._slots:
            process = slot.process
            if process is None:
                continue
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.error("worker did not stop in time: killed", extra={"worker": slot.role.index})
                process.kill()
                process.join()
                status = 1
            elif process.exitcode not in (0, -sig):
                status = 1
        return status


def supervise(
    args: argparse.Namespace,
    settings: Settings,
    started: Callable[[str], None] | None = None,
) -> int:
    """Run ``settings.proxy.workers`` workers until SIGTERM or SIGINT; the exit
    status.  ``started(listen)``: called once every worker listens."""
    return Supervisor(args, settings, started).run()
