"""The control listener's shapes, and the OpenAPI 3.1 document made from them.

Every request and response body of the control API is a pydantic model here:
the handlers in :mod:`proxy.control_api` validate requests with the request
models and build every response through a response model, and the document
is generated from the same models.  So the document cannot promise a field
the API refuses, nor leave out a field the API sends.

Request models are strict (``"5"`` and ``true`` are not integers), refuse
unknown fields, and bound every string and list.  Response models pass
through what they do not name only where the document says an object is open
(the analysis and ledger reports, which grow with the warmer).

``python -m proxy.openapi > docs/openapi.json`` writes the document for the
default configuration; ``tests/test_docs.py`` keeps the committed copy
current, and ``tests/proxy/test_openapi_schemathesis.py`` runs the API
against it.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.json_schema import models_json_schema

from proxy import __version__
from proxy.cache_key import MAX_PATH_GLOB_CHARS, MAX_PATH_GLOB_WILDCARDS, check_path_glob
from proxy.config import ExecutionSettings, TrackingSettings
from proxy.purge import MAX_PATH_CHARS, MAX_TAG_BYTES
from proxy.warming import MAX_TARGET_CHARS
from warmer import timeline as warm_timeline
from warmer.schedule import Schedule

PREFIX = "/cache/warming"
#: Paths in one bulk warm-key.
MAX_BULK = 10_000
#: Bodies of the control API, at most (a bulk warm of 10,000 paths, a large schedule).
MAX_BODY_BYTES = 4 * 1024 * 1024
#: Known paths one warm-pattern or start of the hot strategy may warm.
MAX_LIMIT = 100_000
#: Keys per list of hot-data, at most.
MAX_HOT_N = 10_000
#: Missed keys GET /cache lists, at most (it looks up this many hot keys' misses).
MAX_MISSED_N = 200
#: A run id as the API hands them out (12 hex digits); longer is refused.
MAX_RUN_ID_CHARS = 64
#: What the document names when built for the default configuration.
DEFAULT_LEVELS: tuple[str, ...] = tuple(ExecutionSettings().priority_levels)
DEFAULT_WINDOWS: tuple[float, ...] = tuple(sorted(TrackingSettings().windows))
#: Seconds of traffic the timeline keeps.
TIMELINE_SPAN = warm_timeline.Timeline().span

# Regular expressions of the document, read alike by ECMA 262, Python and
# Rust engines: no look-around, and the characters the checks refuse spelt
# out (control characters and every character str.isspace() is true for),
# not as \s, which the engines define differently.
_REFUSED = (
    r"\x00-\x20\x7f\x85\xa0"
    + "".join(chr(c) for c in (0x1680, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000))
    + "\u2000-\u200a"
)
_TEXT = f"[^{_REFUSED}]"
# A warm target: a path ("/", or "/" and then not a second "/" or "\", which
# would name a host: what warmer.sources.is_origin_path checks), or a URL.
_PATH = rf"/|/[^/\\{_REFUSED}]{_TEXT}*"
_TARGET_PATTERN = rf"^({_PATH}|https?://[^/?#{_REFUSED}]+([/?#]{_TEXT}*)?)$"
# A glob over paths: "/" or "*" first, at most MAX_PATH_GLOB_WILDCARDS of * ? [.
_LITERAL = rf"[^*?\[{_REFUSED}]"
_GLOB_PATTERN = (
    rf"^(/{_LITERAL}*(?:[*?\[]{_LITERAL}*){{0,{MAX_PATH_GLOB_WILDCARDS}}}"
    rf"|\*{_LITERAL}*(?:[*?\[]{_LITERAL}*){{0,{MAX_PATH_GLOB_WILDCARDS - 1}}})$"
)
_SOURCE_NAME_PATTERN = r"^[A-Za-z0-9_.\-]+$"
# A purge's glob: as a warm-pattern's, and every [ closes a class holding
# no [, * or ? (what proxy.purge.check_pattern refuses).
_MEMBER = rf"[^\]\[*?{_REFUSED}]"
# As fnmatch reads a class: "!" first negates, and a "]" right after "[" or
# "[!" is a member, not the end.
_CLASS = rf"\[(?:!?\]{_MEMBER}*|!{_MEMBER}+|[^!\]\[*?{_REFUSED}]{_MEMBER}*)\]"
_PURGE_GLOB_PATTERN = (
    rf"^(/{_LITERAL}*(?:(?:[*?]|{_CLASS}){_LITERAL}*){{0,{MAX_PATH_GLOB_WILDCARDS}}}"
    rf"|\*{_LITERAL}*(?:(?:[*?]|{_CLASS}){_LITERAL}*){{0,{MAX_PATH_GLOB_WILDCARDS - 1}}})$"
)
# A cache tag: visible ASCII without the comma (what separates tags).
_TAG_PATTERN = r"^[\x21-\x2b\x2d-\x7e]+$"

DateTime = Annotated[str, Field(json_schema_extra={"format": "date-time"})]
Count = Annotated[int, Field(ge=0)]


def _absent_or_null(schema: dict[str, Any]) -> None:
    """A response field that may be left out, or be null: no ``default: null``."""
    schema.pop("default", None)


def _no_default(schema: dict[str, Any]) -> None:
    """An optional field that may be left out but is never null: its schema
    without ``default: null`` and without the null branch."""
    schema.pop("default", None)
    branches = schema.pop("anyOf", None)
    if branches is None:
        return
    others = [b for b in branches if b != {"type": "null"}]
    if len(others) == 1:
        schema.update(others[0])
    else:
        schema["anyOf"] = others


# ------------------------------------------------------------------ requests


class _Body(BaseModel):
    """A request body: strict types, no unknown field, no explicit null."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _is_object(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            raise ValueError("the body must be a JSON object")
        return value


