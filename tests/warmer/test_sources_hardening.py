"""Warming sources and schedules, hardened: what validates also builds and warms,
numbers are bounded, posted sources are confined to what the configuration
allows, SQL sources only read, credentials are masked wherever a source is
shown, and the saved schedule survives crashes and empty posts."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
import sqlite3
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import ValidationError

from proxy.app import Warmproxy
from proxy.check_config import effective
from proxy.config import ConfigError, load_settings
from proxy.redact import mask_url
from tests.proxy.conftest import Origin, ProxyFactory, control_url
from warmer.schedule import Schedule
from warmer.schedule import SqlSource as SqlSpec
from warmer.schedule_store import FileScheduleState
from warmer.sources import FileSource, SourceError, SqlSource
from warmer.state_file import StateFile

TOKEN = "h2-control-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CACHEABLE = {"Cache-Control": "public, max-age=60"}
SECRET = "hunter2-S3CRET"


def settings(tmp_path: Path, **proactive: Any) -> dict[str, dict[str, Any]]:
    return {
        "control": {"token": TOKEN},
        "state": {"dir": str(tmp_path / "state")},
        "execution": {"rate_limit": 0, "retry_attempts": 0},
        "strategies": {"proactive": proactive},
    }


async def api(
    client: aiohttp.ClientSession, proxy: Warmproxy, method: str, path: str, body: Any = None
) -> tuple[int, Any, str]:
    """Status, JSON body and the raw text of a control API call."""
    kwargs: dict[str, Any] = {"headers": AUTH}
    if body is not None:
        kwargs["json"] = body
    url = control_url(proxy, f"/cache/warming/{path}")
    async with client.request(method, url, **kwargs) as response:
        text = await response.text()
        return response.status, json.loads(text), text


async def finished_run(client: aiohttp.ClientSession, proxy: Warmproxy, run_id: str) -> Any:
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        _, body, _ = await api(client, proxy, "GET", f"progress?run_id={run_id}")
        if body["status"] != "running":
            return body
        assert asyncio.get_running_loop().time() < deadline, body
        await asyncio.sleep(0.02)


def sql(**fields: Any) -> dict[str, Any]:
    source = {
        "type": "sql",
        "dsn": "sqlite:///shop.db",
        "query": "SELECT id FROM products",
        "key_pattern": "/p/{id}",
    }
    return {"name": "db", "source": {**source, **fields}}


def one(source: dict[str, Any], **item: Any) -> dict[str, Any]:
    return {"sources": [{"name": "s", **item, "source": source}]}


def error_locations(document: Any) -> list[str]:
    with pytest.raises(ValidationError) as info:
        Schedule.model_validate(document)
    return [".".join(str(p) for p in e["loc"]) for e in info.value.errors()]


# --- 1. what validates also builds ---------------------------------------------------


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ({"sources": [sql(key_pattern="/{0}")]}, "sources.0.source.sql.key_pattern"),
        ({"sources": [sql(key_pattern="/{id.__class__}")]}, "sources.0.source.sql.key_pattern"),
        ({"sources": [sql(key_pattern="/p/{id!r}")]}, "sources.0.source.sql.key_pattern"),
        ({"sources": [sql(key_pattern="/p/{id:>9}")]}, "sources.0.source.sql.key_pattern"),
        ({"sources": [sql(key_pattern="/\\evil/{id}")]}, "sources.0.source.sql.key_pattern"),
        ({"sources": [sql(max_rows=2**31)]}, "sources.0.source.sql.max_rows"),
        ({"sources": [sql(query="SELECT 1 AS id; SELECT 2")]}, "sources.0.source.sql.query"),
        ({"sources": [sql(query="ATTACH 'x.db' AS x")]}, "sources.0.source.sql.query"),
        ({"sources": [sql(dsn="mysql://db/shop")]}, "sources.0.source.sql.dsn"),
        (
            one({"type": "urls", "paths": ["/ok", "/\\evil.example"]}),
            "sources.0.source.urls.paths.1",
        ),
        (one({"type": "sitemap", "url": "//evil.example/s.xml"}), "sources.0.source.sitemap.url"),
    ],
)
def test_a_schedule_that_would_build_nothing_is_refused_naming_the_field(
    document: dict[str, Any], field: str
) -> None:
    assert error_locations(document) == [field]


def test_a_plain_template_of_column_names_is_accepted() -> None:
    plan = Schedule.model_validate(
        {"sources": [sql(key_pattern="/p/{id}?lang={lang}", query="-- top\nSELECT 1 AS id;")]}
    )
    assert plan.sources[0].source.type == "sql"


async def test_the_api_refuses_what_would_not_build_and_keeps_the_schedule(
    origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    proxy = await make_proxy(origin.url, **settings(tmp_path, file_source_dir=str(tmp_path)))
    for key_pattern in ("/{0}", "/{a.__class__}"):
        status, body, _ = await api(
            client, proxy, "POST", "schedule", {"sources": [sql(key_pattern=key_pattern)]}
        )
        assert status == 400, body
        assert body["field"] == "sources.0.source.sql.key_pattern"
    _, schedule, _ = await api(client, proxy, "GET", "schedule")
    assert schedule["sources"] == []


async def test_a_source_failing_when_built_fails_its_run_with_the_error(
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The configuration's own source names a password variable that is not
    # set: it validates, and building it at run time fails.
    monkeypatch.delenv("WARMPROXY_SQL_H2_UNSET", raising=False)
    source = sql(dsn="postgresql://app@127.0.0.1:1/shop", password_env="WARMPROXY_SQL_H2_UNSET")
    proxy = await make_proxy(origin.url, **settings(tmp_path, data_sources=[source]))
    caplog.set_level(logging.WARNING, logger="warmer.service")
    status, run, _ = await api(client, proxy, "POST", "start", {"strategy": "proactive"})
    assert status == 202, run
    done = await finished_run(client, proxy, run["run_id"])
    assert done["status"] == "failed"
    assert "WARMPROXY_SQL_H2_UNSET is not set" in done["errors"][0]["error"]
    _, schedule, _ = await api(client, proxy, "GET", "schedule")
    assert "is not set" in schedule["errors"]["db"]
    assert any("WARMPROXY_SQL_H2_UNSET is not set" in r.getMessage() for r in caplog.records)


# --- 2. bounded, strict numbers --------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "source", "field"),
    [
        ({"ttl": 1e16}, {"type": "hot"}, "sources.0.ttl"),
        ({"ttl": 1e308}, {"type": "hot"}, "sources.0.ttl"),
        ({"ttl": "5"}, {"type": "hot"}, "sources.0.ttl"),
        ({"enabled": "true"}, {"type": "hot"}, "sources.0.enabled"),
        ({}, {"type": "hot", "top_n": True}, "sources.0.source.hot.top_n"),
        ({}, {"type": "hot", "top_n": "5"}, "sources.0.source.hot.top_n"),
        ({}, {"type": "sitemap", "max_urls": 10**9}, "sources.0.source.sitemap.max_urls"),
        ({}, sql(max_rows="5")["source"], "sources.0.source.sql.max_rows"),
        ({}, sql(max_rows=10_000_001)["source"], "sources.0.source.sql.max_rows"),
        ({}, sql(timeout=1e9)["source"], "sources.0.source.sql.timeout"),
    ],
)
def test_numbers_are_strict_and_bounded(
    item: dict[str, Any], source: dict[str, Any], field: str
) -> None:
    assert error_locations(one(source, **item)) == [field]


def test_config_durations_are_bounded_and_keep_their_units() -> None:
    for value in (1e308, "9" * 400, float("inf")):
        with pytest.raises(ConfigError, match=r"execution\.timeout"):
            load_settings(None, {"execution": {"timeout": value}})
    with pytest.raises(ConfigError, match=r"strategies\.proactive\.warm_on_start_timeout"):
        load_settings(None, {"strategies": {"proactive": {"warm_on_start_timeout": "400d"}}})
    assert load_settings(None, {"execution": {"timeout": "5m"}}).execution.timeout == 300.0


# --- 3. file sources: the configuration's anywhere, posted ones confined ------------------


async def test_posted_file_sources_need_a_file_source_dir(
    origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    proxy = await make_proxy(origin.url, **settings(tmp_path))
    status, body, _ = await api(
        client, proxy, "POST", "schedule", one({"type": "file", "path": "/etc/passwd"})
    )
    assert status == 400
    assert body["field"] == "sources.0.source.file.path"
    assert "file_source_dir" in body["error"]


async def test_posted_file_sources_stay_inside_file_source_dir(
    origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    outside = tmp_path / "outside.txt"
    outside.write_text("/products/1\n")
    (allowed / "out").symlink_to(outside)
    (allowed / "pages.txt").write_text("/products/1\n/products/2\n")
    origin.set("/products/1", headers=CACHEABLE)
    origin.set("/products/2", headers=CACHEABLE)
    proxy = await make_proxy(origin.url, **settings(tmp_path, file_source_dir=str(allowed)))
    for path in ("/etc/passwd", str(outside), "../outside.txt", "out"):
        status, body, _ = await api(
            client, proxy, "POST", "schedule", one({"type": "file", "path": path})
        )
        assert status == 400, (path, body)
        assert body["field"] == "sources.0.source.file.path"
        assert "outside file_source_dir" in body["error"]
        assert str(allowed) not in body["error"]  # where the directory is stays unsaid
    status, body, _ = await api(
        client, proxy, "POST", "schedule", one({"type": "file", "path": "pages.txt"})
    )
    assert status == 200, body
    _, run, _ = await api(client, proxy, "POST", "start", {"strategy": "proactive"})
    done = await finished_run(client, proxy, run["run_id"])
    assert (done["status"], done["progress"]["success"]) == ("completed", 2)
    # A symlink put in place of the file after the post is refused at the run.
    (allowed / "pages.txt").unlink()
    (allowed / "pages.txt").symlink_to(outside)
    _, run, _ = await api(client, proxy, "POST", "start", {"strategy": "proactive"})
    done = await finished_run(client, proxy, run["run_id"])
    assert done["status"] == "failed"
    assert "outside file_source_dir" in done["errors"][0]["error"]


async def test_a_file_source_error_never_shows_the_file_content(
    origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    token = "ghp_" + "Zq9" * 10  # a secret, not a path
    (tmp_path / "secret.txt").write_text(f"{token}\n/products/1\n")
    (tmp_path / "binary.txt").write_bytes(b"/ok\n\xff" + token.encode())
    proxy = await make_proxy(origin.url, **settings(tmp_path, file_source_dir=str(tmp_path)))
    plan = {
        "sources": [
            {"name": "secret", "source": {"type": "file", "path": "secret.txt"}},
            {"name": "binary", "source": {"type": "file", "path": "binary.txt"}},
        ]
    }
    status, body, _ = await api(client, proxy, "POST", "schedule", plan)
    assert status == 200, body
    _, run, _ = await api(client, proxy, "POST", "start", {"strategy": "proactive"})
    done = await finished_run(client, proxy, run["run_id"])
    assert done["status"] == "failed"
    errors = " ".join(e["error"] for e in done["errors"])
    assert "line 1 is not a path" in errors and "is not UTF-8 text" in errors
    _, _, status_text = await api(client, proxy, "GET", "status")
    _, schedule, schedule_text = await api(client, proxy, "GET", "schedule")
    assert set(schedule["errors"]) == {"secret", "binary"}
    for shown in (errors, status_text, schedule_text):
        assert token not in shown and "Zq9" not in shown


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this system")
async def test_a_file_source_reads_only_bounded_regular_files(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")  # nobody writes: reading it would block forever
    with pytest.raises(SourceError, match="is not a regular file"):
        await asyncio.wait_for(FileSource("f", tmp_path / "pipe").paths(), 5)
    (tmp_path / "big.txt").write_text("/p\n" * 100)
    with pytest.raises(SourceError, match="is larger than 64 bytes"):
        await FileSource("f", tmp_path / "big.txt", max_bytes=64).paths()


async def test_the_configuration_file_sources_read_any_path(
    origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere" / "pages.txt"
    elsewhere.parent.mkdir()
    elsewhere.write_text("/products/1\n")
    origin.set("/products/1", headers=CACHEABLE)
    source = {"name": "pages", "source": {"type": "file", "path": str(elsewhere)}}
    proxy = await make_proxy(
        origin.url,
        **settings(tmp_path, data_sources=[source], file_source_dir=str(tmp_path / "posted")),
    )
    _, run, _ = await api(client, proxy, "POST", "start", {"strategy": "proactive"})
    assert (await finished_run(client, proxy, run["run_id"]))["progress"]["success"] == 1
    # Posted back as GET shows it, it is still the configuration's own source.
    _, shown, _ = await api(client, proxy, "GET", "schedule")
    status, body, _ = await api(client, proxy, "POST", "schedule", {"sources": shown["sources"]})
    assert status == 200, body


# --- 4. SQLite sources only read ---------------------------------------------------------


@pytest.fixture
def shop_db(tmp_path: Path) -> Path:
    path = tmp_path / "shop.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE products (id INTEGER PRIMARY KEY, slug TEXT)")
        conn.execute("CREATE TABLE views (product INTEGER, n INTEGER)")
        conn.executemany("INSERT INTO products VALUES (?, ?)", [(1, "a"), (2, "b"), (3, "c")])
        conn.executemany("INSERT INTO views VALUES (?, ?)", [(1, 5), (2, 50), (3, 20)])
        conn.execute("CREATE VIEW popular AS SELECT product FROM views WHERE n > 10")
    conn.close()
    return path


def files_in(directory: Path) -> list[Path]:
    return sorted(directory.iterdir())


@pytest.mark.parametrize(
    ("query", "refused"),
    [
        ("ATTACH DATABASE '{dir}/attached.db' AS x", "ATTACH"),
        ("VACUUM INTO '{dir}/copy.db'", "ATTACH"),
        ("PRAGMA table_info(products)", "PRAGMA"),
        ("SELECT load_extension('{dir}/evil')", "load_extension()"),
    ],
)
async def test_sqlite_sources_write_no_file(
    shop_db: Path, tmp_path: Path, query: str, refused: str
) -> None:
    before = files_in(tmp_path)
    source = SqlSource("db", f"sqlite:///{shop_db}", query.format(dir=tmp_path), "/p/{id}")
    with pytest.raises(SourceError, match=rf"readonly.*\({re.escape(refused)} refused\)"):
        await source.paths()
    assert files_in(tmp_path) == before


async def test_sqlite_reads_through_joins_views_and_ctes(shop_db: Path) -> None:
    query = (
        "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 3) "
        "SELECT p.id, upper(p.slug) AS slug FROM products p JOIN popular ON product = p.id "
        "JOIN n ON n.x = p.id ORDER BY p.id"
    )
    source = SqlSource("db", f"sqlite:///{shop_db}", query, "/p/{slug}/{id}")
    assert [p.url for p in await source.paths()] == ["/p/B/2", "/p/C/3"]


def test_sql_sources_run_one_statement(shop_db: Path) -> None:
    dsn = f"sqlite:///{shop_db}"
    with pytest.raises(ValueError, match="source 'db': query must be one statement"):
        SqlSource("db", dsn, "SELECT id FROM products; DELETE FROM products", "/p/{id}")
    # A ";" in a literal or a comment after the statement is not a second one.
    SqlSource("db", dsn, "SELECT id FROM products WHERE slug != ';' ; -- done", "/p/{id}")


# --- 5. SQL sources reach only allowed hosts -----------------------------------------------


async def test_posted_sql_sources_reach_only_allowed_hosts_and_hold_no_password(
    origin: Origin,
    make_proxy: ProxyFactory,
    client: aiohttp.ClientSession,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WARMPROXY_SQL_SHOP", "pw")
    configured = sql(dsn="postgresql://app@cfg-db/shop")
    proxy = await make_proxy(
        origin.url,
        **settings(tmp_path, data_sources=[configured], sql_allowed_hosts=["db.internal:6432"]),
    )

    async def post(dsn: str, **fields: Any) -> tuple[int, Any]:
        status, body, _ = await api(
            client, proxy, "POST", "schedule", {"sources": [sql(dsn=dsn, **fields)]}
        )
        return status, body

    for dsn in ("postgresql://app@db.internal:6432/shop", "postgresql://app@CFG-DB:5432/shop"):
        assert (await post(dsn, password_env="WARMPROXY_SQL_SHOP"))[0] == 200, dsn
    refused = [
        ("postgresql://app@evil.example/shop", "not one a posted source may connect to"),
        ("postgresql://app@db.internal/shop", "not one a posted source may connect to"),
        ("postgresql://app@db.internal:6432,evil.example/shop", "evil.example"),
        ("postgresql://app@/shop", "must name the database host"),
        ("postgresql://app@db.internal:6432/shop?host=evil.example", "'host' is not allowed"),
        ("postgresql://app@db.internal:6432/shop?sslrootcert=/etc/shadow", "not allowed"),
        (f"postgresql://app:{SECRET}@db.internal:6432/shop", "password_env"),
        (f"postgresql://app@db.internal:6432/shop?password={SECRET}", "password_env"),
    ]
    for dsn, message in refused:
        status, body = await post(dsn)
        assert status == 400, (dsn, body)
        assert body["field"] == "sources.0.source.sql.dsn"
        assert message in body["error"] and SECRET not in body["error"]
    # Another secret of the process cannot be sent to a database as a password.
    status, body = await post(
        "postgresql://app@db.internal:6432/shop", password_env="WARMPROXY_CONTROL__TOKEN"
    )
    assert (status, body["field"]) == (400, "sources.0.source.sql.password_env")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.fixture
async def open_port() -> AsyncIterator[int]:
    """A port where something answers that is not PostgreSQL."""

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.0 400 Bad Request\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


async def test_connection_errors_do_not_tell_open_ports_from_closed(open_port: int) -> None:
    pytest.importorskip("asyncpg")
    messages = []
    for port in (_closed_port(), open_port):
        source = SqlSource(
            "db", f"postgresql://app@127.0.0.1:{port}/x", "SELECT 1 AS id", "/{id}", timeout=2
        )
        with pytest.raises(SourceError) as info:
            await source.paths()
        messages.append(str(info.value))
    assert messages == ["source 'db': could not connect to the database"] * 2


# --- 6. credentials masked wherever shown -------------------------------------------------


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://app:pw@db:5432/shop", "postgresql://app:***@db:5432/shop"),
        ("postgresql://app:p@ss:w@db/shop", "postgresql://app:***@db/shop"),
        ("redis://:pw@redis:6379/0", "redis://:***@redis:6379/0"),
        ("redis://redis/0?password=pw&db=1", "redis://redis/0?password=***&db=1"),
        ("unix:///run/redis.sock?PASSWORD=pw", "unix:///run/redis.sock?PASSWORD=***"),
        (
            "postgresql://db/x?sslpassword=a&token=b&secret=c&key=d&pwd=e&pass=f&sslmode=require",
            "postgresql://db/x?sslpassword=***&token=***&secret=***&key=***&pwd=***&pass=***"
            "&sslmode=require",
        ),
        ("http://app@origin:9000", "http://app@origin:9000"),
        ("sqlite:////var/lib/shop.db", "sqlite:////var/lib/shop.db"),
        ("http://u:pw@[::1", "***"),
        ("redis://:pa?ss#w/rd@redis:6379/0", "redis://***@redis:6379/0"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


async def test_a_configured_dsn_password_is_masked_everywhere_and_kept_where_used(
    origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    dsn = f"postgresql://app:{SECRET}@cfg-db:5432/shop"
    overrides = settings(tmp_path, data_sources=[sql(dsn=dsn)])
    overrides["cache"] = {"redis_url": f"redis://cache:6379/0?password={SECRET}"}
    assert SECRET not in json.dumps(effective(load_settings(None, overrides)))  # check-config
    proxy = await make_proxy(origin.url, **settings(tmp_path, data_sources=[sql(dsn=dsn)]))
    _, shown, text = await api(client, proxy, "GET", "schedule")
    assert SECRET not in text
    assert shown["sources"][0]["source"]["dsn"] == "postgresql://app:***@cfg-db:5432/shop"
    # Posted back as shown (the edit a user makes), it is the configured source:
    # the real password is kept in memory, and saved nowhere.
    status, body, text = await api(client, proxy, "POST", "schedule", {"sources": shown["sources"]})
    assert status == 200, body
    assert SECRET not in text
    assert dsn_in_force(proxy) == dsn
    assert SECRET not in (tmp_path / "state" / "schedule.json").read_text()
    # After a restart the saved (masked) source is the configured one again.
    await proxy.stop()
    again = await make_proxy(origin.url, **settings(tmp_path, data_sources=[sql(dsn=dsn)]))
    assert dsn_in_force(again) == dsn
    _, restored, _ = await api(client, again, "GET", "schedule")
    assert restored["origin"] == "posted"


def dsn_in_force(proxy: Warmproxy) -> str:
    """The DSN the warmer would connect with (not what is shown)."""
    source = proxy.warmer.schedule.sources[0].source
    assert isinstance(source, SqlSpec)
    return source.dsn


def test_config_errors_do_not_echo_passwords() -> None:
    for section, key, value in [
        ("cache", "redis_url", f"http://:{SECRET}@redis:6379"),
        ("proxy", "origin", f"ftp://app:{SECRET}@origin"),
    ]:
        with pytest.raises(ConfigError, match=rf"{section}\.{key}") as info:
            load_settings(None, {section: {key: value}})
        assert SECRET not in str(info.value)


def test_check_config_masks_every_url_credential() -> None:
    data = effective(
        load_settings(
            None,
            {
                "cache": {"redis_url": f"redis://user:{SECRET}@redis:6379/0"},
            },
        )
    )
    assert SECRET not in json.dumps(data)
    assert data["cache"]["redis_url"] == "redis://user:********@redis:6379/0"


# --- 7. a replace needs "sources" ---------------------------------------------------------


async def test_a_schedule_without_sources_replaces_nothing(
    origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    configured = {"name": "home", "source": {"type": "urls", "paths": ["/"]}}
    proxy = await make_proxy(origin.url, **settings(tmp_path, data_sources=[configured]))
    for document in ({}, {"schedule": "*/5 * * * *"}):
        status, body, _ = await api(client, proxy, "POST", "schedule", document)
        assert (status, body["field"]) == (400, "sources")
    _, schedule, _ = await api(client, proxy, "GET", "schedule")
    assert [s["name"] for s in schedule["sources"]] == ["home"]
    status, cleared, _ = await api(client, proxy, "POST", "schedule", {"sources": []})
    assert (status, cleared["sources"]) == (200, [])


# --- 8. crash leftovers, synced writes ----------------------------------------------------


async def test_leftovers_of_an_interrupted_schedule_write_are_removed_at_start(
    origin: Origin, make_proxy: ProxyFactory, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    leftover = state / ".schedule-k3j9x.tmp"
    leftover.write_bytes(b'{"schedule": "0 * * * *", "sour')
    saved = {"schedule": "0 * * * *", "sources": [{"name": "kept", "source": {"type": "hot"}}]}
    (state / "schedule.json").write_text(json.dumps(saved))
    proxy = await make_proxy(origin.url, **settings(tmp_path))
    assert not leftover.exists()
    _, schedule, _ = await api(client, proxy, "GET", "schedule")
    assert [s["name"] for s in schedule["sources"]] == ["kept"]


async def test_state_files_are_synced_before_they_replace_the_old_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        steps.append("fsync-dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync")
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        steps.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    await FileScheduleState(tmp_path).save({"schedule": "0 * * * *", "sources": []})
    assert steps == ["fsync", "rename", "fsync-dir"]
    steps.clear()
    await StateFile(tmp_path / "ledger.json", "ledger").save({"v": 1})
    assert steps[:2] == ["fsync", "rename"]
    assert json.loads((tmp_path / "ledger.json").read_text()) == {"v": 1}
