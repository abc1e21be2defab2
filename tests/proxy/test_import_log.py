"""``warmproxy import-log``: access logs of each format become a trace that
``warmproxy replay``'s own loader reads, keyed as the proxy keys requests."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import hmac
import io
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.cli import main
from proxy.config import load_settings
from proxy.import_log import CLOUDFRONT_FIELDS, import_log_command
from tests.e2e.test_cli import ROOT, run_cli
from warmer.trace import TraceRow, read_trace

SALT = "test-salt"

# Query rules a user configures: tracking parameters left out, the rest sorted.
KEY_RULES = """
[cache]
ignore_query_params = ["utm_*"]
sort_query_params = true
"""
PER_HOST = """
[proxy]
host_keying = "per-host"
"""

# 2023-10-10 13:55:36 UTC
T0 = 1696946136.0

COMBINED = "".join(
    f"{line}\n"
    for line in (
        "203.0.113.5 - - [10/Oct/2023:13:55:36 +0000] "
        '"GET /products/1?utm_source=news&b=2&a=1 HTTP/1.1" 200 2326 "-" "Mozilla/5.0"',
        '203.0.113.6 - alice [10/Oct/2023:13:55:37 +0000] "POST /cart HTTP/1.1" 200 10 "-" "curl"',
        '203.0.113.7 - - [10/Oct/2023:13:55:38 +0000] "GET /boom HTTP/1.1" 500 97 "-" "curl"',
        "this is not a log line",
        # Its own time zone: 13:55:35 UTC.
        '203.0.113.8 - - [10/Oct/2023:15:55:35 +0200] "HEAD /products/2 HTTP/1.1" 200 - '
        '"https://example.com/" "Mozilla/5.0"',
        '203.0.113.9 - - [10/Oct/2023:13:55:40 +0000] "GET /old HTTP/1.1" 301 0 "-" "curl"',
        '203.0.113.5 - - [10/Oct/2023:13:55:41 +0000] "GET /private HTTP/1.1" 302 0 "-" "curl"',
    )
)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[TraceRow] | None, str]:
    """``warmproxy import-log ARGV`` in process: exit status, the trace read back
    with replay's loader (when ``-o`` was given and written), and stderr."""
    status = main(["import-log", *argv])
    err = capsys.readouterr().err
    output = Path(argv[argv.index("-o") + 1]) if "-o" in argv else None
    rows = list(read_trace(output)) if output is not None and output.exists() else None
    return status, rows, err


@pytest.fixture(autouse=True)
def no_config_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WARMPROXY_CONFIG", raising=False)


def label(value: str, salt: str = SALT) -> str:
    """The client label of ``value`` under ``salt``: HMAC-SHA256, 16 hex digits."""
    return hmac.new(salt.encode(), value.encode(), hashlib.sha256).hexdigest()[:16]