Priority = Annotated[
    str,
    Field(min_length=1, max_length=64, description="one of [execution] priority_levels"),
]
Target = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_TARGET_CHARS,
        # Checked by proxy.warming.warm_target, whose messages say what is wrong.
        json_schema_extra={"pattern": _TARGET_PATTERN},
        description=(
            "a path on the origin (/products/42?colour=red), or a URL on the configured "
            "origin or proxy.public_host; no whitespace or control characters"
        ),
    ),
]
SourceName = Annotated[str, Field(min_length=1, max_length=100, pattern=_SOURCE_NAME_PATTERN)]


def _not_null(value: Any) -> Any:
    if value is None:
        raise ValueError("must not be null; leave the field out instead")
    return value


class StartBody(_Body):
    """Start a warming run now."""

    strategy: Literal["proactive", "hot", "reactive"] = Field(
        description=(
            "proactive: the scheduled sources (all enabled ones, or `sources`); hot: the "
            "top `limit` hot keys; reactive: hot keys missed over the reactive threshold"
        )
    )
    sources: Annotated[list[SourceName], Field(min_length=1, max_length=1000)] | None = Field(
        None,
        description="proactive: only these sources (by name)",
        json_schema_extra=_no_default,
    )
    priority: Priority | None = Field(
        None, description="overrides the sources' priorities", json_schema_extra=_no_default
    )
    limit: Annotated[int, Field(ge=1, le=MAX_LIMIT)] | None = Field(
        None,
        description="hot/reactive: how many keys (default 100)",
        json_schema_extra=_no_default,
    )

    _nulls = field_validator("sources", "priority", "limit", mode="before")(_not_null)


class WarmKeyBody(_Body):
    """Warm one path (``url``) or a list of paths (``urls``) now: exactly one of the two."""

    model_config = ConfigDict(
        json_schema_extra={"oneOf": [{"required": ["url"]}, {"required": ["urls"]}]}
    )

    url: Target | None = Field(None, json_schema_extra=_no_default)
    urls: Annotated[list[Target], Field(min_length=1, max_length=MAX_BULK)] | None = Field(
        None,
        description=f"bulk: up to {MAX_BULK:,} paths",
        json_schema_extra=_no_default,
    )
    priority: Priority | None = Field(
        None,
        description="default: the middle of [execution] priority_levels",
        json_schema_extra=_no_default,
    )

    # "Exactly one of" is checked by the handler, which can name the field.
    _nulls = field_validator("url", "urls", "priority", mode="before")(_not_null)


class WarmPatternBody(_Body):
    """Warm every known path matching a glob."""

    pattern: str = Field(
        min_length=1,
        max_length=MAX_PATH_GLOB_CHARS,
        # Checked by check_path_glob, whose messages say which bound.
        json_schema_extra={"pattern": _GLOB_PATTERN},
        description=(
            "a glob over paths (fnmatch: *, ?, [...]; case-sensitive), starting with / or *, "
            f"with at most {MAX_PATH_GLOB_WILDCARDS} wildcards, e.g. /products/*"
        ),
    )
    priority: Priority | None = Field(
        None,
        description="default: the middle of [execution] priority_levels",
        json_schema_extra=_no_default,
    )
    limit: int = Field(10_000, ge=1, le=MAX_LIMIT, description="warm at most this many paths")

    _nulls = field_validator("priority", mode="before")(_not_null)

    @field_validator("pattern")
    @classmethod
    def _bounded(cls, value: str) -> str:
        return check_path_glob(value)


