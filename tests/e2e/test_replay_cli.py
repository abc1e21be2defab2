"""``warmproxy replay`` as a user runs it: a process, a trace file, its output."""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.test_cli import run_cli

HEADER = "ts,key,size,client\n"


def write_trace(path: Path, requests: int = 4000) -> Path:
    """Two hours of a few hot pages, a tail, and ids that are not paths."""
    lines = [HEADER]
    for n in range(requests):
        if n % 3:
            key = f"/hot/{n % 7}"
        elif n % 2:
            key = f"/tail/{(n * 7919) % 300}"
        else:
            key = f"video{n % 50}"
        size = "" if n % 4 else str(100 + n)
        lines.append(f"{1_700_000_000 + n * 1.8:.1f},{key},{size},c{n % 9}\n")
    path.write_text("".join(lines))
    return path


def test_replay_prints_a_row_per_strategy(tmp_path: Path) -> None:
    trace = write_trace(tmp_path / "trace.csv")
    result = run_cli("replay", str(trace), "--cache-size", "20%", "--ttl", "60")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("trace trace.csv: 4,000 requests")
    assert "% of distinct keys" in lines[1]
    assert "ttl 60 s" in lines[1]
    assert lines[3].split() == [
        "strategy",
        "hit",
        "ratio",
        "warm/request",
        "precision",
        "gain",
        "over",
        "none",
    ]
    rows = {line.split()[0]: line for line in lines[4:]}
    assert list(rows) == [
        "none",
        "reactive",
        "refresh-ahead",
        "scheduled-top",
        "predictive",
        "markov",
        "all",
    ]
    none = rows["none"].split()
    assert none[2:] == ["%", "0.0000", "-", "+0.00", "pts"]
    assert 0 < float(none[1]) < 100
    ra = rows["refresh-ahead"].split()
    assert float(ra[3]) > 0  # warm fetches per request
    assert ra[-1] == "pts"


def test_replay_json_lines_carry_the_figures(tmp_path: Path) -> None:
    trace = write_trace(tmp_path / "trace.csv")
    result = run_cli(
        "replay",
        str(trace),
        "--json",
        "--cache-size",
        "30",
        "--strategies",
        "refresh-ahead,none,oracle",
    )
    assert result.returncode == 0, result.stderr
    objects = [json.loads(line) for line in result.stdout.splitlines()]
    assert [o["strategy"] for o in objects] == ["refresh-ahead", "none", "oracle"]
    ra, none, oracle = objects
    # The bound that knows every next request gains at least as much, and
    # every refresh it makes is used unless evicted first.
    assert oracle["hit_ratio"] >= ra["hit_ratio"]
    assert oracle["precision"] > 0.9
    for field in (
        "hit_ratio",
        "warm_fetches_per_request",
        "precision",
        "gain_over_none",
        "requests",
        "hits",
        "warm_fetches",
    ):
        assert field in ra, field
    assert ra["requests"] == none["requests"] == 4000
    assert ra["cache_entries"] == 30
    assert ra["ttl"] == 300.0  # the default
    assert ra["hit_ratio"] == ra["hits"] / 4000
    assert ra["gain_over_none"] == round(ra["hit_ratio"] - none["hit_ratio"], 6)
    assert ra["warm_fetches"] > 0
    assert 0 <= ra["precision"] <= 1
    assert none["precision"] is None
    assert none["gain_over_none"] == 0