def test_combined_log_keeps_cacheable_lookups_keyed_by_the_configured_rules(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = write(tmp_path / "access.log", COMBINED)
    config = write(tmp_path / "warmproxy.toml", KEY_RULES)
    out = tmp_path / "trace.csv"
    status, rows, err = run(
        capsys,
        "--format",
        "combined",
        str(log),
        "--config",
        str(config),
        "--salt",
        SALT,
        "-o",
        str(out),
    )
    assert status == 0, err
    assert rows == [
        # Sorted by time: the HEAD request was logged at +0200 a second earlier.
        (T0 - 1, "/products/2", 0, label("203.0.113.8")),
        (T0, "/products/1?a=1&b=2", 2326, label("203.0.113.5")),
        (T0 + 4, "/old", 0, label("203.0.113.9")),
    ]
    # POST, 500 and 302 are no cache lookups; the broken line is named by number.
    assert "read 7 lines, written 3, skipped by method/status 3, unparsable 1" in err
    assert f"{log}:4: not a common log line" in err
    assert "this is not a log line" in err
    assert out.read_text().splitlines()[0] == "ts,key,size,client"


def test_no_raw_address_reaches_the_trace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = write(tmp_path / "access.log", COMBINED)
    out = tmp_path / "trace.csv"
    status, rows, _ = run(capsys, "--format", "combined", str(log), "-o", str(out))
    assert status == 0
    assert rows is not None
    text = out.read_text()
    assert "203.0.113" not in text
    # Without --salt each run has its own salt: labels do not link two exports.
    assert rows[0][3] != label("203.0.113.8")
    again = tmp_path / "again.csv"
    run(capsys, "--format", "combined", str(log), "-o", str(again))
    assert again.read_text() != text
    assert [r[:3] for r in read_trace(again)] == [r[:3] for r in rows]


def test_common_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = write(
        tmp_path / "access.log",
        '192.0.2.1 - bob [10/Oct/2023:13:55:36 +0000] "GET /a?x=1 HTTP/1.0" 200 12\n'
        '192.0.2.2 - - [10/Oct/2023:13:55:37 +0000] "DELETE /a HTTP/1.0" 204 -\n'
        '192.0.2.3 - - [10/Oct/2023:13:55:38 +0000] "GET /b HTTP/1.0" 404 -\n'
        '192.0.2.4 - - [10/Oct/2023:13:55:39 +0000] "GET /c HTTP/1.0" 503 -\n'
        '192.0.2.5 - - [10/Oct/2023:13:55:99 +0000] "GET /d HTTP/1.0" 200 1\n',
    )
    out = tmp_path / "trace.csv"
    status, rows, err = run(
        capsys,
        "--format",
        "common",
        str(log),
        "--client-field",
        "remote_user",
        "--salt",
        SALT,
        "-o",
        str(out),
    )
    assert status == 0, err
    assert rows == [(T0, "/a?x=1", 12, label("bob")), (T0 + 2, "/b", 0, "")]
    assert f"{log}:5: time '10/Oct/2023:13:55:99 +0000' is not a valid date" in err
    assert "written 2, skipped by method/status 2, unparsable 1" in err


def test_nginx_json_log_fields(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = [
        # The time as msec, the request line, a forwarded-for chain.
        '{"msec": "1696946136.250", "request": "GET /p?utm_id=4&z=1 HTTP/2.0", "status": 200,'
        ' "body_bytes_sent": 500, "remote_addr": "10.0.0.1",'
        ' "http_x_forwarded_for": "198.51.100.7, 10.0.0.1"}',
        # ISO time, method and URI apart, status as text, the same client.
        '{"time_iso8601": "2023-10-10T13:55:37+00:00", "request_method": "GET",'
        ' "request_uri": "/q", "status": "206", "body_bytes_sent": "100",'
        ' "remote_addr": "10.0.0.2", "http_x_forwarded_for": "198.51.100.7, 10.0.0.2"}',
        # $time_local, $uri with $args, no forwarded-for field.
        '{"time_local": "10/Oct/2023:13:55:38 +0000", "request_method": "HEAD",'
        ' "uri": "/r", "args": "b=2&a=1", "status": 200, "bytes_sent": "-",'
        ' "remote_addr": "10.0.0.3"}',
        '{"msec": 1696946139, "request": "POST /s HTTP/1.1", "status": 201}',
        '{"msec": 1696946140, "request": "GET /t HTTP/1.1"',  # cut short
        "[1, 2]",
    ]
    log = write(tmp_path / "nginx.json.log", "\n".join(lines) + "\n")
    config = write(tmp_path / "warmproxy.toml", KEY_RULES)
    out = tmp_path / "trace.csv"
    status, rows, err = run(
        capsys,
        "--format",
        "nginx-json",
        str(log),
        "--config",
        str(config),
        "--client-field",
        "http_x_forwarded_for",
        "--salt",
        SALT,
        "-o",
        str(out),
    )
    assert status == 0, err
    assert rows == [
        (T0 + 0.25, "/p?z=1", 500, label("198.51.100.7")),
        (T0 + 1, "/q", 100, label("198.51.100.7")),
        (T0 + 2, "/r?a=1&b=2", 0, ""),
    ]
    assert "1 written lines have no 'http_x_forwarded_for' field" in err
    assert f"{log}:5: not a JSON object" in err
    assert f"{log}:6: not a JSON object" in err
    assert "read 6 lines, written 3, skipped by method/status 1, unparsable 2" in err


def test_varnishncsa_with_per_host_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # varnishncsa's default format logs the absolute URL: its host keys the request.
    log = write(
        tmp_path / "varnish.log",
        '192.0.2.1 - - [10/Oct/2023:13:55:36 +0000] "GET http://Shop.Example.com/cart?id=3 '
        'HTTP/1.1" 200 512 "-" "curl/8.0"\n'
        '192.0.2.2 - - [10/Oct/2023:13:55:37 +0000] "GET http://blog.example.com:8080/ '
        'HTTP/1.1" 200 64 "-" "curl/8.0"\n'
        '192.0.2.3 - - [10/Oct/2023:13:55:38 +0000] "GET http://bad_host!/x HTTP/1.1" 200 1'
        ' "-" "curl/8.0"\n',
    )
    config = write(tmp_path / "warmproxy.toml", PER_HOST)
    out = tmp_path / "trace.csv"
    status, rows, err = run(
        capsys, "--format", "varnishncsa", str(log), "--config", str(config), "-o", str(out)
    )
    assert status == 0, err
    assert rows is not None
    assert [(ts, key, size) for ts, key, size, _ in rows] == [
        (T0, "//shop.example.com/cart?id=3", 512),
        (T0 + 1, "//blog.example.com:8080/", 64),
    ]
    assert f"{log}:3: host 'bad_host!' is not a host[:port]" in err


def cloudfront_line(**values: str) -> str:
    defaults = {name: "-" for name in CLOUDFRONT_FIELDS}
    defaults.update(
        {
            "date": "2023-10-10",
            "time": "13:55:36",
            "x-edge-location": "LAX1",
            "sc-bytes": "392",
            "c-ip": "192.0.2.100",
            "cs-method": "GET",
            "cs(Host)": "d111111abcdef8.cloudfront.net",
            "cs-uri-stem": "/index.html",
            "sc-status": "200",
            "cs(User-Agent)": "Mozilla/5.0%20(Macintosh)",
            "x-edge-result-type": "Hit",
            "x-host-header": "www.example.com",
            "cs-protocol": "https",
        }
    )
    defaults.update({name.replace("_", "-"): value for name, value in values.items()})
    return "\t".join(defaults[name] for name in CLOUDFRONT_FIELDS)


def test_cloudfront_standard_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = write(
        tmp_path / "E2EXAMPLE.2023-10-10-13.abcdef",
        "#Version: 1.0\n"
        f"#Fields: {' '.join(CLOUDFRONT_FIELDS)}\n"
        + cloudfront_line(cs_uri_query="utm_campaign=x&page=2")
        + "\n"
        + cloudfront_line(time="13:55:37", cs_method="POST")
        + "\n"
        + cloudfront_line(time="13:55:38", sc_status="000")
        + "\n"
        + cloudfront_line(time="13:55:39", cs_uri_stem="/logo.png", sc_bytes="5000")
        + "\n"
        + "2023-10-10\t13:55:40\tLAX1\n",
    )
    config = write(tmp_path / "warmproxy.toml", KEY_RULES)
    out = tmp_path / "trace.csv"
    status, rows, err = run(
        capsys,
        "--format",
        "cloudfront",
        str(log),
        "--config",
        str(config),
        "--salt",
        SALT,
        "-o",
        str(out),
    )
    assert status == 0, err
    assert rows == [
        (T0, "/index.html?page=2", 392, label("192.0.2.100")),
        (T0 + 3, "/logo.png", 5000, label("192.0.2.100")),
    ]
    assert f"{log}:7: 3 tab-separated fields, the #Fields line names 33" in err
    assert "read 5 lines, written 2, skipped by method/status 2, unparsable 1" in err


def test_cloudfront_columns_follow_the_fields_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A distribution logging fewer columns, in another order, with per-host keys
    # from the Host the viewer sent.
    log = write(
        tmp_path / "cf.log",
        "#Fields: time date cs-method cs-uri-stem sc-status x-host-header c-ip\n"
        "13:55:36\t2023-10-10\tGET\t/a\t304\twww.example.com\t192.0.2.1\n"
        "13:55:37\t2023-10-10\tGET\t/a\t200\twww.example.com\t192.0.2.1\n",
    )
    config = write(tmp_path / "warmproxy.toml", PER_HOST)
    out = tmp_path / "trace.csv"
    status, rows, err = run(
        capsys, "--format", "cloudfront", str(log), "--config", str(config), "-o", str(out)
    )
    assert status == 0, err
    assert rows is not None
    # 304 answers a client's own validation: no stored response is reused as such.
    assert [(ts, key, size) for ts, key, size, _ in rows] == [(T0 + 1, "//www.example.com/a", 0)]


ALB = (
    "{type} {time} app/my-loadbalancer/50dc6c495c0c9188 {client}:2817 10.0.0.1:80 0.086 0.048 "
    '0.037 {status} 200 0 {sent} "{request}" "curl/7.46.0" ECDHE-RSA-AES128-GCM-SHA256 TLSv1.2 '
    "arn:aws:elasticloadbalancing:us-east-2:123456789012:targetgroup/my-targets/73e2d6bc24d8a067 "
    '"Root=1-58337281-1d84f3d73c47ec4e58577259" "www.example.com" '
    '"arn:aws:acm:us-east-2:123456789012:certificate/12345678-1234-1234-1234-123456789012" 1 '
    '{created} "forward" "-" "-" "10.0.0.1:80" "200" "-" "-" TID_1234'
)


def alb_line(
    request: str,
    *,
    status: str = "200",
    created: str = "2023-10-10T13:55:36.000000Z",
    client: str = "192.168.131.39",
    sent: str = "57",
) -> str:
    return ALB.format(
        type="https",
        time="2023-10-10T13:56:00.186641Z",
        client=client,
        status=status,
        sent=sent,
        request=request,
        created=created,
    )


def test_alb_access_log_gzip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = [
        alb_line("GET https://www.example.com:443/api/items?utm_medium=x&page=1 HTTP/1.1"),
        alb_line(
            "GET https://www.example.com:443/api/items?page=1 HTTP/2.0",
            created="2023-10-10T13:55:35.500000Z",
            client="192.168.131.40",
            sent="1024",
        ),
        alb_line("POST https://www.example.com:443/api/items HTTP/1.1"),
        alb_line("- - - ", status="400"),
        alb_line("GET https://www.example.com:443/slow HTTP/1.1", status="504"),
        "https 2023-10-10T13:56:00Z app/x 1.2.3.4:5",
    ]
    log = tmp_path / "alb.log.gz"
    log.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    config = write(tmp_path / "warmproxy.toml", KEY_RULES)
    out = tmp_path / "trace.csv"
    status, rows, err = run(
        capsys,
        "--format",
        "alb",
        str(log),
        "--config",
        str(config),
        "--salt",
        SALT,
        "-o",
        str(out),
    )
    assert status == 0, err
    assert rows == [
        # request_creation_time orders them (the load balancer logs at response time).
        (T0 - 0.5, "/api/items?page=1", 1024, label("192.168.131.40")),
        (T0, "/api/items?page=1", 57, label("192.168.131.39")),
    ]
    assert "192.168.131" not in out.read_text()
    assert f"{log}:6: 4 fields, an ALB log line has at least 14" in err
    assert "read 6 lines, written 2, skipped by method/status 3, unparsable 1" in err


def test_gzip_and_plain_logs_give_the_same_trace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = write(tmp_path / "access.log", COMBINED)
    packed = tmp_path / "access.log.1.gz"
    packed.write_bytes(gzip.compress(COMBINED.encode()))
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    assert run(capsys, "--format", "combined", str(plain), "--salt", SALT, "-o", str(a))[0] == 0
    assert run(capsys, "--format", "combined", str(packed), "--salt", SALT, "-o", str(b))[0] == 0
    assert a.read_text() == b.read_text()


def test_a_truncated_gzip_keeps_what_was_read_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = "".join(
        f"192.0.2.{n % 250} - - [10/Oct/2023:13:{n // 60 % 60:02d}:{n % 60:02d} +0000] "
        f'"GET /page/{n} HTTP/1.1" 200 {n} "-" "agent {n:08x}{n * 7919:012x}"\n'
        for n in range(5000)
    )
    packed = gzip.compress(body.encode(), compresslevel=1)
    log = tmp_path / "access.log.gz"
    log.write_bytes(packed[: len(packed) // 2])  # still being written
    out = tmp_path / "trace.csv"
    status, rows, err = run(capsys, "--format", "combined", str(log), "-o", str(out))
    assert status == 0, err
    assert rows is not None
    assert 0 < len(rows) < 5000
    assert f"{log}: unreadable after line" in err
    assert "the rest of the file was not read" in err


def test_logs_of_several_files_are_merged_in_time_order_in_bounded_memory(
    tmp_path: Path,
) -> None:
    # Two servers' logs interleave; rows are sorted in runs of 3 on disk.
    first = write(
        tmp_path / "web1.log",
        "".join(
            f'192.0.2.1 - - [10/Oct/2023:13:56:{s:02d} +0000] "GET /one/{s} HTTP/1.1" 200 1\n'
            for s in (0, 4, 8, 12, 16, 20, 24)
        ),
    )
    second = write(
        tmp_path / "web2.log",
        "".join(
            f'192.0.2.2 - - [10/Oct/2023:13:56:{s:02d} +0000] "GET /two/{s} HTTP/1.1" 200 1\n'
            for s in (1, 2, 3, 20, 9, 30)  # slightly out of order within the file too
        ),
    )
    out = tmp_path / "trace.csv"
    err = io.StringIO()
    status = import_log_command(
        [first, second],
        fmt="common",
        settings=load_settings(None),
        output=out,
        salt=SALT,
        progress=False,
        out=io.StringIO(),
        err=err,
        chunk_rows=3,
    )
    assert status == 0, err.getvalue()
    rows = list(read_trace(out))
    assert len(rows) == 13
    assert [ts for ts, *_ in rows] == sorted(ts for ts, *_ in rows)
    # Equal times keep the order they were read in: web1's line first.
    at_20 = [key for ts, key, *_ in rows if ts == T0 + 44]
    assert at_20 == ["/one/20", "/two/20"]
    # Only the trace is left beside it: the sorted runs are gone.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trace.csv", "web1.log", "web2.log"]


def test_unparsable_lines_are_counted_and_the_first_five_shown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = '192.0.2.1 - - [10/Oct/2023:13:55:36 +0000] "GET / HTTP/1.1" 200 1 "-" "a"\n'
    huge = "x" * 100_000 + "\n"
    bad = ["broken\n", huge, "\x1b[31mred\n", "nope\n", "nope\n", "nope\n", "nope\n"]
    log = tmp_path / "access.log"
    log.write_bytes((good + "".join(bad) + good).encode() + b"\xff\xfe bad bytes\n")
    out = tmp_path / "trace.csv"
    status, rows, err = run(capsys, "--format", "combined", str(log), "-o", str(out))
    assert status == 0
    assert rows is not None and len(rows) == 2
    shown = [line for line in err.splitlines() if "unparsable: " in line]
    assert [line.split(": ")[2].split(":")[-1] for line in shown] == ["2", "3", "4", "5", "6"]
    assert f"{log}:3: longer than 65536 bytes" in err
    assert "x" * 300 not in err  # never a huge line echoed
    assert "\x1b" not in err  # nor a terminal escape
    assert "... and 3 more unparsable lines" in err
    assert "unparsable 8" in err


def test_nothing_usable_exits_1_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = write(
        tmp_path / "access.log",
        '192.0.2.1 - - [10/Oct/2023:13:55:36 +0000] "POST /x HTTP/1.1" 200 1 "-" "a"\n',
    )
    out = tmp_path / "trace.csv"
    status, rows, err = run(capsys, "--format", "combined", str(log), "-o", str(out))
    assert status == 1
    assert rows is None and not out.exists()
    assert "nothing usable" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["access.log"]


def test_bad_arguments_exit_2_naming_the_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = write(tmp_path / "access.log", COMBINED)
    missing = tmp_path / "missing.log"
    assert main(["import-log", "--format", "combined", str(log), str(missing)]) == 2
    assert f"no such file: {missing}" in capsys.readouterr().err
    assert main(["import-log", "--format", "combined", str(tmp_path)]) == 2
    assert f"not a file: {tmp_path}" in capsys.readouterr().err
    assert main(["import-log", "--format", "common", "--client-field", "user_id", str(log)]) == 2
    assert "the common format has remote_addr, remote_user" in capsys.readouterr().err
    assert main(["import-log", "--format", "combined", str(log), "-o", str(log)]) == 2
    assert "is one of the input logs" in capsys.readouterr().err
    assert main(["import-log", "--format", "combined", str(log), "-o", str(tmp_path)]) == 2
    assert f"the output {tmp_path} is a directory" in capsys.readouterr().err
    bad_config = write(tmp_path / "bad.toml", "[cache]\nsort_query_params = 3\n")
    assert main(["import-log", "--format", "combined", str(log), "--config", str(bad_config)]) == 2
    assert "sort_query_params" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["import-log", "--format", "w3c", str(log)])
    assert exited.value.code == 2


def test_log_to_replay_in_two_commands(tmp_path: Path) -> None:
    """The README's flow, as processes: import a gzip log, replay the trace."""
    lines = [
        f"198.51.100.{n % 7} - - [10/Oct/2023:{13 + n // 3600:02d}:{n // 60 % 60:02d}:"
        f'{n % 60:02d} +0000] "GET /items/{n % 11}?utm_source=x HTTP/1.1" 200 {100 + n} "-" "a"'
        for n in range(0, 7200, 5)
    ]
    log = tmp_path / "access.log.gz"
    log.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    config = write(tmp_path / "warmproxy.toml", KEY_RULES)
    trace = tmp_path / "trace.csv"
    imported = run_cli(
        "import-log", "--format", "combined", str(log), "--config", str(config), "-o", str(trace)
    )
    assert imported.returncode == 0, imported.stderr
    assert "written 1,440" in imported.stderr
    assert imported.stdout == ""
    assert "\r" not in imported.stderr  # no progress bar when stderr is not a terminal
    replayed = run_cli(
        "replay", str(trace), "--config", str(config), "--strategies", "none", "--ttl", "60"
    )
    assert replayed.returncode == 0, replayed.stderr
    assert "1,440 requests" in replayed.stdout


def test_trace_to_standard_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = write(tmp_path / "access.log", COMBINED)
    assert main(["import-log", "--format", "combined", str(log), "--salt", SALT]) == 0
    captured = capsys.readouterr()
    trace = write(tmp_path / "trace.csv", captured.out)
    assert [key for _, key, *_ in read_trace(trace)] == [
        "/products/2",
        "/products/1?utm_source=news&b=2&a=1",  # no key rules configured
        "/old",
    ]
    assert "written 3" in captured.err


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    log = write(tmp_path / "access.log", COMBINED)
    out = tmp_path / "trace.csv"
    command = ["import-log", "--format", "combined", str(log), "-o", str(out)]
    controller, terminal = pty.openpty()
    try:
        try:
            process = subprocess.run(
                [sys.executable, "-m", "proxy.cli", *command],
                stderr=terminal,
                stdout=subprocess.DEVNULL,
                cwd=ROOT,
                timeout=30,
            )
        finally:
            os.close(terminal)
        shown = b""
        with contextlib.suppress(OSError):  # EIO: the terminal's other end is closed
            while chunk := os.read(controller, 4096):
                shown += chunk
    finally:
        os.close(controller)
    assert process.returncode == 0
    text = shown.decode()
    assert "import-log:" in text and "\r" in text  # the bar, redrawn in place
    assert "written 3" in text
