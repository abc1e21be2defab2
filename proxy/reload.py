"""Reloading the configuration without a restart: which settings change live,
and applying them whole or not at all.

SIGHUP, ``warmproxy reload`` and ``POST /cache/warming/reload`` all end in
:func:`reload_settings` (through :meth:`proxy.app.Warmproxy.reload`).  The
configuration is read again as ``serve`` read it at start (the file, the
``WARMPROXY_*`` variables, the flags given at start, which keep precedence)
and validated whole.  Then:

- a setting in :data:`LIVE_SETTINGS` is applied;
- any other changed setting needs a restart: it is named in one log line and
  left as it was (the listeners, the store, the origin, the state directory,
  the sizes of what the warmer has learned, ...).

Applying is all-or-nothing: every new part (the warmer's strategies, filter,
schedule and alerts, the executor's limiter and adaptive limit) is built
first, and only then swapped in with plain assignments that cannot fail; an
invalid file, or a combination the running proxy cannot take, changes
nothing and is logged as ``warmproxy check-config`` prints it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from proxy.cache_key import KeyRules
from proxy.config import ConfigError, Settings
from proxy.logs import configure
from proxy.warming import adaptive_concurrency, resource_guard, warmer_config
from warmer.pacing import AdaptiveConcurrency, ResourceGuard
from warmer.schedule_store import ScheduleStateError

if TYPE_CHECKING:
    from proxy.app import Warmproxy

log = logging.getLogger(__name__)

#: The settings a reload applies, each a dotted name (a table: every key
#: under it), with what takes it up.  Every other setting needs a restart.
LIVE_SETTINGS: Mapping[str, str] = {
    # The schedule: the file's sources and cron (see the rule on posted
    # schedules in docs/operations.md), and what posted sources may read.
    "strategies.proactive.enabled": "the schedule loop",
    "strategies.proactive.schedule": "the schedule in force, when the file's changed",
    "strategies.proactive.data_sources": "the schedule in force, when the file's changed",
    "strategies.proactive.optimize": "the schedule optimizer",
    "strategies.proactive.file_source_dir": "what posted sources may read",
    "strategies.proactive.sql_allowed_hosts": "what posted sources may reach",
    # Strategies: switched on afresh or off, or retuned keeping what they learned.
    "strategies.reactive.enabled": "the strategies",
    "strategies.reactive.auto_warm": "the strategies",
    "strategies.reactive.threshold": "the miss-reactive strategy",
    "strategies.reactive.refresh_ahead": "the strategies",
    "strategies.reactive.refresh_min_hits": "the refresh-ahead strategy",
    "strategies.reactive.refresh_fraction": "the refresh-ahead strategy",
    "strategies.reactive.min_precision": "the reactive strategies' precision floor",
    "strategies.predictive.enabled": "the strategies (the saved model is loaded)",
    "strategies.predictive.min_confidence": "the predictive strategy",
    "strategies.predictive.max_warm_ratio": "the predictive strategy's budget",
    "strategies.predictive.priority": "the predictive strategy",
    "strategies.predictive.retrain_schedule": "the retrain loop, from its next firing",
    # Which paths any strategy may warm.
    "strategies.include": "the path filter",
    "strategies.exclude": "the path filter",
    # Execution limits: from the next fetch on.
    "execution.parallelism": "the executor",
    "execution.batch_size": "the executor",
    "execution.timeout": "the executor, for fetches started after the reload",
    "execution.retry_attempts": "the executor",
    "execution.retry_base_delay": "the executor",
    "execution.retry_max_delay": "the executor",
    "execution.rate_limit": "the executor's limiter",
    "execution.adaptive": "the executor's adaptive limit",
    "execution.latency_target": "the executor's adaptive limit",
    "execution.error_rate_limit": "the executor's adaptive limit",
    "execution.max_cpu_percent": "the executor's resource guard",
    "execution.max_memory": "the executor's resource guard",
    # Whether the warmer observes requests (what it has learned is kept).
    "tracking.enabled": "the warmer's observation",
    "monitoring.metrics_interval": "the alert loop, from its next evaluation",
    "monitoring.alert_thresholds": "the alert rules",
    # Cache keys of requests, fills, warm targets and purges from then on
    # (entries stored under the old keys are not found again and expire).
    "cache.ignore_query_params": "the cache keys",
    "cache.sort_query_params": "the cache keys",
    "logging.level": "the log handler",
    "logging.format": "the log handler",
    # Read when the process stops.
    "proxy.shutdown_delay": "the shutdown",
}


class ReloadRefused(Exception):
    """The configuration read again cannot be applied; nothing changed.

    ``errors``: what is wrong, one line each, as ``warmproxy check-config``
    prints it (the first line says where).
    """

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """What a reload did: the settings applied, and those left for a restart."""

    applied: list[str]
    restart_required: list[str]

    def to_json(self) -> dict[str, list[str]]:
        return {"applied": self.applied, "restart_required": self.restart_required}


def is_live(name: str) -> bool:
    """True when the dotted setting ``name`` is applied by a reload."""
    return any(name == live or name.startswith(f"{live}.") for live in LIVE_SETTINGS)


def setting_values(settings: Settings) -> dict[str, Any]:
    """Every setting by dotted name (a list is one value): what a reload compares."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        else:
            out[prefix] = value

    # Python mode: the token stays a SecretStr, compared by value, never shown.
    walk("", settings.model_dump())
    return out


