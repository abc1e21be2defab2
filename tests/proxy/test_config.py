"""Configuration: sizes, precedence, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.config import ConfigError, load_settings


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1048576", 1048576),
        ("512KiB", 512 * 1024),
        ("256MiB", 256 * 1024**2),
        ("1GiB", 1024**3),
        ("64k", 64_000),
        ("2MB", 2_000_000),
        ("1.5MiB", int(1.5 * 1024**2)),
    ],
)
def test_sizes_accept_units(text: str, expected: int) -> None:
    assert load_settings(None, {"cache": {"max_bytes": text}}).cache.max_bytes == expected


@given(st.integers(min_value=1, max_value=2**40))
def test_integer_sizes_pass_through(size: int) -> None:
    assert load_settings(None, {"cache": {"max_bytes": size}}).cache.max_bytes == size


def test_precedence_cli_over_environment_over_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "w.toml"
    config.write_text('[proxy]\nlisten = "127.0.0.1:1111"\nconnect_timeout = 7.0\n')
    monkeypatch.setenv("WARMPROXY_PROXY__LISTEN", "127.0.0.1:2222")
    settings = load_settings(config)
    assert settings.proxy.listen == "127.0.0.1:2222"  # environment beats the file
    assert settings.proxy.connect_timeout == 7.0  # the file beats the default
    settings = load_settings(config, {"proxy": {"listen": "127.0.0.1:3333"}})
    assert settings.proxy.listen == "127.0.0.1:3333"  # a flag beats both


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"proxy": {"origin": "http://host/path"}}, "proxy.origin"),
        ({"proxy": {"listen": "nohost"}}, "proxy.listen"),
        ({"proxy": {"connect_timeout": -1}}, "proxy.connect_timeout"),
        ({"proxy": {"trusted_proxies": ["not-a-network"]}}, "proxy.trusted_proxies"),
        ({"cache": {"store": "disk"}}, "cache.store"),
        ({"cache": {"max_bytes": 0}}, "cache.max_bytes"),
        ({"cache": {"max_entry_bytes": "0MiB"}}, "cache.max_entry_bytes"),
        ({"proxy": {"public_host": "bad host/"}}, "proxy.public_host"),
        ({"cache": {"redis_url": "http://x"}}, "cache.redis_url"),
        ({"cache": {"targeted_cache_control": ["bad name"]}}, "cache.targeted_cache_control"),
        ({"control": {"listen": "x:99999"}}, "control.listen"),
        ({"logging": {"level": "loud"}}, "logging.level"),
    ],
)
def test_invalid_values_name_their_key(overrides: dict, key: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings(None, overrides)
    assert key in str(error.value)


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[cache\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_settings(broken)


def test_an_environment_variable_for_no_section_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WARMPROXY_CAHCE__STORE", "redis")
    with pytest.raises(ConfigError, match=r"WARMPROXY_CAHCE__STORE: no section 'cahce'.*cache"):
        load_settings(None)
    # Variables that are not WARMPROXY_<SECTION>__<KEY> are not settings.
    monkeypatch.delenv("WARMPROXY_CAHCE__STORE")
    monkeypatch.setenv("WARMPROXY_REQUIRE_REDIS", "1")
    monkeypatch.setenv("WARMPROXY_CACHE__STORE", "redis")
    assert load_settings(None).cache.store == "redis"


def test_an_environment_list_that_is_not_json_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WARMPROXY_EXECUTION__PRIORITY_LEVELS", "a,b")
    with pytest.raises(ConfigError, match=r"WARMPROXY_EXECUTION__PRIORITY_LEVELS: .*take JSON"):
        load_settings(None)
    monkeypatch.setenv("WARMPROXY_EXECUTION__PRIORITY_LEVELS", '["a", "b"]')
    assert load_settings(None).execution.priority_levels == ["a", "b"]


def test_an_origin_with_credentials_is_refused_without_echoing_them() -> None:
    """user:password@ in proxy.origin would be sent in the origin's Host field."""
    with pytest.raises(ConfigError) as raised:
        load_settings(overrides={"proxy": {"origin": "http://admin:s3cret-pw@127.0.0.1:9000"}})
    message = str(raised.value)
    assert "proxy.origin" in message and "credentials" in message
    assert "s3cret-pw" not in message
