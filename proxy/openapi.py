"""The OpenAPI 3.1 document of the control listener.

Request bodies come from the same pydantic models that validate them, so the
document cannot promise a field the API refuses.  ``tests/proxy/test_warming_api.py``
checks that every route is documented and every documented path is routed.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from proxy import __version__
from proxy.control_api import PREFIX, StartBody, WarmKeyBody, WarmPatternBody
from warmer.schedule import Schedule

_RUN_STATUS: dict[str, Any] = {
    "type": "object",
    "required": ["status", "strategy", "progress", "current_batch", "performance", "errors"],
    "properties": {
        "run_id": {"type": ["string", "null"]},
        "status": {"enum": ["idle", "running", "completed", "stopped", "failed"]},
        "strategy": {"type": ["string", "null"]},
        "started_at": {"type": ["string", "null"], "format": "date-time"},
        "finished_at": {"type": ["string", "null"], "format": "date-time"},
        "progress": {
            "type": "object",
            "properties": {
                "total_items": {"type": "integer"},
                "completed": {"type": "integer"},
                "success": {"type": "integer"},
                "failed": {"type": "integer"},
                "percentage": {"type": "number"},
            },
        },
        "current_batch": {
            "type": "object",
            "properties": {
                "batch_size": {"type": "integer"},
                "processed": {"type": "integer"},
                "remaining": {"type": "integer"},
            },
        },
        "performance": {
            "type": "object",
            "properties": {
                "items_per_second": {"type": "number"},
                "average_time_per_item": {"type": ["number", "null"]},
                "estimated_completion": {"type": ["string", "null"], "format": "date-time"},
            },
        },
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "key": {"type": "string"},
                    "error": {"type": "string"},
                    "retry_count": {"type": "integer"},
                },
            },
        },
    },
}

_NUM = {"type": ["number", "null"]}
_STATS: dict[str, Any] = {
    "type": "object",
    "description": "Every value measured; null until it can be.",
    "required": ["effectiveness", "resource_usage", "timing", "cost_benefit"],
    "properties": {
        "effectiveness": {
            "type": "object",
            "description": (
                "User hit rate before the first warm fill and since; precision (warmed "
                "entries hit before they expired or were evicted); hits gained; misses "
                "prevented; the hit rate without warming (counterfactual)."
            ),
            "properties": {
                "hit_rate_before": _NUM,
                "hit_rate_after": _NUM,
                "improvement": _NUM,
                "precision": _NUM,
                "counterfactual_hit_rate": _NUM,
                "hits_gained": {"type": "integer"},
                "misses_prevented": {"type": "integer"},
                "warmed_entries": {"type": "object"},
            },
        },
        "resource_usage": {
            "type": "object",
            "properties": {
                "cpu_utilization": {"type": "number", "description": "process CPU %"},
                "memory_usage": {"type": "integer", "description": "resident bytes"},
                "network_io": {"type": "integer", "description": "bytes fetched by warming"},
            },
        },
        "timing": {
            "type": "object",
            "properties": {
                "total_warming_time": {"type": "number"},
                "average_item_time": _NUM,
                "peak_concurrent": {"type": "integer"},
            },
        },
        "cost_benefit": {
            "type": "object",
            "properties": {
                "items_warmed": {"type": "integer"},
                "cache_hits_prevented": {
                    "type": "integer",
                    "description": "user misses warming prevented (warmed entries hit)",
                },
                "estimated_response_time_saved": {
                    **_NUM,
                    "description": "misses prevented x measured mean origin latency (s)",
                },
                "origin_fetches": {"type": "integer"},
                "bytes": {"type": "integer"},
                "success_rate": _NUM,
                "net_origin_fetches": {"type": "integer"},
            },
        },
        "performance_impact": {
            "type": "object",
            "description": "User latency and origin load during warm runs and outside them.",
        },
        "by_label": {"type": "object", "description": "the same figures per strategy/source"},
        "alerts": {"type": "object", "description": "active alerts from [monitoring]"},
        "predictive": {"type": "object"},
        "counts": {"type": "object"},
    },
}

_SCHEDULE_ADDED: dict[str, Any] = {
    "next_runs": {
        "type": "object",
        "description": "per source, its next firing (null: none)",
        "additionalProperties": {"type": ["string", "null"], "format": "date-time"},
    },
    "errors": {
        "type": "object",
        "description": "per failing source, its last error",
        "additionalProperties": {"type": "string"},
    },
    "persisted_in": {
        "type": "string",
        "description": "where a posted schedule is saved (a file or a Redis key)",
    },
    "origin": {
        "enum": ["config", "posted"],
        "description": (
            "config: the configuration file's [strategies.proactive] sources; posted: a "
            "schedule posted here (or applied by the optimizer), saved and in force over "
            "the configuration file, also after a restart"
        ),
    },
    "posted_at": {
        "type": ["string", "null"],
        "format": "date-time",
        "description": "when the posted schedule was saved; null when not known",
    },
    "proposed": {
        "type": "object",
        "description": "the optimizer's proposal (absent with optimize = off)",
    },
}


def _schedule_document(schedule: dict[str, Any]) -> dict[str, Any]:
    """What GET /schedule answers: the Schedule plus the fields the proxy adds
    (ignored when the document is posted back)."""
    return {
        "type": "object",
        "description": "The schedule in force, where it came from, and its next firings.",
        "properties": {**schedule["properties"], **_SCHEDULE_ADDED},
        "required": [
            "schedule",
            "sources",
            "next_runs",
            "errors",
            "persisted_in",
            "origin",
            "posted_at",
        ],
    }


_ERROR: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}, "field": {"type": "string"}},
}


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _responses(ok: int, schema: dict[str, Any], *codes: int) -> dict[str, Any]:
    out: dict[str, Any] = {str(ok): {"description": "OK", **_json_content(schema)}}
    texts = {
        400: "bad request: the body or a parameter is invalid (field named)",
        401: "missing or wrong bearer token",
        404: "not found",
        409: "a run is already running",
        503: "the schedule could not be saved; nothing changed",
    }
    for code in (401, *codes):
        out[str(code)] = {
            "description": texts[code],
            **_json_content({"$ref": "#/components/schemas/Error"}),
        }
    return out


def _body(model: type[Any]) -> dict[str, Any]:
    return {"required": True, **_json_content({"$ref": f"#/components/schemas/{model.__name__}"})}


def _run() -> dict[str, Any]:
    return {"$ref": "#/components/schemas/RunStatus"}


@cache
def document() -> dict[str, Any]:
    """The whole document (built once)."""
    schemas: dict[str, Any] = {"RunStatus": _RUN_STATUS, "Stats": _STATS, "Error": _ERROR}
    for model in (StartBody, WarmKeyBody, WarmPatternBody, Schedule):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    schemas["ScheduleDocument"] = _schedule_document(schemas["Schedule"])
    obj: dict[str, Any] = {"type": "object"}
    paths: dict[str, Any] = {
        f"{PREFIX}/start": {
            "post": {
                "summary": "Start a warming run",
                "requestBody": _body(StartBody),
                "responses": _responses(202, _run(), 400, 409),
            }
        },
        f"{PREFIX}/stop": {
            "post": {
                "summary": "Stop running runs; in-flight fetches finish",
                "responses": _responses(200, obj),
            }
        },
        f"{PREFIX}/status": {
            "get": {
                "summary": "Status of the current or last run",
                "responses": _responses(200, _run()),
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
                        "schema": {"type": "string"},
                    }
                ],
                "responses": _responses(200, _run(), 404),
            }
        },
        f"{PREFIX}/warm-key": {
            "post": {
                "summary": "Warm one path (url) or many (urls) now",
                "requestBody": _body(WarmKeyBody),
                "responses": _responses(202, _run(), 400),
            }
        },
        f"{PREFIX}/warm-pattern": {
            "post": {
                "summary": "Warm every known path matching a glob",
                "requestBody": _body(WarmPatternBody),
                "responses": _responses(202, _run(), 400),
            }
        },
        f"{PREFIX}/hot-data": {
            "get": {
                "summary": (
                    "Hot keys (adaptive threshold), frequency, hour/day patterns, trends, "
                    "seasonality, client segments, sequences, predictions"
                ),
                "parameters": [
                    {"name": "n", "in": "query", "schema": {"type": "integer", "default": 20}},
                    {"name": "window", "in": "query", "schema": {"type": "number"}},
                ],
                "responses": _responses(200, obj, 400),
            }
        },
        f"{PREFIX}/schedule": {
            "get": {
                "summary": (
                    "The schedule, whether it is the configuration file's or a posted one, "
                    "next firings, source errors, and the optimizer's proposed schedule"
                ),
                "responses": _responses(200, {"$ref": "#/components/schemas/ScheduleDocument"}),
            },
            "post": {
                "summary": "Replace the schedule (validated, persisted, applied live)",
                "requestBody": _body(Schedule),
                "responses": _responses(
                    200, {"$ref": "#/components/schemas/ScheduleDocument"}, 400, 503
                ),
            },
        },
        f"{PREFIX}/stats": {
            "get": {
                "summary": "What warming did: effectiveness, resources, timing, cost-benefit",
                "responses": _responses(200, {"$ref": "#/components/schemas/Stats"}),
            }
        },
        f"{PREFIX}/timeline": {
            "get": {
                "summary": (
                    "Requests, hits, misses, origin requests and warm fetches per "
                    "bucket (10 s) over the last hour, and the warm runs in that span"
                ),
                "parameters": [
                    {"name": "seconds", "in": "query", "schema": {"type": "number"}},
                ],
                "responses": _responses(200, obj, 400),
            }
        },
        f"{PREFIX}/dashboard": {
            "get": {
                "summary": "The operator's web dashboard (a page; no token needed to load it)",
                "security": [],
                "responses": {"200": {"description": "HTML page"}},
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
                    "200": {"description": "the file"},
                    "404": {"description": "not one of the dashboard's files"},
                },
            }
        },
        f"{PREFIX}/openapi.json": {
            "get": {"summary": "This document", "responses": _responses(200, obj)}
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (no token needed)",
                "security": [],
                "responses": {"200": {"description": "text exposition format"}},
            }
        },
        "/healthz": {
            "get": {
                "summary": "Liveness: 200 while the process serves (no token needed)",
                "security": [],
                "responses": {"200": {"description": "alive", **_json_content(obj)}},
            }
        },
        "/readyz": {
            "get": {
                "summary": "Readiness: 503 while starting, stopping, or the store is down",
                "security": [],
                "responses": {
                    "200": {"description": "ready", **_json_content(obj)},
                    "503": {"description": "not ready", **_json_content(obj)},
                },
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "warmproxy control API", "version": __version__},
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": paths,
    }


if __name__ == "__main__":  # python -m proxy.openapi > docs/openapi.json
    import json

    print(json.dumps(document(), indent=2))
