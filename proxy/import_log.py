"""``warmproxy import-log``: web server and load balancer access logs as replay traces.

Reads Apache/nginx ``combined`` and ``common`` logs, nginx JSON logs
(``nginx-json``), ``varnishncsa``'s default format, CloudFront standard logs
and AWS Application Load Balancer access logs, plain or gzip-compressed, and
writes the ``ts,key,size,client`` CSV that ``warmproxy replay`` reads
(:mod:`warmer.trace`).  Each request becomes what the proxy would have seen:

- only GET and HEAD requests answered with a status a shared cache may reuse
  without explicit freshness (RFC 9110 §15.1, RFC 9111 §3) are kept: the
  others never read the cache, so they are no lookups to warm for;
- the key is the proxy's own cache key for the request
  (:class:`proxy.forwarding.ForwardingRules` built from the user's settings:
  query rules, host keying), never a second copy of those rules;
- the client is a keyed hash (HMAC-SHA256) of the remote address or of a
  named field, under a random per-run salt or a given one: a trace never
  holds a raw address;
- rows come out sorted by time, through an external merge sort of bounded
  memory (logs of several servers or files interleave).

Lines that cannot be read are counted and the first few reported with file
name and line number; nothing is dropped silently.
"""

from __future__ import annotations

import calendar
import contextlib
import csv
import functools
import gzip
import heapq
import hmac
import io
import math
import os
import re
import secrets
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from operator import itemgetter
from pathlib import Path
from typing import IO, BinaryIO, Final, NamedTuple, Protocol, TextIO
from urllib.parse import urlsplit

import orjson
from multidict import CIMultiDict, CIMultiDictProxy
from tqdm import tqdm

from proxy.config import Settings
from proxy.forwarding import BadHost, ForwardingRules
from proxy.policy import HEURISTICALLY_CACHEABLE
from warmer.trace import HEADER, LATEST_SECONDS

#: The log formats ``--format`` accepts.
FORMATS: Final = ("combined", "common", "nginx-json", "varnishncsa", "cloudfront", "alb")

# RFC 9110 §15.1 names 206 among the statuses cacheable by default.  The
# policy keeps it out of HEURISTICALLY_CACHEABLE because only complete
# responses are stored (RFC 9111 §3.3), but the handler answers a range
# request from the stored complete entry: a logged 206 is a lookup of the key.
CACHEABLE_STATUSES: Final = HEURISTICALLY_CACHEABLE | {206}
# RFC 9111 §3: the methods whose responses a cache stores and reuses here.
CACHED_METHODS: Final = frozenset({"GET", "HEAD"})

#: Longest log line read, in bytes; a longer one is counted as unparsable.
MAX_LINE_BYTES: Final = 64 * 1024
#: Longest request target kept (longer ones are counted as unparsable).
MAX_TARGET_CHARS: Final = 8192
#: Rows sorted in memory at a time; more are sorted in runs on disk and merged.
CHUNK_ROWS: Final = 200_000
#: Runs merged at once (each holds an open file).
MAX_OPEN_RUNS: Final = 64
#: Unparsable lines shown; the rest are counted.
SHOWN_UNPARSABLE: Final = 5
#: Characters of an unparsable line shown.
SHOWN_LINE_CHARS: Final = 200
#: Hex digits of a client label (64 bits: no collision among billions of clients).
CLIENT_LABEL_HEX: Final = 16
#: Bounds on ``--client-field`` and ``--salt``.
MAX_FIELD_NAME_CHARS: Final = 64
MAX_SALT_CHARS: Final = 1024

_FIELD_NAME = re.compile(r"[A-Za-z0-9_.:@()\-]+")

# Apache/nginx log field names (nginx's variable names) a client may come
# from; http_x_forwarded_for is the quoted field after the user agent in
# nginx's default "main" format.
_CLF_FIELDS: Final = ("remote_addr", "remote_user")
_COMBINED_FIELDS: Final = (*_CLF_FIELDS, "http_user_agent", "http_x_forwarded_for")

# https://docs.aws.amazon.com/elasticloadbalancing/latest/application/load-balancer-access-logs.html
# in order; newer logs may add fields at the end, which are ignored.
ALB_FIELDS: Final = (
    "type",
    "time",
    "elb",
    "client:port",
    "target:port",
    "request_processing_time",
    "target_processing_time",
    "response_processing_time",
    "elb_status_code",
    "target_status_code",
    "received_bytes",
    "sent_bytes",
    "request",
    "user_agent",
    "ssl_cipher",
    "ssl_protocol",
    "target_group_arn",
    "trace_id",
    "domain_name",
    "chosen_cert_arn",
    "matched_rule_priority",
    "request_creation_time",
    "actions_executed",
    "redirect_url",
    "error_reason",
    "target:port_list",
    "target_status_code_list",
    "classification",
    "classification_reason",
    "conn_trace_id",
)
_ALB = {name: i for i, name in enumerate(ALB_FIELDS)}
# Up to and including "user_agent": what every ALB log line has.
_ALB_MIN_FIELDS: Final = _ALB["user_agent"] + 1