def changed_settings(old: Settings, new: Settings) -> list[str]:
    """The dotted names of the settings whose values differ, sorted."""
    before, after = setting_values(old), setting_values(new)
    return sorted(
        name for name in before.keys() | after.keys() if before.get(name) != after.get(name)
    )


def split_changes(changed: list[str]) -> tuple[list[str], list[str]]:
    """``changed`` as (applied live, needing a restart)."""
    return [n for n in changed if is_live(n)], [n for n in changed if not is_live(n)]


def effective_settings(old: Settings, new: Settings, restart_required: list[str]) -> Settings:
    """``new`` with the settings that need a restart as they were in ``old``.

    Validated whole again: a live change that only makes sense with a
    restart-only one (a predictive priority among new priority levels) is
    refused.  Raises ReloadRefused.
    """
    data = new.model_dump()
    before = setting_values(old)
    for name in restart_required:
        *sections, key = name.split(".")
        node = data
        for section in sections:
            node = node[section]
        if name in before:
            node[key] = before[name]
        else:  # a setting the running proxy does not have
            node.pop(key, None)
    try:
        # model_validate: the values as given, no environment read again.
        effective = Settings.model_validate(data)
    except ValidationError as exc:
        lines = ["invalid configuration with the settings that need a restart as they are:"]
        for error in exc.errors(include_input=False):
            key = ".".join(str(part) for part in error["loc"])
            lines.append(f"  {key}: {error['msg']}" if key else f"  {error['msg']}")
        raise ReloadRefused(lines) from None
    # The state directory in use (a listener on port 0 has a random one,
    # chosen once): the same object, not one derived again.
    effective.state = old.state
    return effective


async def reload_settings(proxy: Warmproxy, load: Callable[[], Settings]) -> ReloadResult:
    """Read the configuration with ``load`` and apply what can change live.

    Raises ReloadRefused (logged) when it is invalid or cannot be applied;
    then nothing changed.
    """
    try:
        result = await _reload(proxy, load)
    except ReloadRefused as exc:
        # The lines check-config prints, after the same "warmproxy: ".
        log.error(
            "reload refused, nothing changed: warmproxy: %s", exc, extra={"errors": exc.errors}
        )
        raise
    if result.restart_required:
        log.warning(
            "reload: these settings need a restart and were left as they were: %s",
            ", ".join(result.restart_required),
            extra={"restart_required": result.restart_required},
        )
    if result.applied:
        log.info("reload: applied %s", ", ".join(result.applied), extra={"applied": result.applied})
    elif not result.restart_required:
        log.info("reload: the configuration has not changed")
    return result


@dataclass(frozen=True, slots=True)
class Changes:
    """What a reload would change: the settings in force, those it would put
    in force (the new file's, restart-only settings left as they are), and
    the names of what changes live and of what needs a restart."""

    old: Settings
    effective: Settings
    applied: list[str]
    restart_required: list[str]