PurgePath = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_PATH_CHARS,
        json_schema_extra={"pattern": f"^({_PATH})$"},
        description="a path on the origin, with its query (/products/42?colour=red)",
    ),
]
PurgeGlob = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_PATH_GLOB_CHARS,
        # Checked by proxy.purge.check_pattern, whose messages say what is wrong.
        json_schema_extra={"pattern": _PURGE_GLOB_PATTERN},
        description=(
            "a glob over paths (fnmatch: *, ?, [...]; case-sensitive), starting with / or *, "
            f"with at most {MAX_PATH_GLOB_WILDCARDS} wildcards, e.g. /products/*"
        ),
    ),
]
Tag = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_TAG_BYTES,
        json_schema_extra={"pattern": _TAG_PATTERN},
        description="a tag the origin sent in [cache.purge] tag_header (e.g. Surrogate-Key)",
    ),
]


class PurgeBody(_Body):
    """Purge one path (all its variants), every path matching a glob, or every
    response the origin tagged: exactly one of ``path``, ``pattern``, ``tag``."""

    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [{"required": ["path"]}, {"required": ["pattern"]}, {"required": ["tag"]}]
        }
    )

    path: PurgePath | None = Field(None, json_schema_extra=_no_default)
    pattern: PurgeGlob | None = Field(None, json_schema_extra=_no_default)
    tag: Tag | None = Field(None, json_schema_extra=_no_default)
    soft: bool = Field(
        False, description="mark stale (served while one refresh runs) instead of deleting"
    )
    rewarm: bool = Field(False, description="warm every purged path again right after")
    priority: Priority | None = Field(
        None,
        description="of the re-warm; default: the middle of [execution] priority_levels",
        json_schema_extra=_no_default,
    )

    # "Exactly one of" is checked by the handler, which can name the field.
    _nulls = field_validator("path", "pattern", "tag", "priority", mode="before")(_not_null)


def _read_only(description: str) -> Any:
    return Field(None, description=description, json_schema_extra=_read_only_schema)


def _read_only_schema(schema: dict[str, Any]) -> None:
    schema.clear()
    schema.update(readOnly=True, description="shown by GET; ignored when posted back")