# CloudFront standard log columns, as its "#Fields:" line names them; used
# when a file has no such line (e.g. a concatenation with headers stripped).
# https://docs.aws.amazon.com/AmazonCloudFront/latest/DeveloperGuide/standard-logs-reference.html
CLOUDFRONT_FIELDS: Final = (
    "date",
    "time",
    "x-edge-location",
    "sc-bytes",
    "c-ip",
    "cs-method",
    "cs(Host)",
    "cs-uri-stem",
    "sc-status",
    "cs(Referer)",
    "cs(User-Agent)",
    "cs-uri-query",
    "cs(Cookie)",
    "x-edge-result-type",
    "x-edge-request-id",
    "x-host-header",
    "cs-protocol",
    "cs-bytes",
    "time-taken",
    "x-forwarded-for",
    "ssl-protocol",
    "ssl-cipher",
    "x-edge-response-result-type",
    "cs-protocol-version",
    "fle-status",
    "fle-encrypted-fields",
    "c-port",
    "time-to-first-byte",
    "x-edge-detailed-result-type",
    "sc-content-type",
    "sc-content-len",
    "sc-range-start",
    "sc-range-end",
)
_CLOUDFRONT_REQUIRED: Final = ("date", "time", "cs-method", "cs-uri-stem", "sc-status")

# The client field each format uses when --client-field is not given.
DEFAULT_CLIENT_FIELDS: Final = {
    "combined": "remote_addr",
    "common": "remote_addr",
    "varnishncsa": "remote_addr",
    "nginx-json": "remote_addr",
    "cloudfront": "c-ip",
    "alb": "client:port",
}
# The fields a format with a fixed layout offers as --client-field (the
# others name their fields in the file: any name is accepted).
CLIENT_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    "combined": _COMBINED_FIELDS,
    "varnishncsa": _COMBINED_FIELDS,
    "common": _CLF_FIELDS,
    "alb": ALB_FIELDS,
}


class UnparsableLine(ValueError):
    """A log line this format cannot read; the message says what is wrong."""


class ImportArgumentError(ValueError):
    """Arguments that cannot work (exit status 2); the message names the problem."""


class LogRequest(NamedTuple):
    """One request as a log line tells it (a tuple: millions are made)."""

    ts: float
    method: str
    target: str  # as logged: origin-form "/p?q" or absolute "http://host/p?q"
    status: int
    size: int
    host: str  # the Host the client sent, "" when the log does not say
    client: str | None  # the client field's value; None when the line has no such field


class LogParser(Protocol):
    """Reads the lines of one log format."""

    #: The field the client is read from.
    client_field: str
    #: The log names the Host of each request (for per-host keying).
    names_hosts: bool

    def start_file(self) -> None:
        """A new file begins (formats with a header line reset their columns)."""

    def parse(self, line: str) -> LogRequest | None:
        """The request of ``line``, None for a line that is no request (a
        header or comment), or :class:`UnparsableLine`."""


# --------------------------------------------------------------------------
# Timestamps
# --------------------------------------------------------------------------

# English month names whatever the locale (calendar.month_abbr follows it).
_MONTHS: Final = {
    m: i + 1
    for i, m in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
    )
}
_CLF_TIME = re.compile(
    r"(\d{1,2})/([A-Za-z]{3})/(\d{4}):(\d{2}):(\d{2}):(\d{2})(\.\d{1,9})? ([+-])(\d{2})(\d{2})"
)


@functools.lru_cache(maxsize=4096)
def clf_time(text: str) -> float:
    """Seconds since the epoch of an Apache/nginx ``%t``/``$time_local`` value,
    ``10/Oct/2000:13:55:36 -0700`` (a fraction of a second is accepted)."""
    m = _CLF_TIME.fullmatch(text)
    month = _MONTHS.get(m.group(2).title()) if m else None
    if m is None or month is None:
        raise UnparsableLine(f"time {text[:40]!r} is not dd/Mon/yyyy:hh:mm:ss +zzzz")
    day, year, hour, minute, second = (int(m.group(i)) for i in (1, 3, 4, 5, 6))
    try:
        datetime(year, month, day, hour, minute, second)  # ranges checked
    except ValueError:
        raise UnparsableLine(f"time {text[:40]!r} is not a valid date") from None
    offset = (int(m.group(9)) * 3600 + int(m.group(10)) * 60) * (1 if m.group(8) == "+" else -1)
    fraction = float(m.group(7)) if m.group(7) else 0.0
    return calendar.timegm((year, month, day, hour, minute, second)) - offset + fraction