def read_changes(proxy: Warmproxy, load: Callable[[], Settings]) -> Changes:
    """The settings ``load`` reads, against ``proxy``'s; ReloadRefused with
    check-config's lines when they are not valid (nothing is changed)."""
    try:
        new = load()
    except ConfigError as exc:
        raise ReloadRefused(str(exc).splitlines()) from None
    old = proxy.settings
    applied, restart_required = split_changes(changed_settings(old, new))
    effective = effective_settings(old, new, restart_required) if applied else old
    return Changes(old, effective, applied, restart_required)


def reconfigure_logging(old: Settings, new: Settings) -> None:
    """Logging as ``new`` says, when it says otherwise than ``old``."""
    if (new.logging.level, new.logging.format) != (old.logging.level, old.logging.format):
        configure(new.logging.level, new.logging.format)


async def _reload(proxy: Warmproxy, load: Callable[[], Settings]) -> ReloadResult:
    changes = read_changes(proxy, load)
    if not changes.applied:
        return ReloadResult([], changes.restart_required)
    async with proxy.warmer.schedule_lock:
        return await _apply(
            proxy, changes.old, changes.effective, changes.applied, changes.restart_required
        )


async def _apply(
    proxy: Warmproxy,
    old: Settings,
    effective: Settings,
    applied: list[str],
    restart_required: list[str],
) -> ReloadResult:
    # Build: nothing in force changes until every part is built.
    warmer = proxy.warmer
    proactive = effective.strategies.proactive
    try:
        prepared = warmer.prepare_settings(
            warmer_config(effective, per_host=not proxy.rules.keys_are_paths),
            schedule=proactive.as_schedule(),
            policy=proactive.source_policy(),
        )
        adaptive, guard = _pacing(old, effective, proxy)
        rules = proxy.rules
        key_rules = KeyRules.from_settings(effective.cache)
        if key_rules != KeyRules.from_settings(old.cache):
            rules = rules.with_key_rules(key_rules)
    except ValueError as exc:
        raise ReloadRefused([f"cannot apply the configuration: {exc}"]) from None
    try:
        await warmer.save_prepared_schedule(prepared)
    except ScheduleStateError as exc:
        raise ReloadRefused(
            [f"the configuration file's schedule could not be saved: {exc}"]
        ) from None
    had_predictor = warmer.predictor
    if had_predictor is not None and prepared.core.predictor is None:
        await warmer.save_model()  # switched off: what it learned is kept for later

    # Swap: assignments only.
    ex = effective.execution
    warmer.executor.apply_limits(
        parallelism=ex.parallelism,
        batch_size=ex.batch_size,
        timeout=ex.timeout,
        retry_attempts=ex.retry_attempts,
        retry_base_delay=ex.retry_base_delay,
        retry_max_delay=ex.retry_max_delay,
        rate_limit=ex.rate_limit,
        adaptive=adaptive,
        guard=guard,
    )
    warmer.apply_settings(prepared)
    if rules is not proxy.rules:
        proxy.use_rules(rules)
    proxy.observe_traffic(effective.tracking.enabled)
    reconfigure_logging(old, effective)
    proxy.settings = effective

    if had_predictor is None and warmer.predictor is not None:
        await warmer.load_model()  # switched on: continue from the saved model
    return ReloadResult(applied, restart_required)


def _pacing(
    old: Settings, new: Settings, proxy: Warmproxy
) -> tuple[AdaptiveConcurrency | None, ResourceGuard | None]:
    """The executor's adaptive limit and resource guard for ``new``: the running
    ones (with what they measured) when their settings did not change."""
    o, n = old.execution, new.execution
    executor = proxy.warmer.executor
    adaptive = executor.adaptive
    if (o.adaptive, o.parallelism, o.latency_target, o.error_rate_limit) != (
        n.adaptive,
        n.parallelism,
        n.latency_target,
        n.error_rate_limit,
    ):
        adaptive = adaptive_concurrency(n)
    guard = executor.guard
    if (o.max_cpu_percent, o.max_memory) != (n.max_cpu_percent, n.max_memory):
        guard = resource_guard(n)
    return adaptive, guard