class ScheduleBody(Schedule):
    """The body of ``POST /schedule``: a :class:`Schedule`, or what GET shows
    (whose added fields are ignored)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    next_runs: Any = _read_only("ignored")
    errors: Any = _read_only("ignored")
    persisted_in: Any = _read_only("ignored")
    origin: Any = _read_only("ignored")
    posted_at: Any = _read_only("ignored")
    proposed: Any = _read_only("ignored")

    @model_validator(mode="before")
    @classmethod
    def _is_object(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            raise ValueError("the body must be a JSON object")
        return value

    def schedule_only(self) -> Schedule:
        """The posted schedule, without what GET adds."""
        return Schedule.model_validate(
            {name: getattr(self, name) for name in Schedule.model_fields}
        )


# ----------------------------------------------------------------- responses


class _Shape(BaseModel):
    """A response body: what the API sends, field for field."""

    model_config = ConfigDict(extra="ignore")


class _OpenShape(BaseModel):
    """A response object the document marks open: its named fields are as
    shown, and it may carry more (reports that grow with the warmer)."""

    model_config = ConfigDict(extra="allow")


class Error(_Shape):
    """Every refusal and error of the control listener."""

    error: str = Field(description="what is wrong, in words")
    field: str | None = Field(
        None,
        description="400: the body field (dotted: urls[3], sources.0.priority) or parameter",
        json_schema_extra=_no_default,
    )


class RunCounts(_Shape):
    total_items: Count
    completed: Count
    success: Count
    failed: Count
    percentage: float = Field(ge=0, le=100)


class RunBatch(_Shape):
    batch_size: Count
    processed: Count
    remaining: Count


class RunPerformance(_Shape):
    items_per_second: float = Field(ge=0)
    average_time_per_item: float | None = Field(description="seconds; null until measured")
    estimated_completion: DateTime | None


class RunError(_Shape):
    key: str
    error: str
    retry_count: Count


class RunStatus(_Shape):
    """A warming run: what ``start``, ``warm-key`` and ``warm-pattern`` answer."""

    run_id: str | None = Field(description="null: no run yet")
    status: Literal["idle", "running", "completed", "stopped", "failed"]
    strategy: str | None
    started_at: DateTime | None
    finished_at: DateTime | None
    progress: RunCounts
    current_batch: RunBatch
    performance: RunPerformance
    errors: list[RunError]


class RunProgress(RunStatus):
    """``GET /progress``: a run status, plus the seconds since the run started."""

    elapsed_seconds: float | None = Field(
        None, ge=0, description="absent before any run", json_schema_extra=_no_default
    )


class ActiveRun(_Shape):
    run_id: str
    strategy: str
    percentage: float = Field(ge=0, le=100)


class ExecutorState(_Shape):
    queue_depth: Count
    queue_by_priority: dict[str, Count]
    in_flight: Count
    concurrency_limit: Count
    paused: bool
    adaptive: dict[str, Any] | None = Field(description="null with [execution] adaptive = false")


class Replica(_Shape):
    """A live replica of the fleet (from its heartbeat in Redis)."""

    id: str = Field(description="cache.replica_name, or <hostname>-<pid>")
    instance: str = Field(description="random per process start")
    version: str
    started_at: DateTime
    last_seen: DateTime = Field(description="its last heartbeat (every 5 s)")
    requests_per_second: float = Field(ge=0, description="client requests, recently")
    warm_in_flight: Count
    this_replica: bool = Field(description="true for the replica that answered")


class Status(RunStatus):
    """``GET /status``: the current or last run, the running ones, the executor,
    and the replicas of the fleet."""

    active_runs: list[ActiveRun]
    executor: ExecutorState
    replicas: list[Replica] = Field(
        description="the replica that answered first; with the Redis store also every "
        "other replica whose heartbeat is live (at most 256); alone while Redis is down"
    )


class Stopped(_Shape):
    """``POST /stop``: the runs stopped, and the status after."""

    stopped: list[str]
    status: Status


class Effectiveness(_OpenShape):
    hit_rate_before: float | None = Field(description="user hit rate before the first warm fill")
    hit_rate_after: float | None = Field(description="user hit rate since")
    improvement: float | None
    precision: float | None = Field(
        None,
        description="warmed entries hit before they expired or were evicted",
        json_schema_extra=_absent_or_null,
    )
    counterfactual_hit_rate: float | None = Field(
        None, description="the hit rate without warming", json_schema_extra=_absent_or_null
    )
    hits_gained: Count | None = Field(None, json_schema_extra=_no_default)
    misses_prevented: Count | None = Field(None, json_schema_extra=_no_default)
    warmed_entries: dict[str, Count] | None = Field(None, json_schema_extra=_no_default)


class ResourceUsage(_Shape):
    cpu_utilization: float = Field(ge=0, description="process CPU %")
    memory_usage: Count = Field(description="resident bytes")
    network_io: Count = Field(description="bytes fetched by warming")


class Timing(_Shape):
    total_warming_time: float = Field(ge=0, description="seconds")
    average_item_time: float | None = Field(description="seconds; null until measured")
    peak_concurrent: Count


class CostBenefit(_OpenShape):
    items_warmed: Count
    cache_hits_prevented: Count = Field(
        description="user misses warming prevented (warmed entries hit)"
    )
    estimated_response_time_saved: float | None = Field(
        description="misses prevented x measured mean origin latency (s)"
    )
    origin_fetches: Count | None = Field(None, json_schema_extra=_no_default)
    bytes: Count | None = Field(None, json_schema_extra=_no_default)
    success_rate: float | None = Field(None, json_schema_extra=_absent_or_null)
    net_origin_fetches: int | None = Field(None, json_schema_extra=_no_default)


def _report(description: str) -> Any:
    return Field(None, description=description, json_schema_extra=_no_default)


class FleetScope(_Shape):
    """Which replicas the figures of ``GET /stats`` add up."""

    scope: Literal["fleet", "replica"] = Field(
        description="fleet: summed over every replica's figures in Redis (Redis store); "
        "replica: this replica's alone (memory store, or Redis unavailable)"
    )
    replicas: Count = Field(description="replicas whose figures are summed")
    unavailable: str | None = Field(
        description="why the fleet's figures could not be read (Redis store); else null"
    )


class ReplicaStats(_Shape):
    """One replica's part of the fleet's ``GET /stats``."""

    this_replica: bool = Field(description="true for the replica that answered")
    updated_at: DateTime = Field(description="when its figures were written (every 5 s)")
    origin_fetches: Count = Field(description="its warm origin fetches")
    effectiveness: Effectiveness | None = Field(
        None, description="absent without its ledger", json_schema_extra=_no_default
    )
    cost_benefit: CostBenefit | None = Field(
        None, description="absent without its ledger", json_schema_extra=_no_default
    )


class Stats(_Shape):
    """``GET /stats``: what warming did, measured; a figure not measurable yet is null.

    With the Redis store the figures are the fleet's: every replica's counters
    added up, ratios computed from the sums (``fleet``, ``replicas``)."""

    effectiveness: Effectiveness
    resource_usage: ResourceUsage
    timing: Timing
    cost_benefit: CostBenefit
    counts: dict[str, Any] = Field(description="warmed, failed, retried per strategy")
    alerts: dict[str, Any] = Field(description="active alerts from [monitoring]")
    performance_impact: dict[str, Any] | None = _report(
        "user latency and origin load during warm runs and outside them"
    )
    by_label: dict[str, dict[str, Any]] | None = _report(
        "the same figures per strategy and scheduled source"
    )
    predictive: dict[str, Any] | None = _report("the predictive strategy's model")
    fleet: FleetScope
    replicas: dict[str, ReplicaStats] = Field(
        description="the figures summed, per replica name (at most 256); with the memory "
        "store this replica alone"
    )


class HotKey(_OpenShape):
    key: str
    url: str
    host: str
    count: Count


class Totals(_Shape):
    requests: Count
    hits: Count
    misses: Count
    bypass: Count


class HourCount(_Shape):
    start: DateTime | None
    requests: Count
    hits: Count
    misses: Count


class Prediction(_Shape):
    key: str
    url: str
    confidence: float
    duration: float
    kind: str


class RecentPrediction(_Shape):
    key: str
    confidence: float
    duration: float
    at: DateTime | None
    kind: str


class HotData(_Shape):
    """``GET /hot-data``: the usage analysis (sections absent with tracking.analysis off)."""

    window_seconds: float | None
    hot_keys: list[HotKey]
    totals: Totals
    hourly: list[HourCount] = Field(description="the last 24 clock hours, oldest first")
    generated_at: DateTime | None = _report("when the analysis was made")
    threshold: dict[str, Any] | None = _report("the hot threshold and how it was derived")
    frequency: dict[str, Any] | None = _report("the top keys by count per tracking window")
    patterns: dict[str, Any] | None = _report("hour of day, day of week, when to warm")
    trends: dict[str, Any] | None = _report("rising and falling keys")
    seasonality: dict[str, Any] | None = _report("daily and weekly seasonality")
    segments: dict[str, Any] | None = _report("client segments")
    sequences: dict[str, Any] | None = _report("which path follows which")
    memory_bound_bytes: dict[str, Any] | None = _report("the analysis' memory bounds")
    predictions: list[Prediction] | None = _report("with the predictive strategy")
    recent_predictions: list[RecentPrediction] | None = _report("with the predictive strategy")


class TimelineBucket(_Shape):
    ts: float
    requests: Count
    hits: Count
    misses: Count
    origin_requests: Count
    warm_fetches: Count
    hit_rate: float | None
    from_cache: Count = Field(
        description="requests answered with a stored entry's body (hit, stale, revalidated)"
    )
    cache_bytes: Count = Field(description="body bytes sent from stored entries")
    origin_bytes: Count = Field(description="body bytes relayed from the origin")
    status_2xx: Count
    status_3xx: Count
    status_4xx: Count
    status_5xx: Count


class TimelineRun(_Shape):
    run_id: str
    strategy: str
    status: Literal["running", "completed", "stopped", "failed"]
    started_ts: float
    finished_ts: float | None
    total_items: Count
    completed: Count
    failed: Count


class Timeline(_Shape):
    """``GET /timeline``: traffic per bucket and the warm runs over it."""

    bucket_seconds: float
    now: float
    buckets: list[TimelineBucket]
    runs: list[TimelineRun]


class Percentiles(_Shape):
    requests: Count = Field(description="observations the percentiles are computed from")
    p50: float | None = Field(description="seconds; null without observations")
    p90: float | None
    p99: float | None


class LatencyReport(Percentiles):
    by_outcome: dict[str, Percentiles] | None = Field(
        None, description="client latency per cache outcome", json_schema_extra=_no_default
    )
    by_purpose: dict[str, Percentiles] | None = Field(
        None,
        description="origin latency per purpose (forward, fill, warm)",
        json_schema_extra=_no_default,
    )


class OriginHealth(_Shape):
    latency: LatencyReport = Field(description="warmproxy_origin_request_duration_seconds")
    errors: dict[str, Count] = Field(
        description="origin requests that failed without a response, by reason, since start"
    )
    proxy_errors: dict[str, Count] = Field(
        description="error answers the proxy made itself, by reason, since start"
    )


class WarmingBackoff(_Shape):
    concurrency_limit: Count = Field(description="warm fetches allowed at once now")
    parallelism: Count = Field(description="the configured most ([execution] parallelism)")
    in_flight: Count
    paused: bool = Field(description="held back by the CPU/memory guard")
    adaptive: dict[str, Any] | None = Field(description="null with [execution] adaptive = false")


class StoreFill(_Shape):
    backend: str
    healthy: bool
    entries: Count | None = Field(description="null until a Redis store was first counted")
    bytes: Count | None
    evictions: Count | None
    max_bytes: Count | None = Field(description="the memory store's bound; null with Redis")
    max_entries: Count | None = Field(description="the memory store's bound; null when none")


class MissedKey(_Shape):
    key: str
    url: str
    host: str
    misses: Count
    requests: Count


class TopMissed(_Shape):
    window_seconds: float
    keys: list[MissedKey]


class CacheReport(_Shape):
    """``GET /cache``: the cache side: latency, origin health, store fill, top missed."""

    now: float
    method: str = Field(description="how the percentiles are computed")
    latency: LatencyReport = Field(description="warmproxy_request_duration_seconds")
    origin: OriginHealth
    warming: WarmingBackoff
    store: StoreFill
    top_missed: TopMissed


class ScheduleDocument(Schedule):
    """``GET /schedule``: the schedule in force, where it came from, next firings."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    next_runs: dict[str, DateTime | None] = Field(
        description="per source, its next firing (null: none)"
    )
    errors: dict[str, str] = Field(description="per failing source, its last error")
    persisted_in: str = Field(
        description="where a posted schedule is saved (a file or a Redis key)"
    )
    origin: Literal["config", "posted"] = Field(
        description=(
            "config: the configuration file's [strategies.proactive] sources; posted: a "
            "schedule posted here (or applied by the optimizer), saved and in force over "
            "the configuration file, also after a restart"
        )
    )
    posted_at: DateTime | None = Field(
        description="when the posted schedule was saved; null when not known"
    )
    proposed: dict[str, Any] | None = _report(
        "the optimizer's proposal (absent with optimize = off)"
    )