@functools.lru_cache(maxsize=4096)
def iso_time(text: str) -> float:
    """Seconds since the epoch of an ISO 8601 time (``2023-11-14T22:13:20+00:00``,
    ``...Z``); a time without an offset is UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UnparsableLine(f"time {text[:40]!r} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        return calendar.timegm(moment.timetuple()) + moment.microsecond / 1e6
    return moment.timestamp()


def _epoch(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UnparsableLine(f"time {text[:40]!r} is not seconds since the epoch") from None
    return value


def _checked_ts(ts: float) -> float:
    """``ts`` rounded to the millisecond the trace keeps, if a trace may hold it."""
    if not (math.isfinite(ts) and 0 <= ts < LATEST_SECONDS):
        raise UnparsableLine(f"time {ts!r} is not between 1970 and the year 5000")
    return round(ts, 3)


# --------------------------------------------------------------------------
# Fields
# --------------------------------------------------------------------------


def _status(text: str) -> int:
    if not (len(text) == 3 and text.isdigit()):
        if text in ("-", "000", "0"):
            return 0  # no response was sent (the client went away): no lookup to keep
        raise UnparsableLine(f"status {text[:20]!r} is not a 3-digit code")
    return int(text)


def _size(text: str) -> int:
    if text in ("-", ""):
        return 0
    if not (text.isascii() and text.isdigit()):
        raise UnparsableLine(f"size {text[:20]!r} is not a number of bytes")
    return int(text)


def _request_line(request: str) -> tuple[str, str]:
    """(method, target) of a logged request line ``METHOD TARGET HTTP/x.y``;
    a line that is no request ("-", "", garbage a server answered with 400)
    has method ""."""
    parts = request.split(" ")
    if len(parts) == 3 and parts[2].startswith("HTTP/"):
        return parts[0], parts[1]
    if len(parts) == 2:  # HTTP/0.9 (the proxy refuses it; its status says so)
        return parts[0], parts[1]
    return "", request


def _first_forwarded(name: str, value: str) -> str:
    """The client of an X-Forwarded-For list is its first address."""
    if "forwarded" in name.lower() and "," in value:
        return value.split(",", 1)[0].strip()
    return value


_ESCAPE = re.compile(r"\\(.)")


def _unescape(text: str) -> str:
    """Apache's ``\\"`` and ``\\\\`` in a quoted field, as the request had them."""
    return _ESCAPE.sub(r"\1", text) if "\\" in text else text


# --------------------------------------------------------------------------
# Formats
# --------------------------------------------------------------------------

_QUOTED = r'"((?:[^"\\]|\\.)*)"'
_CLF_PREFIX = (
    r"(?P<remote_addr>\S+) \S+ (?P<remote_user>.*?) \[(?P<time>[^\]]+)\] "
    r'"(?P<request>(?:[^"\\]|\\.)*)" (?P<status>\S+) (?P<size>\S+)'
)
# Fields after these (a custom format's extras) are ignored.
_COMMON_LINE = re.compile(_CLF_PREFIX + r"(?:\s.*)?")
_COMBINED_LINE = re.compile(
    _CLF_PREFIX
    + r'\s+"(?P<http_referer>(?:[^"\\]|\\.)*)"\s+"(?P<http_user_agent>(?:[^"\\]|\\.)*)"'
    + r'(?:\s+"(?P<http_x_forwarded_for>(?:[^"\\]|\\.)*)")?(?:\s.*)?'
)


@dataclass(slots=True)
class ClfParser:
    """Apache/nginx ``common`` (``%h %l %u %t "%r" %>s %b``) and ``combined``
    (plus ``"%{Referer}i" "%{User-agent}i"``, and nginx's ``main`` with
    ``"$http_x_forwarded_for"`` after them); varnishncsa's default format is
    ``combined`` with an absolute URL in the request line."""

    client_field: str
    combined: bool
    names_hosts: bool = False

    def start_file(self) -> None:
        pass

    def parse(self, line: str) -> LogRequest | None:
        m = (_COMBINED_LINE if self.combined else _COMMON_LINE).fullmatch(line)
        if m is None:
            if self.combined and _COMMON_LINE.fullmatch(line):
                raise UnparsableLine('no "referer" "user agent" after the size (not combined)')
            raise UnparsableLine(
                'not a common log line: host ident user [time] "request" status size'
            )
        method, target = _request_line(_unescape(m.group("request")))
        client = m.group(self.client_field)
        return LogRequest(
            _checked_ts(clf_time(m.group("time"))),
            method,
            target,
            _status(m.group("status")),
            _size(m.group("size")),
            "",
            None if client is None else _unescape(client),
        )


