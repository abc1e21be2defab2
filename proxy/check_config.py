"""``warmproxy check-config FILE``: validate a configuration and show what will run.

The effective settings are the file, then ``WARMPROXY_*`` environment
variables, then defaults: exactly what ``warmproxy serve --config FILE`` would
use.  Secrets are masked so the output can be pasted into a ticket.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TextIO

import tomli_w

from proxy import state_dir
from proxy.config import ConfigError, Settings, load_settings
from proxy.redact import redacted
from proxy.state_dir import state_root
from proxy.store.memory import RESIDENT_FACTOR

MASK = "********"


def effective(settings: Settings) -> dict[str, Any]:
    """The settings as plain data, secrets masked: the token, and the
    credentials of every URL (the Redis URL, the origin, SQL sources' DSNs)."""
    data: dict[str, Any] = redacted(settings.model_dump(mode="json"), MASK)
    data["control"]["token"] = MASK if settings.control.token.get_secret_value() else ""
    return data


def _without_none(value: Any) -> Any:
    # TOML has no null: an unset optional value is left out.
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value


def check_config(path: Path, *, as_json: bool, out: TextIO, err: TextIO) -> int:
    """0 and the effective settings on ``out``; 2 and what is wrong on ``err``."""
    if not path.is_file():
        print(f"warmproxy: no config file at {path}", file=err)
        return 2
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        print(f"warmproxy: {exc}", file=err)
        return 2
    data = effective(settings)
    directory = state_directory(settings)
    if as_json:
        out.write(json.dumps({**data, "effective_state_dir": directory}, indent=2) + "\n")
    else:
        out.write(f"# {path}: valid. Effective settings (file, then WARMPROXY_* variables,\n")
        out.write("# then defaults); secrets masked.\n")
        out.write(f"# State directory in effect: {directory}\n")
        out.write(with_memory_notes(tomli_w.dumps(_without_none(data))))
    return 0


def state_directory(settings: Settings) -> str:
    """Where this configuration keeps its state: ``state.dir``, or the derived one.

    A listener on port 0 gets a new directory at each start, so only where
    it will be is shown.
    """
    if settings.state.ephemeral:
        return f"{state_root()}/{identity_name(settings)}-<random>, removed at stop"
    return str(settings.state.path())


def identity_name(settings: Settings) -> str:
    """The derived directory's name for this configuration (proxy/state_dir.py)."""
    return state_dir.identity_name(
        origin=settings.proxy.origin,
        listen=settings.proxy.listen,
        store=settings.cache.store,
        redis_prefix=settings.cache.redis_prefix,
    )


def with_memory_notes(toml: str) -> str:
    """``toml`` (the effective settings) with what each in-process cache size
    costs in resident memory noted beside it, as measured (docs/operations.md)."""
    lines = toml.splitlines()
    section = ""
    for i, line in enumerate(lines):
        if line.startswith("["):
            section = line
        elif section == "[cache]" and line.startswith(("max_bytes = ", "l1_max_bytes = ")):
            size = int(line.partition("= ")[2])
            lines[i] = (
                f"{line}  # {_mib(size)}: about {_mib(size * RESIDENT_FACTOR)} resident "
                "with the entries' Python objects"
            )
    return "\n".join(lines) + "\n"


def _mib(size: float) -> str:
    return f"{size / 2**20:.0f} MiB" if size >= 2**20 else f"{size / 2**10:.0f} KiB"