class Reloaded(_Shape):
    """``POST /reload``: what the configuration read again changed."""

    applied: list[str] = Field(description="the settings applied (dotted names)")
    restart_required: list[str] = Field(
        description="changed settings that need a restart: left as they were (dotted names)"
    )


class ReloadRefusal(Error):
    """``POST /reload`` refused: nothing changed."""

    errors: list[str] = Field(
        default_factory=list,
        description="what is wrong, a line each, as `warmproxy check-config` prints it",
    )


class Purged(_Shape):
    """``POST /purge``: what was purged, and the re-warm run."""

    purged: Count = Field(
        description="cached responses (each variant counts) deleted, or made stale when soft"
    )
    soft: bool
    rewarm: RunStatus | None = Field(
        description=(
            "the re-warm run (follow it with GET /progress?run_id=); null: not asked for, "
            "or nothing to warm"
        )
    )


class Health(_Shape):
    status: Literal["ok"]


class Readiness(_Shape):
    status: Literal["ready", "not ready"]
    accepting: bool
    store: str
    store_healthy: bool
    warming_on_start: str | None = Field(
        description="the run id of the warm run at start still running"
    )


class OpenShape(_OpenShape):
    """Any JSON object (this document)."""


REQUESTS: tuple[type[BaseModel], ...] = (
    StartBody,
    WarmKeyBody,
    WarmPatternBody,
    ScheduleBody,
    PurgeBody,
)
RESPONSES: tuple[type[BaseModel], ...] = (
    Error,
    RunStatus,
    RunProgress,
    Status,
    Stopped,
    Stats,
    HotData,
    Timeline,
    CacheReport,
    ScheduleDocument,
    Purged,
    Reloaded,
    ReloadRefusal,
    Health,
    Readiness,
)