_NGINX_TIME_FIELDS: Final = (("msec", _epoch), ("time_iso8601", iso_time), ("time_local", clf_time))
_NGINX_HOST_FIELDS: Final = ("host", "http_host", "server_name")
_NGINX_SIZE_FIELDS: Final = ("body_bytes_sent", "bytes_sent")


@dataclass(slots=True)
class NginxJsonParser:
    """One JSON object per line (nginx ``log_format ... escape=json``).

    Fields read (nginx's variable names): the time from ``msec``,
    ``time_iso8601`` or ``time_local`` (the first present); the request from
    ``request`` ("GET /p HTTP/1.1") or ``request_method`` with ``request_uri``
    (or ``uri`` and ``args``); ``status``; the size from ``body_bytes_sent``
    or ``bytes_sent``; the host from ``host``, ``http_host`` or
    ``server_name``; the client from ``remote_addr`` or the named field.
    Numbers may be JSON numbers or strings.
    """

    client_field: str
    names_hosts: bool = True

    def start_file(self) -> None:
        pass

    def parse(self, line: str) -> LogRequest | None:
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise UnparsableLine("not a JSON object") from None
        if not isinstance(record, dict):
            raise UnparsableLine("not a JSON object")
        for name, parse in _NGINX_TIME_FIELDS:
            value = record.get(name)
            if value is not None and value not in ("", "-"):
                ts = parse(str(value))
                break
        else:
            raise UnparsableLine("no msec, time_iso8601 or time_local field")
        if "request" in record:
            method, target = _request_line(_text(record["request"]))
        elif "request_method" in record:
            method = _text(record["request_method"])
            if "request_uri" in record:
                target = _text(record["request_uri"])
            elif "uri" in record:
                args = _text(record.get("args", ""))
                target = _text(record["uri"]) + (f"?{args}" if args not in ("", "-") else "")
            else:
                raise UnparsableLine("request_method without request_uri or uri")
        else:
            raise UnparsableLine("no request or request_method field")
        if "status" not in record:
            raise UnparsableLine("no status field")
        size_text = next((_text(record[n]) for n in _NGINX_SIZE_FIELDS if n in record), "")
        host = next((_text(record[n]) for n in _NGINX_HOST_FIELDS if record.get(n)), "")
        client = record.get(self.client_field)
        return LogRequest(
            ts=_checked_ts(ts),
            method=method,
            target=target,
            status=_status(_text(record["status"])),
            size=_size(size_text),
            host="" if host == "-" else host,
            client=None if client is None else _text(client),
        )