def test_a_malformed_trace_exits_2_naming_the_line(tmp_path: Path) -> None:
    trace = tmp_path / "bad.csv"
    trace.write_text(HEADER + "1,/a,,c0\n2,/b,,c0\n3,/c,12kB,c0\n")
    result = run_cli("replay", str(trace))
    assert result.returncode == 2
    assert result.stdout == ""
    assert "line 4: size '12kB' is not a non-negative integer" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_arguments_and_missing_files_exit_2(tmp_path: Path) -> None:
    trace = write_trace(tmp_path / "trace.csv", 10)
    for args, message in (
        (["--cache-size", "0%"], "cache size '0%'"),
        (["--ttl", "-1"], "must be positive"),
        (["--ttl", "forever"], "ttl 'forever' is not a number of seconds (or 'never'"),
        (["--max-warm-ratio", "-0.5"], "max warm ratio '-0.5'"),
        (["--max-warm-ratio", "lots"], "max warm ratio 'lots' is not a number"),
        (["--strategies", "none,magic"], "unknown strategy 'magic'"),
        (["--live", "--ttl", "never"], "--ttl never is for the simulated replay only"),
        (["--live", "--max-warm-ratio", "0.2"], "--max-warm-ratio is for the simulated replay"),
    ):
        result = run_cli("replay", str(trace), *args)
        assert result.returncode == 2
        assert message in result.stderr
    result = run_cli("replay", str(tmp_path / "missing.csv"))
    assert result.returncode == 2
    assert "cannot read" in result.stderr
    assert "Traceback" not in result.stderr
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    result = run_cli("replay", str(empty))
    assert result.returncode == 2
    assert "empty file" in result.stderr


def test_entries_that_never_expire_and_a_warm_budget(tmp_path: Path) -> None:
    trace = write_trace(tmp_path / "trace.csv")
    result = run_cli(
        "replay",
        str(trace),
        "--ttl",
        "never",
        "--cache-size",
        "10",
        "--max-warm-ratio",
        "0.05",
        "--strategies",
        "none,markov,oracle,oracle-prefetch",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1] == "cache 10 entries, ttl never, warm budget 0.05 fetches/request"
    rows = {line.split()[0]: line.split() for line in lines[4:]}
    assert list(rows) == ["none", "markov", "oracle", "oracle-prefetch"]
    # Nothing expires, so the refresh oracle has nothing to refresh; the
    # prefetch oracle spends its whole budget on capacity misses, one hit each.
    assert rows["oracle"][3] == "0.0000"
    prefetch = rows["oracle-prefetch"]
    assert prefetch[3] == "0.0500"
    assert prefetch[4:6] == ["100.0", "%"]
    assert float(prefetch[1]) == round(float(rows["none"][1]) + 5.0, 2)
    as_json = run_cli(
        "replay", str(trace), "--ttl", "inf", "--json", "--strategies", "none", "--cache-size", "10"
    )
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["ttl"] is None


def test_replay_help_describes_every_flag() -> None:
    result = run_cli("replay", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for flag in ("--cache-size", "--ttl", "--strategies", "--max-warm-ratio", "--json", "--config"):
        assert flag in text
    assert "'never'" in text
    assert "oracle-prefetch" in text
    assert "markov" in text


def test_analyze_prints_the_hot_data_report_of_a_trace(tmp_path: Path) -> None:
    trace = write_trace(tmp_path / "trace.csv")
    result = run_cli("analyze", str(trace), "-n", "5", "--ttl", "60")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    # Two of every three requests go to seven /hot/ pages: they are the hot keys.
    hot = [k["url"] for k in report["hot_keys"]]
    assert hot and all(url.startswith("/hot/") for url in hot)
    assert report["hot_keys"][0]["priority"] == "high"
    assert report["threshold"]["window_requests"] > 0
    assert {"patterns", "trends", "seasonality", "segments", "sequences"} <= set(report)
    # Two hours of data: no daily cycle can be claimed yet.
    assert report["seasonality"]["daily"]["insufficient_data"] is True
    # Nine clients, counted by a HyperLogLog whose hash is seeded per
    # process: two of nine land in one of its 4,096 registers about one
    # run in a hundred, and the estimate then reads 8.
    assert report["segments"]["distinct_clients"] in (8, 9)


def test_analyze_names_the_bad_line(tmp_path: Path) -> None:
    trace = tmp_path / "bad.csv"
    trace.write_text(HEADER + "1700000000,/a,,c1\nsoon,/b,,c2\n")
    result = run_cli("analyze", str(trace))
    assert result.returncode == 2
    assert "line 3" in result.stderr
    assert "Traceback" not in result.stderr