# ------------------------------------------------------------------ document

_STATUS_TEXT = {
    400: "the body or a parameter is invalid (`field` names it); nothing was applied",
    401: "missing or wrong bearer token",
    403: (
        "refused by the listener: an `Origin` of another site, or (no token configured) a "
        "`Host` that is not one of this listener's names"
    ),
    404: "not found",
    409: "a run is already running",
    413: f"the body is over {MAX_BODY_BYTES // (1024 * 1024)} MiB",
    415: "the body is not `Content-Type: application/json`",
    503: "the schedule could not be saved; nothing changed",
}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _responses(ok: int, schema: dict[str, Any], *codes: int, guarded: bool = True) -> Any:
    """``ok`` with ``schema``, then the refusals: the listener's 403, the
    token's 401 (``guarded``: a route of the API), and ``codes``."""
    out: dict[str, Any] = {str(ok): {"description": "OK", **_json(schema)}}
    refusals = {403, *codes} | ({401} if guarded else set())
    for code in sorted(refusals):
        out[str(code)] = {"$ref": f"#/components/responses/{code}"}
    return out


def _body(name: str) -> dict[str, Any]:
    return {"required": True, **_json(_ref(name))}


_BODY_REFUSALS = (400, 413, 415)


def _components(levels: Sequence[str]) -> dict[str, Any]:
    _, defs = models_json_schema(
        [(m, "validation") for m in REQUESTS] + [(m, "serialization") for m in RESPONSES],
        ref_template="#/components/schemas/{model}",
    )
    schemas: dict[str, Any] = defs["$defs"]
    # The priorities this proxy is configured with.
    for name in (
        "StartBody",
        "WarmKeyBody",
        "WarmPatternBody",
        "PurgeBody",
        "ScheduledSource-Input",
    ):
        schemas[name]["properties"]["priority"]["enum"] = list(levels)
    # The scheduled sources' paths on the origin, checked by the schedule
    # model as warm targets are (unless it names a pattern of its own).
    paths = schemas["UrlsSource"]["properties"]["paths"]["items"]
    sitemap = schemas["SitemapSource"]["properties"]["url"]
    for schema in (paths, sitemap):
        schema.setdefault("pattern", f"^({_PATH})$")
    responses: dict[str, Any] = {
        str(code): {"description": text, **_json(_ref("Error"))}
        for code, text in _STATUS_TEXT.items()
    }
    responses["401"]["headers"] = {
        "WWW-Authenticate": {"required": True, "schema": {"type": "string"}}
    }
    # A request line or header over the HTTP parser's bounds (8,190 bytes) is
    # refused before any route sees it, in plain text.
    responses["400"]["description"] += (
        "; text/plain: the request line or a header is over the listener's bounds"
    )
    responses["400"]["content"]["text/plain"] = {"schema": {"type": "string"}}
    return {
        "schemas": schemas,
        "responses": responses,
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    }


