"""The container image's configuration: what ``docker run`` users set wins.

Read from the Dockerfile itself (its CMD, ENV lines and the config file it
writes), then loaded by the CLI as the container would load it, so the
documented precedence (flags > WARMPROXY_* variables > config file >
defaults) is checked on what the image really runs, without building it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from proxy.cli import _parser, load
from proxy.config import Settings, parse_hostport
from tests.proxy.test_packaging import clear_warmproxy_env

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
TOKEN = "t" * 32


def image_files() -> dict[str, str]:
    """Files the Dockerfile writes with ``COPY <<'EOF' PATH`` heredocs, by path."""
    return {
        path: body
        for path, body in re.findall(
            r"^COPY <<'?EOF'? (\S+)\n(.*?)^EOF$", DOCKERFILE, re.MULTILINE | re.DOTALL
        )
    }


def image_env() -> dict[str, str]:
    """The runtime stage's ``ENV`` lines (one NAME=value each)."""
    runtime = DOCKERFILE.rsplit("\nFROM ", 1)[1]
    joined = runtime.replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in re.findall(r"^ENV (.+)$", joined, re.MULTILINE):
        for pair in line.split():
            name, _, value = pair.partition("=")
            env[name] = value
    return env


def image_cmd() -> list[str]:
    match = re.search(r"^CMD (\[.*\])$", DOCKERFILE, re.MULTILINE)
    assert match, "the Dockerfile has an exec-form CMD"
    cmd: list[str] = json.loads(match.group(1))
    return cmd


def run_image(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    user_env: dict[str, str] | None = None,
    args: list[str] | None = None,
) -> Settings:
    """The settings ``docker run [-e ...] warmproxy [args]`` starts with: the image's
    ENV, then the user's ``-e`` variables, the image's files under tmp_path."""
    clear_warmproxy_env(monkeypatch)
    files = {}
    for path, body in image_files().items():
        local = tmp_path / path.lstrip("/")
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text(body)
        files[path] = str(local)
    for name, value in {**image_env(), **(user_env or {})}.items():
        if name.startswith("WARMPROXY_"):
            monkeypatch.setenv(name, files.get(value, value))
    argv = [files.get(a, a) for a in (args if args is not None else image_cmd())]
    return load(_parser().parse_args(argv))


def test_the_image_listens_on_all_interfaces_with_control_on_loopback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = run_image(tmp_path, monkeypatch)
    assert settings.proxy.listen == "0.0.0.0:8080"
    assert settings.control.listen == "127.0.0.1:8081"
    # The health check probes the control listener the image configures.
    _, port = parse_hostport(settings.control.listen, what="control")
    assert f"127.0.0.1:{port}/healthz" in DOCKERFILE


def test_docker_run_environment_variables_beat_the_image_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = run_image(
        tmp_path,
        monkeypatch,
        {
            "WARMPROXY_PROXY__LISTEN": "0.0.0.0:9090",
            "WARMPROXY_CONTROL__LISTEN": "0.0.0.0:9091",
            "WARMPROXY_CONTROL__TOKEN": TOKEN,
            "WARMPROXY_PROXY__ORIGIN": "http://app:8000",
        },
    )
    assert settings.proxy.listen == "0.0.0.0:9090"
    assert settings.control.listen == "0.0.0.0:9091"
    assert settings.proxy.origin == "http://app:8000"


def test_a_mounted_config_file_beats_the_image_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As deploy/kubernetes.yaml runs it: ``serve --config`` a ConfigMap file."""
    mounted = tmp_path / "mounted.toml"
    mounted.write_text('[proxy]\nlisten = "0.0.0.0:7070"\n')
    settings = run_image(tmp_path, monkeypatch, args=["serve", "--config", str(mounted)])
    assert settings.proxy.listen == "0.0.0.0:7070"
    # ...and WARMPROXY_CONFIG pointing at it does the same.
    settings = run_image(tmp_path, monkeypatch, {"WARMPROXY_CONFIG": str(mounted)})
    assert settings.proxy.listen == "0.0.0.0:7070"


def test_a_flag_still_beats_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = run_image(
        tmp_path,
        monkeypatch,
        {"WARMPROXY_PROXY__LISTEN": "0.0.0.0:9090"},
        args=["serve", "--listen", "0.0.0.0:6060"],
    )
    assert settings.proxy.listen == "0.0.0.0:6060"
