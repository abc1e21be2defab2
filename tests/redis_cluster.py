"""A throw-away Redis Cluster of local ``redis-server`` processes, for tests.

The cluster is joined by hand (``CLUSTER ADDSLOTSRANGE``, ``MEET``,
``REPLICATE``) rather than with ``redis-cli --cluster create``, which waits
whole seconds between its steps and is not always installed beside
``redis-server``.  Every node lives in its own directory under the test's
temp dir, listens on a free port of 127.0.0.1, and keeps no data on disk.
Skipped (failed where Redis is required, as :mod:`tests.redis_server`) when
there is no ``redis-server`` or it is older than 7.0.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import redis

from tests.redis_server import STOP_TIMEOUT, free_port, redis_server_binary, unavailable

SLOTS = 16384
START_TIMEOUT = 20.0
#: Milliseconds without an answer before the other nodes mark a node failed.
#: Long enough that a loaded test machine (a node not scheduled for a while)
#: does not fail a node over by mistake; a failover test passes a shorter one.
NODE_TIMEOUT_MS = 5000


@dataclass
class ClusterNode:
    """One ``redis-server --cluster-enabled yes`` process."""

    port: int
    #: The cluster bus port (by default Redis takes ``port + 10000``, which
    #: may be taken, or above 65535).
    bus_port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    node_id: str = ""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def client(self, timeout: float = 5.0) -> redis.Redis:
        """A plain (not cluster-aware) client of this node alone."""
        return redis.Redis(
            host="127.0.0.1", port=self.port, socket_timeout=timeout, socket_connect_timeout=timeout
        )

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = (self.workdir / "redis-server.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


class LocalCluster:
    """``masters`` primaries sharing the 16384 slots evenly, each with
    ``replicas`` replicas; :meth:`start` returns once every node says
    ``cluster_state:ok`` and knows every other node."""

    def __init__(
        self,
        workdir: Path,
        *,
        masters: int = 3,
        replicas: int = 0,
        node_timeout_ms: int = NODE_TIMEOUT_MS,
    ) -> None:
        if masters < 1 or replicas < 0:
            raise ValueError(f"need at least one master, got {masters} (replicas {replicas})")
        self.binary = redis_server_binary(" (a Redis Cluster test)")
        _check_version(self.binary)
        self.workdir = workdir
        self.masters = masters
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.nodes: list[ClusterNode] = []

    @property
    def url(self) -> str:
        """The ``cache.redis_url`` of this cluster: its first node as the seed."""
        return f"redis+cluster://{self.nodes[0].address}"

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start and join the nodes; on any failure none is left running."""
        if self.nodes:
            return
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        count = self.masters * (1 + self.replicas)
        taken: set[int] = set()

        def untaken() -> int:
            port = free_port()
            while port in taken:
                port = free_port()
            taken.add(port)
            return port

        for _ in range(count):
            port, bus_port = untaken(), untaken()
            node = ClusterNode(port, bus_port, self.workdir / f"node-{port}")
            self.nodes.append(node)
            self._spawn(node)
        deadline = time.monotonic() + START_TIMEOUT
        for node in self.nodes:
            self._wait_ping(node, deadline)
            with node.client() as c:
                node.node_id = str(c.execute_command("CLUSTER", "MYID"), "ascii")
        primaries = self.nodes[: self.masters]
        for index, node in enumerate(primaries):
            first = index * SLOTS // self.masters
            last = (index + 1) * SLOTS // self.masters - 1
            with node.client() as c:
                # Distinct epochs before meeting, as redis-cli does: no
                # collision for the nodes to resolve.
                c.execute_command("CLUSTER", "SET-CONFIG-EPOCH", index + 1)
                c.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
        with self.nodes[0].client() as c:
            for node in self.nodes[1:]:
                c.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port, node.bus_port)
        self._wait(deadline, self._all_known, "every node to know every other node")
        for index, node in enumerate(self.nodes[self.masters :]):
            master = primaries[index % self.masters]
            with node.client() as c:
                c.execute_command("CLUSTER", "REPLICATE", master.node_id)
        self._wait(deadline, self._ready, "cluster_state:ok and replicas in sync on every node")

    def _spawn(self, node: ClusterNode) -> None:
        node.workdir.mkdir(parents=True, exist_ok=True)
        with (node.workdir / "redis-server.log").open("ab") as log:
            node.proc = subprocess.Popen(
                [
                    self.binary,
                    "--port",
                    str(node.port),
                    "--bind",
                    "127.0.0.1",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    str(node.bus_port),
                    "--cluster-config-file",
                    str(node.workdir / "nodes.conf"),
                    "--cluster-node-timeout",
                    str(self.node_timeout_ms),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    # A replica's first sync at once (the default waits 5 s
                    # for more replicas to share it).
                    "--repl-diskless-sync-delay",
                    "0",
                    "--dir",
                    str(node.workdir),
                    "--daemonize",
                    "no",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def _wait_ping(self, node: ClusterNode, deadline: float) -> None:
        while time.monotonic() < deadline:
            if not node.running:
                raise RuntimeError(f"redis-server exited on port {node.port}:\n{node.log_tail()}")
            try:
                with node.client(timeout=0.2) as c:
                    if c.ping():
                        return
            except (redis.RedisError, OSError):
                pass
            time.sleep(0.02)
        raise RuntimeError(f"redis-server on port {node.port} did not answer PING")

    def _wait(self, deadline: float, done: object, what: str) -> None:
        assert callable(done)
        while time.monotonic() < deadline:
            if done():
                return
            time.sleep(0.05)
        tails = "\n".join(f"--- {n.address}\n{n.log_tail(5)}" for n in self.nodes)
        raise RuntimeError(f"the cluster did not get {what} within {START_TIMEOUT}s:\n{tails}")

    def _all_known(self) -> bool:
        for node in self.nodes:
            with node.client() as c:
                lines = str(c.execute_command("CLUSTER", "NODES"), "utf-8").splitlines()
            if len(lines) != len(self.nodes) or any("handshake" in line for line in lines):
                return False
        return True

    def _ready(self) -> bool:
        for node in self.alive():
            with node.client() as c:
                info = str(c.execute_command("CLUSTER", "INFO"), "utf-8")
                if "cluster_state:ok" not in info or f"cluster_slots_ok:{SLOTS}" not in info:
                    return False
                if node in self.nodes[self.masters :]:
                    replication = c.info("replication")
                    if replication.get("master_link_status") != "up":
                        return False
        return True

    def stop(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL) and wait for them to exit."""
        for node in self.nodes:
            proc = node.proc
            if proc is None:
                continue
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
        for node in self.nodes:
            proc, node.proc = node.proc, None
            if proc is None:
                continue
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> LocalCluster:
        self.start()  # nothing more when started already
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------ inspection

    def alive(self) -> list[ClusterNode]:
        return [n for n in self.nodes if n.running]

    def node_of(self, node_id: str) -> ClusterNode:
        return next(n for n in self.nodes if n.node_id == node_id)

    def slot_of(self, key: str) -> int:
        with self.alive()[0].client() as c:
            return int(c.execute_command("CLUSTER", "KEYSLOT", key))

    def owner(self, slot: int) -> ClusterNode:
        """The primary serving ``slot`` now, as a live node sees it."""
        with self.alive()[0].client() as c:
            for first, last, primary, *_ in c.execute_command("CLUSTER", "SLOTS"):
                if first <= slot <= last:
                    return self.node_of(str(primary[2], "ascii"))
        raise LookupError(f"no node serves slot {slot}")

    def replica_of(self, master: ClusterNode) -> ClusterNode:
        with master.client() as c:
            lines = str(c.execute_command("CLUSTER", "NODES"), "utf-8").splitlines()
        for line in lines:
            fields = line.split()
            if "slave" in fields[2] and fields[3] == master.node_id:
                return self.node_of(fields[0])
        raise LookupError(f"{master.address} has no replica")

    def cluster_ok(self) -> bool:
        """Every live node says ``cluster_state:ok``."""
        for node in self.alive():
            with node.client() as c:
                if "cluster_state:ok" not in str(c.execute_command("CLUSTER", "INFO"), "utf-8"):
                    return False
        return True

    # ------------------------------------------------------------- faults

    def kill(self, node: ClusterNode) -> None:
        """SIGKILL ``node``: no goodbye to its clients or to the cluster."""
        assert node.proc is not None
        node.proc.kill()
        node.proc.wait()
        node.proc = None

    def pause(self) -> None:
        """SIGSTOP every node: connections are accepted, nothing is answered."""
        for node in self.alive():
            assert node.proc is not None
            node.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Undo :meth:`pause`."""
        for node in self.alive():
            assert node.proc is not None
            node.proc.send_signal(signal.SIGCONT)

    def begin_migration(self, slot: int, source: ClusterNode, target: ClusterNode) -> None:
        """Mark ``slot`` migrating from ``source`` to ``target``: from now on a
        key of it not (or no longer) on ``source`` is answered with ASK."""
        with target.client() as t:
            t.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id)
        with source.client() as s:
            s.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target.node_id)

    def move_keys(self, slot: int, source: ClusterNode, target: ClusterNode) -> int:
        """MIGRATE every key of ``slot`` still on ``source`` to ``target``; how many."""
        moved = 0
        with source.client() as s:
            while keys := s.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
                s.execute_command(
                    "MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "REPLACE", "KEYS", *keys
                )
                moved += len(keys)
        return moved

    def finish_migration(self, slot: int, target: ClusterNode) -> None:
        """Give ``slot`` to ``target`` on every node: from now on MOVED."""
        for node in [target, *(n for n in self.alive() if n is not target)]:
            with node.client() as c:
                c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target.node_id)


def _check_version(binary: str) -> None:
    """Skip (fail where Redis is required) with a server older than 7.0: the
    cluster is joined with CLUSTER ADDSLOTSRANGE and ``--cluster-port``."""
    out = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
    ).stdout
    match = re.search(r"v=(\d+)\.", out)
    if match is None or int(match.group(1)) < 7:
        unavailable(f"a Redis Cluster test needs redis-server 7.0 or later, got {out.strip()!r}")


def start_cluster(
    workdir: Path, *, masters: int = 3, replicas: int = 0, node_timeout_ms: int = NODE_TIMEOUT_MS
) -> LocalCluster:
    """A started cluster (ports taken meanwhile by something else: tried again)."""
    error: RuntimeError | None = None
    for attempt in range(3):
        cluster = LocalCluster(
            workdir / f"cluster-{attempt}",
            masters=masters,
            replicas=replicas,
            node_timeout_ms=node_timeout_ms,
        )
        try:
            cluster.start()
        except RuntimeError as exc:
            cluster.stop()
            error = exc
            continue
        return cluster
    raise RuntimeError("could not start a Redis Cluster after 3 attempts") from error