def _text(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UnparsableLine(f"a field holds {type(value).__name__}, expected text or a number")
    return str(value)


@dataclass(slots=True)
class CloudFrontParser:
    """CloudFront standard logs: tab-separated, columns named by the file's
    ``#Fields:`` line.  The request is ``cs-method`` on ``cs-uri-stem`` with
    ``cs-uri-query``; the time ``date`` + ``time`` (UTC); the status
    ``sc-status``; the size ``sc-bytes``; the host ``x-host-header`` (what
    the viewer sent) or ``cs(Host)``."""

    client_field: str
    names_hosts: bool = True
    _columns: dict[str, int] = field(default_factory=dict)

    def start_file(self) -> None:
        self._columns = {name: i for i, name in enumerate(CLOUDFRONT_FIELDS)}

    def parse(self, line: str) -> LogRequest | None:
        if line.startswith("#"):
            if line.startswith("#Fields:"):
                names = line[len("#Fields:") :].split()
                missing = [n for n in _CLOUDFRONT_REQUIRED if n not in names]
                if missing:
                    self._columns = {}
                    raise UnparsableLine(f"#Fields line without {', '.join(missing)}")
                self._columns = {name: i for i, name in enumerate(names)}
            return None
        if not self._columns:
            raise UnparsableLine("the last #Fields line lacks required columns")
        values = line.split("\t")
        columns = self._columns
        if len(values) < len(columns):
            raise UnparsableLine(
                f"{len(values)} tab-separated fields, the #Fields line names {len(columns)}"
            )

        def get(name: str) -> str:
            i = columns.get(name)
            return "-" if i is None else values[i]

        query = get("cs-uri-query")
        target = get("cs-uri-stem") + ("" if query in ("-", "") else f"?{query}")
        host = get("x-host-header")
        if host in ("-", ""):
            host = get("cs(Host)")
        client = get(self.client_field) if self.client_field in columns else None
        return LogRequest(
            ts=_checked_ts(iso_time(f"{get('date')}T{get('time')}+00:00")),
            method=get("cs-method"),
            target=target,
            status=_status(get("sc-status")),
            size=_size(get("sc-bytes")),
            host="" if host == "-" else host,
            client=client,
        )


_ALB_TOKEN = re.compile(_QUOTED + r"|(\S+)")


@dataclass(slots=True)
class AlbParser:
    """AWS Application Load Balancer access logs: space-separated fields,
    some quoted, in the documented order (:data:`ALB_FIELDS`).  The time is
    ``request_creation_time`` (when the request arrived; ``time`` if it is
    missing), the status ``elb_status_code`` (what the client got), the size
    ``sent_bytes``, the host the one in the request's absolute URL, the
    client the address of ``client:port`` without its port."""

    client_field: str
    names_hosts: bool = True

    def start_file(self) -> None:
        pass

    def parse(self, line: str) -> LogRequest | None:
        values = [
            m.group(1) if m.group(1) is not None else m.group(2) for m in _ALB_TOKEN.finditer(line)
        ]
        if len(values) < _ALB_MIN_FIELDS:
            raise UnparsableLine(
                f"{len(values)} fields, an ALB log line has at least {_ALB_MIN_FIELDS}"
            )
        created_at = _ALB["request_creation_time"]  # absent from the oldest logs
        created = values[created_at] if created_at < len(values) else "-"
        time_text = created if created not in ("-", "") else values[_ALB["time"]]
        method, target = _request_line(values[_ALB["request"]])
        index = _ALB[self.client_field]
        client = values[index] if index < len(values) else None
        if client is not None and self.client_field == "client:port" and client != "-":
            client = client.rpartition(":")[0] or client
        return LogRequest(
            ts=_checked_ts(iso_time(time_text)),
            method=method,
            target=target,
            status=_status(values[_ALB["elb_status_code"]]),
            size=_size(values[_ALB["sent_bytes"]]),
            host="",  # in the absolute URL of the request
            client=client,
        )


def parser_for(fmt: str, client_field: str | None) -> LogParser:
    """The parser of format ``fmt`` (one of :data:`FORMATS`) reading the client
    from ``client_field`` (None: the format's default); ImportArgumentError for an
    unknown format or a field the format does not have."""
    if fmt not in FORMATS:
        raise ImportArgumentError(f"unknown log format {fmt!r}; known: {', '.join(FORMATS)}")
    name = DEFAULT_CLIENT_FIELDS[fmt] if client_field is None else client_field
    if len(name) > MAX_FIELD_NAME_CHARS or not _FIELD_NAME.fullmatch(name):
        raise ImportArgumentError(
            f"--client-field must be a field name of at most {MAX_FIELD_NAME_CHARS} "
            "letters, digits and _.:@()-"
        )
    offered = CLIENT_FIELDS.get(fmt)
    if offered is not None and name not in offered:
        raise ImportArgumentError(
            f"--client-field {name!r}: the {fmt} format has {', '.join(offered)}"
        )
    if fmt in ("combined", "common", "varnishncsa"):
        # varnishncsa logs the absolute URL, host included.
        return ClfParser(name, combined=fmt != "common", names_hosts=fmt == "varnishncsa")
    if fmt == "nginx-json":
        return NginxJsonParser(name)
    if fmt == "cloudfront":
        return CloudFrontParser(name)
    return AlbParser(name)


# --------------------------------------------------------------------------
# Keys and clients
# --------------------------------------------------------------------------


def request_key(rules: ForwardingRules, target: str, host: str) -> str:
    """The cache key the proxy gives a request for ``target`` with ``Host: host``
    ("" for none: the default host), or UnparsableLine.

    An absolute-form target's authority replaces Host (RFC 9112 §3.2.2), as
    the handler does it; keys come from ``rules`` (``key_of``) alone.
    """
    if len(target) > MAX_TARGET_CHARS:
        raise UnparsableLine(f"request target longer than {MAX_TARGET_CHARS} characters")
    if not target.startswith("/"):
        parts = urlsplit(target)
        if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
            raise UnparsableLine("request target is neither a path nor an http(s) URL")
        path = parts.path if parts.path.startswith("/") else "/" + parts.path
        target = f"{path}?{parts.query}" if parts.query else path
        host = parts.netloc.rpartition("@")[2]  # never userinfo
    if rules.keys_are_paths:
        return rules.cache_key(target, "")
    headers: CIMultiDict[str] = CIMultiDict()
    if host:
        headers["Host"] = host
    try:
        return rules.key_of(CIMultiDictProxy(headers), None, target)
    except BadHost:
        raise UnparsableLine(f"host {host[:80]!r} is not a host[:port]") from None


def client_labeller(salt: bytes) -> Callable[[str], str]:
    """A function from a client value to its anonymous label: the first
    :data:`CLIENT_LABEL_HEX` hex digits of HMAC-SHA256(salt, value); "" for
    no client ("-" or empty)."""

    @functools.lru_cache(maxsize=65536)
    def label(value: str) -> str:
        value = value.strip()
        if value in ("", "-"):
            return ""
        return hmac.digest(salt, value.encode(), "sha256").hex()[:CLIENT_LABEL_HEX]

    return label


# --------------------------------------------------------------------------
# Sorting in bounded memory
# --------------------------------------------------------------------------

Row = tuple[float, str, int, str]


def _write_rows(out: IO[str], rows: Iterable[Row]) -> int:
    writer = csv.writer(out, lineterminator="\n")
    written = 0
    for ts, key, size, client in rows:
        writer.writerow((f"{ts:.3f}", key, size, client))
        written += 1
    return written


def _read_rows(f: IO[str]) -> Iterator[Row]:
    for ts, key, size, client in csv.reader(f):
        yield float(ts), key, int(size), client


class ExternalSort:
    """Rows sorted by time (stable), holding at most ``chunk_rows`` in memory:
    sorted runs go to temporary files in ``temp_dir`` (deleted by
    :meth:`close`) and are merged, at most :data:`MAX_OPEN_RUNS` at a time."""

    def __init__(self, chunk_rows: int = CHUNK_ROWS, temp_dir: Path | None = None) -> None:
        self._chunk_rows = max(1, chunk_rows)
        self._temp_dir = temp_dir
        self._rows: list[Row] = []
        self._runs: list[Path] = []
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self.runs_written = 0

    def add(self, row: Row) -> None:
        self._rows.append(row)
        if len(self._rows) >= self._chunk_rows:
            self._spill()

    def _new_run(self) -> Path:
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="warmproxy-import-", dir=self._temp_dir)
        self.runs_written += 1
        return Path(self._dir.name) / f"run-{self.runs_written}.csv"

    def _spill(self) -> None:
        self._rows.sort(key=itemgetter(0))
        path = self._new_run()
        with open(path, "w", encoding="utf-8", newline="") as f:
            _write_rows(f, self._rows)
        self._rows = []
        self._runs.append(path)
        if len(self._runs) >= MAX_OPEN_RUNS:
            # Merge these runs into one, so a merge never holds more files open.
            merged = self._new_run()
            with (
                contextlib.ExitStack() as stack,
                open(merged, "w", encoding="utf-8", newline="") as out,
            ):
                _write_rows(out, self._merge(stack, self._runs, []))
            for run in self._runs:
                run.unlink()
            self._runs = [merged]

    @staticmethod
    def _merge(stack: contextlib.ExitStack, runs: Sequence[Path], rows: list[Row]) -> Iterator[Row]:
        files = [
            stack.enter_context(open(run, encoding="utf-8", newline=""))  # noqa: SIM115 (stack closes)
            for run in runs
        ]
        # heapq.merge is stable: equal times keep the order of the runs,
        # which is the order they were read in.
        return heapq.merge(*(_read_rows(f) for f in files), rows, key=itemgetter(0))

    def sorted_rows(self, stack: contextlib.ExitStack) -> Iterator[Row]:
        """Every row added, by time; files stay open until ``stack`` closes."""
        self._rows.sort(key=itemgetter(0))
        if not self._runs:
            return iter(self._rows)
        return self._merge(stack, self._runs, self._rows)

    def close(self) -> None:
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None


