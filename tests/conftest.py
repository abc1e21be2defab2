"""Fixtures shared by all tests: real Redis servers, and a state root per test.

``redis_url`` is ``REDIS_URL`` when set and answering, else a throw-away
``redis-server`` for the session.  Only when there is no ``redis-server`` at
all do the tests that need Redis skip, and not even then when
``WARMPROXY_REQUIRE_REDIS=1`` or ``CI=true`` is set: there they fail.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest

from tests.redis_cluster import start_cluster
from tests.redis_server import RedisServer, answers_ping, delete_prefix, start_redis_server


@pytest.fixture(autouse=True)
def state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The state root of this test: ``XDG_STATE_HOME`` under its tmp dir.

    A proxy with an empty ``state.dir`` (in this process, or a ``warmproxy``
    process started with this environment) keeps its schedule, model,
    ledger and hot set under it, never in the user's own state directory;
    a ``state.dir`` from the developer's shell does not apply.
    """
    home = tmp_path / "xdg-state"
    monkeypatch.setenv("XDG_STATE_HOME", str(home))
    monkeypatch.delenv("WARMPROXY_STATE__DIR", raising=False)
    return home


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a Redis shared by the session; tests isolate themselves by key prefix."""
    env_url = os.environ.get("REDIS_URL")
    # An unreachable REDIS_URL (a stale shell variable) falls back to a
    # throw-away server rather than failing every Redis test.
    if env_url and answers_ping(env_url):
        yield env_url
        return
    server = start_redis_server(
        tmp_path_factory.mktemp("redis-session"),
        context=" (and REDIS_URL is unset or does not answer PING)",
    )
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix unique to this test; its keys are deleted afterwards."""
    prefix = f"wptest:{uuid4().hex}:"
    yield prefix
    delete_prefix(redis_url, prefix)


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``redis+cluster://`` URL of a throw-away 3-master Redis Cluster shared
    by the session (tests/redis_cluster.py); tests isolate themselves by key prefix."""
    cluster = start_cluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield cluster.url
    finally:
        cluster.stop()


@pytest.fixture
def redis_cluster_prefix(redis_cluster_url: str) -> str:
    """A key prefix unique to this test on the session's cluster (thrown away with it)."""
    return f"wptest:{uuid4().hex}:"


@pytest.fixture
def throwaway_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test alone, which the test may stop and restart."""
    server = start_redis_server(tmp_path / "redis")
    try:
        yield server
    finally:
        server.stop()
