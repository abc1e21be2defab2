"""``warmproxy check-config``: every error at once, the nearest key for a typo, and a
bad ``WARMPROXY_*`` variable blamed on the variable, never showing a secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.cli import main
from tests.proxy.test_packaging import clear_warmproxy_env


def check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["check-config", str(path)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_warmproxy_env(monkeypatch)


def test_every_error_is_reported_in_one_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(
        '[proxy]\norigin = "ftp://x"\n'
        '[control]\nlisten = "0.0.0.0:8081"\n'
        '[strategies.proactive]\nschedule = "61 * * * *"\nwarm_on_start = "sometimes"\n'
        '[strategies.predictive]\nretrain_schedule = "* * * *"\n'
        "[execution]\nparallelsim = 4\n"
    )
    code, out, err = check(config, capsys)
    assert code == 2 and out == ""
    assert f"invalid configuration in {config}" in err
    for expected in (
        "proxy.origin: must be an http(s) URL",
        # Checks that used to wait until every field was valid.
        "strategies.proactive.schedule: invalid cron expression '61 * * * *'",
        "control.token is required when control.listen (0.0.0.0:8081)",
        "strategies.proactive.warm_on_start:",
        "strategies.predictive.retrain_schedule:",
        "unknown setting 'parallelsim' in [execution]; did you mean 'parallelism'?",
    ):
        assert expected in err, (expected, err)


def test_a_misspelt_section_or_key_gets_the_nearest_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "typos.toml"
    config.write_text(
        "[execuiton]\nparallelism = 4\n[strategies.reactive]\ntreshold = 5\n[cache]\nzzzz = 1\n"
    )
    code, _, err = check(config, capsys)
    assert code == 2
    assert "unknown section [execuiton]; did you mean 'execution'?" in err
    assert "unknown setting 'treshold' in [strategies.reactive]; did you mean 'threshold'?" in err
    # Nothing near: no guess.
    zzzz = next(line for line in err.splitlines() if "zzzz" in line)
    assert "unknown setting 'zzzz' in [cache]" in zzzz and "did you mean" not in zzzz


def test_a_bad_environment_variable_is_blamed_not_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "good.toml"
    config.write_text("[execution]\nparallelism = 4\n")
    monkeypatch.setenv("WARMPROXY_EXECUTION__PARALLELISM", "0")
    monkeypatch.setenv("WARMPROXY_EXECUTION__PARALLELSIM", "3")
    monkeypatch.setenv("WARMPROXY_CAHCE__STORE", "redis")
    code, _, err = check(config, capsys)
    assert code == 2
    assert str(config) not in err  # the file is fine
    lines = err.splitlines()
    assert any(
        line.strip().startswith("WARMPROXY_EXECUTION__PARALLELISM: execution.parallelism:")
        for line in lines
    ), err
    assert any(
        line.strip().startswith("WARMPROXY_EXECUTION__PARALLELSIM:") and "'parallelism'" in line
        for line in lines
    ), err
    assert "WARMPROXY_CAHCE__STORE: no section 'cahce'; did you mean 'cache'?" in err


def test_errors_in_the_file_and_the_environment_come_together(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[strategies.proactive]\nschedule = "not a cron"\n')
    # A list that is not JSON used to stop the check before anything else was read.
    monkeypatch.setenv("WARMPROXY_EXECUTION__PRIORITY_LEVELS", "high,low")
    code, _, err = check(config, capsys)
    assert code == 2
    assert f"invalid configuration in {config}" in err
    assert "strategies.proactive.schedule: invalid cron expression" in err
    assert "WARMPROXY_EXECUTION__PRIORITY_LEVELS: execution.priority_levels" in err
    assert "take JSON" in err


def test_secret_values_are_never_shown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[cache]\nredis_url = "http://user:hunter2-pw@redis:6379"\n')
    monkeypatch.setenv("WARMPROXY_CONTROL__TOKEN", "tooshort-s3cret")
    monkeypatch.setenv("WARMPROXY_STRATEGIES__INCLUDE", "s3cret-glob,other")
    code, out, err = check(config, capsys)
    assert code == 2 and out == ""
    assert "WARMPROXY_CONTROL__TOKEN: control.token: must be at least 16 characters" in err
    assert "WARMPROXY_STRATEGIES__INCLUDE:" in err
    assert "cache.redis_url" in err
    for secret in ("tooshort-s3cret", "s3cret-glob", "hunter2-pw"):
        assert secret not in err


def test_a_flag_value_is_not_blamed_on_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A flag beats the variable, so a bad flag is the flag's fault."""
    monkeypatch.setenv("WARMPROXY_PROXY__LISTEN", "127.0.0.1:8080")
    code = main(["serve", "--listen", "nohost"])
    err = capsys.readouterr().err
    assert code == 2
    assert "proxy.listen" in err and "WARMPROXY_PROXY__LISTEN" not in err
