"""Configuration: one TOML file, overridden by ``WARMPROXY_*`` variables and CLI flags.

Precedence, highest first: CLI flags, environment (``WARMPROXY_<SECTION>__<KEY>``,
e.g. ``WARMPROXY_CACHE__STORE=redis``), the TOML file, the defaults below.  The
documented default file is ``config/warmproxy.toml``; keep the two in step.
Unknown keys and invalid values stop start-up with a message naming the key.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal, cast
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from proxy.cache_key import check_globs
from proxy.forwarding import DEFAULT_DROPPED_REQUEST_FIELDS, PRESERVE_HOST_NEEDS_PER_HOST
from proxy.state_dir import derive as derive_state_dir
from proxy.state_dir import is_ephemeral as is_ephemeral_listener
from warmer.cron import Cron
from warmer.schedule import Schedule, ScheduledSource, SourcePolicy, SqlSource
from warmer.sources import mask_url, parse_host, postgres_hosts

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4}


class ConfigError(Exception):
    """The configuration is invalid; the message names the key."""


def _parse_size(value: object) -> object:
    """Accept byte sizes as integers or strings such as ``"256MiB"`` or ``"64k"``."""
    if isinstance(value, str):
        match = _SIZE.match(value)
        if not match:
            raise ValueError(f"not a size: {value!r} (use e.g. 1048576, '512KiB', '256MiB')")
        number, unit = match.groups()
        unit = (unit or "").lower()
        base = unit.replace("i", "").replace("b", "")
        binary = "i" in unit and base
        multiplier = 1024 ** ("kmgt".index(base) + 1) if binary else _UNITS[base]
        return int(float(number) * multiplier)
    return value


ByteSize = Annotated[int, BeforeValidator(_parse_size), Field(ge=0)]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$", re.IGNORECASE)
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _parse_duration(value: object) -> object:
    """Accept seconds as numbers or strings such as ``"30s"``, ``"5m"``, ``"1h"``, ``"1d"``."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ValueError(f"not a duration: {value!r} (use e.g. 30, '30s', '5m', '1h', '1d')")
        number, unit = match.groups()
        return float(number) * _DURATION_UNITS[(unit or "s").lower()]
    return value


#: The longest duration any setting takes (a year, in seconds): larger ones
#: are typos, and 1e308 would overflow the arithmetic and Redis expiries.
MAX_DURATION = 365 * 86400.0

Duration = Annotated[
    float, BeforeValidator(_parse_duration), Field(ge=0, le=MAX_DURATION, allow_inf_nan=False)
]


