"""Where a proxy keeps the state that outlives a restart, and the lock that keeps it its own.

The state directory holds the predictive model, the effectiveness ledger, the
hot set and, without Redis, a schedule posted through the control API.  When
``state.dir`` is empty the directory is derived from who the proxy is, so two
proxies on one machine never share files while a restart of the same proxy
finds its own state again::

    $XDG_STATE_HOME/warmproxy/<listen host>_<port>-<hash>   (~/.local/state without it)

``<hash>`` is the first 8 hex digits of a SHA-256 over the origin, the listen
address, the store and, with the Redis store, its key prefix: a proxy moved
to another origin (a demo's port reused in front of a real service) starts
afresh instead of adopting the other one's schedule and figures.

A listener on port 0 (an ephemeral port, as tests and ``warm --standalone``
use) has no identity a restart could find again: its directory gets a random
suffix and is removed at stop.

Whichever way the directory was chosen, one process at a time uses it: the
``lock`` file in it is held with ``flock`` for the process lifetime, and a
second process is refused at start naming the directory and the pid holding
it.  The lock file is never deleted (deleting it would let a third process
lock a new file while the second still holds the old one).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import secrets
import shutil
import tempfile
from pathlib import Path

LOCK_FILE = "lock"
_UNSAFE = re.compile(r"[^A-Za-z0-9.-]")


class StateDirBusy(Exception):
    """Another process holds the state directory's lock."""

    def __init__(self, directory: Path, pid: int | None) -> None:
        holder = f" (pid {pid})" if pid is not None else ""
        super().__init__(
            f"state directory {directory} is in use by another warmproxy process{holder}; "
            "stop that process, or give this one its own state.dir"
        )
        self.directory = directory
        self.pid = pid


def state_root() -> Path:
    """``$XDG_STATE_HOME/warmproxy``, else ``~/.local/state/warmproxy``.

    The XDG base directory specification says a relative ``XDG_STATE_HOME``
    is invalid and is to be ignored.
    """
    base = os.environ.get("XDG_STATE_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".local" / "state"
    return root / "warmproxy"


def identity_name(*, origin: str, listen: str, store: str, redis_prefix: str) -> str:
    """The readable, stable directory name of a proxy: ``<host>_<port>-<hash>``."""
    host, _, port = listen.rpartition(":")
    host = _UNSAFE.sub("_", host.strip("[]")) or "0.0.0.0"
    parts = [origin, listen, store]
    if store == "redis":
        parts.append(redis_prefix)
    digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:8]
    return f"{host}_{port}-{digest}"


def is_ephemeral(listen: str) -> bool:
    """Whether ``listen`` names port 0: a port chosen at bind, different at each start."""
    return listen.rpartition(":")[2] == "0"


def derive(*, origin: str, listen: str, store: str, redis_prefix: str) -> Path:
    """The state directory of a proxy whose ``state.dir`` is empty (see the module doc)."""
    name = identity_name(origin=origin, listen=listen, store=store, redis_prefix=redis_prefix)
    if is_ephemeral(listen):
        name = f"{name}-{secrets.token_hex(4)}"
    return state_root() / name


def fresh_dir(prefix: str) -> Path:
    """A new empty directory under :func:`state_root` (e.g. the demo's state).

    Under the state root rather than the system's temporary directory: where
    warmproxy may write is decided in one place (``XDG_STATE_HOME``).
    """
    root = state_root()
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=root))


class StateLock:
    """The state directory's ``flock``: taken at start, held until stop.

    ``remove_at_release`` is for directories no later process would look for
    (an ephemeral listener's): they are deleted when released.
    """

    def __init__(self, directory: Path, *, remove_at_release: bool = False) -> None:
        self.directory = directory
        self.remove_at_release = remove_at_release
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock, creating the directory; StateDirBusy if another process has it.

        OSError when the directory cannot be created or the lock file opened.
        """
        if self._fd is not None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            raise StateDirBusy(self.directory, pid) from None
        except BaseException:
            os.close(fd)
            raise
        # The holder's pid, for the message a refused process shows.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Let the lock go (and remove an ephemeral directory); a no-op when not held."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if self.remove_at_release:
                shutil.rmtree(self.directory, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing the last descriptor releases the flock


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
