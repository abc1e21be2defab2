"""Configuration: one TOML file, overridden by ``WARMPROXY_*`` variables and CLI flags.

Precedence, highest first: CLI flags, environment (``WARMPROXY_<SECTION>__<KEY>``,
e.g. ``WARMPROXY_CACHE__STORE=redis``), the TOML file, the defaults below.  The
documented default file is ``config/warmproxy.toml``; keep the two in step.
Unknown keys and invalid values stop start-up with a message naming the key.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, cast, get_args, get_origin
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
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from proxy import origin_tls
from proxy.cache_key import check_globs
from proxy.forwarding import DEFAULT_DROPPED_REQUEST_FIELDS, PRESERVE_HOST_NEEDS_PER_HOST
from proxy.redis_client import check_redis_url
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
    # Fresh in-process hits answered by a lean protocol in front of aiohttp
    # (proxy/fast_lane.py); false: every request goes through aiohttp.
    fast_lane: bool = True
    # Proxy processes sharing the listen port (SO_REUSEPORT), under a
    # supervisor: worker 0 also runs the warmer and the control listener
    # (proxy/workers.py).  1: one process, no supervisor.
    workers: int = Field(1, ge=1, le=64)
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
    # TLS to an https origin (proxy/origin_tls.py): a CA bundle trusted
    # instead of the system's, verification (off only for tests: warned at
    # start), the name sent in SNI and checked against the certificate
    # (default: the origin's host), and a client certificate for mTLS.
    origin_ca_file: str = ""
    origin_verify: bool = True
    origin_server_name: str = ""
    origin_client_cert: str = ""
    origin_client_key: str = ""

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

    # The files are loaded at config load, so a bad one stops start-up with
    # the setting named instead of failing every request; messages never
    # hold a file's content.
    @field_validator("origin_ca_file")
    @classmethod
    def _ca_file(cls, value: str) -> str:
        if value:
            origin_tls.check_ca_file(value)
        return value

    @field_validator("origin_client_cert")
    @classmethod
    def _client_cert(cls, value: str) -> str:
        if value:
            origin_tls.check_certificate_file(value)
        return value

    @field_validator("origin_client_key")
    @classmethod
    def _client_key(cls, value: str) -> str:
        if value:
            origin_tls.check_key_file(value)
        return value

    @field_validator("origin_server_name")
    @classmethod
    def _server_name(cls, value: str) -> str:
        return origin_tls.check_server_name(value) if value else value

    @model_validator(mode="after")
    def _origin_tls(self) -> ProxySettings:
        names = ("origin_ca_file", "origin_server_name", "origin_client_cert", "origin_client_key")
        tls = [name for name in names if getattr(self, name)]
        if not self.origin_verify:
            tls.append("origin_verify")
        if tls and urlsplit(self.origin).scheme != "https":
            raise ValueError(f"{', '.join(tls)} apply to an https origin only, not {self.origin}")
        if self.origin_client_key and not self.origin_client_cert:
            raise ValueError("origin_client_key is set without origin_client_cert")
        if self.origin_client_cert and not self.origin_client_key:
            try:
                origin_tls.check_key_file(self.origin_client_cert)
            except origin_tls.TLSFileError as exc:
                raise ValueError(f"origin_client_cert: {exc}; set origin_client_key") from None
        if self.origin_client_cert:
            try:
                origin_tls.check_key_pair(self.origin_client_cert, self.origin_client_key)
            except origin_tls.TLSFileError as exc:
                raise ValueError(
                    f"origin_client_cert and its key do not load together: {exc}"
                ) from None
        return self


class PurgeSettings(_Section):
    """Purges: the origin's tag header, soft purges, the PURGE method."""

    # Response header naming the response's cache tags (space or comma
    # separated), never stored nor relayed to clients; "" relays it as any other.
    tag_header: str = "Surrogate-Key"
    # A soft-purged entry is served stale for up to this long (or its own
    # stale-while-revalidate, if longer) while one refresh runs.
    soft_stale_seconds: Duration = 60.0
    # PURGE /path on the proxy listener; off forwards PURGE to the origin.
    method: bool = False
    allowed_networks: list[str] = Field(
        default_factory=lambda: ["127.0.0.1/32", "::1/128"], max_length=100
    )

    @field_validator("tag_header")
    @classmethod
    def _tag_field_name(cls, value: str) -> str:
        if value and (len(value) > 128 or not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", value)):
            raise ValueError(f"not a header field name (at most 128 characters): {value[:64]!r}")
        return value

    @field_validator("allowed_networks")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(
                    f"not a network (CIDR) such as 10.0.0.0/8: {item[:64]!r}"
                ) from None
        return value


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
    # Redis store: replicas fetch a key once between them (a short lock per
    # key in Redis: the others wait for its entry); false: each fetches alone.
    fleet_fill_lock: bool = True
    # Redis down: still ready (serving pass-through, the outage shown in
    # metrics and /status); false: /readyz answers 503 until Redis is back.
    ready_without_store: bool = True
    # This replica's name in the fleet's list; empty: "<hostname>-<pid>".
    replica_name: str = ""
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
    purge: PurgeSettings = Field(default_factory=PurgeSettings)

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

    @field_validator("replica_name")
    @classmethod
    def _replica_name(cls, value: str) -> str:
        # It is part of a Redis key and shown in /status: bounded and plain.
        if len(value) > 64:
            raise ValueError(f"must be at most 64 characters, got {len(value)}")
        if not re.fullmatch(r"[A-Za-z0-9._-]*", value):
            raise ValueError("may hold only letters, digits, '.', '_' and '-'")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        # One server, or a Redis Cluster (redis+cluster://); the message
        # masks the URL's password.
        return check_redis_url(value)


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

    @model_validator(mode="after")
    def _token_when_reachable(self) -> ControlSettings:
        # Checked on the section, not the whole Settings, so it is reported
        # beside errors in other sections.
        host, _ = parse_hostport(self.listen, what="control.listen")
        if not self.token.get_secret_value() and not _is_loopback(host):
            raise ValueError(
                f"control.token is required when control.listen ({self.listen}) "
                "is not a loopback address: the control API can warm and reconfigure"
            )
        return self


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

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        # A field check, so a bad cron is reported beside the section's other
        # errors (a model check runs only once every field is valid).
        Cron.parse(value)
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
    # With sequences: also the next number of a numbered walk (page=N+1,
    # block N+1), learned per URL template: a URL no client may have asked
    # for yet is fetched (a GET, within +-64 of the one asked for).
    neighbours: bool = True
    # Keep the keys worth a cache slot cached under eviction: look them up
    # between their requests (a touch, no fetch) while their request rate is
    # above what a slot is worth (warmer/retention.py).
    retention: bool = True
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
        return (
            init_settings,
            _EnvSource(settings_cls),
            _FileSource(settings_cls, _file_values.get({})),
        )


class _EnvSource(EnvSettingsSource):
    """The ``WARMPROXY_*`` environment, without the variables this load has
    already reported as unreadable (so the rest is still validated and every
    error is reported at once)."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        skipped = _skipped_env.get()
        return {k: v for k, v in super()._load_env_vars().items() if k.upper() not in skipped}


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
_skipped_env: ContextVar[frozenset[str]] = ContextVar("warmproxy_skipped_env", default=frozenset())


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

    Raises ConfigError naming every offending key at once: a setting from a
    ``WARMPROXY_*`` variable is blamed on the variable, not the file.
    """
    file_values: dict[str, Any] = {}
    if path is not None:
        try:
            file_values = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    environment = _settings_variables(os.environ)
    unreadable = _unreadable_variables(environment)
    problems = [*_unknown_environment_sections(environment), *unreadable.values()]
    file_token = _file_values.set(file_values)
    skip_token = _skipped_env.set(frozenset(unreadable))
    try:
        return_value: Settings | None = Settings(**cast(dict[str, Any], overrides or {}))
    except ValidationError as exc:
        return_value = None
        problems.extend(_describe(exc, environment, overrides or {}))
    except SettingsError as exc:  # one the checks above did not foresee
        return_value = None
        problems.append(f"{exc}; {_JSON_HINT}")
    finally:
        _skipped_env.reset(skip_token)
        _file_values.reset(file_token)
    if problems or return_value is None:
        blamed_on_file = path is not None and any(not p.startswith("WARMPROXY_") for p in problems)
        where = f" in {path}" if blamed_on_file else ""
        raise ConfigError(
            f"invalid configuration{where}:\n" + "\n".join(f"  {p}" for p in problems)
        )
    return return_value


_JSON_HINT = (
    'WARMPROXY_<SECTION>__<KEY> variables holding a list or a table take JSON, e.g. ["high","low"]'
)


def _settings_variables(environ: Mapping[str, str]) -> dict[str, str]:
    """``WARMPROXY_*`` variables that name a setting (``WARMPROXY_<SECTION>[__<KEY>...]``),
    by their upper-case name; others (``WARMPROXY_CONFIG``) are not settings."""
    out = {}
    for name, value in environ.items():
        upper = name.upper()
        if upper.startswith("WARMPROXY_") and (
            "__" in upper or upper.removeprefix("WARMPROXY_").lower() in Settings.model_fields
        ):
            out[upper] = value
    return out


def _unknown_environment_sections(environment: Mapping[str, str]) -> list[str]:
    """``WARMPROXY_<SECTION>__<KEY>`` variables whose section does not exist.

    pydantic-settings refuses an unknown key in a known section but ignores
    a variable whose section is unknown, so a misspelt one
    (``WARMPROXY_CAHCE__STORE``) would be dropped without a word.
    """
    known = list(Settings.model_fields)
    problems = []
    for name in sorted(environment):
        section = name.removeprefix("WARMPROXY_").split("__", 1)[0].lower()
        if section not in known:
            problems.append(
                f"{name}: no section {section!r}{_did_you_mean(section, known)} "
                f"(sections: {', '.join(known)})"
            )
    return problems


def _unreadable_variables(environment: Mapping[str, str]) -> dict[str, str]:
    """Variables for a list or table setting whose value is not JSON, by name, with
    the problem (the value is not shown: it may be a secret)."""
    problems = {}
    for name, value in environment.items():
        loc = name.removeprefix("WARMPROXY_").lower().split("__")
        annotation = _annotation_at(loc)
        if annotation is None or not _takes_json(annotation):
            continue
        try:
            json.loads(value)
        except ValueError:
            key = ".".join(loc)
            problems[name] = (
                f"{name}: {key} is a list or a table, the value is not JSON; {_JSON_HINT}"
            )
    return problems


def _annotation_at(loc: Sequence[str | int]) -> Any:
    """The type of the setting at ``loc`` (``("execution", "parallelism")``), or None."""
    annotation: Any = Settings
    for part in loc:
        while get_origin(annotation) is Annotated:
            annotation = get_args(annotation)[0]
        origin = get_origin(annotation)
        if origin is list and (isinstance(part, int) or str(part).isdigit()):
            annotation = get_args(annotation)[0]
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(str(part))
            if field is None:
                return None
            annotation = field.annotation
        elif origin in (Union, UnionType):  # a tagged union: the member the tag names
            members = [
                m
                for m in get_args(annotation)
                if isinstance(m, type)
                and issubclass(m, BaseModel)
                and "type" in m.model_fields
                and part in get_args(m.model_fields["type"].annotation)
            ]
            if not members:
                return None
            annotation = members[0]
        else:
            return None
    return annotation


def _takes_json(annotation: Any) -> bool:
    """Whether pydantic-settings reads a variable for this type as JSON."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _takes_json(get_args(annotation)[0])
    if origin in (Union, UnionType):
        return any(_takes_json(a) for a in get_args(annotation) if a is not type(None))
    if origin in (list, dict, tuple, set, frozenset):
        return True
    return isinstance(annotation, type) and issubclass(annotation, (BaseModel, list, dict))


def _did_you_mean(name: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _describe(
    exc: ValidationError, environment: Mapping[str, str], overrides: Mapping[str, Any]
) -> list[str]:
    """One line per error, naming the key, or the variable when the value came
    from the environment (a flag beats it, so a flag's key is not blamed on it)."""
    lines = []
    for error in exc.errors():
        loc = error["loc"]
        key = ".".join(str(part) for part in loc)
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden" and loc:
            parent = _annotation_at(loc[:-1])
            is_model = isinstance(parent, type) and issubclass(parent, BaseModel)
            fields = list(parent.model_fields) if is_model else []
            where = ".".join(str(part) for part in loc[:-1])
            message = (
                f"unknown setting {str(loc[-1])!r} in [{where}]"
                if where
                else f"unknown section [{loc[-1]}]"
            ) + _did_you_mean(str(loc[-1]), fields)
        from_flag = len(loc) >= 2 and str(loc[1]) in overrides.get(str(loc[0]), {})
        variable = None if from_flag else _variable_for(loc, environment)
        if variable is not None:
            lines.append(f"{variable}: {key}: {message}")
            continue
        # A check over a whole section: name the variables that took part in it.
        beneath = [
            name
            for name in sorted(environment)
            if key and name.startswith(_variable_name(loc) + "__")
        ]
        also = f" (with {', '.join(beneath)} from the environment)" if beneath else ""
        lines.append(f"{key}: {message}{also}" if key else f"{message}{also}")
    return lines


def _variable_name(loc: Sequence[str | int]) -> str:
    return "WARMPROXY_" + "__".join(str(part).upper() for part in loc)


def _variable_for(loc: Sequence[str | int], environment: Mapping[str, str]) -> str | None:
    """The variable that set the value at ``loc`` (or a table holding it), if any."""
    for n in range(len(loc), 0, -1):
        name = _variable_name(loc[:n])
        if name in environment:
            return name
    return None