def _paths(windows: Sequence[float]) -> dict[str, Any]:
    text_page = {"content": {"text/html": {"schema": {"type": "string"}}}}
    return {
        f"{PREFIX}/start": {
            "post": {
                "summary": "Start a warming run",
                "requestBody": _body("StartBody"),
                "responses": _responses(202, _ref("RunStatus"), 409, *_BODY_REFUSALS),
            }
        },
        f"{PREFIX}/stop": {
            "post": {
                "summary": "Stop running runs; in-flight fetches finish (no body)",
                "responses": _responses(200, _ref("Stopped"), 400, 413),
            }
        },
        f"{PREFIX}/status": {
            "get": {
                "summary": "Status of the current or last run, the running runs, the executor",
                "responses": _responses(200, _ref("Status")),
            }
        },
        f"{PREFIX}/progress": {
            "get": {
                "summary": "Progress of the current or last run, or of run_id",
                "parameters": [
                    {
                        "name": "run_id",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "maxLength": MAX_RUN_ID_CHARS},
                    }
                ],
                "responses": _responses(200, _ref("RunProgress"), 400, 404),
            }
        },
        f"{PREFIX}/warm-key": {
            "post": {
                "summary": "Warm one path (url) or many (urls) now",
                "requestBody": _body("WarmKeyBody"),
                "responses": _responses(202, _ref("RunStatus"), *_BODY_REFUSALS),
            }
        },
        f"{PREFIX}/warm-pattern": {
            "post": {
                "summary": "Warm every known path matching a glob",
                "requestBody": _body("WarmPatternBody"),
                "responses": _responses(202, _ref("RunStatus"), *_BODY_REFUSALS),
            }
        },
        f"{PREFIX}/purge": {
            "post": {
                "summary": (
                    "Purge a path (every variant), a glob over paths or a tag; hard or soft "
                    "(stale while one refresh runs); optionally warm the paths again"
                ),
                "requestBody": _body("PurgeBody"),
                "responses": {
                    **_responses(200, _ref("Purged"), *_BODY_REFUSALS),
                    "503": {
                        "description": (
                            "the cache store failed part-way: some entries may be purged; "
                            "purge again"
                        ),
                        **_json(_ref("Error")),
                    },
                },
            }
        },
        f"{PREFIX}/hot-data": {
            "get": {
                "summary": (
                    "Hot keys (adaptive threshold), frequency, hour/day patterns, trends, "
                    "seasonality, client segments, sequences, predictions"
                ),
                "parameters": [
                    {
                        "name": "n",
                        "in": "query",
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": MAX_HOT_N,
                            "default": 20,
                        },
                    },
                    {
                        "name": "window",
                        "in": "query",
                        "description": "one of [tracking] windows (seconds)",
                        "schema": {"type": "number", "enum": list(windows)},
                    },
                ],
                "responses": _responses(200, _ref("HotData"), 400),
            }
        },
        f"{PREFIX}/schedule": {
            "get": {
                "summary": (
                    "The schedule, whether it is the configuration file's or a posted one, "
                    "next firings, source errors, and the optimizer's proposed schedule"
                ),
                "responses": _responses(200, _ref("ScheduleDocument")),
            },
            "post": {
                "summary": "Replace the schedule (validated whole, persisted, applied live)",
                "requestBody": _body("ScheduleBody"),
                "responses": _responses(200, _ref("ScheduleDocument"), 503, *_BODY_REFUSALS),
            },
        },
        f"{PREFIX}/stats": {
            "get": {
                "summary": "What warming did: effectiveness, resources, timing, cost-benefit",
                "responses": _responses(200, _ref("Stats")),
            }
        },
        f"{PREFIX}/timeline": {
            "get": {
                "summary": (
                    "Requests, hits, misses, origin requests, warm fetches, bytes from "
                    "cache and origin and status classes per bucket (10 s) over the last "
                    "hour, and the warm runs in that span"
                ),
                "parameters": [
                    {
                        "name": "seconds",
                        "in": "query",
                        "schema": {
                            "type": "number",
                            "exclusiveMinimum": 0,
                            "maximum": TIMELINE_SPAN,
                            "default": TIMELINE_SPAN,
                        },
                    },
                ],
                "responses": _responses(200, _ref("Timeline"), 400),
            }
        },
        f"{PREFIX}/cache": {
            "get": {
                "summary": (
                    "The cache side: client latency percentiles, origin health, store "
                    "fill, the most missed paths"
                ),
                "parameters": [
                    {
                        "name": "n",
                        "in": "query",
                        "description": "missed paths listed",
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": MAX_MISSED_N,
                            "default": 10,
                        },
                    },
                    {
                        "name": "window",
                        "in": "query",
                        "description": (
                            "one of [tracking] windows (seconds); default: the longest "
                            "up to an hour"
                        ),
                        "schema": {"type": "number", "enum": list(windows)},
                    },
                ],
                "responses": _responses(200, _ref("CacheReport"), 400),
            }
        },
        f"{PREFIX}/dashboard": {
            "get": {
                "summary": "The operator's web dashboard (a page; no token needed to load it)",
                "security": [],
                "responses": {
                    "200": {"description": "HTML page", **text_page},
                    "403": {"$ref": "#/components/responses/403"},
                },
            }
        },
        f"{PREFIX}/dashboard/{{file}}": {
            "get": {
                "summary": "The dashboard's scripts, styles and vendored chart library",
                "security": [],
                "parameters": [
                    {"name": "file", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": {
                        "description": "the file",
                        "content": {"*/*": {"schema": {"type": "string"}}},
                    },
                    "400": {"$ref": "#/components/responses/400"},
                    "403": {"$ref": "#/components/responses/403"},
                    "404": {"$ref": "#/components/responses/404"},
                },
            }
        },
        f"{PREFIX}/reload": {
            "post": {
                "summary": (
                    "Read the configuration again (file, environment, flags given at start) "
                    "and apply what can change live (no body)"
                ),
                "responses": {
                    **_responses(200, _ref("Reloaded"), 413),
                    "400": {
                        "description": (
                            "the configuration is not valid or cannot be applied (`errors`), "
                            "or a body was sent; nothing changed"
                        ),
                        "content": {
                            "application/json": {"schema": _ref("ReloadRefusal")},
                            "text/plain": {"schema": {"type": "string"}},
                        },
                    },
                },
            }
        },
        f"{PREFIX}/openapi.json": {
            "get": {"summary": "This document", "responses": _responses(200, {"type": "object"})}
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (no token needed)",
                "security": [],
                "responses": {
                    "200": {
                        "description": "text exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "403": {"$ref": "#/components/responses/403"},
                },
            }
        },
        "/healthz": {
            "get": {
                "summary": "Liveness: 200 while the process serves (no token needed)",
                "security": [],
                "responses": _responses(200, _ref("Health"), guarded=False),
            }
        },
        "/readyz": {
            "get": {
                "summary": "Readiness: 503 while starting, stopping, or the store is down",
                "security": [],
                "responses": {
                    **_responses(200, _ref("Readiness"), guarded=False),
                    "503": {"description": "not ready", **_json(_ref("Readiness"))},
                },
            }
        },
    }


@cache
def document(
    levels: tuple[str, ...] = DEFAULT_LEVELS, windows: tuple[float, ...] = DEFAULT_WINDOWS
) -> dict[str, Any]:
    """The whole document, naming the priority ``levels`` and tracking ``windows``
    the proxy is configured with (built once for each)."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "warmproxy control API", "version": __version__},
        "components": _components(levels),
        "security": [{"bearer": []}],
        "paths": _paths(windows),
    }


if __name__ == "__main__":  # python -m proxy.openapi > docs/openapi.json
    import json

    print(json.dumps(document(), indent=2))