# --------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------


def _lines(stream: BinaryIO) -> Iterator[bytes | None]:
    """The lines of ``stream``; None for a line longer than :data:`MAX_LINE_BYTES`
    (read past, never held whole)."""
    readline = stream.readline
    while True:
        line = readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
            while True:
                rest = readline(MAX_LINE_BYTES)
                if not rest or rest.endswith(b"\n"):
                    break
            yield None
        else:
            yield line


def _open_log(raw: BinaryIO) -> BinaryIO:
    """``raw`` itself, or its decompressed content when it starts as gzip does."""
    magic = raw.peek(2)[:2] if isinstance(raw, io.BufferedReader) else b""
    if magic == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    return raw


def _printable(text: str) -> str:
    """``text`` cut to :data:`SHOWN_LINE_CHARS`, control characters escaped
    (a log line must not drive the terminal)."""
    cut = text[:SHOWN_LINE_CHARS]
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in cut)
    return shown + ("…" if len(text) > SHOWN_LINE_CHARS else "")


@dataclass
class ImportReport:
    """What an import read, wrote and left out."""

    read: int = 0
    written: int = 0
    skipped: int = 0  # methods other than GET/HEAD, statuses not cacheable by default
    unparsable: int = 0
    no_client_field: int = 0
    problems: list[str] = field(default_factory=list)  # the first unparsable lines
    file_errors: list[str] = field(default_factory=list)

    def unparsable_line(
        self, path: Path, number: int, problem: UnparsableLine, data: bytes | None
    ) -> None:
        """Count line ``number`` of ``path`` as unparsable; keep the first few to show."""
        self.read += 1
        self.unparsable += 1
        if len(self.problems) < SHOWN_UNPARSABLE:
            text = "" if data is None else data.decode("utf-8", "replace").rstrip("\r\n")
            shown = f": {_printable(text)}" if text else ""
            self.problems.append(f"{path}:{number}: {problem}{shown}")

    def summary(self) -> str:
        return (
            f"read {self.read:,} lines, written {self.written:,}, skipped by "
            f"method/status {self.skipped:,}, unparsable {self.unparsable:,}"
        )


