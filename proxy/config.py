"""Configuration: one TOML file, overridden by ``WARMPROXY_*`` variables and CLI flags.

Precedence, highest first: CLI flags, environment (``WARMPROXY_<SECTION>__<KEY>``,
e.g. ``WARMPROXY_CACHE__STORE=redis``), the TOML file, the defaults below.  The
documented default file is ``config/warmproxy.toml``; keep the two in step.
Unknown keys and invalid values stop start-up with a message naming the key.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal, cast
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

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
    public_host: str = ""
    trusted_proxies: list[str] = Field(default_factory=list)
    client_id_header: str = ""
    max_request_line: int = Field(8190, ge=256)
    max_header_size: int = Field(8190, ge=256)
    max_headers: int = Field(100, ge=8)
    keepalive_timeout: float = Field(75.0, gt=0)
    via_name: str = "warmproxy"

    @field_validator("origin")
    @classmethod
    def _origin_is_http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"must be an http(s) URL such as http://127.0.0.1:9000, got {value!r}")
        if parts.path not in ("", "/") or parts.query:
            raise ValueError("must be scheme://host[:port] without a path")
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

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for item in value:
            ipaddress.ip_network(item, strict=False)
        return value


class CacheSettings(_Section):
    """Where and how responses are stored."""

    store: Literal["memory", "redis"] = "memory"
    max_bytes: Annotated[ByteSize, Field(gt=0)] = 256 * 1024 * 1024
    max_entry_bytes: Annotated[ByteSize, Field(gt=0)] = 8 * 1024 * 1024
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
            raise ValueError(f"must be a redis://, rediss:// or unix:// URL, got {value!r}")
        return value


class ControlSettings(_Section):
    """The operator listener: metrics, health, and the control API."""

    listen: str = "127.0.0.1:8081"

    @field_validator("listen")
    @classmethod
    def _listen_is_hostport(cls, value: str) -> str:
        parse_hostport(value, what="listen")
        return value


class LoggingSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


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
    logging: LoggingSettings = Field(default_factory=LoggingSettings)

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
    token = _file_values.set(file_values)
    try:
        return Settings(**cast(dict[str, Any], overrides or {}))
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path)) from None
    finally:
        _file_values.reset(token)


def _describe(exc: ValidationError, path: Path | None) -> str:
    where = f" in {path}" if path else ""
    lines = [f"invalid configuration{where}:"]
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"])
        lines.append(f"  {key}: {error['msg']}")
    return "\n".join(lines)