def parse_hostport(value: str, *, what: str) -> tuple[str, int]:
    """``host:port`` (IPv6 hosts in brackets) into its parts."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"{what} must be host:port, got {value!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ProxySettings(_Section):
    """The client-facing listener and the origin behind it."""

    origin: str = "http://127.0.0.1:9000"
    listen: str = "127.0.0.1:8080"
    connect_timeout: float = Field(2.0, gt=0)
    read_timeout: float = Field(30.0, gt=0)
    max_origin_connections: int = Field(100, ge=1)
    pool_timeout: float = Field(5.0, gt=0)
    preserve_host: bool = False
    # "single": cache keys are paths, the origin is told one host; "per-host":
    # keys carry the host the origin is told (an origin serving several hosts).
    host_keying: Literal["single", "per-host"] = "single"
    public_host: str = ""
    # The scheme clients use, told to the origin in X-Forwarded-Proto: every
    # entry is built from it (a trusted proxy's other scheme bypasses the cache).
    public_scheme: Literal["http", "https"] = "http"
    trusted_proxies: list[str] = Field(default_factory=list)
    # Request fields never sent to the origin: they make common origins answer
    # another URL, method or host than the one the cache keys the request by.
    drop_request_headers: list[str] = Field(
        default_factory=lambda: list(DEFAULT_DROPPED_REQUEST_FIELDS), max_length=64
    )
    # Longest status line or header field read from the origin; beyond it, 502.
    max_origin_header_size: Annotated[ByteSize, Field(ge=1024, le=1024 * 1024)] = 32 * 1024
    client_id_header: str = ""
    max_request_line: int = Field(8190, ge=256)
    max_header_size: int = Field(8190, ge=256)
    max_headers: int = Field(100, ge=8)
    keepalive_timeout: float = Field(75.0, gt=0)
    via_name: str = "warmproxy"
    # On SIGTERM: /readyz answers 503 for shutdown_delay seconds while requests
    # are still served (load balancers notice and stop sending), then the
    # listener closes and in-flight requests get up to shutdown_timeout.
    shutdown_delay: float = Field(2.0, ge=0, le=300)
    shutdown_timeout: float = Field(30.0, gt=0, le=3600)
    # Overload shedding: a request the in-process cache cannot answer at once
    # gets 503 + Retry-After instead of queueing while this many are being
    # handled, or while the event loop runs more than max_loop_lag seconds
    # behind; 0 switches either off.  The default is four times the default
    # origin pool: more misses than that in flight wait for a pooled
    # connection past pool_timeout with any but a fast origin.
    max_concurrent_requests: int = Field(400, ge=0)
    max_loop_lag: Duration = 1.0

    @field_validator("origin")
    @classmethod
    def _origin_is_http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"must be an http(s) URL such as http://127.0.0.1:9000, got {mask_url(value)!r}"
            )
        if parts.path not in ("", "/") or parts.query:
            raise ValueError("must be scheme://host[:port] without a path")
        if "@" in parts.netloc:
            # user:password@ would reach the origin's Host field and logs; an
            # origin that wants credentials gets them from its clients.
            raise ValueError("must not carry credentials (user:password@)")
        return value.rstrip("/")

    @field_validator("listen")
    @classmethod
    def _listen_is_hostport(cls, value: str) -> str:
        parse_hostport(value, what="listen")
        return value

    @field_validator("public_host")
    @classmethod
    def _host(cls, value: str) -> str:
        if value and not re.fullmatch(
            r"[A-Za-z0-9.\-]+(:\d{1,5})?|\[[0-9A-Fa-f:.]+\](:\d{1,5})?", value
        ):
            raise ValueError(f"must be a host[:port] such as shop.example.com, got {value!r}")
        return value.lower()

    @field_validator("drop_request_headers")
    @classmethod
    def _field_names(cls, value: list[str]) -> list[str]:
        for name in value:
            # RFC 9110 §5.1: a field name is a token.
            if len(name) > 128 or not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", name):
                raise ValueError(f"not a header field name (at most 128 characters): {name[:64]!r}")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for item in value:
            ipaddress.ip_network(item, strict=False)
        return value

    @model_validator(mode="after")
    def _preserve_host_is_keyed(self) -> ProxySettings:
        if self.preserve_host and self.host_keying == "single":
            raise ValueError(PRESERVE_HOST_NEEDS_PER_HOST)
        return self


class CacheSettings(_Section):
    """Where and how responses are stored."""

    store: Literal["memory", "redis"] = "memory"
    max_bytes: Annotated[ByteSize, Field(gt=0)] = 256 * 1024 * 1024
    max_entry_bytes: Annotated[ByteSize, Field(gt=0)] = 8 * 1024 * 1024
    # Memory store: most responses held (each variant counts); 0 = max_bytes alone.
    max_entries: int = Field(0, ge=0)
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "warmproxy:"
    redis_timeout: float = Field(0.5, gt=0)
    redis_stats_interval: float = Field(300.0, ge=0)
    l1_max_bytes: ByteSize = 32 * 1024 * 1024
    l1_ttl: float = Field(1.0, ge=0)
    heuristic_fraction: float = Field(0.1, ge=0, le=1)
    heuristic_max_seconds: float = Field(86400.0, ge=0)
    revalidation_retention: float = Field(3600.0, ge=0)
    store_set_cookie: bool = False
    targeted_cache_control: list[str] = Field(default_factory=lambda: ["CDN-Cache-Control"])
    # A response that varies on Accept-Encoding: "coding" answers a request
    # from a stored variant whose content-coding it accepts (one gzip variant
    # serves every browser); "exact" needs the same normalized field value.
    vary_accept_encoding: Literal["coding", "exact"] = "coding"
    # Cache-key rules over the query string (the origin still gets the full URL).
    ignore_query_params: list[str] = Field(default_factory=list)
    sort_query_params: bool = False

    @field_validator("ignore_query_params")
    @classmethod
    def _bounded_globs(cls, value: list[str]) -> list[str]:
        return check_globs(value)

    @field_validator("targeted_cache_control")
    @classmethod
    def _field_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", name):
                raise ValueError(f"not a header field name: {name!r}")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            # The URL may hold a password: masked.
            raise ValueError(
                f"must be a redis://, rediss:// or unix:// URL, got {mask_url(value)!r}"
            )
        return value


class ControlSettings(_Section):
    """The operator listener: metrics, health, and the control API."""

    listen: str = "127.0.0.1:8081"
    # Bearer token for /cache/warming/*; required unless listen is loopback.
    token: SecretStr = SecretStr("")

    @field_validator("listen")
    @classmethod
    def _listen_is_hostport(cls, value: str) -> str:
        parse_hostport(value, what="listen")
        return value

    @field_validator("token")
    @classmethod
    def _token_is_long_enough(cls, value: SecretStr) -> SecretStr:
        # A short token can be guessed; the message never shows the token.
        length = len(value.get_secret_value())
        if 0 < length < MIN_TOKEN_CHARS:
            raise ValueError(
                f"must be at least {MIN_TOKEN_CHARS} characters (got {length}); "
                "e.g. openssl rand -hex 32"
            )
        return value


#: The shortest control token accepted.
MIN_TOKEN_CHARS = 16


class ProactiveSettings(_Section):
    """Scheduled warming from data sources."""

    enabled: bool = True
    # Cron expression (UTC) for sources without their own schedule.
    schedule: str = "0 * * * *"
    data_sources: list[ScheduledSource] = Field(default_factory=list)
    # Schedule optimization from the traffic's peaks and the ledger: "off",
    # "propose" (shown in GET /schedule) or "apply" (applied when it changes).
    optimize: Literal["off", "propose", "apply"] = "propose"
    # At start, warm every enabled source once: "off"; "background" (while
    # serving); "before_ready" (serving, but /readyz answers 503 until it is
    # done or warm_on_start_timeout has passed).
    warm_on_start: Literal["off", "background", "before_ready"] = "off"
    warm_on_start_timeout: Duration = 300.0
    # The directory file and SQLite sources posted through the control API
    # may read from (resolved, symlinks followed); empty: they may not be
    # posted.  The sources of this file may read any path.
    file_source_dir: str = ""
    # PostgreSQL hosts ("host" or "host:port", default port 5432) SQL sources
    # posted through the control API may connect to, besides the hosts this
    # file's own SQL sources name; empty: only those.
    sql_allowed_hosts: list[str] = Field(default_factory=list, max_length=100)

    @field_validator("file_source_dir")
    @classmethod
    def _directory(cls, value: str) -> str:
        if any(ord(c) < 0x20 for c in value):
            raise ValueError("holds control characters")
        return value

    @field_validator("sql_allowed_hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        for item in value:
            parse_host(item)
        return value

    @model_validator(mode="after")
    def _schedule_is_valid(self) -> ProactiveSettings:
        self.as_schedule()
        return self

    def as_schedule(self) -> Schedule:
        return Schedule(schedule=self.schedule, sources=self.data_sources)

    def source_policy(self) -> SourcePolicy:
        """What sources posted through the control API may read (this file's may read anything)."""
        configured = tuple(s.source for s in self.data_sources)
        hosts = {parse_host(h) for h in self.sql_allowed_hosts}
        for spec in configured:
            if isinstance(spec, SqlSource) and not spec.dsn.startswith("sqlite:"):
                hosts.update(postgres_hosts(spec.dsn))
        return SourcePolicy(
            file_source_dir=Path(self.file_source_dir) if self.file_source_dir else None,
            sql_allowed_hosts=frozenset(hosts),
            configured=configured,
        )


class ReactiveSettings(_Section):
    """Warming in reaction to usage: repeated misses, and refresh-ahead of hot entries."""

    enabled: bool = True
    # Keep a key warm once its misses within time_window exceed threshold.
    auto_warm: bool = True
    threshold: int = Field(10, ge=1)
    time_window: Duration = 3600.0
    # Re-fetch an entry with at least refresh_min_hits hits in its lifetime
    # when less than refresh_fraction of that lifetime is left.
    refresh_ahead: bool = True
    refresh_min_hits: int = Field(2, ge=1)
    refresh_fraction: float = Field(0.1, gt=0, lt=1)
    # Keys followed for both (least recently seen are forgotten first).
    max_tracked_keys: int = Field(10_000, ge=1)
    # Each of the two stops warming for a class of its decisions whose warms
    # are used less often than this (raised on its own to the measured
    # break-even where the cache evicts fresh entries); 0: never stops.
    min_precision: float = Field(0.1, ge=0, le=1)


class PredictiveSettings(_Section):
    """Warming from a model learned on the access history (see docs/decisions.md)."""

    enabled: bool = False
    # Horizon of a prediction: warm what is likely to be asked for within it.
    prediction_window: Duration = 3600.0
    # Lowest calibrated probability (the share of such predictions that came
    # true) a prediction needs before it is warmed: the least precision accepted.
    min_confidence: float = Field(0.3, gt=0, lt=1)
    # Warm fetches allowed per user request; above it the model only warms
    # its surest predictions.
    max_warm_ratio: float = Field(0.2, gt=0)
    # Predict what a client asks for next from what it asked for (pages, tiles, segments).
    sequences: bool = True
    # Keys followed: 550 to 700 bytes each with ordinary paths (about
    # 155 MB at the default, see docs/operations.md).
    max_keys: int = Field(200_000, ge=100)
    # Where the learned model is kept across restarts; empty: state.dir/model.json.
    model_path: str = ""
    # Cron (UTC) for saving the model and weighing old evidence down.
    retrain_schedule: str = "0 * * * *"
    priority: str = ""  # empty: the lowest execution.priority_levels

    @field_validator("retrain_schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        Cron.parse(value)
        return value


class StrategiesSettings(_Section):
    proactive: ProactiveSettings = Field(default_factory=ProactiveSettings)
    reactive: ReactiveSettings = Field(default_factory=ReactiveSettings)
    predictive: PredictiveSettings = Field(default_factory=PredictiveSettings)
    # Globs over paths (with query): a strategy may warm a path only if it
    # matches an include (when any is given) and no exclude.
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    # Every warm fetch is made as the key's clients ask for it: for each
    # variant (the values of the fields a stored Vary names) carrying at least
    # variant_min_share of the key's requests, at most max_variants of them...
    variant_min_share: float = Field(0.1, gt=0, le=1)
    max_variants: int = Field(3, ge=1, le=16)
    # ...and, with proxy.host_keying = "per-host", for each host used by at
    # least host_min_share of the path's distinct clients, at most max_hosts.
    host_min_share: float = Field(0.1, gt=0, le=1)
    max_hosts: int = Field(3, ge=1, le=16)


class ExecutionSettings(_Section):
    """How warm fetches are carried out."""

    parallelism: int = Field(10, ge=1, le=1000)
    batch_size: int = Field(100, ge=1)
    # Seconds one warm fetch may take before it counts as failed.
    timeout: Duration = 30.0
    retry_attempts: int = Field(3, ge=0, le=20)
    retry_base_delay: Duration = 0.5
    retry_max_delay: Duration = 30.0
    # Priority names, highest first.
    priority_levels: list[str] = Field(
        default_factory=lambda: ["high", "medium", "low"], min_length=1
    )
    # Warm fetches per second sent to the origin, at most; 0: no limit.
    rate_limit: float = Field(50.0, ge=0)
    # Lower parallelism while the origin is slow or failing, raise it after.
    adaptive: bool = True
    latency_target: Duration = 1.0
    error_rate_limit: float = Field(0.2, gt=0, le=1)
    # Pause warming while the process is above these; 0: no limit.
    max_cpu_percent: float = Field(0.0, ge=0)
    max_memory: ByteSize = 0
    max_queue: int = Field(100_000, ge=1)
    # Header sent with every warm fetch, so the origin can tell them apart.
    warm_header: str = "X-Warmproxy-Warm"

    @field_validator("priority_levels")
    @classmethod
    def _levels(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("priority levels must be distinct")
        return value

    @field_validator("warm_header")
    @classmethod
    def _header(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", value):
            raise ValueError(f"not a header field name: {value!r}")
        return value


class TrackingSettings(_Section):
    """What the warmer remembers of the traffic (bounded; see docs)."""

    # Off: the warmer does not observe requests (no reactive warming, no hot
    # keys, no history for warm-pattern); scheduled and on-demand warming work.
    enabled: bool = True
    windows: list[Duration] = Field(default_factory=lambda: [60.0, 3600.0, 86400.0])
    top_k: int = Field(1000, ge=10, le=100_000)
    max_known_urls: int = Field(100_000, ge=100)
    # The usage analysis of /cache/warming/hot-data (trends, seasonality,
    # segments, sequences): about 7 us per request off the request path;
    # false leaves hot keys, totals and hourly counts only.
    analysis: bool = True


class AlertThresholdSettings(_Section):
    # An alert is raised (log event + warmproxy_alert_active metric) when a
    # figure falls below its threshold; 0 switches a rule off.
    min_improvement: float = Field(0.1, ge=0, le=1)
    min_success_rate: float = Field(0.95, ge=0, le=1)
    min_precision: float = Field(0.0, ge=0, le=1)
    # Warm fetches resolved / requests seen before any rule is judged.
    min_samples: int = Field(100, ge=1)


class MonitoringSettings(_Section):
    """The effectiveness ledger and its alerts."""

    track_effectiveness: bool = True
    # Seconds between evaluations of the alert rules.
    metrics_interval: Duration = 15.0
    # Warmed entries followed until hit, expiry or eviction (oldest dropped first).
    max_tracked_entries: int = Field(100_000, ge=100)
    alert_thresholds: AlertThresholdSettings = Field(default_factory=AlertThresholdSettings)


class StateSettings(_Section):
    """Where state that outlives a restart is kept: schedule (without Redis), model, ledger."""

    # Empty: a directory of this proxy's own under $XDG_STATE_HOME/warmproxy
    # (else ~/.local/state/warmproxy), named for its listener, origin and store
    # (proxy/state_dir.py).
    dir: str = ""

    # (origin, listen, store, redis_prefix), bound by Settings; and an
    # ephemeral listener's random directory, chosen at the first path().
    _identity: tuple[str, str, str, str] | None = None
    _derived: Path | None = None

    def bind(self, *, origin: str, listen: str, store: str, redis_prefix: str) -> None:
        """Tell the section who the proxy is, for the directory ``dir = ""`` stands for."""
        identity = (origin, listen, store, redis_prefix)
        if identity != self._identity:
            self._identity, self._derived = identity, None

    def path(self) -> Path:
        """The state directory in effect: ``dir``, else the one derived for this proxy.

        Every user of the directory (schedule, model, ledger, hot set, the lock)
        asks here, so they agree; an ephemeral listener's random directory is
        chosen once.
        """
        if self.dir:
            return Path(self.dir)
        if self._derived is not None:
            return self._derived
        origin, listen, store, prefix = self._identity or _default_identity()
        path = derive_state_dir(origin=origin, listen=listen, store=store, redis_prefix=prefix)
        if is_ephemeral_listener(listen):
            self._derived = path
        return path

    @property
    def ephemeral(self) -> bool:
        """True when the directory is this process's alone and is removed at stop
        (``dir`` empty and the listener on port 0)."""
        identity = self._identity or _default_identity()
        return not self.dir and is_ephemeral_listener(identity[1])


def _default_identity() -> tuple[str, str, str, str]:
    """The identity of a proxy on the defaults (a StateSettings outside Settings)."""
    proxy, cache = ProxySettings(), CacheSettings()
    return proxy.origin, proxy.listen, cache.store, cache.redis_prefix


class LoggingSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"
    access_log: bool = False


class Settings(BaseSettings):
    """The whole configuration."""

    model_config = SettingsConfigDict(
        env_prefix="WARMPROXY_",
        env_nested_delimiter="__",
        extra="forbid",
        case_sensitive=False,
    )

    proxy: ProxySettings = Field(default_factory=ProxySettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    control: ControlSettings = Field(default_factory=ControlSettings)
    strategies: StrategiesSettings = Field(default_factory=StrategiesSettings)
    execution: ExecutionSettings = Field(default_factory=ExecutionSettings)
    tracking: TrackingSettings = Field(default_factory=TrackingSettings)
    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)
    state: StateSettings = Field(default_factory=StateSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        host, _ = parse_hostport(self.control.listen, what="control.listen")
        if not self.control.token.get_secret_value() and not _is_loopback(host):
            raise ValueError(
                f"control.token is required when control.listen ({self.control.listen}) "
                "is not a loopback address: the control API can warm and reconfigure"
            )
        levels = tuple(self.execution.priority_levels)
        self.strategies.proactive.as_schedule().check_priorities(levels)
        predictive = self.strategies.predictive
        if predictive.priority and predictive.priority not in levels:
            raise ValueError(
                f"strategies.predictive.priority: {predictive.priority!r} is not one of "
                f"execution.priority_levels {list(levels)}"
            )
        return self

    @model_validator(mode="after")
    def _bind_state_dir(self) -> Settings:
        # state.dir empty: the directory is derived from who this proxy is.
        self.state.bind(
            origin=self.proxy.origin,
            listen=self.proxy.listen,
            store=self.cache.store,
            redis_prefix=self.cache.redis_prefix,
        )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # CLI flags (init kwargs) > environment > the TOML file of this load.
        return init_settings, env_settings, _FileSource(settings_cls, _file_values.get({}))


class _FileSource(PydanticBaseSettingsSource):
    """The parsed TOML file as the lowest-ranked settings source."""

    def __init__(self, settings_cls: type[BaseSettings], values: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._values = values

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._values)


_file_values: ContextVar[dict[str, Any]] = ContextVar("warmproxy_config_file")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_settings(
    path: Path | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> Settings:
    """Settings from ``path`` (TOML), the environment and ``overrides`` (CLI flags).

    Raises ConfigError naming every offending key.
    """
    file_values: dict[str, Any] = {}
    if path is not None:
        try:
            file_values = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    misspelt = _unknown_environment_sections(os.environ)
    if misspelt:
        sections = ", ".join(Settings.model_fields)
        raise ConfigError(
            "invalid configuration: "
            + "; ".join(f"{name}: no section {section!r}" for name, section in misspelt)
            + f" (sections: {sections})"
        )
    token = _file_values.set(file_values)
    try:
        return Settings(**cast(dict[str, Any], overrides or {}))
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path)) from None
    except SettingsError as exc:
        # A WARMPROXY_* variable that is not valid JSON where a list or table
        # is expected (e.g. a,b instead of ["a","b"]).
        raise ConfigError(
            f"invalid configuration: {exc}; WARMPROXY_<SECTION>__<KEY> variables holding "
            'a list or a table take JSON, e.g. ["high","low"]'
        ) from None
    finally:
        _file_values.reset(token)


def _unknown_environment_sections(environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """``WARMPROXY_<SECTION>__<KEY>`` variables whose section does not exist.

    pydantic-settings refuses an unknown key in a known section but ignores
    a variable whose section is unknown, so a misspelt one
    (``WARMPROXY_CAHCE__STORE``) would be dropped without a word.  Variables
    without the ``__`` delimiter are not settings and are left alone.
    """
    known = set(Settings.model_fields)
    unknown = []
    for name in environ:
        upper = name.upper()
        if not upper.startswith("WARMPROXY_") or "__" not in upper:
            continue
        section = upper.removeprefix("WARMPROXY_").split("__", 1)[0].lower()
        if section not in known:
            unknown.append((name, section))
    return sorted(unknown)


def _describe(exc: ValidationError, path: Path | None) -> str:
    where = f" in {path}" if path else ""
    lines = [f"invalid configuration{where}:"]
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"])
        lines.append(f"  {key}: {error['msg']}" if key else f"  {error['msg']}")
    return "\n".join(lines)