def check_inputs(paths: Sequence[Path], output: Path | None) -> None:
    """ImportArgumentError naming the first input that is not a readable file, or an
    output that is one of the inputs."""
    for path in paths:
        if not path.exists():
            raise ImportArgumentError(f"no such file: {path}")
        if not path.is_file():
            raise ImportArgumentError(f"not a file: {path}")
        if not os.access(path, os.R_OK):
            raise ImportArgumentError(f"cannot read {path}: permission denied")
    if output is not None and output.is_dir():
        raise ImportArgumentError(f"the output {output} is a directory")
    if output is not None and any(output.resolve() == path.resolve() for path in paths):
        raise ImportArgumentError(f"the output {output} is one of the input logs")


def import_logs(
    paths: Sequence[Path],
    parser: LogParser,
    *,
    rules: ForwardingRules,
    label: Callable[[str], str],
    out: IO[str],
    progress: bool = False,
    progress_file: TextIO | None = None,
    chunk_rows: int = CHUNK_ROWS,
    temp_dir: Path | None = None,
) -> ImportReport:
    """Read the logs at ``paths`` with ``parser`` and write the kept requests
    to ``out`` as a trace (header and rows by time), when there is any."""
    report = ImportReport()
    rows = ExternalSort(chunk_rows, temp_dir)
    total = sum(p.stat().st_size for p in paths)
    bar = tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        desc="import-log",
        file=progress_file,
        disable=not progress,
        leave=False,
    )
    try:
        with bar:
            for path in paths:
                _read_file(path, parser, rules, label, rows, report, bar.update)
        if report.written:
            out.write(",".join(HEADER) + "\n")
            with contextlib.ExitStack() as stack:
                _write_rows(out, rows.sorted_rows(stack))
    finally:
        rows.close()
    return report


def _read_file(
    path: Path,
    parser: LogParser,
    rules: ForwardingRules,
    label: Callable[[str], str],
    rows: ExternalSort,
    report: ImportReport,
    advance: Callable[[float], object],
) -> None:
    parser.start_file()
    number = 0
    done = 0
    with open(path, "rb") as raw:
        try:
            for number, data in enumerate(_lines(_open_log(raw)), 1):
                if number % 8192 == 0:
                    position = raw.tell()
                    advance(position - done)
                    done = position
                try:
                    row = _row(data, parser, rules, label, report)
                except UnparsableLine as exc:
                    report.unparsable_line(path, number, exc, data)
                    continue
                if row is not None:
                    rows.add(row)
                    report.written += 1
        except (OSError, EOFError, zlib.error) as exc:
            # A truncated or corrupt gzip file (a log still being written):
            # what came before is kept, the rest is reported.
            report.file_errors.append(
                f"{path}: unreadable after line {number} ({exc.__class__.__name__}: "
                f"{str(exc)[:120]}); the rest of the file was not read"
            )
        advance(path.stat().st_size - done)


def _row(
    data: bytes | None,
    parser: LogParser,
    rules: ForwardingRules,
    label: Callable[[str], str],
    report: ImportReport,
) -> Row | None:
    """The trace row of one log line, or None for a blank or header line and
    for a request that is no cache lookup (counted), or UnparsableLine."""
    if data is None:
        raise UnparsableLine(f"longer than {MAX_LINE_BYTES} bytes")
    try:
        text = data.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise UnparsableLine("not UTF-8 text") from None
    if not text.strip():
        return None
    request = parser.parse(text)
    if request is None:  # a header or comment line
        return None
    report.read += 1
    if request.method not in CACHED_METHODS or request.status not in CACHEABLE_STATUSES:
        report.skipped += 1
        return None
    key = request_key(rules, request.target, request.host)
    if request.client is None:
        report.no_client_field += 1
        client = ""
    else:
        client = label(_first_forwarded(parser.client_field, request.client))
    return request.ts, key, request.size, client


# --------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------


def import_log_command(
    paths: Sequence[Path],
    *,
    fmt: str,
    settings: Settings,
    output: Path | None,
    client_field: str | None = None,
    salt: str | None = None,
    progress: bool = True,
    out: TextIO,
    err: TextIO,
    chunk_rows: int = CHUNK_ROWS,
) -> int:
    """``warmproxy import-log``: exit status 0 when a request was written, 1 when
    none was usable, 2 for arguments that cannot work."""
    name = "warmproxy import-log"
    try:
        parser = parser_for(fmt, client_field)
        if salt is not None and not 0 < len(salt) <= MAX_SALT_CHARS:
            raise ImportArgumentError(f"--salt must be 1 to {MAX_SALT_CHARS} characters")
        check_inputs(paths, output)
        rules = ForwardingRules.from_settings(settings)
    except ImportArgumentError as exc:
        print(f"{name}: {exc}", file=err)
        return 2
    except ValueError as exc:  # rules the settings cannot build
        print(f"{name}: invalid configuration: {exc}", file=err)
        return 2
    # A per-run salt unless one is given: labels then only link requests
    # within this trace, never to another export of the same logs.
    label = client_labeller(salt.encode() if salt is not None else secrets.token_bytes(32))
    show = progress and err.isatty()
    if output is None:
        report = import_logs(
            paths,
            parser,
            rules=rules,
            label=label,
            out=out,
            progress=show,
            progress_file=err,
            chunk_rows=chunk_rows,
        )
    else:
        written = _import_to_file(paths, parser, rules, label, output, show, err, chunk_rows)
        if written is None:
            return 2
        report = written
    for problem in report.problems:
        print(f"{name}: unparsable: {problem}", file=err)
    for problem in report.file_errors:
        print(f"{name}: {problem}", file=err)
    if report.unparsable > len(report.problems):
        print(
            f"{name}: ... and {report.unparsable - len(report.problems):,} more unparsable lines",
            file=err,
        )
    if report.no_client_field:
        print(
            f"{name}: {report.no_client_field:,} written lines have no "
            f"{parser.client_field!r} field: their client is empty",
            file=err,
        )
    if not rules.keys_are_paths and not parser.names_hosts:
        print(
            f"{name}: keys are per host but a {fmt} log names no host: every key is "
            f"for the default host {rules.default_host}",
            file=err,
        )
    print(f"{name}: {report.summary()}", file=err)
    if not report.written:
        print(
            f"{name}: nothing usable: no GET or HEAD request answered with a status "
            "cacheable by default" + ("" if output is None else f"; {output} not written"),
            file=err,
        )
        return 1
    return 0


def _import_to_file(
    paths: Sequence[Path],
    parser: LogParser,
    rules: ForwardingRules,
    label: Callable[[str], str],
    output: Path,
    show: bool,
    err: TextIO,
    chunk_rows: int,
) -> ImportReport | None:
    """The import written to a temporary file beside ``output`` and renamed
    onto it when a request was written: a failed or empty import leaves an
    earlier trace in place.  None (and a message) when ``output`` cannot be
    written."""
    directory = output.parent
    try:
        fd, temp_name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        print(f"warmproxy import-log: cannot write {output}: {exc.strerror}", file=err)
        return None
    temp = Path(temp_name)
    try:
        with open(fd, "w", encoding="utf-8", newline="") as f:
            report = import_logs(
                paths,
                parser,
                rules=rules,
                label=label,
                out=f,
                progress=show,
                progress_file=err,
                chunk_rows=chunk_rows,
                temp_dir=directory,
            )
        if report.written:
            os.replace(temp, output)
        return report
    finally:
        temp.unlink(missing_ok=True)
